"""The components of a pre-LN transformer's residual stream, their names, and their outputs.

The final residual stream of a pre-LN model is exactly the sum of what every component wrote:

    resid_final = embed + pos_embed + sum_{l,h} result[l, h] + sum_l b_O[l] + sum_l mlp_out[l]

(``result[l, h] = z[l, :, h] @ W_O[l, h]``, the per-head output; ``mlp_out`` includes the MLP's output
bias). This module names those components, orders them as they are written, and returns their outputs
from one forward pass. The constants that come after the residual stream (the final LayerNorm's bias
and the unembedding bias) are components too, so that attributions add up to the logits.

Names: ``embed``, ``pos_embed``, ``L{l}H{h}`` (a head), ``L{l}.b_O`` (a layer's attention output bias),
``L{l}.mlp`` (an MLP's output), ``ln_final.b``, ``unembed.b_U``. :func:`parse_component` also accepts
``l.h`` for a head (``0.2`` = ``L0H2``) and ``mlp{l}``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from assay.errors import BadInput
from assay.model import Transformer

# Kinds in the order they are written within a layer; "const" kinds come after the residual stream.
KINDS = ("embed", "pos_embed", "head", "b_O", "mlp", "ln_final.b", "unembed.b_U")
RESID_KINDS = ("embed", "pos_embed", "head", "b_O", "mlp")


@dataclass(frozen=True, order=True)
class Component:
    """One writer to the residual stream (or a constant after it).

    ``layer`` is -1 for the embeddings and ``n_layers`` for the constants after the last layer; ``head``
    is set for heads only.
    """

    layer: int
    rank: int  # position of the kind within a layer (order of writing); see KINDS
    head: int = -1

    @property
    def kind(self) -> str:
        return KINDS[self.rank]

    @property
    def name(self) -> str:
        k = self.kind
        if k == "head":
            return f"L{self.layer}H{self.head}"
        if k == "b_O":
            return f"L{self.layer}.b_O"
        if k == "mlp":
            return f"L{self.layer}.mlp"
        return k

    @property
    def in_residual(self) -> bool:
        """True for components whose output is a vector in the residual stream (not a logit constant)."""
        return self.kind in RESID_KINDS

    def __str__(self) -> str:
        return self.name


def head(layer: int, h: int) -> Component:
    """Return the component for head ``h`` of layer ``layer``."""
    return Component(layer, KINDS.index("head"), h)


def mlp(layer: int) -> Component:
    """Return the component for the MLP of layer ``layer``."""
    return Component(layer, KINDS.index("mlp"))


def check_decomposable(model: Transformer) -> None:
    """Raise BadInput unless the model's final residual stream is a sum of component outputs.

    That holds for pre-LN models (GPT-2 style, with or without parallel attention and MLP); in a
    post-LN model (BERT style) each LayerNorm rescales the running sum, so nothing adds up.
    """
    if model.cfg.ln_position != "pre":
        raise BadInput(
            "erasure analysis needs a pre-LN model (the residual stream is then a sum of component "
            "outputs); this model is post-LN"
        )


def components(model: Transformer, constants: bool = True) -> list[Component]:
    """Return the model's components in the order they write to the residual stream.

    With ``constants``, the logit constants (final LayerNorm bias where there is one, unembedding bias)
    come last.
    """
    check_decomposable(model)
    cfg = model.cfg
    out = [Component(-1, 0)]
    if cfg.positional_embedding_type == "standard":
        out.append(Component(-1, 1))
    for layer in range(cfg.n_layers):
        out += [head(layer, h) for h in range(cfg.n_heads)]
        out.append(Component(layer, KINDS.index("b_O")))
        if not cfg.attn_only:
            out.append(mlp(layer))
    if constants:
        if hasattr(model, "ln_final"):
            out.append(Component(cfg.n_layers, KINDS.index("ln_final.b")))
        out.append(Component(cfg.n_layers, KINDS.index("unembed.b_U")))
    return out


def heads(model: Transformer) -> list[Component]:
    """Return every head, layer by layer."""
    return [c for c in components(model, constants=False) if c.kind == "head"]


def writers(model: Transformer) -> list[Component]:
    """Return the components that can be writers in the erasure analysis: every head and every MLP."""
    return [c for c in components(model, constants=False) if c.kind in ("head", "mlp")]


def reads_after(reader: Component, writer: Component, parallel: bool = False) -> bool:
    """True if ``reader``'s input includes ``writer``'s output (it comes strictly later in the stream).

    Heads of one layer run in parallel, so none reads another; a layer's MLP reads its heads, unless the
    model computes attention and MLP in parallel (GPT-NeoX).
    """
    if reader.layer != writer.layer:
        return reader.layer > writer.layer
    if parallel:
        return False
    return reader.kind == "mlp" and writer.kind in ("head", "b_O")


_HEAD_DOT = re.compile(r"^(\d+)\.(\d+)$")
_HEAD_LH = re.compile(r"^[lL](\d+)[hH](\d+)$")
_MLP = re.compile(r"^(?:[lL](\d+)\.mlp|mlp(\d+))$")
_BO = re.compile(r"^[lL](\d+)\.b_O$")


def parse_component(model: Transformer, text: str) -> Component:
    """Return the component named ``text`` (``L0H2``, ``0.2``, ``L1.mlp``, ``mlp1``, ``embed``, ...).

    A name the model does not have is a BadInput that says which names exist.
    """
    cfg = model.cfg
    t = text.strip()
    comp: Component | None = None
    if m := (_HEAD_DOT.match(t) or _HEAD_LH.match(t)):
        comp = head(int(m.group(1)), int(m.group(2)))
    elif m := _MLP.match(t):
        comp = mlp(int(m.group(1) or m.group(2)))
    elif m := _BO.match(t):
        comp = Component(int(m.group(1)), KINDS.index("b_O"))
    elif t in ("embed", "pos_embed"):
        comp = Component(-1, KINDS.index(t))
    known = components(model)
    if comp is None or comp not in known:
        heads_range = f"L0H0..L{cfg.n_layers - 1}H{cfg.n_heads - 1} (or 0.0..{cfg.n_layers - 1}.{cfg.n_heads - 1})"
        mlps = "" if cfg.attn_only else f", L0.mlp..L{cfg.n_layers - 1}.mlp"
        raise BadInput(f"no component {text!r} in this model ({cfg.n_layers} layers, {cfg.n_heads} heads): "
                       f"heads are {heads_range}{mlps}, embed, pos_embed")
    return comp


@contextlib.contextmanager
def attn_result_enabled(model: Transformer) -> Iterator[None]:
    """Context manager: per-head outputs at ``hook_result`` inside, the model's own setting restored after."""
    before = [b.attn.use_attn_result for b in model.blocks]
    model.set_use_attn_result(True)
    try:
        yield
    finally:
        for b, v in zip(model.blocks, before, strict=True):
            b.attn.use_attn_result = v


