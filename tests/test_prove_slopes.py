"""Method /4: per-competitor ReLU slopes, convexity along the attention rows, the tangent bound.

Ground truth: sampling (the relaxation, the tangent inequality, the bound at points of synthetic
sets), exact minima at vertices, and enumeration of every string of a case on tiny models (each
competitor's bound against its true least logit difference); and the checker's independent derivation
(arb) against the prover's (floating point with error terms).
"""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import torch

from assay.prove import CertificateError, check, prove, rules, slopes
from assay.prove.api import digest, reference_token
from assay.prove.engine import Engine, Options
from assay.prove.toy import toy_model
from assay.prove.weights import extract


def test_relaxation_holds_for_any_slope_on_crossing_neurons():
    rng = np.random.default_rng(0)
    lo = -rng.uniform(0.01, 3, 400)
    hi = rng.uniform(0.01, 3, 400)
    s = rng.uniform(-0.5, 1.5, 400)  # clipped to [0, 1]
    a, b, mu = rules.relax_activation(lo, hi, "relu", s)
    assert np.array_equal(a, np.clip(s, 0, 1))
    p = lo[:, None] + (hi - lo)[:, None] * np.linspace(0, 1, 257)[None, :]
    p = np.concatenate([p, np.zeros((400, 1))], axis=1)
    gap = np.abs(np.maximum(p, 0) - a[:, None] * p - b[:, None])
    assert (gap <= mu[:, None] + 1e-12).all()  # the test's own rounding
    # slope 0 or 1 on a crossing neuron: the lower edge of the relaxation is relu's own lower bound
    for v in (0.0, 1.0):
        a, b, mu = rules.relax_activation(lo, hi, "relu", np.full(400, v))
        assert np.allclose(b - mu, 0.0, atol=1e-12)
    # stable neurons keep their exact slope whatever is asked
    a, _, mu = rules.relax_activation(np.array([0.5, -2.0]), np.array([1.0, -1.0]), "relu", np.array([0.3, 0.3]))
    assert a.tolist() == [1.0, 0.0] and (mu < 1e-12).all()


def test_tangent_plane_is_below_sigma_everywhere():
    rng = np.random.default_rng(1)
    for d, eps in ((16, 1e-5), (128, 1e-5), (8, 0.5)):
        ys = rng.normal(size=d) * rng.uniform(0.01, 3)
        u, c0 = slopes.tangent(ys, eps)
        assert d * float(u @ u) + c0 * c0 / eps <= 1.0
        Y = np.concatenate([ys[None, :] * rng.uniform(-2, 3, (500, 1)), rng.normal(size=(500, d)) * 5,
                            ys[None, :] + 1e-3 * rng.normal(size=(500, d))])
        sig = np.sqrt((Y * Y).sum(axis=1) / d + eps)
        assert (sig >= Y @ u + c0).all()
        # tight at the tangent point
        assert math.isclose(float(ys @ u + c0), math.sqrt(ys @ ys / d + eps), rel_tol=1e-8)


def _true_margins(model, prefix, suffix, L, last, allowed, c):
    """min over the case's strings of logit[c] - logit[k], for every k (float64 forward)."""
    m64 = copy.deepcopy(model).double().eval()
    rows = []
    n_free_pos = L if suffix else L - 1
    tail = list(suffix) if suffix else ([last] if L >= 1 else [])
    for t in itertools.product(allowed, repeat=n_free_pos):
        rows.append(list(prefix) + list(t) + tail)
    with torch.no_grad():
        logits = m64(torch.tensor(rows))[:, -1, :].numpy()
    return (logits[:, [c]] - logits).min(axis=0)


# Two of the four models run in the slow suite only (CI runs both suites): together they took 41 s of
# the default suite's ten minutes.
@pytest.mark.parametrize("seed,qk,unembed", [(0, 0.3, 1.0), pytest.param(1, 1.0, 3.0, marks=pytest.mark.slow),
                                             pytest.param(2, 0.3, 3.0, marks=pytest.mark.slow), (4, 0.5, 2.0)])
