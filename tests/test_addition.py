"""assay.addition: rules, categories, evaluation, ablations, probes, failures, training log.

Every check is against an independent truth: Python integer addition, a column-by-column simulation
of school addition, an exact dynamic programme for the cascade rate, scipy's Wilson interval, a model
whose weights are edited by hand, or synthetic data whose answer is known.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from assay.addition import ablation, attention, evaluate, failures, probes, report, rules
from assay.addition.training import DIGIT_LOG, read_digit_log, train_addition
from assay.errors import BadInput
from assay.model import ModelConfig, Transformer, load, models_dir
from assay.recipes import AdditionData, Recipe, TrainParams, register, unregister
from assay.tasks import addition


def school(a: int, b: int, n: int) -> tuple[list[int], list[bool], int]:
    """Column-by-column school addition: (answer digits units first, carry into each column, longest
    run of consecutive sum-9 columns one carry passes through)."""
    carry, digits, into, run, best = 0, [], [], 0, 0
    for k in range(n):
        x, y = (a // 10**k) % 10, (b // 10**k) % 10
        into.append(bool(carry))
        passes = carry == 1 and x + y == 9
        run = run + 1 if passes else 0
        best = max(best, run)
        digits.append((x + y + carry) % 10)
        carry = (x + y + carry) // 10
    into.append(bool(carry))
    digits.append(carry)
    return digits, into, best


def brute_category(a: int, b: int, n: int) -> str:
    _, into, best = school(a, b, n)
    if best >= 2:
        return "cascade"
    if best == 1:
        return "US9"
    return "UC1" if any(into) else "BA"


def all_pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    g = np.arange(10**n, dtype=np.int64)
    a, b = np.meshgrid(g, g, indexing="ij")
    return a.ravel(), b.ravel()


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a shared, loaded machine two threads make small forward passes ~40x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_addition_model(n_digits: int = 5, seed: int = 0, n_layers: int = 1) -> Transformer:
    cfg = ModelConfig(n_layers=n_layers, d_model=24, n_heads=3, d_head=8, d_mlp=48, d_vocab=12,
                      n_ctx=3 * n_digits + 3, act_fn="relu", normalization_type="LN",
                      positional_embedding_type="standard")
    torch.manual_seed(seed)
    model = Transformer(cfg)
    model.init_weights(seed=seed)
    with torch.no_grad():  # make every bias and gain non-trivial
        gen = torch.Generator().manual_seed(seed + 1)
        for name, p in model.named_parameters():
            if not name.rsplit(".", 1)[-1].startswith("W_"):
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return model.eval()


# ---------------------------------------------------------------------------------------------------
# Questions, answers, sub-results.


def test_answers_match_python_integer_addition():
    rng = np.random.default_rng(1)
    a, b = addition.random_operands(rng, 5000)
    a = np.concatenate([a, [0, 99999, 99999, 55555, 44445]])
    b = np.concatenate([b, [0, 99999, 1, 44445, 55555]])
    d = rules.exact_answer_digits(a, b)
    assert (rules.digits_to_int(d) == a + b).all()
    tokens = addition.example_token_array(a, b)
    for x, y, row in zip(a[:300], b[:300], tokens[:300], strict=True):
        assert addition.decode(row) == f"{x:05d}+{y:05d}={int(x) + int(y):06d}"
    assert (failures.token_order_to_int(tokens[:, -6:]) == a + b).all()
    for depth in (5, 6, 9):  # looking back over every column is exact addition
        assert (rules.digits_to_int(rules.lookback_answer_digits(a, b, depth)) == a + b).all()


def test_question_generator_is_uniform_over_the_operand_range():
    a, b = addition.random_operands(np.random.default_rng(17), 200_000)
    assert a.min() >= 0 and b.min() >= 0 and a.max() < 10**5 and b.max() < 10**5
    for x in (a, b):  # every digit of every column uniform on 0..9 (sd of a frequency: ~0.00067)
        digits = np.stack([(x // 10**k) % 10 for k in range(5)], axis=1)
        freq = np.stack([(digits == d).mean(axis=0) for d in range(10)])
        assert np.abs(freq - 0.1).max() < 0.004
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.01  # the two operands are drawn independently


def test_sub_results_and_carries_against_school_addition():
    a, b = all_pairs(2)
    sr = rules.sub_results(a, b, 2)
    c = rules.carries(a, b, 2)
    for i in range(0, len(a), 37):
        x, y = int(a[i]), int(b[i])
        digits, into, _ = school(x, y, 2)
        assert list(c[i]) == into
        for k in range(2):
            s = (x // 10**k) % 10 + (y // 10**k) % 10
            assert sr["BA"][i, k] == s % 10 and sr["MC1"][i, k] == (s >= 10) and sr["MS9"][i, k] == (s == 9)
        assert rules.digits_to_int(rules.answer_digits_from(sr["BA"][i : i + 1], c[i : i + 1]))[0] == x + y


def test_categories_against_brute_force_on_all_two_digit_pairs():
    a, b = all_pairs(2)
    got = rules.category_names(a, b, 2)
    want = [brute_category(int(x), int(y), 2) for x, y in zip(a, b, strict=True)]
    assert list(got) == want
    assert list(got) == addition.categories_of(a, b, 2)  # the scalar definitions in assay.tasks agree
    assert set(want) == {"BA", "UC1", "US9"}  # cascades need three columns


def test_categories_against_brute_force_on_three_and_five_digits():
    a, b = all_pairs(3)
    pick = np.random.default_rng(2).choice(len(a), 20_000, replace=False)
    got = rules.category_names(a, b, 3)
    for i in pick:
        assert got[i] == brute_category(int(a[i]), int(b[i]), 3)
    assert (got == "cascade").any()
    a5, b5 = addition.random_operands(np.random.default_rng(3), 5000)
    a5 = np.concatenate([a5, [555, 44445, 6665]])
    b5 = np.concatenate([b5, [445, 55555, 3335]])
    got5 = rules.category_names(a5, b5)
    assert list(got5) == [brute_category(int(x), int(y), 5) for x, y in zip(a5, b5, strict=True)]
    assert list(got5[-3:]) == ["cascade"] * 3


def exact_cascade_rate(n: int) -> float:
    """Probability that uniform n-digit operands hold a cascade, by dynamic programming over columns."""
    # state: (carry into the column, current run of sum-9 columns a carry passed, capped at 2), alive = no cascade yet
    probs = {(0, 0): 1.0}
    for _ in range(n):
        nxt: dict[tuple[int, int], float] = {}
        for (carry, run), p in probs.items():
            for s in range(19):
                w = (10 - abs(s - 9)) / 100  # number of digit pairs summing to s, over 100
                passes = carry == 1 and s == 9
                r = min(2, run + 1) if passes else 0
                if r >= 2:
                    continue  # cascade: absorbed
                key = ((s + carry) // 10, r)
                nxt[key] = nxt.get(key, 0.0) + p * w
        probs = nxt
    return 1.0 - sum(probs.values())


def test_cascade_rate_matches_the_paper_and_an_exact_count():
    rate = exact_cascade_rate(5)
    assert abs(rate - 0.0135) < 0.0005  # PAPERS.md: about 1.35% of uniform 5-digit questions
    a, b = all_pairs(3)
    assert np.isclose((rules.category_names(a, b, 3) == "cascade").mean(), exact_cascade_rate(3), atol=1e-12)


def test_two_column_rule_agrees_with_addition_exactly_off_cascades():
    a, b = all_pairs(3)
    rule = rules.two_column_rule(a, b, 3)
    cascade = rules.category_names(a, b, 3) == "cascade"
    assert (rule[~cascade] == (a + b)[~cascade]).all()  # must agree
    assert (rule[cascade] != (a + b)[cascade]).all()  # must disagree
    assert rules.two_column_rule(np.array([555]), np.array([445]), 3)[0] == 0  # 555+445=1000: the carry is lost
    a5 = np.array([44445, 6665, 33357, 99999])
    b5 = np.array([55555, 3335, 82243, 1])
    assert list(rules.two_column_rule(a5, b5)) == [99000, 9000, 115600, 99000]  # the carry stops after two
    # independently of the code's categories: where the rule is wrong, school addition sees a carry pass two
    # consecutive sum-9 columns; on a sample of the rest it does not
    wrong = np.nonzero(rule != a + b)[0]
    assert len(wrong) > 0 and all(school(int(a[i]), int(b[i]), 3)[2] >= 2 for i in wrong)
    right = np.random.default_rng(41).choice(np.nonzero(rule == a + b)[0], 5000, replace=False)
    assert all(school(int(a[i]), int(b[i]), 3)[2] < 2 for i in right)
    idx = np.random.default_rng(4).choice(len(a), 3000, replace=False)
    for i in idx:  # the column-by-column statement of the rule gives the same answers
        assert rules.two_column_rule_scalar(int(a[i]), int(b[i]), 3) == rule[i]
    a5, b5 = addition.random_operands(np.random.default_rng(5), 2000)
    r5 = rules.two_column_rule(a5, b5)
    assert all(rules.two_column_rule_scalar(int(x), int(y)) == int(z) for x, y, z in zip(a5, b5, r5, strict=True))


def test_one_column_rule_is_wrong_exactly_when_a_carry_passes_a_sum_9_column():
    a, b = all_pairs(3)
    wrong = rules.digits_to_int(rules.lookback_answer_digits(a, b, 1, 3)) != a + b
    uses_us9 = np.isin(rules.category_names(a, b, 3), ["US9", "cascade"])
    assert np.array_equal(wrong, uses_us9)


# ---------------------------------------------------------------------------------------------------
# Evaluation, intervals, files, vocabulary.


def test_wilson_interval_matches_scipy():
    from scipy.stats import binomtest

    for k, n in [(0, 10), (5, 10), (10, 10), (37, 1000), (99_990, 100_000)]:
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        lo, hi = evaluate.wilson_interval(k, n)
        assert lo == pytest.approx(ci.low, abs=1e-9) and hi == pytest.approx(ci.high, abs=1e-9)
    assert evaluate.wilson_interval(0, 0) == (0.0, 1.0)


def test_evaluate_counts_against_the_models_own_argmax():
    model = tiny_addition_model()
    a, b = addition.random_operands(np.random.default_rng(6), 300)
    r = evaluate.evaluate(model, a, b)
    with torch.no_grad():
        logits = model(torch.from_numpy(addition.example_token_array(a, b)))
    pred = logits[:, 11:17].argmax(-1).numpy()
    truth = addition.example_token_array(a, b)[:, 12:]
    ok = (pred == truth).all(axis=1)
    assert r["n"] == 300 and r["correct"] == int(ok.sum())
    ce = torch.nn.functional.cross_entropy(logits[:, 11:17].transpose(1, 2), torch.from_numpy(truth))
    assert r["loss"] == pytest.approx(float(ce), rel=1e-5)
    cats = rules.category_names(a, b)
    for c, v in r["by_category"].items():
        assert v["n"] == int((cats == c).sum())
        assert v["correct"] == int(ok[cats == c].sum())


def test_read_questions_accepts_good_files_and_names_the_bad_line(tmp_path):
    good = tmp_path / "q.txt"
    good.write_text("# questions\n12345+67890\n\n00001+99999=\n")
    a, b = evaluate.read_questions(good, 5)
    assert list(a) == [12345, 1] and list(b) == [67890, 99999]
    for body, needle in [("12345+67890\n1234+67890\n", "line 2"), ("12345+67890\n12a45+67890\n", "line 2"),
                         ("1234567890\n", "line 1: missing '+'"), ("11111+22222\n\n123456+12345\n", "line 3"),
                         ("12345+67890+1\n", "line 1"), ("12345-67890\n", "missing '+'")]:
        f = tmp_path / "bad.txt"
        f.write_text(body)
        with pytest.raises(BadInput, match=re.escape(needle)):
            evaluate.read_questions(f, 5)
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    with pytest.raises(BadInput, match="no questions"):
        evaluate.read_questions(tmp_path / "empty.txt", 5)


def test_a_model_without_the_addition_vocabulary_is_refused():
    cfg = ModelConfig(n_layers=1, d_model=8, n_heads=2, d_head=4, d_mlp=16, d_vocab=13, n_ctx=18)
    with pytest.raises(BadInput, match="vocabulary"):
        evaluate.n_digits_of(Transformer(cfg))
    with pytest.raises(BadInput, match="n_ctx"):
        evaluate.n_digits_of(Transformer(dataclasses.replace(cfg, d_vocab=12, n_ctx=17)))
    assert evaluate.n_digits_of(tiny_addition_model()) == 5
    assert evaluate.n_digits_of(tiny_addition_model(n_digits=3)) == 3


# ---------------------------------------------------------------------------------------------------
# Ablations.


def _hook_count(model: Transformer) -> int:
    return sum(len(hp._forward_hooks) for hp in model.hook_points())


def test_ablations_leave_the_model_unchanged():
    model = tiny_addition_model(n_layers=2)
    before = copy.deepcopy(model.state_dict())
    a, b = addition.random_operands(np.random.default_rng(7), 40)
    ref = addition.random_operands(np.random.default_rng(8), 40)
    tokens = torch.from_numpy(addition.example_token_array(a, b))
    with torch.no_grad():
        out0 = model(tokens)
    for kind in ("input", "computation"):
        for mode in ablation.MODES:
            ablation.position_ablation(model, a, b, 5, ref, kind, mode)
    ablation.head_ablation(model, {"x": (a, b)}, 5, ref)
    ablation.head_position_ablation(model, a, b, 5, ref)
    assert _hook_count(model) == 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    with torch.no_grad():
        assert torch.equal(model(tokens), out0)


def test_zero_ablating_a_head_equals_deleting_its_output_weights():
    model = tiny_addition_model()
    a, b = addition.random_operands(np.random.default_rng(9), 50)
    edited = copy.deepcopy(model)
    with torch.no_grad():
        edited.blocks[0].attn.W_O[1].zero_()
    ce_hook, _ = evaluate.answer_stats(model, a, b, 5, ablation.head_hooks(0, 1, None))
    ce_edit, _ = evaluate.answer_stats(edited, a, b, 5)
    np.testing.assert_allclose(ce_hook, ce_edit, rtol=1e-5, atol=1e-6)


def test_mean_ablation_over_the_question_itself_changes_nothing():
    model = tiny_addition_model()
    a, b = np.array([12345]), np.array([67890])
    ce0, _ = evaluate.answer_stats(model, a, b, 5)
    for kind in ("input", "computation"):
        r = ablation.position_ablation(model, a, b, 5, (a, b), kind, "mean")
        np.testing.assert_allclose(r["loss"], np.broadcast_to(ce0, r["loss"].shape), rtol=1e-5, atol=1e-6)


def test_one_layer_answers_are_computed_only_at_answer_positions():
    model = tiny_addition_model()
    a, b = addition.random_operands(np.random.default_rng(10), 30)
    ref = addition.random_operands(np.random.default_rng(11), 30)
    r = ablation.position_ablation(model, a, b, 5, ref, "computation", "zero")
    q = addition.question_length(5)
    np.testing.assert_allclose(r["loss"][: q - 1], np.broadcast_to(r["baseline_loss"], (q - 1, 6)), rtol=1e-6)
    # ablating what is computed at the position that predicts A_{5-i} changes A_{5-i} and nothing else
    for i in range(6):
        row = r["loss"][q - 1 + i]
        others = np.delete(np.arange(6), i)
        np.testing.assert_allclose(row[others], r["baseline_loss"][others], rtol=1e-6)
        assert not np.isclose(row[i], r["baseline_loss"][i])


# ---------------------------------------------------------------------------------------------------
# Attention, probes, failures.


def test_position_labels_match_the_token_layout():
    a, b = np.array([13579]), np.array([24680])
    tokens = addition.example_token_array(a, b)[0]
    for p in range(18):
        label = attention.position_label(p, 5)
        c = attention.operand_column(p, 5)
        if label.startswith("D'"):
            assert tokens[p] == (24680 // 10**c) % 10 and int(label[2:]) == c
        elif label.startswith("D"):
            assert tokens[p] == (13579 // 10**c) % 10 and int(label[1:]) == c
        elif label.startswith("A"):
            assert tokens[p] == (38259 // 10 ** int(label[1:])) % 10 and c is None
        else:
            assert label == addition.TOKEN_TEXT[tokens[p]] and c is None


def test_head_reads_finds_the_column_of_a_planted_pattern():
    pats = np.zeros((1, 2, 6, 17))
    for i in range(6):
        col = 5 - i  # head 0 reads the answer's own column (none for A5), head 1 the column below
        if col <= 4:
            pats[0, 0, i, 4 - col] = 0.5
            pats[0, 0, i, 10 - col] = 0.5
        else:
            pats[0, 0, i, 11] = 1.0
        below = max(col - 1, 0)
        pats[0, 1, i, 4 - below] = 0.45
        pats[0, 1, i, 10 - below] = 0.45
        pats[0, 1, i, 5] = 0.1
    rows = attention.head_reads(pats, 5)
    for r in rows:
        col = int(r["digit"][1:])
        if r["head"] == 1 and col >= 1:
            assert r["pair"] == col - 1 and r["pair_weight"] == pytest.approx(0.9)
        elif r["head"] == 0 and col <= 4:
            assert r["pair"] == col and r["pair_weight"] == pytest.approx(1.0)
    roles = report.head_roles(rows, 5, {})
    assert [x["offset"] for x in roles] == [0, 1]


def test_probes_find_a_planted_sub_result_and_nothing_else():
    rng = np.random.default_rng(12)
    a, b = addition.random_operands(rng, 1500)
    labels = probes.probe_labels(a, b, 5)
    x = np.concatenate([np.eye(10)[labels[("BA", 1)]], np.eye(2)[labels[("MS9", 3)]]], axis=1)
    x = x + 0.05 * rng.standard_normal((len(a), 12)) + 0.3 * rng.standard_normal((len(a), 1))
    tr, te = slice(0, 1000), slice(1000, None)
    acc = probes.fit_probes(x[tr], {k: v[tr] for k, v in labels.items()}, x[te], {k: v[te] for k, v in labels.items()})
    assert acc[("BA", 1)] > 0.97 and acc[("MS9", 3)] > 0.97
    base = probes.majority_baseline(labels[("BA", 2)][tr], labels[("BA", 2)][te])
    assert acc[("BA", 2)] < base + 0.08  # an unrelated column is not decodable


def test_failure_analysis_of_an_answerer_that_follows_the_two_column_rule():
    a, b = addition.random_operands(np.random.default_rng(13), 20_000)
    rule_digits = rules.lookback_answer_digits(a, b, 2)[:, ::-1]  # token order
    ce = np.zeros(rule_digits.shape)
    fa = failures.failure_analysis(None, a, b, 5, ce=ce, pred=rule_digits)
    cascade = rules.category_names(a, b) == "cascade"
    assert fa["n_wrong"] == int(cascade.sum()) > 0
    assert fa["cascade_share"] == 1.0
    assert fa["rule"]["all"]["rate"] == 1.0 and fa["rule"]["model_wrong"]["rate"] == 1.0
    assert fa["rule"]["rule_wrong_equals_cascade"]
    assert fa["wrong_by_category"]["cascade"] == fa["n_wrong"]
    rows = {r["algorithm"]: r for r in failures.compare_algorithms(rule_digits, a, b, 5)}
    assert rows["declared (two-column look-back)"]["question_agreement"] == 1.0
    assert rows["exact addition"]["question_agreement"] == pytest.approx(1 - cascade.mean())
    exact = rules.exact_answer_digits(a, b)[:, ::-1]
    fa2 = failures.failure_analysis(None, a, b, 5, ce=ce, pred=exact)
    assert fa2["n_wrong"] == 0 and fa2["cascade_share"] is None
    assert fa2["rule"]["all"]["rate"] == pytest.approx(1 - cascade.mean())


def test_phase_steps_finds_the_drop():
    recs = [{"step": s, "loss_A0": 2.3 if s < 500 else 0.01} for s in range(0, 1000, 10)]
    ph = report.phase_steps(recs, "loss_A0", smooth=1)
    assert ph["half_step"] == 500 and ph["below_0.1"] == 500 and 470 <= ph["steepest_step"] <= 510


# ---------------------------------------------------------------------------------------------------
# Training with the per-digit log.


@pytest.fixture
def tiny_recipe():
    name = "test-addition-tiny"
    register(Recipe(
        name=name, summary="tiny addition for tests",
        model=dict(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=addition.example_length(3),
                   act_fn="relu", normalization_type="LN", positional_embedding_type="standard"),
        train=TrainParams(steps=12, batch_size=16, lr=1e-3, warmup_steps=2, schedule="constant", grad_clip=None,
                          eval_every=6, checkpoint_every=4),
        data=AdditionData(n_digits=3, n_val=64, n_val_per_category=16),
    ), replace=True)
    yield name
    unregister(name)


def test_training_with_the_digit_log_gives_the_same_weights(tiny_recipe, tmp_path):
    from assay.train import run_recipe

    plain = run_recipe(tiny_recipe, out=tmp_path / "plain", progress=False)
    logged = train_addition(tiny_recipe, out=tmp_path / "logged", every=3, progress=False)
    w0, w1 = load(plain).state_dict(), load(logged).state_dict()
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    recs = read_digit_log(logged / DIGIT_LOG)
    assert [r["step"] for r in recs] == [3, 6, 9, 12]
    assert all(set(r) >= {"loss", "loss_A3", "loss_A0"} for r in recs)
    r = recs[0]
    assert r["loss"] == pytest.approx(np.mean([r[f"loss_A{k}"] for k in range(4)]))
    assert sum(r.get(f"n_{c}", 0) for c in addition.CATEGORIES) == 3 * 16
    assert json.loads((logged / "card.json").read_text())["time_to_loss"]["target_loss"] == 0.01


def test_time_to_loss_reads_validation_and_training_batches():
    from assay.addition.training import time_to_loss

    history = [{"step": 0, "val_loss": 2.0, "wall_seconds": 0.0}, {"step": 100, "val_loss": 0.05, "wall_seconds": 50.0},
               {"step": 200, "val_loss": 0.008, "wall_seconds": 110.0}]
    log = [{"step": s, "loss": 1.0 / s} for s in range(10, 210, 10)]
    t = time_to_loss(history, log, 0.01, 0.5)
    assert t["validation"] == {"step": 200, "wall_seconds": 100.0}
    assert t["training_batches"] == {"step": 100, "wall_seconds": 50.0}
    assert t["reached"] and t["note"] is None
    none = time_to_loss(history, log, 1e-9, 0.5)
    assert none["validation"] is None and none["training_batches"] is None
    assert none["reached"] is False and "not reached in 200 steps" in none["note"]
    assert none["lowest_validation"] == {"step": 200, "val_loss": 0.008}
    assert none["lowest_training_batches"] == {"step": 200, "loss": 1.0 / 200}
    assert t["digit_log_gaps"] == []
    # a log with steps 60..150 missing (two runs pieced together): the first hit it shows (160) is not
    # the first hit of training, so it is not reported; a hit before the gap still is
    gappy = [r for r in log if not 60 <= r["step"] <= 150]
    g = time_to_loss(history, gappy, 0.01, 0.5)
    assert g["training_batches"] is None and g["digit_log_gaps"] == [{"after_step": 50, "next_step": 160}]
    assert time_to_loss(history, gappy, 0.05, 0.5)["training_batches"] == {"step": 20, "wall_seconds": 10.0}


def test_resumed_training_keeps_one_record_per_step(tiny_recipe, tmp_path):
    out = tmp_path / "m"
    train_addition(tiny_recipe, steps=8, out=out, every=2, progress=False)
    train_addition(tiny_recipe, steps=12, out=out, every=2, resume=True, progress=False)
    recs = read_digit_log(out / DIGIT_LOG)
    assert [r["step"] for r in recs] == [2, 4, 6, 8, 10, 12]


def test_train_addition_refuses_a_recipe_that_is_not_addition():
    with pytest.raises(BadInput, match="not an addition recipe"):
        train_addition("majority-1l", steps=1, out="/nonexistent/never-written")


# ---------------------------------------------------------------------------------------------------
# The shipped model (skipped until it exists).


SHIPPED = models_dir() / "addition-1l"


@pytest.mark.skipif(not (SHIPPED / "config.json").is_file(), reason="models/addition-1l not trained yet")
def test_shipped_model_adds_and_fails_on_cascades():
    model = load("addition-1l")
    assert evaluate.n_digits_of(model) == 5
    card = json.loads((SHIPPED / "card.json").read_text())
    assert card["recipe"] == "addition-1l"
    rng = np.random.default_rng(14)
    # exact match against Python's integer addition on fresh uniform questions (the card: 99.19%)
    a, b = rng.integers(0, 10**5, 3000), rng.integers(0, 10**5, 3000)
    _, pred = evaluate.answer_stats(model, a, b, 5)  # teacher-forced argmax digits, A5 first
    got = (pred * 10 ** np.arange(5, -1, -1)).sum(axis=1)
    truth = np.array([int(x) + int(y) for x, y in zip(a.tolist(), b.tolist(), strict=True)])
    assert (got == truth).mean() > 0.98
    # and what it gets wrong is the cascades (the card: 77%; every other category above 98%)
    sets = report.category_sets(rng, 150, 5)
    acc = {c: evaluate.evaluate(model, *q)["accuracy"] for c, q in sets.items()}
    assert min(acc["BA"], acc["UC1"], acc["US9"]) > 0.95
    assert acc["cascade"] < 0.95 and acc["cascade"] < min(acc["BA"], acc["UC1"], acc["US9"])


def test_ablation_roles_of_planted_head_ablation_rows():
    base = {"BA": 0.02, "UC1": 0.03, "US9": 0.1, "cascade": 0.2}
    planted = {0: {"BA": 2.0, "UC1": 1.5, "US9": 1.0, "cascade": 0.9},  # base add
               1: {"BA": 0.3, "UC1": 1.2, "US9": 0.8, "cascade": 0.7},  # carry
               2: {"BA": 0.3, "UC1": 0.3, "US9": 0.4, "cascade": 0.3},  # mixed, most on US9
               3: {"BA": 0.05, "UC1": 0.01, "US9": 0.02, "cascade": 0.09}}  # not needed
    rows = [{"layer": None, "head": None, "mode": "none", "category": c, "loss": v, "accuracy": 0.9}
            for c, v in base.items()]
    for h, d in planted.items():
        for mode, scale in (("mean", 1.0), ("zero", 0.0)):  # the zero rows must be ignored for mode="mean"
            rows += [{"layer": 0, "head": h, "mode": mode, "category": c, "loss": base[c] + scale * v,
                      "accuracy": 0.5} for c, v in d.items()]
    roles = report.ablation_roles(rows)
    assert [r["role"].split(":")[0] for r in roles] == ["base add", "carry", "mixed", "not needed"]
    assert roles[2]["role"].endswith("most on US9")
    for r in roles:
        assert r["loss_increase"] == pytest.approx(planted[r["head"]])


def test_analysis_report_renders_on_a_tiny_model(tmp_path):
    model_path = tmp_path / "tiny"
    from assay.model import save

    save(tiny_addition_model(), model_path)
    # a per-digit log assembled from two runs: steps 110..190 missing; phases must use steps <= 100 only
    keys = ["loss"] + [f"loss_A{i}" for i in range(6)] + [f"loss_{c}" for c in ("BA", "UC1", "US9", "cascade")]
    log = [{"step": st, **{k: 2.0 / st for k in keys}} for st in [*range(10, 101, 10), *range(200, 301, 10)]]
    (model_path / "train_digit_loss.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    sizes = dataclasses.replace(report.QUICK, n_random=600, n_ablation=24, n_category=24, n_reference=32,
                                n_attention=32, n_probe_train=120, n_probe_test=60)
    s = report.analyze(str(model_path), tmp_path / "rep", sizes=sizes, progress=False)
    ph = json.loads((tmp_path / "rep" / "summary.json").read_text())["phases"]
    assert "steps up to 100 only" in ph["source"] and "101-199" in ph["source"]
    assert 0.015 < ph["A0"]["end"] < 0.05  # the loss near step 100 (2/100), not near 300 (2/300)
    text = (tmp_path / "rep" / "report.md").read_text()
    for heading in ("Position ablation", "Attention", "Head ablation", "Probes", "Failures", "Declared algorithm"):
        assert heading in text
    assert json.loads((tmp_path / "rep" / "summary.json").read_text())["failures"]["n"] == 600
    assert all((tmp_path / "rep" / "figures" / f).is_file() for f in s["figures"].values())
    assert Path(s["out"]) == tmp_path / "rep"
    assert "Roles from head ablation" in text and "## Side by side" not in text
    # re-rendering from the stored measurements changes nothing; with another analysis it adds the table
    before = (tmp_path / "rep" / "summary.json").read_text()
    report.rerender(tmp_path / "rep")
    assert (tmp_path / "rep" / "report.md").read_text() == text
    report.rerender(tmp_path / "rep", [tmp_path / "rep"])
    text2 = (tmp_path / "rep" / "report.md").read_text()
    assert text2.startswith(text.rstrip("\n")) and "## Side by side" in text2
    fa = json.loads(before)["failures"]
    entry = json.loads((tmp_path / "rep" / "summary.json").read_text())["side_by_side"][1]
    assert entry["n_wrong"] == fa["n_wrong"] and entry["accuracy"] == fa["summary"]["accuracy"]
    assert f"{fa['n_wrong']:,} | {fa['n_wrong']:,} |" in text2
    with pytest.raises(BadInput, match="no summary.json"):
        report.rerender(tmp_path / "rep", [tmp_path])


def test_demo_section_on_a_stand_in_shipped_model(tmp_path, monkeypatch):
    from assay.addition import demo
    from assay.addition.card import record_eval, training_facts
    from assay.model import save
    from assay.report.demo import DemoContext

    root = tmp_path / "models"
    card = {"recipe": "addition-1l", "steps": 20, "metrics": {"val_loss": 0.5, "val_accuracy": 0.1},
            "history": [{"step": 10, "val_loss": 0.02, "wall_seconds": 5.0},
                        {"step": 20, "val_loss": 0.009, "wall_seconds": 9.5}],
            "throughput": {"examples_per_second": 100.0, "steps_per_second": 1.5, "num_threads": 1},
            "wall_seconds": 10.0, "sessions": 1}
    save(tiny_addition_model(), root / "addition-1l", card=card)
    (root / "addition-1l" / DIGIT_LOG).write_text("".join(
        json.dumps({"step": s, **{f"loss_A{k}": 2.0 / s for k in range(6)}, "loss_BA": 1.0 / s}) + "\n"
        for s in range(10, 210, 10)))
    record_eval(root / "addition-1l", {"n": 100, "accuracy": 0.5, "ci95": [0.4, 0.6], "loss": 0.7})
    facts = training_facts(json.loads((root / "addition-1l" / "card.json").read_text()))
    assert facts["time_to_target"] == {"step": 20, "wall_seconds": 10.0}  # 20 steps of 10 s / 20
    assert facts["eval_random"]["n"] == 100
    monkeypatch.setattr(demo, "N_UNIFORM", 300)
    monkeypatch.setattr(demo, "N_CATEGORY", 20)
    monkeypatch.setattr(demo, "N_ABLATION", 16)
    monkeypatch.setenv("ASSAY_MODELS", str(root))
    (tmp_path / "out" / "figures").mkdir(parents=True)
    html = demo.section(DemoContext(out=tmp_path / "out", fig_dir=tmp_path / "out" / "figures"))
    assert "addition-1l" in html and "cascade" in html and "step 20, 10.0 s" in html
    assert (tmp_path / "out" / "figures" / "addition-1l-attention.png").is_file()
    assert (tmp_path / "out" / "figures" / "addition-1l-curves.png").is_file()


def test_nonlinear_probe_reads_ba_from_a_mixed_digit_pair_that_a_linear_probe_cannot():
    rng = np.random.default_rng(15)
    a, b = addition.random_operands(rng, 3000)
    labels = probes.probe_labels(a, b, 5)
    emb = rng.standard_normal((10, 6))
    x = 0.5 * emb[rules.column_digits(a)[:, 2]] + 0.5 * emb[rules.column_digits(b)[:, 2]]  # a head reading pair 2
    tr, te = slice(0, 2000), slice(2000, None)
    ytr, yte = {k: v[tr] for k, v in labels.items()}, {k: v[te] for k, v in labels.items()}
    lin = probes.fit_probes(x[tr], ytr, x[te], yte)
    ftr, fte = probes.random_relu_features(x[tr], x[te])
    nonlin = probes.fit_probes(ftr, ytr, fte, yte, ridge=1e-3)
    assert lin[("BA", 2)] < 0.6 < 0.95 < nonlin[("BA", 2)]
    assert nonlin[("MC1", 2)] > 0.95 and nonlin[("MS9", 2)] > 0.95
    assert nonlin[("BA", 3)] < 0.2  # column 3 is not in x


def test_digit_error_kinds_of_answerers_with_known_mistakes():
    a, b = addition.random_operands(np.random.default_rng(16), 20_000)
    sr = rules.sub_results(a, b, 5)
    kinds = failures.ERROR_KINDS

    def answers(carry_in: np.ndarray) -> np.ndarray:
        return rules.answer_digits_from(sr["BA"], carry_in)[:, ::-1]  # token order

    two = failures.digit_error_kinds(a, b, answers(rules.lookback_carries(a, b, 2)), 5)
    assert two["total"] > 0 and two["by_kind"][kinds[4]] == two["total"]  # only long cascades are missed
    one = failures.digit_error_kinds(a, b, answers(rules.lookback_carries(a, b, 1)), 5)
    assert one["by_kind"][kinds[3]] > 0 and one["by_kind"][kinds[3]] + one["by_kind"][kinds[4]] == one["total"]
    nine_is_carry = np.zeros((len(a), 6), dtype=bool)
    nine_is_carry[:, 1:] = sr["MC1"] | sr["MS9"]  # mistakes every sum-9 column below for a carry
    nine = failures.digit_error_kinds(a, b, answers(nine_is_carry), 5)
    assert nine["total"] > 0 and nine["by_kind"][kinds[0]] == nine["total"]
    exact = failures.digit_error_kinds(a, b, rules.exact_answer_digits(a, b)[:, ::-1], 5)
    assert exact["total"] == 0


def test_loss_curves_break_at_a_log_gap_and_overlay_validation(tmp_path, monkeypatch):
    from assay.addition import figures

    keys = [f"loss_A{i}" for i in range(6)] + [f"loss_{c}" for c in ("BA", "UC1", "US9", "cascade")]
    log = [{"step": st, **{k: 1.0 / st for k in keys}} for st in [*range(10, 101, 10), *range(200, 301, 10)]]
    history = [{"step": st, **{f"val_{k}": 1.0 / (st + 1) for k in keys}} for st in range(0, 301, 50)]
    plotted = []
    import matplotlib.axes

    real = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", lambda self, x, y, *a, **k: plotted.append(
        (np.asarray(x, dtype=float), np.asarray(y, dtype=float), k.get("ls"))) or real(self, x, y, *a, **k))
    out = figures.loss_curves(log, history, 5, {}, tmp_path / "c.png", "t")
    assert out.is_file()
    solid = [p for p in plotted if p[2] is None]
    dashed = [p for p in plotted if p[2] == "--"]
    assert len(solid) == 10 and len(dashed) == 10  # 6 digits + 4 categories, training and validation
    x, y, _ = solid[0]
    gap = np.nonzero((x > 100) & (x < 200))[0]
    assert len(gap) == 1 and np.isnan(y[gap[0]])  # the training line is broken inside the gap
    assert np.array_equal(dashed[0][0], [r["step"] for r in history])
