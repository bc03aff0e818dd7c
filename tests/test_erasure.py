"""Erasure and DLA (paper 5) against independent truth.

- DLA completeness: the terms add up to the logit difference of the model's own forward pass (float64,
  random models with random biases and gains, several architectures); TransformerLens's
  ``ActivationCache.logit_attrs`` on its own decomposition agrees term by term where our model meets
  its protocol (final LayerNorm folded: gain 1, bias 0).
- The planted model (weights set by hand): PR ~ -1 for the planted pair and 0 elsewhere, the writer's
  DLA large and its total effect ~0, the value-edge patch restoring the projection.
- Interventions against hand-written recomputations: the patched eraser output from the clean cache
  by the formula, zero-ablation against a copy of the model with the head's W_O zeroed; and hooks
  leave the model exactly as it was.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from assay.erasure import components as C
from assay.erasure.analysis import analyze, check_prompts
from assay.erasure.composition import v_composition_scores
from assay.erasure.dla import LogitTarget, dla, logit_difference, next_token_target
from assay.erasure.patching import (
    ablation_effects,
    resample_order,
    run_value_edge_patch,
    value_edge_hooks,
    vcomp_part,
)
from assay.erasure.planted import ERASER, WRITER, planted_model, planted_prompts
from assay.erasure.projection import projection_ratios, residual_projection
from assay.errors import BadInput


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Many tiny forward passes: one torch thread is far faster on a shared machine (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

ARCHS = [
    dict(),
    dict(act_fn="gelu", n_layers=3),
    dict(positional_embedding_type="rotary"),
    dict(positional_embedding_type="none", attn_only=True),
    dict(parallel_attn_mlp=True),
    dict(causal=False),
]


def _targets(gen, shape, V):
    a = torch.randint(0, V, shape, generator=gen)
    b = torch.randint(0, V, shape, generator=gen)
    return a, b


# --------------------------------------------------------------------------------------------------
# DLA


@pytest.mark.parametrize("opts", ARCHS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_dla_adds_up_to_the_logit_difference(small_config, random_model, opts):
    model = random_model(small_config(**opts), seed=3)
    gen = torch.Generator().manual_seed(0)
    toks = torch.randint(0, model.cfg.d_vocab, (3, 9), generator=gen)
    with torch.no_grad():
        logits = model(toks)
    a, b = _targets(gen, toks.shape, model.cfg.d_vocab)
    for target in (LogitTarget(a, b), LogitTarget(a, None), next_token_target(toks, logits)):
        d = dla(model, toks, target)
        truth = logit_difference(logits, target)  # from the model's own logits
        assert torch.allclose(d.terms.sum(0), truth, atol=1e-10, rtol=0)
        assert float(truth.abs().max()) > 0.1  # not a vacuous 0 = 0
    names = [c.name for c in d.comps]
    assert len(names) == len(set(names))
    assert names[-1] == "unembed.b_U" and "ln_final.b" in names


def test_dla_without_final_layernorm(small_config, random_model):
    model = random_model(small_config(normalization_type=None), seed=1)
    toks = torch.randint(0, model.cfg.d_vocab, (2, 6))
    with pytest.raises(BadInput, match="no final LayerNorm.*linear"):
        dla(model, toks)
    d = dla(model, toks, mode="linear")
    assert d.residual_error() < 1e-10
    ln_model = random_model(small_config(), seed=1)
    with pytest.raises(BadInput, match="has one"):
        dla(ln_model, toks, mode="linear")


def test_post_ln_models_are_refused(small_config, random_model):
    model = random_model(small_config(ln_position="post", causal=False), seed=0)
    with pytest.raises(BadInput, match="pre-LN"):
        dla(model, torch.tensor([[1, 2, 3]]))


def test_dla_terms_are_frozen_scale_projections(small_config, random_model):
    """One term by hand: the head's output from z and W_O, centred, over the cached final scale."""
    model = random_model(small_config(), seed=5)
    toks = torch.tensor([[1, 4, 2, 7, 3]])
    a, b = torch.full_like(toks, 2), torch.full_like(toks, 5)
    _, cache = model.run_with_cache(toks)
    z = cache["blocks.1.attn.hook_z"][0, :, 2]  # head L1H2
    out = z @ model.blocks[1].attn.W_O[2]
    s = cache["ln_final.hook_scale"][0]
    u = (model.W_U[:, 2] - model.W_U[:, 5]) * model.ln_final.w
    by_hand = ((out - out.mean(-1, keepdim=True)) / s * u).sum(-1)
    d = dla(model, toks, LogitTarget(a, b))
    assert torch.allclose(d.term(C.head(1, 2))[0], by_hand, atol=1e-12)


