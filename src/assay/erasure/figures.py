"""Figures of an :class:`~assay.erasure.analysis.Analysis`: PR heatmap, residual projection curve, DLA scatter."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from assay.erasure.analysis import Analysis


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _short_hook(h: str) -> str:
    # blocks.2.hook_resid_mid -> 2 mid
    parts = h.split(".")
    return f"{parts[1]} {parts[2].removeprefix('hook_resid_')}"


def pr_heatmap(a: Analysis, path: Path, title: str = "") -> Path:
    """Write the median PR(reader, writer) heatmap (rows: writers, columns: later heads and MLPs)."""
    plt = _plt()
    cols = [i for i, c in enumerate([c for c in a.comps if c.in_residual]) if c.kind in ("head", "mlp")]
    names = [c.name for c in a.comps if c.in_residual]
    M = a.pr_median[:, cols]
    # Colour range clipped at 1.5: erasers (PR near -1) stay visible next to large amplifiers.
    lim = min(1.5, max(0.1, float(np.nanmax(np.abs(M))) if np.isfinite(M).any() else 1.0))
    h = max(3.5, 0.16 * len(a.writers) + 1.5)
    w = max(6.0, 0.16 * len(cols) + 2.5)
    fig, ax = plt.subplots(figsize=(w, h))
    im = ax.imshow(np.ma.masked_invalid(M), cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels([names[i] for i in cols], rotation=90, fontsize=6)
    ax.set_yticks(range(len(a.writers)))
    ax.set_yticklabels([w.name for w in a.writers], fontsize=6)
    ax.set_xlabel("reader C (later component)")
    ax.set_ylabel("writer W")
    for s in a.flagged():
        r = [w.name for w in a.writers].index(s.writer)
        c = [names[i] for i in cols].index(s.eraser)
        ax.add_patch(plt.Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, ec="black", lw=1.2))
    fig.colorbar(im, ax=ax, label="median PR(C, W) = <C,W>/||W||²", extend="both")
    ax.set_title(title or f"{a.model_name}: median projection ratios\n(boxes: flagged erasers)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def residual_curve(a: Analysis, path: Path, title: str = "") -> Path:
    """Write the residual stream's projection onto each focus writer across resid_pre/mid/post."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(a.hooks) + 1), 3.4))
    x = np.arange(len(a.hooks))
    for w in a.focus:
        q = a.resid_proj[w]
        ax.plot(x, q[:, 1], marker="o", label=f"{w} (median)")
        ax.fill_between(x, q[:, 0], q[:, 2], alpha=0.2)
    for c in a.causal:
        ax.scatter([x[-1] + 0.6], [c["final_projection_patched"]], marker="*", s=80,
                   label=f"{c['writer']}: final, value edges to erasers removed")
    ax.axhline(1.0, color="grey", lw=0.6, ls="--")
    ax.axhline(0.0, color="grey", lw=0.6)
    ax.set_xticks(x)
    ax.set_xticklabels([_short_hook(h) for h in a.hooks], rotation=60, fontsize=7)
    ax.set_ylabel("<resid, W> / ||W||²")
    ax.legend(fontsize=7)
    ax.set_title(title or f"{a.model_name}: residual stream projected onto the writer\n(median, quartile band)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def dla_scatter(a: Analysis, path: Path, title: str = "") -> Path:
    """Write DLA vs total effect: per component (mean |DLA| against mean |total effect| under both
    ablations), per position (every component, the focus writers highlighted), and, per position, the
    focus writer's DLA against the DLA of the V-composition part of its erasers.

    Absolute values in the first panel: a writer whose DLA changes sign with the token (the planted one)
    has a mean signed DLA near 0, which would hide exactly the gap this figure is about.
    """
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    ax = axes[0]
    idx = [i for i, c in enumerate(a.comps) if c.kind in ("embed", "pos_embed", "head", "mlp")]
    names = [a.comps[i].name for i in idx]
    n_pts = a.dla_points.shape[1]
    if n_pts:
        x = np.abs(a.dla_points[idx]).mean(1)
        y = np.abs(a.te_resample[idx]).mean(1)
        ym = np.abs(a.te_mean[idx]).mean(1)
    else:
        x = y = ym = np.zeros(len(idx))
    ax.scatter(x, y, s=16, label="resample ablation")
    ax.scatter(x, ym, s=16, marker="x", label="mean ablation")
    hi = float(np.nanmax(np.r_[x, y, ym, 1e-9]))
    ax.plot([0, hi], [0, hi], color="grey", lw=0.6, ls="--")
    for i in np.argsort(-(x - np.maximum(y, ym)))[:6]:
        ax.annotate(names[i], (x[i], y[i]), fontsize=6)
    ax.set_xlabel("mean |DLA| (frozen final LN scale)")
    ax.set_ylabel("mean |total effect| on the logit difference")
    ax.legend(fontsize=7)
    ax.set_title("per component, mean over prompts x positions", fontsize=9)
    ax = axes[1]
    focus = {a.comps.index(c) for c in a.comps if c.name in a.focus}
    rest = [i for i in idx if i not in focus]
    if n_pts:
        ax.scatter(a.dla_points[rest].ravel(), a.te_resample[rest].ravel(), s=3, alpha=0.3, color="grey",
                   label="every other component")
        for i in sorted(focus):
            ax.scatter(a.dla_points[i], a.te_resample[i], s=6, alpha=0.7, label=a.comps[i].name)
        lo = float(min(a.dla_points[idx].min(), a.te_resample[idx].min()))
        hi = float(max(a.dla_points[idx].max(), a.te_resample[idx].max()))
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.6, ls="--")
    ax.set_xlabel("DLA")
    ax.set_ylabel("total effect (resample ablation)")
    ax.legend(fontsize=7)
    ax.set_title("per (component, position)", fontsize=9)
    ax = axes[2]
    for w, (xs, ys) in a.vcomp_points.items():
        ax.scatter(xs, ys, s=4, alpha=0.5, label=f"{w}")
        fit = next((f for f in a.vcomp if f["writer"] == w), None)
        if fit and fit["slope"] is not None:
            t = np.linspace(xs.min(), xs.max(), 2)
            ax.plot(t, fit["slope"] * t + fit["intercept"], lw=1,
                    label=f"slope {fit['slope']:.2f}, r {fit['r']:.2f}")
    ax.set_xlabel("writer's DLA")
    ax.set_ylabel("DLA of the erasers' V-composition part reading it")
    ax.legend(fontsize=7)
    ax.set_title("per position: does the V-composition part cancel the writer?", fontsize=9)
    fig.suptitle(title or f"{a.model_name}: DLA against total effect", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
