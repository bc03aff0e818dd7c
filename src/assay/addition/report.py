"""``assay addition analyze``: the mechanism report of an addition model (markdown, figures, JSON summary).

Everything is computed from the model and its training logs in this run; sample sizes are in
:class:`Sizes` and recorded in the summary. The report sections follow issue 5: training phases,
position ablation, attention (the double staircase), head ablation per category, probes, the failures
among many random questions with the two-column rule tested on them, and the declared algorithm
compared with the model question by question.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from assay.addition import ablation, attention, failures, figures, probes, rules
from assay.addition.evaluate import n_digits_of
from assay.addition.training import DIGIT_LOG, digit_log_gaps, logged_prefix, read_digit_log
from assay.fileutil import atomic_directory, atomic_write_text, check_output_dir
from assay.tasks import addition


@dataclass(frozen=True)
class Sizes:
    """How many questions each part of the analysis uses."""

    n_random: int = 100_000  # failure analysis and algorithm comparison (uniform questions)
    n_ablation: int = 256  # position ablation (uniform), per-position head ablation
    n_category: int = 256  # per category, head ablation
    n_reference: int = 512  # reference batch for mean ablation
    n_attention: int = 1024
    n_probe_train: int = 4000
    n_probe_test: int = 2000


QUICK = Sizes(n_random=4000, n_ablation=96, n_category=96, n_reference=256, n_attention=256,
              n_probe_train=600, n_probe_test=300)


def _log(msg: str, progress: bool) -> None:
    if progress:
        print(f"[addition analyze] {msg}", file=sys.stderr, flush=True)


def phase_steps(records: list[dict[str, Any]], key: str, smooth: int = 5, window: int = 3) -> dict[str, Any]:
    """Return when a loss curve drops: the start and end loss; the first step at which the smoothed loss
    is below the geometric midpoint of the two (``half_step``) and below 0.1 nats (``below_0.1``); and
    the middle of the ``window`` records over which the smoothed loss falls most (``steepest_step``,
    the phase transition; absolute loss, so that late noise on a small loss cannot win)."""
    steps = np.array([r["step"] for r in records if key in r])
    y = np.array([r[key] for r in records if key in r], dtype=float)
    if len(y) < 2:
        return {}
    k = max(1, min(smooth, len(y)))
    ys = np.convolve(y, np.ones(k) / k, mode="valid")
    st = steps[k - 1 :]
    start, end = float(ys[: 3].mean()), float(ys[-3:].mean())
    half = float(np.sqrt(max(start, 1e-12) * max(end, 1e-12)))
    below_half = np.nonzero(ys <= half)[0]
    below = np.nonzero(ys < 0.1)[0]
    dropped = len(below_half) > 0 and end < start
    steepest = None
    if len(ys) > window and end < start:
        fall = ys[window:] - ys[:-window]
        j = int(np.argmin(fall))
        steepest = int(round((st[j] + st[j + window]) / 2))
    return {"start": start, "end": end, "half_step": int(st[below_half[0]]) if dropped else None,
            "steepest_step": steepest, "below_0.1": int(st[below[0]]) if len(below) else None}


def head_roles(reads: list[dict[str, Any]], n_digits: int, carried: dict[tuple, list[str]]) -> list[dict[str, Any]]:
    """Return per head its column offset per answer digit (answer column minus the column it reads most)."""
    out = []
    keys = sorted({(r["layer"], r["head"]) for r in reads})
    for layer, head in keys:
        offs = {}
        for r in reads:
            if (r["layer"], r["head"]) == (layer, head):
                col = int(r["digit"][1:])
                # no offset when no column gets the threshold weight (e.g. A0 has no column below to read)
                offs[r["digit"]] = col - r["pair"] if r["columns"] else None
        inner = [offs[f"A{c}"] for c in range(1, n_digits) if offs[f"A{c}"] is not None]  # A_n, A_0: edge cases
        common = max(set(inner), key=inner.count) if inner else None
        role = {0: "BA: reads the answer's own column",
                1: "MC1/MS9: reads the column below",
                2: "MC1: reads two columns below"}.get(common, f"reads {common} columns below")
        if layer > 0:
            # a later layer's keys hold what earlier layers computed at each position, not just that token
            role = ("a later layer: its keys are positions whose residual stream already mixes columns, so the "
                    "column it attends to is not the column it reads; see the probes")
        out.append({"layer": layer, "head": head, "offsets": offs, "offset": common,
                    "consistent": sum(o == common for o in inner), "of": len(inner), "role": role,
                    "carried": {d: carried.get((layer, head, d), []) for d in offs}})
    return out


ROLE_NEEDED = 0.5  # nats: loss increase on a category that makes a head "needed" by it
ROLE_NEGLIGIBLE = 0.1  # nats: below this on every category, a head is not needed


def ablation_roles(rows: list[dict[str, Any]], mode: str = "mean") -> list[dict[str, Any]]:
    """Return per head its role from head ablation: the loss increase per category and a verdict.

    ``rows`` are :func:`assay.addition.ablation.head_ablation` rows. With d_c the increase of the mean
    answer-digit loss on category c when the head is ablated (``mode``):

    - *not needed*: d_c < 0.1 nats on every category;
    - *base add*: d_c >= 0.5 nats on every category, BA questions (no carry anywhere) included;
    - *carry*: d_BA < 0.5 and some carry category (UC1, US9, cascade) has d_c >= max(0.5, 2 d_BA);
    - *mixed* otherwise (the category hurt most is named).
    """
    base = {r["category"]: r["loss"] for r in rows if r["layer"] is None}
    heads = list(dict.fromkeys((r["layer"], r["head"]) for r in rows if r["layer"] is not None and r["mode"] == mode))
    out = []
    for layer, head in heads:
        d = {r["category"]: r["loss"] - base[r["category"]] for r in rows
             if (r["layer"], r["head"], r["mode"]) == (layer, head, mode) and r["category"] in base}
        acc = {r["category"]: r["accuracy"] for r in rows if (r["layer"], r["head"], r["mode"]) == (layer, head, mode)}
        carry_cats = [c for c in ("UC1", "US9", "cascade") if c in d]
        d_ba = d.get("BA", 0.0)
        worst = max(d, key=lambda c: d[c])
        if max(d.values()) < ROLE_NEGLIGIBLE:
            role = "not needed: every category within 0.1 nats of baseline"
        elif min(d.values()) >= ROLE_NEEDED:
            role = "base add: needed by every category, BA questions included"
        elif d_ba < ROLE_NEEDED and any(d[c] >= max(ROLE_NEEDED, 2 * d_ba) for c in carry_cats):
            role = "carry: needed by questions with carries, far less by BA questions"
        else:
            role = f"mixed: raises the loss on every category, most on {worst}"
        out.append({"layer": layer, "head": head, "mode": mode, "loss_increase": d, "accuracy": acc, "role": role})
    return out


def side_by_side_entry(s: dict[str, Any]) -> dict[str, Any]:
    """Return the measurements of one analysis summary that the side-by-side table shows."""
    fa = s["failures"]
    summ = fa["summary"]
    algos = {r["algorithm"]: r for r in s.get("algorithms", [])}
    kinds = fa["digit_errors"]["by_kind"]
    total = fa["digit_errors"]["total"]
    main = max(kinds, key=lambda k: kinds[k]) if total else None
    facts = s.get("card_facts") or {}
    return {
        "name": s["name"], "n_layers": s["config"]["n_layers"], "n_heads": s["config"]["n_heads"],
        "d_model": s["config"]["d_model"], "n_parameters": facts.get("n_parameters"), "steps": facts.get("steps"),
        "n": fa["n"], "seed": s["seed"], "accuracy": summ["accuracy"], "ci95": summ["ci95"], "loss": summ["loss"],
        "by_category": {c: v["accuracy"] for c, v in summ["by_category"].items()},
        "n_wrong": fa["n_wrong"], "cascade_share": fa["cascade_share"],
        "rule_all": fa["rule"]["all"]["rate"], "rule_cascade": fa["rule"]["cascade"]["rate"],
        "exact_agreement": algos.get("exact addition", {}).get("question_agreement"),
        "main_error": main, "main_error_share": kinds[main] / total if main else None,
        "questions_per_second": facts.get("questions_per_second"), "time_to_loss": facts.get("time_to_loss"),
    }


def _time_to_loss_text(t: dict[str, Any] | None) -> str:
    if not t:
        return "—"
    hits = [f"{src.replace('_', ' ')}: step {t[src]['step']} (~{t[src]['wall_seconds']} s)"
            for src in ("training_batches", "validation") if t.get(src)]
    if hits:
        return "; ".join(hits)
    low = t.get("lowest_validation")
    return "not reached" + (f" (lowest validation loss {low['val_loss']:.3g})" if low else "")


def render_side_by_side(entries: list[dict[str, Any]]) -> list[str]:
    """Return markdown lines of the side-by-side table of several analyses (one column per model)."""
    def row(label: str, f: Any) -> list[Any]:
        return [label] + [f(e) for e in entries]

    cats = list(entries[0]["by_category"])
    rows = [
        row("layers / heads / d_model", lambda e: f"{e['n_layers']} / {e['n_heads']} / {e['d_model']}"),
        row("parameters", lambda e: f"{e['n_parameters']:,}" if e["n_parameters"] else "—"),
        row("training steps", lambda e: e["steps"]),
        row("questions analysed (uniform, seed)", lambda e: f"{e['n']:,} (seed {e['seed']})"),
        row("accuracy [95% CI]", lambda e: f"{_pct(e['accuracy'])} [{_pct(e['ci95'][0])}, {_pct(e['ci95'][1])}]"),
        row("mean loss per answer digit", lambda e: e["loss"]),
        *[row(f"accuracy on {c}", lambda e, c=c: _pct(e["by_category"].get(c))) for c in cats],
        row("wrong answers", lambda e: f"{e['n_wrong']:,}"),
        row("cascades among the wrong answers", lambda e: _pct(e["cascade_share"])),
        row("two-column rule = model (all questions)", lambda e: _pct(e["rule_all"])),
        row("two-column rule = model (cascades)", lambda e: _pct(e["rule_cascade"])),
        row("exact addition = model", lambda e: _pct(e["exact_agreement"])),
        row("commonest kind of wrong digit", lambda e: f"{e['main_error']} ({_pct(e['main_error_share'])})"
            if e["main_error"] else "—"),
        row("training throughput (questions/s)", lambda e: e["questions_per_second"]),
        row("first loss <= 0.01", lambda e: _time_to_loss_text(e["time_to_loss"])),
    ]
    return ["## Side by side", "",
            "Each column is read from that model's own analysis summary (and its card for parameters, steps, "
            "throughput and time to loss 0.01).", "",
            _md_table([""] + [f"`{e['name']}`" for e in entries], rows), ""]


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.3f}%"


def category_sets(rng: np.random.Generator, n: int, n_digits: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Return n questions of each category that exists for n_digits (drawn by rejection, checked by definition)."""
    cats = [c for c in addition.CATEGORIES if not (c == "cascade" and n_digits < 3)]
    return {c: addition.operands_of_category(rng, c, n, n_digits) for c in cats}


