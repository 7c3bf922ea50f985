"""Headless report figures: what they draw and the PNG they write."""

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.container import BarContainer
from PIL import Image

from leanfit.exceptions import BadInputError
from leanfit.reports import (
    error_bars_by_layer,
    influence_histogram,
    line_plot,
    new_figure,
    save_figure,
    trimming_curves,
)
from leanfit.reports.plots import DPI


def png_size_and_dpi(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size, image.info["dpi"]


def test_save_figure_writes_a_png_at_the_stated_resolution(tmp_path):
    fig, ax = new_figure((6.4, 4.0))
    ax.plot([0, 1], [0, 1])
    ax.set_xlabel("x")
    path = save_figure(fig, tmp_path / "a" / "line.png")
    (width, height), dpi = png_size_and_dpi(path)
    # PNG stores pixels per metre as an integer: 120 dpi reads back as 119.99
    assert dpi == pytest.approx((DPI, DPI), abs=0.05)
    # the tight bounding box trims the figure's empty margins (≤ 20 % here) and adds nothing
    assert 0.8 * 6.4 * DPI <= width <= 6.4 * DPI and 0.8 * 4.0 * DPI <= height <= 4.0 * DPI
    with pytest.raises(BadInputError, match="exists"):
        save_figure(fig, path)
    with pytest.raises(BadInputError, match=r"\.png"):
        save_figure(fig, tmp_path / "line.jpg")


def test_library_figures_leave_pyplot_alone_and_pyplot_figures_are_closed(tmp_path):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    influence_histogram(np.arange(10.0))
    assert plt.get_fignums() == before  # not registered with pyplot, no window
    fig, ax = plt.subplots()
    line_plot(pd.DataFrame({"x": [1, 2], "y": [3, 4]}), x="x", y="y", ax=ax)
    save_figure(fig, tmp_path / "p.png")
    assert plt.get_fignums() == before
    assert isinstance(new_figure()[0].canvas, FigureCanvasAgg)


def test_influence_histogram_one_histogram_per_group(tmp_path):
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.2, 1, 300), rng.normal(-0.4, 1, 100)])
    groups = np.array(["Male"] * 300 + ["Female"] * 100)
    fig = influence_histogram(values, groups, bins=20)
    ax = fig.axes[0]
    assert len(ax.patches) == 2  # stepfilled: one polygon per group
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["Female (n=100)", "Male (n=300)"]
    assert len(ax.lines) == 1 and tuple(ax.lines[0].get_xdata()) == (0, 0)  # the zero line
    path = save_figure(fig, tmp_path / "hist.png")
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=int)
    inked = (np.abs(pixels - 255).sum(axis=-1) > 30).mean()
    # the filled histograms cover a good part of the axes: ~25 % of the pixels are not white,
    # against ~3 % for empty axes with their ticks and labels
    assert inked > 0.1
    with pytest.raises(BadInputError, match="groups"):
        influence_histogram(values, groups[:-1])


def test_trimming_curves_mean_and_band_per_method():
    rows = [
        {"method": m, "seed": s, "budget": b, "accuracy": 0.8 + (0.01 * b if m == "dp" else 0) + s}
        for m in ("dp", "random")
        for s in (0.0, 0.002, 0.004)
        for b in (0, 1, 2)
    ]
    fig = trimming_curves(pd.DataFrame(rows))
    ax = fig.axes[0]
    assert len(ax.lines) == 2 and len(ax.collections) == 2
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [0.802, 0.812, 0.822])
    # band = mean ± sample std over seeds (0, 0.002, 0.004): std 0.002
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx(0.800) and band.max() == pytest.approx(0.824)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "dp (3 seeds)",
        "random (3 seeds)",
    ]
    with pytest.raises(BadInputError, match="seed"):
        trimming_curves(pd.DataFrame(rows).drop(columns="seed"))


def test_error_bars_by_layer_bars_per_method():
    frame = pd.DataFrame(
        {
            "layer": ["q", "q", "k", "k", "v"],
            "method": ["QLoRA", "LoftQ", "QLoRA", "LoftQ", "QLoRA"],
            "error": [0.2, 0.1, 0.3, 0.15, 0.25],
        }
    )
    ax = error_bars_by_layer(frame).axes[0]
    containers = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [len(c) for c in containers] == [3, 3]
    heights = [[bar.get_height() for bar in c] for c in containers]
    assert heights[0] == [0.2, 0.3, 0.25] and heights[1][:2] == [0.1, 0.15]
    assert np.isnan(heights[1][2])  # LoftQ has no "v": a gap
    assert [t.get_text() for t in ax.get_xticklabels()] == ["q", "k", "v"]


def test_line_plot_one_line_per_hue():
    frame = pd.DataFrame(
        {"rank": [16, 8, 16, 8], "err": [1.0, 2.0, 0.5, 1.5], "bits": [2, 2, 4, 4]}
    )
    ax = line_plot(frame, x="rank", y="err", hue="bits", logy=True).axes[0]
    assert len(ax.lines) == 2 and ax.get_yscale() == "log"
    assert list(ax.lines[0].get_xdata()) == [8, 16]  # sorted by x
    assert ax.get_legend().get_title().get_text() == "bits"
