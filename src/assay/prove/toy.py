"""Tiny random models for the prover's soundness tests and benchmarks (small enough to enumerate)."""

from __future__ import annotations

import torch

from assay.model import ModelConfig, Transformer


def toy_model(
    seed: int,
    *,
    n_layers: int = 1,
    positional: str = "rotary",
    act_fn: str = "relu",
    attn_only: bool = False,
    layernorm: bool = True,
    parallel: bool = False,
    d_vocab: int = 6,
    d_model: int = 16,
    n_heads: int = 2,
    d_head: int = 8,
    d_mlp: int = 32,
    n_ctx: int = 40,
    init: float = 0.3,
    qk: float = 1.0,
    embed: float = 2.0,
    unembed: float = 1.0,
    bias: float = 0.1,
) -> Transformer:
    """A float64 Transformer with Normal(0, init) matrices and Normal(0, bias) biases (LN gains 1 + that).

    ``qk`` scales W_Q and W_K (sharper attention), ``embed`` scales W_E (a residual stream that
    dominates attention outputs, as in trained models), ``unembed`` scales W_U (bigger logit gaps).
    """
    cfg = ModelConfig(
        n_layers=n_layers,
        d_model=d_model,
        n_heads=n_heads,
        d_head=d_head,
        d_vocab=d_vocab,
        n_ctx=n_ctx,
        d_mlp=None if attn_only else d_mlp,
        act_fn=act_fn,
        normalization_type="LN" if layernorm else None,
        positional_embedding_type=positional,
        attn_only=attn_only,
        parallel_attn_mlp=parallel,
        init_range=init,
    )
    model = Transformer(cfg).double()
    model.init_weights(seed=seed)
    return perturb_and_scale(model, torch.Generator().manual_seed(10_000 + seed), qk=qk, embed=embed,
                             unembed=unembed, bias=bias)


def perturb_and_scale(
    model: Transformer,
    gen: torch.Generator,
    *,
    qk: float = 1.0,
    vo: float = 1.0,
    embed: float = 1.0,
    unembed: float = 1.0,
    bias: float = 0.0,
) -> Transformer:
    """Return ``model`` in eval mode after adding Normal(0, bias) noise (from ``gen``) to every
    non-matrix parameter (biases, LayerNorm gains) and scaling W_Q, W_K by ``qk``, W_V, W_O by ``vo``,
    W_E by ``embed`` and W_U by ``unembed``, in place."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.rsplit(".", 1)[-1].startswith("W_"):
                p.add_(bias * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        for blk in model.blocks:
            blk.attn.W_Q.mul_(qk)
            blk.attn.W_K.mul_(qk)
            blk.attn.W_V.mul_(vo)
            blk.attn.W_O.mul_(vo)
        model.embed.W_E.mul_(embed)
        model.unembed.W_U.mul_(unembed)
    return model.eval()
