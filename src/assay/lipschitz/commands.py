"""``assay lipschitz MODEL ...`` and ``assay lipschitz sweep ...``.

One registered command whose first positional is either a model or the word ``sweep`` (so a model
directory literally called ``sweep`` must be given as ``./sweep``). MODEL is a shipped model's name, a
model directory, or one of the special names ``minilm`` (pretrained all-MiniLM-L6-v2) and
``gpt2-random`` (GPT-2 small architecture at a seeded random init, built locally).
"""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path

from assay.cli import Outcome, command, nonneg_int, pos_int
from assay.errors import BadInput


def _radius(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (v > 0 and v < float("inf")):
        raise argparse.ArgumentTypeError(f"R must be a finite number > 0, got {text}")
    return v


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL|sweep",
                   help="a shipped model, a model directory, 'minilm', 'gpt2-random'; or 'sweep' for the experiments")
    p.add_argument("--layer", type=nonneg_int, metavar="L", help="the layer (required unless sweep)")
    p.add_argument("--head", type=nonneg_int, metavar="H", help="one head (default: the whole attention sublayer)")
    mask = p.add_mutually_exclusive_group()
    mask.add_argument("--masked", dest="masked", action="store_true", default=None,
                      help="apply a causal mask (default: the model's own)")
    mask.add_argument("--unmasked", dest="masked", action="store_false", help="no mask")
    ln = p.add_mutually_exclusive_group()
    ln.add_argument("--layernorm", dest="layernorm", action="store_true", default=None,
                    help="inputs are LayerNorm-normalised tokens (the centred ball of radius sqrt(d)); "
                         "default when the model has a LayerNorm in front of this attention")
    ln.add_argument("--no-layernorm", dest="layernorm", action="store_false",
                    help="inputs are what the attention reads, in the ball of radius R")
    p.add_argument("--n", type=pos_int, metavar="N", help="number of tokens (default 16; sweep: the largest n)")
    p.add_argument("--radius", type=_radius, metavar="R",
                   help="radius of the token set (default: sqrt(d) with LayerNorm, else the largest real input norm)")
    p.add_argument("--input", choices=("random", "text", "adversarial"), default="random",
                   help="where 'local' is measured: a random point, real text, or the adversarial search's best")
    p.add_argument("--save-input", metavar="FILE", help="write the input attaining 'lower' (.npy, [n, d])")
    p.add_argument("--steps", type=nonneg_int, metavar="S", help="ascent steps (default 40; sweep: its plan's)")
    p.add_argument("--exact", action="store_true", help="local: full Jacobian + SVD instead of power iteration")
    p.add_argument("--text", metavar="FILE", help="real text to use (default: KJV if installed, else a sample)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="random seed (default 0)")
    g = p.add_argument_group("sweep options (assay lipschitz sweep)")
    g.add_argument("--out", metavar="DIR", default="lipschitz-sweep", help="sweep output directory")
    g.add_argument("--quick", action="store_true", help="a small sweep (minutes)")
    g.add_argument("--models", metavar="LIST",
                   help="comma-separated sweep configurations (default: all; see docs/lipschitz.md)")


def _save_npy(path: str, array) -> None:
    """Write ``array`` to ``path`` as .npy atomically (a temporary file, then a rename)."""
    import tempfile

    import numpy as np

    target = Path(path)
    if target.is_dir():
        raise BadInput(f"--save-input {path}: is a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        buf = io.BytesIO()
        np.save(buf, array)
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getvalue())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@command(
    "lipschitz",
    help="paper 2: Lipschitz constant of attention at an input (local), over n tokens in a set (lower, "
         "proved upper); 'assay lipschitz sweep' runs the paper's experiments",
    example="assay lipschitz minilm --layer 0 --head 0 --n 32 --input adversarial --json\n"
            "  assay lipschitz sweep --quick --out lipschitz-sweep",
    args=_args,
)
def lipschitz_cmd(args: argparse.Namespace) -> Outcome:
    from assay.lipschitz.api import torch_threads

    if args.model == "sweep":
        from assay.lipschitz.sweep import run_sweep

        with torch_threads(1):
            summary = run_sweep(args.out, quick=args.quick, configs=args.models, seed=args.seed, max_n=args.n,
                                steps=args.steps)
        return Outcome(summary, text=f"wrote {summary['report']}")
    if args.layer is None:
        raise BadInput("--layer is required (e.g. assay lipschitz MODEL --layer 0)")
    if args.save_input and Path(args.save_input).is_dir():
        raise BadInput(f"--save-input {args.save_input}: is a directory")
    from assay.lipschitz.api import analyze
    from assay.lipschitz.models import load_model

    model = load_model(args.model)
    with torch_threads(1):
        res = analyze(model, args.layer, head=args.head, masked=args.masked, layernorm=args.layernorm,
                      n=args.n or 16, radius=args.radius, input_kind=args.input,
                      steps=40 if args.steps is None else args.steps, seed=args.seed, exact=args.exact,
                      text=args.text)  # fmt: skip
    data = res.as_dict()
    data["model"] = args.model
    data["saved_input"] = None
    if args.save_input:
        _save_npy(args.save_input, res.X_best.numpy())
        data["saved_input"] = args.save_input
    b = res.bounds
    text = "\n".join([
        f"{res.label}; n = {res.n}; set: {res.set_kind} of radius {res.radius:.6g}",
        f"local  ||J(X)||_2 = {res.local:.6g} at the {res.input_kind} input "
        f"({res.local_method}, {res.local_iterations} iterations, residual {res.local_residual:.2g}); "
        f"data-dependent bound there {res.local_upper:.6g}",
        f"lower  sup ||J|| >= {res.lower:.6g} (attained; seed {res.lower_seed})",
        f"upper  sup ||J|| <= {res.upper:.6g} (proved; sqrt(n) bound {b['sqrt_n']:.6g}, "
        f"n-independent bound {b['mean_field_limit']:.6g})",
    ])  # fmt: skip
    return Outcome(data, text=text)
