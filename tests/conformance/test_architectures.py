"""Conformance over transformers architectures: ``leanfit quantize`` with the default targets,
then ``load``, on a tiny random model of each architecture in :mod:`tests.conformance.models`.

For every architecture the loaded model must

- be of the class the checkpoint was saved as (``config.architectures[0]``), with every target
  a packed :class:`QuantLinear` under a LoRA layer;
- compute what ``Q + (alpha/r)·B·A`` computes in float32: the reference is the source model
  loaded by transformers with each target weight replaced by the dequantized ``Q`` plus
  ``(alpha/r)·B·A`` (:func:`merge_into`), checked itself against the errors the walker
  reported for each matrix;
- be closer to the source model's output with LoftQ's initialization than with QLoRA's
  (``Q = quantize(W)``, ``B = 0``) at the same bits.

Run it alone with ``python -m pytest tests/conformance``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import redirect_stdout
from dataclasses import dataclass
from io import StringIO
from pathlib import Path

import pytest
import torch
import transformers

from leanfit.checkpoints import load, merge_into
from leanfit.cli import main
from leanfit.exceptions import BadInputError
from leanfit.quantization import QuantLinear
from tests.conformance.models import (
    ARCHITECTURES,
    DECODER,
    SLOW_ARCHITECTURES,
    Architecture,
    example_inputs,
    save_checkpoint,
)
from tests.shared import _one_thread  # noqa: F401 (autouse: one torch thread)

TABLE_TYPES = {"llama", "mistral", "qwen2", "qwen3", "gpt2", "bert", "roberta", "deberta-v2"}
TABLE_TYPES |= {"mpnet", "bart", "t5"}
"""The model types with a target table (the others get all linear layers of the blocks)."""


@dataclass
class Quantized:
    """One architecture's checkpoint, quantized twice (LoftQ and QLoRA init), and loaded."""

    architecture: Architecture
    source: Path
    loftq: Path
    qlora: Path


RANK = "8"
"""LoRA rank: below the smallest target dimension (16, the key projection of 2 KV heads of 8)."""


def quantize(source: Path, out: Path, *options: str) -> str:
    """``leanfit quantize SOURCE --out OUT --rank 8 --quiet OPTIONS`` in this process (default
    targets, bits, iterations); its standard output."""
    printed = StringIO()
    with redirect_stdout(printed):
        code = main(
            ["quantize", str(source), "--out", str(out), "--rank", RANK, "--quiet", *options]
        )
    assert code == 0, printed.getvalue()
    return printed.getvalue()


PARAMS = [
    *(pytest.param(a, id=a.id) for a in ARCHITECTURES),
    *(pytest.param(a, id=a.id, marks=pytest.mark.slow) for a in SLOW_ARCHITECTURES),
]


@pytest.fixture(scope="module", params=PARAMS)
def quantized(request, tmp_path_factory) -> Quantized:
    architecture = request.param
    root = tmp_path_factory.mktemp(architecture.id)
    save_checkpoint(architecture, root / "source")
    quantize(root / "source", root / "loftq")
    quantize(root / "source", root / "qlora", "--init", "qlora")
    return Quantized(architecture, root / "source", root / "loftq", root / "qlora")


def reference_model(quantized: Quantized) -> tuple[torch.nn.Module, set[str]]:
    """The source checkpoint as transformers loads it, as the class it was saved as, and the
    stored tensors transformers left out (a pooler the head class lacks)."""
    cls = getattr(transformers, quantized.architecture.model_class)
    model, info = cls.from_pretrained(quantized.source, output_loading_info=True)
    return model.eval(), set(info["unexpected_keys"])


def outputs(model: torch.nn.Module, inputs: dict) -> dict[str, torch.Tensor]:
    """The model's first output (logits, or the base model's hidden states) and the last
    hidden state (of the decoder, for an encoder–decoder)."""
    with torch.no_grad():
        result = model(**inputs, output_hidden_states=True)
    hidden = getattr(result, "decoder_hidden_states", None) or result.hidden_states
    return {"first": result[0], "hidden": hidden[-1]}


def tied(model: torch.nn.Module) -> bool:
    """Whether the output embeddings are the input embeddings' parameter."""
    output = model.get_output_embeddings()
    return output is not None and output.weight is model.get_input_embeddings().weight