def test_dla_agrees_with_transformer_lens_logit_attrs(small_config, random_model):
    pytest.importorskip("transformer_lens")
    import transformer_lens.model_bridge.sources.native  # noqa: F401
    from test_hooks import to_transformer_lens
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    model = random_model(small_config(act_fn="gelu"), seed=2)
    with torch.no_grad():  # TransformerLens's protocol: the final LayerNorm folded, no unembedding bias
        model.unembed.b_U.zero_()
        model.ln_final.w.fill_(1.0)
        model.ln_final.b.zero_()
    bridge, _ = to_transformer_lens((TransformerBridge, TransformerBridgeConfig), model)
    gen = torch.Generator().manual_seed(1)
    toks = torch.randint(0, model.cfg.d_vocab, (2, 7), generator=gen)
    a, b = _targets(gen, toks.shape, model.cfg.d_vocab)
    with torch.no_grad():
        _, cache = bridge.run_with_cache(toks)
        stack, labels = cache.get_full_resid_decomposition(expand_neurons=False, apply_ln=False,
                                                           return_labels=True)
        tl_attrs = dict(zip(labels, cache.logit_attrs(stack, tokens=a, incorrect_tokens=b), strict=True))
    d = dla(model, toks, LogitTarget(a, b))
    ours = {c.name: d.terms[i] for i, c in enumerate(d.comps)}
    for name in ("embed", "pos_embed", *[f"L{l}H{h}" for l in range(2) for h in range(3)]):
        assert torch.allclose(ours[name], tl_attrs[name], atol=1e-10), name
    for l in range(2):
        assert torch.allclose(ours[f"L{l}.mlp"], tl_attrs[f"{l}_mlp_out"], atol=1e-10)
    # TransformerLens gathers the attention output biases into one "bias" term.
    assert torch.allclose(ours["L0.b_O"] + ours["L1.b_O"], tl_attrs["bias"], atol=1e-10)


# --------------------------------------------------------------------------------------------------
# Projection ratios


def test_projection_ratios_brute_force():
    gen = torch.Generator().manual_seed(0)
    outs = torch.randn(5, 2, 4, 6, generator=gen, dtype=torch.float64)
    outs[3] = -outs[1]
    outs[4] = 0.5 * outs[1]
    pr = projection_ratios(outs, [1, 2])
    o = outs.numpy()
    for wi, w in enumerate([1, 2]):
        for c in range(5):
            for b in range(2):
                for p in range(4):
                    ref = np.dot(o[c, b, p], o[w, b, p]) / np.dot(o[w, b, p], o[w, b, p])
                    assert pr[wi, c, b, p].item() == pytest.approx(ref, abs=1e-12)
    assert torch.allclose(pr[0, 1], torch.ones(2, 4, dtype=torch.float64))
    assert torch.allclose(pr[0, 3], -torch.ones(2, 4, dtype=torch.float64))
    assert torch.allclose(pr[0, 4], torch.full((2, 4), 0.5, dtype=torch.float64))
    rp = residual_projection(outs[[1, 3, 4]], outs[1])
    assert torch.allclose(rp, torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)[:, None, None].expand(3, 2, 4))


