"""The Transformer every assay analysis reads.

One file, GPT-2-shaped, with TransformerLens's weight shapes and hook names so that the maths in
papers and the code read the same:

    W_E [d_vocab, d_model]    W_pos [n_ctx, d_model]
    W_Q, W_K, W_V [n_heads, d_model, d_head]    b_Q, b_K, b_V [n_heads, d_head]
    W_O [n_heads, d_head, d_model]              b_O [d_model]
    W_in [d_model, d_mlp]  b_in [d_mlp]   W_out [d_mlp, d_model]  b_out [d_model]
    W_U [d_model, d_vocab] b_U [d_vocab]        LayerNorm w, b [d_model]

Activations use the letters b (batch), p / q / k (positions), h (head), e (d_head), d (d_model).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from assay.errors import BadInput
from assay.model.config import ModelConfig
from assay.model.hooks import HookedRootModule, HookPoint


class LayerNorm(nn.Module):
    """LayerNorm with TransformerLens's hooks: ``hook_scale`` [b, p, 1] and ``hook_normalized``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.eps = cfg.eps
        self.w = nn.Parameter(torch.ones(cfg.d_model))
        self.b = nn.Parameter(torch.zeros(cfg.d_model))
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized(x / scale * self.w + self.b)


def rotary_cos_sin(n: int, rotary_dim: int, base: float, dtype: torch.dtype, device=None):
    """Return (cos, sin), each [n, rotary_dim], for RoPE in GPT-NeoX's half-split layout.

    Angles are computed in float64 and cast, so a float64 model gets float64-accurate rotations.
    """
    inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64, device=device) / rotary_dim))
    angles = torch.arange(n, dtype=torch.float64, device=device)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``cos.shape[-1]`` dims of x [b, p, h, e] by position; the rest pass through."""
    rd = cos.shape[-1]
    x_rot, x_pass = x[..., :rd], x[..., rd:]
    x1, x2 = x_rot[..., : rd // 2], x_rot[..., rd // 2 :]
    rotated = torch.cat([-x2, x1], dim=-1)
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    return torch.cat([x_rot * cos + rotated * sin, x_pass], dim=-1)


def _hooked(point: nn.Module) -> bool:
    """Whether any forward hook (or pre-hook) is registered on ``point``."""
    return bool(point._forward_hooks or point._forward_pre_hooks)


def attention_pattern(scores: torch.Tensor, mode: str) -> torch.Tensor:
    """Turn masked scores [..., k] (masked entries = -inf) into attention weights over k.

    ``softmax``: softmax. ``saturated``: 1/|M| on the set M of positions whose score equals the row's
    maximum exactly. ``hard``: 1 on the leftmost maximum.
    """
    if mode == "softmax":
        return scores.softmax(dim=-1)
    if mode == "saturated":
        ties = (scores == scores.amax(dim=-1, keepdim=True)).to(scores.dtype)
        return ties / ties.sum(dim=-1, keepdim=True)
    if mode == "hard":
        # torch.argmax returns the first maximal index: the leftmost tie-break.
        return F.one_hot(scores.argmax(dim=-1), scores.shape[-1]).to(scores.dtype)
    raise ValueError(f"unknown attention mode {mode!r}")


class Attention(nn.Module):
    """Multi-head attention, all heads in one set of per-head weight tensors."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h, d, e = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q = nn.Parameter(torch.empty(h, d, e))
        self.W_K = nn.Parameter(torch.empty(h, d, e))
        self.W_V = nn.Parameter(torch.empty(h, d, e))
        self.W_O = nn.Parameter(torch.empty(h, e, d))
        self.b_Q = nn.Parameter(torch.zeros(h, e))
        self.b_K = nn.Parameter(torch.zeros(h, e))
        self.b_V = nn.Parameter(torch.zeros(h, e))
        self.b_O = nn.Parameter(torch.zeros(d))
        self.use_attn_result = False
        for name in ("q", "k", "v", "rot_q", "rot_k", "attn_scores", "pattern", "z", "result"):
            setattr(self, f"hook_{name}", HookPoint())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        q = self.hook_q(torch.einsum("bpd,hde->bphe", x, self.W_Q) + self.b_Q)
        k = self.hook_k(torch.einsum("bpd,hde->bphe", x, self.W_K) + self.b_K)
        v = self.hook_v(torch.einsum("bpd,hde->bphe", x, self.W_V) + self.b_V)
        n = x.shape[1]
        if cfg.positional_embedding_type == "rotary":
            cos, sin = rotary_cos_sin(n, cfg.rotary_dim, cfg.rotary_base, x.dtype, x.device)
            q = self.hook_rot_q(apply_rotary(q, cos, sin))
            k = self.hook_rot_k(apply_rotary(k, cos, sin))
        if (cfg.attention == "softmax" and not torch.is_grad_enabled()
                and not (_hooked(self.hook_attn_scores) or _hooked(self.hook_pattern))):
            # Inference, and nobody reads or edits the scores or the pattern: PyTorch's fused attention
            # computes the same function without materialising the [b, h, q, k] tensors (equal up to
            # rounding; tested). With gradients on (training, torch.func analyses) the explicit path is
            # kept, so training stays bit-identical to the runs that made the shipped models.
            z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               is_causal=cfg.causal).transpose(1, 2)
            return self._output(self.hook_z(z))
        # The scores [b, h, q, k] are the largest tensors of a long-sequence pass: a batched matmul on
        # [b, h, q, e] x [b, h, e, k] gives them contiguous, and the scale and the mask are applied in
        # place on that fresh product (same values as einsum, `/`, masked_fill; fewer full-size copies).
        scores = torch.matmul(q.transpose(1, 2), k.permute(0, 2, 3, 1))
        scores.div_(math.sqrt(cfg.d_head))
        if cfg.causal:
            future = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)
            scores.masked_fill_(future, float("-inf"))
        scores = self.hook_attn_scores(scores)
        pattern = self.hook_pattern(attention_pattern(scores, cfg.attention))
        z = self.hook_z(torch.matmul(pattern, v.transpose(1, 2)).transpose(1, 2))  # [b, q, h, e]
        return self._output(z)

    def _output(self, z: torch.Tensor) -> torch.Tensor:
        """The sublayer's output [b, q, d] from the per-head mixed values z [b, q, h, e]."""
        if self.use_attn_result:
            result = self.hook_result(torch.einsum("bqhe,hed->bqhd", z, self.W_O))  # [b, q, h, d]
            return result.sum(dim=2) + self.b_O
        return torch.einsum("bqhe,hed->bqd", z, self.W_O) + self.b_O


