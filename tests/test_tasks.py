"""Data for training: addition, formal languages, text. Every check is against an independent computation."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest

from assay.errors import BadInput
from assay.tasks import addition, formal, text

SENTENCES = Path(__file__).parent / "data" / "sentences.txt"


# ---------------------------------------------------------------------------------------------------
# Addition.


def test_example_tokens_match_python_addition():
    rng = random.Random(1)
    pairs = [(0, 0), (99999, 99999), (33357, 82243), (1, 99999)] + [
        (rng.randrange(10**5), rng.randrange(10**5)) for _ in range(500)
    ]
    for a, b in pairs:
        expected = f"{a:05d}+{b:05d}={a + b:06d}"
        assert addition.decode(addition.example_tokens(a, b)) == expected
        assert addition.answer(a, b) == a + b
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    arr = addition.example_token_array(a, b)
    assert arr.shape == (len(pairs), 18)
    for row, (x, y) in zip(arr, pairs, strict=True):
        assert addition.decode(row) == f"{x:05d}+{y:05d}={x + y:06d}"


def test_paper_example_and_vocabulary():
    toks = addition.example_tokens(33357, 82243)
    assert toks == [3, 3, 3, 5, 7, 10, 8, 2, 2, 4, 3, 11, 1, 1, 5, 6, 0, 0]
    assert addition.encode_question("33357+82243") == toks[:12]
    assert addition.encode_question(" 7+12= ") == [0, 0, 0, 0, 7, 10, 0, 0, 0, 1, 2, 11]
    assert addition.parse_question("12345+67890") == (12345, 67890)


@pytest.mark.parametrize("bad", ["123456+1", "12+", "1-2", "", "a+b", "1+2+3"])
def test_bad_questions_are_badinput(bad):
    with pytest.raises(BadInput):
        addition.parse_question(bad)


def test_answer_targets_cover_answer_tokens_only():
    tokens = addition.example_token_array(np.array([12345, 99999]), np.array([67890, 1]))
    targets = addition.answer_targets(tokens)
    # Position p predicts token p + 1; the answer tokens are positions 12..17.
    for p in range(18):
        if 11 <= p <= 16:
            assert (targets[:, p] == tokens[:, p + 1]).all()
        else:
            assert (targets[:, p] == -100).all()


def _brute_category(a: int, b: int, n: int) -> str:
    """Column-by-column school addition, tracking carries and runs of sum-9 columns a carry passes."""
    da = [int(ch) for ch in reversed(str(a).zfill(n))]
    db = [int(ch) for ch in reversed(str(b).zfill(n))]
    carry, any_carry, run, longest, out = 0, False, 0, 0, []
    for k in range(n):
        s = da[k] + db[k]
        if carry:
            any_carry = True
        run = run + 1 if (carry and s == 9) else 0
        longest = max(longest, run)
        out.append((s + carry) % 10)
        carry = (s + carry) // 10
    if carry:
        any_carry = True
    out.append(carry)
    assert int("".join(map(str, reversed(out)))) == a + b  # the simulation is school addition
    if longest >= 2:
        return "cascade"
    if longest == 1:
        return "US9"
    return "UC1" if any_carry else "BA"


def test_categories_against_brute_force_all_two_digit_pairs():
    counts = dict.fromkeys(addition.CATEGORIES, 0)
    for a in range(100):
        for b in range(100):
            want = _brute_category(a, b, 2)
            assert addition.category(a, b, 2) == want, (a, b)
            assert addition.is_ba_only(a, b, 2) == (want == "BA")
            assert addition.is_uc1(a, b, 2) == (want == "UC1")
            assert addition.is_simple_us9(a, b, 2) == (want == "US9")
            assert addition.is_cascade(a, b, 2) == (want == "cascade")
            counts[want] += 1
    # BA: every column sums to at most 9 -> 55 * 55 pairs; a cascade needs 3 columns.
    assert counts["BA"] == 55 * 55
    assert counts["cascade"] == 0
    assert counts["US9"] > 0 and counts["UC1"] > 0


def test_categories_against_brute_force_random_five_and_three_digits():
    rng = random.Random(7)
    for n in (3, 5):
        for _ in range(5000):
            a, b = rng.randrange(10**n), rng.randrange(10**n)
            assert addition.category(a, b, n) == _brute_category(a, b, n), (a, b, n)


def test_paper_cascade_examples():
    assert addition.category(555, 445, 3) == "cascade"
    assert addition.category(44445, 55555) == "cascade"
    assert addition.category(6665, 3335) == "cascade"  # 06665+03335=10000
    assert addition.category(11111, 22222) == "BA"
    assert addition.category(15, 5) == "UC1"
    assert addition.category(95, 5) == "US9"  # carry from units passes the tens (9+0)
    assert addition.longest_us9_run(44445, 55555) == 4


def test_cascade_rate_on_uniform_questions_is_about_one_point_three_five_percent():
    # PAPERS.md: about 1.35% of uniform 5-digit questions contain a cascade.
    rng = np.random.default_rng(0)
    a, b = addition.random_operands(rng, 40_000)
    rate = np.mean([_brute_category(int(x), int(y), 5) == "cascade" for x, y in zip(a, b, strict=True)])
    assert 0.011 < rate < 0.016


def test_enrichment_frequency():
    rng = np.random.default_rng(3)
    n_batches, batch = 3000, 64
    enriched_flags, sum9 = [], {True: [], False: []}
    for _ in range(n_batches):
        a, b, enriched = addition.training_operands(rng, batch)
        enriched_flags.append(enriched)
        da = np.array([[int(c) for c in f"{x:05d}"] for x in a])
        db = np.array([[int(c) for c in f"{y:05d}"] for y in b])
        sum9[enriched].append((da + db == 9).mean())
    frac = np.mean(enriched_flags)
    sd = math.sqrt(0.2 * 0.8 / n_batches)
    assert abs(frac - 0.2) < 4 * sd
    # Enriched: 20% of pairs forced to 9, the other 80% sum to 9 with probability 1/10.
    assert abs(np.mean(sum9[True]) - (0.2 + 0.8 * 0.1)) < 0.01
    assert abs(np.mean(sum9[False]) - 0.1) < 0.005


def test_operands_of_category_are_of_that_category():
    rng = np.random.default_rng(5)
    for cat in addition.CATEGORIES:
        a, b = addition.operands_of_category(rng, cat, 50)
        assert len(a) == 50
        assert all(_brute_category(int(x), int(y), 5) == cat for x, y in zip(a, b, strict=True))
    with pytest.raises(BadInput):
        addition.operands_of_category(rng, "cascade", 5, n_digits=2)


# ---------------------------------------------------------------------------------------------------
# Formal languages.


def test_recognisers_on_hand_examples():
    assert formal.is_majority("110") and not formal.is_majority("0110") and not formal.is_majority("")
    assert formal.is_odd_parity("1000") and not formal.is_odd_parity("1100") and not formal.is_odd_parity("")
    assert formal.is_dyck1("") and formal.is_dyck1("(()())") and formal.is_dyck1("()()")
    assert not formal.is_dyck1("())(") and not formal.is_dyck1("(((") and not formal.is_dyck1(")(")
    assert formal.dyck1_prefix_labels("()(())") == [False, True, False, False, False, True]
    assert formal.dyck1_prefix_labels(")()") == [False, False, False]
    with pytest.raises(BadInput):
        formal.is_majority("012")


@pytest.mark.parametrize("language", formal.LANGUAGES)
def test_generators_agree_with_recognisers(language):
    rng = np.random.default_rng(11)
    check = formal.recognizer(language)
    n_true = n_all = 0
    for n in list(range(0, 13)) + [31, 32]:
        tokens, lab = formal.make_batch(language, rng, 64, n)
        assert tokens.shape == (64, n + 2)
        assert (tokens[:, 0] == formal.BOS).all() and (tokens[:, -1] == formal.CLS).all()
        for row, y in zip(tokens, lab, strict=True):
            w = formal.to_text(language, row[1:-1])
            assert bool(y) == check(w), (language, w)
            assert formal.from_text(language, w) == list(row[1:-1])
        if n >= 2 and not (language == "dyck1" and n % 2):
            n_true += int(lab.sum())
            n_all += len(lab)
    assert 0.3 < n_true / n_all < 0.7  # labels roughly balanced


def test_dyck_prefix_variant_agrees_with_recogniser():
    rng = np.random.default_rng(2)
    for n in (1, 2, 7, 16):
        tokens, lab = formal.make_prefix_batch(rng, 32, n)
        assert tokens.shape == (32, n + 1) and lab.shape == (32, n)
        for row, y in zip(tokens, lab, strict=True):
            assert list(y) == formal.dyck1_prefix_labels(formal.to_text("dyck1", row[1:]))


def test_label_tokens():
    assert list(formal.label_tokens(np.array([True, False]))) == [formal.TRUE, formal.FALSE]
    assert formal.vocabulary("dyck1")[:2] == ["(", ")"]


# ---------------------------------------------------------------------------------------------------
# Text.


def test_text_file_corpus_and_split_rule():
    c = text.load_corpus(str(SENTENCES))
    lines = [ln for ln in SENTENCES.read_text().splitlines() if ln.strip()]
    assert c.documents == lines
    train, val = text.split_documents(c.documents)
    assert val == [lines[19], lines[39]]
    assert len(train) + len(val) == len(lines)
    assert c.describe()["documents"] == len(lines)


def test_bpe_round_trips_and_is_deterministic():
    docs = text.load_corpus(str(SENTENCES)).documents
    tok = text.train_bpe(docs, vocab_size=400)
    assert tok.token_to_id(text.EOT) == 0
    assert 256 < tok.get_vocab_size() <= 400
    unseen = ["naïve café — ☃ 日本語", "def f(x):\n\treturn x  # tabs\n\n", "  two  spaces ", "Zebra QUIZ 1234!"]
    for s in docs + unseen:
        assert tok.decode(tok.encode(s).ids) == s
    # Merges were learned: common words are fewer tokens than characters.
    assert len(tok.encode(docs[0]).ids) < len(docs[0]) / 2
    assert text.train_bpe(docs, vocab_size=400).to_str() == tok.to_str()


def test_stream_windows_and_unigram():
    docs = text.load_corpus(str(SENTENCES)).documents
    tok = text.train_bpe(docs, vocab_size=400)
    stream = text.encode_stream(tok, docs[:3])
    eot = tok.token_to_id(text.EOT)
    assert (stream == eot).sum() == 3 and stream[-1] == eot
    pieces = np.split(stream, np.nonzero(stream == eot)[0] + 1)[:3]
    assert [tok.decode(list(p[:-1])) for p in pieces] == docs[:3]
    rng = np.random.default_rng(0)
    w = text.sample_windows(rng, stream, 5, 9)
    for row in w:
        starts = [i for i in range(len(stream) - 8) if (stream[i : i + 9] == row).all()]
        assert starts  # each window is a contiguous slice of the stream
    ev = text.eval_windows(stream, 10, 3)
    assert ev.shape == (3, 10)
    # Unigram cross-entropy by hand: train counts [3, 1, 0] + 1 -> p = [4, 2, 1] / 7.
    ce = text.unigram_cross_entropy(np.array([0, 0, 0, 1]), np.array([0, 2]), 3)
    assert ce == pytest.approx(-(math.log(4 / 7) + math.log(1 / 7)) / 2)


def test_missing_corpus_says_how_to_install(monkeypatch):
    monkeypatch.setattr(text.shutil, "which", lambda name: None)
    with pytest.raises(BadInput, match="apt-get install -y bible-kjv bible-kjv-text"):
        text.load_corpus("kjv")
    with pytest.raises(BadInput, match="unknown corpus"):
        text.load_corpus("no-such-corpus")
