"""One bound rule per kind of operation, each sound in real arithmetic and with its rounding bounded.

- :func:`ln_points`: LayerNorm of exactly known rows (float values with error boxes).
- :func:`ln_set`: LayerNorm of an :class:`AffineSet`: first-order Taylor expansion at a point of the
  set plus a rigorous l2 bound on the second-order remainder (or, when that is worse, the Lipschitz
  ball).
- :func:`relax_activation`: sound linear bounds ``|act(p) - a p - b| <= mu`` on an interval.
- :func:`mlp_set`: W_in, activation relaxation, W_out.
- :func:`rope_cos_sin`, :func:`rotate`: RoPE (GPT-NeoX half-split) with error bounds.
- :func:`anchor_average`: softmax average over positions with known keys/values (scores known up to
  a radius), and the lower bound of its softmax mass; :func:`head_output_set`: the convex-combination
  (over-squashing) bound for one head.

Derivations are in docs/prove.md; the comments here give the inequality each line relies on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import erf

from assay.prove.affine import AffineSet, Term, make_pooled, new_id, signed_copy
from assay.prove.fp import (
    ABS_ERF,
    REL_EXP,
    TINY,
    U,
    down,
    exp_bounds,
    gamma,
    mul_bounds,
    next_down,
    next_up,
    sum_bounds,
    up,
)

# Taylor remainder of g(y) = y / sqrt(|y|^2/d + eps): |R| <= (1/2) sup|D^2 g| |h|^2 and
# sup |D^2 g[h,h]| / |h|^2 = sqrt(4/3) / (sqrt(d) sigma^2) (docs/prove.md; checked on a grid in the tests).
LN_REMAINDER = 0.6
GELU_D2_MAX = 0.8  # sup |gelu''| = sup phi(x) |2 - x^2| = 2 phi(0) = 0.7979 (at x = 0)
GELU_GRID = 17
INV_SQRT2 = 1.0 / math.sqrt(2.0)


# --------------------------------------------------------------------------------------- LayerNorm
def ln_points(x: np.ndarray, xerr: np.ndarray, w: np.ndarray | None, b: np.ndarray | None, eps: float):
    """LayerNorm of rows x (n x d) known up to |x* - x| <= xerr; returns (z, zerr) likewise.

    With y = Cx, g(y) = y / sigma(y), sigma(y) = sqrt(|y|^2/d + eps): ``|g(y*) - g(y)|_i <=
    |y*_i - y_i| / sigma_min + |y_i| |y* - y|_2 / (sqrt(d) sigma_min sigma(y))`` because sigma is
    (1/sqrt d)-Lipschitz and sigma >= sigma_min on the segment.
    """
    if w is None:
        return x.copy(), xerr.copy()
    n, d = x.shape
    y = x - x.mean(axis=1, keepdims=True)
    xmean_abs = np.abs(x).mean(axis=1, keepdims=True)
    yerr = up(xerr + xerr.mean(axis=1, keepdims=True) + gamma(d + 2) * xmean_abs + U * np.abs(y), d + 4)
    s2 = (y * y).mean(axis=1, keepdims=True) + eps
    sig = np.sqrt(s2)
    sig_lo = down(sig, d + 8)
    e2 = up(np.sqrt((yerr * yerr).sum(axis=1, keepdims=True)), d + 4)
    sqd = math.sqrt(d)
    sig_min = np.maximum(down(math.sqrt(eps), 4), down(sig_lo - up(e2 / sqd, 4), 4))
    g = y / sig
    gerr = up(yerr / sig_min + np.abs(y) * e2 / (sqd * sig_min * sig_lo) + np.abs(g) * 2 * gamma(d + 8), 16)
    z = g * w + b
    zerr = up(np.abs(w) * gerr + U * np.abs(g * w) + U * np.abs(z), 4)
    return z, zerr


def norm_lower_bound(Y: AffineSet, lo: np.ndarray, hi: np.ndarray, ys: np.ndarray,
                     direction: np.ndarray | None = None) -> float:
    """A lower bound of |y|_2 over the convex hull of Y and the point ys (ys inside the box [lo, hi]).

    The largest of: the distance from 0 to the bounding box, and the least extent of the hull along
    n = ys / |ys| and along ``direction`` (method /6; for any vector n, n . y / |n| <= |y|, so |y| is at
    least the least n . y over the hull over |n| when that is positive).
    """
    dist = np.maximum(np.maximum(lo, -hi), 0.0)
    best = float(down(math.sqrt(float((dist * dist).sum())), Y.d + 4))
    nrm = float(np.linalg.norm(ys))
    dirs = ([ys / nrm] if nrm > 0.0 else []) + ([np.asarray(direction, dtype=np.float64)]
                                               if direction is not None else [])
    for n in dirs:
        lo_n, _ = Y.functional_bounds(n[:, None], exact=np.array([0]))
        at_ys = float(down(float(n @ ys) - gamma(Y.d) * nrm * float(np.linalg.norm(n)), 2))
        nn = float(up(np.linalg.norm(n), Y.d + 4))
        m = min(float(lo_n[0]), at_ys)
        if m > 0 and nn > 0:
            best = max(best, float(down(m / nn, 2)))
    return best


def norm_upper_bound(Y: AffineSet, p: np.ndarray) -> float:
    """An upper bound of |y|_2 over Y from |y|^2 = 2 y.p - |p|^2 + |y - p|^2 <= 2 sup(y.p) - |p|^2 + R^2,
    R = sup |y - p| (the l2 radius about p). Much tighter than |p| + R when the set spreads mostly
    across p (sup y.p - |p|^2 is then far below |p| R)."""
    d = Y.d
    _, s_hi = Y.functional_bounds(p[:, None], exact=np.array([0]))
    rr = Y.l2_radius(p)
    ub2 = float(up(2.0 * max(float(s_hi[0]), 0.0) + rr * rr, 4)) - float(down(float(p @ p), d + 2))
    return float(up(math.sqrt(max(ub2, 0.0)), 2))


def expansion_point(Y: AffineSet, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, float]:
    """The better of the box midpoint and the set's center as Taylor point, with r >= sup |y - point|."""
    best = None
    for ys in (0.5 * (lo + hi), Y.center):
        hw = up(np.maximum(hi - ys, ys - lo), 2)
        r = min(float(up(np.linalg.norm(hw), Y.d + 4)), Y.l2_radius(ys))
        if best is None or r < best[1]:
            best = (ys, r)
    return best


