"""The fixed bit plan of a run: uniform, or the first blocks wider (LoftQ's mixed precision)."""

import pytest

from leanfit.checkpoints.targets import Target
from leanfit.exceptions import BadInputError
from leanfit.pipeline import LoftQConfig
from leanfit.pipeline.plan import plan_bits


def blocks(count, per_block=2):
    return [
        Target(f"layers.{i}.m{j}.weight", f"layers.{i}.m{j}", (4, 4), i, False, "linear")
        for i in range(count)
        for j in range(per_block)
    ]


def plan(targets, **config):
    return plan_bits(targets, LoftQConfig(**config))


def test_uniform_and_mixed_bit_plans():
    targets = blocks(30)
    assert set(plan(targets).values()) == {2}
    assert set(plan(targets, bits=4).values()) == {4}
    # PAPERS.md: 30 layers at an average of 2.5 bits → the first ⌊30·0.5/2⌋ = 7 at 4 bits.
    mixed = plan(targets, avg_bits=2.5)
    high = sorted({t.layer_index for t in targets if mixed[t.name] == 4})
    assert high == list(range(7)) and list(mixed) == [t.name for t in targets]
    assert sum(mixed.values()) / len(mixed) == pytest.approx(2 + 2 * 7 / 30)
    # 20·0.3/2 = 3 exactly, although 2.3 − 2 is 0.2999999999999998 in binary.
    assert plan(blocks(20), avg_bits=2.3) == plan(blocks(20), first_high_layers=3)
    assert set(plan(targets, avg_bits=4).values()) == {4}
    assert set(plan(targets, avg_bits=2).values()) == {2}
    three = plan(targets, bits=3, high_bits=8, method="uniform", avg_bits=4)  # ⌊30·1/5⌋ = 6
    assert sum(v == 8 for v in three.values()) == 6 * 2


def test_mixed_plan_counts_block_indices_and_leaves_outside_targets_low():
    pooler = Target("pooler.dense.weight", "pooler.dense", (4, 4), None, False, "linear")
    encoder_decoder = blocks(4) + [
        Target(
            f"decoder.layers.{i}.fc1.weight", f"decoder.layers.{i}.fc1", (4, 4), i, False, "linear"
        )
        for i in range(4)
    ]
    mixed = plan([*encoder_decoder, pooler], first_high_layers=1)
    assert mixed["layers.0.m0.weight"] == mixed["decoder.layers.0.fc1.weight"] == 4
    assert mixed["decoder.layers.1.fc1.weight"] == 2 and mixed["pooler.dense.weight"] == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bits": 5}, "bits must be one of"),
        ({"bits": True}, "bits must be one of"),
        (
            {"high_bits": 1, "avg_bits": 2},
            r"high_bits must be one of \(2, 3, 4\) with method 'nf'; got 1",
        ),
        ({"avg_bits": 2.5, "first_high_layers": 3}, "not both"),
        ({"avg_bits": 4.5}, r"avg_bits must be a number in \[2, 4\]"),
        ({"avg_bits": "3"}, "avg_bits must be a number"),
        ({"first_high_layers": 31}, r"first_high_layers must be an integer in \[0, 30\]"),
        ({"first_high_layers": 2.0}, "first_high_layers must be an int >= 0; got 2.0"),
        ({"bits": 4, "high_bits": 4, "avg_bits": 4}, r"high_bits must be greater than bits \(4\)"),
    ],
)
def test_bit_plan_errors(kwargs, message):
    with pytest.raises(BadInputError, match=message):
        plan(blocks(30), **kwargs)


def test_bit_plan_needs_targets_and_blocks():
    with pytest.raises(BadInputError, match="targets must be a non-empty list"):
        plan([])
    pooler = Target("pooler.dense.weight", "pooler.dense", (4, 4), None, False, "linear")
    assert plan([pooler]) == {"pooler.dense.weight": 2}
    with pytest.raises(BadInputError, match="numbered blocks"):
        plan([pooler], avg_bits=3)
