"""Writing files so that a failure never leaves anything half-written."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from assay.errors import BadInput


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask



def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file in the same directory and a rename; return the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a written file gets the usual mode
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return target


def check_output_dir(path: str | os.PathLike, marker: str | None = None, what: str = "report") -> Path:
    """``path`` as a Path if a directory of results may be written there; BadInput otherwise.

    Allowed: a path that does not exist yet (no ancestor a file), an empty directory, or, when
    ``marker`` is given, a directory holding that file (an earlier result of the same kind, which
    :func:`atomic_directory` replaces). Anything else (a file, a directory of other things) is
    refused, so a mistyped ``--out`` never replaces someone's data. Commands call it before their slow
    work, so that a bad ``--out`` fails at once, not after minutes."""
    target = Path(path)
    if target.exists():
        if not target.is_dir():
            raise BadInput(f"{target}: exists and is not a directory")
        if marker is not None and not (target / marker).is_file() and any(target.iterdir()):
            raise BadInput(f"{target}: exists and is not a {what} directory; refusing to replace it")
        return target
    for parent in target.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise BadInput(f"{target}: {parent} is not a directory")
            break
    return target


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces ``path`` only if the block finishes without error."""
    target = check_output_dir(path)  # never a file
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; a report directory gets the usual mode
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(target)
