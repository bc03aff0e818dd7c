"""Training an addition recipe with the one loop of :mod:`assay.train`, plus a fine per-digit training-loss log.

The loop's validation metrics (per-digit loss every ``eval_every`` steps) are too coarse to show the
phases in which the digits are learned. :func:`train_addition` runs the same loop (same weights, bit
for bit: nothing here touches the model, the optimizer or any random state) and, through a read-only
forward hook, records the cross-entropy of every answer digit and of each category on the training
batches themselves, averaged over windows of ``every`` steps. The log goes to
``<run dir>/train_digit_loss.jsonl`` while training and is copied into the model directory at the end.
A resumed run appends to it; readers keep the last record of each step.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from assay.addition import rules
from assay.fileutil import atomic_write_text
from assay.model import Transformer, models_dir
from assay.recipes import AdditionData, get_recipe
from assay.tasks import addition
from assay.train import run_dir_for, train

DIGIT_LOG = "train_digit_loss.jsonl"


class DigitLossLog:
    """Accumulate per-digit and per-category training loss over windows of steps; write JSON lines."""

    def __init__(self, path: Path, n_digits: int, every: int) -> None:
        self.path, self.n, self.every = path, n_digits, every
        self.pending: tuple[np.ndarray, np.ndarray] | None = None  # (ce [b, n+1], category [b]) of the last batch
        self.reset()

    def reset(self) -> None:
        """Start a new window."""
        self.sum_digit = np.zeros(self.n + 1)
        self.count = 0
        self.sum_cat = np.zeros(len(addition.CATEGORIES))
        self.count_cat = np.zeros(len(addition.CATEGORIES))

    def observe(self, tokens: torch.Tensor, logits: torch.Tensor) -> None:
        """Record the per-digit loss of one training forward pass (logits detached, no effect on training)."""
        n = self.n
        q = addition.question_length(n)
        if tokens.shape[1] != addition.example_length(n):
            return
        lg = logits.detach()[:, q - 1 : q + n].float()
        target = tokens[:, q:]
        ce = F.cross_entropy(lg.transpose(1, 2), target, reduction="none").numpy()
        powers = 10 ** np.arange(n - 1, -1, -1, dtype=np.int64)
        t = tokens.numpy()
        a = (t[:, :n] * powers).sum(axis=1)
        b = (t[:, n + 1 : 2 * n + 1] * powers).sum(axis=1)
        self.pending = (ce, rules.category_indices(a, b, n))

    def step_done(self, step: int) -> None:
        """Fold the last observed batch into the window; write a record every ``every`` steps."""
        if self.pending is None:
            return
        ce, cat = self.pending
        self.pending = None
        self.sum_digit += ce.sum(axis=0)
        self.count += ce.shape[0]
        per_q = ce.mean(axis=1)
        for i in range(len(addition.CATEGORIES)):
            m = cat == i
            self.sum_cat[i] += per_q[m].sum()
            self.count_cat[i] += m.sum()
        if step % self.every == 0 and self.count:
            rec: dict[str, Any] = {"step": step, "loss": float(self.sum_digit.sum() / self.count / (self.n + 1))}
            for i in range(self.n + 1):
                rec[f"loss_A{self.n - i}"] = float(self.sum_digit[i] / self.count)
            for i, c in enumerate(addition.CATEGORIES):
                if self.count_cat[i]:
                    rec[f"loss_{c}"] = float(self.sum_cat[i] / self.count_cat[i])
                    rec[f"n_{c}"] = int(self.count_cat[i])
            with self.path.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            self.reset()


def read_digit_log(path: str | Path) -> list[dict[str, Any]]:
    """Return the records of a per-digit training-loss log, one per step (the last one written), by step."""
    by_step: dict[int, dict[str, Any]] = {}
    p = Path(path)
    if not p.is_file():
        return []
    for line in p.read_text().splitlines():
        if line.strip():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut off by a crash
            by_step[int(rec["step"])] = rec
    return [by_step[s] for s in sorted(by_step)]


def train_addition(
    recipe_name: str = "addition-1l",
    steps: int | None = None,
    out: str | Path | None = None,
    seed: int | None = None,
    resume: bool = False,
    every: int = 10,
    progress: bool = True,
) -> Path:
    """Train an addition recipe with :func:`assay.train.train` plus the per-digit log; return the model directory."""
    recipe = get_recipe(recipe_name)
    if not isinstance(recipe.data, AdditionData):
        from assay.errors import BadInput

        raise BadInput(f"recipe {recipe_name!r} is not an addition recipe")
    out = Path(out) if out is not None else models_dir() / recipe.name
    run_dir = run_dir_for(out)
    log_path = run_dir / DIGIT_LOG
    if not resume:
        log_path.unlink(missing_ok=True)
    log = DigitLossLog(log_path, recipe.data.n_digits, every)

    def hook(module: torch.nn.Module, args: tuple, output: Any) -> None:
        if isinstance(module, Transformer) and torch.is_grad_enabled() and args:
            log.observe(args[0], output)

    def callback(step: int, model: torch.nn.Module, record: dict[str, Any]) -> None:
        log.step_done(step)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        path = train(recipe, steps=steps, out=out, seed=seed, resume=resume, progress=progress, callback=callback)
    finally:
        handle.remove()
    if log_path.is_file():
        final = json.loads((path / "card.json").read_text()).get("steps") if (path / "card.json").is_file() else None
        # a run stopped after its last checkpoint and resumed may have logged steps past the end
        rows = [r for r in read_digit_log(log_path) if final is None or r["step"] <= final]
        tmp = path / (DIGIT_LOG + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tmp.replace(path / DIGIT_LOG)
    _record_time_to_loss(path)
    return path


def digit_log_gaps(digit_log: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """Return the (step, next logged step) pairs of a per-digit log farther apart than its stride (the
    least step difference): the steps in between were not logged, e.g. in a log assembled from runs."""
    steps = [r["step"] for r in digit_log]
    diffs = [b - a for a, b in zip(steps, steps[1:], strict=False) if b > a]
    stride = min(diffs, default=None)
    return [(a, b) for a, b in zip(steps, steps[1:], strict=False) if stride and b - a > stride]


def logged_prefix(digit_log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return the records of a per-digit log up to its first gap (all of them if it has none): the part
    from which first crossings (phases, time to a loss) can be dated."""
    gaps = digit_log_gaps(digit_log)
    return [r for r in digit_log if not gaps or r["step"] <= gaps[0][0]]


