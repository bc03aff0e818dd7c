"""What the row pruning of affine.ratio_max buys (docs/prove.md, "Per-position caps and score ratios").

overwhelm-1l, prefix " Haman" (2944) x 256, suffix " unto": the attention term at the last position for
L free tokens (4096 rows, one group of positions sharing value rows). For its exact coordinate
extremes (the rows against the term's map, 4096 x 128 values, both signs) and for 4095 random
directions, the time of ratio_max (on each column's candidate rows) against the same root solved on
every row (affine._ratio_root, the baseline), in the same process, and their largest relative
difference (the two are the same bound; asserted within 1e-12). CPU seconds, one thread.

    python benchmarks/ratio_max_speed.py
"""

from __future__ import annotations

import time

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from assay.model import load
from assay.prove import affine, rules
from assay.prove.engine import Engine, Options
from assay.prove.weights import extract


def attention_term(eng: Engine, L: int):
    """The pooled term of the attention output at the last position for L free tokens."""
    got = []
    real = rules.head_output_set

    def spy(*a, **k):
        S, lam = real(*a, **k)
        got.append(S.terms[-1])
        return S, lam

    rules.head_output_set = spy
    try:
        eng.final_set(L, None)
    finally:
        rules.head_output_set = real
    return got[-1]


def timed(f, *args):
    t0 = time.process_time()
    out = f(*args)
    return out, time.process_time() - t0


def main() -> None:
    torch.set_num_threads(1)
    model = load("overwhelm-1l")
    eng = Engine(extract(model), [2944] * 256, [321], np.arange(model.cfg.d_vocab), Options())
    rng = np.random.default_rng(0)
    print(f"{'L':>2} {'columns':>14} {'pruned s':>9} {'every row s':>12} {'ratio':>6} {'max rel diff':>13}")
    for L in (2, 4, 8):
        t = attention_term(eng, L)
        _scale, starts, _mult, total, _pscale, ratios = t.pool
        (Rlo, Rhi, c), = ratios
        VM = t.V @ t.M
        for label, X in (("coordinates", np.concatenate([VM, -VM], axis=1)),
                         ("directions", t.V @ rng.standard_normal((t.V.shape[1], 4095)))):
            fast, t_fast = timed(affine.ratio_max, X, starts, ratios, total)
            qs = [(Rlo[q][:, None], Rhi[q][:, None], float(c[q])) for q in range(len(c))]
            npos, nb, rmax = float(c.sum()), len(c), float(Rhi.max())
            slow, t_slow = timed(affine._ratio_root, [(X, qs)], X.shape[1], npos, nb, rmax, np.abs(X).max(axis=0))
            ok = np.isfinite(fast) & np.isfinite(slow)
            diff = float(np.max(np.abs(fast[ok] - slow[ok]) / (1e-300 + np.abs(slow[ok]))))
            assert diff <= 1e-12 and ok.mean() > 0.99, (diff, ok.mean())
            print(f"{L:>2} {label:>14} {t_fast:>9.2f} {t_slow:>12.2f} {t_fast / t_slow:>6.2f} {diff:>13.1e}",
                  flush=True)


if __name__ == "__main__":
    with threadpool_limits(1):
        main()
