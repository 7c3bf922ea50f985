"""``leanfit finetune``: train a LoRA adapter on the output of ``leanfit quantize``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from leanfit.cli import SUBCOMMANDS, add_config_options, config_from_args, set_threads
from leanfit.finetune.options import DataSpec, FinetuneConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help=SUBCOMMANDS["finetune"],
        description="Fine-tune a LoRA adapter on DIR (written by leanfit quantize): a causal LM "
        "on text, or a sequence classifier (new head) on a labelled table. RUN_DIR gets "
        "adapter/, metrics.json, config.json and leanfit_run.json; evaluate it with "
        "leanfit evaluate RUN_DIR.",
    )
    parser.add_argument("directory", metavar="DIR", type=Path, help="leanfit quantize output")
    parser.add_argument(
        "--out", dest="out_dir", type=Path, required=True, metavar="RUN_DIR", help="run directory"
    )
    parser.add_argument("--text", help="causal LM data: pride_and_prejudice or a UTF-8 text file")
    parser.add_argument("--data", help="classification data: tweets or a CSV file")
    add_config_options(parser, DataSpec)
    parser.add_argument(
        "--init",
        choices=["loftq", "qlora", "full-precision"],
        default="loftq",
        help="loftq: the adapter as saved (default); qlora: same Q, PEFT's default LoRA init "
        "(start exactly at Q); full-precision: PEFT's default LoRA on the original weights",
    )
    parser.add_argument(
        "--base",
        type=Path,
        help="original checkpoint for --init full-precision (default: the "
        "source recorded by leanfit quantize)",
    )
    add_config_options(parser, FinetuneConfig)
    parser.add_argument(
        "--resume", action="store_true", help="continue an interrupted run from its checkpoint"
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing RUN_DIR")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def data_spec(args: argparse.Namespace) -> DataSpec:
    """The :class:`~leanfit.finetune.options.DataSpec` of ``--text``/``--data`` and columns."""
    from leanfit.exceptions import BadInputError

    wanted, other = ("text", "data") if args.task == "causal-lm" else ("data", "text")
    if getattr(args, other) is not None:
        raise BadInputError(f"--{other} is not used by --task {args.task}; give --{wanted}")
    source = getattr(args, wanted)
    if source is None:
        example = "pride_and_prejudice" if wanted == "text" else "tweets"
        raise BadInputError(f"--task {args.task} needs --{wanted} (e.g. {example} or a file)")
    return config_from_args(DataSpec, args, source=source, seed=args.seed)


def run(args: argparse.Namespace) -> int:
    from leanfit.finetune.runs import finetune_directory

    config = config_from_args(FinetuneConfig, args)
    spec = data_spec(args)
    set_threads(args.threads)
    if args.gradient_checkpointing:  # the lean mode: activations' memory given back too
        from leanfit.heap import map_large_blocks

        map_large_blocks()
    result = finetune_directory(
        args.directory,
        args.out_dir,
        spec,
        config,
        init=args.init,
        base=args.base,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    summary = {
        "steps": len(result.losses),
        "first_loss": result.losses[0],
        "last_loss": result.losses[-1],
        "final_eval": result.evals[-1] if result.evals else None,
        **result.memory,
        "out": str(result.out_dir),
    }
    print(json.dumps(summary))
    return 0
