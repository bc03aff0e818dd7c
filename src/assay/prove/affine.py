"""AffineSet: the abstract domain of the prover, a Minkowski sum of simple convex sets around a center.

A set of vectors x in R^d is represented as

    x = center + sum_terms (coefficients of the term) @ M_term + e,   |e_j| <= box_j,

with three kinds of term, each with its own coefficients ("noise symbols"):

- ``block``: coefficients ``sum_g alpha_g V_g`` with alpha in the probability simplex, i.e. the
  convex hull of the rows of a vertex matrix V (N x k), mapped by M (k x d). Attention to free
  positions produces these: the last position's head output lies in conv(0, lambda_max (V_R - o_A)).
- ``zono``: coefficients eps in [-1, 1]^m (a zonotope with generator rows M); ReLU/GELU relaxations
  produce these.
- ``ell``: coefficients beta with |beta|_2 <= 1 (an ellipsoid M^T B_2); LayerNorm's Taylor remainder.

Terms carry an id. Two sets computed from the same symbols (the residual stream and the MLP output
computed from it) are added by adding the matrices of equal ids, which keeps their correlation.

**Invariant (soundness).** The matrices and vectors stored here are floats read as exact reals. Every
operation returns a set that *contains* the exact image of the input set: the rounding error of each
float computation is bounded (see fp.py) and added to ``box``. No operation ever shrinks a set.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

import numpy as np

from assay.prove.fp import (
    TINY,
    U,
    col_norms,
    frob,
    gamma,
    next_down,
    next_up,
    row_norms,
    spectral_norm_upper,
    sum_bounds,
    up,
)

_ids = itertools.count()
# Blocks whose vertex matrix times map costs at most this many multiply-adds get exact coordinate bounds.
EXACT_COORD_LIMIT = 300_000_000
# A set with no terms and a box below this (relative) size is attended to as an exactly known position.
EXACT_REL = 1e-9


def new_id() -> int:
    return next(_ids)


@dataclass
class Term:
    """One term: ``kind`` in {"block", "pooled", "zono", "ell"}, matrix M (rows = coefficient space, cols = d).

    ``pooled``: attention to free positions, each holding one of its group's rows with a weight at most
    that row's scale, the weights summing to at most a total (see :func:`pooled_max`); ``block`` is the
    convex hull of V's rows.
    """

    id: int
    kind: str
    M: np.ndarray
    V: np.ndarray | None = None  # block / capped rows (N x k)
    vnorm: float = 0.0  # >= sup |coefficient|_2
    vlo: np.ndarray | None = None  # per-coordinate lower bound of the coefficient
    vhi: np.ndarray | None = None  # per-coordinate upper bound of the coefficient
    pool: tuple | None = None  # pooled: (scale, starts, multiplicities, total, per-position scales, ratios)
    diag: bool = False  # M is square and diagonal (kept by elementwise scaling only)
    signed: bool = False  # block / pooled: the coefficients are s * c for c in the set and |s| <= 1
    _l2: float | None = None  # cached l2_sup (M never changes in place)
    _dev: tuple | None = None  # cached coord_dev
    _vm: np.ndarray | None = None  # cached fl(V @ M) of a block or pooled term (l2_sup and coord_dev)

    def with_M(self, M: np.ndarray, diag: bool = False) -> Term:
        return replace(self, M=M, diag=diag, _l2=None, _dev=None, _vm=None)

    def vm(self) -> np.ndarray:
        """fl(V @ M) (block and pooled terms), computed once: l2_sup and coord_dev both need it."""
        if self._vm is None:
            self._vm = self.V @ self.M
        return self._vm

    def times(self, A: np.ndarray) -> np.ndarray:
        """fl(M @ A); for a diagonal M the same numbers at O(d K) (the zeros add exactly)."""
        if self.diag:
            return np.diagonal(self.M)[:, None] * A
        return self.M @ A

    def col_error(self, E: np.ndarray) -> np.ndarray:
        """Upper bound, per output coordinate j, of |coef . E[:, j]| over the term's coefficients,
        where E >= 0 bounds the error of M elementwise."""
        if self.kind in ("block", "pooled"):
            return up(self.vnorm * col_norms(E))
        if self.kind == "zono":
            return up(E.sum(axis=0), E.shape[0] + 2)
        return col_norms(E)

    def extremes(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rigorous (min, max) over the coefficients of sum_g coef_g X[g, :], X exact floats (N x K)."""
        if self.kind == "block":
            lo, hi = X.min(axis=0), X.max(axis=0)
        else:
            lo, hi = -pooled_max(-X, *self.pool), pooled_max(X, *self.pool)
        if self.signed:
            # {s c : |s| <= 1}: the support is the larger of the set's and its reflection's (0 is inside).
            m = np.maximum(np.maximum(hi, -lo), 0.0)
            return -m, m
        return lo, hi

    def l2_sup(self) -> float:
        """Upper bound of |coef @ M|_2 over the term's coefficients."""
        if self._l2 is None:
            if self.kind in ("block", "pooled"):
                self._l2 = float(up(self.vnorm * spectral_norm_upper(self.M)))
                k, d = self.M.shape
                if self.V.shape[0] * k * d <= EXACT_COORD_LIMIT:
                    # |sum_g coef_g V_g M| <= the term's support on the row norms |V_g M| (+ rounding).
                    rn = row_norms(self.vm())[:, None]
                    err = float(up(gamma(k) * self.vnorm * frob(self.M)))
                    exact = float(up(float(self.extremes(rn)[1][0]) + err, 2))
                    self._l2 = min(self._l2, exact)
            elif self.kind == "zono":
                # |eps Z|_2 over the cube: the least of the triangle sum over rows, the l2 norm of the
                # per-coordinate ranges, and sqrt(m) ||Z||_2.
                m = self.M.shape[0]
                tri = float(up(row_norms(self.M).sum(), m + 2))
                box = float(up(np.linalg.norm(up(np.abs(self.M).sum(axis=0), m + 2)), self.M.shape[1] + 4))
                spec = float(up(math.sqrt(m) * spectral_norm_upper(self.M), 4))
                self._l2 = min(tri, box, spec)
            else:
                self._l2 = spectral_norm_upper(self.M)
        return self._l2

    def coord_dev(self) -> tuple[np.ndarray, np.ndarray]:
        """(dlo, dhi) with dlo <= coef @ M <= dhi per coordinate (dlo <= 0 <= dhi not assumed)."""
        if self._dev is None:
            self._dev = self._coord_dev()
        return self._dev

    def _coord_dev(self) -> tuple[np.ndarray, np.ndarray]:
        M = self.M
        if self.kind in ("block", "pooled"):
            l2 = up(self.vnorm * col_norms(M))
            if self.V.shape[0] * M.shape[0] * M.shape[1] <= EXACT_COORD_LIMIT:
                # Exact extremes: fl(V M) is within gamma(k) |V_g| |M_:j| of V M, and the coefficient
                # weights rows with total l2 mass <= vnorm.
                VM = self.vm()
                err = up(gamma(M.shape[0]) * self.vnorm * col_norms(M))
                mn, mx = self.extremes(VM)
                ex_lo, ex_hi = next_down(mn - err), next_up(mx + err)
            else:
                ex_lo, ex_hi = -l2, l2
            # Box bound on the vertices: sum_e max(vlo_e M_ej, vhi_e M_ej), plus its rounding error.
            a, b = self.vlo[:, None] * M, self.vhi[:, None] * M
            mag = np.maximum(np.abs(a), np.abs(b)).sum(axis=0)
            err = up(gamma(M.shape[0] + 2) * mag)
            bhi = next_up(np.maximum(a, b).sum(axis=0) + err)
            blo = next_down(np.minimum(a, b).sum(axis=0) - err)
            return np.maximum(np.maximum(-l2, blo), ex_lo), np.minimum(np.minimum(l2, bhi), ex_hi)
        if self.kind == "zono":
            s = up(np.abs(M).sum(axis=0), M.shape[0] + 2)
            return -s, s
        s = col_norms(M)
        return -s, s


