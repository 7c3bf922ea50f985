"""Text data sets (a tweet-sentiment corpus and a novel with its chapters), a user's text file
as chapters, the held-out split of a book, and causal-LM token blocks; shared by calibrated
quantization (:mod:`leanfit.pipeline.calibration`) and fine-tuning (:mod:`leanfit.finetune`)."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from leanfit.checks import check_fraction, check_int
from leanfit.datasets._files import read_vendored
from leanfit.exceptions import BadInputError, bad_value

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


def require_columns(frame: object, **columns: str) -> pd.DataFrame:
    if not isinstance(frame, pd.DataFrame):
        raise bad_value("frame", type(frame).__name__, "a pandas DataFrame")
    for argument, column in columns.items():
        if column not in frame.columns:
            raise BadInputError(
                f"{argument} {column!r} is not a column of the data; "
                f"columns are {list(frame.columns)}",
                param=argument,
                value=column,
            )
        if frame[column].isna().any():
            raise BadInputError(
                f"{argument} {column!r} has missing values", param=argument, value=column
            )
    if len(frame) == 0:
        raise BadInputError("frame is empty; the data needs at least one row")
    return frame


def causal_lm_blocks(texts: Sequence[str], tokenizer: Any, block_size: int) -> Any:
    """Token blocks for causal-LM training: texts joined by EOS and cut into equal lengths.

    Each text is tokenized without special tokens, followed by the tokenizer's EOS token, and
    the results are concatenated into one stream ``t_0, t_1, ..., t_{N-1}``. Block ``i`` is
    ``t[i*block_size : (i+1)*block_size]``; the ``N mod block_size`` tokens left at the end
    are dropped. Inside a block token ``j`` is predicted from tokens ``0..j-1`` of the same
    block, so ``block_size - 1`` tokens per block are scored.

    Parameters
    ----------
    texts : sequence of str
    tokenizer : transformers tokenizer
        Must define ``eos_token_id``.
    block_size : int
        Tokens per block, at least 2 (one context token and one target).

    Returns
    -------
    torch.LongTensor of shape (n_blocks, block_size)

    Raises
    ------
    BadInputError
        ``block_size`` < 2, ``texts`` empty or not strings, no EOS token, or fewer than
        ``block_size`` tokens in total.
    """
    block_size = check_int("block_size", block_size, low=2)
    if isinstance(texts, str):
        raise bad_value("texts", texts[:40], "a sequence of strings, not one string")
    texts = list(texts)
    if not texts or not all(isinstance(text, str) for text in texts):
        raise bad_value("texts", texts[:3], "a non-empty sequence of strings")
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise BadInputError("tokenizer has no eos_token_id; causal-LM blocks need one")
    encoded = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    stream = [token for ids in encoded for token in [*ids, eos]]
    n_blocks = len(stream) // block_size
    if n_blocks == 0:
        raise BadInputError(f"texts give {len(stream)} tokens, fewer than block_size={block_size}")
    import torch  # only this function needs torch; the data sets do not

    return torch.tensor(stream[: n_blocks * block_size], dtype=torch.long).view(n_blocks, -1)


def paragraph_chapters(path: Path, what: str) -> pd.DataFrame:
    """A UTF-8 text file as a book of one "chapter" per paragraph (blank-line separated,
    empty ones dropped): columns ``chapter`` and ``text``, as :func:`split_chapters` takes.
    ``what`` names the file in the error for text that is not UTF-8."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise BadInputError(f"{what} {str(path)!r} is not UTF-8 text: {err}") from err
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    return pd.DataFrame({"chapter": range(len(paragraphs)), "text": paragraphs})


def split_chapters(frame: pd.DataFrame, held_out: float = 0.1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a book (one row per chapter) into training and held-out chapters.

    The held-out part is the last ``max(1, round(held_out * n_chapters))`` chapters in chapter
    order, the training part the chapters before them: deterministic, and no passage of the
    held-out text is seen in training.

    Parameters
    ----------
    frame : pandas.DataFrame
        Columns ``chapter`` and ``text``, as returned by :func:`leanfit.datasets.load_text`.
    held_out : float in (0, 1)

    Returns
    -------
    (train, held_out) : tuple of pandas.DataFrame
        Both sorted by chapter, index reset.
    """
    frame = require_columns(frame, chapter_column="chapter", text_column="text")
    held_out = check_fraction("held_out", held_out, ends="()")
    if len(frame) < 2:
        raise BadInputError(f"frame has {len(frame)} chapter; a split needs at least 2")
    ordered = frame.sort_values("chapter", kind="stable").reset_index(drop=True)
    n_held = min(len(ordered) - 1, max(1, round(held_out * len(ordered))))
    cut = len(ordered) - n_held
    return ordered.iloc[:cut].reset_index(drop=True), ordered.iloc[cut:].reset_index(drop=True)
