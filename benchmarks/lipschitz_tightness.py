"""Tightness: proved upper bound / best lower bound found, against n and R; the sqrt(n) exponent.

For MiniLM's layer-0 head 0 (the paper's f, on the ball of radius R, and on the LayerNorm set) it
prints, for each R and n: the best lower bound (multi-seed projected ascent), the proved upper bound
and their ratio; the exponent fitted to the lower bounds at the largest R (goal: within [0.45, 0.55]);
and the recalled PAPERS.md formulas beside ours: the recalled sqrt(n) bound, and the recalled
data-dependent bound at every point the search visited, on the bias-free version of the head (the
paper's setting), where a value below the exact ||J(X)|| would disprove the formula.
Prints tables; asserts nothing.

    .venv/bin/python benchmarks/lipschitz_tightness.py [--quick]
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace

import torch

from assay.lipschitz.api import torch_threads
from assay.lipschitz.bounds import map_constants, recalled_data_bound, upper_bounds
from assay.lipschitz.jacobian import jacobian_norm_exact
from assay.lipschitz.lower import lower_bound
from assay.lipschitz.maps import attention_map
from assay.lipschitz.models import load_model
from assay.lipschitz.sets import TokenSet
from assay.lipschitz.sweep import fit_power_law


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    ns = [2, 4, 8, 16, 32] if args.quick else [2, 4, 8, 16, 32, 64, 128]
    radii = [1.0, 12.0, 30.0] if args.quick else [0.5, 1.0, 4.0, 12.0, 30.0, 100.0]
    steps = 12 if args.quick else 30
    model = load_model("minilm")
    f = attention_map(model, 0, head=0, causal=False, layernorm=False)
    mc = map_constants(f)
    print("MiniLM L0H0 unmasked, ball of radius R: upper / lower (lower = best ascent value)")
    print(f"{'R':>6} " + " ".join(f"{'n=' + str(n):>18}" for n in ns))
    largest = None
    t0 = time.perf_counter()
    for R in radii:
        tset = TokenSet("ball", R, 384)
        cells, lows = [], []
        for n in ns:
            lb = lower_bound(f, tset, n, steps=steps)
            ub = upper_bounds(f, tset, n, mc)
            lows.append(lb.value)
            cells.append(f"{ub.upper / lb.value:6.2f} ({lb.value:8.3g})")
        largest = (R, lows)
        print(f"{R:6.3g} " + " ".join(f"{c:>18}" for c in cells), flush=True)
    R, lows = largest
    for label, keep in (("all n", lambda n: True), ("n >= 8", lambda n: n >= 8)):
        pts = [(n, v) for n, v in zip(ns, lows, strict=True) if keep(n)]
        fit = fit_power_law([p[0] for p in pts], [p[1] for p in pts])
        lo, hi = fit["alpha_ci"] or (float("nan"), float("nan"))
        print(f"\nexponent of the best lower bound at R = {R:g} ({label}): alpha = {fit['alpha']:.3f} "
              f"[{lo:.3f}, {hi:.3f}], C = {fit['C']:.4g}; goal [0.45, 0.55]: "
              f"{'met' if 0.45 <= fit['alpha'] <= 0.55 else 'not met'}")  # fmt: skip
    # The LayerNorm set of MiniLM layer 1 (its input is layer 0's output LayerNorm)
    g = attention_map(model, 1, head=0, causal=False, layernorm=True)
    mg = map_constants(g)
    tset = TokenSet("layernorm", math.sqrt(384), 384)
    print("\nMiniLM L1H0 on the LayerNorm set (R = sqrt(384)): n, lower, upper, ratio")
    for n in ns:
        lb = lower_bound(g, tset, n, steps=steps)
        ub = upper_bounds(g, tset, n, mg)
        print(f"{n:5d} {lb.value:12.4g} {ub.upper:12.4g} {ub.upper / lb.value:8.2f}", flush=True)
    # The recalled formulas, on the bias-free head (the paper's setting).
    z = torch.zeros_like(f.b_Q)
    p = replace(f, b_Q=z, b_K=z, b_V=z)
    mp = map_constants(p)
    print("\nbias-free MiniLM L0H0: ours vs recalled sqrt(n) bound; recalled data-dependent bound vs exact")
    print(f"{'R':>6} {'n':>4} {'ours':>11} {'recalled':>11} {'min recalled-data / exact over visited points':>46}")
    for R in radii[:3]:
        tset = TokenSet("ball", R, 384)
        for n in ns[:3]:
            ub = upper_bounds(p, tset, n, mp)
            lb = lower_bound(p, tset, n, steps=steps)
            worst = math.inf
            pts = [lb.X] + [tset.random(n, torch.Generator().manual_seed(s)) for s in range(3)]
            for X in pts:
                worst = min(worst, recalled_data_bound(p, X, mp) / jacobian_norm_exact(p, X).value)
            print(f"{R:6.3g} {n:4d} {ub.sqrt_n:11.4g} {ub.recalled_sqrt_n:11.4g} {worst:46.4f}", flush=True)
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    with torch_threads(1):
        main()
