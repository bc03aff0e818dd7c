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

import math
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
            z = _tie_query(A, bot)
            g = z @ A  # the score gradient a query at R z puts on every key
            Uv, Sv, Vhv = torch.linalg.svd(V)
            u = Uv[:, 0] - (Uv[:, 0] @ g) / (g @ g).clamp_min(1e-300) * g  # largest value change, tied scores
            if float(u.norm()) > 1e-12:
                u = u / u.norm()
                X = (R * z).expand(n, -1).clone()
                X[0], X[1] = R * u, -R * u
                out.append((f"tie{tag}", X))
                if amap.rope or float(amap.b_Q[h].abs().max()) > 0:
                    out.append((f"tie-pos{tag}", _positional_tie(amap, tset, n, h, u)))
                    out.append((f"tie-rot{tag}", _coherent_tie(amap, tset, n, h, u)))
    return [(name, tset.project(X)) for name, X in out]


def _tie_query(A: Tensor, bot: Tensor) -> Tensor:
    """Return a unit query direction z with a large score gradient ||z A|| and z A z^T < 0.

    A query at R z then scores both tied keys (score 0) above itself (score R^2 z A z^T < 0), so its
    attention splits evenly between them. Candidates mix the top left singular vectors of A with the
    bottom eigenvector of its symmetric part; without a negative direction, the top singular vector.
    """
    Ua, _, _ = torch.linalg.svd(A)
    scale = float(torch.linalg.matrix_norm(A, ord=2))
    best, best_val = Ua[:, 0], -1.0
    for k in range(min(4, A.shape[0])):
        for theta in torch.linspace(0, math.pi / 2, 17, dtype=torch.float64):
            z = torch.cos(theta) * Ua[:, k] + torch.sin(theta) * bot
            if float(z.norm()) < 1e-12:
                continue
            z = z / z.norm()
            if float(z @ A @ z) < -1e-3 * scale:
                val = float((z @ A).norm())
                if val > best_val:
                    best, best_val = z, val
    return best


def _positional_tie(amap: AttentionMap, tset: TokenSet, n: int, h: int, u: Tensor) -> Tensor:
    """Return keys +-R u at positions 0, 1 and, at every later position i, a query that ties them.

    With RoPE (or a query bias) the tie condition depends on the position: query i ties the keys when
    ``[y_i, 1] W^_Q Rot_i (kt_0 - kt_1)^T = 0`` (kt: rotated keys). Each query is the direction of largest
    ``||y W_Q||`` moved onto that hyperplane, with the sign that puts more attention on the two keys.
    """
    R, d = tset.radius, amap.d_model
    X = torch.zeros(n, d, dtype=torch.float64)
    X[0], X[1] = R * u, -R * u
    X = tset.project(X)
    WQh, WKh = amap._WQh[h], amap._WKh[h]  # [d+1, e], LayerNorm folded, 1/sqrt(e) in WQh
    rot = amap._rotations(n) if amap.rope else torch.eye(amap.d_head, dtype=torch.float64).expand(n, -1, -1)
    hat = torch.cat([X, torch.ones(n, 1, dtype=torch.float64)], dim=1)
    kt = torch.einsum("pi,ie,pef->pf", hat[:2], WKh, rot[:2])
    top = torch.linalg.svd(WQh[:d])[0][:, 0]  # largest ||y W_Q||
    for i in range(2, n):
        c = WQh @ rot[i] @ (kt[0] - kt[1])  # [d+1]: tie iff y . c[:d] + c[d] = 0
        cd, nc = c[:d], float(c[:d] @ c[:d])
        z = top - (top @ cd) / nc * cd if nc > 0 else top
        z = R * z / z.norm().clamp_min(1e-300)
        cands = [z]
        if nc > 0:
            z = z - (z @ cd + c[d]) / nc * cd  # onto the tie hyperplane
            cands = [z, -z - 2 * c[d] / nc * cd]  # its mirror image, also on the hyperplane
        best, best_w = cands[0], -1.0
        for cand in cands:
            Xc = X.clone()
            Xc[i] = cand
            Xc = tset.project(Xc)
            w = float(amap.pattern(Xc[: i + 1])[h, i, :2].sum())
            if w > best_w:
                best, best_w = Xc[i], w
        X[i] = best
    return X


def _coherent_tie(amap: AttentionMap, tset: TokenSet, n: int, h: int, u: Tensor) -> Tensor:
    """Return keys +-R u at positions 0, 1 and queries that all tie them *coherently*.

    Scores are ``s_ij = qt_i . kt_j`` with ``qt_i = [y_i, 1] W^_Q Rot_i`` and ``kt_j = [y_j, 1] W^_K Rot_j``
    (RoPE: Rot_p; otherwise Rot = I). Every query is solved for the same rotated query ``t q*``, with q*
    orthogonal to ``kt_0 - kt_1`` (a tie) and along the direction that moves the scores most when a key
    moves, and t as large as the ball allows: then the n - 2 queries all react to a key in the same
    direction, and the Jacobian's column for that key grows like sqrt(n - 2).
    """
    R, d = tset.radius, amap.d_model
    X = torch.zeros(n, d, dtype=torch.float64)
    X[0], X[1] = R * u, -R * u
    X = tset.project(X)
    WQh, WKh = amap._WQh[h], amap._WKh[h]  # [d+1, e], LayerNorm folded, 1/sqrt(e) in WQh
    e = amap.d_head
    rot = amap._rotations(n) if amap.rope else torch.eye(e, dtype=torch.float64).expand(n, -1, -1)
    hat = torch.cat([X[:2], torch.ones(2, 1, dtype=torch.float64)], dim=1)
    kt = torch.einsum("pi,ie,pef->pf", hat, WKh, rot[:2])
    diff = kt[0] - kt[1]
    M = rot[1] @ WKh[:d].T  # [e, d]: how qt . kt_1 moves with y_1
    q = torch.linalg.svd(M)[0][:, 0]
    q = q - (q @ diff) / (diff @ diff).clamp_min(1e-300) * diff
    q = q / q.norm().clamp_min(1e-300)
    pinv = torch.linalg.pinv(WQh[:d])  # [e, d]: y = target pinv solves y W_Q = target (full rank e <= d)
    for i in range(2, n):
        a = (q @ rot[i].T) @ pinv  # y_i = t a - b reaches qt_i = t q
        b = WQh[d] @ pinv
        # the largest t >= 0 with ||t a - b|| <= R
        aa, ab, bb = float(a @ a), float(a @ b), float(b @ b)
        disc = ab * ab - aa * (bb - R * R)
        t = (ab + disc**0.5) / aa if aa > 0 and disc >= 0 else 0.0
        X[i] = t * a - b
    return tset.project(X)


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
