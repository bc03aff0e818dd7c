"""Formal languages for the saturation work (Merrill, Sabharwal, Smith 2022): majority, parity, Dyck-1.

Token convention (the same 6-id vocabulary layout for every language):

    id 0, 1   the two symbols: "0" / "1" (majority, parity) or "(" / ")" (Dyck-1)
    id 2      <bos>, always the first token
    id 3      <cls>, always the last token of a whole-string example
    id 4, 5   <false>, <true>: the label, predicted at the <cls> position

A whole-string example is ``<bos> w <cls>`` and its target is the label token at the ``<cls>``
position: a causal model reads the whole string there. Every batch holds strings of one length, so
there is no padding. In the Dyck-1 *prefix-label* variant an example is ``<bos> w`` and the logits at
the position of symbol i predict whether the prefix ``w[0..i]`` is a balanced word.

Languages (w over the two symbols, |w| = n):

- majority: more 1s than 0s (strictly: a tie is false).
- parity: an odd number of 1s.
- Dyck-1: balanced brackets; every prefix has at least as many "(" as ")" and the counts are equal at
  the end. The empty word is balanced.

The recognisers (``is_majority``, ``is_odd_parity``, ``is_dyck1``, ``dyck1_prefix_labels``) are plain
loops over a string, written separately from the vectorised labels the generators compute, so each
checks the other.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from assay.errors import BadInput

LANGUAGES = ("majority", "parity", "dyck1")
BOS, CLS, FALSE, TRUE = 2, 3, 4, 5
D_VOCAB = 6
_SYMBOLS = {"majority": "01", "parity": "01", "dyck1": "()"}


def _check_language(language: str) -> None:
    if language not in LANGUAGES:
        raise BadInput(f"unknown formal language {language!r}; known: {', '.join(LANGUAGES)}")


def vocabulary(language: str) -> list[str]:
    """Return the 6 token strings of a language, by id."""
    _check_language(language)
    a, b = _SYMBOLS[language]
    return [a, b, "<bos>", "<cls>", "<false>", "<true>"]


# ---------------------------------------------------------------------------------------------------
# Reference recognisers: plain functions on strings.


def is_majority(w: str) -> bool:
    """Return True when the bit string w has more '1's than '0's."""
    ones = zeros = 0
    for ch in w:
        if ch == "1":
            ones += 1
        elif ch == "0":
            zeros += 1
        else:
            raise BadInput(f"not a bit: {ch!r}")
    return ones > zeros


def is_odd_parity(w: str) -> bool:
    """Return True when the bit string w has an odd number of '1's."""
    odd = False
    for ch in w:
        if ch not in "01":
            raise BadInput(f"not a bit: {ch!r}")
        if ch == "1":
            odd = not odd
    return odd


def is_dyck1(w: str) -> bool:
    """Return True when w is a balanced string of '(' and ')'."""
    depth = 0
    for ch in w:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                return False
        else:
            raise BadInput(f"not a bracket: {ch!r}")
    return depth == 0


def dyck1_prefix_labels(w: str) -> list[bool]:
    """Return, for each i, whether the prefix w[:i+1] is balanced (a prefix that went negative never is)."""
    depth, broken, out = 0, False, []
    for ch in w:
        if ch not in "()":
            raise BadInput(f"not a bracket: {ch!r}")
        depth += 1 if ch == "(" else -1
        broken = broken or depth < 0
        out.append(not broken and depth == 0)
    return out


def recognizer(language: str):
    """Return the reference recogniser (str -> bool) of a language."""
    _check_language(language)
    return {"majority": is_majority, "parity": is_odd_parity, "dyck1": is_dyck1}[language]


def to_text(language: str, symbols: Sequence[int]) -> str:
    """Return the string of symbol ids (0/1) in the language's alphabet."""
    _check_language(language)
    alphabet = _SYMBOLS[language]
    return "".join(alphabet[int(s)] for s in symbols)


def from_text(language: str, w: str) -> list[int]:
    """Return the symbol ids (0/1) of a string in the language's alphabet."""
    _check_language(language)
    alphabet = _SYMBOLS[language]
    try:
        return [alphabet.index(ch) for ch in w]
    except ValueError:
        raise BadInput(f"{w[:40]!r} is not over the alphabet {alphabet!r}") from None


def encode(symbols: np.ndarray) -> np.ndarray:
    """Return whole-string examples [batch, n + 2]: ``<bos>``, the symbols [batch, n], ``<cls>``."""
    symbols = np.asarray(symbols, dtype=np.int64).reshape(len(symbols), -1)
    b = len(symbols)
    return np.concatenate([np.full((b, 1), BOS), symbols, np.full((b, 1), CLS)], axis=1).astype(np.int64)


