"""Writing outputs safely: into a temporary sibling, renamed into place at the end.

An output ``DIR/NAME`` is written as ``DIR/.NAME.<pid>.<random>.partial`` and renamed onto
``DIR/NAME`` only when complete, so a reader never sees a half-written output: if the
process dies (even by ``kill -9``), at most a hidden ``.partial`` sibling is left behind.
The next :func:`atomic_output` for the same ``NAME`` deletes the partial siblings whose
process is gone (those of a live process are left alone). Replacing an existing directory
moves it to ``DIR/.NAME.old`` for the instant between two renames; if the process dies
there, the next call puts it back first.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from leanfit.exceptions import BadInputError, CorruptArtifactError, LeanfitError, OutputWriteError


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def stale_partials(path: Path) -> list[Path]:
    """The ``.partial`` siblings of ``path`` left by processes that no longer run."""
    stale = []
    for candidate in path.parent.glob(f".{path.name}.*.partial"):
        pid_text = candidate.name.removeprefix(f".{path.name}.").split(".", 1)[0]
        if pid_text.isdigit() and not _process_alive(int(pid_text)):
            stale.append(candidate)
    return stale


def _recover(path: Path) -> None:
    """Clean up after a process killed while writing ``path``: put back a directory moved
    aside for replacement, delete dead processes' partial outputs."""
    backup = path.with_name(f".{path.name}.old")
    if backup.exists():
        if path.exists():
            _remove(backup)
        else:
            os.replace(backup, path)
    for partial in stale_partials(path):
        _remove(partial)


def recover_output(path: str | Path) -> None:
    """What :func:`atomic_output` does first: restore a directory that a killed replacement
    moved aside, and delete the temporary siblings of processes that no longer run."""
    _recover(Path(path))


def move_into_place(tmp: Path, path: Path) -> None:
    """Rename the finished ``tmp`` onto ``path``; an existing directory at ``path`` is moved
    to ``.NAME.old`` for the instant between the two renames, then deleted."""
    if path.is_dir() and not path.is_symlink():
        backup = path.with_name(f".{path.name}.old")
        os.replace(path, backup)
        os.replace(tmp, path)
        shutil.rmtree(backup)
    else:
        os.replace(tmp, path)


def fsync_directory(directory: Path) -> None:
    """Make the renames and new entries of ``directory`` durable (POSIX; a no-op elsewhere)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, write: Callable[[Path], object]) -> None:
    """Write a file that survives a crash whole or not at all.

    ``write(tmp)`` creates ``path`` + ``.tmp``; that file is fsynced, renamed onto ``path``
    and the directory fsynced. A process killed at any moment leaves either the previous
    ``path`` (or none) plus possibly a stray ``.tmp``, or the complete new file.
    """
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_directory(path.parent)


def write_error(path: Path, err: OSError) -> OutputWriteError:
    """The :class:`OutputWriteError` for an ``OSError`` met while writing ``path``."""
    reason = err.strerror or str(err)
    code = errno.errorcode.get(err.errno, "") if err.errno is not None else ""
    where = f" ({err.filename})" if err.filename else ""
    return OutputWriteError(
        f"writing output {str(path)!r} failed: {reason}{f' [{code}]' if code else ''}{where}; "
        "nothing was written there — free disk space, fix the permissions or choose another "
        "output path, then run again"
    )


@contextlib.contextmanager
def atomic_output(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write to; rename it onto ``path`` on success.

    Works for a file or a directory: the caller creates whatever it wants at the yielded
    path. If the body raises, the temporary is removed and ``path`` is untouched. An existing
    ``path`` is replaced only with ``overwrite=True``. See the module docstring for what an
    interrupted process leaves and how the next call cleans it up.

    Raises
    ------
    BadInputError
        ``path`` exists and ``overwrite`` is false.
    OutputWriteError
        An ``OSError`` (disk full, permission denied, ...) while creating the temporary,
        in the body or while renaming; the temporary is removed and ``path`` is untouched.
        A :class:`~leanfit.exceptions.LeanfitError` raised by the body passes unchanged.
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _recover(path)
        if path.exists() and not overwrite:
            raise BadInputError(f"output {str(path)!r} exists; pass --overwrite to replace it")
        prefix = f".{path.name}.{os.getpid()}."
        tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".partial", dir=path.parent))
        os.rmdir(tmp)  # the caller decides whether it is a file or a directory
        yield tmp
        move_into_place(tmp, path)
    except OSError as err:
        if isinstance(err, LeanfitError):
            raise
        raise write_error(path, err) from err
    finally:
        if tmp is not None and (tmp.exists() or tmp.is_symlink()):
            _remove(tmp)


def write_json(path: str | Path, value: object) -> None:
    """Write ``value`` to the file ``path`` as indented JSON with sorted keys (UTF-8, ending
    in a newline), as every JSON file of leanfit's outputs is written."""
    Path(path).write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_json(path: str | Path) -> Any:
    """The JSON value stored in the file ``path`` (UTF-8).

    Raises
    ------
    CorruptArtifactError
        The file cannot be read, is not UTF-8, is not valid JSON or nests too deeply (every
        ``ValueError`` of the decoder: also integers of more than 4,300 digits); the
        message names the file.
    """
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:
        raise CorruptArtifactError(f"{str(path)!r} is not valid JSON: {err}") from err
