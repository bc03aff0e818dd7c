"""How the overwhelm prover's time and memory grow with n_fix and n_free (printed table, fitted exponents).

Model: the shipped ``overwhelm-1l`` (1 layer, 1 head, d_model 128, vocab 4096, RoPE) when present,
else a random-init model of that shape. Claims: a prefix cut from real text (the test sentences,
repeated), a one-token suffix (the paper's query token), every free token allowed.

Reported per run: wall seconds, CPU seconds of this process (BLAS is kept on one thread by the
prover, so CPU seconds are what an idle core would take; wall time also counts waiting for a shared
machine), peak traced memory (numpy allocations, via tracemalloc, which slows the run by about 30 %;
the n_fix 1024, n_free 64 goal is timed once more without it), the number of cases and the
certified margin. Exponents are least-squares slopes of log CPU time against log n_fix (largest
n_free) and log n_free (largest n_fix).

A second table does the same for a *designed* prefix on overwhelm-1l (the token " congreg" repeated,
suffix "."; found by scanning repeated "attention magnet" tokens, see docs/prove.md), where proofs
happen, and ``--check`` also times the independent checker on the proven certificate with n_free = 1.

    python benchmarks/prove_scaling.py            # full grid (a few minutes of CPU)
    python benchmarks/prove_scaling.py --quick    # small grid
    python benchmarks/prove_scaling.py --alpha-stop   # an unprovable claim with and without alpha_stop
    python benchmarks/prove_scaling.py --goal         # only the goal's claim (n_fix 1024, n_free 64)
"""

from __future__ import annotations

import argparse
import math
import time
import tracemalloc
from pathlib import Path

import numpy as np

from assay.model import ModelConfig, Transformer, load, shipped_models
from assay.prove import engine, prove


def get_model():
    if "overwhelm-1l" in shipped_models():
        return load("overwhelm-1l"), "overwhelm-1l"
    cfg = ModelConfig(n_layers=1, d_model=128, n_heads=1, d_head=128, d_mlp=512, d_vocab=4096, n_ctx=2048,
                      act_fn="relu", positional_embedding_type="rotary")
    m = Transformer(cfg)
    m.init_weights(seed=0)
    return m.eval(), "random-init (overwhelm-1l shape)"


