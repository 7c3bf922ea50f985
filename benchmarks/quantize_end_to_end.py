"""End to end: the start of the ``leanfit`` command, and ``leanfit quantize`` of a BERT-base-sized
encoder against the published LoftQ algorithm run the way its authors' script runs it.

Everything is timed as a user sees it: the wall clock of a whole fresh process (interpreter
start, imports, reading the checkpoint, the work, writing the output), plus the CPU time of
that process (user + system), which other jobs on a shared machine disturb less.

- Start-up: ``leanfit --help`` against the floor of any Python command (``python -c pass``)
  and ``python -c "import torch"``.
- Quantization, NF2, rank 16, T = 5, block 64, every ``nn.Linear`` of the encoder (the 6
  projections of each layer and the pooler; leanfit's default targets for BERT are the same
  matrices, checked on every run):

  * REFERENCE: a process that loads the model with transformers (``AutoModel``, float32),
    runs the published algorithm (``_loftq_reference.reference_loftq``: exhaustive NF search
    with packing, exact SVD at every step) on each target weight in turn with torch's default
    threads, writes Q into the model, saves it with ``save_pretrained`` (float32 safetensors,
    as the authors' script saves its backbone) and the LoRA factors as a PEFT-named
    safetensors file. It does not import PEFT (the authors' script does, for
    ``get_peft_model``), so its start-up is if anything shorter than theirs.
  * leanfit: ``leanfit quantize MODEL --out OUT --bits 2 --rank 16 --iters 5 --quiet``, with
    the default flags, and with ``--workers 2`` (two layers at a time, one torch thread each:
    how a user runs it on this 2-CPU machine).

Models: a BERT-base-sized encoder (``BertConfig()`` defaults: 12 layers, width 768, 110M
parameters), randomly initialized with seed 0 and saved as float32 safetensors, because no
110M encoder ships as a package here; timing does not depend on the weights' values (the
errors do: random weights are not trained ones). And all-MiniLM-L6-v2 (real weights, 22.7M).

The runs are interleaved: in each repetition every command runs once, in an order rotated
from one repetition to the next, so that all see the same machine load. The tables give the
medians over repetitions and the ratios of the medians.

Usage::

    python benchmarks/quantize_end_to_end.py            # both models, 3 repetitions
    python benchmarks/quantize_end_to_end.py --quick    # MiniLM, 1 repetition

Writes ``benchmarks/results/quantize_end_to_end.{json,md}`` (``_quick`` in quick mode).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
BITS, RANK, ITERS = 2, 16, 5
LEANFIT_FLAGS = ["--bits", str(BITS), "--rank", str(RANK), "--iters", str(ITERS), "--quiet"]
RUNNERS = ("reference", "leanfit", "leanfit_workers2")


# --------------------------------------------------------------------------------------------
# The bodies of the child processes (run as ``python THIS_FILE --reference-run ...``)
# --------------------------------------------------------------------------------------------


def reference_run(model_dir: Path, out_dir: Path, threads: int) -> dict[str, float]:
    """The published LoftQ end to end, as the authors' script does it; seconds per phase.

    Q replaces each target weight (the backbone is saved in float32); the adapter holds
    ``lora_A = R`` (r × in) and ``lora_B = L`` (out × r) with ``lora_alpha = r``, so that
    W ≈ Q + B A in PEFT's convention.
    """
    clock = time.perf_counter()
    phases = {}

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        phases[name] = now - clock
        clock = now

    import torch
    from _loftq_reference import reference_loftq
    from safetensors.torch import save_file
    from transformers import AutoModel

    torch.set_num_threads(threads)
    lap("imports")
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32)
    lap("load")
    adapter, targets = {}, []
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear):
                q, left, right = reference_loftq(module.weight, BITS, RANK, ITERS)
                module.weight.copy_(q)
                adapter[f"base_model.model.{name}.lora_A.weight"] = right.contiguous()
                adapter[f"base_model.model.{name}.lora_B.weight"] = left.contiguous()
                targets.append(name)
    lap("loftq")
    model.save_pretrained(out_dir / "backbone")
    (out_dir / "adapter").mkdir()
    save_file(adapter, out_dir / "adapter" / "adapter_model.safetensors")
    config = {"peft_type": "LORA", "r": RANK, "lora_alpha": RANK, "target_modules": targets}
    (out_dir / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    lap("save")
    return {**phases, "matrices": len(targets)}


def build_bert_base(out_dir: Path) -> None:
    """A BERT-base-sized encoder (``BertConfig()``), random init (seed 0), float32 safetensors."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig()).save_pretrained(out_dir)


# --------------------------------------------------------------------------------------------
# Measurements (in the parent process)
# --------------------------------------------------------------------------------------------


