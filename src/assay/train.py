"""The one training loop for every shipped model: ``run_recipe(name)`` behind ``assay train RECIPE``.

AdamW; linear warmup then constant or cosine learning rate; global grad-norm clipping; a fixed seed
for torch, numpy and Python; a progress bar on stderr; validation metrics as JSON lines; periodic
checkpoints (model, optimizer, step, RNG states) so that ``resume=True`` continues an interrupted run
and ends with exactly the weights an uninterrupted run would have; and at the end
``assay.model.save(model, out, card=...)``.

Files: the model goes to ``out`` (default ``models/<recipe>``); the run's working files go to the
hidden sibling ``.<out name>.run/`` (``checkpoint.pt``, ``metrics.jsonl``, ``tokenizer.json``), which
``models/.*`` keeps out of git.

Determinism: the batch of step s is drawn from ``numpy.random.default_rng([seed, s])``, so the data
never depends on how a run was split into sessions; the model's initial weights come from
``torch.manual_seed(seed)``. Resumed runs must use the same number of torch threads to be
bit-identical (float sums depend on the order of reduction).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import assay
from assay.errors import BadInput
from assay.fileutil import check_output_dir
from assay.model import ModelConfig, Transformer, models_dir, save
from assay.recipes import IGNORE, Recipe, TrainParams, get_recipe

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


def run_recipe(
    name: str,
    steps: int | None = None,
    out: str | Path | None = None,
    seed: int | None = None,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Train the registered recipe ``name`` and return the model directory written.

    ``steps`` and ``seed`` override the recipe's; ``out`` defaults to ``models/<name>``; ``resume``
    continues from the run's last checkpoint. Unknown recipe: BadInput listing the known ones.
    """
    return train(get_recipe(name), steps=steps, out=out, seed=seed, resume=resume, progress=progress)


def run_dir_for(out: str | Path) -> Path:
    """Return the directory of a run's checkpoint, metrics log and tokenizer: ``.<out name>.run`` beside out."""
    out = Path(out)
    return out.parent / f".{out.name}.run"


def lr_at(step: int, p: TrainParams) -> float:
    """Return the learning rate of optimizer step ``step`` (0-based): linear warmup, then constant or cosine.

    Warmup: lr * (step + 1) / warmup_steps. Cosine: from lr at the end of warmup down to
    lr * min_lr_ratio at the last step.
    """
    if step < p.warmup_steps:
        return p.lr * (step + 1) / p.warmup_steps
    if p.schedule == "constant":
        return p.lr
    span = max(1, p.steps - 1 - p.warmup_steps)
    frac = min(1.0, (step - p.warmup_steps) / span)
    return p.lr * (p.min_lr_ratio + (1 - p.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def seed_everything(seed: int) -> None:
    """Seed torch, numpy's legacy global generator and Python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def make_optimizer(model: torch.nn.Module, p: TrainParams) -> torch.optim.AdamW:
    """Return AdamW over the model; weight decay on matrices (``W_*``) only unless ``decay_all``."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        (decay if p.decay_all or leaf.startswith("W_") else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": p.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=p.lr, betas=tuple(p.betas), eps=p.adam_eps)


class ProgressBar:
    """A one-line progress bar on stderr: rewritten in place on a terminal, a line every ~30 s otherwise."""

    def __init__(self, label: str, total: int, initial: int = 0, enabled: bool = True, stream=None) -> None:
        self.label, self.total, self.enabled = label, total, enabled
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start_step, self.start = initial, time.perf_counter()
        self.last_draw = 0.0
        self.step = initial

    def update(self, step: int, info: str = "", force: bool = False) -> None:
        """Show progress at ``step`` with extra text ``info`` (throttled unless ``force``)."""
        self.step = step
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self.last_draw < (0.2 if self.tty else 30.0) and step < self.total:
            return
        self.last_draw = now
        rate = (step - self.start_step) / max(now - self.start, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        width = 24
        filled = int(width * step / max(self.total, 1))
        bar = "#" * filled + "-" * (width - filled)
        line = (f"{self.label} [{bar}] {step}/{self.total} {rate:.2f} step/s "
                f"eta {_clock(eta)} {info}").rstrip()
        if self.tty:
            self.stream.write("\r" + line[:160].ljust(100))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """Print a line of text without breaking the bar."""
        if not self.enabled:
            return
        self.stream.write(("\r\033[K" if self.tty else "") + text + "\n")
        self.stream.flush()
        self.last_draw = 0.0

    def close(self) -> None:
        """End the bar's line."""
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class _StopFlag:
    """Turn SIGINT/SIGTERM into a flag the loop checks between steps (a second signal stops at once)."""

    def __init__(self) -> None:
        self.stop = False
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.stop:
            raise KeyboardInterrupt
        self.stop = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _comparable(params: dict[str, Any]) -> dict[str, Any]:
    # Everything but the number of steps must match for a resume to continue the same run.
    return {**params, "train": {k: v for k, v in params["train"].items() if k != "steps"}}


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=list))


