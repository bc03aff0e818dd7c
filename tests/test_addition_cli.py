"""``assay addition train|eval|analyze`` as a user runs them: subprocesses, real files, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import assert_bad_input

from assay.model import ModelConfig, Transformer, save
from assay.tasks import addition

ADD_CFG = ModelConfig(n_layers=1, d_model=24, n_heads=3, d_head=8, d_mlp=48, d_vocab=12, n_ctx=18,
                      act_fn="relu", normalization_type="LN", positional_embedding_type="standard")


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "assay", "addition", *args], capture_output=True, text=True,
                          timeout=600, env=env, cwd=cwd)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("addmodels")
    torch.manual_seed(0)
    m = Transformer(ADD_CFG)
    m.init_weights(seed=0)
    save(m, root / "tiny-add")
    other = Transformer(ModelConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, d_vocab=20, n_ctx=18, d_mlp=32))
    save(other, root / "not-add")
    return root


def test_eval_random_json(models):
    p = run("eval", str(models / "tiny-add"), "--random", "300", "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["n"] == 300 and 0 <= d["accuracy"] <= 1 and d["loss"] > 0
    assert set(d["by_category"]) == set(addition.CATEGORIES)
    assert sum(v["n"] for v in d["by_category"].values()) == 300
    lo, hi = d["ci95"]
    assert 0 <= lo <= d["accuracy"] <= hi <= 1
    assert set(d["per_digit"]) == {f"A{k}" for k in range(6)}


def test_eval_questions_file(models, tmp_path):
    f = tmp_path / "q.txt"
    f.write_text("12345+67890\n55555+44445\n00000+00000=\n00015+00005\n")
    p = run("eval", str(models / "tiny-add"), "--questions", str(f), "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["n"] == 4
    assert {c: v["n"] for c, v in d["by_category"].items()} == {"BA": 1, "UC1": 1, "US9": 1, "cascade": 1}


def test_eval_malformed_questions_name_the_line(models, tmp_path):
    # every kind of malformed line is covered in-process by test_addition.py; the three end-to-end
    f = tmp_path / "bad.txt"
    f.write_text("12345+67890\n\n12345+6789x\n")
    assert_bad_input(run("eval", str(models / "tiny-add"), "--questions", str(f), "--json"),
                     "line 3: second operand is not all digits")


@pytest.mark.parametrize("bad, needle", [
    ("1234+67890", "line 2: first operand has 4 digits, not 5"),
    ("1234567890", "line 2: missing '+'"),
    ("12345+6789x", "line 2: second operand is not all digits"),
])
def test_eval_each_kind_of_malformed_question_exits_2_naming_the_line(models, tmp_path, bad, needle):
    f = tmp_path / "bad.txt"
    f.write_text(f"12345+67890\n{bad}\n")
    assert_bad_input(run("eval", str(models / "tiny-add"), "--questions", str(f)), str(f), needle)


def test_eval_bad_inputs(models, tmp_path):
    # the message names the model directory whose vocabulary is wrong
    assert_bad_input(run("eval", str(models / "not-add"), "--random", "10"), "vocabulary", str(models / "not-add"))
    assert_bad_input(run("eval", str(models / "tiny-add"), "--random", "10", "--card"), "no card.json")
    missing = str(tmp_path / "missing.txt")
    assert_bad_input(run("eval", str(models / "tiny-add"), "--questions", missing), "no such file")


def test_analyze_quick_writes_a_report(models, tmp_path):
    out = tmp_path / "rep"
    p = run("analyze", str(models / "tiny-add"), "--quick", "--n", "400", "--out", str(out), "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["n"] == 400 and Path(d["report"]).is_file()
    assert 0 <= d["rule_agreement"] <= 1
    assert (out / "summary.json").is_file() and list((out / "figures").glob("*.png"))
    assert {r["algorithm"] for r in d["algorithms"]} >= {"exact addition", "declared (two-column look-back)"}


def test_analyze_and_train_bad_inputs(models, tmp_path):
    assert_bad_input(run("analyze", str(models / "not-add"), "--quick"), "vocabulary")
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "precious.txt").write_text("x")
    assert_bad_input(run("analyze", str(models / "tiny-add"), "--quick", "--out", str(tmp_path / "occupied")),
                     "refusing")
    assert (tmp_path / "occupied" / "precious.txt").read_text() == "x"
    assert_bad_input(run("analyze", str(models / "tiny-add"), "--quick", "--out",
                         str(tmp_path / "occupied" / "precious.txt")), "is not a directory")
    assert (tmp_path / "occupied" / "precious.txt").read_text() == "x"
    assert_bad_input(run("analyze", str(models / "tiny-add"), "--quick", "--out", str(tmp_path / "r2"),
                         "--compare", str(tmp_path / "occupied")), "no summary.json")
    assert not (tmp_path / "r2").exists()
    assert_bad_input(run("train", "majority-1l", "--steps", "1", "--out", str(tmp_path / "m")),
                     "not an addition recipe")
    assert not (tmp_path / "m").exists()


def test_help_has_examples():
    p = run("analyze", "--help")
    assert p.returncode == 0 and "example:" in p.stdout
    from assay.cli import _COMMANDS, build_parser

    build_parser()
    mine = [c for c in _COMMANDS if c.group == "addition"]
    assert sorted(c.name for c in mine) == ["analyze", "eval", "train"]
    assert all(c.example.startswith("assay addition ") for c in mine)


@pytest.mark.slow
def test_train_command_runs_the_recipe(tmp_path):
    p = run("train", "addition-1l", "--steps", "2", "--log-every", "1", "--out", str(tmp_path / "m"), "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    lines = (tmp_path / "m" / "train_digit_loss.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]
    assert np.isfinite(d["metrics"]["val_loss"])
