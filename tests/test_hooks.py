"""Hook points: TransformerLens's names and values, run_with_cache / run_with_hooks semantics.

Independent ground truth: TransformerLens itself. TransformerLens 4 removed ``HookedTransformer`` and
``HookedTransformerConfig``; its replacement, ``TransformerBridge``, builds a TL-native transformer from a
``TransformerBridgeConfig`` offline (``TransformerBridge.boot_native``), and
``enable_compatibility_mode(no_processing=True)`` gives it HookedTransformer's hook names with the
weights left as they are. We copy our weights into it and compare names, shapes, activations and logits.
It covers pre-LN models with softmax attention, learned or rotary positions, LN or none, causal or
bidirectional; the other options are checked against the formulas (tests/test_model.py) and by the
internal consistency checks below.
"""

from __future__ import annotations

import pytest
import torch
from conftest import combo_id, option_combinations

from assay.model import ActivationCache, ModelConfig, Transformer, get_act_name

# --------------------------------------------------------------------------------------------------
# TransformerLens as ground truth
# --------------------------------------------------------------------------------------------------

# Hooks that TransformerBridge adds on top of HookedTransformer's (module input / output hooks, and the
# unembed output), which HookedTransformer users do not have and assay does not offer.
BRIDGE_ONLY_SUFFIXES = (".hook_in", ".hook_out")
BRIDGE_ONLY = {"hook_unembed"}


@pytest.fixture(scope="module")
def tl():
    pytest.importorskip("transformer_lens")
    import transformer_lens.model_bridge.sources.native  # noqa: F401  (attaches boot_native)
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge, TransformerBridgeConfig


def _rope_permutation(cfg: ModelConfig) -> torch.Tensor:
    """TL-native RoPE rotates adjacent pairs (2i, 2i+1); ours (GPT-NeoX) rotates (i, i + rotary_dim/2).
    Reordering the d_head coordinates of W_Q and W_K maps one onto the other and leaves q.k unchanged."""
    half = cfg.rotary_dim // 2
    pairs = [c for i in range(half) for c in (i, i + half)]
    return torch.tensor(pairs + list(range(cfg.rotary_dim, cfg.d_head)))


def to_transformer_lens(tl, model: Transformer):
    """A TransformerLens bridge computing the same function as ``model`` (pre-LN, softmax only)."""
    TransformerBridge, TransformerBridgeConfig = tl
    cfg = model.cfg
    assert cfg.ln_position == "pre" and cfg.attention == "softmax" and not cfg.parallel_attn_mlp
    assert cfg.positional_embedding_type in ("standard", "rotary") and cfg.rotary_base == int(cfg.rotary_base)
    assert not model.unembed.b_U.any(), "the TL-native model has no unembedding bias"
    tcfg = TransformerBridgeConfig(
        d_model=cfg.d_model, n_layers=cfg.n_layers, n_ctx=cfg.n_ctx, d_head=cfg.d_head, n_heads=cfg.n_heads,
        d_vocab=cfg.d_vocab, d_mlp=cfg.d_mlp or 4, act_fn=cfg.act_fn, normalization_type=cfg.normalization_type,
        positional_embedding_type=cfg.positional_embedding_type, rotary_dim=cfg.rotary_dim,
        rotary_base=cfg.rotary_base, attn_only=cfg.attn_only, eps=cfg.eps,
        attention_dir="causal" if cfg.causal else "bidirectional", seed=0,
    )  # fmt: skip
    bridge = TransformerBridge.boot_native(tcfg, dtype=torch.float64)
    native = bridge.original_model
    h, e = cfg.n_heads, cfg.d_head
    perm = _rope_permutation(cfg) if cfg.positional_embedding_type == "rotary" else torch.arange(e)

    def qkv(W, b, p):  # W [h, d, e] -> Linear weight [h*e, d]
        return W[:, :, p].permute(0, 2, 1).reshape(h * e, -1), b[:, p].reshape(-1)

    with torch.no_grad():
        native.tok_embed.weight.copy_(model.W_E)
        if native.pos is not None:
            native.pos.weight.copy_(model.W_pos)
        for l, block in enumerate(model.blocks):
            nb, a = native.layers[l], block.attn
            if cfg.normalization_type == "LN":
                nb.ln1.weight.copy_(block.ln1.w)
                nb.ln1.bias.copy_(block.ln1.b)
            for lin, (W, b, p) in zip(
                (nb.attn.q, nb.attn.k, nb.attn.v),
                ((a.W_Q, a.b_Q, perm), (a.W_K, a.b_K, perm), (a.W_V, a.b_V, torch.arange(e))),
                strict=True,
            ):
                weight, bias = qkv(W, b, p)
                lin.weight.copy_(weight)
                lin.bias.copy_(bias)
            nb.attn.o.weight.copy_(a.W_O.reshape(h * e, -1).T)
            nb.attn.o.bias.copy_(a.b_O)
            if not cfg.attn_only:
                if cfg.normalization_type == "LN":
                    nb.ln2.weight.copy_(block.ln2.w)
                    nb.ln2.bias.copy_(block.ln2.b)
                nb.mlp.fc_in.weight.copy_(block.mlp.W_in.T)
                nb.mlp.fc_in.bias.copy_(block.mlp.b_in)
                nb.mlp.fc_out.weight.copy_(block.mlp.W_out.T)
                nb.mlp.fc_out.bias.copy_(block.mlp.b_out)
        if cfg.normalization_type == "LN":
            native.ln_out.weight.copy_(model.ln_final.w)
            native.ln_out.bias.copy_(model.ln_final.b)
        native.head.weight.copy_(model.W_U.T)
    bridge.enable_compatibility_mode(no_processing=True, disable_warnings=True)
    return bridge, perm


