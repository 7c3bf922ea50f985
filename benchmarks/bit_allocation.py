"""Bit allocation under a budget vs LoftQ's first-layers-at-4-bits rule, at the same stored size.

For every target matrix of a model (MiniLM: 37, SmolLM2-135M: 210), LoftQ (rank 16, NF,
block 64, float32 scales) is run at 2, 3 and 4 bits with T = 5 and the seeds
``quantize_checkpoint`` uses, so the measured errors are exactly those of a real run. Then:

- the paper's mixed plan (``avg_bits`` b: the first ⌊L·(b − 2)/2⌋ layers at 4 bits, the rest
  at 2) gives a stored size S (codes + scales, bits per parameter);
- the allocator (:func:`leanfit.pipeline.allocation.allocate_budget`) gets the budget S
  and minimizes the total T = 5 error; the greedy solver too; and the allocator fed cheaper
  error estimates (T = 1, or the QLoRA error ‖W − quantize(W)‖ with no SVD), its plan then
  scored with the real T = 5 errors;
- uniform 2, 3, 4 bits, and the allocator at uniform 3 bits' stored size.

Errors: total relative ``sqrt(Σ‖W − Q − LR‖²) / sqrt(Σ‖W‖²)`` over the targets. For the
proxies, Spearman's rank correlation of the error removed per extra bit (2→3 and 3→4) with
the T = 5 one. SmolLM2 at 2.5 bits (full run): both plans are written by
``quantize_checkpoint`` and their held-out perplexity at initialization (Q + BA, no training)
compared on Pride and Prejudice, as in ``benchmarks/loftq_finetune.py``.

Usage::

    python benchmarks/bit_allocation.py            # both models, 2.25/2.5/3 bits, perplexity
    python benchmarks/bit_allocation.py --quick    # MiniLM, T = 2, 2.5 bits, no perplexity

Writes ``benchmarks/results/bit_allocation.json`` and ``bit_allocation.md``.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch
from _common import write_results
from scipy.stats import spearmanr

from leanfit.checkpoints.source import open_checkpoint
from leanfit.checkpoints.targets import select_targets
from leanfit.finetune.evaluate import perplexity
from leanfit.finetune.runs import DataSpec, build_model, prepare_data, tokenizer_of
from leanfit.finetune.training import FinetuneConfig, finetune
from leanfit.pipeline import LoftQConfig, quantize_checkpoint
from leanfit.pipeline.allocation import (
    MatrixErrors,
    allocate_budget,
    measure_targets,
    stored_bits_per_param,
    total_relative_error,
)
from leanfit.pipeline.plan import plan_bits
from leanfit.pretrained import model_path
from leanfit.reports import markdown_table

RESULTS = Path(__file__).parent / "results"
RANK = 16
PROXIES = {"T=1": 1, "QLoRA": 0}
PPL = {"tokens": 768, "window": 256, "stride": 128, "block": 128}
# The short LoRA run of benchmarks/loftq_finetune.py (its SmolLM2 defaults).
FINETUNE = FinetuneConfig(
    task="causal-lm",
    steps=8,
    batch_size=4,
    learning_rate=1e-3,
    warmup_steps=1,
    max_length=PPL["block"],
    device="cpu",
)


def measure(source: Path, config: LoftQConfig) -> tuple[list[MatrixErrors], list, float]:
    """The targets' errors at 2/3/4 bits (T = config.iters) and the measuring time."""
    with open_checkpoint(source) as checkpoint:
        names = checkpoint.names()
        shapes = {name: checkpoint.shape(name) for name in names}
        targets = select_targets(names, shapes, checkpoint.model_type)
        tic = time.perf_counter()
        measured = measure_targets(checkpoint, targets, config, progress=False)
        return measured, targets, time.perf_counter() - tic


def proxy_seconds(source: Path, config: LoftQConfig) -> dict[str, float]:
    """Time of measuring with each cheaper proxy alone (T = 1; QLoRA: quantization only)."""
    seconds = {}
    for label, iters in PROXIES.items():
        fields = {"iters": 1} if iters else {"init": "qlora"}
        proxy = LoftQConfig(**{**config.to_dict(), **fields})
        seconds[label] = measure(source, proxy)[2]
    return seconds


def gain_correlation(measured: list[MatrixErrors], iters: int) -> float:
    """Spearman correlation of the error removed per extra stored bit (2→3 and 3→4) under a
    proxy and under the full T."""

    def gains(steps: int | None) -> list[float]:
        return [
            (m.squared_error(low, steps) - m.squared_error(low + 1, steps))
            / (8 * (m.nbytes[low + 1] - m.nbytes[low]))
            for m in measured
            for low in (2, 3)
        ]

    return float(spearmanr(gains(iters), gains(None)).statistic)


