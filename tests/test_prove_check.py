"""The independent certificate checker: valid certificates pass, every kind of tampering is rejected.

Two layers of defence are tested separately: the digest (any edit of the JSON is caught) and the
semantic re-derivation (an edit whose digest was recomputed, i.e. a deliberate forgery, is still
caught when it changes the claim, the model or a number of the evidence beyond the checker's tolerance).
"""

from __future__ import annotations

import ast
import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from assay.model import load, save
from assay.prove import CertificateError, check, prove
from assay.prove.api import digest
from assay.prove.bruteforce import enumerate_claim
from assay.prove.toy import toy_model


def _proven(model, rng, n_free=2, want_suffix=None, tries=200, prefix_len=(4, 16), options=None):
    """A random claim the prover proves (with a suffix or without, as asked)."""
    vocab = model.cfg.d_vocab
    for _ in range(tries):
        prefix = rng.integers(0, vocab, size=int(rng.integers(*prefix_len))).tolist()
        has_suffix = bool(rng.integers(0, 2)) if want_suffix is None else want_suffix
        suffix = rng.integers(0, vocab, size=1).tolist() if has_suffix else []
        allowed = None if rng.random() < 0.5 else sorted(rng.choice(vocab, size=3, replace=False).tolist())
        r = prove(model, prefix, n_free, suffix=suffix, allowed=allowed, options=options)
        if r.proven:
            return r
    raise AssertionError("no proven claim found")


@pytest.fixture(scope="module")
def models():
    return {
        "rope-relu": toy_model(0, qk=0.3, positional="rotary"),
        "learned-gelu": toy_model(2, qk=0.3, positional="standard", act_fn="gelu"),
        "attn-only": toy_model(1, qk=0.3, positional="none", attn_only=True),
    }


@pytest.fixture(scope="module")
def certs(models):
    rng = np.random.default_rng(0)
    out = {}
    for name, m in models.items():
        out[name + "/suffix"] = (m, _proven(m, rng, want_suffix=True))
        out[name + "/nosuffix"] = (m, _proven(m, rng, want_suffix=False))
    two = toy_model(0, n_layers=2, qk=0.1, unembed=3.0, embed=6.0, positional="none", attn_only=True)
    out["2l-attn-only/suffix"] = (two, _proven(two, rng, n_free=1, want_suffix=True, prefix_len=(24, 36)))
    return out


def _forge(cert: dict, **changes) -> dict:
    """A copy with fields changed and the digest recomputed (a deliberate forgery)."""
    c = copy.deepcopy(cert)
    c.update(changes)
    c["digest"] = digest(c)
    return c


def test_valid_certificates_pass_also_after_a_json_round_trip(certs):
    for _name, (m, r) in certs.items():
        assert check(r.certificate, m) is True
        assert check(json.loads(json.dumps(r.certificate)), m) is True
        assert check(json.dumps(r.certificate), m) is True


