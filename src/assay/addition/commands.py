"""``assay addition train|eval|analyze``, registered with :func:`assay.cli.command` (imported by ``assay.commands``)."""

from __future__ import annotations

import argparse

from assay.cli import Outcome, command, load_model, nonneg_int, pos_int
from assay.errors import BadInput
from assay.fileutil import check_output_dir


def _threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=pos_int, default=1, metavar="T",
                   help="torch threads (default 1: on a shared, loaded machine more threads are often slower)")


def _set_threads(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", metavar="RECIPE", nargs="?", default="addition-1l",
                   help="an addition recipe (default addition-1l; also addition-2l)")
    p.add_argument("--steps", type=pos_int, help="override the recipe's number of steps")
    p.add_argument("--out", metavar="DIR", help="output model directory (default models/RECIPE)")
    p.add_argument("--seed", type=nonneg_int, help="override the recipe's seed")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--log-every", type=pos_int, default=10, metavar="K",
                   help="average the per-digit training loss over K steps per log record (default 10)")
    _threads_arg(p)


@command("train", group="addition",
         help="train an addition recipe with the shared loop, plus a per-digit training-loss log "
         "(train_digit_loss.jsonl)",
         example="assay addition train addition-1l --steps 200 --out /tmp/add1l", args=_train_args)
def train_cmd(args: argparse.Namespace) -> Outcome:
    from assay.addition.training import DIGIT_LOG, train_addition
    from assay.model import load_card

    _set_threads(args)
    out = train_addition(args.recipe, steps=args.steps, out=args.out, seed=args.seed, resume=args.resume,
                         every=args.log_every)
    card = load_card(out) or {}
    metrics = card.get("metrics", {})
    return Outcome({"recipe": args.recipe, "out": str(out), "digit_log": str(out / DIGIT_LOG), "metrics": metrics},
                   text=f"trained {args.recipe} -> {out}; val_loss {metrics.get('val_loss')}, "
                   f"val_accuracy {metrics.get('val_accuracy')}")


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="a model directory or the name of a shipped model")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--questions", metavar="FILE", help="one question a line, e.g. 12345+67890")
    src.add_argument("--random", type=pos_int, metavar="N", help="N uniform random questions")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of the random questions (default 0)")
    p.add_argument("--card", action="store_true",
                   help="with --random: record the result in the model's card.json (key eval_random)")
    _threads_arg(p)


@command("eval", group="addition",
         help="accuracy and loss of an addition model, overall and per category (BA, UC1, US9, cascade), "
         "with 95%% Wilson intervals",
         example="assay addition eval addition-1l --random 10000 --json", args=_eval_args)
def eval_cmd(args: argparse.Namespace) -> Outcome:
    from pathlib import Path

    import numpy as np

    from assay.addition.evaluate import evaluate, n_digits_of, read_questions
    from assay.tasks import addition

    _set_threads(args)
    model = load_model(args.model)
    n = n_digits_of(model)
    if args.card and args.random is None:
        raise BadInput("--card records an evaluation on --random questions only")
    if args.card and not (model.source_dir is not None and (Path(model.source_dir) / "card.json").is_file()):
        raise BadInput(f"{args.model}: has no card.json to record the evaluation in")  # before any work
    if args.questions is not None:
        a, b = read_questions(args.questions, n)
        source = args.questions
    else:
        a, b = addition.random_operands(np.random.default_rng(args.seed), args.random, n)
        source = f"{args.random} uniform random questions (seed {args.seed})"
    r = evaluate(model, a, b, n, progress=len(a) > 8192)
    data = {"model": args.model, "source": source, "n": r["n"], "accuracy": r["accuracy"], "ci95": r["ci95"],
            "loss": r["loss"], "by_category": r["by_category"], "per_digit": r["per_digit"]}
    if args.card:
        from assay.addition.card import record_eval

        data["card"] = str(record_eval(model.source_dir, {**{k: v for k, v in data.items() if k != "model"},
                                                          "seed": args.seed}))
    lines = [f"{args.model} on {source}: accuracy {r['accuracy']:.5f} "
             f"[{r['ci95'][0]:.5f}, {r['ci95'][1]:.5f}], loss {r['loss']:.5g}"]
    for c, v in r["by_category"].items():
        acc = "—" if v["accuracy"] is None else f"{v['accuracy']:.5f} [{v['ci95'][0]:.5f}, {v['ci95'][1]:.5f}]"
        loss = "—" if v["loss"] is None else f"{v['loss']:.5g}"
        lines.append(f"  {c:<8} n={v['n']:<7} accuracy {acc}  loss {loss}")
    return Outcome(data, text="\n".join(lines))


def _analyze_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="a model directory or the name of a shipped model")
    p.add_argument("--out", metavar="DIR", help="report directory (default ./addition-analysis-<model name>)")
    p.add_argument("--n", type=pos_int, metavar="N", help="uniform random questions for the failure analysis "
                   "(default 100000; 4000 with --quick)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of every sample (default 0)")
    p.add_argument("--quick", action="store_true", help="small samples everywhere (a smoke test, minutes less)")
    p.add_argument("--compare", action="append", default=[], metavar="DIR",
                   help="another model's analysis directory (its summary.json); adds a side-by-side table "
                   "(repeatable)")
    _threads_arg(p)


@command("analyze", group="addition",
         help="mechanism report: training phases, position/head ablation, attention staircase, probes, "
         "failures and the two-column rule, declared algorithm vs model (report.md, figures, summary.json)",
         example="assay addition analyze addition-2l --out models/addition-2l/analysis "
         "--compare models/addition-1l/analysis", args=_analyze_args)
def analyze_cmd(args: argparse.Namespace) -> Outcome:
    import dataclasses
    from pathlib import Path

    from assay.addition.evaluate import n_digits_of
    from assay.addition.report import QUICK, Sizes, analyze

    _set_threads(args)
    model = load_model(args.model)  # fail fast on a bad model, before any work
    n_digits_of(model)
    sizes = QUICK if args.quick else Sizes()
    if args.n is not None:
        sizes = dataclasses.replace(sizes, n_random=args.n)
    out = Path(args.out) if args.out else Path(f"addition-analysis-{Path(str(args.model)).name}")
    check_output_dir(out, "report.md", "addition report")
    s = analyze(args.model, out, sizes=sizes, seed=args.seed, compare=args.compare)
    fa = s["failures"]
    data = {
        "model": args.model, "out": str(out), "report": str(out / "report.md"),
        "accuracy": fa["summary"]["accuracy"], "n": fa["n"], "n_wrong": fa["n_wrong"],
        "cascade_share": fa["cascade_share"], "rule_agreement": fa["rule"]["all"]["rate"],
        "rule_agreement_on_failures": fa["rule"]["model_wrong"]["rate"],
        "by_category": fa["summary"]["by_category"],
        "algorithms": s["algorithms"], "head_roles": s["head_roles"], "ablation_roles": s["ablation_roles"],
    }
    return Outcome(data, text=f"wrote {out / 'report.md'}: accuracy {fa['summary']['accuracy']:.5f} on {fa['n']} "
                   f"questions, {fa['n_wrong']} wrong, cascade share {fa['cascade_share']}, "
                   f"two-column rule agrees with the model on {fa['rule']['all']['rate']}")
