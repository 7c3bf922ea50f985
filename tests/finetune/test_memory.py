"""Fine-tuning in the memory of the packed model: no float weight kept for backward, loading
without float copies, gradient checkpointing, a loss that never holds every logit, bfloat16
compute, peak memory recorded."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import Gemma2Config, Gemma2ForCausalLM, Trainer, TrainingArguments

import leanfit.finetune.training as training
from leanfit.checkpoints import load
from leanfit.exceptions import BadInputError
from leanfit.finetune import losses
from leanfit.finetune.losses import causal_lm_loss, split_causal_lm, unsplit
from leanfit.finetune.training import FinetuneConfig, finetune
from leanfit.pipeline import LoftQConfig, quantize_checkpoint
from leanfit.pretrained import model_path
from leanfit.quantization import QuantLinear, QuantSpec
from leanfit.quantization.quantizers import QuantizedTensor, Scratch, quantize
from tests.shared import TINY, tiny_lora_run


def saved_shapes(step) -> list[tuple[int, ...]]:
    """Shapes of the tensors autograd saves for backward while ``step()`` runs forward."""
    shapes = []

    def pack(tensor):
        shapes.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        step()
    return shapes


def lora_gradients(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


# ------------------------------------------------------------------ the packed matmul


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_packed_layer_gradient_is_that_of_the_dense_weight(bits):
    torch.manual_seed(0)
    layer = QuantLinear.from_linear(torch.nn.Linear(96, 40), QuantSpec(bits=bits))
    x = torch.randn(3, 7, 96, requires_grad=True)
    grad_y = torch.randn(3, 7, 40)
    layer(x).backward(grad_y)
    dense = x.detach().clone().requires_grad_()
    F.linear(dense, layer.quantized.dequantize(), layer.bias).backward(grad_y)
    # The same products of the same float32 numbers (dequantized once in forward, again in
    # backward): equal to float32 rounding of a 40-term sum.
    torch.testing.assert_close(x.grad, dense.grad, rtol=1e-5, atol=1e-6)
    assert not any(b.requires_grad or b.grad is not None for b in layer.buffers())
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, layer.quantized.dequantize(), layer.bias))


def test_freed_memory_is_released_once_at_the_end_of_each_backward_pass(monkeypatch):
    from torch.utils.checkpoint import checkpoint

    import leanfit.quantization.nn as quantized_nn

    released = []
    monkeypatch.setattr(quantized_nn, "release_freed_memory", lambda: released.append(1))
    torch.manual_seed(0)
    first = QuantLinear.from_linear(torch.nn.Linear(64, 32), QuantSpec(bits=2))
    second = QuantLinear.from_linear(torch.nn.Linear(32, 16), QuantSpec(bits=2))
    x = torch.randn(4, 64, requires_grad=True)
    for _ in range(3):  # two packed layers in each pass, one release per pass
        second(first(x)).sum().backward()
    assert len(released) == 3
    for _ in range(2):  # recomputed forwards inside the pass ask again: still one release
        checkpoint(lambda t: second(first(t)), x, use_reentrant=False).sum().backward()
    assert len(released) == 5
    with torch.no_grad():
        second(first(x))
    assert len(released) == 5  # no backward, nothing queued


def test_backward_keeps_no_tensor_of_a_target_weights_shape(tiny_causal_loftq):
    model = load(tiny_causal_loftq, is_trainable=True).train()
    targets = {tuple(m.quantized.shape) for m in model.modules() if isinstance(m, QuantLinear)}
    ids = torch.randint(0, 1000, (1, 7), generator=torch.Generator().manual_seed(0))
    shapes = saved_shapes(lambda: model(input_ids=ids, labels=ids).loss.backward())
    assert shapes and not targets & set(shapes)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    # The hook does see weights: a dense layer keeps its (out, in) weight for backward.
    layer = next(m for m in model.modules() if isinstance(m, QuantLinear))
    weight = layer.quantized.dequantize().requires_grad_()
    x = torch.randn(7, layer.in_features, requires_grad=True)
    assert tuple(weight.shape) in saved_shapes(lambda: F.linear(x, weight).sum().backward())


def test_autocast_dequantizes_straight_to_bfloat16(monkeypatch):
    torch.manual_seed(0)
    layer = QuantLinear.from_linear(torch.nn.Linear(64, 32), QuantSpec(bits=2))
    asked = []
    real = QuantizedTensor.dequantize
    monkeypatch.setattr(
        QuantizedTensor,
        "dequantize",
        lambda self, dtype, *a, **k: asked.append(dtype) or real(self, dtype, *a, **k),
    )
    x = torch.randn(5, 64, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16 and asked == [torch.bfloat16, torch.bfloat16]
    assert x.grad.dtype == torch.float32  # the input's own dtype comes back


@pytest.mark.parametrize(
    ("bits", "method"),
    [(2, "nf"), (3, "nf"), (4, "nf"), (2, "uniform"), (3, "uniform"), (8, "uniform")],
)
def test_dequantizing_into_a_scratch_gives_the_same_values(bits, method):
    scratch = Scratch()
    for shape, block in (((40, 96), 64), ((7, 9), 16), ((3, 50), 64)):  # partial last blocks too
        q = quantize(
            torch.randn(shape, generator=torch.Generator().manual_seed(bits)),
            QuantSpec(bits, method, block),
        )
        for dtype in (torch.float32, torch.bfloat16):
            expected = q.dequantize(dtype)
            got = q.dequantize(dtype, scratch=scratch)
            # The same lookups and products; only where they are written differs.
            assert got.dtype == dtype and torch.equal(got, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_packed_lora_layer_runs_forward_and_backward_on_cuda():
    torch.manual_seed(0)
    layer = QuantLinear.from_linear(torch.nn.Linear(128, 64), QuantSpec(bits=2))
    model = get_peft_model(torch.nn.Sequential(layer), LoraConfig(r=4, target_modules=["0"]))
    x = torch.randn(4, 128)
    model(x).square().sum().backward()
    cpu = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    model.cuda()(x.cuda()).square().sum().backward()
    for name, grad in cpu.items():
        # The same float32 products, on another device's kernels.
        torch.testing.assert_close(model.get_parameter(name).grad.cpu(), grad, rtol=1e-4, atol=1e-5)
    assert torch.cuda.max_memory_allocated() > 0


# ------------------------------------------------------------------ loading


LOAD_PEAK = """
import sys
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
import peft, torch, transformers
import leanfit.checkpoints.hf
from leanfit.checkpoints import load
out = sys.argv[1]
baseline = status("VmRSS")
if sys.argv[2] == "load":
    model = load(out, is_trainable=True)
