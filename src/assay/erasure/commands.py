"""``assay erasure MODEL --prompts FILE [--writer L.H] [--json]``: writers, erasers, and where DLA misleads."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from assay.cli import Outcome, command, load_model, nonneg_int, pos_float, pos_int
from assay.errors import BadInput


def read_prompts(path: str, model: Any, token_ids: bool = False) -> list[list[int]]:
    """Return the prompts of a file, one a line, as token ids.

    Lines are text for a model with a tokenizer (unless ``token_ids``), else token ids separated by
    commas or spaces. A blank line is an empty prompt (BadInput); so is a line that tokenizes to nothing.
    """
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"--prompts: no such file: {path}")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"--prompts: cannot read {path}: {e}") from None
    tok = getattr(model, "tokenizer", None)
    out = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            raise BadInput(f"--prompts: prompt {n} (line {n}) is empty")
        if tok is not None and not token_ids:
            ids = tok.encode(line).ids
        else:
            try:
                ids = [int(x) for x in line.replace(",", " ").split()]
            except ValueError:
                how = "" if tok is not None else " (this model has no tokenizer)"
                raise BadInput(f"--prompts: line {n} is not a list of token ids{how}: {line[:40]!r}") from None
        if not ids:
            raise BadInput(f"--prompts: prompt {n} (line {n}) is empty after tokenization")
        if len(ids) > model.cfg.n_ctx:
            raise BadInput(f"--prompts: prompt {n} (line {n}) has {len(ids)} tokens, more than the model's "
                           f"n_ctx={model.cfg.n_ctx}")
        out.append(ids)
    if not out:
        raise BadInput(f"--prompts: {path} has no prompts (one a line)")
    return out


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {v}")
    return v


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="a model directory or the name of a shipped model (pre-LN)")
    p.add_argument("--prompts", required=True, metavar="FILE",
                   help="prompts, one a line (text if the model has a tokenizer, else token ids)")
    p.add_argument("--writer", metavar="L.H", help="analyse this writer only (a head L.H / LlHh, or Ll.mlp)")
    p.add_argument("--token-ids", action="store_true",
                   help="the prompt lines are token ids even if there is a tokenizer")
    p.add_argument("--dla", choices=("frozen", "linear"), default="frozen",
                   help="frozen: final LayerNorm scale from the clean run (default); linear: model without final LN")
    p.add_argument("--threshold", type=_number, default=-0.05,
                   help="erasure rule: median PR at most this (default -0.05)")
    p.add_argument("--consistency", type=_fraction, default=0.8,
                   help="erasure rule: fraction of prompts with negative median PR (default 0.8)")
    p.add_argument("--min-rel-norm", type=pos_float, default=0.05,
                   help="erasure rule: writer norm / residual norm at least this (default 0.05)")
    p.add_argument("--intervene", type=pos_int, default=None, metavar="N",
                   help="run ablations and path patches on the first N prompts only (default: all)")
    p.add_argument("--threads", type=pos_int, default=1,
                   help="torch threads (default 1: many small passes run fastest on one thread of a busy machine)")
    p.add_argument("--top", type=nonneg_int, default=50, help="pairs listed (most negative first; 0: all; default 50)")


@command("erasure", help="paper 5: projection ratios, erasers, path patches, DLA against total effect",
         example="assay erasure lm-4l --prompts prompts.txt --writer 0.2 --json", args=_args)
def erasure_cmd(args: argparse.Namespace) -> Outcome:
    from assay.erasure.analysis import analyze, torch_threads
    from assay.erasure.components import check_decomposable, parse_component
    from assay.erasure.dla import resolve_mode
    from assay.erasure.projection import ErasureRule

    model = load_model(args.model)
    check_decomposable(model)
    resolve_mode(model, args.dla)
    writer = parse_component(model, args.writer).name if args.writer is not None else None
    prompts = read_prompts(args.prompts, model, args.token_ids)
    tok = getattr(model, "tokenizer", None)
    decode = (lambda ids: tok.decode(ids)) if tok is not None else None
    rule = ErasureRule(threshold=args.threshold, consistency=args.consistency, min_rel_norm=args.min_rel_norm)
    with torch_threads(args.threads):
        a = analyze(model, prompts, writer=writer, rule=rule, mode=args.dla, decode=decode,
                    intervention_prompts=args.intervene)
    data = {"model_arg": args.model, **a.to_json(top=args.top, writer=writer)}
    return Outcome(data, text=summary_text(data))


def summary_text(d: dict[str, Any]) -> str:
    """Return a short human-readable summary of the JSON report."""
    lines = [f"{d['model']}: {d['n_prompts']} prompts, {d['n_positions']} target positions; "
             f"DLA ({d['dla_mode']}) adds up to within {d['dla_max_residual']:.2g}"]
    lines.append(f"flagged writer -> eraser pairs: {d['n_flagged']} of {d['n_pairs']} "
                 f"(mirrored rule, consistent amplifiers: {d['n_mirror_flagged']})")
    for s in d["flagged"][:10]:
        lines.append(f"  {s['writer']} -> {s['eraser']}: PR median {s['pr_median']:+.3f} "
                     f"[{s['pr_q25']:+.3f}, {s['pr_q75']:+.3f}]")
    if not d["flagged"] and d["pairs"]:
        s = d["pairs"][0]
        lines.append(f"  most negative pair: {s['writer']} -> {s['eraser']} PR median {s['pr_median']}")
    for c in d["causal"]:
        lines.append(f"causal test {c['writer']} (erasers {', '.join(c['erasers'][:6])}"
                     f"{'...' if len(c['erasers']) > 6 else ''}): final projection {c['final_projection_clean']} "
                     f"-> {c['final_projection_patched']} with the value edges removed")
    corr = d["dla_total_correlation"]
    lines.append(f"DLA vs total effect (every component x position): r = {corr['resample']} (resample), "
                 f"{corr['mean']} (mean ablation)")
    return "\n".join(lines)
