"""Interventions: the single-edge value path patch, the V-composition part, resample and mean ablation.

**Value-edge path patch** (writer W -> head E through E's values). E's values are
v = LN1(x) W_V + b_V with x = resid_pre of E's layer. Removing W's output from that input only, with
LN1's scale s frozen at the value it has in the same forward pass (so that the patch changes nothing
but the one edge), gives

    LN1(x - W) = LN1(x) - ((W - mean W) / s) * w,      v' = v - (((W - mean W) / s) * w) W_V[E].

E's queries and keys, every other head and every other input of later components are untouched; E's
changed output then flows on through the rest of the network as usual. Without LayerNorm the term is
just W W_V[E].

**V-composition part of E that reads W**: what E's output loses in that patch, computed in closed form
from the clean run (the pattern does not change, queries and keys being untouched):

    vcomp[q] = sum_k A_E[q, k] (((W_k - mean W_k) / s_k) * w) W_V[E] W_O[E].

**Total effect** of a component: the clean logit difference minus the logit difference when the
component's output is replaced (everything downstream recomputed) by

- *resample*: its output on another prompt of the set, position by position (the next prompt in the
  set, cyclically, that is at least as long; for the longest prompt, the longest other prompt, and the
  per-position mean where that one is too short);
- *mean*: its mean output at that position over the prompts that reach it.

Biases are constants across prompts, so both ablations leave them (total effect 0).
Every intervention here runs inside a hook context: afterwards the model has no hooks and the same
weights and settings as before (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from assay.erasure.components import Component, component_output, reads_after, run_with_components
from assay.erasure.dla import LogitTarget, logit_directions
from assay.errors import BadInput
from assay.model import Transformer


def _check_edge(model: Transformer, writer: Component, erasers: Sequence[Component]) -> None:
    if not writer.in_residual or writer.kind == "b_O":
        raise BadInput(f"{writer.name} cannot be the writer of a value-edge patch (a head, an MLP or an embedding)")
    for e in erasers:
        if e.kind != "head":
            raise BadInput(f"{e.name}: only a head has a value input to patch")
        if not reads_after(e, writer):
            raise BadInput(f"{e.name} does not read {writer.name}'s output (it is not in a later layer)")


def _writer_output_from_act(model: Transformer, writer: Component, act: torch.Tensor) -> torch.Tensor:
    if writer.kind == "head":
        return act[:, :, writer.head] @ model.blocks[writer.layer].attn.W_O[writer.head]
    return act


def _writer_hook_name(writer: Component) -> str:
    return {"embed": "hook_embed", "pos_embed": "hook_pos_embed", "head": f"blocks.{writer.layer}.attn.hook_z",
            "mlp": f"blocks.{writer.layer}.hook_mlp_out"}[writer.kind]


def value_edge_hooks(model: Transformer, writer: Component, erasers: Sequence[Component]) -> list:
    """Return forward hooks that remove ``writer``'s output from the value input of each eraser head.

    Use them with ``model.hooks(...)`` or ``run_with_hooks``; see the module docstring for the maths.
    """
    _check_edge(model, writer, erasers)
    state: dict[str, torch.Tensor] = {}
    has_ln = model.cfg.normalization_type == "LN"

    def grab_writer(act: torch.Tensor, hook) -> None:
        state["W"] = _writer_output_from_act(model, writer, act)

    hooks: list = [(_writer_hook_name(writer), grab_writer)]
    by_layer: dict[int, list[int]] = {}
    for e in erasers:
        by_layer.setdefault(e.layer, []).append(e.head)
    for layer, hs in by_layer.items():
        block = model.blocks[layer]

        def grab_scale(act: torch.Tensor, hook, layer: int = layer) -> None:
            state[f"s{layer}"] = act

        def patch_v(v: torch.Tensor, hook, layer: int = layer, hs: tuple = tuple(hs), block=block) -> torch.Tensor:
            W = state["W"]
            if has_ln:
                delta = (W - W.mean(-1, keepdim=True)) / state[f"s{layer}"] * block.ln1.w
            else:
                delta = W
            v = v.clone()
            for h in hs:
                v[:, :, h] = v[:, :, h] - delta @ block.attn.W_V[h]
            return v

        if has_ln:
            hooks.append((f"blocks.{layer}.ln1.hook_scale", grab_scale))
        hooks.append((f"blocks.{layer}.attn.hook_v", patch_v))
    return hooks


def run_value_edge_patch(model: Transformer, tokens: torch.Tensor, writer: Component,
                         erasers: Sequence[Component]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run the model with the writer -> erasers value edges removed; return ``(logits, cache)``.

    The cache is that of :func:`~assay.erasure.components.run_with_components`, on the patched run.
    """
    hooks = value_edge_hooks(model, writer, erasers)
    with torch.no_grad(), model.hooks(hooks):
        return run_with_components(model, tokens)


