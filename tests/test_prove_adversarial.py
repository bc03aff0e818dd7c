"""Adversarial soundness harness for the overwhelm prover and its checker.

Ground truth is the model's own float64 torch forward pass on every string (enumerated here, sharing
no code with the bounds or with assay.prove.bruteforce). Models are random and deliberately nasty:
vocabularies of 2..6 tokens, one or two layers, RoPE (full and partial), learned or no positions,
ReLU / GELU / attention-only / parallel blocks, LayerNorm or none, 1..3 heads, and weight scales from
flat to very sharp attention (W_Q, W_K up to x8), big value/output maps and big logit gaps.

Checked, for every claim:

- every per-case, per-competitor bound of the engine (for the reference token *and* a second token,
  whose bounds are mostly negative but must still be lower bounds) is at most the true minimum of
  logit[c] - logit[k] over the strings of that case (length L, and last token when the suffix is empty);
- ``prove``: ``best_margin`` <= the true minimum margin; a proven claim holds for every string (one
  argmax) and its margin is at most the true minimum; every certificate case margin is at most the
  true minimum of its case;
- the checker accepts valid certificates and rejects tampered ones (a weight moved by one ulp in the
  model file and in memory, any change of prefix / suffix / n_free / allowed / token with the digest
  recomputed, and edited evidence numbers).

Regression cases for the false claims this harness found are at the end.
"""

from __future__ import annotations

import copy
import itertools
import json
import math

import numpy as np
import pytest
import torch

from assay.model import ModelConfig, Transformer, load, save
from assay.prove import CertificateError, check, prove
from assay.prove.api import digest
from assay.prove.engine import Engine
from assay.prove.toy import perturb_and_scale
from assay.prove.weights import extract, state_dict_sha256


# ------------------------------------------------------------------------------------------ models
def random_model(rng: np.random.Generator) -> Transformer:
    """A random float64 Transformer; scales drawn so that proofs both succeed and fail."""
    n_layers = int(rng.choice([1, 1, 2]))
    positional = str(rng.choice(["rotary", "rotary", "standard", "none"]))
    kind = str(rng.choice(["relu", "gelu", "attn_only", "parallel"]))
    n_heads = int(rng.choice([1, 2, 3]))
    d_head = int(rng.choice([4, 8]))
    rotary_dim = int(rng.choice([d_head, d_head, 2])) if positional == "rotary" else None
    cfg = ModelConfig(
        n_layers=n_layers,
        d_model=int(rng.choice([8, 16])),
        n_heads=n_heads,
        d_head=d_head,
        d_vocab=int(rng.integers(2, 7)),
        n_ctx=48,
        d_mlp=None if kind == "attn_only" else int(rng.choice([8, 32])),
        act_fn="gelu" if kind == "gelu" else "relu",
        normalization_type=None if rng.random() < 0.2 else "LN",
        positional_embedding_type=positional,
        rotary_dim=rotary_dim,
        rotary_base=float(rng.choice([10000.0, 10.0])),
        attn_only=kind == "attn_only",
        parallel_attn_mlp=kind == "parallel",
        init_range=float(rng.choice([0.3, 1.0])),
    )
    model = Transformer(cfg).double()
    model.init_weights(seed=int(rng.integers(1 << 30)))
    qk = float(rng.choice([0.1, 0.3, 1.0, 3.0, 8.0]))
    vo = float(rng.choice([0.3, 1.0, 3.0]))
    embed = float(rng.choice([0.5, 1.0, 2.0, 6.0]))
    unembed = float(rng.choice([1.0, 3.0, 10.0]))
    bias = float(rng.choice([0.0, 0.1, 1.0]))
    gen = torch.Generator().manual_seed(int(rng.integers(1 << 30)))
    return perturb_and_scale(model, gen, qk=qk, vo=vo, embed=embed, unembed=unembed, bias=bias)


