"""Lower bounds on the Lipschitz constant over K^n: projected gradient ascent on ||J(X)||_2.

Every value reported is ``||J(X) v||`` for a point X in K^n and a unit vector v, computed in float64,
so it is a lower bound on ``sup_{X in K^n} ||J(X)||_2`` (up to rounding), however the search went.

Seeds (each perturbed by a tiny seeded noise so that no symmetry stalls the ascent):

- ``random``: tokens uniform on the boundary sphere of K;
- ``text``: real-text inputs, projected onto K;
- ``eigen+`` / ``eigen-``: the paper's construction from the symmetric part of a head's A: x_1 = R u,
  the rest R u / 2 (u the top eigenvector), or x_1 = -R u, the rest R u (u the bottom eigenvector);
  every follower attends to x_1, so moving x_1 moves n - 1 outputs;
- ``split-m``: mass splitting, m duplicated copies of the hub R u followed by n - m copies of R u / 2;
- ``tie``: two keys +-R u that every query scores equally, with u chosen along the head's largest value
  direction: the softmax is at its most sensitive for every query at once; ``tie2``: tokens alternating
  +-R u with u on the null cone of A (u A u^T = 0), so every token is a query tied between the two.

The ascent step moves every token by at most ``eta R`` along the gradient of ``<u, J(X) v>`` (u, v the
current top singular pair; the gradient of ||J|| where the top singular value is simple), projects
back onto K, and is accepted only if the estimate improves (eta then grows; otherwise it halves).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from assay.lipschitz.jacobian import jacobian_norm, sigma_and_gradient
from assay.lipschitz.maps import AttentionMap
from assay.lipschitz.sets import TokenSet

Tensor = torch.Tensor


@dataclass
class LowerBound:
    """The best point found. ``value`` = ||J(X) v|| at ``X`` (a lower bound on the sup over K^n).

    ``local`` is the converged power-iteration norm at X (its residual in ``residual``); ``seed`` names the
    seed the best point came from; ``trace`` lists (seed, start value, end value) per ascent run.
    """

    value: float
    X: Tensor
    seed: str
    local: float
    residual: float
    trace: list[tuple[str, float, float]] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0


def _head_order(amap: AttentionMap, k: int) -> list[int]:
    A = amap.qk_matrices()
    V = amap.ov_matrices()
    score = [float(torch.linalg.matrix_norm(A[h], ord=2) * torch.linalg.matrix_norm(V[h], ord=2))
             for h in range(amap.n_heads)]  # fmt: skip
    return sorted(range(amap.n_heads), key=lambda h: -score[h])[:k]


def construction_seeds(amap: AttentionMap, tset: TokenSet, n: int, heads: int = 2) -> list[tuple[str, Tensor]]:
    """Return the structured seeds (eigenvector constructions, mass splitting, ties), each a point of K^n."""
    R = tset.radius
    A_all, V_all = amap.qk_matrices(), amap.ov_matrices()
    out: list[tuple[str, Tensor]] = []
    for h in _head_order(amap, heads):
        A, V = A_all[h], V_all[h]
        S = (A + A.T) / 2
        evals, evecs = torch.linalg.eigh(S)
        top, bot = evecs[:, -1], evecs[:, 0]
        tag = f"h{h}" if amap.n_heads > 1 else ""
        X = (R * top / 2).expand(n, -1).clone()
        X[0] = R * top
        out.append((f"eigen+{tag}", X))
        X = (R * bot).expand(n, -1).clone()
        X[0] = -R * bot
        out.append((f"eigen-{tag}", X))
        for m in sorted({2, max(2, n // 4)}):
            if m < n:
                X = (R * top / 2).expand(n, -1).clone()
                X[:m] = R * top
                out.append((f"split-{m}{tag}", X))
        if n >= 2 and float(evals[-1]) > 0 > float(evals[0]):
            # u on the null cone of A (u A u^T = 0): keys +-R u are tied for queries +-R u themselves
            lp, lm = float(evals[-1]), float(-evals[0])
            u = (lm / (lp + lm)) ** 0.5 * top + (lp / (lp + lm)) ** 0.5 * bot
            X = (R * u).expand(n, -1).clone()
            X[1::2] = -R * u
            out.append((f"tie2{tag}", X))
        if n >= 3:
            Ua, Sa, Vha = torch.linalg.svd(A)
            z = Ua[:, 0]  # query direction with the largest score gradient z A
            g = z @ A
            Uv, Sv, Vhv = torch.linalg.svd(V)
            u = Uv[:, 0] - (Uv[:, 0] @ g) / (g @ g).clamp_min(1e-300) * g  # largest value change, tied scores
            if float(u.norm()) > 1e-12:
                u = u / u.norm()
                X = (R * z).expand(n, -1).clone()
                X[0], X[1] = R * u, -R * u
                out.append((f"tie{tag}", X))
    return [(name, tset.project(X)) for name, X in out]


def ascend(
    amap: AttentionMap, tset: TokenSet, X0: Tensor, steps: int, eta: float = 0.05, seed: int = 0,
    v0: Tensor | None = None,
) -> tuple[float, float, Tensor, Tensor]:
    """Run projected gradient ascent on ||J(X)|| from X0; return (start, value, X, v).

    ``start`` is the estimate at the projected X0; ``value`` = ||J(X) v|| at the best point, with v a
    unit vector: a lower bound on ||J(X)|| and on the sup over K^n. Stops after ``steps`` accepted or
    rejected steps, or when four halvings of the step in a row find no improvement, twice running.
    """
    X = tset.project(X0.detach().to(torch.float64))
    est = jacobian_norm(amap, X, tol=1e-4, max_iter=30, seed=seed, v0=v0)
    s, v = est.value, est.vector
    start = s
    R = tset.radius
    stalls = 0
    for t in range(steps):
        if t and t % 15 == 0:  # re-converge v, which the cheap warm starts may have left behind
            est = jacobian_norm(amap, X, tol=1e-6, max_iter=40, v0=v)
            if est.value >= s:
                s, v = est.value, est.vector
        _, g, _ = sigma_and_gradient(amap, X, v)
        gmax = float(g.norm(dim=-1).max())
        if gmax == 0.0:
            break
        for _ in range(4):
            Xn = tset.project(X + (eta * R / gmax) * g)
            en = jacobian_norm(amap, Xn, tol=1e-5, max_iter=3, v0=v)
            if en.value > s:
                X, v, s = Xn, en.vector, en.value
                eta = min(eta * 1.5, 1.0)
                stalls = 0
                break
            eta *= 0.5
        else:
            stalls += 1
            if stalls >= 2:
                break
    return start, s, X, v


def lower_bound(
    amap: AttentionMap,
    tset: TokenSet,
    n: int,
    text: Tensor | None = None,
    steps: int = 60,
    seed: int = 0,
    structured: bool = True,
    n_random: int = 2,
) -> LowerBound:
    """Return the best lower bound on sup over K^n of ||J(X)||_2 found by multi-seed projected ascent.

    Each seed gets a short ascent (``steps // 4`` steps); the two best then get ``steps`` more. With
    ``structured=False`` only the random and text seeds are used.
    """
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    seeds: list[tuple[str, Tensor]] = [(f"random{i}", tset.random(n, gen)) for i in range(n_random)]
    if text is not None:
        seeds.append(("text", tset.project(text.to(torch.float64))))
    if structured:
        seeds += construction_seeds(amap, tset, n)
    noisy = []
    for name, X in seeds:
        noise = torch.randn(X.shape, generator=gen, dtype=torch.float64) * (1e-3 * tset.radius / X.shape[1] ** 0.5)
        noisy.append((name, tset.project(X + noise)))
    trace: list[tuple[str, float, float]] = []
    runs = []
    short = max(1, steps // 4)
    for name, X in noisy:
        start, s, Xb, v = ascend(amap, tset, X, short, seed=seed)
        trace.append((name, start, s))
        runs.append((s, name, Xb, v))
    runs.sort(key=lambda r: -r[0])
    best = runs[0]
    for s0, name, X, v0 in runs[:2]:
        _, s, Xb, v = ascend(amap, tset, X, steps, seed=seed, v0=v0)
        trace.append((name + "+", s0, s))
        if s > best[0]:
            best = (s, name, Xb, v)
    value, name, X, v = best
    final = jacobian_norm(amap, X, tol=1e-9, max_iter=3000, v0=v)
    return LowerBound(max(value, final.value), X, name, final.value, final.residual, trace,
                      steps, time.perf_counter() - t0)  # fmt: skip
