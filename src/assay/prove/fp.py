"""Rigorous error terms for float64 arithmetic, so the prover never claims falsely before checking.

Every quantity the prover computes in floating point comes with an upper bound on its distance to the
real number it stands for. The rules used here (round-to-nearest IEEE double, unit roundoff
``U = 2**-53``):

- one operation ``+ - * /`` or ``sqrt``: relative error at most ``U`` (IEEE 754, correctly rounded);
- a dot product / matrix product of inner length ``n``, any summation order, with or without FMA:
  ``|fl(a.b) - a.b| <= gamma(n) * sum |a_i b_i| <= gamma(n) * |a|_2 |b|_2`` (Higham, *Accuracy and
  Stability of Numerical Algorithms*, eq. 3.5; the second step is Cauchy-Schwarz);
- a sum of ``n`` non-negative numbers: relative error at most ``gamma(n)``;
- ``exp``: we *assume* the library's exp is within 64 ulp (it is documented to be within 1-4 ulp
  for glibc and numpy's SIMD kernels); ``erf`` within ``1e-14`` absolute; ``cos``/``sin`` within
  ``4 * U`` absolute for arguments below ``2**20``. These are the only assumptions about libraries;
  the independent checker (``check.py``) makes none: it redoes everything in arb ball arithmetic.

Error bounds are themselves computed in floating point; :func:`up` turns such a computed bound into a
rigorous one by inflating it by far more than its own rounding error and adding ``TINY``, which
absorbs any underflow to subnormals.
"""

from __future__ import annotations

import math

import numpy as np

U = 2.0**-53
TINY = 2.0**-900
REL_EXP = 64 * 2.0**-52
ABS_ERF = 1e-14


def gamma(n: int) -> float:
    """Higham's gamma_n = n U / (1 - n U): the relative error bound of n chained roundings."""
    n = int(n) + 2
    return n * U / (1.0 - n * U)


def up(x, n: int = 8):
    """A rigorous upper bound of a non-negative quantity computed in float with at most n roundings.

    ``x`` is the float result (scalar or array, entries >= 0). Inflating by ``1 + 4 gamma(n)`` covers
    the relative rounding error of up to n operations on non-negative terms; ``TINY`` covers underflow.
    """
    m = n + 2
    return x * (1.0 + 4.0 * m * U / (1.0 - m * U)) + TINY


def down(x, n: int = 8):
    """A rigorous lower bound of a non-negative quantity computed in float with at most n roundings."""
    return np.maximum(x * (1.0 - 4.0 * gamma(n)) - TINY, 0.0) if isinstance(x, np.ndarray) else max(
        x * (1.0 - 4.0 * gamma(n)) - TINY, 0.0
    )


def next_down(x):
    """The float below x (a bound for x - rounding of the last operation)."""
    return np.nextafter(x, -np.inf)


def next_up(x):
    """The float above x."""
    return np.nextafter(x, np.inf)


def sub_down(a: float, b: float) -> float:
    """A float <= a - b (exact reals a, b given as floats)."""
    return float(np.nextafter(a - b, -np.inf))


def row_norms(A: np.ndarray) -> np.ndarray:
    """Upper bounds on the Euclidean norms of A's rows (last axis)."""
    return up(np.sqrt(np.einsum("...i,...i->...", A, A)), A.shape[-1] + 4)


def col_norms(A: np.ndarray) -> np.ndarray:
    """Upper bounds on the Euclidean norms of A's columns (2-D A)."""
    return up(np.sqrt(np.einsum("ij,ij->j", A, A)), A.shape[0] + 4)


def frob(A: np.ndarray) -> float:
    """An upper bound on the Frobenius norm of A."""
    return float(up(math.sqrt(float(np.einsum("ij,ij->", A, A))) if A.size else 0.0, A.size + 4))


