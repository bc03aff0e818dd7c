"""Saturated attention: numbers, exact interpreter, constructions, bit profiler.

Truth comes from outside the code under test: IEEE rounding (Python's float(), numpy float32,
math.sqrt), the torch forward pass, the reference recognisers (plain loops), and Fraction formulas
written out here.
"""

from __future__ import annotations

import itertools
import math
import random
from fractions import Fraction

import numpy as np
import pytest
import torch
from conftest import make_random_model, make_small_config
from hypothesis import given, settings
from hypothesis import strategies as st

from assay.errors import BadInput
from assay.saturation import bits as bitsmod
from assay.saturation.constructions import CONSTRUCTIONS, build, decode_counter
from assay.saturation.interpreter import Interpreter, all_prefix_steps
from assay.saturation.languages import LANGUAGES, RECOGNISERS, sample
from assay.saturation.numbers import round_to_bits, significant_bits, sqrt_to_bits

# ---------------------------------------------------------------------------------------------
# p-bit numbers against hardware rounding.


@settings(max_examples=300, deadline=None)
@given(st.fractions(min_value=-10**12, max_value=10**12, max_denominator=10**15))
def test_round_to_53_bits_is_python_float_rounding(q):
    assert round_to_bits(q, 53) == Fraction(float(q))


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=-1e30, max_value=1e30, allow_nan=False, allow_infinity=False))
def test_round_to_24_bits_is_float32_rounding(x):
    if x != 0 and abs(x) < 1.2e-38:
        return  # float32 subnormals: our exponent is unbounded, IEEE's is not
    assert round_to_bits(Fraction(x), 24) == Fraction(float(np.float32(x)))


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=0, max_value=1e300, allow_nan=False))
def test_sqrt_to_53_bits_is_ieee_sqrt(x):
    assert sqrt_to_bits(Fraction(x), 53) == Fraction(math.sqrt(x))


def test_rounding_small_precisions_by_hand():
    assert round_to_bits(Fraction(5, 2), 2) == 2  # 10.1b -> tie, to even 10b
    assert round_to_bits(Fraction(7, 2), 2) == 4  # 11.1b -> tie, to even 100b
    assert round_to_bits(Fraction(1, 3), 3) == Fraction(5, 16)  # 0.010101..b -> 0.0101b (rest < half)
    assert round_to_bits(Fraction(2, 3), 2) == Fraction(3, 4)  # 0.1010..b -> 0.11b (rest > half)
    assert significant_bits(Fraction(5, 8)) == 3 and significant_bits(Fraction(1, 3)) is None


# ---------------------------------------------------------------------------------------------
# Interpreter against the torch forward pass.

EXACT_COMBOS = list(itertools.product(["saturated", "hard"], ["none", "standard"], [True, False], [True, False]))


@pytest.mark.parametrize("attention,pos,causal,attn_only", EXACT_COMBOS)
def test_exact_interpreter_matches_torch(attention, pos, causal, attn_only):
    cfg = make_small_config(attention=attention, positional_embedding_type=pos, causal=causal,
                            attn_only=attn_only, normalization_type=None, act_fn="relu", n_layers=1)
    model = make_random_model(cfg, seed=3)
    toks = [1, 2, 1, 1, 3, 2, 1]  # repeated tokens: with positions "none", exact ties in the scores
    with torch.no_grad():
        ref = model(torch.tensor([toks]))[0].double()
        _, cache = model.run_with_cache(torch.tensor([toks]))
    steps = Interpreter(model).run(toks)
    got = torch.tensor([[float(v) for v in s.logits] for s in steps], dtype=torch.float64)
    assert torch.allclose(got, ref, rtol=1e-9, atol=1e-9)
    # torch's own tie set is decided by float equality of bmm outputs, which can differ in the last bit
    # for identical keys; so count the keys within 1e-12 of the row maximum in torch's scores.
    scores = cache["attn_scores", 0][0]  # [h, q, k], masked = -inf
    top = scores.amax(-1, keepdim=True)
    ties = (scores >= top - 1e-12 * top.abs().clamp(min=1)).sum(-1).T  # [q, h]
    assert [s.ties[0] for s in steps] == ties.tolist()
    if causal:
        stream = Interpreter(model).stream()
        assert [stream.push(t).logits for t in toks] == [s.logits for s in steps]


