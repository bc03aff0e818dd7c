"""The erasure analysis of the shipped lm-4l on held-out text: the tables of docs/erasure.md.

    .venv/bin/python benchmarks/erasure_lm4l.py [--n 300] [--intervene 100] [--tokens 64] [--writer L0H2] [--json OUT]

Prompts: ``--n`` windows of ``--tokens`` tokens from the validation splits of KJV and the Python
standard library (80/20, as lm-4l was trained; needs the corpora), seed 0. Prints markdown tables:
most negative pairs and flagged ones, the residual projection of the focus writers, the causal test,
the V-composition fit, DLA vs total effect per component, weights-only V-composition, adversarial
examples. Everything printed is measured by this run; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from assay.erasure.analysis import analyze, torch_threads
from assay.erasure.prompts import corpus_windows
from assay.model import load


def md(header: list[str], rows: list[list]) -> str:
    def cell(x):
        if isinstance(x, float):
            return f"{x:+.3f}"
        return "—" if x is None else str(x)

    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def attention_to_first(model, prompts: list[list[int]]) -> np.ndarray:
    """Return the mean attention weight on position 0 from positions >= 1, [n_layers, n_heads]."""
    acc = np.zeros((model.cfg.n_layers, model.cfg.n_heads))
    with torch.no_grad():
        for p in prompts:
            _, cache = model.run_with_cache(torch.tensor([p]), names_filter=lambda n: n.endswith("hook_pattern"))
            for layer in range(model.cfg.n_layers):
                acc[layer] += cache["pattern", layer][0, :, 1:, 0].mean(-1).numpy()
    return acc / len(prompts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--intervene", type=int, default=100, help="ablations and patches on the first N prompts")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--writer", default=None)
    ap.add_argument("--json", default=None, help="also write the full JSON report here")
    args = ap.parse_args()
    model = load("lm-4l")
    prompts = corpus_windows(model.tokenizer, args.n, args.tokens, seed=0)
    t0 = time.perf_counter()
    with torch_threads(1):
        a = analyze(model, prompts, writer=args.writer, decode=model.tokenizer.decode,
                    intervention_prompts=args.intervene, progress=lambda s: print(s, flush=True))
    j = a.to_json(top=15, writer=args.writer)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(j, f, indent=1)
    print(f"\n{j['n_prompts']} prompts x {args.tokens} tokens, {j['n_positions']} target positions "
          f"(interventions on {j['n_intervention_prompts']}); {j['n_pairs']} pairs, mirrored rule passes "
          f"{j['n_mirror_flagged']}; "
          f"{time.perf_counter() - t0:.0f} s ({j['timing']['per_prompt']:.2f} s/prompt); "
          f"DLA max |sum - logit diff| = {j['dla_max_residual']:.2g}; flagged pairs: {j['n_flagged']}\n")
    print("### Most negative pairs\n")
    print(md(["writer", "reader", "median PR", "q25", "q75", "prompts < 0", "flagged"],
             [[p["writer"], p["eraser"], p["pr_median"], p["pr_q25"], p["pr_q75"], p["frac_prompts_negative"],
               p["flagged"]] for p in j["pairs"]]))
    print("\n### Residual stream projection onto the focus writers (median [q25, q75])\n")
    hooks = list(dict.fromkeys(r["hook"] for r in j["residual_projection"]))
    rows = []
    for h in hooks:
        r = [h.replace("blocks.", "").replace(".hook_", " ")]
        for w in j["focus_writers"]:
            e = next(x for x in j["residual_projection"] if x["writer"] == w and x["hook"] == h)
            r.append(f"{e['median']:+.3f} [{e['q25']:+.3f}, {e['q75']:+.3f}]")
        rows.append(r)
    print(md(["hook", *j["focus_writers"]], rows))
    print("\n### Causal test (writer removed from the erasers' value input, LN scale frozen)\n")
    for c in j["causal"]:
        print(f"- {c['writer']} -> {len(c['erasers'])} erasers ({c['erasers_from']}): summed eraser PR "
              f"{c['sum_pr_clean']:+.3f} -> {c['sum_pr_patched']:+.3f}; final projection "
              f"{c['final_projection_clean']:+.3f} -> {c['final_projection_patched']:+.3f}")
        top = sorted(c["eraser_pr_clean"], key=lambda e: c["eraser_pr_clean"][e])[:8]
        print(md(["eraser", "PR clean", "PR patched"],
                 [[e, c["eraser_pr_clean"][e], c["eraser_pr_patched"][e]] for e in top]))
    print("\n### Writer DLA vs DLA of the erasers' V-composition part\n")
    print(md(["writer", "slope", "intercept", "r", "n"],
             [[f["writer"], f["slope"], f["intercept"], f["r"], f["n"]] for f in j["vcomp_fit"]]))
    print("\n### DLA vs total effect per component (means over target positions)\n")
    rows = sorted(j["dla_vs_total"], key=lambda r: -(r["dla_abs"] or 0))[:15]
    print(md(["component", "DLA", "|DLA|", "total (resample)", "|total|", "total (mean abl.)"],
             [[r["component"], r["dla"], r["dla_abs"], r["total_effect"], r["total_effect_abs"],
               r["total_effect_mean_ablation"]] for r in rows]))
    corr = j["dla_total_correlation"]
    print(f"\nPearson r (every component x position): resample {corr['resample']}, mean {corr['mean']}")
    print("\n### Weights-only V-composition, most negative signed scores\n")
    print(md(["writer", "reader", "signed", "composition"],
             [[v["writer"], v["reader"], v["signed"], v["composition"]] for v in j["v_composition_top"]]))
    for key in ("adversarial", "adversarial_any"):
        print(f"\n### {key}: |total effect| <= |DLA| / 5 under both ablations, largest |DLA|\n")
        print(md(["component", "context", "next", "DLA", "total (resample)", "total (mean)"],
                 [[r["writer"], repr(r.get("context", ""))[-50:], repr(r.get("next", "")), r["dla"], r["total_effect"],
                   r["total_effect_mean_ablation"]] for r in j[key]]))
    print("\n### Every head writer of layers 0-1: residual projection (median) and attention to position 0\n")
    att0 = attention_to_first(model, prompts[:50])
    rows = []
    for w in [w for w in a.writers if w.kind == "head" and w.layer <= 1]:
        q = a.resid_proj[w.name][:, 1]
        own = a.hooks.index(f"blocks.{w.layer}.hook_resid_post")
        rows.append([w.name, float(att0[w.layer, w.head]), float(q[own]), float(q[-1]),
                     float(np.nanmin(a.pr_median[a.writers.index(w)]))])
    print(md(["writer", "attention to pos 0", "proj. at own resid_post", "proj. at the end", "min median PR"], rows))


if __name__ == "__main__":
    main()