def signed_copy(t: Term, factor: float) -> tuple[Term, np.ndarray]:
    """A fresh term holding s * factor * (coef @ M) for every coefficient of ``t`` and every |s| <= 1,
    and the per-coordinate box that absorbs the rounding of fl(factor * M) (to be added to the set's box).

    Zonotopes and ellipsoids are symmetric already; blocks and pooled terms get ``signed`` (their set
    and 0 added: the hull of the set, its reflection and 0).
    """
    M = t.M * factor
    merr = up(U * np.abs(M))
    if t.kind in ("zono", "ell"):
        return Term(new_id(), t.kind, M), t.col_error(merr)
    box = t.col_error(merr)
    m = np.maximum(np.abs(t.vlo), np.abs(t.vhi))
    new = Term(new_id(), t.kind, M, V=t.V, vnorm=t.vnorm, vlo=-m, vhi=m, pool=t.pool, signed=True)
    if t._dev is not None:
        # coef @ fl(f M) = f (coef @ M) + coef @ (fl(f M) - f M): the first from t's own bounds.
        dlo, dhi = t._dev
        dm = np.maximum(np.maximum(np.abs(dlo), np.abs(dhi)) * factor, 0.0)
        dev = up(dm * (1 + 2 * U) + box, 2)
        new._dev = (-dev, dev)
    return new, box


