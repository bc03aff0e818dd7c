"""``assay saturation construct|bits|circuit|meter``: the command-line side of paper 4.

Each handler validates its input (BadInput -> one line, exit 2), prints progress lines on stderr and
returns an :class:`~assay.cli.Outcome` whose data is the command's JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import time
from typing import Any

from assay.cli import Outcome, command, load_model, nonneg_int, pos_int
from assay.errors import BadInput

MAX_CONSTRUCT_N = 100_000  # exact streaming check of random strings: ~0.3 ms per position per string
EXHAUSTIVE_LEN = 14
HARD_SEARCH_LEN = 10


def _log(msg: str) -> None:
    print(f"[saturation] {msg}", file=sys.stderr, flush=True)


def _language(name: str) -> str:
    from assay.saturation.languages import CONSTRUCTIONS

    if name not in CONSTRUCTIONS:
        raise BadInput(f"unknown language {name!r}; known: {', '.join(CONSTRUCTIONS)}")
    return name


# ---------------------------------------------------------------------------------------------
# construct


def _construct_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("language", metavar="LANG", help="majority, threshold, dyck1, anbn (or counter)")
    p.add_argument("--n", type=pos_int, required=True, metavar="N",
                   help=f"longest string: every string up to min(N, {EXHAUSTIVE_LEN}), random strings of length N "
                        f"(at most {MAX_CONSTRUCT_N})")
    p.add_argument("--random", type=nonneg_int, default=10, metavar="K",
                   help="random strings of length N when N > L (default 10); every prefix of each is checked")
    p.add_argument("--exhaustive", type=pos_int, default=EXHAUSTIVE_LEN, metavar="L",
                   help=f"check every string up to min(N, L) (default {EXHAUSTIVE_LEN}: 32766 strings)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of the random strings")


def hard_counterexample(language: str, max_len: int = HARD_SEARCH_LEN) -> dict[str, Any] | None:
    """Return the shortest (then lexicographically first) string on which the construction's weights
    with hard attention disagree with the reference, with both answers; None if none up to max_len."""
    from assay.saturation.constructions import build
    from assay.saturation.interpreter import all_prefix_steps
    from assay.saturation.languages import to_text

    c = build(language, max_len)
    hard = c.interpreter(attention="hard")
    best = None
    for w, step in all_prefix_steps(hard, (0, 1), max_len):
        if c.decide(step.logits) != c.recognise(w) and (best is None or (len(w), w) < (len(best), best)):
            best = w
    if best is None:
        return None
    # Both answers are recomputed by whole-sequence runs (not the trie walk), so the reported
    # disagreement is checked twice, by two evaluation paths of the interpreter.
    sat = c.interpreter().run(list(best))[-1]
    hard_step = c.interpreter(attention="hard").run(list(best))[-1]
    return {
        "string": to_text("majority" if language == "counter" else language, best),
        "tokens": list(best),
        "reference": c.recognise(best),
        "saturated": c.decide(sat.logits),
        "hard": c.decide(hard_step.logits),
    }


def check_construction(language: str, n: int, random_strings: int = 10, seed: int = 0,
                       log: Any = None, exhaustive: int = EXHAUSTIVE_LEN) -> dict[str, Any]:
    """Return {language, n, correct, total, ...}: the exact interpreter's decision against the reference
    on every nonempty string up to min(n, exhaustive) and on every prefix of ``random_strings`` strings
    of length n (when n > exhaustive), plus the hard-attention counterexample."""
    from assay.saturation.constructions import build
    from assay.saturation.interpreter import all_prefix_steps
    from assay.saturation.languages import sample

    _language(language)
    if n > MAX_CONSTRUCT_N:
        raise BadInput(f"--n must be at most {MAX_CONSTRUCT_N} (exact streaming check time; W_pos memory), got {n}")
    c = build(language, n)
    ref_lang = "majority" if language == "counter" else language
    correct = total = 0
    first_wrong = None
    if exhaustive > 20:
        raise BadInput(f"--exhaustive must be at most 20 (2^21 strings), got {exhaustive}")
    ex = min(n, exhaustive)
    if log:
        log(f"{language}: every string up to length {ex} (exact interpreter)")
    for w, step in all_prefix_steps(c.interpreter(), (0, 1), ex):
        ok = c.decide(step.logits) == c.recognise(w)
        correct += ok
        total += 1
        if not ok and first_wrong is None:
            first_wrong = list(w)
    rng = random.Random(seed)
    k = random_strings if n > ex else 0
    for r in range(k):
        w = sample(ref_lang, n, rng)
        if log:
            log(f"{language}: random string {r + 1}/{k} of length {n}, every prefix")
        stream = c.interpreter().stream()
        for i, t in enumerate(w):
            ok = c.decide(stream.push(t).logits) == c.recognise(w[: i + 1])
            correct += ok
            total += 1
            if not ok and first_wrong is None:
                first_wrong = w[: i + 1]
    if log:
        log(f"{language}: searching the shortest string hard attention gets wrong (up to {HARD_SEARCH_LEN})")
    return {
        "language": language, "n": n, "correct": correct, "total": total,
        "hard_counterexample": hard_counterexample(language),
        "exhaustive_max_len": ex, "random_strings": k, "evaluated_with": "exact rational interpreter",
        "first_wrong": first_wrong,
    }


@command("construct", help="check a hand-built saturated transformer against its language's reference recogniser",
         example="assay saturation construct majority --n 10000 --json", args=_construct_args, group="saturation")
def construct_cmd(args: argparse.Namespace) -> Outcome:
    data = check_construction(_language(args.language), args.n, args.random, args.seed, log=_log,
                              exhaustive=args.exhaustive)
    ce = data["hard_counterexample"]
    text = (f"{data['language']}: {data['correct']}/{data['total']} strings decided correctly (exact, up to length "
            f"{data['exhaustive_max_len']} exhaustively, {data['random_strings']} random strings of length {args.n})\n"
            + (f"hard attention, same weights: wrong on {ce['string']!r} (reference {ce['reference']}, "
               f"hard {ce['hard']}, saturated {ce['saturated']})" if ce else "hard attention: no counterexample found"))
    return Outcome(data, code=0 if data["correct"] == data["total"] else 1, text=text)


# ---------------------------------------------------------------------------------------------
# bits


def _bits_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="LANG|MODEL", help="a construction (majority, threshold, dyck1, anbn, counter) "
                   "or a model directory / shipped model run exactly")
    p.add_argument("--n-max", type=pos_int, required=True, metavar="N",
                   help="longest input (constructions <= 200000, counter <= 20000, models <= min(n_ctx, 4096))")
    p.add_argument("--precision-n-max", type=nonneg_int, metavar="M",
                   help="profile the smallest float precision keeping every decision up to this length "
                        "(default min(N, 2000); 0 = skip; at most 10000)")
    p.add_argument("--attention", choices=("saturated", "hard"),
                   help="for a softmax model: run its c -> infinity limit with this attention (explicitly)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of the input strings")


@command("bits", help="bits needed by every memory vector as n grows, with a fit a*log2(n)+b",
         example="assay saturation bits dyck1 --n-max 100000 --json", args=_bits_args, group="saturation")
def bits_cmd(args: argparse.Namespace) -> Outcome:
    from assay.saturation import bits
    from assay.saturation.languages import CONSTRUCTIONS

    if args.target in CONSTRUCTIONS:
        if args.attention:
            raise BadInput("--attention applies to models, not to constructions")
        data = bits.profile_construction(args.target, args.n_max, seed=args.seed,
                                         precision_n_max=args.precision_n_max, log=_log)
    else:
        import os

        if os.sep not in args.target and not os.path.exists(args.target):
            from assay.model import shipped_models

            if args.target not in shipped_models():
                raise BadInput(f"unknown language or model {args.target!r}; languages: {', '.join(CONSTRUCTIONS)}")
        model = load_model(args.target)
        data = {"model": args.target, **bits.profile_model(model, args.n_max, attention=args.attention, seed=args.seed,
                                                            precision_n_max=args.precision_n_max, log=_log)}
    f = data["fit"]
    lines = [f"bits(n) = {f['a']:.3f} log2(n) + {f['b']:.3f}   "
             f"(R^2 {f['r2']:.4f}, rms residual {f['rms_residual']:.3f})"]
    if "linear_fit" in data:
        lf = data["linear_fit"]
        lines.append(f"linear fit: bits(n) = {lf['a']:.4f} n + {lf['b']:.2f}   (R^2 {lf['r2']:.6f})")
    lines += [f"  n = {n:>7}: {b} bits" for n, b in data["points"]]
    lines.append("per memory vector at n = {}: ".format(data["points"][-1][0]) + ", ".join(
        f"{v['after']} {v['points'][-1][1]} bits" for v in data["per_layer"]))
    if "precision" in data:
        lines.append("smallest float precision keeping every decision: " + ", ".join(
            f"n={n}: p={p}" for n, p in data["precision"]["points"]))
    return Outcome(data, text="\n".join(lines))


# ---------------------------------------------------------------------------------------------
# circuit


def _circuit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("language", metavar="LANG", help="majority, threshold, dyck1, anbn (or counter)")
    p.add_argument("--n", type=pos_int, required=True, metavar="N", help="input length (1..256)")
    p.add_argument("--random", type=pos_int, default=200, metavar="K",
                   help="random inputs checked when N > 12 (default 200; N <= 12 checks all 2^N)")
    p.add_argument("--out", metavar="FILE.json", help="write the circuit as JSON")
    p.add_argument("--dot", metavar="FILE.dot", help="write the circuit as Graphviz DOT")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of the random inputs")


@command("circuit", help="compile a construction at fixed n to an AND/OR/NOT/THRESHOLD circuit and check it",
         example="assay saturation circuit dyck1 --n 32 --dot dyck1.dot --json", args=_circuit_args,
         group="saturation")
def circuit_cmd(args: argparse.Namespace) -> Outcome:
    from assay.saturation.circuit import MAX_N, check_export_paths, compile_construction, write_exports

    lang = _language(args.language)
    if args.n > MAX_N:
        raise BadInput(f"--n must be in 1..{MAX_N} (circuit size grows like n^3; the memory limit), got {args.n}")
    check_export_paths(args.out, args.dot)  # before any work, so a bad path is the only line on stderr
    _log(f"compiling {lang} at n = {args.n}")
    res = compile_construction(lang, args.n, random_inputs=args.random, seed=args.seed)
    circ = res.pop("circuit")
    write_exports(circ, args.out, args.dot)
    res["json_file"], res["dot_file"] = args.out, args.dot
    text = (f"{lang}, n = {args.n}: depth {res['depth']}, size {res['size']} gates, {res['wires']} wires "
            f"({', '.join(f'{k} {v}' for k, v in sorted(res['gate_counts'].items()))}); "
            f"{'all 2^n' if res['exhaustive'] else res['inputs_checked']} inputs checked against the exact "
            f"interpreter: {'all equal' if res['all_equal'] else 'MISMATCH on ' + str(res['first_mismatch'])}")
    return Outcome(res, code=0 if res["all_equal"] else 1, text=text)


# ---------------------------------------------------------------------------------------------
# meter


def _meter_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="a trained softmax model (directory or shipped name)")
    p.add_argument("--batch", type=pos_int, default=32, help="input strings (default 32)")
    p.add_argument("--length", type=pos_int, help="input length (default min(n_ctx, 34))")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of the inputs")
    p.add_argument("--train-steps", type=nonneg_int, default=0, metavar="S",
                   help="also train RECIPE for S steps and record parameter norm and saturation per step")
    p.add_argument("--recipe", default="majority-1l", help="recipe of the training run (default majority-1l)")
    p.add_argument("--every", type=pos_int, default=25, help="record the training run every K steps (default 25)")


@command("meter", help="how saturated a trained model is: per-layer cosine with its saturated network, per-head spread",
         example="assay saturation meter majority-1l --train-steps 200 --json", args=_meter_args, group="saturation")
def meter_cmd(args: argparse.Namespace) -> Outcome:
    from assay.model import load_card
    from assay.saturation import meter

    model = load_model(args.model)
    if model.cfg.attention != "softmax":
        raise BadInput(f"the meter scales a softmax model towards saturation; {args.model} has "
                       f"{model.cfg.attention!r} attention already")
    card = None
    try:
        card = load_card(args.model)
    except BadInput:
        card = None
    tokens = meter.sample_inputs(model, batch=args.batch, length=args.length, seed=args.seed, card=card)
    _log(f"scaling {args.model} by c in {meter.C_GRID[0]:g}..{meter.C_GRID[-1]:g}")
    data: dict[str, Any] = {"model": args.model, **meter.meter(model, tokens)}
    if args.train_steps:
        start = time.perf_counter()
        data["training"] = meter.training_run(args.recipe, steps=args.train_steps, every=args.every, seed=args.seed,
                                              log=_log)
        data["training"]["seconds"] = round(time.perf_counter() - start, 2)
    lines = ["per-layer cosine with the saturated network (c = 1): "
             + ", ".join(f"L{r['layer']} {r['cosine']:.3f}" for r in data["layers"])]
    lines += [f"  L{h['layer']}H{h['head']}: {h['positions_above']:.2f} positions above 1e-5 ({h['kind']})"
              for h in data["heads"]]
    for row in itertools.islice(data["curve"], None):
        lines.append(f"  c = {row['c']:>6g}: " + " ".join(f"{x:.3f}" for x in row["cosines"]))
    if "training" in data:
        lines += [f"  step {p['step']:>5}: norm {p['param_norm']:.3f}, cosine {p['cosine']:.3f}"
                  for p in data["training"]["points"]]
    return Outcome(data, text="\n".join(lines))