TL_CONFIGS = [
    dict(positional_embedding_type="standard", normalization_type="LN", act_fn="gelu"),
    dict(positional_embedding_type="standard", normalization_type="LN", act_fn="relu", causal=False),
    dict(positional_embedding_type="standard", normalization_type=None, act_fn="gelu_new"),
    dict(positional_embedding_type="rotary", normalization_type="LN", act_fn="gelu_new", rotary_dim=2),
    dict(positional_embedding_type="rotary", normalization_type=None, attn_only=True, rotary_base=10.0),
    dict(positional_embedding_type="standard", normalization_type="LN", attn_only=True, n_layers=3),
]


def _tl_pair(tl, small_config, random_model, opts, seed=0):
    model = random_model(small_config(**opts), seed=seed)
    with torch.no_grad():
        model.unembed.b_U.zero_()
    bridge, perm = to_transformer_lens(tl, model)
    return model, bridge, perm


@pytest.mark.parametrize("opts", TL_CONFIGS)
def test_logits_and_activations_match_transformer_lens(tl, small_config, random_model, opts):
    model, bridge, perm = _tl_pair(tl, small_config, random_model, opts)
    tokens = torch.randint(0, 11, (3, 10), generator=torch.Generator().manual_seed(0))
    ours, cache = model.run_with_cache(tokens)
    theirs, tl_cache = bridge.run_with_cache(tokens)
    # TL-native RoPE tables are float32 (ours are float64), hence the looser tolerance with RoPE.
    tol = 1e-5 if model.cfg.positional_embedding_type == "rotary" else 1e-10
    torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=tol, atol=tol)
    compared = 0
    for name, act in cache.items():
        if name not in tl_cache:
            continue
        expected = tl_cache[name].to(act.dtype)
        if name.endswith("attn.hook_attn_scores"):
            continue  # the TL-4 bridge reports the softmaxed pattern here for TL-native models
        if name.endswith(("attn.hook_q", "attn.hook_k")):
            expected = expected[..., torch.argsort(perm)]  # undo the RoPE coordinate reordering
        if name.endswith("hook_normalized"):
            # HookedTransformer's LayerNorm fires hook_normalized after the gain and bias (as we do);
            # the TL-4 bridge fires it before them. Apply them to compare.
            ln = model.get_submodule(name.rsplit(".", 1)[0])
            expected = expected * ln.w + ln.b
        torch.testing.assert_close(act, expected, rtol=tol, atol=tol, msg=name)
        compared += 1
    assert compared >= 8 * model.cfg.n_layers // (2 if model.cfg.attn_only else 1)