def make_block(V: np.ndarray, M: np.ndarray) -> Term:
    """A block term: conv(rows of V) @ M."""
    V = np.ascontiguousarray(V, dtype=np.float64)
    vnorm = float(row_norms(V).max()) if V.shape[0] else 0.0
    return Term(new_id(), "block", M, V=V, vnorm=vnorm, vlo=V.min(axis=0), vhi=V.max(axis=0))


POOL_T = (0.0, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 3 / 4, 1.0)
POOL_CHUNK = 1 << 17  # elements of one (t, row, column) block of _capped_max_one (1 MiB): kept in cache
POOL_NARROW = 32  # up to this many columns _capped_max_one works on X transposed
BLOCKED = True  # capped_max of one plain group by _capped_max_one (False: the loop over t; benchmarks)


def pooled_max(X: np.ndarray, scale: np.ndarray, starts: np.ndarray, mult: np.ndarray, total: float,
               pscale: tuple | None = None, ratios: tuple | None = None) -> np.ndarray:
    """An upper bound of the support of a pooled term per column: with ``ratios``, :func:`ratio_max`
    (the softmax weights themselves, as tight as the score ranges allow), else and wherever that fails
    :func:`capped_max` (the weight caps and the total)."""
    if ratios is None or not X.shape[0]:
        return capped_max(X, scale, starts, mult, total, pscale)
    out = ratio_max(X, starts, ratios, total)
    bad = ~np.isfinite(out)
    if bad.any():
        out[bad] = capped_max(X[:, bad], scale, starts, mult, total, pscale)
    return out


def ratio_max(X: np.ndarray, starts: np.ndarray, ratios: tuple, total: float | None = None) -> np.ndarray:
    """Rigorous upper bound, per column, of sum_i c_i X_(b_i) over the attention weights themselves.

    Position i holds a row b_i of its group with softmax weight c_i = r_i / (1 + sum_j r_j), where
    r_i = e_i / W_A is its exponentiated score over the anchors' softmax mass; ``ratios`` gives, per
    group, (Rlo, Rhi, counts): counts[q] positions whose r for row b lies in [Rlo[q, b], Rhi[q, b]].
    For any theta, if F(theta) = sum_q counts_q max_b max(Rlo (X_b - theta), Rhi (X_b - theta)) <= theta
    then sum_i r_i X_i <= theta (1 + sum_i r_i) for every choice, i.e. the support is <= theta (exact
    when the ranges are points: Dinkelbach's condition for a ratio of sums). Every position holds a
    token, so no max(0, .) here. theta comes from Newton steps on the float F (it converges in a few
    steps, F being convex and piecewise linear), and is verified with the rounding of F bounded;
    a column that fails the check gets +inf, and so does every column when a group has no ranges
    (its positions would be left out).

    One group of many rows (attention to positions sharing value rows), given ``total`` >= sum_i c_i, is
    solved on the rows that can be a run's maximum for some theta in [theta_lo, theta_hi]: theta_lo,
    every position on the column's largest row at its lowest ratio (a value of the set, so <= the
    root), and theta_hi = total max_b X_b (>= the support when max X > 0). A run's term decreases in
    theta, so a row whose term at theta_lo is below the best row's term at theta_hi is never its
    maximum there; the root is then checked to lie in [theta_lo, theta_hi], and a column where it
    does not is solved on every row.
    """
    N, K = X.shape
    if len(ratios) != len(starts) or any(R is None for R in ratios):
        return np.full(K, np.inf)
    ends = np.append(starts[1:], N)
    for g0, g1, (Rlo, Rhi, c) in zip(starts, ends, ratios, strict=True):
        if np.shape(Rlo) != (len(c), g1 - g0) or np.shape(Rhi) != np.shape(Rlo):
            raise ValueError(f"ratio ranges of shape {np.shape(Rlo)}, {np.shape(Rhi)} for {len(c)} runs "
                             f"of a group of {g1 - g0} rows")
    nonempty = [g for g, (g0, g1) in enumerate(zip(starts, ends, strict=True)) if g1 > g0]
    full = [(X[starts[g]:ends[g]], [(ratios[g][0][q][:, None], ratios[g][1][q][:, None], float(ratios[g][2][q]))
                                    for q in range(len(ratios[g][2]))]) for g in nonempty]
    if not full:
        return np.full(K, np.inf)
    npos = sum(n for _x, qs in full for _lo, _hi, n in qs)
    nb = sum(len(qs) for _x, qs in full)
    rmax = max(float(hi.max()) for _x, qs in full for _lo, hi, _n in qs)
    xabs = np.abs(X).max(axis=0)
    if len(full) == 1 and N >= 4 * RATIO_KEEP and total is not None:
        Rlo, Rhi, c = ratios[nonempty[0]]  # the one group holding rows (the others are empty)
        with np.errstate(all="ignore"):
            jt = X.argmax(axis=0)
            top = X[jt, np.arange(K)]
            rl = (c[:, None] * Rlo[:, jt]).sum(axis=0)
            th_lo = top * rl / (1.0 + rl)
            th_lo = th_lo - 1e-9 * np.abs(th_lo)
            th_hi = top * total
            th_hi = th_hi + 1e-9 * np.abs(th_hi)
            # for theta in [th_lo, th_hi], row b's term is at most its value at th_lo, and the best row's
            # at least its value at th_hi: rows below that cannot be a maximum (per run)
            keep = np.zeros(X.shape, dtype=bool)
            Dl, Dh = X - th_lo, X - th_hi
            tol = 1e-9 * rmax * (xabs + np.abs(th_lo) + np.abs(th_hi))  # far above the rounding of ub, lb
            for q in range(len(c)):
                ub = np.maximum(Rhi[q][:, None] * Dl, Rlo[q][:, None] * Dl)
                lb = np.maximum(Rhi[q][:, None] * Dh, Rlo[q][:, None] * Dh).max(axis=0)
                keep |= ~(ub < lb - tol)  # a nan bound keeps the row
            need = keep.sum(axis=0)
        good = np.isfinite(th_lo) & np.isfinite(th_hi) & (top > 0) & (need >= 1) & (need <= RATIO_KEEP)
        if good.any():
            g = np.flatnonzero(good)
            m = int(need[g].max())
            idx = np.argpartition(-keep[:, g].astype(np.int8), m - 1, axis=0)[:m]
            Xs = np.take_along_axis(X[:, g], idx, axis=0)
            parts = [(Xs, [(Rlo[q][idx], Rhi[q][idx], float(c[q])) for q in range(len(c))])]
            th = _ratio_root(parts, len(g), npos, nb, rmax, xabs[g])
            out = np.full(K, np.inf)
            ok = (th_lo[g] <= th) & (th <= th_hi[g])
            out[g[ok]] = th[ok]
            rest = np.flatnonzero(~np.isfinite(out))
            if len(rest):
                sub = [(x[:, rest], qs) for x, qs in full]
                out[rest] = _ratio_root(sub, len(rest), npos, nb, rmax, xabs[rest])
            return out
    return _ratio_root(full, K, npos, nb, rmax, xabs)


