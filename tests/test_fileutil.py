"""Atomic writes: the result appears whole or not at all, with the permissions of an ordinary write."""

from __future__ import annotations

import os
import stat

import pytest

from assay.errors import BadInput
from assay.fileutil import atomic_directory, atomic_write_text, check_output_dir


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_written_file_has_the_mode_open_would_give(tmp_path, umask_022):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic_write_text(tmp_path / "atomic.txt", "hello")
    assert (tmp_path / "atomic.txt").read_text() == "hello"
    assert _mode(tmp_path / "atomic.txt") == _mode(plain) == 0o644


def test_directory_has_the_mode_mkdir_would_give_and_replaces_the_old_one(tmp_path, umask_022):
    (tmp_path / "plain").mkdir()
    out = tmp_path / "report"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    with atomic_directory(out) as tmp:
        (tmp / "index.html").write_text("new")
        assert not (out / "index.html").exists()  # nothing visible before the block ends
    assert _mode(out) == _mode(tmp_path / "plain") == 0o755
    assert sorted(p.name for p in out.iterdir()) == ["index.html"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain", "report"]  # no temporaries left


def test_failure_leaves_the_old_directory_and_no_temporary(tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(out) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("boom")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_output_dir_check_refuses_files_and_foreign_directories(tmp_path):
    (tmp_path / "a-file").write_text("precious")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("precious")
    (tmp_path / "ours").mkdir()
    (tmp_path / "ours" / "index.html").write_text("old report")
    (tmp_path / "empty").mkdir()
    for bad, needle in ((tmp_path / "a-file", "is not a directory"),
                        (tmp_path / "a-file" / "below", "a-file is not a directory"),
                        (tmp_path / "theirs", "refusing to replace it")):
        with pytest.raises(BadInput, match=needle):
            check_output_dir(bad, "index.html")
    for good in (tmp_path / "new" / "deeper", tmp_path / "ours", tmp_path / "empty"):
        assert check_output_dir(good, "index.html") == good
    # without a marker any directory may be replaced, but a file never
    assert check_output_dir(tmp_path / "theirs") == tmp_path / "theirs"
    with pytest.raises(BadInput), atomic_directory(tmp_path / "a-file"):
        pass
    assert (tmp_path / "a-file").read_text() == "precious"
    assert (tmp_path / "theirs" / "notes.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "empty", "ours", "theirs"]