def test_silent_writer_positions_are_left_out():
    outs = torch.randn(3, 1, 4, 5, dtype=torch.float64)
    outs[0, 0, 2] = 0.0
    pr = projection_ratios(outs, [0])
    assert torch.isnan(pr[0, :, 0, 2]).all() and not torch.isnan(pr[0, :, 0, [0, 1, 3]]).any()


# --------------------------------------------------------------------------------------------------
# The planted model: ground truth


@pytest.fixture(scope="module")
def planted():
    return planted_model()


@pytest.fixture(scope="module")
def planted_analysis(planted):
    return analyze(planted, planted_prompts(16))


def test_planted_pair_is_found_and_nothing_else(planted_analysis):
    a = planted_analysis
    w, e = f"L{WRITER[0]}H{WRITER[1]}", f"L{ERASER[0]}H{ERASER[1]}"
    flagged = a.flagged()
    assert [(s.writer, s.eraser) for s in flagged] == [(w, e)]
    s = flagged[0]
    assert s.pr_median == pytest.approx(-1.0, abs=0.03)
    assert -1.1 < s.pr_q25 <= s.pr_q75 < -0.9
    assert not any(t.mirror_flagged for t in a.pair_stats)
    others = [t for t in a.pair_stats if (t.writer, t.eraser) != (w, e)]
    assert others and max(abs(t.pr_median) for t in others) < 1e-9
    # The residual stream's projection onto the writer: 0 before, 1 once written, ~0 after the eraser.
    rp = dict(zip(a.hooks, a.resid_proj[w][:, 1], strict=True))
    assert rp["blocks.0.hook_resid_pre"] == pytest.approx(0.0, abs=1e-9)
    assert rp["blocks.0.hook_resid_post"] == pytest.approx(1.0, abs=1e-9)
    assert rp["blocks.1.hook_resid_mid"] == pytest.approx(0.0, abs=0.03)
    assert rp["blocks.1.hook_resid_post"] == pytest.approx(0.0, abs=0.03)


def test_planted_writer_dla_large_total_effect_near_zero(planted_analysis):
    a = planted_analysis
    i = [c.name for c in a.comps].index("L0H0")
    dla_abs = np.abs(a.dla_points[i]).mean()
    assert dla_abs > 2.0
    assert np.abs(a.te_resample[i]).mean() < 0.05 * dla_abs
    assert np.abs(a.te_mean[i]).mean() < 0.05 * dla_abs
    # The eraser's V-composition part that reads the writer cancels the writer's DLA (slope ~ -1).
    fit = a.vcomp[0]
    assert fit["writer"] == "L0H0" and fit["slope"] == pytest.approx(-1.0, abs=0.05) and fit["r"] < -0.99
    for rows in (a.adversarial, a.adversarial_any):
        assert rows and all(max(abs(r["total_effect"]), abs(r["total_effect_mean_ablation"])) <= 0.2 * abs(r["dla"])
                            for r in rows)
    assert a.adversarial_any[0]["writer"] == "L0H0"  # the search over every component finds the planted writer


def test_planted_causal_test_restores_the_projection(planted_analysis):
    c = planted_analysis.causal[0]
    assert c["writer"] == "L0H0" and c["erasers"] == ["L1H0"]
    assert c["eraser_pr_clean"]["L1H0"] == pytest.approx(-1.0, abs=0.03)
    assert c["eraser_pr_patched"]["L1H0"] == pytest.approx(0.0, abs=1e-6)
    assert c["final_projection_clean"] == pytest.approx(0.0, abs=0.03)
    assert c["final_projection_patched"] == pytest.approx(1.0, abs=1e-6)


def test_planted_v_composition_scores(planted):
    vc = v_composition_scores(planted)
    names = vc["heads"]
    w, e = names.index("L0H0"), names.index("L1H0")
    assert vc["signed"][w, e] < -1.0
    finite = torch.isfinite(vc["signed"])
    mask = finite.clone()
    mask[w, e] = False
    assert vc["signed"][mask].abs().max() < 1e-12
    assert torch.isnan(vc["signed"][e, w])  # a later head cannot write to an earlier one


