"""Seconds per prompt of the full erasure analysis, against prompt length and number of components.

    .venv/bin/python benchmarks/erasure_cost.py [--quick] [--threads 1]

Rows: the shipped lm-4l (if present) and a GPT-2-small-size random model (12 layers, d_model 768, 12
heads, d_mlp 3072, vocabulary 50257) at several prompt lengths; then random models of lm-4l's width
with 1..8 layers at one length (how the cost grows with the number of components). Each row analyses
a few random prompts of one length and prints the seconds per prompt for the clean pass (DLA, PRs,
residual projections), the interventions (resample + mean ablation of every component, value-edge
patches, V-composition parts) and in total (which also includes the weights-only V-composition
scores, computed once per analysis and divided among the prompts). A table, no assertions.
"""

from __future__ import annotations

import argparse
import time

import torch

from assay.erasure import components as C
from assay.erasure.analysis import analyze, torch_threads
from assay.model import ModelConfig, Transformer, shipped_models


def random_prompts(model: Transformer, n: int, length: int, seed: int = 0) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.cfg.d_vocab, (n, length), generator=gen).tolist()


def row(label: str, model: Transformer, length: int, n: int) -> list[str]:
    a = analyze(model, random_prompts(model, n, length))
    s = a.seconds
    per = lambda key: s[key] / n  # noqa: E731
    return [label, str(len(C.components(model))), str(length), str(n), f"{per('clean'):.3f}",
            f"{per('interventions'):.3f}", f"{s['per_prompt']:.3f}"]


def gpt2_small(n_layers: int = 12) -> Transformer:
    cfg = ModelConfig(n_layers=n_layers, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257, n_ctx=1024,
                      act_fn="gelu_new", model_name=f"gpt2-small-size-random-{n_layers}l")
    torch.manual_seed(0)
    return Transformer(cfg).eval()


def lm_width(n_layers: int) -> Transformer:
    cfg = ModelConfig(n_layers=n_layers, d_model=256, n_heads=8, d_head=32, d_mlp=1024, d_vocab=3072, n_ctx=128,
                      act_fn="gelu", model_name=f"random-{n_layers}l-d256")
    torch.manual_seed(0)
    return Transformer(cfg).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer lengths and prompts")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    n = 2 if args.quick else 4
    header = ["model", "components", "length", "prompts", "clean s/prompt", "interventions s/prompt", "total s/prompt"]
    rows = []
    with torch_threads(args.threads):
        if "lm-4l" in shipped_models():
            from assay.model import load

            lm = load("lm-4l")
            for length in ([16, 64] if args.quick else [16, 32, 64, 128]):
                rows.append(row("lm-4l", lm, length, n))
                print(" | ".join(rows[-1]), flush=True)
        gpt = gpt2_small()
        for length in ([16] if args.quick else [16, 32]):  # ~1.5 min per 16 tokens on one thread
            rows.append(row(gpt.cfg.model_name, gpt, length, 1))
            print(" | ".join(rows[-1]), flush=True)
        del gpt
        for layers in ([1, 4] if args.quick else [1, 2, 4, 8]):
            rows.append(row(f"random {layers}L d256", lm_width(layers), 64, n))
            print(" | ".join(rows[-1]), flush=True)
    print()
    print(f"threads={args.threads}, torch {torch.__version__}")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"\n{time.perf_counter() - t0:.0f} s in all")
