"""Models on disk: bit-exact round trips, one-line BadInput for every broken directory, atomic saves."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import safetensors.torch
import torch

from assay.errors import BadInput
from assay.model import file_sha256, load, load_card, load_config, save, shipped_models


def _bad(path, *words):
    """load(path) raises BadInput with a one-line message containing every word."""
    with pytest.raises(BadInput) as e:
        load(path)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 400, msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --------------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "opts", [{}, dict(positional_embedding_type="rotary", attn_only=True), dict(ln_position="post", causal=False)]
)
def test_save_load_round_trip_is_bit_exact(small_config, random_model, model_dir, dtype, opts):
    model = random_model(small_config(**opts), seed=1, dtype=dtype)
    assert save(model, model_dir) == model_dir
    assert _listing(model_dir) == ["config.json", "model.safetensors"]
    assert json.loads((model_dir / "config.json").read_text()) == model.cfg.to_dict()
    loaded = load(model_dir)
    assert loaded.cfg == model.cfg
    assert not loaded.training
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert theirs[k].dtype == dtype, k
        assert torch.equal(ours[k], theirs[k]), k
    tokens = torch.tensor([[1, 2, 3, 4, 5]])
    assert torch.equal(model(tokens), loaded(tokens))
    digest = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
    assert loaded.weights_sha256 == file_sha256(model_dir / "model.safetensors") == digest
    assert Path(loaded.source_dir) == model_dir


def test_load_can_change_dtype(small_config, random_model, model_dir):
    model = random_model(small_config(), dtype=torch.float32)
    save(model, model_dir)
    loaded = load(model_dir, dtype=torch.float64)
    assert loaded.W_E.dtype == torch.float64
    assert torch.equal(loaded.W_E, model.W_E.double())


def test_card_and_tokenizer_round_trip(small_config, random_model, model_dir):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    model = random_model(small_config())
    vocab = {w: i for i, w in enumerate("the cat sat on a mat [UNK]".split())}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    model.tokenizer = tok
    card = {"recipe": "test", "seed": 3, "metrics": {"loss": 1.5}}
    save(model, model_dir, card=card)
    assert _listing(model_dir) == ["card.json", "config.json", "model.safetensors", "tokenizer.json"]
    loaded = load(model_dir)
    assert loaded.tokenizer.encode("the cat sat on a dog").ids == [0, 1, 2, 3, 4, 6]
    assert load_card(model_dir) == card
    (model_dir / "tokenizer.json").write_text("{not json")
    _bad(model_dir, "tokenizer")
    (model_dir / "card.json").write_text("{not json")
    with pytest.raises(BadInput):
        load_card(model_dir)


def test_saving_over_an_existing_model_replaces_it(small_config, random_model, model_dir):
    save(random_model(small_config(), seed=1), model_dir)
    new = random_model(small_config(n_layers=1), seed=2)
    save(new, model_dir)
    assert load(model_dir).cfg.n_layers == 1
    assert torch.equal(load(model_dir).W_E, new.W_E)
    assert _listing(model_dir.parent) == ["model"]  # no temporary or old directory left behind


def test_shipped_model_by_name_via_ASSAY_MODELS(small_config, random_model, tmp_path, monkeypatch):
    monkeypatch.setenv("ASSAY_MODELS", str(tmp_path / "shipped"))
    model = random_model(small_config(), seed=4)
    save(model, tmp_path / "shipped" / "tiny-1l")
    (tmp_path / "shipped" / "not-a-model").mkdir()
    assert shipped_models() == ["tiny-1l"]
    loaded = load("tiny-1l")
    assert torch.equal(loaded.W_E, model.W_E)
    assert load_config("tiny-1l") == model.cfg
    msg = _bad("tiny-2l", "tiny-2l", "tiny-1l")  # the message lists what is shipped
    assert "local directory" in msg


@pytest.mark.parametrize("name", ["gpt2", "openai-community/gpt2", "bert-base-uncased"])
def test_hub_names_say_to_pass_a_local_directory(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ASSAY_MODELS", str(tmp_path / "none"))
    _bad(name, name, "local directory")


# --------------------------------------------------------------------------------------------------
# Broken directories
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def saved(small_config, random_model, model_dir):
    save(random_model(small_config(), seed=5), model_dir)
    return model_dir


def test_missing_directory(tmp_path):
    _bad(tmp_path / "nowhere", "nowhere")


def test_a_file_is_not_a_model_directory(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0" * 10)
    _bad(tmp_path / "weights.bin", "not a model directory")


def test_missing_config(saved):
    (saved / "config.json").unlink()
    _bad(saved, "missing config.json")
    with pytest.raises(BadInput):
        load_config(saved)


def test_missing_weights(saved):
    (saved / "model.safetensors").unlink()
    _bad(saved, "missing model.safetensors")


@pytest.mark.parametrize("text", ["{not json", "", "[1, 2]", "42", '"config"', "null"])
def test_corrupt_config(saved, text):
    (saved / "config.json").write_text(text)
    _bad(saved, "config")


def test_config_with_unknown_field(saved):
    cfg = json.loads((saved / "config.json").read_text())
    cfg["n_experts"] = 8
    (saved / "config.json").write_text(json.dumps(cfg))
    _bad(saved, "n_experts")


@pytest.mark.parametrize(
    "field, value", [("attention", "sparsemax"), ("causal", "false"), ("n_layers", "2"), ("eps", None)]
)
def test_config_with_invalid_value(saved, field, value):
    cfg = json.loads((saved / "config.json").read_text())
    cfg[field] = value
    (saved / "config.json").write_text(json.dumps(cfg))
    _bad(saved, field)


def test_config_that_does_not_match_the_weights(saved):
    cfg = json.loads((saved / "config.json").read_text())
    cfg["n_layers"] = 3  # the weights hold 2 layers
    (saved / "config.json").write_text(json.dumps(cfg))
    _bad(saved, "blocks.2")


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.01])
def test_truncated_weights(saved, fraction):
    f = saved / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: int(len(data) * fraction)])
    _bad(saved, "model.safetensors")


def test_garbage_weights(saved):
    (saved / "model.safetensors").write_bytes(b"this is not a safetensors file at all" * 10)
    _bad(saved, "model.safetensors")


def _rewrite_weights(directory: Path, edit) -> None:
    f = directory / "model.safetensors"
    state = safetensors.torch.load_file(str(f))
    edit(state)
    safetensors.torch.save_file(state, str(f))


def test_weights_of_the_wrong_shape(saved):
    _rewrite_weights(saved, lambda s: s.__setitem__("blocks.1.attn.W_Q", torch.zeros(3, 12, 5)))
    _bad(saved, "blocks.1.attn.W_Q", "(3, 12, 5)", "(3, 12, 4)")


def test_missing_and_unexpected_weights(saved):
    _rewrite_weights(saved, lambda s: s.pop("blocks.0.mlp.W_in"))
    _bad(saved, "blocks.0.mlp.W_in")
    _rewrite_weights(saved, lambda s: s.__setitem__("blocks.0.mlp.W_gate", torch.zeros(2)))
    _bad(saved, "W_gate")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights(saved, value):
    def poison(state):
        state["blocks.0.attn.b_O"][3] = value

    _rewrite_weights(saved, poison)
    _bad(saved, "blocks.0.attn.b_O", "non-finite")


# --------------------------------------------------------------------------------------------------
# Atomic saves
# --------------------------------------------------------------------------------------------------


class Failure(Exception):
    pass


@pytest.mark.parametrize("existing", [False, True])
@pytest.mark.parametrize("error", [Failure, KeyboardInterrupt])
def test_failed_save_leaves_nothing_half_written(small_config, random_model, model_dir, monkeypatch, existing, error):
    old = random_model(small_config(), seed=6)
    if existing:
        save(old, model_dir)

    def fail(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a safetensors fi")  # leave a half-written file, then fail
        raise error("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", fail)
    with pytest.raises(error):
        save(random_model(small_config(n_layers=1), seed=7), model_dir)
    monkeypatch.undo()
    if existing:
        assert _listing(model_dir.parent) == ["model"]
        assert torch.equal(load(model_dir).W_E, old.W_E)
    else:
        assert _listing(model_dir.parent) == []


def test_failure_while_swapping_in_the_new_model_keeps_the_old_one(small_config, random_model, model_dir, monkeypatch):
    """The last step renames the old directory away and the new one into place; if the second rename
    fails (or is interrupted), the old model must be back where it was."""
    old = random_model(small_config(), seed=8)
    save(old, model_dir)
    real_rename = Path.rename

    def rename(self, target):
        if self.name.startswith(".model.") and not self.name.endswith(".old") and Path(target) == model_dir:
            raise KeyboardInterrupt
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        save(random_model(small_config(n_layers=1), seed=9), model_dir)
    monkeypatch.undo()
    assert _listing(model_dir.parent) == ["model"]
    assert torch.equal(load(model_dir).W_E, old.W_E)