def _ratio_root(parts: list, K: int, npos: float, nb: int, rmax: float, xabs: np.ndarray) -> np.ndarray:
    """theta per column with F(theta) <= theta verified, +inf where not (see :func:`ratio_max`). parts:
    (X rows, [(Rlo, Rhi, count)] broadcastable to X) per group; npos, nb, rmax: the positions, runs and
    largest ratio; xabs >= max |X| per column."""
    cols = np.arange(K)
    with np.errstate(all="ignore"):
        th = np.max([x.max(axis=0) for x, _qs in parts], axis=0)
        th = np.where(np.isfinite(th), th, 0.0)

        def F(th, slope=False):
            """float F(theta), sum_q counts_q |max_b ...| and (``slope``) the count-weighted ratios at the maxima."""
            val, mag, der = np.zeros(K), np.zeros(K), np.zeros(K)
            for x, qs in parts:
                D = x - th  # its sign is exact (a float difference is 0 only for equal floats)
                for Rlo, Rhi, n in qs:
                    # max over r in [Rlo, Rhi] of r D: Rhi D where D >= 0, Rlo D where D < 0 (0 <= Rlo <= Rhi)
                    V = np.maximum(Rhi * D, Rlo * D)
                    j = V.argmax(axis=0)
                    topv = V[j, cols]
                    val += n * topv
                    mag += n * np.abs(topv)
                    if slope:
                        rh = Rhi[j, cols] if Rhi.shape[1] > 1 else Rhi[j, 0]
                        rl = Rlo[j, cols] if Rlo.shape[1] > 1 else Rlo[j, 0]
                        der += n * np.where(D[j, cols] >= 0, rh, rl)
            return val, mag, der

        for _ in range(RATIO_STEPS):
            val, _, der = F(th, slope=True)
            new = th + (val - th) / (1.0 + der)
            new = np.where(np.isfinite(new), new, th)
            done = np.abs(new - th) <= 4 * U * (np.abs(th) + np.abs(new))
            th = new
            if done.all():
                break
        # Verify at theta a little above the float root. Per run, the float max over rows is within
        # 3U Rmax (|X| + |theta|) + TINY of the exact one (a product of a rounded difference, or an
        # underflow); the sum of nb terms times counts within gamma(2 nb + 2) of its absolute sum. So
        # F(theta) <= fl(F) + err. (val is signed: err is added, never a relative inflation of val.)

        def err(th, absval):
            return up(gamma(2 * nb + 2) * absval + npos * (3 * U * rmax * (xabs + np.abs(th)) + TINY), 4)

        _, absval, _ = F(th)
        th = next_up(th + 2 * err(th, absval) + 16 * U * np.abs(th))
        val, absval, _ = F(th)
        bound = next_up(val + err(th, absval))
        ok = np.isfinite(bound) & np.isfinite(th) & (bound <= th)
    return np.where(ok, th, np.inf)


