"""Report helpers shared by leanfit's parts: markdown tables and reports, headless PNG figures."""

from leanfit.reports.markdown import Image, markdown_table, write_report
from leanfit.reports.plots import (
    error_bars_by_layer,
    influence_histogram,
    line_plot,
    new_figure,
    save_figure,
    trimming_curves,
)

__all__ = [
    "Image",
    "error_bars_by_layer",
    "influence_histogram",
    "line_plot",
    "markdown_table",
    "new_figure",
    "save_figure",
    "trimming_curves",
    "write_report",
]