def train(
    recipe: Recipe,
    *,
    steps: int | None = None,
    out: str | Path | None = None,
    seed: int | None = None,
    resume: bool = False,
    progress: bool = True,
    callback: Callable[[int, torch.nn.Module, dict[str, Any]], None] | None = None,
) -> Path:
    """Train ``recipe`` and return the model directory; see :func:`run_recipe` for the arguments.

    ``callback(step, model, record)`` is called after every optimizer step (``record``: the step's
    loss, lr and grad norm); an exception it raises aborts the run like a crash would.
    """
    overrides: dict[str, Any] = {}
    if steps is not None:
        overrides["steps"] = steps
    if seed is not None:
        overrides["seed"] = seed
    try:
        p = dataclasses.replace(recipe.train, **overrides)
    except TypeError as e:
        raise BadInput(f"bad override: {e}") from None
    recipe = dataclasses.replace(recipe, train=p)
    out = Path(out) if out is not None else models_dir() / recipe.name
    check_output_dir(out, "config.json", "model")
    run_dir = run_dir_for(out)
    ckpt_file = run_dir / CHECKPOINT
    params = _jsonable(recipe.params())

    ckpt = None
    if resume:
        if not ckpt_file.is_file():
            raise BadInput(f"nothing to resume: no checkpoint at {ckpt_file}")
        ckpt = torch.load(ckpt_file, map_location="cpu", weights_only=False)
        if ckpt.get("recipe") != recipe.name or _comparable(ckpt["params"]) != _comparable(params):
            raise BadInput(f"{ckpt_file} was written by a different recipe or different parameters; "
                           "run without --resume to start over")
        if ckpt["params"]["train"]["steps"] != p.steps and p.schedule != "constant":
            print(f"note: resuming with steps={p.steps} instead of {ckpt['params']['train']['steps']}: "
                  "the cosine schedule changes from here", file=sys.stderr)
    else:
        if ckpt_file.is_file() and progress:
            print(f"note: starting over; the checkpoint in {run_dir} will be replaced", file=sys.stderr)
        shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)

    seed_everything(p.seed)
    data = recipe.data.build(run_dir, resume=ckpt is not None)
    cfg = ModelConfig(**recipe.model, d_vocab=data.d_vocab, model_name=recipe.name)
    torch.manual_seed(p.seed)
    model = Transformer(cfg)
    opt = make_optimizer(model, p)

    state = {"step": 0, "wall_seconds": 0.0, "train_seconds": 0.0, "tokens_seen": 0, "examples_seen": 0,
             "sessions": 1, "history": [], "git_commit": _git_commit()}
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
        state["sessions"] += 1
        torch.set_rng_state(ckpt["rng"]["torch"])
        np.random.set_state(ckpt["rng"]["numpy"])
        random.setstate(ckpt["rng"]["python"])
    # The metrics log must agree with the checkpoint: drop what a crashed session logged after it.
    log_file = run_dir / METRICS
    log_file.write_text("".join(json.dumps(r) + "\n" for r in state["history"]))

    def checkpoint() -> None:
        _atomic_torch_save({
            "recipe": recipe.name, "params": params, "state": state,
            "model": model.state_dict(), "optimizer": opt.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
            "torch_version": torch.__version__, "num_threads": torch.get_num_threads(),
        }, ckpt_file)

    bar = ProgressBar(recipe.name, p.steps, state["step"], enabled=progress)

    def evaluate(step: int, window: list[dict[str, float]]) -> dict[str, Any]:
        model.eval()
        record: dict[str, Any] = {"step": step}
        if window:
            record["train_loss"] = float(np.mean([w["loss"] for w in window]))
            record["grad_norm"] = float(np.mean([w["grad_norm"] for w in window]))
            record["lr"] = window[-1]["lr"]
        record.update(data.metrics(model))
        # wall time of the whole run so far: earlier sessions plus this one (state["wall_seconds"] is
        # already updated to "now" inside the loop, so it must not be added to this session's time again)
        record["wall_seconds"] = round(wall_at_start + time.perf_counter() - session_start, 3)
        model.train()
        state["history"].append(record)
        with log_file.open("a") as f:
            f.write(json.dumps(record) + "\n")
        bar.message(f"{recipe.name} step {step}: " + " ".join(
            f"{k}={v:.4g}" for k, v in record.items() if k not in ("step", "wall_seconds") and isinstance(v, float)
        ))
        return record

    session_start = time.perf_counter()
    wall_at_start = state["wall_seconds"]
    window: list[dict[str, float]] = []
    if state["step"] == 0 and not state["history"]:
        evaluate(0, window)
    model.train()
    ema = None
    try:
        with _StopFlag() as stop:
            for step in range(state["step"], p.steps):
                t0 = time.perf_counter()
                tokens, targets = data.batch(np.random.default_rng([p.seed, step]), p.batch_size)
                lr = lr_at(step, p)
                for group in opt.param_groups:
                    group["lr"] = lr
                logits = model(tokens)
                loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if p.grad_clip is not None:
                    gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip))
                else:
                    gnorm = float(torch.linalg.vector_norm(
                        torch.stack([q.grad.norm() for q in model.parameters() if q.grad is not None])))
                opt.step()
                state["train_seconds"] += time.perf_counter() - t0
                state["step"] = step + 1
                state["tokens_seen"] += tokens.numel()
                state["examples_seen"] += tokens.shape[0]
                rec = {"loss": loss.item(), "lr": lr, "grad_norm": gnorm}
                window.append(rec)
                ema = rec["loss"] if ema is None else 0.95 * ema + 0.05 * rec["loss"]
                bar.update(step + 1, f"loss {ema:.4f} lr {lr:.2e}")
                state["wall_seconds"] = wall_at_start + time.perf_counter() - session_start
                if (step + 1) % p.eval_every == 0 or step + 1 == p.steps:
                    evaluate(step + 1, window)
                    window = []
                state["wall_seconds"] = wall_at_start + time.perf_counter() - session_start
                if (step + 1) % p.checkpoint_every == 0 or step + 1 == p.steps:
                    checkpoint()
                if callback is not None:
                    callback(step + 1, model, rec)
                if stop.stop:
                    checkpoint()
                    bar.message(f"{recipe.name}: stopped at step {step + 1}; checkpoint saved, continue with --resume")
                    raise KeyboardInterrupt
    finally:
        bar.close()

    state["wall_seconds"] = wall_at_start + time.perf_counter() - session_start
    final = state["history"][-1]
    metrics = {k: v for k, v in final.items() if k not in ("step", "wall_seconds")}
    ts = max(state["train_seconds"], 1e-9)
    card = {
        "recipe": recipe.name,
        "summary": recipe.summary,
        "notes": recipe.notes,
        "command": f"assay train {recipe.name} --steps {p.steps} --seed {p.seed}",
        "params": params,
        "seed": p.seed,
        "steps": p.steps,
        "data": data.describe(),
        "metrics": metrics,
        "history": state["history"],
        "wall_seconds": round(state["wall_seconds"], 2),
        "train_seconds": round(state["train_seconds"], 2),
        "sessions": state["sessions"],
        "throughput": {
            "steps_per_second": round(p.steps / ts, 3),
            "examples_per_second": round(state["examples_seen"] / ts, 1),
            "tokens_per_second": round(state["tokens_seen"] / ts, 1),
            "num_threads": torch.get_num_threads(),
        },
        "n_parameters": sum(q.numel() for q in model.parameters()),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "assay_version": assay.__version__,
        "git_commit": state.get("git_commit"),  # HEAD when the run started
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    model.eval()
    model.tokenizer = data.tokenizer
    return save(model, out, card=_jsonable(card))
