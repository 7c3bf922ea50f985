"""Resumable quantization runs: a stable partial directory with a journal of finished shards.

While ``DIR/OUT`` is written, everything lives in the hidden sibling ``DIR/.OUT.partial/``::

    journal.jsonl    one JSON object per line, appended and fsynced:
                     {"kind": "run", ...}     what the run is: source fingerprint, config, settings
                     {"kind": "shard", ...}   a finished shard: its writer ("backbone" or
                                              "dequantized"), file, tensor names, bytes, the index
                                              ``last`` of the last source tensor it completes and,
                                              for the backbone, the per-tensor records (report
                                              rows, target metadata) and the adapter part file
    adapter-parts/   ``adapter-0000k.safetensors``: lora_A/lora_B of the targets of backbone shard k
    tree/            the output being built; renamed onto ``OUT`` when complete

A shard (and its adapter part) is written under a ``.tmp`` name, fsynced and renamed before
its journal line is appended and fsynced (:func:`leanfit.io.write_durably`). A source tensor
is finished once the journal line of the shard holding it is on disk; whatever is not in the
journal (a shard renamed just before a kill, a half-written last line) is dropped on resume.
The shards are cut where an uninterrupted run cuts them, every target is seeded from its own
index, and the report rows are kept in the journal, so a resumed run writes the same bytes.

A process holds an exclusive ``flock`` on the partial directory while it runs; a second
process writing the same output is refused instead of mixing shards.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from leanfit.exceptions import BadInputError, LeanfitError, MemoryBudgetError
from leanfit.io import (
    fsync_directory,
    move_into_place,
    recover_output,
    write_durably,
    write_error,
)

logger = logging.getLogger(__name__)

JOURNAL_FORMAT = "leanfit-loftq-journal"
JOURNAL_VERSION = 1
JOURNAL, PARTS, TREE = "journal.jsonl", "adapter-parts", "tree"
FINGERPRINT_BYTES = 2**20
RESUMABLE = (KeyboardInterrupt, MemoryBudgetError)
"""Errors after which the partial run is kept for ``--resume``; any other error removes it
(a bad input would fail the same way again)."""


def partial_path(out: Path) -> Path:
    """The stable partial directory of output ``out``: ``DIR/.OUT.partial``."""
    return out.with_name(f".{out.name}.partial")


def file_fingerprint(path: Path) -> str:
    """``size, mtime_ns, sha256(first MiB + last MiB)`` of a file (the first MiB holds a
    safetensors or GGUF header: tensor names, shapes, dtypes and offsets)."""
    stat = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        digest.update(handle.read(FINGERPRINT_BYTES))
        if stat.st_size > FINGERPRINT_BYTES:
            handle.seek(max(FINGERPRINT_BYTES, stat.st_size - FINGERPRINT_BYTES))
            digest.update(handle.read())
    return f"size {stat.st_size}, mtime_ns {stat.st_mtime_ns}, sha256 {digest.hexdigest()[:16]}"


def source_fingerprint(source: Any) -> dict[str, str]:
    """What identifies a source: for a checkpoint, :func:`file_fingerprint` of the GGUF file
    or of every file of the directory; for an in-memory module, :func:`tensors_fingerprint`
    of its stored tensors (``source.tensors()``)."""
    path = getattr(source, "path", None)
    if isinstance(path, Path):
        files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
        return {p.name: file_fingerprint(p) for p in files}
    return {"module tensors": tensors_fingerprint(source.tensors())}


def tensors_fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of names, shapes, dtypes and bytes, each tensor hashed as stored (no float32
    copy; a copy only for a tensor on another device or not contiguous)."""
    digest = hashlib.sha256()
    for name, tensor in tensors.items():
        stored = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(stored.shape)}:{stored.dtype}".encode())
        digest.update(stored.view(-1).view(torch.uint8).numpy().data)
    return f"sha256 {digest.hexdigest()[:16]}"


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def header_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"key: partial run X, now Y"`` for every (dotted) key whose value differs."""
    old, new = _flatten(recorded), _flatten(current)
    return [
        f"{key}: partial run {old.get(key, '(absent)')!r}, now {new.get(key, '(absent)')!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]


def _read_journal(path: Path, *, repair: bool = True) -> list[dict[str, Any]]:
    """The complete lines of a journal; with ``repair``, a torn last line (no newline, or not
    JSON) is cut off the file so that appending continues after the last complete line."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    entries: list[dict[str, Any]] = []
    good = 0
    for line in data.split(b"\n")[:-1]:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            break
        if not isinstance(entry, dict):
            break
        entries.append(entry)
        good += len(line) + 1
    if repair and good < len(data):
        with open(path, "rb+") as handle:
            handle.truncate(good)
            os.fsync(handle.fileno())
    return entries


def refuse_existing_output(out: Path, *, overwrite: bool, resume: bool) -> None:
    """Refuse an existing ``out`` unless it is to be replaced (``overwrite``) or may be the
    completed run to resume (``resume``); callers that start costly work first (a Dask
    cluster) check it before.

    Raises
    ------
    BadInputError
        ``out`` exists and neither ``overwrite`` nor ``resume`` is given.
    """
    if out.exists() and not overwrite and not resume:
        raise BadInputError(f"output {str(out)!r} exists; pass --overwrite to replace it")


