"""Peak memory and step time of LoRA fine-tuning: leanfit's packed backbone against PEFT LoRA on
the float32 model and bitsandbytes NF4 QLoRA, in the same run.

Every setting runs in a fresh process (``--worker``), so its peak resident set (the kernel's
``ru_maxrss`` of the child, process start and imports included) is what a user of that tool
would see; settings are interleaved and repeated, and the median over repeats is reported.
On CUDA (``--device cuda``) the peak is ``torch.cuda.max_memory_allocated``.

Each worker loads its model, makes ``steps`` LoRA steps (rank 16, alpha 16, AdamW, the seven
projections of every block, batch 1, random tokens: memory and time do not depend on which
tokens) and reports the median wall time of the steps after the first. Tools:

- ``peft`` — ``AutoModelForCausalLM.from_pretrained`` (float32 safetensors) +
  ``get_peft_model``; ``+ckpt``: ``gradient_checkpointing`` (non-reentrant);
- ``bnb-nf4`` — the same with ``BitsAndBytesConfig(load_in_4bit, nf4)`` (QLoRA);
- ``leanfit-peft`` — ``leanfit.checkpoints.load(OUT, is_trainable=True)`` and the plain
  transformers loss (``model(input_ids, labels=...)``), no checkpointing: the path of a user
  who brings their own loop;
- ``leanfit`` — :func:`leanfit.finetune.training.finetune` (what ``leanfit finetune`` runs) on
  ``build_model(OUT, init="loftq")``: gradient checkpointing, the chunked loss and large
  blocks mapped on their own (:func:`leanfit.heap.map_large_blocks`, as the command sets
  it), float32, or ``bf16`` (``dtype`` and ``frozen_dtype`` bfloat16);
- ``leanfit-fp`` — the same loop with ``init="full-precision"`` (PEFT LoRA on the original
  float32 weights): the in-tool anchor.

Models: SmolLM2-135M-Instruct (the packaged GGUF, converted once to float32 safetensors), and
llamas with random weights built from a config and written as float32 safetensors: about
0.55B and 1.1B parameters (TinyLlama's shape). Each is quantized once by ``leanfit quantize``
(NF, rank 16, T = 1) and cached in ``benchmarks/.cache``.

Usage::

    python benchmarks/finetune_memory.py            # every setting, 3 repeats (1B: 2)
    python benchmarks/finetune_memory.py --quick    # SmolLM2 only, 1 repeat
    python benchmarks/finetune_memory.py --device cuda

Writes ``benchmarks/results/finetune_memory.json`` and ``finetune_memory.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
CACHE = Path(__file__).parent / ".cache"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK = 16
MB = 1e6
LARGE_REPEATS = 2  # the 1.1B settings take minutes each

LLAMAS = {
    # hidden, intermediate, layers, heads, kv heads (vocabulary 32,000, untied head)
    "llama-0.55b": (1536, 4096, 18, 24, 4),
    "llama-1.1b": (2048, 5632, 22, 32, 4),
}


# ------------------------------------------------------------------ models, made once


def float_checkpoint(model: str) -> Path:
    """The float32 safetensors directory of ``model`` (made on first use)."""
    folder = CACHE / model / "float32"
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if model == "smollm2":
        from leanfit.pretrained import model_path

        path = model_path("smollm2")
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
        built = AutoModelForCausalLM.from_config(loaded.config)
        built.load_state_dict(loaded.state_dict())
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        tokenizer.save_pretrained(folder.with_name(folder.name + ".tmp"))
    else:
        hidden, inter, layers, heads, kv = LLAMAS[model]
        config = LlamaConfig(
            vocab_size=32000,
            hidden_size=hidden,
            intermediate_size=inter,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv,
            max_position_embeddings=2048,
            tie_word_embeddings=False,
        )
        built = LlamaForCausalLM(config)
    if hasattr(built.config, "quantization_config"):
        del built.config.quantization_config
    tmp = folder.with_name(folder.name + ".tmp")
    built.save_pretrained(tmp)
    os.replace(tmp, folder)
    return folder


def quantized(model: str, bits: int) -> Path:
    """``leanfit quantize`` of the float checkpoint (made on first use)."""
    out = CACHE / model / f"nf{bits}"
    if not out.is_dir():
        source = float_checkpoint(model)
        command = [sys.executable, "-m", "leanfit.cli", "quantize", str(source), "--out", str(out)]
        options = ["--bits", str(bits), "--rank", str(RANK), "--iters", "1", "--quiet"]
        subprocess.run([*command, *options], check=True)
    return out


# ------------------------------------------------------------------ one setting, in a worker


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / MB
    return float("nan")


def _peft_model(source: Path, tool: str, checkpointing: bool):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs = {"dtype": torch.float32}
    if tool == "bnb-nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
        )
        kwargs["device_map"] = "cpu" if not torch.cuda.is_available() else "cuda"
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = LoraConfig(r=RANK, lora_alpha=RANK, target_modules=LORA_TARGETS, lora_dropout=0.0)
    return get_peft_model(model, lora)


def _own_loop(model, tokens: int, steps: int, device) -> list[float]:
    """``steps`` AdamW steps of the plain transformers loss; wall seconds of each."""
    import torch

    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    vocab = model.get_base_model().config.vocab_size
    generator = torch.Generator().manual_seed(0)
    seconds = []
    for _ in range(steps):
        ids = torch.randint(0, vocab, (1, tokens), generator=generator).to(device)
        start = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return seconds


def worker(setting: dict, tokens: int, steps: int, device_name: str) -> dict:
    """Run one setting in this process; the figures it measures itself."""
    import peft  # noqa: F401
    import torch
    import transformers  # noqa: F401

    import leanfit.checkpoints  # noqa: F401

    runtime = _status_mb("VmRSS")  # Python, torch, transformers, PEFT and leanfit imported
    device = torch.device(device_name)
    tool, checkpointing = setting["tool"], "ckpt" in setting["options"]
    if tool in ("peft", "bnb-nf4"):
        model = _peft_model(float_checkpoint(setting["model"]), tool, checkpointing)
    elif tool == "leanfit-peft":
        from leanfit.checkpoints import load

        model = load(quantized(setting["model"], setting["bits"]), is_trainable=True)
    loaded = _status_mb("VmRSS")
    if tool in ("leanfit", "leanfit-fp"):
        from leanfit.heap import map_large_blocks

        map_large_blocks()  # as `leanfit finetune` does when it checkpoints
        model, seconds = _run_finetune(setting, tokens, steps, device)
        loaded = float("nan")  # loading and training happen in one call
    else:
        seconds = _own_loop(model, tokens, steps, device)
    tensors = [*model.parameters(), *model.buffers()]
    trainable = [p for p in model.parameters() if p.requires_grad]
    record = {
        "runtime_mb": round(runtime, 1),
        "after_load_mb": round(loaded, 1),
        "model_tensors_mb": round(sum(t.numel() * t.element_size() for t in tensors) / MB, 1),
        "optimizer_mb": round(2 * sum(p.numel() * 4 for p in trainable) / MB, 1),
        "step_seconds": round(statistics.median(seconds[1:] or seconds), 3),
    }
    record["peak_rss_mb"] = round(_status_mb("VmHWM"), 1)  # the kernel's peak of this process
    if device.type == "cuda":
        record["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / MB, 1)
    return record


def _run_finetune(setting: dict, tokens: int, steps: int, device):
    import tempfile

    import torch

    from leanfit.finetune.runs import build_model
    from leanfit.finetune.training import FinetuneConfig, finetune
    from leanfit.io import read_json

    bf16 = "bf16" in setting["options"]
    init = "full-precision" if setting["tool"] == "leanfit-fp" else "loftq"
    directory = quantized(setting["model"], setting["bits"] or 2)
    base = float_checkpoint(setting["model"]) if init == "full-precision" else None
    model = build_model(directory, "causal-lm", init=init, base=base)
    vocab = model.get_base_model().config.vocab_size
    blocks = torch.randint(0, vocab, (steps, tokens), generator=torch.Generator().manual_seed(0))
    config = FinetuneConfig(
        steps=steps,
        batch_size=1,
        max_length=tokens,
        learning_rate=1e-4,
        device=device.type,
        dtype="bfloat16" if bf16 else "float32",
        frozen_dtype="bfloat16" if bf16 else "float32",
    )
    with tempfile.TemporaryDirectory() as tmp:
        result = finetune(model, blocks, None, config, Path(tmp) / "run", progress=False)
        seconds = read_json(result.out_dir / "metrics.json")["step_seconds"]
    return model, seconds


# ------------------------------------------------------------------ the driver


def settings(quick: bool) -> list[dict]:
    """(model, tokens, tool, bits, options) of every setting, in the order they run."""
    rows = []

    def add(model, tokens, tool, bits=None, options=()):
        rows.append(
            {"model": model, "tokens": tokens, "tool": tool, "bits": bits, "options": list(options)}
        )

    for tokens in (64, 512):
        add("smollm2", tokens, "peft")
        add("smollm2", tokens, "peft", options=["ckpt"])
        add("smollm2", tokens, "bnb-nf4", 4, ["ckpt"])
        for bits in (2, 4):
            add("smollm2", tokens, "leanfit-peft", bits)
            add("smollm2", tokens, "leanfit", bits, ["ckpt", "chunked"])
        add("smollm2", tokens, "leanfit", 2, ["ckpt", "chunked", "bf16"])
        add("smollm2", tokens, "leanfit-fp", None, ["ckpt", "chunked"])
    if quick:
        return [r for r in rows if r["tokens"] == 64]
    add("llama-0.55b", 64, "peft")
    add("llama-0.55b", 64, "leanfit-peft", 2)
    add("llama-1.1b", 256, "peft")
    add("llama-1.1b", 256, "peft", options=["ckpt"])
    add("llama-1.1b", 256, "bnb-nf4", 4, ["ckpt"])
    add("llama-1.1b", 256, "leanfit", 2, ["ckpt", "chunked"])
    add("llama-1.1b", 256, "leanfit", 2, ["ckpt", "chunked", "bf16"])
    add("llama-1.1b", 256, "leanfit-fp", None, ["ckpt", "chunked"])
    return rows


def label(setting: dict) -> str:
    bits = f" {setting['bits']}-bit" if setting["bits"] else ""
    options = f" +{'+'.join(setting['options'])}" if setting["options"] else ""
    return f"{setting['tool']}{bits}{options}"


def run_setting(setting: dict, steps: int, device: str) -> dict:
    """One fresh process and the figures it measured (its peak RSS is the kernel's ``VmHWM``
    of that process: a new process image starts its own count, unlike ``ru_maxrss``, which
    a forked child inherits from its parent)."""
    command = [sys.executable, __file__, "--worker", json.dumps(setting), "--steps", str(steps)]
    run = subprocess.run([*command, "--device", device], stdout=subprocess.PIPE, text=True)
    if run.returncode:
        raise RuntimeError(f"{label(setting)} failed with exit code {run.returncode}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def median_records(runs: list[dict]) -> dict:
    keys = runs[0].keys()
    return {key: round(statistics.median(run[key] for run in runs), 3) for key in keys}


def peak_key(device: str) -> str:
    return "peak_cuda_mb" if device == "cuda" else "peak_rss_mb"


def best(rows: list[dict], key: str) -> dict:
    return min(rows, key=lambda r: r[key])


def comparisons(records: list[dict], device: str) -> list[dict]:
    """Per model and length, leanfit at 2 bits against the float32 LoRA step: the best
    (lowest-peak) setting of each side, against PEFT LoRA (the tool a user would pick) and
    against the in-tool anchor ``leanfit-fp`` (the same loop on the float32 weights); the
    plain PEFT paths against each other; step times against the fastest float32 step."""
    key = peak_key(device)
    out = []
    for model, tokens in dict.fromkeys((r["model"], r["tokens"]) for r in records):
        rows = [r for r in records if (r["model"], r["tokens"]) == (model, tokens)]
        ours = [r for r in rows if r["tool"] in ("leanfit", "leanfit-peft") and r["bits"] == 2]
        peft = [r for r in rows if r["tool"] == "peft"]
        if not ours or not peft:
            continue
        anchor = [r for r in rows if r["tool"] == "leanfit-fp"]
        lean = best(ours, key)
        plain = next((r for r in ours if r["tool"] == "leanfit-peft"), None)
        plain_peft = next((r for r in peft if not r["options"]), None)
        fastest = min(peft + anchor, key=lambda r: r["step_seconds"])
        out.append(
            {
                "model": model,
                "tokens": tokens,
                "leanfit": lean,
                "peft": best(peft, key),
                "anchor": best(anchor, key) if anchor else None,
                "plain": (plain, plain_peft) if plain and plain_peft else None,
                "fastest": fastest,
                "key": key,
            }
        )
    return out


#: The issue's targets: (model, tokens, which comparison, at most this ratio).
RATIO_TARGETS = [
    ("smollm2", 64, "plain", 0.75),
    ("llama-0.55b", 64, "plain", 0.45),
    ("smollm2", 512, "best", 0.45),
    ("llama-1.1b", 256, "best", 0.30),
]


def verdicts(records: list[dict], device: str) -> list[str]:
    """One line per comparison, then each target with its measured ratios."""
    lines = []
    found = {(c["model"], c["tokens"]): c for c in comparisons(records, device)}
    for c in found.values():
        key, lean = c["key"], c["leanfit"]
        text = (
            f"- {c['model']}, 1 × {c['tokens']}: best leanfit 2-bit ({label(lean)}) "
            f"{lean[key]:.0f} MB = **{lean[key] / c['peft'][key]:.2f}×** PEFT LoRA's best "
            f"({label(c['peft'])}, {c['peft'][key]:.0f} MB)"
        )
        if c["anchor"]:
            anchor = c["anchor"][key]
            text += f", {lean[key] / anchor:.2f}× the in-tool anchor ({anchor:.0f} MB)"
        if c["plain"]:
            mine, theirs = c["plain"]
            text += (
                f"; plain PEFT path {mine[key] / theirs[key]:.2f}× "
                f"({mine[key]:.0f} vs {theirs[key]:.0f} MB)"
            )
        seconds = lean["step_seconds"]
        text += (
            f"; step {seconds:.2f} s = {seconds / c['fastest']['step_seconds']:.2f}× "
            f"the fastest float32 LoRA step ({label(c['fastest'])})."
        )
        lines.append(text)
    lines += ["", "Targets (at most this ratio to the float32 LoRA peak):", ""]
    for model, tokens, kind, limit in RATIO_TARGETS:
        c = found.get((model, tokens))
        if c is None:
            continue
        key = c["key"]
        if kind == "plain" and c["plain"]:
            mine, theirs = c["plain"]
            ratio, what = mine[key] / theirs[key], "plain PEFT path"
        else:
            lean = c["leanfit"]
            ratio, what = lean[key] / c["peft"][key], "best settings, against PEFT LoRA"
            if c["anchor"]:
                ratio = max(ratio, lean[key] / c["anchor"][key])
                what = "best settings, against PEFT LoRA and the in-tool anchor"
        verdict = "met" if ratio <= limit else "**missed**"
        line = f"- {model} 1 × {tokens} ({what}): ≤ {limit} → {ratio:.2f}, {verdict}"
        if ratio > limit:
            line += "; " + where_it_goes(mine if kind == "plain" else c["leanfit"], key)
        lines.append(line + ".")
    return lines


def where_it_goes(record: dict, key: str) -> str:
    """The peak of ``record`` split into runtime, tensors, optimizer and the rest."""
    peak = record[key]
    parts = {
        "runtime (Python, torch, transformers, PEFT)": record["runtime_mb"],
        "model tensors": record["model_tensors_mb"],
        "optimizer": record["optimizer_mb"],
    }
    parts["activations, logits chunks and allocator"] = peak - sum(parts.values())
    shares = ", ".join(
        f"{name} {mb:.0f} MB ({100 * mb / peak:.0f} %)" for name, mb in parts.items()
    )
    return f"its {peak:.0f} MB peak: {shares}"


def markdown(records: list[dict], meta: dict) -> str:
    key = peak_key(meta["device"])
    head = (
        "# Fine-tuning memory: leanfit's packed backbone against float32 LoRA and NF4 QLoRA\n\n"
        f"One LoRA step (rank {RANK}, the seven projections, AdamW, batch 1) per setting, each "
        "setting in a fresh process; peak memory of the whole process "
        f"({'max_memory_allocated' if meta['device'] == 'cuda' else 'peak RSS from the kernel'}"
        ", imports and loading included); step time: median of the steps after the first. "
        f"Median of {meta['repeats']} interleaved repeats ({LARGE_REPEATS} for the 1.1B llama); "
        f"{meta['machine']}. `peft`: PEFT LoRA on the float32 model; `bnb-nf4`: bitsandbytes "
        "QLoRA; `leanfit-peft`: `leanfit.checkpoints.load` and the plain transformers loss in "
        "the user's own loop; `leanfit` / `leanfit-fp` (the same loop on the float32 weights, the "
        "in-tool anchor): the loop of `leanfit finetune`, with large blocks of memory mapped on "
        "their own as the command sets it. `ckpt`: gradient "
        "checkpointing, `chunked`: loss over the vocabulary a chunk of tokens at a time, "
        "`bf16`: bfloat16 compute and frozen tensors stored in bfloat16. Where the memory "
        "goes: runtime = resident set after importing torch, transformers and PEFT; tensors = "
        "parameters and buffers of the model as loaded; optimizer = AdamW's two float32 moments; "
        "the rest of the peak is activations, logits and what the allocator keeps.\n\n"
    )
    table = (
        "| model | tokens | setting | peak MB | runtime MB | tensors MB | optimizer MB | "
        "rest MB | s/step |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    for r in records:
        rest = r[key] - r["runtime_mb"] - r["model_tensors_mb"] - r["optimizer_mb"]
        table += (
            f"| {r['model']} | {r['tokens']} | {label(r)} | {r[key]:.0f} | {r['runtime_mb']:.0f} "
            f"| {r['model_tensors_mb']:.0f} | {r['optimizer_mb']:.0f} | {rest:.0f} "
            f"| {r['step_seconds']:.2f} |\n"
        )
    return head + table + "\n" + "\n".join(verdicts(records, meta["device"])) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="SmolLM2 at 64 tokens, 1 repeat")
    parser.add_argument("--repeats", type=int, help="repeats per setting (3; 1B llama: 2)")
    parser.add_argument("--steps", type=int, default=3, help="LoRA steps per process (3)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--prepare", help=argparse.SUPPRESS)
    parser.add_argument(
        "--render", action="store_true", help="only rewrite the .md from the saved .json"
    )
    args = parser.parse_args()
    from _common import machine, write_results  # the driver's only: workers measure imports

    if args.render:
        name = "finetune_memory_quick" if args.quick else "finetune_memory"
        saved = json.loads((RESULTS / f"{name}.json").read_text())
        text = markdown(saved["records"], saved["meta"])
        print(text)
        write_results(RESULTS, "finetune_memory", quick=args.quick, markdown=text, **saved)
        return
    if args.worker:
        setting = json.loads(args.worker)
        print(json.dumps(worker(setting, setting["tokens"], args.steps, args.device)))
        return
    chosen = settings(args.quick)
    if args.prepare:
        float_checkpoint(args.prepare)
        mine = [s for s in chosen if s["model"] == args.prepare and s["tool"] != "bnb-nf4"]
        for bits in sorted({s["bits"] or 2 for s in mine}):
            quantized(args.prepare, bits)
        return
    for model in dict.fromkeys(s["model"] for s in chosen):  # made once, outside the measures
        prepare = [sys.executable, __file__, "--prepare", model]
        subprocess.run([*prepare, *(["--quick"] if args.quick else [])], check=True)
    repeats = args.repeats or (1 if args.quick else 3)
    runs: dict[int, list[dict]] = {i: [] for i in range(len(chosen))}
    for repeat in range(repeats):
        for i, setting in enumerate(chosen):
            if setting["model"] == "llama-1.1b" and repeat >= LARGE_REPEATS:
                continue
            record = run_setting(setting, args.steps, args.device)
            runs[i].append(record)
            print(
                f"[{repeat + 1}/{repeats}] {setting['model']} {setting['tokens']} "
                f"{label(setting)}: {record}",
                flush=True,
            )
    records = [
        {**s, **median_records(runs[i]), "repeats": len(runs[i])} for i, s in enumerate(chosen)
    ]
    meta = {
        "device": args.device,
        "repeats": repeats,
        "steps": args.steps,
        "machine": machine(),
    }
    text = markdown(records, meta)
    print(text)
    write_results(
        RESULTS, "finetune_memory", quick=args.quick, meta=meta, records=records, markdown=text
    )


if __name__ == "__main__":
    main()