def random_claim(rng: np.random.Generator, model, n_free_max: int = 3):
    V = model.cfg.d_vocab
    n_fix = int(rng.integers(1, 14 if model.cfg.n_layers == 1 else 30))
    prefix = rng.integers(0, V, size=n_fix).tolist()
    suffix = rng.integers(0, V, size=int(rng.choice([0, 0, 1, 2]))).tolist()
    n_free = int(rng.integers(0, n_free_max + 1))
    allowed = None
    if rng.random() < 0.5:
        allowed = sorted(rng.choice(V, size=int(rng.integers(1, V + 1)), replace=False).tolist())
    return prefix, n_free, suffix, allowed


# ------------------------------------------------------------------------------------------ truth
def last_logits(model, rows: list[list[int]]) -> np.ndarray:
    """float64 logits at the last position of each row (rows of equal length)."""
    with torch.no_grad():
        return model(torch.tensor(rows, dtype=torch.long))[:, -1, :].numpy().astype(np.float64)


def truth_by_case(model, prefix, n_free, suffix, allowed) -> dict[tuple[int, int | None], np.ndarray]:
    """Logits [strings, V] per case (L, last): last is None when the last token is fixed."""
    out: dict[tuple[int, int | None], list[list[int]]] = {}
    for L in range(n_free + 1):
        for t in itertools.product(allowed, repeat=L):
            key = (L, None) if (suffix or L == 0) else (L, int(t[-1]))
            out.setdefault(key, []).append(list(prefix) + list(t) + list(suffix))
    return {k: last_logits(model, rows) for k, rows in out.items()}


def min_gaps(logits: np.ndarray, c: int) -> np.ndarray:
    """min over strings of logit[c] - logit[k], per k (inf at c)."""
    g = (logits[:, [c]] - logits).min(axis=0)
    g[c] = np.inf
    return g


def tol(logits: np.ndarray) -> float:
    # The float64 forward pass is itself rounded: allow a relative 1e-9 of the logit scale.
    return 1e-9 * (1.0 + float(np.abs(logits).max()))


# ------------------------------------------------------------------------------------------ harness
def audit_claim(model, prefix, n_free, suffix, allowed, rng, stats: dict) -> object:
    """Every soundness property above for one claim; returns the ProveResult."""
    V = model.cfg.d_vocab
    allowed_list = list(range(V)) if allowed is None else list(allowed)
    where = f"cfg={model.cfg.to_dict()} prefix={prefix} n_free={n_free} suffix={suffix} allowed={allowed}"
    truth = truth_by_case(model, prefix, n_free, suffix, allowed_list)
    allz = np.concatenate(list(truth.values()))
    r = prove(model, prefix, n_free, suffix=suffix, allowed=allowed)
    c = r.token
    true_min = float(min_gaps(allz, c).min()) if V > 1 else math.inf
    t = tol(allz)
    stats["claims"] += 1
    stats["strings"] += len(allz)
    assert r.best_margin is None or r.best_margin <= true_min + t, f"best_margin {r.best_margin} > {true_min}: {where}"
    if r.proven:
        stats["proven"] += 1
        assert set(allz.argmax(axis=1).tolist()) == {c}, f"FALSE CLAIM (argmax differs): {where}"
        assert r.margin <= true_min + t, f"margin {r.margin} > true {true_min}: {where}"
    for rec in r.certificate["cases"]:
        if rec["margin"] is not None:
            tm = float(min_gaps(truth[(rec["L"], rec["last"])], c).min())
            assert rec["margin"] <= tm + t, f"case {rec['L'], rec['last']}: {rec['margin']} > {tm}: {where}"
    # Per competitor, for the reference token and one other token (bounds valid for any c).
    eng = Engine(extract(model), prefix, suffix, np.array(allowed_list, dtype=np.int64))
    others = [k for k in range(V) if k != c]
    tokens = [c] + ([int(rng.choice(others))] if others else [])
    for cc in tokens:
        for key, logits in truth.items():
            res = eng.case(key[0], key[1], cc)
            g = min_gaps(logits, cc)
            bad = np.nonzero(res.margins > g + t)[0]
            assert not bad.size, f"c={cc} case {key}: bound {res.margins[bad]} > true {g[bad]}: {where}"
            stats["bounds"] += V - 1
    return r