class PartialRun:
    """The stable partial directory of one output: opened, resumed or started, then finished.

    Parameters
    ----------
    out : Path
        The final output directory.
    header : dict
        What the run is (source fingerprint, config, settings); a partial run is resumed
        only if its recorded header is equal.
    resume : bool
        Continue an unfinished partial run (else one is refused unless ``overwrite``).
    overwrite : bool
        Replace an existing ``out`` at the end; discard an unfinished partial run when not
        resuming.

    Attributes
    ----------
    tree : Path
        Where the output is written.
    parts : Path
        The adapter parts.
    entries : list of dict
        The journal's shard lines kept from the partial run (empty for a fresh start).
    """

    def __init__(self, out: Path, header: dict[str, Any], *, resume: bool, overwrite: bool):
        self.out = Path(out)
        self.root = partial_path(self.out)
        self.tree, self.parts = self.root / TREE, self.root / PARTS
        self.journal = self.root / JOURNAL
        self.header = {"kind": "run", "format": JOURNAL_FORMAT, "version": JOURNAL_VERSION}
        self.header.update(header)
        self.resume, self.overwrite = resume, overwrite
        self.entries: list[dict[str, Any]] = []
        self._lock: int | None = None

    # -- opening -------------------------------------------------------------------------

    def open(self) -> PartialRun:
        """Lock the partial directory, then resume it, or start afresh."""
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            recover_output(self.out)
            refuse_existing_output(self.out, overwrite=self.overwrite, resume=False)
            self.root.mkdir(exist_ok=True)
            self._acquire()
            recorded = _read_journal(self.journal)
            unfinished = self.tree.is_dir() and bool(recorded) and recorded[0].get("kind") == "run"
            if unfinished and self.resume:
                self._check_header(recorded[0])
                self.entries = recorded[1:]
                self._append_lines([])  # the journal is readable as it stands
            elif unfinished and not self.overwrite:
                raise BadInputError(
                    f"output {str(self.out)!r} has an unfinished run in {str(self.root)!r} "
                    f"({_done(recorded[1:])} of {self.header.get('tensors', '?')} tensors done); "
                    "pass --resume to continue it or --overwrite to discard it and start again"
                )
            else:
                if unfinished:
                    logger.warning("discarding the unfinished run in %s", self.root)
                self._start()
        except BaseException as err:
            self._release()
            if isinstance(err, OSError) and not isinstance(err, LeanfitError):
                raise write_error(self.out, err) from err
            raise
        return self

    def _acquire(self) -> None:
        fd = os.open(self.root, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BadInputError(
                f"output {str(self.out)!r} is being written by another process "
                f"(it holds {str(self.root)!r}); wait for it or stop it first"
            ) from None
        self._lock = fd

    def _release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def _check_header(self, recorded: dict[str, Any]) -> None:
        differences = header_differences(recorded, self.header)
        if differences:
            shown = "; ".join(differences[:4]) + ("; …" if len(differences) > 4 else "")
            raise BadInputError(
                f"--resume: the unfinished run in {str(self.root)!r} was started with other "
                f"inputs or settings ({shown}); rerun with the same ones, or pass --overwrite "
                "without --resume to start again"
            )

    def _start(self) -> None:
        """Empty the partial directory (kept: it is what the lock is on) and write the header."""
        for child in self.root.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        self.entries = []
        self.tree.mkdir()
        self.parts.mkdir()
        self._append_lines([self.header])

    # -- writing -------------------------------------------------------------------------

    def _append_lines(self, entries: list[dict[str, Any]]) -> None:
        with open(self.journal, "a", encoding="utf-8") as handle:
            for entry in entries:
                handle.write(json.dumps(entry, separators=(",", ":")) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        fsync_directory(self.root)

    def append(self, entry: dict[str, Any]) -> None:
        """Record a finished shard (after its files are durably in place)."""
        self._append_lines([entry])
        self.entries.append(entry)

    def keep_entries(self, count: int) -> None:
        """Keep only the first ``count`` shard lines (the others lost their files)."""
        if count == len(self.entries):
            return
        self.entries = self.entries[:count]
        lines = [self.header, *self.entries]
        text = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in lines)

        def write(tmp: Path) -> None:
            tmp.write_text(text, encoding="utf-8")

        write_durably(self.journal, write)

    # -- closing -------------------------------------------------------------------------

    def finish(self) -> None:
        """Rename the complete tree onto the output, then delete the partial directory."""
        move_into_place(self.tree, self.out)
        fsync_directory(self.out.parent)
        shutil.rmtree(self.root, ignore_errors=True)
        self._release()

    def abandon(self, error: BaseException | None) -> None:
        """After a failure: keep the partial run for ``--resume`` if ``error`` is resumable
        (:data:`RESUMABLE`), else delete it."""
        if not isinstance(error, RESUMABLE):
            with contextlib.suppress(OSError):
                shutil.rmtree(self.root)
        self._release()


def _done(entries: list[dict[str, Any]]) -> int:
    """Source tensors finished in the backbone according to the shard lines."""
    lasts = [e["last"] for e in entries if e.get("writer") == "backbone"]
    return max(lasts) + 1 if lasts else 0


def unfinished_run(out: Path) -> bool:
    """Whether ``out`` has a partial run with a journal and a tree (resumable or refused)."""
    root = partial_path(Path(out))
    recorded = _read_journal(root / JOURNAL, repair=False)
    return (root / TREE).is_dir() and bool(recorded) and recorded[0].get("kind") == "run"
