"""The map whose Lipschitz constant is studied: one attention head or a whole attention sublayer.

An :class:`AttentionMap` is a pure function of its n input tokens, ``Z [n, d] -> out [n, d]``, built
from one layer of a :class:`~assay.model.Transformer` and evaluated in float64:

- **sublayer** (``head=None``): ``out_i = sum_h W_O^h z^h_i + b_O`` with
  ``z^h_i = sum_j P^h_ij (y_j W_V^h + b_V^h)``, ``P^h = softmax_j(<q_i, k_j> / sqrt(d_head))`` and
  ``q = y W_Q + b_Q``, ``k = y W_K + b_K`` (rotated by RoPE where the model has it);
- **one head** (``head=h``): that head's contribution ``W_O^h z^h_i`` only (without ``b_O``). With zero
  biases and no RoPE this is exactly the paper's ``f(X)_i = sum_j softmax_j(<A x_i, x_j>) V x_j``, with
  ``A = W_Q W_K^T / sqrt(d_head)`` and ``V = W_V W_O`` (row-vector convention, as in the code).

**Mask.** ``causal=True`` sums over j <= i only, whatever the model was trained with: a bidirectional
model (MiniLM) can be studied masked and a causal one unmasked; the mask is really applied.

**LayerNorm in front** (``layernorm=True``). The input is then the *normalised* token ``u`` (what
LayerNorm computes before its affine part) and the map first centres ``u`` and applies the gain and
bias: ``y = (u - mean(u)) * gamma + beta``. The set of all such ``u`` is the closure of LayerNorm's
image: the centred ball of radius sqrt(d) (see docs/lipschitz.md). The Jacobian with respect to the
residual stream ``x`` is this map's Jacobian times LayerNorm's normalisation Jacobian, whose norm is at
most ``1 / sqrt(var(x) + eps)``.

Our Transformer has no dropout anywhere, so nothing can be left on; the weights are copied to float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from assay.errors import BadInput
from assay.model.transformer import apply_rotary, rotary_cos_sin

Tensor = torch.Tensor


@dataclass
class AttentionMap:
    """One layer's attention (all heads, or one head) as a float64 function of its input tokens.

    Weight shapes follow TransformerLens (H heads kept, d = d_model, e = d_head):
    ``W_Q, W_K, W_V [H, d, e]``, ``b_Q, b_K, b_V [H, e]``, ``W_O [H, e, d]``, ``b_O [d]``.
    """

    W_Q: Tensor
    W_K: Tensor
    W_V: Tensor
    W_O: Tensor
    b_Q: Tensor
    b_K: Tensor
    b_V: Tensor
    b_O: Tensor
    causal: bool
    rotary_dim: int | None = None
    rotary_base: float = 10000.0
    ln_gamma: Tensor | None = None
    ln_beta: Tensor | None = None
    head: int | None = None
    label: str = "attention"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O", "ln_gamma", "ln_beta"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.detach().to(torch.float64).clone())
        self._fold()

    def _fold(self) -> None:
        """Precompute the weights the forward pass uses: homogeneous ``[W; b]`` with LayerNorm folded in.

        With ``y = u C Gamma + beta`` (C = I - 11^T/d): ``[y, 1] W^ = [u, 1] M W^`` with
        ``M = [[C Gamma, 0], [beta, 1]]``; 1/sqrt(d_head) is folded into the query side. Fewer, larger
        operations make the forward-mode products (jvp) cheaper; the function is the same up to rounding.
        """
        d = self.d_model
        M = torch.eye(d + 1, dtype=torch.float64)
        if self.ln_gamma is not None:
            C = torch.eye(d, dtype=torch.float64) - 1.0 / d
            M[:d, :d] = C * self.ln_gamma[None, :]
            M[d, :d] = self.ln_beta
        hats = []
        for W, b in ((self.W_Q, self.b_Q), (self.W_K, self.b_K), (self.W_V, self.b_V)):
            hats.append(torch.einsum("ij,hje->hie", M, torch.cat([W, b[:, None, :]], dim=1)))
        self._WQh = hats[0] / math.sqrt(self.d_head)  # [H, d+1, e]
        self._WKh, self._WVh = hats[1], hats[2]
        self._WO = self.W_O.reshape(-1, d)  # [H e, d]
        self._rot: dict[int, Tensor] = {}

    def _rotations(self, n: int) -> Tensor:
        """Return RoPE as matrices [n, e, e] acting on rows (``q_p Rot_p``), the model's own cos/sin."""
        if n not in self._rot:
            e, rd = self.d_head, self.rotary_dim
            cos, sin = rotary_cos_sin(n, rd, self.rotary_base, torch.float64)
            basis = torch.eye(e, dtype=torch.float64)[None, None].expand(1, n, e, e)  # [b, p, "head" k, e]
            # the model's apply_rotary on basis row k at position p gives row k of Rot_p
            self._rot[n] = apply_rotary(basis, cos, sin)[0].contiguous()
        return self._rot[n]

    @property
    def d_model(self) -> int:
        return int(self.W_Q.shape[1])

    @property
    def n_heads(self) -> int:
        """Number of heads kept in this map (1 for a single head)."""
        return int(self.W_Q.shape[0])

    @property
    def d_head(self) -> int:
        return int(self.W_Q.shape[2])

    @property
    def layernorm(self) -> bool:
        """True when the input is LayerNorm's normalised token and the map applies gain and bias."""
        return self.ln_gamma is not None

    @property
    def rope(self) -> bool:
        return self.rotary_dim is not None

    def with_mask(self, causal: bool) -> AttentionMap:
        """Return the same map with the causal mask switched on or off."""
        return replace(self, causal=causal)

    def attention_input(self, Z: Tensor) -> Tensor:
        """Return what the attention actually reads: ``Z`` itself, or ``(Z - mean) * gamma + beta``."""
        if self.ln_gamma is None:
            return Z
        Zc = Z - Z.mean(dim=-1, keepdim=True)
        return Zc * self.ln_gamma + self.ln_beta

    def pattern(self, Z: Tensor) -> Tensor:
        """Return the attention weights P [H, n, n] (query rows, key columns) at input ``Z [n, d]``."""
        return self._forward(Z)[1]

    def __call__(self, Z: Tensor) -> Tensor:
        """Return the map's output [n, d] at input ``Z [n, d]`` (float64)."""
        return self._forward(Z)[0]

    def _forward(self, Z: Tensor) -> tuple[Tensor, Tensor]:
        if Z.dim() != 2 or Z.shape[1] != self.d_model:
            raise ValueError(f"expected input [n, {self.d_model}], got {tuple(Z.shape)}")
        n = Z.shape[0]
        Zh = torch.cat([Z, torch.ones(n, 1, dtype=Z.dtype, device=Z.device)], dim=1)  # [n, d+1]
        q = torch.matmul(Zh, self._WQh)  # [H, n, e], already scaled by 1/sqrt(e)
        k = torch.matmul(Zh, self._WKh)
        v = torch.matmul(Zh, self._WVh)
        if self.rotary_dim is not None:
            rot = self._rotations(n)
            q = torch.einsum("hpe,pef->hpf", q, rot)
            k = torch.einsum("hpe,pef->hpf", k, rot)
        scores = torch.matmul(q, k.transpose(1, 2))  # [H, n, n]
        if self.causal:
            scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool, device=Z.device).triu(1), float("-inf"))
        P = torch.softmax(scores, dim=-1)
        z = torch.matmul(P, v).transpose(0, 1).reshape(n, -1)  # [n, H e]
        out = torch.matmul(z, self._WO)
        if self.head is None:
            out = out + self.b_O
        return out, P

    def qk_matrices(self) -> Tensor:
        """Return the paper's A per head, ``W_Q W_K^T / sqrt(e)`` [H, d, d], in the input's coordinates.

        With LayerNorm in front the gain and the centring are folded in: ``C diag(gamma) W_Q ...`` with
        ``C = I - 11^T/d``. Biases and RoPE are left out (a seed for the search, not a bound).
        """
        WQ, WK = self._folded(self.W_Q), self._folded(self.W_K)
        return torch.einsum("hde,hfe->hdf", WQ, WK) / math.sqrt(self.d_head)

    def ov_matrices(self) -> Tensor:
        """Return the paper's V per head, ``W_V W_O`` [H, d, d] (row convention), LayerNorm folded in."""
        return torch.einsum("hde,hef->hdf", self._folded(self.W_V), self.W_O)

    def _folded(self, W: Tensor) -> Tensor:
        if self.ln_gamma is None:
            return W
        GW = self.ln_gamma[None, :, None] * W
        return GW - GW.mean(dim=1, keepdim=True)


