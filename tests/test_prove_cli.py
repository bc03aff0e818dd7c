"""``assay prove``, ``assay check`` and ``assay design`` as a user runs them: subprocess, files, exit codes.

Ground truth for every claim the command line proves is enumeration of every free string
(assay.prove.bruteforce, the model's own float64 forward pass), not the prover's own output.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_bad_input

from assay.cli import main
from assay.model import ModelConfig, Transformer, save, shipped_models
from assay.prove import prove
from assay.prove.bruteforce import enumerate_claim
from assay.prove.toy import toy_model

PROVE_KEYS = {"proven", "token", "margin", "n_fix", "n_free", "seconds", "certificate"}


def subprocess_run(*args: str) -> subprocess.CompletedProcess:
    """The command exactly as a user runs it (a new interpreter): used where process exit matters."""
    return subprocess.run([sys.executable, "-m", "assay", *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=600)


def run(*args: str) -> subprocess.CompletedProcess:
    """``assay.cli.main`` in this process (the same code path as ``python -m assay``, without the
    interpreter start-up), returning what a subprocess would: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def ids(xs) -> str:
    return ",".join(str(x) for x in xs)


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory) -> Path:
    """A saved toy model (V = 6) and two claims about it: one the API proves, one it does not."""
    root = tmp_path_factory.mktemp("provecli")
    model = toy_model(2, qk=1.0)
    save(model, root / "toy", card={"recipe": "test", "seed": 2})
    return root


def _claims(model):
    """(proven claim, unproven claim), each (prefix, n_free, suffix), found with the API."""
    proven = unproven = None
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        prefix = torch.randint(0, 6, (10,), generator=g).tolist()
        suffix = [int(torch.randint(0, 6, (1,), generator=g))]
        r = prove(model, prefix, 2, suffix=suffix)
        if r.proven and proven is None:
            proven = (prefix, 2, suffix)
        if not r.proven and unproven is None:
            unproven = (prefix, 2, suffix)
        if proven and unproven:
            return proven, unproven
    pytest.fail("no proven/unproven pair among 200 random claims")


@pytest.fixture(scope="module")
def claims(toy_dir):
    from assay.model import load

    return _claims(load(toy_dir / "toy", dtype=torch.float64))