def sweep(seed: int, n_models: int, claims_per_model: int, n_free_max: int) -> dict:
    rng = np.random.default_rng(seed)
    stats = {"claims": 0, "proven": 0, "strings": 0, "bounds": 0}
    for _ in range(n_models):
        model = random_model(rng)
        for _ in range(claims_per_model):
            audit_claim(model, *random_claim(rng, model, n_free_max), rng, stats)
    return stats


def test_random_models_sound_fast():
    stats = sweep(seed=11, n_models=12, claims_per_model=3, n_free_max=2)
    print("adversarial (fast):", stats)
    assert stats["proven"] >= 5 and stats["claims"] - stats["proven"] >= 5, stats


@pytest.mark.slow
def test_random_models_sound_large():
    stats = sweep(seed=12, n_models=150, claims_per_model=4, n_free_max=3)
    print("adversarial (slow):", stats)
    assert stats["proven"] >= 60 and stats["claims"] - stats["proven"] >= 60, stats


# ------------------------------------------------------------------------------------------ checker
def _forge(cert: dict, **changes) -> dict:
    c = copy.deepcopy(cert)
    c.update(changes)
    c["digest"] = digest(c)
    return c


def _find_proven(model, rng, tries=300, **fixed):
    for _ in range(tries):
        prefix, n_free, suffix, allowed = random_claim(rng, model, 2)
        kw = dict(prefix=prefix, n_free=max(n_free, 1), suffix=suffix, allowed=allowed)
        kw.update(fixed)
        r = prove(model, kw["prefix"], kw["n_free"], suffix=kw["suffix"], allowed=kw["allowed"])
        if r.proven:
            return r
    raise AssertionError("no proven claim found")


def _assert_rejected(cert, model, what):
    with pytest.raises(CertificateError):
        check(cert, model)
        raise AssertionError(f"accepted a certificate with a changed {what}")


def _two_layer_rope(seed=3):
    cfg = ModelConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_vocab=4, n_ctx=48, d_mlp=16,
                      positional_embedding_type="rotary", init_range=0.3)
    m = Transformer(cfg).double()
    m.init_weights(seed=seed)
    with torch.no_grad():
        m.embed.W_E.mul_(4.0)
        m.unembed.W_U.mul_(3.0)
        for blk in m.blocks:
            blk.attn.W_Q.mul_(0.5)
            blk.attn.W_K.mul_(0.5)
    return m.eval()


