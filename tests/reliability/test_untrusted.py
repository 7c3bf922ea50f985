"""Untrusted files: no pickle, no remote code, no paths from names, and fuzzed readers that
raise only LeanfitError with bounded memory.

The fuzz tests mutate bytes of small valid files (a GGUF written with the ``gguf`` package,
a safetensors checkpoint directory), the metadata of a quantized tensor, and the JSON files
of a ``leanfit quantize`` output read by :func:`leanfit.checkpoints.load` and the
fine-tuning entry points (``quantization_config.json``, the shard index, the adapter config,
``loftq_config.json``, ``loftq_report.json``) and the record and config of a fine-tuning
run. Each example must either read back or raise a
:class:`~leanfit.exceptions.LeanfitError`; anything else (a ValueError from gguf-py, a
struct.error, a KeyError from a missing field, a MemoryError, a hang) fails. The default run
has ~100 examples per checkpoint reader and ~40 per output file; ``-m slow`` runs thousands.
"""

from __future__ import annotations

import ast
import json
import resource
import shutil
import struct
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from leanfit.checkpoints.source import open_checkpoint
from leanfit.exceptions import LeanfitError
from leanfit.quantization import QuantSpec
from leanfit.quantization.quantizers import QuantizedTensor, quantize
from tests.reliability.conftest import tiny_gguf, write_safetensors_dir
from tests.reliability.test_bad_inputs import remote_code_dir

SRC = Path(__file__).resolve().parents[2] / "src"
MB = 1024  # ru_maxrss is in kB on Linux

# Memory a reader may add while fuzzing files of ~30 kB: a few MB of Python objects and the
# transformers config/meta model; a header that made a reader allocate what it claims (up to
# 2**64 bytes) would blow far past it.
FUZZ_RSS_GROWTH_KB = 300 * MB


def peak_rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# -- pickle and remote code ----------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".pth", ".ckpt", ".pkl"])
def test_pickle_checkpoints_are_never_unpickled(tmp_path, suffix, monkeypatch):
    """A real pickle that would create a file when loaded is refused before any read."""
    marker = tmp_path / "pickle-ran"
    payload = (
        b"cbuiltins\nexec\n(V" + f"open({str(marker)!r}, 'w').write('ran')".encode() + b"\ntR."
    )
    path = tmp_path / f"model{suffix}"
    path.write_bytes(payload)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    with pytest.raises(LeanfitError, match="pickle"):
        open_checkpoint(path)
    assert not marker.exists()


def test_checkpoint_code_is_never_run(tmp_path):
    folder = remote_code_dir(tmp_path)
    with pytest.raises(LeanfitError, match="auto_map"):
        open_checkpoint(folder)
    assert not (tmp_path / "remote-code-ran").exists()


def _calls(tree: ast.AST, attributes_only: bool = True):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and (
            isinstance(node.func, ast.Attribute) or not attributes_only
        ):
            yield node


def test_no_source_enables_trust_remote_code():
    """Every ``trust_remote_code=`` in the library is the constant False, and every
    ``Auto*.from_pretrained`` in the checkpoint readers says so explicitly (an explicit
    keyword also makes a second one, smuggled in through ``**kwargs``, a TypeError)."""
    explicit = 0
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for call in _calls(tree, attributes_only=False):
            for keyword in call.keywords:
                if keyword.arg == "trust_remote_code":
                    assert isinstance(keyword.value, ast.Constant), f"{path}:{call.lineno}"
                    assert keyword.value.value is False, f"{path}:{call.lineno}"
                    explicit += 1
        if path.name == "checkpoint.py":
            for call in _calls(tree):
                owner = getattr(call.func.value, "id", "")
                if call.func.attr == "from_pretrained" and owner.startswith("Auto"):
                    names = [k.arg for k in call.keywords]
                    assert "trust_remote_code" in names, f"{path}:{call.lineno}"
    assert explicit >= 2


def test_no_source_uses_torch_load_or_pickle():
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in node.names
        }
        modules = {getattr(n, "module", None) for n in ast.walk(tree)} - {None}
        assert not {"pickle", "dill", "cloudpickle"} & (imported | modules), path
        for call in _calls(tree):
            if call.func.attr == "load" and getattr(call.func.value, "id", "") == "torch":
                pytest.fail(f"{path}:{call.lineno} calls torch.load")