@pytest.mark.parametrize("opts", TL_CONFIGS)
def test_hook_names_and_shapes_are_transformer_lens_names(tl, small_config, random_model, opts):
    model, bridge, _ = _tl_pair(tl, small_config, random_model, opts)
    tokens = torch.randint(0, 11, (2, 7))
    model.set_use_attn_result(True)
    _, cache = model.run_with_cache(tokens)
    _, tl_cache = bridge.run_with_cache(tokens)
    ours = set(cache)
    tl_fired = {n for n in tl_cache if not n.endswith(BRIDGE_ONLY_SUFFIXES)} - BRIDGE_ONLY
    # Everything we record has a TransformerLens hook of the same name ...
    assert ours <= set(bridge.hook_dict), sorted(ours - set(bridge.hook_dict))
    # ... and everything TransformerLens records (HookedTransformer-style) we record too.
    assert tl_fired <= ours, sorted(tl_fired - ours)
    for name in tl_fired:
        assert cache[name].shape == tl_cache[name].shape, name
    # The TL-native attention cannot compute per-head results (hook_result) or fire hook_rot_q/k;
    # check those by name and by HookedTransformer's documented shapes.
    b, p = tokens.shape
    for l in range(model.cfg.n_layers):
        assert cache["result", l].shape == (b, p, model.cfg.n_heads, model.cfg.d_model)
        if model.cfg.positional_embedding_type == "rotary":
            assert cache["rot_q", l].shape == cache["q", l].shape == (b, p, model.cfg.n_heads, model.cfg.d_head)


def test_get_act_name_agrees_with_transformer_lens(tl):
    from transformer_lens.utilities import get_act_name as tl_get_act_name

    cases = [
        ("embed",), ("pos_embed",), ("scale",), ("normalized",),
        *[(n, 3) for n in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "q", "k", "v",
                            "rot_q", "rot_k", "z", "result", "attn_scores", "pattern", "pre", "post")],
        ("scale", 2, "ln1"), ("scale", 2, "ln2"), ("normalized", 0, "ln1"), ("normalized", 1, "ln2"),
        ("blocks.0.attn.hook_z",),
    ]  # fmt: skip
    for case in cases:
        assert get_act_name(*case) == tl_get_act_name(*case), case


# --------------------------------------------------------------------------------------------------
# run_with_cache records what the forward pass computed (every option combination)
# --------------------------------------------------------------------------------------------------


def _ln(x, ln):
    x = x - x.mean(-1, keepdim=True)
    return x / (x.pow(2).mean(-1, keepdim=True) + ln.eps).sqrt() * ln.w + ln.b


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# Where the hooks sit depends on the wiring, not on the activation function or the attention mode
# (test_model.py covers those against the formulas): one of each wiring, 48 combinations.
WIRINGS = [c for c in option_combinations() if c["act_fn"] == "gelu" and c["attention"] == "softmax"]


