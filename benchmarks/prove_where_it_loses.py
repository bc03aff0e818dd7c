"""Where the overwhelm prover's margin goes on one designed claim (docs/prove.md, "Where the bound loses").

overwhelm-1l, prefix " Haman" (2944) x 256, suffix " unto" (321), next token " the". Per free length L:

- the certified margin with the default competitor refinement (and how many competitors it refined;
  in a case this does not prove, the per-competitor slopes and tangent bound of method /4, and how many
  competitors' certificates carry slopes) and with every competitor refined but no slopes (equal to
  the default whenever the case is provable without slopes: the refinement loop stops at the
  refine-all minimum);
- how many of the 512 MLP neurons at the last position can cross zero: by the LayerNorm Taylor set's
  own coordinate range, and by the range the prover uses (intersected with the scalar-remainder range
  ``rules.ln_preact_bounds`` and with the pre-activation set ``rules.ln_preact_set``), and the range
  of sigma*/sigma(y) (the spread of the scalar q that both use);
- for the binding competitor, how much each kind of term of the final set costs (a float diagnostic),
  and the final LayerNorm's sigma range: its upper end by the triangle inequality |p| + R and the one
  used (with the inner-product norm bound);
- with ``--gap``, for the binding competitor of the tangent functional (L = 5 and 6): the DeepZ bound
  (chord slopes on every crossing neuron), the true value of the function over the same set at that
  bound's own minimiser, and how much of the gap the neurons with w < 0 (bounded from above by chords)
  and w >= 0 account for;
- with ``--true``, the true worst margin per L by the counterexample search of prove_tightness.py;
- with ``--exact-preacts L,L,...``, the certified margin at those lengths with the prover's MLP
  pre-activation ranges and with the *exact* ranges over the prover's own LayerNorm input set (a float
  diagnostic, below): how much of the gap is in the ranges rather than in the relaxation that uses
  them. ``--design N_FIX`` runs this (and everything else) on the designed prefix of
  prove_tightness.py instead (design with n_free 2, 60 evaluations, seed 0, suffix ".").

    python benchmarks/prove_where_it_loses.py          # L = 1..5, about a minute
    python benchmarks/prove_where_it_loses.py --true --max-l 6   # and the true worst margins
    python benchmarks/prove_where_it_loses.py --gap --max-l 0    # only the relaxation gap
    python benchmarks/prove_where_it_loses.py --max-l 0 --exact-preacts 10           # a few minutes
    python benchmarks/prove_where_it_loses.py --max-l 0 --design 64 --exact-preacts 8
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from assay.model import load
from assay.prove import rules
from assay.prove.affine import _exact_support
from assay.prove.api import reference_token
from assay.prove.engine import Engine, Options
from assay.prove.fp import col_norms
from assay.prove.slopes import set_minimiser
from assay.prove.weights import extract


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-fix", type=int, default=256)
    ap.add_argument("--max-l", type=int, default=5)
    ap.add_argument("--true", action="store_true",
                    help="also the true worst margin per L (the counterexample search of prove_tightness.py; "
                         "about a minute per length)")
    ap.add_argument("--gap", action="store_true", help="also the relaxation gap at L = 5, 6 (a float diagnostic)")
    ap.add_argument("--exact-preacts", default="",
                    help="comma-separated lengths: margins with the exact pre-activation ranges (a few minutes each)")
    ap.add_argument("--design", type=int, default=0, metavar="N_FIX",
                    help="use prove_tightness.py's designed prefix of this length (suffix '.') instead")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load("overwhelm-1l")
    W = extract(model)
    prefix, suffix = [2944] * args.n_fix, [321]
    if args.design:
        from assay.prove import design

        suffix = [model.tokenizer.encode(".").ids[-1]]
        prefix = design(model.double(), args.design, 2, suffix=suffix, seed=0, max_evals=60).prefix
        model = model.float()
        print(f"designed prefix (n_fix {args.design}, suffix '.'): {model.tokenizer.decode(prefix[:8])!r}...")
    c = reference_token(model, prefix, suffix)
    V = model.cfg.d_vocab
    counts: list[tuple[int, int]] = []
    real_preact = rules.preact_set

    def counting_preact(X, W_in, b_in, ln=None):
        out = real_preact(X, W_in, b_in, ln)
        if ln is not None and W_in.shape[1] == model.cfg.d_mlp:
            lo, hi = X.affine(W_in, b_in).coord_bounds()
            ulo, uhi = out[1], out[2]
            s_lo, s_hi = rules.sigma_range(ln.Y, ln.eps)
            s_lo = max(s_lo, ln.sig_min)
            counts.append((int(((lo < 0) & (hi > 0)).sum()), int(((ulo < 0) & (uhi > 0)).sum()),
                           ln.sig / s_hi, ln.sig / s_lo))
        return out

    rules.preact_set = counting_preact
    try:
        eng = Engine(W, prefix, suffix, np.arange(V), Options())
        print(f"overwhelm-1l, {len(prefix)} prefix tokens + {suffix}, token {c}; MLP neurons crossing zero of "
              f"{model.cfg.d_mlp}")
        print(f"{'L':>2} {'default':>10} {'refined':>8} {'slopes':>7} {'refine-all':>11} {'crossing (Taylor)':>18} "
              f"{'crossing (used)':>16} {'sigma*/sigma range':>19}")
        parts = []
        for L in range(1, args.max_l + 1):
            counts.clear()
            X, _ = eng.final_set(L, None)
            taylor, used, q_lo, q_hi = counts[-1]
            default, refined, with_slopes = eng.margins(X, c)
            every, _, _ = eng.margins(X, c, refine=[k for k in range(V) if k != c])
            print(f"{L:>2} {default.min():>10.3f} {len(refined):>8} {len(with_slopes):>7} {every.min():>11.3f} "
                  f"{taylor:>18} {used:>16} "
                  f"{f'[{q_lo:.2f}, {q_hi:.2f}]':>19}", flush=True)
            parts.append((L, int(np.argmin(every)), term_supports(X, W, c, int(np.argmin(every)))))
    finally:
        rules.preact_set = real_preact
    print("\nWhere the binding competitor's margin goes: the lower support of (w * (W_U[:, c] - W_U[:, k])) . y "
          "over the centred final residual, per kind of term (before the final LayerNorm's division by sigma)")
    print(f"{'L':>2} {'k':>5} {'center':>7} {'attention':>10} {'sigma spread':>13} {'rank one':>9} {'ReLU':>8}"
          f"  {'final sigma(mid)':>16} {'sigma_hi (|p| + R)':>19} {'sigma_hi (used)':>16}")
    for L, k, sup in parts:
        print(f"{L:>2} {k:>5} {sup['center']:>7.3f} {sup['attention']:>10.3f} {sup['sigma spread']:>13.3f} "
              f"{sup['rank one']:>9.3f} {sup['ReLU']:>8.3f}  {sup['sig*']:>16.3f} {sup['sig_hi_tri']:>19.3f} "
              f"{sup['sig_hi']:>16.3f}")
    if args.gap:
        eng = Engine(W, prefix, suffix, np.arange(V), Options())
        print("\nThe relaxation at its own minimiser (tangent functional of the binding competitor, chord slopes)")
        print(f"{'L':>2} {'k':>5} {'relaxed':>8} {'true there':>11} {'gap from w < 0':>15} {'from w >= 0':>12}")
        for L in (5, 6):
            X, _ = eng.final_set(L, None)
            m, _, _ = eng.margins(X, c)
            k = int(np.argmin(m))
            print(f"{L:>2} {k:>5} " + " ".join(f"{x:>{w}.3f}" for x, w in zip(relaxation_gap(eng, X, c, k),
                                                                               (8, 11, 15, 12), strict=True)))
    if args.exact_preacts:
        Ls = [int(x) for x in args.exact_preacts.split(",")]
        print("\nThe margin with the prover's pre-activation ranges and with the exact ranges over its LayerNorm "
              "input set\n(crossing: neurons whose range contains 0; width: median exact / used over those)")
        print(f"{'L':>2} {'margin (used)':>14} {'margin (exact ranges)':>22} {'crossing used':>14} "
              f"{'crossing exact':>15} {'width':>6} {'attained':>9}")
        for L in Ls:
            row = [L]
            for exact in (False, True):
                stats: list = []

                def patched(X, W_in, b_in, ln=None, exact=exact, stats=stats):
                    P, lo, hi = real_preact(X, W_in, b_in, ln)
                    if exact and ln is not None and W_in.shape[1] == model.cfg.d_mlp:
                        nlo, nhi, attained = exact_preact_ranges(ln, W_in, b_in, lo, hi)
                        cr = (lo < 0) & (hi > 0)
                        stats.append((int(cr.sum()), int(((nlo < 0) & (nhi > 0)).sum()),
                                      float(np.median((nhi - nlo)[cr] / (hi - lo)[cr])), attained))
                        lo, hi = nlo, nhi
                    return P, lo, hi

                rules.preact_set = patched
                try:
                    eng = Engine(W, prefix, suffix, np.arange(V), Options())
                    X, _ = eng.final_set(L, None)
                    m, _, _ = eng.margins(X, c)
                finally:
                    rules.preact_set = real_preact
                row.append(float(m.min()))
            n_used, n_exact, width, attained = stats[-1]
            print(f"{L:>2} {row[1]:>14.3f} {row[2]:>22.3f} {n_used:>14} {n_exact:>15} {width:>6.3f} {attained:>9.6f}",
                  flush=True)
    if args.true:
        import sys
        from pathlib import Path

        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from prove_tightness import attack

        m64, rng = model.double(), np.random.default_rng(0)
        print("\ntrue worst margin (the least logit[c] - max other found; no counterexample means it is > 0)")
        for L in range(1, args.max_l + 1):
            gap, cex = attack(m64, prefix, suffix, c, L, rng, n_starts=3)
            print(f"{L:>2} {-gap:>8.3f}{'  counterexample ' + str(cex) if cex else ''}", flush=True)


def exact_preact_ranges(ln, W_in, b_in, lo, hi, rounds: int = 3, iters: int = 25):
    """(lo, hi, attained): the ranges of the pre-activations z_j = a_j . y / sigma(y) + beta_j over the
    LayerNorm's centred input set Y for the neurons whose range [lo, hi] contains 0 (a float diagnostic).

    sigma(y) = |(y / sqrt d, sqrt eps)| is convex, so its tangent plane at any y* is below it:
    sigma(y) >= (y* . y / d + eps) / sigma(y*). For u >= 0, a . y <= u sigma(y) on Y therefore holds if
    sup_Y (a - u y* / (d sigma*)) . y <= u eps / sigma*, a support of Y; the least such u is found by
    bisection, and y* is moved to the maximiser of that support (a cutting-plane iteration, ``rounds``
    times). attained: the median of the value a . y / sigma(y) at the last maximiser over the bound, so
    1 means the range is the exact one over Y (up to Y's own supports)."""
    Y, d = ln.Y, ln.Y.d
    A = ln.w[:, None] * W_in
    beta = ln.b @ W_in + b_in
    cross = np.nonzero((lo < 0) & (hi > 0))[0]
    out_lo, out_hi, attained = lo.copy(), hi.copy(), []
    for side in (1, -1):
        G = side * A[:, cross]
        cur = (hi - beta)[cross] if side == 1 else (beta - lo)[cross]
        best = cur.copy()
        Ys = np.repeat(ln.ys[:, None], len(cross), axis=1)
        for rnd in range(rounds):
            sig = np.sqrt((Ys * Ys).sum(0) / d + ln.eps)
            S, e = Ys / (d * sig), ln.eps / sig

            def phi(u, S=S, e=e, G=G):
                _, h = Y.functional_bounds(G - S * u, exact=np.arange(len(u)))
                return h - u * e

            ulo, uhi = np.zeros(len(cross)), np.maximum(cur, 0.0)
            ok = phi(uhi) <= 0
            for _ in range(iters):
                mid = 0.5 * (ulo + uhi)
                p = phi(mid) <= 0
                uhi, ulo = np.where(p, mid, uhi), np.where(p, ulo, mid)
            u = np.where(ok, uhi, np.inf)
            best = np.minimum(best, u)
            Gm = G - S * np.where(np.isfinite(u), u, 0.0)
            Ys = np.stack([set_minimiser(Y, -Gm[:, j]) for j in range(len(cross))], axis=1)
            if rnd == rounds - 1:
                val = (G * Ys).sum(0) / np.sqrt((Ys * Ys).sum(0) / d + ln.eps)
                attained.append(float(np.median(val / best)))
        if side == 1:
            out_hi[cross] = np.minimum(hi[cross], beta[cross] + best)
        else:
            out_lo[cross] = np.maximum(lo[cross], beta[cross] - best)
    return out_lo, out_hi, min(attained)


def relaxation_gap(eng: Engine, X, c: int, k: int) -> tuple[float, float, float, float]:
    """(relaxed lower bound, true value at its minimiser, gap from neurons with w < 0, from w >= 0) of
    the tangent functional (F + beta u) . C x + beta c0 over the final set, with DeepZ's chord slopes
    on every crossing neuron (float, a diagnostic): the coefficients minimising the relaxed functional
    give a point of the set, where the true MLP is evaluated."""
    from assay.prove import slopes
    from assay.prove.engine import SlopeCase

    W = eng.W
    Y = X.center_coords()
    sc = SlopeCase.of(X, Y, rules.sigma_range(Y, W.eps), W.eps)
    rec = sc.rec
    _, _, bd, _, Aw, _, bb, _ = eng._unembed_differences(c)
    beta = float(bb[k] + bd[k])
    u, c0 = sc.tangent
    F = Aw[:, k] + max(beta, 0.0) * u
    g = F - F.mean()
    a, b, mu = rules.relax_activation(rec.lo, rec.hi, "relu")
    w = rec.W_out @ g
    sw = a * w
    mid_t, p_t = {t.id: t for t in rec.mid.terms}, {t.id: t for t in rec.P.terms}
    x, p = rec.mid.center.copy(), rec.P.center.copy()
    relaxed = float(g @ rec.mid.center + g @ rec.b_out + (rec.P.center * a + b) @ w - mu @ np.abs(w))
    for tid in set(mid_t) | set(p_t):
        tm, tp = mid_t.get(tid), p_t.get(tid)
        val, coef = slopes._minimiser(tm or tp, (tm.M @ g if tm else 0.0) + (tp.M @ sw if tp else 0.0))
        relaxed += val
        x = x + (coef @ tm.M if tm else 0.0)
        p = p + (coef @ tp.M if tp else 0.0)
    true = float(g @ (x + np.maximum(p, 0.0) @ rec.W_out + rec.b_out))
    per = w * (np.maximum(p, 0.0) - (a * p + b - mu * np.sign(w)))
    return relaxed + beta * c0, true + beta * c0, float(per[w < 0].sum()), float(per[w >= 0].sum())


def term_supports(X, W, c: int, k: int) -> dict[str, float]:
    """Float (unrigorous, diagnostic) lower supports of a_k.y per kind of term of the centred set X:
    the attention (pooled) term, the sigma-spread copies of ln_preact_set (signed terms), its rank-one
    generators (one-row zonotopes) and the ReLU relaxation (the MLP's zonotope)."""
    a = (W.W_U[:, c] - W.W_U[:, k]) * W.lnf_w
    Y = X.center_coords()
    out = {"center": float(Y.center @ a), "attention": 0.0, "sigma spread": 0.0, "rank one": 0.0, "ReLU": 0.0}
    # the final LayerNorm's sigma range: the upper end by |p| + R (triangle inequality) and as used
    lo, hi = Y.coord_bounds()
    ys = 0.5 * (lo + hi)
    big = np.maximum(np.abs(lo), np.abs(hi))
    nub_tri = min(float(np.linalg.norm(big)), float(np.linalg.norm(ys)) + Y.l2_radius(ys))
    out["sig*"] = float(np.sqrt((ys * ys).mean() + W.eps))  # sigma at the box midpoint
    out["sig_hi_tri"] = float(np.sqrt(nub_tri**2 / Y.d + W.eps))
    out["sig_hi"] = rules.sigma_range(Y, W.eps)[1]
    for t in Y.terms:
        lo = float(_exact_support(t, a[:, None], col_norms(a[:, None]))[0][0])
        if t.kind in ("pooled", "block"):
            out["sigma spread" if t.signed else "attention"] += lo
        elif t.kind == "zono":
            out["rank one" if t.M.shape[0] == 1 else "ReLU"] += lo
    return out


if __name__ == "__main__":
    main()