def vcomp_part(model: Transformer, cache: dict[str, torch.Tensor], writer: Component,
               eraser: Component) -> torch.Tensor:
    """Return the part of ``eraser``'s output [b, p, d] that it reads from ``writer`` through its values."""
    _check_edge(model, writer, [eraser])
    block = model.blocks[eraser.layer]
    W = component_output(model, cache, writer)
    if model.cfg.normalization_type == "LN":
        W = (W - W.mean(-1, keepdim=True)) / cache[f"blocks.{eraser.layer}.ln1.hook_scale"] * block.ln1.w
    h = eraser.head
    ov = block.attn.W_V[h] @ block.attn.W_O[h]  # [d, d]
    A = cache[f"blocks.{eraser.layer}.attn.hook_pattern"][:, h]  # [b, q, k]
    return torch.einsum("bqk,bkd->bqd", A, W @ ov)


# ---------------------------------------------------------------------------------------------
# Ablations (total effect).

ABLATABLE = ("embed", "pos_embed", "head", "mlp")


def ablation_hook_name(comp: Component) -> str:
    """Return the hook point whose activation carries ``comp``'s output (z for a head)."""
    return _writer_hook_name(comp)


def ablation_activation(cache: dict[str, torch.Tensor], comp: Component) -> torch.Tensor:
    """Return the activation [p, ...] that ablating ``comp`` replaces (z[:, h] for a head), from a batch-1 cache."""
    act = cache[ablation_hook_name(comp)][0]
    return act[:, comp.head] if comp.kind == "head" else act


def metric_from_resid(model: Transformer, normed: torch.Tensor, target: LogitTarget) -> torch.Tensor:
    """Return the target's logit difference [b, p] from the final normalized residual [b, p, d].

    Equal to :func:`~assay.erasure.dla.logit_difference` of the logits, without the [b, p, V] logits.
    """
    u, c = logit_directions(model, target)
    return (normed * u.to(normed.dtype)).sum(-1) + c.to(normed.dtype)


@dataclass
class AblationRun:
    """Total effects of one prompt: ``effects`` [n_comp, p] (clean minus ablated logit difference)."""

    comps: list[Component]
    effects: torch.Tensor
    clean: torch.Tensor  # [p]


def _final_from_layer(model: Transformer, resid_pre: torch.Tensor, layer: int) -> torch.Tensor:
    """Return the final normalized residual [b, p, d] from ``resid_pre`` of ``layer`` (hooks fire as usual)."""
    x = resid_pre
    for block in model.blocks[layer:]:
        x = block(x)
    return model.ln_final(x) if hasattr(model, "ln_final") else x


