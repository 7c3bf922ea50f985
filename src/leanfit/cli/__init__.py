"""The ``leanfit`` command: one module per subcommand, each with ``register(subparsers)``.

Each subcommand module adds its parser and sets ``func`` to a function of the parsed
arguments that returns the exit code. The CLI holds no logic that the Python API lacks.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from leanfit._version import __version__
from leanfit.cli import data, evaluate, experiment, finetune, quantize, select
from leanfit.exceptions import LeanfitError

SUBCOMMANDS = [data, quantize, finetune, evaluate, select, experiment]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="leanfit",
        description="Lean fine-tuning: LoftQ low-bit quantization with LoRA, and "
        "influence-based training-data selection.",
    )
    parser.add_argument("--version", action="version", version=f"leanfit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``leanfit`` script; returns the process exit code.

    A :class:`~leanfit.exceptions.LeanfitError` is printed as one line on stderr with exit
    code 2 (no traceback); anything else is a bug and keeps its traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    logging.basicConfig(
        level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
        format="%(message)s",
    )
    try:
        return int(args.func(args))
    except LeanfitError as err:
        print(f"leanfit {args.command}: error: {err}", file=sys.stderr)
        return 2