def read_summary(analysis_dir: str | Path) -> dict[str, Any]:
    """Return the ``summary.json`` of an analysis directory; BadInput when it has none or it is corrupt."""
    from assay.errors import BadInput

    p = Path(analysis_dir) / "summary.json"
    if not p.is_file():
        raise BadInput(f"{analysis_dir}: not an addition analysis directory (no summary.json)")
    try:
        s = json.loads(p.read_text())
        s["failures"]["summary"]["accuracy"]  # noqa: B018 - the fields the side-by-side reads
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise BadInput(f"{p}: not an addition analysis summary ({type(e).__name__}: {e})") from None
    return s


def derived_sections(summary: dict[str, Any], compare: list[dict[str, Any]] = ()) -> dict[str, Any]:
    """Fill in what the report derives from the measurements: head roles (attention, probes), roles from
    head ablation, and the side-by-side entries of this and the ``compare`` summaries. Returns ``summary``."""
    n = summary["n_digits"]
    summary["head_roles"] = head_roles(summary["attention"], n, probes.carried(summary["probes"]))
    summary["ablation_roles"] = ablation_roles(summary["head_ablation"])
    summary["side_by_side"] = [side_by_side_entry(x) for x in [summary, *compare]] if compare else []
    return summary


def rerender(analysis_dir: str | Path, compare: list[str | Path] = ()) -> dict[str, Any]:
    """Rewrite ``report.md`` and ``summary.json`` of an existing analysis from its own measurements.

    Nothing is measured again: head roles, ablation roles and the side-by-side table are recomputed from
    the stored measurements (and the ``compare`` analyses' summaries), the card facts (parameters, steps,
    throughput, time to loss 0.01) are read again from the model's card, so a change to the report's
    derivations can be applied without rerunning the model. Returns the summary.
    """
    from assay.model import load_card

    d = Path(analysis_dir)
    s = read_summary(d)
    try:
        card = load_card(s["model"])
    except Exception:  # noqa: BLE001 - the model may have moved; keep the facts stored at analysis time
        card = None
    if card:
        s["card_facts"] = _card_facts(card)
    derived_sections(s, [read_summary(c) for c in compare])
    atomic_write_text(d / "summary.json", json.dumps(s, indent=1, default=_json_default) + "\n")
    atomic_write_text(d / "report.md", render_markdown(s))
    return s


