"""ModelConfig: the one description of every model assay reads, saved as JSON."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from assay.errors import BadInput

_CHOICES = {
    "act_fn": ("relu", "gelu", "gelu_new"),
    "normalization_type": ("LN", None),
    "positional_embedding_type": ("standard", "rotary", "none"),
    "attention": ("softmax", "saturated", "hard"),
    "ln_position": ("pre", "post"),
}


@dataclass
class ModelConfig:
    """Shape and options of a :class:`~assay.model.Transformer`.

    Field names follow TransformerLens's ``HookedTransformerConfig`` where one exists.

    - ``act_fn``: ``"relu"``, ``"gelu"`` (exact, erf) or ``"gelu_new"`` (tanh approximation, GPT-2).
    - ``normalization_type``: ``"LN"`` or ``None`` (no LayerNorm anywhere).
    - ``positional_embedding_type``: ``"standard"`` (learned ``W_pos``), ``"rotary"`` (RoPE on the first
      ``rotary_dim`` dimensions of q and k, GPT-NeoX layout) or ``"none"``.
    - ``attention``: ``"softmax"``; ``"saturated"`` (weight 1/|M| on the set M of tied maximal scores,
      the c -> infinity limit of softmax(c * scores)); ``"hard"`` (all weight on the leftmost maximum).
    - ``ln_position``: ``"pre"`` (GPT-2: x + f(LN(x)), final LN) or ``"post"`` (BERT: LN(x + f(x)),
      LN on the embeddings, no final LN).
    - ``parallel_attn_mlp``: GPT-NeoX's x + attn(LN1(x)) + mlp(LN2(x)).
    """

    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_vocab: int
    n_ctx: int
    d_mlp: int | None = None
    act_fn: str = "relu"
    normalization_type: str | None = "LN"
    positional_embedding_type: str = "standard"
    attn_only: bool = False
    causal: bool = True
    attention: str = "softmax"
    rotary_base: float = 10000.0
    rotary_dim: int | None = None
    ln_position: str = "pre"
    parallel_attn_mlp: bool = False
    eps: float = 1e-5
    init_range: float = 0.02
    model_name: str = "custom"

    def __post_init__(self) -> None:
        problems = []
        for field, allowed in _CHOICES.items():
            if getattr(self, field) not in allowed:
                problems.append(f"{field}={getattr(self, field)!r} (allowed: {', '.join(map(repr, allowed))})")
        for field in ("n_layers", "d_model", "n_heads", "d_head", "d_vocab", "n_ctx"):
            v = getattr(self, field)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                problems.append(f"{field} must be a positive integer, got {v!r}")
        for field in ("attn_only", "causal", "parallel_attn_mlp"):
            if not isinstance(getattr(self, field), bool):  # JSON "false" is a truthy string
                problems.append(f"{field} must be true or false, got {getattr(self, field)!r}")
        for field, low in (("eps", 0.0), ("init_range", 0.0), ("rotary_base", 1e-300)):
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= low:
                problems.append(f"{field} must be a number >= {low:g}, got {v!r}")
        if not self.attn_only and (not isinstance(self.d_mlp, int) or self.d_mlp <= 0):
            problems.append(f"d_mlp must be a positive integer unless attn_only, got {self.d_mlp!r}")
        if self.rotary_dim is None:
            self.rotary_dim = self.d_head
        if not (0 < self.rotary_dim <= self.d_head) or self.rotary_dim % 2:
            problems.append(f"rotary_dim must be even and in 1..d_head, got {self.rotary_dim}")
        if self.ln_position == "post" and self.normalization_type is None:
            problems.append("ln_position='post' needs normalization_type='LN'")
        if self.parallel_attn_mlp and (self.attn_only or self.ln_position == "post"):
            problems.append("parallel_attn_mlp needs an MLP and ln_position='pre'")
        if problems:
            raise BadInput("invalid ModelConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """Return the config as a plain dict (JSON-able)."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """Return the config as indented JSON text."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Build a config from a dict; unknown keys are an error (a mismatched file, not a typo to skip)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise BadInput(f"unknown config field(s): {', '.join(unknown)}")
        return cls(**d)