@pytest.mark.parametrize("suffix", [[1], []])
def test_checker_accepts_valid_and_rejects_tampering_file_model(tmp_path, suffix):
    """Model saved to a file and loaded back: the certificate names the file hash. A weight moved by one
    ulp in the file, and every change of the claim (digest recomputed), is rejected."""
    rng = np.random.default_rng(5)
    m0 = _two_layer_rope() if suffix else random_model(np.random.default_rng(8))
    d = save(m0, tmp_path / "m")
    m = load(d, dtype=torch.float64)
    r = _find_proven(m, rng, suffix=suffix)
    cert = json.loads(json.dumps(r.certificate))
    assert cert["model_sha256_source"] == "file"
    assert check(cert, m) is True

    # One ulp on one stored weight, in the file (as stored) ...
    from safetensors.torch import load_file, save_file

    wf = next(d.glob("*.safetensors"))
    sd = load_file(str(wf))
    key = sorted(k for k in sd if "W_U" in k)[0]
    t = sd[key].clone()
    flat = t.view(-1)
    flat[0] = torch.nextafter(flat[0], torch.tensor(math.inf, dtype=flat.dtype))
    sd[key] = t
    save_file(sd, str(wf), metadata={"format": "pt"})
    m_ulp = load(d, dtype=torch.float64)
    _assert_rejected(cert, m_ulp, "model file (one ulp)")
    # ... and in memory (the float64 state hash).
    m_mem = copy.deepcopy(m)
    with torch.no_grad():
        w = m_mem.blocks[0].attn.W_K.view(-1)
        w[3] = torch.nextafter(w[3], torch.tensor(-math.inf, dtype=w.dtype))
    _assert_rejected(cert, m_mem, "weight in memory (one ulp)")

    V = m.cfg.d_vocab
    allowed = cert["allowed"] if cert["allowed"] is not None else list(range(V))
    forgeries = {
        "prefix token": _forge(cert, prefix=cert["prefix"][:-1] + [(cert["prefix"][-1] + 1) % V]),
        "prefix length": _forge(cert, prefix=cert["prefix"] + [cert["prefix"][-1]]),
        "suffix": _forge(cert, suffix=cert["suffix"] + [0]),
        "n_free +1": _forge(cert, n_free=cert["n_free"] + 1),
        "n_free -1": _forge(cert, n_free=cert["n_free"] - 1),
        "token": _forge(cert, token=(cert["token"] + 1) % V),
    }
    if len(allowed) < V:
        extra = min(set(range(V)) - set(allowed))
        forgeries["allowed (wider)"] = _forge(cert, allowed=sorted(set(allowed) | {extra}))
    if len(allowed) > 1:
        forgeries["allowed (narrower)"] = _forge(cert, allowed=allowed[1:])
    for what, forged in forgeries.items():
        _assert_rejected(forged, m, what)
    # Evidence numbers: without the digest recomputed (integrity) and with it (forgery).
    for i in range(len(cert["cases"])):
        for field, change in (("margin", lambda x: x * 1.01 + 1e-3), ("margin", lambda x: x * 0.9),
                              ("lambda_max", lambda x: [v * 0.9 - 1e-3 for v in x])):
            bad = copy.deepcopy(cert)
            bad["cases"][i][field] = change(bad["cases"][i][field])
            _assert_rejected(bad, m, f"case {i} {field} (digest kept)")
            if field == "margin":
                bad["margin"] = min(c["margin"] for c in bad["cases"])
            bad["digest"] = digest(bad)
            _assert_rejected(bad, m, f"case {i} {field} (forged)")


# ------------------------------------------------------------------------------------------ regressions
def test_regression_two_layer_rope_own_key_rotated():
    """Found by this harness: with RoPE and more than one layer, a free position's own layer-0 key (the
    shared, unrotated key rows) entered its own attention unrotated, so the layer-1 input sets missed
    the true residual; a false margin (0.47 > the true 0.288) was certified. Checked here directly
    (the set contains the true residual) and end to end."""
    cfg = ModelConfig(n_layers=2, d_model=16, n_heads=1, d_head=8, d_vocab=5, n_ctx=40, d_mlp=32,
                      positional_embedding_type="rotary", init_range=0.3)
    m = Transformer(cfg).double()
    m.init_weights(seed=0)
    with torch.no_grad():
        for blk in m.blocks:
            blk.attn.W_Q.mul_(4.0)
            blk.attn.W_K.mul_(4.0)
    m.eval()
    prefix = [1, 2]
    eng = Engine(extract(m), prefix, [3], np.arange(5))
    sets = eng.free_sets(0, 1)
    for v in range(5):
        _, cache = m.run_with_cache(torch.tensor([prefix + [v]]))
        true = cache["blocks.0.hook_resid_post"][0, 2].detach().numpy()
        lo, hi = sets[v].coord_bounds()
        assert np.all(lo <= true) and np.all(true <= hi), v
    from assay.prove.toy import toy_model

    m2 = toy_model(503, n_layers=2, positional="rotary", qk=3.0, embed=2.0, unembed=3.0, d_vocab=4, n_heads=1,
                   d_head=8, attn_only=True)
    stats = {"claims": 0, "proven": 0, "strings": 0, "bounds": 0}
    audit_claim(m2, [0, 3, 0], 1, [3], None, np.random.default_rng(0), stats)


