"""Assertions shared by the command-line tests (imported as a plain module: tests/ is on sys.path)."""

from __future__ import annotations

import subprocess


def assert_bad_input(p: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit 2, exactly one line on stderr containing every needle, no traceback, nothing on stdout."""
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert p.stdout == ""
    for n in needles:
        assert n in lines[0], lines[0]
