"""Each head's attention at the answer-predicting positions: which digit pair it reads (the double staircase).

Positions of an n-digit example: 0..n-1 hold D_{n-1}..D_0 (the first operand, most significant first),
n is ``+``, n+1..2n hold D'_{n-1}..D'_0, 2n+1 is ``=``, and 2n+2.. the answer A_n..A_0. The logits at
position 2n+1+i predict A_{n-i}.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from assay.addition.evaluate import example_tensor
from assay.tasks import addition


def position_label(pos: int, n_digits: int) -> str:
    """Return the name of a position: ``D3``, ``D'3``, ``+``, ``=``, ``A5`` ..."""
    n = n_digits
    if pos < n:
        return f"D{n - 1 - pos}"
    if pos == n:
        return "+"
    if pos <= 2 * n:
        return f"D'{2 * n - pos}"
    if pos == 2 * n + 1:
        return "="
    return f"A{3 * n + 2 - pos}"


def operand_column(pos: int, n_digits: int) -> int | None:
    """Return the column (0 = units) of an operand-digit position, None for other positions."""
    n = n_digits
    if pos < n:
        return n - 1 - pos
    if n < pos <= 2 * n:
        return 2 * n - pos
    return None


def mean_patterns(model: Any, a: np.ndarray, b: np.ndarray, n_digits: int) -> np.ndarray:
    """Return the mean attention [layer, head, answer digit i, key position] of the query predicting A_{n-i}."""
    tokens = example_tensor(a, b, n_digits)[:, :-1]
    q = addition.question_length(n_digits)
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=names)
    # pattern: [b, h, q, k]; keep the n + 1 answer-predicting queries
    return np.stack([cache[n][:, :, q - 1 :, :].float().mean(dim=0).numpy() for n in names])


def head_reads(patterns: np.ndarray, n_digits: int, threshold: float = 0.1) -> list[dict[str, Any]]:
    """Return, per layer, head and answer digit, the operand columns read and how much attention each gets.

    A column's weight is the attention on D_c plus D'_c; columns with weight >= ``threshold`` are listed,
    heaviest first. ``pair`` is the heaviest column.
    """
    rows = []
    n_layers, n_heads, n_q, n_k = patterns.shape
    for layer in range(n_layers):
        for head in range(n_heads):
            for i in range(n_q):
                w = np.zeros(n_digits)
                for k in range(n_k):
                    c = operand_column(k, n_digits)
                    if c is not None:
                        w[c] += patterns[layer, head, i, k]
                order = [int(c) for c in np.argsort(-w) if w[c] >= threshold]
                rows.append({
                    "layer": layer, "head": head, "digit": f"A{n_digits - i}", "query": 2 * n_digits + 1 + i,
                    "pair": int(np.argmax(w)), "pair_weight": float(w.max()),
                    "columns": {str(c): round(float(w[c]), 3) for c in order},
                    "operand_weight": float(w.sum()),
                })
    return rows