def analyze(model_ref: str, out: str | Path, sizes: Sizes = Sizes(), seed: int = 0,
            progress: bool = True, compare: list[str | Path] = ()) -> dict[str, Any]:
    """Analyse the addition model ``model_ref`` (a directory or shipped name); write the report into ``out``.

    Writes ``report.md``, ``summary.json`` and ``figures/*.png`` (atomically: all or nothing) and
    returns the summary. ``compare``: other analysis directories whose models join a side-by-side table.
    """
    from assay.cli import load_model
    from assay.model import load_card

    check_output_dir(out, "report.md", "addition report")  # before the slow part

    t_start = time.perf_counter()
    model = load_model(model_ref)
    n = n_digits_of(model)
    model.eval()
    model_dir = Path(model.source_dir) if getattr(model, "source_dir", None) else None
    card = load_card(model_ref) or {}
    others = [read_summary(c) for c in compare]  # fail before any work
    name = card.get("recipe") or (model_dir.name if model_dir else str(model_ref))
    digit_log = read_digit_log(model_dir / DIGIT_LOG) if model_dir else []
    history = card.get("history", [])
    rng = np.random.default_rng(seed)
    summary: dict[str, Any] = {"model": str(model_ref), "name": name, "n_digits": n, "seed": seed,
                               "sizes": dataclasses.asdict(sizes), "config": model.cfg.to_dict()}
    out = Path(out)
    with atomic_directory(out) as tmp:
        figdir = tmp / "figures"
        figdir.mkdir()
        figs: dict[str, str] = {}

        # Training phases.
        digits = [f"A{n - i}" for i in range(n + 1)]
        gaps = digit_log_gaps(digit_log)
        # with steps missing from the log, first crossings after the gap would be dated late: use the
        # contiguous start of the log only, and say so
        src = logged_prefix(digit_log) if digit_log else [
            {"step": r["step"], **{k.removeprefix("val_"): v for k, v in r.items()}} for r in history]
        phases = {d: phase_steps(src, f"loss_{d}") for d in digits}
        phases.update({c: phase_steps(src, f"loss_{c}") for c in addition.CATEGORIES})
        source = "training batches (train_digit_loss.jsonl)" if digit_log else "validation history (card.json)"
        if gaps:
            source += (f", steps up to {gaps[0][0]:,} only: the log has no records for steps "
                       + ", ".join(f"{a + 1:,}-{b - 1:,}" for a, b in gaps))
        summary["phases"] = {"source": source, **phases}
        if src:
            figs["curves"] = figures.loss_curves(digit_log, history, n, phases, figdir / "loss_curves.png",
                                                 f"{name}: loss per digit and per category over training").name

        # Final accuracy per category (stratified sets), and the uniform evaluation.
        ref = addition.random_operands(rng, sizes.n_reference, n)
        cat_sets = category_sets(rng, sizes.n_category, n)

        _log("position ablation", progress)
        abl_q = addition.random_operands(rng, sizes.n_ablation, n)
        pos_results = []
        for kind in ("input", "computation"):
            for mode in ablation.MODES:
                pos_results.append(ablation.position_ablation(model, *abl_q, n, ref, kind, mode))
        figs["positions"] = figures.position_ablation(pos_results, n, figdir / "position_ablation.png",
                                                      f"{name}: per-digit loss with one position ablated").name
        summary["position_ablation"] = [
            {**{k: r[k] for k in ("kind", "mode")}, "loss": np.asarray(r["loss"]).tolist(),
             "accuracy": np.asarray(r["accuracy"]).tolist(), "baseline_loss": r["baseline_loss"].tolist(),
             "needed": _needed_positions(r, n)}
            for r in pos_results
        ]

        _log("attention", progress)
        att_q = addition.random_operands(rng, sizes.n_attention, n)
        pats = attention.mean_patterns(model, *att_q, n)
        reads = attention.head_reads(pats, n)
        figs["attention"] = figures.attention(pats, n, figdir / "attention.png",
                                              f"{name}: mean attention from each answer-predicting position").name
        summary["attention"] = reads

        _log("head ablation", progress)
        hrows = ablation.head_ablation(model, cat_sets, n, ref)
        figs["heads"] = figures.head_ablation(hrows, list(cat_sets), figdir / "head_ablation.png",
                                              f"{name}: loss per category with one head ablated").name
        summary["head_ablation"] = hrows
        hp = ablation.head_position_ablation(model, *abl_q, n, ref)
        summary["head_position_ablation"] = {"loss": hp["loss"].tolist(), "positions": hp["positions"]}

        _log("probes", progress)
        ptr = addition.random_operands(rng, sizes.n_probe_train, n)
        pte = addition.random_operands(rng, sizes.n_probe_test, n)
        prows = probes.probe_heads(model, ptr, pte, n)
        figs["probes"] = figures.probes(prows, n, model.cfg.n_layers, model.cfg.n_heads, figdir / "probes.png",
                                        f"{name}: probe skill (held out) per head and answer digit").name
        summary["probes"] = prows
        carried = probes.carried(prows)
        summary["head_roles"] = head_roles(reads, n, carried)

        _log(f"model answers on {sizes.n_random} random questions", progress)
        fa_q = addition.random_operands(rng, sizes.n_random, n)
        ce, pred = failures.model_answers(model, *fa_q, n, progress=progress)
        fa = failures.failure_analysis(model, *fa_q, n, ce=ce, pred=pred)
        summary["failures"] = fa
        summary["algorithms"] = failures.compare_algorithms(pred, *fa_q, n)
        summary["card_metrics"] = card.get("metrics")
        summary["card_facts"] = _card_facts(card)
        derived_sections(summary, others)
        summary["figures"] = figs
        summary["seconds"] = round(time.perf_counter() - t_start, 1)
        (tmp / "report.md").write_text(render_markdown(summary))
        (tmp / "summary.json").write_text(json.dumps(summary, indent=1, default=_json_default) + "\n")
    summary["out"] = str(out)
    return summary


