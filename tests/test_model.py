"""The forward pass against an independent re-implementation, and its defining properties.

Ground truth here is ``reference_logits``: the model written again from the formulas in docs/model.md,
in float64 numpy with explicit loops over heads, query positions, key positions and rotation pairs,
sharing no code with assay.model (it reads only the weights, by their TransformerLens names).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import SMALL, option_combinations
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from assay.errors import BadInput
from assay.model import ModelConfig, Transformer

# --------------------------------------------------------------------------------------------------
# The reference implementation
# --------------------------------------------------------------------------------------------------


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    out = np.empty_like(x)
    for p in range(x.shape[0]):
        row = x[p]
        mu = sum(row) / len(row)
        var = sum((v - mu) ** 2 for v in row) / len(row)
        out[p] = (row - mu) / math.sqrt(var + eps) * w + b
    return out


def _act(name: str, x: np.ndarray) -> np.ndarray:
    if name == "relu":
        return np.where(x > 0, x, 0.0)
    if name == "gelu":
        return np.vectorize(lambda v: 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))))(x)
    if name == "gelu_new":
        return np.vectorize(lambda v: 0.5 * v * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v**3))))(x)
    raise AssertionError(name)


def _rope(x: np.ndarray, rotary_dim: int, base: float) -> np.ndarray:
    """x [pos, d_head]: rotate the pair (i, i + rotary_dim/2) at position p by p * base^(-2i/rotary_dim)."""
    out = x.copy()
    half = rotary_dim // 2
    for p in range(x.shape[0]):
        for i in range(half):
            theta = p * base ** (-2.0 * i / rotary_dim)
            a, b = x[p, i], x[p, i + half]
            out[p, i] = a * math.cos(theta) - b * math.sin(theta)
            out[p, i + half] = a * math.sin(theta) + b * math.cos(theta)
    return out


def _attention_weights(scores: list[float], mode: str) -> list[float]:
    m = max(scores)
    if mode == "softmax":
        e = [math.exp(s - m) for s in scores]
        return [v / sum(e) for v in e]
    ties = [j for j, s in enumerate(scores) if s == m]
    if mode == "saturated":
        return [1.0 / len(ties) if j in ties else 0.0 for j in range(len(scores))]
    if mode == "hard":
        return [1.0 if j == ties[0] else 0.0 for j in range(len(scores))]
    raise AssertionError(mode)


def _attention(P: dict, pre: str, cfg: ModelConfig, x: np.ndarray) -> np.ndarray:
    n = x.shape[0]
    out = np.tile(P[pre + "b_O"], (n, 1))
    for h in range(cfg.n_heads):
        q = x @ P[pre + "W_Q"][h] + P[pre + "b_Q"][h]  # [pos, d_head]
        k = x @ P[pre + "W_K"][h] + P[pre + "b_K"][h]
        v = x @ P[pre + "W_V"][h] + P[pre + "b_V"][h]
        if cfg.positional_embedding_type == "rotary":
            q, k = _rope(q, cfg.rotary_dim, cfg.rotary_base), _rope(k, cfg.rotary_dim, cfg.rotary_base)
        for i in range(n):
            keys = range(i + 1) if cfg.causal else range(n)
            scores = [float(np.dot(q[i], k[j])) / math.sqrt(cfg.d_head) for j in keys]
            weights = _attention_weights(scores, cfg.attention)
            z = sum(w * v[j] for w, j in zip(weights, keys, strict=True))
            out[i] += z @ P[pre + "W_O"][h]
    return out


def _mlp(P: dict, pre: str, cfg: ModelConfig, x: np.ndarray) -> np.ndarray:
    return _act(cfg.act_fn, x @ P[pre + "W_in"] + P[pre + "b_in"]) @ P[pre + "W_out"] + P[pre + "b_out"]


def reference_logits(model: Transformer, tokens: list[int]) -> np.ndarray:
    """Logits [pos, d_vocab] of one sequence, from the formulas, in float64."""
    cfg = model.cfg
    P = {k: v.detach().to(torch.float64).numpy() for k, v in model.state_dict().items()}
    ln = cfg.normalization_type == "LN"

    def norm(x, name):
        return _layer_norm(x, P[name + ".w"], P[name + ".b"], cfg.eps) if ln else x

    x = np.stack([P["embed.W_E"][t] for t in tokens])
    if cfg.positional_embedding_type == "standard":
        x = x + P["pos_embed.W_pos"][: len(tokens)]
    if cfg.ln_position == "post":
        x = norm(x, "ln_embed")
    for l in range(cfg.n_layers):
        b = f"blocks.{l}."
        if cfg.ln_position == "post":  # BERT: LN(x + f(x))
            x = norm(x + _attention(P, b + "attn.", cfg, x), b + "ln1")
            if not cfg.attn_only:
                x = norm(x + _mlp(P, b + "mlp.", cfg, x), b + "ln2")
        elif cfg.attn_only:
            x = x + _attention(P, b + "attn.", cfg, norm(x, b + "ln1"))
        elif cfg.parallel_attn_mlp:  # GPT-NeoX: x + attn(LN1(x)) + mlp(LN2(x))
            x = x + _attention(P, b + "attn.", cfg, norm(x, b + "ln1")) + _mlp(P, b + "mlp.", cfg, norm(x, b + "ln2"))
        else:  # GPT-2
            x = x + _attention(P, b + "attn.", cfg, norm(x, b + "ln1"))
            x = x + _mlp(P, b + "mlp.", cfg, norm(x, b + "ln2"))
    if cfg.ln_position == "pre":
        x = norm(x, "ln_final")
    return x @ P["unembed.W_U"] + P["unembed.b_U"]


def assert_matches_reference(model: Transformer, tokens: torch.Tensor, rtol: float = 1e-9, atol: float = 1e-9):
    logits = model(tokens)
    assert logits.shape == (*tokens.shape, model.cfg.d_vocab)
    for b in range(tokens.shape[0]):
        expected = reference_logits(model, tokens[b].tolist())
        np.testing.assert_allclose(logits[b].detach().double().numpy(), expected, rtol=rtol, atol=atol)


def _tokens(cfg: ModelConfig, batch: int, n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, cfg.d_vocab, (batch, n), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------------
# Every option combination, against the reference
# --------------------------------------------------------------------------------------------------


def test_every_option_combination_builds_runs_and_matches_reference(option_combo, small_config, random_model):
    cfg = small_config(**option_combo)
    model = random_model(cfg, seed=1)
    # d_vocab 11 and 8 positions: repeated tokens, so saturated / hard attention meet exact ties.
    tokens = torch.tensor([[3, 5, 3, 3, 7, 5, 3, 1], [0, 1, 2, 3, 4, 5, 6, 7]])
    assert_matches_reference(model, tokens)


@pytest.mark.parametrize("combo", [c for c in option_combinations() if c["attention"] == "softmax"], ids=str)
def test_fused_and_hooked_attention_paths_agree_and_hooks_still_see_the_pattern(combo, small_config, random_model):
    """Softmax attention with no hook on the scores or pattern runs PyTorch's fused attention; with a hook
    it materialises them. Both must give the same function (float64: to 1e-12), and a hook must run."""
    model = random_model(small_config(**combo), seed=2)
    tokens = torch.tensor([[3, 5, 3, 3, 7, 5, 3, 1], [0, 1, 2, 3, 4, 5, 6, 7]])
    with torch.no_grad():
        fused = model(tokens)
        seen = []
        with model.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", lambda x, hook: seen.append(x.shape))]):
            hooked = model(tokens)
    assert seen and seen[0] == (2, 3, 8, 8)
    torch.testing.assert_close(fused, hooked, rtol=1e-12, atol=1e-12)
    # gradients on (training): always the explicit path, bit-identical whether or not a hook is there
    with_grad = model(tokens)
    with model.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", lambda x, hook: None)]):
        with_grad_hooked = model(tokens)
    assert torch.equal(with_grad, with_grad_hooked)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n_layers=st.integers(1, 3),
    n_heads=st.integers(1, 3),
    half_head=st.integers(1, 3),
    rotary_half=st.integers(1, 3),
    rotary_base=st.sampled_from([10000.0, 10.0, 2.5]),
    combo=st.integers(0, 431),
    seq=st.lists(st.integers(0, 6), min_size=1, max_size=9),
    seed=st.integers(0, 2**16),
)
def test_random_shapes_match_reference(
    small_config, random_model, n_layers, n_heads, half_head, rotary_half, rotary_base, combo, seq, seed
):
    d_head = 2 * half_head
    cfg = ModelConfig(
        n_layers=n_layers,
        d_model=10,
        n_heads=n_heads,
        d_head=d_head,
        d_vocab=7,
        n_ctx=9,
        d_mlp=13,
        rotary_dim=2 * min(rotary_half, half_head),
        rotary_base=rotary_base,
        **option_combinations()[combo],
    )
    model = random_model(cfg, seed=seed)
    assert_matches_reference(model, torch.tensor([seq]))


@pytest.mark.parametrize(
    "opts",
    [
        dict(positional_embedding_type="rotary", act_fn="gelu_new"),
        dict(ln_position="post", act_fn="gelu", causal=False),
        dict(parallel_attn_mlp=True, positional_embedding_type="rotary"),
    ],
)
def test_float32_model_close_to_float64_reference(small_config, random_model, opts):
    model = random_model(small_config(**opts), seed=2, dtype=torch.float32)
    assert model.W_E.dtype == torch.float32
    assert_matches_reference(model, _tokens(model.cfg, 2, 10, 0), rtol=1e-4, atol=1e-4)


def test_return_types_resid_and_loss(small_config, random_model):
    model = random_model(small_config(), seed=3)
    tokens = _tokens(model.cfg, 3, 9, 1)
    resid = model(tokens, return_type="resid")
    np.testing.assert_allclose(
        (resid @ model.W_U + model.unembed.b_U).detach().numpy(), model(tokens).detach().numpy(), rtol=1e-12
    )
    # mean next-token cross-entropy, from the reference logits
    total, count = 0.0, 0
    for b in range(tokens.shape[0]):
        logits = reference_logits(model, tokens[b].tolist())
        for p in range(tokens.shape[1] - 1):
            row = logits[p]
            m = row.max()
            total += m + math.log(np.exp(row - m).sum()) - row[tokens[b, p + 1]]
            count += 1
    assert model(tokens, return_type="loss").item() == pytest.approx(total / count, rel=1e-10)
    with pytest.raises(ValueError):
        model(tokens, return_type="nonsense")


def test_one_dimensional_tokens_are_one_sequence(small_config, random_model):
    model = random_model(small_config(), seed=4)
    seq = [1, 2, 3, 4]
    assert torch.equal(model(torch.tensor(seq)), model(torch.tensor([seq])))
    assert torch.equal(model(seq), model(torch.tensor([seq])))


# --------------------------------------------------------------------------------------------------
# Causality
# --------------------------------------------------------------------------------------------------

_COMBOS_CAUSAL = [c for c in option_combinations() if c["causal"]]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    combo=st.sampled_from(_COMBOS_CAUSAL),
    data=st.data(),
)
def test_causal_outputs_ignore_later_tokens(small_config, random_model, combo, data):
    cfg = small_config(**combo)
    model = random_model(cfg, seed=data.draw(st.integers(0, 100)))
    n = data.draw(st.integers(2, cfg.n_ctx))
    a = data.draw(st.lists(st.integers(0, cfg.d_vocab - 1), min_size=n, max_size=n))
    i = data.draw(st.integers(0, n - 2))
    tail = data.draw(st.lists(st.integers(0, cfg.d_vocab - 1), min_size=n - 1 - i, max_size=n - 1 - i))
    b = a[: i + 1] + tail
    out_a, out_b = model(torch.tensor([a])), model(torch.tensor([b]))
    torch.testing.assert_close(out_a[0, : i + 1], out_b[0, : i + 1], rtol=0, atol=1e-12)


def _engineered_lookahead(model: Transformer) -> tuple[list[int], list[int]]:
    """Two sequences that differ only in their last token, the first of which makes position 0 attend
    to the last position (1 layer, 1 head, no positional embedding: scores depend only on the tokens)."""
    cfg = model.cfg
    assert cfg.n_layers == 1 and cfg.n_heads == 1 and cfg.positional_embedding_type == "none"
    first = 0
    _, cache = model.run_with_cache(torch.tensor([[first, *range(1, cfg.d_vocab)]]))
    scores = cache["attn_scores", 0][0, 0, 0]  # query 0 over keys: token 0, then tokens 1..V-1
    best = 1 + int(scores[1:].argmax())  # the token (= position) query 0 likes best
    others = [t for t in range(1, cfg.d_vocab) if t != best]
    filler = [t for t in others if scores[t] < scores[best]][:3]
    assert len(filler) == 3 and scores[best] > scores[first]
    a = [first, *filler, best]
    b = [first, *filler, others[-1] if others[-1] not in filler else others[0]]
    return a, b


@pytest.mark.parametrize("attention", ["softmax", "saturated", "hard"])
@pytest.mark.parametrize("causal", [True, False])
def test_bidirectional_outputs_do_depend_on_later_tokens(random_model, attention, causal):
    cfg = ModelConfig(
        n_layers=1, d_model=12, n_heads=1, d_head=4, d_vocab=9, n_ctx=10, d_mlp=16,
        positional_embedding_type="none", attention=attention, causal=False,
    )  # fmt: skip
    a, b = _engineered_lookahead(random_model(cfg, seed=5, scale=1.0))
    model = random_model(ModelConfig(**{**cfg.to_dict(), "causal": causal}), seed=5, scale=1.0)
    _, cache = model.run_with_cache(torch.tensor([a]))
    change = (model(torch.tensor([a]))[0, 0] - model(torch.tensor([b]))[0, 0]).abs().max().item()
    if causal:
        assert change == 0.0
    else:
        assert cache["pattern", 0][0, 0, 0, -1] > 0.2  # position 0 looks at the last position
        assert change > 1e-3


@pytest.mark.parametrize("attention", ["softmax", "saturated", "hard"])
def test_bidirectional_random_model_sees_the_future(small_config, random_model, attention):
    """Generic case for softmax; for saturated / hard only a change that moves an argmax is seen, so
    try every last token and require that some change reaches position 0."""
    model = random_model(small_config(causal=False, attention=attention), seed=6)
    base = [4, 1, 7, 2, 9, 0]
    out0 = model(torch.tensor([base]))[0, 0]
    changes = [(model(torch.tensor([base[:-1] + [t]]))[0, 0] - out0).abs().max().item() for t in range(11)]
    assert max(changes) > 1e-6
    if attention == "softmax":
        assert sorted(changes)[1] > 1e-9  # every other last token changes position 0


# --------------------------------------------------------------------------------------------------
# Saturated and hard attention
# --------------------------------------------------------------------------------------------------

# positions "none" and repeated tokens: equal keys give exactly equal scores, so ties at the maximum.
TIED_TOKENS = [[3, 5, 3, 3, 7, 5, 3, 1, 3], [2, 2, 2, 6, 2, 6, 6, 0, 2]]


def _scaled_scores(c: float):
    def hook(scores, hook):
        return scores * c  # masked entries stay -inf

    return (lambda name: name.endswith("hook_attn_scores"), hook)


def _with(cfg: ModelConfig, **changes) -> ModelConfig:
    return ModelConfig(**{**cfg.to_dict(), **changes})


@pytest.mark.parametrize("positions", ["none", "standard", "rotary"])
def test_saturated_pattern_is_the_limit_of_scaled_softmax_with_rate(small_config, random_model, positions):
    """One layer: ||softmax(c s) - saturated(s)||_1 <= 2 (n - |M|) exp(-c g) / |M| per row, where M is the
    set of maximal scores and g the gap to the next score; and the distance really is positive for small c."""
    cfg = small_config(n_layers=1, positional_embedding_type=positions)
    sat = random_model(_with(cfg, attention="saturated"), seed=7, scale=1.0)
    soft = random_model(_with(cfg, attention="softmax"), seed=7, scale=1.0)
    tokens = torch.tensor(TIED_TOKENS)
    _, cache = sat.run_with_cache(tokens)
    scores, target = cache["attn_scores", 0], cache["pattern", 0]
    n_ties = 0
    bounds_at_c1 = []
    for c in [1.0, 10.0, 100.0, 1e3, 1e4, 1e6]:
        with soft.hooks([_scaled_scores(c)]):
            _, soft_cache = soft.run_with_cache(tokens)
        p = soft_cache["pattern", 0]
        for b in range(tokens.shape[0]):
            for h in range(cfg.n_heads):
                for i in range(tokens.shape[1]):
                    row = [float(s) for s in scores[b, h, i, : i + 1]]
                    m = max(row)
                    size = sum(s == m for s in row)
                    below = [m - s for s in row if s < m]
                    dist = (p[b, h, i] - target[b, h, i]).abs().sum().item()
                    bound = 2 * len(below) * math.exp(-c * min(below)) / size if below else 0.0
                    assert dist <= bound + 1e-12, (c, b, h, i, dist, bound)
                    if c == 1.0:
                        n_ties += size > 1
                        bounds_at_c1.append(dist)
    if positions == "none":
        assert n_ties > 0  # the test really has tied maxima
    assert max(bounds_at_c1) > 1e-2  # at c = 1 softmax is far from saturated: the test can fail


@pytest.mark.parametrize("positions", ["none", "standard"])
def test_saturated_logits_are_the_limit_of_scaled_softmax(small_config, random_model, positions):
    cfg = small_config(positional_embedding_type=positions)  # 2 layers, LN, MLP
    sat = random_model(_with(cfg, attention="saturated"), seed=8, scale=1.0)
    soft = random_model(_with(cfg, attention="softmax"), seed=8, scale=1.0)
    tokens = torch.tensor(TIED_TOKENS)
    target = sat(tokens)
    dist = {}
    for c in [1.0, 10.0, 1e2, 1e3, 1e4, 1e5, 1e6, 1e8]:
        with soft.hooks([_scaled_scores(c)]):
            dist[c] = (soft(tokens) - target).abs().max().item()
    assert dist[1.0] > 1e-2
    assert dist[1e8] < 1e-10
    cs = sorted(dist)
    # shrinks toward 0: each tenfold (or more) increase of c at least halves the distance once it is small
    for lo, hi in zip(cs, cs[1:], strict=False):
        if dist[lo] < 1e-3:
            assert dist[hi] <= dist[lo] / 2 or dist[hi] < 1e-12, dist


def test_saturated_equals_hard_when_the_maximum_is_unique(small_config, random_model):
    cfg = small_config(positional_embedding_type="standard", attention="saturated")
    sat = random_model(cfg, seed=9)
    hard = random_model(_with(cfg, attention="hard"), seed=9)
    tokens = _tokens(cfg, 4, 10, 2)
    _, cache = sat.run_with_cache(tokens)
    for l in range(cfg.n_layers):
        s = cache["attn_scores", l]
        top2 = s.topk(2, dim=-1).values
        unique = (top2[..., 0] > top2[..., 1])
        unique[..., 0, :] = True  # query 0 sees one key only
        assert unique.all()
    assert torch.equal(sat(tokens), hard(tokens))


@pytest.mark.parametrize("positions", ["none", "rotary"])
def test_hard_takes_the_leftmost_tie_and_saturated_averages_the_ties(small_config, random_model, positions):
    cfg = small_config(positional_embedding_type=positions, attention="hard", causal=False)
    hard = random_model(cfg, seed=10)
    sat = random_model(_with(cfg, attention="saturated"), seed=10)
    tokens = torch.tensor(TIED_TOKENS)
    _, hc = hard.run_with_cache(tokens)
    _, sc = sat.run_with_cache(tokens)
    ties_seen = 0
    for cache, mode in ((hc, "hard"), (sc, "saturated")):
        s, p = cache["attn_scores", 0], cache["pattern", 0]
        for b in range(s.shape[0]):
            for h in range(s.shape[1]):
                for i in range(s.shape[2]):
                    row = s[b, h, i].tolist()
                    ties = [j for j, v in enumerate(row) if v == max(row)]
                    if mode == "hard":
                        expected = [1.0 if j == ties[0] else 0.0 for j in range(len(row))]
                        ties_seen += len(ties) > 1
                    else:
                        expected = [1.0 / len(ties) if j in ties else 0.0 for j in range(len(row))]
                    assert p[b, h, i].tolist() == expected
    if positions == "none":
        assert ties_seen > 0
    else:  # rotary keys differ by position: no ties, hard and saturated agree
        assert ties_seen == 0 and torch.equal(hard(tokens), sat(tokens))


# --------------------------------------------------------------------------------------------------
# Rotary embeddings
# --------------------------------------------------------------------------------------------------


def _rotary_model(random_model, rotary_dim=4, base=10000.0, seed=11):
    cfg = ModelConfig(
        n_layers=1, d_model=12, n_heads=2, d_head=6, d_vocab=9, n_ctx=12, d_mlp=16, attn_only=True,
        positional_embedding_type="rotary", rotary_dim=rotary_dim, rotary_base=base,
    )  # fmt: skip
    return random_model(cfg, seed=seed, scale=1.0)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seq=st.lists(st.integers(0, 8), min_size=1, max_size=6),
    shift=st.integers(1, 6),
    rotary_dim=st.sampled_from([2, 4, 6]),
    base=st.sampled_from([10000.0, 10.0, 3.0]),
    pad=st.integers(0, 8),
)
def test_rope_scores_depend_only_on_the_offset(random_model, seq, shift, rotary_dim, base, pad):
    """q at i and k at j score the same as q at i+s and k at j+s (layer 0: q, k depend on the token only)."""
    model = _rotary_model(random_model, rotary_dim, base)
    n = len(seq)
    _, ca = model.run_with_cache(torch.tensor([seq]))
    _, cb = model.run_with_cache(torch.tensor([[pad] * shift + seq]))
    sa = ca["attn_scores", 0][0]
    sb = cb["attn_scores", 0][0, :, shift:, shift:]
    torch.testing.assert_close(sb, sa, rtol=1e-10, atol=1e-10)
    assert sb.shape[-1] == n


def test_rope_really_rotates(random_model):
    """Same token everywhere: scores are constant along each diagonal, and differ between offsets."""
    model = _rotary_model(random_model, rotary_dim=6, base=10.0)
    _, cache = model.run_with_cache(torch.tensor([[4] * 8]))
    s = cache["attn_scores", 0][0]
    for h in range(2):
        for offset in range(8):
            diag = torch.stack([s[h, i, i - offset] for i in range(offset, 8)])
            torch.testing.assert_close(diag, diag[0].expand_as(diag), rtol=1e-10, atol=1e-10)
        assert (s[h, 7, :7] - s[h, 7, 7]).abs().min() > 1e-6  # offset 0 differs from every other offset


@pytest.mark.parametrize("rotary_dim", [2, 4, 6])
def test_rope_preserves_norms_and_passes_the_rest_through(random_model, rotary_dim):
    model = _rotary_model(random_model, rotary_dim)
    _, cache = model.run_with_cache(torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2]]))
    for x in ("q", "k"):
        raw, rot = cache[x, 0], cache["rot_" + x, 0]  # [b, p, h, e]
        torch.testing.assert_close(rot.norm(dim=-1), raw.norm(dim=-1), rtol=1e-12, atol=0)
        assert torch.equal(rot[..., rotary_dim:], raw[..., rotary_dim:])
        torch.testing.assert_close(rot[:, 0], raw[:, 0], rtol=0, atol=1e-15)  # position 0: angle 0
        assert (rot[:, 1:, :, :rotary_dim] - raw[:, 1:, :, :rotary_dim]).abs().max() > 1e-3


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tokens, words",
    [
        (torch.tensor([[1, 2, 11]]), "11"),
        (torch.tensor([[1, -1, 2]]), "-1"),
        (torch.zeros(1, 11, dtype=torch.long), "n_ctx"),
        (torch.tensor([[1.0, 2.0]]), "integer"),
        (torch.zeros(1, 2, 3, dtype=torch.long), "shape"),
        (torch.zeros(1, 0, dtype=torch.long), "empty"),
    ],
)
def test_bad_tokens_are_bad_input(small_config, random_model, tokens, words):
    model = random_model(small_config())
    with pytest.raises(BadInput) as e:
        model(tokens)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_longest_and_extreme_tokens_are_fine(small_config, random_model):
    model = random_model(small_config())
    assert model(torch.tensor([[0] * 9 + [10]])).shape == (1, 10, 11)


@pytest.mark.parametrize(
    "changes",
    [
        dict(attention="sparsemax"),
        dict(act_fn="swish"),
        dict(positional_embedding_type="alibi"),
        dict(ln_position="post", normalization_type=None),
        dict(parallel_attn_mlp=True, attn_only=True),
        dict(rotary_dim=3),
        dict(rotary_dim=6),
        dict(n_heads=0),
        dict(d_mlp=None),
        dict(causal="false"),
        dict(attn_only=1),
        dict(eps="1e-5"),
        dict(eps=-1.0),
        dict(rotary_base=0.0),
    ],
)
def test_invalid_configs_are_bad_input(changes):
    with pytest.raises(BadInput) as e:
        ModelConfig(**{**SMALL, **changes})
    assert "\n" not in str(e.value)