# -- names inside files --------------------------------------------------------------------


def tree_listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


EVIL_NAMES = ["../../evil.weight", "/tmp/leanfit-evil.weight", "..\\..\\evil.weight"]


def test_tensor_names_never_become_paths_safetensors(tmp_path):
    folder = write_safetensors_dir(tmp_path / "model")
    tensors = {name: torch.ones(2, 2) for name in EVIL_NAMES}
    tensors["model.layers.0.self_attn.q_proj.weight"] = torch.ones(16, 16)
    save_file(tensors, folder / "model.safetensors")
    before = tree_listing(tmp_path)
    out = tmp_path / "nested" / "out"
    with open_checkpoint(folder) as checkpoint:
        assert set(EVIL_NAMES) <= set(checkpoint.names())
        for name in checkpoint.names():
            checkpoint.read(name)
        checkpoint.save_config_and_tokenizer(out)
    after = tree_listing(tmp_path) - before
    assert after == {
        "nested",
        "nested/out",
        "nested/out/config.json",
        "nested/out/generation_config.json",
    }
    assert not Path("/tmp/leanfit-evil.weight").exists()


def test_tensor_names_never_become_paths_gguf(tmp_path):
    path = tiny_gguf(tmp_path)
    data = bytearray(path.read_bytes())
    name = b"blk.0.attn_q.weight"
    evil = b"../../../evil.weight"[: len(name)].ljust(len(name), b"x")  # same length
    at = data.index(name)
    data[at : at + len(name)] = evil
    path.write_bytes(bytes(data))
    before = tree_listing(tmp_path)
    with pytest.warns(UserWarning, match="no transformers name"), open_checkpoint(path) as c:
        assert evil.decode() not in c.names()
        for stored in c.names():
            c.read(stored)
    assert tree_listing(tmp_path) == before


# -- fuzzing --------------------------------------------------------------------------------


def read_everything(path: Path) -> str:
    """Open, read every tensor, close: "read" or "refused" (a LeanfitError); any other
    exception propagates and fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with open_checkpoint(path) as checkpoint:
                for name in checkpoint.names():
                    checkpoint.read(name)
        except LeanfitError:
            return "refused"
    return "read"


@pytest.fixture(scope="module")
def gguf_bytes(tmp_path_factory) -> tuple[bytes, int]:
    """A valid tiny GGUF and the length of its header (metadata and tensor infos)."""
    import gguf

    path = tiny_gguf(tmp_path_factory.mktemp("fuzz-gguf"))
    return path.read_bytes(), int(gguf.GGUFReader(path).data_offset)


def mutations(header_length: int, total: int):
    """Edits of a file: a few (offset, byte) replacements — mostly in the header, where
    the structure is — interesting integers written over counts and sizes, and a cut."""
    position = st.one_of(
        st.integers(0, header_length - 1),
        st.integers(0, header_length - 1),
        st.integers(0, total - 1),
    )
    replace = st.tuples(st.just("byte"), position, st.integers(0, 255))
    big = st.sampled_from([0, 1, 2**31 - 1, 2**32 - 1, 2**40, 2**63 - 1, 2**64 - 1])
    integer = st.tuples(st.just("u64"), st.integers(0, header_length - 8), big)
    return st.tuples(
        st.lists(st.one_of(replace, replace, integer), min_size=1, max_size=6),
        st.one_of(st.none(), st.integers(0, total)),
    )


def payload_edits(header_length: int, total: int):
    """Byte replacements in the tensor data only: the file stays well-formed."""
    replace = st.tuples(st.just("byte"), st.integers(header_length, total - 1), st.integers(0, 255))
    return st.tuples(st.lists(replace, min_size=1, max_size=6), st.none())


def mutate(data: bytes, edits) -> bytes:
    changes, cut = edits
    buffer = bytearray(data)
    for kind, offset, value in changes:
        if kind == "byte":
            buffer[offset] = value
        else:
            buffer[offset : offset + 8] = struct.pack("<Q", value)
    return bytes(buffer if cut is None else buffer[:cut])


def fuzz_gguf(data: bytes, header: int, examples: int) -> Counter[str]:
    folder = Path(tempfile.mkdtemp())
    outcomes: Counter[str] = Counter()

    @settings(max_examples=examples, deadline=None, derandomize=examples <= 200, database=None)
    @given(mutations(header, len(data)))
    def check(edits):
        path = folder / "fuzz.gguf"
        path.write_bytes(mutate(data, edits))
        outcomes[read_everything(path)] += 1

    try:
        check()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return outcomes


def fuzz_safetensors(source: Path, examples: int) -> Counter[str]:
    folder = Path(tempfile.mkdtemp()) / "model"
    shutil.copytree(source, folder)
    original = (source / "model.safetensors").read_bytes()
    header = 8 + struct.unpack("<Q", original[:8])[0]
    text = json.loads(original[8:header])
    outcomes: Counter[str] = Counter()

    def json_edit():
        """A header whose JSON is edited: a tensor's shape, dtype or offsets replaced."""
        names = sorted(k for k in text if k != "__metadata__")
        value = st.one_of(
            st.lists(st.integers(-2, 2**62), max_size=5),
            st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F8_E4M3", "X"]),
            st.integers(-(2**63), 2**64),
            st.text(max_size=5),
        )
        field = st.sampled_from(["shape", "dtype", "data_offsets"])
        return st.tuples(st.sampled_from(names), field, value)

    @settings(max_examples=examples, deadline=None, derandomize=examples <= 200, database=None)
    @given(
        st.one_of(
            mutations(header, len(original)),
            st.lists(json_edit(), min_size=1, max_size=3),
            payload_edits(header, len(original)),
        )
    )
    def check(edits):
        if isinstance(edits, list):
            changed = json.loads(json.dumps(text))
            for name, field, value in edits:
                changed[name][field] = value
            encoded = json.dumps(changed).encode()
            data = struct.pack("<Q", len(encoded)) + encoded + original[header:]
        else:
            data = mutate(original, edits)
        (folder / "model.safetensors").write_bytes(data)
        outcomes[read_everything(folder)] += 1

    try:
        check()
    finally:
        shutil.rmtree(folder.parent, ignore_errors=True)
    return outcomes


