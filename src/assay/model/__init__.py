"""One model definition for every analysis: config, Transformer with hooks, files, importers."""

from assay.model.config import ModelConfig
from assay.model.hooks import ActivationCache, HookedRootModule, HookPoint, get_act_name
from assay.model.io import file_sha256, load, load_card, load_config, models_dir, save, shipped_models
from assay.model.transformer import Transformer


def __getattr__(name: str):
    # Importers pull in transformers (slow to import); load them only when asked.
    if name in ("from_hf_gpt2", "from_hf_bert", "from_hf_gpt_neox"):
        from assay.model import importers

        return getattr(importers, name)
    raise AttributeError(name)


__all__ = [
    "ActivationCache",
    "HookPoint",
    "HookedRootModule",
    "ModelConfig",
    "Transformer",
    "file_sha256",
    "from_hf_bert",
    "from_hf_gpt2",
    "from_hf_gpt_neox",
    "get_act_name",
    "load",
    "load_card",
    "load_config",
    "models_dir",
    "save",
    "shipped_models",
]
