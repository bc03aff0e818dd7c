"""``assay erasure`` as a subprocess: the JSON fields on the planted model, every bad input one line and exit 2;
and the shipped lm-4l (skipped when models/lm-4l is absent)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from assay.cli import main
from assay.erasure.planted import planted_model, planted_prompts
from assay.model import models_dir, save


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Many tiny forward passes: one torch thread is far faster on a shared machine (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "assay", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def planted_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("erasure") / "planted"
    save(planted_model(torch.float32), d)
    return d


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    f = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    f.write_text("\n".join(" ".join(map(str, p)) for p in planted_prompts(10)) + "\n")
    return f


def test_json_report_on_the_planted_model(planted_dir, prompts_file):
    r = run("erasure", str(planted_dir), "--prompts", str(prompts_file), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    flagged = [(p["writer"], p["eraser"]) for p in d["pairs"] if p["flagged"]]
    assert flagged == [("L0H0", "L1H0")]
    top = d["pairs"][0]
    assert set(top) >= {"writer", "eraser", "pr_median", "pr_q25", "pr_q75"}
    assert (top["writer"], top["eraser"]) == ("L0H0", "L1H0") and abs(top["pr_median"] + 1) < 0.05
    rp = d["residual_projection"]
    assert rp and set(rp[0]) >= {"writer", "hook", "median"}
    assert [x["hook"] for x in rp][-1] == "blocks.1.hook_resid_post" and abs(rp[-1]["median"]) < 0.05
    rows = {x["component"]: x for x in d["dla_vs_total"]}
    assert set(rows["L0H0"]) >= {"component", "dla", "total_effect"}
    assert d["causal"][0]["final_projection_patched"] == pytest.approx(1.0, abs=1e-3)
    assert d["dla_max_residual"] < 1e-4  # float32 weights


def test_one_writer(planted_dir, prompts_file, capsys):
    # In process (main() is what the console script calls); the subprocess path is covered above.
    assert main(["erasure", str(planted_dir), "--prompts", str(prompts_file), "--writer", "0.0", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert {p["writer"] for p in d["pairs"]} == {"L0H0"} and d["focus_writers"] == ["L0H0"]
    assert main(["erasure", str(planted_dir), "--prompts", str(prompts_file)]) == 0
    assert "L0H0 -> L1H0" in capsys.readouterr().out


def test_bad_input_subprocess(planted_dir, prompts_file):
    r = run("erasure", str(planted_dir), "--prompts", str(prompts_file), "--writer", "3.0", "--json")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        "assay: error: no component '3.0' in this model (2 layers, 2 heads): heads are L0H0..L1H1 (or 0.0..1.1), "
        "L0.mlp..L1.mlp, embed, pos_embed"]


def test_bad_input_is_one_line_and_exit_2(planted_dir, prompts_file, tmp_path, small_config, random_model, capsys):
    def _bad(*args: str, match: str) -> None:
        code = main(list(args))
        out, err = capsys.readouterr()
        assert code == 2, (out, err)
        assert out == ""
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, err
        assert match in lines[0], lines[0]

    _bad("erasure", str(planted_dir), "--prompts", str(prompts_file), "--writer", "3.0", match="no component '3.0'")
    _bad("erasure", str(planted_dir), "--prompts", str(prompts_file), "--writer", "L0.b_O", match="head or an MLP")
    empty = tmp_path / "empty.txt"
    empty.write_text("1 2 3\n\n4 5\n")
    _bad("erasure", str(planted_dir), "--prompts", str(empty), match="prompt 2 (line 2) is empty")
    nothing = tmp_path / "nothing.txt"
    nothing.write_text("")
    _bad("erasure", str(planted_dir), "--prompts", str(nothing), match="no prompts")
    long = tmp_path / "long.txt"
    long.write_text("1 2 3\n" + " ".join(["1"] * 9) + "\n")
    _bad("erasure", str(planted_dir), "--prompts", str(long), match="9 tokens, more than the model's n_ctx=8")
    single = tmp_path / "single.txt"
    single.write_text("3\n5\n")
    _bad("erasure", str(planted_dir), "--prompts", str(single), match="no next token to attribute")
    words = tmp_path / "words.txt"
    words.write_text("hello world\n")
    _bad("erasure", str(planted_dir), "--prompts", str(words), match="not a list of token ids")
    _bad("erasure", str(planted_dir), "--prompts", str(tmp_path / "missing.txt"), match="no such file")
    _bad("erasure", "no-such-model", "--prompts", str(prompts_file), match="unknown model")
    no_ln = tmp_path / "no-ln"
    save(random_model(small_config(normalization_type=None), dtype=torch.float32), no_ln)
    ids = tmp_path / "ids.txt"
    ids.write_text("1 2 3 4\n5 6 7\n")
    _bad("erasure", str(no_ln), "--prompts", str(ids), match="no final LayerNorm")
    assert main(["erasure", str(no_ln), "--prompts", str(ids), "--dla", "linear", "--json"]) == 0  # as it says
    assert json.loads(capsys.readouterr().out)["dla_mode"] == "linear"
    post = tmp_path / "post"
    save(random_model(small_config(ln_position="post", causal=False), dtype=torch.float32), post)
    _bad("erasure", str(post), "--prompts", str(ids), match="pre-LN")


LM = models_dir() / "lm-4l"


@pytest.mark.skipif(not (LM / "config.json").is_file(), reason="models/lm-4l not trained yet")
def test_shipped_lm_4l_dla_adds_up():
    from assay.erasure.dla import dla
    from assay.model import load

    model = load("lm-4l", dtype=torch.float64)
    ids = model.tokenizer.encode("And God said, Let there be light: and there was light.").ids
    d = dla(model, torch.tensor([ids]))
    assert d.residual_error() < 1e-9
    assert len(d.comps) == 2 + 4 * (8 + 2) + 2
