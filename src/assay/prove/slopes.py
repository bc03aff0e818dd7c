"""Per-competitor ReLU slopes and the tangent bound of the final LayerNorm (method /4).

The last MLP's relaxation (rules.mlp_from_preacts) holds relu(p) in a p + b + [-mu, mu] for *any*
slope a in [0, 1] on a neuron whose range crosses 0: relu(p) - a p is convex and piecewise linear with
its kink at 0, so its range over [lo, hi] is the hull of its values at lo, 0 and hi. The chord slope
(DeepZ) is the best single choice for the whole set; for one linear functional F of the final
residual, a neuron whose weight w_n = W_out[n] . F is positive is better served by a slope near 0 or
1, depending on where the minimiser of F sits (alpha-CROWN's observation). So each competitor that
decides the case gets its own slopes: a float search picks them (:func:`choose_slopes`), and the bound
itself is the rigorous support of F over the set built with those slopes (:func:`set_with_slopes`),
valid whatever the slopes are.

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
from assay.prove.affine import POOL_T, AffineSet, Term, sqrt_up
from assay.prove.fp import U, up

ITERS = 60  # ascent steps of the slope search
STEP = 0.2  # its first step (normalised), decaying as 1 / sqrt(step number)


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

    def crossing(self) -> np.ndarray:
        return (self.lo < 0) & (self.hi > 0)


def set_with_slopes(rec: LastMLP, slopes: np.ndarray) -> AffineSet:
    """The final residual's set (before the final LayerNorm) with the given ReLU slopes on the crossing
    neurons: it holds every true residual, whatever the slopes in [0, 1]."""
    out = rules.mlp_from_preacts(rec.P, rec.lo, rec.hi, rec.W_out, rec.b_out, "relu", slopes)
    return rec.mid.add(out)


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


def _pooled_argmax(t: Term, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Float value and maximiser (a coefficient vector) of coef . y over a pooled term (no signed flag):
    the Lagrangian form of affine.pooled_max at its best grid point (the total is not enforced; this only
    guides the search)."""
    Dy = t.V @ y
    scale, starts, mult, total = t.pool
    top = max(float(Dy.max(initial=0.0)), 0.0)
    ends = np.append(starts[1:], len(Dy))
    best, arg = np.inf, np.zeros(t.V.shape[1])
    for f in POOL_T:
        tt = top * f
        Y = scale * (Dy - tt)
        val, coef = total * tt, np.zeros(t.V.shape[1])
        for s0, e0, m in zip(starts, ends, mult, strict=True):
            if e0 > s0:
                j = s0 + int(np.argmax(Y[s0:e0]))
                if Y[j] > 0:
                    val += m * Y[j]
                    coef = coef + m * scale[j] * t.V[j]
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
    vm, cm = _pooled_argmax(t, -x)
    if t.signed:
        vp, cp = _pooled_argmax(t, x)
        return (-vm, cm) if vm >= vp else (-vp, -cp)
    return -vm, cm


def _float_lower(rec: LastMLP, g: np.ndarray, slopes: np.ndarray, mid_terms, p_terms):
    """Float lower bound of g . x over the set with ``slopes`` (g already centred) and the minimiser's
    pre-activations (both only guide the search)."""
    a, b, mu = rules.relax_activation(rec.lo, rec.hi, "relu", slopes)
    w = rec.W_out @ g
    sw = a * w
    val = float(rec.mid.center @ g - rec.mid.box @ np.abs(g) + rec.b_out @ g)
    val += float((rec.P.center * a + b) @ w - rec.P.box @ np.abs(sw) - mu @ np.abs(w))
    pstar = rec.P.center.copy()
    for tid in set(mid_terms) | set(p_terms):
        tm, tp = mid_terms.get(tid), p_terms.get(tid)
        t = tm if tm is not None else tp
        x = (tm.M @ g if tm is not None else 0.0) + (tp.M @ sw if tp is not None else 0.0)
        v, coef = _minimiser(t, x)
        val += v
        if tp is not None:
            pstar = pstar + coef @ tp.M
    return val, pstar, w


def choose_slopes(rec: LastMLP, F: np.ndarray, iters: int = ITERS, step: float = STEP) -> np.ndarray:
    """Slopes for the crossing neurons that (heuristically) maximise the lower bound of F . C x over the
    set (C the centring). The bound is concave in the slopes of the neurons with w_n = W_out[n] . C F >= 0
    (for fixed coefficients it is linear in them; the chord stays on the others), with supergradient
    w_n p*_n at the minimiser p*: projected ascent with steps normalised by a running RMS of the
    supergradient, from the chord slopes, keeping the best point found. Any result is sound."""
    g = F - F.mean()
    cross = rec.crossing()
    a0, _, _ = rules.relax_activation(rec.lo, rec.hi, "relu")
    mid_terms = {t.id: t for t in rec.mid.terms}
    p_terms = {t.id: t for t in rec.P.terms}
    s = a0.copy()
    best_val, best = -np.inf, s.copy()
    rms = None
    for it in range(iters):
        val, pstar, w = _float_lower(rec, g, s, mid_terms, p_terms)
        if val > best_val:
            best_val, best = val, s.copy()
        free = cross & (w >= 0)
        grad = np.where(free, w * pstar, 0.0)
        rms = grad * grad if rms is None else 0.9 * rms + 0.1 * grad * grad
        s = np.where(free, np.clip(s + step / np.sqrt(1.0 + it) * grad / (np.sqrt(rms) + 1e-300), 0.0, 1.0), s)
    return best


def functional_lower(S: AffineSet, F: np.ndarray, Ferr: np.ndarray) -> float:
    """Rigorous lower bound of F* . x over S for every real F* within Ferr of the float vector F."""
    lo = float(S.functional_bounds(F[:, None], exact=np.array([0]))[0][0])
    return float(lo - up(float(S.abs_bound() @ Ferr), S.d + 2))


def with_tangent(F: np.ndarray, Ferr: np.ndarray, beta_lo: float, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """fl(F + beta_lo u) and its error bound (Ferr plus the rounding of the product and the sum)."""
    bu = beta_lo * u
    F2 = F + bu
    return F2, up(Ferr + U * np.abs(bu) * (1 + U) + U * np.abs(F2), 3)
