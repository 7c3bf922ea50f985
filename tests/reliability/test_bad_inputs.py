"""The bad-input matrix (docs/bad-inputs.md): every row is a case here.

Each case feeds one bad input to the public API and checks the error class, that the
message names the argument or tensor, and the parameter the error carries
(``LeanfitError.param``; None for an error about data, a file or a combination). CLI cases
run ``leanfit`` as a real subprocess and check exit code 2, a single
``leanfit COMMAND: error: ...`` line, no traceback, and the option that the parser's table
gives for the error's parameter, which the line starts with.
``docs/bad-inputs.md`` is generated from these cases (``python -m
tests.reliability.test_bad_inputs``) and a test keeps it in sync.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from leanfit.checkpoints.source import open_checkpoint
from leanfit.checkpoints.targets import select_targets
from leanfit.datasets import load_csv
from leanfit.exceptions import (
    BadInputError,
    CorruptArtifactError,
    LeanfitError,
    MissingResourceError,
    OutputWriteError,
)
from leanfit.io import atomic_output
from leanfit.pipeline import LoftQConfig
from leanfit.pipeline.memory import parse_size
from leanfit.quantization import LoraSpec, QuantizedTensor, QuantSpec, loftq_decompose, quantize
from leanfit.selection import (
    InfluenceSelector,
    InfluenceTree,
    demographic_parity_difference,
    evaluate,
    trim,
)
from tests.reliability.conftest import (
    raw_safetensors,
    table,
    tiny_gguf,
    write_safetensors_dir,
)

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "bad-inputs.md"


@dataclass(frozen=True)
class Case:
    id: str
    area: str
    input: str
    error: type[LeanfitError]
    match: str
    call: Callable[[Path], object]
    param: str | None = None


def weight(rows=8, cols=16, seed=0):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


def with_value(value, at=(2, 3)):
    w = weight()
    w[at] = value
    return w


LLAMA_NAMES = {
    "model.layers.0.self_attn.q_proj.weight": (16, 16),
    "model.layers.0.input_layernorm.weight": (16,),
    "model.embed_tokens.weight": (64, 16),
}


def quantized_state():
    q = quantize(weight(), QuantSpec(4, "nf", 64))
    return q.to_state_dict("w."), q.meta()


def from_meta(**changes):
    tensors, meta = quantized_state()
    return QuantizedTensor.from_state_dict(tensors, "w.", {**meta, **changes})


def truncated_copy(source: Path, target: Path, keep: float) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * keep)])
    return target


def st_dir_with(tmp: Path, damage: Callable[[Path], None]) -> Path:
    folder = write_safetensors_dir(tmp / "model")
    damage(folder / "model.safetensors")
    return folder


def truncate_file(path: Path, keep: float = 0.5) -> None:
    truncated_copy(path, path, keep)


def read_all(path: Path) -> None:
    with open_checkpoint(path) as checkpoint:
        for name in checkpoint.names():
            checkpoint.read(name)


def gguf_claiming_huge_tensor(tmp: Path) -> Path:
    """A GGUF whose only tensor's header claims 2**38 float32 values (1 TiB)."""
    import gguf

    path = tmp / "huge.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    data = bytearray(path.read_bytes())
    dims = np.array([4, 4], dtype="<u8").tobytes()
    at = data.index(dims)
    data[at : at + 16] = np.array([2**19, 2**19], dtype="<u8").tobytes()
    path.write_bytes(bytes(data))
    return path


def pickle_dir(tmp: Path) -> Path:
    folder = tmp / "pt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    return folder


def remote_code_dir(tmp: Path) -> Path:
    folder = write_safetensors_dir(tmp / "model")
    marker = tmp / "remote-code-ran"
    (folder / "configuration_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import PretrainedConfig\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n"
    )
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="evil", auto_map={"AutoConfig": "configuration_evil.EvilConfig"})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


# -- selection helpers -------------------------------------------------------------------


def frame_and_labels(n=120):
    frame = table(n)
    return frame.drop(columns="y"), frame["y"].to_numpy()


def fitted():
    X, y = frame_and_labels()
    return InfluenceSelector(1.0).fit(X, y), X, y


def fit_with(change: Callable[[pd.DataFrame, np.ndarray], tuple]) -> object:
    X, y = frame_and_labels()
    return InfluenceSelector(1.0).fit(*change(X, y))


def influence_with(sensitive) -> object:
    selector, X, y = fitted()
    return selector.influence(X, y, objective="fairness", sensitive_features=sensitive)


def csv_with(tmp: Path, change: Callable[[pd.DataFrame], pd.DataFrame], name="t.csv") -> Path:
    path = tmp / name
    change(table()).to_csv(path, index=False)
    return path


def load_changed(tmp: Path, change, **kwargs) -> object:
    args = {"target": "y", "sensitive": "g", "privileged": "M"} | kwargs
    return load_csv(csv_with(tmp, change), **args)


def scores(n=50):
    return pd.Series(np.random.default_rng(0).standard_normal(n))


def high_cardinality(X, y):
    return X.assign(id=[f"user{i}" for i in range(len(X))]), y


def atomic_write_fails(tmp: Path, error: OSError) -> None:
    with atomic_output(tmp / "out.csv") as partial:
        partial.write_text("half")
        raise error


def atomic_exists(tmp: Path) -> None:
    (tmp / "out.csv").write_text("old")
    with atomic_output(tmp / "out.csv") as partial:
        partial.write_text("new")


# -- quantize helpers ----------------------------------------------------------------------


def st_dir_nan(tmp: Path) -> Path:
    """The tiny llama with one NaN in ``model.layers.1.mlp.up_proj.weight``."""
    from safetensors.torch import load_file, save_file

    folder = write_safetensors_dir(tmp / "model")
    path = folder / "model.safetensors"
    tensors = load_file(path)
    tensors["model.layers.1.mlp.up_proj.weight"][2, 3] = float("nan")
    save_file(tensors, path, metadata={"format": "pt"})
    return folder