def fuzz_quantized_meta(examples: int) -> Counter[str]:
    q = quantize(
        torch.randn(8, 16, generator=torch.Generator().manual_seed(0)), QuantSpec(4, "uniform", 32)
    )
    tensors, meta = q.to_state_dict("w."), q.meta()
    outcomes: Counter[str] = Counter()
    anything = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(),
        st.text(max_size=4),
        st.lists(st.integers(-(2**40), 2**40), max_size=6),
    )
    values = {
        "shape": st.one_of(anything, st.lists(st.integers(0, 64), max_size=4)),
        "bits": st.one_of(anything, st.sampled_from([2, 3, 4, 8])),
        "block_size": st.one_of(anything, st.sampled_from([1, 16, 32, 64])),
        "method": st.one_of(anything, st.sampled_from(["nf", "uniform"])),
        "double_quant": st.one_of(anything, st.booleans()),
    }
    edits = st.dictionaries(st.sampled_from(sorted(values)), st.none(), max_size=5).flatmap(
        lambda keys: st.fixed_dictionaries({k: values[k] for k in keys})
    )
    meta_strategy = st.one_of(
        edits.map(lambda changes: {**meta, **changes}),
        st.sets(st.sampled_from(sorted(meta))).map(
            lambda dropped: {k: v for k, v in meta.items() if k not in dropped}
        ),
        anything,
    )

    @settings(max_examples=examples, deadline=None, derandomize=examples <= 200, database=None)
    @given(meta_strategy)
    def check(mutated):
        try:
            restored = QuantizedTensor.from_state_dict(tensors, "w.", mutated)
        except LeanfitError:
            outcomes["refused"] += 1
            return
        assert restored.dequantize().shape == tuple(restored.shape)
        outcomes["read"] += 1

    check()
    return outcomes


def check_fuzz(gguf_bytes, safetensors_dir, *, gguf: int, safetensors: int, meta: int) -> None:
    """Run the three fuzzers; every example ends in "read" or "refused", both outcomes
    occur (the mutations neither all break the files nor all miss), memory stays bounded."""
    before = peak_rss_kb()
    results = {
        "gguf": (fuzz_gguf(*gguf_bytes, examples=gguf), gguf),
        "safetensors": (fuzz_safetensors(safetensors_dir, examples=safetensors), safetensors),
        "meta": (fuzz_quantized_meta(examples=meta), meta),
    }
    growth = peak_rss_kb() - before
    print({name: dict(outcomes) for name, (outcomes, _) in results.items()}, f"{growth} kB")
    for name, (outcomes, examples) in results.items():
        assert sum(outcomes.values()) == examples, name
        assert outcomes["read"] > 0 and outcomes["refused"] > 0, (name, outcomes)
    assert growth < FUZZ_RSS_GROWTH_KB


