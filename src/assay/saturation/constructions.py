"""Saturated transformers written by hand, as real :class:`assay.model.Transformer` weights.

Every construction is causal, has no LayerNorm, uses ReLU MLPs (or none) and learned positions of
which only ``W_pos[0]`` is nonzero: a "first position" flag, so that a uniform head averaging it yields
``f_i = 1 / (i + 1)`` at position i. Every weight is a small dyadic rational stored exactly in float64,
so the exact interpreter computes the network's true rational function. The model decides, at every
position i, whether the prefix ``w[0..i]`` is in the language: accept iff ``logits[1] > logits[0]``.
Margins are built in (the accept score is ``+f_i/2`` on members and ``<= -f_i/2`` on non-members),
so float64 evaluation decides correctly as long as its rounding error stays below ``1/(2(i+1))``.

Notation: ``d_i = (#a - #b)/(i+1)`` is the signed count of the prefix (a = token 0 for Dyck-1 and
a^n b^n, token 1 for majority), produced by a head with all-zero query weights: every score is 0, all
keys tie, and saturated attention averages over the whole prefix. Under hard attention the same head
looks only at position 0, which is why the same weights fail with ``attention="hard"``.

- ``majority`` (1 layer, attention only): accept score ``d - f/2`` with d = (#1 - #0)/(i+1); positive
  iff #1 - #0 >= 1.
- ``threshold`` (1 layer, attention only): c = #1/(i+1); accept score ``c - (k - 1/2) f``, positive iff
  #1 >= k.
- ``dyck1`` (2 layers): layer 0 gives d (the balance over i+1) and f; layer 1 has one head whose query
  is the constant ``b_Q`` and whose key is ``-d_j``: it selects the positions of minimal ``d_j`` and
  returns ``m_i = min_{j<=i} d_j``. A prefix balance ``b_j < 0`` gives ``d_j <= -1/(j+1) <= -f_i``. The
  MLP adds ``bad = relu(d) + relu(-d) + relu(-m)``; accept score ``f/2 - bad``.
- ``anbn`` (2 layers): layer 0 also averages the "is b" flag (p = #b/(i+1)); its MLP writes
  ``viol_j = relu(p_j - isb_j)``, positive (>= f) exactly at an ``a`` after some ``b``; layer 1 selects
  the maximal ``viol_j`` and returns ``M_i``; the MLP adds ``relu(d) + relu(-d)``; accept score
  ``f/2 - relu(d) - relu(-d) - M``.
- ``counter`` (the non-size-preserving counter-example, for the bit profiler): the majority network
  plus a positional embedding ``pw_i = 2^-(i+1)`` (its output has i+1 bits for an input of log2(i)
  bits: not size-preserving), an MLP unit ``relu(pw + one - 1) = w_i 2^-(i+1)`` and a uniform head
  averaging it, whose output packs the whole prefix into one rational of about i bits. Its decisions
  are MAJORITY's; float64 ``W_pos`` holds 2^-(i+1) exactly only for i < 1022, so beyond that the
  exact interpreter takes the positions from ``pos_fn``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import torch

from assay.errors import BadInput
from assay.model import ModelConfig, Transformer
from assay.saturation.interpreter import Interpreter, Num
from assay.saturation.languages import CONSTRUCTIONS, RECOGNISERS, THRESHOLD_K, check_language

__all__ = ["CONSTRUCTIONS", "Construction", "build", "decode_counter"]
MAX_N_CTX = 1_000_000  # W_pos is [n_ctx, d_model] float64: 1e6 x 10 x 8 B = 80 MB


@dataclass
class Construction:
    """A hand-built saturated transformer for one language: the model, its residual-stream dimension
    names, and its decision rule (accept iff logits[1] > logits[0])."""

    language: str
    model: Transformer
    dims: list[str]
    pos_fn: Callable[[int], Sequence[Num]] | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def recognise(self, w: Sequence[int]) -> bool:
        """Return the reference answer for w (the counter-construction answers MAJORITY)."""
        return RECOGNISERS["majority" if self.language == "counter" else self.language](w)

    @staticmethod
    def decide(logits: Sequence[Any]) -> bool:
        """Return the model's decision: accept iff logits[1] > logits[0] (exact for rationals)."""
        return logits[1] > logits[0]

    def interpreter(self, precision: int | None = None, attention: str | None = None) -> Interpreter:
        """Return an interpreter of this construction (exact by default; ``attention`` may be "hard")."""
        return Interpreter(self.model, precision=precision, attention=attention, pos_fn=self.pos_fn)

    def with_attention(self, mode: str) -> Transformer:
        """Return a copy of the model whose config uses attention ``mode`` (same weights)."""
        cfg = ModelConfig.from_dict({**self.model.cfg.to_dict(), "attention": mode})
        m = Transformer(cfg).double()
        m.load_state_dict(self.model.state_dict())
        return m.eval()


