"""The demo's section for paper 5: the planted ground truth, then the erasure analysis of lm-4l.

Every number is computed by this run. On lm-4l the prompts are :data:`~assay.erasure.prompts.SAMPLE_PROMPTS`
(48 held-out KJV verses and Python snippets, cut to ``MAX_TOKENS`` tokens; interventions on the first
``INTERVENTION_PROMPTS``), so the section needs no corpus and runs in about a minute on one thread.
"""

from __future__ import annotations

from typing import Any

from assay.erasure.analysis import Analysis, analyze, torch_threads
from assay.erasure.figures import dla_scatter, pr_heatmap, residual_curve
from assay.erasure.planted import planted_model, planted_prompts
from assay.erasure.prompts import SAMPLE_PROMPTS, encode_prompts
from assay.report.html import esc, figure, table

MODEL = "lm-4l"
MAX_TOKENS = 48
INTERVENTION_PROMPTS = 12  # ablations and patches cost ~80 forward rows per prompt; PRs use all 48


def _fmt(x: Any, nd: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:+.{nd}f}"
    return str(x)


def tables(a: Analysis, top: int = 8) -> str:
    """Return the HTML tables of one analysis: pairs, causal test, V-composition fit, adversarial examples."""
    j = a.to_json(top=top)
    parts = []
    flagged = j["flagged"]
    rows = [[p["writer"], p["eraser"], _fmt(p["pr_median"]), f"[{_fmt(p['pr_q25'])}, {_fmt(p['pr_q75'])}]",
             f"{p['frac_prompts_negative']:.2f}", "yes" if p["flagged"] else "no"] for p in j["pairs"][:top]]
    parts.append(f"<p>{len(flagged)} writer &rarr; eraser pair(s) flagged by the rule (median PR &le; "
                 f"{a.rule.threshold}, upper quartile &lt; 0, negative in &ge; {a.rule.consistency:.0%} of prompts, "
                 f"writer norm &ge; {a.rule.min_rel_norm} of the residual norm), out of {j['n_pairs']} pairs; the same "
                 f"rule with signs flipped (consistent amplifiers, the null count) passes {j['n_mirror_flagged']}. "
                 "Most negative pairs:</p>")
    parts.append(table(["writer", "reader", "median PR", "quartiles", "prompts < 0", "flagged"], rows))
    for c in j["causal"]:
        parts.append(
            f"<p>Causal test for {esc(c['writer'])} (erasers: {esc(', '.join(c['erasers']))}; "
            f"{esc(c['erasers_from'])}): removing the writer from their value input (LayerNorm scale frozen) "
            f"moves their summed PR from {_fmt(c['sum_pr_clean'])} to {_fmt(c['sum_pr_patched'])} and the final "
            f"projection onto the writer from {_fmt(c['final_projection_clean'])} to "
            f"{_fmt(c['final_projection_patched'])} (medians).</p>")
    for f in j["vcomp_fit"]:
        parts.append(f"<p>Writer {esc(f['writer'])}'s DLA vs the DLA of its erasers' V-composition part: slope "
                     f"{_fmt(f['slope'])}, r {_fmt(f['r'])} over {f['n']} positions.</p>")
    corr = j["dla_total_correlation"]
    parts.append(f"<p>DLA vs total effect over every component x position: Pearson r {_fmt(corr['resample'])} "
                 f"(resample ablation), {_fmt(corr['mean'])} (mean ablation).</p>")
    for key, what in (("adversarial", "the focus writer's"), ("adversarial_any", "a component's (any head, MLP or "
                                                                              "the embedding)")):
        if not j[key]:
            continue
        rows = [[r["writer"], repr(r.get("context", r["context_ids"]))[-60:], repr(r.get("next", r["next_id"])),
                 _fmt(r["dla"]), _fmt(r["total_effect"]), _fmt(r["total_effect_mean_ablation"])] for r in j[key]]
        parts.append(f"<p>Adversarial positions: {what} DLA is large and its total effect is at most a fifth of "
                     "it under both resample and mean ablation:</p>")
        parts.append(table(["component", "context (last tokens)", "next", "DLA", "total (resample)", "total (mean)"],
                           rows))
    return "".join(parts)


def _figures(a: Analysis, ctx: Any, stem: str) -> str:
    out = []
    p = pr_heatmap(a, ctx.fig_dir / f"erasure-pr-{stem}.png")
    out.append(figure(p, ctx.out, f"{a.model_name}: median projection ratio of each later head/MLP onto each writer"))
    p = residual_curve(a, ctx.fig_dir / f"erasure-resid-{stem}.png")
    out.append(figure(p, ctx.out, f"{a.model_name}: the residual stream's projection onto the focus writer(s)"))
    p = dla_scatter(a, ctx.fig_dir / f"erasure-dla-{stem}.png")
    out.append(figure(p, ctx.out, f"{a.model_name}: DLA against resample / mean ablation"))
    return "".join(out)


def section(ctx: Any) -> str:
    """Return the HTML of the erasure section (figures written under ``ctx.fig_dir``)."""
    from assay.model import load, shipped_models

    parts = ["<p>Direct logit attribution (final LayerNorm scale frozen from the clean run, outputs centred: "
             "the terms add up to the logit difference), projection ratios PR(C, W) = &lt;C, W&gt;/||W||&sup2;, "
             "the erasure rule, the single-edge value path patch, and DLA against total effect. "
             "See docs/erasure.md.</p>"]
    with torch_threads(1):
        ctx.log("erasure: planted model")
        a = analyze(planted_model(), planted_prompts(24))
        parts.append("<h3>Ground truth: a planted writer (L0H0) and eraser (L1H0)</h3>")
        parts.append(tables(a, top=4))
        parts.append(_figures(a, ctx, "planted"))
        if MODEL not in shipped_models():
            parts.append(f"<p class='note'>{MODEL} is not shipped yet (train it with <code>assay train {MODEL}"
                         "</code>); only the planted model is shown.</p>")
            return "".join(parts)
        ctx.log(f"erasure: {MODEL} on {len(SAMPLE_PROMPTS)} prompts")
        model = load(MODEL)
        prompts = encode_prompts(model.tokenizer, SAMPLE_PROMPTS, min(MAX_TOKENS, model.cfg.n_ctx))
        b = analyze(model, prompts, decode=model.tokenizer.decode, intervention_prompts=INTERVENTION_PROMPTS)
    parts.append(f"<h3>{MODEL}: {b.n_prompts} held-out prompts, {b.n_positions} target positions "
                 f"(true next token vs the model's strongest other candidate)</h3>")
    parts.append(f"<p>Projection ratios over all {b.n_prompts} prompts; ablations, path patches and the DLA "
                 f"comparisons over the first {b.n_intervention_prompts}.</p>")
    if not b.flagged():
        parts.append(f"<p><b>No writer &rarr; eraser pair in {MODEL} meets the erasure rule on these prompts.</b> "
                     "The tables show the most negative pairs and the causal test on the most-erased writer.</p>")
    parts.append(tables(b))
    parts.append(_figures(b, ctx, MODEL))
    parts.append(f"<p class='note'>{b.seconds['per_prompt']:.2f} s per prompt for the whole analysis.</p>")
    return "".join(parts)
