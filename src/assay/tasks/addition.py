"""n-digit addition questions (Quirke & Barez, ICLR 2024): tokens, answers, categories, training batches.

A question is two zero-padded operands, ``"33357+82243="`` (12 tokens for 5 digits); the answer is the
sum as n+1 digits, most significant first, ``115600``; an example is question + answer (18 tokens).
Vocabulary: the digits 0-9 are ids 0-9, ``+`` is 10, ``=`` is 11.

Columns are numbered from the units: column 0 holds D0 and D'0 (the last digit of each operand).
Answer digits are A_n..A_0; A_n (the first answer token) is the carry out of the top column.
The loss is taken on the n+1 answer tokens only: the logits at position ``2n+1+i`` (the ``=`` and the
answer tokens before the last) predict answer token i.

Categories (they partition all questions; see :func:`category`):

- ``BA``: no column receives a carry: every answer digit is a base add (D_n + D'_n mod 10).
- ``UC1``: some column receives a carry, and no carry passes through a column summing to 9.
- ``US9``: a carry passes through a column summing to 9 ("use sum 9"), but never through two or more
  such columns in a row ("simple US9").
- ``cascade``: a carry passes through two or more consecutive columns summing to 9
  (``555+445=1000``, ``44445+55555=100000``): the case a one-layer model gets wrong.
"""

from __future__ import annotations

import re

import numpy as np

from assay.errors import BadInput

N_DIGITS = 5
PLUS = 10
EQUALS = 11
D_VOCAB = 12
TOKEN_TEXT = "0123456789+="
CATEGORIES = ("BA", "UC1", "US9", "cascade")


def question_length(n_digits: int = N_DIGITS) -> int:
    """Return the number of question tokens, ``2n + 2`` (operands, ``+`` and ``=``)."""
    return 2 * n_digits + 2


def example_length(n_digits: int = N_DIGITS) -> int:
    """Return the number of tokens of question + answer, ``3n + 3``."""
    return 3 * n_digits + 3


def _check_operands(a: int, b: int, n_digits: int) -> None:
    for x in (a, b):
        if not isinstance(x, (int, np.integer)) or isinstance(x, bool) or not 0 <= x < 10**n_digits:
            raise BadInput(f"operand {x!r} is not an integer in 0..{10**n_digits - 1}")


def answer(a: int, b: int) -> int:
    """Return the sum a + b (the function the model must learn)."""
    return int(a) + int(b)


