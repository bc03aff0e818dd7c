"""Gradient-guided counterexample search (assay.prove.attack), against ground truth by enumeration.

The enumeration here is the model's own float64 forward pass on every string of length 1..n_free.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from assay.prove.attack import gradient_counterexample
from assay.prove.toy import toy_model


def margin(logits: torch.Tensor, c: int) -> torch.Tensor:
    other = logits.clone()
    other[..., c] = -float("inf")
    return logits[..., c] - other.max(dim=-1).values


def enumerated_min(model, prefix, n_free, suffix, c, allowed) -> float:
    """True least margin of c over every t of length 1..n_free over ``allowed``."""
    best = float("inf")
    with torch.no_grad():
        for L in range(1, n_free + 1):
            rows = torch.tensor([prefix + list(t) + suffix for t in itertools.product(allowed, repeat=L)])
            best = min(best, float(margin(model(rows)[:, -1], c).min()))
    return best


def claim(seed: int, V: int):
    """A toy model and a claim (the argmax at t = empty) that enumeration shows to be false."""
    m = toy_model(seed, d_vocab=V)
    rng = np.random.default_rng(seed)
    prefix, suffix = rng.integers(0, V, size=5).tolist(), [int(rng.integers(0, V))]
    with torch.no_grad():
        c = int(m(torch.tensor([prefix + suffix]))[0, -1].argmax())
    return m, prefix, suffix, c


def forward_margin(model, prefix, t, suffix, c) -> float:
    with torch.no_grad():
        return float(margin(model(torch.tensor([prefix + t + suffix]))[0, -1], c))


@pytest.mark.parametrize("V,allowed", [(48, None), (6, [0, 2, 3, 5])])
def test_finds_the_enumerated_minimum_of_false_claims(V, allowed):
    n_free = 2 if V > 8 else 3
    n_false = n_exact = 0
    n_seeds = 6
    for seed in range(n_seeds):
        m, prefix, suffix, c = claim(seed, V)
        alw = list(range(V)) if allowed is None else allowed
        truth = enumerated_min(m, prefix, n_free, suffix, c, alw)
        # topk 3 of the allowed tokens per position: the gradient must pick the swaps
        r = gradient_counterexample(m, prefix, n_free, suffix, c, allowed=allowed, topk=3, seed=seed)
        assert 1 <= len(r.t) <= n_free and set(r.t) <= set(alw)
        assert r.margin >= truth - 1e-12  # nothing beats the true minimum
        n_exact += abs(r.margin - truth) <= 1e-9
        if truth <= 0:  # a false claim: the search must find a counterexample (argmax != c)
            n_false += 1
            assert r.margin <= 0, (seed, r, truth)
    assert n_false >= 3
    assert n_exact >= n_seeds - 1  # measured: 5 of 6 (V = 48), 6 of 6 (V = 6, 4 allowed)


def test_returned_margin_is_the_forward_pass_margin_of_returned_t():
    for seed, V in [(1, 48), (2, 6), (3, 6)]:  # 2, 3: true claims (least margin > 0)
        m, prefix, suffix, c = claim(seed, V)
        r = gradient_counterexample(m, prefix, 2, suffix, c, steps=10, restarts=1)
        assert r.margin == forward_margin(m, prefix, r.t, suffix, c)
        # float32 model in train mode: the search runs and reports the float64 forward pass
        m32 = toy_model(seed, d_vocab=V).float().train()
        r32 = gradient_counterexample(m32, prefix, 2, suffix, c, steps=5, restarts=1)
        assert r32.margin == forward_margin(m32.double().eval(), prefix, r32.t, suffix, c)


@pytest.mark.slow
def test_overwhelm_1l_proven_claims_survive_gradient_search():
    """Proven claims on the shipped model: the gradient-guided search never goes below the certified
    margin (it would be a false proof if it found a margin <= 0, a loose-bound-bug if below margin)."""
    from assay.model import load
    from assay.model.io import shipped_models
    from assay.prove import prove

    if "overwhelm-1l" not in shipped_models():
        pytest.skip("overwhelm-1l not shipped")
    m = load("overwhelm-1l", dtype=torch.float64)
    tok = m.tokenizer
    ids = {w: tok.encode(w).ids[-1] for w in (" congreg", ".", " Haman", " unto")}
    claims = [([2944] * 512, [321], 3), ([ids[" congreg"]] * 256, [ids["."]], 3),
              ([ids[" Haman"]] * 1024, [ids[" unto"]], 4)]
    for prefix, suffix, n_free in claims:
        r = prove(m, prefix, n_free, suffix=suffix)
        assert r.proven, (prefix[0], suffix, n_free)
        a = gradient_counterexample(m, prefix, n_free, suffix, r.token, steps=20, restarts=1)
        assert a.margin == forward_margin(m, prefix, a.t, suffix, r.token)
        print(f"{tok.decode([prefix[0]])!r}x{len(prefix)}+{tok.decode(suffix)!r} n_free={n_free}: "
              f"token {r.token} certified {r.margin:.4f}, least found {a.margin:.4f} at {a.t} "
              f"({a.evaluated} strings)")
        assert a.margin >= r.margin, (prefix[0], suffix, a, r.margin)
