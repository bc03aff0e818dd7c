"""Independent checker of overwhelm certificates, in arb ball arithmetic (python-flint).

This module imports nothing from the prover (``assay.prove.*``): it reads the weights from the model,
re-derives every bound of the certificate's method from them in rigorous ball arithmetic, and
compares with the evidence. Arb balls are sound by construction (every operation returns a ball that
contains the exact result); the prover's floating-point error terms are not trusted, they are simply
not used. Float64 appears here twice, with this module's own error bounds (section "row maxima"):
as a filter that discards rows which cannot attain a maximum (the maximum itself is then taken in
arb), and for the cheap lower supports, whose float lower bounds are exact numbers.

What is checked (any failure raises :class:`CertificateError` with the reason):

1. the JSON is complete and well formed, and its ``digest`` matches its content (integrity);
2. the model is the one the certificate names: the float64 state-dict hash, the file hash when the
   model came from a file, and the config;
3. the claim is well formed (token ids in range, lengths within n_ctx) and the evidence lists exactly
   the cases of the claim: every length 0..n_free, and every last token when the suffix is empty;
4. for every case, the bound recomputed here (with the refined competitors named in the evidence)
   is positive for every competitor, the claimed case margin is at most the recomputed one and no more
   than TOL below it, and the claimed lambda_max values are at least the recomputed ones and no more than
   TOL above them; the top-level margin is the least case margin.

The bound (the same recipe as the prover, docs/prove.md): exact anchors (the prefix), per-head
convex-hull attention sets with lambda_max, first-order LayerNorm with a second-order remainder, DeepZ
relaxation of the MLP, and at the end the better of the Taylor and quotient bounds of the final
LayerNorm against the unembedding difference.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flint import arb, arb_mat

FORMAT = "assay-overwhelm-certificate/1"
# Method versions this checker re-derives (certificates of earlier assay versions still check):
# /2 added the MLP pre-activation ranges from LayerNorm's linear part (ln_preact_bounds); /3 the
# pre-activation *set* (ln_preact_set) and the norm bound through an inner product in sigma_range; /4
# per-competitor ReLU slopes of the last MLP and the tangent bound of the final LayerNorm (evidence
# "alpha" in the case records, :meth:`Checker.alpha_margin`); /5 per-position attention caps and the
# score-ratio bound of attention terms (:func:`_ratio_max`); /6 norm directions at the last LayerNorms
# (evidence "norm_dirs" in the case records, :func:`norm_lower_bound`); /7 a weight "gamma" of sigma
# on the tangent path of the slope evidence (:meth:`Checker.alpha_margin`); /8 up to 32 runs of free
# positions in the attention terms' caps and ratios (8 before; :func:`_runs`).
METHODS = {
    "affine-lambda/1": {"ln_preact": False, "preact_set": False, "norm_ub": False, "runs": 8},
    "affine-lambda/2": {"ln_preact": True, "preact_set": False, "norm_ub": False, "runs": 8},
    "affine-lambda/3": {"ln_preact": True, "preact_set": True, "norm_ub": True, "runs": 8},
    "affine-lambda/4": {"ln_preact": True, "preact_set": True, "norm_ub": True, "alpha": True, "runs": 8},
    "affine-lambda/5": {"ln_preact": True, "preact_set": True, "norm_ub": True, "alpha": True, "ratios": True,
                        "runs": 8},
    "affine-lambda/6": {"ln_preact": True, "preact_set": True, "norm_ub": True, "alpha": True, "ratios": True,
                        "norm_dirs": True, "runs": 8},
    "affine-lambda/7": {"ln_preact": True, "preact_set": True, "norm_ub": True, "alpha": True, "ratios": True,
                        "norm_dirs": True, "gamma": True, "runs": 8},
    "affine-lambda/8": {"ln_preact": True, "preact_set": True, "norm_ub": True, "alpha": True, "ratios": True,
                        "norm_dirs": True, "gamma": True, "runs": 32},
}
TOL = 1e-4  # relative (to 1 + |x|) distance allowed between evidence numbers and the recomputation
EXACT_COORD_LIMIT = 300_000_000
EXACT_REL = 1e-9
LN_REMAINDER = arb(0.6)
GELU_D2_MAX = arb(0.8)
GELU_GRID = 17
SPEC_SQUARINGS = 4
# The certificate's own fields, covered by its digest (other fields may be added, e.g. a model name).
DIGEST_FIELDS = ("format", "claim", "proven", "model_sha256", "model_sha256_source", "weights_state_sha256",
                 "weights_state_sha256_is", "model_config", "prefix", "suffix", "n_free", "allowed", "token",
                 "margin", "method", "cases")
REQUIRED = DIGEST_FIELDS + ("digest",)

ZERO = arb(0)
ONE = arb(1)


class CertificateError(ValueError):
    """A certificate was rejected; the message says why."""


# =========================================================================================== helpers
def _f(x: float) -> arb:
    return arb(float(x))


def _up(x: arb) -> arb:
    """Exact upper endpoint."""
    return x.upper()


def _lo(x: arb) -> arb:
    return x.lower()


def _float_up(x: arb) -> float:
    u = x.upper()
    f = float(u)
    if not arb(f) >= u:
        f = math.nextafter(f, math.inf)
    return f


def _float_lo(x: arb) -> float:
    u = x.lower()
    f = float(u)
    if not arb(f) <= u:
        f = math.nextafter(f, -math.inf)
    return f


def _mid(x: arb) -> float:
    return float(x.mid())


def _emax(xs) -> arb:
    """Max of exact arbs."""
    out = None
    for x in xs:
        if out is None or x > out:
            out = x
    return out


def _emin(xs) -> arb:
    out = None
    for x in xs:
        if out is None or x < out:
            out = x
    return out


def _mat(a: np.ndarray) -> arb_mat:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    return arb_mat(a.tolist())


def _row(v: list[arb]) -> arb_mat:
    return arb_mat([list(v)])


def _vec(M: arb_mat) -> list[arb]:
    return M.entries()


def _sqrt_up(x: arb) -> arb:
    x = _up(x)
    return ZERO if x <= 0 else _up(x.sqrt())


def _norm_up(v) -> arb:
    return _sqrt_up(sum((x * x for x in v), ZERO))


def _diag(v: list) -> arb_mat:
    d = len(v)
    return arb_mat([[v[i] if i == j else ZERO for j in range(d)] for i in range(d)])


def _absmat(M: arb_mat) -> arb_mat:
    return arb_mat([[abs(x) for x in r] for r in M.tolist()])


def _col_norms_up(M: arb_mat) -> list[arb]:
    rows = M.tolist()
    return [_sqrt_up(sum((r[j] * r[j] for r in rows), ZERO)) for j in range(M.ncols())]


def _col_scale(M: arb_mat, a: list[arb]) -> arb_mat:
    return arb_mat([[x * y for x, y in zip(r, a, strict=True)] for r in M.tolist()])


def spectral_upper(M: arb_mat) -> arb:
    """Upper bound of the spectral norm: lambda_max(G)^(2^s) <= ||G^(2^s)||_inf, G = M M^T."""
    k, d = M.nrows(), M.ncols()
    if k == 0 or d == 0:
        return ZERO
    G = M * M.transpose() if k <= d else M.transpose() * M
    for _ in range(SPEC_SQUARINGS):
        G = G * G
    gn = _emax(_up(sum((abs(x) for x in r), ZERO)) for r in G.tolist())
    if gn <= 0:
        return ZERO
    return _up(gn ** (ONE / (2 ** (SPEC_SQUARINGS + 1))))


# ======================================================================================= row maxima
# Maxima over the rows of large matrices (a pooled or block term's vertices against many functionals)
# are taken in two passes: rigorous float64 bounds lo <= x <= hi of every entry discard the rows that
# cannot attain a maximum, and the rows that are left are evaluated exactly in arb. The float bounds
# only ever *discard* rows, so the result is the arb maximum over every row that can attain it.
_U = 2.0**-53  # unit roundoff of float64
_TINY = 2.0**-1000  # covers underflow (and flush-to-zero) of every float operation below
# A 2-norm of d float squares loses up to d 2^-1022 to underflow (or flush-to-zero) of the squares,
# i.e. sqrt(d) 2^-511 of the norm; this covers it for any d < 2^120.
_NORM_TINY = 2.0**-450


def _mid_rad(rows: list[list[arb]]) -> tuple[np.ndarray, np.ndarray]:
    """Float arrays (m, r) with |x - m| <= r for every point x of every ball (inf where not finite)."""
    m = np.array([[float(x.mid()) for x in r] for r in rows], dtype=np.float64)
    rad = np.array([[float(x.rad()) for x in r] for r in rows], dtype=np.float64)
    m = m.reshape(len(rows), len(rows[0]) if rows else 0)
    with np.errstate(all="ignore"):
        # float(mid) is within one ulp of the midpoint, float(rad) within one ulp of the radius.
        r = (rad.reshape(m.shape) + np.abs(m) * (4 * _U) + _TINY) * (1 + 8 * _U)
    r[~np.isfinite(m)] = np.inf
    return np.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0), r


def _interval(m: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float bounds (lo, hi) of the interval [m - r, m + r], rounded outwards."""
    with np.errstate(all="ignore"):
        s = (np.abs(m) + r) * (4 * _U) + _TINY
        lo, hi = m - r - s, m + r + s
        bad = np.isnan(lo) | np.isnan(hi)
    lo[bad], hi[bad] = -np.inf, np.inf
    return lo, hi


def _product_enclosure(Vm, Vr, Bm, Br) -> tuple[np.ndarray, np.ndarray]:
    """Float arrays (C, E) with |X - C| <= E for every entry X of V B, V in Vm +- Vr, B in Bm +- Br.

    |V B - Vm Bm| <= |Vm| Br + Vr (|Bm| + Br), and the float product C = fl(Vm Bm) (any summation
    order, with or without fused multiply-adds) is within g |Vm| |Bm| + k TINY of Vm Bm, g = gamma_k.
    The three nonnegative products are computed in float with relative error at most g each; the factor
    (1 + 4 g) and the absolute k TINY cover them and the final sum."""
    k = Vm.shape[1]
    g = (k + 4) * _U / (1 - (k + 4) * _U)
    with np.errstate(all="ignore"):
        aV, aB = np.abs(Vm), np.abs(Bm)
        C = Vm @ Bm
        E = (g * (aV @ aB) + aV @ Br + Vr @ (aB + Br)) * (1 + 4 * g) + (k + 4) * _TINY
        E[np.isnan(E) | np.isnan(C)] = np.inf
    return np.nan_to_num(C, nan=0.0), E


def _product_bounds(Vm, Vr, Bm, Br) -> tuple[np.ndarray, np.ndarray]:
    """Float bounds (lo, hi) of every entry of V B (see :func:`_product_enclosure`)."""
    return _interval(*_product_enclosure(Vm, Vr, Bm, Br))


def _sum_lower(parts: list[np.ndarray]) -> np.ndarray:
    """A float lower bound of the exact sum of float arrays (n parts: error below gamma_n sum |x|)."""
    n = len(parts)
    g = (n + 2) * _U / (1 - (n + 2) * _U)
    with np.errstate(all="ignore"):
        tot = np.sum(parts, axis=0)
        mag = np.sum([np.abs(p) for p in parts], axis=0)
        out = tot - mag * (2 * g) - n * _TINY
    out[np.isnan(out)] = -np.inf
    return out


def _col_norms_float(Bm, Br) -> np.ndarray:
    """Float upper bounds of the column 2-norms of B in Bm +- Br (k squares summed: gamma_(k+2), and
    ``_NORM_TINY`` for squares lost to underflow)."""
    k = Bm.shape[0]
    g = (k + 4) * _U / (1 - (k + 4) * _U)
    with np.errstate(all="ignore"):
        a = np.abs(Bm) + Br
        out = np.sqrt((a * a).sum(axis=0)) * (1 + 2 * g) + _NORM_TINY
    out[np.isnan(out)] = np.inf
    return out