def checkpoint_params(folder: Path) -> int:
    """The number of values stored in the safetensors files of ``folder``."""
    from safetensors import safe_open

    total = 0
    for file in folder.glob("*.safetensors"):
        with safe_open(file, "pt") as tensors:
            total += sum(math.prod(tensors.get_slice(k).get_shape()) for k in tensors.keys())
    return total


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command: list[str]) -> dict[str, object]:
    """Run ``command`` to its end; wall and CPU seconds of the whole process, and its stdout."""
    cpu, load = children_cpu(), os.getloadavg()[0]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{command} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return {"wall_s": wall, "cpu_s": children_cpu() - cpu, "load": load, "stdout": result.stdout}


def leanfit_script() -> list[str]:
    """The ``leanfit`` console script next to this interpreter (what a user types)."""
    script = Path(sys.executable).parent / "leanfit"
    return [str(script)] if script.exists() else [sys.executable, "-m", "leanfit.cli"]


def quantize_commands(
    model: Path, work: Path, reference_threads: int
) -> dict[str, Callable[[], list[str]]]:
    """The three ways of quantizing ``model``, each into a fresh ``work`` directory."""

    def fresh(name: str) -> Path:
        out = work / name
        shutil.rmtree(out, ignore_errors=True)
        if name == "reference":
            out.mkdir(parents=True)
        return out

    this = [sys.executable, str(Path(__file__).resolve()), "--threads", str(reference_threads)]
    quantize = [*leanfit_script(), "quantize", str(model)]
    return {
        "reference": lambda: [*this, "--reference-run", str(model), str(fresh("reference"))],
        "leanfit": lambda: [*quantize, "--out", str(fresh("leanfit")), *LEANFIT_FLAGS],
        "leanfit_workers2": lambda: [
            *quantize, "--out", str(fresh("leanfit_workers2")), *LEANFIT_FLAGS, "--workers", "2"
        ],
    }  # fmt: skip


def reference_error(model: Path, out: Path) -> float:
    """sqrt(Σ‖W − Q − B A‖²) / sqrt(Σ‖W‖²) over the reference's targets."""
    import torch
    from safetensors.torch import load_file

    def weights(folder: Path) -> dict[str, torch.Tensor]:
        tensors = {}
        for file in sorted(folder.glob("*.safetensors")):
            tensors |= load_file(file)
        return tensors

    original, quantized = weights(model), weights(out / "backbone")
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    prefix = "base_model.model."
    error2 = norm2 = 0.0
    for key, a in adapter.items():
        if ".lora_A." not in key:
            continue
        name = key.removeprefix(prefix).replace(".lora_A.weight", ".weight")
        b = adapter[key.replace(".lora_A.", ".lora_B.")]
        w = next(original[k] for k in (name, f"bert.{name}") if k in original).float()
        error2 += float(torch.linalg.norm(w - quantized[name] - b @ a)) ** 2
        norm2 += float(torch.linalg.norm(w)) ** 2
    return math.sqrt(error2 / norm2)


def measure(
    models: dict[str, Path], repeats: int, startup_repeats: int, reference_threads: int, work: Path
) -> dict:
    """Every command once per repetition, in a rotated order; all the raw measurements."""
    python = [sys.executable, "-c"]
    startup = {
        "python -c pass": [*python, "pass"],
        'python -c "import torch"': [*python, "import torch"],
        "leanfit --help": [*leanfit_script(), "--help"],
    }
    jobs: list[tuple[str, str, Callable[[], list[str]]]] = [
        ("startup", name, lambda c=command: c)
        for name, command in startup.items()
        for _ in range(startup_repeats)
    ]
    for model, path in models.items():
        commands = quantize_commands(path, work / model, reference_threads)
        jobs += [(model, runner, commands[runner]) for runner in RUNNERS]
    runs: dict[tuple[str, str], list[dict]] = {}
    for repetition in range(repeats):
        shift = repetition % len(jobs)
        for group, name, command in jobs[shift:] + jobs[:shift]:
            record = timed(command())
            print(f"[{repetition + 1}/{repeats}] {group} {name}: {record['wall_s']:.2f} s")
            if group != "startup":
                record |= outcome(name, models[group], work / group / name, record)
            runs.setdefault((group, name), []).append(record)
    return runs


def outcome(runner: str, model: Path, out: Path, record: dict) -> dict[str, object]:
    """Matrices, total relative error and inner timings of one quantization run."""
    if runner == "reference":
        phases = json.loads(str(record["stdout"]))
        return {
            "matrices": phases.pop("matrices"),
            "error": reference_error(model, out),
            "phases": phases,
        }
    totals = json.loads((out / "loftq_report.json").read_text())["totals"]
    return {
        "matrices": totals["matrices"],
        "error": totals["loftq_error"],
        "params": totals["quantized_params"],
        "walk_s": totals["seconds"],
    }


