"""Linear probes: which sub-results (BA, MC1, MS9 of which column) each head's output carries, per answer digit.

For every layer, head and answer-predicting position, the head's ``hook_z`` there (its d_head mixed
values; the head's contribution to the residual stream is z W_O, a linear map of it) is the feature.
For every column c, three targets: BA_c (10 classes), MC1_c and MS9_c (2 classes). Two probes per
target, each trained on one set of uniform random questions and scored on a disjoint held-out set:

- *linear*: ridge regression onto one-hot classes, on standardised features; is the sub-result
  directly readable off the head's output?
- *nonlinear*: the same on 1,024 fixed random ReLU features of the standardised z (a random-features
  approximation of a kernel probe); is the sub-result in the head's output at all, for a reader as
  capable as one MLP layer? BA (a sum mod 10) is not a linear function of two mixed digit embeddings,
  so a head that reads a digit pair carries BA for the MLP without BA being linearly readable.

On uniform questions the columns are independent, so a probe cannot read column c's sub-result off
another column's digits.

``skill`` = (accuracy - majority baseline) / (1 - majority baseline): 0 is no better than always
guessing the commonest class, 1 is perfect. A head is said to *carry* a sub-result at a position when
its nonlinear probe's held-out skill is at least ``CARRY_SKILL``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from assay.addition import rules
from assay.addition.evaluate import example_tensor
from assay.tasks import addition

TARGETS = ("BA", "MC1", "MS9")
CARRY_SKILL = 0.8
N_RANDOM_FEATURES = 1024


def random_relu_features(x_train: np.ndarray, x_test: np.ndarray, n: int = N_RANDOM_FEATURES,
                         seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return ReLU(x W + c) for standardised x and a fixed Gaussian W [d, n], c ~ N(0, 1), on both sets."""
    mu, sd = x_train.mean(axis=0), x_train.std(axis=0) + 1e-8
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((x_train.shape[1], n)) / np.sqrt(x_train.shape[1])
    c = rng.standard_normal(n)
    return (np.maximum((x_train - mu) / sd @ w + c, 0.0), np.maximum((x_test - mu) / sd @ w + c, 0.0))


def head_features(model: Any, a: np.ndarray, b: np.ndarray, n_digits: int) -> np.ndarray:
    """Return z [layer, head, answer digit i, N, d_head] at the positions predicting A_{n-i}."""
    tokens = example_tensor(a, b, n_digits)[:, :-1]
    q = addition.question_length(n_digits)
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=names)
    # z: [N, pos, head, e] -> [head, i, N, e]
    return np.stack([cache[n][:, q - 1 :].double().permute(2, 1, 0, 3).numpy() for n in names])


def probe_labels(a: np.ndarray, b: np.ndarray, n_digits: int) -> dict[tuple[str, int], np.ndarray]:
    """Return the class labels {(target, column): int [N]} of BA / MC1 / MS9 of every column."""
    sr = rules.sub_results(a, b, n_digits)
    return {(t, c): sr[t][:, c].astype(np.int64) for t in TARGETS for c in range(n_digits)}


def fit_probes(x_train: np.ndarray, y_train: dict[Any, np.ndarray], x_test: np.ndarray,
               y_test: dict[Any, np.ndarray], ridge: float = 1e-2) -> dict[Any, float]:
    """Fit one linear classifier per target on shared features; return held-out accuracy per target.

    Each classifier is a ridge regression onto the one-hot class indicators (with a bias), predicting
    the class of largest output: closed form, deterministic, one linear solve shared by every target.
    ``ridge`` is relative to the mean squared feature (features are standardised).
    """
    mu, sd = x_train.mean(axis=0), x_train.std(axis=0) + 1e-8
    xtr = np.hstack([(x_train - mu) / sd, np.ones((len(x_train), 1))])
    xte = np.hstack([(x_test - mu) / sd, np.ones((len(x_test), 1))])
    keys = list(y_train)
    n_cls = [int(max(y_train[k].max(), y_test[k].max())) + 1 for k in keys]
    bounds = np.cumsum([0] + n_cls)
    y = np.zeros((len(xtr), int(bounds[-1])))
    for j, k in enumerate(keys):
        y[np.arange(len(xtr)), bounds[j] + y_train[k]] = 1.0
    gram = xtr.T @ xtr + ridge * len(xtr) * np.eye(xtr.shape[1])
    w = np.linalg.solve(gram, xtr.T @ y)
    out = xte @ w
    return {k: float((out[:, bounds[j] : bounds[j + 1]].argmax(axis=1) == y_test[k]).mean())
            for j, k in enumerate(keys)}


def majority_baseline(y_train: np.ndarray, y_test: np.ndarray) -> float:
    """Return the held-out accuracy of always guessing the training set's commonest class."""
    return float((y_test == np.bincount(y_train).argmax()).mean())


def probe_heads(model: Any, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                n_digits: int) -> list[dict[str, Any]]:
    """Return rows {layer, head, digit, target, column, accuracy, baseline, skill} for every probe."""
    ftr = head_features(model, *train, n_digits)
    fte = head_features(model, *test, n_digits)
    ytr = probe_labels(*train, n_digits)
    yte = probe_labels(*test, n_digits)
    rows = []
    n_layers, n_heads, n_q = ftr.shape[:3]
    for layer in range(n_layers):
        for head in range(n_heads):
            for i in range(n_q):
                xtr, xte = ftr[layer, head, i], fte[layer, head, i]
                lin = fit_probes(xtr, ytr, xte, yte)
                rtr, rte = random_relu_features(xtr, xte)
                nonlin = fit_probes(rtr, ytr, rte, yte, ridge=1e-3)
                for (t, c), v in nonlin.items():
                    base = majority_baseline(ytr[(t, c)], yte[(t, c)])
                    rows.append({"layer": layer, "head": head, "digit": f"A{n_digits - i}", "target": t, "column": c,
                                 "accuracy": v, "baseline": base, "skill": (v - base) / max(1e-9, 1 - base),
                                 "accuracy_linear": lin[(t, c)],
                                 "skill_linear": (lin[(t, c)] - base) / max(1e-9, 1 - base)})
    return rows


def carried(rows: list[dict[str, Any]], threshold: float = CARRY_SKILL) -> dict[tuple[int, int, str], list[str]]:
    """Return {(layer, head, digit): ["BA2", "MC1 1", ...]} of the sub-results each head carries there."""
    out: dict[tuple[int, int, str], list[str]] = {}
    for r in rows:
        key = (r["layer"], r["head"], r["digit"])
        out.setdefault(key, [])
        if r["skill"] >= threshold:
            out[key].append(f"{r['target']}{r['column']}")
    return out