def targets_of(out: Path) -> dict:
    return json.loads((out / "backbone" / "quantization_config.json").read_text())["targets"]


def test_loads_as_the_class_it_was_saved_as_with_packed_targets(quantized):
    model = load(quantized.loftq)
    inner = model.get_base_model()
    assert type(inner).__name__ == quantized.architecture.model_class
    packed = [m for m in inner.modules() if isinstance(m, QuantLinear)]
    reference, unused = reference_model(quantized)
    assert tied(inner) == tied(reference)  # the output embeddings shared as transformers does
    kept = [t for t in targets_of(quantized.loftq).values() if t["name"] not in unused]
    assert len(packed) == len(kept) > 0
    assert not any(p.is_meta for p in model.parameters())
    if quantized.architecture.layout == "sentence-transformers":  # as its base model: all
        base = load(quantized.loftq, task="base").get_base_model()
        assert type(base).__name__ == type(inner.base_model).__name__
        packed = [m for m in base.modules() if isinstance(m, QuantLinear)]
        assert len(packed) == len(targets_of(quantized.loftq))  # the pooler too


def test_report_names_the_rule_that_chose_the_targets(quantized):
    report = json.loads((quantized.loftq / "loftq_report.json").read_text())
    model_type = quantized.architecture.build_config().model_type
    expected = (
        f"table for {model_type}"
        if model_type in TABLE_TYPES
        else "all linear layers of the blocks"
    )
    assert report["target_rule"] == expected


def test_output_is_q_plus_scaled_ba_in_float(quantized):
    reference, _ = reference_model(quantized)
    original = {name: p.detach().clone() for name, p in reference.named_parameters()}
    merge_into(reference, quantized.loftq)
    check_merged_weights(reference, original, quantized.loftq)
    inputs = example_inputs(quantized.architecture, reference.config)
    expected = outputs(reference, inputs)
    got = outputs(load(quantized.loftq).eval(), inputs)
    keys = ["hidden"] if quantized.architecture.layout != "transformers" else ["first", "hidden"]
    for key in keys:
        # Same float32 weights, computed as x·Qᵀ + s·(x·Aᵀ)·Bᵀ instead of x·(Q + s·B·A)ᵀ:
        # rounding of ~1e-7 relative per product, over two blocks of width 32, on outputs of
        # size ≲ 10 (normalized hidden states, logits of a random head): 1e-4 absolute.
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-4)


def check_merged_weights(merged: torch.nn.Module, original: dict, out: Path) -> None:
    """Each weight the reference changed now has, to the source weight there, a relative
    error the walker reported for a target, and as many changed as ``load`` packs: the right
    weights were replaced, with the stored Q and factors (a layer given another's matrix would
    be off by ~140%)."""
    report = json.loads((out / "loftq_report.json").read_text())
    errors = torch.tensor([m["error"] for m in report["matrices"]])
    changed = [
        float(torch.linalg.norm(p.detach() - original[name]) / torch.linalg.norm(original[name]))
        for name, p in merged.named_parameters()
        if not torch.equal(p.detach(), original[name])
    ]
    packed = sum(isinstance(m, QuantLinear) for m in load(out).modules())
    assert len(changed) == packed
    for error in changed:
        # The walker computed its error in float32 from the same W, Q and factors: they agree
        # to float32 rounding of a norm (1e-5 relative).
        assert float(((errors - error).abs() / errors).min()) < 1e-5


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float(torch.linalg.norm(got - expected) / torch.linalg.norm(expected))


def test_loftq_init_is_closer_to_the_source_than_qlora(quantized):
    reference, _ = reference_model(quantized)
    inputs = example_inputs(quantized.architecture, reference.config)
    expected = outputs(reference, inputs)["hidden"]
    loftq = relative_error(outputs(load(quantized.loftq).eval(), inputs)["hidden"], expected)
    qlora = relative_error(outputs(load(quantized.qlora).eval(), inputs)["hidden"], expected)
    assert loftq < qlora


