"""Streaming checkpoint reader: GGUF against transformers' own GGUF loader (real SmolLM2 and
tiny synthetic files), safetensors directories (real MiniLM, synthetic shards), errors."""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from safetensors.torch import load_file, save_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from leanfit.checkpoints.gguf_source import unpermute_rotary
from leanfit.checkpoints.source import open_checkpoint
from leanfit.exceptions import (
    BadInputError,
    CorruptArtifactError,
    LeanfitError,
    MissingResourceError,
)
from leanfit.pretrained import model_path
from tests.shared import WIDER, tiny_decoder

ROOT = Path(__file__).resolve().parents[2]


# --- GGUF: the real SmolLM2-135M-Instruct (Q4_1 blocks, Q8_0 embedding, tied lm_head) ---


@pytest.fixture(scope="module")
def reference(smollm2_path):
    """transformers' own GGUF loader: the whole model dequantized at once."""
    model = AutoModelForCausalLM.from_pretrained(smollm2_path.parent, gguf_file=smollm2_path.name)
    return model.eval()


@pytest.fixture(scope="module")
def tokenizer(smollm2_path):
    return AutoTokenizer.from_pretrained(smollm2_path.parent, gguf_file=smollm2_path.name)


def test_gguf_names_follow_the_file_and_transformers(smollm2, reference):
    names = smollm2.names()
    # 30 blocks × 9 tensors + embedding + final norm; lm_head is tied, not stored.
    assert len(names) == 272
    assert names[:3] == [
        "model.embed_tokens.weight",
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.mlp.down_proj.weight",
    ]  # GGUF file order: token_embd, blk.0.attn_norm, blk.0.ffn_down
    assert smollm2.tied == {"lm_head.weight": "model.embed_tokens.weight"}
    assert set(names) | set(smollm2.tied) == set(reference.state_dict())
    assert smollm2.model_type == "llama"
    assert smollm2.shape("model.layers.0.mlp.down_proj.weight") == (576, 1536)  # out × in
    assert smollm2.shape("model.layers.0.self_attn.k_proj.weight") == (192, 576)  # 3 kv heads


def test_gguf_tensors_equal_transformers_loader(smollm2, reference):
    # Same bytes, same gguf dequantization, an exact row permutation: bitwise equal.
    state = reference.state_dict()
    for name in [*smollm2.names(), "lm_head.weight"]:
        tensor = smollm2.read(name)
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor, state[name]), name
    norm = smollm2.read("model.norm.weight")  # stored as F32: a copy, not a view on the map
    norm.add_(1.0)
    assert torch.equal(smollm2.read("model.norm.weight") + 1.0, norm)


def test_model_built_from_streamed_tensors_gives_identical_logits(smollm2, reference, tokenizer):
    model = AutoModelForCausalLM.from_config(smollm2.config)
    result = model.load_state_dict({n: smollm2.read(n) for n in smollm2.names()}, strict=False)
    assert result.missing_keys == ["lm_head.weight"] and result.unexpected_keys == []
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied by from_config
    model.eval()
    batch = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
        expected = reference(**batch).logits
    # Identical weights and the same forward code: equal to float tolerance. The bound 1e-5
    # (logits are O(10)) only covers a change of CPU reduction order between runs; measured 0.
    assert torch.allclose(logits, expected, rtol=0, atol=1e-5)
    # The weights are the right ones, not merely the same wrong ones: the model knows.
    assert tokenizer.decode(logits[0, -1].argmax()) == " Paris"


