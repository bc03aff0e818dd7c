"""Gradient-guided counterexample search for an overwhelm claim (a falsifier, never a proof).

Relaxation: each free position i carries logits z_i over the allowed tokens; its input embedding is
the convex combination softmax(z_i / temp) @ W_E[allowed], injected at the model's ``hook_embed``.
Adam minimises the relaxed margin logit[c] - max_{k != c} logit[k] at the last position. Each step the
relaxation is rounded (argmax per position) and then improved by GCG-style swaps: for every position
the top-k tokens by the gradient of the margin w.r.t. a one-hot input are tried with the real forward
pass, and the best true margin is kept while it improves. Every reported margin is the model's own
float64 forward pass on the discrete string; the relaxation only proposes candidates.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class AttackResult:
    """Best string found: ``t`` (length 1..n_free) and its TRUE margin logit[token] - max_{k != token}
    logit[k] at the last position of prefix + t + suffix, from the ordinary float64 forward pass
    (<= 0 means a counterexample). ``evaluated``: how many discrete strings were run."""

    t: list[int]
    margin: float
    evaluated: int


def _margin(logits: torch.Tensor, c: int) -> torch.Tensor:
    other = logits.clone()
    other[..., c] = -math.inf
    return logits[..., c] - other.max(dim=-1).values


def gradient_counterexample(
    model,
    prefix: Sequence[int],
    n_free: int,
    suffix: Sequence[int],
    token: int,
    allowed: Sequence[int] | None = None,
    steps: int = 40,
    restarts: int = 2,
    seed: int = 0,
    topk: int = 8,
    lr: float = 0.3,
    temp: float = 1.0,
    batch: int = 64,
) -> AttackResult:
    """Search for t (length 1..n_free over ``allowed``) minimising the true margin of ``token``.

    Returns the best discrete string found and its margin from ``model``'s ordinary forward pass in
    float64 (recomputed on that single sequence). Proves nothing: a margin > 0 only means no
    counterexample was found.
    """
    if n_free < 1:
        raise ValueError("n_free must be >= 1")
    first = next(model.parameters())
    m = model if first.dtype == torch.float64 and not model.training else copy.deepcopy(model).double().eval()
    allowed_t = torch.tensor(list(range(m.cfg.d_vocab)) if allowed is None else list(allowed), dtype=torch.long)
    A = len(allowed_t)
    W = m.W_E.detach()[allowed_t]  # [A, d]
    prefix, suffix = list(prefix), list(suffix)
    gen = torch.Generator().manual_seed(seed)
    n_eval = 0
    best_t: list[int] = []
    best = math.inf

    def true_margins(rows: torch.Tensor) -> torch.Tensor:  # rows: [n, L] indices into allowed_t
        nonlocal n_eval, best, best_t
        out = []
        with torch.no_grad():
            for i in range(0, len(rows), batch):
                toks = allowed_t[rows[i : i + batch]]
                seq = torch.cat([torch.tensor(prefix, dtype=torch.long).expand(len(toks), -1), toks,
                                 torch.tensor(suffix, dtype=torch.long).expand(len(toks), -1)], dim=1)
                out.append(_margin(m(seq)[:, -1], token))
        mg = torch.cat(out)
        n_eval += len(rows)
        j = int(mg.argmin())
        if float(mg[j]) < best:
            best, best_t = float(mg[j]), allowed_t[rows[j]].tolist()
        return mg

    def relaxed(emb_free: torch.Tensor, L: int) -> torch.Tensor:  # emb_free [L, d] -> margin (scalar)
        placeholder = [int(allowed_t[0])] * L
        seq = torch.tensor([prefix + placeholder + suffix], dtype=torch.long)
        n0 = len(prefix)

        def swap(x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x[:, :n0], emb_free.unsqueeze(0).to(x.dtype), x[:, n0 + L :]], dim=1)

        with m.hooks(fwd_hooks=[("hook_embed", lambda x, hook: swap(x))]):
            return _margin(m(seq)[0, -1], token)

    def gcg(idx: torch.Tensor) -> torch.Tensor:
        """Greedy swaps from idx [L] guided by the one-hot gradient; returns the improved idx."""
        L = len(idx)
        cur = float(true_margins(idx.unsqueeze(0))[0])
        while True:
            onehot = torch.zeros(L, A, dtype=W.dtype)
            onehot[torch.arange(L), idx] = 1.0
            onehot.requires_grad_(True)
            (g,) = torch.autograd.grad(relaxed(onehot @ W, L), onehot)
            k = min(topk, A)
            cands = (-g).topk(k, dim=1).indices  # [L, k]: most margin-decreasing tokens per position
            rows = idx.repeat(L * k, 1)
            rows[torch.arange(L * k), torch.arange(L).repeat_interleave(k)] = cands.flatten()
            mg = true_margins(rows)
            j = int(mg.argmin())
            if float(mg[j]) >= cur:
                return idx
            idx, cur = rows[j].clone(), float(mg[j])

    flags = [p.requires_grad for p in m.parameters()]
    for p in m.parameters():
        p.requires_grad_(False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: a contended thread pool is many times slower
    try:
        for L in range(1, n_free + 1):
            for _ in range(restarts):
                z = torch.randn(L, A, generator=gen, dtype=W.dtype).requires_grad_(True)
                m1, m2 = torch.zeros_like(z), torch.zeros_like(z)  # Adam moments (torch.optim imports dynamo)
                seen: set[tuple[int, ...]] = set()
                for step in range(1, steps + 1):
                    (g,) = torch.autograd.grad(relaxed(torch.softmax(z / temp, dim=1) @ W, L), z)
                    with torch.no_grad():
                        m1.mul_(0.9).add_(0.1 * g)
                        m2.mul_(0.999).add_(0.001 * g * g)
                        z -= lr * (m1 / (1 - 0.9**step)) / ((m2 / (1 - 0.999**step)).sqrt() + 1e-8)
                    idx = z.detach().argmax(dim=1)
                    key = tuple(idx.tolist())
                    if key not in seen:  # round, then improve by swaps, only for new roundings
                        seen.add(key)
                        gcg(idx)
    finally:
        for p, f in zip(m.parameters(), flags, strict=True):
            p.requires_grad_(f)
        torch.set_num_threads(threads)
    if not best_t:
        raise RuntimeError("no string was evaluated")
    # The reported margin: a fresh single-sequence forward pass of the best string.
    with torch.no_grad():
        logits = m(torch.tensor([prefix + best_t + suffix], dtype=torch.long))[0, -1]
    return AttackResult(best_t, float(_margin(logits, token)), n_eval)
