"""What bfloat16 does to a ``leanfit finetune`` run: held-out loss, peak memory and step time.

The ``leanfit finetune`` command itself, each run in a fresh process, on SmolLM2-135M-Instruct
quantized at 2 and 4 bits (NF, rank 16, T = 1; cached in ``benchmarks/.cache`` with
``finetune_memory.py``'s): Pride and Prejudice in blocks of 256 tokens (the last 10 % of the
chapters held out, 16 held-out blocks), batch 2, learning rate 5e-4, defaults otherwise
(gradient checkpointing, the chunked loss). Three precisions:

- ``float32``;
- ``--dtype bfloat16``: autocast; the packed weights dequantize to bfloat16, the LoRA weights
  and AdamW state stay float32;
- ``--dtype bfloat16 --frozen-dtype bfloat16``: the frozen embeddings and norms stored in
  bfloat16 too.

Reported: held-out loss after the last step (nats per token), the peak RSS the command records
in ``metrics.json``, and the median seconds per step after the first; median over the seeds.

Usage::

    python benchmarks/finetune_dtype.py            # 12 steps, seeds 0 and 1
    python benchmarks/finetune_dtype.py --quick    # 4 steps, seed 0

Writes ``benchmarks/results/finetune_dtype.json`` and ``finetune_dtype.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import machine, write_results
from finetune_memory import quantized

RESULTS = Path(__file__).parent / "results"
PRECISIONS = {
    "float32": [],
    "bfloat16": ["--dtype", "bfloat16"],
    "bfloat16 + frozen bfloat16": ["--dtype", "bfloat16", "--frozen-dtype", "bfloat16"],
}


def run(directory: Path, options: list[str], steps: int, seed: int) -> dict:
    """One ``leanfit finetune`` command; its final held-out loss, peak memory, step time."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        command = [sys.executable, "-m", "leanfit.cli", "finetune", str(directory)]
        command += ["--text", "pride_and_prejudice", "--steps", str(steps), "--batch-size", "2"]
        command += ["--max-length", "256", "--max-examples", "16", "--lr", "5e-4"]
        command += ["--seed", str(seed), "--out", str(out), "--quiet", *options]
        printed = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        summary = json.loads(printed.strip().splitlines()[-1])
        seconds = json.loads((out / "metrics.json").read_text())["step_seconds"]
    return {
        "held_out_loss": summary["final_eval"]["loss"],
        "peak_rss_mb": summary["peak_rss_mb"],
        "step_seconds": statistics.median(seconds[1:] or seconds),
    }


def markdown(records: list[dict], meta: dict) -> str:
    lines = [
        "# bfloat16 in `leanfit finetune`: held-out loss, memory, speed",
        "",
        f"SmolLM2-135M-Instruct, LoRA rank 16, {meta['steps']} steps of 2 × 256 tokens of Pride "
        "and Prejudice, gradient checkpointing and the chunked loss (the defaults); each run a "
        f"fresh `leanfit finetune` process; median over seeds {meta['seeds']}; {meta['machine']}.",
        "",
        "| bits | precision | held-out loss | peak RSS MB | s/step |",
        "|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['bits']} | {r['precision']} | {r['held_out_loss']:.4f} | "
            f"{r['peak_rss_mb']:.0f} | {r['step_seconds']:.2f} |"
        )
    lines.append("")
    for bits in sorted({r["bits"] for r in records}):
        rows = {r["precision"]: r for r in records if r["bits"] == bits}
        base, low = rows["float32"], rows["bfloat16 + frozen bfloat16"]
        lines.append(
            f"- {bits} bits: bfloat16 with frozen bfloat16 changes the held-out loss by "
            f"{low['held_out_loss'] - base['held_out_loss']:+.4f} nats, peak memory "
            f"{low['peak_rss_mb'] / base['peak_rss_mb']:.2f}×, step time "
            f"{low['step_seconds'] / base['step_seconds']:.2f}× float32's."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 steps, one seed")
    args = parser.parse_args()
    steps, seeds = (4, [0]) if args.quick else (12, [0, 1])
    records = []
    for bits in (2, 4):
        directory = quantized("smollm2", bits)
        runs: dict[str, list[dict]] = {name: [] for name in PRECISIONS}
        for seed in seeds:
            for name, options in PRECISIONS.items():  # interleaved
                runs[name].append(run(directory, options, steps, seed))
                print(bits, name, seed, runs[name][-1], flush=True)
        for name, results in runs.items():
            median = {k: statistics.median(r[k] for r in results) for k in results[0]}
            records.append({"bits": bits, "precision": name, **median})
    meta = {
        "steps": steps,
        "seeds": seeds,
        "machine": machine(),
    }
    text = markdown(records, meta)
    print(text)
    write_results(
        RESULTS, "finetune_dtype", quick=args.quick, meta=meta, records=records, markdown=text
    )


if __name__ == "__main__":
    main()
