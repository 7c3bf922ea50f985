"""QuantLinear forward on the CPU against a float32 ``nn.Linear`` of the same shape.

``QuantLinear.forward`` dequantizes its packed weight (codes + per-block scales) to the input's
dtype and then multiplies; ``nn.Linear`` only multiplies. For the shapes of the real models
(SmolLM2-135M: 576→1536 and 1536→576 MLP projections; MiniLM: 384→1536) and NF2 / NF4
(block 64, float32 scales), inputs of shape (batch, 1, in) with batch 1 and 64 (one token per
sequence; float32), the script times both layers side by side: for each repetition it times a
burst of calls of one layer and then of the other, and reports the median over repetitions of
the time per call and their ratio (QuantLinear / Linear). One torch thread.

Usage::

    python benchmarks/quantlinear_forward.py            # 15 repetitions of 20 calls
    python benchmarks/quantlinear_forward.py --quick    # 5 repetitions of 10 calls

Writes ``benchmarks/results/quantlinear_forward.json`` and ``.md`` (``_quick`` in quick mode).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from _common import write_results
from torch import nn

from leanfit.quantization import QuantLinear, QuantSpec

RESULTS = Path(__file__).parent / "results"
SHAPES = [("SmolLM2 up/gate", 576, 1536), ("SmolLM2 down", 1536, 576), ("MiniLM FFN in", 384, 1536)]
BATCHES = (1, 64)
BITS = (2, 4)


def per_call(layer: nn.Module, x: torch.Tensor, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        layer(x)
    return (time.perf_counter() - start) / calls


@torch.no_grad()
def measure(in_features: int, out_features: int, bits: int, batch: int, repeats: int, calls: int):
    torch.manual_seed(0)
    linear = nn.Linear(in_features, out_features)
    quant = QuantLinear.from_linear(linear, QuantSpec(bits=bits, method="nf", block_size=64))
    x = torch.randn(batch, 1, in_features)
    per_call(linear, x, 2), per_call(quant, x, 2)  # warm-up
    linear_s, quant_s = [], []
    for _ in range(repeats):
        linear_s.append(per_call(linear, x, calls))
        quant_s.append(per_call(quant, x, calls))
    ratios = [q / f for q, f in zip(quant_s, linear_s, strict=True)]
    return {
        "linear_ms": 1e3 * statistics.median(linear_s),
        "quant_ms": 1e3 * statistics.median(quant_s),
        "ratio": statistics.median(ratios),
    }


def markdown(records: list[dict], meta: dict) -> str:
    lines = [
        "# QuantLinear forward vs float32 nn.Linear (CPU)",
        "",
        f"Input (batch, 1 token, in), float32; NF, block 64, float32 scales; "
        f"{meta['threads']} torch thread; median over {meta['repeats']} repetitions of "
        f"{meta['calls']} calls each, the two layers alternating; {meta['machine']}; load "
        f"average {meta['load_before']} before, {meta['load_after']} after (shared CPU).",
        "",
        "| layer | in → out | bits | batch | nn.Linear (ms) | QuantLinear (ms) | overhead ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['name']} | {r['in']} → {r['out']} | {r['bits']} | {r['batch']} "
            f"| {r['linear_ms']:.3f} | {r['quant_ms']:.3f} | **{r['ratio']:.2f}×** |"
        )
    return "\n".join([*lines, ""])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 repetitions of 10 calls")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    repeats, calls = (5, 10) if args.quick else (15, 20)
    meta = {
        "threads": 1,
        "repeats": repeats,
        "calls": calls,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "quick": args.quick,
        "load_before": f"{os.getloadavg()[0]:.1f}",
    }
    records = []
    for name, in_features, out_features in SHAPES:
        for bits in BITS:
            for batch in BATCHES:
                row = measure(in_features, out_features, bits, batch, repeats, calls)
                records.append(
                    {"name": name, "in": in_features, "out": out_features, "bits": bits}
                    | {"batch": batch, **row}
                )
                print(
                    f"{name} {in_features}->{out_features} NF{bits} batch {batch}: "
                    f"{row['linear_ms']:.3f} ms vs {row['quant_ms']:.3f} ms ({row['ratio']:.2f}x)"
                )
    meta["load_after"] = f"{os.getloadavg()[0]:.1f}"
    write_results(
        args.out,
        "quantlinear_forward",
        quick=args.quick,
        meta=meta,
        records=records,
        markdown=markdown(records, meta),
    )


if __name__ == "__main__":
    main()
