"""The demo's section for paper 1: a designed prefix, its proof, the independent check, the frontier.

On the shipped ``overwhelm-1l`` (when present): ``design`` searches a prefix of 256 tokens with the
suffix "." for n_free = 2; the proof is shown with its per-length margins and the attention weight
Lambda the free tokens can take; ``check`` re-derives it in ball arithmetic; and the certified
frontier is measured: for n_fix = 16..1024, the largest n_free proven for repeated-token prefixes
(the designed prefix's own token, and " congreg" from docs/prove.md) against prefixes cut from text.
Without overwhelm-1l the same runs on a tiny random model (vocabulary 6), so the section always
shows real computations. Takes a few minutes on overwhelm-1l (the check is the slow part).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from assay.prove.api import prove
from assay.prove.check import check
from assay.prove.design import design


def largest_proven(model, prefix: list[int], suffix: list[int], limit: int) -> int:
    """The largest n_free <= limit that ``prove`` certifies for this prefix (-1 if not even 0).

    One run at n_free = limit (stopping at the first failing case) locates the first failing length;
    the answer is then confirmed by an actual proof at that n_free (and lowered until one succeeds).
    """
    limit = min(limit, model.cfg.n_ctx - len(prefix) - len(suffix))
    r = prove(model, prefix, limit, suffix=suffix, _stop_early=True)
    if r.proven:
        return limit
    failing = [p["L"] for p in r.details["per_length"] if p["margin"] is None or not p["margin"] > 0]
    n = (failing[0] if failing else len(r.details["per_length"])) - 1
    while n >= 0 and not prove(model, prefix, n, suffix=suffix).proven:
        n -= 1
    return n


def _setup(ctx: Any) -> dict:
    from assay.model import load, shipped_models

    if "overwhelm-1l" in shipped_models():
        model = load("overwhelm-1l")
        tok = model.tokenizer
        text_path = Path(__file__).resolve().parents[3] / "tests" / "data" / "sentences.txt"
        ids = tok.encode(text_path.read_text() if text_path.is_file() else "In the beginning " * 400).ids
        return dict(model=model, name="overwhelm-1l", decode=tok.decode, n_fix=256, n_free=2,
                    suffix=tok.encode(".").ids[-1:], evals=60, extra=[tok.encode(" congreg").ids[-1]],
                    fix_grid=[16, 32, 64, 128, 256, 512, 1024], limit=12, text=(ids * (1024 // len(ids) + 2))[:1100])
    from assay.prove.toy import toy_model

    ctx.log("prove: overwhelm-1l is not shipped here; using a tiny random model")
    model = toy_model(2, qk=1.0)
    return dict(model=model, name="toy (random, V=6)", decode=lambda ts: " ".join(map(str, ts)), n_fix=10,
                n_free=2, suffix=[2], evals=30, extra=[], fix_grid=[4, 8, 12, 16, 24], limit=6,
                text=[(7 * i + 3) % 6 for i in range(40)])


def section(ctx: Any) -> str:
    """Return the HTML fragment of the overwhelm section (the frontier figure under ``ctx.fig_dir``)."""
    from assay.prove.api import single_thread
    from assay.report.html import esc, figure, table

    s = _setup(ctx)
    model, decode, suffix = s["model"], s["decode"], s["suffix"]
    ctx.log(f"prove: design on {s['name']}, n_fix {s['n_fix']}, n_free {s['n_free']}")
    d = design(model, s["n_fix"], s["n_free"], suffix=suffix, seed=0, max_evals=s["evals"])
    parts = [
        "<p>The claim: for <em>every</em> string t of 0..n_free tokens, the next token after prefix + t + suffix "
        "is the same. <code>assay design</code> searched prefixes with the prover's certified margin as "
        f"objective on <b>{esc(s['name'])}</b> (n_fix = {s['n_fix']}, n_free = {s['n_free']}, suffix "
        f"{esc(repr(decode(suffix)))}), in {d.seconds:.0f} s:</p>",
        table(["strategy", "free length scored", "candidates", "best certified margin"],
              [[r["strategy"], r["n_free"], r["candidates"],
                "—" if r["best_margin"] is None else f"{r['best_margin']:.4g}"] for r in d.tried]),
    ]
    common = Counter(d.prefix).most_common(3)
    parts.append(
        f"<p>Designed prefix ({len(d.prefix)} tokens; most frequent: "
        + ", ".join(f"{esc(repr(decode([t])))} x{n}" for t, n in common)
        + f"), as text:</p><pre>{esc(decode(d.prefix)[:600])}{'…' if len(decode(d.prefix)) > 600 else ''}</pre>"
    )
    if d.proven:
        r = prove(model, d.prefix, s["n_free"], suffix=suffix)
        rows = [[p["L"], p["cases"], f"{p['margin']:.4g}",
                 f"{p['worst_competitor']} {decode([p['worst_competitor']])!r}",
                 ", ".join(f"{x:.3g}" for x in p["lambda_max"])] for p in r.details["per_length"]]
        parts += [
            f"<p><b>PROVEN</b>: the next token is {esc(repr(decode([r.token])))} (id {r.token}) for every free "
            f"string of length 0..{s['n_free']} over all {model.cfg.d_vocab} tokens "
            f"({model.cfg.d_vocab ** s['n_free']:,} strings of the longest length alone); certified margin "
            f"logit[c] − max other ≥ {r.margin:.4g}. Proof time {r.seconds:.1f} s.</p>",
            table(["free length L", "cases", "certified margin", "closest competitor (id, text)", "Λ (per head)"],
                  rows),
        ]
        ctx.log("prove: checking the certificate in arb ball arithmetic")
        t0 = time.perf_counter()
        try:
            ok = check(r.certificate, model)
            verdict = f"<b>VALID</b> ({ok})"
        except ValueError as e:  # CertificateError: shown, not hidden
            verdict = f"<b>REJECTED</b>: {esc(e)}"
        parts.append(f"<p>The independent checker (no code shared with the prover; every inequality re-derived "
                     f"from the weights in python-flint arb balls): {verdict} in {time.perf_counter() - t0:.0f} s."
                     "</p>")
    else:
        parts.append(f"<p><b>Not proven</b> within the budget (best certified margin {d.best_margin}); no claim "
                     "is made.</p>")

    ctx.log("prove: certified frontier")
    families = {f"{decode([b])!r} repeated": [b] for b in dict.fromkeys([common[0][0]] + s["extra"])}
    families["cut from text"] = None
    frontier: dict[str, list[int]] = {k: [] for k in families}
    t0 = time.perf_counter()
    with single_thread():
        for n_fix in s["fix_grid"]:
            for label, tok in families.items():
                prefix = tok * n_fix if tok is not None else s["text"][:n_fix]
                q = suffix if tok is not None else [s["text"][n_fix]]
                frontier[label].append(largest_proven(model, prefix, q, s["limit"]))
    secs = time.perf_counter() - t0
    fig = _frontier_figure(s["fix_grid"], frontier, s["name"], s["limit"], ctx.fig_dir / "prove-frontier.png")
    parts += [
        f"<p>Certified frontier: the largest n_free proven (searched up to {s['limit']}; −1: not "
        f"even n_free = 0) against n_fix, measured in {secs:.0f} s. Repeated tokens use the suffix "
        f"{esc(repr(decode(suffix)))}; text prefixes use the next text token as the suffix.</p>",
        table(["prefix"] + [f"n_fix={n}" for n in s["fix_grid"]],
              [[k] + v for k, v in frontier.items()]),
        figure(fig, ctx.out, f"{s['name']}: largest certified n_free against n_fix"),
    ]
    return "\n".join(parts)


def _frontier_figure(xs, frontier: dict[str, list[int]], name: str, limit: int, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for label, ys in frontier.items():
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("n_fix (prefix length)")
    ax.set_ylabel("largest certified n_free")
    ax.axhline(limit, color="#aaa", lw=0.8, ls=":")
    ax.set_title(f"{name}: certified frontier", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