class _Builder:
    """Sets a zeroed Transformer's weights by residual-stream dimension name."""

    def __init__(self, dims: list[str], n_layers: int, d_head: int, d_mlp: int | None, n_ctx: int) -> None:
        if not 1 <= n_ctx <= MAX_N_CTX:
            raise BadInput(f"n must be in 1..{MAX_N_CTX} (W_pos holds one row per position), got {n_ctx}")
        self.dims = dims
        self.ix = {name: i for i, name in enumerate(dims)}
        cfg = ModelConfig(
            n_layers=n_layers, d_model=len(dims), n_heads=1, d_head=d_head, d_vocab=2, n_ctx=n_ctx,
            d_mlp=d_mlp, act_fn="relu", normalization_type=None, positional_embedding_type="standard",
            attn_only=d_mlp is None, causal=True, attention="saturated", model_name="saturation-construction",
        )
        self.model = Transformer(cfg).double()
        with torch.no_grad():
            for p in self.model.parameters():
                p.zero_()
        self.sd = dict(self.model.named_parameters())

    def set(self, name: str, index: tuple, value: float) -> None:
        with torch.no_grad():
            self.sd[name][index] = value

    def embed(self, token: int, dim: str, value: float) -> None:
        self.set("embed.W_E", (token, self.ix[dim]), value)

    def first_position(self, dim: str) -> None:
        self.set("pos_embed.W_pos", (0, self.ix[dim]), 1.0)

    def uniform_head(self, layer: int, moves: list[tuple[str, str, float]]) -> None:
        """Head 0 of ``layer`` with zero query (all scores tie): writes mean(w * src) into dst."""
        for e, (src, dst, w) in enumerate(moves):
            self.set(f"blocks.{layer}.attn.W_V", (0, self.ix[src], e), w)
            self.set(f"blocks.{layer}.attn.W_O", (0, e, self.ix[dst]), 1.0)

    def select_head(self, layer: int, key: str, key_weight: float, moves: list[tuple[str, str, float]]) -> None:
        """Head 0 of ``layer`` with constant query b_Q = 1 and key ``key_weight * key``: attends to the
        positions maximising it and writes their mean of ``w * src`` into dst."""
        self.set(f"blocks.{layer}.attn.b_Q", (0, 0), 1.0)
        self.set(f"blocks.{layer}.attn.W_K", (0, self.ix[key], 0), key_weight)
        self.uniform_head(layer, moves)

    def relu_unit(self, layer: int, unit: int, inputs: dict[str, float], bias: float, out: dict[str, float]) -> None:
        """MLP unit ``relu(sum inputs + bias)`` added with weights ``out`` into the residual stream."""
        for name, w in inputs.items():
            self.set(f"blocks.{layer}.mlp.W_in", (self.ix[name], unit), w)
        self.set(f"blocks.{layer}.mlp.b_in", (unit,), bias)
        for name, w in out.items():
            self.set(f"blocks.{layer}.mlp.W_out", (unit, self.ix[name]), w)

    def accept_score(self, terms: dict[str, float]) -> None:
        """logits[1] = sum terms[dim] * x[dim]; logits[0] = 0."""
        for name, w in terms.items():
            self.set("unembed.W_U", (self.ix[name], 1), w)

    def done(self, language: str, **kw: Any) -> Construction:
        self.model.eval()
        return Construction(language, self.model, self.dims, **kw)


def majority(n_ctx: int) -> Construction:
    """Return the MAJORITY construction (1 layer, 1 head, attention only)."""
    b = _Builder(["sym", "first", "d", "f"], n_layers=1, d_head=2, d_mlp=None, n_ctx=n_ctx)
    b.embed(0, "sym", -1.0)
    b.embed(1, "sym", 1.0)
    b.first_position("first")
    b.uniform_head(0, [("sym", "d", 1.0), ("first", "f", 1.0)])
    b.accept_score({"d": 1.0, "f": -0.5})
    return b.done("majority")


def threshold(n_ctx: int, k: int = THRESHOLD_K) -> Construction:
    """Return the construction for 'at least k ones' (1 layer, 1 head, attention only)."""
    b = _Builder(["one", "first", "c", "f"], n_layers=1, d_head=2, d_mlp=None, n_ctx=n_ctx)
    b.embed(1, "one", 1.0)
    b.first_position("first")
    b.uniform_head(0, [("one", "c", 1.0), ("first", "f", 1.0)])
    b.accept_score({"c": 1.0, "f": -(k - 0.5)})
    return b.done("threshold", notes={"k": k})


