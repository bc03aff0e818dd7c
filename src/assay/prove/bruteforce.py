"""Ground truth by enumeration: run the model on every s + t + q (float64), for tests and benchmarks.

This shares nothing with the bound computation: it calls the model's own torch forward pass.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Enumeration:
    """Outcome of enumerating every free string of length 0..n_free."""

    n_strings: int
    argmax_tokens: set[int]  # every argmax that occurred
    min_margin: dict[int, float]  # per candidate token c: min over strings of logit[c] - max_{k != c} logit[k]
    per_length: list[float]  # min margin of the L = 0 argmax token, per length
    first_argmax: int  # argmax at L = 0 (prefix + suffix alone)


def strings(n_free: int, allowed: Sequence[int]) -> Iterator[tuple[int, ...]]:
    for L in range(n_free + 1):
        yield from itertools.product(allowed, repeat=L)


def enumerate_claim(
    model, prefix: Sequence[int], n_free: int, suffix: Sequence[int] = (), allowed: Sequence[int] | None = None,
    batch: int = 256,
) -> Enumeration:
    """Evaluate the model (as float64) at the last position of every prefix + t + suffix."""
    first = next(model.parameters())
    m64 = model if first.dtype == torch.float64 and not model.training else copy.deepcopy(model).double().eval()
    if allowed is None:
        allowed = range(model.cfg.d_vocab)
    allowed = list(allowed)
    by_len: dict[int, list[np.ndarray]] = {}
    for t in strings(n_free, allowed):
        by_len.setdefault(len(t), []).append(np.array(list(prefix) + list(t) + list(suffix), dtype=np.int64))
    logits_all = []
    lens = []
    threads = torch.get_num_threads()
    # Small batches run far faster on one thread than on a contended pool.
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            for L in sorted(by_len):
                rows = by_len[L]
                for i in range(0, len(rows), batch):
                    toks = torch.as_tensor(np.stack(rows[i : i + batch]))
                    # Unembed only the last position (the full logits of a large vocabulary are huge).
                    resid = m64(toks, return_type="resid")[:, -1, :]
                    logits_all.append(m64.unembed(resid).numpy().copy())
                    lens.extend([L] * len(toks))
    finally:
        torch.set_num_threads(threads)
    logits = np.concatenate(logits_all)
    lens = np.array(lens)
    arg = logits.argmax(axis=1)
    cands = sorted(set(arg.tolist()))
    min_margin = {}
    for c in set(cands) | {int(arg[0])}:
        other = logits.copy()
        other[:, c] = -np.inf
        min_margin[c] = float((logits[:, c] - other.max(axis=1)).min())
    c0 = int(arg[0])
    other = logits.copy()
    other[:, c0] = -np.inf
    marg = logits[:, c0] - other.max(axis=1)
    per_length = [float(marg[lens == L].min()) for L in sorted(by_len)]
    return Enumeration(len(logits), set(arg.tolist()), min_margin, per_length, c0)
