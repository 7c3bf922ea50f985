"""Text data sets: a tweet-sentiment corpus and a novel with its chapters."""

from __future__ import annotations

import io
import re

import pandas as pd

from leanfit.datasets._files import read_vendored
from leanfit.exceptions import BadInputError

TEXTS = {"pride_and_prejudice": "pride_and_prejudice.txt"}
CHAPTER_HEADING = re.compile(r"^Chapter (\d+)$")


def load_tweets() -> pd.DataFrame:
    """Tweet sentiment corpus (38,158 tweets).

    Returns
    -------
    pandas.DataFrame
        Columns ``text`` (str), ``sentiment`` (``"negative"``, ``"neutral"``, ``"positive"``)
        and ``confidence`` (float in [0, 1], the annotators' agreement). Invalid UTF-8 in the
        source was replaced by U+FFFD when the file was vendored.
    """
    text = read_vendored("tweets.csv").decode("utf-8")
    frame = pd.read_csv(io.StringIO(text), keep_default_na=False, dtype=str)
    frame["confidence"] = pd.to_numeric(frame["confidence"], errors="coerce")
    return frame[["text", "sentiment", "confidence"]]


def load_text(name: str) -> pd.DataFrame:
    """A public-domain book, one row per chapter.

    Parameters
    ----------
    name : {"pride_and_prejudice"}

    Returns
    -------
    pandas.DataFrame
        Columns ``chapter`` (int, from 1) and ``text`` (str: the chapter's lines joined with
        newlines, heading excluded, paragraphs separated by blank lines). The title page
        before chapter 1 is dropped.
    """
    if name not in TEXTS:
        raise BadInputError(f"name must be one of {sorted(TEXTS)}; got {name!r}")
    lines = read_vendored(TEXTS[name]).decode("utf-8").splitlines()
    chapters: list[tuple[int, list[str]]] = []
    for line in lines:
        heading = CHAPTER_HEADING.match(line.strip())
        if heading:
            chapters.append((int(heading.group(1)), []))
        elif chapters:
            chapters[-1][1].append(line)
    return pd.DataFrame(
        {
            "chapter": [number for number, _ in chapters],
            "text": ["\n".join(body).strip() + "\n" for _, body in chapters],
        }
    )