def test_the_installed_command_quantizes_a_vision_transformer(tmp_path):
    """One run as a user runs it: the ``leanfit`` command in its own process."""
    (vit,) = [a for a in ARCHITECTURES if a.id == "vit"]
    save_checkpoint(vit, tmp_path / "source")
    options = ["--out", str(tmp_path / "out"), "--rank", RANK, "--quiet"]
    done = subprocess.run(
        [sys.executable, "-m", "leanfit.cli", "quantize", str(tmp_path / "source"), *options],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "all linear layers of the blocks" in done.stdout
    model = load(tmp_path / "out")
    assert type(model.get_base_model()).__name__ == "ViTForImageClassification"
    assert len(targets_of(tmp_path / "out")) == 2 * 6  # q, k, v, o, fc1, fc2 of two blocks


def test_a_convolution_target_loads_tensor_by_tensor(tmp_path):
    """``from_pretrained`` cannot load a convolution target packed; ``load`` fills the model
    itself (ViT's names renamed as transformers 5 renames them) and computes Q + s·B·A."""
    (vit,) = [a for a in ARCHITECTURES if a.id == "vit"]
    save_checkpoint(vit, tmp_path / "source")
    targets = ["--target", "patch_embeddings.projection", "--target", "attention.query"]
    quantize(tmp_path / "source", tmp_path / "out", *targets, "--include-conv", "--iters", "1")
    model = load(tmp_path / "out").eval()
    assert sum(isinstance(m, QuantLinear) for m in model.modules()) == 2  # the queries
    reference = transformers.ViTForImageClassification.from_pretrained(tmp_path / "source")
    merge_into(reference.eval(), tmp_path / "out")
    inputs = example_inputs(vit, reference.config)
    # As in test_output_is_q_plus_scaled_ba_in_float.
    torch.testing.assert_close(
        outputs(model, inputs)["first"], outputs(reference, inputs)["first"], rtol=0, atol=1e-4
    )


def edit_json(path: Path, **values) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}))


def test_a_class_transformers_cannot_build_is_named(tmp_path):
    (bert,) = [a for a in ARCHITECTURES if a.id == "bert"]
    save_checkpoint(bert, tmp_path / "source")
    quantize(tmp_path / "source", tmp_path / "out", "--iters", "1")
    backbone = tmp_path / "out" / "backbone"
    edit_json(backbone / "quantization_config.json", architecture="MyBertForRanking")
    edit_json(backbone / "config.json", architectures=["MyBertForRanking"])
    with pytest.raises(BadInputError, match="saved as 'MyBertForRanking', a class transformers"):
        load(tmp_path / "out")
    assert type(load(tmp_path / "out", task="base").get_base_model()).__name__ == "BertModel"
    edit_json(backbone / "config.json", num_attention_heads=3)  # 32 is not a multiple of 3
    unbuildable = r"cannot build AutoModel \(model_type 'bert'\) .*attention heads"
    with pytest.raises(BadInputError, match=unbuildable):
        load(tmp_path / "out", task="base")


def test_experts_that_transformers_fuses_load_beside_packed_attention(tmp_path):
    """transformers 5 merges Mixtral's per-expert weights into one parameter when loading;
    ``load`` builds the model as ``from_pretrained`` does, so the experts (not targets by
    default) are merged and the attention targets packed."""
    mixtral = Architecture(
        "mixtral",
        "MixtralConfig",
        "MixtralForCausalLM",
        {**DECODER, "num_local_experts": 2, "num_experts_per_tok": 1},
    )
    save_checkpoint(mixtral, tmp_path / "source")
    quantize(tmp_path / "source", tmp_path / "out", "--iters", "1")
    model = load(tmp_path / "out").eval()
    assert sum(isinstance(m, QuantLinear) for m in model.modules()) == 2 * 4  # q, k, v, o
    reference = transformers.MixtralForCausalLM.from_pretrained(tmp_path / "source").eval()
    merge_into(reference, tmp_path / "out")
    inputs = example_inputs(mixtral, reference.config)
    # Same float32 weights, x·Qᵀ + s·(x·Aᵀ)·Bᵀ against x·(Q + s·B·A)ᵀ: as in
    # test_output_is_q_plus_scaled_ba_in_float.
    torch.testing.assert_close(
        outputs(model, inputs)["first"], outputs(reference, inputs)["first"], rtol=0, atol=1e-4
    )
