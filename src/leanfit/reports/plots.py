"""Figures for leanfit's reports: small, generic, headless.

Every figure is a :class:`matplotlib.figure.Figure` attached to an Agg canvas directly, without
pyplot: nothing opens a window, no global backend is switched, and figures are not kept alive by
pyplot's registry. Each plotting function draws on ``ax`` when given one (any Axes, pyplot's
included) and returns the Figure it drew on; :func:`save_figure` writes it as PNG. matplotlib
is imported by the first figure, not with this module (which ``leanfit.reports`` imports).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from leanfit.exceptions import BadInputError, bad_value
from leanfit.io import atomic_output

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 120
"""Resolution of saved PNGs, dots per inch."""


def new_figure(figsize: tuple[float, float] = (6.4, 4.0)) -> tuple[Figure, Axes]:
    """A new Figure on an Agg canvas with one Axes; ``figsize`` in inches (width, height)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _figure_for(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    from matplotlib.figure import Figure

    if ax is None:
        return new_figure(figsize)
    fig = ax.figure
    return (fig if isinstance(fig, Figure) else fig.figure), ax  # a SubFigure's root Figure


def save_figure(fig: Figure, path: str | Path, *, overwrite: bool = False) -> Path:
    """Save ``fig`` as a PNG (``DPI`` dots per inch, tight bounding box) and close it.

    The file is written atomically (temporary sibling, then renamed). A figure created through
    pyplot is closed there, so that pyplot releases it; other figures need no closing.

    Raises
    ------
    BadInputError
        ``path`` does not end in ``.png``, or exists and ``overwrite`` is false.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise bad_value("path", str(path), "a file name ending in .png")
    with atomic_output(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    if fig.canvas.manager is not None:  # registered with pyplot
        import matplotlib.pyplot as plt

        plt.close(fig)
    return path


def _require_columns(frame: pd.DataFrame, name: str, columns: Sequence[str]) -> None:
    import pandas as pd  # only here: the markdown half of leanfit.reports needs no pandas

    if not isinstance(frame, pd.DataFrame):
        raise bad_value(name, type(frame).__name__, "a pandas DataFrame")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise bad_value(name, list(frame.columns), f"a DataFrame with the columns {missing}")


def _label(ax: Axes, xlabel: str | None, ylabel: str | None, title: str | None) -> None:
    if xlabel is not None:
        ax.set_xlabel(xlabel)
    if ylabel is not None:
        ax.set_ylabel(ylabel)
    if title is not None:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)


def influence_histogram(
    values: ArrayLike,
    groups: ArrayLike | None = None,
    *,
    bins: int = 50,
    density: bool = True,
    xlabel: str = "influence",
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Histogram of influence values, one overlaid histogram per group.

    Parameters
    ----------
    values : array-like, shape (n,)
        Influence of each training sample (positive = beneficial, negative = harmful).
    groups : array-like, shape (n,), optional
        Group of each sample (e.g. the sensitive attribute); one histogram per distinct value,
        in sorted order, all on the same bins. Without groups, one histogram of all values.
    bins : int, default 50
        Number of equal-width bins over the range of ``values``.
    density : bool, default True
        Normalize each histogram to unit area, so that groups of different sizes compare;
        otherwise show counts.
    xlabel, title : str
        Axis label and title. A dashed vertical line marks zero influence.
    ax : matplotlib Axes, optional
        Draw there instead of on a new figure.

    Returns
    -------
    matplotlib.figure.Figure
        One ``stepfilled`` histogram patch per group, legend "group (n=…)".
    """
    x = np.asarray(values, dtype=float).ravel()
    if x.size == 0 or not np.all(np.isfinite(x)):
        raise bad_value(
            "values", f"array of {x.size} values", "a non-empty array of finite numbers"
        )
    if not isinstance(bins, int) or bins < 1:
        raise bad_value("bins", bins, "a positive integer")
    if groups is None:
        labels = np.zeros(x.size, dtype=int)
        names: list[object] = [None]
    else:
        labels = np.asarray(groups).ravel()
        if labels.shape != x.shape:
            raise bad_value("groups", f"shape {labels.shape}", f"an array of shape {x.shape}")
        names = sorted(dict.fromkeys(labels.tolist()), key=str)
    fig, ax = _figure_for(ax, (6.4, 4.0))
    edges = np.histogram_bin_edges(x, bins=bins).tolist()
    for name in names:
        member = x[labels == name] if name is not None else x
        label = f"{name} (n={member.size:,})" if name is not None else f"all (n={member.size:,})"
        ax.hist(member, bins=edges, density=density, histtype="stepfilled", alpha=0.45, label=label)
    ax.axvline(0.0, color="black", linestyle="--", linewidth=1)
    _label(ax, xlabel, "density" if density else "count", title)
    ax.legend()
    return fig


def trimming_curves(
    frame: pd.DataFrame,
    *,
    x: str = "budget",
    y: str = "accuracy",
    method_col: str = "method",
    seed_col: str = "seed",
    spread: str = "std",
    xlabel: str | None = None,
    ylabel: str | None = None,
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Mean curve and spread band of ``y`` against ``x`` for each method, across seeds.

    Parameters
    ----------
    frame : pandas.DataFrame
        Tidy results: one row per (method, seed, x) with columns ``x``, ``y``, ``method_col``
        and ``seed_col``.
    x, y, method_col, seed_col : str
        Column names.
    spread : {"std", "range"}, default "std"
        Band drawn around the mean over seeds: ± one sample standard deviation (zero with a
        single seed), or the minimum–maximum range.
    xlabel, ylabel, title : str, optional
        Labels; the axis labels default to the column names.
    ax : matplotlib Axes, optional
        Draw there instead of on a new figure.

    Returns
    -------
    matplotlib.figure.Figure
        One line and one band per method, methods in order of first appearance.
    """
    _require_columns(frame, "frame", [x, y, method_col, seed_col])
    if spread not in ("std", "range"):
        raise bad_value("spread", spread, "'std' or 'range'")
    fig, ax = _figure_for(ax, (6.4, 4.0))
    for method in frame[method_col].unique():
        by_x = frame.loc[frame[method_col] == method].groupby(x, sort=True)[y]
        mean = by_x.mean()
        if spread == "std":
            std = by_x.std(ddof=1).fillna(0.0)
            low, high = mean - std, mean + std
        else:
            low, high = by_x.min(), by_x.max()
        n_seeds = frame.loc[frame[method_col] == method, seed_col].nunique()
        (line,) = ax.plot(mean.index, mean.to_numpy(), marker="o", markersize=3)
        line.set_label(f"{method} ({n_seeds} seed{'s' if n_seeds != 1 else ''})")
        ax.fill_between(mean.index, low.to_numpy(), high.to_numpy(), alpha=0.2, linewidth=0)
    _label(ax, xlabel or x, ylabel or y, title)
    ax.legend()
    return fig


def error_bars_by_layer(
    frame: pd.DataFrame,
    *,
    layer_col: str = "layer",
    value_col: str = "error",
    method_col: str = "method",
    ylabel: str | None = None,
    log: bool = False,
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Grouped bars of a per-layer quantity (e.g. quantization error), one bar per method.

    Parameters
    ----------
    frame : pandas.DataFrame
        Tidy values: one row per (layer, method), e.g. the relative Frobenius error
        ‖W − Q − (α/r)BA‖_F / ‖W‖_F of each linear layer for QLoRA and LoftQ.
    layer_col, value_col, method_col : str
        Column names. Layers and methods keep their order of first appearance; a missing
        (layer, method) pair leaves a gap.
    ylabel : str, optional
        Defaults to ``value_col``.
    log : bool, default False
        Logarithmic value axis.
    title : str, optional
    ax : matplotlib Axes, optional
        Draw there instead of on a new figure (by default its width grows with the layers).

    Returns
    -------
    matplotlib.figure.Figure
        One bar container of ``n_layers`` bars per method.
    """
    _require_columns(frame, "frame", [layer_col, value_col, method_col])
    if frame.duplicated([layer_col, method_col]).any():
        raise BadInputError(f"frame has several rows for one ({layer_col}, {method_col}) pair")
    layers = list(frame[layer_col].unique())
    methods = list(frame[method_col].unique())
    table = frame.pivot(index=layer_col, columns=method_col, values=value_col)
    table = table.reindex(index=layers, columns=methods)
    fig, ax = _figure_for(ax, (min(24.0, max(6.4, 1.5 + 0.3 * len(layers))), 4.0))
    width = 0.8 / len(methods)
    positions = np.arange(len(layers))
    for k, method in enumerate(methods):
        offset = (k - (len(methods) - 1) / 2) * width
        ax.bar(positions + offset, table[method].to_numpy(float), width=width, label=str(method))
    ax.set_xticks(positions)
    ax.set_xticklabels(
        [str(layer) for layer in layers], rotation=90, fontsize=8 if len(layers) <= 40 else 6
    )
    ax.set_xlim(-0.6, len(layers) - 0.4)
    if log:
        ax.set_yscale("log")
    _label(ax, None, ylabel or value_col, title)
    ax.legend()
    return fig


def line_plot(
    frame: pd.DataFrame,
    *,
    x: str,
    y: str,
    hue: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    title: str | None = None,
    logx: bool = False,
    logy: bool = False,
    ax: Axes | None = None,
) -> Figure:
    """Lines of ``y`` against ``x`` (rows sorted by ``x``), one line per value of ``hue``.

    Parameters
    ----------
    frame : pandas.DataFrame
        Columns ``x``, ``y`` and, if given, ``hue`` (lines in order of first appearance).
    xlabel, ylabel, title : str, optional
        Labels; the axis labels default to the column names.
    logx, logy : bool, default False
        Logarithmic axes.
    ax : matplotlib Axes, optional
        Draw there instead of on a new figure.

    Returns
    -------
    matplotlib.figure.Figure
        One line per hue value (one line without ``hue``), legend when ``hue`` is given.
    """
    _require_columns(frame, "frame", [x, y] + ([hue] if hue is not None else []))
    fig, ax = _figure_for(ax, (6.4, 4.0))
    groups = frame.groupby(hue, sort=False) if hue is not None else [(None, frame)]
    for name, part in groups:
        part = part.sort_values(x)
        label = str(name[0] if isinstance(name, tuple) else name) if hue is not None else None
        ax.plot(part[x].to_numpy(), part[y].to_numpy(), marker="o", markersize=3, label=label)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    _label(ax, xlabel or x, ylabel or y, title)
    if hue is not None:
        ax.legend(title=hue)
    return fig
