"""Projection ratios, the residual stream's projection onto a writer, and the erasure rule.

Projection ratio of a later component C onto a writer W at one position (Janiak et al.):

    PR(C, W) = <C, W> / ||W||^2.

PR = -1 means C writes exactly -W there (it erases W); 0 means C is orthogonal to W. The vectors are
the raw outputs as they are added to the residual stream (not centred). Positions where ||W|| is
below ``MIN_NORM`` times W's median norm are left out (the ratio is then noise divided by nothing).

The residual stream's projection onto W at a hook is <resid, W> / ||W||^2, at every resid_pre,
resid_mid and resid_post of every layer: it includes W itself (1 once W is written) plus whatever else
happens to point along W, so its drop after W is written measures how much later components remove.

**The erasure rule** (ours; the paper reports medians but states no rule). A writer -> later component
pair (W, E) is flagged when, over all prompts x positions,

1. median PR(E, W) <= ``threshold`` (default -0.05: E removes at least 5% of W at a typical position);
2. the upper quartile is below 0 (E points against W at three positions in four or more);
3. at least ``consistency`` (default 0.8) of the prompts have a negative per-prompt median PR;
4. W matters: its median norm is at least ``min_rel_norm`` (default 0.05) of the median residual norm
   at the last layer, so that near-silent writers are not reported.

Flagged pairs are ranked by median PR, most negative first. The same rule with every sign flipped
(median >= +0.05, lower quartile > 0, positive in 80% of prompts) counts consistent *amplifiers*: the
null count. A fixed linear map (an MLP near its linear regime, a head attending to one place) gives
each pair a consistent PR of random sign, so in a random-init model about as many pairs pass the
mirrored rule as the rule itself; erasure is evidence of learned clean-up only where flagged pairs
clearly outnumber mirrored ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from assay.erasure.components import Component, reads_after

MIN_NORM = 1e-3


@dataclass
class ErasureRule:
    """Thresholds of the erasure rule (see the module docstring)."""

    threshold: float = -0.05
    consistency: float = 0.8
    min_rel_norm: float = 0.05


def quartiles(values: np.ndarray) -> tuple[float, float, float]:
    """Return (q25, median, q75) of the finite values (NaNs if there are none)."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    q25, med, q75 = np.percentile(v, [25, 50, 75])
    return float(q25), float(med), float(q75)


def projection_ratios(outputs: torch.Tensor, writer_idx: Sequence[int]) -> torch.Tensor:
    """Return PR [n_writer, n_comp, b, p] of every component onto each writer.

    ``outputs`` [n_comp, b, p, d] are the residual-stream outputs; entries where the writer's norm is
    below MIN_NORM times its median norm are NaN.
    """
    W = outputs[list(writer_idx)]  # [nw, b, p, d]
    norm2 = (W * W).sum(-1)  # [nw, b, p]
    dots = torch.einsum("wbpd,cbpd->wcbp", W, outputs)
    med = norm2.flatten(1).median(1).values.clamp(min=1e-30)
    ok = norm2 >= (MIN_NORM**2) * med[:, None, None]
    pr = dots / norm2.clamp(min=1e-30)[:, None]
    return torch.where(ok[:, None], pr, torch.full_like(pr, float("nan")))


def residual_projection(resid: torch.Tensor, writer_out: torch.Tensor) -> torch.Tensor:
    """Return <resid, W> / ||W||^2 [n_hooks, b, p] for residual streams ``resid`` [n_hooks, b, p, d]."""
    norm2 = (writer_out * writer_out).sum(-1).clamp(min=1e-30)
    return (resid * writer_out).sum(-1) / norm2


def resid_hooks(n_layers: int, has_mid: bool) -> list[str]:
    """Return resid_pre / resid_mid / resid_post of every layer, in order of the forward pass."""
    names = []
    for layer in range(n_layers):
        names.append(f"blocks.{layer}.hook_resid_pre")
        if has_mid:
            names.append(f"blocks.{layer}.hook_resid_mid")
        names.append(f"blocks.{layer}.hook_resid_post")
    return names


@dataclass
class PairStats:
    """Statistics of PR(eraser, writer) over prompts x positions."""

    writer: str
    eraser: str
    pr_median: float
    pr_q25: float
    pr_q75: float
    frac_prompts_negative: float
    n: int
    flagged: bool = False
    mirror_flagged: bool = False  # the rule with signs flipped: a consistent *amplifier* (the null count)

    def as_dict(self) -> dict:
        return {"writer": self.writer, "eraser": self.eraser, "pr_median": self.pr_median, "pr_q25": self.pr_q25,
                "pr_q75": self.pr_q75, "frac_prompts_negative": self.frac_prompts_negative, "n": self.n,
                "flagged": self.flagged, "mirror_flagged": self.mirror_flagged}


@dataclass
class PRCollector:
    """Accumulates per-position PRs over prompts of different lengths, pair by pair."""

    writers: list[Component]
    comps: list[Component]
    parallel: bool = False
    values: dict[tuple[int, int], list[np.ndarray]] = field(default_factory=dict)
    writer_norms: dict[int, list[np.ndarray]] = field(default_factory=dict)
    resid_norms: list[np.ndarray] = field(default_factory=list)

    def pairs(self) -> list[tuple[int, int]]:
        """Return (writer index, component index) pairs where the component reads the writer."""
        return [(wi, ci) for wi, w in enumerate(self.writers) for ci, c in enumerate(self.comps)
                if c.kind in ("head", "mlp") and reads_after(c, w, self.parallel)]

    def add(self, pr: torch.Tensor, writer_norm: torch.Tensor, resid_norm: torch.Tensor) -> None:
        """Add one prompt: pr [n_writer, n_comp, p], writer_norm [n_writer, p], resid_norm [p]."""
        pr_np = pr.double().numpy()
        for wi, ci in self.pairs():
            self.values.setdefault((wi, ci), []).append(pr_np[wi, ci])
        for wi in range(len(self.writers)):
            self.writer_norms.setdefault(wi, []).append(writer_norm[wi].double().numpy())
        self.resid_norms.append(resid_norm.double().numpy())

    def stats(self, rule: ErasureRule) -> list[PairStats]:
        """Return the statistics of every pair, flagged by ``rule``, ranked by median PR (ascending)."""
        resid_med = float(np.median(np.concatenate(self.resid_norms))) if self.resid_norms else 0.0
        out = []
        for (wi, ci), chunks in self.values.items():
            allv = np.concatenate(chunks)
            q25, med, q75 = quartiles(allv)
            per_prompt = [np.nanmedian(c) for c in chunks if np.isfinite(c).any()]
            frac = float(np.mean(np.asarray(per_prompt) < 0)) if per_prompt else float("nan")
            frac_pos = float(np.mean(np.asarray(per_prompt) > 0)) if per_prompt else float("nan")
            wnorm = float(np.median(np.concatenate(self.writer_norms[wi])))
            matters = wnorm >= rule.min_rel_norm * resid_med
            flagged = bool(med <= rule.threshold and q75 < 0 and frac >= rule.consistency and matters)
            mirror = bool(med >= -rule.threshold and q25 > 0 and frac_pos >= rule.consistency and matters)
            out.append(PairStats(self.writers[wi].name, self.comps[ci].name, med, q25, q75, frac,
                                 int(np.isfinite(allv).sum()), flagged, mirror))
        out.sort(key=lambda s: (np.inf if np.isnan(s.pr_median) else s.pr_median))
        return out
