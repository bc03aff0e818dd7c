"""Saturation meter for trained models (Merrill et al. 2021, "Effects of parameter norm growth").

Scaling every parameter of a network by c and letting c grow takes softmax attention to its
saturated limit. Definitions used here (float64 throughout):

- the *saturated network* is the model with every parameter multiplied by ``C_SAT`` = 1000 and
  attention switched to ``"saturated"`` (exact tie sets, the c -> infinity limit of softmax);
- the representation of layer l is ``blocks.{l}.hook_resid_post`` at every position;
- ``cosine(c, l)`` is the mean over positions and inputs of the cosine similarity between layer l of
  the model with parameters ``c * theta`` (softmax) and layer l of the saturated network;
  ``layers`` reports c = 1 (how saturated the trained network already is);
- per head, ``positions_above`` is the mean over queries of the number of keys with attention weight
  > 1e-5 in the model scaled by 1000 (softmax), as in the paper; a head is *argmax-like* when that is
  at most 1.5, *mean-like* when it covers at least half of the visible keys, *mixed* otherwise;
- over a training run (the project's training loop, :func:`assay.train.train` with a callback): the
  parameter norm ``||theta||_2`` and the mean cosine at c = 1, against the step.
"""

from __future__ import annotations

import copy
import math
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from assay.errors import BadInput
from assay.model import ModelConfig, Transformer

C_SAT = 1000.0
C_GRID = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
WEIGHT_FLOOR = 1e-5
MAX_BATCH_TOKENS = 200_000  # inputs x positions per forward pass (attention is [b, h, n, n] float64)


def scaled(model: Transformer, c: float, attention: str | None = None) -> Transformer:
    """Return a float64 copy of ``model`` with every parameter multiplied by c (and, if given, the
    attention mode replaced)."""
    cfg = model.cfg if attention is None else ModelConfig.from_dict({**model.cfg.to_dict(), "attention": attention})
    m = Transformer(cfg).double()
    m.load_state_dict({k: v.detach().double() * c for k, v in model.state_dict().items()})
    return m.eval()


def representations(model: Transformer, tokens: torch.Tensor) -> list[torch.Tensor]:
    """Return the residual stream after every layer: a list of [batch, pos, d_model] tensors."""
    names = [f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    return [cache[n] for n in names]


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Return the mean over positions of cos(a[..., :], b[..., :]); a pair of zero vectors counts as 1
    (identical), one zero vector against a nonzero one as 0 (no direction in common)."""
    num = (a * b).sum(-1)
    na, nb = a.norm(dim=-1), b.norm(dim=-1)
    den = na * nb
    both_zero = (na == 0) & (nb == 0)
    cos = torch.where(den > 0, num / den.clamp(min=1e-300), both_zero.to(num.dtype))
    return float(cos.mean())


FORMAL_RECIPES = ("majority-1l", "parity-1l", "dyck1-1l", "majority-exact-1l")


def sample_inputs(model: Transformer, batch: int = 32, length: int | None = None, seed: int = 0,
                  card: dict[str, Any] | None = None) -> torch.Tensor:
    """Return input tokens [batch, length] for the meter: ``<bos> w <cls>`` over random bits for the
    formal-language recipes (``FORMAL_RECIPES``, by the model's card), random token ids otherwise."""
    cfg = model.cfg
    length = min(cfg.n_ctx, 34) if length is None else length
    if not 1 <= length <= cfg.n_ctx:
        raise BadInput(f"input length must be in 1..n_ctx={cfg.n_ctx}, got {length}")
    if batch * length > MAX_BATCH_TOKENS:
        raise BadInput(f"batch x length = {batch * length} exceeds the meter's limit of {MAX_BATCH_TOKENS} tokens")
    rng = np.random.default_rng(seed)
    recipe = (card or {}).get("recipe", "")
    if recipe in FORMAL_RECIPES and length >= 3 and cfg.d_vocab >= 4:
        from assay.tasks import formal

        w = rng.integers(0, 2, size=(batch, length - 2))
        toks = np.concatenate([np.full((batch, 1), formal.BOS), w, np.full((batch, 1), formal.CLS)], axis=1)
        return torch.from_numpy(toks).long()
    return torch.from_numpy(rng.integers(0, cfg.d_vocab, size=(batch, length))).long()


def layer_cosines(model: Transformer, tokens: torch.Tensor, cs: Sequence[float] = C_GRID) -> dict[str, Any]:
    """Return {curve: [{c, cosines: [per layer]}], layers: [{layer, cosine}] at c = 1}."""
    sat = representations(scaled(model, C_SAT, attention="saturated"), tokens)
    curve = []
    for c in cs:
        reps = representations(scaled(model, c, attention="softmax"), tokens)
        curve.append({"c": c, "cosines": [round(mean_cosine(r, s), 6) for r, s in zip(reps, sat, strict=True)]})
    at1 = next((row for row in curve if row["c"] == 1.0), None)
    if at1 is None:
        reps = representations(scaled(model, 1.0, attention="softmax"), tokens)
        at1 = {"cosines": [round(mean_cosine(r, s), 6) for r, s in zip(reps, sat, strict=True)]}
    return {"curve": curve, "layers": [{"layer": l, "cosine": c} for l, c in enumerate(at1["cosines"])]}


def head_spread(model: Transformer, tokens: torch.Tensor, c: float = C_SAT) -> list[dict[str, Any]]:
    """Return per head {layer, head, positions_above, fraction_of_visible, kind} for the model scaled by c."""
    m = scaled(model, c, attention="softmax")
    with torch.no_grad():
        _, cache = m.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    out = []
    n = tokens.shape[1]
    visible = (torch.arange(n, dtype=torch.float64) + 1) if m.cfg.causal else torch.full((n,), float(n))
    for layer in range(m.cfg.n_layers):
        pat = cache[f"blocks.{layer}.attn.hook_pattern"]  # [b, h, q, k]
        above = (pat > WEIGHT_FLOOR).sum(-1).double()  # [b, h, q]
        for h in range(m.cfg.n_heads):
            count = float(above[:, h].mean())
            frac = float((above[:, h] / visible).mean())
            kind = "argmax-like" if count <= 1.5 else ("mean-like" if frac >= 0.5 else "mixed")
            out.append({"layer": layer, "head": h, "positions_above": round(count, 3),
                        "fraction_of_visible": round(frac, 4), "kind": kind})
    return out


def param_norm(model: torch.nn.Module) -> float:
    """Return the l2 norm of all parameters together."""
    return math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in model.parameters()))


