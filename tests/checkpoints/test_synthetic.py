"""Synthetic llama checkpoints: the layout transformers builds, the values it loads, sizes,
bfloat16 rounding, independence from the shard size, refusals."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from leanfit.checkpoints.source import open_checkpoint
from leanfit.checkpoints.synthetic import (
    INIT_STD,
    SyntheticLlama,
    to_bfloat16_bits,
    write_synthetic_llama,
)
from leanfit.exceptions import BadInputError

SMALL = SyntheticLlama(
    hidden_size=32, intermediate_size=48, num_layers=3, vocab_size=100, num_heads=4, num_kv_heads=2
)


def test_shapes_are_those_of_the_transformers_model():
    config = LlamaConfig.from_dict(SMALL.config())
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert dict(SMALL.tensor_shapes()) == expected
    assert SMALL.nbytes == 2 * sum(t.numel() for t in model.state_dict().values())


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_written_checkpoint_loads_in_transformers_and_streams_the_same(tmp_path, dtype):
    spec = SyntheticLlama(**{**SMALL.__dict__, "dtype": dtype})
    path = write_synthetic_llama(tmp_path / "llama", spec, max_shard_bytes=10_000, progress=False)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 3 and index["metadata"]["total_size"] == spec.nbytes
    model = AutoModelForCausalLM.from_pretrained(path, dtype="auto")
    state = model.state_dict()
    assert next(iter(state.values())).dtype == getattr(torch, dtype)
    with open_checkpoint(path) as checkpoint:
        assert checkpoint.names() == [name for name, _ in spec.tensor_shapes()]
        for name in checkpoint.names():
            assert torch.equal(checkpoint.read(name), state[name].float()), name
    weight = state["model.layers.1.mlp.down_proj.weight"].float()
    # N(0, 0.02²): the standard deviation of 48·32 = 1536 draws is within 10 % (≈ 5.5 sigma
    # of the sample-std estimate, whose relative error is 1/sqrt(2·1536) ≈ 1.8 %).
    assert weight.std().item() == pytest.approx(INIT_STD, rel=0.1)
    assert torch.equal(state["model.norm.weight"].float(), torch.ones(32))


def test_values_do_not_depend_on_the_shard_size(tmp_path):
    one = write_synthetic_llama(tmp_path / "one", SMALL, max_shard_bytes=10**9, progress=False)
    many = write_synthetic_llama(tmp_path / "many", SMALL, max_shard_bytes=5_000, progress=False)
    assert len(list(one.glob("*.safetensors"))) == 1
    assert len(list(many.glob("*.safetensors"))) > 5
    with open_checkpoint(one) as a, open_checkpoint(many) as b:
        for name in a.names():
            assert torch.equal(a.read(name), b.read(name)), name
    other_seed = write_synthetic_llama(tmp_path / "seed1", SMALL, seed=1, progress=False)
    with open_checkpoint(one) as a, open_checkpoint(other_seed) as b:
        name = "model.layers.0.self_attn.q_proj.weight"
        assert not torch.equal(a.read(name), b.read(name))


def test_bfloat16_bits_round_like_torch():
    generator = np.random.default_rng(0)
    values = generator.standard_normal(100_000, dtype=np.float32) * 10.0 ** generator.integers(
        -30, 30, 100_000
    ).astype(np.float32)
    # exact ties between two bfloat16 values (low 16 bits 0x8000), both parities, and zeros
    ties = (np.arange(0, 2**16, 7, dtype=np.uint32) << 16 | 0x8000).view(np.float32)
    values = np.concatenate([values, ties, np.zeros(3, np.float32), -ties])
    values = values[np.isfinite(values)]
    expected = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy()
    np.testing.assert_array_equal(to_bfloat16_bits(values).view(np.int16), expected)


def test_of_size_picks_the_closest_number_of_blocks():
    shape = {"hidden_size": 64, "intermediate_size": 128, "vocab_size": 256, "num_heads": 4}
    one = SyntheticLlama(**shape, num_layers=1).nbytes
    block = SyntheticLlama(**shape, num_layers=2).nbytes - one
    for layers in (1, 7, 40):
        target = one + (layers - 1) * block + block // 3
        assert SyntheticLlama.of_size(target, **shape).num_layers == layers
    assert SyntheticLlama.of_size(1, **shape).num_layers == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"hidden_size": 0}, "hidden_size must be an int >= 1; got 0"),
        ({"hidden_size": 30, "num_heads": 4}, "hidden_size must be a multiple of 4; got 30"),
        ({"num_kv_heads": 3}, "num_kv_heads must be a divisor of 16; got 3"),
        ({"dtype": "float16"}, r"dtype must be one of \['bfloat16', 'float32'\]; got 'float16'"),
    ],
)
def test_bad_shapes_are_refused(kwargs, match):
    with pytest.raises(BadInputError, match=match):
        SyntheticLlama(**kwargs)


def test_bad_writer_arguments_are_refused(tmp_path):
    with pytest.raises(BadInputError, match="spec must be a SyntheticLlama; got 'dict'"):
        write_synthetic_llama(tmp_path / "a", {}, progress=False)
    with pytest.raises(BadInputError, match="max_shard_bytes must be an int >= 1; got 0"):
        write_synthetic_llama(tmp_path / "a", SMALL, max_shard_bytes=0, progress=False)
    write_synthetic_llama(tmp_path / "a", SMALL, progress=False)
    with pytest.raises(BadInputError, match="exists"):
        write_synthetic_llama(tmp_path / "a", SMALL, progress=False)
