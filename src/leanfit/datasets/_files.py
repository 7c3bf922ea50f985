"""Read vendored data files, checking each against the manifest's sha256."""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from functools import cache
from importlib import resources
from pathlib import Path

from leanfit.exceptions import CorruptArtifactError, MissingResourceError

DATA_PACKAGE = "leanfit.datasets"


def data_dir() -> Path:
    """Directory of the vendored files (``leanfit/datasets/data``)."""
    return Path(str(resources.files(DATA_PACKAGE) / "data"))


@cache
def manifest() -> dict[str, dict]:
    """The manifest written by ``scripts/build_datasets.py``: file name → sha256, rows, bytes."""
    return json.loads((data_dir() / "MANIFEST.json").read_text())


def read_vendored(name: str, directory: Path | None = None) -> bytes:
    """Return the uncompressed content of a vendored file after checking its sha256.

    Parameters
    ----------
    name : str
        Name in the manifest, such as ``"adult.data"``.
    directory : Path, optional
        Where to look for ``NAME.gz``; the package's data directory by default (tests point
        it at a damaged copy).

    Raises
    ------
    MissingResourceError
        The file is absent.
    CorruptArtifactError
        The file is not valid gzip or its content does not match the manifest.
    """
    entry = manifest()[name]
    path = (directory or data_dir()) / entry["file"]
    if not path.is_file():
        raise MissingResourceError(
            f"vendored data file {path} is missing; reinstall leanfit or run "
            "scripts/build_datasets.py"
        )
    try:
        content = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as err:
        raise CorruptArtifactError(f"vendored data file {path} is not valid gzip: {err}") from err
    digest = hashlib.sha256(content).hexdigest()
    if digest != entry["sha256"]:
        raise CorruptArtifactError(
            f"vendored data file {path} has sha256 {digest}, expected {entry['sha256']}; "
            "it was modified or damaged — run scripts/build_datasets.py to rebuild it"
        )
    return content
