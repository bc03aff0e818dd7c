"""``assay lipschitz`` and ``assay lipschitz sweep`` as a user runs them: subprocesses, files, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from assay.model import ModelConfig, Transformer, save

TINY = dict(n_layers=1, d_model=8, n_heads=2, d_head=4, d_vocab=20, n_ctx=6, d_mlp=16,
            positional_embedding_type="rotary")  # fmt: skip


def run(*args: str, models: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if models is not None:
        env["ASSAY_MODELS"] = str(models)
    return subprocess.run([sys.executable, "-m", "assay", "lipschitz", *args], capture_output=True, text=True,
                          env=env, timeout=600)  # fmt: skip


def one_json(p: subprocess.CompletedProcess) -> dict:
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1, p.stdout
    return json.loads(lines[0])


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lipschitz-models")
    for name, extra in (("tiny", {}), ("hard", {"attention": "hard"}), ("nonorm", {"normalization_type": None}),
                        ):  # fmt: skip
        m = Transformer(ModelConfig(**{**TINY, **extra}))
        m.init_weights(seed=1)
        with torch.no_grad():  # make the attention non-trivial: init_range 0.02 is nearly uniform attention
            for p in m.parameters():
                p.mul_(20.0)
        save(m, root / name)
    return root


def test_json_has_the_contract_fields(models):
    d = one_json(run("tiny", "--layer", "0", "--n", "4", "--steps", "2", "--json", models=models))
    for key in ("n", "local", "lower", "upper", "seconds"):
        assert key in d
    assert d["n"] == 4 and d["set"] == "layernorm" and d["masked"] is True
    assert d["local"] <= d["lower"] * (1 + 1e-12) <= d["upper"]
    assert d["local_residual"] <= 1e-6


def test_adversarial_input_is_saved_and_attains_lower(models, tmp_path):
    out = tmp_path / "x.npy"
    d = one_json(run("tiny", "--layer", "0", "--head", "1", "--unmasked", "--n", "4", "--input", "adversarial",
                     "--steps", "3", "--save-input", str(out), "--json", models=models))  # fmt: skip
    X = np.load(out)
    assert X.shape == (4, 8) and d["saved_input"] == str(out)
    from assay.lipschitz.jacobian import jacobian_norm_exact
    from assay.lipschitz.maps import attention_map
    from assay.model import load

    f = attention_map(load(models / "tiny"), 0, head=1, causal=False)
    exact = jacobian_norm_exact(f, torch.from_numpy(X)).value  # full-Jacobian SVD, independent of the CLI
    assert exact >= d["lower"] * (1 - 1e-9)
    assert exact <= d["upper"]
    assert np.linalg.norm(X, axis=1).max() <= d["radius"] * (1 + 1e-9)


def test_text_input_exact_ball_and_human_output(models):
    d = one_json(run("tiny", "--layer", "0", "--unmasked", "--no-layernorm", "--radius", "2.5", "--n", "5",
                     "--input", "text", "--exact", "--steps", "0", "--json", models=models))  # fmt: skip
    assert d["set"] == "ball" and d["radius"] == 2.5 and d["local_method"] == "svd" and d["lower"] == d["local"]
    p = run("tiny", "--layer", "0", "--n", "3", "--steps", "1", models=models)
    assert p.returncode == 0 and "lower" in p.stdout and "upper" in p.stdout and "proved" in p.stdout


@pytest.mark.parametrize(
    "args, needle",
    [
        (["tiny", "--layer", "1"], "--layer 1 out of range"),
        (["tiny", "--layer", "0", "--head", "2"], "--head 2 out of range"),
        (["tiny", "--layer", "0", "--n", "7"], "n_ctx"),
        (["tiny", "--layer", "0", "--radius", "0"], "R must be"),
        (["tiny", "--layer", "0", "--radius", "-3"], "R must be"),
        (["tiny"], "--layer is required"),
        (["hard", "--layer", "0"], "no softmax attention"),
        (["nonorm", "--layer", "0", "--n", "3", "--layernorm"], "no LayerNorm"),
        (["no-such-model", "--layer", "0"], "unknown model"),
        (["sweep", "--models", "tiny"], "MODEL:LAYER"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(models, args, needle):
    p = run(*args, models=models)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr and p.stdout == ""
    assert needle in lines[0], lines[0]


def test_save_input_into_a_directory_is_refused(models, tmp_path):
    p = run("tiny", "--layer", "0", "--n", "2", "--save-input", str(tmp_path), models=models)
    assert p.returncode == 2 and "directory" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_sweep_refuses_a_file_or_a_foreign_directory_as_out(models, tmp_path):
    (tmp_path / "notes.txt").write_text("precious")
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "main.py").write_text("precious")
    for out, needle in ((tmp_path / "notes.txt", "is not a directory"), (tmp_path / "project", "refusing")):
        p = run("sweep", "--models", f"{models / 'tiny'}:0:1", "--quick", "--n", "4", "--out", str(out))
        assert p.returncode == 2 and needle in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert (tmp_path / "notes.txt").read_text() == (tmp_path / "project" / "main.py").read_text() == "precious"


def test_sweep_writes_report_figures_and_fits(models, tmp_path):
    out = tmp_path / "sweep"
    d = one_json(run("sweep", "--models", f"{models / 'tiny'}:0:1", "--quick", "--n", "4", "--steps", "2",
                     "--out", str(out), "--json"))
    assert Path(d["report"]).is_file() and Path(d["results"]).is_file()
    figs = sorted(p.name for p in (out / "figures").iterdir())
    assert figs == ["lipschitz-bounds.png", "lipschitz-growth.png", "lipschitz-radius.png"]
    res = json.loads((out / "results.json").read_text())
    for c in res["curves"]:
        for r in c["rows"]:
            if "upper" in r:
                assert r["lower"] <= r["upper"]
    assert "C (alpha = 1/2)" in (out / "index.html").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
