"""Calibrated LoftQ vs LoftQ vs QLoRA on SmolLM2: held-out perplexity at init and fine-tuned.

SmolLM2-135M-Instruct, NF quantizer (blocks of 64, fp32 scales), every attention and MLP
linear layer, at 2 bits, mixed 2/4 bits (the first layers at 4 bits, 3 bits on average, as in
``loftq_finetune.py``) and 4 bits, LoRA rank 16 and 64 (alpha = rank). Methods:

- QLoRA: Q = NF-k(W), PEFT's default LoRA init (B = 0);
- LoftQ: T = 5 alternating steps fitting the weight error ``‖W − Q − A Bᵀ‖_F``;
- calibrated LoftQ: T = 5 steps fitting the output error ``‖X (W − Q − A Bᵀ)ᵀ‖_F`` on
  2,048 calibration tokens of Pride and Prejudice (chapters 1–2; the model is run block by
  block, each block's inputs coming from the already quantized blocks), Gram damping 0.01.

Held-out perplexity and fine-tuning are those of ``loftq_finetune.py`` (imported from it: the
last 10 % of the chapters, 56–61, held out; sliding window 256, stride 128, first 768 held-out
tokens; 8 steps of batch 4 × 128 tokens, lr 1e-3), so calibration and evaluation texts are
disjoint. The CPU is shared and slow, so the work runs in priority order (:func:`schedule`):
the 2-bit and mixed configurations are quantized and measured at initialization, the 2-bit
ones fine-tuned, then the 4-bit ones measured and the rest fine-tuned, while ``--minutes``
lasts; the table says what was not run.

Usage::

    python benchmarks/loftq_calibrated.py                 # about 1 hour on one busy thread
    python benchmarks/loftq_calibrated.py --quick         # 2 bits, rank 16, 2 steps: minutes
    python benchmarks/loftq_calibrated.py --work DIR --resume   # keep/reuse quantized models

Writes ``benchmarks/results/loftq_calibrated.{json,md}`` (``_quick`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))  # the sibling scripts, also when imported

from _common import write_results
from loftq_finetune import run_directory, smollm2_setup

from leanfit.finetune.runs import DataSpec
from leanfit.pipeline import LoftQConfig, quantize_checkpoint
from leanfit.pretrained import model_path
from leanfit.reports import markdown_table

RESULTS = Path(__file__).parent / "results"
NAME = "loftq_calibrated"

PLANS: dict[str, dict] = {
    "2 bits": {"bits": 2},
    "mixed 2/4 (3 bits)": {"bits": 2, "avg_bits": 3.0},
    "4 bits": {"bits": 4},
}
METHODS: dict[str, tuple[dict, str]] = {
    "QLoRA": ({"init": "qlora"}, "qlora"),
    "LoftQ": ({"iters": 5}, "loftq"),
    "calibrated LoftQ": ({"iters": 5, "calibration": "pride_and_prejudice"}, "loftq"),
}
RANKS = (16, 64)
CARRIED = ("ppl_full_precision", "calib_chapters")
"""Meta entries measured once, kept when a run is resumed."""


def configurations(quick: bool) -> list[tuple[str, int, str]]:
    """(plan, rank, method) in priority order: 2 bits first, then mixed, then 4 bits."""
    plans, ranks = (["2 bits"], [16]) if quick else (list(PLANS), list(RANKS))
    return [(plan, rank, method) for plan in plans for rank in ranks for method in METHODS]


def quantize(plan: str, rank: int, method: str, root: Path, calib_tokens: int) -> tuple[Path, dict]:
    """Quantize SmolLM2 for one configuration (reused when ``root`` already holds it)."""
    fields, _ = METHODS[method]
    config = LoftQConfig(rank=rank, calib_tokens=calib_tokens, **PLANS[plan], **fields)
    out = root / f"{plan}-r{rank}-{method}".replace(" ", "_").replace("/", "-")
    if not (out / "loftq_report.json").exists():
        quantize_checkpoint(model_path("smollm2"), out, config, progress=False, overwrite=True)
    totals = json.loads((out / "loftq_report.json").read_text())["totals"]
    return out, totals


def schedule(quick: bool) -> list[tuple[str, tuple[str, int, str]]]:
    """The work in priority order: ("init", config) quantizes and measures the perplexity at
    initialization, ("fine-tune", config) fine-tunes. 2 and mixed bits at init, then 2 bits
    fine-tuned, then 4 bits at init, then the other fine-tuning runs."""
    configs = configurations(quick)
    low = [c for c in configs if c[0] != "4 bits"]
    first = [c for c in configs if c[0] == "2 bits"]
    return (
        [("init", c) for c in low]
        + [("fine-tune", c) for c in first]
        + [("init", c) for c in configs if c not in low]
        + [("fine-tune", c) for c in configs if c not in first]
    )


def key(record: dict) -> tuple[str, int, str]:
    return record["plan"], record["rank"], record["method"]


def markdown(records: list[dict], meta: dict) -> str:
    rows = []
    for r in records:
        if "ppl_finetuned" in r:
            tuned = f"{r['ppl_finetuned']:.4g}"
        else:
            tuned = "not run (time)"
        rows.append(
            {
                "bits": r["plan"],
                "rank": r["rank"],
                "method": r["method"],
                "error at init": r["error"],
                "held-out ppl at init": r["ppl_init"],
                "held-out ppl fine-tuned": tuned,
                "quantize (s)": r["quantize_seconds"],
            }
        )
    lm = meta["smollm2"]
    measured = {key(r) for r in records}
    missing = [
        f"{plan} rank {rank} {method}"
        for plan, rank, method in configurations(meta["quick"])
        if (plan, rank, method) not in measured
    ]
    summary = [
        f"- {plan}, rank {rank}: held-out ppl at init — "
        + ", ".join(
            f"{m} {by[(plan, rank, m)]['ppl_init']:.4g}" for m in METHODS if (plan, rank, m) in by
        )
        for by in [{key(r): r for r in records}]
        for plan, rank in dict.fromkeys((r["plan"], r["rank"]) for r in records)
    ]
    return "\n".join(
        [
            "# Calibrated LoftQ: held-out perplexity of SmolLM2 at initialization and fine-tuned",
            "",
            "SmolLM2-135M-Instruct, NF quantizer (block 64, fp32 scales) on every attention/MLP "
            "linear layer; LoRA alpha = rank. QLoRA: B = 0. LoftQ: T = 5, weight error. "
            f"Calibrated LoftQ: T = 5, output error on {meta['calib_tokens']:,} calibration "
            f"tokens ({meta['calib_chapters']}), block by block, damping "
            f"{meta['calib_damp']}. Held-out perplexity on chapters 56–61 (never used for "
            f"calibration or training): sliding window {lm['window']}, stride {lm['stride']}, "
            f"first {lm['tokens']} tokens. Fine-tuning as in the LoftQ fine-tuning table: "
            f"{lm['steps']} steps, batch {lm['batch_size']} × {lm['block']} tokens, lr "
            f"{lm['lr']}. Full-precision (the dequantized Q4_1 GGUF) perplexity: "
            f"{meta['ppl_full_precision']:.4g}.",
            "",
            markdown_table(
                rows,
                floatfmt={
                    "error at init": ".3f",
                    "held-out ppl at init": ".4g",
                    "quantize (s)": ".0f",
                },
            ),
            "",
            "Error at init: total relative error over the quantized matrices — of the weights "
            "for QLoRA and LoftQ, of the layer outputs on the calibration tokens for calibrated "
            "LoftQ (the quantity each minimizes; the two are not comparable). "
            + (
                "'not run (time)': the configuration was quantized and evaluated at "
                "initialization but not fine-tuned within the time budget. "
                if any("ppl_finetuned" not in r for r in records)
                else ""
            )
            + "Quantize (s): wall clock on a shared CPU whose load varied during the run (rows "
            "are not comparable to the second).",
            "",
            *summary,
            "",
            *([f"Not quantized nor measured (time): {', '.join(missing)}.", ""] if missing else []),
            f"{meta['threads']} torch thread(s), {meta['machine']}, shared CPU, torch "
            f"{meta['torch']}.",
            "",
        ]
    )


def rerender(path: Path) -> None:
    """Rewrite the markdown next to a results JSON (after a change of presentation)."""
    saved = json.loads(path.read_text())
    path.with_suffix(".md").write_text(markdown(saved["records"], saved["meta"]))


def calibration_chapters(tokenizer, n_tokens: int) -> str:
    """Which chapters the first ``n_tokens`` calibration tokens come from."""
    from leanfit.datasets import load_text
    from leanfit.datasets.text import split_chapters

    train, _ = split_chapters(load_text("pride_and_prejudice"), held_out=0.1)
    total = 0
    for chapter, text in zip(train["chapter"], train["text"], strict=True):
        total += len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1
        if total >= n_tokens:
            return f"chapters {train['chapter'].iloc[0]}–{chapter}"
    return f"chapters {train['chapter'].iloc[0]}–{train['chapter'].iloc[-1]}"


def measure_init(
    plan: str,
    rank: int,
    method: str,
    root: Path,
    calib_tokens: int,
    meta: dict,
    spec: DataSpec,
    lm_config,
    ppl: dict,
) -> dict:
    """Quantize one configuration and measure its perplexity at initialization (and, the first
    time, the calibration chapters and the full-precision perplexity, into ``meta``)."""
    tic = time.perf_counter()
    directory, totals = quantize(plan, rank, method, root, calib_tokens)
    seconds = time.perf_counter() - tic
    if "calib_chapters" not in meta:
        from leanfit.finetune.runs import tokenizer_of

        meta["calib_chapters"] = calibration_chapters(tokenizer_of(directory), calib_tokens)
    if "ppl_full_precision" not in meta:
        fp = run_directory(
            directory,
            "full precision",
            "full-precision",
            "causal-lm",
            spec,
            lm_config,
            root,
            ppl,
            fine_tune=False,
        )
        meta["ppl_full_precision"] = fp["ppl_init"]
    record = run_directory(
        directory,
        method,
        METHODS[method][1],
        "causal-lm",
        spec,
        lm_config,
        root,
        ppl,
        fine_tune=False,
    )
    record.update(
        plan=plan,
        rank=rank,
        error=totals["loftq_error"],
        quantize_seconds=seconds,
        bits_per_param=totals["bits_per_param"],
    )
    print(json.dumps({k: record[k] for k in ("plan", "rank", "method", "ppl_init")}), flush=True)
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 bits, rank 16, a few steps")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument("--work", type=Path, help="keep the quantized models here (reused)")
    parser.add_argument("--resume", action="store_true", help="keep the records already saved")
    parser.add_argument(
        "--minutes",
        type=float,
        default=float("inf"),
        help="start no new quantization or fine-tuning after this many minutes",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    lm, lm_config, ppl = smollm2_setup(quick=args.quick)
    calib_tokens = 512 if args.quick else 2048
    spec = DataSpec("pride_and_prejudice")
    name = f"{NAME}_quick" if args.quick else NAME
    saved = args.out / f"{name}.json"
    previous = json.loads(saved.read_text()) if args.resume and saved.exists() else None
    records: list[dict] = previous["records"] if previous else []
    meta = {
        "smollm2": lm,
        "calib_tokens": calib_tokens,
        "calib_damp": LoftQConfig().calib_damp,
        "threads": args.threads,
        "machine": f"{platform.machine()} {platform.system()}",
        "torch": torch.__version__,
        "quick": args.quick,
        **{k: v for k, v in (previous or {}).get("meta", {}).items() if k in CARRIED},
    }

    def save() -> None:
        order = {c: i for i, c in enumerate(configurations(args.quick))}
        records.sort(key=lambda r: order[key(r)])
        write_results(
            args.out,
            NAME,
            quick=args.quick,
            meta=meta,
            records=records,
            markdown=markdown(records, meta),
        )

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="loftq-calibrated-") as tmp:
        root = args.work or Path(tmp)
        done = {key(r): r for r in records}
        for step, (plan, rank, method) in schedule(args.quick):
            if (time.perf_counter() - start) / 60 > args.minutes:
                break
            record = done.get((plan, rank, method))
            if step == "init" and record is None:
                record = measure_init(
                    plan, rank, method, root, calib_tokens, meta, spec, lm_config, ppl
                )
                records.append(record)
                done[(plan, rank, method)] = record
            elif step == "fine-tune" and record is not None and "ppl_finetuned" not in record:
                directory, _ = quantize(plan, rank, method, root, calib_tokens)
                tuned = run_directory(
                    directory,
                    method,
                    METHODS[method][1],
                    "causal-lm",
                    spec,
                    lm_config,
                    root,
                    ppl,
                    measure_init=False,  # measured by measure_init above
                )
                keys = ("ppl_finetuned", "train_loss_first", "train_loss_last")
                record.update({k: tuned[k] for k in keys})
            else:
                continue
            save()


if __name__ == "__main__":
    main()