def test_gguf_config_and_tokenizer_are_saved(smollm2, tokenizer, tmp_path):
    written = smollm2.save_config_and_tokenizer(tmp_path / "out")
    assert {p.name for p in written} == {
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    }
    assert all(p.is_file() for p in written)
    config = AutoConfig.from_pretrained(tmp_path / "out")
    assert config.model_type == "llama" and config.num_hidden_layers == 30
    assert config.tie_word_embeddings and config.num_key_value_heads == 3
    saved = AutoTokenizer.from_pretrained(tmp_path / "out")
    text = "Elizabeth Bennet walked three miles to Netherfield."
    assert saved(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert saved.chat_template == tokenizer.chat_template


def test_unpermute_rotary_inverts_llama_cpp(llama_cpp_permute):
    rng = np.random.default_rng(0)
    for shape, heads in [((24, 5), 3), ((24,), 2), ((8, 4), 1)]:
        hf = rng.standard_normal(shape).astype(np.float32)
        stored = torch.from_numpy(llama_cpp_permute(hf, heads))
        assert torch.equal(unpermute_rotary(stored, heads), torch.from_numpy(hf))
    with pytest.raises(CorruptArtifactError, match="heads of even size"):
        unpermute_rotary(torch.zeros(6, 2), 2)


# --- GGUF: tiny synthetic files covering storage types, biases, untied heads, qwen2 ---


def tiny_model(config_class, model_class, **overrides):
    return tiny_decoder(config_class, model_class, **{**WIDER, **overrides})


@pytest.mark.parametrize(
    ("architecture", "model"),
    [
        (
            "llama",
            lambda: tiny_model(LlamaConfig, LlamaForCausalLM, tie_word_embeddings=False),
        ),
        ("qwen2", lambda: tiny_model(Qwen2Config, Qwen2ForCausalLM, tie_word_embeddings=True)),
    ],
)
def test_synthetic_gguf_matches_transformers_and_source(architecture, model, tmp_path, write_gguf):
    source = model()
    path = tmp_path / f"{architecture}.gguf"
    storage = {"ffn_down": Q.Q8_0, "ffn_up": Q.Q5_0, "ffn_gate": Q.F16, "attn_output": Q.BF16}
    write_gguf(source, architecture, path, storage)
    reference = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name)
    expected, original = reference.state_dict(), source.state_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every tensor is mapped: nothing skipped
        checkpoint = open_checkpoint(path)
    with checkpoint:
        assert set(checkpoint.names()) | set(checkpoint.tied) == set(expected)
        assert ("lm_head.weight" in checkpoint.tied) == source.config.tie_word_embeddings
        for name in checkpoint.names():
            tensor = checkpoint.read(name)
            assert torch.equal(tensor, expected[name]), name
            assert checkpoint.shape(name) == tuple(original[name].shape)
            if "mlp" not in name and "o_proj" not in name:  # stored as F32: exact
                assert torch.equal(tensor, original[name]), name
            else:
                # Q5_0, the coarsest type here, rounds to steps of absmax(block)/16: error
                # ≤ absmax/32 plus the fp16 rounding of the scale. absmax/16 is twice that.
                bound = original[name].abs().max() / 16
                assert (tensor - original[name]).abs().max() <= bound, name


def test_gguf_tensors_without_a_transformers_name_are_skipped_with_a_warning(tmp_path, write_gguf):
    # llama.cpp's llama architecture may carry q/k/v/o biases; transformers' LlamaConfig built
    # from GGUF metadata has none (attention_bias=False), so transformers has no name for them.
    source = tiny_model(LlamaConfig, LlamaForCausalLM, attention_bias=True)
    write_gguf(source, "llama", tmp_path / "biased.gguf", {})
    with pytest.warns(UserWarning, match=r"8 GGUF tensors .* skipped: \['blk.0.attn_q.bias'"):
        checkpoint = open_checkpoint(tmp_path / "biased.gguf")
    assert not any(name.endswith(".bias") for name in checkpoint.names())
    checkpoint.close()


def test_gguf_of_another_architecture_is_refused(tmp_path):
    import gguf

    writer = gguf.GGUFWriter(str(tmp_path / "gpt2.gguf"), "gpt2")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(BadInputError, match=r"architecture must be one of .*'llama'.*'gpt2'"):
        open_checkpoint(tmp_path / "gpt2.gguf")
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(CorruptArtifactError, match="cannot read GGUF"):
        open_checkpoint(tmp_path / "bad.gguf")


# --- safetensors directories ---


def test_minilm_directory_round_trip(tmp_path):
    directory = model_path("minilm")
    stored = load_file(directory / "model.safetensors")
    with open_checkpoint(directory) as checkpoint:
        names = checkpoint.names()
        assert checkpoint.model_type == "bert" and checkpoint.tied == {}
        assert sorted(names) == sorted(stored) and len(names) == 104
        tensors = {name: checkpoint.read(name) for name in names}
        written = checkpoint.save_config_and_tokenizer(tmp_path / "out")
    for name, tensor in tensors.items():
        assert torch.equal(tensor, stored[name]), name
    assert tensors["embeddings.position_ids"].dtype == torch.int64  # integers keep their dtype
    expected_files = {"config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json"}
    assert expected_files | {"special_tokens_map.json"} == {p.name for p in written}
    save_file(tensors, tmp_path / "out" / "model.safetensors")

    sentences = ["A man is playing a guitar.", "The weather is lovely today."]
    outputs = []
    for source in (directory, tmp_path / "out"):
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModel.from_pretrained(source).eval()
        with torch.no_grad():
            outputs.append(model(**tokenizer(sentences, padding=True, return_tensors="pt")))
    # Same tensors and tokenizer files, same code: bitwise identical outputs.
    assert torch.equal(outputs[0].last_hidden_state, outputs[1].last_hidden_state)
    assert torch.equal(outputs[0].pooler_output, outputs[1].pooler_output)


