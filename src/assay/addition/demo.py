"""Paper 3's section of ``assay demo``: the shipped addition model(s), measured in this run on small samples.

Computed here, in well under a minute of one thread: accuracy per category (Wilson intervals) on
stratified samples, each head's attention per answer position (the staircase), head ablation per
category, and the two-column rule against the model on uniform questions and on cascades. Read from
the model directory (written by ``assay addition train`` / ``eval --card``): the per-digit training
curves, throughput, and the evaluation on 100,000 random questions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from assay.addition import ablation, attention, failures, figures, rules
from assay.addition.card import training_facts
from assay.addition.evaluate import answer_stats, n_digits_of, summarize
from assay.addition.training import DIGIT_LOG, read_digit_log
from assay.report.html import esc, figure, table
from assay.tasks import addition

MODELS = ("addition-1l", "addition-2l")
N_UNIFORM = 3000
N_CATEGORY = 200
N_ABLATION = 128


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}%"


def _ci(v: dict[str, Any]) -> str:
    return f"{_pct(v['accuracy'])} [{_pct(v['ci95'][0])}, {_pct(v['ci95'][1])}]"


def measure(model: Any, rng: np.random.Generator) -> dict[str, Any]:
    """Return the demo's measurements of one model (small samples, seeded)."""
    n = n_digits_of(model)
    a, b = addition.random_operands(rng, N_UNIFORM, n)
    ce, pred = answer_stats(model, a, b, n)
    truth = addition.example_token_array(a, b, n)[:, -(n + 1) :]
    uniform = summarize(ce, pred == truth, rules.category_indices(a, b, n), n)
    fa = failures.failure_analysis(model, a, b, n, ce=ce, pred=pred, max_listed=5)
    sets = {c: addition.operands_of_category(rng, c, N_CATEGORY, n) for c in addition.CATEGORIES}
    by_cat = {}
    casc_rule = None
    for c, (x, y) in sets.items():
        ce_c, pred_c = answer_stats(model, x, y, n)
        t = addition.example_token_array(x, y, n)[:, -(n + 1) :]
        by_cat[c] = summarize(ce_c, pred_c == t, rules.category_indices(x, y, n), n)
        if c == "cascade":
            casc_rule = float((failures.token_order_to_int(pred_c) == rules.two_column_rule(x, y, n)).mean())
    ref = addition.random_operands(rng, 256, n)
    small = {c: (x[:N_ABLATION], y[:N_ABLATION]) for c, (x, y) in sets.items()}
    heads = ablation.head_ablation(model, small, n, ref, modes=("mean",))
    pats = attention.mean_patterns(model, *addition.random_operands(rng, 256, n), n)
    return {"n_digits": n, "uniform": uniform, "failures": fa, "by_category": by_cat, "cascade_rule": casc_rule,
            "heads": heads, "patterns": pats, "reads": attention.head_reads(pats, n)}


def section(ctx: Any) -> str:
    """Return the HTML fragment of paper 3's section (figures written under ctx.fig_dir)."""
    import torch

    from assay.model import load, load_card, models_dir

    present = [m for m in MODELS if (models_dir() / m / "config.json").is_file()]
    if not present:
        return ("<p class='note'>No shipped addition model yet: train one with "
                "<code>assay addition train addition-1l</code>.</p>")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small forward passes on a shared machine: one thread is fastest
    try:
        return _section(ctx, present, load, load_card)
    finally:
        torch.set_num_threads(threads)