class _Cols:
    """The columns of an N x K matrix X of exact numbers: float bounds ``lo <= X <= hi`` of every entry
    (inf / -inf where unknown) and the exact entries on demand, ``exact(rows, j)`` -> list of arbs."""

    def __init__(self, lo: np.ndarray, hi: np.ndarray, exact):
        self.lo, self.hi, self.exact = lo, hi, exact

    @property
    def shape(self) -> tuple[int, int]:
        return self.lo.shape

    def neg(self) -> _Cols:
        return _Cols(-self.hi, -self.lo, lambda rows, j: [-x for x in self.exact(rows, j)])

    @staticmethod
    def of_list(X: list[list[arb]]) -> _Cols:
        N = len(X)
        if N == 0:
            return _Cols(np.zeros((0, 0)), np.zeros((0, 0)), lambda rows, j: [])
        lo, hi = _interval(*_mid_rad(X))
        return _Cols(lo, hi, lambda rows, j: [X[r][j] for r in rows])

    @staticmethod
    def product(V: arb_mat, B: arb_mat, vcache: dict | None = None) -> _Cols:
        """The columns of V B, never formed in arb: its rows are computed exactly only where needed."""
        vcache = {} if vcache is None else vcache
        if "mr" not in vcache:
            vcache.setdefault("rows", V.tolist())
            vcache["mr"] = _mid_rad(vcache["rows"])
        Vrows = vcache["rows"]
        Bcols = B.transpose().tolist()
        Bm, Br = _mid_rad(B.tolist())
        lo, hi = _product_bounds(*vcache["mr"], Bm, Br)

        def exact(rows, j):
            col = Bcols[j]
            return [sum((a * b for a, b in zip(Vrows[r], col, strict=True)), ZERO) for r in rows]

        return _Cols(lo, hi, exact)

    @staticmethod
    def row_norms(prod: _Cols, V: arb_mat, M: arb_mat, vcache: dict) -> _Cols:
        """The N x 1 column of upper bounds |row of V M|_2 (exact arbs), from ``prod`` = V M's columns:
        a row's norm lies between those of its entries' distances to 0 and of their largest magnitudes,
        and the float sum of d squares and the square root are within gamma_(d+2) of the exact ones (plus
        ``_NORM_TINY`` for squares lost to underflow)."""
        lo, hi = prod.lo, prod.hi
        d = lo.shape[1]
        g = (d + 4) * _U / (1 - (d + 4) * _U)
        with np.errstate(all="ignore"):
            big = np.maximum(np.abs(lo), np.abs(hi))
            small = np.where(lo > 0, lo, np.where(hi < 0, -hi, 0.0))
            nhi = np.sqrt((big * big).sum(axis=1)) * (1 + 2 * g) + _NORM_TINY
            nlo = np.sqrt((small * small).sum(axis=1)) * (1 - 2 * g) - _TINY
        nhi[np.isnan(nhi)] = np.inf
        nlo[~np.isfinite(nlo)] = -np.inf  # an overflowed square says nothing from below
        vcache.setdefault("rows", V.tolist())
        Vrows = vcache["rows"]

        def exact(rows, j):
            return [_norm_up((arb_mat([Vrows[r]]) * M).entries()) for r in rows]

        return _Cols(nlo[:, None], nhi[:, None], exact)


def _bounds_of(scale: list[arb]) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([_float_lo(x) for x in scale], dtype=np.float64),
            np.array([_float_up(x) for x in scale], dtype=np.float64))


def _group_prep(slo, shi, lo, hi) -> dict:
    """What :func:`_group_rows` needs for every t: the largest |X| per column and, when each scale is
    one number s >= 0 (the caps; the ratio ranges of :func:`_ratio_max` are intervals), the products
    s hi and s lo."""
    with np.errstate(all="ignore"):
        pre = {"mag": np.maximum(np.abs(lo), np.abs(hi)).max(axis=0),
               "point": bool(np.array_equal(slo, shi) and np.all(slo >= 0))}
        if pre["point"]:
            pre["prod"] = (slo[:, None] * hi, slo[:, None] * lo)
    return pre


