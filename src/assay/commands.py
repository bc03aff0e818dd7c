"""Every ``assay`` subcommand: argument set-up and a handler returning an :class:`~assay.cli.Outcome`.

Handlers validate their input and raise :class:`~assay.errors.BadInput`; :func:`assay.cli.main` turns
that into one line and exit code 2. Heavy imports happen inside handlers so ``assay --help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from typing import Any

from assay.cli import Outcome, check_ids_in_vocab, command, ids, load_model, nonneg_int, pos_float, pos_int, tokens_from
from assay.errors import BadInput

# ---------------------------------------------------------------------------------------------
# Models: list, inspect, run.


@command("models", help="list the shipped models with their cards", example="assay models --json")
def models_cmd(args: argparse.Namespace) -> Outcome:
    from assay.model import load_card, load_config, shipped_models

    rows = []
    for name in shipped_models():
        cfg = load_config(name)
        card = load_card(name) or {}
        rows.append(
            {
                "name": name,
                "n_layers": cfg.n_layers,
                "d_model": cfg.d_model,
                "n_heads": cfg.n_heads,
                "d_vocab": cfg.d_vocab,
                "recipe": card.get("recipe"),
                "final_metrics": card.get("final_metrics") or card.get("metrics"),
            }
        )
    text = "\n".join(f"{r['name']:<16} {r['n_layers']}L d{r['d_model']} h{r['n_heads']} V{r['d_vocab']}" for r in rows)
    return Outcome({"models": rows}, text=text or "no shipped models")


def _model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="a model directory or the name of a shipped model")


@command("info", help="show a model's config, size, weights hash and card", example="assay info overwhelm-1l",
         args=_model_arg)
def info_cmd(args: argparse.Namespace) -> Outcome:
    from assay.model import load_card

    model = load_model(args.model)
    data = {
        "model": args.model,
        "path": str(model.source_dir),
        "config": model.cfg.to_dict(),
        "n_params": sum(p.numel() for p in model.parameters()),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "weights_sha256": model.weights_sha256,
        "has_tokenizer": getattr(model, "tokenizer", None) is not None,
        "card": load_card(args.model),
    }
    return Outcome(data)


def _predict_args(p: argparse.ArgumentParser) -> None:
    _model_arg(p)
    p.add_argument("--tokens", type=ids, metavar="IDS", help="comma-separated token ids")
    p.add_argument("--tokens-text", metavar="TEXT", help="text to tokenize with the model's tokenizer")
    p.add_argument("--top", type=pos_int, default=5, help="how many candidates to show (default 5)")


@command("predict", help="the next-token prediction at the last position, top candidates with probabilities",
         example="assay predict addition-1l --tokens 1,2,3,4,5,10,6,7,8,9,0,11", args=_predict_args)
def predict_cmd(args: argparse.Namespace) -> Outcome:
    import torch

    model = load_model(args.model)
    toks = tokens_from(args, model, "tokens", "tokens_text")
    if not toks:
        raise BadInput("give --tokens or --tokens-text")
    with torch.no_grad():
        logits = model(torch.tensor([toks]))[0, -1].double()
    probs = logits.softmax(-1)
    top = torch.topk(logits, min(args.top, logits.numel()))
    tok = getattr(model, "tokenizer", None)
    rows = [
        {
            "id": int(i),
            "text": tok.decode([int(i)]) if tok is not None else None,
            "logit": float(logits[i]),
            "prob": float(probs[i]),
        }
        for i in top.indices
    ]
    lines = [f"{len(toks)} tokens; next token:"] + [
        f"  {r['id']:>6} {r['text']!r:<16} logit {r['logit']:8.3f}  p {r['prob']:.4f}" for r in rows
    ]
    return Outcome({"n_tokens": len(toks), "top": rows}, text="\n".join(lines))


# ---------------------------------------------------------------------------------------------
# Training.


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", metavar="RECIPE", help="a registered recipe, e.g. overwhelm-1l, addition-1l, lm-4l")
    p.add_argument("--steps", type=pos_int, help="override the recipe's number of steps")
    p.add_argument("--out", metavar="DIR", help="output model directory (default models/RECIPE)")
    p.add_argument("--seed", type=nonneg_int, help="override the recipe's seed")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the output directory")


@command("train", help="train a model from a registered recipe; writes weights and card.json",
         example="assay train majority-1l --steps 200 --out /tmp/majority", args=_train_args)
def train_cmd(args: argparse.Namespace) -> Outcome:
    from assay.model import load_card
    from assay.train import run_recipe

    out = run_recipe(args.recipe, steps=args.steps, out=args.out, seed=args.seed, resume=args.resume)
    card = load_card(out) or {}
    return Outcome({"recipe": args.recipe, "out": str(out), "card": card}, text=f"trained {args.recipe} -> {out}")


# ---------------------------------------------------------------------------------------------
# Paper 1: prove, check, design.


def _prove_args(p: argparse.ArgumentParser) -> None:
    _model_arg(p)
    p.add_argument("--prefix", type=ids, metavar="IDS", help="the fixed prefix s (comma-separated ids)")
    p.add_argument("--prefix-text", metavar="TEXT", help="the fixed prefix as text (models with a tokenizer)")
    p.add_argument("--suffix", type=ids, default=[], metavar="IDS", help="a fixed suffix q after the free tokens")
    p.add_argument("--suffix-text", metavar="TEXT", help="the fixed suffix as text")
    p.add_argument("--n-free", type=nonneg_int, required=True, metavar="N", help="free tokens t: every length 0..N")
    p.add_argument("--allowed", type=ids, metavar="IDS", help="tokens t may use (default: the whole vocabulary)")
    p.add_argument("--out", metavar="CERT", help="write the certificate (JSON) here")


@command("prove", help="prove that a prefix overwhelms the model: the next token is the same for every free string",
         example="assay prove overwhelm-1l --prefix-text 'And God said' --n-free 4 --out cert.json",
         args=_prove_args)
def prove_cmd(args: argparse.Namespace) -> Outcome:
    model = load_model(args.model)
    prefix = tokens_from(args, model, "prefix", "prefix_text")
    suffix = tokens_from(args, model, "suffix", "suffix_text")
    if not prefix:
        raise BadInput("give a non-empty --prefix or --prefix-text")
    allowed = args.allowed
    if allowed is not None:
        if not allowed:
            raise BadInput("--allowed: empty set of tokens")
        check_ids_in_vocab(allowed, model.cfg.d_vocab, "--allowed")
    total = len(prefix) + args.n_free + len(suffix)
    if total > model.cfg.n_ctx:
        raise BadInput(f"prefix ({len(prefix)}) + n_free ({args.n_free}) + suffix ({len(suffix)}) = {total} "
                       f"exceeds n_ctx={model.cfg.n_ctx}")
    from assay.fileutil import atomic_write_text
    from assay.prove import prove

    res = prove(model, prefix, args.n_free, suffix=suffix, allowed=allowed)
    cert_path = None
    if args.out:
        cert = dict(res.certificate)
        cert.setdefault("model", args.model)
        atomic_write_text(args.out, json.dumps(cert) + "\n")
        cert_path = args.out
    data = {
        "proven": bool(res.proven),
        "token": res.token,
        "margin": res.margin,
        "n_fix": len(prefix),
        "n_free": args.n_free,
        "seconds": res.seconds,
        "certificate": cert_path,
    }
    if not res.proven:
        data["best_margin"] = getattr(res, "best_margin", None)
    tok = getattr(model, "tokenizer", None)
    shown = f" ({tok.decode([res.token])!r})" if tok is not None and res.token is not None else ""
    if res.proven:
        text = f"PROVEN: next token is {res.token}{shown} for every free string of length 0..{args.n_free}; " \
               f"margin >= {res.margin:.6g}"
    else:
        text = f"NOT PROVEN (best certified margin {data['best_margin']}); no claim is made"
    return Outcome(data, code=0 if res.proven else 1, text=text)


def _check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("cert", metavar="CERT", help="a certificate written by 'assay prove --out'")
    p.add_argument("--model", metavar="MODEL", help="the model (default: the one named in the certificate)")


@command("check", help="check a certificate in rigorous arithmetic, independently of the prover",
         example="assay check cert.json --model overwhelm-1l", args=_check_args)
def check_cmd(args: argparse.Namespace) -> Outcome:
    path = Path(args.cert)
    if not path.is_file():
        raise BadInput(f"{args.cert}: no such file")
    try:
        cert = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInput(f"{args.cert}: not a JSON certificate ({e})") from None
    if not isinstance(cert, dict):
        raise BadInput(f"{args.cert}: not a JSON certificate (expected an object)")
    from assay.prove.check import REQUIRED

    missing = [k for k in REQUIRED if k not in cert]
    if missing:  # not a certificate at all (unusable input), as opposed to one that fails the check
        raise BadInput(f"{args.cert}: corrupt certificate, missing field(s) {', '.join(missing)}")
    name = args.model or cert.get("model")
    if not name:
        raise BadInput("the certificate names no model; pass --model")
    model = load_model(name)
    from assay.prove import CertificateError, check

    try:
        check(cert, model)
    except CertificateError as e:
        import sys

        print(f"assay: rejected: {' '.join(str(e).split())}", file=sys.stderr)
        return Outcome({"valid": False, "reason": str(e)}, code=1, text="REJECTED")
    return Outcome({"valid": True}, text="VALID: every inequality re-derived in rigorous arithmetic")


def _design_args(p: argparse.ArgumentParser) -> None:
    _model_arg(p)
    p.add_argument("--n-fix", type=pos_int, required=True, metavar="N", help="length of the prefix to design")
    p.add_argument("--n-free", type=nonneg_int, required=True, metavar="N", help="free tokens to overwhelm")
    p.add_argument("--suffix", type=ids, default=[], metavar="IDS", help="a fixed suffix")
    p.add_argument("--allowed", type=ids, metavar="IDS", help="tokens the free string may use")
    p.add_argument("--seed", type=nonneg_int, default=0, help="search seed (default 0)")
    p.add_argument("--budget", type=pos_float, default=60.0, metavar="SECONDS", help="search time budget")
    p.add_argument("--evals", type=pos_int, metavar="N",
                   help="stop after N prover evaluations instead of a time budget: the same result on every run")


@command("design", help="search for a prefix of a given length that is proven to overwhelm the model",
         example="assay design overwhelm-1l --n-fix 256 --n-free 2 --suffix 321 --budget 60 --json", args=_design_args)
def design_cmd(args: argparse.Namespace) -> Outcome:
    model = load_model(args.model)
    check_ids_in_vocab(args.suffix, model.cfg.d_vocab, "--suffix")
    if args.allowed is not None:
        check_ids_in_vocab(args.allowed, model.cfg.d_vocab, "--allowed")
    total = args.n_fix + args.n_free + len(args.suffix)
    if total > model.cfg.n_ctx:
        raise BadInput(f"n_fix + n_free + suffix = {total} exceeds n_ctx={model.cfg.n_ctx}")
    from assay.prove import design

    res = design(model, args.n_fix, args.n_free, suffix=args.suffix, allowed=args.allowed, seed=args.seed,
                 budget_seconds=args.budget, max_evals=args.evals)
    data = {"prefix": list(res.prefix), "proven": bool(res.proven), "token": res.token, "margin": res.margin,
            "seconds": res.seconds, "tried": res.tried}
    return Outcome(data, code=0 if res.proven else 1)


# ---------------------------------------------------------------------------------------------
# Capabilities with their own command modules (``assay.<capability>.commands``), each registering its
# subcommands with ``@command`` when imported.

for _cap in ("lipschitz", "erasure", "addition", "saturation"):
    importlib.import_module(f"assay.{_cap}.commands")


# ---------------------------------------------------------------------------------------------
# The demo.


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo", metavar="DIR",
                   help="output directory (default ./demo): an earlier demo report there is replaced; "
                        "a file or any other non-empty directory is refused")


@command("demo", help="the main job on shipped models: one section per paper, figures, index.html",
         example="assay demo --out demo", args=_demo_args)
def demo_cmd(args: argparse.Namespace) -> Outcome:
    from assay.report.demo import build

    summary: dict[str, Any] = build(args.out)
    return Outcome(summary, text=f"wrote {summary['index']}")
