"""``leanfit quantize --resume``: a killed run continues from its finished shards and writes
the bytes of an uninterrupted run.

Compared (:func:`tests.reliability.processes.comparable`): every file of the output byte
for byte — backbone shards and index, ``quantization_config.json``, config, adapter weights
and config, the dequantized export, ``loftq_config.json`` — and the two reports field by
field, apart from the time and memory of the process (totals' ``seconds``/``*_mb``, every
matrix's ``seconds`` and the matching markdown columns), which no two runs share. Every run
writes ``out`` relative to its own working directory, so the reports' ``out_dir`` agree.

The checkpoint is a tiny llama of 39 tensors cut into 20 kB shards (5 backbone and 21
dequantized shards), so a kill lands between commits.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from leanfit.checkpoints import writer
from leanfit.exceptions import BadInputError
from leanfit.pipeline import LoftQConfig, LoftQReport
from tests.reliability.processes import (
    comparable,
    digest,
    kill_when,
    quantize_args,
    quantize_in,
    write_llama,
)

CONFIG = LoftQConfig(bits=2, rank=4, iters=2)  # what quantize_args asks for
SHARD = 20_000
EXTRA = ("--export-dequantized", "--max-shard-size", "20kB")


def quantize_here(model: Path, folder: Path, config=CONFIG, **options):
    """``quantize_checkpoint`` into ``folder/out``, given as the relative path ``out``."""
    options = {"export_dequantized": True, "max_shard_bytes": SHARD, **options}
    return quantize_in(folder, model, config, **options)


def interrupted_at(call: int, model: Path, folder: Path, config=CONFIG, **options) -> None:
    """:func:`quantize_here`, interrupted (``KeyboardInterrupt``) at its ``call``-th shard
    write (1-based), before that shard is written."""
    real_save_file = writer.save_file
    calls = []

    def interrupting(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real_save_file(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(writer, "save_file", interrupting)
        with pytest.raises(KeyboardInterrupt):
            quantize_here(model, folder, config, **options)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path, LoftQReport]:
    """The checkpoint, an uninterrupted run of it and the report that run returned."""
    root = tmp_path_factory.mktemp("resume")
    model = write_llama(root / "model", layers=4, hidden=64)
    report = quantize_here(model, root / "reference")
    return model, root / "reference" / "out", report


def backbone_shards(journal: Path) -> int:
    if not journal.is_file():
        return 0
    return journal.read_text().count('"writer":"backbone"')


def test_killed_run_resumes_to_identical_bytes(reference, tmp_path):
    model, expected_out, _ = reference
    expected = comparable(expected_out)
    partial = tmp_path / ".out.partial"
    journal = partial / "journal.jsonl"
    args = quantize_args(model, Path("out"), *EXTRA)
    killed = kill_when(args, lambda _: backbone_shards(journal) >= 3, cwd=tmp_path)
    assert killed  # after 3 of 5 backbone shards, with dequantized shards and adapter to go
    assert not (tmp_path / "out").exists()
    done = backbone_shards(journal)
    before = digest(partial)

    # Without --resume the unfinished run is refused, not silently discarded.
    with pytest.raises(BadInputError, match=r"unfinished run .*pass --resume .* --overwrite"):
        quantize_here(model, tmp_path)
    # --resume with other settings is refused, naming what differs; nothing is touched.
    with pytest.raises(BadInputError, match=r"config\.rank: partial run 4, now 2"):
        quantize_here(model, tmp_path, LoftQConfig(bits=2, rank=2, iters=2), resume=True)
    with pytest.raises(BadInputError, match=r"settings\.max_shard_bytes: partial run 20000"):
        quantize_here(model, tmp_path, resume=True, max_shard_bytes=SHARD // 2)
    assert digest(partial) == before

    # What a kill can leave beyond the journal: a torn last line, a shard renamed into place
    # whose line was never written, a half-written temporary. All are dropped.
    with open(journal, "a") as handle:
        handle.write('{"kind":"shard","writer":"backb')
    stray = partial / "tree" / "backbone" / f"model-{done + 1:05d}.safetensors"
    stray.write_bytes(b"not a finished shard")
    (partial / "tree" / "dequantized" / "model-00001.safetensors.tmp").write_bytes(b"half")

    quantize_here(model, tmp_path, resume=True)  # --resume by the CLI: test_quantize_reliability
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the partial run is gone
    assert comparable(tmp_path / "out") == expected


def test_resume_with_nothing_done(reference, tmp_path):
    """Interrupted before its first shard (only the journal's header exists), and with no
    partial run at all: ``resume`` runs from the start, same bytes."""
    model, expected_out, _ = reference
    interrupted_at(1, model, tmp_path / "a")
    journal = tmp_path / "a" / ".out.partial" / "journal.jsonl"
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    assert [line["kind"] for line in lines] == ["run"]  # kept (an interrupt), nothing done
    quantize_here(model, tmp_path / "a", resume=True)
    quantize_here(model, tmp_path / "b", resume=True)
    assert comparable(tmp_path / "a" / "out") == comparable(expected_out)
    assert comparable(tmp_path / "b" / "out") == comparable(expected_out)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["out"]


def test_resume_after_completion_returns_the_report(reference):
    model, expected_out, original = reference
    before = digest(expected_out)
    report = quantize_here(model, expected_out.parent, resume=True)
    assert digest(expected_out) == before  # nothing rewritten
    # Rebuilt from loftq_report.json: what the run itself returned (JSON floats round-trip).
    assert report.matrices == original.matrices
    assert (report.error, report.qlora_error) == (original.error, original.qlora_error)
    assert report.quantized_params == original.quantized_params
    with pytest.raises(BadInputError, match=r"complete but was made with another config"):
        quantize_here(model, expected_out.parent, LoftQConfig(bits=4, rank=4), resume=True)


def test_overwrite_discards_an_unfinished_run(reference, tmp_path):
    model, expected_out, _ = reference
    interrupted_at(3, model, tmp_path, LoftQConfig(bits=2, rank=2, iters=1))
    assert backbone_shards(tmp_path / ".out.partial" / "journal.jsonl") >= 1
    quantize_here(model, tmp_path, overwrite=True)  # another config: starts afresh
    assert comparable(tmp_path / "out") == comparable(expected_out)


def test_resume_when_the_dequantized_export_lags(reference, tmp_path):
    """Interrupted at the 30th shard write, the backbone has finished more tensors than the
    dequantized export (the kill test usually stops the other way round): the tensors in
    between are recomputed for the export only, and the bytes are still the same."""
    model, expected_out, _ = reference
    interrupted_at(30, model, tmp_path)
    journal = (tmp_path / ".out.partial" / "journal.jsonl").read_text().splitlines()
    done = {"backbone": 0, "dequantized": 0}
    for line in map(json.loads, journal[1:]):
        done[line["writer"]] = line["last"] + 1
    assert done["backbone"] > done["dequantized"] > 0
    quantize_here(model, tmp_path, resume=True)
    assert comparable(tmp_path / "out") == comparable(expected_out)


def test_interrupted_run_with_workers_resumes_to_identical_bytes(reference, tmp_path):
    """An interruption while two worker threads compute leaves a resumable run (the pool shuts
    down cleanly); resuming with workers gives the bytes of an uninterrupted workers run."""
    model, _, _ = reference
    quantize_here(model, tmp_path / "full", workers=2)
    threads = torch.get_num_threads()
    interrupted_at(5, model, tmp_path / "resumed", workers=2)
    assert torch.get_num_threads() == threads  # the walker closed the workers' map
    journal = tmp_path / "resumed" / ".out.partial" / "journal.jsonl"
    assert backbone_shards(journal) >= 1
    quantize_here(model, tmp_path / "resumed", resume=True, workers=2)
    assert comparable(tmp_path / "resumed" / "out") == comparable(tmp_path / "full" / "out")
