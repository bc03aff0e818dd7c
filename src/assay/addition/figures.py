"""Matplotlib figures of the addition analysis (Agg backend; each function writes one PNG and returns its path)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from assay.addition.attention import position_label


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_curves(digit_log: list[dict[str, Any]], history: list[dict[str, Any]], n_digits: int,
                phases: dict[str, dict[str, Any]], path: Path, title: str) -> Path:
    """Per-digit (and per-category) training loss over steps, log scale, with each digit's drop marked."""
    from assay.addition.training import digit_log_gaps

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colors = plt.cm.viridis(np.linspace(0, 0.9, n_digits + 1))
    digits = [f"A{n_digits - i}" for i in range(n_digits + 1)]
    if digit_log:
        # break the lines where steps were not logged (a log assembled from runs)
        gaps = digit_log_gaps(digit_log)
        breaks = {a: {"step": (a + b) / 2} for a, b in gaps}
        digit_log = [x for r in digit_log for x in ([r, breaks[r["step"]]] if r["step"] in breaks else [r])]
        steps = np.array([r["step"] for r in digit_log])
        for d, col in zip(digits, colors, strict=True):
            y = np.array([r.get(f"loss_{d}", np.nan) for r in digit_log])
            axes[0].plot(steps, y, color=col, lw=1, label=d)
            t = phases.get(d, {}).get("steepest_step")
            if t is not None:
                axes[0].axvline(t, color=col, ls=":", lw=1)
        for cat, col in zip(("BA", "UC1", "US9", "cascade"), ("C0", "C1", "C2", "C3"), strict=True):
            y = np.array([r.get(f"loss_{cat}", np.nan) for r in digit_log])
            axes[1].plot(steps, y, color=col, lw=1, label=cat)
        dashed = bool(history and gaps)
        if dashed:
            # the validation record is complete: it shows what the training log's gap hides
            vsteps = np.array([r["step"] for r in history])
            for d, col in zip(digits, colors, strict=True):
                axes[0].plot(vsteps, [r.get(f"val_loss_{d}", np.nan) for r in history], color=col, lw=0.8,
                             ls="--", marker=".", ms=3)
            for cat, col in zip(("BA", "UC1", "US9", "cascade"), ("C0", "C1", "C2", "C3"), strict=True):
                axes[1].plot(vsteps, [r.get(f"val_loss_{cat}", np.nan) for r in history], color=col, lw=0.8,
                             ls="--", marker=".", ms=3)
        axes[0].set_title("training loss per answer digit (dotted: steepest drop"
                          + ("; dashed: validation)" if dashed else ")"), fontsize=9)
        axes[1].set_title("training loss per question category" + (" (dashed: validation)" if dashed else ""),
                          fontsize=9)
    elif history:
        steps = np.array([r["step"] for r in history])
        for d, col in zip(digits, colors, strict=True):
            axes[0].plot(steps, [r.get(f"val_loss_{d}", np.nan) for r in history], color=col, label=d)
        for cat in ("BA", "UC1", "US9", "cascade"):
            axes[1].plot(steps, [r.get(f"val_loss_{cat}", np.nan) for r in history], label=cat)
        axes[0].set_title("validation loss per answer digit", fontsize=9)
        axes[1].set_title("validation loss per category", fontsize=9)
    for ax in axes:
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy (nats)")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def position_ablation(results: list[dict[str, Any]], n_digits: int, path: Path, title: str) -> Path:
    """Heatmaps [position, answer digit] of the loss with one position ablated, one panel per kind/mode."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 5), squeeze=False)
    digits = [f"A{n_digits - i}" for i in range(n_digits + 1)]
    for ax, r in zip(axes[0], results, strict=True):
        loss = np.asarray(r["loss"])
        im = ax.imshow(np.log10(np.maximum(loss, 1e-4)), cmap="magma", vmin=-4, vmax=1, aspect="auto")
        ax.set_title(f"{r['kind']} / {r['mode']}", fontsize=9)
        ax.set_xticks(range(len(digits)))
        ax.set_xticklabels(digits, fontsize=7)
        ax.set_yticks(range(loss.shape[0]))
        ax.set_yticklabels([f"{p} {position_label(p, n_digits)}" for p in range(loss.shape[0])], fontsize=6)
        ax.set_xlabel("answer digit")
    axes[0][0].set_ylabel("ablated position")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.7, label="log10 loss")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def attention(patterns: np.ndarray, n_digits: int, path: Path, title: str) -> Path:
    """Mean attention of each head from the answer-predicting positions (rows) to every key (columns)."""
    plt = _plt()
    n_layers, n_heads, n_q, n_k = patterns.shape
    fig, axes = plt.subplots(n_layers, n_heads, figsize=(3.3 * n_heads, 2.2 * n_layers + 0.6), squeeze=False)
    q0 = 2 * n_digits + 1
    for layer in range(n_layers):
        for head in range(n_heads):
            ax = axes[layer][head]
            ax.imshow(patterns[layer, head], cmap="Blues", vmin=0, vmax=1, aspect="auto")
            ax.set_title(f"L{layer}H{head}", fontsize=9)
            ax.set_xticks(range(n_k))
            ax.set_xticklabels([position_label(k, n_digits) for k in range(n_k)], rotation=90, fontsize=6)
            ax.set_yticks(range(n_q))
            ax.set_yticklabels([f"{q0 + i}→A{n_digits - i}" for i in range(n_q)], fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def head_ablation(rows: list[dict[str, Any]], categories: list[str], path: Path, title: str) -> Path:
    """Grouped bars: loss per category with each head zero- or mean-ablated (and the baseline)."""
    plt = _plt()
    labels = []
    table: dict[str, list[float]] = {c: [] for c in categories}
    seen: list[tuple] = []
    for r in rows:
        key = (r["layer"], r["head"], r["mode"])
        if key not in seen:
            seen.append(key)
            labels.append("baseline" if r["layer"] is None else f"L{r['layer']}H{r['head']} {r['mode']}")
    for key in seen:
        for c in categories:
            v = [r["loss"] for r in rows if (r["layer"], r["head"], r["mode"]) == key and r["category"] == c]
            table[c].append(v[0] if v else np.nan)
    x = np.arange(len(labels))
    w = 0.8 / len(categories)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(labels)), 3.8))
    for j, c in enumerate(categories):
        ax.bar(x + j * w, np.maximum(table[c], 1e-5), w, label=c)
    ax.set_yscale("log")
    ax.set_xticks(x + w * (len(categories) - 1) / 2)
    ax.set_xticklabels(labels, rotation=30, fontsize=7, ha="right")
    ax.set_ylabel("loss (nats)")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def probes(rows: list[dict[str, Any]], n_digits: int, n_layers: int, n_heads: int, path: Path, title: str) -> Path:
    """Heatmaps of probe skill per head: answer digit (rows) x sub-result of each column (columns)."""
    plt = _plt()
    targets = [(t, c) for t in ("BA", "MC1", "MS9") for c in range(n_digits - 1, -1, -1)]
    digits = [f"A{n_digits - i}" for i in range(n_digits + 1)]
    fig, axes = plt.subplots(n_layers, n_heads, figsize=(3.6 * n_heads, 2.4 * n_layers + 0.6), squeeze=False)
    for layer in range(n_layers):
        for head in range(n_heads):
            m = np.full((len(digits), len(targets)), np.nan)
            for r in rows:
                if r["layer"] == layer and r["head"] == head:
                    m[digits.index(r["digit"]), targets.index((r["target"], r["column"]))] = r["skill"]
            ax = axes[layer][head]
            ax.imshow(m, cmap="Greens", vmin=0, vmax=1, aspect="auto")
            ax.set_title(f"L{layer}H{head}", fontsize=9)
            ax.set_xticks(range(len(targets)))
            ax.set_xticklabels([f"{t}{c}" for t, c in targets], rotation=90, fontsize=6)
            ax.set_yticks(range(len(digits)))
            ax.set_yticklabels(digits, fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
