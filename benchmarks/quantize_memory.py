"""Peak memory of ``leanfit quantize`` (streaming) against loading the whole model first.

Claim: ``leanfit quantize`` streams the checkpoint, so its peak memory is set by the
largest tensor's float32 working set plus the outputs held while they are written (the
backbone shard being filled, at most 64 MB, and the LoRA adapter, which grows with the number
of targets), not by the model: it stays within 2× of that working set plus those outputs, and
doubling the blocks at the same width changes the peak by little more than those outputs.

Each run is a fresh Python process, on one torch thread, quantizing with LoftQ (NF2, rank
16, T = 5, block 64, randomized SVD):

* ``leanfit quantize`` — the CLI's entry point, ``leanfit.cli.main(["quantize", ...])``;
* ``from_pretrained + quantize_module`` — the reference: transformers loads the whole model
  (in its stored dtype), then the same walker quantizes it from memory.

A thread samples ``RssAnon`` (anonymous memory: what the process allocated) from
/proc/self/status every millisecond; peak RSS is the kernel's ``VmHWM`` (it also counts the
pages of memory-mapped checkpoint files, which are page cache the kernel can drop). Both are
reported as growth over the value after the imports. ``working set`` is the measured peak
anonymous memory of quantizing the largest target matrix alone (a random matrix of its shape,
fresh process); ``largest tensor`` is the largest tensor of the checkpoint as float32.

Checkpoints: synthetic llamas of width 2048 (TinyLlama's shapes: intermediate 5632, 32 heads,
4 key/value heads, vocabulary 32000), stored as bfloat16 safetensors shards, with N and 2N
blocks (N = 18: 1.7 and 3.2 GB; ``--quick``: width 512, 4 and 8 blocks); and the real
SmolLM2-135M-Instruct GGUF (Q4_1).

Usage: ``python benchmarks/quantize_memory.py [--quick]``; writes
``benchmarks/results/quantize_memory{,_quick}.{json,md}``. Needs about 2× the largest
checkpoint in free disk space (temporary directory) and, for the reference, its size in RAM.
Linux only.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import PeakSampler, status_kb, write_results

RESULTS = Path(__file__).resolve().parent / "results"
MB = 2**20
LOFTQ = {"bits": 2, "rank": 16, "iters": 5}

FULL_SHAPE = {
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_heads": 32,
    "num_kv_heads": 4,
    "vocab_size": 32000,
}
QUICK_SHAPE = {
    "hidden_size": 512,
    "intermediate_size": 1408,
    "num_heads": 8,
    "num_kv_heads": 2,
    "vocab_size": 8192,
}
FULL_LAYERS, QUICK_LAYERS = 18, 4


def _imports() -> None:
    """Everything both methods import, loaded before the baseline is taken."""
    import gguf  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401
    from transformers import AutoModelForCausalLM  # noqa: F401

    import leanfit.checkpoints
    import leanfit.cli.quantize
    import leanfit.pipeline  # noqa: F401


def _quantize(method: str, source: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from leanfit.cli import main as cli_main
    from leanfit.pipeline import LoftQConfig
    from leanfit.pipeline.walker import quantize_module

    if method == "streaming":
        options = [f"--{key}={value}" for key, value in LOFTQ.items()]
        code = cli_main(["quantize", str(source), "--out", str(out), *options, "--quiet"])
        if code:
            raise RuntimeError(f"leanfit quantize exited with {code}")
        return
    kwargs = {"gguf_file": source.name} if source.suffix == ".gguf" else {}
    directory = source.parent if source.suffix == ".gguf" else source
    model = AutoModelForCausalLM.from_pretrained(directory, dtype="auto", **kwargs)
    model.requires_grad_(False)
    quantize_module(model, out, LoftQConfig(**LOFTQ), progress=False)
    del model
    torch.cuda.empty_cache()


def _working_set(target: list[int], largest: list[int], out: Path) -> None:
    """Handle the largest tensors alone: LoftQ of a random matrix of the largest target's
    shape, then a float32 tensor of the largest tensor's shape written to safetensors."""
    import torch
    from safetensors.torch import save_file

    from leanfit.pipeline import LoftQConfig
    from leanfit.quantization import loftq_decompose

    config = LoftQConfig(**LOFTQ)
    generator = torch.Generator().manual_seed(0)
    matrix = torch.randn(target, generator=generator) * 0.02
    loftq_decompose(matrix, config.quant, config.lora, seed=0)
    del matrix
    out.mkdir(parents=True, exist_ok=True)
    save_file({"tensor": torch.randn(largest, generator=generator)}, out / "largest.safetensors")


