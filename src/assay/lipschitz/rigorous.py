"""Rigorous upper bounds on spectral norms of weight matrices, in arb ball arithmetic (python-flint).

The weights stored in float64 are exact real numbers; every product, sum, square root, exponential
and cosine below is an arb ball that contains the exact real result, so a number returned by these
functions is a *proved* upper bound on the real quantity, rounding included.

The spectral norm is certified, not estimated: to show ``||M||_2^2 <= t`` we show that the symmetric
matrix ``S = t I - H`` is positive definite, where H is a (small) symmetric matrix with the same
largest eigenvalue as ``M^T M``. Positive definiteness is checked by congruence and Gershgorin: with Q
the (floating-point, inexact) eigenvectors of mid(S), the arb matrix ``B = Q^T S Q`` is nearly
diagonal; if every Gershgorin disc of B lies in (0, inf) then B is positive definite, so Q is
nonsingular (B x = 0 for Q x = 0) and S = Q^-T B Q^-1 is positive definite too (Sylvester's law of
inertia). Nothing about Q's accuracy is assumed; a poor Q only makes the check fail, never lie.

Low-rank products ``M = X Y^T`` (X [m, e], Y [k, e], e small, as in ``W_Q W_K^T``) are handled in e x e:
with ``X^T X + eps I = L L^T`` (a Cholesky factor computed in arb), the nonzero eigenvalues of
``M^T M = Y X^T X Y^T`` are those of ``X^T X Y^T Y``, and ``L^T (Y^T Y) L`` has the same largest eigenvalue
as ``(X^T X + eps I) Y^T Y``, which is >= the one we want (eps >= 0 only loosens the bound).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import numpy as np
from flint import arb, arb_mat, ctx

PREC = 128  # bits of arb working precision; inputs are exact float64, so balls stay tiny


@contextlib.contextmanager
def precision(bits: int = PREC) -> Iterator[None]:
    """Run a block with flint's working precision set to ``bits`` (restored afterwards)."""
    old = ctx.prec
    ctx.prec = bits
    try:
        yield
    finally:
        ctx.prec = old