RATIO_STEPS = 30  # at most this many Newton steps in ratio_max (about 3 on average, docs/prove.md)
RATIO_KEEP = 512  # ratio_max keeps at most this many rows per column before it falls back to all rows


def capped_max(X: np.ndarray, scale: np.ndarray, starts: np.ndarray, mult: np.ndarray, total: float,
               pscale: tuple | None = None) -> np.ndarray:
    """Rigorous upper bound, per column k, of the support of a *pooled* term in direction X[:, k].

    The term's coefficients are sum_{i,b} a_ib s_ib D_b where position i may use only the rows of its
    group (groups are contiguous row ranges starting at ``starts``; a group of multiplicity m stands for m
    positions), sum_b a_ib <= 1 for every position, a >= 0, and the total weight sum a_ib s_ib <= total.
    The scale s_ib of row b at position i is ``scale[b]`` for every position of the group, unless
    ``pscale[g]`` is given for the group: then it is a pair (S, counts), S [n_buckets, group rows], and
    counts[q] of the group's positions have the scales S[q] (the counts sum to the multiplicity).
    Lagrangian duality on the total: for every t >= 0 the support is at most total * t + sum over
    positions of max(0, max_{b in its group} s_ib (X_b - t)); we take the least over a grid of t in
    [0, max X].
    """
    N, K = X.shape
    if N == 0 or total <= 0.0:
        return np.zeros(K)
    top = np.maximum(X.max(axis=0), 0.0)
    ends = np.append(starts[1:], N)
    per = [] if pscale is None else [(g, S) for g, S in enumerate(pscale) if S is not None]
    plain = mult.astype(np.float64, copy=True)
    plain[[g for g, _ in per]] = 0.0  # those groups are counted bucket by bucket
    # |fl(s fl(X_b - t)) - s (X_b - t)| <= 3U s (|X_b| + t) <= 3U smax (max_b |X_b| + t), where smax bounds
    # every scale (the per-position ones included: they are below total, and so is smax's bound below)
    smax = max([float(scale.max())] + [float(S.max()) for _, (S, _c) in per])
    slack0 = 3 * U * smax * np.abs(X).max(axis=0)
    sc = scale[:, None]
    if BLOCKED and len(starts) == 1 and not per:
        return _capped_max_one(X, sc, float(mult[0]), total, top, slack0, smax)
    D = np.empty_like(X)
    Y = np.empty_like(X)
    best = None
    for f in POOL_T:
        t = top * f
        np.subtract(X, t, out=D)
        slack = up(slack0 + 3 * U * smax * t, 4)
        parts = [total * t]
        if plain.any():
            np.multiply(D, sc, out=Y)
            if len(starts) == 1:
                gmax = np.maximum(Y.max(axis=0) + slack, 0.0)[None, :]
            else:
                gmax = np.maximum(np.maximum.reduceat(Y, starts, axis=0) + slack, 0.0)
            parts.append(plain @ gmax)
        for g, (S, counts) in per:
            Dg = D[starts[g]:ends[g]]
            for q in range(S.shape[0]):
                parts.append(counts[q] * np.maximum((S[q][:, None] * Dg).max(axis=0) + slack, 0.0))
        val = up(sum(parts), len(mult) + 4 + sum(S.shape[0] for _, (S, _c) in per))
        best = val if best is None else np.minimum(best, val)
    return best


