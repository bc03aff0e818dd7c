"""Paper 5: direct logit attribution, projection ratios, erasure detection, causal tests.

Janiak, Rager, Dao, Lau, "An Adversarial Example for Direct Logit Attribution: Memory Management in
GELU-4L" (2024). See docs/erasure.md for the maths and measured tables.

- :func:`assay.erasure.dla.dla` — DLA of every component with the final LayerNorm scale frozen (terms add up exactly).
- :func:`projection_ratios`, :class:`ErasureRule` — PR(C, W) = <C, W> / ||W||^2 and the flagging rule.
- :func:`run_value_edge_patch`, :func:`vcomp_part` — the single-edge path patch writer -> eraser values.
- :func:`ablation_effects` — total effects by resample or mean ablation.
- :func:`v_composition_scores` — weights-only V-composition for every head pair.
- :func:`analyze` — all of it on a prompt set (``assay erasure``); :func:`planted_model` — ground truth.

The functions ``dla`` and ``components`` live in the modules of the same names and are not re-exported
here (``from assay.erasure.dla import dla``), so that ``assay.erasure.dla`` stays the module.
"""

from assay.erasure.analysis import Analysis, analyze
from assay.erasure.components import Component, parse_component, run_with_components
from assay.erasure.composition import v_composition_scores
from assay.erasure.dla import DLA, LogitTarget, next_token_target
from assay.erasure.patching import ablation_effects, run_value_edge_patch, value_edge_hooks, vcomp_part
from assay.erasure.planted import planted_model, planted_prompts
from assay.erasure.projection import ErasureRule, projection_ratios, residual_projection

__all__ = [
    "DLA",
    "Analysis",
    "Component",
    "ErasureRule",
    "LogitTarget",
    "ablation_effects",
    "analyze",
    "next_token_target",
    "parse_component",
    "planted_model",
    "planted_prompts",
    "projection_ratios",
    "residual_projection",
    "run_value_edge_patch",
    "run_with_components",
    "v_composition_scores",
    "value_edge_hooks",
    "vcomp_part",
]