def st_dir_of_type(tmp: Path, model_type: str, architecture: str | None = None) -> Path:
    """The tiny llama's tensors under another (transformers-known) model type, saved as the
    class ``architecture`` (none by default)."""
    folder = write_safetensors_dir(tmp / "model")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type=model_type, architectures=architecture and [architecture])
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def quantize_cli(model: Callable[[Path], Path], *extra: str):
    def args(tmp: Path) -> list[str]:
        return [
            "quantize", str(model(tmp)), "--out", str(tmp / "out"), "--rank", "2",
            "--iters", "1", "--quiet", *extra,
        ]  # fmt: skip

    return args


def tiny_model(tmp: Path) -> Path:
    return write_safetensors_dir(tmp / "model")


def loftq_output(tmp: Path, damage: Callable[[Path], None]) -> Path:
    """A LoftQ output of the tiny llama (rank 2), then damaged."""
    from leanfit.pipeline import LoftQConfig, quantize_checkpoint

    out = tmp / "q"
    config = LoftQConfig(rank=2, iters=1)
    quantize_checkpoint(tiny_model(tmp), out, config, progress=False)
    damage(out)
    return out


def load_damaged(tmp: Path, damage: Callable[[Path], None]) -> object:
    from leanfit.checkpoints import load

    return load(loftq_output(tmp, damage))


def newer_format(out: Path) -> None:
    path = out / "backbone" / "quantization_config.json"
    meta = json.loads(path.read_text())
    meta["format_version"] += 1
    path.write_text(json.dumps(meta))


