"""The ``assay`` command.

Conventions are enforced here, once, for every subcommand:

- ``--json`` prints exactly one JSON object on stdout (human-readable text otherwise);
- bad input (:class:`~assay.errors.BadInput`, an unparsable flag) is one line on stderr and exit 2,
  never a traceback;
- a handler returns a :class:`Outcome` whose ``code`` is the exit code (0 success; 1 where a command
  defines a negative answer, e.g. "not proven").

A subcommand is a function decorated with :func:`command`; its ``setup`` adds its arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from assay.errors import BadInput


@dataclass
class Outcome:
    """What a subcommand produced: the JSON object, its exit code and (optionally) human-readable text."""

    data: dict[str, Any]
    code: int = 0
    text: str | None = None


@dataclass
class _Command:
    name: str
    help: str
    example: str
    setup: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], Outcome]
    group: str | None = None


_COMMANDS: list[_Command] = []


def command(
    name: str,
    help: str,
    example: str,
    args: Callable[[argparse.ArgumentParser], None] = lambda p: None,
    group: str | None = None,
) -> Callable[[Callable[[argparse.Namespace], Outcome]], Callable[[argparse.Namespace], Outcome]]:
    """Register ``run(args) -> Outcome`` as ``assay [group] name``; ``args`` adds its arguments."""

    def deco(run: Callable[[argparse.Namespace], Outcome]) -> Callable[[argparse.Namespace], Outcome]:
        _COMMANDS.append(_Command(name, help, example, args, run, group))
        return run

    return deco


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise BadInput(f"{self.prog}: {message}")


# ---------------------------------------------------------------------------------------------
# Argument types: each raises BadInput with a message naming the flag's problem.


def ids(text: str) -> list[int]:
    """Parse comma-separated token ids ``"1,2,3"`` (an empty string is the empty list)."""
    text = text.strip()
    if not text:
        return []
    out = []
    for part in text.split(","):
        part = part.strip()
        try:
            out.append(int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a comma-separated list of token ids: {text!r}") from None
    return out


def nonneg_int(text: str) -> int:
    """Parse an integer >= 0."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def pos_int(text: str) -> int:
    """Parse an integer >= 1."""
    v = nonneg_int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def pos_float(text: str) -> float:
    """Parse a finite float > 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (v > 0 and v < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return v


def check_ids_in_vocab(values: list[int], d_vocab: int, flag: str) -> None:
    """Raise BadInput if any id is outside 0..d_vocab-1."""
    for v in values:
        if not 0 <= v < d_vocab:
            raise BadInput(f"{flag}: token id {v} out of range 0..{d_vocab - 1}")


def load_model(name: str, dtype: Any = None) -> Any:
    """Load a model by directory or shipped name (BadInput if unknown or corrupt)."""
    from assay.model import load

    return load(name, dtype=dtype)


def tokens_from(args: argparse.Namespace, model: Any, ids_attr: str, text_attr: str) -> list[int]:
    """Return token ids from ``--X`` (ids) or ``--X-text`` (needs a tokenizer), checked against the vocab."""
    values = getattr(args, ids_attr, None)
    text = getattr(args, text_attr, None)
    flag = "--" + ids_attr.replace("_", "-")
    if text is not None:
        if values:
            raise BadInput(f"give {flag} or {flag}-text, not both")
        tok = getattr(model, "tokenizer", None)
        if tok is None:
            raise BadInput(f"{flag}-text: this model has no tokenizer; pass token ids with {flag}")
        values = tok.encode(text).ids
    values = list(values or [])
    check_ids_in_vocab(values, model.cfg.d_vocab, flag)
    return values


# ---------------------------------------------------------------------------------------------
# Parser and dispatch.


def build_parser() -> argparse.ArgumentParser:
    """Return the full ``assay`` argument parser."""
    import assay.commands  # noqa: F401  (registers every subcommand)

    parser = _Parser(
        prog="assay",
        description="What a small transformer provably does, and why.",
        epilog="Run 'assay COMMAND --help' for a command's options and an example.",
    )
    from assay import __version__

    parser.add_argument("--version", action="version", version=f"assay {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    groups: dict[str, Any] = {}
    for c in _COMMANDS:
        if c.group is None:
            target = sub
        else:
            if c.group not in groups:
                gp = sub.add_parser(c.group, help=_GROUP_HELP.get(c.group, ""))
                groups[c.group] = gp.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", parser_class=_Parser)
                gp.set_defaults(_group_parser=gp)
            target = groups[c.group]
        p = target.add_parser(
            c.name,
            help=c.help,
            description=c.help.replace("%%", "%"),  # help= is %-formatted by argparse, description is not
            epilog=f"example:\n  {c.example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        c.setup(p)
        p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
        p.set_defaults(_run=c.run)
    return parser


_GROUP_HELP = {
    "addition": "paper 3: the one-layer model that adds 5-digit numbers",
    "saturation": "paper 4: saturated attention, bits and threshold circuits",
}


def _print_human(out: Outcome) -> None:
    if out.text is not None:
        print(out.text)
        return
    for k, v in out.data.items():
        print(f"{k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}")


def main(argv: list[str] | None = None) -> int:
    """Run the ``assay`` command; return its exit code (0 ok, 1 negative answer, 2 bad input)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if getattr(args, "_run", None) is None:
            gp = getattr(args, "_group_parser", None)
            if gp is None:
                parser.print_help(sys.stderr)
                return 2
            choices = ", ".join(c.name for c in _COMMANDS if c.group == args.command)
            raise BadInput(f"{gp.prog}: choose a subcommand ({choices})")
        start = time.perf_counter()
        out = args._run(args)
        out.data.setdefault("seconds", round(time.perf_counter() - start, 3))
        if args.json:
            print(json.dumps(out.data, default=_json_default))
        else:
            _print_human(out)
        return out.code
    except BadInput as e:
        print(f"assay: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        print(f"assay: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("assay: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _one_line(s: str) -> str:
    return " ".join(s.split())


if __name__ == "__main__":
    sys.exit(main())
