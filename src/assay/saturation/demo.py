"""The demo's section for paper 4: constructions, bits against n, circuits against n, saturation meter.

Everything is computed by this run: the constructions are checked exactly (every string up to length
12, two random strings of length 1000), their memory vectors profiled up to n = 10^4 (the
counter-construction up to 10^3) and compiled to threshold circuits for n = 4..64; a small model is
trained with the project's training loop while its parameter norm and saturation are recorded, then
metered and profiled exactly; shipped softmax models are metered too.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

from assay.report.html import esc, figure, table

BITS_N = 10_000
COUNTER_N = 1_000
CIRCUIT_NS = (4, 8, 16, 32, 64)
TRAIN_STEPS = 60
EXHAUSTIVE = 12
RANDOM_LEN = 1000
MODEL_BITS_N = 200


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bits_figure(profiles: dict[str, dict[str, Any]], path: Path) -> Path:
    """Write the bits-vs-n figure (constructions with their log fits; the counter on its own axis)."""
    plt = _plt()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for lang, prof in profiles.items():
        ns = [n for n, _ in prof["points"]]
        bs = [b for _, b in prof["points"]]
        target = ax2 if lang == "counter" else ax
        target.plot(ns, bs, "o", ms=3, label=lang)
        f = prof["linear_fit"] if lang == "counter" else prof["fit"]
        xs = [n for n in ns if n >= 2]
        ys = [f["a"] * (n if lang == "counter" else math.log2(n)) + f["b"] for n in xs]
        target.plot(xs, ys, "-", lw=1, color=target.lines[-1].get_color())
    ax.set_xscale("log")
    ax.set_xlabel("n (input length)")
    ax.set_ylabel("bits of the largest memory vector")
    ax.set_title("size-preserving constructions: a log2 n + b")
    ax.legend(fontsize=8)
    ax2.set_xlabel("n")
    ax2.set_title("counter-construction (2^-(i+1) positions): linear")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def circuit_figure(rows: list[dict[str, Any]], path: Path) -> Path:
    """Write the circuit depth and size against n figure."""
    plt = _plt()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for lang in sorted({r["language"] for r in rows}):
        rs = [r for r in rows if r["language"] == lang]
        ax.plot([r["n"] for r in rs], [r["depth"] for r in rs], "o-", label=lang)
        ax2.plot([r["n"] for r in rs], [r["size"] for r in rs], "o-", label=f"{lang} gates")
        ax2.plot([r["n"] for r in rs], [r["wires"] for r in rs], "x--", label=f"{lang} wires")
    ax.set_xscale("log", base=2)
    ax.set_ylim(0, max(r["depth"] for r in rows) + 1)
    ax.set_xlabel("n")
    ax.set_ylabel("depth")
    ax.set_title("depth: constant in n")
    ax.legend(fontsize=8)
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    ax2.set_xlabel("n")
    ax2.set_title("size: polynomial in n")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def saturation_figure(metered: dict[str, dict[str, Any]], run: dict[str, Any], path: Path) -> Path:
    """Write the per-layer saturation figure: cosine against c per (model, layer), cosine at c = 1 per
    layer, and parameter norm / cosine against the training step."""
    plt = _plt()
    fig, (ax, ax1, ax2) = plt.subplots(1, 3, figsize=(13, 3.6))
    for name, res in metered.items():
        cs = [row["c"] for row in res["curve"]]
        for layer in range(len(res["layers"])):
            ax.plot(cs, [row["cosines"][layer] for row in res["curve"]], "o-", ms=3, label=f"{name} L{layer}")
        ax1.plot([r["layer"] for r in res["layers"]], [r["cosine"] for r in res["layers"]], "o-", label=name)
    ax.set_xscale("log")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("c (every parameter scaled by c)")
    ax.set_ylabel("cosine with the saturated network")
    ax.set_title("saturation per layer against c")
    ax.legend(fontsize=6)
    ax1.set_ylim(-0.05, 1.05)
    ax1.set_xticks(range(max(len(res["layers"]) for res in metered.values())))
    ax1.set_xlabel("layer")
    ax1.set_title("per-layer cosine at c = 1")
    ax1.legend(fontsize=7)
    steps = [p["step"] for p in run["points"]]
    ax2.plot(steps, [p["param_norm"] for p in run["points"]], "o-", color="C3", label="parameter norm")
    ax2.set_xlabel("training step")
    ax2.set_ylabel("||theta||", color="C3")
    ax3 = ax2.twinx()
    ax3.plot(steps, [p["cosine"] for p in run["points"]], "s--", color="C0", label="cosine (c = 1)")
    ax3.set_ylabel("cosine with saturated network", color="C0")
    ax3.set_ylim(-0.2, 1.05)
    ax2.set_title(f"training {run['recipe']}: norm and saturation")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _shipped_softmax_models(max_params: int = 5_000_000) -> list[str]:
    from assay.model import load_config, shipped_models

    out = []
    for name in shipped_models():
        try:
            cfg = load_config(name)
        except Exception:  # a broken shipped model is the models section's business, not ours
            continue
        approx = cfg.n_layers * 12 * cfg.d_model**2 + cfg.d_vocab * cfg.d_model
        if cfg.attention == "softmax" and approx <= max_params:
            out.append(name)
    return out


def section(ctx: Any) -> str:
    """Return the HTML fragment of paper 4's section (figures written under ctx.fig_dir)."""
    from assay.saturation import bits, circuit, meter
    from assay.saturation.commands import check_construction
    from assay.saturation.languages import LANGUAGES

    parts: list[str] = [
        "<p>Hand-built transformers with saturated attention (real <code>Transformer</code> weights, exact "
        "dyadic rationals, no LayerNorm, ReLU or no MLP), run by the exact rational interpreter. See "
        "<code>docs/saturation.md</code> for the constructions and the maths.</p>"
    ]
    # 1. Constructions.
    rows = []
    for lang in LANGUAGES:
        ctx.log(f"saturation: checking the {lang} construction exactly (all strings up to {EXHAUSTIVE}, "
                f"2 random of length {RANDOM_LEN})")
        r = check_construction(lang, RANDOM_LEN, random_strings=2, exhaustive=EXHAUSTIVE)
        ce = r["hard_counterexample"]
        rows.append([lang, f"{r['correct']}/{r['total']}",
                     f"{ce['string']!r}: reference {ce['reference']}, hard {ce['hard']}" if ce else "none"])
    parts.append(f"<h3>Constructions, checked exactly on every string up to length {EXHAUSTIVE} and on every "
                 f"prefix of two random strings of length {RANDOM_LEN}</h3><p class='note'>(The command "
                 "<code>assay saturation construct LANG --n 10000</code> checks every string up to length 14 and "
                 "ten random strings of length 10,000.)</p>")
    parts.append(table(["language", "correct / strings", "same weights, hard attention: shortest failure"], rows))

    # 2. Bits.
    profiles = {}
    for lang in (*LANGUAGES, "counter"):
        n = COUNTER_N if lang == "counter" else BITS_N
        ctx.log(f"saturation: bit profile of {lang} up to n = {n}")
        profiles[lang] = bits.profile_construction(lang, n, precision_n_max=0 if lang == "counter" else 1000)
    fig = bits_figure(profiles, ctx.fig_dir / "saturation-bits.png")
    brows = []
    for lang, p in profiles.items():
        f = p["fit"]
        extra = ""
        if lang == "counter":
            lf = p["linear_fit"]
            extra = f"linear: {lf['a']:.3f} n + {lf['b']:.1f} (R² {lf['r2']:.5f})"
        prec = p.get("precision")
        brows.append([lang, p["points"][-1][0], p["points"][-1][1], f"{f['a']:.3f}", f"{f['b']:.2f}",
                      f"{f['r2']:.4f}", f"{f['rms_residual']:.2f}",
                      f"{prec['points'][-1][1]} (n = {prec['points'][-1][0]})" if prec else "—", extra])
    parts.append("<h3>Bits of the memory vectors against n</h3>")
    parts.append(figure(fig, ctx.out, "Largest memory vector (numerator + denominator bits, every coordinate) "
                                      "against n, with least-squares fits"))
    parts.append(table(["construction", "n max", "bits at n max", "a", "b", "R²", "rms residual",
                        "smallest p keeping every decision", "note"], brows))

    # 3. Circuits.
    crow = []
    for lang in ("majority", "dyck1", "anbn"):
        for n in CIRCUIT_NS:
            ctx.log(f"saturation: circuit of {lang} at n = {n}")
            r = circuit.compile_construction(lang, n, random_inputs=50)
            r.pop("circuit")
            crow.append(r)
    fig = circuit_figure(crow, ctx.fig_dir / "saturation-circuits.png")
    parts.append("<h3>Threshold circuits against n</h3>")
    parts.append(figure(fig, ctx.out, "Compiled threshold circuits: depth and size (gates, wires) against n"))
    fits = {lang: circuit.fit_power([(r["n"], r["size"]) for r in crow if r["language"] == lang])
            for lang in ("majority", "dyck1", "anbn")}
    parts.append(table(["language", "n", "depth", "gates", "wires", "inputs checked", "circuit == interpreter"],
                       [[r["language"], r["n"], r["depth"], r["size"], r["wires"],
                         f"{r['inputs_checked']}{' (all)' if r['exhaustive'] else ''}", r["all_equal"]]
                        for r in crow]))
    parts.append("<p>Size fits, gates ≈ 2^c · n^k: " + esc("; ".join(
        f"{lang}: k = {f['k']:.2f} (R² {f['r2']:.4f})" for lang, f in fits.items())) + "</p>")

    # 4. Meter and training run.
    from assay.model import load, load_card

    tmp = Path(tempfile.mkdtemp(prefix="assay-sat-demo-"))
    metered: dict[str, dict[str, Any]] = {}
    try:
        ctx.log(f"saturation: training a no-LayerNorm MAJORITY model for {TRAIN_STEPS} steps (norm growth)")
        run = meter.training_run(meter.exact_recipe(TRAIN_STEPS), steps=TRAIN_STEPS, every=10, keep=tmp / "model")
        model = load(tmp / "model")
        metered["majority-exact-1l"] = meter.meter(model, meter.sample_inputs(model, card={"recipe": run["recipe"]}))
        ctx.log(f"saturation: exact bit profile of the trained model up to n = {MODEL_BITS_N}")
        mbits = bits.profile_model(model, MODEL_BITS_N, attention="saturated", precision_n_max=50)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for name in _shipped_softmax_models():
        ctx.log(f"saturation: metering shipped model {name}")
        m = load(name, dtype=None)
        metered[name] = meter.meter(m, meter.sample_inputs(m, batch=8, length=min(m.cfg.n_ctx, 34),
                                                           card=load_card(name)))
    fig = saturation_figure(metered, run, ctx.fig_dir / "saturation-meter.png")
    parts.append("<h3>Saturation of a trained model</h3>")
    parts.append(figure(fig, ctx.out, "Left and middle: per-layer cosine between each model with parameters c·θ "
                                      "and its saturated network. Right: parameter norm and saturation during "
                                      "training"))
    parts.append(table(["model", "layer", "cosine at c = 1"],
                       [[name, r["layer"], r["cosine"]] for name, res in metered.items() for r in res["layers"]]))
    parts.append(table(["model", "layer", "head", "positions above 1e-5 (c = 1000)", "fraction of visible", "kind"],
                       [[name, h["layer"], h["head"], h["positions_above"], h["fraction_of_visible"], h["kind"]]
                        for name, res in metered.items() for h in res["heads"]]))
    first, last = run["points"][0], run["points"][-1]
    f = mbits["fit"]
    parts.append(
        f"<p>Training run ({TRAIN_STEPS} steps of the project's training loop): parameter norm "
        f"{first['param_norm']:.2f} → {last['param_norm']:.2f}, cosine with the saturated network "
        f"{first['cosine']:.3f} → {last['cosine']:.3f}. The trained model run exactly (its c → ∞ limit, "
        f"saturated attention) needs {mbits['points'][0][1]} bits at n = 1 and {mbits['points'][-1][1]} at "
        f"n = {MODEL_BITS_N}: fit {f['a']:.3f} log2 n + {f['b']:.1f} (float32 weights are 24-bit dyadics, so "
        "the constant dominates).</p>")
    return "\n".join(parts)