@pytest.mark.parametrize("wiring", WIRINGS, ids=combo_id)
def test_cache_is_consistent_with_the_forward_pass(wiring, small_config, random_model):
    """Each recorded activation follows from the recorded activations before it by the block's formulas,
    and the last recorded residual stream reproduces the logits."""
    cfg = small_config(**wiring)
    model = random_model(cfg, seed=3)
    tokens = torch.tensor([[3, 5, 3, 3, 7, 5, 3, 1], [0, 1, 2, 3, 4, 5, 6, 7]])
    logits, c = model.run_with_cache(tokens)
    assert all(not v.requires_grad for v in c.values())
    x = c["embed"] + (c["pos_embed"] if cfg.positional_embedding_type == "standard" else 0)
    if cfg.ln_position == "post":
        x = _ln(x, model.ln_embed)
    for l, block in enumerate(model.blocks):
        attn = block.attn
        _close(c["resid_pre", l], x)
        normed = x if cfg.ln_position == "post" or cfg.normalization_type is None else c["normalized", l, "ln1"]
        if cfg.normalization_type == "LN" and cfg.ln_position == "pre":
            _close(normed, _ln(x, block.ln1))
        _close(c["q", l], torch.einsum("bpd,hde->bphe", normed, attn.W_Q) + attn.b_Q)
        _close(c["v", l], torch.einsum("bpd,hde->bphe", normed, attn.W_V) + attn.b_V)
        _close(c["z", l], torch.einsum("bhqk,bkhe->bqhe", c["pattern", l], c["v", l]))
        _close(c["attn_out", l], torch.einsum("bqhe,hed->bqd", c["z", l], attn.W_O) + attn.b_O)
        if cfg.ln_position == "post":
            _close(c["resid_mid", l], x + c["attn_out", l])
            mid = _ln(c["resid_mid", l], block.ln1)
            if cfg.attn_only:
                x = mid
            else:
                _close(c["pre", l], mid @ block.mlp.W_in + block.mlp.b_in)
                _close(c["resid_post", l], mid + c["mlp_out", l])
                x = _ln(c["resid_post", l], block.ln2)
            _close(c[f"blocks.{l}.hook_normalized_resid_post"], x)
        else:
            if cfg.attn_only:
                x = x + c["attn_out", l]
            else:
                mlp_in = x if cfg.parallel_attn_mlp else c["resid_mid", l]
                if not cfg.parallel_attn_mlp:
                    _close(c["resid_mid", l], x + c["attn_out", l])
                if cfg.normalization_type == "LN":
                    _close(c["normalized", l, "ln2"], _ln(mlp_in, block.ln2))
                    mlp_in = c["normalized", l, "ln2"]
                _close(c["pre", l], mlp_in @ block.mlp.W_in + block.mlp.b_in)
                _close(c["mlp_out", l], c["post", l] @ block.mlp.W_out + block.mlp.b_out)
                x = x + c["attn_out", l] + c["mlp_out", l]
            _close(c["resid_post", l], x)
    if cfg.normalization_type == "LN" and cfg.ln_position == "pre":
        _close(c["normalized"], _ln(x, model.ln_final))
        x = c["normalized"]
    _close(x @ model.W_U + model.unembed.b_U, logits)


def test_names_filter_forms(small_config, random_model):
    model = random_model(small_config())
    tokens = torch.tensor([[1, 2, 3]])
    _, one = model.run_with_cache(tokens, names_filter="blocks.1.attn.hook_pattern")
    _, some = model.run_with_cache(tokens, names_filter=["hook_embed", "blocks.0.hook_resid_post"])
    _, pred = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_z"))
    assert set(one) == {"blocks.1.attn.hook_pattern"}
    assert set(some) == {"hook_embed", "blocks.0.hook_resid_post"}
    assert set(pred) == {"blocks.0.attn.hook_z", "blocks.1.attn.hook_z"}
    with pytest.raises(KeyError):
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.9.attn.hook_z", lambda a, hook: a)])


def test_cache_indexing(small_config, random_model):
    model = random_model(small_config())
    _, cache = model.run_with_cache(torch.tensor([[1, 2, 3, 4]]))
    assert isinstance(cache, ActivationCache)
    assert cache["pattern", 0] is cache["blocks.0.attn.hook_pattern"]
    assert cache["resid_post", 1] is cache["blocks.1.hook_resid_post"]
    assert cache["scale", 1, "ln2"] is cache["blocks.1.ln2.hook_scale"]
    assert cache["scale"] is cache["ln_final.hook_scale"]
    assert cache["embed"] is cache["hook_embed"]
    assert ("z", 1) in cache and "hook_pos_embed" in cache and ("rot_q", 0) not in cache
    assert cache["pattern", 0].shape == (1, 3, 4, 4) and cache["scale"].shape == (1, 4, 1)
    with pytest.raises(KeyError):
        cache["pattern", 5]


# --------------------------------------------------------------------------------------------------
# run_with_hooks: edits, and hooks never outliving their call
# --------------------------------------------------------------------------------------------------


def _no_hooks_left(model: Transformer) -> bool:
    return all(not hp._forward_hooks for hp in model.hook_points())


@pytest.mark.parametrize("layer, head", [(0, 1), (1, 2)])
def test_zero_ablating_a_head_via_hook_z_equals_zeroing_its_W_O(small_config, random_model, layer, head):
    model = random_model(small_config(), seed=4)
    tokens = torch.randint(0, 11, (2, 9), generator=torch.Generator().manual_seed(1))
    clean = model(tokens)

    def ablate(z, hook):
        z = z.clone()
        z[:, :, head] = 0.0
        return z

    ablated = model.run_with_hooks(tokens, fwd_hooks=[(get_act_name("z", layer), ablate)])
    edited = random_model(small_config(), seed=4)
    with torch.no_grad():
        edited.blocks[layer].attn.W_O[head] = 0.0
    _close(ablated, edited(tokens))
    assert (ablated - clean).abs().max() > 1e-3  # the ablation did something
    _close(model(tokens), clean)  # and is gone afterwards
    assert _no_hooks_left(model)