def test_checker_imports_nothing_from_the_prover():
    src = Path(__file__).resolve().parents[1] / "src" / "assay" / "prove" / "check.py"
    tree = ast.parse(src.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert not (node.module or "").startswith("assay"), node.module
        if isinstance(node, ast.Import):
            assert not any(a.name.startswith("assay") for a in node.names)


def test_any_edit_breaks_the_digest(certs):
    m, r = certs["rope-relu/nosuffix"]
    cert = r.certificate
    edits = {
        "prefix": cert["prefix"][:-1] + [(cert["prefix"][-1] + 1) % 6],
        "suffix": [1],
        "n_free": cert["n_free"] + 1,
        "allowed": [0, 1],
        "token": (cert["token"] + 1) % 6,
        "margin": cert["margin"] * 0.5,
    }
    for key, value in edits.items():
        bad = copy.deepcopy(cert)
        bad[key] = value
        with pytest.raises(CertificateError, match="digest"):
            check(bad, m)
    bad = copy.deepcopy(cert)
    bad["cases"][0]["lambda_max"][0] += 1e-12
    with pytest.raises(CertificateError, match="digest"):
        check(bad, m)


def test_changed_weights_are_rejected(certs):
    for _name, (m, r) in certs.items():
        m2 = copy.deepcopy(m)
        with torch.no_grad():
            m2.unembed.W_U[0, 0] += 1e-6
        with pytest.raises(CertificateError, match="weights"):
            check(r.certificate, m2)
        # ... and a forgery naming the new weights' hashes fails the re-derivation when the change matters
        m3 = copy.deepcopy(m)
        with torch.no_grad():
            m3.unembed.W_U.mul_(1.05)
        from assay.prove.weights import state_dict_sha256

        h = state_dict_sha256(m3)
        forged = _forge(r.certificate, weights_state_sha256=h, model_sha256=h)
        with pytest.raises(CertificateError):
            check(forged, m3)


def test_forged_claims_are_rejected(certs):
    for name, (m, r) in certs.items():
        cert = r.certificate
        V = m.cfg.d_vocab
        forgeries = {
            "prefix": _forge(cert, prefix=[(t + 1) % V for t in cert["prefix"]]),
            "token": _forge(cert, token=(cert["token"] + 1) % V),
            "n_free": _forge(cert, n_free=cert["n_free"] + 1),
            "suffix": _forge(cert, suffix=[] if cert["suffix"] else [0]),
        }
        if not cert["suffix"]:
            allowed = cert["allowed"] if cert["allowed"] is not None else list(range(V))
            forgeries["allowed"] = _forge(cert, allowed=allowed[:-1])
        for what, forged in forgeries.items():
            with pytest.raises(CertificateError):
                check(forged, m)
                pytest.fail(f"{name}: forged {what} accepted")


def test_forged_evidence_numbers_are_rejected(certs):
    for _name, (m, r) in certs.items():
        cert = r.certificate
        cases = cert["cases"]
        i = int(np.argmin([c["margin"] for c in cases]))
        # a larger margin than the bound allows
        bad = copy.deepcopy(cert)
        bad["cases"][i]["margin"] *= 1.01
        bad["margin"] = min(c["margin"] for c in bad["cases"])
        with pytest.raises(CertificateError, match="margin"):
            check(_forge(bad), m)
        # a smaller one (inconsistent with the recomputation)
        bad = copy.deepcopy(cert)
        bad["cases"][i]["margin"] *= 0.99
        bad["margin"] = min(c["margin"] for c in bad["cases"])
        with pytest.raises(CertificateError, match="margin"):
            check(_forge(bad), m)
        # top-level margin not the least case margin
        with pytest.raises(CertificateError, match="least"):
            check(_forge(cert, margin=cert["margin"] * 0.5), m)
        # lambda_max too small or too large
        for factor in (0.9, 1.1):
            bad = copy.deepcopy(cert)
            j = max(range(len(cases)), key=lambda c: max(cases[c]["lambda_max"]))
            h = int(np.argmax(bad["cases"][j]["lambda_max"]))
            bad["cases"][j]["lambda_max"][h] = bad["cases"][j]["lambda_max"][h] * factor + (factor - 1)
            with pytest.raises(CertificateError, match="lambda"):
                check(_forge(bad), m)
        # the worst competitor named wrongly
        bad = copy.deepcopy(cert)
        others = [k for k in range(m.cfg.d_vocab) if k != cert["token"]]
        bad["cases"][i]["worst"] = next(k for k in others if k != cases[i]["worst"])
        with pytest.raises(CertificateError):
            check(_forge(bad), m)
        # a case dropped or duplicated
        with pytest.raises(CertificateError, match="cases"):
            check(_forge(cert, cases=cases[:-1]), m)
        with pytest.raises(CertificateError, match="cases"):
            check(_forge(cert, cases=cases + cases[-1:]), m)


def test_certificate_for_a_false_claim_is_rejected():
    """Hand-made certificates for claims that enumeration shows are false."""
    rng = np.random.default_rng(3)
    m = toy_model(0, qk=1.0, positional="rotary")
    made = 0
    for _ in range(60):
        prefix = rng.integers(0, 6, size=int(rng.integers(3, 10))).tolist()
        r = prove(m, prefix, 1, suffix=[])
        e = enumerate_claim(m, prefix, 1, [])
        if len(e.argmax_tokens) < 2:
            continue
        cert = copy.deepcopy(r.certificate)
        for case in cert["cases"]:
            case["margin"] = 0.25
        cert.update(proven=True, margin=0.25)
        cert["digest"] = digest(cert)
        with pytest.raises(CertificateError):
            check(cert, m)
        made += 1
        if made >= 3:
            break
    assert made >= 3


def test_unproven_result_does_not_check():
    m = toy_model(0, qk=3.0, positional="rotary")
    r = prove(m, [1, 2, 3], 2)
    assert not r.proven
    with pytest.raises(CertificateError, match="not proven"):
        check(r.certificate, m)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: s[: len(s) // 2],  # truncated
        lambda s: "[1, 2, 3]",
        lambda s: "not json",
        lambda s: json.dumps({k: v for k, v in json.loads(s).items() if k != "cases"}),
        lambda s: json.dumps({k: v for k, v in json.loads(s).items() if k != "model_sha256"}),
        lambda s: s.replace('"format": "assay-overwhelm-certificate/1"', '"format": "other/9"'),
    ],
)
def test_corrupt_or_incomplete_json_is_a_certificate_error(certs, mangle):
    m, r = certs["rope-relu/suffix"]
    with pytest.raises(CertificateError):
        check(mangle(json.dumps(r.certificate)), m)


