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
import re
import sys
from collections.abc import Collection, Mapping, Sequence
from importlib import import_module

from leanfit._version import __version__
from leanfit.exceptions import LeanfitError
from leanfit.quiet import dependency_noise_dropped

#: Subcommand name (also its module under ``leanfit.cli``) -> its line in ``leanfit --help``.
SUBCOMMANDS = {
    "data": "list the vendored data sets or export one to CSV",
    "quantize": "quantize a model with LoftQ (packed low-bit backbone + PEFT LoRA adapter)",
    "finetune": "fine-tune the LoRA adapter of a quantized model (output of leanfit quantize)",
    "evaluate": "held-out perplexity or accuracy, and fidelity to the full-precision model",
    "select": "score training rows by influence, trim the harmful ones, report",
    "experiment": "run an influence-selection scenario (shift, poisoning, ...) and report",
}


def parser_of(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The parser of a subcommand of the top-level ``parser``."""
    (subparsers,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices[command]


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


def option_names(parser: argparse.ArgumentParser, aliases: Mapping[str, str]) -> dict[str, str]:
    """The option that sets each parameter of the Python API, ``name -> --option``: every
    option's destination (``first_high_layers -> --first-high-layers``), and the ``aliases``
    of a subcommand for the API names that differ from it (``learning_rate -> lr``)."""
    options = {
        action.dest: max(action.option_strings, key=len)
        for action in parser._actions
        if action.option_strings and action.dest != "help"
    }
    return options | {name: options[dest] for name, dest in aliases.items() if dest in options}


def in_option_names(message: str, options: Mapping[str, str]) -> str:
    """An error of the Python API said in the command's words: ``overwrite=True`` becomes
    ``--overwrite``, ``bits=4`` and ``method='nf'`` become ``--bits 4`` and ``--method nf``,
    and a parameter name becomes its option where it is a name: anywhere when it holds an
    underscore (``first_high_layers``; prose has none), else where it starts the message or
    a clause (``rank must be …``)."""
    for name, option in sorted(options.items(), key=lambda item: -len(item[0])):
        word = re.escape(name)
        message = re.sub(rf"\b{word}=True\b", option, message)
        message = re.sub(rf"\b{word}=(['\"]?)([^\s,;)'\"]+)\1", rf"{option} \2", message)
        if "_" in name:
            message = re.sub(rf"(?<![\w.-]){word}(?![\w.])", option, message)
        else:
            message = re.sub(rf"(^|; |: ){word}(?= must\b)", rf"\g<1>{option}", message)
    return message


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``leanfit`` script; returns the process exit code.

    A :class:`~leanfit.exceptions.LeanfitError` is printed as one line on stderr with exit
    code 2 (no traceback); Ctrl-C as one line with exit code 130 (what a shell reports for
    SIGINT); anything else is a bug and keeps its traceback.
    """
    with dependency_noise_dropped():
        return _run(sys.argv[1:] if argv is None else list(argv))


def _run(argv: list[str]) -> int:
    """:func:`main` on ``argv``."""
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
        subcommand = import_module(f"leanfit.cli.{args.command}")
        options = option_names(
            parser_of(parser, args.command), getattr(subcommand, "API_NAMES", {})
        )
        print(
            f"leanfit {args.command}: error: {in_option_names(str(err), options)}", file=sys.stderr
        )
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
