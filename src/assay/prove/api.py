"""``prove``: certify that a prefix overwhelms a causal model, and write the evidence down.

The claim: for every string t over the allowed tokens with length 0..n_free, the argmax of the
logits at the last position of prefix + t + suffix is one token c (a strict maximum). ``prove``
computes, for every length L (and, when the suffix is empty and L >= 1, every last token), a certified
lower bound on logit[c] - logit[k] for every k != c (see engine.py); the claim is proven when all are > 0.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from assay.errors import BadInput
from assay.prove.engine import CaseResult, Engine, Options
from assay.prove.weights import CANONICAL_HASH_DOC, extract, model_sha256, state_dict_sha256

FORMAT = "assay-overwhelm-certificate/1"
METHOD = "affine-lambda/8"
# Numbers written into a certificate are loosened by this much so that the checker, which recomputes
# them in ball arithmetic, finds them valid; it also rejects any number further than CHECK_TOL away.
REL_SLACK = 1e-7


@dataclass
class ProveResult:
    """Outcome of :func:`prove`.

    ``margin``: certified lower bound of logit[token] - max_{k != token} logit[k] over the whole claim
    (None unless proven). ``best_margin``: the lowest bound found (equal to margin when proven; the
    most negative case when not). ``details``: per-length margins, lambda_max, case counts.
    """

    proven: bool
    token: int | None
    margin: float | None
    best_margin: float | None
    certificate: dict
    n_fix: int
    n_free: int
    seconds: float
    details: dict = field(default_factory=dict)


def _int_list(name: str, seq, d_vocab: int) -> list[int]:
    if isinstance(seq, (str, bytes)):
        raise BadInput(f"{name} must be a sequence of token ids, got a string")
    try:
        out = [int(t) for t in seq]
    except (TypeError, ValueError):
        raise BadInput(f"{name} must be a sequence of token ids") from None
    for t, raw in zip(out, seq, strict=True):
        if isinstance(raw, (bool, np.bool_)) or (isinstance(raw, float) and raw != t):
            raise BadInput(f"{name}: {raw!r} is not a token id")
        if not 0 <= t < d_vocab:
            raise BadInput(f"{name}: token id {t} out of range 0..{d_vocab - 1}")
    return out


def validate(model, prefix, n_free, suffix, allowed) -> tuple[list[int], int, list[int], list[int] | None]:
    """Check a claim's inputs against the model; BadInput naming the first problem."""
    cfg = model.cfg
    prefix = _int_list("prefix", prefix, cfg.d_vocab)
    suffix = _int_list("suffix", suffix, cfg.d_vocab)
    if not prefix:
        raise BadInput("prefix is empty: the prover needs at least one fixed token")
    if isinstance(n_free, bool) or not isinstance(n_free, (int, np.integer)):
        raise BadInput(f"n_free must be an integer, got {n_free!r}")
    n_free = int(n_free)
    if n_free < 0:
        raise BadInput(f"n_free must be >= 0, got {n_free}")
    if allowed is not None:
        allowed = sorted(set(_int_list("allowed", allowed, cfg.d_vocab)))
        if not allowed:
            raise BadInput("allowed is empty")
    total = len(prefix) + n_free + len(suffix)
    if total > cfg.n_ctx:
        raise BadInput(
            f"n_fix + n_free + len(suffix) = {len(prefix)} + {n_free} + {len(suffix)} = {total} "
            f"exceeds n_ctx={cfg.n_ctx}"
        )
    if cfg.normalization_type == "LN" and not cfg.eps > 0:
        raise BadInput(f"prover needs LayerNorm eps > 0, got {cfg.eps}")
    return prefix, n_free, suffix, allowed


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


DIGEST_FIELDS = ("format", "claim", "proven", "model_sha256", "model_sha256_source", "weights_state_sha256",
                 "weights_state_sha256_is", "model_config", "prefix", "suffix", "n_free", "allowed", "token",
                 "margin", "method", "cases")


def digest(cert: dict) -> str:
    """sha256 of the canonical JSON of the certificate's own fields (DIGEST_FIELDS): integrity, not
    authentication. Fields added later (e.g. the command line's ``model`` name) are not covered."""
    body = {k: cert.get(k) for k in DIGEST_FIELDS}
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


def _loosen_down(x: float) -> float:
    return float(x - REL_SLACK * (1.0 + abs(x)))


def _loosen_up(x: float) -> float:
    return float(x + REL_SLACK * (1.0 + abs(x)))


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def reference_token(model, prefix: Sequence[int], suffix: Sequence[int]) -> int:
    """The argmax at the last position of prefix + suffix (a float64 forward pass): the candidate c.

    Any choice is safe (the bounds decide); this one is the only one that can be right, since the
    claim includes the empty string.
    """
    import torch

    params = list(model.parameters())
    m = model if params and params[0].dtype == torch.float64 else copy.deepcopy(model).double()
    with torch.no_grad():
        logits = m(torch.tensor([list(prefix) + list(suffix)]))[0, -1]
    return int(torch.argmax(logits))


def enumerate_cases(n_free: int, suffix: Sequence[int], allowed: Sequence[int]):
    """The cases of a claim: (L, None) when the last token is fixed, else (L, a) for each allowed a."""
    for L in range(n_free + 1):
        if suffix or L == 0:
            yield L, None
        else:
            for a in allowed:
                yield L, int(a)