def to_arb(a: np.ndarray | Sequence) -> arb_mat:
    """Return a float64 array (1-D as a column, or 2-D) as an exact arb matrix."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    return arb_mat(a.tolist())


def mid(M: arb_mat) -> np.ndarray:
    """Return the midpoints of an arb matrix as a float64 array (approximate; for heuristics only)."""
    return np.array([[float(M[i, j].mid()) for j in range(M.ncols())] for i in range(M.nrows())])


def up(x: arb) -> float:
    """Return a float64 >= every real number in the ball ``x`` (the upper end, rounded upwards)."""
    hi = x.upper()
    f = float(hi.mid())
    while not (arb(f) >= hi):
        f = math.nextafter(f, math.inf)
    return f


def exact(x: float) -> arb:
    """Return the float ``x`` as an exact (radius 0) arb ball."""
    return arb(float(x))


def hi(x: arb) -> arb:
    """Return the upper end of ``x`` as an exact arb ball (for monotone formulas fed upper bounds)."""
    return x.upper()


def certify_pd(S: arb_mat) -> bool:
    """Return True only if the symmetric matrix enclosed by ``S`` is certainly positive definite.

    Congruence by the approximate eigenvectors of mid(S), then Gershgorin discs (see module doc).
    False means "not certified", not "indefinite".
    """
    k = S.nrows()
    Sm = mid(S)
    Sm = (Sm + Sm.T) / 2
    if not np.all(np.isfinite(Sm)):
        return False
    w, Q = np.linalg.eigh(Sm)
    if w[0] <= 0:
        return False
    Qa = to_arb(Q)
    B = Qa.transpose() * S * Qa
    for i in range(k):
        off = arb(0)
        for j in range(k):
            if j != i:
                off += abs(B[i, j])
        if not (B[i, i] - off > 0):
            return False
    return True


def _lambda_max_upper(H: arb_mat) -> arb:
    """Return t with a proof that lambda_max(H) <= t, for a symmetric (arb-enclosed) matrix H."""
    k = H.nrows()
    Hm = mid(H)
    Hm = (Hm + Hm.T) / 2
    lam = float(np.linalg.eigvalsh(Hm)[-1]) if k else 0.0
    scale = max(float(np.abs(Hm).max()) if k else 0.0, 1e-300)
    for rel in (1e-12, 1e-9, 1e-6, 1e-3, 1e-1, 1.0):
        t = arb(max(lam, 0.0) + rel * scale)
        if certify_pd(_shift(H, t)):
            return t
    # Gershgorin on H itself: always a valid (if loose) bound.
    best = 0.0
    for i in range(k):
        r = H[i, i]
        for j in range(k):
            if j != i:
                r += abs(H[i, j])
        best = max(best, up(r))
    return arb(best)


def _shift(H: arb_mat, t: arb) -> arb_mat:
    """Return t I - H."""
    S = -H
    for i in range(H.nrows()):
        S[i, i] = S[i, i] + t
    return S


def gram(X: arb_mat) -> arb_mat:
    """Return X^T X."""
    return X.transpose() * X


def norm_upper(M: arb_mat) -> arb:
    """Return a proved upper bound on the spectral norm ||M||_2 (exact arb ball, radius 0)."""
    if M.nrows() == 0 or M.ncols() == 0:
        return arb(0)
    H = gram(M) if M.ncols() <= M.nrows() else M * M.transpose()
    return _sqrt_up(_lambda_max_upper(H))


def _sqrt_up(t: arb) -> arb:
    """Return an exact ball >= sqrt(max(t, 0)) for every point of t."""
    u = up(t)
    return arb(0) if u <= 0 else arb(u).sqrt().upper()


def cholesky(G: arb_mat) -> arb_mat | None:
    """Return a lower-triangular L with L L^T = G (arb enclosure), or None if a pivot is not certainly > 0."""
    k = G.nrows()
    L = arb_mat(k, k)
    for j in range(k):
        s = G[j, j]
        for p in range(j):
            s -= L[j, p] * L[j, p]
        if not (s > 0):
            return None
        d = s.sqrt()
        L[j, j] = d
        for i in range(j + 1, k):
            s = G[i, j]
            for p in range(j):
                s -= L[i, p] * L[j, p]
            L[i, j] = s / d
    return L


class LowRankFactor:
    """A factor X [m, e] of products ``X R Y^T`` whose norms are certified in e x e arithmetic.

    Holds ``L`` with ``L L^T = X^T X + eps I`` (eps = 0 when X^T X is certainly positive definite).
    """

    def __init__(self, X: arb_mat) -> None:
        G = gram(X)
        self.e = G.nrows()
        self.gram = G
        L = cholesky(G)
        eps = arb(0)
        if L is None:
            Gm = mid(G)
            eps = arb(max(float(np.trace(Gm)) / max(self.e, 1), 1e-300) * 2.0**-40)
            L = cholesky(_add_diag(G, eps))
            if L is None:  # cannot happen for a PSD G plus a positive ridge, unless balls are huge
                raise ArithmeticError("Cholesky of a ridged Gram matrix failed")
        self.L = L
        self.eps = eps


def _add_diag(G: arb_mat, eps: arb) -> arb_mat:
    G2 = G * 1
    for i in range(G2.nrows()):
        G2[i, i] = G2[i, i] + eps
    return G2


def product_norm_upper(X: LowRankFactor, Y_gram: arb_mat, R: arb_mat | None = None) -> arb:
    """Return a proved upper bound on ``||X R Y^T||_2`` from X's factor and ``Y_gram = Y^T Y``.

    ``R`` (e x e, default I) sits between the factors, e.g. a RoPE rotation. Uses
    ``||X R Y^T||^2 = lambda_max(X^T X R Y^T Y R^T) <= lambda_max(L^T R Y^T Y R^T L)``.
    """
    L = X.L
    inner = Y_gram if R is None else R * Y_gram * R.transpose()
    H = L.transpose() * inner * L
    return _sqrt_up(_lambda_max_upper(H))


def vector_norm_upper(v: arb_mat) -> arb:
    """Return a proved upper bound on the Euclidean norm of a column (or any) arb matrix."""
    s = arb(0)
    for i in range(v.nrows()):
        for j in range(v.ncols()):
            s += v[i, j] * v[i, j]
    return s.sqrt().upper()
