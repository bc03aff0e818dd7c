"""Exact per-column sub-results, categories and look-back rules of n-digit addition, vectorised over numpy.

Columns are numbered from the units (column 0) as in PAPERS.md; every array here has columns in that
order (``x[:, k]`` is column k), unlike token order, which is most significant first.

Sub-results of column k (Quirke & Barez): ``BA`` = (D_k + D'_k) mod 10, ``MC1`` = D_k + D'_k >= 10
(makes a carry), ``MS9`` = D_k + D'_k == 9 (passes a carry on). The true carry into column k is
``C_k = MC1_{k-1} or (MS9_{k-1} and C_{k-1})``, ``C_0 = 0``; answer digit ``A_k = (BA_k + C_k) mod 10``
for k < n and ``A_n = C_n``.

A *look-back rule of depth d* replaces C_k by the carry seen from at most d columns back:
``c_k = OR_{j=1..min(d,k)} (MC1_{k-j} and MS9_{k-j+1} and ... and MS9_{k-1})``. Depth 1 is
``MC1_{k-1}``; depth 2 is the paper's rule
``A_k = (D_k + D'_k + MC1_{k-1} + [not MC1_{k-1} and MS9_{k-1} and MC1_{k-2}]) mod 10``; depth n is exact.
The depth-2 rule is wrong exactly on cascades (a carry through two consecutive sum-9 columns).
"""

from __future__ import annotations

import numpy as np

from assay.tasks.addition import CATEGORIES, N_DIGITS

CATEGORY_INDEX = {c: i for i, c in enumerate(CATEGORIES)}


