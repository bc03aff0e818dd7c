"""Lipschitz constant of attention (paper 2), against independent ground truth.

- the map equals the model's own attention forward pass (another implementation);
- the mask: a masked output at i does not move when tokens after i move;
- power iteration against the full Jacobian's SVD (relative 1e-6);
- the Jacobian against central finite differences; the ascent's gradient likewise;
- proved upper bounds >= every lower bound found and >= the exact norm at many points (hypothesis);
- the arb-proved weight norms against LAPACK, and they are upper bounds;
- the attention-matrix bounds against actual softmax matrices.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import make_random_model, make_small_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from assay.errors import BadInput
from assay.lipschitz import rigorous as rg
from assay.lipschitz.api import analyze, torch_threads
from assay.lipschitz.bounds import (
    attention_matrix_bounds,
    local_upper_bound,
    map_constants,
    recalled_data_bound,
    upper_bounds,
)
from assay.lipschitz.jacobian import jacobian_matrix, jacobian_norm, jacobian_norm_exact, sigma_and_gradient
from assay.lipschitz.lower import ascend, construction_seeds
from assay.lipschitz.maps import AttentionMap, attention_inputs, attention_map, front_layernorm
from assay.lipschitz.sets import TokenSet
from assay.lipschitz.sweep import fit_power_law, parse_config
from assay.lipschitz.text import SAMPLE_TEXT, encode, text_windows


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


def model(**kw):
    """A small random model (2 layers, d 12, 3 heads of 4) with every weight, bias and gain random."""
    return make_random_model(make_small_config(**kw), seed=0, scale=0.3)


TOKS = [1, 2, 3, 4, 5, 6, 7]


# --------------------------------------------------------------------------------------------------
# The map is the model's attention


@pytest.mark.parametrize("pet", ["standard", "rotary"])
@pytest.mark.parametrize("ln_position", ["pre", "post"])
@pytest.mark.parametrize("causal", [True, False])
def test_map_equals_the_models_attention(pet, ln_position, causal):
    m = model(positional_embedding_type=pet, ln_position=ln_position, causal=causal)
    got: dict[str, torch.Tensor] = {}
    for layer in range(m.cfg.n_layers):
        got.clear()
        h = m.blocks[layer].attn.register_forward_hook(lambda mod, inp, out: got.update(x=inp[0][0], y=out[0]))
        with torch.no_grad():
            m(torch.tensor([TOKS]))
        h.remove()
        Y = attention_inputs(m, layer, TOKS, layernorm=False)
        assert torch.equal(Y, got["x"])
        f = attention_map(m, layer, layernorm=False)
        assert f.causal == causal
        torch.testing.assert_close(f(Y), got["y"], rtol=0, atol=1e-12)
        # Per-head maps add up to the sublayer minus its output bias.
        heads = sum(attention_map(m, layer, head=h, layernorm=False)(Y) for h in range(m.cfg.n_heads))
        torch.testing.assert_close(heads + m.blocks[layer].attn.b_O, got["y"], rtol=0, atol=1e-12)
        # With the LayerNorm in front: the normalised input through the map is the same output.
        U = attention_inputs(m, layer, TOKS, layernorm=True)
        g = attention_map(m, layer, layernorm=True)
        torch.testing.assert_close(g(U), got["y"], rtol=0, atol=1e-12)
        assert TokenSet("layernorm", math.sqrt(m.cfg.d_model), m.cfg.d_model).contains(U)


def test_front_layernorm_is_the_one_that_feeds_attention():
    pre = model()
    post = model(ln_position="post")
    assert front_layernorm(pre, 1) is pre.blocks[1].ln1
    assert front_layernorm(post, 0) is post.ln_embed
    assert front_layernorm(post, 1) is post.blocks[0].ln2
    assert front_layernorm(model(normalization_type=None), 0) is None


def test_mask_is_really_applied():
    """A masked output at i does not move when tokens after i move; unmasked it does."""
    bidirectional = model(causal=False)  # like MiniLM: trained without a mask
    gen = torch.Generator().manual_seed(3)
    X = torch.randn(7, 12, generator=gen, dtype=torch.float64)
    for layernorm in (False, True):
        masked = attention_map(bidirectional, 0, causal=True, layernorm=layernorm)
        unmasked = attention_map(bidirectional, 0, causal=False, layernorm=layernorm)
        for i in range(6):
            X2 = X.clone()
            X2[i + 1 :] += torch.randn(6 - i, 12, generator=gen, dtype=torch.float64)
            assert torch.equal(masked(X)[: i + 1], masked(X2)[: i + 1])
            assert (unmasked(X)[: i + 1] - unmasked(X2)[: i + 1]).abs().max() > 1e-3
        # and the Jacobian is block lower-triangular
        J = jacobian_matrix(masked, X).reshape(7, 12, 7, 12)
        for i in range(7):
            assert torch.all(J[i, :, i + 1 :] == 0)


def test_no_dropout_and_deterministic():
    m = model()
    assert not any(isinstance(mod, torch.nn.Dropout) for mod in m.modules())
    f = attention_map(m, 0)
    X = torch.randn(5, 12, dtype=torch.float64)
    assert torch.equal(f(X), f(X))
    assert f.W_Q.dtype == torch.float64


def test_bad_layer_head_and_models():
    m = model()
    with pytest.raises(BadInput, match="layer"):
        attention_map(m, 2)
    with pytest.raises(BadInput, match="head"):
        attention_map(m, 0, head=3)
    with pytest.raises(BadInput, match="softmax"):
        attention_map(model(attention="hard"), 0)
    with pytest.raises(BadInput, match="LayerNorm"):
        attention_map(model(normalization_type=None), 0, layernorm=True)
    with pytest.raises(BadInput, match="n_ctx"):
        analyze(m, 0, n=11)
    with pytest.raises(BadInput, match="radius"):
        analyze(m, 0, n=3, radius=0.0)


# --------------------------------------------------------------------------------------------------
# Jacobian norms


CASES = [
    dict(head=None, causal=True, layernorm=True, pet="rotary"),
    dict(head=1, causal=False, layernorm=False, pet="standard"),
    dict(head=None, causal=False, layernorm=False, pet="standard"),
    dict(head=0, causal=True, layernorm=True, pet="standard"),
]


def _case_map(c: dict, seed: int = 0) -> AttentionMap:
    m = model(positional_embedding_type=c["pet"])
    return attention_map(m, 0, head=c["head"], causal=c["causal"], layernorm=c["layernorm"])


@pytest.mark.parametrize("case", CASES)
def test_power_iteration_matches_full_jacobian_svd(case):
    f = _case_map(case)
    gen = torch.Generator().manual_seed(1)
    for n in (1, 3, 6):
        X = torch.randn(n, 12, generator=gen, dtype=torch.float64) * 1.5
        exact = float(torch.linalg.matrix_norm(jacobian_matrix(f, X), ord=2))  # LAPACK, independent of ours
        est = jacobian_norm(f, X, tol=1e-10, max_iter=5000)
        assert est.converged, est
        assert est.value == pytest.approx(exact, rel=1e-6)
        assert est.value <= exact * (1 + 1e-12)  # ||J v|| for a unit v never exceeds ||J||
        assert jacobian_norm_exact(f, X).value == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_jacobian_matches_finite_differences(case):
    f = _case_map(case)
    gen = torch.Generator().manual_seed(2)
    X = torch.randn(4, 12, generator=gen, dtype=torch.float64)
    J = jacobian_matrix(f, X)
    h = 1e-6
    for _ in range(3):
        V = torch.randn(4, 12, generator=gen, dtype=torch.float64)
        fd = ((f(X + h * V) - f(X - h * V)) / (2 * h)).reshape(-1)
        torch.testing.assert_close(J @ V.reshape(-1), fd, rtol=1e-6, atol=1e-7)


def test_ascent_gradient_matches_finite_differences():
    f = _case_map(CASES[1])
    gen = torch.Generator().manual_seed(4)
    X = torch.randn(4, 12, generator=gen, dtype=torch.float64)
    top = jacobian_norm_exact(f, X)
    s, g, _ = sigma_and_gradient(f, X, top.vector)
    assert s == pytest.approx(top.value, rel=1e-10)
    h = 1e-6
    for _ in range(3):
        D = torch.randn(4, 12, generator=gen, dtype=torch.float64)
        fd = (jacobian_norm_exact(f, X + h * D).value - jacobian_norm_exact(f, X - h * D).value) / (2 * h)
        assert float((g * D).sum()) == pytest.approx(fd, rel=1e-4, abs=1e-6)


# --------------------------------------------------------------------------------------------------
# Upper bounds are upper bounds


def _random_map(seed: int, heads: int, causal: bool, layernorm: bool, rope: bool, biases: bool, scale: float):
    d, e = 6, 3
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    z = (lambda *s: r(*s)) if biases else (lambda *s: torch.zeros(*s, dtype=torch.float64))
    return AttentionMap(
        W_Q=r(heads, d, e), W_K=r(heads, d, e), W_V=r(heads, d, e), W_O=r(heads, e, d),
        b_Q=z(heads, e), b_K=z(heads, e), b_V=z(heads, e), b_O=z(d), causal=causal,
        rotary_dim=2 if rope else None,
        ln_gamma=(1 + r(d)) if layernorm else None, ln_beta=z(d) if layernorm else None,
    )  # fmt: skip


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    heads=st.integers(1, 2),
    causal=st.booleans(),
    layernorm=st.booleans(),
    rope=st.booleans(),
    biases=st.booleans(),
    scale=st.sampled_from([0.3, 1.0, 2.0]),
    radius=st.sampled_from([0.3, 1.0, 3.0]),
    n=st.integers(1, 5),
)
def test_upper_bound_dominates_every_lower_bound(seed, heads, causal, layernorm, rope, biases, scale, radius, n):
    f = _random_map(seed, heads, causal, layernorm, rope, biases, scale)
    tset = TokenSet("layernorm" if layernorm else "ball", radius, f.d_model)
    mc = map_constants(f, max_offset=n)
    ub = upper_bounds(f, tset, n, mc)
    assert ub.gap <= ub.sqrt_n * (1 + 1e-12)
    gen = torch.Generator().manual_seed(seed)
    found = []
    points = [tset.random(n, gen) * torch.rand(n, 1, generator=gen, dtype=torch.float64) for _ in range(4)]
    points += [X for _, X in construction_seeds(f, tset, n)]
    for X in points:
        exact = jacobian_norm_exact(f, X).value
        found.append(exact)
        assert local_upper_bound(f, X, mc) >= exact
    for X in points[:1] + points[4:5]:
        s, _, Xb, _ = ascend(f, tset, X, steps=4, seed=seed)
        assert tset.contains(Xb)
        found.append(s)
        found.append(jacobian_norm_exact(f, Xb).value)
    assert ub.upper >= max(found), (ub, max(found))
    assert ub.mean_field_limit >= max(found)


def test_bounds_on_a_real_layer_dominate_real_inputs():
    m = model(positional_embedding_type="rotary")
    for layernorm in (True, False):
        f = attention_map(m, 1, layernorm=layernorm)
        X = attention_inputs(m, 1, TOKS, layernorm=layernorm)
        R = math.sqrt(12) if layernorm else float(X.norm(dim=-1).max())
        tset = TokenSet("layernorm" if layernorm else "ball", R, 12)
        mc = map_constants(f, max_offset=len(TOKS))
        exact = jacobian_norm_exact(f, X).value
        assert local_upper_bound(f, X, mc) >= exact
        assert upper_bounds(f, tset, len(TOKS), mc).upper >= exact


def test_recalled_bounds_versus_ours_on_a_bias_free_head():
    f = _random_map(7, 1, False, False, False, False, 1.0)
    tset = TokenSet("ball", 1.0, 6)
    mc = map_constants(f)
    for n in (2, 8, 64):
        ub = upper_bounds(f, tset, n, mc)
        assert ub.recalled_sqrt_n is not None and ub.sqrt_n <= ub.recalled_sqrt_n  # ours is the tighter
    X = tset.random(5, torch.Generator().manual_seed(0))
    assert recalled_data_bound(f, X, mc) > 0


# --------------------------------------------------------------------------------------------------
# The pieces of the bounds


def test_arb_norms_are_upper_bounds_and_tight():
    rng = np.random.default_rng(0)
    with rg.precision():
        for shape in [(5, 3), (3, 7), (20, 20)]:
            M = rng.standard_normal(shape)
            b = rg.up(rg.norm_upper(rg.to_arb(M)))
            true = np.linalg.norm(M, 2)
            assert true <= b <= true * (1 + 1e-9)
        X, Y = rng.standard_normal((9, 3)), rng.standard_normal((8, 3))
        X[:, 2] = X[:, 1]  # rank-deficient: the ridge path
        b = rg.up(rg.product_norm_upper(rg.LowRankFactor(rg.to_arb(X)), rg.gram(rg.to_arb(Y))))
        true = np.linalg.norm(X @ Y.T, 2)
        assert true <= b <= true * (1 + 1e-6)
        # an indefinite matrix is never certified positive definite
        assert not rg.certify_pd(rg.to_arb(np.diag([1.0, -1e-12, 2.0])))
        assert rg.certify_pd(rg.to_arb(np.diag([1.0, 1e-9, 2.0])))


@pytest.mark.parametrize("causal", [False, True])
def test_attention_matrix_bounds_hold_for_real_softmax_matrices(causal):
    gen = torch.Generator().manual_seed(5)
    for n in (1, 2, 7, 40):
        for delta in (0.5, 3.0, 12.0):
            rho, kappa = attention_matrix_bounds(n, delta, causal)
            for _ in range(5):
                S = torch.rand(n, n, generator=gen, dtype=torch.float64) * delta
                # the worst cases concentrate on early keys: make key 0 (or a few) win by the full spread
                S[:, : 1 + int(torch.randint(0, 3, (1,), generator=gen))] = delta
                S = S - S.min(dim=1, keepdim=True).values
                if causal:
                    S = S.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
                P = S.softmax(-1)
                assert float(torch.linalg.matrix_norm(P, ord=2)) <= rg.up(rho) * (1 + 1e-12)
                assert float(P.sum(0).max()) <= rg.up(kappa) * (1 + 1e-12)
            assert rg.up(rho) <= math.sqrt(n) * (1 + 1e-12)


def test_masked_limit_dominates_every_n():
    from assay.lipschitz.bounds import _masked_rho_limit

    for delta in (0.1, 1.0, 4.0):
        lim = rg.up(_masked_rho_limit(rg.arb(delta)))
        for n in (1, 10, 100, 400):
            assert rg.up(attention_matrix_bounds(n, delta, True)[0]) <= lim


def test_tokenset_projection():
    ts = TokenSet("layernorm", 2.0, 5)
    Z = torch.randn(4, 5, dtype=torch.float64) * 10
    P = ts.project(Z)
    assert ts.contains(P) and torch.allclose(P.sum(-1), torch.zeros(4, dtype=torch.float64), atol=1e-12)
    assert torch.equal(ts.project(P), P) or torch.allclose(ts.project(P), P, atol=1e-14)
    with pytest.raises(BadInput):
        TokenSet("ball", -1.0, 5)


# --------------------------------------------------------------------------------------------------
# Text, fits, configs, the API


def test_text_without_any_corpus():
    m = model()
    ids, cls = encode(m, SAMPLE_TEXT)
    assert cls is None and max(ids) < m.cfg.d_vocab and len(ids) == len(SAMPLE_TEXT.encode())
    w = text_windows(m, 8, 3, SAMPLE_TEXT)
    assert len(w) == 3 and all(len(x) == 8 for x in w)
    with pytest.raises(BadInput, match="fewer"):
        text_windows(m, 10_000, 1, "short")


def test_power_law_fit_recovers_a_known_law():
    ns = [2, 4, 8, 16, 32]
    fit = fit_power_law(ns, [3.0 * n**0.5 * (1 + 0.01 * (-1) ** i) for i, n in enumerate(ns)])
    assert fit["alpha"] == pytest.approx(0.5, abs=0.02) and fit["C"] == pytest.approx(3.0, rel=0.05)
    lo, hi = fit["alpha_ci"]
    assert lo < 0.5 < hi
    assert fit["C_sqrt"] == pytest.approx(3.0, rel=0.02)


def test_parse_config():
    c = parse_config("minilm:0:3:masked")
    assert (c.model, c.layer, c.head, c.masked) == ("minilm", 0, 3, True)
    c = parse_config("/some/dir:1:all")
    assert (c.model, c.layer, c.head, c.masked) == ("/some/dir", 1, None, None)
    with pytest.raises(BadInput):
        parse_config("minilm")


def test_analyze_reports_consistent_numbers():
    m = model(positional_embedding_type="rotary")
    res = analyze(m, 0, head=1, n=4, input_kind="text", steps=3, text=None)
    assert res.local <= res.lower * (1 + 1e-12) and res.lower <= res.upper
    assert res.local <= res.local_upper
    assert res.set_kind == "layernorm" and res.radius == pytest.approx(math.sqrt(12))
    assert jacobian_norm_exact(attention_map(m, 0, head=1), res.X_best).value >= res.lower * (1 - 1e-9)


# --------------------------------------------------------------------------------------------------
# Slow: the pretrained MiniLM


def _minilm():
    pytest.importorskip("transformers")
    from assay.lipschitz.models import load_model

    try:
        return load_model("minilm")
    except BadInput as e:
        pytest.skip(str(e))


@pytest.mark.slow
def test_minilm_power_iteration_matches_svd_and_mask_on_real_text():
    m = _minilm()
    toks = text_windows(m, 6, 1, SAMPLE_TEXT)[0]
    U = attention_inputs(m, 1, toks, layernorm=True)
    f = attention_map(m, 1, causal=True, layernorm=True)  # all 12 heads, a real causal mask, LN in front
    exact = float(torch.linalg.matrix_norm(jacobian_matrix(f, U), ord=2))
    assert jacobian_norm(f, U, tol=1e-10, max_iter=5000).value == pytest.approx(exact, rel=1e-6)
    U2 = U.clone()
    U2[3:] = attention_inputs(m, 1, toks[:3] + [2023, 2003, 1037], layernorm=True)[3:]
    assert torch.equal(f(U)[:3], f(U2)[:3])


@pytest.mark.slow
def test_minilm_upper_bound_dominates_the_search():
    m = _minilm()
    f = attention_map(m, 0, head=0, causal=False, layernorm=False)
    mc = map_constants(f)
    for R, n in ((1.0, 8), (12.0, 8)):
        tset = TokenSet("ball", R, 384)
        from assay.lipschitz.lower import lower_bound

        lb = lower_bound(f, tset, n, steps=10)
        ub = upper_bounds(f, tset, n, mc)
        assert lb.value <= ub.upper
        assert jacobian_norm_exact(f, lb.X).value <= ub.upper
        assert local_upper_bound(f, lb.X, mc) >= jacobian_norm_exact(f, lb.X).value
