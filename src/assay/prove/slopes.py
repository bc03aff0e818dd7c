"""Per-competitor ReLU slopes, convexity along the attention rows, and the tangent bound of the final
LayerNorm (method /4): :func:`lower_bound`, a rigorous lower bound of one linear functional of the final
residual over every input, and the float searches that choose its free parameters.

The last MLP's relaxation holds relu(p) in a p + b + [-mu, mu] for *any* slope a in [0, 1] on a neuron
whose range crosses 0: relu(p) - a p is convex and piecewise linear with its kink at 0, so its range
over [lo, hi] is the hull of its values at lo, 0 and hi. The chord slope (DeepZ) is the best single
choice for the whole set; for one functional, a neuron with w_n = W_out[n] . C F >= 0 is better served
by a slope near 0 or 1, depending on where the minimiser sits (alpha-CROWN's observation), and a float
search picks the slopes (:func:`choose_slopes`). The crossing neurons with w_n < 0 are bounded through
the convexity of their sum along the attention rows instead of one chord each (:func:`lower_bound`).
Whatever the slopes and the ``shift`` mask, the bound is valid.

The final LayerNorm divides by sigma(y) = |(y / sqrt d, sqrt eps)|_2. For every (u, c0) with
d |u|^2 + c0^2 / eps <= 1, Cauchy-Schwarz gives sigma(y) >= u . y + c0 (:func:`tangent`, which takes
u = y* / (d S), c0 = eps / S with S >= sigma(y*): the tangent plane of sigma at y*). With
beta > 0 the bias part of the logit difference, f . y + beta sigma(y) >= (f + beta u) . y + beta c0,
a linear functional: its lower bound N over the set bounds the margin (f . y + beta sigma) / sigma by
N / sigma_hi (N >= 0) or N / sigma_lo. This keeps the correlation between f . y and sigma(y) that the
quotient bound min(f . y) / sigma_lo gives up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from assay.prove import rules
from assay.prove.affine import POOL_T, AffineSet, Term, pooled_max, ratio_max, sqrt_up, support_from
from assay.prove.fp import U, col_norms, down, gamma, next_up, row_norms, sum_bounds, up

ITERS = 60  # ascent steps of the slope search
STEP = 0.2  # its first step (normalised), decaying as 1 / sqrt(step number)
FW_ITERS = 200  # Frank-Wolfe steps of min_norm_direction
FW_TOL = 1e-6  # ... until its duality gap is below this fraction of |y|^2


@dataclass
class LastMLP:
    """The last layer's MLP at the last position: the residual before it (``mid``), its pre-activation
    set P with the relaxation ranges [lo, hi], and its output weights."""

    mid: AffineSet
    P: AffineSet
    lo: np.ndarray
    hi: np.ndarray
    W_out: np.ndarray
    b_out: np.ndarray
    _prep: dict | None = None

    def crossing(self) -> np.ndarray:
        return (self.lo < 0) & (self.hi > 0)

    def prep(self) -> dict:
        """What every competitor's bound shares (computed once): the row terms (pooled terms of both
        mid and P: the attention to free positions), the other terms, the range [rlo, rhi] of r (P
        without its row terms and center) with the chord of r+ over it, and per row term the
        pre-activations Q_b = p0 + K E_b of the crossing neurons, E_b = D_b M (within Qerr)."""
        if self._prep is None:
            self._prep = _prepare(self)
        return self._prep


def _prepare(rec: LastMLP) -> dict:
    mid_t = {t.id: t for t in rec.mid.terms}
    rows = [t for t in rec.P.terms if t.kind == "pooled" and not t.signed and t.id in mid_t]
    row_ids = {t.id for t in rows}
    others = [t for t in rec.P.terms if t.id not in row_ids]
    rlo, rhi = AffineSet(np.zeros(rec.P.d), rec.P.box, others).coord_bounds()
    # r+ <= sig r + off on [rlo, rhi]: a line above r+ at both ends (r+ is convex); exact off the kink.
    crosses = (rlo < 0) & (rhi > 0)
    sig = np.where(rlo >= 0, 1.0, np.where(rhi <= 0, 0.0, rhi / np.where(crosses, rhi - rlo, 1.0)))
    sig = np.clip(sig, 0.0, 1.0)
    off = np.where(crosses, up(np.maximum(-sig * rlo, rhi * (1.0 - sig)), 3), 0.0)
    cross = np.flatnonzero(rec.crossing())
    p0 = rec.P.center
    H = len(rows)
    qs = []
    for t in rows:
        # sum_h sum_ib w_ib / K_h <= 1 when K_h >= H * total_h: the weights of a convex combination.
        K = float(next_up(H * t.pool[3]))
        M = t.M[:, cross]
        E = t.V @ M
        Eerr = up(gamma(M.shape[0]) * np.multiply.outer(row_norms(t.V), col_norms(M)))
        KE = K * E
        Q = p0[cross][None, :] + KE
        Qerr = up(K * Eerr + U * np.abs(KE) + U * np.abs(Q), 3)
        # the same points with r at its upper end (for the neurons bounded that way, see lower_bound)
        Qs = np.nextafter(Q + rhi[cross][None, :], np.inf)
        qs.append((K, Q, Qerr, Qs))
    p_ids = {t.id for t in rec.P.terms}
    mid_only = [t for t in rec.mid.terms if t.id not in p_ids]
    return {"mid_t": mid_t, "rows": rows, "others": others, "mid_only": mid_only, "rlo": rlo, "rhi": rhi,
            "sig": sig, "off": off, "cross": cross, "Q": qs}


def _pieces(rec: LastMLP, g: np.ndarray, slopes: np.ndarray | None, shift: np.ndarray | None):
    """The per-neuron pieces of the bound for the (centred) functional g: w = W_out g, the neurons N-
    (crossing, w < 0) bounded through convexity, those of them that take r at its upper end (``shift``,
    a mask), the functional v on P's non-row terms, and werr >= |fl(W_out g) - W_out g|."""
    pr = rec.prep()
    a, b, mu = rules.relax_activation(rec.lo, rec.hi, "relu", slopes)
    w = rec.W_out @ g
    werr = up(gamma(len(g)) * (np.abs(rec.W_out) @ np.abs(g)))
    # N-: w_n < 0 beyond its rounding, so that the checker (which needs the whole ball below 0) agrees
    neg = rec.crossing() & (w < -werr)
    sh = neg & (np.zeros(len(w), dtype=bool) if shift is None else shift)
    aw = np.where(neg, -w, 0.0)
    v = np.where(neg, np.where(sh, 0.0, -aw * pr["sig"]), a * w)
    return pr, a, b, mu, w, werr, neg, sh, aw, v


