"""One call for the whole question at one (model, layer, head, mask, set, n): local, lower, upper.

:func:`analyze` is what ``assay lipschitz MODEL ...`` runs. It returns a :class:`LipschitzResult` with

- ``local``: ||J(X)||_2 at the chosen input X (power iteration, or SVD with ``exact=True``);
- ``lower``: the best lower bound found on sup_{X in K^n} ||J(X)||_2 (ascent; attained at ``X_best``);
- ``upper``: the proved upper bound on that supremum (:func:`assay.lipschitz.bounds.upper_bounds`);
- ``local_upper``: the data-dependent bound on ||J(X)||_2 at X itself.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from assay.errors import BadInput
from assay.lipschitz.bounds import local_upper_bound, map_constants, upper_bounds
from assay.lipschitz.jacobian import NormEstimate, jacobian_norm, jacobian_norm_exact
from assay.lipschitz.lower import ascend, lower_bound
from assay.lipschitz.maps import AttentionMap, attention_inputs, attention_map, check_model
from assay.lipschitz.sets import TokenSet
from assay.lipschitz.text import SAMPLE_TEXT, encode, source_text, text_windows

EXACT_MAX_DIM = 6144  # n * d above which the full Jacobian (8 (n d)^2 bytes = 300 MB) is refused
INPUTS = ("random", "text", "adversarial")


@contextlib.contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Run a block with ``n`` intra-op torch threads (restored afterwards).

    These computations are long chains of small tensor operations; on a shared two-core machine,
    OpenMP threads that spin waiting for each other make them many times slower than one thread.
    """
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def local_lipschitz(amap: AttentionMap, X: torch.Tensor, exact: bool = False, tol: float = 1e-9,
                    max_iter: int = 2000, seed: int = 0) -> NormEstimate:
    """Return ||J(X)||_2 of ``amap`` at X: power iteration (default) or full Jacobian + SVD (``exact``).

    See :func:`assay.lipschitz.jacobian.jacobian_norm` for the tolerance and the residual.
    """
    if exact:
        if X.numel() > EXACT_MAX_DIM:
            raise BadInput(f"--exact needs the full Jacobian, {X.numel()}^2 entries; use n * d <= {EXACT_MAX_DIM}")
        return jacobian_norm_exact(amap, X)
    return jacobian_norm(amap, X, tol=tol, max_iter=max_iter, seed=seed)


def default_radius(model: Any, amap: AttentionMap, layer: int) -> float:
    """Return the default radius R of the input set.

    LayerNorm set: sqrt(d) (the closure of LayerNorm's image). Ball: the largest norm of a real input
    token of this attention on the built-in sample text (first min(n_ctx, 64) tokens), so that real
    inputs lie in the set.
    """
    d = amap.d_model
    if amap.layernorm:
        return math.sqrt(d)
    ids, cls = encode(model, SAMPLE_TEXT)
    toks = (([cls] if cls is not None else []) + ids)[: min(model.cfg.n_ctx, 64)]
    Y = attention_inputs(model, layer, toks, layernorm=False)
    return float(Y.norm(dim=-1).max())


@dataclass
class LipschitzResult:
    """Everything ``assay lipschitz`` reports (see the module doc for local / lower / upper)."""

    n: int
    local: float
    lower: float
    upper: float
    local_upper: float
    bounds: dict[str, float | None]
    radius: float
    set_kind: str
    input_kind: str
    local_residual: float
    local_iterations: int
    local_method: str
    lower_seed: str
    X: torch.Tensor
    X_best: torch.Tensor
    label: str
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON object of ``assay lipschitz --json`` (a bound too large for a float is null)."""
        return _finite({
            "n": self.n, "local": self.local, "lower": self.lower, "upper": self.upper,
            "seconds": round(self.seconds, 3), "local_upper": self.local_upper, "bounds": self.bounds,
            "radius": self.radius, "set": self.set_kind, "input": self.input_kind,
            "local_residual": self.local_residual, "local_iterations": self.local_iterations,
            "local_method": self.local_method, "lower_seed": self.lower_seed, "map": self.label, **self.extra,
        })  # fmt: skip


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    """Return ``d`` with every non-finite float (recursively) replaced by None, so the JSON is strict."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = _finite(v)
        elif isinstance(v, float) and not math.isfinite(v):
            v = None
        out[k] = v
    return out