def gelu_new(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's tanh approximation of GELU."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "gelu_new": gelu_new}


class MLP(nn.Module):
    """Two-layer MLP: ``act(x W_in + b_in) W_out + b_out``, hooks ``hook_pre`` and ``hook_post``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        self.act = _ACTIVATIONS[cfg.act_fn]
        self.hook_pre = HookPoint()
        self.hook_post = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Biases are added in place to the fresh matmul output: same values, one full-size copy fewer.
        pre = self.hook_pre((x @ self.W_in).add_(self.b_in))
        return (self.hook_post(self.act(pre)) @ self.W_out).add_(self.b_out)


class Block(nn.Module):
    """One layer: attention then MLP, with pre-LN, post-LN or GPT-NeoX's parallel wiring."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ln = cfg.normalization_type == "LN"
        self.ln1 = LayerNorm(cfg) if ln else nn.Identity()
        self.attn = Attention(cfg)
        if not cfg.attn_only:
            self.ln2 = LayerNorm(cfg) if ln else nn.Identity()
            self.mlp = MLP(cfg)
        for name in ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post", "normalized_resid_post"):
            setattr(self, f"hook_{name}", HookPoint())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        resid_pre = self.hook_resid_pre(x)
        if cfg.ln_position == "post":
            attn_out = self.hook_attn_out(self.attn(resid_pre))
            mid = self.ln1(self.hook_resid_mid(resid_pre + attn_out))
            if cfg.attn_only:
                return self.hook_normalized_resid_post(mid)
            mlp_out = self.hook_mlp_out(self.mlp(mid))
            return self.hook_normalized_resid_post(self.ln2(self.hook_resid_post(mid + mlp_out)))
        attn_out = self.hook_attn_out(self.attn(self.ln1(resid_pre)))
        if cfg.attn_only:
            return self.hook_resid_post(resid_pre + attn_out)
        if cfg.parallel_attn_mlp:
            mlp_out = self.hook_mlp_out(self.mlp(self.ln2(resid_pre)))
            return self.hook_resid_post(resid_pre + attn_out + mlp_out)
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(resid_mid)))
        return self.hook_resid_post(resid_mid + mlp_out)


class Embed(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.W_E[tokens]


class PosEmbed(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.W_pos[: tokens.shape[1]].unsqueeze(0).expand(tokens.shape[0], -1, -1)


class Unembed(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab))
        self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.W_U).add_(self.b_U)  # in place: the logits [b, p, d_vocab] can be the largest tensor