def test_regression_nan_case_is_not_proven():
    """Found by this harness: a case whose bound came out NaN (overflowed attention bounds in a sharp
    two-layer model) was skipped by min() and the claim reported proven with margin 5.17 while the true
    margin is -19.8 (three different argmax tokens). Overflow also raised OverflowError."""
    from assay.prove.toy import toy_model

    m = toy_model(848, n_layers=2, positional="rotary", qk=6.0, embed=0.5, unembed=10.0, d_vocab=4, n_heads=1,
                  d_head=8)
    stats = {"claims": 0, "proven": 0, "strings": 0, "bounds": 0}
    r = audit_claim(m, [3, 0], 1, [3], None, np.random.default_rng(0), stats)
    assert not r.proven
    for prefix, suffix in (([2, 1, 1], [2]), ([1], [0])):  # these raised OverflowError
        m2 = toy_model(718 if prefix == [2, 1, 1] else 902, n_layers=2, positional="rotary", qk=6.0,
                       embed=0.5 if prefix == [2, 1, 1] else 2.0, unembed=10.0 if prefix == [2, 1, 1] else 1.0,
                       d_vocab=4, n_heads=1, d_head=8)
        audit_claim(m2, prefix, 1, suffix, None, np.random.default_rng(0), stats)


def test_margin_is_state_hash_of_this_model():
    """Sanity of the tamper tests above: the state hash moves with a one-ulp change."""
    m = _two_layer_rope()
    h = state_dict_sha256(m)
    m2 = copy.deepcopy(m)
    with torch.no_grad():
        w = m2.unembed.W_U.view(-1)
        w[0] = torch.nextafter(w[0], torch.tensor(math.inf, dtype=w.dtype))
    assert state_dict_sha256(m2) != h


# ------------------------------------------------------------------------------------------ overwhelm-1l
class LastPosOneLayer:
    """Logits at the last position of prefix + t + suffix for a batch of strings t, on a one-layer model,
    with the prefix's keys and values taken once from the model's own forward pass (hooks) and every
    other step done by the model's own modules (LayerNorms, MLP, unembedding, RoPE helpers). Validated
    against the full forward pass in the test before it is trusted."""

    def __init__(self, model, prefix):
        from assay.model.transformer import apply_rotary, rotary_cos_sin

        self.m, self.cfg = model, model.cfg
        assert self.cfg.n_layers == 1 and self.cfg.positional_embedding_type == "rotary"
        self.apply_rotary, self.rotary_cos_sin = apply_rotary, rotary_cos_sin
        self.n_fix = len(prefix)
        blk = model.blocks[0]
        with torch.no_grad():
            _, cache = model.run_with_cache(torch.tensor([list(prefix)]))
            self.Kp = cache["blocks.0.attn.hook_rot_k"][0]  # [n, h, e]
            self.Vp = cache["blocks.0.attn.hook_v"][0]
            E = model.embed.W_E  # every token, unrotated projections
            xn = blk.ln1(E[None])[0]
            a = blk.attn
            self.Q0 = torch.einsum("vd,hde->vhe", xn, a.W_Q) + a.b_Q
            self.K0 = torch.einsum("vd,hde->vhe", xn, a.W_K) + a.b_K
            self.V0 = torch.einsum("vd,hde->vhe", xn, a.W_V) + a.b_V
        n_max = self.cfg.n_ctx
        self.cos, self.sin = rotary_cos_sin(n_max, self.cfg.rotary_dim, self.cfg.rotary_base, E.dtype)

    def _rot(self, x, positions):  # x [b, p, h, e]
        return self.apply_rotary(x, self.cos[positions], self.sin[positions])

    @torch.no_grad()
    def logits(self, rest: torch.Tensor) -> torch.Tensor:
        """rest [b, r]: the tokens after the prefix (t + suffix); logits [b, V] at the last position."""
        b, r = rest.shape
        pos = torch.arange(self.n_fix, self.n_fix + r)
        K = self._rot(self.K0[rest], pos)  # [b, r, h, e]
        V = self.V0[rest]
        q = self._rot(self.Q0[rest[:, -1:]], pos[-1:])[:, 0]  # [b, h, e]
        sc = math.sqrt(self.cfg.d_head)
        s_p = torch.einsum("bhe,nhe->bhn", q, self.Kp) / sc
        s_r = torch.einsum("bhe,brhe->bhr", q, K) / sc
        p = torch.cat([s_p, s_r], dim=-1).softmax(dim=-1)
        z = torch.einsum("bhn,nhe->bhe", p[..., : self.n_fix], self.Vp) + torch.einsum(
            "bhr,brhe->bhe", p[..., self.n_fix :], V)
        a = self.m.blocks[0].attn
        x = self.m.embed.W_E[rest[:, -1]] + torch.einsum("bhe,hed->bd", z, a.W_O) + a.b_O
        blk = self.m.blocks[0]
        x = x + blk.mlp(blk.ln2(x))
        return self.m.unembed(self.m.ln_final(x))


