"""``design``: search for a prefix that the prover certifies (paper 1's "designed inputs").

The objective is the prover's own certified margin (``best_margin``: the lowest lower bound of
logit[c] - max_{k != c} logit[k] over the claim), so the search climbs exactly what a proof needs.
What makes a prefix easy to prove is visible in the bound: the weight Lambda that free tokens can take
from the last position is W_R / (W_A + W_R), so prefix tokens the last query attends to strongly
("attention magnets") squash the free tokens, and a large logit gap at the empty string leaves room.

Strategies, in order, each scored by the prover on a short free length first (cheap) and then on the
full claim:

1. ``repeat``: the prefix b b ... b for the tokens b with the highest layer-0 attention score from
   the last position (averaged over the prefix's positions and the heads);
2. ``magnet``: each block of prefix positions filled with the token of highest score at that block's
   distance from the last position (RoPE makes this depend on the distance);
3. ``coordinate``: from the best prefix so far, blocks of positions (nearest to the free region
   first) are replaced by each of a few candidate tokens; a change is kept when the margin improves.

The search stops when the budget is spent or a proven prefix has been found and a round brings no
improvement.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from assay.errors import BadInput
from assay.prove import rules
from assay.prove.api import prove, single_thread, validate
from assay.prove.engine import Options
from assay.prove.weights import extract

# Candidates are scored by their margin, also below 0, so the slope search is not ended early
# (Options.alpha_stop below alpha_floor never triggers).
FULL_SEARCH = Options(alpha_stop=-1e9)


@dataclass
class DesignResult:
    """Outcome of :func:`design`: the best prefix found, whether it is proven (with its certified
    margin and the certificate), and what was tried (strategy, candidates evaluated, best margin)."""

    prefix: list[int]
    proven: bool
    token: int | None
    margin: float | None
    seconds: float
    tried: list[dict] = field(default_factory=list)
    best_margin: float | None = None
    certificate: dict | None = None


def _magnet_scores(model, positions: np.ndarray, last_pos: int, query_tokens: Sequence[int]) -> np.ndarray:
    """Mean over heads of the layer-0 attention score of every token (rows) at each position (columns)
    from the last position, whose token is averaged over query_tokens. A heuristic, not a bound."""
    W = extract(model)
    lw = W.layers[0]
    eps = W.eps

    def ln(x):
        if lw.ln1_w is None:
            return x
        y = x - x.mean(-1, keepdims=True)
        return y / np.sqrt((y * y).mean(-1, keepdims=True) + eps) * lw.ln1_w + lw.ln1_b

    cfg = model.cfg
    qx = W.W_E[list(query_tokens)]
    if W.W_pos is not None:
        qx = qx + W.W_pos[last_pos]
    qn = ln(qx)
    out = np.zeros((cfg.d_vocab, len(positions)))
    for h in range(cfg.n_heads):
        q = (qn @ lw.W_Q[h] + lw.b_Q[h]).mean(axis=0)
        if cfg.positional_embedding_type == "rotary":
            cos, sin, cerr = rules.rope_cos_sin(np.array([last_pos]), cfg.rotary_dim, cfg.rotary_base)
            q = rules.rotate(q[None, :], np.zeros((1, cfg.d_head)), cos, sin, cerr)[0][0]
        for j, p in enumerate(positions):
            x = W.W_E if W.W_pos is None else W.W_E + W.W_pos[p]
            k = ln(x) @ lw.W_K[h] + lw.b_K[h]
            if cfg.positional_embedding_type == "rotary":
                cos, sin, cerr = rules.rope_cos_sin(np.array([p]), cfg.rotary_dim, cfg.rotary_base)
                k = rules.rotate(k[None, :, :], np.zeros((1,) + k.shape), cos, sin, cerr)[0][0]
            out[:, j] += k @ q / np.sqrt(cfg.d_head)
    return out / cfg.n_heads


def design(
    model,
    n_fix: int,
    n_free: int,
    suffix: Sequence[int] = (),
    allowed: Sequence[int] | None = None,
    seed: int = 0,
    budget_seconds: float = 60,
    progress: Callable[[dict], None] | None = None,
    max_evals: int | None = None,
) -> DesignResult:
    """Search for a prefix of n_fix tokens that the prover certifies for n_free free tokens.

    Returns the best prefix found (highest certified margin; proven ones first). ``progress``, if
    given, is called with a dict after every evaluation (strategy, round, margin, best so far).
    The search stops after ``budget_seconds`` of wall time, or, when ``max_evals`` is given, after that
    many prover evaluations instead (the time budget is then ignored), which makes the result the same
    on every run and machine for a given seed.
    """
    if max_evals is not None and (isinstance(max_evals, bool) or not isinstance(max_evals, (int, np.integer))
                                  or max_evals < 1):
        raise BadInput(f"max_evals must be a positive integer, got {max_evals!r}")
    t0 = time.perf_counter()
    if isinstance(n_fix, bool) or not isinstance(n_fix, (int, np.integer)) or n_fix < 1:
        raise BadInput(f"n_fix must be a positive integer, got {n_fix!r}")
    # validate the rest of the claim with a placeholder prefix
    _, n_free, suffix, allowed_list = validate(model, [0] * int(n_fix), n_free, suffix, allowed)
    n_fix = int(n_fix)
    vocab = list(range(model.cfg.d_vocab)) if allowed_list is None else allowed_list
    rng = np.random.default_rng(seed)
    deadline = t0 + float(budget_seconds)
    tried: list[dict] = []
    cache: dict[tuple, float] = {}  # prefix -> margin at the current phase's free length
    best = {"prefix": None, "margin": -np.inf}
    phase = {"n_eval": min(n_free, 1)}

    # The short free length (1) is only a cheap guide: it may use half the budget (time, or evaluations:
    # every cache entry is one prover run), so that the full free length always gets a search of its own.
    def spent(short: bool) -> bool:
        if max_evals is not None:
            return len(cache) >= (max(1, max_evals // 2) if short else max_evals)
        return time.perf_counter() > (t0 + 0.5 * float(budget_seconds) if short else deadline)

    def out_of_time() -> bool:
        return spent(phase["n_eval"] < n_free)

    def score(prefix: list[int], strategy: str, rnd: int) -> float:
        key = (phase["n_eval"], tuple(prefix))
        if key not in cache:
            # the search's objective is the margin itself, also below 0: no early end of the slope search
            r = prove(model, prefix, phase["n_eval"], suffix=suffix, allowed=allowed_list, options=FULL_SEARCH)
            cache[key] = r.best_margin if r.best_margin is not None else -np.inf
            if cache[key] > best["margin"]:
                best.update(prefix=list(prefix), margin=cache[key])
            if progress is not None:
                progress({"strategy": strategy, "round": rnd, "n_free": phase["n_eval"], "margin": cache[key],
                          "best": best["margin"], "seconds": time.perf_counter() - t0})
        return cache[key]

    # ---------------------------------------------------------------- candidate tokens
    last_pos = n_fix + n_free + len(suffix) - 1
    query_tokens = [suffix[-1]] if suffix else vocab
    blocks = max(1, min(32, n_fix))
    edges = np.linspace(0, n_fix, blocks + 1).astype(int)
    centers = ((edges[:-1] + edges[1:]) // 2).clip(0, n_fix - 1)
    with single_thread():
        S = _magnet_scores(model, centers, last_pos, query_tokens)  # [vocab, blocks]
    S = S[vocab]
    mean_rank = np.argsort(-S.mean(axis=1), kind="stable")
    top = [vocab[i] for i in mean_rank[:8]]

    # ---------------------------------------------------------------- 1. repeated tokens
    rec = {"strategy": "repeat", "n_free": phase["n_eval"], "candidates": 0, "best_margin": None}
    for b in top:
        if out_of_time():
            break
        m = score([b] * n_fix, "repeat", 0)
        rec["candidates"] += 1
        rec["best_margin"] = m if rec["best_margin"] is None else max(rec["best_margin"], m)
    tried.append(rec)

    # ---------------------------------------------------------------- 2. magnet per block
    if not out_of_time():
        pref = []
        for j in range(blocks):
            b = vocab[int(np.argmax(S[:, j]))]
            pref += [b] * int(edges[j + 1] - edges[j])
        m = score(pref, "magnet", 0)
        tried.append({"strategy": "magnet", "n_free": phase["n_eval"], "candidates": 1, "best_margin": m})

    # ---------------------------------------------------------------- 3. coordinate search, short then full
    rnd = 0
    for n_eval in dict.fromkeys([min(n_free, 1), n_free]):
        if best["prefix"] is None or spent(False):
            break
        if n_eval != phase["n_eval"]:
            phase["n_eval"] = n_eval
            start = best["prefix"]
            best["margin"] = -np.inf
            score(start, "rescore", rnd)
        while not out_of_time():
            rnd += 1
            rec = {"strategy": "coordinate", "n_free": n_eval, "round": rnd, "candidates": 0, "best_margin": None}
            base_round = best["margin"]
            for j in range(blocks - 1, -1, -1):  # nearest to the free region first
                if out_of_time():
                    break
                lo, hi = int(edges[j]), int(edges[j + 1])
                if hi <= lo:
                    continue
                cands = [vocab[i] for i in np.argsort(-S[:, j], kind="stable")[:3]]
                cands.append(top[int(rng.integers(len(top)))])
                for b in dict.fromkeys(cands):
                    if out_of_time():
                        break
                    trial = list(best["prefix"])
                    trial[lo:hi] = [b] * (hi - lo)
                    m = score(trial, "coordinate", rnd)
                    rec["candidates"] += 1
                    rec["best_margin"] = m if rec["best_margin"] is None else max(rec["best_margin"], m)
            tried.append(rec)
            if not best["margin"] > base_round:
                break

    # ---------------------------------------------------------------- full claim on the best ones
    proven_result = None
    final = None
    full = sorted(((m, p) for (n, p), m in cache.items() if n == n_free), key=lambda x: -x[0])
    short = sorted(((m, p) for (n, p), m in cache.items() if n != n_free), key=lambda x: -x[0])
    for _m, prefix in (full + short)[:3]:
        if out_of_time() and final is not None:
            break
        r = prove(model, list(prefix), n_free, suffix=suffix, allowed=allowed_list, _stop_early=True)
        tried.append({"strategy": "verify", "n_free": n_free, "candidates": 1, "best_margin": r.best_margin,
                      "proven": r.proven})
        if final is None or (r.best_margin or -np.inf) > (final[1].best_margin or -np.inf):
            final = (list(prefix), r)
        if r.proven:
            proven_result = (list(prefix), r)
            break
    prefix, r = proven_result or final
    for rec in tried:  # JSON-able: no infinities
        if rec.get("best_margin") is not None and not np.isfinite(rec["best_margin"]):
            rec["best_margin"] = None
        elif rec.get("best_margin") is not None:
            rec["best_margin"] = float(rec["best_margin"])
    return DesignResult(
        prefix=prefix,
        proven=r.proven,
        token=r.token,
        margin=r.margin if r.proven else None,
        seconds=time.perf_counter() - t0,
        tried=tried,
        best_margin=r.best_margin,
        certificate=r.certificate if r.proven else None,
    )
