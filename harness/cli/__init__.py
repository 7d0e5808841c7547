"""The ``tokenbench`` command line: the only code that reads argv or prints for a person.

Each subcommand is a module of this package contributing one function::

    def add_cli(subparsers) -> None        # adds its parser, with set_defaults(func=...)

The modules are listed in ``COMMAND_MODULES``; a new subcommand adds one line there. The library below
raises :class:`~tokenbench.harness.errors.UserError` for a mistake in what was asked; :func:`main` prints
it as one line and exits 2.
"""
from __future__ import annotations

import argparse
import sys

from ..errors import UserError
from . import checkpoint, flops, listing, report, run, tokens, train, train_compare
from .common import parse_params

COMMAND_MODULES = [listing, run, train, train_compare, checkpoint, tokens, flops, report]

EPILOG = """examples:
  tokenbench list                                 reducers (built-in and plugins) and their parameters
  tokenbench run                                  the default comparison suite on this machine (CPU by default)
  tokenbench run --suite my_suite.toml --out results/
  tokenbench report results/default --out reports/
  tokenbench flops --model vit_b --reducer rlt threshold=0.1 --video clip.mp4
  tokenbench tokens --dataset samples --threshold 0.1
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenbench",
        description="Benchmark token reducers (RLT, ToMe, random masking, STA, your own) on video ViTs: "
                    "FLOPs, wall-clock, tokens and top-1, measured the same way for all.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in COMMAND_MODULES:
        mod.add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except UserError as exc:
        print(f"tokenbench {args.command}: error: {exc}", file=sys.stderr)
        return 2


__all__ = ["main", "build_parser", "parse_params", "UserError"]