def test_fuzz_fast_only_leanfit_errors_and_bounded_memory(gguf_bytes, safetensors_dir):
    check_fuzz(gguf_bytes, safetensors_dir, gguf=100, safetensors=100, meta=100)


@pytest.mark.slow
def test_fuzz_thousands_only_leanfit_errors_and_bounded_memory(gguf_bytes, safetensors_dir):
    check_fuzz(gguf_bytes, safetensors_dir, gguf=3000, safetensors=2000, meta=3000)


# -- fuzzing the files of a leanfit quantize output -----------------------------------------


def json_values():
    """Any JSON value, with the integers, strings and lists that the formats use."""
    leaf = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.sampled_from([0, 1, 2, 3, 4, 8, 16, 64, 2**31, 2**63]),
        st.floats(),
        st.text(max_size=6),
        st.sampled_from(["nf", "uniform", "linear", "conv", "lora", "../../evil", "cuda"]),
    )
    return st.recursive(
        leaf,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
        max_leaves=6,
    )


def json_edits():
    """Edits of a parsed JSON document: ``(path, action, value)``. ``path`` picks a nested
    value (each integer indexes the sorted keys or the items of a container, modulo its
    size); the action replaces it, deletes it, or renames its key."""
    action = st.sampled_from(["replace", "replace", "delete", "rename"])
    path = st.lists(st.integers(0, 2**16), min_size=1, max_size=5)
    return st.lists(st.tuples(path, action, json_values()), min_size=1, max_size=4)


def edit_json(document: object, edits) -> object:
    document = json.loads(json.dumps(document))
    for path, action, value in edits:
        parent, key = None, None
        node = document
        for index in path:
            if isinstance(node, dict) and node:
                key = sorted(node)[index % len(node)]
            elif isinstance(node, list) and node:
                key = index % len(node)
            else:
                break
            parent, node = node, node[key]
        if parent is None:
            document = value
        elif action == "delete":
            del parent[key]
        elif action == "rename" and isinstance(parent, dict):
            parent[value if isinstance(value, str) else str(value)] = parent.pop(key)
        else:
            parent[key] = value
    return document