@pytest.fixture
def sharded(tmp_path):
    """A tiny llama saved in bf16 as several safetensors shards with an index."""
    model = tiny_model(LlamaConfig, LlamaForCausalLM, tie_word_embeddings=True)
    model = model.to(torch.bfloat16)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    return model, tmp_path / "sharded"


def test_sharded_safetensors_are_read_back_equal(sharded):
    model, directory = sharded
    shards = sorted(directory.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 3 and (directory / "model.safetensors.index.json").is_file()
    file_order = [name for shard in shards for name in _offset_order(shard)]
    state = model.state_dict()
    with open_checkpoint(directory) as checkpoint:
        assert checkpoint.names() == file_order
        assert checkpoint.tied == {"lm_head.weight": "model.embed_tokens.weight"}
        assert set(checkpoint.names()) | set(checkpoint.tied) == set(state)
        for name in [*checkpoint.names(), "lm_head.weight"]:
            tensor = checkpoint.read(name)
            assert tensor.dtype == torch.float32
            assert torch.equal(tensor, state[name].float()), name  # bf16 → fp32 is exact
            assert checkpoint.shape(name) == tuple(state[name].shape)


def _offset_order(shard: Path) -> list[str]:
    """Tensor names of a safetensors file by data offset, read from its JSON header."""
    with shard.open("rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    header.pop("__metadata__", None)
    return sorted(header, key=lambda name: header[name]["data_offsets"][0])


def test_damaged_shards_and_index_are_reported(sharded):
    _, directory = sharded
    index_path = directory / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    dropped = next(iter(index["weight_map"]))
    del index["weight_map"][dropped]
    index_path.write_text(json.dumps(index))
    with pytest.raises(CorruptArtifactError, match="stored but not listed"):
        open_checkpoint(directory)
    shard = sorted(directory.glob("model-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CorruptArtifactError, match="cannot read"):
        open_checkpoint(directory)
    shard.unlink()
    with pytest.raises(CorruptArtifactError, match="missing shards"):
        open_checkpoint(directory)


def test_bad_paths_are_refused(tmp_path):
    with pytest.raises(MissingResourceError, match="does not exist"):
        open_checkpoint(tmp_path / "nothing")
    (tmp_path / "model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(BadInputError, match="pickle"):
        open_checkpoint(tmp_path / "model.bin")
    with pytest.raises(BadInputError, match="must contain config.json"):
        open_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(BadInputError, match="pickle"):
        open_checkpoint(tmp_path)  # only model.bin: refused, not ignored
    (tmp_path / "model.bin").unlink()
    with pytest.raises(BadInputError, match="must contain model.safetensors"):
        open_checkpoint(tmp_path)
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(BadInputError, match="transformers directory"):
        open_checkpoint(tmp_path / "weights.safetensors")


def test_unknown_names_and_closed_checkpoints(sharded):
    _, directory = sharded
    checkpoint = open_checkpoint(directory)
    with pytest.raises(BadInputError, match="'model.nope.weight' is not in checkpoint"):
        checkpoint.read("model.nope.weight")
    kept = checkpoint.read("model.norm.weight")
    kept.add_(1.0)  # reads are independent copies: the next read is unaffected
    assert torch.equal(checkpoint.read("model.norm.weight") + 1.0, kept)
    checkpoint.close()
    assert torch.isfinite(kept).all()  # the tensor owns its memory
    with pytest.raises(LeanfitError, match="is closed"):
        checkpoint.read("model.norm.weight")
    assert "closed" in repr(checkpoint)


@pytest.mark.slow
def test_streaming_memory_stays_near_one_tensor(tmp_path):
    """Peak anonymous memory while reading every tensor, in a fresh process (the benchmark)."""
    out = tmp_path / "memory.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "checkpoint_memory.py"), "--quick"]
    subprocess.run([*command, "--json", str(out)], check=True, cwd=ROOT)
    for row in json.loads(out.read_text())["rows"]:
        if row["method"] != "streaming":
            continue
        # After opening (config, name tables: independent of the model's size), one tensor in
        # float32 plus at most two dequantization temporaries of its size, and 32 MB of
        # allocator slack; the whole model is ≥ 4.7× the largest tensor in both checkpoints.
        bound = row["open_anon_mb"] + 3 * row["largest_tensor_mb"] + 32
        assert row["peak_anon_mb"] <= bound, row
        assert row["peak_anon_mb"] < 0.6 * row["model_fp32_mb"], row
