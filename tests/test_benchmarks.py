"""The benchmarks run as a user runs them (their quick modes, in the slow suite): a benchmark that
stops working when a structure it reads grows (check_speed.py's pooled-term tuple did) fails here."""

import subprocess
import sys
from pathlib import Path

import numpy as np
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


@pytest.mark.parametrize("script, args", [
    ("prove_tightness.py", ["--design-n-free", "0"]), ("prove_tightness.py", ["--row", "7"]),
    ("prove_tightness.py", ["--row", "x"]),
    ("prove_hull_gap.py", ["--L", "0"]), ("prove_hull_gap.py", ["--parts", "0"]),
    ("prove_hull_gap.py", ["--top", "1,x"]), ("prove_hull_gap.py", ["--top", "0"]),
    ("prove_hull_gap.py", ["--n-fix", "5000"]),
])
def test_benchmark_rejects_nonsense_flags_with_exit_2(script, args):
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args],
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


def _hull_gap_module():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import prove_hull_gap
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return prove_hull_gap


def test_prove_hull_gap_fractional_tokens_are_convex_combinations_of_strings():
    """Z / W with per-position token distributions equals, head by head, the combination of the real
    strings' attention outputs with weights prod_i pi_i,t_i (W_A + sum_i w_i,t_i) / W (what makes the
    gradient search a search over the hull)."""
    import itertools

    import torch

    from assay.prove.toy import toy_model
    hg = _hull_gap_module()
    m = toy_model(3, d_vocab=4)
    ev = hg.LastPosition(m, [0, 1, 2], [3], 2)
    ws, vs = hg.weights_and_values(ev)
    ws, vs = ws.detach(), vs.detach()
    pi = torch.softmax(torch.tensor(np.random.default_rng(0).normal(size=(2, 4))), -1)
    W = ev.W_fix + torch.einsum("lv,lvh->h", pi, ws)
    Z = ev.Z_fix + torch.einsum("lv,lvh,lvhe->he", pi, ws, vs)
    mix = torch.zeros_like(Z)
    for t in itertools.product(range(4), repeat=2):
        Wt = ev.W_fix + ws[0, t[0]] + ws[1, t[1]]
        Zt = ev.Z_fix + ws[0, t[0], :, None] * vs[0, t[0]] + ws[1, t[1], :, None] * vs[1, t[1]]
        mix += (pi[0, t[0]] * pi[1, t[1]] * Wt / W)[:, None] * (Zt / Wt[:, None])
    assert torch.allclose(mix, Z / W[:, None], atol=1e-12)


def test_prove_hull_gap_bounds_bracket_the_truth_on_a_toy_model(monkeypatch):
    """certified <= the enumerated least margin (which equals the model's own forward pass over every
    string) <= the attack's estimate, and certified <= the hull search's value (every iterate is a
    point of the hull, which the prover's set contains)."""
    import itertools
    import math

    import torch

    from assay.prove.api import reference_token
    from assay.prove.toy import toy_model
    hg = _hull_gap_module()
    m = toy_model(5, d_vocab=5, unembed=3.0)
    prefix, suffix, L = [0, 1, 2, 3, 0, 1], [2], 2
    c = reference_token(m, prefix, suffix)
    ev = hg.LastPosition(m, prefix, suffix, L)
    cands = np.arange(5)
    true, exact = hg.subset_true(m, prefix, suffix, ev, c, cands, np.random.default_rng(0))
    assert exact
    with torch.no_grad():
        ref = min(float(lg[c] - torch.cat([lg[:c], lg[c + 1:]]).max())
                  for t in itertools.product(range(5), repeat=L)
                  for lg in [m(torch.tensor([prefix + list(t) + suffix]))[0, -1]])
    assert abs(true - ref) < 1e-9
    monkeypatch.setattr(hg, "ENUMERATE_MAX", 1)  # the attack's path: an upper estimate of the truth
    est, exact = hg.subset_true(m, prefix, suffix, ev, c, cands, np.random.default_rng(0))
    assert not exact and est >= true - 1e-9
    cert = hg.certified(m, prefix, suffix, cands, L, c)
    assert math.isfinite(cert) and cert <= true + 1e-9
    hull = hg.hull_margin(ev, c, np.random.default_rng(0), starts=2, steps=50)
    assert cert <= hull + 1e-9
