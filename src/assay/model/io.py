"""Models on disk: a directory of ``config.json`` + ``model.safetensors`` (+ ``tokenizer.json``, ``card.json``).

``save`` writes into a temporary sibling directory and renames it into place, so a failure never
leaves a half-written model. ``load`` refuses anything missing, truncated or mismatched with a
one-line :class:`~assay.errors.BadInput`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from assay.errors import BadInput
from assay.model.config import ModelConfig
from assay.model.transformer import Transformer

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TOKENIZER = "tokenizer.json"
CARD = "card.json"


def models_dir() -> Path:
    """Return the directory of shipped models: ``$ASSAY_MODELS`` or the repository's ``models/``."""
    env = os.environ.get("ASSAY_MODELS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "models"


def shipped_models() -> list[str]:
    """Return the names of the shipped models (directories under :func:`models_dir` with a config)."""
    root = models_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / CONFIG).is_file())


def resolve(path_or_name: str | os.PathLike) -> Path:
    """Return the model directory for a path or a shipped model's name; BadInput if there is none."""
    p = Path(path_or_name)
    if p.is_dir():
        return p
    named = models_dir() / str(path_or_name)
    if "/" not in str(path_or_name) and named.is_dir():
        return named
    known = ", ".join(shipped_models()) or "none yet"
    if p.exists():
        raise BadInput(f"{path_or_name}: not a model directory (expected {CONFIG} + {WEIGHTS})")
    raise BadInput(
        f"unknown model {str(path_or_name)!r}: not a directory and not a shipped model (shipped: {known}); "
        "nothing is downloaded, so pass a local directory"
    )


def file_sha256(path: str | os.PathLike) -> str:
    """Return the hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save(model: Transformer, directory: str | os.PathLike, card: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (and its tokenizer and card, if any) to ``directory``, atomically; return the path.

    An existing directory at that path is replaced only once the new one is fully written.
    """
    from safetensors.torch import save_file

    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    old = target.with_name(f".{target.name}.old")
    moved_away = False
    try:
        (tmp / CONFIG).write_text(model.cfg.to_json() + "\n")
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt", "library": "assay"})
        tok = getattr(model, "tokenizer", None)
        if tok is not None:
            tok.save(str(tmp / TOKENIZER))
        if card is not None:
            (tmp / CARD).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            moved_away = True
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if moved_away and not target.exists():  # failed between the two renames: put the old model back
            old.rename(target)
        raise
    return target


def load_config(path_or_name: str | os.PathLike) -> ModelConfig:
    """Return the :class:`ModelConfig` of a model directory or shipped model."""
    d = resolve(path_or_name)
    f = d / CONFIG
    if not f.is_file():
        raise BadInput(f"{d}: missing {CONFIG}")
    try:
        return ModelConfig.from_dict(json.loads(f.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise BadInput(f"{f}: corrupt config ({_one_line(e)})") from None


def load(path_or_name: str | os.PathLike, dtype: torch.dtype | None = None) -> Transformer:
    """Return the model stored at a directory (or under a shipped model's name), in eval mode.

    The weights keep their stored dtype unless ``dtype`` is given. The model's ``source_dir`` and
    ``weights_sha256`` are set, and ``tokenizer`` (a ``tokenizers.Tokenizer``) where the directory has one.
    Raises BadInput when a file is missing, truncated, or does not match the config.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = resolve(path_or_name)
    cfg = load_config(d)
    wf = d / WEIGHTS
    if not wf.is_file():
        raise BadInput(f"{d}: missing {WEIGHTS}")
    try:
        state = load_file(str(wf))
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise BadInput(f"{wf}: unreadable or truncated weights ({_one_line(e)})") from None
    model = Transformer(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise BadInput(
            f"{wf}: weights do not match {CONFIG} (missing: {', '.join(missing[:3]) or 'none'}; "
            f"unexpected: {', '.join(extra[:3]) or 'none'})"
        )
    for k, shape in expected.items():
        if tuple(state[k].shape) != shape:
            raise BadInput(f"{wf}: {k} has shape {tuple(state[k].shape)}, config says {shape}")
        if not torch.isfinite(state[k]).all():
            raise BadInput(f"{wf}: {k} holds non-finite values")
    stored = {v.dtype for v in state.values()}
    model = model.to(dtype or (torch.float64 if torch.float64 in stored else torch.float32))
    model.load_state_dict(state)
    model.eval()
    model.source_dir = d
    model.weights_sha256 = file_sha256(wf)
    tf = d / TOKENIZER
    if tf.is_file():
        from tokenizers import Tokenizer

        try:
            model.tokenizer = Tokenizer.from_file(str(tf))
        except Exception as e:  # tokenizers raises its own Exception type
            raise BadInput(f"{tf}: unreadable tokenizer ({_one_line(e)})") from None
    return model


def load_card(path_or_name: str | os.PathLike) -> dict[str, Any] | None:
    """Return a model's ``card.json`` as a dict, or None when it has none."""
    f = resolve(path_or_name) / CARD
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise BadInput(f"{f}: corrupt card ({_one_line(e)})") from None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:200]