# --------------------------------------------------------------------------------------------
# Summary and report
# --------------------------------------------------------------------------------------------


def median_of(records: list[dict], key: str) -> float:
    return statistics.median(float(r[key]) for r in records)


def summarize(runs: dict[tuple[str, str], list[dict]], models: dict[str, Path]) -> dict:
    startup = {
        name: {"wall_s": median_of(rs, "wall_s"), "cpu_s": median_of(rs, "cpu_s"), "n": len(rs)}
        for (group, name), rs in runs.items()
        if group == "startup"
    }
    rows = []
    for model in models:
        cells = {runner: runs[model, runner] for runner in RUNNERS}
        matrices = {r["matrices"] for rs in cells.values() for r in rs}
        if len(matrices) != 1:
            raise RuntimeError(f"{model}: the runs quantized different matrices {matrices}")
        row = {"model": model, "params": checkpoint_params(models[model])}
        row["matrices"] = matrices.pop()
        row["quantized_params"] = cells["leanfit"][0]["params"]
        for runner, rs in cells.items():
            row[runner] = {key: median_of(rs, key) for key in ("wall_s", "cpu_s", "error")}
            if runner == "reference":
                row[runner]["phases"] = {
                    phase: statistics.median(r["phases"][phase] for r in rs)
                    for phase in rs[0]["phases"]
                }
            else:
                row[runner]["walk_s"] = median_of(rs, "walk_s")
        for runner in RUNNERS[1:]:
            row[f"speedup_{runner}"] = row["reference"]["wall_s"] / row[runner]["wall_s"]
            row[f"speedup_cpu_{runner}"] = row["reference"]["cpu_s"] / row[runner]["cpu_s"]
            pairs = zip(cells["reference"], cells[runner], strict=True)  # same repetition
            row[f"paired_speedups_{runner}"] = [
                float(ref["wall_s"]) / float(run["wall_s"]) for ref, run in pairs
            ]
        rows.append(row)
    return {"startup": startup, "quantize": rows}


