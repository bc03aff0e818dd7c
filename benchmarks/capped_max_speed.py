"""What the blocked one-group path of affine.capped_max buys (docs/prove.md, "Speed").

capped_max bounds the support of a pooled attention term by a Lagrangian dual evaluated on a grid of
t (affine.POOL_T). Its one-group path (affine._capped_max_one) evaluates every t at once over blocks
of rows that stay in cache; the baseline is the general loop over t (three passes over the rows per t),
run in the same process with ``affine.BLOCKED = False``. The two perform the same floating-point
operations on every element, so their results are asserted bitwise equal.

First table: random 4096-row terms (the vocabulary of overwhelm-1l) with K columns. Second: the
n_fix 1024, n_free 64 claim of benchmarks/prove_scaling.py (the speed goal) proven both ways, its
per-length margins asserted equal, and once more with a pooled term's fl(V M) formed twice (for
l2_sup and for coord_dev, as before affine.Term.vm). CPU seconds, one thread.

    python benchmarks/capped_max_speed.py            # both tables (about a minute)
    python benchmarks/capped_max_speed.py --quick    # the first table only
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from prove_scaling import get_model, text_ids
from threadpoolctl import threadpool_limits

from assay.prove import affine, prove


def timed(fn, reps: int) -> tuple[float, object]:
    c0 = time.process_time()
    for _ in range(reps):
        out = fn()
    return (time.process_time() - c0) / reps, out


def both(fn, reps: int) -> tuple[float, float, object, object]:
    """(seconds blocked, seconds with the loop over t, their results)."""
    affine.BLOCKED = True
    fast, a = timed(fn, reps)
    affine.BLOCKED = False
    try:
        slow, b = timed(fn, reps)
    finally:
        affine.BLOCKED = True
    return fast, slow, a, b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the random terms only")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'rows':>5} {'K':>4} {'loop ms':>9} {'blocked ms':>11} {'blocked/loop':>13}")
    for K in (1, 8, 32, 128, 512):
        X = rng.standard_normal((4096, K))
        scale = rng.uniform(0, 0.3, 4096)
        fast, slow, a, b = both(lambda X=X, scale=scale: affine.capped_max(X, scale, np.array([0]),
                                                                           np.array([9.0]), 0.9),
                                max(3, 4000 // K))
        assert np.array_equal(a, b)
        print(f"{4096:5d} {K:4d} {slow * 1e3:9.3f} {fast * 1e3:11.3f} {fast / slow:13.2f}", flush=True)
    if args.quick:
        return
    model, name = get_model()
    ids = text_ids(model, 1025)
    prove(model, ids[:32], 1, suffix=[ids[32]])  # warm up
    fast, slow, a, b = both(lambda: prove(model, ids[:1024], 64, suffix=[ids[1024]]), 1)
    assert [p["margin"] for p in a.details["per_length"]] == [p["margin"] for p in b.details["per_length"]]
    print(f"\n{name}, n_fix 1024, n_free 64 (the speed goal): loop over t {slow:.2f} CPU s, blocked "
          f"{fast:.2f} s, blocked/loop {fast / slow:.2f}; the same margins")
    # the other saving on the same claim: fl(V M) of a pooled term formed once (Term.vm) or, as before,
    # once for l2_sup and again for coord_dev
    cached = affine.Term.vm
    affine.Term.vm = lambda t: t.V @ t.M
    try:
        twice, b = timed(lambda: prove(model, ids[:1024], 64, suffix=[ids[1024]]), 1)
    finally:
        affine.Term.vm = cached
    assert [p["margin"] for p in a.details["per_length"]] == [p["margin"] for p in b.details["per_length"]]
    print(f"  V M formed twice per pooled term: {twice:.2f} CPU s; once / twice {fast / twice:.2f}")


if __name__ == "__main__":
    with threadpool_limits(1):
        main()
