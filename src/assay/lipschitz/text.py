"""Real text, offline, for the Lipschitz experiments: where it comes from and how it becomes tokens.

Sources, in order: a text file the caller names; the King James Bible from Debian's ``bible-kjv-text``
(read with its ``bible`` program) when installed; otherwise :data:`SAMPLE_TEXT`, the first verses of
Genesis (King James Version, public domain), which ships here so that nothing ever needs a corpus.

Tokens: a model's own tokenizer where it has one (MiniLM's WordPiece windows start with ``[CLS]``, as
BERT inputs do); otherwise the text's UTF-8 bytes, each byte one token id (mod d_vocab). GPT-2's
byte-level vocabulary starts with the 256 byte tokens, so for the random-init GPT-2 this is GPT-2
tokenisation at the byte level; for a random model only which tokens repeat matters anyway.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from assay.errors import BadInput

SAMPLE_TEXT = (
    "In the beginning God created the heaven and the earth. And the earth was without form, and void; "
    "and darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters. "
    "And God said, Let there be light: and there was light. And God saw the light, that it was good: and "
    "God divided the light from the darkness. And God called the light Day, and the darkness he called "
    "Night. And the evening and the morning were the first day. And God said, Let there be a firmament in "
    "the midst of the waters, and let it divide the waters from the waters. And God made the firmament, "
    "and divided the waters which were under the firmament from the waters which were above the "
    "firmament: and it was so. And God called the firmament Heaven. And the evening and the morning were "
    "the second day. And God said, Let the waters under the heaven be gathered together unto one place, "
    "and let the dry land appear: and it was so. And God called the dry land Earth; and the gathering "
    "together of the waters called he Seas: and God saw that it was good. And God said, Let the earth "
    "bring forth grass, the herb yielding seed, and the fruit tree yielding fruit after his kind, whose "
    "seed is in itself, upon the earth: and it was so. And the earth brought forth grass, and herb "
    "yielding seed after his kind, and the tree yielding fruit, whose seed was in itself, after his kind: "
    "and God saw that it was good. And the evening and the morning were the third day."
)

KJV_RANGE = "Gen1:1-Gen50:26"  # Genesis: about 200 KB, plenty of 512-token windows


def kjv_text(passage: str = KJV_RANGE) -> str | None:
    """Return a passage of the King James Bible (verse references stripped), or None if not installed."""
    bible = shutil.which("bible")
    if bible is None or not Path("/usr/lib/bible.data").is_file():
        return None
    try:
        out = subprocess.run([bible, "-f", passage], capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [ln.split(" ", 1)[1] for ln in out.splitlines() if " " in ln]
    return " ".join(lines) or None


def source_text(path: str | None = None) -> tuple[str, str]:
    """Return (text, name of its source): the file at ``path``, else the KJV if installed, else the sample."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise BadInput(f"--text {path}: no such file")
        try:
            return p.read_text(encoding="utf-8"), str(p)
        except (OSError, UnicodeDecodeError) as e:
            raise BadInput(f"--text {path}: unreadable ({' '.join(str(e).split())[:120]})") from None
    kjv = kjv_text()
    if kjv:
        return kjv, f"King James Bible ({KJV_RANGE}, bible-kjv-text)"
    return SAMPLE_TEXT, "built-in sample (Genesis 1:1-13, KJV)"


def encode(model: Any, text: str) -> tuple[list[int], int | None]:
    """Return (token ids of ``text`` without special tokens, id of a [CLS]-like start token or None)."""
    tok = getattr(model, "tokenizer", None)
    V = model.cfg.d_vocab
    if tok is not None:
        ids = tok.encode(text, add_special_tokens=False).ids
        cls = tok.token_to_id("[CLS]")
        return [i for i in ids if i < V], (cls if cls is not None and cls < V else None)
    return [b % V for b in text.encode("utf-8")], None


def text_windows(model: Any, n: int, count: int, text: str | None = None, stride: int | None = None) -> list[list[int]]:
    """Return up to ``count`` windows of ``n`` consecutive tokens of real text (each starting with [CLS]
    where the tokenizer has one), spread evenly over the text. Raises BadInput if the text is too short.
    """
    if text is None:
        text, _ = source_text()
    ids, cls = encode(model, text)
    body = n - 1 if cls is not None else n
    if len(ids) < body:
        raise BadInput(f"the text has {len(ids)} tokens, fewer than the n = {n} asked for; pass a longer --text")
    last = len(ids) - body
    starts = [0] if count <= 1 or last == 0 else sorted({round(i * last / (count - 1)) for i in range(count)})
    if stride is not None:
        starts = list(range(0, last + 1, stride))[:count]
    return [([cls] if cls is not None else []) + ids[s : s + body] for s in starts]