def child(method: str, source: Path, out: Path) -> dict:
    """In a fresh process: one measurement, memory in MB over the post-import baseline."""
    import torch

    _imports()
    torch.set_num_threads(1)
    base_anon, base_hwm = status_kb("RssAnon"), status_kb("VmHWM")
    start = time.perf_counter()
    with PeakSampler() as sampler:
        if method == "working_set":
            _working_set(**json.loads(str(source)), out=out)
        else:
            _quantize(method, source, out)
    return {
        "method": method,
        "seconds": round(time.perf_counter() - start, 1),
        "peak_anon_mb": round((sampler.peak - base_anon) / 1024, 1),
        "peak_rss_mb": round((status_kb("VmHWM") - base_hwm) / 1024, 1),
        "baseline_anon_mb": round(base_anon / 1024, 1),
    }


def run_child(method: str, source: Path | str, out: Path) -> dict:
    command = [sys.executable, __file__, "--child", method, str(source), str(out)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{method} on {source} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def describe(source: Path) -> dict:
    """Sizes of a checkpoint and of what quantizing it keeps in memory (MB)."""
    from leanfit.checkpoints.source import open_checkpoint
    from leanfit.checkpoints.targets import select_targets
    from leanfit.pipeline.walker import DEFAULT_SHARD_BYTES

    with open_checkpoint(source) as checkpoint:
        names = checkpoint.names()
        shapes = {name: checkpoint.shape(name) for name in names}
        targets = select_targets(names, shapes, checkpoint.model_type, None)
        layers = int(getattr(checkpoint.config, "num_hidden_layers", 0))
    sizes = {name: 4 * math.prod(shape) for name, shape in shapes.items()}
    largest_target = max(targets, key=lambda t: math.prod(t.matrix_shape))
    adapter = sum(4 * LOFTQ["rank"] * sum(t.matrix_shape) for t in targets)
    files = [f for f in source.rglob("*") if f.is_file()] if source.is_dir() else [source]
    return {
        "layers": layers,
        "tensors": len(names),
        "targets": len(targets),
        "file_gb": round(sum(f.stat().st_size for f in files) / 2**30, 2),
        "model_fp32_mb": round(sum(sizes.values()) / MB, 1),
        "largest_tensor_mb": round(max(sizes.values()) / MB, 1),
        "largest_shape": list(shapes[max(sizes, key=sizes.__getitem__)]),
        "largest_target": list(largest_target.matrix_shape),
        "adapter_mb": round(adapter / MB, 1),
        "shard_buffer_mb": round(DEFAULT_SHARD_BYTES / MB, 1),
    }


def measure_checkpoint(label: str, source: Path, work: Path, reference: bool) -> list[dict]:
    info = {"checkpoint": label, **describe(source)}
    shapes = {"target": info["largest_target"], "largest": info["largest_shape"]}
    working = run_child("working_set", json.dumps(shapes), work / "working-set")
    info["working_set_mb"] = working["peak_anon_mb"]
    rows = []
    for method in ("streaming", "from_pretrained") if reference else ("streaming",):
        out = work / f"out-{method}"
        row = {**info, **run_child(method, source, out)}
        bound = 2 * info["working_set_mb"] + info["adapter_mb"] + info["shard_buffer_mb"]
        row["bound_mb"] = round(bound, 1)
        row["within_bound"] = row["peak_anon_mb"] <= row["bound_mb"]
        rows.append(row)
        print(json.dumps(row), flush=True)
        subprocess.run(["rm", "-rf", str(out)], check=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small synthetic checkpoints")
    parser.add_argument(
        "--child", nargs=3, metavar=("METHOD", "SOURCE", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]), Path(args.child[2]))))
        return

    from leanfit.checkpoints.synthetic import SyntheticLlama, write_synthetic_llama
    from leanfit.pretrained import model_path

    shape = QUICK_SHAPE if args.quick else FULL_SHAPE
    layers = QUICK_LAYERS if args.quick else FULL_LAYERS
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows += measure_checkpoint("SmolLM2-135M (GGUF Q4_1)", model_path("smollm2"), work, True)
        for count in (layers, 2 * layers):
            spec = SyntheticLlama(**shape, num_layers=count, dtype="bfloat16")
            source = write_synthetic_llama(work / "synthetic", spec, progress=False)
            label = f"synthetic llama, width {spec.hidden_size}, {count} blocks, bf16"
            rows += measure_checkpoint(label, source, work, reference=count == 2 * layers)
            subprocess.run(["rm", "-rf", str(source)], check=True)
    meta = {
        "claim": __doc__.split("\n\n")[1],
        "loftq": LOFTQ,
        "machine": f"{platform.machine()} {platform.system()}, 1 torch thread",
    }
    write_results(
        RESULTS,
        "quantize_memory",
        quick=args.quick,
        meta=meta,
        records=rows,
        markdown=markdown(rows),
    )
    print(markdown(rows))


