"""The prover's individual bound rules against sampling inside their input sets and exact arithmetic.

Every rule promises "the output set contains f(x) for every x in the input set". We draw many x from
the input set (including its extreme points: vertices, zonotope corners), apply the real function in
float64 (or in arb ball arithmetic where rounding matters) and check that f(x) passes every bound the
output set gives: each coordinate, and many random linear functionals with exact support evaluation.
"""

from __future__ import annotations

import importlib
import itertools
import math

import numpy as np
import pytest
from flint import arb, arb_mat, ctx

from assay.prove import fp, rules
from assay.prove.affine import AffineSet, Term, make_block, make_pooled, new_id

TOL = 1e-10


# ------------------------------------------------------------------ sampling inside an AffineSet
def random_set(rng, d, scale=1.0, kinds=("block", "pooled", "zono", "ell"), center=None) -> AffineSet:
    c = rng.standard_normal(d) * 2 if center is None else center
    S = AffineSet.point(c, np.abs(rng.standard_normal(d)) * 1e-3 * scale)
    if "block" in kinds:
        k, N = int(rng.integers(2, 6)), int(rng.integers(2, 9))
        S.terms.append(make_block(rng.standard_normal((N, k)) * scale, rng.standard_normal((k, d)) * 0.5))
    if "pooled" in kinds:
        k, N = int(rng.integers(2, 6)), int(rng.integers(2, 9))
        cut = int(rng.integers(1, N)) if N > 1 else 1
        starts = np.array([0, cut]) if cut < N else np.array([0])
        mult = rng.integers(1, 4, size=len(starts)).astype(float)
        S.terms.append(make_pooled(rng.standard_normal((N, k)) * scale, rng.uniform(0, 0.6, N), starts, mult,
                                   float(rng.uniform(0.1, 1.5)), rng.standard_normal((k, d)) * 0.5,
                                   random_pscale(rng, starts, mult, N)))
    if "zono" in kinds:
        m = int(rng.integers(1, 6))
        S.terms.append(Term(new_id(), "zono", rng.standard_normal((m, d)) * 0.3 * scale))
    if "ell" in kinds:
        k = int(rng.integers(1, d + 1))
        S.terms.append(Term(new_id(), "ell", rng.standard_normal((k, d)) * 0.3 * scale))
    return S


def random_pscale(rng, starts, mult, N: int) -> tuple | None:
    """Per-position scales for some groups of a random pooled term (None half of the time): buckets of
    positions with their own scales, counts summing to the group's multiplicity."""
    if rng.uniform() < 0.5:
        return None
    bounds = list(starts[1:]) + [N]
    out = []
    for g, (a, b) in enumerate(zip(starts, bounds, strict=True)):
        m = int(mult[g])
        if rng.uniform() < 0.3:
            out.append(None)
            continue
        nb = int(rng.integers(1, m + 1))
        counts = np.ones(nb)
        counts[0] += m - nb
        out.append((rng.uniform(0, 0.6, (nb, b - a)), counts))
    return tuple(out)


def position_scales(t, gi: int, a: int, b: int) -> list[np.ndarray]:
    """The scale vector (over the rows of group gi, [a, b)) of every one of its positions."""
    scale_, _starts, mult, _total, pscale = t.pool[:5]
    per = pscale[gi] if pscale is not None else None
    if per is None:
        return [scale_[a:b]] * int(mult[gi])
    return [sq for sq, n in zip(*per, strict=True) for _ in range(int(n))]


