"""The training loop: loss goes down, the card says what it must, and a resumed run ends bit-identical."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from assay.errors import BadInput
from assay.model import ModelConfig, Transformer, load
from assay.recipes import (
    AdditionData,
    FormalData,
    Recipe,
    TextData,
    TrainParams,
    get_recipe,
    recipe_names,
    register,
    unregister,
)
from assay.tasks import addition, formal
from assay.train import lr_at, run_dir_for, run_recipe, train

SENTENCES = Path(__file__).parent / "data" / "sentences.txt"
TINY_MODEL = dict(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=40, act_fn="relu",
                  normalization_type="LN", positional_embedding_type="standard")


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models run fastest on one thread, and bit-identity needs the same thread count throughout.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_recipes():
    recipes = [
        Recipe("test-majority", "tiny majority", dict(TINY_MODEL),
               TrainParams(steps=20, batch_size=32, lr=1e-2, warmup_steps=3, eval_every=10, checkpoint_every=5),
               FormalData(language="majority", min_len=1, max_len=12, n_val_per_length=16)),
        Recipe("test-text", "tiny LM on tests/data", dict(TINY_MODEL, positional_embedding_type="rotary"),
               TrainParams(steps=20, batch_size=8, lr=1e-2, warmup_steps=3, eval_every=10, checkpoint_every=10),
               TextData(corpora=(str(SENTENCES),), weights=(1.0,), vocab_size=300, seq_len=16, eval_windows=8)),
        Recipe("test-addition", "tiny addition", dict(TINY_MODEL, n_ctx=18),
               TrainParams(steps=20, batch_size=32, lr=1e-2, warmup_steps=3, schedule="constant", grad_clip=None,
                           decay_all=True, eval_every=10, checkpoint_every=10),
               AdditionData(n_val=128, n_val_per_category=16)),
    ]
    for r in recipes:
        register(r, replace=True)
    yield {r.name: r for r in recipes}
    for r in recipes:
        unregister(r.name)


def test_unknown_recipe_lists_known_ones(tmp_path):
    with pytest.raises(BadInput) as e:
        run_recipe("no-such-recipe", out=tmp_path / "x")
    for name in ("overwhelm-1l", "addition-1l", "lm-4l", "majority-1l", "parity-1l", "dyck1-1l"):
        assert name in str(e.value)
        assert name in recipe_names()


def test_shipped_recipes_follow_their_papers():
    add = get_recipe("addition-1l")
    assert add.model == dict(n_layers=1, d_model=510, n_heads=3, d_head=170, d_mlp=2040, n_ctx=18, act_fn="relu",
                             normalization_type="LN", positional_embedding_type="standard", causal=True)
    t = add.train
    assert (t.lr, t.weight_decay, t.betas, t.batch_size) == (8e-5, 0.1, (0.9, 0.98), 64)
    assert (add.data.enrich_batch_prob, add.data.enrich_pair_prob) == (0.2, 0.2)
    ow = get_recipe("overwhelm-1l").model
    assert (ow["n_layers"], ow["n_heads"], ow["positional_embedding_type"], ow["act_fn"]) == (1, 1, "rotary", "relu")
    lm = get_recipe("lm-4l").model
    assert (lm["n_layers"], lm["act_fn"], lm["positional_embedding_type"]) == (4, "gelu", "standard")


def test_lr_schedule():
    p = TrainParams(steps=110, batch_size=1, lr=1.0, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert [lr_at(s, p) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert lr_at(9, p) == pytest.approx(1.0)
    assert lr_at(10, p) == pytest.approx(1.0)
    assert lr_at(109, p) == pytest.approx(0.1)
    mid = 10 + (109 - 10) / 2
    assert lr_at(int(mid), p) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * int(mid - 10) / 99)))
    c = dataclasses.replace(p, schedule="constant")
    assert lr_at(50, c) == lr_at(109, c) == 1.0


def _majority_loss(model: Transformer, seed: int = 99) -> float:
    # Independent of the loop's metrics: fresh strings, labels by the reference recogniser.
    rng = np.random.default_rng(seed)
    total, count = 0.0, 0
    for n in range(1, 13):
        bits = (rng.random((32, n)) < rng.random((32, 1))).astype(np.int64)
        tokens = torch.tensor([[formal.BOS, *row, formal.CLS] for row in bits])
        label = torch.tensor([formal.TRUE if formal.is_majority("".join(map(str, row))) else formal.FALSE
                              for row in bits])
        with torch.no_grad():
            logits = model(tokens)[:, -1].float()
        total += F.cross_entropy(logits, label, reduction="sum").item()
        count += len(label)
    return total / count


def test_training_reduces_loss_and_writes_card(tiny_recipes, tmp_path):
    out = run_recipe("test-majority", out=tmp_path / "m", progress=False)
    assert out == tmp_path / "m"
    model = load(out)
    torch.manual_seed(0)
    untrained = Transformer(ModelConfig(**TINY_MODEL, d_vocab=formal.D_VOCAB))
    assert _majority_loss(model) < 0.8 * _majority_loss(untrained)

    card = json.loads((out / "card.json").read_text())
    for key in ("recipe", "params", "seed", "steps", "data", "metrics", "wall_seconds", "torch_version",
                "throughput", "history"):
        assert key in card, key
    assert card["recipe"] == "test-majority" and card["steps"] == 20 and card["seed"] == 0
    assert card["torch_version"] == torch.__version__
    assert card["params"]["train"]["lr"] == 1e-2 and card["params"]["model"]["d_model"] == 16
    assert card["params"]["data"]["language"] == "majority"
    assert card["data"]["generator"].startswith("assay.tasks.formal")
    assert {"val_loss", "val_accuracy"} <= set(card["metrics"])
    assert card["throughput"]["examples_per_second"] > 0 and card["throughput"]["tokens_per_second"] > 0
    assert [h["step"] for h in card["history"]] == [0, 10, 20]
    logged = [json.loads(line) for line in (run_dir_for(out) / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [0, 10, 20]
    assert not (out / "checkpoint.pt").exists()  # checkpoints stay out of the model directory


def _weights(d: Path) -> dict[str, torch.Tensor]:
    return load_file(str(d / "model.safetensors"))


def _assert_identical(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.mark.parametrize("name", ["test-majority", "test-text"])
def test_resume_after_crash_is_bit_identical(tiny_recipes, tmp_path, name):
    full = run_recipe(name, out=tmp_path / "full", progress=False)

    def crash(step, model, record):
        if step == 13:
            raise RuntimeError("simulated crash")

    recipe = get_recipe(name)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(recipe, out=tmp_path / "split", progress=False, callback=crash)
    assert not (tmp_path / "split").exists()  # nothing half-written
    ckpt = torch.load(run_dir_for(tmp_path / "split") / "checkpoint.pt", weights_only=False)
    assert ckpt["state"]["step"] == 10  # the last checkpoint before the crash; steps 11..13 are redone
    resumed = run_recipe(name, out=tmp_path / "split", resume=True, progress=False)
    _assert_identical(full, resumed)
    card = json.loads((resumed / "card.json").read_text())
    assert card["sessions"] == 2
    assert [h["step"] for h in card["history"]] == [0, 10, 20]


def test_history_wall_seconds_grow_and_stay_within_the_measured_time(tiny_recipes, tmp_path):
    """Each history record's wall_seconds is the run's elapsed time at that record: increasing, and
    never more than the time measured around the call (it once counted a session's time twice)."""
    t0 = time.perf_counter()
    out = run_recipe("test-majority", out=tmp_path / "m", progress=False)
    elapsed = time.perf_counter() - t0
    card = json.loads((out / "card.json").read_text())
    walls = [h["wall_seconds"] for h in card["history"]]
    assert walls == sorted(walls)
    assert walls[-1] <= card["wall_seconds"] + 1e-3
    assert card["wall_seconds"] <= elapsed


def test_interrupt_saves_checkpoint_and_resume_is_bit_identical(tiny_recipes, tmp_path):
    full = run_recipe("test-majority", out=tmp_path / "full", progress=False)

    def interrupt(step, model, record):
        if step == 7:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        train(get_recipe("test-majority"), out=tmp_path / "split", progress=False, callback=interrupt)
    ckpt = torch.load(run_dir_for(tmp_path / "split") / "checkpoint.pt", weights_only=False)
    assert ckpt["state"]["step"] == 7
    resumed = run_recipe("test-majority", out=tmp_path / "split", resume=True, progress=False)
    _assert_identical(full, resumed)


def test_text_recipe_ships_its_tokenizer(tiny_recipes, tmp_path):
    out = run_recipe("test-text", out=tmp_path / "lm", steps=20, progress=False)
    model = load(out)
    s = "The owl called from the wood."
    assert model.tokenizer.decode(model.tokenizer.encode(s).ids) == s
    assert model.cfg.d_vocab == model.tokenizer.get_vocab_size()
    card = json.loads((out / "card.json").read_text())
    assert card["data"]["corpora"][0]["name"] == "sentences.txt"
    assert card["metrics"]["val_loss"] < card["history"][0]["val_loss"]
    assert "unigram_val_loss" in card["metrics"]


def test_addition_recipe_logs_per_digit_and_category_loss(tiny_recipes, tmp_path):
    out = run_recipe("test-addition", out=tmp_path / "add", progress=False)
    card = json.loads((out / "card.json").read_text())
    m = card["metrics"]
    for i in range(6):
        assert f"val_loss_A{i}" in m
    for cat in addition.CATEGORIES:
        assert f"val_loss_{cat}" in m and f"val_accuracy_{cat}" in m
    # The per-digit losses average to the overall answer loss.
    assert np.mean([m[f"val_loss_A{i}"] for i in range(6)]) == pytest.approx(m["val_loss"], rel=1e-5)
    assert card["data"]["example"] == "question"


def test_resume_refusals(tiny_recipes, tmp_path):
    with pytest.raises(BadInput, match="nothing to resume"):
        run_recipe("test-majority", out=tmp_path / "none", resume=True, progress=False)
    run_recipe("test-majority", out=tmp_path / "m", progress=False)
    with pytest.raises(BadInput, match="different"):
        run_recipe("test-majority", out=tmp_path / "m", seed=5, resume=True, progress=False)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(BadInput, match="refusing"):
        run_recipe("test-majority", out=other, progress=False)
    assert (other / "precious.txt").read_text() == "keep me"


def test_seed_override_changes_the_model(tiny_recipes, tmp_path):
    a = run_recipe("test-majority", out=tmp_path / "a", steps=3, progress=False)
    b = run_recipe("test-majority", out=tmp_path / "b", steps=3, seed=1, progress=False)
    assert not torch.equal(_weights(a)["embed.W_E"], _weights(b)["embed.W_E"])
    assert json.loads((b / "card.json").read_text())["seed"] == 1