# --------------------------------------------------------------------------------------------------
# Building a map from a model


def front_layernorm(model: Any, layer: int) -> torch.nn.Module | None:
    """Return the LayerNorm whose output is layer ``layer``'s attention input, or None if there is none.

    Pre-LN (GPT-2, ours): ``blocks[layer].ln1``. Post-LN (BERT/MiniLM): the previous block's last
    LayerNorm (``ln2``, or ``ln1`` in an attention-only model), or ``ln_embed`` for layer 0.
    """
    cfg = model.cfg
    if cfg.normalization_type != "LN":
        return None
    if cfg.ln_position == "pre":
        return model.blocks[layer].ln1
    if layer == 0:
        return model.ln_embed
    prev = model.blocks[layer - 1]
    return prev.ln1 if cfg.attn_only else prev.ln2


def check_model(model: Any, layer: int, head: int | None = None) -> None:
    """Raise BadInput unless ``model`` has softmax attention at ``layer`` (and head ``head``)."""
    cfg = getattr(model, "cfg", None)
    blocks = getattr(model, "blocks", None)
    if cfg is None or blocks is None or not any(hasattr(b, "attn") for b in blocks):
        raise BadInput("this model has no attention layer, so there is no attention Lipschitz constant to compute")
    if getattr(cfg, "attention", "softmax") != "softmax":
        raise BadInput(
            f"this model has no softmax attention (attention={cfg.attention!r}): its attention is piecewise "
            "constant, so its Jacobian is zero or undefined; use a softmax model"
        )
    if not isinstance(layer, int) or not 0 <= layer < cfg.n_layers:
        raise BadInput(f"--layer {layer} out of range 0..{cfg.n_layers - 1}")
    if head is not None and not 0 <= head < cfg.n_heads:
        raise BadInput(f"--head {head} out of range 0..{cfg.n_heads - 1}")


