"""Soundness of the overwhelm prover against exhaustive enumeration on tiny-vocabulary models.

For every claim the prover makes, every free string t of length 0..n_free over the allowed tokens is
run through the model's own float64 forward pass (assay.prove.bruteforce, which shares no code with
the bounds), and:

- a "proven" claim must hold: the argmax is the claimed token for every t, and the certified margin is
  at most the true minimum margin;
- whether proven or not, ``best_margin`` (the lowest of the certified per-case lower bounds) is at most
  the true minimum margin of the chosen token, and so is every per-length margin.

Models are scaled (W_Q/W_K, W_U) so that both proven and unproven claims occur; the tests assert that
both do, so the sweep cannot pass by proving nothing.
"""

from __future__ import annotations

import numpy as np
import pytest

from assay.prove import prove
from assay.prove.bruteforce import enumerate_claim
from assay.prove.toy import toy_model

TOL = 1e-9  # the enumeration itself is float64

# (name, toy_model keyword arguments)
ONE_LAYER = [
    ("rope-ln-relu", dict(positional="rotary", act_fn="relu")),
    ("learned-ln-gelu", dict(positional="standard", act_fn="gelu")),
    ("nopos-attnonly", dict(positional="none", attn_only=True)),
    ("rope-noln-gelu", dict(positional="rotary", act_fn="gelu", layernorm=False)),
    ("learned-ln-relu-parallel-1head", dict(positional="standard", act_fn="relu", parallel=True, n_heads=1, d_head=16)),
    ("rope-ln-gelu-4heads-partial", dict(positional="rotary", act_fn="gelu", n_heads=4, d_head=4)),
]


TWO_LAYER = [
    ("2l-rope-ln-relu", dict(n_layers=2, positional="rotary", act_fn="relu")),
    ("2l-learned-ln-gelu", dict(n_layers=2, positional="standard", act_fn="gelu")),
    ("2l-nopos-attnonly", dict(n_layers=2, positional="none", attn_only=True)),
    ("2l-rope-parallel", dict(n_layers=2, positional="rotary", parallel=True)),
]
# (qk, unembed, embed): a residual stream that dominates (embed) and flat attention (qk) make a long
# prefix overwhelm two layers; (0.3, 1, 2) gives many false claims.
SCALES_2L = [(0.1, 3.0, 6.0), (0.3, 3.0, 6.0), (0.1, 1.0, 8.0), (0.3, 1.0, 2.0)]


def _claims(rng: np.random.Generator, n: int, vocab: int, n_free_max: int, prefix_len=(3, 17)):
    for _ in range(n):
        prefix = rng.integers(0, vocab, size=int(rng.integers(*prefix_len))).tolist()
        n_free = int(rng.integers(1, n_free_max + 1))
        suffix = rng.integers(0, vocab, size=int(rng.choice([0, 0, 1, 2]))).tolist()
        allowed = None
        if rng.random() < 0.5:
            allowed = sorted(rng.choice(vocab, size=int(rng.integers(1, 4)), replace=False).tolist())
        yield prefix, n_free, suffix, allowed


def check_claims(model, rng, n_claims: int, n_free_max: int, prefix_len=(3, 17)) -> dict:
    """Prove and enumerate n_claims random claims; assert soundness; return counts."""
    vocab = model.cfg.d_vocab
    counts = {"claims": 0, "proven": 0, "false_claims": 0, "strings": 0}
    for prefix, n_free, suffix, allowed in _claims(rng, n_claims, vocab, n_free_max, prefix_len):
        r = prove(model, prefix, n_free, suffix=suffix, allowed=allowed)
        e = enumerate_claim(model, prefix, n_free, suffix, allowed)
        counts["claims"] += 1
        counts["strings"] += e.n_strings
        true_min = e.min_margin[r.token]
        where = f"prefix={prefix} n_free={n_free} suffix={suffix} allowed={allowed}"
        assert r.best_margin <= true_min + TOL, f"bound {r.best_margin} above true min {true_min}: {where}"
        if r.proven:
            counts["proven"] += 1
            if e.argmax_tokens != {r.token} or r.margin > true_min + TOL:
                counts["false_claims"] += 1
        # e.per_length is for the float64 forward's argmax at L = 0: the prover's token unless near-tied.
        if e.first_argmax == r.token:
            for rec, true_L in zip(r.details["per_length"], e.per_length, strict=True):
                assert rec["margin"] <= true_L + TOL, f"length {rec['L']}: {rec['margin']} > {true_L}: {where}"
    assert counts["false_claims"] == 0, counts
    return counts


def _sweep(configs, seeds, n_claims, n_free_max, scales, rng_seed, prefix_len=(3, 17)):
    total = {"claims": 0, "proven": 0, "false_claims": 0, "strings": 0}
    rng = np.random.default_rng(rng_seed)
    for _name, kw in configs:
        for seed in seeds:
            sc = scales[int(rng.integers(len(scales)))]
            qk, unembed = sc[:2]
            extra = {"embed": sc[2]} if len(sc) > 2 else {}
            model = toy_model(seed, qk=qk, unembed=unembed, **extra, **kw)
            c = check_claims(model, rng, n_claims, n_free_max, prefix_len)
            for k in total:
                total[k] += c[k]
    return total


SCALES = [(0.3, 1.0), (0.3, 3.0), (1.0, 1.0), (1.0, 3.0), (3.0, 3.0)]


def test_one_layer_sound_against_enumeration():
    total = _sweep(ONE_LAYER, seeds=range(4), n_claims=6, n_free_max=2, scales=SCALES, rng_seed=0)
    print("one-layer soundness:", total)
    assert total["false_claims"] == 0
    assert total["proven"] >= 10, total  # proofs do happen ...
    assert total["claims"] - total["proven"] >= 10, total  # ... and so do failures


@pytest.mark.slow
def test_one_layer_sound_large_sweep():
    total = _sweep(ONE_LAYER, seeds=range(12), n_claims=12, n_free_max=3, scales=SCALES, rng_seed=1)
    print("one-layer soundness (slow):", total)
    assert total["false_claims"] == 0
    assert total["proven"] >= 50 and total["claims"] - total["proven"] >= 50, total


def test_two_layer_sound_against_enumeration():
    total = _sweep(TWO_LAYER, seeds=range(3), n_claims=3, n_free_max=2, scales=SCALES_2L, rng_seed=2,
                   prefix_len=(24, 35))
    print("two-layer soundness:", total)
    assert total["false_claims"] == 0
    assert total["proven"] >= 2, total
    assert total["claims"] - total["proven"] >= 2, total


@pytest.mark.slow
def test_two_layer_sound_large_sweep():
    total = _sweep(TWO_LAYER, seeds=range(10), n_claims=8, n_free_max=2, scales=SCALES_2L, rng_seed=3,
                   prefix_len=(24, 35))
    print("two-layer soundness (slow):", total)
    assert total["false_claims"] == 0
    assert total["proven"] >= 10 and total["claims"] - total["proven"] >= 10, total
