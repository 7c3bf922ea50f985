"""Markdown reports: GitHub tables and a report file that embeds PNG figures by relative path."""

from __future__ import annotations

import numbers
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from leanfit.checks import is_number
from leanfit.exceptions import BadInputError, bad_value
from leanfit.io import atomic_output


@dataclass(frozen=True)
class Image:
    """A PNG figure to embed in a report.

    Attributes
    ----------
    path : str or pathlib.Path
        Where the image file is; the report links to it by a path relative to the report.
    caption : str
        Alternative text shown by renderers that cannot show the image; default: the file stem.
    """

    path: str | Path
    caption: str = ""


if TYPE_CHECKING:
    import pandas as pd

Block: TypeAlias = "str | pd.DataFrame | Image | Path"
"""One piece of a report section: markdown text, a table, or an image (``Image`` or ``Path``)."""


def _pandas() -> Any:
    """pandas if it is imported, else None: a table given as records needs no pandas (whose
    import costs a command such as ``leanfit quantize`` about 0.3 s), and a DataFrame can only
    exist once pandas is imported."""
    return sys.modules.get("pandas")


def _is_dataframe(data: object) -> bool:
    pd = _pandas()
    return pd is not None and isinstance(data, pd.DataFrame)


def _is_missing(value: object) -> bool:
    """None, a float NaN, or pandas' NA or NaT."""
    if value is None or (isinstance(value, numbers.Real) and value != value):
        return True
    pd = _pandas()
    return pd is not None and (value is pd.NA or value is pd.NaT)


def _format_cell(value: object, floatfmt: str) -> str:
    if _is_missing(value):
        return ""
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral | bool):
        text = format(float(value), floatfmt)
    else:
        text = str(value)
    return text.replace("|", r"\|").replace("\r\n", "<br>").replace("\n", "<br>")


def _frame_columns(frame: Any) -> tuple[list[object], list[tuple[object, ...]], list[bool]]:
    """Columns, rows and which columns are numeric (not boolean) of a DataFrame."""
    types = _pandas().api.types
    numeric = [
        types.is_numeric_dtype(frame[c]) and not types.is_bool_dtype(frame[c])
        for c in frame.columns
    ]
    return list(frame.columns), list(frame.itertuples(index=False, name=None)), numeric


def _record_columns(
    records: Sequence[Mapping[Any, object]],
) -> tuple[list[object], list[tuple[object, ...]], list[bool]]:
    """Columns (every key, in order of first appearance), rows (a key a record lacks is
    missing) and which columns are numeric: some value, and every present one a number."""
    columns: list[object] = list(dict.fromkeys(key for record in records for key in record))
    rows = [tuple(record.get(c) for c in columns) for record in records]
    numeric = []
    for j in range(len(columns)):
        present = [row[j] for row in rows if not _is_missing(row[j])]
        numeric.append(bool(present) and all(is_number(v) for v in present))
    return columns, rows, numeric


def _column_formats(columns: Sequence[object], floatfmt: str | Mapping[str, str]) -> list[str]:
    if isinstance(floatfmt, str):
        return [floatfmt] * len(columns)
    unknown = set(floatfmt) - {str(c) for c in columns}
    if unknown:
        raise bad_value("floatfmt", sorted(unknown), f"keyed by columns among {list(columns)}")
    return [floatfmt.get(str(c), ".4g") for c in columns]