def test_hook_returning_none_leaves_the_activation(small_config, random_model):
    model = random_model(small_config())
    tokens = torch.tensor([[1, 2, 3]])
    seen = []
    out = model.run_with_hooks(tokens, fwd_hooks=[(lambda n: True, lambda a, hook: seen.append(hook.name))])
    _close(out, model(tokens))
    assert seen[0] == "hook_embed" and seen[-1] == "ln_final.hook_normalized"
    assert len(seen) == len(set(seen)) > 20


def test_hooks_are_removed_when_the_hook_raises(small_config, random_model):
    model = random_model(small_config())
    tokens = torch.tensor([[1, 2, 3]])
    clean = model(tokens)

    def boom(act, hook):
        raise RuntimeError("hook failed")

    with pytest.raises(RuntimeError, match="hook failed"):
        model.run_with_hooks(
            tokens, fwd_hooks=[("blocks.0.attn.hook_z", lambda z, hook: z * 0), ("blocks.1.hook_resid_pre", boom)]
        )
    assert _no_hooks_left(model)
    _close(model(tokens), clean)
    with pytest.raises(RuntimeError), model.hooks([(lambda n: True, boom)]):
        model(tokens)
    assert _no_hooks_left(model)


def test_nested_hook_contexts_keep_the_outer_hooks(small_config, random_model):
    """As in TransformerLens (hooks carry a context level): leaving an inner run_with_cache or
    run_with_hooks removes only the hooks it added."""
    model = random_model(small_config())
    tokens = torch.tensor([[1, 2, 3]])

    def ablate_z(z, hook):
        return torch.zeros_like(z)

    ablated = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", ablate_z)])
    with model.hooks([("blocks.0.attn.hook_z", ablate_z)]):
        _, cache = model.run_with_cache(tokens)
        assert cache["z", 0].abs().max() == 0
        _close(model(tokens), ablated)  # still ablated after the inner call
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", lambda z, hook: None)])
        _close(model(tokens), ablated)
    assert _no_hooks_left(model)


def test_editing_the_pattern_changes_the_output(small_config, random_model):
    model = random_model(small_config(), seed=5)
    tokens = torch.tensor([[4, 2, 9, 1, 0]])

    def attend_to_first(pattern, hook):
        new = torch.zeros_like(pattern)
        new[..., 0] = 1.0
        return new

    _, cache = model.run_with_cache(
        tokens, names_filter=lambda n: n.startswith("blocks.0.attn")
    )
    with model.hooks([("blocks.0.attn.hook_pattern", attend_to_first)]):
        _, edited = model.run_with_cache(tokens)
    v = edited["v", 0]
    _close(edited["z", 0], v[:, :1].expand_as(v))  # every query now reads position 0's value
    assert (edited["z", 0] - cache["z", 0]).abs().max() > 1e-3


# --------------------------------------------------------------------------------------------------
# Per-head results
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("combo", [c for c in option_combinations() if c["act_fn"] == "gelu"][::7])
def test_per_head_results_sum_to_attn_out(small_config, random_model, combo):
    model = random_model(small_config(**combo), seed=6)
    tokens = torch.tensor([[3, 5, 3, 3, 7, 5, 3, 1]])
    before = model(tokens)
    model.set_use_attn_result(True)
    logits, cache = model.run_with_cache(tokens)
    _close(logits, before)
    for l, block in enumerate(model.blocks):
        result = cache["result", l]  # [b, p, h, d]
        _close(result.sum(dim=2) + block.attn.b_O, cache["attn_out", l])
        for h in range(model.cfg.n_heads):
            _close(result[:, :, h], cache["z", l][:, :, h] @ block.attn.W_O[h])
    model.set_use_attn_result(False)
    _, cache = model.run_with_cache(tokens)
    assert ("result", 0) not in cache