def transposed_lora_a(out: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = out / "adapter" / "adapter_model.safetensors"
    tensors = load_file(path)
    name = next(n for n in sorted(tensors) if n.endswith("q_proj.lora_A.weight"))
    tensors[name] = tensors[name].T.contiguous()
    save_file(tensors, path, metadata={"format": "pt"})


def interrupted_run(tmp: Path, config=None) -> Path:
    """The tiny llama's quantization interrupted (Ctrl-C) at its first shard: ``tmp/out``
    has an unfinished run in ``tmp/.out.partial``. Returns the checkpoint."""
    from unittest import mock

    from leanfit.checkpoints import writer
    from leanfit.pipeline import LoftQConfig, quantize_checkpoint

    model = tiny_model(tmp)
    config = config or LoftQConfig(rank=3, iters=1)
    with mock.patch.object(writer, "save_file", side_effect=KeyboardInterrupt):
        try:
            quantize_checkpoint(model, tmp / "out", config, progress=False)
        except KeyboardInterrupt:
            pass
    return model


def resume_other_source(tmp: Path) -> object:
    from leanfit.pipeline import LoftQConfig, quantize_checkpoint

    config = LoftQConfig(rank=3, iters=1)
    model = interrupted_run(tmp, config)
    weights = model / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    return quantize_checkpoint(model, tmp / "out", config, progress=False, resume=True)


def unfinished_no_resume(tmp: Path) -> object:
    from leanfit.pipeline import LoftQConfig, quantize_checkpoint

    model = interrupted_run(tmp)
    return quantize_checkpoint(model, tmp / "out", LoftQConfig(rank=3, iters=1), progress=False)


def quantize_with_budget(tmp: Path, budget: object, config=None, **options: object) -> object:
    from leanfit.pipeline import LoftQConfig, quantize_checkpoint

    config = config or LoftQConfig(rank=2, iters=1)
    return quantize_checkpoint(
        tiny_model(tmp), tmp / "out", config, progress=False, max_memory_bytes=budget, **options
    )


def quantize_with_workers(tmp: Path, workers: object, **config: object) -> object:
    from leanfit.pipeline import LoftQConfig, quantize_checkpoint

    return quantize_checkpoint(
        tiny_model(tmp), tmp / "out", LoftQConfig(rank=2, iters=1, **config), progress=False,
        workers=workers,
    )  # fmt: skip


CASES = [
    # -- quantization: weights and parameters -----------------------------------------
    Case(
        "q-nan-weight",
        "quantization",
        "NaN in a weight",
        BadInputError,
        r"model\.layers\.0\.mlp\.up_proj\.weight must be finite.*row 2, column 3",
        lambda t: loftq_decompose(
            with_value(float("nan")),
            QuantSpec(),
            LoraSpec(2),
            name="model.layers.0.mlp.up_proj.weight",
        ),
    ),
    Case(
        "q-inf-weight",
        "quantization",
        "+Inf in a weight",
        BadInputError,
        r"q_proj\.weight must be finite.*1 NaN or Inf",
        lambda t: loftq_decompose(
            with_value(float("inf")), QuantSpec(), LoraSpec(2), name="q_proj.weight"
        ),
    ),
    Case(
        "q-inf-quantize",
        "quantization",
        "-Inf passed to quantize()",
        BadInputError,
        "tensor must be finite",
        lambda t: quantize(with_value(-float("inf")), QuantSpec(4)),
    ),
    Case(
        "q-bits-5",
        "quantization",
        "bits=5",
        BadInputError,
        r"bits must be one of \(2, 3, 4\) with method 'nf'; got 5",
        lambda t: QuantSpec(5),
        param="bits",
    ),
    Case(
        "q-bits-nf8",
        "quantization",
        "bits=8 with method='nf'",
        BadInputError,
        "bits must be one of",
        lambda t: QuantSpec(8, "nf"),
        param="bits",
    ),
    Case(
        "q-bits-plan",
        "quantization",
        "LoftQConfig(avg_bits=3, high_bits=5)",
        BadInputError,
        r"high_bits must be one of \(2, 3, 4\) with method 'nf'; got 5",
        lambda t: LoftQConfig(avg_bits=3, high_bits=5),
        param="high_bits",
    ),
    Case(
        "q-method",
        "quantization",
        "method='fp4'",
        BadInputError,
        "method must be one of",
        lambda t: QuantSpec(4, "fp4"),
        param="method",
    ),
    Case(
        "q-rank-too-big",
        "quantization",
        "rank = min(d_out, d_in) (8 × 16 weight, rank 8)",
        BadInputError,
        r"rank must be an int in \[1, 7\]; got 8",
        lambda t: loftq_decompose(weight(), QuantSpec(), LoraSpec(8)),
        param="rank",
    ),
    Case(
        "q-rank-zero",
        "quantization",
        "rank=0",
        BadInputError,
        r"rank must be an int >= 1; got 0",
        lambda t: LoraSpec(0),
        param="rank",
    ),
    Case(
        "q-block-zero",
        "quantization",
        "block_size=0",
        BadInputError,
        "block_size must be an int >= 1; got 0",
        lambda t: QuantSpec(block_size=0),
        param="block_size",
    ),
    Case(
        "q-block-float",
        "quantization",
        "block_size=64.0",
        BadInputError,
        "block_size must be an int >= 1; got 64.0",
        lambda t: QuantSpec(4, "nf", 64.0),
        param="block_size",
    ),
    Case(
        "q-weight-empty",
        "quantization",
        "a 0 × 16 weight",
        BadInputError,
        r"weight must be a non-empty",
        lambda t: loftq_decompose(torch.empty(0, 16), QuantSpec(), LoraSpec()),
        param="weight",
    ),
    Case(
        "q-weight-1d",
        "quantization",
        "a 1-D weight",
        BadInputError,
        "weight must be a 2-D floating-point tensor",
        lambda t: loftq_decompose(torch.ones(16), QuantSpec(), LoraSpec()),
        param="weight",
    ),
    Case(
        "q-target-zero-size",
        "quantization",
        "a matched target of shape (0, 16)",
        BadInputError,
        r"'model\.layers\.0\.self_attn\.q_proj\.weight'.*matrix is 0 × 16",
        lambda t: select_targets(
            ["model.layers.0.self_attn.q_proj.weight"],
            {"model.layers.0.self_attn.q_proj.weight": (0, 16)},
            "llama",
        ),
    ),
    Case(
        "q-target-1d",
        "quantization",
        "patterns matching only 1-D tensors",
        BadInputError,
        r"no weight matched.*1 matching tensors are not matrices",
        lambda t: select_targets(
            list(LLAMA_NAMES), LLAMA_NAMES, "llama", patterns=["input_layernorm"]
        ),
    ),
    Case(
        "q-unknown-arch",
        "quantization",
        "model_type 'mamba' with no table, no patterns, no model layers",
        BadInputError,
        "default targets of model_type 'mamba' .*builds none here.*--target",
        lambda t: select_targets(list(LLAMA_NAMES), LLAMA_NAMES, "mamba"),
    ),
    Case(
        "q-no-match",
        "quantization",
        "patterns matching nothing",
        BadInputError,
        r"no weight matched the target patterns \['c_attn'\]",
        lambda t: select_targets(list(LLAMA_NAMES), LLAMA_NAMES, "mamba", patterns=["c_attn"]),
    ),
    Case(
        "q-meta-bits",
        "quantization",
        "from_state_dict with meta bits=7",
        CorruptArtifactError,
        r"quantized tensor 'w\.' cannot be rebuilt.*bits",
        lambda t: from_meta(bits=7),
    ),
    Case(
        "q-meta-shape",
        "quantization",
        "from_state_dict with meta shape [2**40]",
        CorruptArtifactError,
        r"'w\.' cannot be rebuilt.*packed",
        lambda t: from_meta(shape=[2**40]),
    ),
    Case(
        "q-meta-type",
        "quantization",
        "from_state_dict with meta shape 'abc'",
        CorruptArtifactError,
        "cannot be rebuilt",
        lambda t: from_meta(shape="abc"),
    ),
    # -- quantization: checkpoint files --------------------------------------------------
    Case(
        "q-st-truncated",
        "checkpoint",
        "model.safetensors cut in half",
        CorruptArtifactError,
        "model.safetensors",
        lambda t: read_all(st_dir_with(t, truncate_file)),
    ),
    Case(
        "q-st-header",
        "checkpoint",
        "safetensors header that is not JSON",
        CorruptArtifactError,
        "cannot read",
        lambda t: read_all(st_dir_with(t, lambda p: raw_safetensors(p, b"{not json" * 4))),
    ),
    Case(
        "q-st-huge",
        "checkpoint",
        "safetensors header claiming a 1 TiB tensor",
        CorruptArtifactError,
        "cannot read",
        lambda t: read_all(
            st_dir_with(
                t,
                lambda p: raw_safetensors(
                    p,
                    json.dumps(
                        {"w": {"dtype": "F32", "shape": [2**18, 2**20], "data_offsets": [0, 2**40]}}
                    ).encode(),
                    b"\0" * 64,
                ),
            )
        ),
    ),
    Case(
        "q-st-config",
        "checkpoint",
        "config.json that is not JSON",
        CorruptArtifactError,
        "configuration of .*config.json",
        lambda t: read_all(
            st_dir_with(t, lambda p: (p.parent / "config.json").write_text("{broken"))
        ),
    ),
    Case(
        "q-gguf-truncated",
        "checkpoint",
        "GGUF file cut at 60 %",
        CorruptArtifactError,
        "cannot read GGUF file .*truncated",
        lambda t: read_all(truncated_copy(tiny_gguf(t), t / "cut.gguf", 0.6)),
    ),
    Case(
        "q-gguf-header-cut",
        "checkpoint",
        "GGUF file cut inside its header",
        CorruptArtifactError,
        "cannot read GGUF file .*truncated",
        lambda t: read_all(truncated_copy(tiny_gguf(t), t / "cut.gguf", 0.02)),
    ),
    Case(
        "q-gguf-magic",
        "checkpoint",
        "a text file named .gguf",
        CorruptArtifactError,
        "not a GGUF file",
        lambda t: read_all(csv_with(t, lambda f: f, "fake.gguf")),
    ),
    Case(
        "q-gguf-huge",
        "checkpoint",
        "GGUF header claiming a 1 TiB tensor",
        CorruptArtifactError,
        "claims 1,099,511,627,776 bytes",
        lambda t: read_all(gguf_claiming_huge_tensor(t)),
    ),
    Case(
        "q-pickle-file",
        "checkpoint",
        "a .bin / .pt file",
        BadInputError,
        "pickle file, which leanfit does not load",
        lambda t: open_checkpoint(csv_with(t, lambda f: f, "model.pt")),
    ),
    Case(
        "q-pickle-dir",
        "checkpoint",
        "a directory with pytorch_model.bin only",
        BadInputError,
        "pytorch_model.bin.*pickle",
        lambda t: open_checkpoint(pickle_dir(t)),
    ),
    Case(
        "q-remote-code",
        "checkpoint",
        "config.json asking for custom code (auto_map)",
        CorruptArtifactError,
        "auto_map.*never runs",
        lambda t: open_checkpoint(remote_code_dir(t)),
    ),
    Case(
        "q-missing",
        "checkpoint",
        "a path that does not exist",
        MissingResourceError,
        "does not exist",
        lambda t: open_checkpoint(t / "nothing"),
    ),
    # -- selection ------------------------------------------------------------------------
    Case(
        "s-sensitive-missing",
        "selection",
        "sensitive_features naming no column",
        BadInputError,
        "sensitive_features must be a column of X_val",
        lambda t: influence_with("race"),
        param="sensitive_features",
    ),
    Case(
        "s-sensitive-constant",
        "selection",
        "sensitive attribute with one value",
        BadInputError,
        "sensitive_features must have exactly two groups",
        lambda t: influence_with(np.ones(120)),
        param="sensitive_features",
    ),
    Case(
        "s-sensitive-nan",
        "selection",
        "NaN in the sensitive attribute",
        BadInputError,
        "sensitive_features must not have missing values",
        lambda t: influence_with(np.r_[np.ones(60), np.full(60, np.nan)]),
        param="sensitive_features",
    ),
    Case(
        "s-sensitive-length",
        "selection",
        "sensitive attribute of the wrong length",
        BadInputError,
        r"sensitive_features must have one entry per row of X \(120\); got 119",
        lambda t: influence_with(np.r_[np.ones(60), np.zeros(59)]),
        param="sensitive_features",
    ),
    Case(
        "s-empty-group",
        "selection",
        "validation rows all in one group (empty group)",
        BadInputError,
        "sensitive_features must contain at least two groups",
        lambda t: demographic_parity_difference(
            np.ones(10), np.ones(10), sensitive_features=np.zeros(10)
        ),
        param="sensitive_features",
    ),
    Case(
        "s-single-class",
        "selection",
        "labels of one class",
        BadInputError,
        "y must contain both classes",
        lambda t: fit_with(lambda X, y: (X, np.zeros_like(y))),
        param="y",
    ),
    Case(
        "s-labels-not-binary",
        "selection",
        "labels 0/1/2",
        BadInputError,
        "y must hold 0/1 labels",
        lambda t: fit_with(lambda X, y: (X, y + (y == 1))),
        param="y",
    ),
    Case(
        "s-labels-text",
        "selection",
        "labels 'yes'/'no'",
        BadInputError,
        "y must hold 0/1 labels",
        lambda t: fit_with(lambda X, y: (X, np.where(y == 1, "yes", "no"))),
        param="y",
    ),
    Case(
        "s-nan-feature",
        "selection",
        "NaN in a feature",
        BadInputError,
        r"X has missing values in columns \['b'\]",
        lambda t: fit_with(lambda X, y: (X.assign(b=X.b.where(X.index != 3)), y)),
        param="X",
    ),
    Case(
        "s-inf-feature",
        "selection",
        "+Inf in a numeric feature",
        BadInputError,
        r"X has infinite values in columns \['b'\]",
        lambda t: fit_with(lambda X, y: (X.assign(b=X.b.where(X.index != 3, np.inf)), y)),
        param="X",
    ),
    Case(
        "s-non-numeric",
        "selection",
        "text columns without a preprocessor",
        BadInputError,
        r"X must be numeric here; columns \['c', 'g'\]",
        lambda t: InfluenceSelector(1.0, preprocessor=None).fit(*frame_and_labels()),
        param="X",
    ),
    Case(
        "s-lengths",
        "selection",
        "X and y of different lengths",
        BadInputError,
        r"y must have one entry per row of X \(120\); got 117",
        lambda t: fit_with(lambda X, y: (X, y[:-3])),
        param="y",
    ),
    Case(
        "s-high-cardinality",
        "selection",
        "categorical column with one value per row",
        BadInputError,
        r"categorical column 'id' of X has 120 distinct values, more than the limit of 100",
        lambda t: InfluenceSelector(1.0, max_categories=100).fit(
            *high_cardinality(*frame_and_labels())
        ),
        param="max_categories",
    ),
    Case(
        "s-budget-zero",
        "selection",
        "budget 0.0",
        BadInputError,
        r"budget must be a fraction in the open interval \(0, 1\)",
        lambda t: trim(scores(), 0.0),
        param="budget",
    ),
    Case(
        "s-budget-one",
        "selection",
        "budget 1.0",
        BadInputError,
        r"budget must be a fraction in the open interval",
        lambda t: trim(scores(), 1.0),
        param="budget",
    ),
    Case(
        "s-budget-above-n",
        "selection",
        "budget 60 of 50 rows",
        BadInputError,
        r"budget must be a count in \[1, 49\]",
        lambda t: trim(scores(), 60),
        param="budget",
    ),
    Case(
        "s-budget-nan",
        "selection",
        "budget NaN",
        BadInputError,
        "budget must be",
        lambda t: trim(scores(), float("nan")),
        param="budget",
    ),
    Case(
        "s-influence-nan",
        "selection",
        "NaN influence scores passed to trim",
        BadInputError,
        "influence",
        lambda t: trim(pd.Series([0.1, np.nan, 0.3]), 1),
        param="influence",
    ),
    Case(
        "s-tree-nan",
        "selection",
        "InfluenceTree on NaN targets",
        BadInputError,
        "y",
        lambda t: InfluenceTree().fit(*frame_and_labels()[:1], np.r_[np.nan, np.zeros(119)]),
        param="y",
    ),
    Case(
        "s-evaluate-lengths",
        "selection",
        "evaluate() with sensitive of the wrong length",
        BadInputError,
        "one entry per row",
        lambda t: evaluate(
            fitted()[0].model_,
            fitted()[0].transform(fitted()[1]),
            fitted()[2],
            sensitive_features=np.ones(5),
        ),
        param="sensitive_features",
    ),
    Case(
        "s-identical-one-class",
        "selection",
        "all-identical rows with one label",
        BadInputError,
        "both classes",
        lambda t: InfluenceSelector(1.0).fit(pd.DataFrame({"a": [1.0] * 30}), np.ones(30)),
        param="y",
    ),
    Case(
        "s-csv-missing",
        "data",
        "load_csv of a missing file",
        MissingResourceError,
        "no such file",
        lambda t: load_csv(t / "none.csv", target="y", sensitive="g"),
    ),
    Case(
        "s-csv-binary",
        "data",
        "load_csv of binary garbage",
        CorruptArtifactError,
        "not a readable CSV",
        lambda t: load_csv(_write(t / "bin.csv", bytes(range(256)) * 8), target="y", sensitive="g"),
    ),
    Case(
        "s-csv-no-target",
        "data",
        "target column absent",
        BadInputError,
        r"target 'label' is not a column",
        lambda t: load_changed(t, lambda f: f, target="label"),
        param="target",
    ),
    Case(
        "s-csv-constant-sensitive",
        "data",
        "sensitive column with one value",
        BadInputError,
        "sensitive column 'g' must have exactly two distinct values",
        lambda t: load_changed(t, lambda f: f.assign(g="M")),
    ),
    Case(
        "s-csv-three-labels",
        "data",
        "target column with three values",
        BadInputError,
        "target column 'y' must have exactly two distinct values",
        lambda t: load_changed(t, lambda f: f.assign(y=np.arange(len(f)) % 3)),
    ),
    Case(
        "s-csv-privileged",
        "data",
        "privileged value not in the column",
        BadInputError,
        r"privileged must be one of \['F', 'M'\]; got 'X'",
        lambda t: load_changed(t, lambda f: f, privileged="X"),
        param="privileged",
    ),
    # -- quantization: LoftQ outputs ----------------------------------------------------
    Case(
        "q-load-no-config",
        "quantization",
        "load() of an output whose backbone/config.json is missing",
        CorruptArtifactError,
        r"backbone.* has no config\.json",
        lambda t: load_damaged(t, lambda o: (o / "backbone" / "config.json").unlink()),
    ),
    Case(
        "q-load-newer-format",
        "quantization",
        "load() of an output of a newer format version",
        CorruptArtifactError,
        r"quantization_config\.json.* has format_version \d+, newer than",
        lambda t: load_damaged(t, newer_format),
    ),
    Case(
        "q-load-adapter-shapes",
        "quantization",
        "load() of an adapter whose lora_A has the wrong shape",
        CorruptArtifactError,
        r"adapter tensor .*q_proj\.lora_A\.weight.* must have shape \(2, 16\) \(rank 2\); "
        r"got \(16, 2\)",
        lambda t: load_damaged(t, transposed_lora_a),
    ),
    # -- quantization: resumed runs and memory budget -----------------------------------
    Case(
        "q-unfinished-no-resume",
        "quantization",
        "an unfinished (killed) run of the output, neither resume nor overwrite",
        BadInputError,
        r"has an unfinished run in .*\.out\.partial.* pass --resume to continue it or "
        r"--overwrite to discard it",
        unfinished_no_resume,
    ),
    Case(
        "q-resume-other-source",
        "quantization",
        "resume=True after the checkpoint changed (mtime here)",
        BadInputError,
        r"--resume: the unfinished run .* other inputs or settings "
        r"\(source\.model\.safetensors: partial run 'size \d+, mtime_ns \d+",
        resume_other_source,
    ),
    Case(
        "q-max-memory-type",
        "quantization",
        "max_memory_bytes=0",
        BadInputError,
        r"max_memory_bytes must be an int >= 1 \(bytes\), or None; got 0",
        lambda t: quantize_with_budget(t, 0),
        param="max_memory_bytes",
    ),
    Case(
        "q-size-unit",
        "quantization",
        "--max-memory lots (parse_size, as the CLI reads --max-memory / --max-shard-size)",
        BadInputError,
        r"--max-memory must be a size such as 4GB, 500MB, 1\.5GiB or a number of bytes; got 'lots'",
        lambda t: parse_size("lots", "--max-memory"),
        param="--max-memory",
    ),
    Case(
        "q-size-zero",
        "quantization",
        "--max-shard-size 0",
        BadInputError,
        r"--max-shard-size must be a size of at least 1 byte; got '0'",
        lambda t: parse_size("0", "--max-shard-size"),
        param="--max-shard-size",
    ),
    Case(
        "q-max-memory-estimate",
        "quantization",
        "max_memory_bytes below the estimated peak",
        BadInputError,
        r"max_memory_bytes must cover the estimated peak memory .* \(baseline .* working set of "
        r".* shard buffer .*\); got 1 MB",
        lambda t: quantize_with_budget(t, 10**6),
        param="max_memory_bytes",
    ),
    Case(
        "q-max-memory-workers",
        "quantization",
        "max_memory_bytes below the estimate of 2 workers",
        BadInputError,
        r"max_memory_bytes must cover the estimated peak memory .* working set of .* × 2 workers",
        lambda t: quantize_with_budget(t, 10**6, workers=2),
        param="max_memory_bytes",
    ),
    Case(
        "q-max-memory-calibration",
        "quantization",
        "max_memory_bytes with calibration",
        BadInputError,
        r"max_memory_bytes does not count calibration's activations .* run without it",
        lambda t: quantize_with_budget(
            t, 10**9, LoftQConfig(rank=2, iters=1, calibration="pride_and_prejudice")
        ),
        param="max_memory_bytes",
    ),
    Case(
        "q-workers-zero",
        "quantization",
        "workers=0",
        BadInputError,
        r"workers must be an int >= 1; got 0",
        lambda t: quantize_with_workers(t, 0),
        param="workers",
    ),
    Case(
        "q-workers-bool",
        "quantization",
        "workers=True",
        BadInputError,
        r"workers must be an int >= 1; got True",
        lambda t: quantize_with_workers(t, True),
        param="workers",
    ),
    Case(
        "q-workers-calibration",
        "quantization",
        "workers=2 with calibration",
        BadInputError,
        r"calibration runs block by block, one target after the other in one process; it cannot "
        r"be distributed or use workers > 1",
        lambda t: quantize_with_workers(t, 2, calibration="pride_and_prejudice"),
    ),
    # -- outputs --------------------------------------------------------------------------
    Case(
        "o-enospc",
        "output",
        "disk full (ENOSPC) while writing",
        OutputWriteError,
        r"writing output .*out\.csv.* failed: No space left on device \[ENOSPC\]",
        lambda t: atomic_write_fails(t, OSError(28, os.strerror(28))),
    ),
    Case(
        "o-permission",
        "output",
        "permission denied while writing",
        OutputWriteError,
        r"failed: Permission denied \[EACCES\]",
        lambda t: atomic_write_fails(t, PermissionError(13, os.strerror(13))),
    ),
    Case(
        "o-exists",
        "output",
        "output exists, no overwrite",
        BadInputError,
        "exists; pass --overwrite",
        atomic_exists,
    ),
]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_raises_a_leanfit_error_naming_it(case, tmp_path):
    with pytest.raises(case.error, match=case.match) as info:
        case.call(tmp_path)
    assert isinstance(info.value, LeanfitError)
    assert info.value.param == case.param
    assert "\n" not in str(info.value)  # one line, for the CLI's one-line message


# -- CLI -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CliCase:
    id: str
    input: str
    match: str
    args: Callable[[Path], list[str]]
    option: str | None = None


def select_csv(change=lambda f: f, *extra):
    def args(tmp: Path) -> list[str]:
        train = csv_with(tmp, change, "train.csv")
        test = csv_with(tmp, lambda f: f, "test.csv")
        return [
            "select",
            "--train",
            str(train),
            "--test",
            str(test),
            "--target",
            "y",
            "--sensitive",
            "g",
            "--privileged",
            "M",
            "--out",
            str(tmp / "out"),
            "--quiet",
            *extra,
        ]

    return args


def million_categories(tmp: Path) -> list[str]:
    n = 1_000_000
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "a": rng.standard_normal(n),
            "user": np.char.add("u", np.arange(n).astype(str)),
            "g": np.where(rng.random(n) < 0.5, "M", "F"),
            "y": rng.integers(0, 2, n),
        }
    )
    frame.to_csv(tmp / "big.csv", index=False)
    frame.head(200).to_csv(tmp / "test.csv", index=False)
    return [
        "select",
        "--train",
        str(tmp / "big.csv"),
        "--test",
        str(tmp / "test.csv"),
        "--target",
        "y",
        "--sensitive",
        "g",
        "--privileged",
        "M",
        "--out",
        str(tmp / "out"),
        "--quiet",
    ]