@dataclass
class LNExpansion:
    """What :func:`ln_taylor` expanded around: the centred input set Y, the point y*, sigma* = sigma(y*)
    (float, within 1 + gamma(d + 8) of the exact value), r >= sup |y - y*|_2 over Y, sig_min <= sigma on
    every segment [y*, y], the id of the remainder ball's term in the output set, and the LayerNorm."""

    Y: AffineSet
    ys: np.ndarray
    sig: float
    sig_min: float
    r: float
    ball_id: int
    w: np.ndarray  # the LayerNorm's weight, bias and eps
    b: np.ndarray
    eps: float


def ln_preact_bounds(e: LNExpansion, P: AffineSet, W_in: np.ndarray, b_in: np.ndarray,
                     f: PreactFactors | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rigorous (lo, hi) of every pre-activation p_j = LN(x) W_in[:, j] + b_in[j] over the set, from the
    linear part of the Taylor set alone (P: the Taylor set of :func:`ln_taylor` mapped by W_in, b_in;
    its remainder ball is left out) and a remainder that is second order only in a scalar.

    With a_j = w * W_in[:, j], y the centred x, h = y - y*, sigma* = sigma(y*), c_j = a_j.y* / sigma*,
    v_j = b.W_in[:, j] + b_in[j] + c_j and l_j(h) = (J*^T a_j).h the linear part (p_j = v_j + l_j + ...):

        p_j = v_j + l_j(h) sigma*/sigma(y) - c_j R(h) / sigma(y),

    exactly, where R(h) = sigma(y) - sigma* - grad sigma*.h. Because sigma(y) = |(y/sqrt d, sqrt eps)|
    is convex, 0 <= R(h) <= r^2 / (2 d sig_min) (its Hessian is at most I / (d sigma)). Each factor is
    bounded by an interval: l_j by the linear part's bounds minus v_j, sigma by :func:`sigma_range`.
    Unlike the Taylor set's remainder ball this loses nothing along y* (LayerNorm is nearly scale
    invariant, and the set of a residual under attention to free tokens spreads mostly along y*).
    ``f``: the factors (:func:`preact_factors`) when already computed.
    """
    lin_lo, lin_hi = _linear_part(e, P).coord_bounds()
    f = preact_factors(e, W_in, b_in) if f is None else f
    l_lo, _ = sum_bounds([lin_lo, -f.v_hi])
    _, l_hi = sum_bounds([lin_hi, -f.v_lo])
    m_lo, m_hi = mul_bounds(l_lo, l_hi, np.full_like(l_lo, f.q_lo), np.full_like(l_hi, f.q_hi))
    r_lo, r_hi = mul_bounds(-f.c_hi, -f.c_lo, np.zeros_like(f.c_lo), np.full_like(f.c_lo, f.t))
    lo, _ = sum_bounds([f.v_lo, m_lo, r_lo])
    _, hi = sum_bounds([f.v_hi, m_hi, r_hi])
    return lo, hi


def _linear_part(e: LNExpansion, P: AffineSet) -> AffineSet:
    """P without the Taylor remainder ball: it holds v + l(h) for every y (notation of ln_preact_bounds)."""
    return AffineSet(P.center, P.box, [t for t in P.terms if t.id != e.ball_id])


@dataclass
class PreactFactors:
    """Interval factors of p = v + l(h) q - c rho (:func:`ln_preact_bounds`): v in [v_lo, v_hi],
    c in [c_lo, c_hi] (vectors over neurons), q = sigma*/sigma(y) in [q_lo, q_hi], rho = R/sigma(y) in [0, t]."""

    v_lo: np.ndarray
    v_hi: np.ndarray
    c_lo: np.ndarray
    c_hi: np.ndarray
    q_lo: float
    q_hi: float
    t: float


def preact_factors(e: LNExpansion, W_in: np.ndarray, b_in: np.ndarray) -> PreactFactors:
    """The interval factors of the pre-activations p = LN(x) W_in + b_in, from the expansion ``e``."""
    Y, ys, d, w, b = e.Y, e.ys, e.Y.d, e.w, e.b
    A = w[:, None] * W_in
    at = ys @ A
    aterr = up(gamma(d + 1) * (np.abs(ys) @ np.abs(A)), 2)
    sig_lo, sig_hi = float(down(e.sig, d + 8)), float(up(e.sig, d + 8))
    n_lo, _ = sum_bounds([at, -aterr])
    _, n_hi = sum_bounds([at, aterr])
    c_lo = next_down(np.minimum(n_lo / sig_lo, n_lo / sig_hi))
    c_hi = next_up(np.maximum(n_hi / sig_lo, n_hi / sig_hi))
    beta = b @ W_in + b_in
    betaerr = up(gamma(d + 1) * (np.abs(b) @ np.abs(W_in) + np.abs(b_in)), 2)
    v_lo, _ = sum_bounds([beta, -betaerr, c_lo])
    _, v_hi = sum_bounds([beta, betaerr, c_hi])
    s_lo, s_hi = sigma_range(Y, e.eps)
    s_lo = max(s_lo, e.sig_min)
    q_lo, q_hi = float(next_down(sig_lo / s_hi)), float(next_up(sig_hi / s_lo))
    t = float(up(up(e.r * e.r / (2 * d * e.sig_min), 4) / s_lo, 1))  # R / sigma in [0, t]
    return PreactFactors(v_lo, v_hi, c_lo, c_hi, q_lo, q_hi, t)


def ln_preact_set(e: LNExpansion, P: AffineSet, W_in: np.ndarray, b_in: np.ndarray,
                  f: PreactFactors | None = None) -> AffineSet:
    """A set containing every pre-activation vector p = LN(x) W_in + b_in over the set, built from the
    same identity as :func:`ln_preact_bounds` but as a set, so that the neurons stay correlated:

        p = v + q l(h) - rho c,   q = sigma*/sigma(y) in [q_lo, q_hi],  rho = R/sigma(y) in [0, t],

    with q and rho *scalars shared by every neuron*. Let z = v + l(h), a point of the linear part
    (P without its remainder ball: z = z_c + sum_terms coef M + e, |e| <= box), and q = s0 + delta with
    s0 the midpoint and |delta| <= k. Then

        p = s0 z + (1 - s0) v + delta (z - v) - rho c
          = s0 (z_c + sum coef M + e) + (1 - s0) v + delta (z_c - v) + delta (sum coef M) + delta e - rho c,

    where the first sum keeps the linear part's term ids (the same coefficients as the residual stream),
    delta (z_c - v) is one zonotope generator k (z_c - v_mid) (plus k |v - v_mid| in the box),
    delta * (sum coef M) is a fresh copy of every term scaled by k with its coefficient set reflected
    through 0 (:func:`signed_copy`; delta is one scalar for all terms, so independent copies only
    loosen), delta e goes to the box, and -rho c is one zonotope generator (t/2) c_mid around
    -(t/2) c_mid plus t |c - c_mid| in the box. The remainder ball of the Taylor set, which projects
    onto every neuron, is not used: what is left of the second order is the rank-one rho c and the
    relative spread k of sigma. ``f``: the factors (:func:`preact_factors`) when already computed.
    """
    lin = _linear_part(e, P)
    lin.coord_bounds()  # caches the terms' coordinate deviations, which signed_copy reuses
    f = preact_factors(e, W_in, b_in) if f is None else f
    s0 = 0.5 * (f.q_lo + f.q_hi)
    k = float(up(max(f.q_hi - s0, s0 - f.q_lo), 1))
    v_mid = 0.5 * (f.v_lo + f.v_hi)
    v_rad = up(np.maximum(f.v_hi - v_mid, v_mid - f.v_lo), 1)
    # delta (z_c - v) = delta (z_c - v_mid) - delta (v - v_mid): one generator k (z_c - v_mid) (z_c is
    # P's center, v the value at y = y*; they differ when y* is not the set's center) and k v_rad.
    zg = k * (lin.center - v_mid)
    zg_err = up(2 * U * (np.abs(zg) + k * np.abs(lin.center) + k * np.abs(v_mid)), 2)
    c_mid = 0.5 * (f.c_lo + f.c_hi)
    c_rad = up(np.maximum(f.c_hi - c_mid, c_mid - f.c_lo), 1)
    half_t = 0.5 * f.t  # exact (a power-of-two scaling; TINY below covers underflow)
    one_s0 = 1.0 - s0  # within U |1 - s0| of the real number
    w1, w2 = one_s0 * v_mid, half_t * c_mid
    sv = w1 - w2
    base = lin.scale(np.full(lin.d, s0))  # s0 (z_c + sum coef M + e), rounding in its box
    out = base.shift(sv)
    extra = [up(abs(one_s0) * (1 + 2 * U) * v_rad),        # (1 - s0)(v - v_mid)
             up(k * (v_rad + lin.box), 2) + zg_err,       # delta (v_mid - v + e), and fl(zg)
             up(f.t * c_rad),                            # rho (c - c_mid)
             up(4 * U * (np.abs(w1) + np.abs(w2)) + 2 * U * np.abs(sv), 4)]  # rounding of the shift
    box = out.box
    for x in extra:
        box = box + x
    terms = list(out.terms)
    for t in lin.terms:
        new, tbox = signed_copy(t, k)
        terms.append(new)
        box = box + tbox
    terms.append(Term(new_id(), "zono", zg[None, :]))  # delta (z_c - v_mid), |delta| <= k
    terms.append(Term(new_id(), "zono", w2[None, :]))  # (rho - t/2) c_mid, |rho - t/2| <= t/2
    box = box + up(U * np.abs(w2))  # fl(half_t c_mid) vs the real product
    return AffineSet(out.center, up(box + TINY, len(extra) + len(terms) + 4), terms)


def ln_set(X: AffineSet, w: np.ndarray | None, b: np.ndarray | None, eps: float,
           direction: np.ndarray | None = None) -> AffineSet:
    """A set containing LN(x) for every x in X (see :func:`ln_taylor`)."""
    return ln_taylor(X, w, b, eps, direction)[0]


def ln_taylor(X: AffineSet, w: np.ndarray | None, b: np.ndarray | None,
              eps: float, direction: np.ndarray | None = None) -> tuple[AffineSet, LNExpansion | None]:
    """A set containing LN(x) for every x in X, and the expansion it used (None without one).

    Expansion at y* (midpoint of the bounding box of CX): g(y) = g(y*) + J*(y - y*) + R with
    ``|R|_2 <= 0.6 r^2 / (sqrt(d) sigma_min^2)``, r = sup |y - y*|_2, sigma_min a lower bound of sigma
    on every segment [y*, y] (|D^2 g[h, h]| <= (2/sqrt 3) |h|^2 / (sqrt(d) sigma^2), see docs;
    ``direction``: a further direction for :func:`norm_lower_bound`, method /6).
    If that remainder exceeds the Lipschitz bound r / sigma_min, the set is the ball g(y*) + B(r /
    sigma_min), or the ball B(sqrt d) that holds every g(y) when that is smaller.
    """
    if w is None:
        return X, None
    d = X.d
    Y = X.center_coords()
    lo, hi = Y.coord_bounds()
    ys, r = expansion_point(Y, lo, hi)
    sig = math.sqrt(float((ys * ys).mean()) + eps)
    sig_lo = float(down(sig, d + 8))
    sqd = math.sqrt(d)
    nlb = norm_lower_bound(Y, lo, hi, ys, direction)
    sig_min = max(
        float(down(math.sqrt(eps), 4)),
        float(down(sig_lo - float(up(r / sqd, 4)), 4)),
        float(down(math.sqrt(nlb * nlb / d + eps), 8)),
    )
    g = ys / sig
    gerr = up(np.abs(g) * 2 * gamma(d + 8))
    rho = float(up(LN_REMAINDER * r * r / (sqd * sig_min * sig_min), 8))
    lip = float(up(r / sig_min, 4))
    if rho >= lip:
        gn = float(up(np.linalg.norm(g), d + 4))
        if lip >= gn + sqd:
            out = AffineSet.point(np.zeros(d))
            out.terms.append(Term(new_id(), "ell", np.eye(d) * float(up(sqd, 2)), diag=True))
        else:
            out = AffineSet.point(g, gerr)
            out.terms.append(Term(new_id(), "ell", np.eye(d) * lip, diag=True))
        return out.scale(w).shift(b), None
    else:
        ynorm = float(up(np.linalg.norm(ys), d + 4))
        ay = np.abs(ys)
        c2 = d * sig_lo * sig_lo

        def apply(M):
            t = M @ ys
            return (M - np.multiply.outer(t, ys) / (d * sig * sig)) / sig

        def err(M, _ML):
            t = np.abs(M @ ys)
            rn = np.sqrt((M * M).sum(axis=1))
            e = 4 * gamma(d + 8) * (np.abs(M) + np.multiply.outer(t, ay) / c2)
            e = e + gamma(d) * np.multiply.outer(rn * ynorm, ay) / c2
            return up(up(e, 8) / sig_lo, 4)

        sig_hi = float(up(sig, d + 8))
        c2hi = d * sig_hi * sig_hi

        def box_map(rr):
            # |J|^T r exactly: J_jj = (1 - y_j^2/(d s^2))/s >= 0, |J_ij| = |y_i y_j| / (d s^3) off the diagonal.
            t = float(up(ay @ rr, d))
            off = up(np.maximum(t - ay * rr, 0.0) + gamma(d + 2) * t, 2)
            diag = rr * np.maximum(1.0 - ay * ay / c2hi, 0.0)
            return up(up(diag + 4 * U * rr, 4) / sig_lo + ay * off / (c2 * sig_lo), 8)

        out = Y.shift(-ys)._map(apply, err, box_map).shift(g, gerr)
        ball = Term(new_id(), "ell", np.eye(d) * rho, diag=True)
        out.terms.append(ball)
        return out.scale(w).shift(b), LNExpansion(Y, ys, sig, sig_min, r, ball.id, w, b, eps)


def sigma_range(Y: AffineSet, eps: float, direction: np.ndarray | None = None) -> tuple[float, float]:
    """Bounds sigma_lo <= sqrt(|y|^2/d + eps) <= sigma_hi over a (centred) set Y (``direction``: see
    :func:`norm_lower_bound`)."""
    d = Y.d
    lo, hi = Y.coord_bounds()
    ys = 0.5 * (lo + hi)
    nlb = norm_lower_bound(Y, lo, hi, ys, direction)
    big = np.maximum(np.abs(lo), np.abs(hi))
    # (|ys| + R_ys)^2 >= 2 sup(y.ys) - |ys|^2 + R_ys^2 (Cauchy-Schwarz), so norm_upper_bound(Y, ys) is the
    # triangle-inequality bound at its worst
    nub = min(float(up(np.linalg.norm(big), d + 4)), norm_upper_bound(Y, ys), norm_upper_bound(Y, Y.center))
    s_lo = float(down(math.sqrt(nlb * nlb / d + eps), 8))
    s_hi = float(up(math.sqrt(nub * nub / d + eps), 8))
    return s_lo, s_hi


# --------------------------------------------------------------------------------------- activations
def gelu(p: np.ndarray) -> np.ndarray:
    """GELU (erf form) in float64."""
    return 0.5 * p * (1.0 + erf(p * INV_SQRT2))


def _gelu_err(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    # erf error <= ABS_ERF; argument rounding 2U|p|/sqrt2 moves erf by <= 1.13 * that; then 3 more roundings.
    return up(0.5 * np.abs(p) * (ABS_ERF + 3 * U * np.abs(p) + 3 * U) + 3 * U * np.abs(g), 4)


def relax_activation(lo: np.ndarray, hi: np.ndarray, act: str, slopes: np.ndarray | None = None,
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slopes a, offsets b, half-widths mu with |act(p) - a p - b| <= mu for every real p in [lo, hi].

    ``slopes`` (ReLU only): the slope of each neuron whose range crosses 0 (clipped to [0, 1]; the
    bound holds for any slope there) in place of the chord slope hi / (hi - lo).
    """
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    if act == "relu":
        a = np.where(lo >= 0, 1.0, np.where(hi <= 0, 0.0, hi / np.where(hi > lo, hi - lo, 1.0)))
        if slopes is not None:
            a = np.where((lo < 0) & (hi > 0), slopes, a)
        a = np.clip(a, 0.0, 1.0)
        # h(p) = relu(p) - a p is convex and piecewise linear with its kink at 0: extremes at lo, 0, hi.
        h_lo = np.where(lo >= 0, (1 - a) * lo, -a * lo)
        h_hi = np.where(hi >= 0, (1 - a) * hi, -a * hi)
        e_lo = up(2 * U * (np.abs(lo) + np.abs(a * lo)))
        e_hi = up(2 * U * (np.abs(hi) + np.abs(a * hi)))
        hmax = np.maximum(h_lo + e_lo, h_hi + e_hi)
        hmin = np.minimum(h_lo - e_lo, h_hi - e_hi)
        crosses = (lo < 0) & (hi > 0)
        hmin = np.where(crosses, np.minimum(hmin, 0.0), hmin)
    elif act == "gelu":
        width = hi - lo
        wide = width > 1e-9 * (1.0 + np.abs(lo) + np.abs(hi))
        g_lo, g_hi = gelu(lo), gelu(hi)
        mid = 0.5 * (lo + hi)
        dmid = 0.5 * (1.0 + erf(mid * INV_SQRT2)) + mid * np.exp(-0.5 * mid * mid) / math.sqrt(2 * math.pi)
        a = np.where(wide, (g_hi - g_lo) / np.where(wide, width, 1.0), dmid)
        t = np.linspace(0.0, 1.0, GELU_GRID)
        P = lo[:, None] + np.multiply.outer(width, t)
        P[:, 0], P[:, -1] = lo, hi
        P = np.maximum(np.minimum(P, hi[:, None]), lo[:, None])
        G = gelu(P)
        H = G - a[:, None] * P
        Herr = up(_gelu_err(P, G) + 2 * U * (np.abs(a[:, None] * P) + np.abs(H)), 4)
        step = up(np.diff(P, axis=1), 2)
        curv = up(GELU_D2_MAX * step * step / 8.0, 4)
        top = np.maximum(H[:, :-1] + Herr[:, :-1], H[:, 1:] + Herr[:, 1:]) + curv
        bot = np.minimum(H[:, :-1] - Herr[:, :-1], H[:, 1:] - Herr[:, 1:]) - curv
        hmax = next_up(top.max(axis=1))
        hmin = next_down(bot.min(axis=1))
    else:
        raise ValueError(f"no relaxation for activation {act!r}")
    b = 0.5 * (hmax + hmin)
    mu = up(np.maximum(hmax - b, b - hmin), 2)
    return a, b, mu


