"""What the blocked one-group path of affine.capped_max buys (docs/prove.md, "Speed").

capped_max bounds the support of a pooled attention term by a Lagrangian dual evaluated on a grid of
t (affine.POOL_T). Its one-group path (affine._capped_max_one) evaluates every t at once over blocks
of rows that stay in cache; the baseline is the general loop over t (three passes over the rows per t),
run in the same process with ``affine.BLOCKED = False``. The two perform the same floating-point
operations on every element, so their results on the random terms are asserted bitwise equal. Each
variant runs in ROUNDS interleaved rounds and its least time is reported (this machine's timings
drift).

First table: random 4096-row terms (the vocabulary of overwhelm-1l) with K columns. Second: the
n_fix 1024, n_free 64 claim of benchmarks/prove_scaling.py (the speed goal) proven both ways, its
per-length margins asserted equal, and a third time with a pooled term's fl(V M) formed twice (for
l2_sup and for coord_dev, as before affine.Term.vm). CPU seconds, one thread.

    python benchmarks/capped_max_speed.py            # both tables (a few minutes)
    python benchmarks/capped_max_speed.py --quick    # the first table only
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from prove_scaling import get_model, text_ids
from threadpoolctl import threadpool_limits

from assay.prove import affine, prove

ROUNDS = 3  # interleaved rounds per variant; the least time of each is reported (the machine drifts)


def twice_vm(t) -> np.ndarray:
    """fl(V M) without the cache, as before Term.vm: formed again by every caller."""
    return t.V @ t.M


def variant(name: str) -> None:
    """Set the code paths: "blocked" (shipped), "loop" (the loop over t), "vm twice" (no Term.vm cache)."""
    affine.BLOCKED = name != "loop"
    affine.Term.vm = twice_vm if name == "vm twice" else CACHED_VM


CACHED_VM = affine.Term.vm


def compare(fn, names: list[str], reps: int) -> tuple[dict, dict]:
    """Least CPU seconds per call over ROUNDS interleaved rounds of each variant, and each one's result."""
    best = dict.fromkeys(names, float("inf"))
    out = {}
    try:
        for _ in range(ROUNDS):
            for name in names:
                variant(name)
                c0 = time.process_time()
                for _ in range(reps):
                    out[name] = fn()
                best[name] = min(best[name], (time.process_time() - c0) / reps)
    finally:
        variant("blocked")
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the random terms only")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"least of {ROUNDS} interleaved rounds, CPU time")
    print(f"{'rows':>5} {'K':>4} {'loop ms':>9} {'blocked ms':>11} {'blocked/loop':>13}")
    for K in (1, 8, 32, 128, 512):
        X = rng.standard_normal((4096, K))
        scale = rng.uniform(0, 0.3, 4096)
        t, out = compare(lambda X=X, scale=scale: affine.capped_max(X, scale, np.array([0]), np.array([9.0]), 0.9),
                         ["blocked", "loop"], max(3, 2000 // K))
        assert np.array_equal(out["blocked"], out["loop"])  # the same operations: the same numbers
        print(f"{4096:5d} {K:4d} {t['loop'] * 1e3:9.3f} {t['blocked'] * 1e3:11.3f} "
              f"{t['blocked'] / t['loop']:13.2f}", flush=True)
    if args.quick:
        return
    model, name = get_model()
    ids = text_ids(model, 1025)
    prove(model, ids[:32], 1, suffix=[ids[32]])  # warm up
    t, out = compare(lambda: prove(model, ids[:1024], 64, suffix=[ids[1024]]), ["blocked", "loop", "vm twice"], 1)
    margins = {k: [p["margin"] for p in r.details["per_length"]] for k, r in out.items()}
    assert margins["blocked"] == margins["loop"] == margins["vm twice"]
    print(f"\n{name}, n_fix 1024, n_free 64 (the speed goal), CPU s: shipped {t['blocked']:.2f}, loop over t "
          f"{t['loop']:.2f} (shipped/loop {t['blocked'] / t['loop']:.2f}), V M formed twice per pooled term "
          f"{t['vm twice']:.2f} (shipped/twice {t['blocked'] / t['vm twice']:.2f}); the same per-length margins")


if __name__ == "__main__":
    with threadpool_limits(1):
        main()