def test_every_competitor_bound_with_slopes_is_below_the_enumerated_truth(seed, qk, unembed):
    # Each competitor's bound (both paths, slopes chosen for it) against its true least logit
    # difference over every string of the case; the quotient path always gives a finite bound.
    model = toy_model(seed, qk=qk, unembed=unembed, positional="rotary")
    W = extract(model)
    V = model.cfg.d_vocab
    rng = np.random.default_rng(seed)
    n_checked = n_better = 0
    for _ in range(6):
        prefix = rng.integers(0, V, size=int(rng.integers(3, 12))).tolist()
        suffix = rng.integers(0, V, size=1).tolist() if rng.random() < 0.5 else []
        c = reference_token(model, prefix, suffix)
        eng = Engine(W, prefix, suffix, np.arange(V), Options())
        for L in (1, 2):
            for last in ([None] if suffix else range(V)):
                X, _ = eng.final_set(L, last)
                ks = [k for k in range(V) if k != c]
                bound = eng.alpha_margins(X, c, ks)
                plain, _, _ = eng.margins(X, c, refine=ks)
                truth = _true_margins(model, prefix, suffix, L, last, range(V), c)
                where = f"seed={seed} prefix={prefix} suffix={suffix} L={L} last={last}"
                assert np.isfinite(bound).all(), where
                for k, b in zip(ks, bound, strict=True):
                    assert b <= truth[k] + 1e-9, f"{where} k={k}: {b} > {truth[k]}"
                n_checked += len(ks)
                n_better += int((bound > plain[ks] + 1e-9).sum())
    assert n_checked >= 100
    assert n_better >= 1  # the slopes do tighten some bounds on these models


@pytest.fixture(scope="module")
def slope_cert():
    """A proven claim whose certificate carries slopes (the slope phase forced on every case)."""
    model = toy_model(0, qk=0.3, unembed=1.0, positional="rotary")
    rng = np.random.default_rng(3)
    V = model.cfg.d_vocab
    for _ in range(100):
        prefix = rng.integers(0, V, size=int(rng.integers(4, 14))).tolist()
        suffix = rng.integers(0, V, size=1).tolist()
        r = prove(model, prefix, 2, suffix=suffix, options=Options(alpha_below=1e9))
        if r.proven and any(e["slopes"] for c in r.certificate["cases"] for e in c["alpha"]):
            return model, r
    raise AssertionError("no proven claim with slopes found")


def _forge(cert, case_change):
    c = copy.deepcopy(cert)
    case_change(c)
    c["digest"] = digest(c)
    return c


def test_certificate_with_slopes_checks_and_its_slopes_are_checked(slope_cert):
    model, r = slope_cert
    cert = r.certificate
    assert cert["method"]["name"] == "affine-lambda/8"
    assert check(cert, model)
    i, j = next((i, j) for i, c in enumerate(cert["cases"]) for j, e in enumerate(c["alpha"]) if e["slopes"])

    def bad_value(c):
        c["cases"][i]["alpha"][j]["slopes"][0][1] = 1.5

    def bad_neuron(c):
        c["cases"][i]["alpha"][j]["slopes"][0][0] = model.cfg.d_mlp

    def twice(c):
        c["cases"][i]["alpha"].append(copy.deepcopy(c["cases"][i]["alpha"][j]))

    def bad_path(c):
        c["cases"][i]["alpha"][j]["path"] = "secant"

    def bad_shift(c):
        c["cases"][i]["alpha"][j]["shift"] = [0, 0]

    for change, msg in ((bad_value, "0 <= value <= 1"), (bad_neuron, "0 <= value <= 1"),
                        (twice, "bad competitor"), (bad_path, "unknown slope path"),
                        (bad_shift, "distinct neuron indices")):
        with pytest.raises(CertificateError, match=msg):
            check(_forge(cert, change), model)

    def drop(c):  # without the slopes the named competitor's bound falls below the claimed margin
        for case in c["cases"]:
            case["alpha"] = []

    def relabel(c):
        c["method"]["name"] = "affine-lambda/3"

    with pytest.raises(CertificateError):
        check(_forge(cert, drop), model)
    with pytest.raises(CertificateError, match="not part of this method"):
        check(_forge(cert, relabel), model)


