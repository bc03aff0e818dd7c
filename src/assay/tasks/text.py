"""Real text offline: corpora from installed packages, a locally trained BPE tokenizer, token windows.

Corpora (each a list of *documents*, the unit of the train/validation split):

- ``kjv`` — the King James Bible from Debian's ``bible-kjv-text`` (read with the ``bible`` program of
  ``bible-kjv``, since the package stores the text in its own compressed format). One document per
  chapter (1,189), verses one per line, without their references.
- ``python-stdlib`` — the source of the running Python's standard library: the top-level ``*.py``
  modules of ``sysconfig.get_paths()["stdlib"]``, one document per file.
- any path to a UTF-8 text file — documents are blocks separated by blank lines (or single lines when
  the file has no blank lines). Tests use this with a few sentences under ``tests/data``.

The split rule is fixed: document ``i`` (in the corpus's own order) is validation iff
``i % VAL_EVERY == VAL_EVERY - 1``, so 1 document in 20 is held out, spread over the whole corpus.

The tokenizer is byte-level BPE (GPT-2 style: bytes mapped to printable characters, a regex
pre-tokenizer, no normalisation), so every string encodes and decodes back to itself exactly.
``<|endoftext|>`` (id 0) separates documents in a token stream.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from assay.errors import BadInput

KJV = "kjv"
STDLIB = "python-stdlib"
CORPORA = (KJV, STDLIB)
EOT = "<|endoftext|>"
VAL_EVERY = 20

KJV_INSTALL = "apt-get install -y bible-kjv bible-kjv-text"
KJV_DATA = Path("/usr/lib/bible.data")
_VERSE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$")


@dataclass
class Corpus:
    """A named list of documents with the version that pins its exact text."""

    name: str
    version: str
    documents: list[str]
    source: str
    sha256: str = field(default="")

    def __post_init__(self) -> None:
        if not self.sha256:
            h = hashlib.sha256()
            for d in self.documents:
                h.update(d.encode("utf-8"))
                h.update(b"\0")
            self.sha256 = h.hexdigest()

    @property
    def n_chars(self) -> int:
        """Return the total number of characters over all documents."""
        return sum(len(d) for d in self.documents)

    def describe(self) -> dict:
        """Return what a model card needs to name this corpus (no text)."""
        return {
            "name": self.name,
            "version": self.version,
            "source": self.source,
            "sha256": self.sha256,
            "documents": len(self.documents),
            "chars": self.n_chars,
        }


def load_corpus(name: str) -> Corpus:
    """Return the corpus ``kjv``, ``python-stdlib``, or a text file given by path.

    Raises BadInput naming the exact install command when a packaged corpus is missing.
    """
    if name == KJV:
        return load_kjv()
    if name == STDLIB:
        return load_python_stdlib()
    p = Path(name)
    if p.is_file():
        return load_text_file(p)
    raise BadInput(f"unknown corpus {name!r}: use one of {', '.join(CORPORA)} or the path of a text file")


def _dpkg_version(package: str) -> str | None:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, check=False
        )
    except OSError:
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def load_kjv() -> Corpus:
    """Return the King James Bible, one document per chapter (1,189 of them), verses one per line."""
    bible = shutil.which("bible")
    if bible is None or not KJV_DATA.is_file():
        raise BadInput(f"corpus {KJV!r} (the King James Bible) is not installed; install it with: {KJV_INSTALL}")
    try:
        # -f turns pretty-printing off: one verse a line, preceded by its reference ("Ge1:1 In the ...").
        out = subprocess.run(
            [bible, "-f", "Gen1:1-Rev22:21"], capture_output=True, text=True, check=True, timeout=120,
            encoding="utf-8", errors="strict",
        ).stdout
    except (OSError, subprocess.SubprocessError, UnicodeDecodeError) as e:
        raise BadInput(
            f"corpus {KJV!r}: could not read the text with {bible} ({e}); reinstall: {KJV_INSTALL}"
        ) from None
    chapters: dict[tuple[str, str], list[str]] = {}
    for line in out.splitlines():
        m = _VERSE.match(line)
        if m is None:
            if line.strip():
                raise BadInput(f"corpus {KJV!r}: unexpected line from {bible}: {line[:60]!r}")
            continue
        chapters.setdefault((m.group(1), m.group(2)), []).append(m.group(4).strip())
    docs = ["\n".join(verses) for verses in chapters.values()]
    if len(docs) < 1000:
        raise BadInput(f"corpus {KJV!r}: only {len(docs)} chapters read from {bible}; reinstall: {KJV_INSTALL}")
    version = f"bible-kjv-text {_dpkg_version('bible-kjv-text') or 'unknown'}"
    return Corpus(KJV, version, docs, source=f"{bible} -f Gen1:1-Rev22:21 (Debian bible-kjv, {KJV_DATA})")


def stdlib_install_hint() -> str:
    """Return the command that installs the standard library's source for this Python."""
    v = sys.version_info
    return f"apt-get install -y libpython{v.major}.{v.minor}-stdlib (or use a Python build that keeps its .py sources)"


