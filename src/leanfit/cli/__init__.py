"""The ``leanfit`` command: one module per subcommand, each with ``register(subparsers)``.

Each subcommand module adds its parser and sets ``func`` to a function of the parsed
arguments that returns the exit code. The CLI holds no logic that the Python API lacks.

Start-up stays short: only the module of the subcommand being run is imported (and it
imports torch, scikit-learn, ... only inside its ``run``). ``leanfit --help`` lists the
subcommands from :data:`SUBCOMMANDS` without importing any of them.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import sys
from collections.abc import Collection, Sequence
from importlib import import_module

from leanfit._version import __version__
from leanfit.exceptions import LeanfitError

#: Subcommand name (also its module under ``leanfit.cli``) -> its line in ``leanfit --help``.
SUBCOMMANDS = {
    "data": "list the vendored data sets or export one to CSV",
    "quantize": "quantize a model with LoftQ (packed low-bit backbone + PEFT LoRA adapter)",
    "finetune": "fine-tune the LoRA adapter of a quantized model (output of leanfit quantize)",
    "evaluate": "held-out perplexity or accuracy, and fidelity to the full-precision model",
    "select": "score training rows by influence, trim the harmful ones, report",
    "experiment": "run an influence-selection scenario (shift, poisoning, ...) and report",
}


def requested_subcommand(argv: Sequence[str]) -> str | None:
    """The subcommand that ``argv`` runs, or None (top-level help, version or an error).

    The top-level parser has no option that takes a value, so a subcommand that runs is
    always the first argument.
    """
    return argv[0] if argv and argv[0] in SUBCOMMANDS else None


def build_parser(complete: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The top-level parser; the subcommands named in ``complete`` (default: all) get their
    own parser, with every option.

    Every subcommand is listed with its summary, but only the modules of ``complete`` are
    imported and register their options; the others are placeholders that only name them.
    """
    parser = argparse.ArgumentParser(
        prog="leanfit",
        description="Lean fine-tuning: LoftQ low-bit quantization with LoRA, and "
        "influence-based training-data selection.",
    )
    parser.add_argument("--version", action="version", version=f"leanfit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, summary in SUBCOMMANDS.items():
        if complete is None or name in complete:
            import_module(f"leanfit.cli.{name}").register(subparsers)
        else:
            subparsers.add_parser(name, help=summary, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``leanfit`` script; returns the process exit code.

    A :class:`~leanfit.exceptions.LeanfitError` is printed as one line on stderr with exit
    code 2 (no traceback); Ctrl-C as one line with exit code 130 (what a shell reports for
    SIGINT); anything else is a bug and keeps its traceback.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    command = requested_subcommand(argv)
    parser = build_parser(() if command is None else (command,))
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    quiet = getattr(args, "quiet", False)
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")
    if quiet:  # also transformers' own bars ("Loading weights"), unless the user chose
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        return int(args.func(args))
    except LeanfitError as err:
        print(f"leanfit {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"leanfit {args.command}: interrupted", file=sys.stderr)
        return 130


def script() -> None:
    """The ``leanfit`` console script: :func:`main`, then exit without tearing the interpreter
    down.

    Python's normal shutdown frees every object of every imported module one by one: 0.6 s
    after importing torch, 1.3 s after a transformers model's code, waited for after the
    command's work is done. Here the exit handlers registered with :mod:`atexit` (logging,
    multiprocessing, Dask) still run and the standard streams are flushed, then the process
    ends with :func:`os._exit`. An unexpected exception still leaves through the normal path
    with its traceback. Python code calls :func:`main` instead, which returns, and
    ``python -m leanfit.cli`` exits the normal way (so that profilers and debuggers wrapping
    it see the end of the program).
    """
    code = main()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