def _margins(logits: torch.Tensor, c: int) -> torch.Tensor:
    other = logits.clone()
    other[:, c] = -math.inf
    return logits[:, c] - other.max(dim=1).values


def counterexample_search(fast: LastPosOneLayer, n_free, suffix, allowed, c, rng, restarts=2, sweeps=2):
    """Least margin found (greedy coordinate descent: every allowed token at each free position in turn,
    from random starts, per length 1..n_free) and the string attaining it."""
    allowed_t = torch.tensor(allowed)
    best, arg = math.inf, None
    for L in range(1, n_free + 1):
        for _ in range(restarts):
            t = allowed_t[torch.as_tensor(rng.integers(0, len(allowed), size=L))].clone()
            for _ in range(sweeps):
                for i in range(L):
                    cand = t.repeat(len(allowed), 1)
                    cand[:, i] = allowed_t
                    rest = torch.cat([cand, torch.tensor(suffix, dtype=torch.long).repeat(len(allowed), 1)], dim=1)
                    mg = _margins(fast.logits(rest), c)
                    j = int(mg.argmin())
                    t = cand[j].clone()
                    if float(mg[j]) < best:
                        best, arg = float(mg[j]), t.tolist()
    return best, arg


@pytest.mark.slow
def test_overwhelm_1l_proven_claims_survive_counterexample_search():
    """Designed prefixes (docs/prove.md) on the shipped model: for each proven claim, greedy coordinate
    search over all 4096 tokens at every free position never beats the certified margin."""
    from assay.model.io import shipped_models

    if "overwhelm-1l" not in shipped_models():
        pytest.skip("overwhelm-1l not shipped")
    m = load("overwhelm-1l", dtype=torch.float64)
    tok = m.tokenizer
    rng = np.random.default_rng(0)
    V = m.cfg.d_vocab
    claims = [(" congreg", ".", 1024, 4), (" Haman", " unto", 1024, 4), ("yria", " shalt", 1024, 3),
              (" congreg", ".", 256, 3)]
    n_proven = 0
    for word, q, n_fix, n_free in claims:
        b, s = tok.encode(word).ids[-1], tok.encode(q).ids[-1]
        prefix = [b] * n_fix
        fast = LastPosOneLayer(m, prefix)
        # validate the fast evaluator against the full forward pass
        rows = torch.as_tensor(rng.integers(0, V, size=(3, n_free)))
        rest = torch.cat([rows, torch.tensor([[s]] * 3)], dim=1)
        full = m(torch.cat([torch.tensor([prefix] * 3), rest], dim=1))[:, -1]
        assert torch.allclose(fast.logits(rest), full, rtol=0, atol=1e-9)
        r = prove(m, prefix, n_free, suffix=[s])
        if not r.proven:
            continue
        n_proven += 1
        found, t = counterexample_search(fast, n_free, [s], list(range(V)), r.token, rng)
        l0 = float(_margins(fast.logits(torch.tensor([[s]])), r.token)[0])
        print(f"{word!r}x{n_fix}+{q!r} n_free={n_free}: certified {r.margin:.4f}, empty {l0:.4f}, "
              f"least found {found:.4f} at {t}")
        assert found >= r.margin, (word, q, n_fix, n_free, found, r.margin, t)
    assert n_proven >= 2
