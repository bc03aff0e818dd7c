"""The model's answers to addition questions: per-digit loss, exact-match accuracy, accuracy per category.

Answers are read teacher-forced: the example (question + true answer) is run once and the argmax at
each answer-predicting position is the model's digit. A question counts as correct when every answer
digit is; this equals greedy generation's exact match (the first wrong digit is the same either way).
Digit arrays here are in token order, most significant first (``A_n .. A_0``), unless a name says
``units_first``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from assay.addition import rules
from assay.errors import BadInput
from assay.tasks import addition

HookList = Sequence[tuple[Any, Any]]


def n_digits_of(model: Any) -> int:
    """Return the operand length n of an addition model; BadInput if the model is not one.

    An addition model has the addition vocabulary (12 ids: digits, ``+``, ``=``), no text tokenizer,
    and a context of exactly 3n + 3 positions (question and answer) for some n >= 1.
    """
    cfg = model.cfg
    src = getattr(model, "source_dir", None)
    where = f"{src}: " if src else ""
    if cfg.d_vocab != addition.D_VOCAB or getattr(model, "tokenizer", None) is not None:
        raise BadInput(f"{where}model vocabulary has {cfg.d_vocab} ids"
                       f"{' and a text tokenizer' if getattr(model, 'tokenizer', None) is not None else ''}; "
                       f"an addition model has the {addition.D_VOCAB}-id vocabulary '0123456789+='")
    if cfg.n_ctx < 6 or cfg.n_ctx % 3:
        raise BadInput(f"{where}model context n_ctx={cfg.n_ctx} is not 3n + 3 for an n-digit addition model")
    return cfg.n_ctx // 3 - 1


def example_tensor(a: np.ndarray, b: np.ndarray, n_digits: int) -> torch.Tensor:
    """Return the examples' tokens [N, 3n + 3] (question and true answer) as a LongTensor."""
    return torch.from_numpy(addition.example_token_array(a, b, n_digits))


def answer_logits(
    model: Any, a: np.ndarray, b: np.ndarray, n_digits: int, hooks: HookList = (), chunk: int = 1024
) -> torch.Tensor:
    """Return float32 logits [N, n + 1, vocab] at the positions that predict the answer digits A_n .. A_0.

    ``hooks`` are (name or filter, fn) pairs active during the forward passes only.
    """
    tokens = example_tensor(a, b, n_digits)[:, :-1]  # the last answer token predicts nothing
    q = addition.question_length(n_digits)
    out = []
    with torch.no_grad():
        for i in range(0, len(tokens), chunk):
            logits = model.run_with_hooks(tokens[i : i + chunk], fwd_hooks=list(hooks))
            out.append(logits[:, q - 1 :].float())
    if not out:
        return torch.zeros(0, n_digits + 1, model.cfg.d_vocab)
    return torch.cat(out)


def answer_stats(
    model: Any, a: np.ndarray, b: np.ndarray, n_digits: int, hooks: HookList = (), chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Return (per-digit cross-entropy float [N, n + 1], predicted digits int [N, n + 1]), A_n first."""
    logits = answer_logits(model, a, b, n_digits, hooks, chunk)
    target = torch.from_numpy(addition.example_token_array(a, b, n_digits)[:, -(n_digits + 1) :])
    ce = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")
    return ce.numpy().astype(np.float64), logits.argmax(-1).numpy().astype(np.int64)


def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Return the Wilson score interval (95% by default) for k successes in n trials ((0, 1) if n = 0)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, centre - half)  # exact ends: rounding would leave 1e-19 above 0
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def summarize(ce: np.ndarray, correct_digits: np.ndarray, cats: np.ndarray, n_digits: int) -> dict[str, Any]:
    """Return accuracy (with Wilson CI), mean loss, per-digit loss/accuracy and the same per category.

    ``ce`` and ``correct_digits`` are [N, n + 1] in token order; ``cats`` holds category indices.
    """
    ok = correct_digits.all(axis=1)

    def block(mask: np.ndarray) -> dict[str, Any]:
        n = int(mask.sum())
        k = int(ok[mask].sum())
        lo, hi = wilson_interval(k, n)
        return {"n": n, "correct": k, "accuracy": k / n if n else None, "ci95": [lo, hi],
                "loss": float(ce[mask].mean()) if n else None}

    out = block(np.ones(len(ok), dtype=bool))
    out["per_digit"] = {
        f"A{n_digits - i}": {"loss": float(ce[:, i].mean()) if len(ce) else None,
                             "accuracy": float(correct_digits[:, i].mean()) if len(ce) else None}
        for i in range(n_digits + 1)
    }
    out["by_category"] = {c: block(cats == i) for i, c in enumerate(addition.CATEGORIES)}
    return out


def evaluate(model: Any, a: np.ndarray, b: np.ndarray, n_digits: int | None = None,
             hooks: HookList = (), progress: bool = False) -> dict[str, Any]:
    """Return :func:`summarize` of the model on the questions (a, b): accuracy, loss, by_category, per_digit.

    ``progress`` prints a progress line on stderr (questions done, rate) every chunk of 8,192.
    """
    n = n_digits_of(model) if n_digits is None else n_digits
    if progress and not hooks:
        from assay.addition.failures import model_answers

        ce, pred = model_answers(model, a, b, n, progress=True)
    else:
        ce, pred = answer_stats(model, a, b, n, hooks)
    truth = addition.example_token_array(a, b, n)[:, -(n + 1) :]
    return summarize(ce, pred == truth, rules.category_indices(a, b, n), n)


def read_questions(path: str | Path, n_digits: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the operands of a file of questions, one ``12345+67890`` a line (a trailing ``=`` allowed).

    Blank lines and lines starting with ``#`` are skipped. Each operand must have exactly n digits
    (questions are zero-padded, as the model sees them); anything else is BadInput naming the line.
    """
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"{path}: no such file")
    try:
        text = p.read_text()
    except UnicodeDecodeError:
        raise BadInput(f"{path}: not a text file") from None
    a: list[int] = []
    b: list[int] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        problem = _question_problem(line, n_digits)
        if problem:
            raise BadInput(f"{path} line {lineno}: {problem}: {line[:40]!r} (expected e.g. "
                           f"{'1' * n_digits}+{'2' * n_digits})")
        x, y = line.rstrip("=").split("+")
        a.append(int(x))
        b.append(int(y))
    if not a:
        raise BadInput(f"{path}: no questions")
    return np.array(a, dtype=np.int64), np.array(b, dtype=np.int64)


def _question_problem(line: str, n_digits: int) -> str | None:
    body = line[:-1] if line.endswith("=") else line
    if "+" not in body:
        return "missing '+'"
    parts = body.split("+")
    if len(parts) != 2:
        return "more than one '+'"
    for name, part in zip(("first", "second"), parts, strict=True):
        if not part.isascii() or not part.isdigit():
            return f"{name} operand is not all digits"
        if len(part) != n_digits:
            return f"{name} operand has {len(part)} digits, not {n_digits}"
    return None
