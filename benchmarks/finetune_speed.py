"""LoRA fine-tuning throughput on the CPU: float32 against bfloat16 autocast.

Runs :func:`leanfit.finetune.training.finetune` for a few optimizer steps on real data and
reports wall time per step and training tokens per second:

- SmolLM2-135M-Instruct (causal LM), LoRA rank 4 on q_proj and v_proj, blocks of Pride and
  Prejudice;
- all-MiniLM-L6-v2 (sequence classification), LoRA rank 4 on query and value plus the
  classification head, tweets (tokens: the mean number of real tokens per tweet times the
  batch size; batches are padded to their longest tweet).

Each setting first runs one step (warm-up, not counted), then ``steps`` timed steps, without
evaluation or checkpoints; this is repeated ``--repeats`` times and the fastest repeat is
reported (the least disturbed by other processes), with the median beside it.
Full-precision backbones here; the quantized ones plug into the same loop.

Usage::

    python benchmarks/finetune_speed.py            # 8 timed steps per setting
    python benchmarks/finetune_speed.py --quick    # 2 timed steps

Writes ``benchmarks/results/finetune_speed.json`` and ``finetune_speed.md``.
"""

from __future__ import annotations

import argparse
import copy
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import write_results
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from leanfit.finetune.data import load_data
from leanfit.finetune.training import FinetuneConfig, finetune
from leanfit.pretrained import model_path

RESULTS = Path(__file__).parent / "results"


def smollm2_setting(block_size: int):
    """(fresh PEFT model factory, training blocks, task, LoRA targets)."""
    path = model_path("smollm2")
    base = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    train, _ = load_data("pride_and_prejudice", tokenizer, max_length=block_size)

    def build():
        lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
        return get_peft_model(copy.deepcopy(base), lora)

    return build, train, "causal-lm"


def minilm_setting(max_length: int):
    tokenizer = AutoTokenizer.from_pretrained(model_path("minilm"))
    train, _ = load_data("tweets", tokenizer, max_length=max_length, max_examples=2048)

    def build():
        model = AutoModelForSequenceClassification.from_pretrained(
            model_path("minilm"), num_labels=3
        )
        lora = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], task_type="SEQ_CLS")
        return get_peft_model(model, lora)

    return build, train, "classification"


def timed_run(build, train, task: str, *, dtype: str, steps: int, batch_size: int, length: int):
    """Seconds for ``steps`` optimizer steps after one warm-up step."""
    seconds = {}
    for n in (1, 1 + steps):
        config = FinetuneConfig(
            task=task,
            steps=n,
            batch_size=batch_size,
            learning_rate=1e-3,
            schedule="constant",
            max_length=length,
            device="cpu",
            dtype=dtype,
        )
        model = build()
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            finetune(model, train, None, config, Path(tmp) / "run", progress=False)
            seconds[n] = time.perf_counter() - start
    return seconds[1 + steps] - seconds[1]


def tokens_per_step(train, task: str, batch_size: int) -> float:
    """Training tokens per step: block tokens, or the mean real (non-padding) tokens per tweet."""
    if task == "causal-lm":
        return batch_size * float(train.shape[1])
    return batch_size * float(train.attention_mask.sum(dim=1).double().mean())


def markdown(records: list[dict], meta: dict) -> str:
    lines = [
        "# LoRA fine-tuning throughput (CPU)",
        "",
        f"Wall time per optimizer step after one warm-up step, fastest and median of "
        f"{meta['repeats']} repeats, {meta['threads']} torch "
        f"thread(s), {meta['machine']}, shared CPU (other jobs running: figures are upper "
        "bounds on the time). No evaluation, no checkpoints. Peak RSS of the whole benchmark "
        f"process: {meta['peak_rss_mb']:.0f} MB.",
        "",
        "| model | task | LoRA | batch × length | dtype | s/step (fastest) | s/step (median) "
        "| tokens/s (fastest) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['model']} | {r['task']} | {r['lora']} | {r['batch_size']} × {r['length']} "
            f"| {r['dtype']} | {r['seconds_per_step']:.2f} | {r['median_seconds_per_step']:.2f} "
            f"| {r['tokens_per_second']:.0f} |"
        )
    lines += [
        "",
        "bfloat16 runs the forward and backward passes under CPU autocast; the LoRA weights "
        "and AdamW state stay float32. Its speed depends on the CPU's bfloat16 support.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 timed steps per setting")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    steps = 2 if args.quick else 8
    settings = [
        ("smollm2", "q_proj, v_proj r=4", smollm2_setting, 4, 128),
        ("minilm", "query, value r=4 + head", minilm_setting, 16, 64),
    ]
    records = []
    for name, lora, setting, batch_size, length in settings:
        build, train, task = setting(length)
        tokens = tokens_per_step(train, task, batch_size) * steps
        for dtype in ("float32", "bfloat16"):
            repeats = sorted(
                timed_run(
                    build,
                    train,
                    task,
                    dtype=dtype,
                    steps=steps,
                    batch_size=batch_size,
                    length=length,
                )
                for _ in range(args.repeats)
            )
            record = {
                "model": name,
                "task": task,
                "lora": lora,
                "batch_size": batch_size,
                "length": length,
                "dtype": dtype,
                "steps": steps,
                "repeats": args.repeats,
                "seconds_per_step": repeats[0] / steps,
                "median_seconds_per_step": statistics.median(repeats) / steps,
                "tokens_per_second": tokens / repeats[0],
            }
            records.append(record)
            print(
                f"{name} {dtype:<8} {record['seconds_per_step']:.2f} s/step "
                f"{record['tokens_per_second']:.0f} tokens/s"
            )
    meta = {
        "threads": args.threads,
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}",
        "torch": torch.__version__,
        "quick": args.quick,
        "repeats": args.repeats,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    write_results(
        args.out,
        "finetune_speed",
        quick=args.quick,
        meta=meta,
        records=records,
        markdown=markdown(records, meta),
    )


if __name__ == "__main__":
    main()