def test_checker_derivation_of_the_slope_bound_agrees_with_the_prover(slope_cert):
    # Two derivations of the same bound (prover: floating point with error terms; checker: arb, with its
    # own ranges, chords and row values): equal up to rounding.
    import importlib

    C = importlib.import_module("assay.prove.check")
    model, r = slope_cert
    cert = r.certificate
    W = extract(model)
    V = model.cfg.d_vocab
    eng = Engine(W, cert["prefix"], cert["suffix"], np.arange(V), Options())
    chk = C.Checker(model, cert["prefix"], cert["suffix"], list(range(V)), {}, **C.METHODS["affine-lambda/5"])
    n = shifted = 0
    for case in cert["cases"]:
        for ev in case["alpha"]:
            X, _ = eng.final_set(case["L"], case["last"])
            Xc, _ = chk.final_set(case["L"], case["last"])
            k = ev["k"]
            prover = eng.margins(X, r.token, refine=[], alpha=[ev])[0][k]
            checker = chk.margins(Xc, r.token, [], [ev])[k]
            assert prover == pytest.approx(float(checker.mid()), rel=1e-6, abs=1e-9)
            n += 1
            shifted += bool(ev["shift"])
    assert n >= 1 and shifted >= 1


def test_slopes_are_skipped_after_the_first_unproven_case(monkeypatch):
    # An unprovable claim with a free last token has |A| cases per length: after the first case that
    # fails, the claim cannot be proven, so the later cases must not run the slope search.
    seen = []
    real = Engine.case

    def case(self, L, last, c, *a, **k):
        r = real(self, L, last, c, *a, **k)
        seen.append((self.use_slopes, r.margin))
        return r

    monkeypatch.setattr(Engine, "case", case)
    model = toy_model(4, qk=0.5, unembed=2.0, positional="rotary")
    r = prove(model, [1, 2, 3], 2)
    assert not r.proven and len(seen) == 1 + 2 * model.cfg.d_vocab
    first_fail = next(i for i, (_, m) in enumerate(seen) if not m > 0)
    assert all(on for on, _ in seen[: first_fail + 1])
    assert not any(on for on, _ in seen[first_fail + 1:])
    assert first_fail + 1 < len(seen)  # the rule was exercised


def _synthetic_last_mlp(rng, d=6, m=12):
    """A LastMLP with two row terms (pooled terms shared by mid and P, as two heads make; one with two
    groups of positions), a zonotope
    shared by both, and P-only terms (a zonotope, a signed copy of a row term), centred so that most
    neurons cross 0."""
    from assay.prove.affine import AffineSet, Term, make_pooled, new_id, signed_copy

    mid = AffineSet.point(rng.standard_normal(d), np.abs(rng.standard_normal(d)) * 1e-3)
    P = AffineSet.point(rng.standard_normal(m) * 0.3, np.abs(rng.standard_normal(m)) * 1e-3)
    rows = []
    for h in range(2):
        k, N = 3, 7
        # one group of three positions, or two groups (rows 0-2 and 3-6) of two and one positions
        starts, mult = (np.array([0]), np.array([3.0])) if h == 0 else (np.array([0, 3]), np.array([2.0, 1.0]))
        t = make_pooled(rng.standard_normal((N, k)), rng.uniform(0.1, 0.6, N), starts, mult,
                        float(rng.uniform(0.3, 1.2)), rng.standard_normal((k, d)))
        mid.terms.append(t)
        P.terms.append(t.with_M(rng.standard_normal((k, m))))
        rows.append(t)
    z = Term(new_id(), "zono", rng.standard_normal((2, d)) * 0.3)
    mid.terms.append(z)
    P.terms.append(z.with_M(rng.standard_normal((2, m)) * 0.3))
    P.terms.append(Term(new_id(), "zono", rng.standard_normal((2, m)) * 0.2))
    sc, box = signed_copy(P.terms[0], 0.2)
    P.terms.append(sc)
    P.box = P.box + box
    lo, hi = P.coord_bounds()
    rec = slopes.LastMLP(mid, P, lo, hi, rng.standard_normal((m, d)), rng.standard_normal(d) * 0.1)
    return rec, rows, z, sc


