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
