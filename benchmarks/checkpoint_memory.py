"""Peak memory of reading a checkpoint tensor by tensor, against loading the whole model.

Claim: iterating over ``open_checkpoint(path)`` and reading every tensor keeps the process's
anonymous memory near the size of one tensor (in float32), while transformers'
``from_pretrained`` holds the whole model.

Each measurement runs in a fresh Python process. A thread samples ``RssAnon`` from
/proc/self/status every millisecond; the figure reported is the peak minus the value after
the imports. Anonymous memory is what a reader really allocates: the memory-mapped file
pages it touches also show in RSS (``VmHWM``, reported too) but are page cache the kernel
can drop at any time.

Checkpoints: the real SmolLM2-135M GGUF (Q4_1; 0.51 GB as float32) and a synthetic
llama saved in bfloat16 as sharded safetensors (0.46 GB as float32, 0.26 GB with
``--quick``); both are read as float32 (the dtype a quantizer works in).

Usage: ``python benchmarks/checkpoint_memory.py [--quick] [--json PATH]``; writes
``benchmarks/results/checkpoint_memory.{json,md}`` by default. Linux only.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import PeakSampler, status_kb

RESULTS = Path(__file__).resolve().parent / "results"
MB = 2**20


def measure(method: str, path: Path) -> dict:
    """Run in a child process: read every tensor of ``path`` and report memory in MB."""
    import gguf  # noqa: F401  (code, imported before the baseline like the rest)
    import torch
    import transformers.models.llama.modeling_llama  # noqa: F401
    from transformers import AutoModelForCausalLM

    from leanfit.checkpoints.source import open_checkpoint

    base_anon, base_hwm = status_kb("RssAnon"), status_kb("VmHWM")
    start = time.perf_counter()
    opened = None
    with PeakSampler() as sampler:
        if method == "streaming":
            with open_checkpoint(path) as checkpoint:
                opened = round((status_kb("RssAnon") - base_anon) / 1024, 1)
                for name in checkpoint.names():
                    checkpoint.read(name).sum()  # materialize, use, drop
        else:
            kwargs = {"gguf_file": path.name} if path.suffix == ".gguf" else {}
            model = AutoModelForCausalLM.from_pretrained(
                path.parent if path.suffix == ".gguf" else path, dtype=torch.float32, **kwargs
            )
            for tensor in model.state_dict().values():
                tensor.sum()
    seconds = time.perf_counter() - start
    with open_checkpoint(path) as checkpoint:
        sizes = [4 * math.prod(checkpoint.shape(name)) for name in checkpoint.names()]
    return {
        "method": method,
        "checkpoint": path.name if path.suffix == ".gguf" else "synthetic llama, bf16 shards",
        "open_anon_mb": opened,
        "peak_anon_mb": round((sampler.peak - base_anon) / 1024, 1),
        "peak_rss_mb": round((status_kb("VmHWM") - base_hwm) / 1024, 1),
        "largest_tensor_mb": round(max(sizes) / MB, 1),
        "model_fp32_mb": round(sum(sizes) / MB, 1),
        "seconds": round(seconds, 1),
    }


def write_synthetic(directory: Path, quick: bool) -> Path:
    """A random llama (8 or 4 blocks of width 1024) saved in bfloat16 as 100 MB shards."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=8192,
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=4 if quick else 8,
        num_attention_heads=16,
        num_key_value_heads=16,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(directory, max_shard_size="100MB")
    return directory


def run_child(method: str, path: Path) -> dict:
    command = [sys.executable, __file__, "--child", method, str(path)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict]) -> str:
    head = (
        "| checkpoint | method | anonymous MB after open | peak anonymous MB "
        "| peak RSS MB (incl. mapped file) | largest tensor MB (fp32) | model MB (fp32) "
        "| seconds |\n|---|---|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {r['checkpoint']} | {r['method']} | {r['open_anon_mb'] or '–'} "
        f"| {r['peak_anon_mb']} | {r['peak_rss_mb']} "
        f"| {r['largest_tensor_mb']} | {r['model_fp32_mb']} | {r['seconds']} |\n"
        for r in rows
    )
    return head + body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller synthetic checkpoint")
    parser.add_argument("--json", type=Path, help="write the JSON here (no markdown)")
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], Path(args.child[1]))))
        return

    from leanfit.pretrained import model_path

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        synthetic = write_synthetic(Path(tmp) / "llama", args.quick)
        for path in (model_path("smollm2"), synthetic):
            for method in ("streaming", "from_pretrained"):
                rows.append(run_child(method, path))
                print(json.dumps(rows[-1]), flush=True)
    result = {"claim": "streaming reads keep memory near one tensor", "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
        return
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "checkpoint_memory.json").write_text(json.dumps(result, indent=2))
    (RESULTS / "checkpoint_memory.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
