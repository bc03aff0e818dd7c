"""``assay lipschitz sweep``: the paper's experiments, reproduced and corrected.

For each configuration (model, layer, head, mask) it measures

1. **text**: the local constant ||J(X)||_2 on windows of real text, n = 2, 4, 8, ...;
2. **adversarial**: the best lower bound on sup_{X in K^n} ||J(X)|| (multi-seed projected ascent),
   the paper's eigenvector construction on its own (what the paper's code evaluated), and the proved
   upper bounds, at the radius R of the real inputs (and at the paper's R for the paper's two rows);
3. **radius**: for one head, lower and upper bounds against n for several R: the sqrt(n) regime at
   large R, the n-independent plateau at small R;

and fits C n^alpha (least squares in log-log, 95% confidence intervals from Student's t), draws PNG
figures and writes ``results.json`` and ``index.html`` (with the table beside the paper's numbers).

The map is the head acting on what the attention reads (``layernorm=False``: the ball of radius R),
which is the paper's f; the radius study repeats one head on the LayerNorm set too.

Configurations are strings ``MODEL:LAYER[:HEAD][:masked|unmasked]`` (HEAD ``all`` = whole sublayer),
e.g. ``minilm:0:0:unmasked``; ``ours`` stands for our trained causal LM (``lm-4l``, else
``overwhelm-1l``, else skipped).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from assay.errors import BadInput
from assay.lipschitz.bounds import map_constants, upper_bounds
from assay.lipschitz.jacobian import jacobian_norm
from assay.lipschitz.lower import construction_seeds, lower_bound
from assay.lipschitz.maps import attention_inputs, attention_map, check_model
from assay.lipschitz.models import load_model
from assay.lipschitz.sets import TokenSet
from assay.lipschitz.text import source_text, text_windows

# The paper's numbers (PAPERS.md section 2), shown beside ours.
PAPER = {
    "text_alpha": "0.24-0.26 (BERT, GPT-2 pretrained; AG News / Alice); GPT-2 layer 6: 0.51",
    "bert_adv": "BERT L0h0, R = 15.5: C = 4.39 (C sqrt(n))",
    "gpt2_adv": "GPT-2 random L6h0, R = 100: C = 0.92 (C sqrt(n))",
}

DEFAULT_CONFIGS = ("minilm:0:0:unmasked", "minilm:0:0:masked", "gpt2-random:6:0", "ours:0:0")
PAPER_RADIUS = {"minilm": 15.5, "gpt2-random": 100.0}  # the paper's R for BERT L0h0 / GPT-2 random L6h0
OURS = ("lm-4l", "overwhelm-1l")


@dataclass
class SweepConfig:
    """One map to sweep: model name, layer, head (None = all heads), mask (None = the model's own)."""

    model: str
    layer: int
    head: int | None
    masked: bool | None
    label: str = ""

    def key(self) -> str:
        h = "all" if self.head is None else f"H{self.head}"
        m = "" if self.masked is None else (" masked" if self.masked else " unmasked")
        return f"{self.label or self.model} L{self.layer}{h}{m}"


def parse_config(spec: str) -> SweepConfig:
    """Parse ``MODEL:LAYER[:HEAD][:masked|unmasked]`` (HEAD may be ``all``); BadInput if malformed."""
    parts = spec.strip().split(":")
    masked = None
    if parts and parts[-1] in ("masked", "unmasked"):
        masked = parts.pop() == "masked"
    head: int | None = 0
    try:
        if len(parts) >= 3 and parts[-1] == "all":
            head = None
            parts.pop()
        elif len(parts) >= 3:
            head = int(parts.pop())
        layer = int(parts.pop())
    except (ValueError, IndexError):
        raise BadInput(f"--models: {spec!r} is not MODEL:LAYER[:HEAD][:masked|unmasked]") from None
    model = ":".join(parts)
    if not model:
        raise BadInput(f"--models: {spec!r} names no model")
    return SweepConfig(model, layer, head, masked)


def _resolve_ours() -> str | None:
    from assay.model import load_config, shipped_models

    names = shipped_models()
    for name in OURS:
        if name in names:
            cfg = load_config(name)
            if cfg.attention == "softmax":
                return name
    return None


def fit_power_law(ns: list[int] | np.ndarray, ys: list[float] | np.ndarray) -> dict[str, Any]:
    """Return the least-squares fit y = C n^alpha in log-log coordinates with 95% confidence intervals.

    Keys: alpha, alpha_ci (lo, hi), C, C_ci, C_sqrt (C with alpha fixed at 1/2: the geometric mean of
    y / sqrt(n)), points. Intervals use Student's t with (points - 2) degrees of freedom and assume
    independent log-normal errors; with 2 points they are None.
    """
    from scipy import stats

    x = np.log(np.asarray(ns, dtype=float))
    y = np.log(np.asarray(ys, dtype=float))
    m = len(x)
    out: dict[str, Any] = {"points": m, "C_sqrt": float(np.exp(np.mean(y - 0.5 * x))) if m else None}
    if m < 2 or np.ptp(x) == 0:
        out.update(alpha=None, alpha_ci=None, C=None, C_ci=None)
        return out
    X = np.vstack([np.ones(m), x]).T
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    b0, b1 = float(coef[0]), float(coef[1])
    out.update(alpha=b1, C=float(np.exp(b0)), alpha_ci=None, C_ci=None)
    if m > 2:
        resid = y - X @ coef
        s2 = float(resid @ resid) / (m - 2)
        cov = s2 * np.linalg.inv(X.T @ X)
        tq = float(stats.t.ppf(0.975, m - 2))
        se0, se1 = math.sqrt(cov[0, 0]), math.sqrt(cov[1, 1])
        out["alpha_ci"] = (b1 - tq * se1, b1 + tq * se1)
        out["C_ci"] = (math.exp(b0 - tq * se0), math.exp(b0 + tq * se0))
    return out


def _log(msg: str) -> None:
    print(f"[lipschitz sweep] {msg}", file=sys.stderr, flush=True)


@dataclass
class Curve:
    """One curve: a list of rows (dicts) for one configuration and one experiment."""

    config: str
    experiment: str
    radius: float | None
    set_kind: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    fit: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def text_curve(model: Any, cfg: SweepConfig, ns: list[int], windows: int, text: str) -> Curve:
    """Return ||J(X)||_2 on real text windows for each n (mean, min, max over windows)."""
    amap = attention_map(model, cfg.layer, head=cfg.head, causal=cfg.masked, layernorm=False)
    curve = Curve(cfg.key(), "text", None, "ball")
    data_r = 0.0
    for n in ns:
        vals, res = [], []
        for toks in text_windows(model, n, windows, text):
            X = attention_inputs(model, cfg.layer, toks, layernorm=False)
            data_r = max(data_r, float(X.norm(dim=-1).max()))
            est = jacobian_norm(amap, X, tol=1e-8, max_iter=1000)
            vals.append(est.value)
            res.append(est.residual)
        curve.rows.append({"n": n, "mean": float(np.mean(vals)), "min": float(np.min(vals)),
                           "max": float(np.max(vals)), "windows": len(vals), "max_residual": float(np.max(res))})
        _log(f"text {cfg.key()} n={n}: {np.mean(vals):.4g}")
    curve.radius = data_r
    curve.fit = fit_power_law([r["n"] for r in curve.rows], [r["mean"] for r in curve.rows])
    return curve


def adversarial_curve(
    model: Any, cfg: SweepConfig, ns: list[int], R: float, steps: int, layernorm: bool = False, seed: int = 0,
    experiment: str = "adversarial", text: str | None = None,
) -> Curve:
    """Return, for each n: the best lower bound (ascent; seeds include ``text`` when given), the paper's
    construction alone, and the proved bounds."""
    amap = attention_map(model, cfg.layer, head=cfg.head, causal=cfg.masked, layernorm=layernorm)
    tset = TokenSet("layernorm" if layernorm else "ball", R, amap.d_model)
    curve = Curve(cfg.key(), experiment, R, tset.kind)
    mc = map_constants(amap, max_offset=min(max(ns), 64))
    for n in ns:
        t0 = time.perf_counter()
        text_X = None
        if text is not None:  # a real-text seed, projected onto the set
            try:
                toks = text_windows(model, n, 1, text)[0]
                text_X = tset.project(attention_inputs(model, cfg.layer, toks, layernorm=layernorm))
            except BadInput:
                pass
        lb = lower_bound(amap, tset, n, text=text_X, steps=steps, seed=seed)
        seeds = dict(construction_seeds(amap, tset, n, heads=1))
        key = next((k for k in seeds if k.startswith("eigen+")), None)
        construction = jacobian_norm(amap, seeds[key], tol=1e-8, max_iter=500).value if key else None
        ub = upper_bounds(amap, tset, n, mc)
        curve.rows.append({
            "n": n, "lower": lb.value, "lower_seed": lb.seed, "construction": construction, "upper": ub.upper,
            "sqrt_n": ub.sqrt_n, "mean_field_limit": ub.mean_field_limit, "recalled_sqrt_n": ub.recalled_sqrt_n,
            "ratio": ub.upper / lb.value if lb.value > 0 else None, "seconds": round(time.perf_counter() - t0, 2),
        })  # fmt: skip
        _log(f"{experiment} {cfg.key()} R={R:.4g} n={n}: lower {lb.value:.4g} ({lb.seed}), upper {ub.upper:.4g}")
    curve.fit = fit_power_law([r["n"] for r in curve.rows], [r["lower"] for r in curve.rows])
    tail = [r for r in curve.rows if r["n"] >= 8]
    if len(tail) >= 3:  # the asymptotic exponent: constructions grow like sqrt(n - 2), steeper at small n
        curve.fit["tail"] = fit_power_law([r["n"] for r in tail], [r["lower"] for r in tail])
    cons = [(r["n"], r["construction"]) for r in curve.rows if r["construction"]]
    if len(cons) >= 2:
        curve.fit["construction"] = fit_power_law([c[0] for c in cons], [c[1] for c in cons])
    return curve


def _plan(quick: bool) -> dict[str, Any]:
    if quick:
        return {"text_ns": [2, 4, 8, 16, 32, 64], "windows": 2, "adv_ns": [2, 4, 8, 16, 32], "steps": 12,
                "radius_ns": [2, 4, 8, 16, 32], "radius_steps": 10, "radii": (1.0, 15.5)}  # fmt: skip
    return {"text_ns": [2, 4, 8, 16, 32, 64, 128, 256, 512], "windows": 4, "adv_ns": [2, 4, 8, 16, 32, 64, 128],
            "steps": 30, "radius_ns": [2, 4, 8, 16, 32, 64, 128], "radius_steps": 20,
            "radii": (0.5, 1.0, 2.0, 4.0, 8.0, 15.5, 30.0)}  # fmt: skip


def run_sweep(out: str | Path, quick: bool = False, configs: str | None = None, seed: int = 0,
              plan: dict[str, Any] | None = None, max_n: int | None = None, steps: int | None = None) -> dict[str, Any]:
    """Run the sweep, write ``out/`` (results.json, figures, index.html) atomically; return a summary.

    ``max_n`` caps every n grid; ``steps`` overrides the plan's ascent steps.

    The summary has ``report`` (index.html), ``results`` (results.json), ``fits`` ({curve: fit}) and
    ``skipped`` (configurations that could not run, with the reason).
    """
    from assay.fileutil import atomic_directory, check_output_dir

    check_output_dir(out, "results.json", "sweep report")  # before the slow part
    t0 = time.perf_counter()
    plan = dict(plan or _plan(quick))
    if max_n is not None:
        for k in ("text_ns", "adv_ns", "radius_ns"):
            plan[k] = [n for n in plan[k] if n <= max_n] or [max_n]
    if steps is not None:
        plan["steps"] = plan["radius_steps"] = steps
    specs = [s for s in (configs.split(",") if configs else DEFAULT_CONFIGS) if s.strip()]
    cfgs, skipped = [], []
    for spec in specs:
        cfg = parse_config(spec)
        if cfg.model == "ours":
            name = _resolve_ours()
            if name is None:
                why = f"no trained causal model of ours in models/ ({', '.join(OURS)})"
                skipped.append({"config": spec, "reason": why})
                continue
            cfg.model = name
        cfgs.append(cfg)
    text, text_source = source_text()
    curves: list[Curve] = []
    models: dict[str, Any] = {}
    for cfg in cfgs:
        if cfg.model not in models:
            _log(f"loading {cfg.model}")
            models[cfg.model] = load_model(cfg.model)
        model = models[cfg.model]
        check_model(model, cfg.layer, cfg.head)
        cfg.label = model.cfg.model_name if cfg.model not in ("minilm", "gpt2-random") else cfg.model
        ns = [n for n in plan["text_ns"] if n <= model.cfg.n_ctx]
        try:
            tc = text_curve(model, cfg, ns, plan["windows"], text)
        except BadInput as e:  # text too short for the largest n: keep the n that fit
            ns = [n for n in ns if n <= 64]
            tc = text_curve(model, cfg, ns, plan["windows"], text)
            tc.note = str(e)
        curves.append(tc)
        adv_ns = [n for n in plan["adv_ns"] if n <= model.cfg.n_ctx]
        radii = [tc.radius]
        if cfg.model in PAPER_RADIUS and not quick or cfg.model == "gpt2-random":
            radii.append(PAPER_RADIUS[cfg.model])
        if cfg.model == "gpt2-random" and quick:
            radii = [PAPER_RADIUS[cfg.model]]
        for R in radii:
            curves.append(adversarial_curve(model, cfg, adv_ns, R, plan["steps"], seed=seed, text=text))
    # The radius study: the first configuration's head, on the ball and on the LayerNorm set.
    if cfgs:
        cfg = cfgs[0]
        model = models[cfg.model]
        rn = [n for n in plan["radius_ns"] if n <= model.cfg.n_ctx]
        for R in plan["radii"]:
            curves.append(adversarial_curve(model, cfg, rn, R, plan["radius_steps"], seed=seed, experiment="radius"))
        from assay.lipschitz.maps import front_layernorm

        if front_layernorm(model, cfg.layer) is not None:
            d = model.cfg.d_model
            curves.append(adversarial_curve(model, cfg, rn, math.sqrt(d), plan["radius_steps"], layernorm=True,
                                            seed=seed, experiment="layernorm-set"))
    results = {
        "plan": plan, "text_source": text_source, "skipped": skipped, "paper": PAPER,
        "curves": [asdict(c) for c in curves], "seconds": round(time.perf_counter() - t0, 1),
    }  # fmt: skip
    out = Path(out)
    with atomic_directory(out) as tmp:
        (tmp / "figures").mkdir()
        figs = make_figures(curves, tmp / "figures")
        (tmp / "results.json").write_text(json.dumps(results, indent=1, default=_json) + "\n")
        (tmp / "index.html").write_text(report_html(results, curves, figs, tmp))
    return {
        "report": str(out / "index.html"), "results": str(out / "results.json"), "skipped": skipped,
        "fits": {f"{c.experiment}: {c.config} R={c.radius:.4g}": _fit_summary(c.fit) for c in curves},
        "seconds": round(time.perf_counter() - t0, 1),
    }  # fmt: skip


def _json(o: Any) -> Any:
    if isinstance(o, (np.generic,)):
        return o.item()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    return str(o)


def _fit_summary(fit: dict[str, Any]) -> dict[str, Any]:
    out = {k: fit.get(k) for k in ("alpha", "alpha_ci", "C", "C_sqrt")}
    if fit.get("tail"):
        out["alpha_tail"] = fit["tail"].get("alpha")
    return out


def _fmt_ci(v: float | None, ci: tuple[float, float] | None, digits: int = 2) -> str:
    if v is None:
        return "—"
    s = f"{v:.{digits}f}"
    return s + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")


def results_table(curves: list[Curve]) -> tuple[list[str], list[list[str]]]:
    """Return (header, rows) of the fitted-exponent table, the paper's number beside each row."""
    header = ["experiment", "map", "R", "alpha [95% CI]", "alpha, n >= 8", "C [95% CI]", "C (alpha = 1/2)",
              "paper"]
    rows = []
    for c in curves:
        if c.experiment not in ("text", "adversarial"):
            continue
        paper = ""
        if c.experiment == "text":
            paper = "alpha " + PAPER["text_alpha"]
        elif "minilm" in c.config and "unmasked" in c.config:
            paper = PAPER["bert_adv"] + " (BERT-base, not MiniLM)"
        elif "gpt2-random" in c.config:
            paper = PAPER["gpt2_adv"]
        f = c.fit
        tail = f.get("tail") or {}
        rows.append([c.experiment, c.config, f"{c.radius:.4g}" if c.radius else "—",
                     _fmt_ci(f.get("alpha"), f.get("alpha_ci")), _fmt_ci(tail.get("alpha"), tail.get("alpha_ci")),
                     _fmt_ci(f.get("C"), f.get("C_ci"), 3),
                     f"{f['C_sqrt']:.3g}" if f.get("C_sqrt") else "—", paper])  # fmt: skip
        cf = f.get("construction")
        if cf:
            rows.append([c.experiment + " (paper's construction only)", c.config, f"{c.radius:.4g}",
                         _fmt_ci(cf.get("alpha"), cf.get("alpha_ci")), "", _fmt_ci(cf.get("C"), cf.get("C_ci"), 3),
                         f"{cf['C_sqrt']:.3g}" if cf.get("C_sqrt") else "—", ""])  # fmt: skip
    return header, rows


def make_figures(curves: list[Curve], fig_dir: Path) -> dict[str, Path]:
    """Draw the sweep's PNG figures into ``fig_dir``; return {name: path}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs: dict[str, Path] = {}
    text = [c for c in curves if c.experiment == "text"]
    adv = [c for c in curves if c.experiment == "adversarial"]
    if text or adv:
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for i, c in enumerate(text):
            ns = [r["n"] for r in c.rows]
            ax.plot(ns, [r["mean"] for r in c.rows], "o-", color=f"C{i}", label=f"text: {c.config}")
            ax.fill_between(ns, [r["min"] for r in c.rows], [r["max"] for r in c.rows], color=f"C{i}", alpha=0.15)
            match = [a for a in adv if a.config == c.config]
            for a in match[:1]:
                ax.plot([r["n"] for r in a.rows], [r["lower"] for r in a.rows], "s--", color=f"C{i}",
                        label=f"adversarial R={a.radius:.3g}: alpha={a.fit.get('alpha') or 0:.2f}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("n (tokens)")
        ax.set_ylabel("||J||_2")
        ax.set_title("Lipschitz constant of one head: real text vs adversarial inputs", fontsize=9)
        ax.legend(fontsize=6)
        fig.tight_layout()
        figs["growth"] = fig_dir / "lipschitz-growth.png"
        fig.savefig(figs["growth"], dpi=120)
        plt.close(fig)
    if adv:
        c = adv[0]
        figs["bounds"] = bounds_figure(c, fig_dir / "lipschitz-bounds.png")
    rad = [c for c in curves if c.experiment in ("radius", "layernorm-set")]
    if rad:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
        for i, c in enumerate(rad):
            ns = [r["n"] for r in c.rows]
            lbl = f"R={c.radius:.3g}" + (" (LN set)" if c.set_kind == "layernorm" else "")
            lows = [r["lower"] for r in c.rows]
            axes[0].plot(ns, [v / lows[0] for v in lows], "o-", color=f"C{i % 10}", label=lbl)
            axes[1].plot(ns, [r["upper"] for r in c.rows], "o-", color=f"C{i % 10}", label=lbl)
        ref = [r["n"] for r in rad[0].rows]
        axes[0].plot(ref, [math.sqrt(n / ref[0]) for n in ref], "k:", label="sqrt(n) slope")
        for ax, t in zip(axes, ("best lower bound / its value at n=2", "proved upper bound"), strict=True):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("n")
            ax.set_title(t, fontsize=9)
            ax.legend(fontsize=6)
        fig.suptitle(f"{rad[0].config}: sqrt(n) growth at large R, plateau at small R", fontsize=9)
        fig.tight_layout()
        figs["radius"] = fig_dir / "lipschitz-radius.png"
        fig.savefig(figs["radius"], dpi=120)
        plt.close(fig)
    return figs


def bounds_figure(c: Curve, path: Path) -> Path:
    """Draw lower vs proved upper bounds against n for one adversarial curve; return the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["n"] for r in c.rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.plot(ns, [r["lower"] for r in c.rows], "o-", label="best lower bound (ascent)")
    if all(r.get("construction") for r in c.rows):
        ax.plot(ns, [r["construction"] for r in c.rows], "x:", label="paper's eigenvector construction")
    ax.plot(ns, [r["upper"] for r in c.rows], "s-", label="proved upper bound (score-gap)")
    ax.plot(ns, [r["sqrt_n"] for r in c.rows], "--", label="proved sqrt(n) bound")
    mf = c.rows[0]["mean_field_limit"]
    if mf < 1e3 * max(r["sqrt_n"] for r in c.rows):
        ax.axhline(mf, color="gray", ls="-.", label="n-independent bound")
    if all(r.get("recalled_sqrt_n") for r in c.rows):
        ax.plot(ns, [r["recalled_sqrt_n"] for r in c.rows], ":", color="gray", label="recalled paper bound")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("n (tokens)")
    ax.set_ylabel("sup ||J||_2 over K^n")
    ax.set_title(f"{c.config}, {c.set_kind} R={c.radius:.3g}: lower vs upper", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def report_html(results: dict[str, Any], curves: list[Curve], figs: dict[str, Path], root: Path) -> str:
    """Return the sweep's index.html."""
    from assay.report.html import esc, figure, page, table

    header, rows = results_table(curves)
    parts = [f"<p>Text: {esc(results['text_source'])}. Seconds: {results['seconds']}.</p>", table(header, rows)]
    for s in results["skipped"]:
        parts.append(f"<p class='note'>Skipped {esc(s['config'])}: {esc(s['reason'])}</p>")
    tight = [[c.config, f"{c.radius:.4g}", c.set_kind] + [f"{r['ratio']:.3g}" for r in c.rows]
             for c in curves if c.experiment in ("adversarial", "radius", "layernorm-set")]  # fmt: skip
    if tight:
        ns = max((c for c in curves if c.experiment in ("adversarial", "radius")), key=lambda c: len(c.rows)).rows
        parts.append("<h3>Tightness: proved upper / best lower bound</h3>")
        parts.append(table(["map", "R", "set"] + [f"n={r['n']}" for r in ns], tight))
    for name, cap in (("growth", "real text vs adversarial growth"), ("bounds", "lower vs upper bound against n"),
                      ("radius", "varying R: sqrt(n) regime and plateau")):  # fmt: skip
        if name in figs:
            parts.append(figure(figs[name], root, cap))
    return page("assay lipschitz sweep", "\n".join(parts))