def dyck1(n_ctx: int) -> Construction:
    """Return the Dyck-1 construction (2 layers, 1 head each, ReLU MLP in layer 1)."""
    b = _Builder(["sym", "first", "d", "f", "m", "bad"], n_layers=2, d_head=2, d_mlp=3, n_ctx=n_ctx)
    b.embed(0, "sym", 1.0)   # "("
    b.embed(1, "sym", -1.0)  # ")"
    b.first_position("first")
    b.uniform_head(0, [("sym", "d", 1.0), ("first", "f", 1.0)])
    b.select_head(1, key="d", key_weight=-1.0, moves=[("d", "m", 1.0)])
    b.relu_unit(1, 0, {"d": 1.0}, 0.0, {"bad": 1.0})
    b.relu_unit(1, 1, {"d": -1.0}, 0.0, {"bad": 1.0})
    b.relu_unit(1, 2, {"m": -1.0}, 0.0, {"bad": 1.0})
    b.accept_score({"f": 0.5, "bad": -1.0})
    return b.done("dyck1")


def anbn(n_ctx: int) -> Construction:
    """Return the a^n b^n construction (2 layers, 1 head each, ReLU MLPs)."""
    b = _Builder(["isb", "sym", "first", "d", "f", "p", "viol", "M", "bad"], n_layers=2, d_head=4, d_mlp=2,
                 n_ctx=n_ctx)
    b.embed(0, "sym", 1.0)  # a
    b.embed(1, "sym", -1.0)  # b
    b.embed(1, "isb", 1.0)
    b.first_position("first")
    b.uniform_head(0, [("sym", "d", 1.0), ("first", "f", 1.0), ("isb", "p", 1.0)])
    b.relu_unit(0, 0, {"p": 1.0, "isb": -1.0}, 0.0, {"viol": 1.0})
    b.select_head(1, key="viol", key_weight=1.0, moves=[("viol", "M", 1.0)])
    b.relu_unit(1, 0, {"d": 1.0}, 0.0, {"bad": 1.0})
    b.relu_unit(1, 1, {"d": -1.0}, 0.0, {"bad": 1.0})
    b.accept_score({"f": 0.5, "bad": -1.0, "M": -1.0})
    return b.done("anbn")


COUNTER_EXACT_POSITIONS = 1021  # 2^-(i+1) is a normal float64 for i + 1 <= 1022


def counter(n_ctx: int) -> Construction:
    """Return the non-size-preserving counter-construction (MAJORITY plus a packed copy of the prefix)."""
    dims = ["sym", "one", "first", "pw", "d", "f", "packed", "S"]
    b = _Builder(dims, n_layers=2, d_head=2, d_mlp=1, n_ctx=n_ctx)
    b.embed(0, "sym", -1.0)
    b.embed(1, "sym", 1.0)
    b.embed(1, "one", 1.0)
    b.first_position("first")
    with torch.no_grad():
        rows = min(n_ctx, COUNTER_EXACT_POSITIONS)
        b.sd["pos_embed.W_pos"][:rows, b.ix["pw"]] = torch.tensor([2.0 ** -(i + 1) for i in range(rows)],
                                                                   dtype=torch.float64)
    b.uniform_head(0, [("sym", "d", 1.0), ("first", "f", 1.0)])
    b.relu_unit(0, 0, {"pw": 1.0, "one": 1.0}, -1.0, {"packed": 1.0})
    b.uniform_head(1, [("packed", "S", 1.0)])
    b.accept_score({"d": 1.0, "f": -0.5})
    ix_first, ix_pw, width = b.ix["first"], b.ix["pw"], len(dims)

    def pos_fn(i: int) -> list[Num]:
        v: list[Num] = [0] * width
        v[ix_pw] = Fraction(1, 1 << (i + 1))
        if i == 0:
            v[ix_first] = 1
        return v

    return b.done("counter", pos_fn=pos_fn, notes={"float64_exact_positions": COUNTER_EXACT_POSITIONS})


_BUILDERS: dict[str, Callable[[int], Construction]] = {
    "majority": majority, "threshold": threshold, "dyck1": dyck1, "anbn": anbn, "counter": counter,
}


def build(language: str, n_ctx: int) -> Construction:
    """Return the construction for ``language`` sized for strings up to ``n_ctx`` (BadInput if unknown)."""
    if language != "counter":
        check_language(language)
    return _BUILDERS[language](n_ctx)


def decode_counter(S: Fraction, f: Fraction, length: int) -> list[int]:
    """Return the prefix packed by the counter-construction: the binary digits of S / f."""
    x = S / f  # = sum_j w_j 2^-(j+1)
    out = []
    for _ in range(length):
        x *= 2
        bit = 1 if x >= 1 else 0
        out.append(bit)
        x -= bit
    return out
