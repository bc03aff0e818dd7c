"""What a trained addition model's card says about its training, and recording evaluations in the card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from assay.errors import BadInput
from assay.fileutil import atomic_write_text

CARD_EVAL_KEY = "eval_random"


def training_facts(card: dict[str, Any], target_loss: float = 0.01) -> dict[str, Any]:
    """Return steps, final validation metrics, throughput and the first evaluation at which val loss <= target.

    ``time_to_target``: step of the first validation record with ``val_loss <= target_loss`` (validation
    runs every ``eval_every`` steps, so this is an upper bound at that resolution) and its wall time
    estimated at the run's mean rate, or None. (The loop's per-record ``wall_seconds`` double-count each
    session's time, so they are not used.)
    """
    hist = card.get("history", [])
    hit = next((r for r in hist if r.get("val_loss", float("inf")) <= target_loss), None)
    thr = card.get("throughput", {})
    train = card.get("params", {}).get("train", {})
    return {
        "steps": card.get("steps"),
        "paper_steps": "5K (notebook), ~30K implied elsewhere",
        "val_loss": card.get("metrics", {}).get("val_loss"),
        "val_accuracy": card.get("metrics", {}).get("val_accuracy"),
        "questions_per_second": thr.get("examples_per_second"),
        "steps_per_second": thr.get("steps_per_second"),
        "num_threads": thr.get("num_threads"),
        "wall_seconds": card.get("wall_seconds"),
        "train_seconds": card.get("train_seconds"),
        "sessions": card.get("sessions"),
        "eval_every": train.get("eval_every"),
        "target_loss": target_loss,
        "time_to_target": {"step": hit["step"], "wall_seconds": _wall_at(card, hit["step"])} if hit else None,
        "time_to_loss": card.get("time_to_loss"),
        "n_parameters": card.get("n_parameters"),
        CARD_EVAL_KEY: card.get(CARD_EVAL_KEY),
    }


def _wall_at(card: dict[str, Any], step: int) -> float | None:
    steps, wall = card.get("steps"), card.get("wall_seconds")
    return round(step * wall / steps, 1) if steps and wall else None


def record_eval(model_dir: str | Path, result: dict[str, Any]) -> Path:
    """Write ``result`` into the model's card.json under ``eval_random`` (atomically); return the card path."""
    path = Path(model_dir) / "card.json"
    if not path.is_file():
        raise BadInput(f"{model_dir}: has no card.json to record the evaluation in")
    try:
        card = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BadInput(f"{path}: corrupt card ({e})") from None
    card[CARD_EVAL_KEY] = result
    atomic_write_text(path, json.dumps(card, indent=2, sort_keys=True) + "\n")
    return path