def attention_map(
    model: Any,
    layer: int,
    head: int | None = None,
    causal: bool | None = None,
    layernorm: bool | None = None,
) -> AttentionMap:
    """Return the :class:`AttentionMap` of ``model``'s layer ``layer`` (one head, or the whole sublayer).

    ``causal``: None keeps the model's own mask; True applies a causal mask; False removes it.
    ``layernorm``: None uses the LayerNorm in front when the model has one; True requires it.
    Raises BadInput for a layer or head out of range, a model without softmax attention, or
    ``layernorm=True`` on a model without LayerNorm.
    """
    check_model(model, layer, head)
    cfg = model.cfg
    attn = model.blocks[layer].attn
    ln = front_layernorm(model, layer)
    if layernorm and ln is None:
        raise BadInput("this model has no LayerNorm in front of its attention; drop --layernorm")
    use_ln = ln is not None if layernorm is None else bool(layernorm)
    heads = slice(None) if head is None else slice(head, head + 1)
    rope = cfg.positional_embedding_type == "rotary"
    mask = cfg.causal if causal is None else bool(causal)
    name = getattr(cfg, "model_name", "model")
    label = f"{name} L{layer}" + (f"H{head}" if head is not None else " (all heads)")
    return AttentionMap(
        W_Q=attn.W_Q[heads], W_K=attn.W_K[heads], W_V=attn.W_V[heads], W_O=attn.W_O[heads],
        b_Q=attn.b_Q[heads], b_K=attn.b_K[heads], b_V=attn.b_V[heads], b_O=attn.b_O,
        causal=mask, rotary_dim=cfg.rotary_dim if rope else None, rotary_base=float(cfg.rotary_base),
        ln_gamma=ln.w if use_ln else None, ln_beta=ln.b if use_ln else None, head=head,
        label=label + (", masked" if mask else ", unmasked") + (", LN in front" if use_ln else ""),
    )  # fmt: skip


class _Captured(Exception):
    """Raised by a hook to stop the forward pass once the wanted activation is captured."""


def attention_inputs(model: Any, layer: int, tokens: list[int] | Tensor, layernorm: bool) -> Tensor:
    """Return the real input [n, d] (float64) of layer ``layer``'s attention on ``tokens``.

    ``layernorm=False``: what the attention reads (the front LayerNorm's output, or the residual stream
    where there is none). ``layernorm=True``: the normalised token ``(x - mean) / sqrt(var + eps)`` of the
    front LayerNorm's input ``x``, i.e. the input of the map built with ``layernorm=True``.
    """
    check_model(model, layer)
    toks = model.check_tokens(torch.as_tensor(tokens))
    if toks.shape[0] != 1:
        raise BadInput("attention_inputs takes one token sequence")
    ln = front_layernorm(model, layer) if layernorm else None
    if layernorm and ln is None:
        raise BadInput("this model has no LayerNorm in front of its attention")
    target = ln if ln is not None else model.blocks[layer].attn
    got: dict[str, Tensor] = {}

    def grab(module: torch.nn.Module, inputs: tuple) -> None:
        got["x"] = inputs[0]
        raise _Captured

    handle = target.register_forward_pre_hook(grab)
    try:
        with torch.no_grad():
            model(toks)
    except _Captured:
        pass
    finally:
        handle.remove()
    x = got["x"][0].to(torch.float64)
    if ln is None:
        return x
    xc = x - x.mean(dim=-1, keepdim=True)
    return xc / (xc.pow(2).mean(dim=-1, keepdim=True) + ln.eps).sqrt()
