"""Bit profiler: how many bits the memory vectors of a saturated transformer need as n grows.

A *memory vector* is the residual stream at one position after the embedding or after one layer.
Its size in bits is the sum over its coordinates of (bits of |numerator| + bits of denominator) of
the coordinate in lowest terms; ``bits(n)`` is the largest size over every memory vector of every
position < n, for the input strings profiled. The theorem of Merrill, Sabharwal & Smith says that with
size-preserving functions this is O(log n); :func:`fit_log` fits ``a * log2(n) + b`` by least squares
and reports R^2 and the residuals. The counter-construction (a positional embedding 2^-(i+1), not
size-preserving) needs Theta(n) bits, so it gets :func:`fit_linear` as well.

Precision: for a p-bit run (:mod:`assay.saturation.numbers`) the *decisions* are the construction's
accept / reject at every position (for a trained model: the argmax of the logits). ``p_min(n)`` is the
smallest p for which every decision at positions < n equals the exact run's.

Everything is computed position by position with :class:`~assay.saturation.interpreter.Stream`, so
memory is the stored keys and values (one small tuple per position and head, shared when equal), not
an n x n attention matrix.
"""

from __future__ import annotations

import math
import random
import resource
import time
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

from assay.errors import BadInput
from assay.saturation.constructions import CONSTRUCTIONS, Construction, build
from assay.saturation.interpreter import Interpreter, Vec
from assay.saturation.languages import sample

MAX_N_CONSTRUCTION = 200_000  # exact streaming: ~ 0.1-0.3 ms and ~ 0.5 KB per position and layer
MAX_N_COUNTER = 20_000  # its memory vectors have ~ n bits: O(n^2) time and memory
MAX_N_MODEL = 4096  # trained models: every query differs, O(n^2) score evaluations
MAX_N_PRECISION = 10_000  # the p-bit scan runs one p-bit pass per precision tried


def vector_bits(v: Sequence[Any]) -> tuple[int, int, int]:
    """Return (total bits, largest numerator bits, largest denominator bits) of a vector of rationals."""
    total = num_max = den_max = 0
    for x in v:
        q = x if isinstance(x, Fraction) else Fraction(x)
        nb, db = abs(q.numerator).bit_length(), q.denominator.bit_length()
        total += nb + db
        num_max = max(num_max, nb)
        den_max = max(den_max, db)
    return total, num_max, den_max


def grid(n_max: int, per_decade: int = 4) -> list[int]:
    """Return about ``per_decade`` geometrically spaced lengths per decade in 1..n_max, n_max included."""
    pts = {1, n_max}
    k = 0
    while True:
        n = round(10 ** (k / per_decade))
        if n > n_max:
            break
        pts.add(n)
        k += 1
    return sorted(pts)


def argmax_decision(logits: Sequence[Any]) -> int:
    """Return the index of the largest logit (the first on ties)."""
    best = 0
    for j in range(1, len(logits)):
        if logits[j] > logits[best]:
            best = j
    return best


def stream_bits(interp: Interpreter, tokens: Sequence[int], decide: Callable[[Vec], Any],
                progress: Callable[[int], None] | None = None,
                ) -> tuple[list[tuple[int, int, int, tuple[int, ...]]], list[Any]]:
    """Return per position (bits of the largest memory vector, largest numerator bits, largest
    denominator bits, the bits of each memory vector: a tuple over resid[0] (embedding) .. resid[L])
    and the decisions, streaming ``tokens`` through ``interp``."""
    st = interp.stream()
    per_pos, decisions = [], []
    for i, t in enumerate(tokens):
        step = st.push(t)
        best = (0, 0, 0)
        per_layer = []
        for v in step.resid:
            b = vector_bits(v)
            per_layer.append(b[0])
            best = (max(best[0], b[0]), max(best[1], b[1]), max(best[2], b[2]))
        per_pos.append((*best, tuple(per_layer)))
        decisions.append(decide(step.logits))
        if progress is not None and i % 1000 == 999:
            progress(i + 1)
    return per_pos, decisions


def first_disagreement(interp: Interpreter, tokens: Sequence[int], reference: Sequence[Any],
                       decide: Callable[[Vec], Any]) -> int:
    """Return the first position whose decision differs from ``reference`` (len(tokens) if none)."""
    st = interp.stream()
    for i, t in enumerate(tokens):
        if decide(st.push(t).logits) != reference[i]:
            return i
    return len(tokens)


