"""The whole ``leanfit quantize`` pipeline on real models: errors, storage, time, memory.

Each run is a fresh ``leanfit quantize MODEL --out DIR --threads T`` process (the CLI users
run), followed by a fresh process that loads the output with
:func:`leanfit.checkpoints.load` and runs one forward pass. Reported, from the run's
``loftq_report.json`` and the loader process:

- total relative errors of QLoRA and LoftQ over the quantized matrices;
- stored bits per parameter of the quantized matrices and of the whole backbone (untouched
  float32 tensors included), and the sizes on disk of ``backbone/`` and ``adapter/``;
- wall time of the walk, and the process's resident memory (psutil RSS, sampled every 20 ms)
  at the start of the walk and at its peak; ``anon`` is RSS minus file-backed pages;
- load: wall time and peak RSS (``ru_maxrss``) of the process that loads and runs the model.

Usage: ``python benchmarks/loftq_pipeline.py [--quick] [--threads 1]``; writes
``benchmarks/results/loftq_pipeline.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from leanfit.io import atomic_output
from leanfit.reports import markdown_table

RESULTS = Path(__file__).parent / "results"

LOAD_SCRIPT = """
import resource, sys, time, torch
torch.set_num_threads(int(sys.argv[2]))
start = time.perf_counter()
from leanfit.checkpoints import load
model = load(sys.argv[1]).eval()
with torch.no_grad():
    model(input_ids=torch.tensor([[101, 2023, 2003, 1037, 3231, 102]]))
print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def size_mb(directory: Path) -> float:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) / 2**20


def run(model: str, bits: int, threads: int, work: Path) -> dict[str, object]:
    out = work / f"{model}-{bits}"
    command = [sys.executable, "-m", "leanfit.cli", "quantize", model, "--out", str(out)]
    command += ["--bits", str(bits), "--rank", "16", "--iters", "5", "--quiet", "--overwrite"]
    command += ["--threads", str(threads)]
    tic = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    process_seconds = time.perf_counter() - tic
    totals = json.loads((out / "loftq_report.json").read_text())["totals"]
    loaded = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(out), str(threads)],
        check=True,
        capture_output=True,
        text=True,
    )
    load_seconds, load_kb = loaded.stdout.split()
    return {
        "model": model,
        "bits": bits,
        "matrices": totals["matrices"],
        "QLoRA error": totals["qlora_error"],
        "LoftQ error": totals["loftq_error"],
        "bits/param (targets)": totals["bits_per_param"],
        "bits/param (backbone)": totals["backbone_bits_per_param"],
        "backbone (MB)": size_mb(out / "backbone"),
        "adapter (MB)": size_mb(out / "adapter"),
        "walk (s)": totals["seconds"],
        "process (s)": process_seconds,
        "RSS start (MB)": totals["start_rss_mb"],
        "RSS peak (MB)": totals["peak_rss_mb"],
        "anon peak (MB)": totals["peak_anon_mb"],
        "load + forward (s)": float(load_seconds),
        "load peak RSS (MB)": int(load_kb) / 1024,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="MiniLM only")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    models = ["minilm"] if args.quick else ["minilm", "smollm2"]
    with tempfile.TemporaryDirectory() as work:
        records = [run(m, b, args.threads, Path(work)) for m in models for b in (2, 4)]
    meta = {
        "rank": 16,
        "iters": 5,
        "method": "nf",
        "block_size": 64,
        "svd": "randomized",
        "threads": args.threads,
        "machine": f"{platform.machine()} {platform.system()}",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_output(args.out / "loftq_pipeline.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps({"meta": meta, "records": records}, indent=2) + "\n")
    table = markdown_table(records, floatfmt=".4g")
    text = (
        "# `leanfit quantize` end to end\n\n"
        f"NF, block 64, rank 16, T = 5, randomized SVD, {args.threads} torch thread(s), "
        f"{meta['machine']}, shared CPU. Errors: total relative Frobenius error over the "
        "quantized matrices. Memory: psutil RSS of the quantize process (start of the walk, "
        "peak); anon = RSS minus file-backed pages. Load: a fresh process loading the output "
        "with `leanfit.checkpoints.load` and running one forward pass (its ru_maxrss).\n\n" + table
    )
    with atomic_output(args.out / "loftq_pipeline.md", overwrite=True) as tmp:
        tmp.write_text(text)
    print(table)


if __name__ == "__main__":
    main()