def lower_bound(rec: LastMLP, F: np.ndarray, Ferr: np.ndarray, slopes: np.ndarray, xabs: np.ndarray,
                shift: np.ndarray | None = None) -> float:
    """Rigorous lower bound of F* . C x over every true final residual x (C the centring; F* any real
    vector within Ferr of F; |x| <= xabs elementwise), x = mid + relu(p) W_out + b_out with p in P.

    With g = C F and w = W_out g, each neuron's term w_n relu(p_n) is bounded below by the relaxation
    with the given slopes (DeepZ form), except on the crossing neurons N- with w_n < 0, whose sum
    -G(p), G(p) = sum |w_n| relu(p_n), is bounded through convexity: write p = p0 + sum_ib w_ib E_b + r
    (the row terms: attention weights w_ib >= 0 on rows b, E_b = D_b M, sum w / K <= 1; r the rest).
    Then p is a convex combination of p0 + r and the points p0 + r + K E_b, so
    G(p) <= G(p0) + sum_ib w_ib (G(p0 + K E_b) - G(p0)) / K + sum_n |w_n| (sig_n r_n + off_n),
    using relu(q + r) <= relu(q) + r+ <= relu(q) + sig r + off for every q; on the neurons in ``shift``,
    relu(q + r) <= relu(q + r_hi) instead (both points of each convex combination), which moves r_hi into
    G and drops their r terms. Every piece is linear in the coefficients; the row terms' part is their
    support with per-row values h_b - D_b y.
    """
    g = F - F.mean()
    pr, a, b, mu, w, werr, neg, sh, aw, v = _pieces(rec, g, slopes, shift)
    d, m = len(F), len(w)
    awA, awB = np.where(sh, 0.0, aw), np.where(sh, aw, 0.0)
    gerr = up(Ferr + float(up(np.mean(Ferr), d + 2)) + gamma(d + 2) * float(np.abs(F).mean()) + U * np.abs(g), 4)
    pabs = np.maximum(np.abs(rec.lo), np.abs(rec.hi))
    rabs = np.maximum(np.abs(pr["rlo"]), np.abs(pr["rhi"]))
    vabs = np.abs(v)
    p0 = rec.P.center
    pos = ~neg
    # constants (lower bounds), and the rounding of every float product used as an exact number
    z0_lo, z0_hi = np.nextafter(p0 + pr["rhi"], -np.inf), np.nextafter(p0 + pr["rhi"], np.inf)
    G0_lo = float(down(np.maximum(p0, 0.0) @ awA + np.maximum(z0_lo, 0.0) @ awB, m + 4))
    G0_hi = float(up(np.maximum(p0, 0.0) @ awA + np.maximum(z0_hi, 0.0) @ awB, m + 4))
    lows = [
        np.array([float(rec.mid.center @ g)]),
        -np.array([float(up(gamma(d) * float(np.abs(rec.mid.center) @ np.abs(g)), 2))]),
        np.array([float(rec.b_out @ g)]),
        -np.array([float(up(gamma(d) * float(np.abs(rec.b_out) @ np.abs(g)), 2))]),
        np.array([float((v * p0 + w * b)[pos].sum())]),
        -np.array([float(up((np.abs(w) * mu)[pos].sum()
                            + (3 * U + gamma(m + 2)) * (np.abs(v * p0) + np.abs(w * b))[pos].sum(), m + 4))]),
        -np.array([G0_hi]),
        -np.array([float(up(awA @ pr["off"], m + 2))]),
        -np.array([float(up(rec.mid.box @ np.abs(g) + rec.P.box @ vabs, m + d + 2))]),
        -np.array([float(up(werr @ np.maximum(rec.hi, 0.0) + gerr @ xabs
                            + 2 * U * (vabs @ np.where(neg, rabs, pabs)), m + d + 4))]),
    ]
    mid_t = pr["mid_t"]
    # the row terms: -sup over their weights of sum_ib w_ib (h_b - D_b . y)
    v_row = np.where(neg, 0.0, v)
    cr = pr["cross"]
    for t, (K, Q, Qerr, Qs) in zip(pr["rows"], pr["Q"], strict=True):
        tm = mid_t[t.id]
        B, EB = _combined(tm, g, t, v_row)
        Gb = up(np.maximum(np.nextafter(Q + Qerr, np.inf), 0.0) @ awA[cr]
                + np.maximum(np.nextafter(Qs + Qerr, np.inf), 0.0) @ awB[cr], len(cr) + 4)
        diff = Gb - G0_lo
        h = next_up(next_up(diff + U * np.abs(diff)) / K)
        h = next_up(h + U * np.abs(h))
        VB = t.V @ B
        rowerr = up(row_norms(t.V) * (gamma(len(B)) * float(row_norms(B[None, :])[0])
                                      + float(row_norms(EB[None, :])[0])), 4)
        X = next_up(next_up(next_up(h - VB) + U * np.abs(h - VB)) + rowerr)
        lows.append(-pooled_max(X[:, None], *t.pool))
    for t in pr["others"]:
        B, EB = _combined(mid_t.get(t.id), g, t, v)
        lows.append(support_from(t, B[:, None], EB[:, None])[0])
    for t in pr["mid_only"]:
        B, EB = _combined(t, g, None, None)
        lows.append(support_from(t, B[:, None], EB[:, None])[0])
    return float(sum_bounds(lows)[0][0])


