"""Saturation: interpreter and circuit throughput against n, and circuit size / depth against n.

Prints tables (not pass / fail):

1. exact streaming interpreter, p-bit (p = 24) streaming interpreter and the float64 torch forward pass
   on the same construction and string: positions per second, and torch's speed-up over exact;
2. compiled circuits: depth, gates, wires, compile time and evaluation throughput (inputs per second,
   batched, exact) against n, with the fitted size exponent.

Run: .venv/bin/python benchmarks/saturation_throughput.py [--quick]
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
import torch

from assay.saturation.circuit import compile_construction, fit_power
from assay.saturation.constructions import build
from assay.saturation.languages import sample


def interpreter_rows(langs: list[str], ns: list[int]) -> list[list]:
    rows = []
    for lang in langs:
        for n in ns:
            c = build(lang, n)
            w = sample(lang, n, random.Random(0))
            t = time.perf_counter()
            st = c.interpreter().stream()
            for tok in w:
                st.push(tok)
            exact = n / (time.perf_counter() - t)
            m = min(n, 2000)
            t = time.perf_counter()
            st = c.interpreter(precision=24).stream()
            for tok in w[:m]:
                st.push(tok)
            pbit = m / (time.perf_counter() - t)
            tt = None
            if n <= 4000:  # torch materialises [n, n] scores
                x = torch.tensor([w])
                best = float("inf")
                with torch.no_grad():
                    c.model(x)  # warm-up
                    for _ in range(3):
                        t = time.perf_counter()
                        c.model(x)
                        best = min(best, time.perf_counter() - t)
                tt = n / best
            rows.append([lang, n, f"{exact:,.0f}", f"{pbit:,.0f}", f"{tt:,.0f}" if tt else "-",
                         f"{tt / exact:,.1f}x" if tt else "-"])
    return rows


def circuit_rows(langs: list[str], ns: list[int]) -> tuple[list[list], dict]:
    rows, fits = [], {}
    for lang in langs:
        pts = []
        for n in ns:
            r = compile_construction(lang, n, random_inputs=20)
            circ = r["circuit"]
            X = np.random.default_rng(0).integers(0, 2, size=(512, n))
            t = time.perf_counter()
            circ.evaluate(X)
            ips = 512 / (time.perf_counter() - t)
            rows.append([lang, n, r["depth"], r["size"], r["wires"], f"{r['compile_seconds']:.2f}",
                         f"{ips:,.0f}", r["all_equal"]])
            pts.append((n, r["size"]))
        fits[lang] = fit_power(pts)
    return rows, fits


def show(header: list[str], rows: list[list]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    print("  ".join(str(h).rjust(w) for h, w in zip(header, widths, strict=True)))
    for r in rows:
        print("  ".join(str(x).rjust(w) for x, w in zip(r, widths, strict=True)))
    print()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    ns = [100, 1000] if a.quick else [100, 1000, 10_000, 100_000]
    show(["language", "n", "exact pos/s", "p=24 pos/s", "torch f64 pos/s", "torch / exact"],
         interpreter_rows(["majority", "dyck1", "anbn"], ns))
    cns = [4, 8, 16, 32] if a.quick else [4, 8, 16, 32, 64, 128]
    rows, fits = circuit_rows(["majority", "threshold", "dyck1", "anbn"], cns)
    show(["language", "n", "depth", "gates", "wires", "compile s", "eval inputs/s", "== interpreter"], rows)
    for lang, f in fits.items():
        print(f"{lang}: gates ~ n^{f['k']:.2f} (R^2 {f['r2']:.4f})")


if __name__ == "__main__":
    main()
