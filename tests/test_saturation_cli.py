"""``assay saturation ...`` as a user runs it (subprocess), and the saturation meter."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from cli_helpers import assert_bad_input

from assay.model import ModelConfig, Transformer, save
from assay.saturation import meter
from assay.saturation.languages import RECOGNISERS


def run(*args: str, env_models=None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if env_models is not None:
        env["ASSAY_MODELS"] = str(env_models)
    return subprocess.run([sys.executable, "-m", "assay", "saturation", *args], capture_output=True, text=True,
                          timeout=300, env=env)


SOFT = ModelConfig(n_layers=2, d_model=8, n_heads=2, d_head=4, d_vocab=5, n_ctx=16, d_mlp=16,
                   positional_embedding_type="standard")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("satmodels")
    m = Transformer(SOFT)
    m.init_weights(seed=1)
    save(m, root / "soft")
    noln = Transformer(ModelConfig(**{**SOFT.to_dict(), "normalization_type": None,
                                      "positional_embedding_type": "none"}))
    noln.init_weights(seed=2)
    save(noln, root / "soft-noln")
    return root


def test_construct_json(tmp_path):
    p = run("construct", "majority", "--n", "8", "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["language"] == "majority" and d["n"] == 8
    assert d["correct"] == d["total"] == 2**9 - 2  # every nonempty string up to length 8
    ce = d["hard_counterexample"]
    assert ce["string"] == "10" and ce["reference"] is False and ce["hard"] is True and ce["saturated"] is False
    assert RECOGNISERS["majority"](ce["tokens"]) is False


def test_construct_random_strings():
    p = run("construct", "anbn", "--n", "300", "--random", "2", "--exhaustive", "6", "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["correct"] == d["total"] == (2**7 - 2) + 2 * 300 and d["random_strings"] == 2


def test_bits_json():
    p = run("bits", "dyck1", "--n-max", "300", "--precision-n-max", "50", "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["points"][-1][0] == 300 and all(len(x) == 2 for x in d["points"])
    assert set(d["fit"]) >= {"a", "b", "r2"} and d["fit"]["a"] > 0
    assert d["precision"]["points"][-1][0] == 32
    assert [v["after"] for v in d["per_layer"]] == ["embedding", "layer 0", "layer 1"]
    assert max(v["points"][-1][1] for v in d["per_layer"]) == d["points"][-1][1]


def test_bits_of_a_model_run_exactly(models):
    p = run("bits", str(models / "soft-noln"), "--n-max", "12", "--attention", "saturated",
            "--precision-n-max", "4", "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["attention"] == "saturated" and d["points"][-1][0] == 12 and "fit" in d


def test_circuit_json_and_exports(tmp_path):
    out, dot = tmp_path / "c.json", tmp_path / "c.dot"
    p = run("circuit", "dyck1", "--n", "6", "--out", str(out), "--dot", str(dot), "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["inputs_checked"] == 64 and d["all_equal"] is True and d["depth"] >= 1 and d["size"] >= 1
    assert json.loads(out.read_text())["size"] == d["size"]
    assert dot.read_text().startswith("digraph")


def test_meter_json(models):
    p = run("meter", str(models / "soft"), "--batch", "4", "--length", "10", "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert [x["layer"] for x in d["layers"]] == [0, 1]
    assert {(h["layer"], h["head"]) for h in d["heads"]} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert all(1 <= h["positions_above"] <= 10 for h in d["heads"])
    assert d["curve"][-1]["c"] == 1000 and min(d["curve"][-1]["cosines"]) > 0.99


@pytest.mark.parametrize("args,needle", [
    (("construct", "parity", "--n", "4"), "unknown language"),
    (("construct", "majority", "--n", "100000000"), "at most"),
    (("circuit", "majority", "--n", "100000"), "--n must be in"),
    (("bits", "nope", "--n-max", "4"), "unknown language or model"),
    (("bits", "majority", "--n-max", "0"), "--n-max"),
    (("bits", "counter", "--n-max", "1000000"), "limit"),
    (("construct", "majority", "--n", "0"), "must be >= 1"),
    (("circuit", "majority", "--n", "0"), "must be >= 1"),
    (("circuit", "majority", "--n", "4", "--dot", "/nonexistent-dir/c.dot"), "does not exist"),
    (("meter", "no-such-model"), "unknown model"),
])
def test_bad_input_is_one_line(args, needle):
    assert_bad_input(run(*args), needle)


def test_circuit_bad_export_path_writes_nothing(tmp_path):
    p = run("circuit", "majority", "--n", "4", "--out", str(tmp_path / "c.json"),
            "--dot", str(tmp_path / "no" / "c.dot"))
    assert_bad_input(p, "does not exist")
    assert list(tmp_path.iterdir()) == []


def test_softmax_model_refused_for_an_exact_run(models):
    assert_bad_input(run("bits", str(models / "soft-noln"), "--n-max", "4"), "softmax")
    assert_bad_input(run("bits", str(models / "soft"), "--n-max", "4", "--attention", "saturated"), "LayerNorm")


def test_meter_refuses_a_saturated_model(tmp_path):
    m = Transformer(ModelConfig(**{**SOFT.to_dict(), "attention": "saturated"}))
    save(m, tmp_path / "sat")
    assert_bad_input(run("meter", str(tmp_path / "sat")), "softmax")


# ---------------------------------------------------------------------------------------------
# Meter internals against known answers.


def _uniform_vs_peaked() -> Transformer:
    cfg = ModelConfig(n_layers=1, d_model=4, n_heads=2, d_head=4, d_vocab=3, n_ctx=12, d_mlp=8,
                      positional_embedding_type="standard", normalization_type=None)
    m = Transformer(cfg).double()
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.embed.W_E.copy_(torch.eye(3, 4, dtype=torch.float64) + 0.1)
        m.pos_embed.W_pos[0, 3] = 1.0  # position 0 is marked
        # head 0: zero query -> every score equal -> uniform at every scale
        # head 1: query constant 1, key reads the position-0 mark -> peaks on position 0 as c grows
        m.blocks[0].attn.b_Q[1, 0] = 1.0
        m.blocks[0].attn.W_K[1, 3, 0] = 1.0
        m.blocks[0].attn.W_V.copy_(torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(0)).double())
        m.blocks[0].attn.W_O.copy_(torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(1)).double())
        m.unembed.W_U.copy_(torch.randn(4, 3, generator=torch.Generator().manual_seed(2)).double())
    return m


def test_head_spread_tells_argmax_from_mean():
    m = _uniform_vs_peaked()
    tokens = torch.randint(0, 3, (3, 10), generator=torch.Generator().manual_seed(0))
    heads = meter.head_spread(m, tokens)
    assert heads[0]["positions_above"] == pytest.approx(5.5)  # mean of 1..10 visible keys
    assert heads[0]["kind"] == "mean-like"
    assert heads[1]["positions_above"] == 1.0 and heads[1]["kind"] == "argmax-like"


def test_mean_cosine_by_hand():
    a = torch.tensor([[[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [3.0, 4.0]]], dtype=torch.float64)
    b = torch.tensor([[[0.0, 2.0], [0.0, 0.0], [1.0, 0.0], [6.0, 8.0]]], dtype=torch.float64)
    assert meter.mean_cosine(a, b) == pytest.approx((0 + 1 + 0 + 1) / 4)


def test_cosine_reaches_one_as_c_grows_and_norm_is_the_l2_norm():
    m = _uniform_vs_peaked()
    tokens = torch.randint(0, 3, (3, 10), generator=torch.Generator().manual_seed(0))
    res = meter.layer_cosines(m, tokens)
    cos = [row["cosines"][0] for row in res["curve"]]
    assert cos[-1] > 1 - 1e-9 and cos[0] < cos[-1]
    flat = torch.cat([p.detach().flatten() for p in m.parameters()])
    assert meter.param_norm(m) == pytest.approx(float(flat.norm()))


@pytest.mark.slow
def test_training_run_records_norm_growth():
    run_ = meter.training_run(meter.exact_recipe(40), steps=40, every=10)
    steps = [p["step"] for p in run_["points"]]
    assert steps == [1, 10, 20, 30, 40]
    assert run_["points"][-1]["param_norm"] > run_["points"][0]["param_norm"]