def test_v_composition_brute_force(small_config, random_model):
    model = random_model(small_config(n_layers=3), seed=4)
    vc = v_composition_scores(model)
    H = model.cfg.n_heads
    for a in range(3 * H):
        for b in range(3 * H):
            la, ha, lb, hb = a // H, a % H, b // H, b % H
            if lb <= la:
                assert np.isnan(vc["composition"][a, b].item())
                continue
            A = (model.blocks[la].attn.W_V[ha] @ model.blocks[la].attn.W_O[ha]).detach().numpy()
            blk = model.blocks[lb]
            B = (np.diag(blk.ln1.w.detach().numpy()) @ (blk.attn.W_V[hb] @ blk.attn.W_O[hb]).detach().numpy())
            comp = np.linalg.norm(A @ B) / (np.linalg.norm(A) * np.linalg.norm(B))
            signed = np.trace(A @ B @ A.T) / np.trace(A @ A.T)
            assert vc["composition"][a, b].item() == pytest.approx(comp, rel=1e-9)
            assert vc["signed"][a, b].item() == pytest.approx(signed, rel=1e-9, abs=1e-12)


# --------------------------------------------------------------------------------------------------
# Interventions


def _fingerprint(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [b.attn.use_attn_result for b in model.blocks])


def _assert_unchanged(model, before, toks, logits_before):
    state, flags = before
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)
    assert [b.attn.use_attn_result for b in model.blocks] == flags
    assert all(not hp._forward_hooks and not hp._handles for hp in model.hook_dict.values())
    assert torch.equal(model(toks), logits_before)


def test_value_edge_patch_matches_the_formula_and_leaves_the_model_unchanged(small_config, random_model):
    model = random_model(small_config(n_layers=3, act_fn="gelu"), seed=7)
    toks = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    before, logits_before = _fingerprint(model), model(toks)
    writer, erasers = C.head(0, 1), [C.head(2, 0), C.head(2, 2)]
    _, clean = model.run_with_cache(toks)
    _, patched = run_value_edge_patch(model, toks, writer, erasers)
    _assert_unchanged(model, before, toks, logits_before)
    # By hand from the clean cache: v' = LN1(x - W) with layer 2's clean ln1 scale, then pattern and W_O.
    blk = model.blocks[2]
    W = clean["blocks.0.attn.hook_z"][0, :, 1] @ model.blocks[0].attn.W_O[1]
    x = clean["blocks.2.hook_resid_pre"][0] - W
    s = clean["blocks.2.ln1.hook_scale"][0]
    ln = (x - x.mean(-1, keepdim=True)) / s * blk.ln1.w + blk.ln1.b
    for h in range(3):
        got = patched["blocks.2.attn.hook_result"][0, :, h]
        if h in (0, 2):
            v = ln @ blk.attn.W_V[h] + blk.attn.b_V[h]
            want = clean["blocks.2.attn.hook_pattern"][0, h] @ v @ blk.attn.W_O[h]
            assert not torch.allclose(got, clean_result(clean, 2, h, model))
        else:
            want = clean_result(clean, 2, h, model)
        assert torch.allclose(got, want, atol=1e-10)
    # Earlier layers are untouched; the V-composition part is exactly what the erasers lost.
    assert torch.allclose(patched["blocks.2.hook_resid_pre"], clean["blocks.2.hook_resid_pre"], atol=0)
    _, cc = C.run_with_components(model, toks)
    for e in erasers:
        lost = C.component_output(model, cc, e) - C.component_output(model, patched, e)
        assert torch.allclose(vcomp_part(model, cc, writer, e), lost, atol=1e-10)


def clean_result(cache, layer, h, model):
    return cache[f"blocks.{layer}.attn.hook_z"][0, :, h] @ model.blocks[layer].attn.W_O[h]


def test_hooks_are_removed_even_on_error(small_config, random_model):
    model = random_model(small_config(), seed=0)
    toks = torch.tensor([[1, 2, 3, 4]])
    before, logits_before = _fingerprint(model), model(toks)
    with pytest.raises(RuntimeError, match="boom"), model.hooks(value_edge_hooks(model, C.head(0, 0), [C.head(1, 1)])):
        raise RuntimeError("boom")
    _assert_unchanged(model, before, toks, logits_before)