def analyze(
    model: Any,
    layer: int,
    head: int | None = None,
    masked: bool | None = None,
    layernorm: bool | None = None,
    n: int = 16,
    radius: float | None = None,
    input_kind: str = "random",
    steps: int = 40,
    seed: int = 0,
    exact: bool = False,
    text: str | None = None,
    tol: float = 1e-9,
) -> LipschitzResult:
    """Return local, lower and upper Lipschitz numbers of one attention map over K^n (see module doc).

    ``input_kind``: ``random`` (a seeded random point of K^n), ``text`` (the first n tokens of real
    text) or ``adversarial`` (the multi-seed ascent's best point). For random and text, ``lower`` is the
    best value of an ascent started at that input (``steps`` = 0: the input itself). Raises BadInput
    for a layer or head out of range, n over n_ctx or < 1, R <= 0, or a model without softmax attention.
    """
    t0 = time.perf_counter()
    check_model(model, layer, head)
    if input_kind not in INPUTS:
        raise BadInput(f"--input must be one of {', '.join(INPUTS)}, got {input_kind!r}")
    if not isinstance(n, int) or n < 1:
        raise BadInput(f"--n must be >= 1, got {n}")
    if n > model.cfg.n_ctx:
        raise BadInput(f"--n {n} exceeds the model's n_ctx={model.cfg.n_ctx}")
    if radius is not None and not (radius > 0 and math.isfinite(radius)):
        raise BadInput(f"--radius must be a finite number > 0, got {radius}")
    amap = attention_map(model, layer, head=head, causal=masked, layernorm=layernorm)
    R = default_radius(model, amap, layer) if radius is None else float(radius)
    tset = TokenSet("layernorm" if amap.layernorm else "ball", R, amap.d_model)
    gen = torch.Generator().manual_seed(seed)
    text_X = None
    if input_kind in ("text", "adversarial"):
        body, _ = source_text(text)
        try:
            toks = text_windows(model, n, 1, body)[0]
        except BadInput:
            if input_kind == "text":
                raise
            toks = None  # too little text for a seed: the adversarial search does without it
        if toks is not None:
            text_X = tset.project(attention_inputs(model, layer, toks, layernorm=amap.layernorm))
    mc = map_constants(amap, max_offset=min(n, 64))
    ub = upper_bounds(amap, tset, n, mc)
    if input_kind == "adversarial":
        lb = lower_bound(amap, tset, n, text=text_X, steps=steps, seed=seed)
        X, lower, X_best, lower_seed = lb.X, lb.value, lb.X, lb.seed
    else:
        X = text_X if input_kind == "text" else tset.random(n, gen)
        X_best, lower, lower_seed = X, 0.0, input_kind
        if steps > 0:
            _, lower, X_best, _ = ascend(amap, tset, X, steps, seed=seed)
            lower_seed = f"{input_kind}+ascent"
    est = local_lipschitz(amap, X, exact=exact, tol=tol, seed=seed)
    if est.value >= lower:  # X is in K^n, so its local constant is a lower bound too
        X_best, lower = X, est.value
    return LipschitzResult(
        n=n, local=est.value, lower=lower, upper=ub.upper, local_upper=local_upper_bound(amap, X, mc),
        bounds=ub.as_dict(), radius=R, set_kind=tset.kind, input_kind=input_kind,
        local_residual=est.residual, local_iterations=est.iterations, local_method=est.method,
        lower_seed=lower_seed, X=X, X_best=X_best, label=amap.label, seconds=time.perf_counter() - t0,
        extra={"masked": amap.causal, "head": head, "layer": layer},
    )  # fmt: skip
