"""Where the overwhelm prover loses on a designed prefix at its first failing length: the attention
hull, the free tokens, or the MLP (docs/prove.md, "What the n_fix 64 design loses at L = 9").

overwhelm-1l, the n_fix 64 prefix of prove_tightness.py (``design`` with n_free 2, 60 evaluations,
seed 0, suffix "."), one case: strings of exactly L free tokens. Printed:

1. For every string of the whole vocabulary: the prover's certified margin of the case
   (``Engine.case``, as ``prove`` runs it); the best margin the counterexample search of
   prove_tightness.py finds over strings; and the best found over the *convex hull* of the attention
   outputs, by gradient descent on fractional tokens. With pi_i a distribution over the vocabulary at
   free position i, W = W_A + sum_ib pi_ib w_ib and Z = Z_A + sum_ib pi_ib w_ib v_ib (w the softmax
   numerators, v the values) give the output Z / W, which is a convex combination of the outputs of
   real strings (weights prod_i pi_i,t_i (W_A + sum_i w_i,t_i) / W), so a point of their hull: the
   hull's least margin is at most the value found there. The prover's attention set contains that
   hull, so a hull value far above the certified margin means the loss is after the attention.
2. The same case with the allowed tokens cut down: the vocabulary split into ``--parts`` equal slices
   along the first principal direction of the last free position's value contributions
   w_b (v_b - o_A) W_O, and the ``--top`` most extreme tokens along it. For each: the certified margin
   and the true least margin, by enumeration of every string when there are at most 4096 of them,
   else an upper estimate by prove_tightness's attack restricted to the slice (the true least margin
   lies between the two).
3. The same with the MLP's output matrix set to 0 (the model's attention, residual and final
   LayerNorm only): how close the bound is without the MLP.

The margin is logit[c] - max_{k != c} logit[k] at the last position, c the token at the empty string.

    python benchmarks/prove_hull_gap.py                          # about 15 minutes
    python benchmarks/prove_hull_gap.py --L 8 --parts 2 --top 2  # L = 8 is proven
"""

from __future__ import annotations

import argparse
import itertools
import math
import time

import numpy as np
import torch
from prove_tightness import LastPosition, attack, gap, log

from assay.model import load
from assay.prove import design
from assay.prove.api import reference_token, single_thread
from assay.prove.engine import Engine, Options
from assay.prove.weights import extract

ENUMERATE_MAX = 4096  # strings: up to this many, the true least margin is enumerated


def weights_and_values(ev: LastPosition) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax numerators w [L, V, h] and values v [L, V, h, e] of every token at every free position."""
    return torch.stack([ev.weights(k) for k, _ in ev.allk]), torch.stack([v for _, v in ev.allk])


def hull_margin(ev: LastPosition, c: int, rng, starts: int = 4, steps: int = 300) -> float:
    """The least margin found over the hull of the attention outputs (an upper estimate of the hull's
    least margin): Adam on the logits of per-position token distributions, from uniform and random
    starts, on a soft maximum over the competitors; every iterate's exact margin counts."""
    ws, vs = weights_and_values(ev)
    ws, vs = ws.detach(), vs.detach()
    best = math.inf
    for s in range(starts):
        theta = torch.zeros(ev.L, ev.cfg.d_vocab, dtype=torch.float64) if s == 0 else \
            torch.tensor(rng.normal(0.0, 3.0, (ev.L, ev.cfg.d_vocab)))
        theta.requires_grad_(True)
        opt = torch.optim.Adam([theta], lr=0.3)
        for _ in range(steps):
            pi = torch.softmax(theta, -1)
            W = ev.W_fix + torch.einsum("lv,lvh->h", pi, ws)
            Z = ev.Z_fix + torch.einsum("lv,lvh,lvhe->he", pi, ws, vs)
            lg = ev._logits(W[None], Z[None])[0]
            other = torch.cat([lg[:c], lg[c + 1:]])
            best = min(best, float((lg[c] - other.max()).detach()))
            soft = 0.05 * torch.logsumexp(other / 0.05, 0) - lg[c]
            opt.zero_grad()
            (-soft).backward()
            opt.step()
    return best


def subset_true(model, prefix, suffix, ev: LastPosition, c: int, cands: np.ndarray, rng) -> tuple[float, bool]:
    """(least margin over strings of length L from cands, exact?): every string when there are at most
    ENUMERATE_MAX, else the best that prove_tightness's attack finds over cands (an upper estimate)."""
    if len(cands) ** ev.L <= ENUMERATE_MAX:
        strings = itertools.product(cands.tolist(), repeat=ev.L)
        return min(-float(gap(ev.logits(list(t)), c)) for t in strings), True
    g, _ = attack(model, prefix, suffix, c, ev.L, rng, cands=torch.as_tensor(cands), ev=ev,
                  stop=False)
    return -g, False