@pytest.mark.parametrize("attention", ["saturated", "hard"])
def test_exact_interpreter_matches_torch_on_two_layers(attention):
    cfg = make_small_config(attention=attention, positional_embedding_type="standard", causal=True,
                            attn_only=False, normalization_type=None, act_fn="relu", n_layers=2)
    model = make_random_model(cfg, seed=7)
    toks = [0, 3, 3, 1, 2, 0, 3, 1]
    with torch.no_grad():
        ref = model(torch.tensor([toks]))[0].double()
    got = torch.tensor([[float(v) for v in s.logits] for s in Interpreter(model).run(toks)], dtype=torch.float64)
    assert torch.allclose(got, ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("language", CONSTRUCTIONS)
def test_constructions_exact_logits_match_torch(language):
    """The hand-built weights run by torch (float64, saturated) and by the exact interpreter give the same
    logits at every position, not only the same decisions (2-layer networks included)."""
    c = build(language, 64)
    rng = random.Random(11)
    for _ in range(4):
        w = sample("majority" if language == "counter" else language, 64, rng)
        with torch.no_grad():
            ref = c.model(torch.tensor([w]))[0]
        exact = torch.tensor([[float(v) for v in s.logits] for s in c.interpreter().run(w)], dtype=torch.float64)
        assert torch.allclose(exact, ref, rtol=0, atol=1e-12), language


@pytest.mark.parametrize("opts", [
    dict(normalization_type="LN", act_fn="gelu", positional_embedding_type="rotary"),
    dict(normalization_type="LN", act_fn="gelu_new", ln_position="post", positional_embedding_type="standard"),
    dict(normalization_type="LN", act_fn="relu", parallel_attn_mlp=True, causal=False, attention="hard"),
])
def test_53_bit_interpreter_matches_float64_torch(opts):
    cfg = make_small_config(**{"attention": "saturated", **opts}, n_layers=1)
    model = make_random_model(cfg, seed=4)
    toks = [3, 1, 4, 1, 5]
    with torch.no_grad():
        ref = model(torch.tensor([toks]))[0].double()
    got = torch.tensor([[float(v) for v in s.logits] for s in Interpreter(model, precision=53).run(toks)],
                       dtype=torch.float64)
    assert torch.allclose(got, ref, rtol=1e-9, atol=1e-10)


def test_softmax_of_scaled_scores_approaches_saturated_output():
    cfg = make_small_config(attention="saturated", positional_embedding_type="none", normalization_type=None,
                            act_fn="relu", attn_only=True, n_layers=1)
    model = make_random_model(cfg, seed=5)
    toks = [2, 5, 2, 2, 7, 5]
    exact = torch.tensor([[float(v) for v in s.logits] for s in Interpreter(model).run(toks)], dtype=torch.float64)
    errors = []
    for c in (1.0, 10.0, 100.0, 1e3, 1e4, 1e5):
        soft = make_random_model(make_small_config(**{**cfg.to_dict(), "attention": "softmax"}), seed=5)
        with torch.no_grad():
            for b in soft.blocks:
                b.attn.W_Q.mul_(c)
                b.attn.b_Q.mul_(c)  # every score is multiplied by c
            errors.append(float((soft(torch.tensor([toks]))[0] - exact).abs().max()))
    assert errors[-1] < 1e-9 < errors[0]
    assert all(b <= a + 1e-12 for a, b in zip(errors[1:], errors[2:], strict=False)), errors


def test_exact_mode_refuses_what_is_not_rational():
    soft = make_random_model(make_small_config(attention="softmax", normalization_type=None))
    with pytest.raises(BadInput, match="softmax"):
        Interpreter(soft)
    Interpreter(soft, attention="saturated")  # the c -> infinity limit is allowed explicitly
    with pytest.raises(BadInput, match="LayerNorm"):
        Interpreter(make_random_model(make_small_config(attention="saturated")))
    with pytest.raises(BadInput, match="rotary"):
        Interpreter(make_random_model(make_small_config(attention="hard", normalization_type=None,
                                                        positional_embedding_type="rotary")))


# ---------------------------------------------------------------------------------------------
# Constructions against the reference recognisers.


@pytest.mark.parametrize("language", CONSTRUCTIONS)
def test_construction_exact_on_every_string_up_to_10(language):
    c = build(language, 10)
    wrong = [w for w, step in all_prefix_steps(c.interpreter(), (0, 1), 10) if c.decide(step.logits) != c.recognise(w)]
    assert wrong == []


@pytest.mark.parametrize("language", CONSTRUCTIONS)
def test_construction_float64_torch_on_every_string_of_length_14(language):
    c = build(language, 14)
    X = torch.tensor(list(itertools.product([0, 1], repeat=14)))
    with torch.no_grad():
        logits = c.model(X)
    got = (logits[..., 1] > logits[..., 0]).numpy()
    rec = RECOGNISERS["majority" if language == "counter" else language]
    # every prefix of every length-14 string: all 32766 nonempty strings up to length 14
    label = {w: rec(w) for k in range(1, 15) for w in itertools.product((0, 1), repeat=k)}
    want = np.array([[label[w[: i + 1]] for i in range(14)] for w in map(tuple, X.tolist())])
    assert (got == want).all()


@pytest.mark.parametrize("language", LANGUAGES)
def test_construction_exact_on_random_strings(language):
    c = build(language, 600)
    rng = random.Random(1)
    for _ in range(3):
        w = sample(language, 600, rng)
        stream = c.interpreter().stream()
        for i, t in enumerate(w):
            assert c.decide(stream.push(t).logits) == RECOGNISERS[language](w[: i + 1]), (language, i)


def test_hard_attention_fails_majority_on_10():
    c = build("majority", 4)
    hard = c.with_attention("hard")
    with torch.no_grad():
        logits = hard(torch.tensor([[1, 0]]))[0, -1]
    assert bool(logits[1] > logits[0]) is True  # hard attention accepts "10" ...
    assert RECOGNISERS["majority"]([1, 0]) is False  # ... which has no majority of 1s
    sat = c.interpreter()
    assert c.decide(sat.run([1, 0])[-1].logits) is False
    assert c.decide(c.interpreter(attention="hard").run([1, 0])[-1].logits) is True


@pytest.mark.slow
@pytest.mark.parametrize("language", LANGUAGES)
def test_construction_exact_on_every_string_up_to_14_and_random_10000(language):
    c = build(language, 10_000)
    assert all(c.decide(s.logits) == c.recognise(w) for w, s in all_prefix_steps(c.interpreter(), (0, 1), 14))
    rng = random.Random(2)
    for _ in range(3):
        w = sample(language, 10_000, rng)
        stream = c.interpreter().stream()
        for i, t in enumerate(w):
            assert c.decide(stream.push(t).logits) == RECOGNISERS[language](w[: i + 1])


# ---------------------------------------------------------------------------------------------
# Bit profiler.


def _bits(q: Fraction) -> int:
    g = math.gcd(q.numerator, q.denominator)
    return (abs(q.numerator) // g).bit_length() + (q.denominator // g).bit_length()


def test_majority_bits_match_a_direct_fraction_computation():
    c = build("majority", 300)
    w = sample("majority", 300, random.Random(3))
    per_pos, _ = bitsmod.stream_bits(c.interpreter(), w, c.decide)
    ones = 0
    for i, t in enumerate(w):
        ones += t
        sym = 1 if t == 1 else -1
        first = 1 if i == 0 else 0
        d = Fraction(2 * ones - (i + 1), i + 1)  # (#1 - #0) / (i + 1)
        f = Fraction(1, i + 1)
        layer0 = [Fraction(sym), Fraction(first), Fraction(0), Fraction(0)]
        layer1 = [Fraction(sym), Fraction(first), d, f]
        assert per_pos[i][3] == (sum(map(_bits, layer0)), sum(map(_bits, layer1)))
        assert per_pos[i][0] == max(per_pos[i][3])


def test_dyck1_bits_match_a_direct_fraction_computation():
    """Every memory vector of the Dyck-1 network written out with Fraction from the prefix counts alone:
    d = balance / (i+1), f = 1 / (i+1), m = min_j d_j, bad = |d| + relu(-m)."""
    c = build("dyck1", 400)
    w = sample("dyck1", 400, random.Random(5))
    per_pos, _ = bitsmod.stream_bits(c.interpreter(), w, c.decide)
    balance, m = 0, None
    for i, t in enumerate(w):
        sym = 1 if t == 0 else -1
        balance += sym
        first = Fraction(1 if i == 0 else 0)
        d, f = Fraction(balance, i + 1), Fraction(1, i + 1)
        m = d if m is None else min(m, d)
        bad = abs(d) + max(Fraction(0), -m)
        vectors = [
            [Fraction(sym), first, 0, 0, 0, 0],
            [Fraction(sym), first, d, f, 0, 0],
            [Fraction(sym), first, d, f, m, bad],
        ]
        assert per_pos[i][3] == tuple(sum(_bits(Fraction(x)) for x in v) for v in vectors), i
        assert per_pos[i][0] == max(per_pos[i][3])
        assert per_pos[i][1] == max(abs(Fraction(x).numerator).bit_length() for v in vectors for x in v)
        assert per_pos[i][2] == max(Fraction(x).denominator.bit_length() for v in vectors for x in v)


def test_counter_construction_packs_the_prefix_and_grows_linearly():
    c = build("counter", 1021)
    w = sample("majority", 1500, random.Random(4))
    stream = c.interpreter().stream()
    for t in w:
        step = stream.push(t)
    S, f = step.resid[2][c.dims.index("S")], step.resid[2][c.dims.index("f")]
    assert decode_counter(S, f, len(w)) == w
    assert S.denominator.bit_length() >= len(w)


def test_fits_recover_known_lines():
    pts = [[n, 3 * math.log2(n) + 2] for n in (2, 4, 8, 100, 1000)]
    fit = bitsmod.fit_log(pts)
    assert fit["a"] == pytest.approx(3) and fit["b"] == pytest.approx(2) and fit["r2"] == pytest.approx(1)
    lin = bitsmod.fit_linear([[n, 4 * n + 1] for n in (1, 5, 9)])
    assert lin["a"] == pytest.approx(4) and lin["b"] == pytest.approx(1)


def test_profile_bits_grow_logarithmically_for_constructions_and_linearly_for_counter():
    maj = bitsmod.profile_construction("majority", 3000, precision_n_max=300)
    assert maj["fit"]["r2"] > 0.95 and 1.5 < maj["fit"]["a"] < 4
    assert all(b <= 4 * math.log2(n) + 10 for n, b in maj["points"])
    assert all(p is not None for _, p in maj["precision"]["points"])
    layers = maj["per_layer"]
    assert [x["after"] for x in layers] == ["embedding", "layer 0"]
    assert all(b == max(layers[0]["points"][g][1], layers[1]["points"][g][1])
               for g, (_, b) in enumerate(maj["points"]))
    # the embedding (sym = +-1, first = 1, 0, 0) at position 0: 2 + 2 + 1 + 1 bits, never more later
    assert {b for _, b in layers[0]["points"]} == {6}
    cnt = bitsmod.profile_construction("counter", 600, precision_n_max=0)
    assert cnt["linear_fit"]["r2"] > 0.999 and cnt["linear_fit"]["a"] > 3


def test_profile_bad_input():
    with pytest.raises(BadInput, match="unknown language"):
        bitsmod.profile_construction("parity", 10)
    with pytest.raises(BadInput, match="n-max"):
        bitsmod.profile_construction("majority", 0)
    with pytest.raises(BadInput, match="n-max"):
        bitsmod.profile_construction("counter", 10**6)
