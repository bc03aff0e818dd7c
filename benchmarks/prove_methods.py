"""What the last methods cost and buy: the same claims proved by method /5 (``engine.NORM_DIRS =
False``, ``engine.GAMMA = False``), /6 (norm directions, no weight of sigma) and /7 (both: the
default), in one process, CPU seconds of one thread, and each method's time as a ratio to /5's.

Claims on overwhelm-1l with suffix " unto": the README example (" Haman" x 512, n_free 3), which the
first pass proves (so neither /6 nor /7 costs anything there), and " Haman" x 256 at n_free 9 and 10,
whose longest cases the first pass does not prove (they take the second pass with the slopes, the
directions and, in /7, the weight of sigma on the tangent path).

    python benchmarks/prove_methods.py      # about 25 minutes
"""

from __future__ import annotations

import time

import torch
from threadpoolctl import threadpool_limits

from assay.model import load
from assay.prove import engine, prove

CLAIMS = (("' Haman' x 512, n_free 3 (README)", 512, 3), ("' Haman' x 256, n_free 9", 256, 9),
          ("' Haman' x 256, n_free 10", 256, 10))
METHODS = (("/5", False, False), ("/6", True, False), ("/7", True, True))


def run(model, n_fix: int, n_free: int, dirs: bool, gamma: bool):
    """(result, CPU seconds) of one claim with the method's switches set (restored afterwards)."""
    engine.NORM_DIRS, engine.GAMMA = dirs, gamma
    try:
        t0 = time.process_time()
        r = prove(model, [2944] * n_fix, n_free, suffix=[321])
        return r, time.process_time() - t0
    finally:
        engine.NORM_DIRS = engine.GAMMA = True


def main() -> None:
    torch.set_num_threads(1)
    model = load("overwhelm-1l")
    head = " ".join(f"{m + ' margin':>10}" for m, _, _ in METHODS)
    cpu = " ".join(f"{m + ' CPU s':>9}" for m, _, _ in METHODS)
    print(f"{'claim':<34} {head} {cpu} {'/6 / /5':>8} {'/7 / /5':>8} {'cases with gamma':>17}")
    with threadpool_limits(1):
        for label, n_fix, n_free in CLAIMS:
            runs = [run(model, n_fix, n_free, dirs, gamma) for _, dirs, gamma in METHODS]
            used = sum(1 for c in runs[-1][0].certificate["cases"] if any("gamma" in e for e in c["alpha"]))
            t5 = runs[0][1]
            print(f"{label:<34} " + " ".join(f"{r.best_margin:10.3f}" for r, _ in runs) + " "
                  + " ".join(f"{t:9.1f}" for _, t in runs) + f" {runs[1][1] / t5:8.2f} {runs[2][1] / t5:8.2f}"
                  f" {used:>17}", flush=True)


if __name__ == "__main__":
    main()
