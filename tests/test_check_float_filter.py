"""The checker's float64 pass (which rows of a large product can attain a maximum, and the cheap
lower supports) against exact arb arithmetic.

Every float bound must *contain* the exact number it stands for, on inputs chosen to break a careless
error analysis: magnitudes from 1e-300 to 1e300, subnormals, exact ties and 1-ulp near-ties, balls
with radii, infinite entries. The maxima built on the filter must equal the maxima over every row.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from flint import arb, arb_mat

C = importlib.import_module("assay.prove.check")  # the package exports a function named check

RNG = np.random.default_rng(11)


def _wild(shape, rng=RNG) -> np.ndarray:
    """Floats over many magnitudes, with ties, near-ties, zeros and subnormals."""
    x = rng.standard_normal(shape) * 10.0 ** rng.uniform(-12, 12, shape)
    flat = x.reshape(-1)
    n = flat.size
    flat[rng.integers(0, n, max(1, n // 10))] = 0.0
    flat[rng.integers(0, n, max(1, n // 20))] = 5e-324 * rng.integers(1, 9)
    if n > 1:
        flat[1] = np.nextafter(flat[0], np.inf)
    return x


def _balls(a: np.ndarray, rad: float = 0.0) -> arb_mat:
    """An arb matrix of the floats a, with relative radius ``rad`` (through an inexact product)."""
    rows = [[arb(float(v)) for v in r] for r in np.atleast_2d(a)]
    if rad:
        rows = [[v * (1 + arb(0, rad)) for v in r] for r in rows]
    return arb_mat(rows)


def _contains(lo: float, hi: float, x: arb) -> bool:
    """lo <= every point of x <= hi; only lo = -inf or hi = +inf is an unknown bound (never +inf below)."""
    return (lo == -np.inf or (np.isfinite(lo) and arb(lo) <= x.lower())) and (
        hi == np.inf or (np.isfinite(hi) and x.upper() <= arb(hi)))


@pytest.mark.parametrize("rad", [0.0, 1e-9])
def test_product_bounds_contain_every_exact_entry(rad):
    for _ in range(6):
        n, k, m = (int(v) for v in RNG.integers(1, 12, 3))
        V, B = _balls(_wild((n, k)), rad), _balls(_wild((k, m)), rad)
        cols = C._Cols.product(V, B)
        X = (V * B).tolist()
        for i in range(n):
            for j in range(m):
                assert _contains(cols.lo[i, j], cols.hi[i, j], X[i][j]), (i, j, X[i][j], cols.lo[i, j])
                ex = cols.exact([i], j)[0]
                assert ex.overlaps(X[i][j])


def test_product_bounds_of_huge_entries_are_infinite_not_wrong():
    V = _balls(np.array([[1e300, 1e300], [1.0, 2.0]]))
    B = _balls(np.array([[1e300], [-1e300]]))
    cols = C._Cols.product(V, B)
    X = (V * B).tolist()
    for i in range(2):
        assert _contains(cols.lo[i, 0], cols.hi[i, 0], X[i][0])
    assert cols.hi[0, 0] == np.inf and cols.lo[0, 0] == -np.inf  # 1e600 - 1e600 in float: unknown


def test_row_norm_bounds_contain_the_exact_norms():
    # exact inputs (the norm of every row is then one number, enclosed tightly by arb)
    for _ in range(5):
        n, k, d = (int(v) for v in RNG.integers(1, 10, 3))
        V, M = _balls(_wild((n, k))), _balls(_wild((k, d)))
        cache: dict = {}
        norms = C._Cols.row_norms(C._Cols.product(V, M, cache), V, M, cache)
        rows = (V * M).tolist()
        for i in range(n):
            sq = sum((x * x for x in rows[i]), C.ZERO)
            assert norms.lo[i, 0] <= 0 or arb(norms.lo[i, 0]) ** 2 <= sq.lower()
            assert norms.hi[i, 0] == np.inf or sq.upper() <= arb(norms.hi[i, 0]) ** 2
            assert norms.exact([i], 0)[0] >= sq.sqrt().lower()


def _pool(N, rng=RNG, point=True):
    """A random pool; with ``point=False`` one scale (3 2^-1100) lies below the double range, so its
    float bounds differ (0 and 2^-1074) and the filter takes its interval-scale branch. (Every other
    exact arb at 53 bits is a double: arb rounds its midpoints to the working precision.)"""
    cut = sorted(set(rng.integers(1, N, 2).tolist())) if N > 2 else []
    starts = [0] + cut
    scale = [arb(float(x)) for x in rng.uniform(0, 1, N)]
    if not point:
        scale[int(rng.integers(0, N))] = 3 * arb(2) ** -1100
    return (scale, starts, [arb(int(m)) for m in rng.integers(1, 4, len(starts))], arb(float(rng.uniform(0.1, 2))))


def test_maxima_through_the_product_equal_those_over_the_full_arb_product():
    # pooled_max and the block extremes of V B, with V B never formed, against the same functions on
    # every row's exact entry (the float filter may only drop rows that cannot change the result).
    for trial in range(12):
        N, k, K = int(RNG.integers(2, 30)), int(RNG.integers(1, 6)), int(RNG.integers(1, 4))
        Vf = RNG.standard_normal((N, k)) * 10.0 ** RNG.uniform(-6, 6)
        Vf[RNG.integers(0, N, 3)] = Vf[0]  # exact ties
        V, B = _balls(Vf), _balls(_wild((k, K)))
        pool = _pool(N, point=trial % 2 == 0)
        assert (trial % 2 == 0) == bool(np.array_equal(*C._bounds_of(pool[0])))  # both filter branches
        via = C._Cols.product(V, B)
        # the same exact entries, every row of them (they overlap the arb product's)
        full = [[via.exact([i], j)[0] for j in range(K)] for i in range(N)]
        prod = (V * B).tolist()
        assert all(full[i][j].overlaps(prod[i][j]) for i in range(N) for j in range(K))
        assert C.pooled_max(via, pool) == C.pooled_max(full, pool)
        assert C.pooled_max(via.neg(), pool) == C.pooled_max([[-x for x in r] for r in full], pool)
        hi = [max((r[j].upper() for r in full), key=lambda a: a) for j in range(K)]
        got = C._row_max(via)
        assert all(g == h for g, h in zip(got, hi, strict=True))


def _arb_cheap(t, A: arb_mat) -> tuple[list[arb], list[arb]]:
    """The cheap support of a term (both sides) in plain arb, the formula of CTerm._cheap_bounds."""
    B = t.M * A
    rows = B.tolist()
    K = A.ncols()
    if t.kind in ("block", "pooled"):
        lo, hi = [], []
        for j in range(K):
            col = [r[j] for r in rows]
            l2 = t.vnorm * C._norm_up(col)
            pairs = [(a * x, b * x) for a, b, x in zip(t.vlo, t.vhi, col, strict=True)]
            blo = sum((C._emin([p.lower(), q.lower()]) for p, q in pairs), C.ZERO)
            bhi = sum((C._emax([p.upper(), q.upper()]) for p, q in pairs), C.ZERO)
            lo.append(C._emax([(-l2).lower(), blo.lower()]))
            hi.append(C._emin([l2.upper(), bhi.upper()]))
        return lo, hi
    if t.kind == "zono":
        hi = [(sum((abs(r[j]) for r in rows), C.ZERO)).upper() for j in range(K)]
    else:
        hi = [C._norm_up([r[j] for r in rows]) for j in range(K)]
    return [-x for x in hi], hi


@pytest.mark.parametrize("kind", ["block", "pooled", "zono", "ell"])
def test_cheap_bounds_contain_the_exact_support_and_match_the_arb_formula(kind):
    for _ in range(6):
        N, k, d, K = (int(v) for v in RNG.integers(2, 9, 4))
        M = _balls(RNG.standard_normal((k, d)) * 10.0 ** RNG.uniform(-3, 3), 1e-12)
        A = _balls(RNG.standard_normal((d, K)))
        if kind == "block":
            t = C.make_block(_balls(RNG.standard_normal((N, k))), M)
        elif kind == "pooled":
            scale, starts, mult, total = _pool(N)
            t = C.make_pooled(_balls(RNG.standard_normal((N, k))), scale, starts, [int(float(m)) for m in mult],
                              total, M)
        else:
            t = C.CTerm(999, kind, M)
        Am, Ar = C._mid_rad(A.tolist())
        lo, hi = t._cheap_bounds(*C._product_enclosure(*C._mid_rad(M.tolist()), Am, Ar))
        assert np.array_equal(lo, t.cheap_lower(Am, Ar))
        exact_lo, exact_hi = t.support(A)
        ref_lo, ref_hi = _arb_cheap(t, A)
        for j in range(K):
            # sound: outside the exact support on both sides
            assert arb(lo[j]) <= exact_lo[j].lower() and exact_hi[j].upper() <= arb(hi[j])
            # as tight as the same formula in arb, up to float rounding
            for f, r in ((lo[j], ref_lo[j]), (hi[j], ref_hi[j])):
                assert abs(f - float(r.mid())) <= 1e-9 * (1 + abs(float(r.mid())))
        # the coordinate deviations (cheap bound, then the exact one) contain every vertex's coordinates
        if kind in ("block", "pooled"):
            dlo, dhi = t.coord_dev()
            eye = arb_mat([[arb(1) if i == j else C.ZERO for j in range(d)] for i in range(d)])
            elo, ehi = t.support(eye)
            assert all(a <= e.lower() and e.upper() <= b for a, b, e in zip(dlo, dhi, elo, strict=True))
            assert all(a <= e.lower() and e.upper() <= b for a, b, e in zip(dlo, dhi, ehi, strict=True))


def test_cheap_lower_of_a_set_against_sampled_points():
    # CSet.functional_lower (float cheap supports + the arb center and box) is below x . A at points of
    # the set: block vertices, zonotope corners, ellipsoid boundary points.
    d, K = 5, 4
    V = _balls(RNG.standard_normal((6, 3)))
    Mb, Mz, Me = (_balls(RNG.standard_normal((3, d)) * s) for s in (1.0, 0.3, 0.1))
    blk = C.make_block(V, Mb)
    zono, ell = C.CTerm(1001, "zono", Mz), C.CTerm(1002, "ell", Me)
    center = [arb(float(x)) for x in RNG.standard_normal(d)]
    box = [arb(float(x)) for x in RNG.uniform(0, 0.05, d)]
    S = C.CSet(center, box, [blk, zono, ell])
    Af = RNG.standard_normal((d, K))
    A = _balls(Af)
    lo = S.functional_lower(A, C._absmat(A))
    Vf = np.array([[float(x.mid()) for x in r] for r in V.tolist()])
    to = lambda M: np.array([[float(x.mid()) for x in r] for r in M.tolist()])  # noqa: E731
    Mbf, Mzf, Mef = to(Mb), to(Mz), to(Me)
    cf, bf = np.array([float(x.mid()) for x in center]), np.array([float(x.mid()) for x in box])
    least = np.full(K, np.inf)
    for _ in range(4000):
        g = RNG.dirichlet(np.ones(6)) if RNG.random() < 0.5 else np.eye(6)[RNG.integers(0, 6)]
        e = RNG.choice([-1.0, 1.0], 3)
        b = RNG.standard_normal(3)
        b /= np.linalg.norm(b)
        x = cf + RNG.choice([-1.0, 1.0], d) * bf + g @ Vf @ Mbf + e @ Mzf + b @ Mef
        least = np.minimum(least, x @ Af)
    for j in range(K):
        assert float(lo[j].mid()) <= least[j] + 1e-9


# Regressions found in review: each broke containment before the fix.
def test_norm_bounds_cover_squares_lost_to_underflow():
    # 64 entries of 2^-540: each square underflows to 0 in float, the exact norm is 8 * 2^-540.
    d = 64
    t = C.CTerm(next(C._ids), "ell", C._diag([arb(2) ** -270] * d))
    A = arb_mat([[arb(2) ** -270] for _ in range(d)])
    true_min = -(arb(2) ** -540) * 8
    assert arb(t.cheap_lower(*C._mid_rad(A.tolist()))[0]) <= true_min.lower()
    S = C.CSet([C.ZERO] * d, [C.ZERO] * d, [t])
    assert S.functional_lower(A, C._absmat(A))[0] <= true_min.lower()
    # a block whose longest row (norm 4.4e-162) is made of underflowing squares must not be dropped
    k = 256
    V = arb_mat([[arb(2) ** -540] * k, [arb(2) ** -537] + [C.ZERO] * (k - 1)])
    eye = arb_mat([[arb(1) if i == j else C.ZERO for j in range(k)] for i in range(k)])
    blk = C.make_block(V, eye)
    assert blk.l2_sup() >= (arb(2) ** -540 * 16).lower()


def test_pooled_filter_survives_overflowing_products():
    # s * x overflows float64 (x ~ 2^1023): the overflowed lower bound must not discard every row.
    P = arb(2) ** 1022
    X = [[arb(1.5) * P], [arb(2.5) * P]]
    pool = ([arb(3), arb(1)], [0], [arb(2)], arb(3))
    # two positions, each holds one row with weight <= its scale, total <= 3: at best row 1 with
    # weight 1 and row 0 with weight 2, i.e. 5.5 P (enumerated by hand over the three row choices)
    assert C.pooled_max(X, pool)[0] >= (arb(5.5) * P).lower()


def test_pooled_filter_with_subnormal_scales():
    # scales of a few times 2^-1074 next to values near 2^1000 (t near them): the filter's tolerance
    # must not underflow to its absolute floor and drop the true maximum (exact rationals decide).
    from fractions import Fraction

    rng = np.random.default_rng(1)
    for _ in range(20000):
        X = 2.0**1000 * (1 + rng.integers(0, 64, (2, 1)) * 2.0**-52)
        T = 2.0**1000 * (1 + rng.integers(0, 64) * 2.0**-52)
        s = rng.integers(1, 40, 2) * 2.0**-1074
        (rr, _), = C._group_rows(s, s, X, X, np.array([T]), [0], [2], C._group_prep(s, s, X, X))
        vals = [Fraction(float(s[i])) * (Fraction(float(X[i, 0])) - Fraction(T)) for i in range(2)]
        assert max([vals[i] for i in rr.tolist()] + [Fraction(0)]) == max(vals + [Fraction(0)])


def test_row_filter_without_the_floor_keeps_the_maximum_at_a_negative_t():
    # Found in review: with t < 0 (the score-ratio bound) the tolerance used |X| + t, which can be ~0
    # while the rounding of s X - s t is ~u s (|X| + |t|); the true maximum (row 1) was dropped.
    t = np.array([-0.9999450092433859])
    s = np.array([18340628.601973463, 3493611900.851532])
    X = np.array([[-1.0], [-0.9999452979317326]])
    exact = [arb(float(si)) * (arb(float(x)) - arb(float(t[0]))) for si, x in zip(s, X[:, 0], strict=True)]
    assert exact[1] > exact[0]
    pre = C._group_prep(s, s, X, X)
    rows, cs = C._group_rows(s, s, X, X, t, [0], [2], pre, floor=False)[0]
    assert 1 in rows[cs[0]:cs[1]].tolist()