class Transformer(HookedRootModule):
    """A decoder (or, with ``causal=False``, encoder) transformer: tokens [batch, pos] -> logits.

    ``model(tokens)`` returns logits [batch, pos, d_vocab]; ``return_type="resid"`` returns the final
    residual stream (after the final LayerNorm where there is one) and ``"loss"`` the mean next-token
    cross-entropy. A 1-D token tensor is treated as one sequence. Tokens out of range or longer than
    ``n_ctx`` raise BadInput (a ValueError).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = Embed(cfg)
        self.hook_embed = HookPoint()
        if cfg.positional_embedding_type == "standard":
            self.pos_embed = PosEmbed(cfg)
            self.hook_pos_embed = HookPoint()
        if cfg.ln_position == "post":
            self.ln_embed = LayerNorm(cfg)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        if cfg.normalization_type == "LN" and cfg.ln_position == "pre":
            self.ln_final = LayerNorm(cfg)
        self.unembed = Unembed(cfg)
        self.init_weights()
        self.setup()

    def init_weights(self, seed: int | None = None) -> None:
        """Normal(0, init_range) for every matrix, zero biases, LayerNorm w = 1, b = 0."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        with torch.no_grad():
            for name, p in self.named_parameters():
                leaf = name.rsplit(".", 1)[-1]
                if leaf.startswith("W_"):
                    p.copy_(torch.randn(p.shape, generator=gen) * self.cfg.init_range)
                elif leaf == "w":
                    p.fill_(1.0)
                else:
                    p.zero_()

    def set_use_attn_result(self, value: bool) -> None:
        """Make every attention layer compute per-head outputs at ``blocks.{l}.attn.hook_result``."""
        for block in self.blocks:
            block.attn.use_attn_result = value

    def check_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Return tokens as a LongTensor [batch, pos]; raise BadInput naming what is wrong."""
        if not isinstance(tokens, torch.Tensor):
            tokens = torch.as_tensor(tokens)
        if tokens.dim() == 1:
            tokens = tokens.unsqueeze(0)
        if tokens.dim() != 2:
            raise BadInput(f"tokens must be [batch, pos], got shape {tuple(tokens.shape)}")
        if tokens.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise BadInput(f"tokens must be integers, got {tokens.dtype}")
        if tokens.shape[1] == 0:
            raise BadInput("empty token sequence")
        if tokens.shape[1] > self.cfg.n_ctx:
            raise BadInput(f"sequence length {tokens.shape[1]} exceeds n_ctx={self.cfg.n_ctx}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.cfg.d_vocab):
            bad = int(tokens.min()) if int(tokens.min()) < 0 else int(tokens.max())
            raise BadInput(f"token id {bad} out of range 0..{self.cfg.d_vocab - 1}")
        return tokens.long()

    def forward(self, tokens: torch.Tensor, return_type: str = "logits") -> torch.Tensor:
        tokens = self.check_tokens(tokens)
        x = self.hook_embed(self.embed(tokens))  # [b, p, d]
        if self.cfg.positional_embedding_type == "standard":
            x = x + self.hook_pos_embed(self.pos_embed(tokens))
        if self.cfg.ln_position == "post":
            x = self.ln_embed(x)
        for block in self.blocks:
            x = block(x)
        if hasattr(self, "ln_final"):
            x = self.ln_final(x)
        if return_type == "resid":
            return x
        logits = self.unembed(x)  # [b, p, d_vocab]
        if return_type == "logits":
            return logits
        if return_type == "loss":
            return F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
        raise ValueError(f"unknown return_type {return_type!r}")

    @property
    def W_E(self) -> torch.Tensor:
        return self.embed.W_E

    @property
    def W_U(self) -> torch.Tensor:
        return self.unembed.W_U

    @property
    def W_pos(self) -> torch.Tensor:
        return self.pos_embed.W_pos

    def _stack(self, name: str) -> torch.Tensor:
        return torch.stack([getattr(b.attn, name) for b in self.blocks])

    @property
    def W_Q(self) -> torch.Tensor:
        """[n_layers, n_heads, d_model, d_head]"""
        return self._stack("W_Q")

    @property
    def W_K(self) -> torch.Tensor:
        return self._stack("W_K")

    @property
    def W_V(self) -> torch.Tensor:
        return self._stack("W_V")

    @property
    def W_O(self) -> torch.Tensor:
        """[n_layers, n_heads, d_head, d_model]"""
        return self._stack("W_O")
