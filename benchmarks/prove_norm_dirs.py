"""What method /6's norm directions cost and buy: the same claims proved with them (the default) and
without (``engine.NORM_DIRS = False``, i.e. method /5), in one process, CPU seconds of one thread.

Claims on overwhelm-1l with suffix " unto": the README example (" Haman" x 512, n_free 3), which the
first pass proves (so /6 costs nothing there), and " Haman" x 256 at n_free 9 and 10, whose longest
cases the first pass does not prove (they take the second pass with the slopes and the directions).

    python benchmarks/prove_norm_dirs.py      # about 10 minutes
"""

from __future__ import annotations

import time

import torch
from threadpoolctl import threadpool_limits

from assay.model import load
from assay.prove import engine, prove

CLAIMS = (("' Haman' x 512, n_free 3 (README)", 512, 3), ("' Haman' x 256, n_free 9", 256, 9),
          ("' Haman' x 256, n_free 10", 256, 10))


def run(model, n_fix: int, n_free: int, dirs: bool):
    engine.NORM_DIRS = dirs
    try:
        t0 = time.process_time()
        r = prove(model, [2944] * n_fix, n_free, suffix=[321])
        return r, time.process_time() - t0
    finally:
        engine.NORM_DIRS = True


def main() -> None:
    torch.set_num_threads(1)
    model = load("overwhelm-1l")
    print(f"{'claim':<34} {'/5 margin':>10} {'/6 margin':>10} {'/5 CPU s':>9} {'/6 CPU s':>9} {'ratio':>6} "
          f"{'cases with directions':>22}")
    with threadpool_limits(1):
        for label, n_fix, n_free in CLAIMS:
            r5, t5 = run(model, n_fix, n_free, False)
            r6, t6 = run(model, n_fix, n_free, True)
            used = sum(1 for c in r6.certificate["cases"] if c.get("norm_dirs"))
            print(f"{label:<34} {r5.best_margin:10.3f} {r6.best_margin:10.3f} {t5:9.1f} {t6:9.1f} "
                  f"{t6 / t5:6.2f} {used:>22}", flush=True)


if __name__ == "__main__":
    main()
