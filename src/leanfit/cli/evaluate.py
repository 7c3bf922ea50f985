"""``leanfit evaluate``: held-out quality and fidelity of a fine-tuned or quantized model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from leanfit.cli import SUBCOMMANDS, add_config_options, config_from_args, set_threads
from leanfit.finetune.options import DataSpec, EvaluateConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help=SUBCOMMANDS["evaluate"],
        description="Evaluate PATH, a leanfit finetune run directory (on its held-out data, "
        "with its trained adapter) or a leanfit quantize output (with its saved adapter). "
        "Causal LM: sliding-window perplexity on the held-out text (windows of --window "
        "tokens moved by --stride: each scored token has at least window - stride tokens of "
        "context) and the mean next-token KL from the original model. Classification: "
        "accuracy and macro-F1, and the embedding cosine to the original encoder. Prints JSON.",
    )
    parser.add_argument("path", metavar="PATH", type=Path, help="run directory or quantized DIR")
    parser.add_argument("--task", choices=["causal-lm", "classification"], help="for a DIR")
    parser.add_argument("--text", help="causal LM data for a DIR (pride_and_prejudice or file)")
    parser.add_argument("--base", type=Path, help="original checkpoint (default: recorded)")
    add_config_options(parser, EvaluateConfig)
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from leanfit.finetune.runs import evaluate_directory

    set_threads(args.threads)
    result = evaluate_directory(
        args.path,
        task=args.task,
        data=None if args.text is None else DataSpec(args.text),
        base=args.base,
        settings=config_from_args(EvaluateConfig, args),
        progress=not args.quiet,
    )
    text = json.dumps(result, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0