def matmul(A: np.ndarray, B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (fl(A @ B), E) with ``|A @ B - fl(A @ B)| <= E`` elementwise (A, B 2-D, exact floats).

    E uses Cauchy-Schwarz: ``gamma(n) |A_i|_2 |B_:j|_2``, cheap (no second product).
    """
    C = A @ B
    n = A.shape[-1]
    E = up(gamma(n) * np.multiply.outer(row_norms(A), col_norms(B)))
    return C, E


def exp_bounds(x: np.ndarray, xerr: np.ndarray | float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds on exp(t) for every real t with |t - x| <= xerr (x floats, exact).

    Overflow gives +inf as the upper bound (still a bound); the lower bound is clamped to be >= 0.
    """
    with np.errstate(over="ignore", under="ignore"):
        lo = np.exp(x - xerr) * (1.0 - 2 * REL_EXP)
        hi = np.exp(x + xerr) * (1.0 + 2 * REL_EXP) + TINY
        # The arguments x -/+ xerr were rounded: widen by their own rounding (relative U).
        arg_lo = np.abs(x - xerr) * (2 * U)
        arg_hi = np.abs(x + xerr) * (2 * U)
        lo = np.maximum(lo * (1.0 - 2 * arg_lo) - TINY, 0.0)
        hi = hi * (1.0 + 2 * arg_hi)
    return lo, hi


def sqrt_bounds(lo: float, hi: float) -> tuple[float, float]:
    """Bounds on sqrt(t) for t in [lo, hi] (lo >= 0)."""
    return max(math.sqrt(max(lo, 0.0)) * (1 - 2 * U) - TINY, 0.0), math.sqrt(hi) * (1 + 2 * U) + TINY


def spectral_norm_upper(M: np.ndarray, squarings: int = 4) -> float:
    """A rigorous upper bound on the spectral norm of M (2-D), at cost O(k^2 (d + k log)) for k = min(M.shape).

    ``||M||_2^2 = lambda_max(G)`` with ``G = M M^T`` (or ``M^T M``), and ``lambda_max(G)^(2^s) <=
    ||G^(2^s)||_inf`` for s squarings. The floating-point error of every product is carried as a
    bound ``D_i`` on ``||G_i - fl(G_i)||_inf`` through ``||XY||_inf <= ||X||_inf ||Y||_inf``.
    """
    if M.size == 0:
        return 0.0
    if M.shape[0] > M.shape[1]:
        M = M.T
    fr = frob(M)
    if fr == 0.0:
        return 0.0
    # Scale by an exact power of two so that the repeated squarings neither overflow nor underflow.
    e = math.frexp(fr)[1]
    M = np.ldexp(M, -e)
    k, d = M.shape
    G = M @ M.T
    rn = row_norms(M)
    # |fl(G) - G| <= gamma(d) |M_i| |M_j|  =>  ||.||_inf <= gamma(d) max_i |M_i| sum_j |M_j|
    D = float(up(gamma(d) * float(rn.max()) * float(rn.sum())))
    for _ in range(squarings):
        gn = float(up(np.abs(G).sum(axis=1).max(), k + 2))
        G2 = G @ G
        # fl error of the product: gamma(k) || |G||G| ||_inf <= gamma(k) ||G||_inf^2
        D = float(up(gamma(k) * gn * gn + 2 * gn * D + D * D))
        G = G2
    gn = float(up(np.abs(G).sum(axis=1).max(), k + 2))
    bound = float(up(gn + D))
    # ||M||_2 <= bound^(1 / 2^(s+1)); the root is monotone, widen its rounding.
    return math.ldexp(float(up(bound ** (1.0 / 2 ** (squarings + 1)), 64)), e)


def mul_bounds(alo, ahi, blo, bhi):
    """Rigorous (lo, hi) of the product of intervals [alo, ahi] x [blo, bhi], elementwise."""
    P = np.stack([alo * blo, alo * bhi, ahi * blo, ahi * bhi])  # one correctly rounded op each
    return next_down(P.min(axis=0)), next_up(P.max(axis=0))


def sum_bounds(parts_lo: list, parts_hi: list | None = None):
    """Rigorous (lo, hi) of the exact sums of float arrays: lo <= sum(parts_lo), hi >= sum(parts_hi).

    The slack covers the rounding of every addition: each is at most U times a partial sum, and every
    partial sum is at most the sum of magnitudes.
    """
    if parts_hi is None:
        parts_hi = parts_lo
    n = max(len(parts_lo), len(parts_hi)) + 3
    slo = parts_lo[0] * 1.0
    mlo = np.abs(parts_lo[0]) * 1.0
    for p in parts_lo[1:]:
        slo = slo + p
        mlo = mlo + np.abs(p)
    shi = parts_hi[0] * 1.0
    mhi = np.abs(parts_hi[0]) * 1.0
    for p in parts_hi[1:]:
        shi = shi + p
        mhi = mhi + np.abs(p)
    lo = slo - up(gamma(n) * up(mlo, n), 2)
    hi = shi + up(gamma(n) * up(mhi, n), 2)
    return lo, hi
