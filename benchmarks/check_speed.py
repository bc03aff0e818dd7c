"""How long the independent checker takes, against the prover on the same claim (docs/prove.md).

Two tables, every time in CPU seconds of this process (one thread):

1. For two certificates of overwhelm-1l: the README example (" Haman" x 512, suffix " unto", n_free 3)
   and one at the edge of provability (" Haman" x 256, n_free 5, with method /4's slopes), the time
   to prove, the time to check, and their ratio.
2. The exact support of a vocabulary-sized pooled term (4096 rows, 128 coefficients) against 128
   functionals, the checker's main cost: through the float filter (``_Cols.product``: V B is never
   formed in arb, only the rows that can attain a maximum are evaluated exactly) against the baseline
   that forms V B in arb_mat and evaluates the same bound over every row in arb (the checker's
   algorithm before the filter). The two agree to 1e-12 (asserted; the entries' balls differ only by
   the order of summation).

    python benchmarks/check_speed.py            # about 3 minutes
    python benchmarks/check_speed.py --quick    # table 2 only
"""

from __future__ import annotations

import argparse
import importlib
import time

import numpy as np
import torch
from flint import arb, arb_mat
from threadpoolctl import threadpool_limits

from assay.model import load
from assay.prove import check, prove

C = importlib.import_module("assay.prove.check")  # the package exports a function named check


def cpu(f):
    t0 = time.process_time()
    out = f()
    return out, time.process_time() - t0


def certificates() -> None:
    model = load("overwhelm-1l")
    print(f"{'claim':<34} {'prove s':>8} {'check s':>8} {'check/prove':>11}")
    for label, n_fix, n_free in (("' Haman' x 512, n_free 3 (README)", 512, 3),
                                 ("' Haman' x 256, n_free 5 (edge)", 256, 5)):
        r, tp = cpu(lambda n_fix=n_fix, n_free=n_free: prove(model, [2944] * n_fix, n_free, suffix=[321]))
        assert r.proven
        ok, tc = cpu(lambda r=r: check(r.certificate, model))
        assert ok
        print(f"{label:<34} {tp:8.1f} {tc:8.1f} {tc / tp:11.1f}", flush=True)


def support(N: int = 4096, k: int = 128, K: int = 128, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    V = arb_mat((rng.standard_normal((N, k)) * 0.1).tolist())
    B = arb_mat(rng.standard_normal((k, K)).tolist())
    starts = [0, N // 2]
    pool = ([arb(float(x)) for x in rng.uniform(0, 0.01, N)], starts, [arb(3), arb(2)], arb(0.05))
    term = C.make_pooled(V, pool[0], starts, [3, 2], pool[3], arb_mat([[arb(1) if i == j else arb(0)
                                                                          for j in range(k)] for i in range(k)]))
    fast, tf = cpu(lambda: term.extremes(term.product(B)))
    full, tb = cpu(lambda: every_row(V, B, term.pool))
    _, tm = cpu(lambda: (V * B).tolist())
    # the same bounds up to the balls' radii (the entries are summed in a different order)
    gap = max(abs(float(a) - float(b)) / (1 + abs(float(b))) for x, y in zip(fast, full, strict=True)
              for a, b in zip(x, y, strict=True))
    assert gap < 1e-12, gap
    print(f"\nexact support of a pooled term ({N} rows, {k} coefficients) against {K} functionals "
          f"(both directions; largest relative difference {gap:.1e})")
    print(f"{'method':<44} {'CPU s':>7} {'ratio':>7}")
    print(f"{'every row in arb (baseline)':<44} {tb:7.2f} {1.0:7.2f}")
    print(f"{'  of which forming V B in arb_mat':<44} {tm:7.2f} {tm / tb:7.3f}")
    print(f"{'float filter, exact rows on demand':<44} {tf:7.2f} {tf / tb:7.3f}")


def every_row(V: arb_mat, B: arb_mat, pool) -> tuple[list, list]:
    """The baseline: V B formed in arb_mat, and the pooled support's Lagrangian bound (the formula of
    check.pooled_max, the same grid of t) evaluated in arb over every row of every column."""
    scale, starts, mult, total = pool[:4]  # no per-position scales or ratios in this term
    X = (V * B).tolist()
    N, K = len(X), len(X[0])
    bounds = list(starts[1:]) + [N]

    def pmax(sign: int) -> list:
        out = []
        for j in range(K):
            col = [(sign * X[r][j]).upper() for r in range(N)]
            top = max(float(max(col, key=float)), 0.0)
            best = None
            for f in C.POOL_T:
                t = arb(top * f)
                val = total * t
                for g, (a, b) in enumerate(zip(starts, bounds, strict=True)):
                    val += mult[g] * C._emax([(scale[r] * (col[r] - t)).upper() for r in range(a, b)] + [C.ZERO])
                val = val.upper()
                best = val if best is None or val < best else best
            out.append(best)
        return out

    return [-x for x in pmax(-1)], pmax(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the support table")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        if not args.quick:
            certificates()
        support()


if __name__ == "__main__":
    main()
