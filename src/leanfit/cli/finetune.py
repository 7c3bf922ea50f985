"""``leanfit finetune``: train a LoRA adapter on the output of ``leanfit quantize``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from leanfit.cli import SUBCOMMANDS
from leanfit.finetune.options import DEVICES, DTYPES, SCHEDULES, TASKS

if TYPE_CHECKING:
    from leanfit.finetune.runs import DataSpec


#: Parameters of FinetuneConfig and finetune_directory that an option of another name sets (an error
#: names the option: :func:`leanfit.cli.in_option_names`).
API_NAMES = {"learning_rate": "lr", "out_dir": "out"}


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
    parser.add_argument("--out", type=Path, required=True, metavar="RUN_DIR", help="run directory")
    parser.add_argument("--task", choices=TASKS, default="causal-lm", help="default causal-lm")
    parser.add_argument("--text", help="causal LM data: pride_and_prejudice or a UTF-8 text file")
    parser.add_argument("--data", help="classification data: tweets or a CSV file")
    parser.add_argument("--text-column", default="text", help="CSV text column (text)")
    parser.add_argument("--label-column", default="label", help="CSV label column (label)")
    parser.add_argument(
        "--eval-fraction", type=float, default=0.1, help="held-out share of the data (0.1)"
    )
    parser.add_argument(
        "--max-examples", type=int, help="at most this many training / held-out examples"
    )
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
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimizer steps")
    length.add_argument("--epochs", type=int, help="passes over the data (default 1)")
    parser.add_argument("--batch-size", type=int, default=8, help="examples per micro-batch (8)")
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step (1)")
    parser.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (2e-4)")
    parser.add_argument("--schedule", choices=SCHEDULES, default="linear", help="(linear)")
    parser.add_argument("--warmup-steps", type=int, default=0, help="linear warmup steps (0)")
    parser.add_argument(
        "--max-length", type=int, default=256, help="tokens per block / truncation (256)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed (0)")
    parser.add_argument(
        "--eval-every", type=int, default=0, help="evaluate every N steps (0: at the end)"
    )
    parser.add_argument(
        "--checkpoint-every", type=int, default=0, help="checkpoint every N steps (0: none)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue an interrupted run from its checkpoint"
    )
    parser.add_argument("--device", choices=DEVICES, default="auto", help="(auto)")
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="compute precision: bfloat16 runs under autocast, LoRA weights and optimizer "
        "state stay float32 (float32)",
    )
    parser.add_argument(
        "--frozen-dtype",
        choices=DTYPES,
        default="float32",
        help="storage of the frozen float tensors (embeddings, norms); bfloat16 needs "
        "--dtype bfloat16 (float32)",
    )
    parser.add_argument(
        "--no-gradient-checkpointing",
        dest="gradient_checkpointing",
        action="store_false",
        help="keep every activation for backward: faster steps, much more memory (default: "
        "checkpoint each block and recompute it in backward, and map large blocks of memory "
        "on their own so that freed activations leave the process)",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing RUN_DIR")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def data_spec(args: argparse.Namespace) -> DataSpec:
    """The :class:`~leanfit.finetune.runs.DataSpec` of ``--text``/``--data`` and columns."""
    from leanfit.exceptions import BadInputError
    from leanfit.finetune.runs import DataSpec

    wanted, other = ("text", "data") if args.task == "causal-lm" else ("data", "text")
    if getattr(args, other) is not None:
        raise BadInputError(f"--{other} is not used by --task {args.task}; give --{wanted}")
    source = getattr(args, wanted)
    if source is None:
        example = "pride_and_prejudice" if wanted == "text" else "tweets"
        raise BadInputError(f"--task {args.task} needs --{wanted} (e.g. {example} or a file)")
    return DataSpec(
        source=source,
        text_column=args.text_column,
        label_column=args.label_column,
        eval_fraction=args.eval_fraction,
        seed=args.seed,
        max_examples=args.max_examples,
    )


def set_threads(threads: int | None) -> None:
    import torch

    from leanfit.exceptions import bad_value

    if threads is not None:
        if threads < 1:
            raise bad_value("--threads", threads, "an int >= 1")
        torch.set_num_threads(threads)


def run(args: argparse.Namespace) -> int:
    from leanfit.finetune.runs import finetune_directory
    from leanfit.finetune.training import FinetuneConfig

    config = FinetuneConfig(
        task=args.task,
        steps=args.steps,
        epochs=args.epochs,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        learning_rate=args.lr,
        schedule=args.schedule,
        warmup_steps=args.warmup_steps,
        seed=args.seed,
        eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every,
        max_length=args.max_length,
        device=args.device,
        dtype=args.dtype,
        frozen_dtype=args.frozen_dtype,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    spec = data_spec(args)
    set_threads(args.threads)
    if args.gradient_checkpointing:  # the lean mode: activations' memory given back too
        from leanfit.heap import map_large_blocks

        map_large_blocks()
    result = finetune_directory(
        args.directory,
        args.out,
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