def plan_row(model: str, plan: str, measured: list[MatrixErrors], bits: dict[str, int], **extra):
    counts = {b: sum(1 for v in bits.values() if v == b) for b in (2, 3, 4)}
    return {
        "model": model,
        "plan": plan,
        **extra,
        "stored_bits_per_param": stored_bits_per_param(measured, bits),
        "error": total_relative_error(measured, bits),
        "matrices_2_3_4": f"{counts[2]}/{counts[3]}/{counts[4]}",
    }


def with_excess(rows: list[dict]) -> list[dict]:
    """``excess_vs_exact``: summed squared error of each plan over the exact allocator's at the
    same budget, minus 1 (the error column squared, as the norms are common); uniform 2 and 4
    bits have no allocator row (at those sizes it can only choose them)."""
    exact = {r["budget"]: r["error"] for r in rows if r["plan"] == "allocator (exact)"}
    for row in rows:
        if row["budget"] in exact:
            row["excess_vs_exact"] = (row["error"] / exact[row["budget"]]) ** 2 - 1
    return rows


def compare(model: str, measured, targets, budgets: list[float]) -> list[dict]:
    """Rule vs allocator (exact, greedy, proxies) at the rule's stored size; uniform widths."""
    rows = []
    for nominal in budgets:
        rule = plan_bits(targets, LoftQConfig(bits=2, avg_bits=nominal, high_bits=4))
        size = stored_bits_per_param(measured, rule)
        label = {"nominal_bits": nominal, "budget": size}
        rows.append(plan_row(model, "first layers at 4 bits", measured, rule, **label))
        exact = allocate_budget(measured, size)
        rows.append(plan_row(model, f"allocator ({exact.solver})", measured, exact.bits, **label))
        greedy = allocate_budget(measured, size, solver="greedy")
        rows.append(plan_row(model, "allocator (greedy)", measured, greedy.bits, **label))
        for name, iters in PROXIES.items():
            proxy = allocate_budget(measured, size, iters=iters)
            rows.append(plan_row(model, f"allocator, {name} errors", measured, proxy.bits, **label))
    for width in (2, 3, 4):
        uniform = {m.name: width for m in measured}
        size = stored_bits_per_param(measured, uniform)
        label = {"nominal_bits": float(width), "budget": size}
        rows.append(plan_row(model, f"uniform {width} bits", measured, uniform, **label))
        if width == 3:
            exact = allocate_budget(measured, size)
            rows.append(
                plan_row(model, f"allocator ({exact.solver})", measured, exact.bits, **label)
            )
    return with_excess(rows)


def held_out_perplexity(directory: Path, init: str, tuned: Path | None) -> dict[str, float]:
    """Held-out perplexity at initialization and, with ``tuned`` (a run directory), after the
    short LoRA run of :data:`FINETUNE`."""
    tokenizer = tokenizer_of(directory)
    train, held = prepare_data(
        DataSpec("pride_and_prejudice"), "causal-lm", tokenizer, max_length=PPL["block"]
    )
    model = build_model(directory, "causal-lm", init=init, seed=0)
    stream = held.reshape(-1)[: PPL["tokens"]]
    result = {"ppl_init": perplexity(model, stream, max_length=PPL["window"], stride=PPL["stride"])}
    if tuned is not None:
        run = finetune(model, train, None, FINETUNE, tuned, progress=False)
        result["ppl_finetuned"] = perplexity(
            model, stream, max_length=PPL["window"], stride=PPL["stride"]
        )
        result["train_loss_first"], result["train_loss_last"] = run.losses[0], run.losses[-1]
    return result