def run_cases(engine: Engine, n_free: int, c: int, stop_below: float | None = None) -> list[CaseResult]:
    """Every case's bounds (stopping at the first case whose margin is below stop_below, if given).

    Once a case is not proven the claim cannot be, so later cases skip the per-competitor slopes, the
    per-position caps and score ratios of the attention terms and method /6's second pass with norm
    directions (their bounds stay valid, only less tight): without this an unprovable claim with a
    free last token would run the slope search in each of its |A| cases per length, and a long
    unprovable one the ratio bound at every length."""
    out = []
    saved = engine.use_slopes, engine.use_ratios, engine.use_norm_dirs
    try:
        for L, last in enumerate_cases(n_free, list(engine.suffix), list(engine.allowed)):
            r = engine.case(L, last, c)
            out.append(r)
            if not r.margin > 0.0:
                engine.use_slopes = engine.use_ratios = engine.use_norm_dirs = False
            if stop_below is not None and not r.margin > stop_below:
                break
    finally:
        engine.use_slopes, engine.use_ratios, engine.use_norm_dirs = saved
    return out


def single_thread():
    """BLAS on one thread: the prover's matrices are small, and a shared machine's thread pool makes
    them many times slower (measured 5x under load)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional
        return contextlib.nullcontext()
    return threadpool_limits(1)


def prove(
    model,
    prefix: Sequence[int],
    n_free: int,
    suffix: Sequence[int] = (),
    allowed: Sequence[int] | None = None,
    *,
    options: Options | None = None,
    _stop_early: bool = False,
) -> ProveResult:
    """Try to prove that the argmax at the last position of prefix + t + suffix is the same token for
    every t of length 0..n_free over ``allowed`` (default: the whole vocabulary).

    Raises BadInput for inputs out of range and for models the prover does not cover (bidirectional,
    saturated/hard attention, post-LN, activations other than ReLU/GELU).
    """
    with single_thread():
        return _prove(model, prefix, n_free, suffix, allowed, options, _stop_early)


def _prove(model, prefix, n_free, suffix, allowed, options, _stop_early) -> ProveResult:
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    prefix, n_free, suffix, allowed_list = validate(model, prefix, n_free, suffix, allowed)
    W = extract(model)
    opts = options or Options()
    vocab = np.arange(model.cfg.d_vocab) if allowed_list is None else np.array(allowed_list, dtype=np.int64)
    engine = Engine(W, prefix, suffix, vocab, opts)
    c = reference_token(model, prefix, suffix)
    cases = run_cases(engine, n_free, c, stop_below=0.0 if _stop_early else None)
    worst = min(cases, key=lambda r: r.margin)
    complete = len(cases) == sum(1 for _ in enumerate_cases(n_free, suffix, vocab))
    # every case, not just min(): a NaN would compare False both ways (CaseResult maps it to -inf too)
    proven = complete and all(r.margin > 0.0 for r in cases) and _loosen_down(worst.margin) > 0.0
    case_records = [
        {
            "L": r.L,
            "last": r.last,
            "margin": _finite(_loosen_down(r.margin)),
            "worst": r.worst,
            "refine": [int(k) for k in r.refined],
            "lambda_max": [_loosen_up(x) for x in r.lambdas],
            "alpha": r.alpha,
            "norm_dirs": None if r.norm_dirs is None else {k: [float(x) for x in v] for k, v in r.norm_dirs.items()},
        }
        for r in cases
    ]
    h, source = model_sha256(model)
    cert = {
        "format": FORMAT,
        "claim": (
            "for every t over `allowed` (null: whole vocabulary) with 0 <= len(t) <= n_free, the logits at the "
            "last position of prefix + t + suffix have a strict maximum at `token`; `margin` is a lower bound "
            "of logit[token] - max_{k != token} logit[k] over all such t"
        ),
        "proven": bool(proven),
        "model_sha256": h,
        "model_sha256_source": source,
        "weights_state_sha256": state_dict_sha256(model),
        "weights_state_sha256_is": CANONICAL_HASH_DOC,
        "model_config": model.cfg.to_dict(),
        "prefix": prefix,
        "suffix": suffix,
        "n_free": n_free,
        "allowed": allowed_list,
        "token": c,
        "margin": _finite(_loosen_down(worst.margin)),
        "method": {"name": METHOD, "options": opts.to_dict()},
        "cases": case_records,
    }
    cert["digest"] = digest(cert)
    per_length = []
    for L in range(n_free + 1):
        rs = [r for r in cases if r.L == L]
        if not rs:
            continue
        w = min(rs, key=lambda r: r.margin)
        lam = np.max(np.array([r.lambdas for r in rs]), axis=0).tolist() if rs[0].lambdas else []
        per_length.append(
            {"L": L, "margin": _finite(w.margin), "worst_competitor": w.worst, "worst_last_token": w.last,
             "cases": len(rs), "lambda_max": lam}
        )
    seconds = time.perf_counter() - t0
    best = _finite(_loosen_down(worst.margin))
    return ProveResult(
        proven=bool(proven),
        token=c,
        margin=best if proven else None,
        best_margin=best,
        certificate=cert,
        n_fix=len(prefix),
        n_free=n_free,
        seconds=seconds,
        details={"per_length": per_length, "n_cases": len(cases), "complete": complete,
                 "cpu_seconds": time.process_time() - cpu0},
    )