def mlp_set(X: AffineSet, W_in, b_in, W_out, b_out, act: str,
            ln: LNExpansion | None = None) -> AffineSet:
    """A set containing act(x W_in + b_in) W_out + b_out for every x in X.

    ``ln``: X is the Taylor set of a LayerNorm and ``ln`` its expansion (:func:`ln_taylor`); the
    pre-activations are then the set of :func:`ln_preact_set` (no remainder ball), and the relaxation
    uses the intersection of three ranges that each hold every true pre-activation: the Taylor set's,
    :func:`ln_preact_bounds` and that set's own.
    """
    P, lo, hi = preact_set(X, W_in, b_in, ln)
    return mlp_from_preacts(P, lo, hi, W_out, b_out, act)


def preact_set(X: AffineSet, W_in, b_in, ln: LNExpansion | None = None,
               ) -> tuple[AffineSet, np.ndarray, np.ndarray]:
    """(P, lo, hi): a set P holding every pre-activation x W_in + b_in over X, and per-neuron ranges
    [lo, hi] holding them too (see :func:`mlp_set` for ``ln``)."""
    P = X.affine(W_in, b_in)
    lo, hi = P.coord_bounds()
    if ln is not None:
        f = preact_factors(ln, W_in, b_in)
        ranges = [ln_preact_bounds(ln, P, W_in, b_in, f)]
        P = ln_preact_set(ln, P, W_in, b_in, f)
        ranges.append(P.coord_bounds())
        for llo, lhi in ranges:
            nlo, nhi = np.maximum(lo, llo), np.minimum(hi, lhi)
            ok = nlo <= nhi  # always, unless a bound is wrong; then keep the set's own range
            lo, hi = np.where(ok, nlo, lo), np.where(ok, nhi, hi)
    return P, lo, hi