def digits(x: int, n: int) -> list[int]:
    """Return the n decimal digits of x, zero-padded, most significant first."""
    x = int(x)
    return [(x // 10**k) % 10 for k in range(n - 1, -1, -1)]


def question_tokens(a: int, b: int, n_digits: int = N_DIGITS) -> list[int]:
    """Return the question's token ids: digits of a, ``+``, digits of b, ``=`` (2n + 2 ids)."""
    _check_operands(a, b, n_digits)
    return digits(a, n_digits) + [PLUS] + digits(b, n_digits) + [EQUALS]


def answer_tokens(a: int, b: int, n_digits: int = N_DIGITS) -> list[int]:
    """Return the answer's n + 1 digit ids, most significant first."""
    _check_operands(a, b, n_digits)
    return digits(answer(a, b), n_digits + 1)


def example_tokens(a: int, b: int, n_digits: int = N_DIGITS) -> list[int]:
    """Return question + answer token ids (3n + 3 ids)."""
    return question_tokens(a, b, n_digits) + answer_tokens(a, b, n_digits)


def parse_question(text: str, n_digits: int = N_DIGITS) -> tuple[int, int]:
    """Return the operands (a, b) of ``"12345+67890"`` (a trailing ``=`` and surrounding space allowed).

    Operands may have fewer than n digits (they are zero-padded); more is BadInput.
    """
    m = re.fullmatch(rf"\s*(\d{{1,{n_digits}}})\+(\d{{1,{n_digits}}})=?\s*", text)
    if m is None:
        raise BadInput(f"not an addition question with {n_digits}-digit operands: {text.strip()[:40]!r} "
                       f"(expected e.g. {'1' * n_digits}+{'2' * n_digits})")
    return int(m.group(1)), int(m.group(2))


def encode_question(text: str, n_digits: int = N_DIGITS) -> list[int]:
    """Return the question token ids of a string like ``"12345+67890"``."""
    return question_tokens(*parse_question(text, n_digits), n_digits)


def decode(tokens) -> str:
    """Return the text of token ids (``0-9``, ``+``, ``=``), e.g. ``"33357+82243=115600"``."""
    out = []
    for t in tokens:
        t = int(t)
        if not 0 <= t < D_VOCAB:
            raise BadInput(f"token id {t} is not in the addition vocabulary 0..{D_VOCAB - 1}")
        out.append(TOKEN_TEXT[t])
    return "".join(out)


def column_sums(a: int, b: int, n_digits: int = N_DIGITS) -> list[int]:
    """Return D_k + D'_k for columns k = 0 (units) .. n-1, without carries."""
    return [(int(a) // 10**k) % 10 + (int(b) // 10**k) % 10 for k in range(n_digits)]


def carries_in(a: int, b: int, n_digits: int = N_DIGITS) -> list[bool]:
    """Return, for columns k = 0..n, whether column k receives a carry (k = n: the answer's top digit).

    Column k receives a carry exactly when the operands' lower k digits overflow:
    ``a mod 10^k + b mod 10^k >= 10^k``.
    """
    return [(int(a) % 10**k) + (int(b) % 10**k) >= 10**k for k in range(n_digits + 1)]


def us9_columns(a: int, b: int, n_digits: int = N_DIGITS) -> list[bool]:
    """Return, for columns k = 0..n-1, whether a carry passes through column k because it sums to 9."""
    c = carries_in(a, b, n_digits)
    return [c[k] and s == 9 for k, s in enumerate(column_sums(a, b, n_digits))]


def longest_us9_run(a: int, b: int, n_digits: int = N_DIGITS) -> int:
    """Return the most consecutive columns a single carry passes through by summing to 9 (0 if none)."""
    best = run = 0
    for used in us9_columns(a, b, n_digits):
        run = run + 1 if used else 0
        best = max(best, run)
    return best


def category(a: int, b: int, n_digits: int = N_DIGITS) -> str:
    """Return the question's category: ``"BA"``, ``"UC1"``, ``"US9"`` (simple) or ``"cascade"``."""
    _check_operands(a, b, n_digits)
    run = longest_us9_run(a, b, n_digits)
    if run >= 2:
        return "cascade"
    if run == 1:
        return "US9"
    return "UC1" if any(carries_in(a, b, n_digits)) else "BA"


def is_ba_only(a: int, b: int, n_digits: int = N_DIGITS) -> bool:
    """Return True when no column receives a carry."""
    return category(a, b, n_digits) == "BA"


def is_uc1(a: int, b: int, n_digits: int = N_DIGITS) -> bool:
    """Return True when some column receives a carry but no carry passes through a sum-9 column."""
    return category(a, b, n_digits) == "UC1"


def is_simple_us9(a: int, b: int, n_digits: int = N_DIGITS) -> bool:
    """Return True when carries pass through sum-9 columns, never two consecutive ones."""
    return category(a, b, n_digits) == "US9"


def is_cascade(a: int, b: int, n_digits: int = N_DIGITS) -> bool:
    """Return True when a carry passes through two or more consecutive sum-9 columns."""
    return category(a, b, n_digits) == "cascade"


# ---------------------------------------------------------------------------------------------------
# Batches (vectorised over numpy arrays of operands).


def random_operands(rng: np.random.Generator, batch: int, n_digits: int = N_DIGITS) -> tuple[np.ndarray, np.ndarray]:
    """Return two int64 arrays [batch] of operands drawn uniformly from 0..10^n - 1."""
    hi = 10**n_digits
    return rng.integers(0, hi, size=batch, dtype=np.int64), rng.integers(0, hi, size=batch, dtype=np.int64)


def operand_digits(x: np.ndarray, n_digits: int = N_DIGITS) -> np.ndarray:
    """Return the digits [batch, n] of each operand, most significant first."""
    powers = 10 ** np.arange(n_digits - 1, -1, -1, dtype=np.int64)
    return (np.asarray(x, dtype=np.int64)[:, None] // powers[None, :]) % 10


def enrich_sum9(
    rng: np.random.Generator, a: np.ndarray, b: np.ndarray, pair_prob: float, n_digits: int = N_DIGITS
) -> tuple[np.ndarray, np.ndarray]:
    """Return (a, b') where each digit pair is, with probability ``pair_prob``, rewritten to sum to 9.

    The rewrite sets the digit of b to 9 minus the digit of a, making rare carry-through-9 cases common.
    """
    da, db = operand_digits(a, n_digits), operand_digits(b, n_digits)
    pick = rng.random(da.shape) < pair_prob
    db = np.where(pick, 9 - da, db)
    powers = 10 ** np.arange(n_digits - 1, -1, -1, dtype=np.int64)
    return np.asarray(a, dtype=np.int64).copy(), (db * powers).sum(axis=1)


def training_operands(
    rng: np.random.Generator,
    batch: int,
    n_digits: int = N_DIGITS,
    enrich_batch_prob: float = 0.2,
    enrich_pair_prob: float = 0.2,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Return (a, b, enriched): a fresh uniform batch, enriched with sum-9 pairs with ``enrich_batch_prob``."""
    a, b = random_operands(rng, batch, n_digits)
    enriched = bool(rng.random() < enrich_batch_prob)
    if enriched:
        a, b = enrich_sum9(rng, a, b, enrich_pair_prob, n_digits)
    return a, b, enriched


def example_token_array(a: np.ndarray, b: np.ndarray, n_digits: int = N_DIGITS) -> np.ndarray:
    """Return the examples' tokens [batch, 3n + 3]: digits of a, ``+``, digits of b, ``=``, answer digits."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    col = lambda v: np.full((len(a), 1), v, dtype=np.int64)  # noqa: E731
    return np.concatenate(
        [operand_digits(a, n_digits), col(PLUS), operand_digits(b, n_digits), col(EQUALS),
         operand_digits(a + b, n_digits + 1)],
        axis=1,
    )


def answer_targets(tokens: np.ndarray, n_digits: int = N_DIGITS, ignore: int = -100) -> np.ndarray:
    """Return next-token targets [batch, 3n + 3]: answer token i at position 2n + 1 + i, ``ignore`` elsewhere."""
    q = question_length(n_digits)
    targets = np.full(tokens.shape, ignore, dtype=np.int64)
    targets[:, q - 1 : q + n_digits] = tokens[:, q:]
    return targets


def categories_of(a: np.ndarray, b: np.ndarray, n_digits: int = N_DIGITS) -> list[str]:
    """Return :func:`category` of each pair of operands."""
    return [category(int(x), int(y), n_digits) for x, y in zip(a, b, strict=True)]


def operands_of_category(
    rng: np.random.Generator, cat: str, n: int, n_digits: int = N_DIGITS, enrich_pair_prob: float = 0.3
) -> tuple[np.ndarray, np.ndarray]:
    """Return n questions of one category, by rejection from (sum-9-enriched) uniform questions.

    Enrichment only changes how fast the rare categories are found; every returned question is
    checked with :func:`category`.
    """
    if cat not in CATEGORIES:
        raise BadInput(f"unknown category {cat!r}; known: {', '.join(CATEGORIES)}")
    if cat == "cascade" and n_digits < 3:
        # A carry first arises out of column 0, so two sum-9 columns after it need three columns.
        raise BadInput("cascades need at least 3 digits per operand")
    got_a: list[int] = []
    got_b: list[int] = []
    for _ in range(1000):
        a, b = random_operands(rng, 1024, n_digits)
        if cat in ("US9", "cascade"):
            a, b = enrich_sum9(rng, a, b, enrich_pair_prob, n_digits)
        for x, y in zip(a, b, strict=True):
            if category(int(x), int(y), n_digits) == cat:
                got_a.append(int(x))
                got_b.append(int(y))
        if len(got_a) >= n:
            return np.array(got_a[:n], dtype=np.int64), np.array(got_b[:n], dtype=np.int64)
    raise BadInput(f"could not find {n} questions of category {cat!r} with {n_digits} digits")