def text_ids(model, n: int) -> list[int]:
    """n token ids of the test sentences (repeated); random ids only for the random-init model, which
    has no tokenizer. Exits when the model has a tokenizer but the sentences are missing (say, when the
    script runs from a copy of benchmarks/), rather than timing random tokens under the text's label."""
    tok = getattr(model, "tokenizer", None)
    path = Path(__file__).resolve().parents[1] / "tests" / "data" / "sentences.txt"
    if tok is None:
        ids = np.random.default_rng(0).integers(0, model.cfg.d_vocab, 2000).tolist()
    elif path.is_file():
        ids = tok.encode(path.read_text()).ids
    else:
        raise SystemExit(f"prove_scaling: {path} is missing (run the script from a checkout of assay)")
    return (ids * (n // len(ids) + 1))[:n]


def goal(model, ids: list[int]) -> None:
    """Times the goal's claim (n_fix 1024, n_free 64) without tracemalloc (the goal is about the prover,
    not about tracemalloc's bookkeeping, ~30 % on top), then with method /7's 8 runs of free positions
    instead of /8's 32 as a baseline in the same process."""
    c0 = time.process_time()
    prove(model, ids[:1024], 64, suffix=[ids[1024]])
    now = time.process_time() - c0
    print(f"n_fix 1024, n_free 64 without tracemalloc: {now:.1f} CPU seconds (goal: < 10)")
    engine.RUNS, runs = 8, engine.RUNS
    try:
        c0 = time.process_time()
        prove(model, ids[:1024], 64, suffix=[ids[1024]])
        before = time.process_time() - c0
    finally:
        engine.RUNS = runs
    print(f"  with 8 runs of free positions (method /7's attention terms): {before:.1f} CPU seconds;"
          f" {runs} runs / 8 runs = {now / before:.2f}")


def alpha_stop_row(model) -> None:
    """Times an unprovable claim (32 random tokens, a random suffix, n_free 1) with the default
    alpha_stop and with the full slope search (design's FULL_SEARCH), in this process."""
    from assay.prove.design import FULL_SEARCH

    ids = np.random.default_rng(0).integers(0, model.cfg.d_vocab, 33).tolist()  # random-init's text_ids
    print("\nalpha_stop on an unprovable claim: 32 random tokens, n_free 1 (the full search takes minutes)")
    print(f"{'search':>22} {'cpu s':>8} {'margin':>10} {'with slopes':>11}")  # competitors, in the evidence
    times = {}
    for label, options in (("alpha_stop -1", None), ("full (alpha_stop -1e9)", FULL_SEARCH)):
        c0 = time.process_time()
        r = prove(model, ids[:32], 1, suffix=[ids[32]], options=options)
        times[label] = time.process_time() - c0
        n_alpha = sum(len(c["alpha"]) for c in r.certificate["cases"])
        print(f"{label:>22} {times[label]:8.1f} {r.best_margin:10.3f} {n_alpha:11d}", flush=True)
    print(f"full / alpha_stop = {times['full (alpha_stop -1e9)'] / times['alpha_stop -1']:.1f}")


def slope(xs, ys) -> float:
    lx, ly = np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float))
    return float(np.polyfit(lx, ly, 1)[0]) if len(xs) > 1 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small grid")
    ap.add_argument("--check", action="store_true", help="also time check() on a proven certificate (slow)")
    only = ap.add_mutually_exclusive_group()
    only.add_argument("--alpha-stop", action="store_true",
                      help="only time an unprovable claim with and without alpha_stop (minutes)")
    only.add_argument("--goal", action="store_true", help="only time the goal's claim, n_fix 1024 and n_free 64")
    args = ap.parse_args()
    model, name = get_model()
    if args.alpha_stop:
        alpha_stop_row(model)
        return
    if args.goal:
        ids = text_ids(model, 1025)
        prove(model, ids[:32], 1, suffix=[ids[32]])  # warm up, as the grid is when it reaches the goal
        goal(model, ids)
        return
    n_fixes = [32, 128, 512] if args.quick else [32, 64, 128, 256, 512, 1024]
    n_frees = [1, 4, 16] if args.quick else [1, 4, 16, 64]
    print(f"model: {name}  (d_model {model.cfg.d_model}, heads {model.cfg.n_heads}, vocab {model.cfg.d_vocab})")
    print(f"{'n_fix':>6} {'n_free':>6} {'cases':>6} {'wall s':>8} {'cpu s':>8} {'peak MB':>8} {'proven':>7} "
          f"{'margin':>10}")
    rows = []
    ids = text_ids(model, max(n_fixes) + 1)
    for n_fix in n_fixes:
        for n_free in n_frees:
            prefix = ids[:n_fix]
            suffix = [ids[n_fix]]
            tracemalloc.start()
            t0, c0 = time.perf_counter(), time.process_time()
            r = prove(model, prefix, n_free, suffix=suffix)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            peak = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
            rows.append((n_fix, n_free, wall, cpu, peak))
            m = r.best_margin if r.best_margin is not None else math.nan
            print(f"{n_fix:6d} {n_free:6d} {r.details['n_cases']:6d} {wall:8.2f} {cpu:8.2f} {peak:8.1f} "
                  f"{str(r.proven):>7} {m:10.3f}", flush=True)
    big_free = max(n_frees)
    big_fix = max(n_fixes)
    by_fix = [(f, c) for f, fr, _w, c, _p in rows if fr == big_free]
    by_free = [(fr, c) for f, fr, _w, c, _p in rows if f == big_fix]
    print(f"\nCPU time ~ n_fix^{slope(*zip(*by_fix, strict=True)):.2f} at n_free={big_free};"
          f" ~ n_free^{slope(*zip(*by_free, strict=True)):.2f} at n_fix={big_fix}")
    mem_fix = [(f, p) for f, fr, _w, _c, p in rows if fr == big_free]
    print(f"peak memory ~ n_fix^{slope(*zip(*mem_fix, strict=True)):.2f} at n_free={big_free}")
    if 1024 in n_fixes and 64 in n_frees:
        goal(model, ids)
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        return
    b, q = tok.encode(" congreg").ids[-1], tok.encode(".").ids[-1]
    n_fix = max(n_fixes)
    print(f"\ndesigned prefix: {tok.decode([b])!r} x {n_fix}, suffix {tok.decode([q])!r}")
    print(f"{'n_free':>6} {'cases':>6} {'cpu s':>8} {'proven':>7} {'margin':>10} {'Lambda(L=n_free)':>17}")
    for n_free in ([1, 2, 4, 8] if args.quick else [1, 2, 4, 8, 16, 64]):
        c0 = time.process_time()
        r = prove(model, [b] * n_fix, n_free, suffix=[q])
        cpu = time.process_time() - c0
        lam = r.details["per_length"][-1]["lambda_max"][0]
        print(f"{n_free:6d} {r.details['n_cases']:6d} {cpu:8.2f} {str(r.proven):>7} {r.best_margin:10.3f} {lam:17.3f}",
              flush=True)
        if args.check and n_free == 1 and r.proven:
            from assay.prove import check

            c0 = time.process_time()
            ok = check(r.certificate, model)
            print(f"       check: {ok} in {time.process_time() - c0:.1f} CPU seconds", flush=True)


if __name__ == "__main__":
    main()