def _capped_max_one(X: np.ndarray, sc: np.ndarray, mult: float, total: float, top: np.ndarray,
                    slack0: np.ndarray, smax: float) -> np.ndarray:
    """:func:`capped_max` for one group without per-position scales, the same floating-point operations
    on every element (so the same numbers), for every t of POOL_T at once over blocks of rows: one pass
    over X that stays in cache instead of three passes per t."""
    N, K = X.shape
    ts = top[None, :] * np.asarray(POOL_T)[:, None]  # (T, K): top * f, as in the loop
    # At f = 1 (t = top) the maximum is known: 0 from the row at the top when top > 0 (every other row
    # has X_b - top <= 0), and the f = 0 value when top = 0 (the same t). Only finite tops qualify.
    last = POOL_T[-1] == 1.0 and POOL_T[0] == 0.0 and bool(np.isfinite(top).all())
    grid = ts[:-1] if last else ts
    ymax = np.full(grid.shape, -np.inf)
    rows = max(1, POOL_CHUNK // (len(grid) * max(K, 1)))
    if K <= POOL_NARROW:
        # few columns: rows along the last (contiguous) axis, where numpy's maximum is fast
        XT, s = np.ascontiguousarray(X.T), sc[:, 0]
        for a in range(0, N, rows):
            D = XT[None, :, a:a + rows] - grid[:, :, None]
            np.multiply(D, s[None, None, a:a + rows], out=D)
            np.maximum(ymax, D.max(axis=2), out=ymax)
    else:
        for a in range(0, N, rows):
            D = X[None, a:a + rows, :] - grid[:, None, :]
            np.multiply(D, sc[None, a:a + rows], out=D)
            np.maximum(ymax, D.max(axis=1), out=ymax)
    if last:
        ymax = np.vstack([ymax, np.where(top > 0, 0.0, ymax[0])[None, :]])
    slack = up(slack0[None, :] + 3 * U * smax * ts, 4)
    gmax = np.maximum(ymax + slack, 0.0)
    val = up(total * ts + mult * gmax, 1 + 4)
    return val.min(axis=0)


def make_pooled(D: np.ndarray, scale: np.ndarray, starts: np.ndarray, mult: np.ndarray, total: float,
                M: np.ndarray, pscale: tuple | None = None, ratios: tuple | None = None) -> Term:
    """A pooled term (see :func:`pooled_max`; ``pscale``: per-position scales of some groups; ``ratios``:
    the ranges of the positions' score ratios, see :func:`ratio_max`) mapped by M."""
    D = np.ascontiguousarray(D, dtype=np.float64)
    scale = np.minimum(np.asarray(scale, dtype=np.float64), total)
    starts = np.asarray(starts, dtype=np.int64)
    mult = np.asarray(mult, dtype=np.float64)
    if pscale is not None:
        pscale = tuple(None if S is None else (np.minimum(np.asarray(S[0], dtype=np.float64), total),
                                               np.asarray(S[1], dtype=np.float64)) for S in pscale)
    pool = (scale, starts, mult, float(total), pscale, ratios)
    vnorm = float(pooled_max(row_norms(D)[:, None], *pool)[0])
    hi = pooled_max(D, *pool)
    lo = -pooled_max(-D, *pool)
    return Term(new_id(), "pooled", M, V=D, vnorm=vnorm, vlo=lo, vhi=hi, pool=pool)


@dataclass
class AffineSet:
    """center + terms + box; see the module docstring. ``r_cap`` (optional) is a known upper bound of
    ``|x - center|_2`` over the set, valid only for the set it is attached to."""

    center: np.ndarray
    box: np.ndarray
    terms: list[Term]
    r_cap: float | None = None

    @property
    def d(self) -> int:
        return self.center.shape[0]

    @staticmethod
    def point(center: np.ndarray, err: np.ndarray | float = 0.0) -> AffineSet:
        """The set {x : |x - center| <= err} (a float vector with a rounding-error box)."""
        c = np.asarray(center, dtype=np.float64).copy()
        return AffineSet(c, np.broadcast_to(np.asarray(err, dtype=np.float64), c.shape).copy(), [])

    def copy(self) -> AffineSet:
        return AffineSet(self.center.copy(), self.box.copy(), list(self.terms), self.r_cap)

    def is_point(self) -> bool:
        return not self.terms

    def is_exact(self) -> bool:
        """No terms and a box of rounding size (<= EXACT_REL * (1 + max|center|)): a point known up to rounding."""
        scale = 1.0 + float(np.abs(self.center).max())
        return not self.terms and float(self.box.max(initial=0.0)) <= EXACT_REL * scale

    # ---------------------------------------------------------------- linear operations
    def _map(self, apply, err, box_map) -> AffineSet:
        """Apply a linear map L given as ``apply(X) = fl(X @ L)`` for row-stacked X, ``err(X, XL)`` an
        elementwise bound on ``|X @ L - fl(X @ L)|``, and ``box_map(r)`` an upper bound of ``|L|^T r``."""
        c2 = apply(self.center[None, :])
        box = box_map(self.box) + err(self.center[None, :], c2)[0]
        terms = []
        for t in self.terms:
            M2 = apply(t.M)
            box = box + t.col_error(err(t.M, M2))
            terms.append(t.with_M(M2))
        return AffineSet(c2[0], up(box, 4 + len(self.terms)), terms)

    def affine(self, W: np.ndarray, bias: np.ndarray | None = None) -> AffineSet:
        """The image {x W + bias}; W is d x d'."""
        W = np.asarray(W, dtype=np.float64)
        cn = col_norms(W)
        g = gamma(W.shape[0])
        absW = np.abs(W)

        def err(X, _XL):
            return up(g * np.multiply.outer(row_norms(X), cn))

        out = self._map(lambda X: X @ W, err, lambda r: up(r @ absW, W.shape[0]))
        if bias is not None:
            out = out.shift(bias)
        return out

    def scale(self, a: np.ndarray) -> AffineSet:
        """The image {x * a} (elementwise, a of length d)."""
        a = np.asarray(a, dtype=np.float64)
        out = self._map(lambda X: X * a, lambda _X, XL: up(U * np.abs(XL)), lambda r: up(r * np.abs(a)))
        out.terms = [t2.with_M(t2.M, diag=t1.diag) for t1, t2 in zip(self.terms, out.terms, strict=True)]
        return out

    def shift(self, v: np.ndarray, verr: np.ndarray | float = 0.0) -> AffineSet:
        """The set {x + t : |t - v| <= verr} (v a float vector read exactly)."""
        c = self.center + v
        box = up(self.box + verr + U * np.abs(c), 3)
        return AffineSet(c, box, list(self.terms))

    def center_coords(self) -> AffineSet:
        """The image under centering C = I - 11^T/d (LayerNorm's mean subtraction); memoised while the
        set is unchanged (the final LayerNorm's two bounds both need it)."""
        key = (len(self.terms), id(self.box), id(self.center))
        memo = getattr(self, "_cc", None)
        if memo is not None and memo[0] == key:
            return memo[1]
        out = self._center_coords()
        self._cc = (key, out)
        return out

    def _center_coords(self) -> AffineSet:
        d = self.d
        g = gamma(d + 2)

        def apply(X):
            return X - X.mean(axis=1, keepdims=True)

        def err(X, XL):
            return up(g * np.abs(X).mean(axis=1, keepdims=True) + U * np.abs(XL))

        # |C|^T r = (1 - 2/d) r + sum(r)/d <= r + mean(r)
        out = self._map(apply, err, lambda r: up(r + r.mean(), d + 2))
        if self.r_cap is not None:
            # C is an orthogonal projection: it does not increase distances (from the image of the center).
            out.r_cap = float(up(self.r_cap + frob(err(self.center[None, :], out.center[None, :]))))
        return out

    def add(self, other: AffineSet) -> AffineSet:
        """Minkowski sum; terms with the same id share their coefficients, so their matrices add."""
        c = self.center + other.center
        box = self.box + other.box + U * np.abs(c)
        terms: dict[int, Term] = {t.id: t for t in self.terms}
        order = [t.id for t in self.terms]
        for t in other.terms:
            if t.id in terms:
                M = terms[t.id].M + t.M
                box = box + terms[t.id].col_error(up(U * np.abs(M)))
                terms[t.id] = t.with_M(M)
            else:
                terms[t.id] = t
                order.append(t.id)
        return AffineSet(c, up(box, 4), [terms[i] for i in order])

    # ---------------------------------------------------------------- bounds
    def coord_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Rigorous lo, hi with lo_j <= x_j <= hi_j for every x in the set."""
        plo, phi = [self.center, -self.box], [self.center, self.box]
        for t in self.terms:
            a, b = t.coord_dev()
            plo.append(a)
            phi.append(b)
        lo, hi = sum_bounds(plo, phi)
        if self.r_cap is not None:
            lo = np.maximum(lo, next_down(self.center - self.r_cap))
            hi = np.minimum(hi, next_up(self.center + self.r_cap))
        return lo, hi

    def abs_bound(self) -> np.ndarray:
        """A cheap upper bound of |x_j| over the set (each term's l2 sup bounds every coordinate)."""
        spread = sum((t.l2_sup() for t in self.terms), 0.0)
        return up(np.abs(self.center) + self.box + spread, len(self.terms) + 4)

    def l2_radius(self, about: np.ndarray | None = None) -> float:
        """Upper bound of sup |x - about|_2 over the set (about defaults to the center)."""
        off = 0.0 if about is None else float(up(np.linalg.norm(self.center - about), self.d + 4))
        inner = sum(t.l2_sup() for t in self.terms) + float(up(np.linalg.norm(self.box), self.d + 4))
        inner = float(up(inner, len(self.terms) + 2))
        if self.r_cap is not None:
            inner = min(inner, self.r_cap)
        return float(up(off + inner))

    def functional_bounds(self, A: np.ndarray, exact: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rigorous lo, hi of x . A[:, k] over the set, for every column k of A (d x K).

        Every column gets the *cheap* support of each term: for blocks / pooled terms the better of
        Cauchy-Schwarz (l2 mass of the coefficient times |M a|) and the coefficient box against M a;
        the exact support of zonotopes (l1 of Z a) and ellipsoids (|M a|). Columns listed in ``exact``
        also get the exact support of blocks / pooled terms (over all their rows); the better is kept.
        """
        A = np.asarray(A, dtype=np.float64)
        d, K = A.shape
        an = col_norms(A)
        cval = self.center @ A
        cerr = up(gamma(d) * float(row_norms(self.center[None, :])[0]) * an)
        boxdev = up(self.box @ np.abs(A), d)
        plo, phi = [cval, -boxdev, -cerr], [cval, boxdev, cerr]
        for t in self.terms:
            a, b = _cheap_support(t, A, an)
            plo.append(a)
            phi.append(b)
        lo, hi = sum_bounds(plo, phi)
        if exact is not None and len(exact):
            Ae = A[:, exact]
            ane = an[exact]
            plo = [cval[exact], -boxdev[exact], -cerr[exact]]
            phi = [cval[exact], boxdev[exact], cerr[exact]]
            for t in self.terms:
                a, b = _exact_support(t, Ae, ane)
                plo.append(a)
                phi.append(b)
            elo, ehi = sum_bounds(plo, phi)
            lo[exact] = np.maximum(lo[exact], elo)
            hi[exact] = np.minimum(hi[exact], ehi)
        return lo, hi

    def collapse(self) -> AffineSet:
        """A box around the set (center = box midpoint) that remembers the set's l2 radius in r_cap."""
        lo, hi = self.coord_bounds()
        mid = 0.5 * (lo + hi)
        box = up(np.maximum(hi - mid, mid - lo), 2)
        r = self.l2_radius(mid)
        out = AffineSet(mid, box, [])
        out.r_cap = min(r, float(up(np.linalg.norm(box), self.d + 4)))
        return out


def _cheap_support(t: Term, A: np.ndarray, an: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Min and max of coef @ M @ A[:, k] over the term, exact for zonotopes and ellipsoids and within
    the coefficient's l2 mass / box for blocks and pooled terms (no pass over their rows)."""
    if t.kind not in ("block", "pooled"):
        return _exact_support(t, A, an)
    B = t.times(A)
    k, d = t.M.shape
    EB = gamma(d) * np.multiply.outer(row_norms(t.M), an)
    bn = up(col_norms(B) + col_norms(EB))
    l2 = up(t.vnorm * bn)
    a, b = t.vlo[:, None] * B, t.vhi[:, None] * B
    mag = np.maximum(np.abs(a), np.abs(b)).sum(axis=0)
    err = up(gamma(k + 2) * mag + np.maximum(np.abs(t.vlo), np.abs(t.vhi)) @ EB, k + 2)
    bhi = next_up(np.maximum(a, b).sum(axis=0) + err)
    blo = next_down(np.minimum(a, b).sum(axis=0) - err)
    return np.maximum(-l2, blo), np.minimum(l2, bhi)


def _exact_support(t: Term, A: np.ndarray, an: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact (up to rounding, which is bounded) min and max of coef @ M @ A[:, k] over the term."""
    # |fl(M A) - M A| <= gamma(d) |M_e| |A_k|
    return support_from(t, t.times(A), gamma(t.M.shape[1]) * np.multiply.outer(row_norms(t.M), an))


def support_from(t: Term, B: np.ndarray, EB: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rigorous min and max of coef @ B*[:, k] over the term's coefficients, for every real matrix B*
    within EB (elementwise) of the float matrix B (rows: the coefficient space)."""
    k = B.shape[0]
    if t.kind in ("block", "pooled"):
        VB = t.V @ B
        err = up(t.vnorm * (gamma(k) * col_norms(B) + col_norms(EB)))
        mn, mx = t.extremes(VB)
        return next_down(mn - err), next_up(mx + err)
    if t.kind == "zono":
        s = up(np.abs(B).sum(axis=0) + EB.sum(axis=0), k + 2)
        return -s, s
    s = up(col_norms(B) + col_norms(EB))
    return -s, s


def sqrt_up(x: float) -> float:
    return float(up(math.sqrt(max(x, 0.0))))
