"""How tight the overwhelm prover is on designed prefixes: certified n_free vs what an attack finds.

For each designed prefix s (found by ``assay.prove.design`` on ``overwhelm-1l``, plus the repeated
" congreg" prefix of docs/prove.md) with a one-token suffix q:

- **certified**: the largest n_free that ``prove`` certifies (every length 0..n_free);
- **clean**: the largest n_free for which a counterexample search finds no string t (0 < len(t) <=
  n_free) whose argmax at the last position of s + t + q differs from the certified token. Every
  counterexample the search reports is confirmed by the model's own float64 forward pass on the
  whole sequence; "clean >= N" means the search was stopped at length N without finding one;
- **ratio** = certified / clean. With T the true largest n_free for which the claim holds,
  certified <= T (the prover is sound) and T <= clean whenever the search found a counterexample
  (it is confirmed), so the ratio is a *lower* estimate of the true tightness certified / T. A row
  "clean >= N" (nothing found up to N) gives no such guarantee.

The search (one-layer models only): the last position's logits in a one-layer causal model depend on
t only through the keys and values of the free positions, which depend on (token, position) alone.
So, with the prefix's keys and values computed once, the logits for *every* replacement of one free
position by each of the V tokens are one batched evaluation. The attack maximises
max_{k != c} logit[k] - logit[c] by exhaustive coordinate ascent (every token at every position,
nearest-to-the-query first, up to ``SWEEPS`` sweeps), from several starts: the best repeated strings
b^L and a random string. This evaluates exactly what a gradient-guided (GCG-style) search would only
estimate. Lengths are searched by doubling and then bisection: the first length with a confirmed
counterexample bounds the claim from above.

The fast evaluator is checked against the model's own forward pass on random strings before use.

    python benchmarks/prove_tightness.py            # 4 prefixes, a few minutes
    python benchmarks/prove_tightness.py --quick    # 2 prefixes
    python benchmarks/prove_tightness.py --trained  # certified n_free only, three prefixes x 1024
    python benchmarks/prove_tightness.py --design-n-free 8 --row 0   # one row, designed for n_free 8
                                                                     # (10 min to an hour per row)
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
import torch

from assay.model import load
from assay.model.transformer import apply_rotary, rotary_cos_sin
from assay.prove import design, prove
from assay.prove.demo import largest_proven

SWEEPS = 2
L_MAX = 256
FULL_L = 8
POOL = 256


class LastPosition:
    """Logits at the last position of prefix + t + suffix for a one-layer pre-LN model, batched over t.

    Keys/values of the prefix and suffix are computed once; a free position's key/value is a function
    of (token, position), computed for the whole vocabulary when needed.
    """

    def __init__(self, model, prefix: list[int], suffix: list[int], L: int):
        cfg = model.cfg
        assert cfg.n_layers == 1 and cfg.causal and cfg.ln_position == "pre" and not cfg.parallel_attn_mlp
        assert suffix, "the search needs a fixed last token"
        self.m, self.cfg = model, cfg
        self.blk = model.blocks[0]
        self.n_fix, self.L = len(prefix), L
        n = len(prefix) + L + len(suffix)
        self.P = n - 1
        self.cos, self.sin = (rotary_cos_sin(n, cfg.rotary_dim, cfg.rotary_base, torch.float64)
                              if cfg.positional_embedding_type == "rotary" else (None, None))
        with torch.no_grad():
            fixed_pos = list(range(len(prefix))) + list(range(len(prefix) + L, n))
            fixed_tok = list(prefix) + list(suffix)
            k, v = self._kv(torch.tensor(fixed_tok), torch.tensor(fixed_pos))  # [n, h, e]
            self.q = self._q(suffix[-1])  # [h, e]
            s = torch.einsum("nhe,he->nh", k, self.q) / math.sqrt(cfg.d_head)
            self.m0 = s.max(0).values  # [h]: reference for exp
            w = (s - self.m0).exp()  # [n, h]
            self.W_fix = w.sum(0)  # [h]
            self.Z_fix = torch.einsum("nh,nhe->he", w, v)  # [h, e]
            self.x_last = self._embed(torch.tensor([suffix[-1]]), torch.tensor([self.P]))[0]
            self.allk = [self._kv(torch.arange(cfg.d_vocab), torch.full((cfg.d_vocab,), self.n_fix + i))
                         for i in range(L)]

    def _embed(self, toks, pos):
        x = self.m.embed.W_E[toks]
        if self.cfg.positional_embedding_type == "standard":
            x = x + self.m.pos_embed.W_pos[pos]
        return x

    def _kv(self, toks, pos):
        a = self.blk.attn
        x = self.blk.ln1(self._embed(toks, pos))
        k = torch.einsum("nd,hde->nhe", x, a.W_K) + a.b_K
        v = torch.einsum("nd,hde->nhe", x, a.W_V) + a.b_V
        if self.cos is not None:
            k = apply_rotary(k[None], self.cos[pos], self.sin[pos])[0]
        return k, v

    def _q(self, tok):
        a = self.blk.attn
        x = self.blk.ln1(self._embed(torch.tensor([tok]), torch.tensor([self.P])))
        q = torch.einsum("nd,hde->nhe", x, a.W_Q) + a.b_Q
        if self.cos is not None:
            q = apply_rotary(q[None], self.cos[[self.P]], self.sin[[self.P]])[0]
        return q[0]

    def _logits(self, W, Z):
        """W [B, h] total weights, Z [B, h, e] weighted values -> logits [B, V]."""
        a = self.blk.attn
        z = Z / W[..., None]
        resid = self.x_last + torch.einsum("bhe,hed->bd", z, a.W_O) + a.b_O
        if not self.cfg.attn_only:
            resid = resid + self.blk.mlp(self.blk.ln2(resid))
        if hasattr(self.m, "ln_final"):
            resid = self.m.ln_final(resid)
        return self.m.unembed(resid)

    def weights(self, k: torch.Tensor) -> torch.Tensor:
        """Softmax numerators exp(q.k / sqrt(d_head) - m0) of keys k [..., h, e] -> [..., h]."""
        return ((torch.einsum("...he,he->...h", k, self.q) / math.sqrt(self.cfg.d_head)) - self.m0).exp()

    def _free_wz(self, t: list[int], skip: int | None = None):
        W, Z = self.W_fix.clone(), self.Z_fix.clone()
        for i, b in enumerate(t):
            if i == skip:
                continue
            k, v = self.allk[i][0][b], self.allk[i][1][b]
            w = self.weights(k)
            W, Z = W + w, Z + w[:, None] * v
        return W, Z

    def logits(self, t: list[int]) -> torch.Tensor:
        with torch.no_grad():
            W, Z = self._free_wz(t)
            return self._logits(W[None], Z[None])[0]

    def replace_all(self, t: list[int], i: int, cands: torch.Tensor | None = None, chunk: int = 1024):
        """Logits [C, V] for t with position i replaced by each candidate token (default: every token)."""
        with torch.no_grad():
            W, Z = self._free_wz(t, skip=i)
            k, v = self.allk[i]
            if cands is not None:
                k, v = k[cands], v[cands]
            w = self.weights(k)
            out = []
            for j in range(0, len(w), chunk):
                out.append(self._logits(W + w[j:j + chunk], Z + w[j:j + chunk, :, None] * v[j:j + chunk]))
            return torch.cat(out)

    def repeated(self, chunk: int = 1024) -> torch.Tensor:
        """Logits [V, V] for t = b^L, for every token b."""
        with torch.no_grad():
            W = self.W_fix[None].repeat(self.cfg.d_vocab, 1)
            Z = self.Z_fix[None].repeat(self.cfg.d_vocab, 1, 1)
            for i in range(self.L):
                k, v = self.allk[i]
                w = self.weights(k)
                W, Z = W + w, Z + w[..., None] * v
            return torch.cat([self._logits(W[j:j + chunk], Z[j:j + chunk]) for j in range(0, len(W), chunk)])


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def gap(logits: torch.Tensor, c: int) -> torch.Tensor:
    """max_{k != c} logit[k] - logit[c], per row (> 0: the argmax is not c)."""
    other = logits.clone()
    other[..., c] = -math.inf
    return other.max(-1).values - logits[..., c]


def true_argmax(model, seq: list[int]) -> int:
    with torch.no_grad():
        return int(model(torch.tensor([seq]))[0, -1].argmax())


def validate_evaluator(model, prefix, suffix, rng) -> float:
    """Largest |fast - forward| logit difference on a few random strings (and replacements)."""
    worst = 0.0
    for L in (1, 3):
        ev = LastPosition(model, prefix, suffix, L)
        for _ in range(2):
            t = rng.integers(0, model.cfg.d_vocab, L).tolist()
            with torch.no_grad():
                ref = model(torch.tensor([prefix + t + suffix]))[0, -1]
            worst = max(worst, float((ev.logits(t) - ref).abs().max()))
            i, b = int(rng.integers(L)), int(rng.integers(model.cfg.d_vocab))
            t2 = list(t)
            t2[i] = b
            with torch.no_grad():
                ref2 = model(torch.tensor([prefix + t2 + suffix]))[0, -1]
            worst = max(worst, float((ev.replace_all(t, i)[b] - ref2).abs().max()))
    return worst


def attack(model, prefix, suffix, c: int, L: int, rng, n_starts: int = 3, cands: torch.Tensor | None = None,
           ev: LastPosition | None = None, stop: bool = True) -> tuple[float, list[int] | None]:
    """Best gap found for strings of length exactly L, and a confirmed counterexample (or None).

    Up to FULL_L free tokens every token is tried at every position; beyond, each position tries a
    pool of POOL tokens: the best repeated-string tokens and the best single replacements at the
    position nearest the query (both computed over the whole vocabulary). With ``cands`` (token ids),
    only strings over cands: they are the pool at every length, and the starts are drawn from them.
    ``ev``: an evaluator of this prefix, suffix and L to reuse. ``stop``: return at the first confirmed
    counterexample (off: search on for the largest gap; the second value is then None).
    """
    if ev is None:
        ev = LastPosition(model, prefix, suffix, L)
    rep = gap(ev.repeated(), c)
    if cands is not None:
        order = cands[torch.argsort(rep[cands], descending=True)]
        pool = cands
    else:
        order = torch.argsort(rep, descending=True)
        pool = None
    starts = [[int(b)] * L for b in order[:n_starts]]
    starts.append(rng.integers(0, model.cfg.d_vocab, L).tolist() if cands is None
                  else rng.choice(cands.numpy(), L).tolist())
    if cands is None and L > FULL_L:
        single = gap(ev.replace_all(starts[0], L - 1), c)
        pool = torch.unique(torch.cat([order[: POOL // 2], torch.argsort(single, descending=True)[: POOL // 2]]))
    best = -math.inf
    for t in starts:
        cur = float(gap(ev.logits(t), c))
        for _ in range(SWEEPS):
            improved = False
            for i in reversed(range(L)):  # nearest to the query first
                g = gap(ev.replace_all(t, i, pool), c)
                j = int(g.argmax())
                if float(g[j]) > cur + 1e-12:
                    t[i] = int(pool[j]) if pool is not None else j
                    cur, improved = float(g[j]), True
                if stop and cur > 0 and true_argmax(model, prefix + t + suffix) != c:
                    return cur, t
            if not improved:
                break
        best = max(best, cur)
    return best, None


def runs_text(tok, ids: list[int]) -> str:
    """The token string as runs of equal tokens, e.g. "' Jesus' x 60 + '.' x 4"."""
    out, i = [], 0
    while i < len(ids):
        j = i
        while j < len(ids) and ids[j] == ids[i]:
            j += 1
        out.append(f"{tok.decode([ids[i]])!r} x {j - i}")
        i = j
    return " + ".join(out)


def certified(model, prefix, suffix, limit: int = 64):
    """(largest proven n_free, the proof there or None): the first failing length of one run at
    ``limit`` (``demo.largest_proven``), then the proof at the length below it."""
    n = largest_proven(model, prefix, suffix, limit)
    return n, (prove(model, prefix, n, suffix=suffix) if n >= 0 else None)


def clean_limit(model, prefix, suffix, c, rng, l_max=L_MAX) -> tuple[int, bool, list[int] | None, float]:
    """(largest n_free with no counterexample found, whether one was found above it, it, seconds)."""
    t0 = time.process_time()
    lo, hi, found = 0, None, None
    L = 1
    while L <= l_max:
        g, cex = attack(model, prefix, suffix, c, L, rng)
        log(f"  L={L}: best gap {g:.3f}{' (counterexample)' if cex else ''}, {time.process_time() - t0:.0f} s")
        if cex is not None:
            hi, found = L, cex
            break
        lo, L = L, 2 * L
    if hi is None:
        return lo, False, None, time.process_time() - t0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        g, cex = attack(model, prefix, suffix, c, mid, rng)
        log(f"  L={mid}: best gap {g:.3f}{' (counterexample)' if cex else ''}, {time.process_time() - t0:.0f} s")
        if cex is not None:
            hi, found = mid, cex
        else:
            lo = mid
    return lo, True, found, time.process_time() - t0


def trained_table(model, n_fix: int = 1024) -> None:
    """The largest certified n_free (and its margin and the free tokens' attention bound) for the
    repeated-token prefixes of docs/prove.md's "trained model" table."""
    tok = model.tokenizer
    print(f"{'prefix x ' + str(n_fix):<16} {'suffix':>8} {'token':>8} {'certified':>9} {'margin':>7} {'Lambda':>7}")
    for word, q in ((" congreg", "."), (" Haman", " unto"), ("yria", " shalt")):
        prefix, suffix = [tok.encode(word).ids[-1]] * n_fix, [tok.encode(q).ids[-1]]
        n, r = certified(model, prefix, suffix)
        c, margin = (r.token, r.margin) if r else (None, math.nan)
        lam = max(r.details["per_length"][-1]["lambda_max"]) if r else math.nan
        print(f"{word!r:<16} {q!r:>8} {tok.decode([c]) if c is not None else '-'!r:>8} {n:9d} {margin:7.3f} {lam:7.3f}",
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="two prefixes only")
    ap.add_argument("--evals", type=int, default=60,
                    help="design budget per prefix, in prover evaluations (reproducible, unlike seconds)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--design-n-free", type=int, default=2,
                    help="the free length each prefix is designed for (design's objective; default 2)")
    ap.add_argument("--row", type=int, action="append", choices=range(5), metavar="{0..4}",
                    help="only these rows (repeatable; 0-3 the designs in table order, 4 ' congreg' x 1024), "
                         "so that rows can run as separate processes")
    ap.add_argument("--trained", action="store_true",
                    help="only the certified n_free of three repeated-token prefixes x 1024 (docs/prove.md)")
    args = ap.parse_args()
    if args.design_n_free < 1:
        ap.error(f"--design-n-free must be at least 1, got {args.design_n_free}")
    torch.set_num_threads(1)
    model = load("overwhelm-1l").double()
    tok = model.tokenizer
    if args.trained:
        trained_table(model)
        return
    rng = np.random.default_rng(args.seed)
    dot = tok.encode(".").ids[-1]
    unto = tok.encode(" unto").ids[-1]
    plans = [(64, [dot]), (256, [dot])] if args.quick else [(64, [dot]), (256, [dot]), (1024, [dot]), (256, [unto])]
    rows = set(args.row) if args.row else set(range(len(plans) + (0 if args.quick else 1)))
    prefixes = []
    for i, (n_fix, suffix) in enumerate(plans):
        if i not in rows:
            continue
        t0 = time.perf_counter()
        log(f"designing n_fix={n_fix} for n_free {args.design_n_free}")
        d = design(model, n_fix, args.design_n_free, suffix=suffix, seed=args.seed, max_evals=args.evals)
        secs = time.perf_counter() - t0
        print(f"design n_fix={n_fix} (n_free {args.design_n_free}, {args.evals} evaluations, {secs:.0f} s wall): "
              f"{runs_text(tok, d.prefix)}", flush=True)
        prefixes.append((f"design n_fix={n_fix}", d.prefix, suffix, secs))
    if not args.quick and len(plans) in rows:
        b = tok.encode(" congreg").ids[-1]
        prefixes.append(("' congreg' x 1024", [b] * 1024, [dot], 0.0))
    if not prefixes:
        return

    err = validate_evaluator(model, prefixes[0][1], prefixes[0][2], rng)
    print(f"fast evaluator vs the model's forward pass: max |logit difference| = {err:.2e}")
    assert err < 1e-8, err
    print(f"\n{'prefix':<22} {'n_fix':>5} {'suffix':>7} {'prefix text (start)':<24} {'token':>8} "
          f"{'certified':>9} {'margin':>7} {'clean':>6} {'ratio':>6} {'attack s':>8}  counterexample")
    ratios = []
    for label, prefix, suffix, _ds in prefixes:
        log(f"{label}: certifying")
        n_cert, r = certified(model, prefix, suffix)
        c, margin = (r.token, r.margin) if r else (None, math.nan)
        log(f"{label}: certified n_free {n_cert}; searching for counterexamples")
        if c is None:
            c = int(torch.argmax(model(torch.tensor([prefix + suffix]))[0, -1]))
        clean, found, cex, secs = clean_limit(model, prefix, suffix, c, rng)
        clean_s = f"{clean}" if found else f">={clean}"
        ratio = n_cert / clean if clean > 0 else math.nan
        ratios.append(ratio)
        text = tok.decode(prefix[:6])
        cex_s = (f"{tok.decode(cex)[:30]!r} ids {cex[:6]}{'...' if len(cex) > 6 else ''}"
                 if cex is not None else "-")
        print(f"{label:<22} {len(prefix):5d} {tok.decode(suffix)!r:>7} {text[:24]!r:<24} {tok.decode([c])!r:>8} "
              f"{n_cert:9d} {margin:7.3f} {clean_s:>6} {ratio:6.3f} {secs:8.1f}  {cex_s}", flush=True)
    finite = [r for r in ratios if math.isfinite(r)]
    if finite:
        print(f"\ntightness certified/clean: min {min(finite):.3f}, median {float(np.median(finite)):.3f} "
              f"(goal >= 0.5)")


if __name__ == "__main__":
    main()