else:
    model = transformers.AutoModelForCausalLM.from_pretrained(out + "/backbone")
    model = peft.PeftModel.from_pretrained(model, out + "/adapter", is_trainable=True)
print(status("VmHWM") - baseline)
"""


@pytest.fixture(scope="module")
def smollm2_nf2(tmp_path_factory):
    """SmolLM2-135M at 2 bits, rank 16 (T = 1: the iterations do not change what is stored)."""
    out = tmp_path_factory.mktemp("smollm2") / "nf2"
    quantize_checkpoint(
        model_path("smollm2"), out, LoftQConfig(bits=2, rank=16, iters=1), progress=False
    )
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("how", ["load", "from_pretrained"])
def test_loading_smollm2_holds_no_float_copies(smollm2_nf2, how):
    stored = sum(p.stat().st_size for p in smollm2_nf2.rglob("*.safetensors"))
    code = textwrap.dedent(LOAD_PEAK)
    run = subprocess.run(
        [sys.executable, "-c", code, str(smollm2_nf2), how],
        capture_output=True,
        text=True,
        check=True,
    )
    grown = int(run.stdout.strip().splitlines()[-1])
    # A fresh process: the peak resident memory of loading over the runtime (Python, torch,
    # transformers, PEFT imported) is what the model holds — the stored packed codes, float
    # embeddings and LoRA factors — plus at most one layer's dequantized weight and what the
    # allocator keeps; 15 % of the stored bytes allows for the latter (measured: 0.85x).
    # Holding every target dequantized (float32, 105M weights) would add 420 MB.
    assert grown <= 1.15 * stored, (grown, stored)


# ------------------------------------------------------------------ gradient checkpointing


def test_transformers_gradient_checkpointing_gives_the_same_lora_gradients(tiny_causal_loftq):
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    gradients = {}
    for setting in (None, {"use_reentrant": False}, {"use_reentrant": True}):
        model = load(tiny_causal_loftq, is_trainable=True).train()
        if setting is not None:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=setting)
            assert model.is_gradient_checkpointing
        model(input_ids=ids, labels=ids).loss.backward()
        gradients[str(setting)] = lora_gradients(model)
    plain = gradients.pop("None")
    for grads in gradients.values():
        assert grads.keys() == plain.keys()
        for name, grad in grads.items():
            # The recomputed forward repeats the same float32 operations: identical.
            torch.testing.assert_close(grad, plain[name], rtol=0, atol=0)


def test_trainer_with_gradient_checkpointing_trains_the_same_adapter(tiny_causal_loftq, tmp_path):
    blocks = torch.randint(0, 1000, (8, 16), generator=torch.Generator().manual_seed(0))
    trained = {}
    for checkpointing in (False, True):
        model = load(tiny_causal_loftq, is_trainable=True)
        args = TrainingArguments(
            output_dir=str(tmp_path / str(checkpointing)),
            max_steps=2,
            per_device_train_batch_size=4,
            learning_rate=1e-2,
            gradient_checkpointing=checkpointing,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            seed=0,
            disable_tqdm=True,
        )
        data = [{"input_ids": b, "labels": b} for b in blocks]
        Trainer(model=model, args=args, train_dataset=data).train()
        assert model.is_gradient_checkpointing == checkpointing
        trained[checkpointing] = {
            n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad
        }
    for name, value in trained[True].items():
        # Same gradients, same AdamW updates.
        torch.testing.assert_close(value, trained[False][name], rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------ the chunked loss


def test_chunked_loss_and_gradients_equal_the_plain_ones(tiny_causal_loftq, monkeypatch):
    model = load(tiny_causal_loftq, is_trainable=True).train()
    ids = torch.randint(0, 1000, (2, 20), generator=torch.Generator().manual_seed(0))
    split = split_causal_lm(model, ids)
    assert split.is_split
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", 7 * split.vocab)  # 7 tokens per chunk
    rows = []
    head = model.get_base_model().get_output_embeddings()
    hook = head.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    chunked = causal_lm_loss(split, ids)
    chunked.backward()
    hook.remove()
    # 38 predicted tokens in 6 chunks of at most 7, each run twice (forward, recomputed).
    assert max(rows) <= 7 and sum(rows) == 2 * 38
    chunked_grads = lora_gradients(model)
    model.zero_grad()
    logits = model(input_ids=ids).logits
    plain = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    plain.backward()
    # Same per-token terms; summed in chunks (float64 total) rather than in one float32 mean.
    assert float(chunked) == pytest.approx(float(plain), rel=1e-6)
    for name, grad in lora_gradients(model).items():
        torch.testing.assert_close(chunked_grads[name], grad, rtol=1e-5, atol=1e-8)


def test_a_model_computing_after_its_head_is_not_split():
    torch.manual_seed(0)
    # Gemma 2 soft-caps its logits after the head: cap · tanh(logits / cap); a small cap makes
    # the difference plain on a random model.
    config = Gemma2Config(**TINY, head_dim=8, final_logit_softcapping=0.05)
    model = Gemma2ForCausalLM(config).eval()
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(0))
    split = split_causal_lm(model, ids)
    assert not split.is_split
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        plain = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        assert float(causal_lm_loss(split, ids)) == pytest.approx(float(plain), rel=1e-6)
    config.final_logit_softcapping = None
    assert split_causal_lm(Gemma2ForCausalLM(config), ids).is_split


# ------------------------------------------------------------------ finetune


def tiny_run(tiny_llama):
    return tiny_lora_run(tiny_llama(0))


def tiny_config(**overrides):
    settings = dict(steps=6, batch_size=4, learning_rate=1e-2, eval_every=3, device="cpu")
    return FinetuneConfig(max_length=16, **{**settings, **overrides})


def test_memory_work_leaves_the_loss_curve_unchanged(tiny_llama, tmp_path, monkeypatch):
    model, train, held_out = tiny_run(tiny_llama)
    lean = finetune(model, train, held_out, tiny_config(), tmp_path / "lean", progress=False)
    assert lean.memory["peak_rss_mb"] > 0
    saved = json.loads((tmp_path / "lean" / "metrics.json").read_text())
    assert saved["memory"] == lean.memory
    # The computation before: every activation kept, the logits of every token at once.
    monkeypatch.setattr(training, "split_causal_lm", lambda m, ids: unsplit(m, 64))
    model, train, held_out = tiny_run(tiny_llama)
    config = tiny_config(gradient_checkpointing=False)
    plain = finetune(model, train, held_out, config, tmp_path / "plain", progress=False)
    # Same operations, summed in another order: float32 rounding.
    torch.testing.assert_close(lean.losses, plain.losses, rtol=1e-6, atol=0)
    assert [e["loss"] for e in lean.evals] == pytest.approx(
        [e["loss"] for e in plain.evals], rel=1e-6
    )
    assert not model.get_base_model().is_activation_checkpointing  # the setting is restored


def test_bfloat16_storage_of_the_frozen_tensors(tiny_causal_loftq, tmp_path):
    model = load(tiny_causal_loftq, is_trainable=True)
    blocks = torch.randint(0, 1000, (10, 16), generator=torch.Generator().manual_seed(0))
    config = tiny_config(dtype="bfloat16", frozen_dtype="bfloat16", checkpoint_every=6)
    result = finetune(model, blocks[:8], blocks[8:], config, tmp_path / "run", progress=False)
    # Finite and near ln(30522) = 10.3, the near-uniform start of this random model: the
    # bfloat16 run trains at all; 20 leaves room for a bad start, not for inf or NaN.
    assert all(0 < loss < 20 for loss in result.losses)
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert {d for n, d in dtypes.items() if ".lora_" in n} == {torch.float32}
    assert {d for n, d in dtypes.items() if ".lora_" not in n} == {torch.bfloat16}
    for layer in (m for m in model.modules() if isinstance(m, QuantLinear)):
        assert layer.packed.dtype == torch.uint8 and layer.scales.dtype == torch.float32
    from safetensors.torch import load_file

    state = load_file(tmp_path / "run" / "checkpoints" / "step-6" / "optimizer.safetensors")
    assert {t.dtype for t in state.values() if t.ndim} == {torch.float32}  # AdamW moments


def test_frozen_bfloat16_needs_bfloat16_compute():
    with pytest.raises(BadInputError, match="frozen_dtype"):
        FinetuneConfig(frozen_dtype="bfloat16")
    with pytest.raises(BadInputError, match="gradient_checkpointing"):
        FinetuneConfig(gradient_checkpointing="yes")


def test_cli_options_and_the_printed_peak_memory(tiny_causal_loftq, tmp_path, capsys):
    from leanfit.cli import main

    args = [
        "finetune", str(tiny_causal_loftq), "--text", "pride_and_prejudice", "--max-examples",
        "4", "--max-length", "16", "--batch-size", "2", "--steps", "2", "--quiet",
    ]  # fmt: skip
    out = tmp_path / "run"
    lean = ["--dtype", "bfloat16", "--frozen-dtype", "bfloat16", "--no-gradient-checkpointing"]
    assert main([*args, *lean, "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    metrics = json.loads((out / "metrics.json").read_text())
    assert printed["peak_rss_mb"] == metrics["memory"]["peak_rss_mb"] > 0
    assert len(metrics["step_seconds"]) == 2
    config = json.loads((out / "config.json").read_text())
    assert (config["frozen_dtype"], config["gradient_checkpointing"]) == ("bfloat16", False)
    assert main([*args, "--frozen-dtype", "bfloat16", "--out", str(tmp_path / "other")]) == 2
    assert "--frozen-dtype" in capsys.readouterr().err


def test_a_backbone_without_tokenizer_is_named_not_a_traceback(tiny_causal_loftq, tmp_path, capsys):
    import shutil

    from leanfit.cli import main

    out = Path(shutil.copytree(tiny_causal_loftq, tmp_path / "copy"))
    for path in (out / "backbone").iterdir():
        if path.name.startswith(("tokenizer", "special_tokens", "vocab")):
            path.unlink()
    args = ["finetune", str(out), "--text", "pride_and_prejudice", "--out", str(tmp_path / "r")]
    assert main([*args, "--steps", "1", "--quiet"]) == 2
    assert "holds no tokenizer" in capsys.readouterr().err