def markdown_table(
    data: pd.DataFrame | Sequence[Mapping[str, object]],
    *,
    floatfmt: str | Mapping[str, str] = ".4g",
) -> str:
    """Render a table as GitHub-flavoured markdown.

    Parameters
    ----------
    data : pandas.DataFrame or sequence of mappings
        The rows; a DataFrame's index is not shown. Records (one mapping per row) need no
        pandas: the columns are their keys in order of first appearance, a key a record lacks
        is a missing value, and a column is numeric when all its present values are numbers.
    floatfmt : str or mapping of str to str, default ".4g"
        Format specification (``format(x, floatfmt)``) for non-integer numbers; a mapping gives
        one per column name (columns not named use ``".4g"``). Integers, strings and booleans are
        written as they are; missing values become empty cells.

    Returns
    -------
    str
        Header row, separator row and one row per record, each ending with a newline. Columns
        are padded to a common width; numeric columns are right-aligned (``---:``). A ``|``
        inside a cell is escaped and line breaks become ``<br>``.

    Raises
    ------
    BadInputError
        ``data`` is neither a DataFrame nor a sequence of mappings, or has no columns.

    Examples
    --------
    >>> print(markdown_table([{"method": "LoftQ", "error": 0.123456}]), end="")
    | method |  error |
    |--------|-------:|
    | LoftQ  | 0.1235 |
    """
    if _is_dataframe(data):
        columns, values, numeric = _frame_columns(data)
    elif isinstance(data, Sequence) and not isinstance(data, str | bytes):
        if not all(isinstance(row, Mapping) for row in data):
            raise bad_value("data", type(data).__name__, "a DataFrame or a sequence of mappings")
        columns, values, numeric = _record_columns(data)
    else:
        raise bad_value("data", type(data).__name__, "a DataFrame or a sequence of mappings")
    if not columns:
        raise BadInputError("data must have at least one column; got none")
    formats = _column_formats(columns, floatfmt)
    header = [_format_cell(str(c), "") for c in columns]
    rows = [[_format_cell(v, fmt) for v, fmt in zip(row, formats, strict=True)] for row in values]
    widths = [max([len(h), 3, *(len(r[j]) for r in rows)]) for j, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        padded = (
            c.rjust(w) if right else c.ljust(w)
            for c, w, right in zip(cells, widths, numeric, strict=True)
        )
        return "| " + " | ".join(padded) + " |\n"

    separator = "|" + "|".join(
        ("-" * (w + 1) + ":") if right else "-" * (w + 2)
        for w, right in zip(widths, numeric, strict=True)
    )
    return line(header) + separator + "|\n" + "".join(line(r) for r in rows)


def _render_block(block: Block, report_dir: Path) -> str:
    if _is_dataframe(block):
        return markdown_table(block)
    if isinstance(block, Image | Path):
        image = block if isinstance(block, Image) else Image(block)
        path = Path(image.path)
        if not path.is_file():
            raise BadInputError(f"image {str(path)!r} of the report does not exist")
        relative = Path(os.path.relpath(path.resolve(), report_dir.resolve())).as_posix()
        return f"![{image.caption or path.stem}]({relative})\n"
    if isinstance(block, str):
        return block.rstrip("\n") + "\n"
    raise bad_value("section block", type(block).__name__, "str, DataFrame, Image or Path")


def _as_blocks(content: Block | Sequence[Block]) -> list[Block]:
    if isinstance(content, str | Image | Path) or _is_dataframe(content):
        return [content]
    return list(content)


def write_report(
    path: str | Path,
    title: str,
    sections: Mapping[str, Block | Sequence[Block]] | Sequence[tuple[str, Block | Sequence[Block]]],
    *,
    overwrite: bool = False,
) -> Path:
    """Write a markdown report: a title, then one ``##`` section per entry.

    Parameters
    ----------
    path : str or pathlib.Path
        The report file (``.md``). Written atomically: into a temporary sibling, renamed into
        place at the end.
    title : str
        The ``#`` heading.
    sections : mapping or sequence of (heading, content) pairs
        In order. Content is one block or a sequence of blocks: ``str`` is markdown written
        as-is, a ``DataFrame`` becomes a table (:func:`markdown_table`), an :class:`Image` or a
        ``pathlib.Path`` is embedded as ``![caption](relative/path.png)``, the path relative to
        the report's directory. Blocks are separated by blank lines.
    overwrite : bool, default False
        Replace an existing report.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    BadInputError
        An image does not exist, a block has an unknown type, or ``path`` exists and
        ``overwrite`` is false.
    """
    path = Path(path)
    items = sections.items() if isinstance(sections, Mapping) else sections
    parts = [f"# {title}\n"]
    for heading, content in items:
        parts.append(f"## {heading}\n")
        parts.extend(_render_block(block, path.parent) for block in _as_blocks(content))
    text = "\n".join(parts)
    with atomic_output(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
