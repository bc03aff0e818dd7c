"""A model with a planted writer and a planted eraser, weights set by hand: the ground truth of the tests.

Two layers, two heads each, GELU MLPs, pre-LN, learned positions, 8 tokens, 8 positions, d_model 40.
The residual stream is laid out by hand, one job per block of dimensions:

    0-7   token one-hot                 8-15  position one-hot (x3)     16  anchor (10, every token)
    17    the writer's direction        18-21 L0H1's output            22-25 L1H1's output
    26-29 MLP0's output                 30-33 MLP1's output            34-39 never written (39: reference)

- **L0H0, the writer**: attends to its own position (queries and keys read the position one-hot,
  scaled so that the diagonal wins by ~30 nats) and writes f(token) along dim 17, f a fixed vector of
  mean 0 over the vocabulary.
- **L1H0, the eraser**: attends to its own position and, through its values, reads (dim 17 - dim 39)
  after ln1, i.e. exactly W / s (centring cancels in the difference), and writes -gain * that along
  dim 17. ``gain`` is the median ln1 scale of layer 1, so PR(L1H0, L0H0) = -gain / s ~ -1: the large
  constant anchor keeps s nearly the same at every position, and the small remainder is the planted
  imperfection.
- L0H1 (uniform attention, token content), L1H1 (uniform attention, positions) and both MLPs write
  only their own dimensions, so their PR onto the writer is exactly 0.
- The unembedding reads dim 17 with weight +KAPPA for even tokens and -KAPPA for odd ones: the writer's
  direct logit attribution on "token 0 vs token 1" is large, and the eraser's cancels it, so the
  writer's total effect is ~0.

Ground truth: PR(L1H0, L0H0) ~ -1, PR ~ 0 for every other pair; writer DLA large, total effect ~0;
removing L0H0 from L1H0's values restores the residual stream's projection onto L0H0 to ~1.
"""

from __future__ import annotations

import torch

from assay.model import ModelConfig, Transformer

D = 40
N_TOK = 8
N_POS = 8
TOK, POS, ANCHOR, WDIR = 0, 8, 16, 17
L0H1_OUT, L1H1_OUT, MLP0_OUT, MLP1_OUT = 18, 22, 26, 30
REF = 39
POS_SCALE = 3.0
ANCHOR_VALUE = 10.0
BETA = 5.0  # query/key gain of the self-attending heads
WRITER_GAIN = 2.0
KAPPA = 3.0
F = torch.tensor([1.0, -0.8, 0.6, -1.2, 0.9, -0.5, 1.1, -1.1])  # the writer's value per token; mean 0

WRITER = (0, 0)
ERASER = (1, 0)


def planted_config() -> ModelConfig:
    """Return the config of the planted model."""
    return ModelConfig(n_layers=2, d_model=D, n_heads=2, d_head=8, d_mlp=8, d_vocab=N_TOK, n_ctx=N_POS,
                       act_fn="gelu", normalization_type="LN", positional_embedding_type="standard",
                       model_name="planted-erasure")


def _self_attention(attn, h: int) -> None:
    for j in range(N_POS):
        attn.W_Q[h, POS + j, j] = BETA
        attn.W_K[h, POS + j, j] = BETA


def planted_model(dtype: torch.dtype = torch.float64, gain: float | None = None, seed: int = 0) -> Transformer:
    """Return the planted model (see the module docstring); ``gain`` overrides the eraser's gain.

    The small random maps of the bystander heads and MLPs come from ``seed``.
    """
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64) * 0.5

    model = Transformer(planted_config()).to(torch.float64)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for name, p in model.named_parameters():
            if name.endswith(".w"):
                p.fill_(1.0)
        model.embed.W_E[:, TOK:TOK + N_TOK] = torch.eye(N_TOK, dtype=torch.float64)
        model.embed.W_E[:, ANCHOR] = ANCHOR_VALUE
        model.pos_embed.W_pos[:, POS:POS + N_POS] = POS_SCALE * torch.eye(N_POS, dtype=torch.float64)

        a0, a1 = model.blocks[0].attn, model.blocks[1].attn
        # L0H0, the writer: self-attention, writes f(token) along WDIR.
        _self_attention(a0, 0)
        a0.W_V[0, TOK:TOK + N_TOK, 0] = F.double()
        a0.W_O[0, 0, WDIR] = WRITER_GAIN
        # L0H1: uniform attention (zero queries/keys), token content into its own block.
        a0.W_V[1, TOK:TOK + N_TOK, :] = rnd(N_TOK, 8)
        a0.W_O[1, :, L0H1_OUT:L0H1_OUT + 4] = rnd(8, 4)
        # MLP0: token content into its own block.
        m0 = model.blocks[0].mlp
        m0.W_in[TOK:TOK + N_TOK] = rnd(N_TOK, 8) * 4
        m0.b_in.copy_(rnd(8))
        m0.W_out[:, MLP0_OUT:MLP0_OUT + 4] = rnd(8, 4)
        # L1H0, the eraser: self-attention, reads (WDIR - REF) after ln1, writes its negative.
        _self_attention(a1, 0)
        a1.W_V[0, WDIR, 0] = 1.0
        a1.W_V[0, REF, 0] = -1.0
        a1.W_O[0, 0, WDIR] = -1.0  # gain set below
        # L1H1: uniform attention, positions into its own block.
        a1.W_V[1, POS:POS + N_POS, :] = rnd(N_POS, 8)
        a1.W_O[1, :, L1H1_OUT:L1H1_OUT + 4] = rnd(8, 4)
        # MLP1: reads L0H1's block, writes its own.
        m1 = model.blocks[1].mlp
        m1.W_in[L0H1_OUT:L0H1_OUT + 4] = rnd(4, 8) * 4
        m1.W_out[:, MLP1_OUT:MLP1_OUT + 4] = rnd(8, 4)
        # Unembedding: tokens, the MLP blocks, and the writer's direction (+KAPPA even, -KAPPA odd tokens).
        W_U = model.unembed.W_U
        W_U[TOK:TOK + N_TOK] = rnd(N_TOK, N_TOK)
        W_U[MLP0_OUT:MLP1_OUT + 4] = rnd(8, N_TOK)
        W_U[WDIR] = KAPPA * torch.tensor([1.0 if t % 2 == 0 else -1.0 for t in range(N_TOK)], dtype=torch.float64)

        if gain is None:
            gain = _median_ln1_scale(model, layer=1)
        a1.W_O[0, 0, WDIR] = -gain
    return model.to(dtype).eval()


def _median_ln1_scale(model: Transformer, layer: int) -> float:
    gen = torch.Generator().manual_seed(12345)
    tokens = torch.randint(0, N_TOK, (64, N_POS), generator=gen)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=f"blocks.{layer}.ln1.hook_scale")
    return float(cache[f"blocks.{layer}.ln1.hook_scale"].median())


def planted_prompts(n: int = 24, seed: int = 0, min_len: int = 4) -> list[list[int]]:
    """Return ``n`` random token sequences for the planted model, lengths min_len..N_POS."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(min_len, N_POS + 1, (1,), generator=gen))
        out.append(torch.randint(0, N_TOK, (length,), generator=gen).tolist())
    return out