def meter(model: Transformer, tokens: torch.Tensor, cs: Sequence[float] = C_GRID) -> dict[str, Any]:
    """Return the meter's JSON-able result: {layers, heads, curve, param_norm, inputs}."""
    if model.cfg.attention != "softmax":
        raise BadInput(f"the meter scales a softmax model towards saturation; this model has {model.cfg.attention!r}"
                       " attention already")
    res = layer_cosines(model, tokens, cs)
    return {
        "layers": res["layers"],
        "heads": head_spread(model, tokens),
        "curve": res["curve"],
        "param_norm": round(param_norm(model), 4),
        "inputs": {"batch": int(tokens.shape[0]), "length": int(tokens.shape[1])},
    }


def exact_recipe(steps: int = 150) -> Any:
    """Return a training recipe (not registered) for a model the exact interpreter can run: MAJORITY on
    lengths 1..32 like ``majority-1l``, but no LayerNorm, ReLU MLP, no positional embedding (so its
    queries take one value per token and the exact run streams in O(n)), n_ctx 4096."""
    from assay.recipes import FormalData, Recipe, TrainParams

    return Recipe(
        name="majority-exact-1l",
        summary="MAJORITY, 1 layer, no LayerNorm, ReLU MLP, no positions: exactly interpretable when saturated",
        model=dict(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=4096, act_fn="relu",
                   normalization_type=None, positional_embedding_type="none", causal=True),
        train=TrainParams(steps=steps, batch_size=64, lr=3e-3, warmup_steps=min(50, steps // 4),
                          eval_every=max(1, steps), checkpoint_every=max(1, steps)),
        data=FormalData(language="majority", min_len=1, max_len=32),
    )


def training_run(recipe: Any = "majority-1l", steps: int = 300, every: int = 25, seed: int = 0,
                 log: Callable[[str], None] | None = None, keep: str | Path | None = None) -> dict[str, Any]:
    """Train ``recipe`` (a registered name or a Recipe) for ``steps`` with the project's loop and return
    the norm-growth record: {recipe, steps, points: [{step, param_norm, cosine (mean over layers, c = 1),
    loss}], model_dir}. The trained model is written to ``keep`` when given (else to a temporary
    directory, removed).
    """
    from assay.recipes import get_recipe
    from assay.train import train

    rec = get_recipe(recipe) if isinstance(recipe, str) else recipe
    recipe = rec.name
    if steps < 1 or every < 1:
        raise BadInput("steps and every must be >= 1")
    points: list[dict[str, Any]] = []
    probe: dict[str, torch.Tensor] = {}

    def callback(step: int, model: torch.nn.Module, record: dict[str, Any]) -> None:
        if step % every and step != steps and step != 1:
            return
        m = copy.deepcopy(model).eval()
        if "tokens" not in probe:
            probe["tokens"] = sample_inputs(m, batch=16, seed=seed + 1, card={"recipe": recipe})
        cos = layer_cosines(m, probe["tokens"], cs=(1.0,))["layers"]
        points.append({"step": step, "param_norm": round(param_norm(m), 4),
                       "cosine": round(sum(x["cosine"] for x in cos) / len(cos), 6),
                       "loss": float(record.get("loss", float("nan")))})
        if log:
            log(f"step {step}: norm {points[-1]['param_norm']:.2f}, cosine {points[-1]['cosine']:.3f}")

    tmp = Path(tempfile.mkdtemp(prefix="assay-meter-"))
    out = Path(keep) if keep is not None else tmp / "model"
    try:
        train(rec, steps=steps, out=out, seed=seed, progress=False, callback=callback)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        from assay.train import run_dir_for

        shutil.rmtree(run_dir_for(out), ignore_errors=True)
    return {"recipe": recipe, "steps": steps, "every": every, "points": points,
            "model_dir": str(out) if keep is not None else None}
