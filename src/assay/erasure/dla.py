"""Direct logit attribution (DLA) with the final LayerNorm scale frozen from the clean run.

For a logit difference between token a and token b at one position, with u = W_U[:, a] - W_U[:, b]:

    logit_a - logit_b = LN_final(x) . u + (b_U[a] - b_U[b]),
    LN_final(x) = (x - mean(x)) / s * w + beta,      s = sqrt(mean((x - mean x)^2) + eps).

x is the sum of the component outputs r_i (see :mod:`assay.erasure.components`). Centring is linear,
and with s frozen at its clean-run value the map is linear in x, so

    logit_a - logit_b = sum_i ((r_i - mean(r_i)) / s) . (w * u)  +  beta . u  +  (b_U[a] - b_U[b])

exactly: the DLA of component i is the i-th term; ``ln_final.b`` and ``unembed.b_U`` are the two
constants. The paper (Janiak et al.) leaves the unembedding bias out; we keep it as its own component
so that the terms add up to the logit difference the model actually computes.

A model without a final LayerNorm has no scale to freeze: its logits are already linear in the
residual stream, and ``mode="linear"`` attributes r_i . u directly (also exact). Asking for the frozen
scale on such a model is a BadInput that says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from assay.erasure.components import (
    Component,
    check_decomposable,
    component_output,
    components,
    run_with_components,
)
from assay.errors import BadInput
from assay.model import Transformer

NO_FINAL_LN = (
    "this model has no final LayerNorm, so there is no scale to freeze; its logits are linear in the "
    "residual stream and plain DLA (r . (W_U[:, a] - W_U[:, b]); mode='linear', --dla linear) is exact instead"
)


@dataclass
class LogitTarget:
    """Which logit difference to attribute: ``correct`` [b, p] minus ``incorrect`` [b, p] token ids.

    ``incorrect`` None means the mean logit over the vocabulary (u = W_U[:, a] - mean_j W_U[:, j]).
    Positions with ``correct`` = -1 have no target (their attribution is set to 0).
    """

    correct: torch.Tensor
    incorrect: torch.Tensor | None = None

    def mask(self) -> torch.Tensor:
        """Return a bool [b, p]: True where there is a target."""
        return self.correct >= 0


def next_token_target(tokens: torch.Tensor, logits: torch.Tensor) -> LogitTarget:
    """Return the default target of a language model on text: the true next token against the model's
    strongest other candidate (from the clean logits), at every position but the last.
    """
    b, p = tokens.shape
    correct = torch.full((b, p), -1, dtype=torch.long)
    correct[:, :-1] = tokens[:, 1:]
    masked = logits.detach().clone().float()
    idx = correct.clamp(min=0).unsqueeze(-1)
    masked.scatter_(-1, idx, float("-inf"))
    incorrect = masked.argmax(-1)
    return LogitTarget(correct, incorrect)


def logit_directions(model: Transformer, target: LogitTarget) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(u, c)``: u [b, p, d_model] = W_U[:, a] - W_U[:, b] and c [b, p] = b_U[a] - b_U[b]."""
    W_U, b_U = model.unembed.W_U, model.unembed.b_U
    a = target.correct.clamp(min=0)
    u = W_U.T[a]  # [b, p, d]
    c = b_U[a]
    if target.incorrect is None:
        u = u - W_U.mean(1)
        c = c - b_U.mean()
    else:
        u = u - W_U.T[target.incorrect]
        c = c - b_U[target.incorrect]
    m = target.mask()
    return u * m[..., None], c * m


def logit_difference(logits: torch.Tensor, target: LogitTarget) -> torch.Tensor:
    """Return the logit difference [b, p] the target asks for, from logits [b, p, V] (0 where no target)."""
    a = target.correct.clamp(min=0)
    la = logits.gather(-1, a[..., None])[..., 0]
    lb = logits.mean(-1) if target.incorrect is None else logits.gather(-1, target.incorrect[..., None])[..., 0]
    return (la - lb) * target.mask()


@dataclass
class DLA:
    """Attributions of one batch: ``terms`` [n_comp, b, p] for ``comps``; they sum to ``logit_diff``."""

    comps: list[Component]
    terms: torch.Tensor
    logit_diff: torch.Tensor  # from the model's own forward pass
    mode: str

    def term(self, comp: Component) -> torch.Tensor:
        """Return the attribution [b, p] of one component."""
        return self.terms[self.comps.index(comp)]

    def residual_error(self) -> float:
        """Return max |sum of terms - logit difference| (0 up to float rounding)."""
        return float((self.terms.sum(0) - self.logit_diff).abs().max())


def resolve_mode(model: Transformer, mode: str) -> str:
    """Check the DLA mode against the model: ``frozen`` needs a final LayerNorm, ``linear`` needs none."""
    check_decomposable(model)
    has_ln = hasattr(model, "ln_final")
    if mode == "frozen" and not has_ln:
        raise BadInput(NO_FINAL_LN)
    if mode == "linear" and has_ln:
        raise BadInput("mode 'linear' is for models without a final LayerNorm; this model has one: use 'frozen'")
    if mode not in ("frozen", "linear"):
        raise BadInput(f"unknown DLA mode {mode!r} (frozen | linear)")
    return mode


def project_to_logits(model: Transformer, outputs: torch.Tensor, scale: torch.Tensor | None,
                      u: torch.Tensor) -> torch.Tensor:
    """Return the DLA of residual-stream vectors ``outputs`` [..., b, p, d]: centred, divided by the frozen
    final scale [b, p, 1] (None: no final LayerNorm), dotted with (w * u) [b, p, d].
    """
    if scale is None:
        return (outputs * u).sum(-1)
    w = model.ln_final.w
    centred = outputs - outputs.mean(-1, keepdim=True)
    return (centred / scale * (w * u)).sum(-1)


def dla_from_cache(model: Transformer, cache: dict[str, torch.Tensor], logits: torch.Tensor, target: LogitTarget,
                   comps: Sequence[Component] | None = None, mode: str = "frozen") -> DLA:
    """Return the DLA of every component (default: all, constants included) from a clean-run cache.

    The cache must come from :func:`~assay.erasure.components.run_with_components`.
    """
    mode = resolve_mode(model, mode)
    comps = list(comps) if comps is not None else components(model)
    u, c = logit_directions(model, target)
    u = u.to(logits.dtype)
    scale = cache["ln_final.hook_scale"] if mode == "frozen" else None
    rows = []
    for comp in comps:
        if comp.in_residual:
            rows.append(project_to_logits(model, component_output(model, cache, comp), scale, u))
        elif comp.kind == "ln_final.b":
            rows.append((model.ln_final.b * u).sum(-1))
        else:
            rows.append(c.to(logits.dtype))
    terms = torch.stack(rows).detach()
    return DLA(comps, terms, logit_difference(logits, target).detach(), mode)


def dla(model: Transformer, tokens: torch.Tensor, target: LogitTarget | None = None,
        comps: Sequence[Component] | None = None, mode: str = "frozen") -> DLA:
    """Return the DLA of every component on ``tokens`` [b, p].

    ``target`` defaults to :func:`next_token_target`. ``mode``: ``frozen`` (final LayerNorm scale from
    this clean run; needs a final LayerNorm) or ``linear`` (for models without one).
    """
    resolve_mode(model, mode)
    tokens = model.check_tokens(tokens)
    logits, cache = run_with_components(model, tokens)
    if target is None:
        target = next_token_target(tokens, logits)
    return dla_from_cache(model, cache, logits, target, comps, mode)