def _combined(tm: Term | None, g: np.ndarray, tp: Term | None, v: np.ndarray | None):
    """(B, EB): fl(M_mid g + M_P v) for one term id and a bound on its distance to the exact vector."""
    B, EB = 0.0, 0.0
    if tm is not None:
        Bm = tm.M @ g
        B, EB = Bm, gamma(len(g)) * row_norms(tm.M) * float(row_norms(g[None, :])[0])
    if tp is not None:
        Bp = tp.M @ v
        EB = EB + gamma(len(v)) * row_norms(tp.M) * float(row_norms(v[None, :])[0])
        B = B + Bp
    B = np.asarray(B, dtype=np.float64)
    return B, up(EB + U * np.abs(B), 3)


def tangent(ys: np.ndarray, eps: float) -> tuple[np.ndarray, float] | None:
    """(u, c0) with sigma(y) >= u . y + c0 for every y (verified: d |u|^2 + c0^2 / eps <= 1), from the
    tangent plane of sigma at ys; None if the check fails in floating point."""
    d = len(ys)
    S = sqrt_up(float(up(float(up(float(ys @ ys), d + 2)) / d + eps, 4)))
    if not S > 0:
        return None
    shrink = 1.0 - 1e-9
    u = ys / (d * S) * shrink
    c0 = eps / S * shrink
    norm = up(d * float(up(float(u @ u), d + 2)) + float(up(c0 * c0 / eps, 3)), 2)
    return (u, float(c0)) if norm <= 1.0 else None


