"""The ``assay`` command as a user runs it: a subprocess, real files, real exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_bad_input

from assay.model import ModelConfig, Transformer, save

TINY = ModelConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, d_vocab=12, n_ctx=20, d_mlp=32,
                   positional_embedding_type="rotary")


def run(*args: str, env_models: Path | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if env_models is not None:
        env["ASSAY_MODELS"] = str(env_models)
    return subprocess.run([sys.executable, "-m", "assay", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    model = Transformer(TINY)
    model.init_weights(seed=0)
    save(model, root / "tiny", card={"recipe": "test", "seed": 0, "steps": 0, "final_metrics": {"loss": 1.5}})
    return root


def test_help_lists_every_capability():
    p = run("--help")
    assert p.returncode == 0
    for cmd in ("prove", "check", "design", "lipschitz", "addition", "saturation", "erasure", "train", "demo"):
        assert cmd in p.stdout


def test_subcommand_help_has_an_example():
    p = run("prove", "--help")
    assert p.returncode == 0 and "example:" in p.stdout and "--n-free" in p.stdout


def test_every_command_help_renders_its_text_literally():
    # argparse %-formats help= but not description=: a "%%" in a command's text must not show as "%%"
    import argparse

    from assay.cli import build_parser

    def parsers(p):
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for sub in a.choices.values():
                    yield sub
                    yield from parsers(sub)

    seen = 0
    for sub in parsers(build_parser()):
        text = sub.format_help()
        assert "%%" not in text, sub.prog
        seen += 1
    assert seen >= 15


def test_info_json_is_one_object(models):
    p = run("info", "tiny", "--json", env_models=models)
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)  # exactly one JSON document, nothing else on stdout
    assert data["config"]["d_vocab"] == 12
    assert data["n_params"] == sum(x.numel() for x in Transformer(TINY).parameters())
    assert data["card"]["recipe"] == "test"


def test_predict_matches_the_forward_pass(models):
    p = run("predict", "tiny", "--tokens", "1,2,3", "--top", "3", "--json", env_models=models)
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    from assay.model import load

    model = load(models / "tiny")
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3]]))[0, -1].double()
    assert [r["id"] for r in data["top"]] == torch.topk(logits, 3).indices.tolist()
    assert data["top"][0]["prob"] == pytest.approx(float(logits.softmax(-1).max()), rel=1e-6)


def test_models_lists_the_shipped_models(models):
    p = run("models", "--json", env_models=models)
    assert p.returncode == 0
    assert [m["name"] for m in json.loads(p.stdout)["models"]] == ["tiny"]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["info", "gpt2"], "pass a local directory"),
        (["predict", "tiny", "--tokens", "1,99"], "out of range"),
        (["predict", "tiny", "--tokens", "-1"], "out of range"),
        (["predict", "tiny", "--tokens", ",".join(["1"] * 21)], "n_ctx"),
        (["predict", "tiny", "--tokens", "1,x"], "token ids"),
        (["predict", "tiny", "--tokens", "1", "--top", "0"], "--top"),
        (["predict", "tiny", "--tokens-text", "hello"], "no tokenizer"),
        (["prove", "tiny", "--prefix", "1,2", "--n-free", "-1"], "--n-free"),
        (["prove", "tiny", "--prefix", "1,2", "--n-free", "two"], "--n-free"),
        (["prove", "tiny", "--prefix", "1,2", "--n-free", "19"], "n_ctx"),
        (["prove", "tiny", "--prefix", "1,12", "--n-free", "1"], "out of range"),
        (["prove", "tiny", "--prefix", "1", "--n-free", "1", "--allowed", "3,40"], "--allowed"),
        (["design", "tiny", "--n-fix", "0", "--n-free", "1"], "--n-fix"),
        (["check", "no-such-cert.json"], "no such file"),
        (["train", "tiny", "--steps", "-5"], "--steps"),
        (["lipschitz", "tiny"], "--layer is required"),
        (["addition"], "choose a subcommand"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(models, args, needle):
    assert_bad_input(run(*args, env_models=models), needle)


def test_corrupt_model_file_is_one_line(tmp_path, models):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(models / "tiny", broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert_bad_input(run("info", str(broken)), "model.safetensors")


def test_corrupt_certificate_is_one_line(tmp_path, models):
    cert = tmp_path / "cert.json"
    cert.write_text("{not json")
    assert_bad_input(run("check", str(cert), "--model", "tiny", env_models=models), "not a JSON certificate")


@pytest.mark.slow  # about a minute: every section on the test models
def test_demo_writes_a_report_with_every_section(tmp_path, models):
    out = tmp_path / "report"
    p = run("demo", "--out", str(out), "--json", env_models=models)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    html = (out / "index.html").read_text()
    assert set(summary["sections"]) == {"prove", "lipschitz", "addition", "saturation", "erasure"}
    assert "tiny" in html and "loss=1.5" in html
    assert (out / "figures" / "attention-tiny.png").stat().st_size > 1000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left behind


def test_demo_refuses_an_out_it_would_destroy_before_any_work(tmp_path, models):
    (tmp_path / "notes.txt").write_text("precious")
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "main.py").write_text("precious")
    for out, needle in ((tmp_path / "notes.txt", "is not a directory"),
                        (tmp_path / "project", "is not a demo report directory")):
        p = run("demo", "--out", str(out), env_models=models)
        assert_bad_input(p, needle)
        assert "[demo]" not in p.stderr  # refused before the first section started
    assert (tmp_path / "notes.txt").read_text() == (tmp_path / "project" / "main.py").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "project"]