def fit_log(points: Sequence[Sequence[float]]) -> dict[str, float]:
    """Least-squares fit bits = a * log2(n) + b; returns {a, b, r2, rms_residual, max_residual}."""
    return _fit([math.log2(n) for n, _ in points], [b for _, b in points])


def fit_linear(points: Sequence[Sequence[float]]) -> dict[str, float]:
    """Least-squares fit bits = a * n + b; returns {a, b, r2, rms_residual, max_residual}."""
    return _fit([float(n) for n, _ in points], [b for _, b in points])


def _fit(x: list[float], y: list[float]) -> dict[str, float]:
    m = len(x)
    if m < 2:
        return {"a": float("nan"), "b": float("nan"), "r2": float("nan"), "rms_residual": float("nan"),
                "max_residual": float("nan")}
    mx, my = sum(x) / m, sum(y) / m
    sxx = sum((a - mx) ** 2 for a in x)
    a = sum((xi - mx) * (yi - my) for xi, yi in zip(x, y, strict=True)) / sxx if sxx else 0.0
    b = my - a * mx
    res = [yi - (a * xi + b) for xi, yi in zip(x, y, strict=True)]
    ss_res = sum(r * r for r in res)
    ss_tot = sum((yi - my) ** 2 for yi in y)
    return {
        "a": round(a, 6), "b": round(b, 6),
        "r2": round(1 - ss_res / ss_tot, 6) if ss_tot else 1.0,
        "rms_residual": round(math.sqrt(ss_res / m), 6),
        "max_residual": round(max(abs(r) for r in res), 6),
    }


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def profile(
    interp: Interpreter,
    inputs: list[tuple[str, list[int]]],
    decide: Callable[[Vec], Any],
    n_grid: list[int],
    precision_n_max: int = 0,
    precision_builder: Callable[[int], Interpreter] | None = None,
    p_max: int = 64,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Return the bit profile over ``inputs`` (name, tokens) at the lengths ``n_grid``.

    Keys: ``points`` ([n, bits]), ``numerator_bits`` / ``denominator_bits`` ([n, largest of any one
    coordinate]), ``fit`` (a * log2 n + b), ``per_layer`` (the same points and fit for each memory
    vector separately: resid[0] = the embedding, resid[k] = after layer k - 1), ``inputs`` (names),
    and when ``precision_n_max`` > 0, ``precision`` = {points: [n, p_min], fit}: the largest over the
    inputs (their first precision_n_max tokens) of the smallest p that keeps every decision.
    """
    start = time.perf_counter()
    best = [(0, 0, 0)] * len(n_grid)
    n_vectors = interp.cfg.n_layers + 1
    best_layer = [[0] * n_vectors for _ in n_grid]
    decisions_by_input: dict[str, list[Any]] = {}
    for name, toks in inputs:
        if log:
            log(f"exact run on {name} input, n = {len(toks)}")
        per_pos, decisions = stream_bits(interp, toks, decide)
        decisions_by_input[name] = decisions
        run = (0, 0, 0)
        run_layer = [0] * n_vectors
        g = 0
        for i, b in enumerate(per_pos):
            run = (max(run[0], b[0]), max(run[1], b[1]), max(run[2], b[2]))
            run_layer = [max(x, y) for x, y in zip(run_layer, b[3], strict=True)]
            while g < len(n_grid) and n_grid[g] == i + 1:
                best[g] = tuple(max(x, y) for x, y in zip(best[g], run, strict=True))  # type: ignore[assignment]
                best_layer[g] = [max(x, y) for x, y in zip(best_layer[g], run_layer, strict=True)]
                g += 1
    points = [[n, b[0]] for n, b in zip(n_grid, best, strict=True)]
    out: dict[str, Any] = {
        "points": points,
        "numerator_bits": [[n, b[1]] for n, b in zip(n_grid, best, strict=True)],
        "denominator_bits": [[n, b[2]] for n, b in zip(n_grid, best, strict=True)],
        "fit": fit_log([p for p in points if p[0] >= 2]),
        "per_layer": [
            {"vector": k, "after": "embedding" if k == 0 else f"layer {k - 1}",
             "points": (lp := [[n, bl[k]] for n, bl in zip(n_grid, best_layer, strict=True)]),
             "fit": fit_log([p for p in lp if p[0] >= 2])}
            for k in range(n_vectors)
        ],
        "inputs": [name for name, _ in inputs],
    }
    if precision_n_max > 0 and precision_builder is not None:
        pgrid = [n for n in n_grid if n <= precision_n_max]
        worst: list[int | None] = [None] * len(pgrid)
        for name, toks in inputs:
            toks = toks[:precision_n_max]
            ref = decisions_by_input[name][:precision_n_max]
            reached: list[tuple[int, int]] = []  # (p, first disagreement)
            for p in range(2, p_max + 1):
                fd = first_disagreement(precision_builder(p), toks, ref, decide)
                reached.append((p, fd))
                if fd == len(toks):
                    if log:
                        log(f"{name}: p = {p} bits keeps every decision up to n = {len(toks)}")
                    break
            for g, n in enumerate(pgrid):
                ok = [p for p, fd in reached if fd >= n]
                if ok and (worst[g] is None or ok[0] > worst[g]):  # type: ignore[operator]
                    worst[g] = ok[0]
        ppoints = [[n, p] for n, p in zip(pgrid, worst, strict=True)]
        out["precision"] = {
            "points": ppoints,
            "fit": fit_log([q for q in ppoints if q[0] >= 2 and q[1] is not None]),
            "n_max": precision_n_max,
        }
    out["peak_rss_mb"] = round(_rss_mb(), 1)
    out["profile_seconds"] = round(time.perf_counter() - start, 2)
    return out


def profile_construction(language: str, n_max: int, seed: int = 0, precision_n_max: int | None = None,
                         log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Return the bit profile of a construction up to length ``n_max`` (see :func:`profile`).

    Inputs: one string from :func:`~assay.saturation.languages.sample` (near the language boundary)
    and one uniform random string, both of length n_max. The counter-construction also gets
    ``linear_fit``. BadInput for an unknown language or n_max out of range.
    """
    if language not in CONSTRUCTIONS:
        raise BadInput(f"unknown language {language!r}; known: {', '.join(CONSTRUCTIONS)}")
    limit = MAX_N_COUNTER if language == "counter" else MAX_N_CONSTRUCTION
    if not 1 <= n_max <= limit:
        raise BadInput(f"--n-max must be in 1..{limit} for {language} (the memory / time limit), got {n_max}")
    c: Construction = build(language, n_max if language != "counter" else min(n_max, 1021))
    rng = random.Random(seed)
    near = sample("majority" if language == "counter" else language, n_max, rng)
    uniform = [rng.randrange(2) for _ in range(n_max)]
    if precision_n_max is None:
        precision_n_max = min(n_max, 2000)
    precision_n_max = min(precision_n_max, n_max, MAX_N_PRECISION)
    out = profile(
        c.interpreter(), [("near-boundary", near), ("uniform", uniform)], c.decide, grid(n_max),
        precision_n_max=precision_n_max, precision_builder=lambda p: c.interpreter(precision=p), log=log,
    )
    if language == "counter":
        out["linear_fit"] = fit_linear(out["points"])
    return {"language": language, "n_max": n_max, **out}


def profile_model(model: Any, n_max: int, attention: str | None = None, seed: int = 0,
                  precision_n_max: int | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Return the bit profile of a (trained) causal model run exactly on random token strings.

    The decision at each position is the argmax of the logits. BadInput for softmax attention without
    ``attention``, for operations the exact mode does not cover, and for n_max beyond n_ctx or
    MAX_N_MODEL.
    """
    interp = Interpreter(model, attention=attention)
    cfg = model.cfg
    limit = min(MAX_N_MODEL, cfg.n_ctx)
    if not 1 <= n_max <= limit:
        raise BadInput(f"--n-max must be in 1..{limit} for this model (n_ctx={cfg.n_ctx}, "
                       f"exact-run limit {MAX_N_MODEL}), got {n_max}")
    if not cfg.causal:
        raise BadInput("the bit profiler streams causal models only")
    rng = random.Random(seed)
    toks = [rng.randrange(cfg.d_vocab) for _ in range(n_max)]
    pn = min(n_max, 256) if precision_n_max is None else min(precision_n_max, n_max)
    out = profile(interp, [("uniform", toks)], argmax_decision, grid(n_max), precision_n_max=pn,
                  precision_builder=lambda p: Interpreter(model, precision=p, attention=attention), log=log)
    return {"n_max": n_max, "attention": interp.mode, **out}