def ablation_effects(model: Transformer, tokens: torch.Tensor, target: LogitTarget, comps: Sequence[Component],
                     sources: dict[Component, torch.Tensor], chunk: int = 16) -> AblationRun:
    """Return the total effect of replacing each component's activation by ``sources[comp]`` [p, ...].

    ``tokens`` [1, p]. Components are ablated in batched passes of up to ``chunk`` rows, row r ablating
    one component. A head or MLP of layer l changes nothing before layer l, so its rows start from the
    clean resid_pre of layer l and run layers l.. only (about half the work of full passes in a deep
    model); the embeddings' rows run the whole model. Components not in ABLATABLE (biases, constants)
    get effect 0.
    """
    tokens = model.check_tokens(tokens)
    p = tokens.shape[1]
    pre_names = {f"blocks.{layer}.hook_resid_pre" for layer in range(model.cfg.n_layers)}
    with torch.no_grad():
        final, cache = model.run_with_cache(tokens, return_type="resid", names_filter=lambda n: n in pre_names)
        clean = metric_from_resid(model, final, target)[0]
    effects = torch.zeros(len(comps), p, dtype=clean.dtype)
    todo = [i for i, c in enumerate(comps) if c.kind in ABLATABLE]
    by_layer: dict[int, list[int]] = {}
    for i in todo:
        by_layer.setdefault(comps[i].layer, []).append(i)
    batches = [(layer, idx[s : s + chunk]) for layer, idx in sorted(by_layer.items())
               for s in range(0, len(idx), chunk)]
    for layer, rows in batches:
        by_hook: dict[str, list[tuple[int, Component]]] = {}
        for r, i in enumerate(rows):
            by_hook.setdefault(ablation_hook_name(comps[i]), []).append((r, comps[i]))

        def make_hook(entries: list[tuple[int, Component]]):
            def hook(act: torch.Tensor, hook) -> torch.Tensor:
                act = act.clone()
                for r, comp in entries:
                    src = sources[comp].to(act.dtype)
                    if comp.kind == "head":
                        act[r, :, comp.head] = src
                    else:
                        act[r] = src
                return act

            return hook

        hooks = [(name, make_hook(entries)) for name, entries in by_hook.items()]
        t = LogitTarget(target.correct.expand(len(rows), -1),
                        None if target.incorrect is None else target.incorrect.expand(len(rows), -1))
        with torch.no_grad():
            if layer < 0:  # embeddings: the whole forward pass
                normed = model.run_with_hooks(tokens.expand(len(rows), -1), return_type="resid", fwd_hooks=hooks)
            else:
                start = cache[f"blocks.{layer}.hook_resid_pre"].expand(len(rows), -1, -1)
                with model.hooks(hooks):
                    normed = _final_from_layer(model, start, layer)
        ablated = metric_from_resid(model, normed, t)
        for r, i in enumerate(rows):
            effects[i] = clean - ablated[r]
    return AblationRun(list(comps), effects * target.mask()[0], clean)


def resample_order(lengths: Sequence[int]) -> list[int]:
    """Return, for each prompt, the prompt whose activations replace its own in resample ablation.

    The next prompt in the set (cyclically) at least as long; for a prompt no other prompt is as long as,
    the longest other prompt (its missing positions are filled with the per-position mean). A set of
    one prompt resamples from itself (effects then 0).
    """
    n = len(lengths)
    out = []
    for i in range(n):
        pick = None
        for step in range(1, n):
            j = (i + step) % n
            if lengths[j] >= lengths[i]:
                pick = j
                break
        if pick is None:
            others = [j for j in range(n) if j != i]
            pick = max(others, key=lambda j: lengths[j]) if others else i
        out.append(pick)
    return out


class SourceStore:
    """Clean activations of every prompt for the ablated components, and their per-position means."""

    def __init__(self, comps: Sequence[Component]) -> None:
        self.comps = [c for c in comps if c.kind in ABLATABLE]
        self.acts: list[dict[Component, torch.Tensor]] = []
        self._sum: dict[Component, torch.Tensor] = {}
        self._count: torch.Tensor | None = None

    def add(self, cache: dict[str, torch.Tensor]) -> None:
        """Record one prompt's activations from its batch-1 clean cache."""
        acts = {c: ablation_activation(cache, c).clone() for c in self.comps}
        self.acts.append(acts)
        p = next(iter(acts.values())).shape[0] if acts else 0
        count = self._count
        if count is None or count.shape[0] < p:
            grown = torch.zeros(p, dtype=torch.float64)
            if count is not None:
                grown[: count.shape[0]] = count
            self._count = count = grown
        count[:p] += 1
        for c, a in acts.items():
            s = self._sum.get(c)
            if s is None or s.shape[0] < p:
                grown = torch.zeros((p, *a.shape[1:]), dtype=torch.float64)
                if s is not None:
                    grown[: s.shape[0]] = s
                self._sum[c] = s = grown
            s[:p] += a.double()

    def mean(self, p: int) -> dict[Component, torch.Tensor]:
        """Return the per-position mean activation of each component for positions 0..p-1."""
        cnt = self._count[:p].clamp(min=1)
        return {c: self._sum[c][:p] / cnt.view(-1, *[1] * (self._sum[c].dim() - 1)) for c in self.comps}

    def resample(self, i: int, j: int, p: int) -> dict[Component, torch.Tensor]:
        """Return prompt j's activations for positions 0..p-1 (mean-filled where prompt j is shorter)."""
        out = {}
        mean = None
        for c in self.comps:
            a = self.acts[j][c]
            if a.shape[0] >= p:
                out[c] = a[:p]
            else:
                mean = mean if mean is not None else self.mean(p)
                out[c] = torch.cat([a, mean[c][a.shape[0] :].to(a.dtype)])
        return out