def load_everything(directory: Path, reader) -> str:
    """``reader(directory)`` with warnings and logging silenced: "read" or "refused"."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            reader(directory)
        except LeanfitError:
            return "refused"
    return "read"


def load_model(directory: Path) -> None:
    from leanfit.checkpoints import load

    load(directory).eval()(input_ids=torch.tensor([[1, 2, 3]]))


def build_finetune_model(directory: Path) -> None:
    from leanfit.finetune.runs import build_model

    build_model(directory, "causal-lm")


def read_report(directory: Path) -> None:
    from leanfit.finetune.runs import source_checkpoint

    source_checkpoint(directory)


def read_loftq_config(directory: Path) -> None:
    from leanfit.pipeline import LoftQConfig

    LoftQConfig.load(directory / "loftq_config.json")


def read_run_record(run_dir: Path) -> None:
    from leanfit.finetune.runs import read_run
    from leanfit.finetune.training import FinetuneConfig

    read_run(run_dir)
    FinetuneConfig.load(run_dir / "config.json")


# file of the output -> the entry points that read it
OUTPUT_READERS = {
    "backbone/quantization_config.json": (load_model,),
    "backbone/model.safetensors.index.json": (load_model,),
    "adapter/adapter_config.json": (load_model, build_finetune_model),
    "loftq_config.json": (read_loftq_config,),
    "loftq_report.json": (read_report,),
}
RUN_READERS = {"leanfit_run.json": (read_run_record,), "config.json": (read_run_record,)}


@pytest.fixture(scope="module")
def loftq_dir(tmp_path_factory, safetensors_dir) -> Path:
    """A quantize output of the tiny llama (rank 2), whose source checkpoint exists."""
    from leanfit.pipeline import LoftQConfig, quantize_checkpoint

    out = tmp_path_factory.mktemp("fuzz-loftq") / "loftq"
    quantize_checkpoint(safetensors_dir, out, LoftQConfig(rank=2, iters=1), progress=False)
    return out


@pytest.fixture(scope="module")
def run_record_dir(tmp_path_factory, finetune_reference) -> Path:
    """The record and config of a ``leanfit finetune`` run directory."""
    folder = tmp_path_factory.mktemp("fuzz-run")
    for name in RUN_READERS:
        shutil.copy(finetune_reference / name, folder / name)
    return folder


def fuzz_output_file(directory: Path, name: str, readers, examples: int) -> Counter[str]:
    """Mutate ``directory/name`` (raw bytes or parsed JSON), run its readers, restore it."""
    path = directory / name
    original = path.read_bytes()
    document = json.loads(original)
    outcomes: Counter[str] = Counter()

    @settings(max_examples=examples, deadline=None, derandomize=examples <= 200, database=None)
    @given(
        st.one_of(
            json_edits().map(lambda edits: json.dumps(edit_json(document, edits)).encode()),
            json_edits().map(lambda edits: json.dumps(edit_json(document, edits)).encode()),
            mutations(len(original), len(original)).map(lambda edits: mutate(original, edits)),
        ),
        st.sampled_from(readers),
    )
    def check(data, reader):
        path.write_bytes(data)
        try:
            outcomes[load_everything(directory, reader)] += 1
        finally:
            path.write_bytes(original)

    check()
    return outcomes


def check_output_fuzz(directory: Path, files: dict, examples: int) -> None:
    """Every file of ``files`` (name -> readers) fuzzed; same criteria as :func:`check_fuzz`."""
    before = peak_rss_kb()
    results = {
        name: fuzz_output_file(directory, name, readers, examples)
        for name, readers in files.items()
    }
    growth = peak_rss_kb() - before
    print({name: dict(outcomes) for name, outcomes in results.items()}, f"{growth} kB")
    for name, outcomes in results.items():
        assert sum(outcomes.values()) == examples, name
        assert outcomes["read"] > 0 and outcomes["refused"] > 0, (name, outcomes)
    assert growth < FUZZ_RSS_GROWTH_KB
    for reader in {r for readers in files.values() for r in readers}:
        assert load_everything(directory, reader) == "read"  # every file was restored


def test_fuzz_quantize_output_only_leanfit_errors(loftq_dir, run_record_dir):
    check_output_fuzz(loftq_dir, OUTPUT_READERS, examples=40)
    check_output_fuzz(run_record_dir, RUN_READERS, examples=100)


@pytest.mark.slow
def test_fuzz_quantize_output_thousands(loftq_dir, run_record_dir):
    check_output_fuzz(loftq_dir, OUTPUT_READERS, examples=1500)
    check_output_fuzz(run_record_dir, RUN_READERS, examples=3000)


def test_headers_claiming_a_terabyte_are_refused_without_allocating(tmp_path):
    """Both readers check a header's sizes against the file before allocating anything."""
    from tests.reliability.test_bad_inputs import gguf_claiming_huge_tensor

    huge = gguf_claiming_huge_tensor(tmp_path)
    folder = write_safetensors_dir(tmp_path / "model")
    header = json.dumps(
        {
            "model.embed_tokens.weight": {
                "dtype": "F32",
                "shape": [2**18, 2**20],
                "data_offsets": [0, 2**40],
            }
        }
    ).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    before = peak_rss_kb()
    for path in (huge, folder):
        with pytest.raises(LeanfitError, match="1,099,511,627,776|cannot read"):
            read_everything_strict(path)
    assert peak_rss_kb() - before < 100 * MB  # a 1 TiB claim; the files are a few kB


def read_everything_strict(path: Path) -> None:
    with open_checkpoint(path) as checkpoint:
        for name in checkpoint.names():
            checkpoint.read(name)


def test_fuzz_helpers_accept_the_unmutated_files(gguf_bytes, safetensors_dir, tmp_path):
    """The fuzzed readers do read the original files (so mutations start from valid input)."""
    data, _ = gguf_bytes
    (tmp_path / "ok.gguf").write_bytes(mutate(data, ([], None)))
    for path in (tmp_path / "ok.gguf", safetensors_dir):
        with open_checkpoint(path) as checkpoint:
            assert all(
                np.isfinite(checkpoint.read(n).float().numpy()).all() for n in checkpoint.names()
            )