def coefficients(S: AffineSet, n: int, rng) -> dict[int, np.ndarray]:
    """Random coefficients (n rows) for every term of S, a third of them at extreme points."""
    out = {}
    for t in S.terms:
        k = t.M.shape[0]
        if t.kind == "block":
            N = t.V.shape[0]
            a = rng.dirichlet(np.ones(N) * 0.3, size=n)
            a[: n // 3] = np.eye(N)[rng.integers(0, N, n // 3)]
            out[t.id] = a @ t.V
        elif t.kind == "pooled":
            # positions pick one row of their group with weight <= its scale; total weight <= total
            _scale, starts, mult, total, _pscale = t.pool[:5]
            bounds = list(starts[1:]) + [t.V.shape[0]]
            coef = np.zeros((n, t.V.shape[1]))
            for i in range(n):
                left = total
                for gi, (a, b) in enumerate(zip(starts, bounds, strict=True)):
                    for sq in position_scales(t, gi, a, b):
                        r = int(rng.integers(a, b))
                        w = min(sq[r - a] * (1.0 if i < n // 3 else rng.uniform()), left)
                        left -= w
                        coef[i] += w * t.V[r]
            out[t.id] = coef * (1 - 1e-12)
        elif t.kind == "zono":
            e = rng.uniform(-1, 1, (n, k))
            e[: n // 3] = np.sign(e[: n // 3])
            out[t.id] = e
        else:
            b = rng.standard_normal((n, k))
            b /= np.linalg.norm(b, axis=1, keepdims=True)
            b *= rng.uniform(0, 1, (n, 1)) ** (1 / k)
            b[: n // 3] /= np.linalg.norm(b[: n // 3], axis=1, keepdims=True)
            out[t.id] = b * (1 - 1e-12)
    return out


def points(S: AffineSet, coefs: dict[int, np.ndarray], rng, box=True) -> np.ndarray:
    n = next(iter(coefs.values())).shape[0] if coefs else 64
    x = np.tile(S.center, (n, 1))
    for t in S.terms:
        x = x + coefs[t.id] @ t.M
    if box:
        x = x + rng.uniform(-1, 1, x.shape) * S.box
    return x


def assert_inside(S: AffineSet, X: np.ndarray, rng, n_dirs=16, what=""):
    lo, hi = S.coord_bounds()
    assert np.all(X >= lo - TOL * (1 + np.abs(lo))), f"{what}: below coordinate bound by {np.max(lo - X)}"
    assert np.all(X <= hi + TOL * (1 + np.abs(hi))), f"{what}: above coordinate bound by {np.max(X - hi)}"
    A = rng.standard_normal((S.d, n_dirs))
    for exact in (None, np.arange(n_dirs)):
        flo, fhi = S.functional_bounds(A, exact=exact)
        vals = X @ A
        assert np.all(vals >= flo - TOL * (1 + np.abs(flo))), f"{what}: functional below by {np.max(flo - vals)}"
        assert np.all(vals <= fhi + TOL * (1 + np.abs(fhi))), f"{what}: functional above by {np.max(vals - fhi)}"


# ------------------------------------------------------------------ floating-point helpers
@pytest.fixture
def high_precision():
    old = ctx.prec
    ctx.prec = 400
    yield
    ctx.prec = old


def test_matmul_error_bound_against_exact_arithmetic(high_precision):
    rng = np.random.default_rng(0)
    for _ in range(30):
        n, k, m = rng.integers(1, 8, size=3)
        A = rng.standard_normal((n, k)) * 10.0 ** rng.integers(-8, 8, size=(n, k))
        B = rng.standard_normal((k, m)) * 10.0 ** rng.integers(-8, 8, size=(k, m))
        C, E = fp.matmul(A, B)
        exact = arb_mat(A.tolist()) * arb_mat(B.tolist())
        for i in range(n):
            for j in range(m):
                diff = abs(exact[i, j] - arb(float(C[i, j])))
                assert diff.upper() <= arb(float(E[i, j])), (i, j)


def test_spectral_norm_upper_is_an_upper_bound_and_not_loose():
    rng = np.random.default_rng(1)
    for _ in range(40):
        k, d = rng.integers(1, 40, size=2)
        M = rng.standard_normal((k, d)) * rng.uniform(1e-3, 1e3)
        if rng.random() < 0.3:
            M[:, 0] *= 100  # ill-conditioned
        true = np.linalg.norm(M, 2)
        ub = fp.spectral_norm_upper(M)
        assert ub >= true * (1 - 1e-12)
        assert ub <= 1.6 * true


def test_exp_bounds_contain_exact_exponential(high_precision):
    rng = np.random.default_rng(2)
    x = rng.uniform(-700, 700, 200)
    r = np.abs(rng.standard_normal(200)) * 1e-3
    lo, hi = fp.exp_bounds(x, r)
    for xi, ri, l, h in zip(x, r, lo, hi, strict=True):
        a, b = arb(float(xi) - float(ri)).exp(), arb(float(xi) + float(ri)).exp()
        assert arb(float(l)) <= a.lower() or l == 0.0
        assert arb(float(h)) >= b.upper()


def test_sum_bounds_contain_exact_sum(high_precision):
    rng = np.random.default_rng(3)
    parts = [rng.standard_normal(50) * 10.0 ** rng.integers(-10, 10, 50) for _ in range(6)]
    lo, hi = fp.sum_bounds(parts)
    for j in range(50):
        exact = sum((arb(float(p[j])) for p in parts), arb(0))
        assert arb(float(lo[j])) <= exact.lower() and arb(float(hi[j])) >= exact.upper()


def test_mul_bounds_contain_every_exact_product():
    from fractions import Fraction

    rng = np.random.default_rng(4)
    a, b = np.sort(rng.standard_normal((2, 200)), axis=0), np.sort(rng.standard_normal((2, 200)) * 1e3, axis=0)
    lo, hi = fp.mul_bounds(a[0], a[1], b[0], b[1])
    for j in range(200):
        prods = [Fraction(float(x)) * Fraction(float(y)) for x in a[:, j] for y in b[:, j]]  # extremes at corners
        assert Fraction(float(lo[j])) <= min(prods) and Fraction(float(hi[j])) >= max(prods)
        assert float(hi[j]) - float(lo[j]) <= float(max(prods) - min(prods)) * (1 + 1e-12) + 1e-300


def test_layernorm_taylor_constant_on_a_grid():
    """sup |D^2 g[h,h]| sqrt(d) sigma^2 / |h|^2 = sqrt(F) with F(x, b) = b(1+2x-3xb)^2 + 4x(1-x)b on
    [0,1]^2 (x = cos^2 of the angle of h to y, b = |y|^2/(d sigma^2)). A grid plus a Lipschitz margin
    (|dF/dx| <= 16, |dF/db| <= 28 on the square) shows F <= 4/3 + 3e-3, so the remainder
    (1/2) sqrt(F) |h|^2 / (sqrt(d) sigma^2) is below LN_REMAINDER = 0.6."""
    n = 4001
    x = np.linspace(0, 1, n)[:, None]
    b = np.linspace(0, 1, n)[None, :]
    F = b * (1 + 2 * x - 3 * x * b) ** 2 + 4 * x * (1 - x) * b
    h = 1.0 / (n - 1)
    bound = F.max() + (16 + 28) * h / 2
    assert F.max() == pytest.approx(4 / 3, abs=1e-6)
    assert 0.5 * math.sqrt(bound) <= rules.LN_REMAINDER


def test_layernorm_hessian_formula_against_finite_differences():
    rng = np.random.default_rng(4)
    worst = 0.0
    for _ in range(3000):
        d = int(rng.integers(2, 20))
        eps = 10.0 ** rng.uniform(-6, 0)
        y = rng.standard_normal(d) * 10.0 ** rng.uniform(-3, 1)
        hv = rng.standard_normal(d)
        hv /= np.linalg.norm(hv)

        def g(v, d=d, eps=eps):
            return v / np.sqrt(v @ v / d + eps)

        t = 1e-4 * max(1e-2, np.sqrt(y @ y / d + eps))
        D2 = (g(y + t * hv) - 2 * g(y) + g(y - t * hv)) / t**2
        worst = max(worst, np.linalg.norm(D2) * math.sqrt(d) * (y @ y / d + eps))
    assert worst <= math.sqrt(4 / 3) * 1.01


# ------------------------------------------------------------------ AffineSet operations
def test_affine_set_operations_contain_images():
    rng = np.random.default_rng(5)
    for trial in range(40):
        d = int(rng.integers(2, 12))
        S = random_set(rng, d, scale=rng.uniform(0.01, 3))
        co = coefficients(S, 300, rng)
        X = points(S, co, rng)
        assert_inside(S, X, rng, what="input")
        W = rng.standard_normal((d, int(rng.integers(1, 10))))
        bias = rng.standard_normal(W.shape[1])
        T = S.affine(W, bias)
        assert_inside(T, X @ W + bias, rng, what="affine")
        a = rng.standard_normal(d)
        assert_inside(S.scale(a), X * a, rng, what="scale")
        assert_inside(S.center_coords(), X - X.mean(axis=1, keepdims=True), rng, what="center")
        # add: a second set sharing S's symbols (computed from the same coefficients) plus its own
        W2 = rng.standard_normal((d, d))
        T2 = S.affine(W2)
        own = random_set(rng, d, kinds=("zono",))
        co2 = coefficients(own, 300, rng)
        Y = X @ W2 + points(own, co2, rng, box=False) - own.center
        U = S.add(T2.add(AffineSet(np.zeros(d), own.box, own.terms)))
        assert_inside(U, X + Y, rng, what=f"add {trial}")
        C = S.collapse()
        assert_inside(C, X, rng, what="collapse")
        assert np.linalg.norm(X - C.center, axis=1).max() <= C.r_cap * (1 + 1e-12)
        assert np.linalg.norm(X - S.center, axis=1).max() <= S.l2_radius() * (1 + 1e-12)


def test_exact_support_is_attained_by_vertices():
    """For a block-only set the exact functional bound equals the best vertex (up to rounding)."""
    rng = np.random.default_rng(6)
    for _ in range(20):
        d = 6
        V = rng.standard_normal((7, 3))
        M = rng.standard_normal((3, d))
        S = AffineSet.point(rng.standard_normal(d))
        S.terms.append(make_block(V, M))
        A = rng.standard_normal((d, 5))
        lo, hi = S.functional_bounds(A, exact=np.arange(5))
        vals = (S.center + V @ M) @ A
        np.testing.assert_allclose(lo, vals.min(axis=0), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(hi, vals.max(axis=0), rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------ LayerNorm
@pytest.mark.parametrize("scale", [1e-3, 0.1, 1.0, 5.0])
def test_ln_set_contains_layernorm_of_samples(scale):
    rng = np.random.default_rng(7)
    for _ in range(15):
        d = int(rng.integers(3, 16))
        S = random_set(rng, d, scale=scale)
        w = rng.standard_normal(d) + 1
        b = rng.standard_normal(d) * 0.2
        eps = 1e-5
        X = points(S, coefficients(S, 400, rng), rng)
        Y = X - X.mean(axis=1, keepdims=True)
        Z = Y / np.sqrt((Y * Y).mean(axis=1, keepdims=True) + eps) * w + b
        assert_inside(rules.ln_set(S, w, b, eps), Z, rng, what=f"ln scale={scale}")


def test_ln_points_against_arb(high_precision):
    rng = np.random.default_rng(8)
    d = 7
    x = rng.standard_normal((5, d)) * 3
    xerr = np.abs(rng.standard_normal((5, d))) * 1e-9
    w, b = rng.standard_normal(d), rng.standard_normal(d)
    z, zerr = rules.ln_points(x, xerr, w, b, 1e-5)
    for i in range(5):
        for shift in (-1, 0, 1):  # the corners of the error box (and the center)
            xs = [arb(float(x[i, j])) + shift * arb(float(xerr[i, j])) * (1 if j % 2 else -1) for j in range(d)]
            mean = sum(xs, arb(0)) / d
            ys = [v - mean for v in xs]
            sig = (sum((v * v for v in ys), arb(0)) / d + arb(1e-5)).sqrt()
            for j in range(d):
                exact = ys[j] / sig * arb(float(w[j])) + arb(float(b[j]))
                assert abs(exact - arb(float(z[i, j]))).upper() <= arb(float(zerr[i, j]))


# ------------------------------------------------------------------ activations and MLP
@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_activation_relaxation_holds_on_dense_samples(act):
    rng = np.random.default_rng(9)
    lo = rng.standard_normal(300) * 3
    width = np.abs(rng.standard_normal(300)) * 10.0 ** rng.uniform(-8, 1, 300)
    width[:20] = 0.0
    hi = lo + width
    a, b, mu = rules.relax_activation(lo, hi, act)
    t = np.concatenate([np.linspace(0, 1, 2001), [0.0, 1.0]])
    P = lo[:, None] + width[:, None] * t[None, :]
    P = np.concatenate([P, np.clip(np.zeros((300, 1)), lo[:, None], hi[:, None])], axis=1)
    if act == "relu":
        F = np.maximum(P, 0)
    else:
        from scipy.special import erf

        F = 0.5 * P * (1 + erf(P / math.sqrt(2)))
    gap = np.abs(F - a[:, None] * P - b[:, None])
    assert np.all(gap <= mu[:, None] * (1 + 1e-9) + 1e-13)
    # not absurd: for crossing ReLUs mu is the DeepZ half-width
    if act == "relu":
        cross = (lo < 0) & (hi > 0)
        np.testing.assert_allclose(mu[cross], -a[cross] * lo[cross] / 2, rtol=1e-6)


@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_mlp_set_contains_samples(act):
    rng = np.random.default_rng(10)
    for _ in range(10):
        d, m = int(rng.integers(3, 10)), int(rng.integers(3, 20))
        S = random_set(rng, d, scale=rng.uniform(0.01, 1))
        W_in, b_in = rng.standard_normal((d, m)), rng.standard_normal(m)
        W_out, b_out = rng.standard_normal((m, d)), rng.standard_normal(d)
        X = points(S, coefficients(S, 400, rng), rng)
        P = X @ W_in + b_in
        if act == "relu":
            H = np.maximum(P, 0)
        else:
            from scipy.special import erf

            H = 0.5 * P * (1 + erf(P / math.sqrt(2)))
        assert_inside(rules.mlp_set(S, W_in, b_in, W_out, b_out, act), H @ W_out + b_out, rng, what=act)


# ------------------------------------------------------------------ attention
def softmax_avg(s, V):
    w = np.exp(s - s.max())
    return w @ V / w.sum()


def test_anchor_average_with_perturbed_scores_and_values():
    rng = np.random.default_rng(11)
    for _ in range(50):
        n, k = int(rng.integers(1, 30)), int(rng.integers(1, 6))
        s = rng.standard_normal(n) * 3
        srad = np.abs(rng.standard_normal(n)) * 10.0 ** rng.uniform(-12, -1)
        V = rng.standard_normal((n, k))
        Vbox = np.abs(rng.standard_normal((n, k))) * 1e-6
        o, obox, m, wa_lo = rules.anchor_average(s, srad, V, Vbox)
        for _ in range(50):
            st = s + rng.uniform(-1, 1, n) * srad
            Vt = V + rng.uniform(-1, 1, V.shape) * Vbox
            ot = softmax_avg(st, Vt)
            assert np.all(np.abs(ot - o) <= obox * (1 + 1e-9) + 1e-14)
            assert np.exp(st - m).sum() >= wa_lo


@pytest.mark.parametrize("shared", [False, True])
def test_head_output_set_and_lambda_max_contain_every_choice(shared):
    """Anchors with known scores, free positions with a few variants each (their own value rows, or
    rows shared by all positions as with RoPE at layer 0): for random choices the true head output
    lies in the set, and the true weight on free positions is at most Lambda."""
    rng = np.random.default_rng(12)
    for _ in range(40):
        n, k, d = int(rng.integers(1, 25)), int(rng.integers(1, 5)), int(rng.integers(1, 6))
        nfree, nvar = int(rng.integers(1, 4)), int(rng.integers(1, 6))
        s = rng.standard_normal(n) * 2
        V = rng.standard_normal((n, k))
        fs = rng.standard_normal((nfree, nvar)) * 2 + rng.uniform(-3, 3)
        fV = rng.standard_normal((nfree, nvar, k))
        if shared:
            fV[:] = fV[0]
        o, obox, m, wa_lo = rules.anchor_average(s, np.zeros(n), V, np.zeros((n, k)))
        W_O = rng.standard_normal((k, d))
        if shared:
            groups = [(fV[0], np.zeros((nvar, k)), [fs[i] for i in range(nfree)])]
        else:
            groups = [(fV[i], np.zeros((nvar, k)), [fs[i]]) for i in range(nfree)]
        S, lam = rules.head_output_set(o, obox, m, wa_lo, groups, W_O, runs=8)
        outs = []
        for _ in range(300):
            choice = rng.integers(0, nvar, nfree)
            if rng.random() < 0.3:
                choice[:] = int(np.argmax(fs.max(axis=0)))  # the most attended token everywhere
            allS = np.concatenate([s, fs[np.arange(nfree), choice]])
            allV = np.concatenate([V, fV[np.arange(nfree), choice]])
            w = np.exp(allS - allS.max())
            lam_true = w[n:].sum() / w.sum()
            assert lam_true <= lam * (1 + 1e-12)
            outs.append(softmax_avg(allS, allV) @ W_O)
        assert_inside(S, np.array(outs), rng, what="head")


def test_pooled_max_bounds_the_lp_optimum():
    """pooled_max against the LP it relaxes (scipy's linprog), and at most a little above it."""
    from scipy.optimize import linprog

    from assay.prove.affine import pooled_max

    rng = np.random.default_rng(14)
    for _ in range(80):
        N = int(rng.integers(2, 10))
        cut = int(rng.integers(1, N))
        starts = np.array([0, cut])
        mult = rng.integers(1, 4, size=2).astype(float)
        x = rng.standard_normal(N)
        scale = rng.uniform(0, 1, N)
        total = float(rng.uniform(0.05, 2))
        pscale = random_pscale(rng, starts, mult, N)
        # variables a_(p, b) for every position p (mult copies per group) and row b of its group, with
        # that position's scale s_pb
        groups = [range(0, cut), range(cut, N)]
        cols, sc, A_pos = [], [], []
        for g, rows in enumerate(groups):
            per = pscale[g] if pscale is not None else None
            pos = ([scale[rows.start:rows.stop]] * int(mult[g]) if per is None
                   else [sq for sq, n in zip(*per, strict=True) for _ in range(int(n))])
            for sq in pos:
                A_pos.append([len(cols) + j for j in range(len(rows))])
                cols.extend(rows)
                sc.extend(sq)
        nv = len(cols)
        c = -np.array([s_ * x[b] for s_, b in zip(sc, cols, strict=True)])
        A_ub = [np.array(sc)]
        b_ub = [total]
        for idx in A_pos:
            row = np.zeros(nv)
            row[idx] = 1.0
            A_ub.append(row)
            b_ub.append(1.0)
        lp = linprog(c, A_ub=np.array(A_ub), b_ub=b_ub, bounds=[(0, None)] * nv)
        ub = pooled_max(x[:, None], scale, starts, mult, total, pscale)[0]
        assert ub >= -lp.fun - 1e-12
        assert ub <= -lp.fun + 0.25 * abs(lp.fun) + 1e-9  # the grid over t costs a little


def test_capped_max_of_one_group_is_the_grid_bound_exactly_and_bounds_the_lp(monkeypatch):
    """capped_max's one-group path (every t at once, over blocks of rows) against the same Lagrangian
    bound evaluated in exact rationals, min over the grid t = f * max(0, max_b X_b) of
    total * t + m * max(0, max_b s_b (X_b - t)), which it may exceed only by its rounding allowance;
    and against the LP it relaxes (scipy's linprog), column by column. Blocks of a few rows, so that
    the running maximum crosses many of them; both layouts (rows along the last axis, for few columns,
    or along the first)."""
    from fractions import Fraction

    from scipy.optimize import linprog

    from assay.prove import affine

    rng = np.random.default_rng(23)
    for chunk, narrow in itertools.product((7 * 3, 1 << 17), (0, 32)):  # narrow 0: no transposed blocks
        monkeypatch.setattr(affine, "POOL_CHUNK", chunk)
        monkeypatch.setattr(affine, "POOL_NARROW", narrow)
        for _ in range(8):
            N, K = int(rng.integers(1, 40)), int(rng.integers(1, 5))
            X = rng.standard_normal((N, K)) * rng.uniform(0.1, 10)
            X[:, 0] = -np.abs(X[:, 0])  # a column with no positive entry: t = 0 only
            scale = rng.uniform(0, 1, N)
            m, total = float(rng.integers(1, 6)), float(rng.uniform(0.05, 3))
            got = affine.capped_max(X, scale, np.array([0]), np.array([m]), total)
            with monkeypatch.context() as mp:  # the loop over t: the same operations, the same numbers
                mp.setattr(affine, "BLOCKED", False)
                assert np.array_equal(affine.capped_max(X, scale, np.array([0]), np.array([m]), total), got)
            for k in range(K):
                xs, ss = [Fraction(float(v)) for v in X[:, k]], [Fraction(float(v)) for v in scale]
                top = max(Fraction(0), max(xs))

                def bound(t, xs=xs, ss=ss, m=m, total=total):
                    return Fraction(total) * t + Fraction(m) * max(
                        Fraction(0), max(s_ * (x - t) for s_, x in zip(ss, xs, strict=True)))

                exact = min(bound(Fraction(float(top) * f)) for f in affine.POOL_T)
                assert Fraction(float(got[k])) >= exact
                assert float(got[k]) <= float(exact) * (1 + 1e-12) + 1e-12 * float(top + 1)
                # the LP: m positions, each a_pb >= 0 with sum_b a_pb <= 1, and sum a_pb s_b <= total
                nv = int(m) * N
                A_ub = [np.tile(scale, int(m))] + [np.repeat(np.eye(int(m)), N, axis=1)[p] for p in range(int(m))]
                lp = linprog(-np.tile(scale * X[:, k], int(m)), A_ub=np.array(A_ub), b_ub=[total] + [1.0] * int(m),
                             bounds=[(0, None)] * nv)
                assert lp.status == 0 and got[k] >= -lp.fun - 1e-12
        assert affine.capped_max(np.zeros((5, 0)), np.ones(5), np.array([0]), np.array([2.0]), 1.0).shape == (0,)
    # overflowed inputs take the same path as the loop (no shortcut at t = top): the same inf / NaN
    X = rng.standard_normal((30, 3))
    X[4, 1], X[7, 2] = np.inf, np.nan
    with np.errstate(invalid="ignore"):
        got = affine.capped_max(X, np.full(30, 0.5), np.array([0]), np.array([2.0]), 1.0)
        monkeypatch.setattr(affine, "BLOCKED", False)
        want = affine.capped_max(X, np.full(30, 0.5), np.array([0]), np.array([2.0]), 1.0)
    assert np.array_equal(got, want, equal_nan=True) and np.isnan(got[1:]).all()


def test_rotation_against_arb(high_precision):
    rng = np.random.default_rng(13)
    rd = 6
    pos = np.array([0, 1, 7, 1000, 4095])
    cos, sin, cerr = rules.rope_cos_sin(pos, rd, 10000.0)
    x = rng.standard_normal((1, len(pos), 8))
    out, obox = rules.rotate(x, np.zeros_like(x), cos, sin, cerr)
    for pi, p in enumerate(pos):
        for i in range(rd // 2):
            ang = arb(int(p)) * arb(10000) ** (arb(-2 * i) / rd)
            c, s_ = ang.cos(), ang.sin()
            x1, x2 = arb(float(x[0, pi, i])), arb(float(x[0, pi, i + rd // 2]))
            e1 = x1 * c - x2 * s_
            e2 = x2 * c + x1 * s_
            assert abs(e1 - arb(float(out[0, pi, i]))).upper() <= arb(float(obox[0, pi, i]))
            assert abs(e2 - arb(float(out[0, pi, i + rd // 2]))).upper() <= arb(float(obox[0, pi, i + rd // 2]))
        assert np.array_equal(out[0, pi, rd:], x[0, pi, rd:])


# ------------------------------------------------------------------ LayerNorm -> MLP pre-activations
def radial_set(rng, d, spread, center=None) -> AffineSet:
    """A set spread mostly along its own center (what attention to free tokens does to a residual),
    plus a little in other directions: the case the scalar-remainder bound is for."""
    c = rng.standard_normal(d) * 0.2 if center is None else center
    S = AffineSet.point(c, np.abs(rng.standard_normal(d)) * 1e-4)
    S.terms.append(Term(new_id(), "zono", np.vstack([c * spread, rng.standard_normal((2, d)) * 0.02 * spread])))
    return S


def _preact_case(S, rng, m):
    d = S.d
    w, b = rng.standard_normal(d) + 1, rng.standard_normal(d) * 0.2
    W_in, b_in = rng.standard_normal((d, m)) / math.sqrt(d), rng.standard_normal(m) * 0.3
    eps = 1e-5
    xn, e = rules.ln_taylor(S, w, b, eps)
    P = xn.affine(W_in, b_in)
    X = points(S, coefficients(S, 600, rng), rng)
    Y = X - X.mean(axis=1, keepdims=True)
    true = (Y / np.sqrt((Y * Y).mean(axis=1, keepdims=True) + eps) * w + b) @ W_in + b_in
    return w, b, W_in, b_in, eps, xn, e, P, true


def test_ln_preact_bounds_beat_the_remainder_ball_on_radial_sets():
    # Along the center LayerNorm is nearly constant; the Taylor ball does not know it, this bound does.
    rng = np.random.default_rng(22)
    ratios = []
    for _ in range(10):
        S = radial_set(rng, 32, 0.3)
        w, b, W_in, b_in, eps, xn, e, P, true = _preact_case(S, rng, 64)
        lo, hi = P.coord_bounds()
        nlo, nhi = rules.ln_preact_bounds(e, P, W_in, b_in)
        ratios.append(float(np.median((nhi - nlo) / (hi - lo))))
    assert max(ratios) < 0.7, ratios


def test_mlp_set_after_layernorm_contains_samples():
    rng = np.random.default_rng(23)
    for radial in (True, False) * 5:
        d, m = int(rng.integers(4, 16)), int(rng.integers(3, 24))
        S = radial_set(rng, d, rng.uniform(0.05, 0.3)) if radial else random_set(rng, d, rng.uniform(0.01, 0.3))
        w, b, W_in, b_in, eps, xn, e, P, true = _preact_case(S, rng, m)
        W_out, b_out = rng.standard_normal((m, d)), rng.standard_normal(d)
        out = rules.mlp_set(xn, W_in, b_in, W_out, b_out, "relu", e)
        assert_inside(out, np.maximum(true, 0) @ W_out + b_out, rng, what=f"ln+mlp radial={radial}")


def _preact_input_set(rng, kind: str, d: int) -> AffineSet:
    """Input sets for the LayerNorm -> pre-activation bounds: "radial" (spread along the center),
    "random" (every kind of term), "boxed" (most of the spread in the box, which the pre-activation set
    scales by the sigma ratio too), "offcenter" (a block of rows far from 0: the expansion point, the
    box midpoint, is not the center, so the linear part has an offset at its center)."""
    if kind == "radial":
        return radial_set(rng, d, rng.uniform(0.01, 0.3))
    if kind == "random":
        return random_set(rng, d, rng.uniform(0.01, 0.5))
    if kind == "boxed":
        S = radial_set(rng, d, rng.uniform(0.01, 0.1))
        S.box = np.abs(S.center) * rng.uniform(0.05, 0.2)
        return S
    S = AffineSet.point(rng.standard_normal(d) * 0.3, np.full(d, 1e-4))
    V = 1.0 + 0.3 * rng.standard_normal((5, 2))
    S.terms.append(make_block(V, rng.standard_normal((2, d)) * rng.uniform(0.05, 0.15)))
    return S


@pytest.mark.parametrize("kind", ["radial", "random", "boxed", "offcenter"])
def test_ln_preact_bounds_and_set_contain_every_sampled_preactivation(kind):
    # The identity p = v + q l(h) - rho c, as per-neuron ranges and as a set: every coordinate, and for
    # the set also random functionals.
    rng = np.random.default_rng(25)
    checked = 0
    for _ in range(20):
        d, m = int(rng.integers(4, 24)), int(rng.integers(3, 30))
        w, b, W_in, b_in, eps, xn, e, P, true = _preact_case(_preact_input_set(rng, kind, d), rng, m)
        if e is None:
            continue  # the set is too wide for a Taylor expansion: nothing to bound
        lo, hi = rules.ln_preact_bounds(e, P, W_in, b_in)
        assert np.all(true >= lo - TOL * (1 + np.abs(lo))), f"{kind}: below by {np.max(lo - true)}"
        assert np.all(true <= hi + TOL * (1 + np.abs(hi))), f"{kind}: above by {np.max(true - hi)}"
        assert_inside(rules.ln_preact_set(e, P, W_in, b_in), true, rng, n_dirs=32, what=kind)
        checked += 1
    assert checked >= 10


def test_ln_preact_set_beats_the_taylor_set_in_most_directions():
    # The Taylor set carries a remainder ball that projects fully onto every direction; the set keeps
    # only a rank-one second-order term and the relative spread of sigma. Widths of random functionals:
    rng = np.random.default_rng(26)
    ratios = []
    for _ in range(10):
        S = radial_set(rng, 32, 0.3)
        w, b, W_in, b_in, eps, xn, e, P, true = _preact_case(S, rng, 64)
        A = rng.standard_normal((64, 32))
        lo, hi = P.functional_bounds(A, exact=np.arange(32))
        nlo, nhi = rules.ln_preact_set(e, P, W_in, b_in).functional_bounds(A, exact=np.arange(32))
        ratios.append(float(np.median((nhi - nlo) / (hi - lo))))
    assert max(ratios) < 0.8, ratios


def test_signed_copy_holds_every_scaled_reflection():
    from assay.prove.affine import signed_copy

    rng = np.random.default_rng(27)
    for _ in range(10):
        d = int(rng.integers(2, 12))
        S = random_set(rng, d)
        S.coord_bounds()  # cached deviations are reused by signed_copy: test that path too
        coefs = coefficients(S, 300, rng)
        f = float(rng.uniform(0.05, 2.0))
        for t in S.terms:
            new, box = signed_copy(t, f)
            s = rng.uniform(-1, 1, (300, 1))
            s[:100] = np.sign(s[:100])
            X = s * f * (coefs[t.id] @ t.M)
            assert_inside(AffineSet(np.zeros(d), box, [new]), X, rng, what=t.kind)


def test_norm_upper_bound_holds_and_beats_the_triangle_inequality_across_the_center():
    rng = np.random.default_rng(28)
    gains = []
    for _ in range(20):
        d = int(rng.integers(3, 20))
        S = random_set(rng, d, rng.uniform(0.1, 1.0))
        X = points(S, coefficients(S, 500, rng), rng)
        for p in (S.center, S.center + rng.standard_normal(d) * 0.1):
            nub = rules.norm_upper_bound(S, p)
            assert np.linalg.norm(X, axis=1).max() <= nub * (1 + 1e-12)
        # a set spread perpendicular to its center: |c| + R is far above the true sup |y|
        c = rng.standard_normal(d) * 3
        Z = rng.standard_normal((2, d))
        Z -= np.outer(Z @ c, c) / (c @ c)
        T = AffineSet(c, np.zeros(d), [Term(new_id(), "zono", Z)])
        gains.append(rules.norm_upper_bound(T, c) / (np.linalg.norm(c) + T.l2_radius()))
    assert max(gains) < 1.0 and float(np.median(gains)) < 0.95, gains


@pytest.mark.parametrize("kind", ["zono", "offcenter"])
def test_checker_ln_preact_bounds_and_set_contain_samples_and_match_the_prover(kind):
    # The checker's ranges and set hold every sampled pre-activation and agree with the prover's.
    # "offcenter": a block of rows far from 0, so that LayerNorm is expanded at the box midpoint and
    # the linear part has an offset at its center (the generator k (z_c - v) of ln_preact_set).
    C = importlib.import_module("assay.prove.check")

    rng = np.random.default_rng(29)
    for _ in range(3):
        d, m = 6, 5
        c = rng.standard_normal(d) * 0.2
        box = np.abs(c) * 0.05  # a box too, which the set scales by the sigma ratio
        if kind == "zono":
            Z = np.vstack([c * 0.2, rng.standard_normal((1, d)) * 0.01])
            cterm = C.CTerm(next(C._ids), "zono", arb_mat(Z.tolist()))
            pterm = Term(new_id(), "zono", Z)
            E = rng.uniform(-1, 1, (400, 2))
            E[:100] = np.sign(E[:100])
        else:
            Vb = 1.0 + 0.3 * rng.standard_normal((4, 2))
            Z = rng.standard_normal((2, d)) * 0.05
            cterm = C.make_block(arb_mat(Vb.tolist()), arb_mat(Z.tolist()))
            pterm = make_block(Vb, Z)
            E = rng.dirichlet(np.ones(4) * 0.3, size=400)
            E[:100] = np.eye(4)[rng.integers(0, 4, 100)]
            E = E @ Vb
        S = C.CSet([C._f(x) for x in c], [C._f(x) for x in box], [cterm])
        w, b = rng.standard_normal(d) + 1, rng.standard_normal(d) * 0.2
        W_in, b_in = rng.standard_normal((d, m)) / math.sqrt(d), rng.standard_normal(m) * 0.3
        eps = 1e-5
        lw = {"ln2": ([C._f(x) for x in w], [C._f(x) for x in b]), "W_in": arb_mat(W_in.tolist()),
              "|W_in|": arb_mat(np.abs(W_in).tolist()), "b_in": [C._f(x) for x in b_in]}
        xn, e = C.ln_taylor(S, *lw["ln2"], C._f(eps))
        assert e is not None
        Pa = xn.affine(lw["W_in"], lw["|W_in|"], lw["b_in"])
        Pc = C.ln_preact_set(Pa, e, lw)
        lo, hi = Pc.coord_bounds()
        blo, bhi = C.ln_preact_bounds(Pa, e, lw)
        A = rng.standard_normal((m, 8))
        flo = Pc.functional_lower(arb_mat(A.tolist()), arb_mat(np.abs(A).tolist()), exact=list(range(8)))
        X = c + E @ Z + np.sign(rng.uniform(-1, 1, (400, d))) * box
        Y = X - X.mean(axis=1, keepdims=True)
        true = (Y / np.sqrt((Y * Y).mean(axis=1, keepdims=True) + eps) * w + b) @ W_in + b_in
        for j in range(m):
            for low, high in ((lo, hi), (blo, bhi)):
                assert float(low[j].lower()) <= true[:, j].min() + 1e-12
                assert float(high[j].upper()) >= true[:, j].max() - 1e-12
        vals = true @ A
        for k in range(8):
            assert float(flo[k].lower()) <= vals[:, k].min() + 1e-12
        # the prover's set gives the same bounds up to its rounding allowances
        P = rules.ln_taylor(AffineSet(c, box.copy(), [pterm]), w, b, eps)
        Pn = P[0].affine(W_in, b_in)
        Pp = rules.ln_preact_set(P[1], Pn, W_in, b_in)
        for (plo, phi), (low, high) in ((Pp.coord_bounds(), (lo, hi)),
                                        (rules.ln_preact_bounds(P[1], Pn, W_in, b_in), (blo, bhi))):
            assert np.allclose(plo, [float(x.mid()) for x in low], rtol=1e-6, atol=1e-9)
            assert np.allclose(phi, [float(x.mid()) for x in high], rtol=1e-6, atol=1e-9)
        pf = Pp.functional_bounds(A, exact=np.arange(8))[0]
        assert np.allclose(pf, [float(x.mid()) for x in flo], rtol=1e-6, atol=1e-9)


def test_position_buckets_take_the_largest_scale_of_each_run_of_positions():
    rng = np.random.default_rng(21)
    per = [rng.uniform(0, 1, 5) for _ in range(11)]
    S, counts = rules.position_buckets(per, 8)
    assert S.shape == (8, 5) and counts.sum() == 11
    ends = np.cumsum(counts).astype(int)
    for q, (a, b) in enumerate(zip(np.concatenate([[0], ends[:-1]]), ends, strict=True)):
        assert b > a and np.array_equal(S[q], np.max(per[a:b], axis=0))
    S3, c3 = rules.position_buckets(per[:3], 8)  # few positions: one bucket each
    assert np.array_equal(S3, np.stack(per[:3])) and c3.tolist() == [1, 1, 1]
    assert rules.position_buckets([per[0]] * 4, 8) is None  # same scales everywhere: the group's vector
    assert rules.position_buckets(per[:1], 8) is None
    S32, c32 = rules.position_buckets(per, 32)  # method /8: up to 32 runs, here one per position
    assert np.array_equal(S32, np.stack(per)) and c32.tolist() == [1] * 11
    Rlo, Rhi, rc = rules.ratio_buckets(per, [x + 1 for x in per], 4)
    ends = np.cumsum(rc).astype(int)
    assert rc.sum() == 11 and len(rc) == 4
    for q, (a, b) in enumerate(zip(np.concatenate([[0], ends[:-1]]), ends, strict=True)):
        assert np.array_equal(Rlo[q], np.min(per[a:b], axis=0)) and np.array_equal(Rhi[q], np.max(per[a:b], axis=0) + 1)


def test_per_position_caps_and_score_ratios_are_sound_tighter_and_checked(monkeypatch):
    # RoPE gives each free position its own attention caps, and the softmax weights are ratios of
    # exponentiated scores (affine.ratio_max). Three provers: the largest cap over the positions and no
    # ratios (the bound before), per-position caps, and both. Every margin at least as large as the one
    # before it, a proven claim larger at each step, every claim confirmed by enumeration and every
    # certificate accepted by the checker.
    from assay.prove import check, prove
    from assay.prove.bruteforce import enumerate_claim
    from assay.prove.toy import toy_model

    rng = np.random.default_rng(5)
    model = toy_model(0, positional="rotary", qk=2.0, embed=5.0, unembed=2.0)
    claims = [([int(x) for x in rng.integers(0, 6, int(rng.integers(8, 16)))], int(rng.integers(2, 4)),
               [int(rng.integers(0, 6))]) for _ in range(8)]
    runs = []
    for caps, ratios in ((False, False), (True, False), (True, True)):
        with monkeypatch.context() as mp:
            if not caps:
                mp.setattr(rules, "position_buckets", lambda per, runs: None)
            if not ratios:
                mp.setattr(rules, "anchor_mass_hi", lambda s, srad, m: math.inf)  # no ratio ranges
            runs.append([prove(model, p, n, suffix=q) for p, n, q in claims])
    for before, after in itertools.pairwise(runs):
        gains = [a.best_margin - b.best_margin for a, b in zip(after, before, strict=True)]
        assert min(gains) >= -1e-9, gains
        assert max(g for g, r in zip(gains, after, strict=True) if r.proven) > 1e-2, gains  # a proven claim gains
    new = runs[-1]
    assert sum(r.proven for r in new) >= 4
    for (p, n, q), r in zip(claims, new, strict=True):
        if r.proven:
            e = enumerate_claim(model, p, n, q)
            assert e.min_margin[r.token] >= r.margin - 1e-9
            assert check(r.certificate, model)


def _ratio_brute(X: np.ndarray, groups: list[tuple[int, int, list[tuple[np.ndarray, np.ndarray]]]]) -> float:
    """The largest sum_i r_i X_(b_i) / (1 + sum_i r_i) over every choice of rows (one per position) and
    every r_i in its range, (g0, g1, per position (rlo, rhi)) per group. For fixed rows and the other
    ratios the quotient is monotone in each r_i (a linear-fractional function), so the maximum is at
    a vertex of the box of ratios: enumerating rows and vertices is exact."""
    import itertools

    positions = [(g0, rr) for g0, g1, per in groups for rr in per]
    best = -np.inf
    choices = [range(len(rr[0])) for _g0, rr in positions]
    for pick in itertools.product(*choices):
        for ends in itertools.product((0, 1), repeat=len(positions)):
            num, den = 0.0, 1.0
            for (g0, rr), b, e in zip(positions, pick, ends, strict=True):
                r = rr[e][b]
                num += r * X[g0 + b]
                den += r
            best = max(best, num / den)
    return best


@pytest.mark.parametrize("point", [True, False])
def test_ratio_max_is_the_support_over_every_choice_of_rows_and_ratios(point):
    """affine.ratio_max and the checker's _ratio_max against enumeration of every row choice and every
    vertex of the ratio ranges: with one position per run the condition F(theta) <= theta is exactly
    sup <= theta, so both bounds are the exact support (to rounding), for point and interval ranges."""
    from assay.prove.affine import ratio_max

    C = importlib.import_module("assay.prove.check")
    rng = np.random.default_rng(31 if point else 32)
    for _ in range(25):
        sizes = [int(rng.integers(1, 5)) for _ in range(int(rng.integers(1, 3)))]
        starts = np.cumsum([0] + sizes[:-1])
        X = rng.standard_normal(sum(sizes)) * 3 + rng.uniform(-3, 3)  # sometimes every row below 0
        ratios, groups = [], []
        for g0, n in zip(starts, sizes, strict=True):
            npos = int(rng.integers(1, 4))
            rhi = rng.uniform(0, 2, (npos, n)) * 10.0 ** rng.uniform(-2, 0)
            rlo = rhi if point else rhi * rng.uniform(0.5, 1, (npos, n))
            ratios.append((rlo, rhi, np.ones(npos)))
            groups.append((int(g0), int(g0) + n, [(rlo[p], rhi[p]) for p in range(npos)]))
        want = _ratio_brute(X, groups)
        got = float(ratio_max(X[:, None], starts, tuple(ratios))[0])
        assert want <= got <= want + 1e-9 * (1 + abs(want))
        cols = C._Cols.of_list([[arb(float(x))] for x in X])
        cr = [([[arb(float(v)) for v in row] for row in rlo], [[arb(float(v)) for v in row] for row in rhi],
               [arb(1)] * len(rlo)) for rlo, rhi, _c in ratios]
        cgot = C._ratio_max(cols, [int(g) for g in starts], cr)[0]
        assert cgot is not None and cgot >= arb(want).upper()
        assert float(cgot) <= want + 1e-9 * (1 + abs(want))


def test_ratio_max_on_the_largest_rows_equals_it_on_every_row(monkeypatch):
    # Many rows in one group: ratio_max works on each column's largest entries (with checks that send a
    # column back to every row). Against the same root over every row, and never below the value of
    # sampled row choices; columns with every entry negative take the fallback.
    from assay.prove import affine

    rng = np.random.default_rng(33)
    N, K, nb = 4 * affine.RATIO_KEEP + 100, 40, 3
    X = rng.standard_normal((N, K))
    X[:, :5] -= 10.0  # every entry below 0: the checks fail, these columns use every row
    X[:, 5] = 0.0
    rhi = rng.uniform(0, 0.2, (nb, N))
    rlo = rhi * rng.uniform(0.9, 1.0, (nb, N))
    counts = np.array([3.0, 1.0, 2.0])
    calls = []  # (rows, columns) of every root solved
    real_root = affine._ratio_root
    monkeypatch.setattr(affine, "_ratio_root",
                        lambda parts, k, *a: calls.append((parts[0][0].shape[0], k)) or real_root(parts, k, *a))
    got = affine.ratio_max(X, np.array([0]), ((rlo, rhi, counts),), total=1.0)
    monkeypatch.undo()
    # the pruned path ran for most columns, on far fewer rows, and the all-negative ones on every row
    assert calls[0][0] <= affine.RATIO_KEEP and calls[0][1] >= K // 2
    assert len(calls) == 2 and calls[1][0] == N and calls[1][1] >= 6
    qs = [(rlo[q][:, None], rhi[q][:, None], float(counts[q])) for q in range(nb)]
    want = affine._ratio_root([(X, qs)], K, float(counts.sum()), nb, float(rhi.max()), np.abs(X).max(axis=0))
    assert np.all(np.isfinite(got))
    assert np.allclose(got, want, rtol=1e-12, atol=1e-300)
    for _ in range(200):  # six positions (3 + 1 + 2), each on a random or the column's largest row
        pick = rng.integers(0, N, (6, K))
        on_top = rng.uniform(size=K) < 0.3
        pick[:, on_top] = X.argmax(axis=0)[on_top]
        q_of = [0, 0, 0, 1, 2, 2]
        r = np.stack([rlo[q_of[i]][pick[i]] for i in range(6)])
        val = (r * X[pick, np.arange(K)]).sum(axis=0) / (1 + r.sum(axis=0))
        assert np.all(val <= got)


def test_ratio_max_with_empty_groups_and_misshapen_ranges():
    # A group holding no rows before the one that holds them all gives the same bound as that group
    # alone, on the pruned path too (it read the first group's ranges); ranges whose shape does not
    # match their group's rows are a programming error, not a bound.
    from assay.prove import affine

    rng = np.random.default_rng(34)
    N, K, nb = 4 * affine.RATIO_KEEP + 10, 12, 2
    X = rng.standard_normal((N, K))
    rhi = rng.uniform(0, 0.2, (nb, N))
    one = (rhi * 0.95, rhi, np.array([2.0, 1.0]))
    empty = (np.zeros((1, 0)), np.zeros((1, 0)), np.array([1.0]))
    alone = affine.ratio_max(X, np.array([0]), (one,), total=1.0)
    led = affine.ratio_max(X, np.array([0, 0]), (empty, one), total=1.0)
    assert np.all(np.isfinite(alone))
    assert np.array_equal(alone, led)
    with pytest.raises(ValueError, match="ratio ranges"):
        affine.ratio_max(X, np.array([0]), ((rhi[:, :-1], rhi[:, :-1], one[2]),), total=1.0)


def test_norm_lower_bound_along_the_min_norm_direction_is_the_least_norm():
    # Method /6: |y| >= (least n . y over the set) / |n| for any n. For a polytope (a block term around
    # a center) the least norm is a small QP over the simplex, solved here by scipy; the bound through
    # slopes.min_norm_direction is never above it and about attains it, in the prover and in the
    # checker; it is at least the bound along the box midpoint alone.
    import importlib

    from flint import arb, arb_mat
    from scipy.optimize import minimize

    from assay.prove import rules
    from assay.prove.slopes import min_norm_direction

    C = importlib.import_module("assay.prove.check")
    rng = np.random.default_rng(35)
    gained, short = 0, []
    for _ in range(12):
        d, N = int(rng.integers(3, 7)), int(rng.integers(3, 9))
        V, M = rng.standard_normal((N, 3)), rng.standard_normal((3, d))
        S = AffineSet(rng.standard_normal(d) * rng.uniform(0.5, 3), np.zeros(d), [make_block(V, M)])
        lo, hi = S.coord_bounds()
        ys = 0.5 * (lo + hi)
        P = S.center + V @ M  # the vertices

        def least_norm(P):
            """min |y| over the convex hull of the rows of P (SLSQP from two starts)."""
            k = len(P)
            res = [minimize(lambda w, P=P: float(np.sum((w @ P) ** 2)), w0, method="SLSQP", bounds=[(0, 1)] * k,
                            constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}],
                            options={"ftol": 1e-15, "maxiter": 1000})
                   for w0 in (np.full(k, 1 / k), np.eye(k)[int(np.argmin((P * P).sum(1)))])]
            return min(float(np.sqrt(r.fun)) for r in res)

        on_S, on_hull = least_norm(P), least_norm(np.vstack([P, ys]))  # the bound is over the hull of S, ys
        n = min_norm_direction(S)
        plain = rules.norm_lower_bound(S, lo, hi, ys)
        got = rules.norm_lower_bound(S, lo, hi, ys, n)
        assert plain <= got <= on_hull + 1e-12
        if float(n @ ys) > on_S + 1e-3:  # ys lies beyond the set's nearest face along n: that face bounds
            short.append((on_S - got) / on_S)
            gained += got > plain + 1e-6
        cs = C.CSet([arb(float(x)) for x in S.center], [arb(0)] * d,
                    [C.make_block(arb_mat(V.tolist()), arb_mat(M.tolist()))])
        clo, chi = cs.coord_bounds()
        cys = [arb(float(x)) for x in ys]
        cgot = C.norm_lower_bound(cs, clo, chi, cys, [float(x) for x in n])
        assert cgot <= arb(on_hull + 1e-12) and float(cgot) >= got - 1e-9 * (1 + got)
    # Frank-Wolfe converges like 1/k where the nearest point lies inside a face: within 2.5 % in
    # FW_ITERS steps here, most to rounding
    assert gained >= 3 and max(short) <= 0.025 and float(np.median(short)) <= 1e-6