def _pooled_argmax(t: Term, vals: np.ndarray) -> tuple[float, np.ndarray]:
    """Float value and maximiser (a coefficient vector) of sum_ib w_ib vals_b over a pooled term's
    weights, from the bound affine.pooled_max uses: with score ratios, ratio_max's theta and the
    softmax weights of each run's best row there; else (or where that fails) the Lagrangian form at
    its best grid point (the total is not enforced in that maximiser). This only guides the search."""
    scale, starts, mult, total, pscale, ratios = t.pool
    ends = np.append(starts[1:], len(vals))
    if ratios is not None and len(vals):
        th = float(ratio_max(vals[:, None], starts, ratios, total)[0])
        if np.isfinite(th):
            num, den = np.zeros(t.V.shape[1]), 1.0
            for s0, e0, (Rlo, Rhi, counts) in zip(starts, ends, ratios, strict=True):
                D = vals[s0:e0] - th
                for rlo, rhi, n in zip(Rlo, Rhi, counts, strict=True):
                    r = np.where(D >= 0, rhi, rlo)
                    j = int(np.argmax(r * D))
                    num = num + n * r[j] * t.V[s0 + j]
                    den += n * r[j]
            return th, num / den
    top = max(float(vals.max(initial=0.0)), 0.0)
    best, arg = np.inf, np.zeros(t.V.shape[1])
    for f in POOL_T:
        tt = top * f
        val, coef = total * tt, np.zeros(t.V.shape[1])
        for g, (s0, e0, m) in enumerate(zip(starts, ends, mult, strict=True)):
            if e0 <= s0:
                continue
            per = pscale[g] if pscale is not None else None
            S, counts = per if per is not None else (scale[None, s0:e0], [m])
            for sq, n in zip(S, counts, strict=True):
                Yq = sq * (vals[s0:e0] - tt)
                j = int(np.argmax(Yq))
                if Yq[j] > 0:
                    val += n * Yq[j]
                    coef = coef + n * sq[j] * t.V[s0 + j]
        if val < best:
            best, arg = val, coef
    return best, arg


def _minimiser(t: Term, x: np.ndarray) -> tuple[float, np.ndarray]:
    """The (float) least value of coef . x over the term, as its support function gives it, and
    coefficients that (approximately) attain it."""
    if t.kind == "zono":
        return -float(np.abs(x).sum()), -np.sign(x)
    if t.kind == "ell":
        n = float(np.linalg.norm(x))
        return -n, (-x / n if n > 0 else np.zeros_like(x))
    if t.kind == "block":
        vals = t.V @ x
        j = int(np.argmin(vals))
        return float(vals[j]), t.V[j].copy()
    vm, cm = _pooled_argmax(t, -(t.V @ x))
    if t.signed:
        vp, cp = _pooled_argmax(t, t.V @ x)
        return (-vm, cm) if vm >= vp else (-vp, -cp)
    return -vm, cm