def test_wrong_types_are_certificate_errors(certs):
    m, r = certs["rope-relu/suffix"]
    cert = r.certificate
    for bad in (
        _forge(cert, prefix="1,2,3"),
        _forge(cert, n_free=-1),
        _forge(cert, token=True),
        _forge(cert, allowed=[3, 1]),
        _forge(cert, cases=[{"L": 0}]),
        _forge(cert, prefix=[999]),
    ):
        with pytest.raises(CertificateError):
            check(bad, m)


def test_model_loaded_from_file_uses_the_file_hash(tmp_path):
    m = toy_model(0, qk=0.3, positional="rotary")
    save(m, tmp_path / "toy")
    loaded = load(tmp_path / "toy")
    r = _proven(loaded, np.random.default_rng(5), want_suffix=True)
    assert r.certificate["model_sha256_source"] == "file"
    assert r.certificate["model_sha256"] == loaded.weights_sha256
    assert check(r.certificate, loaded)
    assert check(r.certificate, m)  # same weights in memory (no file hash to compare)
    other = copy.deepcopy(loaded)
    other.weights_sha256 = "0" * 64  # came from some other file
    with pytest.raises(CertificateError, match="file hash"):
        check(r.certificate, other)


def test_fields_added_after_proving_are_allowed(certs):
    """The command line adds the model's name to the certificate it writes; that must still check."""
    m, r = certs["rope-relu/suffix"]
    cert = dict(r.certificate)
    cert["model"] = "some-model"
    assert check(cert, m)
    bad = dict(cert)
    bad.pop("claim")
    with pytest.raises(CertificateError, match="incomplete"):
        check(bad, m)