def verdicts(rows: list[dict]) -> list[str]:
    """The claim checked on the rows: bound held, and the peak with N vs 2N blocks."""
    lines = []
    streaming = [r for r in rows if r["method"] == "streaming"]
    for row in streaming:
        ratio = row["peak_anon_mb"] / row["working_set_mb"]
        lines.append(
            f"{row['checkpoint']}: peak {row['peak_anon_mb']:.0f} MB = {ratio:.2f}× the working "
            f"set; bound 2 × {row['working_set_mb']:.0f} + {row['adapter_mb']:.0f} (adapter) + "
            f"{row['shard_buffer_mb']:.0f} (shard) = {row['bound_mb']:.0f} MB: "
            + ("holds" if row["within_bound"] else "**does not hold**")
        )
    for reference in (r for r in rows if r["method"] == "from_pretrained"):
        ours = next(r for r in streaming if r["checkpoint"] == reference["checkpoint"])
        lines.append(
            f"{reference['checkpoint']}: peak RSS {ours['peak_rss_mb']:.0f} MB streaming vs "
            f"{reference['peak_rss_mb']:.0f} MB loading the whole model first "
            f"({reference['peak_rss_mb'] / ours['peak_rss_mb']:.1f}×)"
        )
    synthetic = [r for r in streaming if r["checkpoint"].startswith("synthetic")]
    if len(synthetic) == 2:
        small, large = synthetic
        growth = large["peak_anon_mb"] - small["peak_anon_mb"]
        adapter = large["adapter_mb"] - small["adapter_mb"]
        lines.append(
            f"{small['layers']} → {large['layers']} blocks ({small['file_gb']} → "
            f"{large['file_gb']} GB): peak anonymous {small['peak_anon_mb']:.0f} → "
            f"{large['peak_anon_mb']:.0f} MB ({growth:+.0f} MB; the adapter, +{adapter:.0f} MB, "
            f"is written shard by shard and only assembled at the end; the backbone shard being "
            f"filled adds 0 to {small['shard_buffer_mb']:.0f} MB depending on when the peak "
            f"falls); peak RSS {small['peak_rss_mb']:.0f} → {large['peak_rss_mb']:.0f} MB"
        )
    return lines


def markdown(rows: list[dict]) -> str:
    methods = {"streaming": "leanfit quantize", "from_pretrained": "from_pretrained + quantize"}
    head = (
        "# Peak memory of `leanfit quantize`\n\n"
        "LoftQ NF2, rank 16, T = 5, one torch thread on a 2-core machine that may be shared "
        "(seconds are indicative), each run a fresh process. Memory is the "
        "growth over the process after its imports: peak anonymous memory (RssAnon, sampled "
        "every ms) and peak RSS (VmHWM, which also counts mapped checkpoint pages). Working "
        "set: peak anonymous memory of quantizing the largest target matrix alone and writing "
        "the largest tensor as float32. Bound: 2 × working set + adapter + one backbone shard "
        "(64 MB). The reference loads the whole model with `from_pretrained` (stored dtype) and "
        "quantizes it from memory with the same walker (`quantize_module`); transformers "
        "keeps bfloat16 weights stored in bfloat16 memory-mapped, so that model shows in peak "
        "RSS rather than in anonymous memory (the GGUF one is dequantized into anonymous "
        "memory).\n\n"
        "| checkpoint | GB on disk | blocks | tensors | method | peak anon MB | peak RSS MB "
        "| largest tensor MB (fp32) | working set MB | adapter MB | bound MB | seconds |\n"
        "|---|--:|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|\n"
    )
    body = "".join(
        f"| {r['checkpoint']} | {r['file_gb']} | {r['layers']} | {r['tensors']} "
        f"| {methods[r['method']]} | {r['peak_anon_mb']} | {r['peak_rss_mb']} "
        f"| {r['largest_tensor_mb']} | {r['working_set_mb']} | {r['adapter_mb']} "
        f"| {r['bound_mb']} | {r['seconds']} |\n"
        for r in rows
    )
    return head + body + "\n" + "".join(f"- {line}\n" for line in verdicts(rows))


if __name__ == "__main__":
    main()