def set_minimiser(Y: AffineSet, g: np.ndarray) -> np.ndarray:
    """A point of Y (float) where g . y is (about) least: the box corner against g and each term's
    minimising coefficients (:func:`_minimiser`)."""
    y = Y.center - Y.box * np.sign(g)
    for t in Y.terms:
        y = y + _minimiser(t, t.M @ g)[1] @ t.M
    return y


def min_norm_direction(Y: AffineSet, iters: int = FW_ITERS) -> np.ndarray | None:
    """A direction n (unit, float) along which the set Y's least extent is about its least norm
    (method /6): Frank-Wolfe on |y|^2 over Y, the linear steps through :func:`set_minimiser` (the exact
    hull of the attention rows), with exact line search, from a point of Y; of its iterates'
    directions, the one whose least extent (y . s / |y|, a lower bound of the least norm) is largest.
    None when no direction bounds |y| away from 0. This only chooses n: the bound through it
    (rules.norm_lower_bound) is rigorous for any n."""
    start = Y.center if np.any(Y.center) else np.ones(Y.d)
    y = set_minimiser(Y, start)  # a point of Y (the center is not one: coefficients sum to 1)
    best, best_n = 0.0, None
    for _ in range(iters):
        nrm = float(np.linalg.norm(y))
        if not np.isfinite(nrm) or nrm <= 0.0:
            break
        s = set_minimiser(Y, y)
        low = float(y @ s) / nrm  # the least extent along y / |y| (attained at s): this direction's bound
        if np.isfinite(low) and low > best:
            best, best_n = low, y / nrm
        step = s - y
        gap = float(-(y @ step))  # Frank-Wolfe's duality gap: |y|^2 - min over Y of y . s
        den = float(step @ step)
        if not np.isfinite(gap) or gap <= FW_TOL * nrm * nrm or den <= 0.0:
            break
        y = y + min(gap / den, 1.0) * step
    return best_n


def _float_lower(rec: LastMLP, g: np.ndarray, slopes: np.ndarray, hs: list | None = None,
                 shift: np.ndarray | None = None):
    """The bound of :func:`lower_bound` in plain floating point (no error terms), the minimiser's
    pre-activations p*, w and the row values h (``hs``: reused, they do not depend on the slopes): only
    to guide the search."""
    pr, a, b, mu, w, _, neg, sh, aw, v = _pieces(rec, g, slopes, shift)
    awA, awB = np.where(sh, 0.0, aw), np.where(sh, aw, 0.0)
    p0 = rec.P.center
    pos = ~neg
    cr = pr["cross"]
    G0 = float(np.maximum(p0, 0.0) @ awA + np.maximum(p0 + pr["rhi"], 0.0) @ awB)
    if hs is None:
        hs = [(np.maximum(Q, 0.0) @ awA[cr] + np.maximum(Qs, 0.0) @ awB[cr] - G0) / K for K, Q, _, Qs in pr["Q"]]
    val = float(rec.mid.center @ g + rec.b_out @ g + (v * p0 + w * b - np.abs(w) * mu)[pos].sum())
    val -= G0 + float(awA @ pr["off"]) + float(rec.mid.box @ np.abs(g) + rec.P.box @ np.abs(v))
    pstar = p0.copy()
    mid_t = pr["mid_t"]
    v_row = np.where(neg, 0.0, v)
    for t, h in zip(pr["rows"], hs, strict=True):
        y = mid_t[t.id].M @ g + t.M @ v_row
        best, coef = _pooled_argmax(t, h - t.V @ y)
        val -= best
        pstar = pstar + coef @ t.M
    for t in pr["others"]:
        tm = mid_t.get(t.id)
        x = t.M @ v + (tm.M @ g if tm is not None else 0.0)
        val_t, coef = _minimiser(t, x)
        val += val_t
        pstar = pstar + coef @ t.M
    for t in pr["mid_only"]:
        val += _minimiser(t, t.M @ g)[0]
    return val, pstar, w, hs


