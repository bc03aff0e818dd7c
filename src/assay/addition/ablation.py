"""Position and head ablations (zero and mean) through temporary hooks; the model is never modified.

Every ablation is a list of (hook name, function) pairs handed to ``run_with_hooks``, which removes
them when the forward pass ends. A *mean* ablation replaces an activation by its mean over a reference
batch of uniform random questions, position by position (so a position keeps its typical value but
loses what depends on this question); a *zero* ablation replaces it by zeros.

- Input ablation at position p: the residual stream entering layer 0 at p (token + position embedding)
  is replaced, so no layer can read the token at p. Which answer digits then fail says which input
  positions each digit needs.
- Computation ablation at position p: the outputs of every attention layer and MLP at p are replaced,
  so nothing computed at p reaches the logits or later layers. Which answer digits fail says where each
  digit is computed.
- Head ablation: one head's ``hook_z`` (its mixed values, before W_O) at every position.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from assay.addition.evaluate import answer_stats, example_tensor
from assay.tasks import addition

Hook = tuple[str, Callable[[torch.Tensor, Any], torch.Tensor]]
MODES = ("zero", "mean")


def mean_activations(model: Any, a: np.ndarray, b: np.ndarray, n_digits: int,
                     names: list[str]) -> dict[str, torch.Tensor]:
    """Return the mean over the batch of each named activation, per position: {name: [pos, ...]}."""
    tokens = example_tensor(a, b, n_digits)[:, :-1]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=names)
    return {name: cache[name].mean(dim=0) for name in names}


def _set_position(pos: int, value: torch.Tensor | None) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    def fn(act: torch.Tensor, hook: Any) -> torch.Tensor:
        act = act.clone()
        act[:, pos] = 0.0 if value is None else value[pos]
        return act

    return fn


def _set_head(head: int, value: torch.Tensor | None) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    def fn(act: torch.Tensor, hook: Any) -> torch.Tensor:  # act: [b, p, h, e]
        act = act.clone()
        if value is None:
            act[:, :, head] = 0.0
        else:
            act[:, :, head] = value[: act.shape[1], head]
        return act

    return fn


def _set_head_at(head: int, pos: int, value: torch.Tensor | None) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    def fn(act: torch.Tensor, hook: Any) -> torch.Tensor:
        act = act.clone()
        act[:, pos, head] = 0.0 if value is None else value[pos, head]
        return act

    return fn


def input_names(model: Any) -> list[str]:
    """Return the hook name of the residual stream entering the first layer."""
    return ["blocks.0.hook_resid_pre"]


def computation_names(model: Any) -> list[str]:
    """Return the hook names of every attention and MLP output."""
    names = []
    for layer in range(model.cfg.n_layers):
        names.append(f"blocks.{layer}.hook_attn_out")
        if not model.cfg.attn_only:
            names.append(f"blocks.{layer}.hook_mlp_out")
    return names


def position_hooks(names: list[str], pos: int, means: dict[str, torch.Tensor] | None) -> list[Hook]:
    """Return hooks replacing the named activations at position ``pos`` by zero (means None) or their means."""
    return [(n, _set_position(pos, None if means is None else means[n])) for n in names]


def head_hooks(layer: int, head: int, means: dict[str, torch.Tensor] | None, pos: int | None = None) -> list[Hook]:
    """Return a hook replacing one head's ``hook_z`` (at every position, or only ``pos``) by zero or its mean."""
    name = f"blocks.{layer}.attn.hook_z"
    value = None if means is None else means[name]
    return [(name, _set_head(head, value) if pos is None else _set_head_at(head, pos, value))]


def position_ablation(model: Any, a: np.ndarray, b: np.ndarray, n_digits: int, ref: tuple[np.ndarray, np.ndarray],
                      kind: str, mode: str) -> dict[str, Any]:
    """Return per-digit loss and accuracy [position, digit] when one position at a time is ablated.

    ``kind`` is ``"input"`` or ``"computation"``; ``mode`` ``"zero"`` or ``"mean"`` (means over ``ref``).
    Digits are in token order (A_n first). Also returns the unablated baseline.
    """
    if kind not in ("input", "computation") or mode not in MODES:
        raise ValueError(f"unknown ablation {kind}/{mode}")
    names = input_names(model) if kind == "input" else computation_names(model)
    means = mean_activations(model, *ref, n_digits, names) if mode == "mean" else None
    truth = addition.example_token_array(a, b, n_digits)[:, -(n_digits + 1) :]
    ce0, pred0 = answer_stats(model, a, b, n_digits)
    n_pos = addition.example_length(n_digits) - 1
    loss = np.zeros((n_pos, n_digits + 1))
    acc = np.zeros((n_pos, n_digits + 1))
    for pos in range(n_pos):
        ce, pred = answer_stats(model, a, b, n_digits, position_hooks(names, pos, means))
        loss[pos] = ce.mean(axis=0)
        acc[pos] = (pred == truth).mean(axis=0)
    return {"kind": kind, "mode": mode, "loss": loss, "accuracy": acc,
            "baseline_loss": ce0.mean(axis=0), "baseline_accuracy": (pred0 == truth).mean(axis=0)}


def head_ablation(model: Any, sets: dict[str, tuple[np.ndarray, np.ndarray]], n_digits: int,
                  ref: tuple[np.ndarray, np.ndarray], modes: tuple[str, ...] = MODES) -> list[dict[str, Any]]:
    """Return rows {layer, head, mode, category, loss, accuracy} for each head ablated at every position.

    ``sets`` maps a category name to its questions; layer/head None is the unablated baseline.
    """
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    means = mean_activations(model, *ref, n_digits, names)
    rows = []
    configs: list[tuple[int | None, int | None, str]] = [(None, None, "none")]
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            configs += [(layer, head, m) for m in modes]
    for layer, head, mode in configs:
        hooks = [] if layer is None else head_hooks(layer, head, None if mode == "zero" else means)
        for cat, (a, b) in sets.items():
            truth = addition.example_token_array(a, b, n_digits)[:, -(n_digits + 1) :]
            ce, pred = answer_stats(model, a, b, n_digits, hooks)
            rows.append({"layer": layer, "head": head, "mode": mode, "category": cat,
                         "loss": float(ce.mean()), "accuracy": float((pred == truth).all(axis=1).mean()),
                         "digit_loss": ce.mean(axis=0).tolist()})
    return rows


def head_position_ablation(model: Any, a: np.ndarray, b: np.ndarray, n_digits: int,
                           ref: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    """Return per-digit loss [layer, head, answer position, digit] with one head mean-ablated at one position.

    Only the positions that predict answer digits (2n + 1 .. 3n + 1) are ablated: the paper's
    "useful node" test (P{pos}L{layer}H{head}).
    """
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    means = mean_activations(model, *ref, n_digits, names)
    q = addition.question_length(n_digits)
    cfg = model.cfg
    loss = np.zeros((cfg.n_layers, cfg.n_heads, n_digits + 1, n_digits + 1))
    for layer in range(cfg.n_layers):
        for head in range(cfg.n_heads):
            for i in range(n_digits + 1):
                ce, _ = answer_stats(model, a, b, n_digits, head_hooks(layer, head, means, pos=q - 1 + i))
                loss[layer, head, i] = ce.mean(axis=0)
    return {"loss": loss, "positions": list(range(q - 1, q + n_digits))}