def _section(ctx: Any, present: list[str], load: Any, load_card: Any) -> str:
    parts = ["<p>Task: 5-digit addition, answer most significant digit first, loss on the 6 answer tokens. "
             "Categories, from their definitions: BA (no carry), UC1 (carries, none through a sum-9 column), "
             "US9 (a carry passes one sum-9 column at a time), cascade (a carry passes two or more consecutive "
             "sum-9 columns). Everything below was measured by this run unless marked as read from the card.</p>"]
    results: dict[str, dict[str, Any]] = {}
    facts: dict[str, dict[str, Any]] = {}
    for name in present:
        ctx.log(f"addition: measuring {name}")
        model = load(name).eval()
        card = load_card(name) or {}
        facts[name] = training_facts(card)
        results[name] = measure(model, np.random.default_rng(2024))
        log = read_digit_log(model.source_dir / DIGIT_LOG)
        n = results[name]["n_digits"]
        if log:
            from assay.addition.report import phase_steps
            from assay.addition.training import logged_prefix

            # phases from the contiguous start of the log (a log assembled from runs has a gap)
            phases = {f"A{n - i}": phase_steps(logged_prefix(log), f"loss_A{n - i}") for i in range(n + 1)}
            p = figures.loss_curves(log, card.get("history", []), n, phases, ctx.fig_dir / f"{name}-curves.png",
                                    f"{name}: training loss per answer digit and per category")
            parts.append(f"<h3>{esc(name)}</h3>")
            parts.append(figure(p, ctx.out, f"{name}: per-digit training loss (read from {DIGIT_LOG}); dotted "
                                "lines: the step at which each digit's loss falls fastest (its phase transition)"))
        else:
            parts.append(f"<h3>{esc(name)}</h3>")
        f = facts[name]
        ev = f.get("eval_random")
        tt = f["time_to_target"]
        parts.append(table(["fact (read from the card)", "value"], [
            ["training steps (paper: 5K notebook, ~30K implied)", f["steps"]],
            ["throughput", f"{f['questions_per_second']} questions/s ({f['steps_per_second']} steps/s, "
                           f"{f['num_threads']} thread)"],
            ["wall time", f"{f['wall_seconds']} s in {f['sessions']} session(s)"],
            [f"first validation at loss <= {f['target_loss']}",
             f"step {tt['step']}, {tt['wall_seconds']} s" if tt else f"not reached in {f['steps']} steps"],
            ["final validation loss / accuracy (4,096 questions)", f"{f['val_loss']:.4g} / {_pct(f['val_accuracy'])}"
             if f["val_loss"] is not None else "—"],
            ["accuracy on random questions (assay addition eval --card)",
             f"{_ci(ev)} on {ev['n']:,}, loss {ev['loss']:.4g}" if ev else "not recorded"],
        ]))
        r = results[name]
        rows = [[c, v["n"], _ci(v), f"{v['loss']:.4g}"] for c, v in r["by_category"].items()]
        rows.append([f"uniform ({N_UNIFORM})", r["uniform"]["n"], _ci(r["uniform"]), f"{r['uniform']['loss']:.4g}"])
        parts.append("<p>Accuracy per category (stratified samples of "
                     f"{N_CATEGORY}; 95% Wilson intervals):</p>")
        parts.append(table(["questions", "n", "accuracy [95% CI]", "loss"], rows))
        p = figures.attention(r["patterns"], n, ctx.fig_dir / f"{name}-attention.png",
                              f"{name}: mean attention from each answer-predicting position")
        parts.append(figure(p, ctx.out, f"{name}: each head's attention from the position predicting each answer "
                            "digit (rows) to every position (columns), mean over 256 questions"))
        offs = []
        for head in sorted({(x["layer"], x["head"]) for x in r["reads"]}):
            cols = [x for x in r["reads"] if (x["layer"], x["head"]) == head]
            offs.append([f"L{head[0]}H{head[1]}"] + [f"col {x['pair']} ({x['pair_weight']:.2f})" for x in cols])
        parts.append(table(["head"] + [f"A{n - i}" for i in range(n + 1)], offs))
        cats = list(addition.CATEGORIES)
        hrows = []
        for key in dict.fromkeys((x["layer"], x["head"]) for x in r["heads"]):
            label = "baseline" if key[0] is None else f"L{key[0]}H{key[1]} mean-ablated"
            cells = {x["category"]: x for x in r["heads"] if (x["layer"], x["head"]) == key}
            hrows.append([label] + [f"{cells[c]['loss']:.3g} ({_pct(cells[c]['accuracy'])})" for c in cats])
        parts.append(f"<p>Head ablation (loss and accuracy per category, {N_ABLATION} questions each):</p>")
        parts.append(table(["ablation"] + cats, hrows))
        fa = r["failures"]
        parts.append(
            f"<p>Failures among {fa['n']:,} uniform questions: {fa['n_wrong']} wrong; cascades are "
            f"{_pct(fa['cascade_rate'])} of the questions and {_pct(fa['cascade_share'])} of the wrong answers. "
            f"The two-column look-back rule gives the model's answer on {_pct(fa['rule']['all']['rate'])} of them, "
            f"on {_pct(fa['rule']['model_wrong']['rate'])} of the wrong ones, and on "
            f"{_pct(r['cascade_rule'])} of {N_CATEGORY} cascades.</p>")
    if len(results) > 1:
        parts.append("<h3>Side by side</h3>")
        rows = []
        for c in list(addition.CATEGORIES) + ["uniform"]:
            rows.append([c] + [_ci(results[m]["by_category"][c] if c != "uniform" else results[m]["uniform"])
                               for m in results])
        parts.append(table(["questions"] + list(results), rows))
    parts.append("<p class='note'>The full mechanism report (position ablation, probes, 100,000-question failure "
                 "analysis, declared algorithm) is written by <code>assay addition analyze MODEL</code>; the "
                 "shipped one is in <code>models/addition-1l/analysis/report.md</code>.</p>")
    return "\n".join(parts)