def finetune_cli(*extra: str):
    def args(tmp: Path) -> list[str]:
        quantized = loftq_output(tmp, lambda directory: None)
        return [
            "finetune", str(quantized), "--out", str(tmp / "out"), "--task", "classification",
            "--data", "tweets", "--steps", "1", "--quiet", *extra,
        ]  # fmt: skip

    return args


def existing(path_args: Callable[[Path], list[str]]):
    def args(tmp: Path) -> list[str]:
        (tmp / "out").mkdir(exist_ok=True)
        return path_args(tmp)

    return args


CLI_CASES = [
    CliCase(
        "cli-select-no-data",
        "`leanfit select` without data",
        "give --dataset NAME",
        lambda t: ["select"],
    ),
    CliCase(
        "cli-select-missing-file",
        "--train of a missing file",
        "no such file",
        lambda t: [*select_csv()(t)[:1], "--train", str(t / "no.csv"), *select_csv()(t)[3:]],
    ),
    CliCase(
        "cli-select-constant-sensitive",
        "sensitive column with one value",
        "sensitive column 'g' must have exactly two",
        select_csv(lambda f: f.assign(g="M")),
    ),
    CliCase(
        "cli-select-three-labels",
        "target with three values",
        "target column 'y' must have exactly two",
        select_csv(lambda f: f.assign(y=np.arange(len(f)) % 3)),
    ),
    CliCase(
        "cli-select-nan",
        "NaN in a feature",
        r"missing values in columns \['b'\]",
        select_csv(lambda f: f.assign(b=f.b.where(f.index != 5))),
    ),
    CliCase(
        "cli-select-text-in-numbers",
        "a word in a numeric column",
        r"categorical column 'a' of train has 120 distinct values",
        select_csv(
            lambda f: f.assign(a=f.a.astype(object).where(f.index != 5, "oops")),
            "--max-categories",
            "50",
        ),
        option="--max-categories",
    ),
    CliCase(
        "cli-select-budget-range",
        "--budget 1.5",
        "--budget must be auto, a fraction",
        select_csv(lambda f: f, "--budget", "1.5"),
        option="--budget",
    ),
    CliCase(
        "cli-select-budget-above-n",
        "--budget 500 with 120 rows",
        r"--budget must be a count in \[1, 119\]",
        select_csv(lambda f: f, "--budget", "500"),
        option="--budget",
    ),
    CliCase(
        "cli-select-positive-unconventional",
        "target values A / B (neither favourable by convention), no --positive",
        r"--positive is needed: target column 'y' has values \['A', 'B'\] and neither is "
        r"favourable by convention; say which one counts as 1 \(e\.g\. B\)",
        select_csv(lambda f: f.assign(y=np.where(f.y == 1, "A", "B"))),
        option="--positive",
    ),
    CliCase(
        "cli-select-positive-unknown",
        "--positive naming no target value",
        r"--positive must be one of \['0', '1'\]; got 'yes'",
        select_csv(lambda f: f, "--positive", "yes"),
        option="--positive",
    ),
    CliCase(
        "cli-select-target-not-a-column",
        "--target naming no column",
        r"--target 'label' is not a column of .*train\.csv",
        lambda t: [*select_csv()(t), "--target", "label"],
        option="--target",
    ),
    CliCase(
        "cli-select-categorical-unknown",
        "--categorical naming no column",
        r"--categorical must be columns of .*train\.csv; got \['nope'\]",
        select_csv(lambda f: f, "--categorical", "nope"),
        option="--categorical",
    ),
    CliCase(
        "cli-select-target-dp-fixed-budget",
        "--target-dp with a fixed --budget",
        r"--target-dp chooses the budget: use it with the budget 'auto'; got the budget 0\.05",
        select_csv(lambda f: f, "--target-dp", "0.05"),
        option="--target-dp",
    ),
    CliCase(
        "cli-select-auto-without-fairness",
        "--budget auto --objective utility",
        r"--objective must be a list with 'fairness' when the budget is 'auto' \(the budget "
        r"is chosen on the validation demographic-parity gap\); got \['utility'\]",
        select_csv(lambda f: f, "--budget", "auto", "--objective", "utility"),
        option="--objective",
    ),
    CliCase(
        "cli-select-max-accuracy-drop",
        "--max-accuracy-drop 1.5",
        r"--max-accuracy-drop must be a number in \[0, 1\]; got 1\.5",
        select_csv(lambda f: f, "--budget", "auto", "--max-accuracy-drop", "1.5"),
        option="--max-accuracy-drop",
    ),
    CliCase(
        "cli-select-l2",
        "--l2 0",
        r"--l2 must be a finite number > 0; got 0\.0",
        select_csv(lambda f: f, "--l2", "0"),
        option="--l2",
    ),
    CliCase(
        "cli-select-test-too-small",
        "--test of 3 rows without --val (split into validation and test)",
        r"--test must be at least 4 rows to split; got 'a table of 3 rows'",
        lambda t: [
            *select_csv()(t)[:3],
            "--test",
            str(csv_with(t, lambda f: f.groupby(["y", "g"]).head(1).head(3), "small.csv")),
            *select_csv()(t)[5:],
        ],
        option="--test",
    ),
    CliCase(
        "cli-select-million-categories",
        "1,000,000-value categorical column",
        r"--max-categories: categorical column 'user' of train has 1,000,000 distinct values",
        million_categories,
        option="--max-categories",
    ),
    CliCase(
        "cli-select-out-exists",
        "--out that exists",
        "exists; pass --overwrite",
        existing(select_csv()),
    ),
    CliCase(
        "cli-data-out-exists",
        "`leanfit data --export` onto an existing file",
        "exists; pass --overwrite",
        lambda t: ["data", "--export", "german", "--out", str(_write(t / "g.csv", b"x"))],
    ),
    CliCase(
        "cli-data-out-under-file",
        "`leanfit data --out` below a regular file",
        r"writing output .* failed: File exists \[EEXIST\]",
        lambda t: ["data", "--export", "german", "--out", str(_write(t / "f", b"x") / "g.csv")],
    ),
    CliCase(
        "cli-quantize-nan-weight",
        "`leanfit quantize` of a checkpoint with a NaN weight",
        r"model\.layers\.1\.mlp\.up_proj\.weight must be finite.*row 2, column 3",
        quantize_cli(st_dir_nan),
    ),
    CliCase(
        "cli-quantize-bits",
        "--bits 5",
        r"--bits must be one of \(2, 3, 4\) with method 'nf'; got 5",
        quantize_cli(tiny_model, "--bits", "5"),
        option="--bits",
    ),
    CliCase(
        "cli-quantize-rank",
        "--rank 16 with 16 × 32 matrices",
        r"--rank must be below min\(n_out, n_in\) of every target; got 16",
        lambda t: [*quantize_cli(tiny_model)(t), "--rank", "16"],
        option="--rank",
    ),
    CliCase(
        "cli-quantize-block-size",
        "--block-size 0",
        r"--block-size must be an int >= 1; got 0",
        quantize_cli(tiny_model, "--block-size", "0"),
        option="--block-size",
    ),
    CliCase(
        "cli-quantize-bits-budget",
        "--bits-budget 2.4 (below every target at 2 bits: 2.5 stored bits/param)",
        r"--bits-budget must be a number in \[2\.5000, 4\.5000\]: stored bits per parameter",
        quantize_cli(tiny_model, "--bits-budget", "2.4"),
        option="--bits-budget",
    ),
    CliCase(
        "cli-quantize-calib-tokens",
        "--calibration pride_and_prejudice --calib-tokens 0",
        r"--calib-tokens must be an int >= 2; got 0",
        quantize_cli(tiny_model, "--calibration", "pride_and_prejudice", "--calib-tokens", "0"),
        option="--calib-tokens",
    ),
    CliCase(
        "cli-quantize-calibration-missing",
        "--calibration naming a file that does not exist",
        r"--calibration must be one of \['pride_and_prejudice'\] or an existing text file",
        lambda t: [*quantize_cli(tiny_model)(t), "--calibration", str(t / "absent.txt")],
        option="--calibration",
    ),
    CliCase(
        "cli-quantize-calibration-model",
        "--calibration for a model type not run block by block (qwen2)",
        r"implemented for model types \['llama'\] \(e\.g\. SmolLM2\); got 'qwen2'",
        quantize_cli(lambda t: st_dir_of_type(t, "qwen2"), "--calibration", "pride_and_prejudice"),
    ),
    CliCase(
        "cli-quantize-calibration-resume",
        "--calibration with --resume (later blocks need the whole run's quantized activations)",
        r"--resume is not supported with calibration",
        quantize_cli(tiny_model, "--calibration", "pride_and_prejudice", "--resume"),
    ),
    CliCase(
        "cli-quantize-scheduler-memory",
        "--max-memory with --scheduler (the budget bounds one process)",
        r"--max-memory bounds one process; it cannot be combined with --scheduler",
        quantize_cli(tiny_model, "--scheduler", "local", "--max-memory", "4GB"),
    ),
    CliCase(
        "cli-quantize-scheduler-workers",
        "--workers with --scheduler (the Dask workers quantize the layers)",
        r"--workers sets the threads of this process; with --scheduler the Dask workers",
        quantize_cli(tiny_model, "--scheduler", "local", "--workers", "2"),
    ),
    CliCase(
        "cli-quantize-workers-zero",
        "--workers 0",
        r"--workers must be an int >= 1; got 0",
        quantize_cli(tiny_model, "--workers", "0"),
        option="--workers",
    ),
    CliCase(
        "cli-quantize-unknown-type",
        "a class transformers lacks (own code), no table, no --target",
        r"default targets of model_type 'olmo' .*builds none here.*--target",
        quantize_cli(lambda t: st_dir_of_type(t, "olmo", "CustomOlmoForCausalLM")),
    ),
    CliCase(
        "cli-quantize-truncated",
        "truncated model.safetensors",
        r"cannot read .*model\.safetensors.*incomplete metadata",
        quantize_cli(lambda t: st_dir_with(t, truncate_file)),
    ),
    CliCase(
        "cli-quantize-pickle",
        "a pickle pytorch_model.bin checkpoint",
        r"pytorch_model\.bin' is a pickle file, which leanfit does not load",
        quantize_cli(pickle_dir),
    ),
    CliCase(
        "cli-quantize-max-memory",
        "--max-memory 1MB (below the estimated peak)",
        r"--max-memory must cover the estimated peak memory .* got 1 MB",
        quantize_cli(tiny_model, "--max-memory", "1MB"),
        option="--max-memory",
    ),
    CliCase(
        "cli-quantize-unfinished",
        "an unfinished (killed) run of --out, no --resume",
        r"has an unfinished run in .* pass --resume to continue it or --overwrite",
        quantize_cli(interrupted_run),
    ),
    CliCase(
        "cli-quantize-unfinished-other-config",
        "--resume with another --rank than the unfinished run",
        r"--resume: the unfinished run .* \(config\.rank: partial run 3, now 2\)",
        quantize_cli(interrupted_run, "--resume"),
    ),
    CliCase(
        "cli-quantize-out-exists",
        "--out that exists",
        "exists; pass --overwrite",
        existing(quantize_cli(tiny_model)),
    ),
    CliCase(
        "cli-finetune-lr",
        "a negative --lr",
        r"--lr must be a finite number > 0; got -1\.0",
        finetune_cli("--lr", "-1"),
        option="--lr",
    ),
    CliCase(
        "cli-finetune-column-of-a-built-in",
        "--label-column with a built-in data set",
        r"--label-column stars: columns are chosen in a CSV file only; .* 'tweets' has its own",
        finetune_cli("--label-column", "stars"),
        option="--label-column",
    ),
    CliCase(
        "cli-finetune-out-exists",
        "--out that exists (refused before any loading)",
        r"--out '.*out' exists; pass --overwrite to replace it",
        existing(finetune_cli()),
        option="--out",
    ),
]


