"""Text to tensors for fine-tuning: causal-LM blocks and labelled classification batches.

Two kinds of training data, both held in memory as tensors:

- causal LM: a ``LongTensor`` of shape ``(n_blocks, block_size)``, every block full (no padding),
  from :func:`causal_lm_blocks`;
- classification: a :class:`ClassificationData` (right-padded token ids, attention mask, integer
  labels and the label names they encode), from :func:`classification_data`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from leanfit.datasets import load_text, load_tweets
from leanfit.exceptions import BadInputError, bad_value

#: Built-in data sets: name -> (task, loader of a DataFrame, text column, label column).
BUILTIN_DATA: dict[str, tuple[str, Any, str, str | None]] = {
    "tweets": ("classification", load_tweets, "text", "sentiment"),
    "pride_and_prejudice": (
        "causal-lm",
        lambda: load_text("pride_and_prejudice"),
        "text",
        None,
    ),
}


def _check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise bad_value(name, value, f"an integer >= {minimum}")
    return int(value)


def _check_fraction(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise bad_value(name, value, "a number strictly between 0 and 1")
    return float(value)


def _require_columns(frame: object, **columns: str) -> pd.DataFrame:
    if not isinstance(frame, pd.DataFrame):
        raise bad_value("frame", type(frame).__name__, "a pandas DataFrame")
    for argument, column in columns.items():
        if column not in frame.columns:
            raise BadInputError(
                f"{argument} {column!r} is not a column of the data; "
                f"columns are {list(frame.columns)}"
            )
        if frame[column].isna().any():
            raise BadInputError(f"{argument} {column!r} has missing values")
    if len(frame) == 0:
        raise BadInputError("frame is empty; the data needs at least one row")
    return frame


def causal_lm_blocks(texts: Sequence[str], tokenizer: Any, block_size: int) -> torch.Tensor:
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
    block_size = _check_positive_int("block_size", block_size, minimum=2)
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
    frame = _require_columns(frame, chapter_column="chapter", text_column="text")
    held_out = _check_fraction("held_out", held_out)
    if len(frame) < 2:
        raise BadInputError(f"frame has {len(frame)} chapter; a split needs at least 2")
    ordered = frame.sort_values("chapter", kind="stable").reset_index(drop=True)
    n_held = min(len(ordered) - 1, max(1, round(held_out * len(ordered))))
    cut = len(ordered) - n_held
    return ordered.iloc[:cut].reset_index(drop=True), ordered.iloc[cut:].reset_index(drop=True)


def split_rows(
    frame: pd.DataFrame, eval_fraction: float = 0.1, *, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Shuffle rows with ``seed`` and split off ``max(1, round(eval_fraction * n))`` for evaluation.

    Returns
    -------
    (train, eval) : tuple of pandas.DataFrame
        Index reset; the same seed gives the same split.
    """
    if not isinstance(frame, pd.DataFrame):
        raise bad_value("frame", type(frame).__name__, "a pandas DataFrame")
    eval_fraction = _check_fraction("eval_fraction", eval_fraction)
    if len(frame) < 2:
        raise BadInputError(f"frame has {len(frame)} row(s); a split needs at least 2")
    order = np.random.default_rng(seed).permutation(len(frame))
    n_eval = min(len(frame) - 1, max(1, round(eval_fraction * len(frame))))
    shuffled = frame.iloc[order].reset_index(drop=True)
    return shuffled.iloc[n_eval:].reset_index(drop=True), shuffled.iloc[:n_eval].reset_index(
        drop=True
    )


