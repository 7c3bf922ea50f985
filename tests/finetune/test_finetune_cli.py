"""``leanfit finetune`` / ``leanfit evaluate`` on real MiniLM weights (NF2 LoftQ) and tweets:
training lowers the held-out loss, a run reloads exactly, the three initializations start
where they should, and bad inputs exit with code 2. A tiny quantized llama covers the causal
LM path of ``leanfit evaluate``: perplexity and KL of a run directory."""

import json
import shutil

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertForMaskedLM

from leanfit.checkpoints import load
from leanfit.cli import main
from leanfit.exceptions import CorruptArtifactError
from leanfit.finetune.evaluate import classification_metrics
from leanfit.finetune.runs import DataSpec, build_model, load_run, prepare_data, tokenizer_of
from leanfit.pretrained import model_path
from leanfit.quantization import QuantLinear

TRAIN = [
    "--task", "classification", "--data", "tweets", "--max-examples", "256",
    "--max-length", "32", "--batch-size", "16", "--steps", "24", "--lr", "1e-3", "--quiet",
]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(minilm_loftq, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tweets"
    assert main(["finetune", str(minilm_loftq), "--out", str(out), *TRAIN]) == 0
    return out


@pytest.fixture(scope="module")
def held_out(minilm_loftq):
    spec = DataSpec("tweets", max_examples=256)
    return prepare_data(spec, "classification", tokenizer_of(minilm_loftq), max_length=32)[1]


def test_training_lowers_the_held_out_loss(run_dir, minilm_loftq, held_out):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    start = build_model(minilm_loftq, "classification", num_labels=3, seed=0)
    before = classification_metrics(start.eval(), held_out, batch_size=16)["loss"]
    after = metrics["evals"][-1]["loss"]
    # 24 steps at lr 1e-3 move the fresh head off its near-uniform start (ln 3 = 1.10); the
    # held-out loss must drop, by a margin far above run-to-run float noise.
    assert after < before - 0.02, (before, after)
    assert len(metrics["losses"]) == 24


def test_saved_run_reloads_and_reproduces_the_trained_model(run_dir, held_out, capsys):
    record = json.loads((run_dir / "metrics.json").read_text())["evals"][-1]
    reloaded = classification_metrics(load_run(run_dir), held_out, batch_size=16)
    # Same weights and inputs; only the order of float32 reductions may differ.
    assert reloaded["loss"] == pytest.approx(record["loss"], abs=1e-5)
    assert reloaded["accuracy"] == record["accuracy"]
    assert main(["evaluate", str(run_dir), "--fidelity-examples", "16", "--quiet"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["accuracy"] == record["accuracy"] and printed["init"] == "loftq"
    # An NF2 backbone (relative weight error 0.47) is far from fp32: the cosine measured
    # 0.43 at the LoftQ init and 0.24 after training; it must be a valid, clearly-not-1 cosine.
    assert 0.0 < printed["embedding_cosine"] < 0.9


def _layer(model):
    return model.base_model.model.bert.encoder.layer[0].attention.self.query


def test_loftq_init_is_q_plus_scaled_lora(minilm_loftq):
    model = build_model(minilm_loftq, "classification", num_labels=3, seed=0).eval()
    layer = _layer(model)
    saved = load_file(minilm_loftq / "adapter" / "adapter_model.safetensors")
    key = "base_model.model.encoder.layer.0.attention.self.query.lora_{}.weight"
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    assert torch.equal(a, saved[key.format("A")]) and torch.equal(b, saved[key.format("B")])
    assert isinstance(layer.base_layer, QuantLinear)
    x = torch.randn(5, 384, generator=torch.Generator().manual_seed(0))
    q = layer.base_layer.weight
    expected = x @ (q + layer.scaling["default"] * b @ a).T + layer.base_layer.bias
    with torch.no_grad():
        # float32 matmuls in a different association order
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_qlora_init_starts_exactly_at_q(minilm_loftq, minilm_batch):
    model = build_model(minilm_loftq, "classification", init="qlora", num_labels=3, seed=3).eval()
    layer = _layer(model)
    assert not layer.lora_B["default"].weight.any()
    loftq_a = build_model(minilm_loftq, "classification", num_labels=3)
    assert not torch.equal(layer.lora_A["default"].weight, _layer(loftq_a).lora_A["default"].weight)
    again = build_model(minilm_loftq, "classification", init="qlora", num_labels=3, seed=3)
    assert torch.equal(layer.lora_A["default"].weight, _layer(again).lora_A["default"].weight)
    with torch.no_grad():
        logits = model(**minilm_batch).logits
        with model.disable_adapter():
            zero_delta = model(**minilm_batch).logits
    assert torch.equal(logits, zero_delta)  # B = 0 exactly: the LoRA term adds exact zeros


def test_full_precision_init_is_plain_lora_on_the_original_weights(minilm_loftq):
    from transformers import AutoModel

    model = build_model(minilm_loftq, "classification", init="full-precision", num_labels=3)
    layer = _layer(model)
    original = AutoModel.from_pretrained(model_path("minilm")).encoder.layer[0]
    assert type(layer.base_layer) is torch.nn.Linear
    assert torch.equal(layer.base_layer.weight, original.attention.self.query.weight)
    assert not layer.lora_B["default"].weight.any() and layer.r["default"] == 16


def _csv(tmp_path, frame):
    path = tmp_path / "data.csv"
    frame.to_csv(path, index=False)
    return str(path)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing column", "--text-column 'text' is not a column"),
        ("one class", "has a single class"),
        ("not a leanfit output", "must be a leanfit quantize output"),
        ("wrong data option", "--text is not used by --task classification"),
    ],
)
def test_bad_inputs_exit_2_with_a_clear_message(case, message, minilm_loftq, tmp_path, capsys):
    directory, extra = str(minilm_loftq), []
    frame = pd.DataFrame({"sentence": ["good day", "bad day"] * 4, "label": ["p", "n"] * 4})
    if case == "missing column":
        extra = ["--data", _csv(tmp_path, frame)]
    elif case == "one class":
        extra = ["--data", _csv(tmp_path, frame.assign(label="p")), "--text-column", "sentence"]
    elif case == "not a leanfit output":
        directory, extra = str(tmp_path), ["--data", "tweets"]
    else:
        extra = ["--data", "tweets", "--text", "pride_and_prejudice"]
    out = str(tmp_path / "run")
    code = main(["finetune", directory, "--out", out, "--task", "classification", *extra])
    assert code == 2
    assert message in capsys.readouterr().err


def test_unknown_task_is_refused_by_the_parser(minilm_loftq, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["finetune", str(minilm_loftq), "--out", str(tmp_path), "--task", "translation"])
    assert exit_.value.code == 2
    assert "invalid choice: 'translation'" in capsys.readouterr().err


# ---------------------------------------------------------------- causal LM run directory


@pytest.fixture(scope="module")
def causal_run(tiny_causal_loftq, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "novel"
    args = [
        "finetune", str(tiny_causal_loftq), "--out", str(out), "--text", "pride_and_prejudice",
        "--max-examples", "16", "--max-length", "32", "--batch-size", "4", "--steps", "8",
        "--lr", "1e-2", "--quiet",
    ]  # fmt: skip
    assert main(args) == 0
    return out


def test_evaluate_a_causal_lm_run_scores_its_held_out_text(causal_run, tiny_causal_loftq, capsys):
    """Perplexity and KL as printed by the CLI equal a direct computation with plain torch
    on the run's held-out text: the trained model against the original checkpoint."""
    from transformers import AutoModelForCausalLM

    capsys.readouterr()
    args = ["evaluate", str(causal_run), "--max-tokens", "64", "--window", "64", "--stride", "32"]
    assert main([*args, "--fidelity-examples", "6", "--quiet"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["task"] == "causal-lm" and printed["init"] == "loftq"
    assert (printed["held_out_tokens"], printed["kl_blocks"]) == (64, 6)

    spec = DataSpec("pride_and_prejudice", max_examples=16)
    held = prepare_data(spec, "causal-lm", tokenizer_of(tiny_causal_loftq), max_length=32)[1]
    stream = held.reshape(-1)[:64]
    trained = load_run(causal_run)
    start = build_model(tiny_causal_loftq, "causal-lm").eval()
    original = AutoModelForCausalLM.from_pretrained(tiny_causal_loftq.parent / "model").eval()
    with torch.no_grad():

        def full_window_perplexity(model):  # one window holds all 64 tokens: plain NLL
            logits = model(input_ids=stream[None]).logits[0, :-1]
            return float(torch.nn.functional.cross_entropy(logits, stream[1:]).exp())

        log_q = torch.log_softmax(trained(input_ids=held[:6]).logits.double(), -1)
        log_p = torch.log_softmax(original(input_ids=held[:6]).logits.double(), -1)
        kl = float((log_p.exp() * (log_p - log_q)).sum(-1).mean())
        at_start = full_window_perplexity(start)
        expected = full_window_perplexity(trained)
    # Same weights and tokens; float32 logits summed in another order (perplexity ~3e4 of a
    # near-uniform model over 30,522 tokens: a relative 1e-5 is far above the rounding).
    assert printed["perplexity"] == pytest.approx(expected, rel=1e-5)
    assert printed["next_token_kl"] == pytest.approx(kl, rel=1e-5)
    # The trained adapter is the one scored: 8 steps at lr 1e-2 moved the perplexity of this
    # near-uniform model off its start by a relative 6e-4 (observed); 1e-4 is 10x the
    # tolerance above and 6x below the change.
    assert abs(at_start - expected) > 1e-4 * expected, (at_start, expected)
    assert kl > 0  # NF2 weights: the model is not the original


def test_a_masked_lm_checkpoint_becomes_a_classifier_as_transformers_makes_it(
    tmp_path, capsys, caplog
):
    """``BertForMaskedLM`` has no pooler; fine-tuned as a classifier (``BertFor...
    Classification``), the pooler and the head are newly initialized, as transformers'
    ``from_pretrained`` initializes them, from the run's seed: ``evaluate`` rebuilds the same
    model. A module of the base model the backbone holds only in part is still refused."""
    torch.manual_seed(0)
    minilm = model_path("minilm")
    config = BertConfig.from_pretrained(minilm)
    config.update(dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2))
    config.intermediate_size = 64
    BertForMaskedLM(config).save_pretrained(tmp_path / "mlm")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm / name, tmp_path / "mlm" / name)
    quantized, run = tmp_path / "nf2", tmp_path / "run"
    assert main(["quantize", str(tmp_path / "mlm"), "--out", str(quantized), "--quiet"]) == 0
    steps = ["--max-examples", "64", "--max-length", "24", "--batch-size", "16", "--steps", "2"]
    finetune = ["finetune", str(quantized), "--out", str(run), *TRAIN[:4], *steps, "--quiet"]
    assert main(finetune) == 0
    assert "newly initialized, e.g. ['bert.pooler.dense.bias'" in caplog.text
    final = json.loads((run / "metrics.json").read_text())["evals"][-1]
    capsys.readouterr()
    assert main(["evaluate", str(run), "--fidelity-examples", "8", "--quiet"]) == 0
    printed = json.loads(capsys.readouterr().out)
    # The same weights (the pooler drawn again from the run's seed) on the same rows: only
    # the order of float32 reductions may differ.
    assert printed["loss"] == pytest.approx(final["loss"], abs=1e-5)

    (shard,) = (quantized / "backbone").glob("model-*.safetensors")
    tensors = load_file(shard)
    del tensors["bert.embeddings.LayerNorm.weight"]  # its bias stays: damaged, not absent
    save_file(tensors, shard)
    index = quantized / "backbone" / "model.safetensors.index.json"
    values = json.loads(index.read_text())
    values["weight_map"].pop("bert.embeddings.LayerNorm.weight")
    index.write_text(json.dumps(values))
    with pytest.raises(CorruptArtifactError, match=r"lacks 1 tensors .*embeddings.LayerNorm"):
        load(quantized, task="sequence-classification", num_labels=3)
