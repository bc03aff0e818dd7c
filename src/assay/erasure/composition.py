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


def _factors(model: Transformer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (W_V, W_O, diag(w1) W_V) of every head, float64: [n, d, e], [n, e, d], [n, d, e]."""
    V, O, Vw = [], [], []
    for block in model.blocks:
        v = block.attn.W_V.detach().double()
        V.append(v)
        O.append(block.attn.W_O.detach().double())
        if model.cfg.normalization_type == "LN":
            v = block.ln1.w.detach().double()[None, :, None] * v
        Vw.append(v)
    return torch.cat(V), torch.cat(O), torch.cat(Vw)


def v_composition_scores(model: Transformer) -> dict:
    """Return ``{"heads": names, "composition": [n, n], "signed": [n, n]}`` (row: writer A, column: reader B).

    Computed through the d_head x d_head factors of the rank-d_head OV matrices (M_A = V_A O_A,
    M_B = Vw_B O_B): with C = O_A Vw_B, G_A = V_A^T V_A and H_B = O_B O_B^T,
    ||M_A M_B||_F^2 = tr(C^T G_A C H_B) and tr(M_A M_B M_A^T) = tr(C O_B O_A^T G_A), so a GPT-2-size
    model costs seconds, not the hours of d_model x d_model products.
    """
    names = [c.name for c in heads(model)]
    H = model.cfg.n_heads
    V, O, Vw = _factors(model)
    n = V.shape[0]
    G = V.transpose(1, 2) @ V  # [n, e, e]
    Hm = O @ O.transpose(1, 2)  # [n, e, e]
    Gw = Vw.transpose(1, 2) @ Vw
    fa2 = (G * Hm).sum((1, 2))  # ||V_A O_A||_F^2 (G, H symmetric)
    fb2 = (Gw * Hm).sum((1, 2))  # ||diag(w) V_B O_B||_F^2
    comp = torch.full((n, n), float("nan"), dtype=torch.float64)
    signed = torch.full((n, n), float("nan"), dtype=torch.float64)
    for a in range(n):
        later = torch.arange((a // H + 1) * H, n)
        if len(later) == 0:
            continue
        C = O[a] @ Vw[later]  # [k, e, e]
        X = C.transpose(1, 2) @ G[a] @ C  # C^T G_A C
        comp2 = (X * Hm[later]).sum((1, 2))
        comp[a, later] = comp2.clamp(min=0).sqrt() / (fa2[a] * fb2[later]).clamp(min=1e-60).sqrt()
        P = O[later] @ O[a].T  # O_B O_A^T  [k, e, e]
        signed[a, later] = ((C @ P) * G[a].T).sum((1, 2)) / fa2[a].clamp(min=1e-60)  # tr(C P G_A)
    return {"heads": names, "composition": comp, "signed": signed}
