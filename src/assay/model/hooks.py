"""Hook points and a hooked root module with TransformerLens's behaviour.

A :class:`HookPoint` is an identity module placed wherever an activation is worth reading or
editing. :class:`HookedRootModule` names every hook point by its module path (``blocks.0.attn.hook_z``)
and offers ``run_with_hooks`` / ``run_with_cache`` / ``hooks`` with the same call signatures as
TransformerLens, so analysis code written for TransformerLens reads the same here. We keep our own
small implementation rather than depend on TransformerLens: it pulls in a large tree of packages and
its import is slow, and the part we need is a hundred lines.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

HookFn = Callable[..., Any]
NameFilter = str | Callable[[str], bool] | Sequence[str] | None


class HookPoint(nn.Module):
    """Identity module; hook functions registered on it see (and may replace) the activation.

    A hook function is called as ``fn(activation, hook=self)`` and returns either None (leave the
    activation as it is) or a tensor that replaces it downstream.
    """

    def __init__(self) -> None:
        super().__init__()
        self.name: str = ""
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def add_hook(self, fn: HookFn, dir: str = "fwd") -> torch.utils.hooks.RemovableHandle:
        """Register ``fn`` on this point (forward only; backward hooks are not needed here).

        Returns the handle, so that a caller can remove this one hook and leave the others.
        """
        if dir != "fwd":
            raise ValueError("only forward hooks are supported")

        def wrapped(module: nn.Module, inputs: tuple, output: torch.Tensor) -> Any:
            return fn(output, hook=self)

        handle = self.register_forward_hook(wrapped)
        self._handles.append(handle)
        return handle

    def remove_hooks(self) -> None:
        """Remove every hook function registered on this point."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _name_matcher(names: NameFilter) -> Callable[[str], bool]:
    if names is None:
        return lambda _: True
    if isinstance(names, str):
        return lambda n: n == names
    if callable(names):
        return names
    wanted = set(names)
    return lambda n: n in wanted


class ActivationCache(dict):
    """A dict of activations by hook name; also indexable TransformerLens-style, ``cache["pattern", 0]``."""

    def _full_name(self, key: Any) -> Any:
        if isinstance(key, tuple):
            return get_act_name(*key)
        if isinstance(key, str) and not super().__contains__(key) and key in _SHORT | {"scale": 0}:
            return get_act_name(key)
        return key

    def __getitem__(self, key: Any) -> torch.Tensor:
        return super().__getitem__(self._full_name(key))

    def __contains__(self, key: object) -> bool:
        return super().__contains__(self._full_name(key))


_SHORT = {
    "embed": "hook_embed",
    "pos_embed": "hook_pos_embed",
    "resid_pre": "blocks.{l}.hook_resid_pre",
    "resid_mid": "blocks.{l}.hook_resid_mid",
    "resid_post": "blocks.{l}.hook_resid_post",
    "attn_out": "blocks.{l}.hook_attn_out",
    "mlp_out": "blocks.{l}.hook_mlp_out",
    "q": "blocks.{l}.attn.hook_q",
    "k": "blocks.{l}.attn.hook_k",
    "v": "blocks.{l}.attn.hook_v",
    "rot_q": "blocks.{l}.attn.hook_rot_q",
    "rot_k": "blocks.{l}.attn.hook_rot_k",
    "z": "blocks.{l}.attn.hook_z",
    "result": "blocks.{l}.attn.hook_result",
    "attn_scores": "blocks.{l}.attn.hook_attn_scores",
    "pattern": "blocks.{l}.attn.hook_pattern",
    "pre": "blocks.{l}.mlp.hook_pre",
    "post": "blocks.{l}.mlp.hook_post",
    "scale": "blocks.{l}.ln{n}.hook_scale",
    "normalized": "blocks.{l}.ln{n}.hook_normalized",
}


def get_act_name(name: str, layer: int | None = None, sub: str | int | None = None) -> str:
    """Return the full hook name for a short one, e.g. ``("pattern", 0) -> blocks.0.attn.hook_pattern``.

    ``("scale", 1, "ln2")`` gives ``blocks.1.ln2.hook_scale``; ``("scale",)`` alone gives the final
    LayerNorm's ``ln_final.hook_scale``. A name that already contains a dot is returned unchanged.
    """
    if "." in name:
        return name
    if name in ("scale", "normalized") and layer is None:
        return f"ln_final.hook_{name}"
    if name not in _SHORT:
        raise KeyError(f"unknown activation name {name!r}")
    template = _SHORT[name]
    n = str(sub).removeprefix("ln") if sub is not None else "1"
    return template.format(l=layer, n=n)


class HookedRootModule(nn.Module):
    """Base class: call :meth:`setup` after building submodules to name every :class:`HookPoint`."""

    hook_dict: dict[str, HookPoint]

    def setup(self) -> None:
        """Name every hook point by its module path and index them in ``hook_dict``."""
        self.hook_dict = {}
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name
                self.hook_dict[name] = module

    def hook_points(self) -> list[HookPoint]:
        """Return every hook point, in module order."""
        return list(self.hook_dict.values())

    def reset_hooks(self) -> None:
        """Remove every hook function from every hook point."""
        for hp in self.hook_dict.values():
            hp.remove_hooks()

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Sequence[tuple[NameFilter, HookFn]] = ()) -> Iterator[HookedRootModule]:
        """Context manager: the hooks are active inside the block and removed on exit, even on error."""
        # Remove only what this context added: an enclosing context's hooks must survive an inner
        # run_with_cache / run_with_hooks (TransformerLens gets the same effect with context levels).
        added: list[tuple[HookPoint, torch.utils.hooks.RemovableHandle]] = []
        try:
            for names, fn in fwd_hooks:
                match = _name_matcher(names)
                hit = False
                for name, hp in self.hook_dict.items():
                    if match(name):
                        added.append((hp, hp.add_hook(fn)))
                        hit = True
                if not hit and isinstance(names, str):
                    raise KeyError(f"no hook point named {names!r}")
            yield self
        finally:
            for hp, handle in added:
                handle.remove()
                hp._handles.remove(handle)

    def run_with_hooks(
        self, *model_args: Any, fwd_hooks: Sequence[tuple[NameFilter, HookFn]] = (), **model_kwargs: Any
    ) -> Any:
        """Run the forward pass with temporary hooks; returns what ``forward`` returns."""
        with self.hooks(fwd_hooks):
            return self(*model_args, **model_kwargs)

    def run_with_cache(
        self, *model_args: Any, names_filter: NameFilter = None, detach: bool = True, **model_kwargs: Any
    ) -> tuple[Any, ActivationCache]:
        """Run the forward pass and record activations; returns ``(output, cache)``.

        ``names_filter`` picks the hook points to record (a name, a list of names or a predicate).
        """
        cache = ActivationCache()

        def save(act: torch.Tensor, hook: HookPoint) -> None:
            cache[hook.name] = act.detach() if detach else act

        match = _name_matcher(names_filter)
        names = [n for n in self.hook_dict if match(n)]
        with self.hooks([(names, save)]):
            out = self(*model_args, **model_kwargs)
        return out, cache
