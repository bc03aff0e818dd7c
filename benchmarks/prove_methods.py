"""What the last methods cost and buy: the same claims proved by method /5 (``engine.NORM_DIRS =
False``, ``engine.GAMMA = False``, ``engine.RUNS = 8``), /6 (norm directions, no weight of sigma), /7
(both) and /8 (and up to 32 runs of free positions instead of 8: the default), in one process, CPU
seconds of one thread, and each method's time as a ratio to /5's.

Claims on overwhelm-1l with suffix " unto": the README example (" Haman" x 512, n_free 3), which the
first pass proves (so neither /6 nor /7 costs anything there), and " Haman" x 256 at n_free 9 and 10,
whose longest cases the first pass does not prove (they take the second pass with the slopes, the
directions and, from /7, the weight of sigma on the tangent path). Their 9 and 10 free positions are
more than 8 runs, so /8 cuts them finer than /7.

    python benchmarks/prove_methods.py      # about 35 minutes
"""

from __future__ import annotations

import time

import torch
from threadpoolctl import threadpool_limits

from assay.model import load
from assay.prove import engine, prove

CLAIMS = (("' Haman' x 512, n_free 3 (README)", 512, 3), ("' Haman' x 256, n_free 9", 256, 9),
          ("' Haman' x 256, n_free 10", 256, 10))
METHODS = (("/5", False, False, 8), ("/6", True, False, 8), ("/7", True, True, 8), ("/8", True, True, 32))


def run(model, n_fix: int, n_free: int, dirs: bool, gamma: bool, runs: int):
    """(result, CPU seconds) of one claim with the method's switches set (restored afterwards)."""
    saved = engine.NORM_DIRS, engine.GAMMA, engine.RUNS
    engine.NORM_DIRS, engine.GAMMA, engine.RUNS = dirs, gamma, runs
    try:
        t0 = time.process_time()
        r = prove(model, [2944] * n_fix, n_free, suffix=[321])
        return r, time.process_time() - t0
    finally:
        engine.NORM_DIRS, engine.GAMMA, engine.RUNS = saved


def main() -> None:
    torch.set_num_threads(1)
    model = load("overwhelm-1l")
    head = " ".join(f"{m[0] + ' margin':>10}" for m in METHODS)
    cpu = " ".join(f"{m[0] + ' CPU s':>9}" for m in METHODS)
    ratios = " ".join(f"{m[0] + ' / /5':>8}" for m in METHODS[1:])
    print(f"{'claim':<34} {head} {cpu} {ratios} {'cases with gamma':>17}")
    with threadpool_limits(1):
        for label, n_fix, n_free in CLAIMS:
            runs = [run(model, n_fix, n_free, *switches) for _, *switches in METHODS]
            used = sum(1 for c in runs[-1][0].certificate["cases"] if any("gamma" in e for e in c["alpha"]))
            t5 = runs[0][1]
            print(f"{label:<34} " + " ".join(f"{r.best_margin:10.3f}" for r, _ in runs) + " "
                  + " ".join(f"{t:9.1f}" for _, t in runs) + " "
                  + " ".join(f"{t / t5:8.2f}" for _, t in runs[1:]) + f" {used:>17}", flush=True)


if __name__ == "__main__":
    main()