def test_patch_rejects_edges_that_do_not_exist(small_config, random_model):
    model = random_model(small_config(), seed=0)
    toks = torch.tensor([[1, 2, 3]])
    with pytest.raises(BadInput, match="later layer"):
        run_value_edge_patch(model, toks, C.head(1, 0), [C.head(1, 1)])
    with pytest.raises(BadInput, match="value input"):
        run_value_edge_patch(model, toks, C.head(0, 0), [C.mlp(1)])


@pytest.mark.parametrize("opts", [dict(act_fn="gelu"), dict(positional_embedding_type="rotary"),
                                  dict(parallel_attn_mlp=True)], ids=["gelu", "rotary", "parallel"])
def test_zero_ablation_matches_a_model_without_the_head(small_config, random_model, opts):
    """Zero-ablation by hooks (layer-l rows start from the clean resid_pre of layer l) against a copy of the
    model with the component's weights zeroed and a full forward pass."""
    model = random_model(small_config(**opts), seed=8)
    toks = torch.tensor([[2, 7, 1, 8, 2, 8]])
    target = LogitTarget(torch.tensor([[3, 1, 4, 1, 5, 9]]), torch.tensor([[2, 6, 5, 3, 5, 8]]))
    comps = [C.head(0, 1), C.mlp(0), C.Component(-1, 0), C.head(1, 2), C.mlp(1), C.head(1, 0)]
    before, logits_before = _fingerprint(model), model(toks)
    z = torch.zeros(6, 4, dtype=torch.float64)
    r = torch.zeros(6, 12, dtype=torch.float64)
    sources = {comps[0]: z, comps[1]: r, comps[2]: r, comps[3]: z, comps[4]: r, comps[5]: z}
    run = ablation_effects(model, toks, target, comps, sources, chunk=2)
    _assert_unchanged(model, before, toks, logits_before)
    clean = logit_difference(model(toks), target)[0]
    for i, edit in enumerate([
        lambda m: m.blocks[0].attn.W_O[1].zero_(),
        lambda m: (m.blocks[0].mlp.W_out.zero_(), m.blocks[0].mlp.b_out.zero_()),
        lambda m: m.embed.W_E.zero_(),
        lambda m: m.blocks[1].attn.W_O[2].zero_(),
        lambda m: (m.blocks[1].mlp.W_out.zero_(), m.blocks[1].mlp.b_out.zero_()),
        lambda m: m.blocks[1].attn.W_O[0].zero_(),
    ]):
        other = copy.deepcopy(model)
        with torch.no_grad():
            edit(other)
        want = clean - logit_difference(other(toks), target)[0]
        assert float(want.detach().abs().max()) > 1e-3  # the component matters: not a vacuous 0 = 0
        assert torch.allclose(run.effects[i], want, atol=1e-10), comps[i].name


def test_resample_order():
    assert resample_order([5, 5, 5]) == [1, 2, 0]
    assert resample_order([3, 8, 5]) == [1, 2, 1]  # the longest prompt takes the longest other one
    order = resample_order([4, 2, 7, 7, 3])
    lengths = [4, 2, 7, 7, 3]
    assert all(j != i and lengths[j] >= lengths[i] for i, j in enumerate(order))
    assert resample_order([6]) == [0]


def test_resample_from_oneself_has_no_effect(small_config, random_model):
    model = random_model(small_config(), seed=0)
    toks = torch.tensor([[1, 2, 3, 4, 5]])
    comps = C.components(model)
    logits, cache = C.run_with_components(model, toks)
    from assay.erasure.patching import SourceStore

    store = SourceStore(comps)
    store.add(cache)
    run = ablation_effects(model, toks, next_token_target(toks, logits), comps, store.resample(0, 0, 5))
    assert run.effects.abs().max() < 1e-12


