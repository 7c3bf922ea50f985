"""The ``leanfit`` command: one module per subcommand, each with ``register(subparsers)``.

Each subcommand module adds its parser and sets ``func`` to a function of the parsed
arguments that returns the exit code. The CLI holds no logic that the Python API lacks.

Start-up stays short: only the module of the subcommand being run is imported (and it
imports torch, scikit-learn, ... only inside its ``run``). ``leanfit --help`` lists the
subcommands from :data:`SUBCOMMANDS` without importing any of them.

An option stores into the name of the Python API parameter it sets (its ``dest``), and
options of a config class are derived from its fields (:func:`add_config_options`). An error
about a parameter is printed with the option that sets it, found in the parser's own table
(:func:`option_table`); the library never sees option names.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import logging
import os
import sys
import typing
from collections.abc import Collection, Mapping, Sequence
from importlib import import_module
from typing import Any, TypeVar

from leanfit._version import __version__
from leanfit.exceptions import LeanfitError
from leanfit.quiet import dependency_noise_dropped

C = TypeVar("C")

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


def option_table(parser: argparse.ArgumentParser) -> dict[str, str]:
    """The parser's own table of what sets each parameter: ``dest -> option`` (its longest
    spelling, ``learning_rate -> --lr``), and ``dest -> METAVAR`` for a positional argument.

    An option whose Python API parameter has another name than the option declares it as
    its ``dest`` (``--lr`` sets ``learning_rate``), so that an error about the parameter
    (:attr:`~leanfit.exceptions.LeanfitError.param`) is said with the option.
    """
    return {
        action.dest: max(action.option_strings, key=len)
        if action.option_strings
        else str(action.metavar or action.dest)
        for action in parser._actions
        if action.dest not in ("help", argparse.SUPPRESS)
    }


def in_command_words(err: LeanfitError, options: Mapping[str, str]) -> str:
    """The message of ``err`` with its parameter called by the option that sets it."""
    if err.param is not None and err.param in options:
        return err.naming(options[err.param])
    return str(err)


def config_option(field: dataclasses.Field) -> str:
    """The option of a config field: its ``option`` metadata, else ``--field-name``."""
    return str(field.metadata.get("option", "--" + field.name.replace("_", "-")))


def add_config_options(parser: argparse.ArgumentParser, config_type: type) -> None:
    """Add to ``parser`` an option for each field of the dataclass ``config_type`` whose
    metadata has a ``help``, so that each default and help text is written once, in the
    config class.

    The option (:func:`config_option`) stores into the field's name, with the field's type
    (or the metadata's ``type``, which turns the option's text into what the config accepts)
    and default and the metadata's ``choices`` and ``metavar``; its help ends with the
    default unless that is None. A bool field is a switch to the other value (name it
    ``--no-...`` when the default is True). A tuple field is a repeatable option that takes
    comma-separated items; not given, the field keeps its default. Fields of the same
    metadata ``group`` exclude each other.
    """
    hints = typing.get_type_hints(config_type)
    groups: dict[str, argparse._MutuallyExclusiveGroup] = {}
    for field in dataclasses.fields(config_type):
        if "help" not in field.metadata:
            continue
        group = field.metadata.get("group")
        owner: argparse._ActionsContainer = parser
        if group is not None:
            if group not in groups:
                groups[group] = parser.add_mutually_exclusive_group()
            owner = groups[group]
        owner.add_argument(config_option(field), **_option_settings(field, hints[field.name]))


def _option_settings(field: dataclasses.Field, hint: object) -> dict[str, Any]:
    """The keyword arguments of ``add_argument`` for a config field of type ``hint``."""
    help_text = str(field.metadata["help"])
    if hint is bool:
        action = "store_false" if field.default else "store_true"
        return {"dest": field.name, "action": action, "help": help_text}
    settings: dict[str, Any] = {"dest": field.name, "metavar": field.metadata.get("metavar")}
    if _is_tuple(hint):
        shown = ",".join(str(item) for item in field.default)  # type: ignore[union-attr]
        return {**settings, "action": "append", "help": f"{help_text} (default {shown})"}
    kinds = [kind for kind in typing.get_args(hint) if kind is not type(None)] or [hint]
    if field.default is not None:
        help_text += f" (default {field.default})"
    return {
        **settings,
        "type": field.metadata.get("type", kinds[0]),
        "default": field.default,
        "choices": field.metadata.get("choices"),
        "help": help_text,
    }


def _is_tuple(hint: object) -> bool:
    """Whether a field of type ``hint`` holds a tuple."""
    return typing.get_origin(hint) is tuple


def config_from_args(config_type: type[C], args: argparse.Namespace, **values: object) -> C:
    """The config of the options :func:`add_config_options` added, as parsed in ``args``.

    ``values`` sets the fields that are no such option, or gives an option's value in the
    config's terms where the command line spells it otherwise. A tuple field's option
    given as ``a,b`` and ``c`` is ``("a", "b", "c")``; not given (or with no item), the field
    keeps its default.
    """
    hints = typing.get_type_hints(config_type)
    options: dict[str, object] = {}
    for field in dataclasses.fields(config_type):  # type: ignore[arg-type]
        if "help" not in field.metadata:
            continue
        value = getattr(args, field.name)
        if _is_tuple(hints[field.name]):
            value = comma_items(value)
            if not value:
                continue
        options[field.name] = value
    return config_type(**{**options, **values})


def comma_items(values: Sequence[str] | None) -> tuple[str, ...]:
    """The items of a repeatable option given as comma-separated lists (``["a,b", "c"]`` ->
    ``("a", "b", "c")``), blanks left out; None (not given) has none."""
    return tuple(item.strip() for text in values or () for item in text.split(",") if item.strip())


def set_threads(threads: int | None) -> None:
    """Give torch ``threads`` CPU threads (None: leave torch's choice)."""
    import torch

    from leanfit.checks import check_int

    if threads is not None:
        torch.set_num_threads(check_int("threads", threads, low=1))


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
        options = option_table(parser_of(parser, args.command))
        print(f"leanfit {args.command}: error: {in_command_words(err, options)}", file=sys.stderr)
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
