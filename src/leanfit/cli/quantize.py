"""``leanfit quantize``: LoftQ-quantize a checkpoint into a packed backbone plus a LoRA adapter."""

from __future__ import annotations

import argparse
from pathlib import Path

from leanfit.cli import SUBCOMMANDS, add_config_options
from leanfit.pipeline.config import LoftQConfig
from leanfit.pretrained import PACKAGES, model_path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quantize",
        help=SUBCOMMANDS["quantize"],
        description="Quantize the attention and MLP linear layers of MODEL to low-bit codes "
        "while fitting a LoRA initialization to the quantization error (LoftQ), streaming the "
        "checkpoint tensor by tensor. OUT gets backbone/ (packed weights, config, tokenizer), "
        "adapter/ (PEFT LoRA), loftq_report.{json,md}; load it with "
        "leanfit.checkpoints.load(OUT).",
    )
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="a transformers directory (safetensors), a .gguf file, or a packaged model: "
        + ", ".join(sorted(PACKAGES)),
    )
    parser.add_argument("--out", dest="out_dir", type=Path, required=True, help="output directory")
    add_config_options(parser, LoftQConfig)
    parser.add_argument(
        "--target",
        dest="targets",
        action="append",
        metavar="PATTERN",
        help="module name or regex to quantize (repeatable, one pattern each: a regex may hold "
        "commas; default: the model type's table of attention and MLP layers, else all linear "
        "layers of its blocks)",
    )
    parser.add_argument(
        "--export-dequantized",
        action="store_true",
        help="also write dequantized/: a float16 transformers model of Q (use with adapter/)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out (without --resume: discard an unfinished run of it)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the unfinished run of --out (killed, interrupted or over --max-memory) "
        "from its finished shards; same inputs and options required",
    )
    parser.add_argument(
        "--max-memory",
        dest="max_memory_bytes",
        metavar="SIZE",
        help="memory budget, e.g. 4GB or 500MB: refuse up front if the estimated peak is "
        "over it, stop (resumable) if the run goes over it",
    )
    parser.add_argument(
        "--max-shard-size",
        dest="max_shard_bytes",
        metavar="SIZE",
        default="64MiB",
        help="backbone shard size, e.g. 64MiB (default), 10MB; smaller shards use less memory",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's choice); 1 is often fastest on a busy machine",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="layers quantized at a time by as many threads, each on one torch thread "
        "(default 1); same output as --workers 1 --threads 1; holds that many layers in memory",
    )
    parser.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="quantize the layers on Dask workers: a scheduler address (tcp://host:8786), or "
        "'local' for one single-threaded worker process per CPU; same output as without "
        "(with --threads 1); needs leanfit[distributed]",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def resolve_model(model: str) -> Path:
    """An existing path as given, else a packaged model name (``minilm``, ``smollm2``)."""
    path = Path(model)
    if path.exists() or model not in PACKAGES:
        return path
    return model_path(model)


def config_of(args: argparse.Namespace) -> LoftQConfig:
    """The run's config from the parsed options: each ``--target`` is one pattern, as given."""
    from leanfit.cli import config_from_args

    return config_from_args(
        LoftQConfig, args, targets=tuple(args.targets) if args.targets else None
    )


def run(args: argparse.Namespace) -> int:
    from leanfit.cli import set_threads
    from leanfit.exceptions import BadInputError
    from leanfit.pipeline.memory import parse_size
    from leanfit.pipeline.walker import quantize_checkpoint

    config = config_of(args)
    set_threads(args.threads)
    options = {
        "overwrite": args.overwrite,
        "progress": not args.quiet,
        "export_dequantized": args.export_dequantized,
        "max_shard_bytes": parse_size(args.max_shard_bytes, "max_shard_bytes"),
        "resume": args.resume,
    }
    if args.scheduler:
        from leanfit.pipeline.distributed import quantize_checkpoint_distributed

        if args.max_memory_bytes is not None:
            raise BadInputError(
                "--max-memory bounds one process; it cannot be combined with --scheduler "
                "(give the Dask workers a memory limit instead)"
            )
        if args.workers != 1:
            raise BadInputError(
                "--workers sets the threads of this process; with --scheduler the Dask "
                "workers quantize the layers (give the cluster more workers instead)"
            )
        report = quantize_checkpoint_distributed(
            resolve_model(args.model), args.out_dir, config, client=args.scheduler, **options
        )
    else:
        max_memory = (
            None
            if args.max_memory_bytes is None
            else parse_size(args.max_memory_bytes, "max_memory_bytes")
        )
        report = quantize_checkpoint(
            resolve_model(args.model),
            args.out_dir,
            config,
            max_memory_bytes=max_memory,
            workers=args.workers,
            **options,
        )
    totals = report.summary()
    measure = (
        "relative output error on the calibration tokens"
        if config.calibration
        else "relative Frobenius"
    )
    print(
        f"{totals['matrices']} matrices ({report.target_rule}), "
        f"{totals['bits_per_param']:.3f} bits/param stored: "
        f"QLoRA error {totals['qlora_error']:.4f}, {config.init} error "
        f"{totals['loftq_error']:.4f} ({measure}, all targets)"
    )
    if report.allocation is not None:
        plan = report.allocation
        widths = ", ".join(f"{n} at {b} bits" for b, n in plan["matrices_per_width"].items())
        print(
            f"bit allocation ({plan['solver']} solver): {widths}; "
            f"{plan['stored_bits_per_param']:.4f} stored bits/param within {plan['bits_budget']:g}"
        )
    print(
        f"time {totals['seconds']:.1f} s, peak RSS {totals['peak_rss_mb']:.0f} MB; "
        f"wrote {args.out_dir} (backbone/, adapter/, loftq_report.md)"
    )
    return 0
