"""The model's failures among many random questions, and look-back rules compared with it question by question.

:func:`failure_analysis` runs the model on N uniform random questions, keeps every wrong answer with
its category, its wrong digits and the length of its sum-9 run, and tests the paper's two-column
look-back rule against the model: on every question, does the rule's answer equal the model's? On the
failures, does the model give exactly the rule's wrong answer?

The *declared algorithm* is the paper's account written as code: per column, BA, MC1 and MS9 (the
sub-results the heads are found to carry), combined as the two-column rule says. :func:`compare_algorithms`
compares it, the one-column rule (carry = MC1 of the column below only) and exact addition with the
model, per question and per answer digit.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

from assay.addition import rules
from assay.addition.evaluate import answer_stats, summarize
from assay.tasks import addition

ALGORITHMS = {"one-column look-back": 1, "declared (two-column look-back)": 2}


def model_answers(model: Any, a: np.ndarray, b: np.ndarray, n_digits: int, chunk: int = 8192,
                  progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Return (per-digit loss [N, n + 1], predicted digits [N, n + 1]) in token order (A_n first), in chunks."""
    ces, preds = [], []
    start = time.perf_counter()
    for i in range(0, len(a), chunk):
        ce, pred = answer_stats(model, a[i : i + chunk], b[i : i + chunk], n_digits)
        ces.append(ce)
        preds.append(pred)
        if progress:
            done = min(len(a), i + chunk)
            rate = done / max(1e-9, time.perf_counter() - start)
            print(f"\r  model answers {done}/{len(a)} ({rate:.0f} questions/s)", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return np.concatenate(ces), np.concatenate(preds)


def token_order_to_int(d: np.ndarray) -> np.ndarray:
    """Return the integers whose digits, most significant first, are d [N, m]."""
    return rules.digits_to_int(d[:, ::-1])


def failure_analysis(model: Any, a: np.ndarray, b: np.ndarray, n_digits: int,
                     ce: np.ndarray | None = None, pred: np.ndarray | None = None,
                     max_listed: int = 200, progress: bool = False) -> dict[str, Any]:
    """Return the classified failures among the questions (a, b) and the two-column rule's agreement.

    Keys: ``n``, ``summary`` (accuracy, per category, Wilson intervals), ``n_wrong``,
    ``wrong_by_category``, ``cascade_share`` (of the wrong answers), ``wrong_by_digit``,
    ``wrong_by_us9_run``, ``rule`` (agreement of the two-column rule with the model: on all questions,
    on the failures, on cascades, and how many failures the rule reproduces digit for digit), and
    ``examples`` (up to ``max_listed`` wrong answers).
    """
    if ce is None or pred is None:
        ce, pred = model_answers(model, a, b, n_digits, progress=progress)
    truth = addition.example_token_array(a, b, n_digits)[:, -(n_digits + 1) :]
    cats = rules.category_indices(a, b, n_digits)
    ok_digits = pred == truth
    ok = ok_digits.all(axis=1)
    model_int = token_order_to_int(pred)
    rule_int = rules.two_column_rule(a, b, n_digits)
    exact = a + b
    wrong = ~ok
    runs = rules.longest_us9_runs(a, b, n_digits)
    cascade = cats == rules.CATEGORY_INDEX["cascade"]
    rule_wrong = rule_int != exact

    def rate(mask: np.ndarray) -> dict[str, Any]:
        n = int(mask.sum())
        k = int((model_int[mask] == rule_int[mask]).sum())
        return {"n": n, "agree": k, "rate": k / n if n else None}

    examples = []
    for idx in np.nonzero(wrong)[0][:max_listed]:
        examples.append({
            "question": f"{int(a[idx]):0{n_digits}d}+{int(b[idx]):0{n_digits}d}",
            "answer": int(exact[idx]), "model": int(model_int[idx]), "rule": int(rule_int[idx]),
            "category": addition.CATEGORIES[int(cats[idx])], "us9_run": int(runs[idx]),
            "wrong_digits": [f"A{n_digits - i}" for i in np.nonzero(~ok_digits[idx])[0]],
        })
    n_wrong = int(wrong.sum())
    return {
        "n": int(len(a)),
        "summary": summarize(ce, ok_digits, cats, n_digits),
        "n_wrong": n_wrong,
        "wrong_by_category": {c: int((wrong & (cats == i)).sum()) for i, c in enumerate(addition.CATEGORIES)},
        "cascade_share": float((wrong & cascade).sum() / n_wrong) if n_wrong else None,
        "cascade_rate": float(cascade.mean()),
        "wrong_by_digit": {f"A{n_digits - i}": int((~ok_digits[:, i]).sum()) for i in range(n_digits + 1)},
        "wrong_by_us9_run": {str(r): int((wrong & (runs == r)).sum()) for r in range(int(runs.max()) + 1)},
        "digit_errors": digit_error_kinds(a, b, pred, n_digits),
        "rule": {
            "all": rate(np.ones(len(a), dtype=bool)),
            "model_wrong": rate(wrong),
            "cascade": rate(cascade),
            "not_cascade": rate(~cascade),
            "rule_wrong": rate(rule_wrong),
            "rule_wrong_equals_cascade": bool(np.array_equal(rule_wrong, cascade)),
            "model_wrong_and_rule_wrong": int((wrong & rule_wrong).sum()),
            "model_wrong_rule_right": int((wrong & ~rule_wrong).sum()),
            "model_right_rule_wrong": int((ok & rule_wrong).sum()),
        },
        "examples": examples,
    }


ERROR_KINDS = (
    "false carry, column below sums to 9",
    "false carry, other",
    "missed carry made in the column below (MC1)",
    "missed carry passed through one sum-9 column",
    "missed carry passed through two or more sum-9 columns",
    "other digit",
)


def digit_error_kinds(a: np.ndarray, b: np.ndarray, pred: np.ndarray, n_digits: int) -> dict[str, Any]:
    """Return counts of wrong answer digits by kind, and per answer digit.

    A wrong digit A_k is a *false carry* when the model wrote BA_k + 1 with no carry into column k (split
    by whether column k-1 sums to 9: a sum-9 column mistaken for a carry), a *missed carry* when it wrote
    BA_k while a carry was due (split by how far the carry came: made in column k-1, passed through one
    sum-9 column, or through two or more), and *other* otherwise.
    """
    sr = rules.sub_results(a, b, n_digits)
    carry = rules.carries(a, b, n_digits)
    ba = np.zeros((len(a), n_digits + 1), dtype=np.int64)
    ba[:, :n_digits] = sr["BA"]
    ms9 = np.zeros((len(a), n_digits + 1), dtype=bool)
    ms9[:, 1:] = sr["MS9"]  # ms9[:, k]: column k-1 sums to 9
    mc1 = np.zeros((len(a), n_digits + 1), dtype=bool)
    mc1[:, 1:] = sr["MC1"]
    # how many consecutive sum-9 columns the carry into column k passed (0: made just below)
    through = np.zeros((len(a), n_digits + 1), dtype=np.int64)
    for k in range(2, n_digits + 1):
        through[:, k] = np.where(carry[:, k] & ~mc1[:, k] & ms9[:, k], through[:, k - 1] + 1, 0)
    model = pred[:, ::-1]  # units first
    exact = rules.exact_answer_digits(a, b, n_digits)
    wrong = model != exact
    false_carry = wrong & ~carry & (model == (ba + 1) % 10)
    missed = wrong & carry & (model == ba)
    kinds = {
        ERROR_KINDS[0]: false_carry & ms9,
        ERROR_KINDS[1]: false_carry & ~ms9,
        ERROR_KINDS[2]: missed & (through == 0),
        ERROR_KINDS[3]: missed & (through == 1),
        ERROR_KINDS[4]: missed & (through >= 2),
    }
    kinds[ERROR_KINDS[5]] = wrong & ~false_carry & ~missed
    return {
        "total": int(wrong.sum()),
        "by_kind": {k: int(v.sum()) for k, v in kinds.items()},
        "by_digit": {f"A{k}": {kk: int(v[:, k].sum()) for kk, v in kinds.items()} for k in range(n_digits, -1, -1)},
    }


def compare_algorithms(pred: np.ndarray, a: np.ndarray, b: np.ndarray, n_digits: int) -> list[dict[str, Any]]:
    """Return, per algorithm, the share of questions and of answer digits on which it gives the model's answer.

    Algorithms: the one-column look-back, the declared algorithm (BA/MC1/MS9 per column, two-column
    look-back), and exact addition. Also the agreement on each category.
    """
    cats = rules.category_indices(a, b, n_digits)
    algos: dict[str, np.ndarray] = {}
    for name, depth in ALGORITHMS.items():
        algos[name] = rules.lookback_answer_digits(a, b, depth, n_digits)[:, ::-1]
    algos["exact addition"] = rules.exact_answer_digits(a, b, n_digits)[:, ::-1]
    exact = rules.exact_answer_digits(a, b, n_digits)[:, ::-1]
    rows = []
    for name, digits in algos.items():
        same = digits == pred
        q = same.all(axis=1)
        rows.append({
            "algorithm": name,
            "question_agreement": float(q.mean()),
            "digit_agreement": float(same.mean()),
            "by_category": {c: float(q[cats == i].mean()) if (cats == i).any() else None
                            for i, c in enumerate(addition.CATEGORIES)},
            "algorithm_accuracy": float((digits == exact).all(axis=1).mean()),
        })
    return rows
