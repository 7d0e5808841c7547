"""The ``tokenbench`` command line.

Each subcommand lives beside the code it drives and contributes two functions::

    def add_cli(subparsers) -> None        # adds its parser, with set_defaults(func=...)

The modules are listed in ``COMMAND_MODULES``; a new subcommand adds one line there.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = [
    "tokenbench.harness.cli_list",
    "tokenbench.harness.cli_run",
    "tokenbench.harness.train",
    "tokenbench.harness.cli_checkpoint",
    "tokenbench.datasets.cli_tokens",
    "tokenbench.harness.flops",
    "tokenbench.harness.report",
]

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
        importlib.import_module(mod).add_cli(sub)
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


class UserError(Exception):
    """A mistake in what the user asked for: printed as one clear line, exit status 2."""


def parse_params(items: list[str]) -> dict:
    """``["threshold=0.1", "r=[8, 4]"]`` -> ``{"threshold": 0.1, "r": [8, 4]}`` (values as Python literals,
    falling back to plain strings)."""
    import ast

    out = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"reducer parameter {item!r} is not of the form NAME=VALUE")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = ast.literal_eval(v.strip())
        except (ValueError, SyntaxError):
            out[k.strip()] = v.strip()
    return out


if __name__ == "__main__":
    sys.exit(main())