def test_the_checker_re_derives_the_method_the_certificate_names(models, monkeypatch):
    # /1 (earlier versions): no LayerNorm pre-activation ranges; /2 added them; /3 the pre-activation set
    # and the inner-product norm bound; /4 per-competitor slopes where /3 does not prove a case
    # (tests/test_prove_slopes.py); /5 per-position attention caps and score ratios; /6 (this prover)
    # norm directions where /5 does not prove a case (test_norm_directions_* below); /7 a weight of
    # sigma on the tangent path; /8 (this prover) 32 runs of free positions (test_runs_* below).
    # Certificates of every version still check; a certificate relabelled with an earlier version
    # claims more than that version derives and is rejected; an unknown method is rejected.
    from assay.prove import api, engine, rules
    from assay.prove.engine import Options

    m = models["rope-relu"]
    no_slopes = Options(max_alpha=0)

    def before_5(mp):  # the attention terms of /1 to /4: the largest cap over the positions, no ratios
        mp.setattr(rules, "position_buckets", lambda per, runs: None)
        mp.setattr(rules, "anchor_mass_hi", lambda s, srad, m: math.inf)

    before_5(monkeypatch)
    # an old-style /1 certificate: the prover without any of the LayerNorm pre-activation refinements
    monkeypatch.setattr(api, "METHOD", "affine-lambda/1")
    monkeypatch.setattr(rules, "ln_taylor", lambda *a, _f=rules.ln_taylor: (_f(*a)[0], None))
    monkeypatch.setattr(rules, "norm_upper_bound", lambda Y, p: math.inf)
    old = _proven(m, np.random.default_rng(5), want_suffix=True, options=no_slopes)
    monkeypatch.undo()
    assert old.certificate["method"]["name"] == "affine-lambda/1" and check(old.certificate, m)
    c = old.certificate
    claim = dict(suffix=c["suffix"], allowed=c["allowed"])
    # a /2 certificate: ranges from the linear part, but the Taylor set (with its ball) as the MLP input
    monkeypatch.setattr(api, "METHOD", "affine-lambda/2")
    before_5(monkeypatch)
    monkeypatch.setattr(rules, "ln_preact_set", lambda e, P, *a: P)
    monkeypatch.setattr(rules, "norm_upper_bound", lambda Y, p: math.inf)
    mid = prove(m, c["prefix"], c["n_free"], **claim, options=no_slopes)
    monkeypatch.undo()
    assert mid.certificate["method"]["name"] == "affine-lambda/2" and check(mid.certificate, m)
    monkeypatch.setattr(api, "METHOD", "affine-lambda/3")
    before_5(monkeypatch)
    new = prove(m, c["prefix"], c["n_free"], **claim, options=no_slopes)
    monkeypatch.undo()
    assert new.certificate["method"]["name"] == "affine-lambda/3" and check(new.certificate, m)
    assert new.margin > mid.margin > old.margin
    monkeypatch.setattr(api, "METHOD", "affine-lambda/4")
    before_5(monkeypatch)
    four = prove(m, c["prefix"], c["n_free"], **claim)
    monkeypatch.undo()
    assert four.certificate["method"]["name"] == "affine-lambda/4" and check(four.certificate, m)
    assert four.margin >= new.margin
    monkeypatch.setattr(api, "METHOD", "affine-lambda/5")
    monkeypatch.setattr(engine, "NORM_DIRS", False)
    monkeypatch.setattr(engine, "GAMMA", False)
    monkeypatch.setattr(engine, "RUNS", 8)
    five = prove(m, c["prefix"], c["n_free"], **claim)
    monkeypatch.undo()
    assert five.certificate["method"]["name"] == "affine-lambda/5" and check(five.certificate, m)
    assert five.margin > four.margin
    monkeypatch.setattr(api, "METHOD", "affine-lambda/6")
    monkeypatch.setattr(engine, "GAMMA", False)
    monkeypatch.setattr(engine, "RUNS", 8)
    six = prove(m, c["prefix"], c["n_free"], **claim)
    monkeypatch.undo()
    assert six.certificate["method"]["name"] == "affine-lambda/6" and check(six.certificate, m)
    assert six.margin >= five.margin
    monkeypatch.setattr(api, "METHOD", "affine-lambda/7")
    monkeypatch.setattr(engine, "RUNS", 8)
    seven = prove(m, c["prefix"], c["n_free"], **claim)
    monkeypatch.undo()
    assert seven.certificate["method"]["name"] == "affine-lambda/7" and check(seven.certificate, m)
    assert seven.margin >= six.margin
    now = prove(m, c["prefix"], c["n_free"], **claim)
    assert now.certificate["method"]["name"] == "affine-lambda/8" and check(now.certificate, m)
    assert now.margin >= seven.margin
    for label, cert in (("affine-lambda/1", mid.certificate), ("affine-lambda/2", new.certificate),
                        ("affine-lambda/4", five.certificate)):
        with pytest.raises(CertificateError, match="exceeds the recomputed bound"):
            check(_forge(cert, method={**cert["method"], "name": label}), m)
    with pytest.raises(CertificateError, match="unknown method"):
        check(_forge(new.certificate, method={**new.certificate["method"], "name": "affine-lambda/9"}), m)


