"""Shared fixtures: small configs of every option combination, random-weight models, a model directory.

Kept generic so that any test module can use them:

- ``option_combo`` (parametrized): one dict per valid combination of the model's options; a test that
  takes this argument runs once per combination (see :func:`pytest_generate_tests`).
- ``small_config(**overrides)``: a tiny :class:`ModelConfig` (2 layers, d_model 12, 3 heads of 4).
- ``random_model(cfg, seed=0, scale=0.5, dtype=torch.float64)``: a :class:`Transformer` whose every
  parameter, biases and LayerNorm gains included, is random, so no term of the forward pass hides
  behind a zero bias or a unit gain.
- ``model_dir``: a path in a fresh temporary directory where a model may be saved (not yet created).
"""

from __future__ import annotations

import itertools

import pytest
import torch

from assay.model import ModelConfig, Transformer

SMALL = dict(n_layers=2, d_model=12, n_heads=3, d_head=4, d_vocab=11, n_ctx=10, d_mlp=20)

OPTIONS: dict[str, tuple] = {
    "attention": ("softmax", "saturated", "hard"),
    "positional_embedding_type": ("standard", "rotary", "none"),
    "normalization_type": ("LN", None),
    "act_fn": ("relu", "gelu", "gelu_new"),
    "attn_only": (False, True),
    "causal": (True, False),
    "ln_position": ("pre", "post"),
    "parallel_attn_mlp": (False, True),
}


def option_combinations() -> list[dict]:
    """Every combination of OPTIONS that the design allows.

    The rules are written out here rather than read from ModelConfig's validation, so that a config
    the model wrongly refuses shows up as a failure instead of a silently skipped case.
    """
    combos = []
    for values in itertools.product(*OPTIONS.values()):
        opts = dict(zip(OPTIONS, values, strict=True))
        if opts["ln_position"] == "post" and opts["normalization_type"] is None:
            continue  # post-LN without LN is not a thing
        if opts["parallel_attn_mlp"] and (opts["attn_only"] or opts["ln_position"] == "post"):
            continue  # parallel attention + MLP needs an MLP and pre-LN
        combos.append(opts)
    return combos


def combo_id(opts: dict) -> str:
    return "-".join(
        [
            opts["attention"],
            opts["positional_embedding_type"],
            f"norm{opts['normalization_type']}",
            opts["act_fn"],
            "attnonly" if opts["attn_only"] else "mlp",
            "causal" if opts["causal"] else "bidir",
            f"{opts['ln_position']}LN",
            "parallel" if opts["parallel_attn_mlp"] else "serial",
        ]
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "option_combo" in metafunc.fixturenames:
        combos = option_combinations()
        metafunc.parametrize("option_combo", combos, ids=[combo_id(c) for c in combos])


def make_small_config(**overrides) -> ModelConfig:
    return ModelConfig(**{**SMALL, **overrides})


def make_random_model(
    cfg: ModelConfig, seed: int = 0, scale: float = 0.5, dtype: torch.dtype = torch.float64
) -> Transformer:
    model = Transformer(cfg).to(dtype)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64) * scale
            # LayerNorm gains near 1 so that no LayerNorm wipes out its input.
            p.copy_(noise + 1.0 if name.endswith(".w") else noise)
    return model.eval()


@pytest.fixture(scope="session")
def small_config():
    return make_small_config


@pytest.fixture(scope="session")
def random_model():
    return make_random_model


@pytest.fixture
def model_dir(tmp_path):
    return tmp_path / "model"
