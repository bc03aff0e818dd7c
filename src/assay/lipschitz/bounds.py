"""Certified upper bounds on the Lipschitz constant of attention over K^n, and at one input.

Notation (docs/lipschitz.md derives every line). For one head, with tokens y_j in K (K inside the
ball of radius R), attention weights P (row-stochastic, rows supported on N(i): all j, or j <= i when
masked) and V = W_V W_O, the Jacobian is ``J = (I (x) V) (T1 + T2 + T3)`` with

- ``(T1 dY)_i = sum_j P_ij dy_j``                                     ||T1|| = ||P||_2 <= rho
- ``(T2 dY)_i = sum_j P_ij (y_j - ybar_i) a_ij^T dy_i``                ||T2|| <= t2
- ``(T3 dY)_i = sum_j P_ij (y_j - ybar_i) w_ij^T dy_j``                ||T3|| <= min(R W sqrt(kappa), 2 R W rho)

where a_ij, w_ij are the gradients of the score s_ij in y_i and y_j, ``W >= sup ||w_ij||``,
``kappa >=`` the largest column sum of P and ``rho >= ||P||_2``. The per-head bound is
``nu * (rho + t2 + t3)`` with ``nu >= ||V||_2``; the sublayer bound is the smaller of
``sum_h nu_h m_h`` and ``||W_O||_2 * sqrt(sum_h ||W_V^h||^2 m_h^2)``.

Three ways to bound rho and kappa give the three set bounds:

- ``sqrt_n``: rho <= sqrt(n), kappa <= n (any stochastic P): ``nu (sqrt(n) (1 + R W) + t2)``.
- ``gap``: the scores of one query differ by at most Delta over K, so ``P_ij <= a_i = 1 / (1 + (m_i - 1)
  e^-Delta)`` (m_i = |N(i)|); rho by a weighted Schur test over every such P, kappa by column sums.
  Never larger than ``sqrt_n``.
- ``mean_field_limit``: the supremum over all n of the ``gap`` bound: unmasked rho <= e^(Delta/2),
  kappa <= e^Delta; masked rho <= sqrt(8 + 4 sqrt 2) e^(3 Delta / 4). Independent of n, growing like
  exp(c R^2) in R.

Weight-only constants are proved in arb (:mod:`assay.lipschitz.rigorous`) and the final formulas are
evaluated in arb from those upper bounds (every formula is nondecreasing in each constant), so the
``sqrt_n``, ``gap`` and ``mean_field_limit`` numbers are proved upper bounds on the supremum of the
Jacobian's spectral norm over K^n for the real-number function defined by the stored weights (RoPE
with exact rotations). The *local* bound at one input X (:func:`local_upper_bound`) is evaluated in
float64 with a relative safety factor (see its docstring), not in arb.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from flint import arb, arb_mat

from assay.lipschitz import rigorous as rg
from assay.lipschitz.maps import AttentionMap
from assay.lipschitz.sets import TokenSet

LOCAL_SAFETY = 1.0 + 1e-6  # relative safety factor of the float64 local bound (see local_upper_bound)


# --------------------------------------------------------------------------------------------------
# Weight-only constants, proved in arb


@dataclass
class HeadConstants:
    """Proved upper bounds (floats rounded upwards) on one head's weight-only quantities.

    With LayerNorm in front the centring C and gain Gamma are folded into W_Q, W_K, W_V and beta into
    the biases (``W' = C Gamma W``, ``b' = b + beta W``); hats denote a bias row appended (``W^ = [W; b]``).

    - ``nu >= ||W_V' W_O||``, ``omega >= ||W_V'||``
    - without RoPE: ``alpha_A >= ||W_Q' W_K'^T|| / sqrt(e)``, ``alpha_Q >= ||W^_Q' W_K'^T|| / sqrt(e)``,
      ``c_norm >= ||W_K' b_Q'^T|| / sqrt(e)``
    - with RoPE: ``alpha_hat[delta] >= ||W^_Q' Rot_delta W^_K'^T|| / sqrt(e)`` for computed offsets, and
      ``alpha_hat_all >= ||W^_Q'|| ||W^_K'|| / sqrt(e)`` for every offset.
    - always: ``wq >= ||W_Q'|| / sqrt(e)``, ``bq >= ||b_Q'|| / sqrt(e)``, ``wk >= ||W_K'||``, ``bk >= ||b_K'||``
      (for the offset-free product forms ``||q|| / sqrt(e) <= R wq + bq``, ``||k|| <= R wk + bk``).
    """

    nu: float
    omega: float
    wq: float = math.inf
    bq: float = math.inf
    wk: float = math.inf
    bk: float = math.inf
    alpha_A: float | None = None
    alpha_Q: float | None = None
    c_norm: float | None = None
    alpha_hat: dict[int, float] = field(default_factory=dict)
    alpha_hat_all: float | None = None

    def rope_alpha(self, n: int, causal: bool) -> float:
        """Return a proved bound on max ||W^_Q Rot_delta W^_K^T|| / sqrt(e) over the offsets n tokens use.

        Offsets are ``delta = i - j`` over allowed pairs: 0..n-1 when masked, -(n-1)..n-1 otherwise.
        """
        deltas = range(0, n) if causal else range(-(n - 1), n)
        vals = []
        for dlt in deltas:
            if dlt not in self.alpha_hat:
                return float(self.alpha_hat_all)
            vals.append(self.alpha_hat[dlt])
        return min(max(vals), float(self.alpha_hat_all))


@dataclass
class MapConstants:
    """Proved weight constants of an :class:`AttentionMap`: per head, and ``wo_norm >= ||W_O||`` (all heads)."""

    heads: list[HeadConstants]
    wo_norm: float | None
    rope: bool
    single_head: bool


def _fold_matrix(amap: AttentionMap) -> arb_mat | None:
    """Return M^ [(d+1), (d+1)] with ``[y, 1] = [u, 1] M^`` for the LayerNorm fold, or None without LN.

    Row convention: y = u C Gamma + beta, so M^ = [[C Gamma, 0], [beta, 1]].
    """
    if amap.ln_gamma is None:
        return None
    d = amap.d_model
    g = amap.ln_gamma.numpy()
    b = amap.ln_beta.numpy()
    inv_d = arb(1) / d
    M = arb_mat(d + 1, d + 1)
    for i in range(d):
        for j in range(d):
            # (C Gamma)_ij = (delta_ij - 1/d) gamma_j
            M[i, j] = ((1 if i == j else 0) - inv_d) * arb(float(g[j]))
    for j in range(d):
        M[d, j] = arb(float(b[j]))
    M[d, d] = arb(1)
    return M


def _hat(W: np.ndarray, b: np.ndarray, fold: arb_mat | None) -> arb_mat:
    """Return the folded [W; b] as an arb matrix [(d+1), e]."""
    Wh = rg.to_arb(np.vstack([W, b[None, :]]))
    return Wh if fold is None else fold * Wh


def _rows(M: arb_mat, k: int) -> arb_mat:
    """Return the first k rows of M."""
    out = arb_mat(k, M.ncols())
    for i in range(k):
        for j in range(M.ncols()):
            out[i, j] = M[i, j]
    return out


def _row(M: arb_mat, i: int) -> arb_mat:
    """Return row i of M as a column."""
    out = arb_mat(M.ncols(), 1)
    for j in range(M.ncols()):
        out[j, 0] = M[i, j]
    return out


def _rotation(e: int, rotary_dim: int, base: float, delta: int) -> arb_mat:
    """Return Rot_delta [e, e] (row convention, GPT-NeoX half-split layout) with exact arb angles."""
    R = arb_mat(e, e)
    h = rotary_dim // 2
    for k in range(e):
        R[k, k] = arb(1)
    for k in range(h):
        theta = arb(base) ** (arb(-2 * k) / rotary_dim) * delta
        c, s = theta.cos(), theta.sin()
        R[k, k] = c
        R[k + h, k + h] = c
        R[k, k + h] = s
        R[k + h, k] = -s
    return R


RoPE_BUDGET = 3e7  # e^3 times the number of offsets: above it, per-offset RoPE constants are skipped


def map_constants(amap: AttentionMap, max_offset: int = 64) -> MapConstants:
    """Return the proved weight constants of ``amap`` (arb arithmetic; cost O(H e^3 + d^2 e)).

    With RoPE the per-offset constants are proved for offsets |delta| < ``max_offset`` (fewer when
    e^3 x offsets exceeds RoPE_BUDGET); beyond, the offset-free bounds are used (valid for every offset).
    """
    d, e = amap.d_model, amap.d_head
    heads: list[HeadConstants] = []
    with rg.precision():
        fold = _fold_matrix(amap)
        sqrt_e = arb(e).sqrt()
        for h in range(amap.n_heads):
            WQ, WK, WV = (t[h].numpy() for t in (amap.W_Q, amap.W_K, amap.W_V))
            bQ, bK, bV = (t[h].numpy() for t in (amap.b_Q, amap.b_K, amap.b_V))
            WO = amap.W_O[h].numpy()
            Qh, Kh, Vh = _hat(WQ, bQ, fold), _hat(WK, bK, fold), _hat(WV, bV, fold)
            Qw, Kw, Vw = _rows(Qh, d), _rows(Kh, d), _rows(Vh, d)
            FV = rg.LowRankFactor(Vw)
            nu = rg.up(rg.product_norm_upper(FV, rg.gram(rg.to_arb(WO.T))))
            omega = rg.up(rg.norm_upper(Vw))
            prods = dict(
                wq=rg.up(rg.norm_upper(Qw) / sqrt_e), bq=rg.up(rg.vector_norm_upper(_row(Qh, d)) / sqrt_e),
                wk=rg.up(rg.norm_upper(Kw)), bk=rg.up(rg.vector_norm_upper(_row(Kh, d))),
            )  # fmt: skip
            if amap.rotary_dim is None:
                FQ, FQh = rg.LowRankFactor(Qw), rg.LowRankFactor(Qh)
                GK = rg.gram(Kw)
                alpha_A = rg.up(rg.product_norm_upper(FQ, GK) / sqrt_e)
                alpha_Q = rg.up(rg.product_norm_upper(FQh, GK) / sqrt_e)
                bq_row = arb_mat(1, e)
                for j in range(e):
                    bq_row[0, j] = Qh[d, j]
                c_norm = rg.up(rg.vector_norm_upper(Kw * bq_row.transpose()) / sqrt_e)
                heads.append(HeadConstants(nu, omega, alpha_A=alpha_A, alpha_Q=alpha_Q, c_norm=c_norm, **prods))
            else:
                FQh = rg.LowRankFactor(Qh)
                GKh = rg.gram(Kh)
                all_ = rg.up(rg.norm_upper(Qh) * rg.norm_upper(Kh) / sqrt_e)
                hc = HeadConstants(nu, omega, alpha_hat_all=all_, **prods)
                m = max(1, min(max_offset, int(RoPE_BUDGET / e**3 / (1 if amap.causal else 2))))
                offsets = range(0, m) if amap.causal else range(-(m - 1), m)
                for dlt in offsets:
                    R = _rotation(e, amap.rotary_dim, amap.rotary_base, dlt)
                    hc.alpha_hat[dlt] = rg.up(rg.product_norm_upper(FQh, GKh, R) / sqrt_e)
                heads.append(hc)
        wo_norm = None
        if amap.n_heads > 1:
            WOcat = amap.W_O.reshape(amap.n_heads * e, d).numpy()
            wo_norm = rg.up(rg.norm_upper(rg.to_arb(WOcat)))
    return MapConstants(heads, wo_norm, amap.rotary_dim is not None, amap.head is not None)


# --------------------------------------------------------------------------------------------------
# The attention matrix: bounds on ||P||_2 and its column sums over every admissible P


def _ceiling_a(n: int, Delta: arb, causal: bool) -> list[arb]:
    """Return a_i (i = 1..n): P_ij <= a_i for every admissible P (scores of query i within Delta)."""
    q = (-Delta).exp()
    if not causal:
        return [arb(1) / (1 + (n - 1) * q)] * n
    return [arb(1) / (1 + (i - 1) * q) for i in range(1, n + 1)]


def attention_matrix_bounds(n: int, Delta: arb | float, causal: bool) -> tuple[arb, arb]:
    """Return proved upper bounds ``(rho, kappa)`` on ||P||_2 and on P's largest column sum.

    They hold for every row-stochastic P with rows supported on N(i) and ``P_ij <= a_i =
    1 / (1 + (|N(i)| - 1) e^-Delta)``, i.e. every attention matrix whose query-wise score spread is at
    most Delta. ``Delta = inf`` is allowed (then a_i = 1: any stochastic P).

    rho is the best of Schur tests with weights ``w_j = j^-t`` (t in 0, 1/4, 1/2, 3/4, 1): for positive
    w, ``||P||_2 <= sqrt(alpha beta)`` with ``alpha >= max_i (P w)_i / w_i`` and ``beta >= max_j (P^T w)_j / w_j``.
    """
    with rg.precision():
        if isinstance(Delta, float) and math.isinf(Delta):
            a = [arb(1)] * n
        else:
            a = _ceiling_a(n, arb(Delta) if not isinstance(Delta, arb) else Delta, causal)
        if not causal:
            kappa = n * a[0]
            kappa = arb(min(rg.up(kappa), float(n)))
            return kappa.sqrt().upper(), kappa
        kappa = arb(0)
        for ai in a:
            kappa += ai
        kappa = arb(min(rg.up(kappa), float(n)))
        best = rg.up(kappa.sqrt())
        for t in (0.25, 0.5, 0.75, 1.0):
            w = [arb(j) ** arb(-t) for j in range(1, n + 1)]
            prefix = [arb(0)]
            for wj in w:
                prefix.append(prefix[-1] + wj)
            alpha = 0.0
            for i in range(1, n + 1):
                ai = a[i - 1]
                k = min(i - 1, int(1.0 / float(ai.mid())) if float(ai.mid()) > 0 else i - 1)
                k = max(k, 0)
                greedy = ai * prefix[k] + (1 - k * ai) * w[k]  # w[k] is w_{k+1} (0-based list)
                alpha = max(alpha, rg.up(greedy / w[i - 1]))
            beta = 0.0
            suffix = arb(0)
            for j in range(n, 0, -1):
                suffix += a[j - 1] * w[j - 1]
                beta = max(beta, rg.up(suffix / w[j - 1]))
            best = min(best, rg.up((arb(alpha) * arb(beta)).sqrt()))
        return arb(best), kappa


MASKED_LIMIT_CONSTANT = "sqrt(8 + 4 sqrt(2))"


def _masked_rho_limit(Delta: arb) -> arb:
    """Return sqrt(8 + 4 sqrt 2) e^(3 Delta / 4): a bound on ||P||_2 for every n (masked; docs)."""
    return (8 + 4 * arb(2).sqrt()).sqrt() * (3 * Delta / 4).exp()


# --------------------------------------------------------------------------------------------------
# Per-head inner bounds and their combination


@dataclass
class HeadTerms:
    """The per-head scalars of the bound (arb): t2, W, Delta."""

    t2: arb
    W: arb
    Delta: arb


def _smaller(*xs: arb) -> arb:
    """Return the argument with the smallest upper end (each is a valid bound, so the least is too)."""
    return min(xs, key=rg.up)


def head_terms(hc: HeadConstants, R: float, n: int, causal: bool, rope: bool) -> HeadTerms:
    """Return t2 (bound on ||T2||), W (bound on the key-side score gradient) and Delta (score spread).

    Each is the least of several valid bounds: the homogeneous forms ``||[y, 1] M|| <= ||M|| sqrt(R^2 + 1)``
    with the proved norms of the joint matrices, and the product forms ``||q_i|| / sqrt(e) <= R wq + bq``,
    ``||k_j|| <= R wk + bk`` (rotations are orthogonal, so these hold at every offset).
    """
    Ra = arb(R)
    Rh = (Ra * Ra + 1).sqrt()  # ||[y, 1]|| <= sqrt(R^2 + 1)
    qn = Ra * arb(hc.wq) + arb(hc.bq)  # >= ||q_i|| / sqrt(e)
    kn = Ra * arb(hc.wk) + arb(hc.bk)  # >= ||k_j||
    if not rope:
        aA, aQ, c = arb(hc.alpha_A), arb(hc.alpha_Q), arb(hc.c_norm)
        t2 = _smaller(Ra * Ra * aA, Ra * arb(hc.wq) * kn)
        W = _smaller(Ra * aA + c, aQ * Rh, qn * arb(hc.wk))
        Delta = _smaller(2 * Ra * W, 2 * qn * kn)
    else:
        ah = arb(hc.rope_alpha(n, causal))
        t2 = Ra * _smaller(ah * Rh, arb(hc.wq) * kn)
        W = _smaller(ah * Rh, qn * arb(hc.wk))
        Delta = _smaller(2 * ah * (Ra * Ra + 1), 2 * qn * kn)
    return HeadTerms(t2.upper(), W.upper(), Delta.upper())


def _combine(mc: MapConstants, inner: list[arb]) -> float:
    """Return the proved bound for the map from per-head inner bounds m_h (see module doc)."""
    with rg.precision():
        s = arb(0)
        for hc, m in zip(mc.heads, inner, strict=True):
            s += arb(hc.nu) * m
        best = rg.up(s)
        if mc.wo_norm is not None and not mc.single_head:
            q = arb(0)
            for hc, m in zip(mc.heads, inner, strict=True):
                q += (arb(hc.omega) * m) ** 2
            best = min(best, rg.up(arb(mc.wo_norm) * q.sqrt()))
        return best


@dataclass
class UpperBounds:
    """Proved upper bounds on sup over K^n of ||J(X)||_2 (floats rounded upwards).

    ``upper`` = min(sqrt_n, gap) (gap <= sqrt_n always); ``mean_field_limit`` holds for every n.
    ``recalled_sqrt_n`` is PAPERS.md's recalled formula evaluated with our constants (for comparison,
    bias-free maps only; None otherwise).
    """

    n: int
    radius: float
    sqrt_n: float
    gap: float
    mean_field_limit: float
    upper: float
    recalled_sqrt_n: float | None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, float | None]:
        return {"sqrt_n": self.sqrt_n, "gap": self.gap, "mean_field_limit": self.mean_field_limit,
                "recalled_sqrt_n": self.recalled_sqrt_n}  # fmt: skip


def upper_bounds(amap: AttentionMap, tset: TokenSet, n: int, mc: MapConstants | None = None) -> UpperBounds:
    """Return the proved upper bounds on the Lipschitz constant of ``amap`` over ``tset``'s K^n.

    What is proved: for every X in K^n, ``||J(X)||_2 <= upper`` (operator norm for the Frobenius norm on
    n x d inputs and outputs), for the real-number map defined by the float64 weights. The formulas are
    evaluated at the radius ``R (1 + 2^-40)`` (rounded up), so the bound holds on the ball of that radius:
    this covers a float R that lies below the real radius it stands for (``R = fl(sqrt(d))`` for the
    LayerNorm set) and points that the float64 projection leaves a few ulps outside the ball.
    """
    import time

    t0 = time.perf_counter()
    if mc is None:
        mc = map_constants(amap, max_offset=min(n, 64))
    with rg.precision():
        R = rg.up(arb(tset.radius) * (1 + arb(2) ** -40))
    causal = amap.causal
    sq, gp, mf = [], [], []
    with rg.precision():
        sqrt_n = arb(n).sqrt()
        for hc in mc.heads:
            ht = head_terms(hc, R, n, causal, mc.rope)
            RW = arb(R) * ht.W
            sq.append(sqrt_n * (1 + RW) + ht.t2)
            rho, kappa = attention_matrix_bounds(n, ht.Delta, causal)
            t3a, t3b = RW * kappa.sqrt(), 2 * RW * rho
            t3 = t3a if rg.up(t3a) <= rg.up(t3b) else t3b
            gp.append(rho + ht.t2 + t3)
            # n-independent: RoPE constants over every offset
            hl = head_terms(replace(hc, alpha_hat={}), R, n, causal, mc.rope) if mc.rope else ht
            RWl = arb(R) * hl.W
            if causal:
                rl = _masked_rho_limit(hl.Delta)
                mf.append(rl + hl.t2 + 2 * RWl * rl)
            else:
                rl = (hl.Delta / 2).exp()
                mf.append(rl + hl.t2 + RWl * rl)
        b_sq, b_gp, b_mf = _combine(mc, sq), _combine(mc, gp), _combine(mc, mf)
    recalled = recalled_sqrt_n_bound(amap, mc, tset.radius, n)
    return UpperBounds(n, tset.radius, b_sq, min(b_gp, b_sq), b_mf, min(b_gp, b_sq), recalled, time.perf_counter() - t0)


def recalled_sqrt_n_bound(amap: AttentionMap, mc: MapConstants, R: float, n: int) -> float | None:
    """Return PAPERS.md's recalled ``sum_h sqrt(3) ||V_h|| sqrt(||A_h||^2 R^4 (4n+1) + n)`` (float).

    Only for maps without biases in Q and K and without RoPE (the paper's setting); None otherwise.
    """
    if mc.rope or any(float(t.abs().max()) != 0.0 for t in (amap.b_Q, amap.b_K)):
        return None
    if amap.ln_beta is not None and float(amap.ln_beta.abs().max()) != 0.0:
        return None
    return float(sum(math.sqrt(3) * hc.nu * math.sqrt(hc.alpha_A**2 * R**4 * (4 * n + 1) + n) for hc in mc.heads))


# --------------------------------------------------------------------------------------------------
# The data-dependent bound at one input


def _folded_float(amap: AttentionMap) -> dict[str, torch.Tensor]:
    """Return float64 folded weights (LayerNorm's C Gamma into W, beta into b) for the local bound."""
    out = {}
    for name in ("Q", "K", "V"):
        W, b = getattr(amap, f"W_{name}"), getattr(amap, f"b_{name}")
        if amap.ln_gamma is not None:
            GW = amap.ln_gamma[None, :, None] * W
            b = b + torch.einsum("d,hde->he", amap.ln_beta, W)
            W = GW - GW.mean(dim=1, keepdim=True)
        out[f"W_{name}"], out[f"b_{name}"] = W, b
    return out


def _centred_distances(P: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
    """Return ``D [n, n]`` with ``D_ij = ||Z_j - (P Z)_i||``, computed from the differences themselves.

    No ``E||z||^2 - ||E z||^2`` identity (whose cancellation can lose all relative accuracy when the
    attention concentrates); rows are processed in blocks so the [block, n, dim] temporary stays small.
    """
    n, dz = Z.shape
    Zbar = P @ Z
    out = torch.empty(n, n, dtype=Z.dtype)
    block = max(1, (1 << 21) // max(1, n * dz))
    for i0 in range(0, n, block):
        out[i0 : i0 + block] = (Z[None, :, :] - Zbar[i0 : i0 + block, None, :]).norm(dim=-1)
    return out


LOCAL_ABS_MARGIN = 2.0**-40  # absolute margin of the float64 local bound, per unit of n d times its data scale


def local_upper_bound(amap: AttentionMap, X: torch.Tensor, mc: MapConstants) -> float:
    """Return an upper bound on ||J(X)||_2 at this one input X [n, d], from X's own attention pattern.

    Per head: ``||P(X)||_2 + max_i t2_i + t3`` with the actual variances ``Var_i = sum_j P_ij ||y_j -
    ybar_i||^2``, t2_i <= sqrt(Var_i) sqrt(sum_j P_ij ||a_ij - abar_i||^2) (no RoPE; with RoPE the
    uncentred ``||W_Q|| ||k_j||``), and t3 the smaller of ``||(P_ij ||y_j - ybar_i|| ||w_ij||)_ij||_2`` and
    ``sqrt(max_j sum_i P_ij Var_i ||w_ij||^2)``; combined with the proved weight norms as in the set
    bounds.

    Rounding (float64, not arb): every centred quantity is computed from the differences
    ``z_j - zbar_i`` themselves, so its square root is off by at most about ``n d 2^-53`` times the
    *uncentred* scale (``max ||y_j||``, ``max ||a_j||``, ``max ||w_i||``), not relative to its own,
    possibly tiny, value. The per-head sum is therefore multiplied by LOCAL_SAFETY = 1 + 1e-6 (for the
    relative errors of P, its LAPACK norm and the sums) and increased by ``2^-40 n d`` times
    ``R_X (max_j ||a_j|| + sqrt(n) max_i ||w_i||)`` (R_X = max_j ||y_j||), 2^13 times those absolute
    errors. A numerically safe bound, not an arb-certified one.
    """
    fw = _folded_float(amap)
    X = X.detach().to(torch.float64)
    if amap.ln_gamma is not None:
        X = X - X.mean(dim=-1, keepdim=True)  # the map depends on C u only
    with torch.no_grad():
        P_all = amap.pattern(X)  # [H, n, n]
    n = X.shape[0]
    e = amap.d_head
    R_X = float(X.norm(dim=-1).max())
    inner = []
    for h in range(len(mc.heads)):
        P = P_all[h]
        WQ, WK = fw["W_Q"][h], fw["W_K"][h]
        q = X @ WQ + fw["b_Q"][h]
        k = X @ WK + fw["b_K"][h]
        dist = _centred_distances(P, X)  # [i, j] ||y_j - ybar_i||
        var = (P * dist**2).sum(-1)
        rho = float(torch.linalg.matrix_norm(P, ord=2))
        if amap.rotary_dim is None:
            # a_ij = k_j W_Q^T / sqrt(e); ||(k_j - kbar_i) W_Q^T||^2 / e = ||(k_j - kbar_i) F||^2, F F^T = W_Q^T W_Q / e
            lam, U = torch.linalg.eigh(WQ.T @ WQ / e)
            kk = k @ (U * lam.clamp_min(0).sqrt()[None, :])
            a_spread = (P * _centred_distances(P, kk) ** 2).sum(-1)
            t2 = float((var * a_spread).sqrt().max())
            a_max = float(kk.norm(dim=-1).max())
            w_norm = (q @ WK.T).norm(dim=-1) / math.sqrt(e)  # ||w_i||, the same for every j
        else:
            nq = float(torch.linalg.matrix_norm(WQ, ord=2))
            nk = float(torch.linalg.matrix_norm(WK, ord=2))
            a_norm2 = (k.norm(dim=-1) * nq / math.sqrt(e)) ** 2  # >= ||a_ij||^2 at every offset
            t2 = float((var.sqrt() * (P * a_norm2[None, :]).sum(-1).sqrt()).max())
            a_max = float(a_norm2.max().sqrt())
            w_norm = nk * q.norm(dim=-1) / math.sqrt(e)
        D = P * dist * w_norm[:, None]
        t3a = float(torch.linalg.matrix_norm(D, ord=2))
        t3b = float(((P * (var * w_norm**2)[:, None]).sum(0)).max().sqrt())
        margin = LOCAL_ABS_MARGIN * n * X.shape[1] * R_X * (a_max + math.sqrt(n) * float(w_norm.max()))
        inner.append(arb((rho + t2 + min(t3a, t3b)) * LOCAL_SAFETY + margin))
    return _combine(mc, inner)


def recalled_data_bound(amap: AttentionMap, X: torch.Tensor, mc: MapConstants) -> float:
    """Return PAPERS.md's recalled data-dependent ``sum_h ||V_h|| sqrt(R_h^2 r^2 (n+1) + n)`` at X.

    R_h = max_i ||A_h x_i|| (A_h = W_Q W_K^T / sqrt(e), LayerNorm folded in), r = the token cloud's
    diameter. Evaluated in float64, for comparison only.
    """
    Xc = X.detach().to(torch.float64)
    if amap.ln_gamma is not None:
        Xc = Xc - Xc.mean(dim=-1, keepdim=True)
    A = amap.qk_matrices()
    r = float(torch.cdist(Xc, Xc).max())
    n = Xc.shape[0]
    total = 0.0
    for h, hc in enumerate(mc.heads):
        Rh = float(max((Xc @ A[h]).norm(dim=-1).max(), (Xc @ A[h].T).norm(dim=-1).max()))
        total += hc.nu * math.sqrt(Rh**2 * r**2 * (n + 1) + n)
    return total
