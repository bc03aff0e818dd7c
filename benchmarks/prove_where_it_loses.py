"""Where the overwhelm prover's margin goes on one designed claim (docs/prove.md, "Where the bound loses").

overwhelm-1l, prefix " Haman" (2944) x 256, suffix " unto" (321), next token " the". Per free length L:

- the certified margin with the default competitor refinement (and how many competitors it refined)
  and with every competitor refined (equal whenever the case is provable: the refinement loop stops
  at the refine-all minimum);
- how many of the 512 MLP neurons at the last position can cross zero: by the LayerNorm Taylor set's
  own coordinate range, and after intersecting with the scalar-remainder range
  (``rules.ln_preact_bounds``), which is what the prover uses, and the range of sigma*/sigma(y) by
  which that range widens the linear part.

    python benchmarks/prove_where_it_loses.py          # L = 1..4, about a minute
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from assay.model import load
from assay.prove import rules
from assay.prove.api import reference_token
from assay.prove.engine import Engine, Options
from assay.prove.weights import extract


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-fix", type=int, default=256)
    ap.add_argument("--max-l", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load("overwhelm-1l")
    W = extract(model)
    prefix, suffix = [2944] * args.n_fix, [321]
    c = reference_token(model, prefix, suffix)
    V = model.cfg.d_vocab
    counts: list[tuple[int, int]] = []
    real_mlp = rules.mlp_set

    def counting_mlp(X, W_in, b_in, W_out, b_out, act, ln=None):
        if ln is not None and W_in.shape[1] == model.cfg.d_mlp:
            lo, hi = X.affine(W_in, b_in).coord_bounds()
            plo, phi = rules.ln_preact_bounds(ln, X.affine(W_in, b_in), W_in, b_in)
            s_lo, s_hi = rules.sigma_range(ln.Y, ln.eps)
            s_lo = max(s_lo, ln.sig_min)
            counts.append((int(((lo < 0) & (hi > 0)).sum()),
                           int(((np.maximum(lo, plo) < 0) & (np.minimum(hi, phi) > 0)).sum()),
                           ln.sig / s_hi, ln.sig / s_lo))
        return real_mlp(X, W_in, b_in, W_out, b_out, act, ln)

    rules.mlp_set = counting_mlp
    try:
        eng = Engine(W, prefix, suffix, np.arange(V), Options())
        print(f"overwhelm-1l, {args.n_fix} x ' Haman' + ' unto', token {c}; MLP neurons crossing zero of "
              f"{model.cfg.d_mlp}")
        print(f"{'L':>2} {'default':>10} {'refined':>8} {'refine-all':>11} {'crossing (Taylor)':>18} "
              f"{'crossing (used)':>16} {'sigma*/sigma range':>19}")
        for L in range(1, args.max_l + 1):
            counts.clear()
            X, _ = eng.final_set(L, None)
            taylor, used, q_lo, q_hi = counts[-1]
            default, refined = eng.margins(X, c)
            every, _ = eng.margins(X, c, refine=[k for k in range(V) if k != c])
            print(f"{L:>2} {default.min():>10.3f} {len(refined):>8} {every.min():>11.3f} {taylor:>18} {used:>16} "
                  f"{f'[{q_lo:.2f}, {q_hi:.2f}]':>19}", flush=True)
    finally:
        rules.mlp_set = real_mlp


if __name__ == "__main__":
    main()