def column_digits(x: np.ndarray, n_digits: int = N_DIGITS) -> np.ndarray:
    """Return the digits [N, n] of each number, column 0 (units) first."""
    powers = 10 ** np.arange(n_digits, dtype=np.int64)
    return (np.asarray(x, dtype=np.int64).reshape(-1)[:, None] // powers[None, :]) % 10


def sub_results(a: np.ndarray, b: np.ndarray, n_digits: int = N_DIGITS) -> dict[str, np.ndarray]:
    """Return ``{"BA": int [N, n], "MC1": bool [N, n], "MS9": bool [N, n]}`` per column (units first)."""
    s = column_digits(a, n_digits) + column_digits(b, n_digits)
    return {"BA": s % 10, "MC1": s >= 10, "MS9": s == 9}


def carries(a: np.ndarray, b: np.ndarray, n_digits: int = N_DIGITS) -> np.ndarray:
    """Return bool [N, n + 1]: whether column k receives a carry (k = n: the answer's top digit)."""
    sr = sub_results(a, b, n_digits)
    c = np.zeros((sr["BA"].shape[0], n_digits + 1), dtype=bool)
    for k in range(1, n_digits + 1):
        c[:, k] = sr["MC1"][:, k - 1] | (sr["MS9"][:, k - 1] & c[:, k - 1])
    return c


def us9_used(a: np.ndarray, b: np.ndarray, n_digits: int = N_DIGITS) -> np.ndarray:
    """Return bool [N, n]: a carry passes through column k because the column sums to 9 (US9 at k)."""
    return carries(a, b, n_digits)[:, :n_digits] & sub_results(a, b, n_digits)["MS9"]


def longest_us9_runs(a: np.ndarray, b: np.ndarray, n_digits: int = N_DIGITS) -> np.ndarray:
    """Return int [N]: the most consecutive columns one carry passes through by summing to 9."""
    used = us9_used(a, b, n_digits)
    run = np.zeros(used.shape[0], dtype=np.int64)
    best = np.zeros_like(run)
    for k in range(n_digits):
        run = np.where(used[:, k], run + 1, 0)
        best = np.maximum(best, run)
    return best


def category_indices(a: np.ndarray, b: np.ndarray, n_digits: int = N_DIGITS) -> np.ndarray:
    """Return int [N]: the index in ``CATEGORIES`` (BA, UC1, US9, cascade) of each question.

    The same definitions as :func:`assay.tasks.addition.category`, vectorised: cascade when a carry
    passes through two or more consecutive sum-9 columns, US9 when through one at a time, UC1 when some
    column receives a carry otherwise, BA when none does.
    """
    run = longest_us9_runs(a, b, n_digits)
    any_carry = carries(a, b, n_digits).any(axis=1)
    out = np.where(any_carry, CATEGORY_INDEX["UC1"], CATEGORY_INDEX["BA"])
    out = np.where(run == 1, CATEGORY_INDEX["US9"], out)
    return np.where(run >= 2, CATEGORY_INDEX["cascade"], out)


def category_names(a: np.ndarray, b: np.ndarray, n_digits: int = N_DIGITS) -> np.ndarray:
    """Return the category name of each question (an array of str)."""
    return np.asarray(CATEGORIES)[category_indices(a, b, n_digits)]


def lookback_carries(a: np.ndarray, b: np.ndarray, depth: int, n_digits: int = N_DIGITS) -> np.ndarray:
    """Return bool [N, n + 1]: the carry into each column as seen by a look-back rule of ``depth`` columns."""
    if depth < 1:
        raise ValueError(f"look-back depth must be >= 1, got {depth}")
    sr = sub_results(a, b, n_digits)
    mc1, ms9 = sr["MC1"], sr["MS9"]
    c = np.zeros((mc1.shape[0], n_digits + 1), dtype=bool)
    for k in range(1, n_digits + 1):
        chain = np.ones(mc1.shape[0], dtype=bool)  # MS9 of every column between k - j and k
        for j in range(1, min(depth, k) + 1):
            c[:, k] |= mc1[:, k - j] & chain
            chain = chain & ms9[:, k - j]
    return c


def answer_digits_from(ba: np.ndarray, carry_in: np.ndarray) -> np.ndarray:
    """Return the answer digits [N, n + 1] (units first) from BA [N, n] and carries into columns [N, n + 1]."""
    n = ba.shape[1]
    out = np.empty((ba.shape[0], n + 1), dtype=np.int64)
    out[:, :n] = (ba + carry_in[:, :n]) % 10
    out[:, n] = carry_in[:, n]
    return out


def lookback_answer_digits(a: np.ndarray, b: np.ndarray, depth: int, n_digits: int = N_DIGITS) -> np.ndarray:
    """Return the answer digits [N, n + 1] (units first) that a look-back rule of ``depth`` gives."""
    return answer_digits_from(sub_results(a, b, n_digits)["BA"], lookback_carries(a, b, depth, n_digits))


def exact_answer_digits(a: np.ndarray, b: np.ndarray, n_digits: int = N_DIGITS) -> np.ndarray:
    """Return the digits [N, n + 1] (units first) of a + b, from Python/numpy integer addition."""
    return column_digits(np.asarray(a, dtype=np.int64) + np.asarray(b, dtype=np.int64), n_digits + 1)


def digits_to_int(d: np.ndarray) -> np.ndarray:
    """Return the integers [N] whose digits (units first) are d [N, m]."""
    powers = 10 ** np.arange(d.shape[1], dtype=np.int64)
    return (np.asarray(d, dtype=np.int64) * powers[None, :]).sum(axis=1)


def two_column_rule(a: np.ndarray, b: np.ndarray, n_digits: int = N_DIGITS) -> np.ndarray:
    """Return int [N]: the answers of the paper's two-column look-back rule (wrong exactly on cascades)."""
    return digits_to_int(lookback_answer_digits(a, b, 2, n_digits))


def two_column_rule_scalar(a: int, b: int, n_digits: int = N_DIGITS) -> int:
    """Return the two-column rule's answer for one question, written out column by column (for tests)."""
    da = [(a // 10**k) % 10 for k in range(n_digits)] + [0, 0]
    db = [(b // 10**k) % 10 for k in range(n_digits)] + [0, 0]
    total = 0
    for k in range(n_digits + 1):
        mc1 = lambda j: j >= 0 and da[j] + db[j] >= 10  # noqa: E731
        ms9 = lambda j: j >= 0 and da[j] + db[j] == 9  # noqa: E731
        digit = (da[k] + db[k] + mc1(k - 1) + (not mc1(k - 1) and ms9(k - 1) and mc1(k - 2))) % 10
        total += digit * 10**k
    return total