def choose_slopes(rec: LastMLP, F: np.ndarray, iters: int = ITERS, step: float = STEP) -> np.ndarray:
    """Slopes for the crossing neurons that (heuristically) maximise :func:`lower_bound` for F. The bound
    is concave in the slopes of the neurons with w_n = W_out[n] . C F >= 0 (for fixed coefficients it
    is linear in them), with supergradient w_n p*_n at the minimiser p*: projected ascent with steps
    normalised by a running RMS of the supergradient, from the chord slopes, keeping the best point
    found. Any result is sound."""
    g = F - F.mean()
    cross = rec.crossing()
    a0, _, _ = rules.relax_activation(rec.lo, rec.hi, "relu")
    s = a0.copy()
    best_val, best = -np.inf, s.copy()
    rms, hs = None, None
    for it in range(iters):
        val, pstar, w, hs = _float_lower(rec, g, s, hs)
        if val > best_val:
            best_val, best = val, s.copy()
        free = cross & (w >= 0)
        grad = np.where(free, w * pstar, 0.0)
        rms = grad * grad if rms is None else 0.9 * rms + 0.1 * grad * grad
        s = np.where(free, np.clip(s + step / np.sqrt(1.0 + it) * grad / (np.sqrt(rms) + 1e-300), 0.0, 1.0), s)
    return best


SHIFT_RATIOS = (1.0, 2.0, 3.0, 4.0, 6.0)


def choose_shift(rec: LastMLP, F: np.ndarray, slopes: np.ndarray) -> np.ndarray:
    """Which neurons of N- take r at its upper end in :func:`lower_bound` (a mask): those whose range
    ends below ratio * r_hi, for the ratio (or none) with the best float bound. Any mask is sound."""
    g = F - F.mean()
    pr = rec.prep()
    best_val, best = _float_lower(rec, g, slopes)[0], np.zeros(len(rec.lo), dtype=bool)
    for ratio in SHIFT_RATIOS:
        mask = rec.hi < ratio * pr["rhi"]
        val = _float_lower(rec, g, slopes, shift=mask)[0]
        if val > best_val:
            best_val, best = val, mask
    return best


GAMMA_ITERS = 8  # secant steps of choose_gamma


def choose_gamma(rec: LastMLP, F: np.ndarray, u: np.ndarray, c0: float, slopes: np.ndarray,
                 shift: np.ndarray, gamma0: float, slope0: float) -> float:
    """A weight gamma >= 0 of sigma for the fractional form of the final LayerNorm's quotient (method
    /7): the margin (F . y) / sigma(y) + beta is at least beta - gamma + N_gamma / sigma_(hi or lo) for
    *every* gamma >= 0, N_gamma a lower bound of (F + gamma u) . y + gamma c0 (sigma >= u . y + c0), and
    that is largest about where N_gamma = 0 (Dinkelbach's root; each side of it the sigma range's end
    that divides N loses). Secant steps on the float bound of :func:`lower_bound` from gamma0, the
    first with slope0 (about sigma at the tangent point); the result only chooses gamma, any is sound."""
    def n_of(gam: float) -> float:
        g = F + gam * u
        return float(_float_lower(rec, g - g.mean(), slopes, shift=shift)[0]) + gam * c0

    gam, n = gamma0, n_of(gamma0)
    best_gam, best_abs = gam, abs(n)
    slope = slope0
    for _ in range(GAMMA_ITERS):
        if not (np.isfinite(n) and np.isfinite(slope) and slope > 0.0):
            break
        new = max(gam - n / slope, 0.0)
        if new == gam:
            break
        n_new = n_of(new)
        if not np.isfinite(n_new):
            break
        slope = (n_new - n) / (new - gam)  # N grows with gamma (by about sigma at the minimiser)
        gam, n = new, n_new
        if abs(n) < best_abs:
            best_gam, best_abs = gam, abs(n)
        if abs(n) <= 1e-9 * (1.0 + abs(gam)):
            break
    return float(best_gam)


def with_tangent(F: np.ndarray, Ferr: np.ndarray, beta_lo: float, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """fl(F + beta_lo u) and its error bound (Ferr plus the rounding of the product and the sum)."""
    bu = beta_lo * u
    F2 = F + bu
    return F2, up(Ferr + U * np.abs(bu) * (1 + U) + U * np.abs(F2), 3)
