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
from typing import Any

import numpy as np
import pandas as pd
import torch

from leanfit.checks import check_fraction, check_int
from leanfit.datasets import load_text, load_tweets
from leanfit.datasets.text import causal_lm_blocks, require_columns, split_chapters
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
    eval_fraction = check_fraction("eval_fraction", eval_fraction, ends="()")
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
    frame = require_columns(frame, text_column=text_column, label_column=label_column)
    max_length = check_int("max_length", max_length, low=2)
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
        max_examples = check_int("max_examples", max_examples, low=1)
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