def _card_facts(card: dict[str, Any]) -> dict[str, Any]:
    from assay.addition.card import training_facts

    f = training_facts(card)
    return {k: f.get(k) for k in ("n_parameters", "steps", "questions_per_second", "wall_seconds", "time_to_loss")}


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


NEEDED_INCREASE = 0.1  # nats


def _needed_positions(r: dict[str, Any], n: int, increase: float = NEEDED_INCREASE) -> dict[str, list[str]]:
    """Return, per answer digit, the positions whose ablation raises its loss by at least ``increase`` nats."""
    loss = np.asarray(r["loss"])
    base = np.asarray(r["baseline_loss"])
    out = {}
    for i in range(n + 1):
        out[f"A{n - i}"] = [f"{p}:{attention.position_label(p, n)}" for p in range(loss.shape[0])
                            if loss[p, i] >= base[i] + increase]
    return out


def render_markdown(s: dict[str, Any]) -> str:
    """Return the markdown report of an analysis summary."""
    n = s["n_digits"]
    name = s["name"]
    fa = s["failures"]
    summ = fa["summary"]
    lines = [f"# Addition analysis: {name}", "",
             f"Model `{s['model']}`: {s['config']['n_layers']} layer(s), {s['config']['n_heads']} heads, "
             f"d_model {s['config']['d_model']}; {n}-digit operands. Seed {s['seed']}; sizes: "
             + ", ".join(f"{k} {v}" for k, v in s["sizes"].items()) + f". Took {s['seconds']} s.", ""]

    lines += ["## Accuracy on uniform random questions", "",
              f"{summ['n']:,} uniform random questions: accuracy {_pct(summ['accuracy'])} "
              f"(95% Wilson interval {_pct(summ['ci95'][0])} – {_pct(summ['ci95'][1])}), mean loss per answer "
              f"digit {_fmt(summ['loss'])}.", "",
              _md_table(["category", "n", "correct", "accuracy", "95% CI", "loss"],
                        [[c, v["n"], v["correct"], _pct(v["accuracy"]), f"{_pct(v['ci95'][0])} – {_pct(v['ci95'][1])}",
                          v["loss"]] for c, v in summ["by_category"].items()]), ""]

    ph = s["phases"]
    phase_rows = [[k, v.get("start"), v.get("end"), v.get("steepest_step"), v.get("half_step"), v.get("below_0.1")]
                  for k, v in ph.items() if isinstance(v, dict) and v]
    lines += ["## Training phases", "",
              f"Source: {ph['source']}. `steepest drop`: the middle of the 3 records (30 steps) over which the "
              "smoothed loss falls most (the phase transition); `half-way`: the first step at which the "
              "smoothed loss is below the geometric midpoint of its start and end values.", "",
              _md_table(["curve", "start loss", "end loss", "steepest drop at step", "half-way step",
                         "first step < 0.1"], phase_rows), ""]
    if "curves" in s["figures"]:
        lines += [f"![loss curves](figures/{s['figures']['curves']})", ""]

    lines += ["## Position ablation", "",
              "Input ablation replaces the residual stream entering layer 0 at one position (token + position "
              "embedding); computation ablation replaces every attention and MLP output at one position. Listed: "
              f"positions whose ablation raises a digit's loss by at least {NEEDED_INCREASE} nats.", ""]
    for r in s["position_ablation"]:
        lines += [f"**{r['kind']} / {r['mode']}**", "",
                  _md_table(["digit", "positions it needs"],
                            [[d, ", ".join(p) or "none"] for d, p in r["needed"].items()]),
                  ""]
    lines += [f"![position ablation](figures/{s['figures']['positions']})", ""]

    lines += ["## Attention: which digit pair each head reads", "",
              "Mean attention over uniform questions from the position that predicts each answer digit; "
              "column weight = attention on D_c + D'_c. Offset = answer column − column read.", ""]
    header = ["head"] + [f"A{n - i}" for i in range(n + 1)]
    rows = []
    for role in s["head_roles"]:
        row = [f"L{role['layer']}H{role['head']}"]
        for i in range(n + 1):
            d = f"A{n - i}"
            r = next(x for x in s["attention"]
                     if (x["layer"], x["head"], x["digit"]) == (role["layer"], role["head"], d))
            if r["columns"]:
                row.append(", ".join(f"col {c} ({w:.2f})" for c, w in list(r["columns"].items())[:2])
                           + f"; offset {role['offsets'][d]}")
            else:
                row.append(f"no column >= 0.1 (operands get {r['operand_weight']:.2f} in all)")
        rows.append(row)
    lines += [_md_table(header, rows), "", f"![attention](figures/{s['figures']['attention']})", ""]

    lines += ["## Head ablation per category", "", "Loss (and exact-match accuracy) on questions of each category "
              "with one head's output (hook_z) zeroed or replaced by its mean at every position.", ""]
    cats = list(dict.fromkeys(r["category"] for r in s["head_ablation"]))
    configs = list(dict.fromkeys((r["layer"], r["head"], r["mode"]) for r in s["head_ablation"]))
    rows = []
    for key in configs:
        label = "baseline" if key[0] is None else f"L{key[0]}H{key[1]} {key[2]}"
        row: list[Any] = [label]
        for c in cats:
            r = next(x for x in s["head_ablation"] if (x["layer"], x["head"], x["mode"]) == key and x["category"] == c)
            row.append(f"{r['loss']:.3g} ({100 * r['accuracy']:.1f}%)")
        rows.append(row)
    lines += [_md_table(["ablation"] + cats, rows), "", f"![head ablation](figures/{s['figures']['heads']})", ""]
    if s.get("ablation_roles"):
        lines += [f"Roles from head ablation (mean): d = increase of the loss on each category; base add when "
                  f"d >= {ROLE_NEEDED} on every category, carry when BA questions lose less than {ROLE_NEEDED} and "
                  f"a carry category at least twice as much (and >= {ROLE_NEEDED}), not needed when every "
                  f"d < {ROLE_NEGLIGIBLE}.", ""]
        for r in s["ablation_roles"]:
            ds = ", ".join(f"{c} {v:+.3g}" for c, v in r["loss_increase"].items())
            lines.append(f"- L{r['layer']}H{r['head']}: {r['role']} (d: {ds}).")
        lines.append("")

    hp = np.asarray(s["head_position_ablation"]["loss"])  # [layer, head, position, digit]
    rows = []
    for layer in range(hp.shape[0]):
        for head in range(hp.shape[1]):
            row = [f"L{layer}H{head}"]
            for i in range(n + 1):
                row.append(f"{hp[layer, head, i, i]:.3g}")
            rows.append(row)
    lines += ["Mean-ablating one head at one position only (the position that predicts the digit): that digit's loss.",
              "", _md_table(["head"] + [f"P{2 * n + 1 + i} → A{n - i}" for i in range(n + 1)], rows), ""]

    lines += ["## Probes: which sub-results each head's output carries", "",
              "Probes on each head's z at each answer-predicting position, trained and scored on disjoint uniform "
              "questions (see docs/addition.md). Listed: sub-results whose nonlinear (random-features) probe has "
              f"held-out skill >= {probes.CARRY_SKILL} (skill = (acc − majority) / (1 − majority)); marked (lin): "
              "those a linear probe also reads at that skill.", ""]
    rows = []
    lin = {(r["layer"], r["head"], r["digit"], f"{r['target']}{r['column']}") for r in s["probes"]
           if r["skill_linear"] >= probes.CARRY_SKILL}
    for role in s["head_roles"]:
        row = [f"L{role['layer']}H{role['head']}"]
        for i in range(n + 1):
            d = f"A{n - i}"
            items = [x + (" (lin)" if (role["layer"], role["head"], d, x) in lin else "") for x in role["carried"][d]]
            row.append(", ".join(items) or "—")
        rows.append(row)
    lines += [_md_table(["head"] + [f"A{n - i}" for i in range(n + 1)], rows), "",
              f"![probes](figures/{s['figures']['probes']})", ""]
    lines += [f"Roles (from attention offsets on A1..A{n - 1}):", ""]
    for role in s["head_roles"]:
        lines.append(f"- L{role['layer']}H{role['head']}: offset {role['offset']} on {role['consistent']}/{role['of']} "
                     f"digits — {role['role']}.")
    lines.append("")

    rule = fa["rule"]
    lines += ["## Failures", "",
              f"{fa['n']:,} uniform random questions; {fa['n_wrong']:,} wrong answers "
              f"({_pct(fa['n_wrong'] / fa['n'])}). Cascades are {_pct(fa['cascade_rate'])} of the questions and "
              f"{_pct(fa['cascade_share'])} of the wrong answers.", "",
              _md_table(["category", "wrong"], [[c, v] for c, v in fa["wrong_by_category"].items()]), "",
              _md_table(["longest sum-9 carry run", "wrong"], [[k, v] for k, v in fa["wrong_by_us9_run"].items()]), "",
              _md_table(["answer digit", "wrong"], [[k, v] for k, v in fa["wrong_by_digit"].items()]), "",
              "Wrong digits by kind (false carry: the model wrote BA + 1 with no carry due; missed carry: it wrote "
              "BA while a carry was due, by how far the carry came):", "",
              _md_table(["kind", "wrong digits"], [[k, v] for k, v in fa["digit_errors"]["by_kind"].items()]), "",
              "### The two-column look-back rule against the model", "",
              "A_n = (D_n + D'_n + MC1_{n-1} + [not MC1_{n-1} and MS9_{n-1} and MC1_{n-2}]) mod 10. "
              f"On these questions the rule is wrong exactly on the cascades: {rule['rule_wrong_equals_cascade']}.", "",
              _md_table(["questions", "n", "model answer = rule answer"],
                        [["all", rule["all"]["n"], _pct(rule["all"]["rate"])],
                         ["model wrong", rule["model_wrong"]["n"], _pct(rule["model_wrong"]["rate"])],
                         ["cascades", rule["cascade"]["n"], _pct(rule["cascade"]["rate"])],
                         ["not cascades", rule["not_cascade"]["n"], _pct(rule["not_cascade"]["rate"])]]), "",
              f"Model wrong and rule wrong: {rule['model_wrong_and_rule_wrong']}; model wrong, rule right: "
              f"{rule['model_wrong_rule_right']}; model right, rule wrong: {rule['model_right_rule_wrong']}.", ""]
    if fa["examples"]:
        lines += ["Some wrong answers:", "",
                  _md_table(["question", "answer", "model", "rule", "category", "sum-9 run", "wrong digits"],
                            [[e["question"], e["answer"], e["model"], e["rule"], e["category"], e["us9_run"],
                              " ".join(e["wrong_digits"])] for e in fa["examples"][:15]]), ""]

    lines += ["## Declared algorithm vs the model, question by question", "",
              "Declared algorithm: per column BA, MC1, MS9, combined by the two-column look-back rule. Agreement = "
              "share of questions on which the algorithm's whole answer equals the model's.", "",
              _md_table(["algorithm", "agrees (questions)", "agrees (digits)", "its own accuracy"]
                        + [f"agrees on {c}" for c in addition.CATEGORIES],
                        [[r["algorithm"], _pct(r["question_agreement"]), _pct(r["digit_agreement"]),
                          _pct(r["algorithm_accuracy"])] + [_pct(r["by_category"][c]) for c in addition.CATEGORIES]
                         for r in s["algorithms"]]), ""]
    if s.get("side_by_side"):
        lines += render_side_by_side(s["side_by_side"])
    return "\n".join(lines) + "\n"


__all__ = ["QUICK", "Sizes", "ablation_roles", "analyze", "category_sets", "derived_sections", "head_roles",
           "phase_steps", "read_summary", "render_markdown", "render_side_by_side", "rerender", "rules",
           "side_by_side_entry"]