def markdown(summary: dict, meta: dict) -> str:
    help_s = summary["startup"]["leanfit --help"]["wall_s"]
    lines = [
        "# End to end: `leanfit` start-up and `leanfit quantize` against the published LoftQ",
        "",
        f"{meta['machine']} (torch's default: {meta['torch_threads']} threads); load average "
        f"{meta['load_before']} before, {meta['load_after']} after (min {meta['load_min']}, "
        f"max {meta['load_max']} at the starts of the runs). "
        f"Medians over {meta['repeats']} interleaved repetitions; whole processes (start, "
        "imports, reading, work, writing).",
        "",
        "## Start-up",
        "",
        "| command | wall (s) | CPU (s) | runs |",
        "|---|---|---|---|",
    ]
    for name, s in summary["startup"].items():
        lines.append(f"| `{name}` | {s['wall_s']:.2f} | {s['cpu_s']:.2f} | {s['n']} |")
    lines += [
        "",
        f"`leanfit --help` takes {help_s:.2f} s and imports neither torch nor scikit-learn "
        "(checked by `tests/test_cli_imports.py`).",
        "",
        f"## Quantization, NF{BITS}, rank {RANK}, T = {ITERS}, block 64",
        "",
        "Reference: the published algorithm (exact SVD, exhaustive NF search) on each target "
        "weight, in a process that loads the model with transformers and saves the float32 "
        "backbone and the adapter, as the authors' script does (without importing PEFT), on "
        f"{meta['reference_threads']} torch thread(s) (`--threads`; default one per CPU, "
        "torch's default; on a busy machine that oversubscribes the CPUs and `--threads 1` is "
        "the fairer reference). "
        "leanfit: `leanfit quantize MODEL --out OUT --bits 2 --rank 16 --iters 5 --quiet`, "
        "with the default flags and with `--workers 2`. Error: total relative "
        "sqrt(Σ‖W − Q − BA‖²)/sqrt(Σ‖W‖²) over the quantized matrices.",
        "",
        "| model | params | matrices | quantized params | reference (s) | leanfit (s) "
        "| leanfit --workers 2 (s) | speed-up | speed-up --workers 2 | CPU-time ratio "
        "| CPU-time ratio --workers 2 | error reference | error leanfit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["quantize"]:
        lines.append(
            f"| {r['model']} | {r['params'] / 1e6:.1f}M | {r['matrices']} "
            f"| {r['quantized_params'] / 1e6:.1f}M "
            f"| {r['reference']['wall_s']:.1f} | {r['leanfit']['wall_s']:.1f} "
            f"| {r['leanfit_workers2']['wall_s']:.1f} | **{r['speedup_leanfit']:.1f}×** "
            f"| **{r['speedup_leanfit_workers2']:.1f}×** | {r['speedup_cpu_leanfit']:.1f}× "
            f"| {r['speedup_cpu_leanfit_workers2']:.1f}× | {r['reference']['error']:.4f} "
            f"| {r['leanfit']['error']:.4f} |"
        )
    lines += [
        "",
        "Speed-up within each repetition (the reference and leanfit runs of one repetition "
        "are minutes apart, under about the same load; the table above divides medians taken "
        "over different repetitions):",
        "",
        "| model | leanfit, per repetition | leanfit --workers 2, per repetition "
        "| median --workers 2 |",
        "|---|---|---|---|",
    ]
    for r in summary["quantize"]:
        one, two = r["paired_speedups_leanfit"], r["paired_speedups_leanfit_workers2"]
        lines.append(
            f"| {r['model']} | {', '.join(f'{x:.1f}×' for x in one)} "
            f"| {', '.join(f'{x:.1f}×' for x in two)} | {statistics.median(two):.1f}× |"
        )
    lines += [
        "",
        "Where the time goes (medians, seconds). Reference: its own phases. leanfit: the walk "
        "as its report times it (reading, LoftQ, writing the shards) and the rest of the "
        "process (interpreter, imports, configuration, adapter and report files).",
        "",
        "| model | reference imports | reference load | reference LoftQ | reference save "
        "| leanfit walk | leanfit rest | leanfit --workers 2 walk | leanfit --workers 2 rest |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["quantize"]:
        phases = r["reference"]["phases"]
        one, two = r["leanfit"], r["leanfit_workers2"]
        lines.append(
            f"| {r['model']} | {phases['imports']:.1f} | {phases['load']:.1f} "
            f"| {phases['loftq']:.1f} | {phases['save']:.1f} | {one['walk_s']:.1f} "
            f"| {one['wall_s'] - one['walk_s']:.1f} | {two['walk_s']:.1f} "
            f"| {two['wall_s'] - two['walk_s']:.1f} |"
        )
    lines += [
        "",
        "bert-base-sized: `BertConfig()` (12 layers, width 768, 110M parameters), random "
        "initialization (seed 0) saved as float32 safetensors — no 110M encoder ships as a "
        "package here; the times do not depend on the weights' values, the errors do. "
        "minilm: all-MiniLM-L6-v2, real weights.",
        "",
    ]
    return "\n".join(lines)


def write(out: Path, name: str, payload: dict, text: str) -> None:
    from leanfit.io import atomic_output

    with atomic_output(out / f"{name}.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
    with atomic_output(out / f"{name}.md", overwrite=True) as tmp:
        tmp.write_text(text)
    print(f"wrote {out / name}.json and .md")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="MiniLM only, 1 repetition")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument(
        "--startup-repeats", type=int, default=3, help="start-up runs per repetition (3)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch threads of the reference (default: one per CPU, torch's default, as the "
        "published script runs; on a busy machine 1 avoids oversubscribing the CPUs)",
    )
    parser.add_argument(
        "--reference-run", nargs=2, type=Path, metavar=("MODEL", "OUT"), help=argparse.SUPPRESS
    )
    parser.add_argument("--build-model", type=Path, metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.reference_run:
        print(json.dumps(reference_run(*args.reference_run, args.threads)))
        return
    if args.build_model:
        build_bert_base(args.build_model)
        return

    from leanfit.pretrained import model_path

    repeats = 1 if args.quick else args.repeats
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="quantize-e2e-") as tmp:
        work = Path(tmp)
        models = {"minilm": model_path("minilm")}
        if not args.quick:
            timed([sys.executable, __file__, "--build-model", str(work / "bert-base")])
            models = {"bert-base-sized": work / "bert-base", **models}
        runs = measure(models, repeats, args.startup_repeats, args.threads, work)
        summary = summarize(runs, models)
    loads = [float(r["load"]) for rs in runs.values() for r in rs]
    meta = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "torch_threads": os.cpu_count(),
        "reference_threads": args.threads,
        "repeats": repeats,
        "quick": args.quick,
        "flags": LEANFIT_FLAGS,
        "load_before": f"{load_before:.1f}",
        "load_after": f"{os.getloadavg()[0]:.1f}",
        "load_min": f"{min(loads):.1f}",
        "load_max": f"{max(loads):.1f}",
    }
    raw = {f"{group}/{name}": rs for (group, name), rs in runs.items()}
    for records in raw.values():
        for record in records:
            record.pop("stdout")
    name = "quantize_end_to_end_quick" if args.quick else "quantize_end_to_end"
    write(args.out, name, {"meta": meta, **summary, "runs": raw}, markdown(summary, meta))


if __name__ == "__main__":
    main()