# --------------------------------------------------------------------------------------------------
# Names and input checks


def test_component_names(small_config, random_model):
    model = random_model(small_config(), seed=0)
    assert C.parse_component(model, "0.2") == C.parse_component(model, "L0H2") == C.head(0, 2)
    assert C.parse_component(model, "L1.mlp") == C.parse_component(model, "mlp1") == C.mlp(1)
    for bad in ("2.0", "0.3", "L9H9", "nonsense", "", "mlp2"):
        with pytest.raises(BadInput, match="no component"):
            C.parse_component(model, bad)
    comps = C.components(model)
    assert comps == sorted(comps)  # the order of writing is the dataclass order
    assert C.reads_after(C.mlp(0), C.head(0, 1)) and not C.reads_after(C.head(0, 1), C.head(0, 0))
    assert not C.reads_after(C.mlp(0), C.head(0, 1), parallel=True)


def test_prompt_checks(small_config, random_model):
    model = random_model(small_config(), seed=0)
    with pytest.raises(BadInput, match="no prompts"):
        check_prompts(model, [])
    with pytest.raises(BadInput, match="prompt 2 is empty"):
        check_prompts(model, [[1], []])
    with pytest.raises(BadInput, match="n_ctx=10"):
        check_prompts(model, [[1] * 11])
    with pytest.raises(BadInput, match="out of range"):
        check_prompts(model, [[1, 99]])
    with pytest.raises(BadInput, match="no component"):
        analyze(model, [[1, 2, 3]], writer="5.5")


def test_analysis_of_a_random_model_is_consistent(small_config, random_model):
    model = random_model(small_config(act_fn="gelu"), seed=9)
    prompts = [[1, 2, 3, 4, 5, 6], [7, 8, 9, 1], [2, 2, 3, 5, 8, 1, 4, 2]]
    model.train()
    toks = torch.tensor([prompts[0]])
    with torch.no_grad():
        before, logits_before = _fingerprint(model), model(toks)
    a = analyze(model, prompts)
    # Every patch, ablation and cache of the whole analysis is undone: same weights, flags, no hooks, same mode.
    assert model.training
    with torch.no_grad():
        _assert_unchanged(model, before, toks, logits_before)
    with pytest.raises(BadInput, match="no next token"):
        analyze(model, [[3], [4]])
    assert model.training
    j = a.to_json(top=0)
    assert j["n_positions"] == sum(len(p) - 1 for p in prompts)
    assert a.dla_error < 1e-10
    n_pairs = sum(1 for w in C.writers(model) for c in C.components(model, False)
                  if c.kind in ("head", "mlp") and C.reads_after(c, w))
    assert len(j["pairs"]) == n_pairs
    assert {r["component"] for r in j["dla_vs_total"]} == {c.name for c in C.components(model)}
    assert len(j["residual_projection"]) == len(a.focus) * 3 * model.cfg.n_layers


def test_imported_gpt2_architecture(tmp_path):
    """An imported GPT-2 (random init; nothing pretrained is available offline): the analysis runs and DLA
    adds up to the logit difference of transformers' own forward pass."""
    transformers = pytest.importorskip("transformers")
    from assay.model import from_hf_gpt2

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_positions=16,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf = transformers.GPT2LMHeadModel(cfg).double().eval()
    model = from_hf_gpt2(hf)
    toks = torch.tensor([[5, 17, 3, 42, 8, 8, 21, 30]])
    with torch.no_grad():
        hf_logits = hf(toks).logits
    target = next_token_target(toks, hf_logits)
    d = dla(model, toks, target)
    assert torch.allclose(d.terms.sum(0), logit_difference(hf_logits, target), atol=1e-9)
    a = analyze(model, [[5, 17, 3, 42, 8], [8, 21, 30, 1, 2, 3]])
    assert len(a.pair_stats) > 0 and a.dla_error < 1e-9