def test_checker_pooled_max_with_its_float_filter_equals_the_full_arb_maximum():
    # The checker takes each group's maximum in arb only over the rows a float pass cannot rule out.
    # Against the maximum over every row, on rows with exact ties, near-ties (1 ulp apart), huge and
    # tiny magnitudes and several groups: the same exact numbers.
    import importlib

    from flint import arb

    C = importlib.import_module("assay.prove.check")  # the package exports a function of that name

    def full(X, pool):
        scale, starts, mult, total = pool[:4]
        pscale = pool[4] if len(pool) > 4 else None
        N, K = len(X), len(X[0])
        bounds = list(starts[1:]) + [N]
        # the positions of every group: (rows, their scales there, how many positions have them)
        positions = []
        for g, (a, b) in enumerate(zip(starts, bounds, strict=True)):
            if pscale is None or pscale[g] is None:
                positions.append((a, b, scale[a:b], mult[g]))
            else:
                positions += [(a, b, sq, n) for sq, n in zip(*pscale[g], strict=True)]
        out = []
        for k in range(K):
            col = [X[b][k].upper() for b in range(N)]
            top = float(max(float(x) for x in col + [C.ZERO]))
            best = None
            for f in C.POOL_T:
                t = arb(top * f)
                val = total * t
                for a, b, sc, n in positions:
                    gm = C._emax([(sc[r - a] * (col[r] - t)).upper() for r in range(a, b)] + [C.ZERO])
                    val = val + n * gm
                val = val.upper()
                best = val if best is None else C._emin([best, val])
            out.append(best)
        return out

    rng = np.random.default_rng(7)
    for trial in range(30):
        N, K = int(rng.integers(2, 40)), int(rng.integers(1, 4))
        X = rng.standard_normal((N, K)) * 10.0 ** rng.uniform(-8, 8)
        X[rng.integers(0, N, 3)] = X[0]  # exact ties
        X[1] = np.nextafter(X[0], np.inf)  # near-ties
        scale = [arb(float(x)) for x in rng.uniform(0, 1, N)]
        cut = sorted(set(rng.integers(1, N, 2).tolist()))
        starts = [0] + cut
        mult = [int(m) for m in rng.integers(1, 4, len(starts))]
        pscale = None
        if trial % 2:  # per-position scales on some groups (buckets whose counts sum to the multiplicity)
            bounds = starts[1:] + [N]
            pscale = []
            for g, m in enumerate(mult):
                nb = int(rng.integers(1, m + 1))
                counts = [m - nb + 1] + [1] * (nb - 1)
                pscale.append(None if g == 0 else ([[arb(float(x)) for x in rng.uniform(0, 1, bounds[g] - starts[g])]
                                                    for _ in range(nb)], [arb(n) for n in counts]))
        pool = (scale, starts, [arb(m) for m in mult], arb(float(rng.uniform(0.1, 2))), pscale)
        Xa = [[arb(float(v)) for v in row] for row in X]
        got, want = C.pooled_max(Xa, pool), full(Xa, pool)
        assert all(g == w for g, w in zip(got, want, strict=True)), (trial, got, want)
    # Below the double range a float is off by 2^-1074 absolute, not relative: a subnormal scale
    # times a huge value must not be filtered out (found in review; the bound then missed ~1e-24).
    tiny = arb(1.4) * arb(2) ** -1074
    Xa, pool = [[arb(6e-24)], [arb(1e300)]], ([arb(1), tiny], [0], [arb(1)], arb(1))
    assert C.pooled_max(Xa, pool)[0] == full(Xa, pool)[0]
    assert C.pooled_max(Xa, pool)[0] >= (tiny * arb(1e300)).lower()