def perplexity_rows(source: Path, config: LoftQConfig, nominal: float, tune: bool) -> list[dict]:
    """SmolLM2: both plans written by quantize_checkpoint; perplexity at initialization and,
    with ``tune``, after a short fine-tuning run."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="bit-allocation-") as tmp:
        rule_dir, alloc_dir = Path(tmp) / "rule", Path(tmp) / "allocator"
        rule = quantize_checkpoint(
            source, rule_dir, LoftQConfig(**{**config.to_dict(), "avg_bits": nominal})
        )
        budget = rule.bits_per_param
        allocated = quantize_checkpoint(
            source, alloc_dir, LoftQConfig(**{**config.to_dict(), "bits_budget": budget})
        )
        for plan, report, directory in (
            ("first layers at 4 bits", rule, rule_dir),
            ("allocator", allocated, alloc_dir),
        ):
            rows.append(
                {
                    "plan": plan,
                    "nominal_bits": nominal,
                    "stored_bits_per_param": report.bits_per_param,
                    "error": report.error,
                    **held_out_perplexity(
                        directory, "loftq", Path(tmp) / f"run-{directory.name}" if tune else None
                    ),
                    "walk_seconds": report.seconds,
                    "allocation_seconds": (report.allocation or {}).get("measure_seconds"),
                }
            )
            print(rows[-1], flush=True)
        rows.append(
            {
                "plan": "original weights (no quantization)",
                "nominal_bits": 16.0,
                **held_out_perplexity(
                    rule_dir, "full-precision", Path(tmp) / "run-original" if tune else None
                ),
            }
        )
    return rows


def markdown(records: list[dict], extra: dict, meta: dict) -> str:
    lines = [
        "# Bit allocation under a memory budget vs the first-layers rule",
        "",
        f"LoftQ rank {meta['rank']}, T = {meta['iters']}, NF quantizer, blocks of 64, float32 "
        "scales (stored bits/param = code bits + 0.5). The rule: LoftQ's mixed precision, the "
        "first ⌊L·(b − 2)/2⌋ layers at 4 bits and the rest at 2 for a nominal average b. The "
        "allocator gets the rule's exact stored size as its budget and minimizes the summed "
        "squared LoftQ error (exact integer program, scipy's HiGHS); `greedy` is the convex-hull "
        "greedy; `T=1 errors` / `QLoRA errors` allocate with those cheaper error estimates and "
        f"are scored with the real T = {meta['iters']} errors. Error: total relative Frobenius "
        "error over all "
        "targets, exactly what `quantize_checkpoint` reports for that plan (same seeds).",
        "",
    ]
    columns = [
        "model",
        "plan",
        "nominal_bits",
        "budget",
        "stored_bits_per_param",
        "error",
        "matrices_2_3_4",
        "excess_vs_exact",
    ]
    table = [{k: r.get(k) for k in columns} for r in records]
    fmt = {
        "budget": ".5f",
        "stored_bits_per_param": ".5f",
        "error": ".4f",
        "excess_vs_exact": ".2e",
    }
    lines += [markdown_table(table, floatfmt=fmt), ""]
    proxy = [
        {
            "model": model,
            **{f"Spearman gain/bit, {p}": v["spearman"][p] for p in PROXIES},
            **{f"measure s, {p}": v["proxy_seconds"][p] for p in PROXIES},
            f"measure s, T={meta['iters']}": v["measure_seconds"],
        }
        for model, v in extra["models"].items()
    ]
    lines += [
        "Cheaper error estimates: Spearman correlation of the error removed per extra bit "
        f"(2→3, 3→4) with the T = {meta['iters']} one, and the time to measure all matrices at "
        "2/3/4 bits (one torch thread, shared CPU).",
        "",
        markdown_table(proxy, floatfmt=".3f"),
        "",
    ]
    if extra.get("perplexity"):
        lines += [
            f"SmolLM2 at a nominal {extra['perplexity'][0]['nominal_bits']:g} bits: both plans "
            "written by `quantize_checkpoint`; held-out perplexity at initialization (Q + BA) "
            f"and after {FINETUNE.steps} LoRA steps (batch {FINETUNE.batch_size} × "
            f"{FINETUNE.max_length} tokens, lr {FINETUNE.learning_rate:g}, as "
            "`benchmarks/loftq_finetune.py`), Pride and Prejudice (last 10 % of chapters held "
            f"out), sliding window {PPL['window']} / stride {PPL['stride']}, first "
            f"{PPL['tokens']} held-out tokens. `allocation_seconds`: measuring the 2/3/4-bit "
            "errors before the walk.",
            "",
            markdown_table(
                extra["perplexity"],
                floatfmt={
                    "stored_bits_per_param": ".5f",
                    "error": ".4f",
                    "ppl_init": ".4g",
                    "ppl_finetuned": ".4g",
                },
            ),
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="MiniLM, T = 2, 2.5 bits only")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument(
        "--no-finetune", action="store_true", help="SmolLM2 perplexity at initialization only"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    iters = 2 if args.quick else 5
    budgets = [2.5] if args.quick else [2.25, 2.5, 3.0]
    config = LoftQConfig(bits=2, rank=RANK, iters=iters)
    records: list[dict] = []
    extra: dict = {"models": {}}
    for model in ["minilm"] if args.quick else ["minilm", "smollm2"]:
        source = model_path(model)
        measured, targets, seconds = measure(source, config)
        records += compare(model, measured, targets, budgets)
        extra["models"][model] = {
            "measure_seconds": seconds,
            "proxy_seconds": proxy_seconds(source, config),
            "spearman": {p: gain_correlation(measured, it) for p, it in PROXIES.items()},
        }
        print(extra["models"][model], flush=True)
        if model == "smollm2":
            extra["perplexity"] = perplexity_rows(source, config, 2.5, not args.no_finetune)
    meta = {
        "rank": RANK,
        "iters": iters,
        "budgets": budgets,
        "threads": args.threads,
        "machine": f"{platform.machine()} {platform.system()}",
        "torch": torch.__version__,
        "quick": args.quick,
        "seconds": time.perf_counter() - start,
    }
    meta.update(extra)
    write_results(
        args.out,
        "bit_allocation",
        quick=args.quick,
        meta=meta,
        records=records,
        markdown=markdown(records, extra, meta),
    )


if __name__ == "__main__":
    main()
