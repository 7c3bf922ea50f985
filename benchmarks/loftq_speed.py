"""LoftQ speed: leanfit's ``loftq_decompose`` against a reference implementation of the paper.

REFERENCE (``_loftq_reference.py``, written from the algorithm as published by Li et al.,
ICLR 2024, and its authors' code as it was in PEFT's ``loftq_utils.py`` before PEFT moved NF4
to bitsandbytes): float32 throughout; at every iteration t = 1 … T

    1. NF-k blockwise quantization of ``W − L R`` (block 64, absmax scale): every normalized
       value is compared with the whole NF table (broadcast ``|x − table|`` then ``argmin``),
       the codes are packed into bytes and unpacked again, and dequantized;
    2. the exact full ``torch.linalg.svd`` of the residual ``W − Q``, truncated to rank r;
       ``L = U √S``, ``R = √S Vh``.

The last iterate is returned. leanfit's ``loftq_decompose`` (``svd="randomized"``) computes
the same decomposition with subspace iteration and Rayleigh–Ritz extraction (Cholesky QR of
small Gram matrices, no QR or SVD of a tall matrix), started from a Gaussian sketch at the
first step and from the previous step's right Ritz basis afterwards; the error from
``‖W − Q‖² − Σ S²``; a lookup-table nearest-code search into reused buffers; no packing
inside the loop; and it keeps the best iterate.

Two comparisons. ONE THREAD EACH: both run side by side on the same real weights, one matrix
after the other (the reference then leanfit on each matrix, so that both see the same machine
load), on one torch thread. WHOLE MACHINE (end to end on all the CPUs): the reference as
published, one matrix after the other with torch's threads on every CPU, against leanfit
quantizing as many matrices at a time as there are CPUs, each on one torch thread
(:mod:`leanfit.pipeline.parallel`, what ``leanfit quantize --workers N`` runs); the whole
model by the reference, then by leanfit, in each repetition.
Each repetition covers every matrix of the model; the table gives the medians over
repetitions of the total times (wall clock, and the CPU time of the process, which other
jobs on a shared machine disturb less), their ratio, and the total relative error
``sqrt(Σ‖W − Q − LR‖²) / sqrt(Σ‖W‖²)`` of both. Also: leanfit's throughput in parameters
per second, and the time of one quantization pass (into reused buffers, as inside LoftQ)
against a plain copy of the same tensor (the memory-bandwidth yardstick: a copy reads and
writes every float32 once, the least traffic a pass that restores the values can have).

Usage::

    python benchmarks/loftq_speed.py            # MiniLM (37) and SmolLM2 (210), r 16/64, 2/4 bits
    python benchmarks/loftq_speed.py --quick    # MiniLM, rank 16, 2 bits

Writes ``benchmarks/results/loftq_speed.json`` and ``loftq_speed.md`` (``_quick`` in quick mode).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from _common import LOADERS
from _loftq_reference import BLOCK, reference_loftq
from tqdm import tqdm

from leanfit.io import atomic_output
from leanfit.pipeline.parallel import ordered_map
from leanfit.quantization import LoraSpec, QuantSpec, loftq_decompose
from leanfit.quantization.quantizers import Workspace, quantize_to_grid

RESULTS = Path(__file__).parent / "results"
ITERS = 5

# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


def one_repetition(weights, bits: int, rank: int, quiet: bool) -> dict[str, float]:
    """Both implementations on every matrix, interleaved; totals of time and squared error."""
    seconds = {"reference": 0.0, "leanfit": 0.0, "reference_cpu": 0.0, "leanfit_cpu": 0.0}
    squared = {"weight": 0.0, "reference": 0.0, "leanfit": 0.0}
    for w in tqdm(weights, desc=f"{bits}-bit r={rank}", leave=False, disable=quiet):
        start, cpu = time.perf_counter(), time.process_time()
        q, left, right = reference_loftq(w, bits, rank, ITERS)
        seconds["reference"] += time.perf_counter() - start
        seconds["reference_cpu"] += time.process_time() - cpu
        start, cpu = time.perf_counter(), time.process_time()
        result = loftq_decompose(w, QuantSpec(bits, block_size=BLOCK), LoraSpec(rank, iters=ITERS))
        seconds["leanfit"] += time.perf_counter() - start
        seconds["leanfit_cpu"] += time.process_time() - cpu
        norm2 = float(torch.linalg.norm(w)) ** 2
        squared["weight"] += norm2
        squared["reference"] += float(torch.linalg.norm(w - q - left @ right)) ** 2
        squared["leanfit"] += result.error**2 * norm2
    return {
        "reference_s": seconds["reference"],
        "leanfit_s": seconds["leanfit"],
        "reference_cpu_s": seconds["reference_cpu"],
        "leanfit_cpu_s": seconds["leanfit_cpu"],
        "reference_error": math.sqrt(squared["reference"] / squared["weight"]),
        "leanfit_error": math.sqrt(squared["leanfit"] / squared["weight"]),
    }


def whole_machine(weights, bits: int, rank: int, cpus: int) -> dict[str, float]:
    """The whole model by the reference on ``cpus`` torch threads, then by leanfit with
    ``cpus`` workers of one torch thread each; wall-clock totals and total errors."""
    squared = {"weight": 0.0, "reference": 0.0, "leanfit": 0.0}
    torch.set_num_threads(cpus)
    reference_s = 0.0
    for w in weights:  # the clock runs only inside the reference, as for leanfit below
        start = time.perf_counter()
        q, left, right = reference_loftq(w, bits, rank, ITERS)
        reference_s += time.perf_counter() - start
        squared["reference"] += float(torch.linalg.norm(w - q - left @ right)) ** 2
        squared["weight"] += float(torch.linalg.norm(w)) ** 2

    def decompose(w: torch.Tensor) -> float:
        return loftq_decompose(
            w, QuantSpec(bits, block_size=BLOCK), LoraSpec(rank, iters=ITERS)
        ).error

    start = time.perf_counter()
    errors = list(ordered_map(decompose, weights, workers=cpus))
    leanfit_s = time.perf_counter() - start
    torch.set_num_threads(1)
    for w, error in zip(weights, errors, strict=True):
        squared["leanfit"] += error**2 * float(torch.linalg.norm(w)) ** 2
    return {
        "reference_s": reference_s,
        "leanfit_s": leanfit_s,
        "reference_error": math.sqrt(squared["reference"] / squared["weight"]),
        "leanfit_error": math.sqrt(squared["leanfit"] / squared["weight"]),
    }


def median_time(fn, repeats: int = 7) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bandwidth(weights, bits: int) -> dict[str, float]:
    """One quantization pass (codes + restored values) of the largest matrix vs a plain copy.

    The pass writes into the buffers of an earlier result with a reused workspace, as every
    LoftQ step after the second does.
    """
    w = max(weights, key=lambda t: t.numel())
    flat = w.reshape(-1).contiguous()
    out = torch.empty_like(flat)
    copy_s = median_time(lambda: out.copy_(flat))
    workspace = Workspace(flat.numel())
    grid = quantize_to_grid(flat, bits, "nf", BLOCK, False)
    quant_s = median_time(
        lambda: quantize_to_grid(flat, bits, "nf", BLOCK, False, out=grid, workspace=workspace)
    )
    nbytes = 2 * flat.numel() * 4  # read + write of float32
    return {
        "matrix": list(w.shape),
        "copy_GBps": nbytes / copy_s / 1e9,
        "quantize_s": quant_s,
        "copy_s": copy_s,
        "quantize_over_copy": quant_s / copy_s,
        "quantize_Mparams_per_s": flat.numel() / quant_s / 1e6,
    }


def markdown(records: list[dict], machine: list[dict], passes: list[dict], meta: dict) -> str:
    lines = [
        "# LoftQ speed: leanfit vs the reference algorithm (exact SVD, argmin search)",
        "",
        f"## Whole machine ({meta['cpus']} CPUs)",
        "",
        f"The reference one matrix after the other on {meta['cpus']} torch threads (torch's "
        f"default here); leanfit {meta['cpus']} matrices at a time, each on one torch thread "
        "(`leanfit.pipeline.parallel`, as `leanfit quantize --workers "
        f"{meta['cpus']}`). T = {ITERS}, NF, block {BLOCK}; all matrices of each model; median "
        f"over {meta['repeats_text']} of the total wall-clock time.",
        "",
        "| model | bits | rank | reference (s) | leanfit (s) | speed-up | leanfit Mparams/s "
        "| error reference | error leanfit | error ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in machine:
        lines.append(
            f"| {r['model']} | {r['bits']} | {r['rank']} | {r['reference_s']:.2f} "
            f"| {r['leanfit_s']:.2f} | **{r['speedup']:.1f}×** "
            f"| {r['params'] * ITERS / r['leanfit_s'] / 1e6:.1f} "
            f"| {r['reference_error']:.4f} | {r['leanfit_error']:.4f} "
            f"| {r['leanfit_error'] / r['reference_error']:.4f} |"
        )
    lines += [
        "",
        "## One thread each",
        "",
        f"T = {ITERS}, NF quantizer, block {BLOCK}; all matrices of each model, the reference "
        "and leanfit interleaved matrix by matrix; median over "
        f"{meta['repeats_text']} of the total time; {meta['threads']} torch thread; "
        f"{meta['machine']}; load average {meta['load_before']} before, "
        f"{meta['load_after']} after (shared CPU). Errors: total relative "
        "sqrt(Σ‖W − Q − LR‖²)/sqrt(Σ‖W‖²).",
        "",
        "| model | matrices | params | bits | rank | reference (s) | leanfit (s) | speed-up "
        "| speed-up (CPU time) | leanfit Mparams/s | error reference | error leanfit "
        "| error ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['model']} | {r['matrices']} | {r['params'] / 1e6:.1f}M | {r['bits']} "
            f"| {r['rank']} | {r['reference_s']:.2f} | {r['leanfit_s']:.2f} "
            f"| **{r['speedup']:.1f}×** | {r['speedup_cpu']:.1f}× "
            f"| {r['params'] * ITERS / r['leanfit_s'] / 1e6:.1f} "
            f"| {r['reference_error']:.4f} | {r['leanfit_error']:.4f} "
            f"| {r['leanfit_error'] / r['reference_error']:.4f} |"
        )
    lines += [
        "",
        "Mparams/s counts each of the T iterations (parameters × T / time). Speed-up: median "
        "reference time / median leanfit time (wall clock); CPU time: the same with the CPU time "
        "of the process, which other jobs on the shared machine disturb less.",
        "",
        "Quantization pass (NF, codes and restored values, no packing, into reused buffers as "
        "inside LoftQ) vs a plain float32 copy of the same matrix (read + write once, the "
        "memory-bandwidth yardstick), median of 7. Bandwidth share: copy time / quantize time, "
        "the fraction of the copy's memory bandwidth the pass reaches for the same bytes moved.",
        "",
        "| model | matrix | bits | copy (GB/s) | copy (ms) | quantize (ms) | quantize Mparams/s "
        "| quantize / copy | bandwidth share |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in passes:
        lines.append(
            f"| {p['model']} | {p['matrix'][0]}×{p['matrix'][1]} | {p['bits']} "
            f"| {p['copy_GBps']:.1f} | {p['copy_s'] * 1e3:.2f} | {p['quantize_s'] * 1e3:.2f} "
            f"| {p['quantize_Mparams_per_s']:.0f} | {p['quantize_over_copy']:.1f}× "
            f"| {100 / p['quantize_over_copy']:.0f} % |"
        )
    return "\n".join([*lines, ""])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="MiniLM, rank 16, 2 bits")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions (MiniLM)")
    parser.add_argument(
        "--repeats-large", type=int, default=1, help="repetitions for SmolLM2 (slow reference)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    cpus = os.cpu_count() or 1
    torch.set_num_threads(1)
    models = ["minilm"] if args.quick else ["minilm", "smollm2"]
    settings = [(2, 16)] if args.quick else [(2, 16), (2, 64), (4, 16), (4, 64)]
    meta = {
        "threads": 1,
        "cpus": cpus,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "quick": args.quick,
        "load_before": f"{os.getloadavg()[0]:.1f}",
        "repeats": {"minilm": args.repeats, "smollm2": args.repeats_large},
    }
    meta["repeats_text"] = (
        f"{args.repeats} repetitions (MiniLM)"
        if args.quick
        else f"{args.repeats} repetitions (MiniLM) and {args.repeats_large} (SmolLM2)"
    )
    records, machine, passes = [], [], []
    for model in models:
        weights = LOADERS[model]()
        params = sum(w.numel() for w in weights)
        repeats = args.repeats if model == "minilm" else args.repeats_large
        for bits, rank in settings:
            reps = [one_repetition(weights, bits, rank, args.quiet) for _ in range(repeats)]
            row = {key: statistics.median(r[key] for r in reps) for key in reps[0]}
            row["speedup"] = row["reference_s"] / row["leanfit_s"]
            row["speedup_cpu"] = row["reference_cpu_s"] / row["leanfit_cpu_s"]
            record = {"model": model, "matrices": len(weights), "params": params}
            record |= {"bits": bits, "rank": rank, "repeats": repeats, **row, "all": reps}
            records.append(record)
            print(
                f"{model} {bits}-bit r={rank}: reference {row['reference_s']:.2f} s, leanfit "
                f"{row['leanfit_s']:.2f} s ({row['speedup']:.1f}x, CPU time "
                f"{row['speedup_cpu']:.1f}x); error "
                f"{row['reference_error']:.4f} vs {row['leanfit_error']:.4f}"
            )
        for bits, rank in settings:
            reps = [whole_machine(weights, bits, rank, cpus) for _ in range(repeats)]
            row = {key: statistics.median(r[key] for r in reps) for key in reps[0]}
            row["speedup"] = row["reference_s"] / row["leanfit_s"]
            machine.append({"model": model, "params": params, "bits": bits, "rank": rank, **row})
            print(
                f"{model} {bits}-bit r={rank}, whole machine: reference "
                f"{row['reference_s']:.2f} s, leanfit {row['leanfit_s']:.2f} s "
                f"({row['speedup']:.1f}x)"
            )
        for bits in sorted({b for b, _ in settings}):
            passes.append({"model": model, "bits": bits, **bandwidth(weights, bits)})
    meta["load_after"] = f"{os.getloadavg()[0]:.1f}"
    name = "loftq_speed_quick" if args.quick else "loftq_speed"
    with atomic_output(args.out / f"{name}.json", overwrite=True) as tmp:
        payload = {
            "meta": meta,
            "records": records,
            "whole_machine": machine,
            "quantize_pass": passes,
        }
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
    with atomic_output(args.out / f"{name}.md", overwrite=True) as tmp:
        tmp.write_text(markdown(records, machine, passes, meta))
    print(f"wrote {args.out / name}.json and .md")


if __name__ == "__main__":
    main()
