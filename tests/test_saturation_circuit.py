"""Threshold-circuit compiler: the circuit against the exact interpreter and the reference recognisers."""

from __future__ import annotations

import itertools
import json
from fractions import Fraction

import numpy as np
import pytest

from assay.errors import BadInput
from assay.model import ModelConfig, Transformer
from assay.saturation.circuit import Circuit, compile_construction, compile_model, fit_power
from assay.saturation.constructions import CONSTRUCTIONS
from assay.saturation.languages import RECOGNISERS


@pytest.mark.parametrize("language", CONSTRUCTIONS)
def test_circuit_equals_interpreter_exhaustively(language):
    r = compile_construction(language, 9)
    assert r["exhaustive"] and r["inputs_checked"] == 2**9 and r["all_equal"], r["first_mismatch"]


@pytest.mark.parametrize("language", ["dyck1", "anbn"])
def test_circuit_equals_reference_and_interpreter_on_random_inputs(language):
    r = compile_construction(language, 24, random_inputs=60)
    assert not r["exhaustive"] and r["all_equal"]
    circ = r["circuit"]
    rng = np.random.default_rng(0)
    X = rng.integers(0, 2, size=(200, 24))
    X[:50, :12], X[:50, 12:] = 0, 1  # a^12 b^12 / "((((...))))" members, so both answers occur
    got = circ.evaluate(X)[:, 0]
    want = [RECOGNISERS[language](row.tolist()) for row in X]
    assert got.tolist() == want and any(want)


def test_depth_is_constant_and_size_polynomial():
    rows = [compile_construction("dyck1", n, random_inputs=5) for n in (8, 16, 32)]
    assert len({r["depth"] for r in rows}) == 1
    fit = fit_power([(r["n"], r["size"]) for r in rows])
    assert 1.5 < fit["k"] < 2.5
    assert compile_construction("majority", 40, random_inputs=5)["size"] == 1  # one threshold gate


def test_majority_circuit_is_the_majority_gate():
    circ = compile_construction("majority", 6)["circuit"]
    gate = circ.to_json()["gates"][-1]
    assert gate["op"] == "THRESHOLD" and gate["weights"] == [1] * 6 and gate["theta"] == 4  # >= 4 ones of 6


def test_gate_semantics_by_hand():
    c = Circuit(3)
    t = c.threshold({0: Fraction(1), 1: Fraction(2), 2: Fraction(-1, 2)}, Fraction(3, 2))
    a = c.gate_and([0, c.gate_not(2)])
    o = c.gate_or([t, a])
    c.outputs = [t, a, o]
    X = np.array(list(itertools.product((0, 1), repeat=3)))
    got = c.evaluate(X)
    for row, g in zip(X.tolist(), got.tolist(), strict=True):
        x0, x1, x2 = row
        tv = x0 + 2 * x1 - x2 / 2 >= 1.5
        av = bool(x0 and not x2)
        assert g == [tv, av, tv or av]


def test_exports(tmp_path):
    from assay.saturation.circuit import write_exports

    circ = compile_construction("dyck1", 4)["circuit"]
    write_exports(circ, str(tmp_path / "c.json"), str(tmp_path / "c.dot"))
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["size"] == circ.size and data["depth"] == circ.depth and len(data["gates"]) == circ.size
    dot = (tmp_path / "c.dot").read_text()
    assert dot.startswith("digraph") and dot.count("->") == circ.n_wires


def test_unsupported_models_are_bad_input():
    cfg = ModelConfig(n_layers=1, d_model=4, n_heads=1, d_head=2, d_vocab=2, n_ctx=8, d_mlp=4,
                      attention="saturated")
    with pytest.raises(BadInput, match="LayerNorm"):
        compile_model(Transformer(cfg), 4)
    with pytest.raises(BadInput, match="saturated or hard"):
        compile_model(Transformer(ModelConfig(**{**cfg.to_dict(), "attention": "softmax"})), 4)
    with pytest.raises(BadInput, match="unknown language"):
        compile_construction("parity", 4)
    with pytest.raises(BadInput, match="--n"):
        compile_construction("majority", 0)


def test_threshold_gate_with_weights_beyond_float64_is_exact():
    big = 10**400  # float(big) overflows: the evaluator must fall back to integers
    c = Circuit(3)
    c.outputs = [c._append("THRESHOLD", (0, 1, 2), (big, -big, 1), 1)]
    X = np.array(list(itertools.product((0, 1), repeat=3)))
    got = c.evaluate(X)[:, 0].tolist()
    assert got == [big * a - big * b + d >= 1 for a, b, d in X.tolist()]


@pytest.mark.parametrize("language", ["majority", "dyck1", "anbn"])
def test_hard_attention_circuit_equals_hard_interpreter(language):
    from assay.saturation.circuit import verify
    from assay.saturation.constructions import build

    c = build(language, 8)
    hard = c.with_attention("hard")
    circ = compile_model(hard, 8)
    r = verify(circ, c.interpreter(attention="hard"), c.decide, 8, language)
    assert r["exhaustive"] and r["inputs_checked"] == 256 and r["all_equal"], r["first_mismatch"]
    if language == "majority":  # hard attention reads position 0 only: the circuit is the wire x_0
        X = np.array(list(itertools.product((0, 1), repeat=8)))
        assert circ.evaluate(X)[:, 0].tolist() == [bool(x[0]) for x in X]


def _random_uniform_attention_model(seed: int, n_layers: int, attention: str) -> Transformer:
    """Random dyadic weights (multiples of 1/4 in [-2, 2]), zero queries (static tie sets), ReLU MLPs:
    weights nobody designed, to test the compiler's linear-form and ReLU bookkeeping."""
    import torch

    cfg = ModelConfig(n_layers=n_layers, d_model=4, n_heads=2, d_head=2, d_vocab=2, n_ctx=8, d_mlp=3,
                      act_fn="relu", normalization_type=None, positional_embedding_type="standard",
                      causal=True, attention=attention)
    m = Transformer(cfg).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randint(-8, 9, p.shape, generator=g).double() / 4)
        for b in m.blocks:
            b.attn.W_Q.zero_()
            b.attn.b_Q.zero_()
    return m.eval()


@pytest.mark.parametrize("seed,n_layers,n", [(0, 1, 6), (1, 1, 6), (2, 1, 6), (0, 2, 3), (3, 2, 3)])
@pytest.mark.parametrize("attention", ["saturated", "hard"])
def test_circuit_of_random_weights_equals_interpreter(seed, n_layers, n, attention):
    import torch

    from assay.saturation.circuit import verify
    from assay.saturation.interpreter import Interpreter

    m = _random_uniform_attention_model(seed, n_layers, attention)
    # Centre the decision: shift b_U[0] by (a float near) the median of logits[1] - logits[0] over all
    # inputs, so that both answers occur and a constant circuit cannot pass.
    gaps = sorted(s.logits[1] - s.logits[0] for s in
                  (Interpreter(m).run(list(x))[-1] for x in itertools.product((0, 1), repeat=n)))
    with torch.no_grad():
        m.unembed.b_U[0] += float(gaps[len(gaps) // 2 - 1] + gaps[len(gaps) // 2]) / 2
    interp = Interpreter(m)
    circ = compile_model(m, n)
    r = verify(circ, interp, lambda logits: logits[1] > logits[0], n, "majority")
    assert r["exhaustive"] and r["inputs_checked"] == 2**n and r["all_equal"], r["first_mismatch"]
    answers = circ.evaluate(np.array(list(itertools.product((0, 1), repeat=n))))[:, 0]
    assert 0 < answers.sum() < 2**n