def _group_rows(slo, shi, lo, hi, t, starts, bounds, pre: dict,
                floor: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per group of rows [g0, g1): the rows that can attain max(0, max_b s_b (X_b - t)) for s_b in
    [slo_b, shi_b] and X_b in [lo_b, hi_b] (columns; one t per column, of either sign), as (rows,
    column starts): the kept rows of column j are rows[starts[j]:starts[j + 1]]. A row is dropped when
    its float upper bound is below 0 or below another row's float lower bound by more than ``tol``,
    which bounds the rounding of every float value here (s (X - t), or s X - s t when s is one number
    per row: relative error below 3u of s (|X| + |t|); the absolute part covers underflow). ``pre``:
    :func:`_group_prep`.
    ``floor=False``: the maximum is max_b s_b (X_b - t) without the 0 (rows below 0 may attain it)."""
    out = []
    ncol = lo.shape[1]
    with np.errstate(all="ignore"):
        mag = pre["mag"] + np.abs(t)  # per column (t < 0 in _ratio_max)
        for g0, g1 in zip(starts, bounds, strict=True):
            if g1 <= g0:
                out.append((np.empty(0, dtype=np.int64), np.zeros(ncol + 1, dtype=np.int64)))
                continue
            sl, sh = slo[g0:g1, None], shi[g0:g1, None]
            if pre["point"]:  # s (x - t) = s x - s t: extremes at x = hi and x = lo
                st = sl * t
                b, a = pre["prod"][0][g0:g1] - st, pre["prod"][1][g0:g1] - st
            else:
                # bilinear in (s, x): its extremes over the box are at the corners
                dh, dl = hi[g0:g1] - t, lo[g0:g1] - t
                c = [s * x for s in (sl, sh) for x in (dl, dh)]
                b = np.maximum(np.maximum(c[0], c[1]), np.maximum(c[2], c[3]))
                a = np.minimum(np.minimum(c[0], c[1]), np.minimum(c[2], c[3]))
            # an overflowed value bounds nothing: it becomes -inf (from below) or +inf (from above)
            a = np.where(np.isfinite(a), a, -np.inf)
            b = np.where(np.isfinite(b), b, np.inf)
            tol = (np.maximum(np.abs(sl).max(), np.abs(sh).max()) * mag) * (8 * _U) + _TINY  # inf is safe
            thr = (np.maximum(a.max(axis=0), 0.0) if floor else a.max(axis=0)) - 2 * tol
            ok = ~(b < thr[None, :])  # nan (an unknown bound) keeps the row
            cc, rr = np.nonzero(ok.T)  # sorted by column
            out.append((g0 + rr, np.searchsorted(cc, np.arange(ncol + 1))))
    return out


# =========================================================================================== sets
_ids = itertools.count()


POOL_T = (0.0, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 3 / 4, 1.0)


def _pool_pieces(pool, N: int) -> list[tuple[int, int, list, arb]]:
    """The pooled bound's sum over positions as pieces (g0, g1, scales of rows g0..g1-1, count): one per
    group with one scale vector (count = its multiplicity), or one per bucket of per-position scales."""
    scale, starts, mult = pool[0], pool[1], pool[2]
    pscale = pool[4] if len(pool) > 4 else None
    bounds = list(starts[1:]) + [N]
    out = []
    for g, (g0, g1) in enumerate(zip(starts, bounds, strict=True)):
        per = pscale[g] if pscale is not None else None
        if per is None:
            out.append((g0, g1, scale[g0:g1], mult[g]))
        else:
            out.extend((g0, g1, sq, n) for sq, n in zip(*per, strict=True))
    return out


def pooled_max(X, pool) -> list[arb]:
    """Upper bound per column of the support of a pooled term (rows X [N][K], a list of lists of arbs
    or a :class:`_Cols`): for every t >= 0, total t + sum over positions of max(0, max_b s_ib (X_b - t))
    bounds it (Lagrangian duality), with s_ib row b's scale at position i (the group's scale, or the
    per-position scales of ``pool[4]``, see :func:`_pool_pieces`); the least over a grid of t in
    [0, max X] is taken.

    Each piece's maximum is taken in arb over the rows that can attain it: a row whose float upper
    bound of s_b (X_b - t) is below 0 or below another row's float lower bound is discarded (see
    :func:`_group_rows`); the bound above holds for the kept rows' exact values, which are at least every
    discarded row's value.

    With score ratios (``pool[5]``) the bound is :func:`_ratio_max`, as in the prover; the caps' bound
    above is computed only for the columns where that fails."""
    cols = X if isinstance(X, _Cols) else _Cols.of_list(X)
    ratios = pool[5] if len(pool) > 5 else None
    if ratios is None or cols.shape[0] == 0:
        return _capped_max(cols, pool)
    out = _ratio_max(cols, pool[1], ratios)
    bad = [j for j, x in enumerate(out) if x is None]
    if bad:
        sub = _Cols(cols.lo[:, bad], cols.hi[:, bad], lambda rows, j: cols.exact(rows, bad[j]))
        for j, x in zip(bad, _capped_max(sub, pool), strict=True):
            out[j] = x
    return out


def _capped_max(cols: _Cols, pool) -> list[arb]:
    """The caps' bound of :func:`pooled_max` (Lagrangian duality on the total)."""
    total = pool[3]
    N, K = cols.shape
    if N == 0 or not total > 0:
        return [ZERO] * K
    pieces = _pool_pieces(pool, N)
    fl = [_bounds_of(sc) for _g0, _g1, sc, _n in pieces]
    out = []
    with np.errstate(all="ignore"):  # the grid's top: the column's largest entry (any t >= 0 gives a bound)
        tops = np.maximum(np.array([float(x) for x in _row_max(cols)], dtype=np.float64), 0.0)
    tops[~np.isfinite(tops)] = 0.0
    chunk = max(1, 2**21 // N)
    for j0 in range(0, K, chunk):
        lo, hi = cols.lo[:, j0:j0 + chunk], cols.hi[:, j0:j0 + chunk]
        top = tops[j0:j0 + chunk]
        ts = [top * f for f in POOL_T]
        keep = []  # per t, per piece: (rows, column starts)
        for (g0, g1, _sc, _n), (slo, shi) in zip(pieces, fl, strict=True):
            pre = _group_prep(slo, shi, lo[g0:g1], hi[g0:g1])
            keep.append([_group_rows(slo, shi, lo[g0:g1], hi[g0:g1], tf, [0], [g1 - g0], pre)[0] for tf in ts])
        for jj in range(lo.shape[1]):
            rows = sorted({g0 + int(r) for (g0, _g1, _sc, _n), per in zip(pieces, keep, strict=True)
                           for rr, cs in per for r in rr[cs[jj]:cs[jj + 1]]})
            ex = dict(zip(rows, (_up(x) for x in cols.exact(rows, j0 + jj)), strict=True))
            best = None
            for it, tf in enumerate(ts):
                t = _f(tf[jj])
                val = total * t
                for (g0, _g1, sc, n), per in zip(pieces, keep, strict=True):
                    rr, cs = per[it]
                    gm = _emax([_up(sc[r] * (ex[g0 + r] - t)) for r in rr[cs[jj]:cs[jj + 1]]] + [ZERO])
                    val = val + n * gm
                val = _up(val)
                best = val if best is None else _emin([best, val])
            out.append(best)
    return out


def _ratio_pieces(ratios, starts, N: int) -> list:
    """(g0, g1, Rlo, Rhi, count, float Rlo, float Rhi) per run of positions with ratio ranges."""
    bounds = list(starts[1:]) + [N]
    out = []
    for g, R in enumerate(ratios):
        for rlo, rhi, n in zip(*R, strict=True):
            out.append((starts[g], bounds[g], rlo, rhi, n,
                        np.array([_float_lo(x) for x in rlo]), np.array([_float_up(x) for x in rhi])))
    return out


def _ratio_max(cols: _Cols, starts, ratios) -> list[arb | None]:
    """Upper bound per column of sum_i c_i X_(b_i) over the softmax weights c_i = r_i / (1 + sum r_j)
    themselves (position i's r in [Rlo, Rhi] of its run, see the prover's affine.ratio_max): theta
    bounds it if sum_runs count max_b max(Rlo_b (X_b - theta), Rhi_b (X_b - theta)) <= theta, since
    then sum r_i X_i <= theta (1 + sum r_i) for every choice of rows. theta is found by Newton steps
    on floats and checked in arb over the rows a float pass cannot rule out (None if the check fails)."""
    N, K = cols.shape
    out: list[arb | None] = [None] * K
    if len(ratios) != len(starts) or any(R is None for R in ratios):
        return out  # a group's positions would be left out
    pieces = _ratio_pieces(ratios, starts, N)
    if not pieces:
        return out
    ar = np.arange(K)
    with np.errstate(all="ignore"):
        X = cols.hi  # float upper bounds of the entries: the function below increases with every X_b
        th = np.where(np.isfinite(X.max(axis=0)), X.max(axis=0), 0.0)
        for _ in range(30):
            val, der = np.zeros(K), np.zeros(K)
            for g0, g1, _rl, _rh, n, flo, fhi in pieces:
                D = X[g0:g1] - th
                R = np.where(D >= 0, fhi[:, None], flo[:, None])
                V = R * D
                j = V.argmax(axis=0)
                val += float(n) * V[j, ar]
                der += float(n) * R[j, ar]
            new = th + (val - th) / (1.0 + der)
            new = np.where(np.isfinite(new), new, th)
            settled = np.all(np.abs(new - th) <= 1e-15 * (np.abs(th) + np.abs(new)))
            th = new
            if settled:
                break
        th = th + 1e-12 * (np.abs(th) + np.abs(X).max(axis=0)) + 1e-300
    keep = []
    for g0, g1, _rl, _rh, _n, flo, fhi in pieces:
        pre = _group_prep(flo, fhi, cols.lo[g0:g1], cols.hi[g0:g1])
        with np.errstate(all="ignore"):
            keep.append(_group_rows(flo, fhi, cols.lo[g0:g1], cols.hi[g0:g1], th, [0], [g1 - g0], pre,
                                    floor=False)[0])
    for j in range(K):
        if not np.isfinite(th[j]):
            continue
        t = _f(float(th[j]))
        rows = sorted({g0 + int(r) for (g0, *_rest), (rr, cs) in zip(pieces, keep, strict=True)
                       for r in rr[cs[j]:cs[j + 1]]})
        ex = dict(zip(rows, (_up(x) for x in cols.exact(rows, j)), strict=True))
        val = ZERO
        for (g0, _g1, rl, rh, n, _fl, _fh), (rr, cs) in zip(pieces, keep, strict=True):
            kept = [int(r) for r in rr[cs[j]:cs[j + 1]]]
            if not kept:
                val = None
                break
            val = val + n * _emax([_emax([_up(rl[r] * (ex[g0 + r] - t)), _up(rh[r] * (ex[g0 + r] - t))])
                                   for r in kept])
        if val is not None and _up(val) <= t:
            out[j] = t
    return out


def _row_max(cols: _Cols) -> list[arb]:
    """Per column, the exact upper endpoint of the largest entry (over the rows that can hold it)."""
    N, K = cols.shape
    with np.errstate(all="ignore"):
        thr = cols.lo.max(axis=0)
    out = []
    for j in range(K):
        rows = np.flatnonzero(~(cols.hi[:, j] < thr[j])).tolist()
        out.append(_emax(_up(x) for x in cols.exact(rows, j)))
    return out


@dataclass
class CTerm:
    id: int
    kind: str  # block, pooled, zono, ell
    M: arb_mat
    V: arb_mat | None = None
    vnorm: arb = ZERO
    vlo: list = field(default_factory=list)
    vhi: list = field(default_factory=list)
    pool: tuple | None = None  # (scale, starts, mult, total)
    _l2: arb | None = None
    _dev: tuple | None = None
    signed: bool = False  # block / pooled: coefficients s * coef, |s| <= 1
    vcache: dict = field(default_factory=dict)  # V's rows and float enclosure (shared by terms with this V)

    def with_M(self, M: arb_mat) -> CTerm:
        return CTerm(self.id, self.kind, M, self.V, self.vnorm, self.vlo, self.vhi, self.pool, signed=self.signed,
                     vcache=self.vcache)

    def extremes(self, X) -> tuple[list, list]:
        """(min, max) per column of sum_g coef_g X[g] over the term's coefficients (exact arbs); X is a
        list of rows or a :class:`_Cols`."""
        cols = X if isinstance(X, _Cols) else _Cols.of_list(X)
        if self.kind == "block":
            hi = _row_max(cols)
            lo = [-x for x in _row_max(cols.neg())]
        else:
            hi = pooled_max(cols, self.pool)
            lo = [-x for x in pooled_max(cols.neg(), self.pool)]
        if self.signed:
            m = [_emax([h, -low, ZERO]) for low, h in zip(lo, hi, strict=True)]
            return [-x for x in m], m
        return lo, hi

    def product(self, B: arb_mat) -> _Cols:
        """The columns of V B (the vertices against B)."""
        return _Cols.product(self.V, B, self.vcache)

    def l2_sup(self) -> arb:
        if self._l2 is None:
            if self.kind in ("block", "pooled"):
                l2 = _up(self.vnorm * spectral_upper(self.M))
                k, d = self.M.nrows(), self.M.ncols()
                if self.V.nrows() * k * d <= EXACT_COORD_LIMIT:
                    l2 = _emin([l2, self.extremes(_Cols.row_norms(self.product(self.M), self.V, self.M,
                                                                  self.vcache))[1][0]])
                self._l2 = l2
            elif self.kind == "zono":
                rows = self.M.tolist()
                m = len(rows)
                tri = _up(sum((_norm_up(r) for r in rows), ZERO))
                box = _norm_up([_up(sum((abs(r[j]) for r in rows), ZERO)) for j in range(self.M.ncols())])
                spec = _up(arb(m).sqrt() * spectral_upper(self.M))
                self._l2 = _emin([tri, box, spec])
            else:
                self._l2 = spectral_upper(self.M)
        return self._l2

    def coord_dev(self) -> tuple[list[arb], list[arb]]:
        if self._dev is None:
            self._dev = self._coord_dev()
        return self._dev

    def _coord_dev(self) -> tuple[list[arb], list[arb]]:
        M = self.M
        k, d = M.nrows(), M.ncols()
        if self.kind in ("block", "pooled"):
            flo, fhi = self._cheap_bounds(*_mid_rad(M.tolist()))
            lo, hi = [arb(float(x)) for x in flo], [arb(float(x)) for x in fhi]
            if self.V.nrows() * k * d <= EXACT_COORD_LIMIT:
                elo, ehi = self.extremes(self.product(M))
                hi = [_emin([x, y]) for x, y in zip(hi, ehi, strict=True)]
                lo = [_emax([x, y]) for x, y in zip(lo, elo, strict=True)]
            return lo, hi
        if self.kind == "zono":
            rows = M.tolist()
            s = [_up(sum((abs(r[j]) for r in rows), ZERO)) for j in range(d)]
            return [-x for x in s], s
        s = _col_norms_up(M)
        return [-x for x in s], s

    def support(self, A: arb_mat) -> tuple[list[arb], list[arb]]:
        """Min and max of coef @ M @ A[:, k] over the term (exact arbs): every vertex row for blocks and
        pooled terms (:class:`_Cols`), the generators' absolute sums and the column norms for
        zonotopes and ellipsoids. :meth:`cheap_lower` is the cheap lower bound."""
        B = self.M * A
        K = A.ncols()
        if self.kind in ("block", "pooled"):
            return self.extremes(self.product(B))
        if self.kind == "zono":
            rows = B.tolist()
            s = [_up(sum((abs(r[j]) for r in rows), ZERO)) for j in range(K)]
        else:
            s = _col_norms_up(B)
        return [-x for x in s], s

    def cheap_lower(self, Am: np.ndarray, Ar: np.ndarray) -> np.ndarray:
        """Float lower bounds of min coef @ M @ A[:, k] over the term, for A in Am +- Ar (the cheap
        support, :meth:`_cheap_bounds`, of B = M A; -inf where unknown)."""
        if self.M.nrows() == 0:
            return np.zeros(Am.shape[1])
        return self._cheap_bounds(*_product_enclosure(*_mid_rad(self.M.tolist()), Am, Ar))[0]

    def _cheap_bounds(self, Bm: np.ndarray, Br: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Float bounds (lo, hi) of coef @ B[:, k] over the term's coefficients, B in Bm +- Br, without
        its vertices: for blocks and pooled terms -+ min(vnorm |B_k|, the coefficient box's support),
        the box's as m . B -+ h . |B| (m its midpoint, h its half-width: max(vlo b, vhi b) = m b + h |b|);
        for zonotopes -+ sum_e |B_ek|; for ellipsoids -+ |B_k|. -inf / inf where unknown."""
        if self.kind in ("block", "pooled"):
            mm = _mid_rad([[(a + b) / 2 for a, b in zip(self.vlo, self.vhi, strict=True)]])
            hh = _mid_rad([[abs(b - a) / 2 for a, b in zip(self.vlo, self.vhi, strict=True)]])
            with np.errstate(all="ignore"):
                l2 = _float_up(self.vnorm) * _col_norms_float(Bm, Br) * (1 + 4 * _U)
                C1, E1 = _product_enclosure(*mm, Bm, Br)  # m . B
                C2, E2 = _product_enclosure(*hh, np.abs(Bm) + Br, np.zeros_like(Br))  # >= h . |B|
                lo = np.maximum(-l2, _sum_lower([C1, -E1, -C2, -E2])[0])
                hi = np.minimum(l2, -_sum_lower([-C1, -E1, -C2, -E2])[0])
        else:
            if self.kind == "zono":
                k = Bm.shape[0]
                g = (k + 4) * _U / (1 - (k + 4) * _U)
                with np.errstate(all="ignore"):
                    hi = (np.abs(Bm) + Br).sum(axis=0) * (1 + 2 * g) + _TINY
            else:
                hi = _col_norms_float(Bm, Br)
            lo = -hi
        lo, hi = np.array(lo, dtype=np.float64), np.array(hi, dtype=np.float64)
        lo[np.isnan(lo)], hi[np.isnan(hi)] = -np.inf, np.inf
        return lo, hi


def signed_copy(t: CTerm, k: arb) -> CTerm:
    """A fresh term holding s k (coef @ M) for every coefficient of t and |s| <= 1."""
    if t.kind in ("zono", "ell"):
        return CTerm(next(_ids), t.kind, t.M * k)
    m = [_emax([abs(a), abs(b)]) for a, b in zip(t.vlo, t.vhi, strict=True)]
    new = CTerm(next(_ids), t.kind, t.M * k, t.V, t.vnorm, [-x for x in m], m, t.pool, signed=True,
                vcache=t.vcache)
    if t._dev is not None:
        dev = [_up(k * _emax([abs(a), abs(b)])) for a, b in zip(*t._dev, strict=True)]
        new._dev = ([-x for x in dev], dev)
    return new


def make_block(V: arb_mat, M: arb_mat) -> CTerm:
    rows = V.tolist()
    k = V.ncols()
    vnorm = _emax(_norm_up(r) for r in rows)
    vlo = [_emin(_lo(r[e]) for r in rows) for e in range(k)]
    vhi = [_emax(_up(r[e]) for r in rows) for e in range(k)]
    return CTerm(next(_ids), "block", M, V, vnorm, vlo, vhi)


def _runs(m: int, runs: int) -> list[tuple[int, int]]:
    """The runs of positions [i m // nb, (i + 1) m // nb), nb = min(m, runs)."""
    nb = min(m, runs)
    cuts = [i * m // nb for i in range(nb + 1)]
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def _per_run(per: list[list[arb]], reduce, runs: int) -> list[list[arb]]:
    """Per run of :func:`_runs`, the elementwise ``reduce`` (_emax or _emin) of its positions' lists."""
    return [[reduce(col) for col in zip(*per[a:b], strict=True)] for a, b in _runs(len(per), runs)]


def _buckets(per: list[list[arb]], runs: int) -> tuple[list[list[arb]], list[int]]:
    """Per-position scales (m lists over the rows): each run's elementwise largest, and the runs' lengths."""
    return _per_run(per, _emax, runs), [b - a for a, b in _runs(len(per), runs)]


def _ratio_buckets(rlo: list[list[arb]], rhi: list[list[arb]], runs: int) -> tuple[list, list, list[int]]:
    """Per-position ranges of the score ratios: each run's least lower and largest upper ends, and the
    runs' lengths."""
    return _per_run(rlo, _emin, runs), _per_run(rhi, _emax, runs), [b - a for a, b in _runs(len(rhi), runs)]


def make_pooled(D: arb_mat, scale: list, starts: list[int], mult: list[int], total: arb, M: arb_mat,
                pscale: list | None = None, ratios: list | None = None) -> CTerm:
    """A pooled term (see :func:`pooled_max`): rows D mapped by M; ``pscale`` per group None or
    (per-bucket scale lists, bucket counts); ``ratios`` per group None or (per-bucket lower and upper
    ratio lists, bucket counts), see :func:`_ratio_max`."""
    scale = [_emin([_up(x), total]) for x in scale]
    if pscale is not None:
        pscale = [None if per is None else ([[_emin([_up(x), total]) for x in sq] for sq in per[0]],
                                            [arb(n) for n in per[1]]) for per in pscale]
    if ratios is not None:
        ratios = [None if R is None else (R[0], R[1], [arb(n) for n in R[2]]) for R in ratios]
    pool = (scale, list(starts), [arb(x) for x in mult], total, pscale, ratios)
    rows = D.tolist()
    k = D.ncols()
    vnorm = pooled_max([[_norm_up(r)] for r in rows], pool)[0]
    vhi = pooled_max(rows, pool)
    vlo = [-x for x in pooled_max([[-v for v in r] for r in rows], pool)]
    t = CTerm(next(_ids), "pooled", M, D, vnorm, vlo, vhi, pool)
    del k
    return t


_centering: dict[int, arb_mat] = {}


def _C(d: int) -> arb_mat:
    if d not in _centering:
        inv = ONE / d
        _centering[d] = arb_mat([[(ONE if i == j else ZERO) - inv for j in range(d)] for i in range(d)])
    return _centering[d]


@dataclass
class CSet:
    """center (arb balls) + terms + box (exact upper bounds); r_cap bounds |x - c| for the exact c in the
    center ball."""

    center: list
    box: list
    terms: list
    r_cap: arb | None = None

    @property
    def d(self) -> int:
        return len(self.center)

    @staticmethod
    def point(center: list, box: list | None = None) -> CSet:
        return CSet(list(center), list(box) if box is not None else [ZERO] * len(center), [])

    def is_exact(self) -> bool:
        if self.terms:
            return False
        size = _emax([_up(b + x.rad()) for b, x in zip(self.box, self.center, strict=True)] + [ZERO])
        scale = _emax([_up(abs(x)) for x in self.center] + [ZERO])
        return bool(size <= _f(EXACT_REL) * (ONE + scale))

    def affine(self, W: arb_mat, absW: arb_mat, bias: list | None = None) -> CSet:
        c = _vec(_row(self.center) * W)
        if bias is not None:
            c = [x + y for x, y in zip(c, bias, strict=True)]
        box = [_up(x) for x in _vec(_row(self.box) * absW)]
        return CSet(c, box, [t.with_M(t.M * W) for t in self.terms])

    def scale(self, a: list) -> CSet:
        c = [x * y for x, y in zip(self.center, a, strict=True)]
        box = [_up(b * abs(y)) for b, y in zip(self.box, a, strict=True)]
        return CSet(c, box, [t.with_M(_col_scale(t.M, a)) for t in self.terms])

    def shift(self, v: list, vbox: list | None = None) -> CSet:
        c = [x + y for x, y in zip(self.center, v, strict=True)]
        box = self.box if vbox is None else [_up(x + y) for x, y in zip(self.box, vbox, strict=True)]
        return CSet(c, list(box), list(self.terms))

    def center_coords(self) -> CSet:
        C = _C(self.d)
        c = _vec(_row(self.center) * C)
        mb = sum(self.box, ZERO) / self.d
        box = [_up(b + mb) for b in self.box]
        out = CSet(c, box, [t.with_M(t.M * C) for t in self.terms])
        out.r_cap = self.r_cap  # C is an orthogonal projection
        return out

    def add(self, other: CSet) -> CSet:
        c = [x + y for x, y in zip(self.center, other.center, strict=True)]
        box = [_up(x + y) for x, y in zip(self.box, other.box, strict=True)]
        terms = {t.id: t for t in self.terms}
        order = [t.id for t in self.terms]
        for t in other.terms:
            if t.id in terms:
                terms[t.id] = t.with_M(terms[t.id].M + t.M)
            else:
                terms[t.id] = t
                order.append(t.id)
        return CSet(c, box, [terms[i] for i in order])

    def coord_bounds(self) -> tuple[list, list]:
        lo = [_lo(x) - b for x, b in zip(self.center, self.box, strict=True)]
        hi = [_up(x) + b for x, b in zip(self.center, self.box, strict=True)]
        for t in self.terms:
            a, b = t.coord_dev()
            lo = [x + y for x, y in zip(lo, a, strict=True)]
            hi = [x + y for x, y in zip(hi, b, strict=True)]
        lo = [_lo(x) for x in lo]
        hi = [_up(x) for x in hi]
        if self.r_cap is not None:
            lo = [_emax([x, _lo(c - self.r_cap)]) for x, c in zip(lo, self.center, strict=True)]
            hi = [_emin([x, _up(c + self.r_cap)]) for x, c in zip(hi, self.center, strict=True)]
        return lo, hi

    def l2_radius(self, about: list | None = None) -> arb:
        off = ZERO if about is None else _norm_up([x - y for x, y in zip(self.center, about, strict=True)])
        if about is None:
            off = _norm_up([x.rad() for x in self.center])
        inner = _up(sum((t.l2_sup() for t in self.terms), ZERO) + _norm_up(self.box))
        if self.r_cap is not None:
            inner = _emin([inner, self.r_cap])
        return _up(off + inner)

    def functional_lower(self, A: arb_mat, absA: arb_mat, exact: list[int] | None = None) -> list[arb]:
        """Lower bounds (exact arbs) of x . A[:, k] over the set: the cheap support (in float64 with
        rigorous error bounds, :meth:`CTerm.cheap_lower`) and the exact one for the columns ``exact``."""
        cval = _vec(_row(self.center) * A)
        boxdev = _vec(_row(self.box) * absA)
        base = [c - b for c, b in zip(cval, boxdev, strict=True)]
        parts = [np.array([_float_lo(x) for x in base], dtype=np.float64)]
        if self.terms:
            Am, Ar = _mid_rad(A.tolist())
            parts += [t.cheap_lower(Am, Ar) for t in self.terms]
        lo = [arb(float(x)) for x in _sum_lower(parts)]
        if exact:
            At = A.transpose().tolist()
            cols = arb_mat([At[k] for k in exact]).transpose()
            elo = [base[k] for k in exact]
            for t in self.terms:
                a, _ = t.support(cols)
                elo = [x + y for x, y in zip(elo, a, strict=True)]
            for i, k in enumerate(exact):
                lo[k] = _emax([lo[k], _lo(elo[i])])
        return lo

    def collapse(self) -> CSet:
        lo, hi = self.coord_bounds()
        mid = [_f(0.5 * (_mid(a) + _mid(b))) for a, b in zip(lo, hi, strict=True)]
        box = [_up(_emax([_up(h - m), _up(m - low)])) for low, h, m in zip(lo, hi, mid, strict=True)]
        r = self.l2_radius(mid)
        out = CSet(mid, box, [])
        out.r_cap = _emin([r, _norm_up(box)])
        return out


# =========================================================================================== rules
def ln_rows(X: list[list], w: list | None, b: list | None, eps: arb) -> list[list]:
    if w is None:
        return X
    out = []
    for x in X:
        d = len(x)
        mean = sum(x, ZERO) / d
        y = [v - mean for v in x]
        sig = (sum((v * v for v in y), ZERO) / d + eps).sqrt()
        out.append([v / sig * wi + bi for v, wi, bi in zip(y, w, b, strict=True)])
    return out


def norm_lower_bound(Y: CSet, lo: list, hi: list, ys: list, direction: list | None = None) -> arb:
    """A lower bound of |y| over the hull of Y and ys: the distance from 0 to the box [lo, hi], and for
    n = ys / |ys| (rounded) and ``direction`` (method /6, any vector): the least n . y over the hull
    divided by an upper bound of |n| (n . y <= |n| |y|), when positive."""
    d = Y.d
    dist = [_emax([lo[j], -hi[j], ZERO]) for j in range(d)]
    best = [_lo(sum((x * x for x in dist), ZERO).sqrt()) if any(x > 0 for x in dist) else ZERO]
    nrm = math.sqrt(sum(_mid(v) ** 2 for v in ys))
    dirs = ([[_f(_mid(v) / nrm) for v in ys]] if nrm > 0 else []) + (
        [[_f(float(x)) for x in direction]] if direction is not None else [])
    for n in dirs:
        A = arb_mat([[x] for x in n])
        lo_n = Y.functional_lower(A, _absmat(A), exact=[0])[0]
        at_ys = _lo(sum((x * y for x, y in zip(n, ys, strict=True)), ZERO))
        m = _emin([lo_n, at_ys])
        nn = _norm_up(n)
        if m > 0 and nn > 0:
            best.append(_lo(m / nn))
    return _emax(best)


def expansion_point(Y: CSet, lo: list, hi: list) -> tuple[list, arb]:
    """The better of the box midpoint and (the midpoint of) the center as Taylor point, with its radius."""
    best = None
    mid = [_f(0.5 * (_mid(a) + _mid(c))) for a, c in zip(lo, hi, strict=True)]
    for ys in (mid, [_f(_mid(x)) for x in Y.center]):
        hw = [_emax([_up(h - m), _up(m - low)]) for low, h, m in zip(lo, hi, ys, strict=True)]
        r = _emin([_norm_up(hw), Y.l2_radius(ys)])
        if best is None or r < best[1]:
            best = (ys, r)
    return best


def ln_set(X: CSet, w: list | None, b: list | None, eps: arb, direction: list | None = None) -> CSet:
    return ln_taylor(X, w, b, eps, direction)[0]


def ln_taylor(X: CSet, w: list | None, b: list | None, eps: arb,
              direction: list | None = None) -> tuple[CSet, tuple | None]:
    """LN's set and, for a Taylor expansion, (Y, y*, sigma*, sig_min, r, id of the remainder ball, eps);
    ``direction``: a further direction for :func:`norm_lower_bound` (method /6)."""
    if w is None:
        return X, None
    d = X.d
    Y = X.center_coords()
    lo, hi = Y.coord_bounds()
    ys, r = expansion_point(Y, lo, hi)
    sig = (sum((v * v for v in ys), ZERO) / d + eps).sqrt()
    sqd = arb(d).sqrt()
    nlb = norm_lower_bound(Y, lo, hi, ys, direction)
    sig_min = _emax([_lo(eps.sqrt()), _lo(sig - r / sqd), _lo((nlb * nlb / d + eps).sqrt())])
    g = [v / sig for v in ys]
    rho = _up(LN_REMAINDER * r * r / (sqd * sig_min * sig_min))
    lip = _up(r / sig_min)
    if rho >= lip:
        gn = _norm_up(g)
        if lip >= _lo(gn + sqd):
            out = CSet.point([ZERO] * d)
            rad = _up(sqd)
        else:
            out = CSet.point(g)
            rad = lip
        out.terms.append(CTerm(next(_ids), "ell", _diag([rad] * d)))
        return out.scale(w).shift(b), None
    else:
        s2 = sig * sig
        J = arb_mat([[((ONE if i == j else ZERO) - ys[i] * ys[j] / (d * s2)) / sig for j in range(d)]
                     for i in range(d)])
        absJ = _absmat(J)
        out = Y.shift([-v for v in ys]).affine(J, absJ).shift(g)
        ball = CTerm(next(_ids), "ell", _diag([rho] * d))
        out.terms.append(ball)
        return out.scale(w).shift(b), (Y, ys, sig, sig_min, r, ball.id, eps)


def _interval_mul(alo: arb, ahi: arb, blo: arb, bhi: arb) -> tuple[arb, arb]:
    ps = [alo * blo, alo * bhi, ahi * blo, ahi * bhi]
    return _emin(_lo(p) for p in ps), _emax(_up(p) for p in ps)


def _preact_factors(expansion: tuple, lw: dict, norm_ub: bool):
    """(v, c, q_lo, q_hi, t) of p_j = v_j + l_j(h) q - c_j rho, q = sigma*/sigma in [q_lo, q_hi], rho in [0, t]."""
    Y, ys, sig, sig_min, r, ball_id, eps = expansion
    w, b = lw["ln2"]
    d = Y.d
    W = lw["W_in"]
    wys = _row([wi * yi for wi, yi in zip(w, ys, strict=True)])
    c = [x / sig for x in _vec(wys * W)]
    v = [x + y + z for x, y, z in zip(_vec(_row(b) * W), lw["b_in"], c, strict=True)]
    s_lo, s_hi = sigma_range(Y, eps, norm_ub)
    s_lo = _emax([s_lo, sig_min])
    q_lo, q_hi = _lo(sig / s_hi), _up(sig / s_lo)
    t = _up(r * r / (2 * d * sig_min) / s_lo)
    return v, c, q_lo, q_hi, t


def _linear_part(P: CSet, expansion: tuple) -> CSet:
    return CSet(list(P.center), list(P.box), [t for t in P.terms if t.id != expansion[5]])


def ln_preact_bounds(P: CSet, expansion: tuple, lw: dict, factors: tuple | None = None) -> tuple[list, list]:
    """Bounds of every pre-activation LN(x) W_in + b_in from the Taylor set's linear part and a scalar
    remainder: p_j = v_j + l_j(h) sigma*/sigma(y) - c_j R(h)/sigma(y), c_j = (w*W_in[:, j]).y*/sigma*,
    v_j = b.W_in[:, j] + b_in[j] + c_j, l_j the linear part, 0 <= R <= r^2/(2 d sig_min) (docs/prove.md).
    ``factors``: :func:`_preact_factors` when already computed (default: those of method /3)."""
    llo, lhi = _linear_part(P, expansion).coord_bounds()
    v, c, q_lo, q_hi, t = _preact_factors(expansion, lw, True) if factors is None else factors
    lo, hi = [], []
    for j in range(len(v)):
        m_lo, m_hi = _interval_mul(_lo(llo[j] - v[j]), _up(lhi[j] - v[j]), q_lo, q_hi)
        ct = -c[j] * t
        lo.append(_lo(v[j] + m_lo + _emin([ZERO, _lo(ct)])))
        hi.append(_up(v[j] + m_hi + _emax([ZERO, _up(ct)])))
    return lo, hi


def ln_preact_set(P: CSet, expansion: tuple, lw: dict, factors: tuple | None = None) -> CSet:
    """A set holding every pre-activation vector: with z = v + l(h) in the linear part and q = s0 + delta,
    p = s0 z + (1 - s0) v + delta (z - v) - rho c (docs/prove.md): the linear part scaled by s0 (same
    term ids), a signed copy of its terms scaled by k >= |delta|, delta (z_c - v) as one zonotope
    generator k (z_c - v), k box in the box, and -rho c as the center -(t/2) c and one generator (t/2) c."""
    lin = _linear_part(P, expansion)
    lin.coord_bounds()  # caches the terms' deviations for signed_copy
    v, c, q_lo, q_hi, t = _preact_factors(expansion, lw, True) if factors is None else factors
    s0 = _f(0.5 * (_mid(q_lo) + _mid(q_hi)))
    k = _up(_emax([_up(q_hi - s0), _up(s0 - q_lo)]))
    half = _up(t) / 2
    base = lin.scale([s0] * len(v))
    center = [x + (ONE - s0) * vj - half * cj for x, vj, cj in zip(base.center, v, c, strict=True)]
    box = [_up(bb + k * lb) for bb, lb in zip(base.box, lin.box, strict=True)]
    terms = list(base.terms) + [signed_copy(tm, k) for tm in lin.terms]
    terms.append(CTerm(next(_ids), "zono", arb_mat([[k * (zc - vj) for zc, vj in zip(lin.center, v, strict=True)]])))
    terms.append(CTerm(next(_ids), "zono", arb_mat([[half * cj for cj in c]])))
    return CSet(center, box, terms)


def norm_upper_bound(Y: CSet, p: list) -> arb:
    """sup |y| over Y from |y|^2 = 2 y.p - |p|^2 + |y - p|^2 (p exact)."""
    neg = arb_mat([[-x] for x in p])
    s_hi = -Y.functional_lower(neg, _absmat(neg), exact=[0])[0]
    rr = Y.l2_radius(p)
    return _sqrt_up(2 * _emax([s_hi, ZERO]) + rr * rr - sum((x * x for x in p), ZERO))


def sigma_range(Y: CSet, eps: arb, norm_ub: bool = False, direction: list | None = None) -> tuple[arb, arb]:
    """``norm_ub`` (method /3): also the inner-product norm bound about the box midpoint and the center;
    ``direction``: see :func:`norm_lower_bound`."""
    d = Y.d
    lo, hi = Y.coord_bounds()
    ys = [_f(0.5 * (_mid(a) + _mid(c))) for a, c in zip(lo, hi, strict=True)]
    nlb = norm_lower_bound(Y, lo, hi, ys, direction)
    big = [_emax([abs(a), abs(c)]) for a, c in zip(lo, hi, strict=True)]
    ubs = [_norm_up(big), _up(_norm_up(ys) + Y.l2_radius(ys))]
    if norm_ub:
        ubs += [norm_upper_bound(Y, ys), norm_upper_bound(Y, [_f(_mid(x)) for x in Y.center])]
    nub = _emin(ubs)
    return _lo((nlb * nlb / d + eps).sqrt()), _up((nub * nub / d + eps).sqrt())


def relu(x: arb) -> arb:
    if x >= 0:
        return x
    if x <= 0:
        return ZERO
    return ZERO.union(_up(x))


def gelu(p: arb) -> arb:
    return p * (ONE + (p / arb(2).sqrt()).erf()) / 2


def relax(lo: arb, hi: arb, act: str, slope: float | None = None) -> tuple[arb, arb, arb]:
    """(a, b, mu) exact arbs with |act(p) - a p - b| <= mu on [lo, hi]; ``slope`` (ReLU, a neuron whose
    range crosses 0): that slope in [0, 1] in place of the chord's."""
    if act == "relu":
        if lo >= 0:
            a = ONE
        elif hi <= 0:
            a = ZERO
        elif slope is not None:
            a = _f(slope)
        else:
            a = _f(_mid(hi / (hi - lo)))
        # relu(p) - a p is piecewise linear with its kink at 0: extremes at lo, hi and (if inside) 0.
        pts = [lo, hi] + ([ZERO] if (lo < 0 and hi > 0) else [])
        vals = [(p if p >= 0 else ZERO) - a * p for p in pts]
        hmax = _emax(_up(v) for v in vals)
        hmin = _emin(_lo(v) for v in vals)
    else:
        width = hi - lo
        wide = _mid(width) > 1e-9 * (1.0 + abs(_mid(lo)) + abs(_mid(hi)))
        if wide:
            a = _f(_mid((gelu(hi) - gelu(lo)) / width))
        else:
            m = (lo + hi) / 2
            a = _f(_mid((ONE + (m / arb(2).sqrt()).erf()) / 2 + m * (-(m * m) / 2).exp() / (2 * arb.pi()).sqrt()))
        ts = [arb(i) / (GELU_GRID - 1) for i in range(GELU_GRID)]
        P = [lo] + [_f(_mid(lo + width * t)) for t in ts[1:-1]] + [hi]
        P = [_emin([_emax([p, lo]), hi]) for p in P]
        H = [gelu(p) - a * p for p in P]
        hmax, hmin = None, None
        for i in range(GELU_GRID - 1):
            step = abs(P[i + 1] - P[i])
            curv = GELU_D2_MAX * step * step / 8
            top = _up(_emax([_up(H[i]), _up(H[i + 1])]) + curv)
            bot = _lo(_emin([_lo(H[i]), _lo(H[i + 1])]) - curv)
            hmax = top if hmax is None else _emax([hmax, top])
            hmin = bot if hmin is None else _emin([hmin, bot])
    bb = _f(_mid((hmax + hmin) / 2))
    mu = _emax([_up(hmax - bb), _up(bb - hmin)])
    return a, bb, mu


def mlp_set(X: CSet, lw: dict, act: str, ln: tuple | None = None, preact_set: bool = False,
            norm_ub: bool = False) -> CSet:
    """``ln``: the expansion (:func:`ln_taylor`) when X is LayerNorm's Taylor set; the relaxation's
    ranges are then the intersection with :func:`ln_preact_bounds`. ``preact_set`` (method /3): the
    linear part is :func:`ln_preact_set` (its ranges intersected too) instead of the Taylor set;
    ``norm_ub`` (/3): the sigma range uses the inner-product norm bound."""
    P, lo, hi = preacts(X, lw, ln, preact_set, norm_ub)
    return mlp_out(P, lo, hi, lw, act)


def preacts(X: CSet, lw: dict, ln: tuple | None, preact_set: bool, norm_ub: bool) -> tuple[CSet, list, list]:
    """(P, lo, hi): the pre-activation set and the relaxation's ranges (see :func:`mlp_set`)."""
    P = X.affine(lw["W_in"], lw["|W_in|"], lw["b_in"])
    lo, hi = P.coord_bounds()
    if ln is not None:
        factors = _preact_factors(ln, lw, norm_ub)
        ranges = [ln_preact_bounds(P, ln, lw, factors)]
        if preact_set:
            P = ln_preact_set(P, ln, lw, factors)
            ranges.append(P.coord_bounds())
        for plo, phi in ranges:
            for j in range(len(lo)):
                nlo, nhi = _emax([lo[j], plo[j]]), _emin([hi[j], phi[j]])
                if nlo <= nhi:
                    lo[j], hi[j] = nlo, nhi
    return P, lo, hi


def mlp_out(P: CSet, lo: list, hi: list, lw: dict, act: str) -> CSet:
    """act(p) W_out + b_out over P with the relaxation on [lo, hi] (one zonotope generator per neuron)."""
    rel = [relax(a, c, act) for a, c in zip(lo, hi, strict=True)]
    H = P.scale([r[0] for r in rel]).shift([r[1] for r in rel])
    out = H.affine(lw["W_out"], lw["|W_out|"], lw["b_out"])
    # Relaxation errors of rounding size go to the box (the prover's rule), the others are generators.
    small = [r[2] <= _f(ZONO_MIN) * (ONE + _emax([abs(a), abs(c)])) for r, a, c in zip(rel, lo, hi, strict=True)]
    if any(small):
        Wt = lw["W_out"].tolist()
        extra = [ZERO] * len(out.box)
        for i, sm in enumerate(small):
            if sm:
                extra = [e + rel[i][2] * abs(w) for e, w in zip(extra, Wt[i], strict=True)]
        out.box = [_up(b + e) for b, e in zip(out.box, extra, strict=True)]
    rows = [i for i, r in enumerate(rel) if r[2] > 0 and not small[i]]
    if rows:
        Wt = lw["W_out"].tolist()
        Z = arb_mat([[rel[i][2] * x for x in Wt[i]] for i in rows])
        out.terms.append(CTerm(next(_ids), "zono", Z))
    return out


def slopes_lower(last: tuple, lw: dict, F: list, slopes: dict, shift: set | None = None) -> arb:
    """A lower bound (exact arb) of F . C x over every final residual x (C the centring), where x = mid +
    relu(p) W_out + b_out with p in P; ``last`` = (mid, P, lo, hi, cache).

    With g = C F and w = W_out g, a neuron's w_n relu(p_n) is bounded below by the relaxation of
    :func:`relax` (with ``slopes[n]`` on crossing neurons), except on N- = {crossing, w_n < 0}: there
    G(p) = sum_{N-} |w_n| relu(p_n) is convex, and p = p0 + sum_ib w_ib E_b + r, with the row terms'
    (pooled terms shared by mid and P) weights w_ib >= 0 summing to at most the total K / H per term
    (H row terms) and E_b = D_b M, is the convex combination (1 - sum w / K) (p0 + r) +
    sum_ib (w_ib / K) (p0 + r + K E_b). So G(p) <= G(p0) + sum_ib w_ib (G(p0 + K E_b) - G(p0)) / K
    + sum_n |w_n| (sig_n r_n + off_n), where relu(q + r) <= relu(q) + r+ and r+ <= sig r + off is its
    chord over the range [rlo, rhi] of r. All of it is linear in the coefficients of mid and P (which
    share term ids), so its minimum is a sum of supports; the row terms' support has per-row values
    h_b - D_b . y. On the neurons of N- in ``shift``, relu(q + r) <= relu(q + r_hi) at both points of
    each convex combination instead (r_hi moves into G; their r terms drop)."""
    mid, P, lo, hi, cache = last
    d = len(F)
    mean = sum(F, ZERO) / d
    g = [f - mean for f in F]  # C is symmetric: F . C x = (C F) . x
    gm = arb_mat([[x] for x in g])
    w = (lw["W_out"] * gm).entries()
    pr = _slopes_prep(mid, P, lo, hi, cache)
    cross = pr["cross"]
    rel = list(pr["chord"])
    for n, sl in slopes.items():
        if n in pr["cross_set"]:  # elsewhere a neuron is stable and its relaxation exact
            rel[n] = relax(lo[n], hi[n], "relu", sl)
    neg = set(n for n in cross if w[n] < 0)
    sh = neg & (shift or set())
    aw = [-w[n] if n in neg else ZERO for n in range(len(w))]
    v = [ZERO if n in sh else -aw[n] * pr["sig"][n] if n in neg else rel[n][0] * w[n] for n in range(len(w))]
    val = sum((c * x - b * abs(x) for c, b, x in zip(mid.center, mid.box, g, strict=True)), ZERO)
    val += sum((b * x for b, x in zip(lw["b_out"], g, strict=True)), ZERO)
    for n, (c, b) in enumerate(zip(P.center, P.box, strict=True)):
        val -= b * abs(v[n])
        if n not in neg:
            val += (c * rel[n][0] + rel[n][1]) * w[n] - rel[n][2] * abs(w[n])
    G0 = sum((aw[n] * relu(P.center[n] + (pr["rhi"][n] if n in sh else ZERO)) for n in neg), ZERO)
    val -= G0 + sum((aw[n] * pr["off"][n] for n in neg - sh), ZERO)
    one = arb_mat([[ONE]])
    mid_t = {t.id: t for t in mid.terms}
    v_row = arb_mat([[ZERO if n in neg else v[n]] for n in range(len(v))])
    awa = arb_mat([[ZERO if n in sh else aw[n]] for n in cross])
    awb = arb_mat([[aw[n] if n in sh else ZERO] for n in cross])
    for t, (K, RQ, RQs) in zip(pr["rows"], pr["Q"], strict=True):
        y = mid_t[t.id].M * gm + t.M * v_row
        Gb = (RQ * awa + RQs * awb).entries()
        xb = (t.V * y).entries()
        X = [[(gb - G0) / K - x] for gb, x in zip(Gb, xb, strict=True)]
        val -= pooled_max(X, t.pool)[0]
    vm = arb_mat([[x] for x in v])
    row_ids = {t.id for t in pr["rows"]}
    p_ids = {t.id for t in pr["others"]}
    for t in pr["others"]:
        B = t.M * vm
        if t.id in mid_t:
            B = B + mid_t[t.id].M * gm
        val += t.with_M(B).support(one)[0][0]
    for tid, t in mid_t.items():
        if tid not in row_ids and tid not in p_ids:
            val += t.with_M(t.M * gm).support(one)[0][0]
    return _lo(val)


def _slopes_prep(mid: CSet, P: CSet, lo: list, hi: list, cache: dict) -> dict:
    """The competitor-independent pieces of :func:`slopes_lower`, once per case: the crossing neurons,
    every neuron's chord relaxation, the row and other terms, the chord of r+ over the range of r, and
    per row term (K = H total, relu(p0 + K E_b) and relu(p0 + K E_b + r_hi) on the crossing neurons)."""
    if "rows" in cache:
        return cache
    cross = [n for n, (a, c) in enumerate(zip(lo, hi, strict=True)) if a < 0 and c > 0]
    chord = [relax(a, c, "relu") for a, c in zip(lo, hi, strict=True)]
    mid_ids = {t.id for t in mid.terms}
    rows = [t for t in P.terms if t.kind == "pooled" and not t.signed and t.id in mid_ids]
    row_ids = {t.id for t in rows}
    others = [t for t in P.terms if t.id not in row_ids]
    rlo, rhi = CSet([ZERO] * P.d, list(P.box), others).coord_bounds()
    sig, off = [], []
    for a, b in zip(rlo, rhi, strict=True):
        if a >= 0:
            sig.append(ONE)
            off.append(ZERO)
        elif b <= 0:
            sig.append(ZERO)
            off.append(ZERO)
        else:
            sg = b / (b - a)  # the chord of r+ from (rlo, 0) to (rhi, rhi)
            sig.append(sg)
            off.append(-sg * a)
    qs = []
    for t in rows:
        K = arb(len(rows)) * t.pool[3]
        Mc = arb_mat([[t.M[i, n] for n in cross] for i in range(t.M.nrows())])
        E = (t.V * Mc).tolist()
        Q = [[P.center[n] + K * e for n, e in zip(cross, row, strict=True)] for row in E]
        RQ = arb_mat([[relu(q) for q in row] for row in Q])
        RQs = arb_mat([[relu(q + rhi[n]) for n, q in zip(cross, row, strict=True)] for row in Q])
        qs.append((K, RQ, RQs))
    cache.update(rows=rows, others=others, sig=sig, off=off, rhi=rhi, Q=qs, cross=cross, cross_set=set(cross),
                 chord=chord)
    return cache


def rope(positions: list[int], rotary_dim: int, base: float) -> list[tuple[list, list]]:
    out = []
    inv = [arb(base) ** (-arb(2 * i) / rotary_dim) for i in range(rotary_dim // 2)]
    for p in positions:
        ang = [arb(int(p)) * f for f in inv]
        out.append(([a.cos() for a in ang], [a.sin() for a in ang]))
    return out


def rotate(v: list, cos: list, sin: list) -> list:
    half = len(cos)
    x1, x2 = v[:half], v[half : 2 * half]
    return ([a * c - b * s for a, b, c, s in zip(x1, x2, cos, sin, strict=True)]
            + [b * c + a * s for a, b, c, s in zip(x1, x2, cos, sin, strict=True)] + list(v[2 * half :]))


INTERVAL_SOFTMAX_MIN = 1e-6
ZONO_MIN = 1e-9


def interval_average(s: list, m: arb, V: list[list]) -> tuple[list, list]:
    """Per-coordinate bounds of sum w v / sum w over exp(lower s - m) <= w <= exp(upper s - m): the best
    threshold (upper weights on the largest values) over all n + 1, with the values' radii added."""
    a = [_lo((_lo(x) - m).exp()) for x in s]
    b = [_up((_up(x) - m).exp()) for x in s]
    n, k = len(V), len(V[0])
    los, his = [], []
    for e in range(k):
        vm = [_f(_mid(V[j][e])) for j in range(n)]
        rad = _emax([_up(abs(V[j][e] - vm[j])) for j in range(n)])
        out = []
        for sign in (1, -1):
            order = sorted(range(n), key=lambda j, sign=sign: -sign * _mid(vm[j]))
            num_a = sum((a[j] * vm[j] for j in range(n)), ZERO)
            den_a = sum(a, ZERO)
            num, den = num_a, den_a
            vals = [num / den]
            for j in order:
                num = num + (b[j] - a[j]) * vm[j]
                den = den + (b[j] - a[j])
                vals.append(num / den)
            out.append(_emax([_up(v) for v in vals]) if sign == 1 else _emin([_lo(v) for v in vals]))
        his.append(_up(out[0] + rad))
        los.append(_lo(out[1] - rad))
    return los, his


def boxball(mid: float, rad: arb) -> arb:
    """The ball [mid - rad, mid + rad]."""
    return _f(mid) + arb(0, _float_up(rad))


def _tidy(X: CSet) -> CSet:
    """Collapse a set whose every coordinate is known to rounding size into an exact point."""
    if not X.terms:
        return X
    lo, hi = X.coord_bounds()
    width = _emax([_up(b - a) for a, b in zip(lo, hi, strict=True)])
    scale = _emax([_up(abs(x)) for x in X.center])
    if width <= _f(EXACT_REL) * (ONE + scale):
        C = X.collapse()
        C.r_cap = None
        return C
    return X


# =========================================================================================== engine
@dataclass
class KV:
    """Keys (rotated, [h][nvar] lists of arb) and values of a non-anchor position at one layer."""

    K: list
    V: list
    exact: bool
    share: Any = None  # positions with equal share hold the same (unrotated) keys and value rows
    rot_pos: int | None = None  # keys unrotated: score with the query rotated back by this position


class Checker:
    """Re-derives the prover's bounds for one claim, in arb."""

    def __init__(self, model, prefix, suffix, allowed, options: dict, ln_preact: bool = True,
                 preact_set: bool = True, norm_ub: bool = True, alpha: bool = False, ratios: bool = False,
                 norm_dirs: bool = False, gamma: bool = False, *, runs: int):
        cfg = model.cfg
        self.cfg = cfg
        self.runs = runs  # free positions of an attention term merge into at most this many runs
        self.alpha = alpha
        self.ratios = ratios
        self.norm_dirs = norm_dirs
        self.case_dirs: dict | None = None  # method /6: the norm directions of the case being checked
        self.ln_preact = ln_preact
        self.preact_set = preact_set
        self.norm_ub = norm_ub
        self.h, self.k = cfg.n_heads, cfg.d_head
        self.scale = ONE / arb(cfg.d_head).sqrt()
        self.rope = cfg.positional_embedding_type == "rotary"
        self.act = cfg.act_fn
        self.eps = _f(cfg.eps)
        self._unembed_cache: dict = {}
        self.prefix = list(prefix)
        self.suffix = list(suffix)
        self.allowed = list(allowed)
        self.n_fix = len(prefix)
        self._read(model)
        self._free_sets: dict = {}
        self._free_kv: dict = {}
        self._prefix()

    def _read(self, model) -> None:
        def np64(t):
            return t.detach().cpu().double().numpy()

        cfg = self.cfg
        ln = cfg.normalization_type == "LN"
        self.W_E = np64(model.embed.W_E)
        self.W_pos = np64(model.pos_embed.W_pos) if cfg.positional_embedding_type == "standard" else None
        self.layers = []
        for blk in model.blocks:
            a = blk.attn
            lw = {"ln1": ([_f(x) for x in np64(blk.ln1.w)], [_f(x) for x in np64(blk.ln1.b)]) if ln else (None, None)}
            for n in ("Q", "K", "V"):
                lw[f"W_{n}"] = [_mat(w) for w in np64(getattr(a, f"W_{n}"))]
                lw[f"b_{n}"] = [[_f(x) for x in b] for b in np64(getattr(a, f"b_{n}"))]
            lw["W_O"] = [_mat(w) for w in np64(a.W_O)]
            lw["|W_O|"] = [_mat(np.abs(w)) for w in np64(a.W_O)]
            lw["b_O"] = [_f(x) for x in np64(a.b_O)]
            if not cfg.attn_only:
                lw["ln2"] = ([_f(x) for x in np64(blk.ln2.w)], [_f(x) for x in np64(blk.ln2.b)]) if ln else (None, None)
                for n in ("W_in", "W_out"):
                    w = np64(getattr(blk.mlp, n))
                    lw[n], lw[f"|{n}|"] = _mat(w), _mat(np.abs(w))
                lw["b_in"] = [_f(x) for x in np64(blk.mlp.b_in)]
                lw["b_out"] = [_f(x) for x in np64(blk.mlp.b_out)]
            self.layers.append(lw)
        self.lnf = ([_f(x) for x in np64(model.ln_final.w)], [_f(x) for x in np64(model.ln_final.b)]) if ln else None
        self.W_U = np64(model.unembed.W_U)
        self.b_U = np64(model.unembed.b_U)

    # ------------------------------------------------------------------ rows
    def _embed(self, tok: int, pos: int) -> list:
        x = [_f(v) for v in self.W_E[tok]]
        if self.W_pos is not None:
            x = [a + _f(v) for a, v in zip(x, self.W_pos[pos], strict=True)]
        return x

    def _proj_rows(self, layer: int, X: list[list], positions: list[int], name: str, rotate_qk: bool = True) -> list:
        """[h][n] lists: projection of exact rows (after LN1); Q and K rotated unless rotate_qk is False."""
        lw = self.layers[layer]
        Xn = ln_rows(X, *lw["ln1"], self.eps)
        M = arb_mat(Xn)
        use_rot = self.rope and name != "V" and rotate_qk
        rot = rope(positions, self.cfg.rotary_dim, self.cfg.rotary_base) if use_rot else None
        out = []
        for h in range(self.h):
            P = (M * lw[f"W_{name}"][h]).tolist()
            P = [[x + b for x, b in zip(r, lw[f"b_{name}"][h], strict=True)] for r in P]
            if rot is not None:
                P = [rotate(r, *rot[i]) for i, r in enumerate(P)]
            out.append(P)
        return out

    def _prefix(self) -> None:
        n = self.n_fix
        X = [self._embed(t, i) for i, t in enumerate(self.prefix)]
        self.anchor_resid, self.anchor_kv = [], []
        nl = self.cfg.n_layers
        for layer in range(nl):
            self.anchor_resid.append(X)
            kv = {nm: self._proj_rows(layer, X, list(range(n)), nm) for nm in ("Q", "K", "V")}
            self.anchor_kv.append(kv)
            if layer == nl - 1:
                break
            lw = self.layers[layer]
            att = arb_mat(n, self.cfg.d_model)
            for h in range(self.h):
                S = (arb_mat(kv["Q"][h]) * arb_mat(kv["K"][h]).transpose() * self.scale).tolist()
                P = []
                for i in range(n):
                    m = _f(max(_mid(S[i][j]) for j in range(i + 1)))
                    w = [(S[i][j] - m).exp() if j <= i else ZERO for j in range(n)]
                    tot = sum(w, ZERO)
                    P.append([x / tot for x in w])
                att = att + arb_mat(P) * arb_mat(kv["V"][h]) * lw["W_O"][h]
            att = [[x + b for x, b in zip(r, lw["b_O"], strict=True)] for r in att.tolist()]
            mid = [[a + b for a, b in zip(r1, r2, strict=True)] for r1, r2 in zip(X, att, strict=True)]
            if self.cfg.attn_only:
                X = mid
                continue
            src = X if self.cfg.parallel_attn_mlp else mid
            Xn = ln_rows(src, *lw["ln2"], self.eps)
            Pm = (arb_mat(Xn) * lw["W_in"]).tolist()
            Pm = [[x + b for x, b in zip(r, lw["b_in"], strict=True)] for r in Pm]
            Am = [[relu(x) if self.act == "relu" else gelu(x) for x in r] for r in Pm]
            Om = (arb_mat(Am) * lw["W_out"]).tolist()
            X = [[a + o + b for a, o, b in zip(r1, r2, lw["b_out"], strict=True)]
                 for r1, r2 in zip(mid, Om, strict=True)]

    # ------------------------------------------------------------------ sets
    def _proj_sets(self, layer: int, X: CSet, position: int, names) -> dict:
        lw = self.layers[layer]
        Xn = ln_set(X, *lw["ln1"], self.eps)
        out = {}
        rot = rope([position], self.cfg.rotary_dim, self.cfg.rotary_base)[0] if self.rope else None
        for name in names:
            per_head = []
            for h in range(self.h):
                W = lw[f"W_{name}"][h]
                lo, hi = Xn.affine(W, _absmat(W), lw[f"b_{name}"][h]).coord_bounds()
                mid = [0.5 * (_mid(a) + _mid(c)) for a, c in zip(lo, hi, strict=True)]
                box = [_emax([_up(c - _f(m)), _up(_f(m) - a)]) for a, c, m in zip(lo, hi, mid, strict=True)]
                v = [boxball(m, b) for m, b in zip(mid, box, strict=True)]
                if rot is not None and name != "V":
                    v = rotate(v, *rot)
                per_head.append([v])
            out[name] = per_head
        return out

    def _kv_of_sets(self, layer: int, sets: list[CSet], position: int) -> KV:
        if all(s.is_exact() for s in sets):
            X = [[c + arb(0, _float_up(b)) for c, b in zip(s.center, s.box, strict=True)] for s in sets]
            pos = [position] * len(sets)
            return KV(self._proj_rows(layer, X, pos, "K"), self._proj_rows(layer, X, pos, "V"), exact=len(sets) == 1)
        parts = [self._proj_sets(layer, s, position, ("K", "V")) for s in sets]
        K = [[p["K"][h][0] for p in parts] for h in range(self.h)]
        V = [[p["V"][h][0] for p in parts] for h in range(self.h)]
        return KV(K, V, exact=False)

    def free_sets(self, i: int, layer: int) -> list[CSet]:
        key = (i, layer)
        if key not in self._free_sets:
            pos = self.n_fix + i
            if layer == 0:
                sets = [CSet.point(self._embed(t, pos)) for t in self.allowed]
            else:
                prev = self.free_sets(i, layer - 1)
                others = [self.free_kv(j, layer - 1) for j in range(i)]
                own = self.free_kv(i, layer - 1)
                OK = own.K
                if own.rot_pos is not None:
                    # Shared layer-0 keys are unrotated: this position's own key is R_pos k.
                    cs = rope([own.rot_pos], self.cfg.rotary_dim, self.cfg.rotary_base)[0]
                    OK = [[rotate(k, *cs) for k in kh] for kh in own.K]
                sets = []
                for v, X in enumerate(prev):
                    mine = KV([[OK[h][v]] for h in range(self.h)], [[own.V[h][v]] for h in range(self.h)],
                              exact=X.is_exact())
                    out, _ = self._layer_set(layer - 1, X, pos, others + [mine], final=False)
                    sets.append(out)
            self._free_sets[key] = sets
        return self._free_sets[key]

    def free_kv(self, i: int, layer: int) -> KV:
        key = (i, layer)
        if key not in self._free_kv:
            if layer == 0 and len(self.allowed) > 1:
                kv = self._free_kv0(i)
            else:
                kv = self._kv_of_sets(layer, self.free_sets(i, layer), self.n_fix + i)
                if len(self.allowed) > 1:
                    kv.exact = False
            self._free_kv[key] = kv
        return self._free_kv[key]

    def _free_kv0(self, i: int) -> KV:
        """Layer-0 keys (unrotated) and values of free position i over all allowed tokens, shared by all
        free positions when nothing but RoPE depends on the position."""
        if self.W_pos is not None:
            X = [self._embed(t, self.n_fix + i) for t in self.allowed]
            pos = [self.n_fix + i] * len(X)
            return KV(self._proj_rows(0, X, pos, "K"), self._proj_rows(0, X, pos, "V"), exact=False)
        if not hasattr(self, "_base0"):
            X = [self._embed(t, 0) for t in self.allowed]
            pos = [0] * len(X)
            self._base0 = (self._proj_rows(0, X, pos, "K", rotate_qk=False), self._proj_rows(0, X, pos, "V"))
        K, V = self._base0
        return KV(K, V, exact=False, share="layer0", rot_pos=(self.n_fix + i) if self.rope else None)

    # ------------------------------------------------------------------ attention and layers
    def _attention(self, layer: int, q: list, position: int, others: list[KV], n_anchor: int):
        lw = self.layers[layer]
        kvA = self.anchor_kv[layer]
        exact = [o for o in others if o.exact]
        rest = [o for o in others if not o.exact]
        total, lams = None, []
        for h in range(self.h):
            KA = kvA["K"][h][:n_anchor] + [r for o in exact for r in o.K[h]]
            VA = kvA["V"][h][:n_anchor] + [r for o in exact for r in o.V[h]]
            qr = _row(q[h]).transpose()
            s = [x * self.scale for x in _vec(arb_mat(KA) * qr)]
            m = _f(max(_mid(x) for x in s))
            w = [(_f(_mid(x)) - m).exp() for x in s]
            tot = sum(w, ZERO)
            p = [x / tot for x in w]
            o = _vec(_row(p) * arb_mat(VA))
            z = [_f(_mid(x)) for x in o]
            rbar = _emax([_up(x.rad()) for x in s])
            tau = _up((2 * rbar).exp() - 1)
            dev = [_up(sum((pj * abs(vj[e] - z[e]) for pj, vj in zip(p, VA, strict=True)), ZERO))
                   for e in range(self.k)]
            obox = [_up(abs(oe - ze) + tau * de) for oe, ze, de in zip(o, z, dev, strict=True)]
            if rbar >= _f(INTERVAL_SOFTMAX_MIN):
                ilo, ihi = interval_average(s, m, VA)
                lo = [_emax([_lo(ze - bx), a]) for ze, bx, a in zip(z, obox, ilo, strict=True)]
                hi = [_emin([_up(ze + bx), b]) for ze, bx, b in zip(z, obox, ihi, strict=True)]
                z = [_f(0.5 * (_mid(a) + _mid(b))) for a, b in zip(lo, hi, strict=True)]
                obox = [_emax([_up(b - ze), _up(ze - a)]) for a, b, ze in zip(lo, hi, z, strict=True)]
            wa_lo = _lo(sum(((_lo(x) - m).exp() for x in s), ZERO))
            wa_hi = _up(sum(((_up(x) - m).exp() for x in s), ZERO))
            groups = []  # (value rows, per-position lists of scores)
            for r in rest:
                if r.share is None:
                    sr = [x * self.scale for x in _vec(arb_mat(r.K[h]) * qr)]
                    groups.append((r.V[h], [sr]))
            for key in dict.fromkeys(r.share for r in rest if r.share is not None):
                shared = [r for r in rest if r.share == key]
                r0 = shared[0]
                Kb = arb_mat(r0.K[h])
                his = []
                for r in shared:
                    if r.rot_pos is not None:
                        qq = rotate(q[h], *rope([-r.rot_pos], self.cfg.rotary_dim, self.cfg.rotary_base)[0])
                        sr = [x * self.scale for x in _vec(Kb * _row(qq).transpose())]
                    elif his:
                        sr = his[0]
                    else:
                        sr = [x * self.scale for x in _vec(Kb * qr)]
                    his.append(sr)
                groups.append((r0.V[h], his))
            if groups:
                exps = [[[_up((_up(x) - m).exp()) for x in sr] for sr in his] for _rows, his in groups]
                wr = _up(sum((_emax(e) for ex in exps for e in ex), ZERO))
                lam = ONE if (not wa_lo > 0) else _emin([ONE, _up(wr / (wa_lo + wr))])
                rows_all, scale, starts, mult, pscale, ratios = [], [], [], [], [], []
                use_r = self.ratios and wa_lo > 0 and wa_hi.is_finite()
                for (rows, his), ex in zip(groups, exps, strict=True):
                    if use_r:  # r = w / W_A per position: [exp(lower - m) / W_A^max, exp(upper - m) / W_A^min]
                        ratios.append(_ratio_buckets([[_lo((_lo(x) - m).exp() / wa_hi) for x in sr] for sr in his],
                                                     [[_up(e_b / wa_lo) for e_b in e] for e in ex], self.runs))
                    starts.append(len(rows_all))
                    mult.append(len(ex))
                    per = [[_emin([_up(e[b] / (wa_lo + e[b])) if wa_lo > 0 else ONE, lam]) for b in range(len(rows))]
                           for e in ex]
                    scale.extend(_emax(col) for col in zip(*per, strict=True))
                    same = all(sr is his[0] for sr in his)  # one score list for every position
                    pscale.append(None if same or not self.ratios else _buckets(per, self.runs))
                    rows_all.extend(rows)
                # Rows at the values' midpoints; the values' radii go to the box (as in the prover).
                mids = [[_f(_mid(x)) for x in v] for v in rows_all]
                vrad = [_emax([_up(abs(v[e] - mv[e])) for v, mv in zip(rows_all, mids, strict=True)])
                        for e in range(self.k)]
                D = arb_mat([[x - ze for x, ze in zip(v, z, strict=True)] for v in mids])
                obox = [_up(b + lam * r) for b, r in zip(obox, vrad, strict=True)]
                S = CSet.point(z, obox).affine(lw["W_O"][h], lw["|W_O|"][h])
                S.terms.append(make_pooled(D, scale, starts, mult, lam, lw["W_O"][h], pscale,
                                           ratios if use_r else None))
            else:
                lam = ZERO
                S = CSet.point(z, obox).affine(lw["W_O"][h], lw["|W_O|"][h])
            lams.append(lam)
            total = S if total is None else total.add(S)
        return total.shift(lw["b_O"]), lams

    def _layer_set(self, layer: int, X: CSet, position: int, others: list[KV], final: bool, n_anchor=None):
        if X.is_exact():
            row = [c + arb(0, _float_up(b)) for c, b in zip(X.center, X.box, strict=True)]
            q = [qh[0] for qh in self._proj_rows(layer, [row], [position], "Q")]
        else:
            q = [qh[0] for qh in self._proj_sets(layer, X, position, ("Q",))["Q"]]
        attn, lams = self._attention(layer, q, position, others, self.n_fix if n_anchor is None else n_anchor)
        out = self._finish(layer, X, attn, keep=final)
        return (out if final else _tidy(out)), lams

    def _finish(self, layer: int, X: CSet, attn: CSet, keep: bool = False) -> CSet:
        """``keep`` (method /4, ReLU): remember (mid, P, lo, hi) of the MLP on the result."""
        lw = self.layers[layer]
        mid = X.add(attn)
        if self.cfg.attn_only:
            return mid
        src = X if self.cfg.parallel_attn_mlp else mid
        xn, expansion = ln_taylor(src, *lw["ln2"], self.eps, self._direction("ln2") if keep else None)
        P, lo, hi = preacts(xn, lw, expansion if self.ln_preact else None, self.preact_set, self.norm_ub)
        out = mid.add(mlp_out(P, lo, hi, lw, self.act))
        if keep and self.alpha and self.act == "relu":
            out.last_mlp = (mid, P, lo, hi, {})
            out.last_layer = layer
        return out

    def _direction(self, site: str) -> list | None:
        """The case's norm direction at ``site`` ("ln2": the last MLP's LayerNorm at the last position,
        "final": the final LayerNorm) under method /6, else None."""
        return (self.case_dirs or {}).get(site) if self.norm_dirs else None

    def final_set(self, L: int, last: int | None):
        nl = self.cfg.n_layers
        if self.suffix:
            tail, n_free_pos = list(self.suffix), L
        elif L >= 1:
            tail, n_free_pos = [int(last)], L - 1
        else:
            tail, n_free_pos = [], 0
        if not tail:
            p = self.n_fix - 1
            layer = nl - 1
            X = CSet.point(self.anchor_resid[layer][p])
            q = [self.anchor_kv[layer]["Q"][h][p] for h in range(self.h)]
            attn, lams = self._attention(layer, q, p, [], self.n_fix)
            return self._finish(layer, X, attn, keep=True), lams
        positions = [self.n_fix + n_free_pos + j for j in range(len(tail))]
        X = [CSet.point(self._embed(t, p)) for t, p in zip(tail, positions, strict=True)]
        lams = []
        for layer in range(nl):
            free = [self.free_kv(i, layer) for i in range(n_free_pos)]
            tail_kv = [self._kv_of_sets(layer, [X[j]], positions[j]) for j in range(len(tail))]
            for j in range(len(tail)):
                if layer < nl - 1 or j == len(tail) - 1:
                    X[j], lams = self._layer_set(layer, X[j], positions[j], free + tail_kv[: j + 1],
                                                 final=layer == nl - 1)
        return X[-1], lams

    def _unembed(self, c: int) -> tuple:
        """The unembedding differences for the token c, the same in every case of a claim: A[:, k] =
        W_U[:, c] - W_U[:, k] and |A|, the bias differences, and (with a final LayerNorm) A scaled by
        its weight, |that| and b . A."""
        cache = self._unembed_cache
        if c not in cache:
            A = arb_mat([[_f(self.W_U[i, c]) - _f(self.W_U[i, k]) for k in range(self.W_U.shape[1])]
                         for i in range(self.W_U.shape[0])])
            bd = [_f(self.b_U[c]) - _f(x) for x in self.b_U]
            Aw = absAw = bb = None
            if self.lnf is not None:
                w, b = self.lnf
                Aw = arb_mat([[w[i] * A[i, k] for k in range(A.ncols())] for i in range(A.nrows())])
                absAw = _absmat(Aw)
                bb = _vec(_row(b) * A)
            cache.clear()  # a claim has one token: keep at most one
            cache[c] = (A, _absmat(A), bd, Aw, absAw, bb)
        return cache[c]

    def margins(self, X: CSet, c: int, refine: list[int], alpha: list[dict] | None = None) -> list[arb]:
        """Lower bounds (exact arbs) of logit[c] - logit[k]; None at k = c. ``alpha``: per-competitor
        slopes (method /4, validated by :func:`check`): {"k", "path", "slopes": [[neuron, slope], ...]}."""
        A, absA, bd, Aw, absAw, bb = self._unembed(c)
        if self.lnf is None:
            paths = [(X, A, absA, bd, None)]
        else:
            w, b = self.lnf
            direction = self._direction("final")
            Z = ln_set(X, w, b, self.eps, direction)
            Y = X.center_coords()
            s_lo, s_hi = sigma_range(Y, self.eps, self.norm_ub, direction)
            paths = [(Z, A, absA, bd, None),
                     (Y, Aw, absAw, [x + y for x, y in zip(bb, bd, strict=True)], (s_lo, s_hi))]
        best = None
        for S, M, absM, beta, sig in paths:
            lo = S.functional_lower(M, absM, exact=refine)
            if sig is not None:
                lo = [_lo(x / sig[1]) if x >= 0 else _lo(x / sig[0]) for x in lo]
            val = [_lo(x + y) for x, y in zip(lo, beta, strict=True)]
            best = val if best is None else [_emax([x, y]) for x, y in zip(best, val, strict=True)]
        if alpha:
            last = getattr(X, "last_mlp", None)
            if last is None or self.lnf is None:
                raise CertificateError("per-competitor slopes given, but the model has no final ReLU MLP "
                                       "and final LayerNorm")
            lw = self.layers[X.last_layer]
            for ev in alpha:
                k = ev["k"]
                F = [Aw[i, k] for i in range(Aw.nrows())]
                beta = bb[k] + bd[k]
                val = self.alpha_margin(last, lw, Y, F, beta, (s_lo, s_hi), ev["path"], dict(ev["slopes"]),
                                        set(ev["shift"]), ev.get("gamma"))
                best[k] = _emax([best[k], val])
        best[c] = None
        return best

    def alpha_margin(self, last: tuple, lw: dict, Y: CSet, F: list, beta: arb, sig: tuple, path: str,
                     slopes: dict, shift: set, gamma: float | None = None) -> arb:
        """A lower bound of (F . y) / sigma(y) + beta over the centred final residuals y, from
        :func:`slopes_lower`. "quot": min(F . y) / sigma_(hi or lo) + beta. "tan": sigma(y) >= u . y + c0
        with u = ys / (d S), c0 = eps / S, S >= sigma(ys) (Cauchy-Schwarz: |(u sqrt d, c0 / sqrt eps)| <= 1).
        With ``gamma`` >= 0 (method /7): (F . y) / sigma + beta = (F . y + gamma sigma) / sigma + beta -
        gamma, F . y + gamma sigma >= (F + gamma u) . y + gamma c0 =: N, so the margin is at least
        N / sigma_hi (N >= 0) or N / sigma_lo, plus beta - gamma. Without it (methods /4 to /6): gamma is
        beta_lo, which must be > 0, and beta - beta_lo >= 0 is dropped."""
        if path == "quot":
            lo = slopes_lower(last, lw, F, slopes, shift)
            return _lo((lo / sig[1] if lo >= 0 else lo / sig[0]) + beta)
        if gamma is not None:
            g = arb(gamma)  # a float: exact
            cache = last[4]
            u, c0 = self._tangent(Y, cache)
            F2 = [f + g * x for f, x in zip(F, u, strict=True)]
            N = slopes_lower(last, lw, F2, slopes, shift) + g * c0
            return _lo((N / sig[1] if N >= 0 else N / sig[0]) + beta - g)
        beta_lo = _lo(beta)
        if not beta_lo > 0:
            return arb("-inf")
        u, c0 = self._tangent(Y, last[4])
        F2 = [f + beta_lo * x for f, x in zip(F, u, strict=True)]
        N = slopes_lower(last, lw, F2, slopes, shift) + beta_lo * c0
        return _lo(N / sig[1]) if N >= 0 else _lo(N / sig[0])

    def _tangent(self, Y: CSet, cache: dict) -> tuple[list, arb]:
        """(u, c0) of the tangent plane of sigma at the midpoint ys of Y's box (the same for every
        competitor of the case, kept in ``cache``)."""
        if "tangent" not in cache:
            blo, bhi = Y.coord_bounds()
            ys = [_f(0.5 * (_mid(a) + _mid(b))) for a, b in zip(blo, bhi, strict=True)]
            d = len(ys)
            S = _up((sum((y * y for y in ys), ZERO) / d + self.eps).sqrt())
            cache["tangent"] = ([y / (d * S) for y in ys], self.eps / S)
        return cache["tangent"]


# =========================================================================================== check
def _fail(msg: str):
    raise CertificateError(msg)


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def state_sha256(model) -> str:
    """sha256 of the float64 state dict (same canonical order as the certificate's weights_state_sha256)."""
    h = hashlib.sha256()
    state = model.state_dict()
    for key in sorted(state):
        t = state[key].detach().cpu().double().contiguous().numpy()
        h.update(key.encode("utf-8") + b"\0")
        h.update(",".join(str(s) for s in t.shape).encode("ascii") + b"\0")
        h.update(np.ascontiguousarray(t, dtype="<f8").tobytes())
    return h.hexdigest()


def _ids_list(name: str, v, d_vocab: int, allow_empty: bool) -> list[int]:
    if not isinstance(v, list) or any(isinstance(t, bool) or not isinstance(t, int) for t in v):
        _fail(f"{name} must be a list of token ids")
    if not allow_empty and not v:
        _fail(f"{name} is empty")
    if any(not 0 <= t < d_vocab for t in v):
        _fail(f"{name} holds a token id out of range 0..{d_vocab - 1}")
    return v


def _close(claimed: float, exact: arb) -> bool:
    return abs(claimed - _mid(exact)) <= TOL * (1.0 + abs(claimed))


def _check_alpha(rec: dict, allowed: bool, V: int, c: int, cfg, gamma: bool = False) -> None:
    """The case's per-competitor slopes (method /4): a list of {"k", "path", "slopes", "shift"} with
    distinct competitors k != c, path "quot" or "tan", [neuron, slope] pairs with distinct neurons and
    0 <= slope <= 1, and distinct neurons in shift; with ``gamma`` (method /7) a "tan" record may also
    carry "gamma", a finite number >= 0 (any such slopes, shift and gamma are sound, so nothing else
    needs checking)."""
    where = f"case {rec['L'], rec['last']}"
    if not allowed:
        if rec.get("alpha", []) != []:
            _fail(f"{where}: per-competitor slopes are not part of this method")
        return
    ev = rec.get("alpha")
    if not isinstance(ev, list):
        _fail(f"{where}: missing or bad per-competitor slopes ('alpha')")
    if ev and (cfg.attn_only or cfg.act_fn != "relu" or cfg.normalization_type != "LN"):
        _fail(f"{where}: per-competitor slopes need a ReLU MLP and a final LayerNorm")
    seen = set()
    for e in ev:
        keys = {"k", "path", "slopes", "shift"}
        if not isinstance(e, dict) or not (set(e) == keys or set(e) == keys | {"gamma"}):
            _fail(f"{where}: bad per-competitor slope record")
        if "gamma" in e:
            if not gamma:
                _fail(f"{where}: a weight gamma of sigma is not part of this method")
            if e["path"] != "tan":
                _fail(f"{where}: gamma belongs to the tangent path only")
            g = e["gamma"]
            if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or not g >= 0:
                _fail(f"{where}: gamma must be a finite number >= 0")
        shift = e["shift"]
        if not isinstance(shift, list) or any(
                isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < cfg.d_mlp for n in shift) or (
                len(set(shift)) != len(shift)):
            _fail(f"{where}: shift must be distinct neuron indices")
        k = e["k"]
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < V or k == c or k in seen:
            _fail(f"{where}: bad competitor in the slopes")
        seen.add(k)
        if e["path"] not in ("quot", "tan"):
            _fail(f"{where}: unknown slope path {e['path']!r}")
        sl = e["slopes"]
        if not isinstance(sl, list) or any(
                not isinstance(p, list) or len(p) != 2 or isinstance(p[0], bool) or not isinstance(p[0], int)
                or not 0 <= p[0] < cfg.d_mlp or isinstance(p[1], bool) or not isinstance(p[1], (int, float))
                or not 0.0 <= p[1] <= 1.0 for p in sl):
            _fail(f"{where}: slopes must be [neuron, value] pairs with 0 <= value <= 1")
        if len({p[0] for p in sl}) != len(sl):
            _fail(f"{where}: a neuron has two slopes")


def _check_norm_dirs(rec: dict, allowed: bool, cfg) -> None:
    """The case's norm directions (method /6): None, or a dict with keys among "ln2" and "final", each
    a list of d_model finite numbers (any vector gives a sound bound, so nothing else needs checking)."""
    where = f"case {rec['L'], rec['last']}"
    dirs = rec.get("norm_dirs")
    if dirs is None:
        return
    if not allowed:
        _fail(f"{where}: norm directions are not part of this method")
    if not isinstance(dirs, dict) or not set(dirs) <= {"ln2", "final"} or not dirs:
        _fail(f"{where}: bad norm directions")
    for v in dirs.values():
        if not isinstance(v, list) or len(v) != cfg.d_model or any(
                isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) for x in v):
            _fail(f"{where}: a norm direction must be {cfg.d_model} finite numbers")


def check(certificate: Any, model) -> bool:
    """Return True if the certificate proves its claim about this model; raise CertificateError otherwise."""
    cert = certificate
    if isinstance(cert, (str, bytes)):
        try:
            cert = json.loads(cert)
        except (ValueError, TypeError) as e:
            _fail(f"certificate is not valid JSON: {e}")
    if not isinstance(cert, dict):
        _fail("certificate is not a JSON object")
    missing = [k for k in REQUIRED if k not in cert]
    if missing:
        _fail(f"certificate is incomplete: missing {', '.join(missing)}")
    if cert["format"] != FORMAT:
        _fail(f"unknown certificate format {cert['format']!r}")
    body = {k: cert.get(k) for k in DIGEST_FIELDS}
    try:
        dig = hashlib.sha256(_canonical(body).encode("utf-8")).hexdigest()
    except (TypeError, ValueError) as e:
        _fail(f"certificate holds values that are not plain JSON: {e}")
    if cert["digest"] != dig:
        _fail("digest does not match the certificate's content (it was modified)")
    if cert["proven"] is not True:
        _fail("the certificate records a claim that was not proven")
    # ---- model
    cfg = model.cfg
    if cert["model_config"] != cfg.to_dict():
        _fail("model config differs from the certificate's")
    state = state_sha256(model)
    if cert["weights_state_sha256"] != state:
        _fail("model weights differ from the certificate's (float64 state-dict hash mismatch)")
    src = cert["model_sha256_source"]
    if src == "file":
        fh = getattr(model, "weights_sha256", None)
        if fh is not None and fh != cert["model_sha256"]:
            _fail("model file hash differs from the certificate's model_sha256")
    elif src == "state":
        if cert["model_sha256"] != state:
            _fail("model_sha256 differs from the model's state-dict hash")
    else:
        _fail(f"unknown model_sha256_source {src!r}")
    if not cfg.causal or cfg.attention != "softmax" or cfg.ln_position != "pre":
        _fail("certificate method covers causal softmax pre-LN models only")
    if not cfg.attn_only and cfg.act_fn not in ("relu", "gelu"):
        _fail(f"certificate method does not cover activation {cfg.act_fn!r}")
    # ---- claim
    V = cfg.d_vocab
    prefix = _ids_list("prefix", cert["prefix"], V, allow_empty=False)
    suffix = _ids_list("suffix", cert["suffix"], V, allow_empty=True)
    n_free = cert["n_free"]
    if isinstance(n_free, bool) or not isinstance(n_free, int) or n_free < 0:
        _fail("n_free must be a non-negative integer")
    if len(prefix) + n_free + len(suffix) > cfg.n_ctx:
        _fail("prefix + n_free + suffix exceeds n_ctx")
    allowed = cert["allowed"]
    if allowed is None:
        allowed = list(range(V))
    else:
        allowed = _ids_list("allowed", allowed, V, allow_empty=False)
        if allowed != sorted(set(allowed)):
            _fail("allowed must be sorted and without repeats")
    c = cert["token"]
    if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < V:
        _fail("token must be a token id")
    method = cert["method"]
    if not isinstance(method, dict) or method.get("name") not in METHODS:
        _fail(f"unknown method {method!r}")
    # ---- cases
    cases = cert["cases"]
    if not isinstance(cases, list):
        _fail("cases must be a list")
    expected = []
    for L in range(n_free + 1):
        if suffix or L == 0:
            expected.append((L, None))
        else:
            expected.extend((L, a) for a in allowed)
    got = []
    for rec in cases:
        if not isinstance(rec, dict) or not {"L", "last", "margin", "refine", "lambda_max", "worst"} <= set(rec):
            _fail("a case record is incomplete")
        got.append((rec["L"], rec["last"]))
    if got != expected:
        _fail("the certificate's cases do not cover exactly the claim's lengths and last tokens")
    claimed_margins = []
    for rec in cases:
        m = rec["margin"]
        if not isinstance(m, (int, float)) or isinstance(m, bool) or not m > 0:
            _fail(f"case {rec['L'], rec['last']}: margin {m!r} is not a positive number")
        claimed_margins.append(float(m))
        ref = rec["refine"]
        if not isinstance(ref, list) or any(isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < V
                                            or k == c for k in ref) or ref != sorted(set(ref)):
            _fail(f"case {rec['L'], rec['last']}: bad refine list")
        _check_alpha(rec, METHODS[method["name"]].get("alpha", False), V, c, cfg,
                     METHODS[method["name"]].get("gamma", False))
        _check_norm_dirs(rec, METHODS[method["name"]].get("norm_dirs", False), cfg)
        lam = rec["lambda_max"]
        if not isinstance(lam, list) or len(lam) != cfg.n_heads or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in lam):
            _fail(f"case {rec['L'], rec['last']}: bad lambda_max")
        if not isinstance(rec["worst"], int) or isinstance(rec["worst"], bool) or not 0 <= rec["worst"] < V:
            _fail(f"case {rec['L'], rec['last']}: bad worst competitor")
    top = cert["margin"]
    if not isinstance(top, (int, float)) or isinstance(top, bool) or top != min(claimed_margins):
        _fail("top-level margin is not the least case margin")
    # ---- recompute every case
    chk = Checker(model, prefix, suffix, allowed, method.get("options", {}), **METHODS[method["name"]])
    for rec in cases:
        where = f"case L={rec['L']} last={rec['last']}"
        chk.case_dirs = rec.get("norm_dirs")
        X, lams = chk.final_set(rec["L"], rec["last"])
        for claimed, lam in zip(rec["lambda_max"], lams, strict=True):
            if not (arb(float(claimed)) >= _up(lam)) or not _close(float(claimed), lam):
                _fail(f"{where}: claimed lambda_max {claimed} does not match the recomputed {_float_up(lam)}")
        ms = chk.margins(X, c, rec["refine"], rec.get("alpha") or None)
        worst_k, worst = None, None
        for k, m in enumerate(ms):
            if m is None:
                continue
            if not m > 0:
                _fail(f"{where}: the bound for competitor {k} is not positive ({_float_lo(m)}): claim not proven")
            if worst is None or m < worst:
                worst_k, worst = k, m
        if worst is None:
            _fail(f"{where}: no competitor")
        claimed = float(rec["margin"])
        if not arb(claimed) <= worst:
            _fail(f"{where}: claimed margin {claimed} exceeds the recomputed bound {_float_lo(worst)}")
        if not _close(claimed, worst):
            _fail(f"{where}: claimed margin {claimed} does not match the recomputed bound {_float_lo(worst)}")
        named = ms[rec["worst"]]
        if named is None or not _close(claimed, named):
            _fail(f"{where}: the claimed worst competitor {rec['worst']} is not the recomputed one ({worst_k})")
    return True