def mlp_from_preacts(P: AffineSet, lo: np.ndarray, hi: np.ndarray, W_out, b_out, act: str) -> AffineSet:
    """A set containing act(p) W_out + b_out for every p in P with lo <= p <= hi: the relaxation of
    :func:`relax_activation`, one zonotope generator per inexact neuron."""
    a, b, mu = relax_activation(lo, hi, act)
    H = P.scale(a).shift(b)
    out = H.affine(W_out, b_out)
    # Relaxation errors of rounding size go to the box; the others are the zonotope's generators.
    small = mu <= ZONO_MIN * (1.0 + np.maximum(np.abs(lo), np.abs(hi)))
    if small.any():
        out.box = up(out.box + up(mu[small] @ np.abs(W_out[small]), int(small.sum()) + 2), 2)
    rows = np.nonzero(~small & (mu > 0))[0]
    if rows.size:
        Z = mu[rows, None] * W_out[rows]
        t = Term(new_id(), "zono", Z)
        out.box = up(out.box + t.col_error(up(U * np.abs(Z))), 2)
        out.terms.append(t)
    return out


ZONO_MIN = 1e-9  # relative size below which a neuron's relaxation error goes to the box


# --------------------------------------------------------------------------------------- RoPE
def rope_cos_sin(positions: np.ndarray, rotary_dim: int, base: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cos, sin [n, rotary_dim/2] of the angles p * base^(-2i/rotary_dim), and an absolute error bound."""
    inv_freq = 1.0 / (base ** (np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim))
    ang = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None, :]
    # inv_freq: pow within 1 ulp of its rounded argument (|ln base| * U off), then 1/x; angle one more product.
    rel = (8.0 + abs(math.log(base))) * U
    err = up(np.abs(ang) * rel + 16 * U)
    return np.cos(ang), np.sin(ang), err


def rotate(x: np.ndarray, xbox: np.ndarray, cos: np.ndarray, sin: np.ndarray, cerr: np.ndarray):
    """RoPE-rotate x [..., n, k] (first 2*cos.shape[-1] dims, half-split) with boxes; cos etc. [n, half]."""
    half = cos.shape[-1]
    rd = 2 * half
    x1, x2 = x[..., :half], x[..., half:rd]
    b1, b2 = xbox[..., :half], xbox[..., half:rd]
    o1 = x1 * cos - x2 * sin
    o2 = x2 * cos + x1 * sin
    mag = np.abs(x1) + np.abs(x2)
    e_mag = up((np.abs(x1 * cos) + np.abs(x2 * sin) + np.abs(x2 * cos) + np.abs(x1 * sin)) * 2 * U + mag * cerr, 4)
    ca, sa = np.abs(cos) + cerr, np.abs(sin) + cerr
    e1 = up(e_mag + ca * b1 + sa * b2, 4)
    e2 = up(e_mag + ca * b2 + sa * b1, 4)
    out = np.concatenate([o1, o2, x[..., rd:]], axis=-1)
    obox = np.concatenate([e1, e2, xbox[..., rd:]], axis=-1)
    return out, obox


# --------------------------------------------------------------------------------------- attention
def score_bounds(q, qbox, K, Kbox, scale):
    """Bounds on (q* . k*) * scale for |q* - q| <= qbox, |k* - k| <= Kbox; q [k], K [n, k]; scale = 1/sqrt(d_head).

    Returns (s, srad): the float scores and a radius with |true - s| <= srad.
    """
    kdim = q.shape[-1]
    dot = K @ q
    kn = np.sqrt((K * K).sum(axis=1))
    unc = Kbox @ np.abs(q) + np.abs(K) @ qbox + Kbox @ qbox
    unc = up(unc + gamma(kdim) * float(np.linalg.norm(q)) * kn, kdim + 8)
    s = dot * scale
    # scale = 1/sqrt(d_head) is within 2U relative of the float used; one more product.
    srad = up(unc * scale + np.abs(s) * 4 * U, 6)
    return s, srad


def anchor_average(s: np.ndarray, srad: np.ndarray, V: np.ndarray, Vbox: np.ndarray):
    """Softmax average over anchor positions with scores s +- srad and values V +- Vbox.

    Returns (o, obox, m, w_lo): |o_true - o| <= obox for every admissible score/value, m the float
    shift used, and w_lo a lower bound of sum_j exp(s_true_j - m). Bound (docs): with the normalised
    weights p~ of the float computation (softmax of s + delta, |delta| small) and |s_true - s - delta|
    <= rbar, ``|p_true - p~| <= p~ (exp(2 rbar) - 1)``, and ``o_true - o = sum_j p_true (v* - v) +
    sum_j (p_true - p~)(v_j - o) + (p~ V - o)``.
    """
    n = s.shape[0]
    m = float(s.max())
    x = s - m
    xerr = up(srad + U * np.abs(x), 2)
    w_lo, _ = exp_bounds(x, xerr)
    w = np.exp(x)
    S = w.sum()
    p = w / S
    o = p @ V
    dev = p @ np.abs(V - o)
    rbar = float(up(float(xerr.max()) + 1.01 * (REL_EXP + gamma(n + 2)) + 2 * U * float(np.abs(x).max()), 4))
    tau = float(up(math.expm1(2.0 * rbar), 8)) if 2.0 * rbar < 700.0 else math.inf
    ferr = up(3 * gamma(n + 3) * (p @ np.abs(V)), 4)
    spread = np.where(dev > 0, tau * up(dev, n + 8), 0.0)  # no inf * 0 when tau overflows
    obox = up(Vbox.max(axis=0) + spread + ferr, 4)
    if rbar >= INTERVAL_SOFTMAX_MIN:
        # Uncertain scores: also the exact range of sum w v / sum w over independent weight intervals;
        # and always the values' hull (the average is a convex combination), so that overflowed bounds
        # stay finite. fmax/fmin: a NaN side is dropped, never propagated or trusted.
        w_lo_b, w_hi_b = exp_bounds(x, xerr)
        ilo, ihi = interval_average(w_lo_b, w_hi_b, V, Vbox)
        # (one round-to-nearest is within half an ulp, so one next_down / next_up is on the safe side)
        lo = np.fmax(np.fmax(next_down(o - obox), ilo), next_down(V - Vbox).min(axis=0))
        hi = np.fmin(np.fmin(next_up(o + obox), ihi), next_up(V + Vbox).max(axis=0))
        o = 0.5 * (lo + hi)
        obox = up(np.maximum(hi - o, o - lo), 2)
    return o, obox, m, float(down(w_lo.sum(), n + 2))


INTERVAL_SOFTMAX_MIN = 1e-6  # score radius above which the interval-weight bound is also used


def interval_average(a: np.ndarray, b: np.ndarray, V: np.ndarray, Vbox: np.ndarray):
    """Per-coordinate bounds of sum_j w_j v_j / sum_j w_j over all w with a <= w <= b (and |v* - V| <= Vbox).

    The maximum of a ratio of linear functions over a box of weights puts the upper weight b_j on the
    largest values and a_j on the rest (a threshold rule); taking the best threshold over all n + 1
    gives the exact maximum. Rounding: every numerator / denominator is a sum of at most 2n
    non-negative-weight terms.
    """
    n, k = V.shape
    if not np.all(np.isfinite(b)) or float(a.sum()) <= 0.0:
        return np.full(k, -np.inf), np.full(k, np.inf)
    out = []
    for sign in (1.0, -1.0):  # max of V, then max of -V (= -min)
        W = sign * V
        order = np.argsort(-W, axis=0, kind="stable")
        Ws = np.take_along_axis(W, order, axis=0)
        As, Bs = a[order], b[order]
        zero = np.zeros((1, k))
        cb = np.vstack([zero, np.cumsum(Bs * Ws, axis=0)])
        ca = np.vstack([zero, np.cumsum(As * Ws, axis=0)])
        cbw = np.vstack([zero, np.cumsum(Bs, axis=0)])
        caw = np.vstack([zero, np.cumsum(As, axis=0)])
        num = cb + (ca[-1] - ca)
        den = cbw + (caw[-1] - caw)
        val = num / den
        best = val.max(axis=0)
        g = gamma(2 * n + 4)
        mag = (b @ np.abs(V))
        err = up((g * mag + np.abs(best) * g * float(b.sum())) / (float(a.sum()) * (1 - g)) + 2 * U * np.abs(best), 4)
        out.append(next_up(best + err + Vbox.max(axis=0)))
    return -out[1], out[0]


def anchor_mass_hi(s: np.ndarray, srad: np.ndarray, m: float) -> float:
    """An upper bound of sum_j exp(s_true_j - m) over the anchors (|s_true - s| <= srad): the other
    end of :func:`anchor_average`'s w_lo."""
    x = s - m
    _, hi = exp_bounds(x, up(srad + U * np.abs(x), 2))
    return float(up(hi.sum(), len(s) + 2))


def head_output_set(
    o: np.ndarray,
    obox: np.ndarray,
    m: float,
    wa_lo: float,
    groups: list[tuple],
    W_O: np.ndarray,
    wa_hi: float | None = None,
    per_position: bool = True,
    *,
    runs: int,
) -> tuple[AffineSet, float]:
    """The set of possible outputs of one head (mapped by W_O), and Lambda (the bound on the total
    weight of the non-anchor positions).

    ``groups``: (values V [nv, k], their error boxes, for every position holding one of these rows
    the upper bounds of its scores, one per row, and, needed only with ``wa_hi``, their lower bounds).
    With ``wa_hi`` (an upper bound of W_A, :func:`anchor_mass_hi`) the term also gets the ranges
    of r_i = w_i / W_A (per run of positions, as the scales), with which affine.ratio_max bounds its
    support by the softmax weights themselves rather than their caps. ``per_position=False``: one scale
    vector per group (the largest over its positions; quicker, looser). ``runs``: the free positions of a
    group are merged into at most this many runs of consecutive positions (:func:`_runs`; 8 up to method
    /7, 32 from /8). Any count is sound: a run takes the largest cap and the widest ratio range of its
    positions; more runs are tighter and cost more in affine.capped_max and affine.ratio_max.

    With W_A the anchors' softmax mass and w_i the free positions' (shift m), the output is
    o_A + sum_i c_i (v_i - o_A) with c_i = w_i / (W_A + sum w) <= e^{u_i} / (W_A^min + e^{u_i}) =:
    lambda_i(row) and sum_i c_i <= Lambda = W_R^max / (W_A^min + W_R^max): a pooled term
    (affine.pooled_max) whose rows' scales are lambda_i(row) per position, or the largest over a run
    of positions (:func:`position_buckets`; each position holds one row).
    """
    if not groups:
        return AffineSet.point(o, obox).affine(W_O), 0.0
    exps = []
    wr = 0.0
    npos = 0
    for grp in groups:
        his = grp[2]
        ex = []
        for hi in his:
            x = hi - m
            _, e_hi = exp_bounds(x, up(U * np.abs(x), 2))
            ex.append(e_hi)
            wr += float(e_hi.max())
            npos += 1
        exps.append(ex)
    wr = float(up(wr, npos + 2))
    if not math.isfinite(wr) or wa_lo <= 0.0:
        lam = 1.0
    else:
        lam = min(1.0, float(up(wr / (wa_lo + wr), 4)))
    D, scale, starts, mult, vb, pscale, ratios = [], [], [], [], [], [], []
    use_r = wa_hi is not None and math.isfinite(wa_hi) and wa_lo > 0.0
    row = 0
    for grp, ex in zip(groups, exps, strict=True):
        V, Vb = grp[0], grp[1]
        if use_r:
            with np.errstate(over="ignore"):  # an overflowed ratio leaves the term without ratios
                rhi = [up(e / wa_lo, 2) for e in ex]
            rlo = []
            for lo_s in grp[3]:
                x = lo_s - m
                e_lo, _ = exp_bounds(x, up(U * np.abs(x), 2))
                rlo.append(np.maximum(down(e_lo / wa_hi, 2), 0.0))
            ratios.append(ratio_buckets(rlo, rhi, runs))
        per = []
        for e in ex:
            with np.errstate(invalid="ignore", divide="ignore"):
                li = np.where(np.isfinite(e), e / (wa_lo + e), 1.0) if wa_lo > 0 else np.ones_like(e)
            per.append(np.minimum(up(np.nan_to_num(li, nan=1.0), 4), lam))
        scale.append(np.max(per, axis=0))
        pscale.append(position_buckets(per, runs) if per_position else None)
        D.append(V - o)
        vb.append(Vb.max(axis=0))
        starts.append(row)
        mult.append(len(ex))
        row += V.shape[0]
    D = np.concatenate(D)
    verr = up(lam * (3 * U * np.abs(D).max(axis=0) + np.max(vb, axis=0)), 4)
    S = AffineSet.point(o, up(obox + verr, 2)).affine(W_O)
    ok_r = use_r and all(np.isfinite(R[1]).all() for R in ratios)
    S.terms.append(make_pooled(D, np.concatenate(scale), np.array(starts), np.array(mult), lam, W_O,
                               tuple(pscale), tuple(ratios) if ok_r else None))
    return S, lam


def _runs(m: int, runs: int) -> list[tuple[int, int]]:
    """The runs [i m // nb, (i + 1) m // nb) of m positions, nb = min(m, runs)."""
    nb = min(m, runs)
    cuts = [i * m // nb for i in range(nb + 1)]
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def _per_run(per: list[np.ndarray], reduce, runs: int) -> np.ndarray:
    """Per run of :func:`_runs`, the elementwise ``reduce`` (np.max or np.min) of its positions' rows."""
    return np.stack([reduce(per[a:b], axis=0) for a, b in _runs(len(per), runs)])


def _run_counts(m: int, runs: int) -> np.ndarray:
    return np.array([b - a for a, b in _runs(m, runs)], dtype=np.float64)


def ratio_buckets(rlo: list[np.ndarray], rhi: list[np.ndarray], runs: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-position ranges [rlo, rhi] of the score ratios as (Rlo, Rhi, counts) over at most ``runs`` runs
    of :func:`_runs`: the least lower and the largest upper end of each run (affine.ratio_max)."""
    return _per_run(rlo, np.min, runs), _per_run(rhi, np.max, runs), _run_counts(len(rhi), runs)


def position_buckets(per: list[np.ndarray], runs: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The per-position scales of one group of positions as (S, counts) for affine.capped_max: per run
    of :func:`_runs` (at most ``runs``) the elementwise largest scale of its positions; None when every
    position has the same scales (the group's one scale vector says it all)."""
    if len(per) <= 1 or all(np.array_equal(per[0], x) for x in per[1:]):
        return None
    return _per_run(per, np.max, runs), _run_counts(len(per), runs)


__all__ = [
    "TINY",
    "anchor_average",
    "head_output_set",
    "ln_points",
    "ln_set",
    "mlp_from_preacts",
    "mlp_set",
    "preact_set",
    "relax_activation",
    "rope_cos_sin",
    "rotate",
    "score_bounds",
]


# --------------------------------------------------------------------------------------- exact rows
def ball_affine(x: np.ndarray, xerr: np.ndarray, W: np.ndarray, b: np.ndarray | None):
    """(x W + b, err) for rows x (n x d) known up to xerr: err >= |W|^T-propagated input error + rounding."""
    y = x @ W
    d = W.shape[0]
    cn = np.sqrt((W * W).sum(axis=0))
    rn = np.sqrt((x * x).sum(axis=1))
    e = xerr @ np.abs(W) + gamma(d) * np.multiply.outer(rn, cn)
    if b is not None:
        y = y + b
    return y, up(up(e, d + 8) + U * np.abs(y), 2)


GELU_D1_MAX = 1.13  # sup |gelu'| = Phi(sqrt2) + sqrt2 phi(sqrt2) = 1.12890 (at x = sqrt 2)


def act_points(p: np.ndarray, perr: np.ndarray, act: str):
    """act(p) for values known up to perr: ReLU is 1-Lipschitz and exact; |gelu'| <= 1.13."""
    if act == "relu":
        return np.maximum(p, 0.0), perr.copy()
    g = gelu(p)
    return g, up(GELU_D1_MAX * perr + _gelu_err(p, g), 2)


def score_rows(Q: np.ndarray, Qbox: np.ndarray, K: np.ndarray, Kbox: np.ndarray, scale: float):
    """Scores (nq x n) = Q K^T * scale with a radius, for queries/keys known up to boxes."""
    kdim = Q.shape[-1]
    dot = Q @ K.T
    unc = np.abs(Q) @ Kbox.T + Qbox @ np.abs(K).T + Qbox @ Kbox.T
    unc = up(unc + gamma(kdim) * np.multiply.outer(np.sqrt((Q * Q).sum(1)), np.sqrt((K * K).sum(1))), kdim + 8)
    s = dot * scale
    return s, up(unc * scale + np.abs(s) * 4 * U, 6)


def causal_average_rows(S: np.ndarray, Srad: np.ndarray, V: np.ndarray, Vbox: np.ndarray):
    """:func:`anchor_average` for the causal rows of a fixed block: row i sees positions 0..i.

    Uses the triangle bound sum_j p_j |v_j - o| <= p |V| + |o| (fine when the score radius is rounding-sized).
    """
    nq, n = S.shape
    valid = np.tril(np.ones((nq, n), dtype=bool))
    Sm = np.where(valid, S, -np.inf)
    m = Sm.max(axis=1, keepdims=True)
    x = np.where(valid, S - m, -np.inf)
    xabs = np.abs(np.where(valid, x, 0.0))
    xerr = np.where(valid, up(Srad + U * xabs, 2), 0.0)
    w = np.exp(x)
    p = w / w.sum(axis=1, keepdims=True)
    o = p @ V
    pabsV = p @ np.abs(V)
    rbar = up(xerr.max(axis=1) + 1.01 * (REL_EXP + gamma(n + 2)) + 2 * U * xabs.max(axis=1), 4)
    tau = up(np.expm1(2.0 * rbar), 8)[:, None]
    vmax = np.maximum.accumulate(Vbox, axis=0)
    obox = up(vmax + tau * up(pabsV + np.abs(o), n + 8) + 3 * gamma(n + 3) * pabsV, 4)
    return o, obox
