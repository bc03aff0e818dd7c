"""The input sets over which a Lipschitz constant is taken: n tokens, each in the same set K.

- ``ball``: K = {y in R^d : ||y|| <= R}, the paper's setting.
- ``layernorm``: K = {u in R^d : sum(u) = 0, ||u|| <= R}, with R = sqrt(d) by default. For R = sqrt(d)
  this is the closure of the image of LayerNorm's normalisation ``(x - mean) / sqrt(var + eps)`` (for
  eps > 0 every radius in [0, sqrt(d)) is attained). It is a subset of the ball of radius R, so every
  bound proved for the ball holds on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from assay.errors import BadInput

Tensor = torch.Tensor


@dataclass(frozen=True)
class TokenSet:
    """K^n: n tokens of dimension d, each in K (``kind`` "ball" or "layernorm", radius ``radius``)."""

    kind: str
    radius: float
    d: int

    def __post_init__(self) -> None:
        if self.kind not in ("ball", "layernorm"):
            raise ValueError(f"unknown set kind {self.kind!r}")
        if not (self.radius > 0 and math.isfinite(self.radius)):
            raise BadInput(f"--radius must be a finite number > 0, got {self.radius}")

    def project(self, Z: Tensor) -> Tensor:
        """Return the Euclidean projection of every row of ``Z [n, d]`` onto K."""
        if self.kind == "layernorm":
            Z = Z - Z.mean(dim=-1, keepdim=True)
        norms = Z.norm(dim=-1, keepdim=True)
        return Z * torch.clamp(self.radius / norms.clamp_min(1e-300), max=1.0)

    def contains(self, Z: Tensor, rtol: float = 1e-9) -> bool:
        """Return True when every row of ``Z`` is in K (up to a relative rounding tolerance)."""
        ok = bool((Z.norm(dim=-1) <= self.radius * (1 + rtol)).all())
        if self.kind == "layernorm":
            ok = ok and bool((Z.sum(dim=-1).abs() <= rtol * (1 + Z.abs().sum(dim=-1))).all())
        return ok

    def random(self, n: int, generator: torch.Generator) -> Tensor:
        """Return n tokens drawn uniformly on the boundary sphere of K (float64)."""
        Z = torch.randn(n, self.d, generator=generator, dtype=torch.float64)
        if self.kind == "layernorm":
            Z = Z - Z.mean(dim=-1, keepdim=True)
        return Z * (self.radius / Z.norm(dim=-1, keepdim=True))

    def describe(self) -> str:
        what = "centred ball (LayerNorm image)" if self.kind == "layernorm" else "ball"
        return f"{what} of radius {self.radius:.6g} in R^{self.d}"
