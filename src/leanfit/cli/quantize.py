"""``leanfit quantize``: LoftQ-quantize a checkpoint into a packed backbone plus a LoRA adapter."""

from __future__ import annotations

import argparse
from pathlib import Path

from leanfit.cli import SUBCOMMANDS
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
    parser.add_argument("--bits", type=int, default=2, help="bits per weight (default 2)")
    mixed = parser.add_mutually_exclusive_group()
    mixed.add_argument(
        "--avg-bits",
        type=float,
        help="mixed precision: the first layers get --high-bits so the average is at most this",
    )
    mixed.add_argument(
        "--first-high-layers",
        type=int,
        help="mixed precision: number of first layers at --high-bits",
    )
    mixed.add_argument(
        "--bits-budget",
        type=float,
        help="bit allocation: each matrix gets --bits to --high-bits so that the stored bits "
        "per parameter (codes + block scales; NF block 64: 2.5 at 2 bits, 4.5 at 4) stay within "
        "this and the total LoftQ error is smallest",
    )
    parser.add_argument(
        "--high-bits", type=int, default=4, help="bits of the first layers (default 4)"
    )
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank r (default 16)")
    parser.add_argument(
        "--alpha", dest="lora_alpha", type=float, help="LoRA alpha (default: the rank)"
    )
    parser.add_argument(
        "--iters", type=int, default=5, help="LoftQ alternating steps T (default 5)"
    )
    parser.add_argument("--method", choices=["nf", "uniform"], default="nf", help="quantizer")
    parser.add_argument("--block-size", type=int, default=64, help="values per block (64)")
    parser.add_argument(
        "--svd", choices=["randomized", "exact"], default="randomized", help="truncated SVD"
    )
    parser.add_argument(
        "--double-quant", action="store_true", help="store the block scales as 8-bit codes"
    )
    parser.add_argument(
        "--target",
        dest="targets",
        action="append",
        metavar="PATTERN",
        help="module name or regex to quantize (repeatable; default: the model type's table "
        "of attention and MLP layers, else all linear layers of its blocks)",
    )
    parser.add_argument(
        "--include-conv", action="store_true", help="also quantize matched convolutions"
    )
    parser.add_argument(
        "--init",
        choices=["loftq", "qlora"],
        default="loftq",
        help="loftq (default), or qlora: Q = quantize(W) and a zero LoRA update (--iters ignored)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--calibration",
        metavar="TEXT",
        help="calibrated LoftQ: pride_and_prejudice or a UTF-8 text file; the LoRA init then "
        "minimizes each layer's output error on that text (run block by block; llama models "
        "such as smollm2; its last 10%% of chapters/paragraphs are never used)",
    )
    parser.add_argument(
        "--calib-tokens",
        type=int,
        default=2048,
        metavar="N",
        help="calibration tokens (default 2048)",
    )
    parser.add_argument(
        "--calib-damp",
        type=float,
        default=0.01,
        help="Gram damping: damp · mean(diag G) added to the diagonal (default 0.01)",
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


def run(args: argparse.Namespace) -> int:
    from leanfit.cli import set_threads
    from leanfit.exceptions import BadInputError
    from leanfit.pipeline.config import LoftQConfig
    from leanfit.pipeline.memory import parse_size
    from leanfit.pipeline.walker import quantize_checkpoint

    config = LoftQConfig(
        bits=args.bits,
        rank=args.rank,
        iters=args.iters,
        method=args.method,
        block_size=args.block_size,
        svd=args.svd,
        lora_alpha=args.lora_alpha,
        double_quant=args.double_quant,
        avg_bits=args.avg_bits,
        first_high_layers=args.first_high_layers,
        high_bits=args.high_bits,
        bits_budget=args.bits_budget,
        targets=tuple(args.targets) if args.targets else None,
        include_conv=args.include_conv,
        seed=args.seed,
        init=args.init,
        calibration=args.calibration,
        calib_tokens=args.calib_tokens,
        calib_damp=args.calib_damp,
    )
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