def test_dla_terms_against_hugging_face_gpt2_by_hand():
    """Every DLA term against an independent recomputation from Hugging Face GPT-2's own forward pass.

    Nothing of ours is used on the reference side: per-head outputs are the merged-heads input of HF's
    ``c_proj`` (captured by a hook) times the matching rows of its weight, MLP outputs are HF's ``mlp``
    outputs, the final scale is computed from the input of HF's ``ln_f``, the directions from HF's
    ``lm_head``. This holds whether or not TransformerLens is installed; biases and LayerNorm gains are
    random so that no term hides behind a zero or a one.
    """
    transformers = pytest.importorskip("transformers")
    from assay.model import from_hf_gpt2

    torch.manual_seed(1)
    n_layer, d, H = 2, 32, 4
    e = d // H
    cfg = transformers.GPT2Config(n_layer=n_layer, n_embd=d, n_head=H, vocab_size=50, n_positions=16,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="eager")
    hf = transformers.GPT2LMHeadModel(cfg).double().eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.3)
            elif ".ln_" in name or "ln_f" in name:
                p.uniform_(0.5, 1.5)
    model = from_hf_gpt2(hf)
    toks = torch.tensor([[5, 17, 3, 42, 8, 8, 21, 30], [1, 2, 3, 4, 5, 6, 7, 9]])
    grabbed: dict[str, torch.Tensor] = {}

    def keep(key, pre):
        def hook(mod, args, out=None):
            grabbed[key] = (args[0] if pre else out).detach()
        return hook

    base = hf.transformer
    handles = [base.ln_f.register_forward_pre_hook(keep("x_final", True))]
    for l, blk in enumerate(base.h):
        handles.append(blk.attn.c_proj.register_forward_pre_hook(keep(f"z{l}", True)))
        handles.append(blk.mlp.register_forward_hook(keep(f"mlp{l}", False)))
    with torch.no_grad():
        hf_logits = hf(toks).logits
    for h in handles:
        h.remove()
    gen = torch.Generator().manual_seed(3)
    a, b = _targets(gen, toks.shape, 50)
    W_U = hf.lm_head.weight.detach()  # [V, d]
    du = W_U[a] - W_U[b]  # [b, p, d]
    x = grabbed["x_final"]
    s = ((x - x.mean(-1, keepdim=True)) ** 2).mean(-1, keepdim=True).add(base.ln_f.eps).sqrt()
    g = base.ln_f.weight.detach()

    def attr(r):
        return ((r - r.mean(-1, keepdim=True)) / s * g * du).sum(-1)

    ref = {"embed": attr(base.wte.weight.detach()[toks]),
           "pos_embed": attr(base.wpe.weight.detach()[: toks.shape[1]].expand(toks.shape[0], -1, -1)),
           "ln_final.b": (base.ln_f.bias.detach() * du).sum(-1), "unembed.b_U": torch.zeros(toks.shape, dtype=x.dtype)}
    for l, blk in enumerate(base.h):
        Wc = blk.attn.c_proj.weight.detach()  # Conv1D [in, out]
        for h in range(H):
            ref[f"L{l}H{h}"] = attr(grabbed[f"z{l}"][..., h * e:(h + 1) * e] @ Wc[h * e:(h + 1) * e])
        ref[f"L{l}.b_O"] = attr(blk.attn.c_proj.bias.detach().expand_as(x))
        ref[f"L{l}.mlp"] = attr(grabbed[f"mlp{l}"])
    truth = hf_logits.gather(-1, a[..., None])[..., 0] - hf_logits.gather(-1, b[..., None])[..., 0]
    # The reference decomposition is itself complete: its terms add up to HF's logit difference.
    assert torch.allclose(sum(ref.values()), truth, atol=1e-10)
    d_ = dla(model, toks, LogitTarget(a, b))
    assert {c.name for c in d_.comps} == set(ref)
    for i, c in enumerate(d_.comps):
        assert torch.allclose(d_.terms[i], ref[c.name], atol=1e-10), c.name
    assert min(float(ref[f"L{l}H{h}"].abs().max()) for l in range(n_layer) for h in range(H)) > 1e-3
