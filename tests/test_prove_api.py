"""The prover's API contract: result fields, bad input, models it does not cover, JSON-able certificates."""

from __future__ import annotations

import json

import numpy as np
import pytest

from assay.errors import BadInput
from assay.model import ModelConfig, Transformer
from assay.prove import DesignResult, ProveResult, check, design, prove
from assay.prove.bruteforce import enumerate_claim
from assay.prove.toy import toy_model


@pytest.fixture(scope="module")
def toy():
    return toy_model(0, qk=0.3)


def test_result_fields_and_json(toy):
    r = prove(toy, [1, 2, 3, 4, 5, 1, 2, 3], 1, suffix=[2])
    assert isinstance(r, ProveResult)
    assert isinstance(r.proven, bool) and r.n_fix == 8 and r.n_free == 1 and r.seconds >= 0
    assert isinstance(r.token, int)
    json.dumps(r.certificate, allow_nan=False)
    for key in ("format", "model_sha256", "prefix", "suffix", "n_free", "allowed", "token"):
        assert key in r.certificate
    assert [p["L"] for p in r.details["per_length"]] == [0, 1]
    if r.proven:
        assert r.margin is not None and r.margin == r.best_margin and r.margin > 0
    else:
        assert r.margin is None and r.best_margin is not None


def test_margin_is_below_the_true_gap_and_token_is_the_argmax(toy):
    prefix, suffix = [3, 3, 1, 0, 2, 5, 5, 5, 4, 1], [0]
    r = prove(toy, prefix, 2, suffix=suffix, allowed=[1, 2, 4])
    e = enumerate_claim(toy, prefix, 2, suffix, [1, 2, 4])
    assert r.token == e.first_argmax
    assert r.best_margin <= e.min_margin[r.token] + 1e-9


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(prefix=[], n_free=1), "prefix is empty"),
        (dict(prefix=[1, 99], n_free=1), "out of range"),
        (dict(prefix=[1, -1], n_free=1), "out of range"),
        (dict(prefix=[1, 2], n_free=-1), "n_free"),
        (dict(prefix=[1, 2], n_free=1.5), "n_free"),
        (dict(prefix=[1, 2], n_free=True), "n_free"),
        (dict(prefix=[1, 2], n_free=1, suffix=[7]), "out of range"),
        (dict(prefix=[1, 2], n_free=1, allowed=[]), "allowed is empty"),
        (dict(prefix=[1, 2], n_free=1, allowed=[0, 6]), "out of range"),
        (dict(prefix=[1] * 30, n_free=9, suffix=[1, 2]), "exceeds n_ctx"),
        (dict(prefix="1,2", n_free=1), "string"),
    ],
)
def test_bad_input(toy, kwargs, match):
    with pytest.raises(BadInput, match=match):
        prove(toy, **kwargs)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(causal=False), "bidirectional"),
        (dict(attention="saturated"), "saturated"),
        (dict(attention="hard"), "hard"),
        (dict(ln_position="post"), "post-LN"),
        (dict(act_fn="gelu_new"), "gelu_new"),
    ],
)
def test_models_not_covered_are_named(overrides, match):
    cfg = ModelConfig(n_layers=1, d_model=8, n_heads=2, d_head=4, d_vocab=5, n_ctx=16, d_mlp=16, **overrides)
    m = Transformer(cfg).double()
    with pytest.raises(BadInput, match=match):
        prove(m, [1, 2], 1)
    assert issubclass(BadInput, ValueError)


def test_float32_model_is_proved_about_its_stored_weights():
    m32 = toy_model(0, qk=0.3).float()
    r = prove(m32, [1, 2, 3, 4, 5, 1, 2, 3], 1, suffix=[2])
    assert r.certificate["model_sha256_source"] == "state"
    if r.proven:
        assert check(r.certificate, m32)


def test_design_finds_a_certified_prefix():
    m = toy_model(2, qk=1.0)
    seen = []
    r = design(m, 10, 2, suffix=[2], seed=0, budget_seconds=15, progress=seen.append)
    assert isinstance(r, DesignResult)
    assert len(r.prefix) == 10 and r.seconds < 60
    assert r.tried and {"strategy", "candidates", "best_margin"} <= set(r.tried[0])
    assert seen and "margin" in seen[0]
    assert r.proven, r.tried
    e = enumerate_claim(m, r.prefix, 2, [2])
    assert e.argmax_tokens == {r.token} and r.margin <= e.min_margin[r.token] + 1e-9
    assert check(r.certificate, m)


def test_design_bad_input():
    m = toy_model(0)
    with pytest.raises(BadInput):
        design(m, 0, 1)
    with pytest.raises(BadInput, match="exceeds n_ctx"):
        design(m, 39, 2)
    with pytest.raises(BadInput):
        design(m, 5, -1)


def test_design_respects_a_small_budget():
    m = toy_model(1)
    r = design(m, 12, 1, suffix=[0], budget_seconds=0.5, seed=np.int64(3).item())
    assert r.seconds < 10


def test_design_with_an_evaluation_budget_is_reproducible_and_counts_evaluations():
    m = toy_model(2, qk=1.0)
    runs = []
    for _ in range(2):
        seen = []
        r = design(m, 10, 2, suffix=[2], seed=0, max_evals=12, progress=seen.append)
        runs.append((r, seen))
    (a, seen_a), (b, seen_b) = runs
    assert a.prefix == b.prefix and a.tried == b.tried and a.proven == b.proven and a.margin == b.margin
    assert 0 < len(seen_a) <= 12 and len(seen_a) == len(seen_b)  # progress is called once per evaluation
    # half the evaluations at most go to the one-free-token phase
    assert sum(1 for s in seen_a if s["n_free"] == 1) <= 6
    if a.proven:
        e = enumerate_claim(m, a.prefix, 2, [2])
        assert e.argmax_tokens == {a.token} and a.margin <= e.min_margin[a.token] + 1e-9
    with pytest.raises(BadInput, match="max_evals"):
        design(m, 10, 2, suffix=[2], max_evals=0)


def test_default_refinement_reaches_the_refine_all_minimum():
    # The default refines competitors until none left has a cheap bound at or below the minimum, so its
    # least margin must equal the one with every competitor's exact support evaluated. On overwhelm-1l
    # the first refinements alone miss the binding competitor (the bug this loop fixed).
    import numpy as np

    from assay.model import load
    from assay.prove.api import reference_token
    from assay.prove.engine import Engine, Options
    from assay.prove.weights import extract

    model = load("overwhelm-1l")
    W = extract(model)
    prefix, suffix = [2944] * 256, [321]
    c = reference_token(model, prefix, suffix)
    V = model.cfg.d_vocab
    X, _ = Engine(W, prefix, suffix, np.arange(V), Options()).final_set(2, None)
    eng = Engine(W, prefix, suffix, np.arange(V), Options())
    default, _, _ = eng.margins(X, c)
    every, _, _ = eng.margins(X, c, refine=[k for k in range(V) if k != c])
    first, _, _ = Engine(W, prefix, suffix, np.arange(V), Options(max_rounds=0)).margins(X, c)
    assert default.min() == pytest.approx(every.min(), rel=1e-9, abs=1e-12)  # batch-size rounding only
    assert first.min() < default.min() - 0.1