def load_python_stdlib() -> Corpus:
    """Return the running Python's standard-library source: top-level ``*.py`` modules, one per file."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py"))
    docs = []
    for f in files:
        try:
            docs.append(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            continue
    if len(docs) < 20:
        raise BadInput(f"corpus {STDLIB!r}: no standard-library source under {root}; install it with: "
                       f"{stdlib_install_hint()}")
    version = f"python {sys.version.split()[0]}"
    return Corpus(STDLIB, version, docs, source=f"{root}/*.py ({len(docs)} files)")


def load_text_file(path: str | Path) -> Corpus:
    """Return a text file as a corpus: blank-line-separated blocks, or lines when there are no blank lines."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"{p}: unreadable text file ({e})") from None
    blocks = [b.strip("\n") for b in re.split(r"\n\s*\n", text) if b.strip()]
    if len(blocks) < 2:
        blocks = [line for line in text.splitlines() if line.strip()]
    if not blocks:
        raise BadInput(f"{p}: empty text file")
    return Corpus(p.name, "file", blocks, source=str(p.resolve()))


def split_documents(documents: Sequence[str], val_every: int = VAL_EVERY) -> tuple[list[str], list[str]]:
    """Return (train, validation): document i is validation iff ``i % val_every == val_every - 1``."""
    train = [d for i, d in enumerate(documents) if i % val_every != val_every - 1]
    val = [d for i, d in enumerate(documents) if i % val_every == val_every - 1]
    return train, val


def train_bpe(texts: Iterable[str], vocab_size: int, special_tokens: Sequence[str] = (EOT,)):
    """Return a byte-level BPE ``tokenizers.Tokenizer`` trained on ``texts`` with at most ``vocab_size`` ids.

    Special tokens take the first ids (``<|endoftext|>`` = 0). Training is deterministic for fixed input.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return tok


def encode_stream(tokenizer, documents: Sequence[str]) -> np.ndarray:
    """Return the documents' token ids as one int64 stream, each document followed by ``<|endoftext|>``."""
    eot = tokenizer.token_to_id(EOT)
    if eot is None:
        raise BadInput(f"tokenizer has no {EOT} token")
    encs = tokenizer.encode_batch(list(documents), add_special_tokens=False)
    parts = []
    for e in encs:
        parts.append(np.asarray(e.ids, dtype=np.int64))
        parts.append(np.array([eot], dtype=np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def sample_windows(rng: np.random.Generator, stream: np.ndarray, batch: int, length: int) -> np.ndarray:
    """Return ``batch`` windows [batch, length] of ``stream`` starting at uniformly random offsets."""
    if len(stream) < length:
        raise BadInput(f"token stream of {len(stream)} tokens is shorter than one window of {length}")
    starts = rng.integers(0, len(stream) - length + 1, size=batch)
    return stream[starts[:, None] + np.arange(length)[None, :]]


def eval_windows(stream: np.ndarray, length: int, max_windows: int) -> np.ndarray:
    """Return up to ``max_windows`` non-overlapping windows [n, length], spread evenly over the stream."""
    n_fit = len(stream) // length
    if n_fit == 0:
        raise BadInput(f"validation stream of {len(stream)} tokens is shorter than one window of {length}")
    chosen = np.unique(np.linspace(0, n_fit - 1, num=min(n_fit, max_windows)).round().astype(np.int64))
    return stream[(chosen * length)[:, None] + np.arange(length)[None, :]]


def unigram_cross_entropy(train_stream: np.ndarray, val_stream: np.ndarray, vocab_size: int) -> float:
    """Return the cross-entropy (nats/token) on ``val_stream`` of train's unigram distribution, add-one smoothed.

    The baseline a next-token model must beat: it knows which tokens are frequent and nothing else.
    """
    counts = np.bincount(train_stream, minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[val_stream].mean())