#: Python keyword-argument syntax in a message (``positive=``, ``max_categories=1,000``).
PYTHON_KEYWORD = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]*=")


def run_cli(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, "-m", "leanfit.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_cli_bad_input_exits_2_with_one_line(case, tmp_path):
    args = case.args(tmp_path)
    result = run_cli(args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"leanfit {args[0]}: error: {case.option or ''}")
    assert re.search(case.match, lines[0]), lines[0]
    # options, never Python keyword syntax such as ``positive=`` or ``overwrite=True``
    assert not PYTHON_KEYWORD.search(lines[0]), lines[0]
    assert not (tmp_path / "out").exists() or case.id.endswith("-out-exists")
    if "-unfinished" not in case.id:  # those cases start from an unfinished run
        assert not list(tmp_path.glob(".out.*"))  # no partial output either


# -- the document ------------------------------------------------------------------------


def matrix_markdown() -> str:
    """docs/bad-inputs.md, generated from CASES and CLI_CASES."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    def code(name: str | None) -> str:
        return "" if name is None else f"`{name}`"

    def excerpt(pattern: str) -> str:
        plain = pattern.replace("\\", "").replace(".*", " … ")
        return plain.replace("^", "")

    lines = [
        "# Bad inputs",
        "",
        "What leanfit does with inputs it cannot use. Every row is a test: "
        "`tests/reliability/test_bad_inputs.py::<test>[<id>]`. Every error is a "
        "`leanfit.exceptions.LeanfitError` whose message is one line that names the argument, "
        "column or tensor and says what is accepted; an error about a parameter also carries "
        "it (`err.param`, with `err.value` and `err.allowed`). On the command line the same "
        "message is printed as `leanfit COMMAND: error: …` with exit code 2 and no traceback, "
        "the parameter called by the option that sets it.",
        "",
        "Message excerpts are the regular expressions the tests match, with `.*` shown as `…`.",
        "",
        "## Python API",
        "",
        "| area | input | error class | parameter | message excerpt | test id |",
        "|---|---|---|---|---|---|",
    ]
    for case in CASES:
        lines.append(
            f"| {case.area} | {cell(case.input)} | `{case.error.__name__}` | "
            f"{code(case.param)} | {cell(excerpt(case.match))} | `{case.id}` |"
        )
    lines += [
        "",
        "## Command line (`leanfit select`, `leanfit data`, `leanfit quantize`, "
        "`leanfit finetune`, as a subprocess)",
        "",
        "Exit code 2, one line on stderr, no traceback, and no output directory left behind. "
        "The line starts with the option (when the error is about one).",
        "",
        "| area | input | error class | option | message excerpt | test id |",
        "|---|---|---|---|---|---|",
    ]
    for case in CLI_CASES:
        lines.append(
            f"| cli | {cell(case.input)} | exit 2 | {code(case.option)} | "
            f"{cell(excerpt(case.match))} | `{case.id}` |"
        )
    lines += [
        "",
        "## Accepted, not errors",
        "",
        "- All-identical feature rows with both labels: the model is the base rate, the "
        "influence is finite (`test_identical_rows_with_both_labels_are_accepted`).",
        "- Categorical columns with more than `max_categories` values (default 1000) are "
        "accepted with `max_categories=None` (API) or `--max-categories 0` (CLI).",
        "- Pickle checkpoints (`.bin`, `.pt`, `.pth`, `.ckpt`, `.pkl`) are always refused; "
        "there is no opt-in. Convert them to safetensors with transformers' "
        "`save_pretrained(..., safe_serialization=True)` in a trusted environment.",
        "",
    ]
    return "\n".join(lines)


def test_document_lists_every_case():
    assert DOC.read_text(encoding="utf-8") == matrix_markdown(), (
        "run: python -m tests.reliability.test_bad_inputs"
    )
    ids = [c.id for c in CASES] + [c.id for c in CLI_CASES]
    assert len(ids) == len(set(ids))


def test_identical_rows_with_both_labels_are_accepted():
    X = pd.DataFrame({"a": [1.0] * 40, "c": ["x"] * 40})
    y = np.r_[np.ones(10), np.zeros(30)]
    selector = InfluenceSelector(1.0).fit(X, y)
    assert selector.predict_proba(X)[0, 1] == pytest.approx(0.25, abs=0.02)  # λ shrinks w only
    values = selector.influence(X, y).to_numpy()
    assert np.all(np.isfinite(values))


if __name__ == "__main__":
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(matrix_markdown(), encoding="utf-8")
    print(f"wrote {DOC}")