def certified(model, prefix, suffix, allowed: np.ndarray, L: int, c: int) -> float:
    """The prover's certified margin of the case of exactly L free tokens over allowed."""
    with single_thread():
        return Engine(extract(model), prefix, suffix, allowed, Options()).case(L, None, c).margin


def principal_order(model, ev: LastPosition) -> np.ndarray:
    """Tokens sorted along the first principal direction of w_b (v_b - o_A) W_O at the last free
    position (head 0), most negative first."""
    ws, vs = weights_and_values(ev)
    w, v = ws[-1, :, 0].detach(), vs[-1, :, 0].detach()
    o_A = (ev.Z_fix / ev.W_fix[:, None])[0]
    X = (w[:, None] * ((v - o_A) @ model.blocks[0].attn.W_O[0].detach())).numpy()
    _, _, Vt = np.linalg.svd(X - X.mean(0), full_matrices=False)
    return np.argsort(X @ Vt[0], kind="stable")


def table(title: str, model, prefix, suffix, ev: LastPosition, c: int, rows, rng) -> None:
    """Print, per (name, allowed tokens) row, the certified and the true least margin of the case."""
    tok = model.tokenizer
    print(f"{title} (token {tok.decode([c])!r}): allowed tokens along the principal direction")
    print(f"{'allowed':<20} {'tokens':>6} {'certified':>10} {'true least':>11}  first tokens")
    for name, cands in rows:
        t0 = time.process_time()
        cert = certified(model, prefix, suffix, np.sort(cands), ev.L, c)
        true, exact = subset_true(model, prefix, suffix, ev, c, np.asarray(cands), rng)
        first = ", ".join(repr(tok.decode([int(b)])) for b in cands[:3])
        print(f"{name:<20} {len(cands):6d} {cert:10.4f} {true:10.4f}{'' if exact else '*'}  {first}"
              f"   ({time.process_time() - t0:.0f} s)", flush=True)
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-fix", type=int, default=64, help="designed prefix length (default 64)")
    ap.add_argument("--L", type=int, default=9, help="number of free tokens of the case (default 9)")
    ap.add_argument("--parts", type=int, default=8, help="slices of the vocabulary along the direction")
    ap.add_argument("--top", default="1,2,16,64", help="comma-separated sizes of the most extreme sets")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    try:
        tops = [int(x) for x in args.top.split(",")]
    except ValueError:
        ap.error(f"--top must be comma-separated integers, got {args.top!r}")
    if args.L < 1 or args.parts < 1 or args.n_fix < 1 or any(k < 1 for k in tops):
        ap.error("--n-fix, --L, --parts and every --top size must be at least 1")
    torch.set_num_threads(1)
    model = load("overwhelm-1l").double()
    if args.n_fix + args.L + 1 > model.cfg.n_ctx:
        ap.error(f"--n-fix + --L + 1 = {args.n_fix + args.L + 1} is over n_ctx {model.cfg.n_ctx}")
    tok = model.tokenizer
    suffix = [tok.encode(".").ids[-1]]
    V = model.cfg.d_vocab
    log(f"designing n_fix={args.n_fix} (n_free 2, 60 evaluations, seed {args.seed})")
    prefix = design(model, args.n_fix, 2, suffix=suffix, seed=args.seed, max_evals=60).prefix
    c = reference_token(model, prefix, suffix)
    rng = np.random.default_rng(args.seed)
    ev = LastPosition(model, prefix, suffix, args.L)
    everything = np.arange(V)

    t0 = time.process_time()
    cert = certified(model, prefix, suffix, everything, args.L, c)
    log(f"certified {cert:.4f} ({time.process_time() - t0:.0f} s)")
    g, _ = attack(model, prefix, suffix, c, args.L, rng, ev=ev)
    hull = hull_margin(ev, c, rng)
    print(f"n_fix {args.n_fix}, L = {args.L}, token {tok.decode([c])!r}, all {V} tokens:")
    print(f"{'certified':>10} {'strings (search)':>17} {'hull (gradient)':>16}")
    print(f"{cert:10.4f} {-g:17.4f} {hull:16.4f}\n", flush=True)

    order = principal_order(model, ev)
    slices = [(f"slice {j + 1}/{args.parts}", order[j * V // args.parts:(j + 1) * V // args.parts])
              for j in range(args.parts)]
    extreme = [(f"most extreme {k}", order[:k]) for k in tops]
    table("the model", model, prefix, suffix, ev, c, slices + extreme, rng)
    no_mlp = load("overwhelm-1l").double()
    with torch.no_grad():
        no_mlp.blocks[0].mlp.W_out.zero_()
    table("MLP output set to 0", no_mlp, prefix, suffix, LastPosition(no_mlp, prefix, suffix, args.L),
          reference_token(no_mlp, prefix, suffix), [("all tokens", everything)] + extreme[:2], rng)
    print("* an upper estimate (coordinate ascent over the allowed tokens); unmarked: every string enumerated")


if __name__ == "__main__":
    main()