@pytest.mark.parametrize("seed", range(6))
def test_lower_bound_holds_at_sampled_points_of_the_sets(seed):
    # The slope bound (relaxation on w >= 0 neurons, convexity along the attention rows on w < 0 ones)
    # against the exact function at points of the sets, a third of them at extreme points (weights at
    # their caps, zonotope signs).
    from test_prove_bounds import coefficients

    from assay.prove.affine import AffineSet

    rng = np.random.default_rng(seed)
    rec, rows, z, sc = _synthetic_last_mlp(rng)
    n = 3000
    coefs = coefficients(AffineSet(rec.mid.center, rec.mid.box, rows + [z]), n, rng)
    orig = next(t for t in rec.P.terms if t.id == rows[0].id)
    s = rng.uniform(-1, 1, (n, 1))
    s[: n // 3] = np.sign(s[: n // 3])
    x = rec.mid.center + sum(coefs[t.id] @ t.M for t in rec.mid.terms)
    x = x + rng.uniform(-1, 1, x.shape) * rec.mid.box
    own = coefficients(AffineSet(rec.P.center, rec.P.box, [t for t in rec.P.terms if t.kind == "zono"
                                                           and t.id != z.id]), n, rng)
    other = coefficients(AffineSet(rec.P.center, rec.P.box, [orig]), n, rng)[orig.id]
    p = rec.P.center + rng.uniform(-1, 1, (n, rec.P.d)) * rec.P.box
    for t in rec.P.terms:
        if t.id == sc.id:
            p = p + (s * other) @ t.M
        elif t.id in coefs:
            p = p + coefs[t.id] @ t.M
        else:
            p = p + own[t.id] @ t.M
    assert ((p >= rec.lo - 1e-9) & (p <= rec.hi + 1e-9)).all()  # the samples are in the set
    y = x + np.maximum(p, 0.0) @ rec.W_out + rec.b_out
    for _ in range(4):
        F = rng.standard_normal(rec.mid.d)
        sl = rng.uniform(0, 1, rec.P.d)
        vals = y @ (F - F.mean())
        for shift in (None, rng.random(rec.P.d) < 0.5, np.ones(rec.P.d, dtype=bool)):
            bound = slopes.lower_bound(rec, F, np.zeros_like(F), sl, np.abs(y).max(axis=0) + 1.0, shift)
            assert vals.min() >= bound - 1e-9, (vals.min(), bound)
        best = slopes.lower_bound(rec, F, np.zeros_like(F), slopes.choose_slopes(rec, F),
                                  np.abs(y).max(axis=0) + 1.0)
        assert vals.min() >= best - 1e-9


def _rows_only_rec(p0, Es, totals, w_neg, d=3):
    """A LastMLP whose P is p0 + the row terms with rows E (each term: 1-row blocks of one position, cap
    = total), mid holds the same terms with zero maps, and W_out makes every neuron's w_n = w_neg[n]
    for the functional F = e_0 - mean (so all crossing neurons are in N-)."""
    from assay.prove.affine import AffineSet, make_pooled

    m = len(p0)
    mid = AffineSet.point(np.zeros(d), np.zeros(d))
    P = AffineSet.point(np.asarray(p0, float), np.zeros(m))
    for E, tot in zip(Es, totals, strict=True):
        E = np.asarray(E, float)
        N = E.shape[0]
        t = make_pooled(np.eye(N), np.full(N, tot), np.array([0]), np.array([1.0]), tot, np.zeros((N, d)))
        mid.terms.append(t)
        P.terms.append(t.with_M(E))
    lo, hi = P.coord_bounds()
    F = np.zeros(d)
    F[0] = 1.0
    g = F - F.mean()
    W_out = np.outer(np.asarray(w_neg, float), g / (g @ g))
    return slopes.LastMLP(mid, P, lo, hi, W_out, np.zeros(d)), F


def test_convexity_bound_uses_the_combined_weight_of_every_row_term():
    # One neuron, p0 = -1, two heads each adding up to 0.8: each alone keeps p < 0, together p = 0.6.
    # G = relu(p) reaches 0.6, so the bound on -G must be <= -0.6; with K = H * total it is exactly -0.6.
    rec, F = _rows_only_rec([-1.0], [[[0.8]], [[0.8]]], [1.0, 1.0], [-1.0])
    b = slopes.lower_bound(rec, F, np.zeros(3), np.zeros(1), np.full(3, 10.0))
    assert b <= -0.6 + 1e-12
    assert b == pytest.approx(-0.6, abs=1e-9)


def test_convexity_bound_is_exact_at_the_vertices_of_one_row_term():
    # One row term whose cap is its total: the set's extreme points are p0 + total E_b, where the
    # chord bound of G along each row is attained. The bound must equal the enumerated minimum.
    rng = np.random.default_rng(0)
    m, N = 8, 6
    E = rng.standard_normal((N, m))
    p0 = rng.standard_normal(m) * 0.3
    w_neg = -rng.uniform(0.5, 2.0, m)
    rec, F = _rows_only_rec(p0, [E], [0.7], w_neg)
    b = slopes.lower_bound(rec, F, np.zeros(3), np.zeros(m), np.full(3, 10.0))
    # the exact minimum of -sum |w_n| relu(p_n) over the set: at a vertex (it is concave)
    truth = -max(-w_neg @ np.maximum(p0 + x, 0.0) for x in [0.7 * e for e in E] + [np.zeros(m)])
    assert b <= truth + 1e-9
    assert b == pytest.approx(truth, abs=1e-6)


def test_tangent_bound_holds_for_every_weight_of_sigma():
    # Method /7: on the tangent path, (F . y) / sigma + beta >= N_gamma / sigma_(hi or lo) + beta - gamma
    # for *any* gamma >= 0. Each competitor's bound at gammas far on both sides of the chosen one (and
    # the chosen one) against its true least logit difference over every string of the case.
    model = toy_model(0, qk=0.3, unembed=1.0, positional="rotary")
    W = extract(model)
    V = model.cfg.d_vocab
    rng = np.random.default_rng(7)
    n_checked = n_gamma_best = 0
    for _ in range(5):
        prefix = rng.integers(0, V, size=int(rng.integers(3, 12))).tolist()
        suffix = rng.integers(0, V, size=1).tolist()
        c = reference_token(model, prefix, suffix)
        eng = Engine(W, prefix, suffix, np.arange(V), Options())
        for L in (1, 2):
            X, _ = eng.final_set(L, None)
            Y = X.center_coords()
            sc = eng_slope_case(eng, X, Y)
            _, _, bd, bderr, Aw, Awerr, bb, bberr = eng._unembed_differences(c)
            truth = _true_margins(model, prefix, suffix, L, None, range(V), c)
            for k in (k for k in range(V) if k != c):
                F, Ferr, beta, berr = Aw[:, k], Awerr[:, k], bb[k] + bd[k], bberr[k] + bderr[k]
                val, ev = eng._best_alpha(sc, F, Ferr, beta, berr)
                assert val <= truth[k] + 1e-9
                s, shift = sc.evidence_slopes(ev)
                chosen = ev.get("gamma", 0.0)
                n_gamma_best += "gamma" in ev
                for gam in (0.0, 0.5 * chosen, chosen, 2.0 * chosen + 0.1, 10.0, 1e3):
                    b = eng._alpha_bound(sc, "tan", F, Ferr, beta, berr, s, shift, gam)
                    assert b <= truth[k] + 1e-9, (prefix, suffix, L, k, gam, b, truth[k])
                    n_checked += 1
                assert eng._alpha_bound(sc, "tan", F, Ferr, beta, berr, s, shift, -0.1) == -np.inf
    assert n_checked >= 100 and n_gamma_best >= 1


def eng_slope_case(eng, X, Y):
    from assay.prove.engine import SlopeCase

    return SlopeCase.of(X, Y, rules.sigma_range(Y, eng.W.eps), eng.W.eps)


def test_weight_of_sigma_raises_margins_and_is_checked_evidence(monkeypatch):
    # Method /7 against /6 (GAMMA off) on the same claims: never lower, higher on some; the certificate
    # checks, the claims hold by enumeration, and a changed, negative, misplaced or relabelled gamma is
    # rejected.
    from assay.prove import engine
    from assay.prove.bruteforce import enumerate_claim

    model = toy_model(0, qk=0.3, unembed=1.0, positional="rotary")
    rng = np.random.default_rng(3)
    V = model.cfg.d_vocab
    found = None
    n_higher = 0
    for n_free in itertools.islice(itertools.cycle((1, 2)), 60):
        if found is not None and n_higher:
            break
        prefix = rng.integers(0, V, size=int(rng.integers(4, 14))).tolist()
        suffix = rng.integers(0, V, size=1).tolist()
        opts = Options(alpha_below=1e9)
        r = prove(model, prefix, n_free, suffix=suffix, options=opts)
        monkeypatch.setattr(engine, "GAMMA", False)
        r6 = prove(model, prefix, n_free, suffix=suffix, options=opts)
        monkeypatch.undo()
        assert r.best_margin >= r6.best_margin - 1e-12
        higher = r.best_margin > r6.best_margin + 1e-9
        n_higher += higher
        if found is None and r.proven and any("gamma" in ev and ev["k"] == case["worst"]
                                              for case in r.certificate["cases"] for ev in case["alpha"]):
            found = r
    assert n_higher >= 1 and found is not None
    cert = found.certificate
    assert cert["method"]["name"] == "affine-lambda/8" and check(cert, model)
    e = enumerate_claim(model, cert["prefix"], cert["n_free"], cert["suffix"])
    assert e.argmax_tokens == {found.token} and found.margin <= e.min_margin[found.token]
    # the record of a case's worst competitor, on the tangent path with its gamma
    i, j = next((i, j) for i, case in enumerate(cert["cases"]) for j, ev in enumerate(case["alpha"])
                if "gamma" in ev and ev["k"] == case["worst"])

    def set_gamma(v):
        def change(c):
            c["cases"][i]["alpha"][j]["gamma"] = v
        return change

    def to_quot(c):
        c["cases"][i]["alpha"][j]["path"] = "quot"

    g = cert["cases"][i]["alpha"][j]["gamma"]
    for change, msg in ((set_gamma(-1.0), "gamma must be"), (set_gamma(float("nan")), "gamma must be|JSON|finite"),
                        (set_gamma("1"), "gamma must be"), (to_quot, "tangent path only"),
                        (set_gamma(g + 5.0), "margin|recomputed|not positive")):
        with pytest.raises((CertificateError, ValueError), match=msg):
            check(_forge(cert, change), model)
    with pytest.raises(CertificateError, match="not part of this method"):
        check(_forge(cert, lambda c: c["method"].update(name="affine-lambda/6")), model)


def test_alpha_stop_never_changes_a_proof_and_its_margins_stay_lower_bounds():
    # Options.alpha_stop ends a case's slope search once a searched competitor stays below it: the case
    # is lost then, so proofs and proven margins are the same as with the full search (alpha_stop below
    # alpha_floor never triggers), and an unproven claim's reported margin may be lower than the full
    # search's but is still at most the true worst margin (enumeration). Here it triggers at least once.
    from assay.prove.bruteforce import enumerate_claim

    model = toy_model(0, qk=0.3, unembed=3.0, positional="rotary")
    rng = np.random.default_rng(3)
    V = model.cfg.d_vocab
    triggered = 0
    for _ in range(40):
        prefix = rng.integers(0, V, size=int(rng.integers(4, 14))).tolist()
        suffix = rng.integers(0, V, size=1).tolist()
        n_free = int(rng.integers(1, 4))
        stop = prove(model, prefix, n_free, suffix=suffix)
        full = prove(model, prefix, n_free, suffix=suffix, options=Options(alpha_stop=-1e9))
        assert stop.certificate["method"]["options"]["alpha_stop"] == -1.0
        assert stop.proven == full.proven and stop.token == full.token
        if full.proven:
            assert stop.margin == full.margin
            continue
        assert stop.best_margin <= full.best_margin
        if stop.best_margin < full.best_margin - 1e-9:
            triggered += 1
            e = enumerate_claim(model, prefix, n_free, suffix)
            assert stop.best_margin <= e.min_margin[stop.token] + 1e-9
    assert triggered >= 1
