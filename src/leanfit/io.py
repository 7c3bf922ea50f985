"""Writing outputs safely: into a temporary sibling, renamed into place at the end."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from leanfit.exceptions import BadInputError


@contextlib.contextmanager
def atomic_output(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write to; rename it onto ``path`` on success.

    Works for a file or a directory: the caller creates whatever it wants at the yielded
    path. If the body raises, the temporary is removed and ``path`` is untouched. An existing
    ``path`` is replaced only with ``overwrite=True``.

    Raises
    ------
    BadInputError
        ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise BadInputError(f"output {str(path)!r} exists; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    shutil.rmtree(tmp)  # the caller decides whether it is a file or a directory
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            backup = path.with_name(f".{path.name}.old")
            os.replace(path, backup)
            os.replace(tmp, path)
            shutil.rmtree(backup)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