def test_proven_claim_exit_0_json_certificate_and_check(toy_dir, claims, tmp_path):
    (prefix, n_free, suffix), _ = claims
    cert = tmp_path / "cert.json"
    p = subprocess_run("prove", str(toy_dir / "toy"), "--prefix", ids(prefix), "--suffix", ids(suffix),
                       "--n-free", str(n_free), "--out", str(cert), "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert PROVE_KEYS <= set(data)
    assert data["proven"] is True and data["n_fix"] == len(prefix) and data["n_free"] == n_free
    assert data["certificate"] == str(cert) and data["seconds"] >= 0
    from assay.model import load

    e = enumerate_claim(load(toy_dir / "toy"), prefix, n_free, suffix)
    assert e.argmax_tokens == {data["token"]}  # the claim is true
    assert 0 < data["margin"] <= e.min_margin[data["token"]] + 1e-9  # and the margin is a lower bound
    body = json.loads(cert.read_text())
    for key in ("model_sha256", "prefix", "suffix", "n_free", "allowed", "token"):
        assert key in body
    assert body["prefix"] == prefix and body["token"] == data["token"]
    c = subprocess_run("check", str(cert), "--json")  # the certificate names its model
    assert c.returncode == 0, c.stderr
    assert json.loads(c.stdout)["valid"] is True


def test_human_readable_prove_output(toy_dir, claims):
    (prefix, n_free, suffix), (uprefix, un, usuffix) = claims
    p = run("prove", str(toy_dir / "toy"), "--prefix", ids(prefix), "--suffix", ids(suffix), "--n-free", str(n_free))
    assert p.returncode == 0 and p.stdout.startswith("PROVEN"), p.stdout
    p = run("prove", str(toy_dir / "toy"), "--prefix", ids(uprefix), "--suffix", ids(usuffix), "--n-free", str(un))
    assert p.returncode == 1 and p.stdout.startswith("NOT PROVEN") and p.stderr == "", (p.stdout, p.stderr)


def test_unproven_claim_is_exit_1_with_the_best_margin(toy_dir, claims, tmp_path):
    _, (prefix, n_free, suffix) = claims
    p = run("prove", str(toy_dir / "toy"), "--prefix", ids(prefix), "--suffix", ids(suffix), "--n-free",
            str(n_free), "--json")
    assert p.returncode == 1, p.stderr
    assert p.stderr == ""
    data = json.loads(p.stdout)
    assert data["proven"] is False and data["margin"] is None and data["certificate"] is None
    assert isinstance(data["best_margin"], float) and data["best_margin"] <= 0
    from assay.model import load

    e = enumerate_claim(load(toy_dir / "toy"), prefix, n_free, suffix)
    assert data["best_margin"] <= e.min_margin[data["token"]] + 1e-9


def test_check_rejects_a_tampered_certificate_with_exit_1(toy_dir, claims, tmp_path):
    (prefix, n_free, suffix), _ = claims
    cert = tmp_path / "cert.json"
    assert run("prove", str(toy_dir / "toy"), "--prefix", ids(prefix), "--suffix", ids(suffix), "--n-free",
               str(n_free), "--out", str(cert)).returncode == 0
    body = json.loads(cert.read_text())
    for field, value in (("n_free", n_free + 1), ("token", (body["token"] + 1) % 6),
                         ("prefix", [(prefix[0] + 1) % 6] + prefix[1:]), ("margin", body["margin"] * 2)):
        bad = dict(body, **{field: value})
        path = tmp_path / f"bad-{field}.json"
        path.write_text(json.dumps(bad))
        c = run("check", str(path))
        assert c.returncode == 1, (field, c.stdout, c.stderr)
        lines = c.stderr.strip().splitlines()
        assert len(lines) == 1 and "rejected" in lines[0] and "Traceback" not in c.stderr, c.stderr
    # the same certificate against a different model
    other = toy_model(3, qk=1.0)
    save(other, tmp_path / "other")
    c = run("check", str(cert), "--model", str(tmp_path / "other"))
    assert c.returncode == 1 and "rejected" in c.stderr


@pytest.mark.parametrize("content, needle", [
    ("{not json", "not a JSON certificate"),
    ('{"prefix": [1, 2]', "not a JSON certificate"),
    ("[1, 2, 3]", "not a JSON certificate"),
    ('{"format": "assay-overwhelm-certificate/1", "prefix": [1]}', "missing"),
])
def test_corrupt_certificate_is_exit_2_one_line(toy_dir, tmp_path, content, needle):
    path = tmp_path / "cert.json"
    path.write_text(content)
    assert_bad_input(subprocess_run("check", str(path), "--model", str(toy_dir / "toy")), needle)


def test_bad_input_is_exit_2_and_writes_nothing(toy_dir, tmp_path):
    toy = str(toy_dir / "toy")
    out = tmp_path / "never.json"
    cases = [
        (["--prefix", "1,6", "--n-free", "1"], "out of range"),
        (["--prefix", "1,2", "--suffix", "9", "--n-free", "1"], "out of range"),
        (["--prefix", "1,2", "--n-free", "-1"], "--n-free"),
        (["--prefix", ids([1] * 30), "--n-free", "9", "--suffix", "1,2"], "n_ctx"),
        (["--prefix-text", "hello", "--n-free", "1"], "no tokenizer"),
        (["--n-free", "1"], "prefix"),
        (["--prefix", "1", "--n-free", "1", "--allowed", "7"], "--allowed"),
    ]
    for extra, needle in cases:
        assert_bad_input(run("prove", toy, *extra, "--out", str(out)), needle)
        assert not out.exists()


@pytest.mark.parametrize("overrides, needle", [
    (dict(act_fn="gelu_new"), "gelu_new"),
    (dict(ln_position="post"), "post-LN"),
    (dict(causal=False), "bidirectional"),
    (dict(attention="saturated"), "saturated"),
])
def test_uncovered_model_is_exit_2_naming_the_part(tmp_path, overrides, needle):
    cfg = ModelConfig(n_layers=1, d_model=8, n_heads=2, d_head=4, d_vocab=5, n_ctx=16, d_mlp=16, **overrides)
    m = Transformer(cfg)
    m.init_weights(seed=0)
    save(m, tmp_path / "m")
    assert_bad_input(run("prove", str(tmp_path / "m"), "--prefix", "1,2", "--n-free", "1"), needle)


def test_design_json_reports_what_it_tried_and_its_prefix_proves(toy_dir, tmp_path):
    p = run("design", str(toy_dir / "toy"), "--n-fix", "10", "--n-free", "2", "--suffix", "2", "--budget", "15",
            "--json")
    assert p.returncode in (0, 1), p.stderr
    data = json.loads(p.stdout)
    assert {"prefix", "proven", "token", "margin", "seconds", "tried"} <= set(data)
    assert len(data["prefix"]) == 10 and data["tried"]
    for rec in data["tried"]:
        assert {"strategy", "candidates", "best_margin"} <= set(rec)
    assert p.returncode == (0 if data["proven"] else 1)
    assert data["proven"], data["tried"]  # this toy model has designed prefixes (test_prove_api)
    from assay.model import load

    e = enumerate_claim(load(toy_dir / "toy"), data["prefix"], 2, [2])
    assert e.argmax_tokens == {data["token"]} and data["margin"] <= e.min_margin[data["token"]] + 1e-9


def test_design_bad_input(toy_dir):
    toy = str(toy_dir / "toy")
    assert_bad_input(run("design", toy, "--n-fix", "30", "--n-free", "9", "--suffix", "1,2"), "n_ctx")
    assert_bad_input(run("design", toy, "--n-fix", "5", "--n-free", "1", "--suffix", "8"), "out of range")
    assert_bad_input(run("design", toy, "--n-fix", "5", "--n-free", "1", "--evals", "0"), "--evals")


def test_design_with_evals_gives_the_same_json_twice(toy_dir):
    args = ("design", str(toy_dir / "toy"), "--n-fix", "10", "--n-free", "2", "--suffix", "2", "--evals", "10",
            "--json")
    a, b = json.loads(run(*args).stdout), json.loads(run(*args).stdout)
    a.pop("seconds"), b.pop("seconds")
    assert a == b and a["tried"]


@pytest.mark.skipif("overwhelm-1l" not in shipped_models(), reason="needs the shipped overwhelm-1l")
def test_prefix_and_suffix_text_on_the_shipped_model():
    from assay.model import load

    m = load("overwhelm-1l")
    prefix_text, suffix_text = " congreg" * 64, "."
    p = run("prove", "overwhelm-1l", "--prefix-text", prefix_text, "--suffix-text", suffix_text, "--n-free", "0",
            "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    prefix, suffix = m.tokenizer.encode(prefix_text).ids, m.tokenizer.encode(suffix_text).ids
    assert data["n_fix"] == len(prefix)
    with torch.no_grad():
        logits = m.double()(torch.tensor([prefix + suffix]))[0, -1]
    top2 = torch.topk(logits, 2).values
    assert data["token"] == int(logits.argmax())
    assert 0 < data["margin"] <= float(top2[0] - top2[1]) + 1e-9
    assert_bad_input(run("prove", "overwhelm-1l", "--prefix", "1", "--prefix-text", "a", "--n-free", "0"), "not both")
