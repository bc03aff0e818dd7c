"""The full erasure analysis of a model on a set of prompts (what ``assay erasure`` and the demo run).

Two passes over the prompts (each prompt is run on its own, so lengths may differ):

1. clean runs: DLA of every component (frozen final scale), projection ratios of every later head/MLP
   onto every head/MLP writer, the residual stream's projection onto every writer at every
   resid_pre/mid/post, and the activations that ablation needs;
2. with the flagged pairs known: resample and mean ablation of every component (total effects), the
   value-edge path patches of the focus writers, and the V-composition part of their erasers.

Focus writers: the one asked for (``writer=``), else the writers of the flagged pairs (up to
``max_focus``), else the writer whose readers' median PRs sum most negative, so that the curves and
the causal test are always shown, also when nothing is flagged.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from assay.erasure import components as C
from assay.erasure.composition import v_composition_scores
from assay.erasure.dla import (
    LogitTarget,
    dla_from_cache,
    logit_directions,
    next_token_target,
    project_to_logits,
    resolve_mode,
)
from assay.erasure.patching import (
    SourceStore,
    ablation_effects,
    resample_order,
    run_value_edge_patch,
    vcomp_part,
)
from assay.erasure.projection import (
    ErasureRule,
    PairStats,
    PRCollector,
    projection_ratios,
    quartiles,
    resid_hooks,
    residual_projection,
)
from assay.errors import BadInput
from assay.model import Transformer


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Context manager: torch uses ``n`` intra-op threads inside (None: leave as is), restored after.

    The analysis is many small forward passes; on a shared two-core machine one thread is much faster
    than two that wait for each other (planted model, 10 prompts: 0.47 s with 1 thread, 16 s with 2).
    """
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_prompts(model: Transformer, prompts: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """Return the prompts as LongTensors [1, p]; BadInput (naming the prompt) if one is empty or too long."""
    if not prompts:
        raise BadInput("no prompts: give at least one (one a line)")
    out = []
    n_ctx, V = model.cfg.n_ctx, model.cfg.d_vocab
    for i, p in enumerate(prompts, start=1):
        if len(p) == 0:
            raise BadInput(f"prompt {i} is empty")
        if len(p) > n_ctx:
            raise BadInput(f"prompt {i} has {len(p)} tokens, more than the model's n_ctx={n_ctx}")
        bad = [t for t in p if not 0 <= int(t) < V]
        if bad:
            raise BadInput(f"prompt {i}: token id {bad[0]} out of range 0..{V - 1}")
        out.append(torch.tensor([list(p)], dtype=torch.long))
    return out


@dataclass
class Analysis:
    """Everything one run found; :meth:`to_json` is what ``assay erasure --json`` prints."""

    model_name: str
    n_prompts: int
    n_positions: int
    n_intervention_prompts: int
    comps: list[C.Component]
    writers: list[C.Component]
    rule: ErasureRule
    mode: str
    pair_stats: list[PairStats]
    pr_median: np.ndarray  # [n_writer, n_comp] median PR (NaN where the component does not read the writer)
    hooks: list[str]
    resid_proj: dict[str, np.ndarray]  # writer -> [n_hooks, 3] (q25, median, q75)
    focus: list[str]
    dla_points: np.ndarray  # [n_comp, N] DLA at every target position of the intervention prompts
    te_resample: np.ndarray  # [n_comp, N]
    te_mean: np.ndarray  # [n_comp, N]
    causal: list[dict[str, Any]] = field(default_factory=list)
    vcomp: list[dict[str, Any]] = field(default_factory=list)
    vcomp_points: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    v_composition: dict[str, Any] = field(default_factory=dict)
    adversarial: list[dict[str, Any]] = field(default_factory=list)
    adversarial_any: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    dla_error: float = 0.0

    def dla_vs_total(self) -> list[dict[str, Any]]:
        """Return per component: mean DLA, mean total effect (resample and mean ablation) over target positions."""
        rows = []
        for i, c in enumerate(self.comps):
            rows.append({
                "component": c.name,
                "dla": _f(np.mean(self.dla_points[i])) if self.dla_points.shape[1] else None,
                "total_effect": _f(np.mean(self.te_resample[i])) if self.te_resample.shape[1] else None,
                "total_effect_mean_ablation": _f(np.mean(self.te_mean[i])) if self.te_mean.shape[1] else None,
                "dla_abs": _f(np.mean(np.abs(self.dla_points[i]))) if self.dla_points.shape[1] else None,
                "total_effect_abs": _f(np.mean(np.abs(self.te_resample[i]))) if self.te_resample.shape[1] else None,
            })
        return rows

    def dla_te_correlation(self) -> dict[str, float | None]:
        """Return Pearson r between DLA and total effect over every (component, position) point."""
        out: dict[str, float | None] = {}
        mask = np.array([c.kind in ("embed", "pos_embed", "head", "mlp") for c in self.comps])
        for key, te in (("resample", self.te_resample), ("mean", self.te_mean)):
            x, y = self.dla_points[mask].ravel(), te[mask].ravel()
            out[key] = _f(np.corrcoef(x, y)[0, 1]) if x.size > 2 and x.std() > 0 and y.std() > 0 else None
        return out

    def flagged(self) -> list[PairStats]:
        """Return the flagged pairs, ranked (most negative median PR first)."""
        return [s for s in self.pair_stats if s.flagged]

    def to_json(self, top: int = 50, writer: str | None = None) -> dict[str, Any]:
        """Return the JSON report; ``pairs`` lists every pair of ``writer`` if given, else the ``top`` most
        negative pairs (0: all) plus every flagged one."""
        if writer is not None:
            pairs = [s for s in self.pair_stats if s.writer == writer]
        else:
            pairs = self.pair_stats if top == 0 else self.pair_stats[:top]
            pairs = pairs + [s for s in self.flagged() if s not in pairs]
        rp = []
        for w in self.focus:
            arr = self.resid_proj[w]
            for h, (q25, med, q75) in zip(self.hooks, arr, strict=True):
                rp.append({"writer": w, "hook": h, "median": _f(med), "q25": _f(q25), "q75": _f(q75)})
        return {
            "model": self.model_name,
            "n_prompts": self.n_prompts,
            "n_positions": self.n_positions,
            "n_intervention_prompts": self.n_intervention_prompts,
            "dla_mode": self.mode,
            "dla_max_residual": self.dla_error,
            "rule": {"threshold": self.rule.threshold, "consistency": self.rule.consistency,
                     "min_rel_norm": self.rule.min_rel_norm},
            "n_flagged": len(self.flagged()),
            "n_mirror_flagged": sum(s.mirror_flagged for s in self.pair_stats),
            "n_pairs": len(self.pair_stats),
            "flagged": [s.as_dict() for s in self.flagged()],
            "pairs": [{**s.as_dict(), "pr_median": _f(s.pr_median), "pr_q25": _f(s.pr_q25), "pr_q75": _f(s.pr_q75)}
                      for s in pairs],
            "focus_writers": self.focus,
            "residual_projection": rp,
            "dla_vs_total": self.dla_vs_total(),
            "dla_total_correlation": self.dla_te_correlation(),
            "causal": self.causal,
            "vcomp_fit": self.vcomp,
            "v_composition_top": _top_vcomp(self.v_composition),
            "adversarial": self.adversarial,
            "adversarial_any": self.adversarial_any,
            "timing": self.seconds,
        }


def _ratio(x: torch.Tensor, w: torch.Tensor, norm2: torch.Tensor) -> np.ndarray:
    return ((x * w).sum(-1) / norm2).double().numpy()


def _f(x: Any) -> float | None:
    x = float(x)
    return None if math.isnan(x) else round(x, 6)


def _top_vcomp(vc: dict[str, Any], k: int = 10) -> list[dict[str, Any]]:
    if not vc:
        return []
    names, signed, comp = vc["heads"], vc["signed"].numpy(), vc["composition"].numpy()
    idx = [(a, b) for a in range(len(names)) for b in range(len(names)) if np.isfinite(signed[a, b])]
    idx.sort(key=lambda ab: signed[ab])
    return [{"writer": names[a], "reader": names[b], "signed": _f(signed[a, b]), "composition": _f(comp[a, b])}
            for a, b in idx[:k]]


def fit_line(x: np.ndarray, y: np.ndarray) -> dict[str, float | None]:
    """Return least-squares slope, intercept and Pearson r of y on x."""
    if x.size < 3 or x.std() == 0:
        return {"slope": None, "intercept": None, "r": None, "n": int(x.size)}
    slope, intercept = np.polyfit(x, y, 1)
    r = np.corrcoef(x, y)[0, 1] if y.std() > 0 else float("nan")
    return {"slope": _f(slope), "intercept": _f(intercept), "r": _f(r), "n": int(x.size)}


def _restoring_train_mode(fn: Callable[..., Analysis]) -> Callable[..., Analysis]:
    """Run ``fn(model, ...)`` with the model in eval mode and put its own train/eval mode back afterwards."""

    @functools.wraps(fn)
    def run(model: Transformer, *args: Any, **kwargs: Any) -> Analysis:
        was_training = model.training
        model.eval()
        try:
            return fn(model, *args, **kwargs)
        finally:
            model.train(was_training)

    return run


@_restoring_train_mode
@torch.no_grad()
def analyze(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    writer: str | None = None,
    rule: ErasureRule | None = None,
    mode: str = "frozen",
    max_focus: int = 3,
    intervention_prompts: int | None = None,
    adversarial_k: int = 5,
    decode: Callable[[list[int]], str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Analysis:
    """Run the whole erasure analysis of ``model`` on ``prompts`` (lists of token ids); see the module doc.

    ``intervention_prompts``: run the second pass (ablations, patches) on the first this many prompts only
    (the projection-ratio statistics always use every prompt; resample sources and means come from all).
    The model runs in eval mode; its own mode, hooks and ``use_attn_result`` are as before afterwards.
    BadInput if there are no prompts, a prompt is empty, too long or has a token out of range, no prompt
    has a next token to attribute (every prompt one token long), or ``writer`` is not a head or MLP.
    """
    rule = rule or ErasureRule()
    mode = resolve_mode(model, mode)
    comps = C.components(model)
    focus_writer = C.parse_component(model, writer) if writer is not None else None
    if focus_writer is not None and focus_writer.kind not in ("head", "mlp"):
        raise BadInput(f"--writer must be a head or an MLP, got {focus_writer.name}")
    toks = check_prompts(model, prompts)
    if all(t.shape[1] < 2 for t in toks):
        raise BadInput("every prompt has one token: there is no next token to attribute (give prompts of 2 or more)")
    log = progress or (lambda s: None)
    t0 = time.perf_counter()
    resid_comps = [c for c in comps if c.in_residual]
    writers = C.writers(model)
    widx = [resid_comps.index(w) for w in writers]
    parallel = model.cfg.parallel_attn_mlp
    collector = PRCollector(writers, resid_comps, parallel)
    has_mid = not (model.cfg.attn_only or parallel)
    hooks = resid_hooks(model.cfg.n_layers, has_mid)
    rp_chunks: list[np.ndarray] = []  # per prompt [n_writer, n_hooks, p]
    dla_chunks: list[np.ndarray] = []
    targets: list[LogitTarget] = []
    store = SourceStore(comps)
    dla_err = 0.0
    for i, t in enumerate(toks):
        logits, cache = C.run_with_components(model, t)
        target = next_token_target(t, logits)
        targets.append(target)
        d = dla_from_cache(model, cache, logits, target, comps, mode)
        dla_err = max(dla_err, d.residual_error())
        m = target.mask()[0].numpy()
        dla_chunks.append(d.terms[:, 0].double().numpy()[:, m])
        outs = C.stack_outputs(model, cache, resid_comps)  # [n, 1, p, d]
        pr = projection_ratios(outs, widx)[:, :, 0]  # [nw, n, p]
        W = outs[widx][:, 0]  # [nw, p, d]
        resid = torch.stack([cache[h][0] for h in hooks])  # [nh, p, d]
        collector.add(pr, W.norm(dim=-1), C.final_resid(model, cache)[0].norm(dim=-1))
        rp = torch.stack([residual_projection(resid, W[k]) for k in range(len(writers))])  # [nw, nh, p]
        rp_chunks.append(rp.double().numpy())
        store.add(cache)
        if (i + 1) % 10 == 0:
            log(f"clean runs {i + 1}/{len(toks)}")
    t1 = time.perf_counter()

    stats = collector.stats(rule)
    pr_median = np.full((len(writers), len(resid_comps)), np.nan)
    for s in stats:
        pr_median[[w.name for w in writers].index(s.writer), [c.name for c in resid_comps].index(s.eraser)] = \
            s.pr_median
    resid_proj = {}
    for k, w in enumerate(writers):
        allp = np.concatenate([r[k] for r in rp_chunks], axis=1)  # [nh, N]
        resid_proj[w.name] = np.array([quartiles(row) for row in allp])
    if focus_writer is not None:
        focus = [focus_writer.name]
    else:
        focus = []
        for s in stats:
            if s.flagged and s.writer not in focus:
                focus.append(s.writer)
        focus = focus[:max_focus]
        if not focus:
            sums = np.nansum(np.minimum(pr_median, 0), axis=1)
            focus = [writers[int(np.argmin(sums))].name]

    # Pass 2: ablations, path patches, V-composition parts.
    order = resample_order([t.shape[1] for t in toks])
    te_r, te_m = [], []
    name_to_comp = {c.name: c for c in comps}
    flagged_by_writer: dict[str, list[C.Component]] = {}
    for s in stats:
        if s.flagged and name_to_comp[s.eraser].kind == "head":
            flagged_by_writer.setdefault(s.writer, []).append(name_to_comp[s.eraser])
    causal_acc: dict[str, dict[str, list]] = {}
    vpts: dict[str, tuple[list, list]] = {}
    eraser_sets: dict[str, tuple[list[C.Component], str]] = {}
    for wname in focus:
        w = name_to_comp[wname]
        erasers = flagged_by_writer.get(wname, [])
        source = "flagged"
        if not erasers:
            erasers = [c for c in comps if c.kind == "head" and C.reads_after(c, w, parallel)]
            source = "all heads in later layers (none flagged)"
        eraser_sets[wname] = (erasers, source)
    adv_rows: list[dict[str, Any]] = []
    n_int = len(toks) if intervention_prompts is None else max(1, min(intervention_prompts, len(toks)))
    for i, t in enumerate(toks[:n_int]):
        p = t.shape[1]
        m = targets[i].mask()[0].numpy()
        rs = ablation_effects(model, t, targets[i], comps, store.resample(i, order[i], p))
        ms = ablation_effects(model, t, targets[i], comps, store.mean(p))
        te_r.append(rs.effects.double().numpy()[:, m])
        te_m.append(ms.effects.double().numpy()[:, m])
        if not focus:
            continue
        logits, cache = C.run_with_components(model, t)
        outs_clean = {c: C.component_output(model, cache, c)[0] for c in comps if c.in_residual}
        scale = cache["ln_final.hook_scale"] if mode == "frozen" else None
        u, _ = logit_directions(model, targets[i])
        u = u.to(logits.dtype)
        for wname in focus:
            w = name_to_comp[wname]
            erasers, _ = eraser_sets[wname]
            if not erasers:
                continue
            acc = causal_acc.setdefault(wname, {"pr_clean": [], "pr_patched": [], "proj_clean": [], "proj_patched": [],
                                                "pr_each_patched": []})
            Wv = outs_clean[w]  # [p, d]
            n2 = (Wv * Wv).sum(-1).clamp(min=1e-30)
            _, pc = run_value_edge_patch(model, t, w, erasers)
            acc["pr_clean"].append(np.stack([_ratio(outs_clean[e], Wv, n2) for e in erasers]))
            acc["pr_patched"].append(np.stack([_ratio(C.component_output(model, pc, e)[0], Wv, n2) for e in erasers]))
            acc["proj_clean"].append(((C.final_resid(model, cache)[0] * Wv).sum(-1) / n2).double().numpy())
            acc["proj_patched"].append(((C.final_resid(model, pc)[0] * Wv).sum(-1) / n2).double().numpy())
            # The writer's DLA vs the DLA of the erasers' V-composition part that reads it.
            vsum = sum(vcomp_part(model, cache, w, e) for e in erasers)
            wd = project_to_logits(model, outs_clean[w][None], scale, u)[0].double().numpy()[m]
            vd = project_to_logits(model, vsum, scale, u)[0].double().numpy()[m]
            xs, ys = vpts.setdefault(wname, ([], []))
            xs.append(wd)
            ys.append(vd)
            wi = comps.index(w)
            for pos in np.nonzero(m)[0]:
                k = int(np.cumsum(m)[pos] - 1)
                adv_rows.append({"writer": wname, "prompt": i, "position": int(pos),
                                 "dla": float(dla_chunks[i][wi, k]), "total_effect": float(te_r[i][wi, k]),
                                 "total_effect_mean_ablation": float(te_m[i][wi, k])})
        if (i + 1) % 10 == 0:
            log(f"ablations and patches {i + 1}/{n_int}")
    t2 = time.perf_counter()

    causal = []
    for wname, acc in causal_acc.items():
        erasers, source = eraser_sets[wname]
        prc = np.concatenate(acc["pr_clean"], axis=1)
        prp = np.concatenate(acc["pr_patched"], axis=1)
        pjc = np.concatenate(acc["proj_clean"])
        pjp = np.concatenate(acc["proj_patched"])
        causal.append({
            "writer": wname,
            "erasers": [e.name for e in erasers],
            "erasers_from": source,
            "eraser_pr_clean": {e.name: _f(np.nanmedian(prc[k])) for k, e in enumerate(erasers)},
            "eraser_pr_patched": {e.name: _f(np.nanmedian(prp[k])) for k, e in enumerate(erasers)},
            "sum_pr_clean": _f(np.nanmedian(prc.sum(0))),
            "sum_pr_patched": _f(np.nanmedian(prp.sum(0))),
            "final_projection_clean": _f(np.nanmedian(pjc)),
            "final_projection_patched": _f(np.nanmedian(pjp)),
            "final_projection_q25_q75_clean": [_f(np.nanpercentile(pjc, 25)), _f(np.nanpercentile(pjc, 75))],
            "final_projection_q25_q75_patched": [_f(np.nanpercentile(pjp, 25)), _f(np.nanpercentile(pjp, 75))],
        })
    vfits = []
    vcomp_points = {}
    for wname, (xs, ys) in vpts.items():
        x, y = np.concatenate(xs), np.concatenate(ys)
        vcomp_points[wname] = (x, y)
        vfits.append({"writer": wname, "erasers": [e.name for e in eraser_sets[wname][0]], **fit_line(x, y)})
    adversarial = adversarial_examples(adv_rows, toks, adversarial_k, decode)
    any_rows = []
    positions = [np.nonzero(targets[i].mask()[0].numpy())[0] for i in range(n_int)]
    for ci, comp in enumerate(comps):
        if comp.kind not in ("embed", "head", "mlp"):
            continue
        for i in range(n_int):
            d_i, t_i = dla_chunks[i][ci], np.maximum(np.abs(te_r[i][ci]), np.abs(te_m[i][ci]))
            ok = t_i <= 0.2 * np.abs(d_i)
            if ok.any():
                k = int(np.argmax(np.where(ok, np.abs(d_i) - t_i, -np.inf)))
                any_rows.append({"writer": comp.name, "prompt": i, "position": int(positions[i][k]),
                                 "dla": float(d_i[k]), "total_effect": float(te_r[i][ci][k]),
                                 "total_effect_mean_ablation": float(te_m[i][ci][k])})
    any_rows.sort(key=lambda r: abs(r["dla"]) - _worst(r), reverse=True)
    seen: dict[str, int] = {}
    picked = []
    for r in any_rows:  # at most two per component, for variety
        if seen.get(r["writer"], 0) < 2:
            picked.append(r)
            seen[r["writer"]] = seen.get(r["writer"], 0) + 1
    adversarial_any = adversarial_examples([{**r, "writer": "*"} for r in picked], toks, 2 * adversarial_k, decode)
    for row, r in zip(adversarial_any, picked, strict=False):
        row["writer"] = r["writer"]
    vc = v_composition_scores(model)
    t3 = time.perf_counter()
    n_pos = int(sum(c.shape[1] for c in dla_chunks))
    return Analysis(
        model_name=model.cfg.model_name, n_prompts=len(toks), n_positions=n_pos,
        n_intervention_prompts=n_int, comps=comps, writers=writers,
        rule=rule, mode=mode, pair_stats=stats, pr_median=pr_median, hooks=hooks, resid_proj=resid_proj, focus=focus,
        dla_points=np.concatenate(dla_chunks[:n_int], axis=1), te_resample=np.concatenate(te_r, axis=1),
        te_mean=np.concatenate(te_m, axis=1), causal=causal, vcomp=vfits, vcomp_points=vcomp_points,
        v_composition=vc, adversarial=adversarial, adversarial_any=adversarial_any,
        seconds={"clean": round(t1 - t0, 3), "interventions": round(t2 - t1, 3), "weights": round(t3 - t2, 3),
                 "per_prompt": round((t3 - t0) / len(toks), 4)},
        dla_error=float(dla_err),
    )


def _worst(r: dict[str, Any]) -> float:
    return max(abs(r["total_effect"]), abs(r["total_effect_mean_ablation"]))


def adversarial_examples(rows: list[dict[str, Any]], toks: Sequence[torch.Tensor], k: int,
                         decode: Callable[[list[int]], str] | None = None,
                         max_ratio: float = 0.2) -> list[dict[str, Any]]:
    """Return up to ``k`` (prompt, position) points per writer where its DLA is large and its total effect small.

    Candidates have |total effect| <= ``max_ratio`` * |DLA| under both resample and mean ablation (a
    resample alone can be small by luck, when the other prompt happens to give the same output); they are
    ranked by |DLA| - max |total effect|.
    """
    out = []
    for wname in dict.fromkeys(r["writer"] for r in rows):
        cands = [r for r in rows if r["writer"] == wname and _worst(r) <= max_ratio * abs(r["dla"])]
        cands.sort(key=lambda r: abs(r["dla"]) - _worst(r), reverse=True)
        for r in cands[:k]:
            ids = toks[r["prompt"]][0, : r["position"] + 1].tolist()
            nxt = toks[r["prompt"]][0, r["position"] + 1].item()
            row = {**r, "dla": _f(r["dla"]), "total_effect": _f(r["total_effect"]),
                   "total_effect_mean_ablation": _f(r["total_effect_mean_ablation"]), "context_ids": ids[-12:],
                   "next_id": nxt}
            if decode is not None:
                row["context"] = decode(ids[-12:])
                row["next"] = decode([nxt])
            out.append(row)
    return out
