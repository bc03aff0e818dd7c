"""Reference recognisers and input samplers for the languages of the construction library.

Every language is over a two-letter alphabet, token ids 0 and 1. The recognisers are plain loops over
the token list, written without reference to any transformer, so a construction is checked against
something it does not share code with.

- ``majority``: more 1s than 0s (a tie is rejected).
- ``threshold``: at least ``THRESHOLD_K`` = 3 ones (the counting threshold function Th_3).
- ``dyck1``: balanced brackets, 0 = "(" and 1 = ")": every prefix has at least as many "(" as ")",
  and the counts are equal at the end.
- ``anbn``: a^k b^k with k >= 1, 0 = "a" and 1 = "b".
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from assay.errors import BadInput

THRESHOLD_K = 3
SYMBOLS = {"majority": "01", "threshold": "01", "dyck1": "()", "anbn": "ab"}
LANGUAGES = tuple(SYMBOLS)
CONSTRUCTIONS = (*LANGUAGES, "counter")  # the counter-construction decides MAJORITY (see constructions.py)


def is_majority(w: Sequence[int]) -> bool:
    """Return True when w has strictly more 1s than 0s."""
    ones = sum(1 for t in w if t == 1)
    return ones > len(w) - ones


def is_threshold(w: Sequence[int]) -> bool:
    """Return True when w has at least THRESHOLD_K ones."""
    return sum(1 for t in w if t == 1) >= THRESHOLD_K


def is_dyck1(w: Sequence[int]) -> bool:
    """Return True when w (0 = '(', 1 = ')') is a balanced bracket string."""
    depth = 0
    for t in w:
        depth += 1 if t == 0 else -1
        if depth < 0:
            return False
    return depth == 0


def is_anbn(w: Sequence[int]) -> bool:
    """Return True when w is a^k b^k (0 = a, 1 = b) with k >= 1."""
    k = 0
    while k < len(w) and w[k] == 0:
        k += 1
    return k >= 1 and len(w) == 2 * k and all(t == 1 for t in w[k:])


RECOGNISERS: dict[str, Callable[[Sequence[int]], bool]] = {
    "majority": is_majority,
    "threshold": is_threshold,
    "dyck1": is_dyck1,
    "anbn": is_anbn,
}


def check_language(name: str) -> str:
    """Return ``name`` if it is a known language; raise BadInput naming the known ones otherwise."""
    if name not in RECOGNISERS:
        raise BadInput(f"unknown language {name!r}; known: {', '.join(LANGUAGES)}")
    return name


def to_text(language: str, w: Sequence[int]) -> str:
    """Return w written with the language's two symbols."""
    sym = SYMBOLS.get(language, "01")
    return "".join(sym[t] for t in w)


def sample(language: str, n: int, rng: random.Random) -> list[int]:
    """Return a random string of length n drawn near the language's boundary, so that its prefixes
    include members and non-members (uniform strings almost never are balanced brackets or a^k b^k).

    Half of the draws are uniform strings; the other half are members of length ~n with up to two
    random letters flipped (majority / threshold: a balanced shuffle plus noise).
    """
    if rng.random() < 0.5:
        return [rng.randrange(2) for _ in range(n)]
    if language in ("majority", "threshold"):
        w = [i % 2 for i in range(n)]
        rng.shuffle(w)
    elif language == "dyck1":
        w, depth = [], 0
        for i in range(n):
            left = n - i
            if depth == 0 or (depth < left and rng.random() < 0.5):
                w.append(0)
                depth += 1
            else:
                w.append(1)
                depth -= 1
    else:
        k = n // 2
        w = [0] * k + [1] * (n - k)
    for _ in range(rng.randrange(3)):
        j = rng.randrange(n)
        w[j] = 1 - w[j]
    return w