def _wanted_hook(name: str) -> bool:
    return name in ("hook_embed", "hook_pos_embed") or name.endswith(
        ("attn.hook_result", "attn.hook_pattern", "hook_mlp_out", "hook_scale", "hook_resid_pre", "hook_resid_mid",
         "hook_resid_post", "attn.hook_z")
    )


def run_with_components(model: Transformer, tokens: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run the model once and return ``(logits, cache)`` with everything the analyses read.

    The cache holds per-head results, patterns, z, MLP outputs, the embeddings, every LayerNorm scale
    and the residual stream at every ``resid_pre / resid_mid / resid_post``. The model's hooks and its
    ``use_attn_result`` setting are as before afterwards.
    """
    with torch.no_grad(), attn_result_enabled(model):
        logits, cache = model.run_with_cache(tokens, names_filter=_wanted_hook)
    return logits, cache


def component_output(model: Transformer, cache: dict[str, torch.Tensor], comp: Component) -> torch.Tensor:
    """Return what ``comp`` wrote to the residual stream, [batch, pos, d_model], from a cache.

    The cache must come from :func:`run_with_components` (per-head results included).
    """
    k = comp.kind
    if k == "embed":
        return cache["hook_embed"]
    if k == "pos_embed":
        return cache["hook_pos_embed"]
    if k == "head":
        return cache[f"blocks.{comp.layer}.attn.hook_result"][:, :, comp.head]
    if k == "b_O":
        like = cache["hook_embed"]
        return model.blocks[comp.layer].attn.b_O.detach().to(like.dtype).expand_as(like)
    if k == "mlp":
        return cache[f"blocks.{comp.layer}.hook_mlp_out"]
    raise ValueError(f"{comp.name} is a logit constant, not a residual-stream output")


def stack_outputs(model: Transformer, cache: dict[str, torch.Tensor], comps: Sequence[Component]) -> torch.Tensor:
    """Return the outputs of ``comps`` (residual components only), stacked: [n_comp, batch, pos, d_model]."""
    return torch.stack([component_output(model, cache, c) for c in comps])


def final_resid(model: Transformer, cache: dict[str, torch.Tensor]) -> torch.Tensor:
    """Return the residual stream before the final LayerNorm, [batch, pos, d_model]."""
    return cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