def time_to_loss(history: list[dict[str, Any]], digit_log: list[dict[str, Any]], target: float,
                 seconds_per_step: float | None) -> dict[str, Any]:
    """Return when training first reached ``target`` loss: on validation (every eval_every steps) and on the
    training batches (10-step means from the digit log). ``reached`` is False (and ``note`` says so) when
    neither did; ``lowest_validation`` / ``lowest_training_batches`` give how close training came.

    If the digit log has gaps (``digit_log_gaps``: steps not logged, e.g. a log assembled from two runs
    of the same recipe), a training-batch hit after the first gap is not reported: it would be late.

    Wall seconds are estimated as step x the run's mean seconds per step (``card wall_seconds / steps``):
    the ``wall_seconds`` inside the loop's history records count each session's elapsed time twice
    (assay.train adds the elapsed time to a total that already includes it), so they are not used.
    """
    val = next((r for r in history if r.get("val_loss", float("inf")) <= target), None)
    # A log pieced together from runs (steps missing in between) cannot date a first hit after a gap.
    gaps = digit_log_gaps(digit_log)
    train_hit = next((r for r in logged_prefix(digit_log) if r.get("loss", float("inf")) <= target), None)

    def at(step: int) -> dict[str, Any]:
        return {"step": step, "wall_seconds": round(step * seconds_per_step, 1) if seconds_per_step else None}

    val_recs = [r for r in history if "val_loss" in r]
    best_val = min(val_recs, key=lambda r: r["val_loss"], default=None)
    best_train = min((r for r in digit_log if "loss" in r), key=lambda r: r["loss"], default=None)
    reached = val is not None or train_hit is not None
    last = max([r["step"] for r in val_recs] + [r["step"] for r in digit_log], default=None)
    return {
        "target_loss": target,
        "reached": reached,
        "validation": at(val["step"]) if val else None,
        "training_batches": at(train_hit["step"]) if train_hit else None,
        "lowest_validation": {"step": best_val["step"], "val_loss": best_val["val_loss"]} if best_val else None,
        "lowest_training_batches": {"step": best_train["step"], "loss": best_train["loss"]} if best_train else None,
        "note": None if reached else f"loss {target} was not reached in {last} steps",
        "digit_log_gaps": [{"after_step": a, "next_step": b} for a, b in gaps],
        "wall_seconds_estimate": "step x card wall_seconds / steps",
    }


def _record_time_to_loss(model_dir: Path, target: float = 0.01) -> None:
    card_path = model_dir / "card.json"
    if not card_path.is_file():
        return
    card = json.loads(card_path.read_text())
    steps, wall = card.get("steps"), card.get("wall_seconds")
    per_step = wall / steps if steps and wall else None
    card["time_to_loss"] = time_to_loss(card.get("history", []), read_digit_log(model_dir / DIGIT_LOG), target,
                                        per_step)
    atomic_write_text(card_path, json.dumps(card, indent=2, sort_keys=True) + "\n")


def copy_digit_log(src_model: str | Path, dst_model: str | Path) -> None:
    """Copy a model directory's per-digit training log to another model directory (if it has one)."""
    src = Path(src_model) / DIGIT_LOG
    if src.is_file():
        shutil.copyfile(src, Path(dst_model) / DIGIT_LOG)
