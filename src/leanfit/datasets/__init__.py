"""Real data sets vendored with leanfit (see ``SOURCES.md`` for origin and licence)."""

from leanfit.datasets.tabular import (
    TabularDataset,
    load_adult,
    load_arrests,
    load_bank,
    load_compas,
    load_csv,
    load_german,
)
from leanfit.datasets.text import load_text, load_tweets

TABULAR = {
    "adult": load_adult,
    "bank": load_bank,
    "german": load_german,
    "compas": load_compas,
    "arrests": load_arrests,
}

__all__ = [
    "TABULAR",
    "TabularDataset",
    "load_adult",
    "load_arrests",
    "load_bank",
    "load_compas",
    "load_csv",
    "load_german",
    "load_text",
    "load_tweets",
]
