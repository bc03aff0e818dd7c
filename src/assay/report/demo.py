"""``assay demo``: the main job on the shipped models, one section per paper, written as index.html.

Each capability contributes a section through a module with a function
``section(ctx: DemoContext) -> str`` returning an HTML fragment; a capability whose module does not
exist yet is listed as "not yet available" rather than faked. The whole report is written into a
temporary directory and moved into place at the end, so a failure leaves nothing half-written.
"""

from __future__ import annotations

import importlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assay.fileutil import atomic_directory, check_output_dir
from assay.report.html import esc, figure, page, table

# (key, title, module providing ``section(ctx)``, issue that tracks it)
SECTIONS: list[tuple[str, str, str, int]] = [
    ("prove", "1. Overwhelm proofs (Stambler, Nezhadi, Coudron 2025)", "assay.prove.demo", 3),
    ("lipschitz", "2. Lipschitz constant of attention (Castin, Ablin, Peyré 2024)", "assay.lipschitz.demo", 4),
    ("addition", "3. Addition in a one-layer transformer (Quirke & Barez 2024)", "assay.addition.demo", 5),
    ("saturation", "4. Saturated attention and threshold circuits (Merrill et al. 2022)", "assay.saturation.demo", 6),
    ("erasure", "5. Erasure and direct logit attribution (Janiak et al. 2024)", "assay.erasure.demo", 7),
]

SAMPLE_TEXT = "In the beginning God created the heaven and the earth."


@dataclass
class DemoContext:
    """What a section gets: the output directory (write figures under ``fig_dir``) and a logger."""

    out: Path
    fig_dir: Path

    def log(self, msg: str) -> None:
        """Print a progress line on stderr."""
        print(f"[demo] {msg}", file=sys.stderr, flush=True)


def _sample_tokens(model: Any, n: int = 16) -> list[int]:
    tok = getattr(model, "tokenizer", None)
    if tok is not None:
        ids = tok.encode(SAMPLE_TEXT).ids[:n]
        if ids:
            return ids
    if model.cfg.d_vocab == 12:  # the addition vocabulary: a real question
        return [int(c) if c.isdigit() else {"+": 10, "=": 11}[c] for c in "12345+67890="]
    return [(7 * i + 3) % model.cfg.d_vocab for i in range(min(n, model.cfg.n_ctx))]


def _attention_figure(model: Any, name: str, ctx: DemoContext) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    toks = _sample_tokens(model)
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.tensor([toks]), names_filter=lambda n: n.endswith("hook_pattern"))
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    show = min(n_heads, 4)
    fig, axes = plt.subplots(n_layers, show, figsize=(2.2 * show, 2.2 * n_layers), squeeze=False)
    tok = getattr(model, "tokenizer", None)
    labels = [tok.decode([t]) for t in toks] if tok is not None else [str(t) for t in toks]
    for layer in range(n_layers):
        pat = cache["pattern", layer][0].float().numpy()
        for h in range(show):
            ax = axes[layer][h]
            ax.imshow(pat[h], cmap="viridis", vmin=0, vmax=1)
            ax.set_title(f"L{layer}H{h}", fontsize=8)
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(labels, rotation=90, fontsize=5)
            ax.set_yticks(range(len(labels)))
            ax.set_yticklabels(labels, fontsize=5)
    fig.suptitle(f"{name}: attention patterns (query rows, key columns)", fontsize=9)
    fig.tight_layout()
    path = ctx.fig_dir / f"attention-{name}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def models_section(ctx: DemoContext) -> str:
    """Return the HTML of the shipped models: config, size, card metrics and an attention figure each."""
    from assay.model import load, load_card, shipped_models

    names = shipped_models()
    if not names:
        return "<p class='note'>No shipped models yet: train one with <code>assay train RECIPE</code>.</p>"
    parts = []
    rows = []
    for name in names:
        ctx.log(f"model {name}")
        model = load(name)
        cfg = model.cfg
        card = load_card(name) or {}
        n_params = sum(p.numel() for p in model.parameters())
        metrics = card.get("final_metrics") or card.get("metrics") or {}
        rows.append([
            name, f"{cfg.n_layers}L, {cfg.n_heads}H, d={cfg.d_model}, V={cfg.d_vocab}, n_ctx={cfg.n_ctx}",
            f"{n_params:,}", card.get("recipe", "—"), card.get("seed", "—"), card.get("steps", "—"),
            ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()) or "—",
        ])
        parts.append(figure(_attention_figure(model, name, ctx), ctx.out, f"{name}: attention on a sample input"))
    return table(["model", "shape", "parameters", "recipe", "seed", "steps", "final metrics"], rows) + "".join(parts)


def build(out: str | Path) -> dict[str, Any]:
    """Write the demo report to ``out`` (replacing it atomically); return a summary dict.

    The summary has ``index`` (path of index.html), ``sections`` ({key: "ok" | "not yet"}) and ``seconds``.
    """
    start = time.perf_counter()
    out = check_output_dir(out, "index.html", "demo report")
    status: dict[str, str] = {}
    with atomic_directory(out) as tmp:
        ctx = DemoContext(out=tmp, fig_dir=tmp / "figures")
        ctx.fig_dir.mkdir()
        body = [
            "<p>assay: what a small transformer provably does, and why. Every number below was computed by "
            "this run on the shipped models; nothing is copied from the papers.</p>",
            "<h2>Shipped models</h2>",
            models_section(ctx),
        ]
        for key, title, module, issue in SECTIONS:
            body.append(f"<h2 id='{esc(key)}'>{esc(title)}</h2>")
            try:
                mod = importlib.import_module(module)
            except ModuleNotFoundError as e:
                if e.name is None or not module.startswith(e.name):
                    raise
                body.append(f"<p class='note'>Not yet available (issue {issue}).</p>")
                status[key] = "not yet"
                continue
            ctx.log(f"section {key}")
            body.append(mod.section(ctx))
            status[key] = "ok"
        body.append(f"<p class='note'>Generated in {time.perf_counter() - start:.1f} s.</p>")
        (tmp / "index.html").write_text(page("assay demo", "\n".join(body)))
    return {"index": str(out / "index.html"), "sections": status, "seconds": round(time.perf_counter() - start, 2)}
