"""LoftQ vs QLoRA weight reconstruction error on real models, and exact vs randomized SVD time.

For every linear matrix W of a model (MiniLM: the 37 ``nn.Linear`` of the BertModel;
SmolLM2-135M: the 210 q, k, v, o, gate, up, down projections) and every setting, runs
:func:`leanfit.quantization.loftq_decompose` and reports the total relative error

    sqrt(Σ_W ‖W − Ŵ‖_F²) / sqrt(Σ_W ‖W‖_F²)

of QLoRA (Ŵ = quantize(W)) and LoftQ (Ŵ = Q + s·B·A, the kept iterate), the stored bits per
parameter of the quantized backbone (codes + scales), and the wall time of the whole model
with the exact and the randomized SVD (one torch thread unless ``--threads``).

Usage::

    python benchmarks/loftq_error.py            # full: both models, bits 2/4, rank 16/64, T 1/5
    python benchmarks/loftq_error.py --quick    # MiniLM, rank 16

Writes ``benchmarks/results/loftq_error.json`` and ``loftq_error.md``.
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from pathlib import Path

import torch
from _common import LOADERS, write_results
from tqdm import tqdm

from leanfit.quantization import LoraSpec, QuantSpec, loftq_decompose

RESULTS = Path(__file__).parent / "results"


def run_setting(
    weights: list[torch.Tensor], *, bits: int, rank: int, iters: int, svd: str, quiet: bool
) -> dict[str, float]:
    """Decompose every matrix; total errors, bits per parameter and wall time."""
    squared = {"weight": 0.0, "qlora": 0.0, "loftq": 0.0, "loftq_t1": 0.0}
    stored_bits = numel = steps = 0
    label = f"{bits}-bit r={rank} T={iters} {svd}"
    start = time.perf_counter()
    for w in tqdm(weights, desc=label, leave=False, disable=quiet):
        result = loftq_decompose(w, QuantSpec(bits), LoraSpec(rank, iters=iters, svd=svd))
        norm2 = float(torch.linalg.norm(w)) ** 2
        squared["weight"] += norm2
        squared["qlora"] += result.qlora_error**2 * norm2
        squared["loftq"] += result.error**2 * norm2
        squared["loftq_t1"] += result.errors[0] ** 2 * norm2
        stored_bits += 8 * result.quantized.nbytes
        numel += w.numel()
        steps += len(result.errors)
    seconds = time.perf_counter() - start
    total = squared["weight"]
    return {
        "qlora_error": math.sqrt(squared["qlora"] / total),
        "loftq_error": math.sqrt(squared["loftq"] / total),
        "loftq_t1_error": math.sqrt(squared["loftq_t1"] / total),
        "bits_per_param": stored_bits / numel,
        "seconds": seconds,
        "mean_iterations_run": steps / len(weights),
    }


def _cell(record: dict | None, key: str, fmt: str) -> str:
    return format(record[key], fmt) if record else "—"


def markdown(records: list[dict], meta: dict) -> str:
    lines = [
        "# LoftQ vs QLoRA: weight reconstruction error",
        "",
        "Total relative error sqrt(Σ‖W − Ŵ‖²) / sqrt(Σ‖W‖²) over the linear matrices; NF "
        "quantizer, block 64, fp32 scales; LoftQ keeps its best iterate (T = iterations "
        "allowed). Bits/param: stored codes + scales of the backbone. Time: all matrices of "
        f"the model, {meta['threads']} torch thread(s), {meta['machine']}, shared CPU.",
        "",
        "| model | matrices | bits | rank | T | QLoRA | LoftQ (exact SVD) | LoftQ (randomized) "
        "| bits/param | time exact (s) | time randomized (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keyed = {(r["model"], r["bits"], r["rank"], r["iters"], r["svd"]): r for r in records}
    for model, bits, rank, iters in sorted({k[:4] for k in keyed}):
        exact = keyed.get((model, bits, rank, iters, "exact"))
        fast = keyed.get((model, bits, rank, iters, "randomized"))
        first = exact or fast or {}
        lines.append(
            f"| {model} | {first['matrices']} | {bits} | {rank} | {iters} "
            f"| {first['qlora_error']:.4f} | {_cell(exact, 'loftq_error', '.4f')} "
            f"| {_cell(fast, 'loftq_error', '.4f')} | {first['bits_per_param']:.3f} "
            f"| {_cell(exact, 'seconds', '.1f')} | {_cell(fast, 'seconds', '.1f')} |"
        )
    lines += [
        "",
        "SmolLM2's weights come from a Q4_1 GGUF file, so they already lie on a 4-bit grid "
        "(per block of 32); NF4 re-quantizes them onto a different grid.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="MiniLM only, rank 16")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = ["minilm"] if args.quick else ["minilm", "smollm2"]
    ranks = [16] if args.quick else [16, 64]
    meta = {
        "threads": args.threads,
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}",
        "torch": torch.__version__,
        "quick": args.quick,
        "method": "nf",
        "block_size": 64,
    }
    records = []
    for model in models:
        weights = LOADERS[model]()
        print(f"{model}: {len(weights)} matrices, {sum(w.numel() for w in weights):,} parameters")
        for bits in (2, 4):
            for rank in ranks:
                for iters in (1, 5):
                    for svd in ("exact", "randomized"):
                        row = run_setting(
                            weights, bits=bits, rank=rank, iters=iters, svd=svd, quiet=args.quiet
                        )
                        record = {
                            "model": model,
                            "matrices": len(weights),
                            "bits": bits,
                            "rank": rank,
                            "iters": iters,
                            "svd": svd,
                            **row,
                        }
                        records.append(record)
                        print(
                            f"  {bits}-bit r={rank:<3} T={iters} {svd:<10} "
                            f"QLoRA {row['qlora_error']:.4f}  LoftQ {row['loftq_error']:.4f}  "
                            f"{row['bits_per_param']:.3f} bits/param  {row['seconds']:.1f} s"
                        )
    write_results(
        args.out,
        "loftq_error",
        quick=args.quick,
        meta=meta,
        records=records,
        markdown=markdown(records, meta),
    )


if __name__ == "__main__":
    main()
