"""The paper's experimental protocol on Adult (Chhabra et al., ICLR 2024).

As in the authors' code: rows with a missing value (``"?"``) are dropped from both files,
``fnlwgt`` is dropped, the remaining columns are one-hot encoded (two-valued ``sex`` as one
0/1 column) and standardized (102 columns), the model is an L2 logistic regression with
λ = 2.2622 and no intercept, trained on all 30,162 complete rows of ``adult.data``; the
15,060 complete rows of ``adult.test`` are split 50/50 (shuffled, seed 42000) into test (the
first part) and validation (the second).

One deliberate difference: the authors fit the standardization on the first 75 % of the
training rows only (a leftover of a train/validation split they later undo); here it is
fitted on all training rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from sklearn.model_selection import train_test_split

from leanfit.datasets import TabularDataset, load_adult

#: λ of the paper's Adult model.
ADULT_L2_REG = 2.2622
#: Columns the paper drops from Adult.
ADULT_DROPPED = ("fnlwgt",)


@dataclass(frozen=True)
class ProtocolSplit:
    """Train / validation / test tables and the model settings of a protocol."""

    train: TabularDataset
    val: TabularDataset
    test: TabularDataset
    l2_reg: float
    fit_intercept: bool


def _complete(ds: TabularDataset, frame, name: str) -> TabularDataset:
    return TabularDataset(
        frame.reset_index(drop=True),
        ds.target,
        ds.positive,
        ds.sensitive,
        ds.privileged,
        name=name,
    )


def adult_protocol(random_state: int = 42000) -> ProtocolSplit:
    """Adult prepared as in the paper (see the module docstring).

    Returns
    -------
    ProtocolSplit
        ``train`` (30,162 rows), ``val`` and ``test`` (7,530 rows each), without
        ``fnlwgt`` and without missing values; ``l2_reg = 2.2622``, ``fit_intercept =
        False``. Use ``.X``, ``.y`` and ``.s`` of each part; the default preprocessing
        (:func:`leanfit.selection.make_preprocessor`) then gives the paper's features.
    """
    train = load_adult("train")
    test = load_adult("test")
    train_frame = train.frame.dropna().drop(columns=list(ADULT_DROPPED))
    test_frame = test.frame.dropna().drop(columns=list(ADULT_DROPPED))
    test_part, val_part = train_test_split(
        test_frame, test_size=0.5, random_state=random_state, shuffle=True
    )
    return ProtocolSplit(
        train=_complete(train, train_frame, "adult-train"),
        val=_complete(test, val_part, "adult-val"),
        test=_complete(test, test_part, "adult-test"),
        l2_reg=ADULT_L2_REG,
        fit_intercept=False,
    )