def test_norm_directions_raise_a_failing_case_and_are_checked_evidence(models, monkeypatch):
    # Method /6: a case the first pass (no slopes, no directions) does not prove gets a second pass
    # with norm directions at the last LayerNorms. On this claim that gives a higher certified margin
    # than /5, the claim holds by enumeration, the checker accepts the directions, and a certificate
    # whose directions are changed, malformed or relabelled /5 is rejected.
    from assay.prove import engine

    m = models["rope-relu"]
    prefix, suffix, n_free = [3, 2, 3, 2, 3, 3, 4, 5], [0], 2
    r = prove(m, prefix, n_free, suffix=suffix)
    assert r.proven and check(r.certificate, m)
    e = enumerate_claim(m, prefix, n_free, suffix)
    assert e.argmax_tokens == {r.token} and r.margin <= e.min_margin[r.token]
    monkeypatch.setattr(engine, "NORM_DIRS", False)
    monkeypatch.setattr(engine, "GAMMA", False)
    five = prove(m, prefix, n_free, suffix=suffix)
    monkeypatch.undo()
    assert five.proven and r.margin > five.margin
    cert = r.certificate
    i = next(j for j, c in enumerate(cert["cases"]) if c["norm_dirs"])
    assert set(cert["cases"][i]["norm_dirs"]) <= {"ln2", "final"}
    # every direction reversed or zero: no bound away from 0 along it, so the case's bound is /5's
    for change in (lambda v: [-x for x in v], lambda v: [0.0] * len(v)):
        bad = copy.deepcopy(cert)
        bad["cases"][i]["norm_dirs"] = {k: change(v) for k, v in cert["cases"][i]["norm_dirs"].items()}
        with pytest.raises(CertificateError, match="margin|not positive"):
            check(_forge(bad), m)
    for site, v in cert["cases"][i]["norm_dirs"].items():
        assert len(v) == m.cfg.d_model and abs(float(np.linalg.norm(v)) - 1.0) < 1e-9
        for malformed, msg in ((v[:-1], "norm direction"), ([True] * len(v), "norm direction"),
                               ([str(x) for x in v], "norm direction")):
            bad = copy.deepcopy(cert)
            bad["cases"][i]["norm_dirs"][site] = malformed
            with pytest.raises(CertificateError, match=msg):
                check(_forge(bad), m)
    bad = copy.deepcopy(cert)
    bad["cases"][i]["norm_dirs"] = {"ln1": next(iter(cert["cases"][i]["norm_dirs"].values()))}
    with pytest.raises(CertificateError, match="bad norm directions"):
        check(_forge(bad), m)
    with pytest.raises(CertificateError, match="not part of this method"):
        check(_forge(cert, method={**cert["method"], "name": "affine-lambda/5"}), m)


def test_runs_of_free_positions_are_sound_tighter_and_checked(monkeypatch):
    # Method /8 merges the free positions of an attention term into up to 32 runs (8 before, /7). With
    # two allowed tokens every t of length 0..11 is enumerable, and 11 free positions are more than
    # 8 runs. On the same claims: /8's margin is never below /7's and is above it somewhere; every
    # proven claim holds by enumeration with a margin at most the true one; both methods' certificates
    # check; a /8 certificate relabelled /7 is rejected; and the checker follows a method's run count
    # (a prover and a checker at 10 runs agree).
    import importlib

    from assay.prove import api, engine

    check_mod = importlib.import_module("assay.prove.check")
    model = toy_model(0, positional="rotary", qk=2.0, embed=5.0, unembed=2.0)
    rng = np.random.default_rng(7)
    n_free = 11
    n_higher, n_proven = 0, 0
    higher_cert = None
    for _ in range(8):
        prefix = [int(x) for x in rng.integers(0, 6, int(rng.integers(6, 12)))]
        allowed = sorted(int(x) for x in rng.choice(6, 2, replace=False))
        suffix = [int(rng.integers(0, 6))]
        with monkeypatch.context() as mp:
            mp.setattr(api, "METHOD", "affine-lambda/7")
            mp.setattr(engine, "RUNS", 8)
            r7 = prove(model, prefix, n_free, suffix=suffix, allowed=allowed)
        r8 = prove(model, prefix, n_free, suffix=suffix, allowed=allowed)
        assert r8.certificate["method"]["name"] == "affine-lambda/8"
        assert r8.best_margin >= r7.best_margin - 1e-9
        if not r8.proven:
            continue
        n_proven += 1
        e = enumerate_claim(model, prefix, n_free, suffix, allowed=allowed)
        assert e.argmax_tokens == {r8.token} and r8.margin <= e.min_margin[r8.token] + 1e-9
        assert check(r8.certificate, model)
        if r7.proven:
            assert check(r7.certificate, model)
        if r8.margin > r7.best_margin + 1e-3:
            n_higher += 1
            higher_cert = r8.certificate
    assert n_proven >= 2 and n_higher >= 1
    with pytest.raises(CertificateError):
        check(_forge(higher_cert, method={**higher_cert["method"], "name": "affine-lambda/7"}), model)
    c = higher_cert
    monkeypatch.setitem(check_mod.METHODS, "affine-lambda/8", {**check_mod.METHODS["affine-lambda/8"], "runs": 10})
    monkeypatch.setattr(engine, "RUNS", 10)
    r10 = prove(model, c["prefix"], c["n_free"], suffix=c["suffix"], allowed=c["allowed"])
    assert r10.proven and check(r10.certificate, model)
    with pytest.raises(CertificateError):  # the 32-run certificate against a 10-run checker
        check(c, model)