@dataclass(frozen=True)
class ClassificationData:
    """Tokenized texts with integer labels.

    Attributes
    ----------
    input_ids : torch.LongTensor of shape (n, L)
        Right-padded token ids.
    attention_mask : torch.LongTensor of shape (n, L)
        1 on real tokens, 0 on padding.
    labels : torch.LongTensor of shape (n,)
        Class indices into ``label_names``.
    label_names : tuple of str
        ``label_names[k]`` is the original label encoded as ``k``.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    label_names: tuple[str, ...]

    def __post_init__(self) -> None:
        n = len(self.labels)
        if self.input_ids.ndim != 2 or self.input_ids.shape != self.attention_mask.shape:
            raise BadInputError(
                "input_ids and attention_mask must have the same 2-D shape; got "
                f"{tuple(self.input_ids.shape)} and {tuple(self.attention_mask.shape)}"
            )
        if self.input_ids.shape[0] != n or n == 0:
            raise BadInputError(
                f"labels must have one entry per row of input_ids ({self.input_ids.shape[0]}) "
                f"and at least one; got {n}"
            )
        if int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.label_names):
            raise BadInputError(f"labels must lie in [0, {len(self.label_names)})")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def max_length(self) -> int:
        """Length of the padded sequences (the truncation bound they respect)."""
        return int(self.input_ids.shape[1])

    def batch(self, indices: torch.Tensor | np.ndarray | Sequence[int]) -> dict[str, torch.Tensor]:
        """Rows ``indices`` as model inputs, without the columns that are padding in every row.

        Works for right and left padding alike: the kept columns are those where at least one
        of the rows has a real token.

        Returns
        -------
        dict with ``input_ids`` and ``attention_mask`` of shape (b, l) and ``labels`` of
        shape (b,), where ``l`` is the largest number of real tokens among the rows.
        """
        index = torch.as_tensor(indices, dtype=torch.long)
        mask = self.attention_mask[index]
        keep = mask.any(dim=0)
        return {
            "input_ids": self.input_ids[index][:, keep],
            "attention_mask": mask[:, keep],
            "labels": self.labels[index],
        }


def classification_data(
    frame: pd.DataFrame,
    tokenizer: Any,
    *,
    text_column: str = "text",
    label_column: str = "label",
    max_length: int = 128,
    label_names: Sequence[str] | None = None,
) -> ClassificationData:
    """Tokenize a labelled text table.

    Labels are compared by their string form. Without ``label_names`` the mapping is built
    from the data (sorted distinct labels -> 0, 1, ...) and needs at least two classes; pass
    the training data's ``label_names`` when encoding evaluation data so both use one mapping.

    Parameters
    ----------
    frame : pandas.DataFrame
    tokenizer : transformers tokenizer
    text_column, label_column : str
        Column names; neither may have missing values.
    max_length : int
        Texts are truncated to this many tokens (special tokens included).
    label_names : sequence of str, optional
        An existing mapping; a label outside it is an error.

    Raises
    ------
    BadInputError
        Missing column, empty frame, a single class (without ``label_names``), a label outside
        ``label_names``.
    """
    frame = _require_columns(frame, text_column=text_column, label_column=label_column)
    max_length = _check_positive_int("max_length", max_length, minimum=2)
    labels = frame[label_column].astype(str)
    if label_names is None:
        names = tuple(sorted(labels.unique()))
        if len(names) < 2:
            raise BadInputError(
                f"label_column {label_column!r} has a single class {names}; "
                "classification needs at least 2"
            )
    else:
        names = tuple(str(name) for name in label_names)
        unknown = sorted(set(labels) - set(names))
        if unknown:
            raise BadInputError(
                f"label_column {label_column!r} has labels {unknown[:5]} outside "
                f"label_names {list(names)}"
            )
    if getattr(tokenizer, "pad_token", None) is None:
        raise BadInputError(
            "tokenizer has no pad token; set one first, e.g. tokenizer.pad_token = "
            "tokenizer.eos_token"
        )
    codes = {name: k for k, name in enumerate(names)}
    encoded = tokenizer(
        frame[text_column].astype(str).tolist(),
        truncation=True,
        max_length=max_length,
        padding="longest",
        return_tensors="pt",
    )
    return ClassificationData(
        input_ids=encoded["input_ids"].long(),
        attention_mask=encoded["attention_mask"].long(),
        labels=torch.tensor([codes[label] for label in labels], dtype=torch.long),
        label_names=names,
    )


def fingerprint(data: torch.Tensor | ClassificationData) -> str:
    """SHA-256 of the data's tensors (and label names): equal data, equal fingerprint."""
    digest = hashlib.sha256()
    if isinstance(data, ClassificationData):
        tensors = [data.input_ids, data.attention_mask, data.labels]
        digest.update("\n".join(data.label_names).encode())
    else:
        tensors = [data]
    for tensor in tensors:
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def load_data(
    name: str,
    tokenizer: Any,
    *,
    max_length: int,
    eval_fraction: float = 0.1,
    seed: int = 0,
    max_examples: int | None = None,
) -> tuple[torch.Tensor | ClassificationData, torch.Tensor | ClassificationData]:
    """Training and evaluation data from a built-in data set.

    - ``"tweets"`` (classification of ``sentiment`` from ``text``): rows shuffled with
      ``seed``, ``eval_fraction`` of them for evaluation (:func:`split_rows`), texts truncated
      to ``max_length`` tokens;
    - ``"pride_and_prejudice"`` (causal LM): the last chapters held out
      (:func:`split_chapters`), blocks of ``max_length`` tokens (:func:`causal_lm_blocks`).

    Parameters
    ----------
    max_examples : int, optional
        Keep at most this many training and this many evaluation examples (rows or blocks,
        the first ones after the split).

    Returns
    -------
    (train, eval)
        Tensors of blocks (causal LM) or :class:`ClassificationData` (classification, eval
        encoded with the training label names).
    """
    if name not in BUILTIN_DATA:
        raise bad_value("name", name, f"one of {sorted(BUILTIN_DATA)}")
    if max_examples is not None:
        max_examples = _check_positive_int("max_examples", max_examples)
    task, loader, text_column, label_column = BUILTIN_DATA[name]
    frame = loader()
    if task == "causal-lm":
        train_frame, eval_frame = split_chapters(frame, held_out=eval_fraction)
        train_blocks, eval_blocks = (
            causal_lm_blocks(part[text_column].tolist(), tokenizer, max_length)[:max_examples]
            for part in (train_frame, eval_frame)
        )
        return train_blocks, eval_blocks
    train_frame, eval_frame = split_rows(frame, eval_fraction, seed=seed)
    train_frame, eval_frame = train_frame.iloc[:max_examples], eval_frame.iloc[:max_examples]
    assert label_column is not None  # every classification entry of BUILTIN_DATA names one
    train = classification_data(
        train_frame,
        tokenizer,
        text_column=text_column,
        label_column=label_column,
        max_length=max_length,
    )
    evaluation = classification_data(
        eval_frame,
        tokenizer,
        text_column=text_column,
        label_column=label_column,
        max_length=max_length,
        label_names=train.label_names,
    )
    return train, evaluation
