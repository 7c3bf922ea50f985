"""``leanfit data``: list the vendored data sets, or write one to CSV."""

from __future__ import annotations

import argparse
from pathlib import Path

from leanfit.cli import SUBCOMMANDS
from leanfit.io import atomic_output

#: The names of :data:`leanfit.datasets.TABULAR`, listed here so that building the parser
#: does not import pandas.
TABULAR_NAMES = ("adult", "arrests", "bank", "compas", "german")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data",
        help=SUBCOMMANDS["data"],
        description="Without arguments, list the vendored data files (rows, sha256). "
        "With --export NAME --out FILE, write a tabular data set as CSV.",
    )
    parser.add_argument("--export", choices=TABULAR_NAMES, help="tabular data set to export")
    parser.add_argument("--out", type=Path, help="CSV file to write (with --export)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from leanfit.datasets import TABULAR
    from leanfit.datasets._files import manifest

    if args.export is None:
        for name, entry in manifest().items():
            print(f"{name:32s} {entry['rows']:>8,} rows  sha256 {entry['sha256'][:16]}")
        return 0
    if args.out is None:
        args.out = Path(f"{args.export}.csv")
    dataset = TABULAR[args.export]()
    with atomic_output(args.out, overwrite=args.overwrite) as tmp:
        dataset.frame.to_csv(tmp, index=False)
    print(
        f"wrote {len(dataset):,} rows to {args.out} "
        f"(target {dataset.target!r}, sensitive {dataset.sensitive!r})"
    )
    return 0
