"""Weights-only V-composition scores for every pair of heads (earlier head -> later head).

With row vectors, head A writes x W_V^A W_O^A and a later head B reads y diag(w_B) W_V^B through its
values (w_B: the gain of B's ln1; the scale 1/s is a per-position number and is left out). With
M_A = W_V^A W_O^A and M_B = diag(w_B) W_V^B W_O^B (both d_model x d_model):

- **composition score** (Elhage et al. 2021): ||M_A M_B||_F / (||M_A||_F ||M_B||_F), in [0, 1];
  how much of B's OV circuit reads what A writes, whatever the sign.
- **signed erasure score**: tr(M_A M_B M_A^T) / tr(M_A M_A^T) = E<x M_A M_B, x M_A> / E||x M_A||^2 for
  isotropic x: the projection ratio PR(B, A) that B would have if it attended only to the position A
  wrote at and saw A's output unnormalised. -1: B's OV circuit is minus the identity on A's output.

Pairs where B is not in a later layer are NaN.
"""

from __future__ import annotations

import torch

from assay.erasure.components import heads
from assay.model import Transformer


def ov_matrices(model: Transformer, with_ln: bool = False) -> torch.Tensor:
    """Return W_V W_O for every head, [n_layers * n_heads, d, d]; ``with_ln`` scales rows by ln1's gain."""
    mats = []
    for block in model.blocks:
        ov = block.attn.W_V @ block.attn.W_O  # [h, d, d]
        if with_ln and model.cfg.normalization_type == "LN":
            ov = block.ln1.w[None, :, None] * ov
        mats.append(ov)
    return torch.cat(mats).detach()


def v_composition_scores(model: Transformer) -> dict:
    """Return ``{"heads": names, "composition": [n, n], "signed": [n, n]}`` (row: writer A, column: reader B)."""
    names = [c.name for c in heads(model)]
    H = model.cfg.n_heads
    MA = ov_matrices(model).double()
    MB = ov_matrices(model, with_ln=True).double()
    n = MA.shape[0]
    comp = torch.full((n, n), float("nan"), dtype=torch.float64)
    signed = torch.full((n, n), float("nan"), dtype=torch.float64)
    fa = MA.flatten(1).norm(dim=1)
    fb = MB.flatten(1).norm(dim=1)
    for a in range(n):
        later = torch.arange((a // H + 1) * H, n)
        if len(later) == 0:
            continue
        prod = MA[a] @ MB[later]  # [k, d, d]
        comp[a, later] = prod.flatten(1).norm(dim=1) / (fa[a] * fb[later]).clamp(min=1e-30)
        # tr(M_A M_B M_A^T) = sum_ij (M_A M_B)_ij (M_A)_ij
        signed[a, later] = (prod * MA[a]).flatten(1).sum(1) / (fa[a] ** 2).clamp(min=1e-30)
    return {"heads": names, "composition": comp, "signed": signed}