# ---------------------------------------------------------------------------------------------------
# Generators: symbols [batch, n] and labels, vectorised.


def labels(language: str, symbols: np.ndarray) -> np.ndarray:
    """Return the bool labels [batch] of symbol arrays [batch, n] (vectorised; see the recognisers)."""
    _check_language(language)
    s = np.asarray(symbols, dtype=np.int64).reshape(len(symbols), -1)
    n = s.shape[1]
    if language == "majority":
        return 2 * s.sum(axis=1) > n
    if language == "parity":
        return s.sum(axis=1) % 2 == 1
    return _dyck_prefix_labels(s)[:, -1] if n else np.ones(len(s), dtype=bool)


def _dyck_prefix_labels(s: np.ndarray) -> np.ndarray:
    depth = np.cumsum(1 - 2 * s, axis=1)  # "(" = 0 -> +1, ")" = 1 -> -1
    never_negative = np.minimum.accumulate(depth, axis=1) >= 0
    return never_negative & (depth == 0)


def sample_symbols(language: str, rng: np.random.Generator, batch: int, n: int) -> np.ndarray:
    """Return ``batch`` random strings of length n [batch, n] with labels roughly balanced.

    - majority: each string draws p ~ U(0, 1), then its bits ~ Bernoulli(p).
    - parity: uniform bits (labels are balanced already).
    - Dyck-1: half balanced strings (a random walk that must close in time), half of them perturbed
      (one symbol flipped, or a ")" swapped with a later "(", which may or may not unbalance it).
    """
    _check_language(language)
    if language == "majority":
        p = rng.random((batch, 1))
        return (rng.random((batch, n)) < p).astype(np.int64)
    if language == "parity":
        return rng.integers(0, 2, size=(batch, n), dtype=np.int64)
    return _sample_dyck(rng, batch, n)


def _balanced_walk(rng: np.random.Generator, n: int) -> np.ndarray:
    # Opens with probability 1/2 unless it must open (depth 0) or must close (depth = remaining steps).
    # For odd n the last symbol cannot close everything; the walk still stays non-negative.
    out = np.empty(n, dtype=np.int64)
    depth = 0
    for i in range(n):
        remaining = n - i
        if depth == 0:
            close = False
        elif depth >= remaining:
            close = True
        else:
            close = bool(rng.random() < 0.5)
        out[i] = 1 if close else 0
        depth += -1 if close else 1
    return out


def _sample_dyck(rng: np.random.Generator, batch: int, n: int) -> np.ndarray:
    s = np.stack([_balanced_walk(rng, n) for _ in range(batch)]) if n else np.zeros((batch, 0), dtype=np.int64)
    if n == 0:
        return s
    kind = rng.integers(0, 4, size=batch)  # 0, 1: keep; 2: flip one symbol; 3: swap ")" with a later "("
    for r in np.nonzero(kind == 2)[0]:
        i = rng.integers(0, n)
        s[r, i] = 1 - s[r, i]
    for r in np.nonzero(kind == 3)[0]:
        pairs = [(i, j) for i in np.nonzero(s[r] == 1)[0] for j in np.nonzero(s[r] == 0)[0] if j > i]
        if pairs:
            i, j = pairs[rng.integers(0, len(pairs))]
            s[r, i], s[r, j] = 0, 1
        else:
            i = rng.integers(0, n)
            s[r, i] = 1 - s[r, i]
    return s


def make_batch(language: str, rng: np.random.Generator, batch: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (tokens [batch, n + 2], labels [batch] bool) of whole-string examples of length n."""
    s = sample_symbols(language, rng, batch, n)
    return encode(s), labels(language, s)


def make_prefix_batch(rng: np.random.Generator, batch: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Return Dyck-1 prefix-label examples: (tokens [batch, n + 1] = ``<bos>`` w, labels [batch, n] bool).

    labels[:, i] says whether w[:i+1] is balanced; the logits at position i + 1 predict it.
    """
    s = _sample_dyck(rng, batch, n)
    tokens = np.concatenate([np.full((batch, 1), BOS), s], axis=1).astype(np.int64)
    return tokens, _dyck_prefix_labels(s)


def label_tokens(lab: np.ndarray) -> np.ndarray:
    """Return the label token ids (``<true>`` = 5, ``<false>`` = 4) of bool labels."""
    return np.where(np.asarray(lab, dtype=bool), TRUE, FALSE).astype(np.int64)
