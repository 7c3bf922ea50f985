"""LoftQ vs QLoRA vs full-precision LoRA after a short fine-tuning run, on the CPU.

- SmolLM2-135M-Instruct (causal LM) on Pride and Prejudice: the last 10 % of the chapters
  held out; training blocks of ``block`` tokens; held-out perplexity with a sliding window
  (``window`` tokens moved by ``stride``; every token after the first window sees at least
  ``window - stride`` tokens of context) on the first ``ppl_tokens`` held-out tokens, at
  initialization and after fine-tuning.
- all-MiniLM-L6-v2 (sequence classification, new head) on tweets: held-out accuracy and
  macro-F1 after fine-tuning (the head starts random, so no "at initialization" figure).

Methods (LoRA rank 16, alpha 16, every attention and MLP linear layer, NF quantizer, blocks
of 64, fp32 scales): full-precision LoRA (PEFT's default init on the original weights);
QLoRA (Q = NF-k(W), PEFT's default LoRA init: ``B = 0``); LoftQ (Q and B, A fitted by T
alternating steps); mixed precision (the first half of the layers at 4 bits, the rest at 2:
3 bits on average). Each quantized model is written once by
:func:`leanfit.pipeline.quantize_checkpoint`; every run uses the same seed, data order,
steps and learning rate. Memory: bytes of the parameters and buffers of the model being
fine-tuned, and of the quantized layers against their float16 size.

Usage::

    python benchmarks/loftq_finetune.py            # about 20 minutes on one busy thread
    python benchmarks/loftq_finetune.py --quick    # a few minutes: fewer methods and steps
    python benchmarks/loftq_finetune.py --sweep    # MiniLM NF2: QLoRA vs LoftQ over lr, steps

Writes ``benchmarks/results/loftq_finetune.json`` and ``loftq_finetune.md`` (``--quick``:
``loftq_finetune_quick.*``; ``--sweep``: ``loftq_finetune_sweep.*``, in ``--out``).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from leanfit.finetune.evaluate import perplexity
from leanfit.finetune.runs import DataSpec, backbone_memory, build_model, prepare_data, tokenizer_of
from leanfit.finetune.training import FinetuneConfig, finetune
from leanfit.io import atomic_output
from leanfit.pipeline import LoftQConfig, quantize_checkpoint
from leanfit.pretrained import model_path
from leanfit.reports import markdown_table

RESULTS = Path(__file__).parent / "results"

#: name -> (LoftQConfig fields or None for full precision, init used by build_model)
METHODS: dict[str, tuple[dict | None, str]] = {
    "full-precision LoRA": (None, "full-precision"),
    "QLoRA NF4": ({"bits": 4, "init": "qlora"}, "qlora"),
    "LoftQ NF4 T=1": ({"bits": 4, "iters": 1}, "loftq"),
    "QLoRA NF2": ({"bits": 2, "init": "qlora"}, "qlora"),
    "LoftQ NF2 T=1": ({"bits": 2, "iters": 1}, "loftq"),
    "LoftQ NF2 T=5": ({"bits": 2, "iters": 5}, "loftq"),
    "LoftQ mixed 4/2 (3 bits) T=1": ({"bits": 2, "avg_bits": 3.0, "iters": 1}, "loftq"),
}
SMOLLM2_METHODS = list(METHODS)
MINILM_METHODS = [
    "full-precision LoRA",
    "QLoRA NF4",
    "LoftQ NF4 T=1",
    "QLoRA NF2",
    "LoftQ NF2 T=5",
]
QUICK_METHODS = ["full-precision LoRA", "QLoRA NF2", "LoftQ NF2 T=1"]


def quantized_dir(source: Path, method: str, root: Path) -> Path:
    """Quantize ``source`` for ``method`` into ``root`` (once per source and method)."""
    fields, _ = METHODS[method]
    out = root / (source.stem + "-" + method.replace(" ", "_").replace("/", "-"))
    if fields is None:  # full precision still needs a directory: its LoRA targets and source
        fields = {"bits": 4, "init": "qlora"}
        out = root / (source.stem + "-targets")
    if not out.exists():
        quantize_checkpoint(source, out, LoftQConfig(rank=16, **fields), progress=False)
    return out


def run_method(
    source: Path,
    method: str,
    task: str,
    spec: DataSpec,
    config: FinetuneConfig,
    root: Path,
    ppl: dict | None,
) -> dict:
    directory = quantized_dir(source, method, root)
    return run_directory(directory, method, METHODS[method][1], task, spec, config, root, ppl)


def run_directory(
    directory: Path,
    method: str,
    init: str,
    task: str,
    spec: DataSpec,
    config: FinetuneConfig,
    root: Path,
    ppl: dict | None,
    *,
    fine_tune: bool = True,
    measure_init: bool = True,
) -> dict:
    """Held-out quality of the quantized ``directory`` with ``init``: perplexity at
    initialization (causal LM; unless ``measure_init`` is False, for a caller that has it
    already), then, with ``fine_tune``, after fine-tuning with ``config``."""
    tokenizer = tokenizer_of(directory)
    train, held = prepare_data(spec, task, tokenizer, max_length=config.max_length)
    labels = getattr(train, "label_names", ())
    tic = time.perf_counter()
    model = build_model(directory, task, init=init, num_labels=len(labels) or None, seed=0)
    record: dict = {"method": method, "init": init, **backbone_memory(model)}
    stream = None if ppl is None else held.reshape(-1)[: ppl["tokens"]]
    if ppl is not None and measure_init:
        record["ppl_init"] = perplexity(
            model, stream, max_length=ppl["window"], stride=ppl["stride"]
        )
    if not fine_tune:
        record["seconds"] = time.perf_counter() - tic
        return record
    # causal LM: the sliding-window perplexity below is the held-out measure, no eval in the loop
    evaluation = held if ppl is None else None
    result = finetune(
        model, train, evaluation, config, root / "runs" / directory.name, progress=False
    )
    if ppl is not None:
        record["ppl_finetuned"] = perplexity(
            model, stream, max_length=ppl["window"], stride=ppl["stride"]
        )
    else:
        record.update({k: result.evals[-1][k] for k in ("accuracy", "macro_f1", "loss")})
    record["train_loss_first"] = result.losses[0]
    record["train_loss_last"] = result.losses[-1]
    record["seconds"] = time.perf_counter() - tic
    print(json.dumps({k: v for k, v in record.items() if "bytes" not in k}), flush=True)
    return record


def markdown(smollm2: list[dict], minilm: list[dict], meta: dict) -> str:
    mb = 2**20
    lm_rows = [
        {
            "method": r["method"],
            "held-out ppl at init": r["ppl_init"],
            "held-out ppl fine-tuned": r["ppl_finetuned"],
            "train loss first → last": f"{r['train_loss_first']:.3f} → {r['train_loss_last']:.3f}",
            "model MB": r["model_bytes"] / mb,
            "quantized layers MB (fp16 MB)": (
                f"{r['quantized_bytes'] / mb:.1f} ({r['quantized_fp16_bytes'] / mb:.1f})"
                if r["quantized_fp16_bytes"]
                else "—"
            ),
            "quantized / fp16": r["quantized_ratio"] if r["quantized_fp16_bytes"] else None,
        }
        for r in smollm2
    ]
    cls_rows = [
        {
            "method": r["method"],
            "accuracy": r["accuracy"],
            "macro-F1": r["macro_f1"],
            "held-out loss": r["loss"],
            "model MB": r["model_bytes"] / mb,
            "quantized / fp16": r["quantized_ratio"] if r["quantized_fp16_bytes"] else None,
        }
        for r in minilm
    ]
    lm, cls = meta["smollm2"], meta["minilm"]
    formats = {
        "accuracy": ".3f",
        "macro-F1": ".3f",
        "held-out loss": ".3f",
        "model MB": ".1f",
        "quantized / fp16": ".3f",
    }
    return "\n".join(
        [
            "# LoftQ fine-tuning: held-out quality after a short LoRA run",
            "",
            f"SmolLM2-135M-Instruct on Pride and Prejudice (last 10 % of chapters held out): "
            f"{lm['steps']} steps, batch {lm['batch_size']} × {lm['block']} tokens, lr "
            f"{lm['lr']} (linear decay, {lm['warmup']} warmup), seed 0, LoRA r=16 alpha=16 on "
            f"every attention/MLP linear layer. Held-out perplexity: sliding window of "
            f"{lm['window']} tokens, stride {lm['stride']}, first {lm['tokens']} held-out "
            "tokens. Mixed: first layers at NF4, the rest NF2, 3 bits on average. "
            "SmolLM2's weights come from a Q4_1 GGUF file, so they already lie on a 4-bit grid "
            "(per block of 32): the 'full-precision' model is that dequantized grid, and NF4 "
            "re-quantizes it onto another one.",
            "",
            markdown_table(
                lm_rows,
                floatfmt={
                    "held-out ppl at init": ".4g",
                    "held-out ppl fine-tuned": ".4g",
                    "model MB": ".1f",
                    "quantized / fp16": ".3f",
                },
            ),
            "",
            f"all-MiniLM-L6-v2 + new classification head on tweets (3 sentiments): "
            f"{cls['steps']} steps, batch {cls['batch_size']}, texts truncated to "
            f"{cls['max_length']} tokens, lr {cls['lr']}, {cls['train']} training rows, "
            f"{cls['held']} held-out rows.",
            "",
            markdown_table(cls_rows, floatfmt=formats),
            "",
            "Model MB: parameters + buffers of the model being fine-tuned (LoRA factors, "
            "embeddings and head included). Quantized layers: packed codes + fp32 block "
            "scales (block 64) against their float16 size; NF2 is 2/16 + 32/64/16 = 0.156 of "
            "fp16, NF4 0.281.",
            "",
            f"{meta['threads']} torch thread(s), {meta['machine']}, shared CPU, torch "
            f"{meta['torch']}; total {meta['seconds'] / 60:.1f} min.",
            "",
        ]
    )


def rerender(path: Path) -> None:
    """Rewrite the markdown next to a results JSON (after a change of presentation)."""
    saved = json.loads(path.read_text())
    path.with_suffix(".md").write_text(markdown(saved["smollm2"], saved["minilm"], saved["meta"]))


def sweep(args: argparse.Namespace) -> None:
    """MiniLM at NF2: QLoRA vs LoftQ (T = 5) over learning rates and step counts."""
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="loftq-sweep-") as tmp:
        root = Path(tmp)
        for lr, steps in [(5e-4, 40), (2e-3, 40), (5e-3, 40), (2e-3, 120)]:
            config = FinetuneConfig(
                task="classification",
                steps=steps,
                batch_size=16,
                learning_rate=lr,
                max_length=64,
                device="cpu",
            )
            for method in ("QLoRA NF2", "LoftQ NF2 T=5"):
                record = run_method(
                    model_path("minilm"),
                    method,
                    "classification",
                    DataSpec("tweets", max_examples=512),
                    config,
                    root / f"{lr}-{steps}",
                    None,
                )
                rows.append({"lr": lr, "steps": steps, **record})
    table = markdown_table(
        [
            {
                "lr": r["lr"],
                "steps": r["steps"],
                "method": r["method"],
                "accuracy": r["accuracy"],
                "macro-F1": r["macro_f1"],
                "held-out loss": r["loss"],
                "last train loss": r["train_loss_last"],
            }
            for r in rows
        ],
        floatfmt={"lr": "g", "accuracy": ".3f", "macro-F1": ".3f", "held-out loss": ".3f"},
    )
    text = (
        "# LoftQ vs QLoRA at NF2 on MiniLM / tweets: learning rate and steps\n\n"
        "Rank 16, batch 16, texts truncated to 64 tokens, 512 training and 512 held-out rows, "
        "seed 0; otherwise as in the fine-tuning table.\n\n" + table + "\n"
    )
    with atomic_output(args.out / "loftq_finetune_sweep.json", overwrite=True) as path:
        path.write_text(json.dumps(rows, indent=2) + "\n")
    with atomic_output(args.out / "loftq_finetune_sweep.md", overwrite=True) as path:
        path.write_text(text)
    print(text)


def smollm2_setup(
    *, quick: bool, steps: int = 8, lr: float = 1e-3
) -> tuple[dict, FinetuneConfig, dict]:
    """The SmolLM2 experiment's settings: (as a dict, the fine-tuning config, the perplexity
    settings ``tokens``, ``window``, ``stride``)."""
    lm = {
        "steps": 2 if quick else steps,
        "batch_size": 4,
        "block": 128,
        "lr": lr,
        "warmup": 0 if quick else 1,
        "window": 256,
        "stride": 128,
        "tokens": 384 if quick else 768,
    }
    config = FinetuneConfig(
        task="causal-lm",
        steps=lm["steps"],
        batch_size=lm["batch_size"],
        learning_rate=lm["lr"],
        warmup_steps=lm["warmup"],
        max_length=lm["block"],
        device="cpu",
    )
    return lm, config, {key: lm[key] for key in ("tokens", "window", "stride")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 methods, a few steps")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    parser.add_argument("--lr", type=float, default=1e-3, help="SmolLM2 learning rate")
    parser.add_argument("--steps", type=int, default=8, help="SmolLM2 optimizer steps")
    parser.add_argument(
        "--sweep", action="store_true", help="only the MiniLM NF2 learning-rate/steps sweep"
    )
    args = parser.parse_args(argv)
    if args.sweep:
        sweep(args)
        return
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    lm, lm_config, ppl = smollm2_setup(quick=args.quick, steps=args.steps, lr=args.lr)
    cls = {
        "steps": 3 if args.quick else 40,
        "batch_size": 16,
        "max_length": 64,
        "lr": 2e-3,
        "train": 64 if args.quick else 512,
        "held": 64 if args.quick else 512,
    }
    cls_config = FinetuneConfig(
        task="classification",
        steps=cls["steps"],
        batch_size=cls["batch_size"],
        learning_rate=cls["lr"],
        max_length=cls["max_length"],
        device="cpu",
    )
    with tempfile.TemporaryDirectory(prefix="loftq-finetune-") as tmp:
        root = Path(tmp)
        minilm = [
            run_method(
                model_path("minilm"),
                method,
                "classification",
                DataSpec("tweets", max_examples=cls["train"]),
                cls_config,
                root,
                None,
            )
            for method in (QUICK_METHODS if args.quick else MINILM_METHODS)
        ]
        smollm2 = [
            run_method(
                model_path("smollm2"),
                method,
                "causal-lm",
                DataSpec("pride_and_prejudice"),
                lm_config,
                root,
                ppl,
            )
            for method in (QUICK_METHODS if args.quick else SMOLLM2_METHODS)
        ]
    meta = {
        "smollm2": lm,
        "minilm": cls,
        "threads": args.threads,
        "machine": f"{platform.machine()} {platform.system()}",
        "torch": torch.__version__,
        "quick": args.quick,
        "seconds": time.perf_counter() - start,
    }
    name = "loftq_finetune_quick" if args.quick else "loftq_finetune"
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_output(args.out / f"{name}.json", overwrite=True) as path:
        path.write_text(
            json.dumps({"meta": meta, "smollm2": smollm2, "minilm": minilm}, indent=2) + "\n"
        )
    with atomic_output(args.out / f"{name}.md", overwrite=True) as path:
        path.write_text(markdown(smollm2, minilm, meta))
    print(f"wrote {args.out / name}.json and .md")


if __name__ == "__main__":
    main()
