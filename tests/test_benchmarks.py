"""The benchmarks run as a user runs them (their quick modes, in the slow suite): a benchmark that
stops working when a structure it reads grows (check_speed.py's pooled-term tuple did) fails here."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.parametrize("script, args, expect", [
    ("check_speed.py", ["--quick"], "float filter, exact rows on demand"),
    ("capped_max_speed.py", ["--quick"], "blocked/loop"),
])
def test_benchmark_quick_mode_runs_and_prints_its_table(script, args, expect):
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True,
                       text=True, timeout=900, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    assert expect in p.stdout


@pytest.mark.parametrize("args", [["--design-n-free", "0"], ["--row", "7"], ["--row", "x"]])
def test_prove_tightness_rejects_nonsense_flags_with_exit_2(args):
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "prove_tightness.py"), *args],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    assert p.stdout == ""


def test_prove_tightness_runs_text_groups_equal_neighbours():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from prove_tightness import runs_text
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))

    class Tok:
        def decode(self, ids):
            return "".join(chr(ord("a") + i) for i in ids)

    assert runs_text(Tok(), [0, 0, 0, 1, 0]) == "'a' x 3 + 'b' x 1 + 'a' x 1"
    assert runs_text(Tok(), []) == ""
