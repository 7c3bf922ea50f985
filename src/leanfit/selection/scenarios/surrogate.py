"""Non-convex models through a convex surrogate: trim by influence, retrain the real model.

Influence functions need a convex model; for a network the paper fits an L2 logistic
regression on the network's last-layer features (its *embeddings*) and uses that surrogate's
influence to decide which training samples to remove; the network itself is then retrained
without them. Two cases:

* ``"adult"``: a scikit-learn ``MLPClassifier`` on Adult (one-hot + standardized features).
  The surrogate is fitted on the MLP's penultimate-layer activations, computed from its
  fitted weights (:func:`mlp_hidden_features`); samples are trimmed by their influence on
  validation log-loss (utility) or on the validation demographic parity gap between sexes
  (fairness), and the MLP is retrained from the same initialization seed.
* ``"tweets"``: sentiment of tweets (negative vs positive; neutral tweets left out), with
  frozen MiniLM sentence embeddings (mean pooling of all-MiniLM-L6-v2's last hidden states)
  as features and a small MLP head as the classifier. The surrogate is a logistic
  regression on the embeddings (the last-layer features of the frozen encoder); tweets are
  trimmed by utility influence only: the corpus has no sensitive attribute.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn.base import clone
from sklearn.neural_network import MLPClassifier
from tqdm.auto import tqdm

from leanfit.checks import check_choice, check_fraction, check_int
from leanfit.datasets import load_tweets
from leanfit.exceptions import MissingResourceError, NotFittedError, bad_value
from leanfit.selection.influence import InfluenceSelector, make_preprocessor
from leanfit.selection.metrics import (
    accuracy,
    demographic_parity_difference,
    equal_opportunity_difference,
)
from leanfit.selection.objectives import DemographicParity
from leanfit.selection.policies.trimming import random_trim, trim
from leanfit.selection.scenarios._common import (
    ScenarioConfig,
    tabular_splits,
)

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SURROGATE_CASES = ("adult", "tweets")
_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda a: a,
    "relu": lambda a: np.maximum(a, 0.0),
    "tanh": np.tanh,
    "logistic": lambda a: 1.0 / (1.0 + np.exp(-a)),
}


def mlp_hidden_features(mlp: MLPClassifier, X: ArrayLike) -> np.ndarray:
    """Activations of the last hidden layer of a fitted ``MLPClassifier``, shape ``(n, h)``.

    ``H₀ = X``, ``Hₗ = act(Hₗ₋₁ Wₗ + bₗ)`` for the hidden layers (``coefs_[:-1]``,
    ``intercepts_[:-1]``, the network's own activation); the output layer then computes
    ``σ(H W_out + b_out)`` from the returned ``H``.
    """
    if not hasattr(mlp, "coefs_"):
        raise NotFittedError("mlp is not fitted yet; call fit first")
    act = _ACTIVATIONS[mlp.activation]
    hidden = np.asarray(X, dtype=np.float64)
    for weight, bias in zip(mlp.coefs_[:-1], mlp.intercepts_[:-1], strict=True):
        hidden = act(hidden @ weight + bias)
    return hidden


@lru_cache(maxsize=1)
def _minilm() -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    try:
        import torch  # noqa: F401
        from transformers import AutoModel, AutoTokenizer
    except ImportError as err:  # pragma: no cover - depends on the installed extras
        raise MissingResourceError(
            "text embeddings need torch and transformers: pip install 'leanfit[quantization]'"
        ) from err
    from leanfit.pretrained import model_path

    path = model_path("minilm")
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def embed_texts(
    texts: Sequence[str], *, batch_size: int = 64, progress: bool = False
) -> np.ndarray:
    """MiniLM sentence embeddings: mean of the last hidden states over real tokens.

    ``e = Σₜ mₜ hₜ / Σₜ mₜ`` with ``hₜ`` the final hidden state of token ``t`` and ``mₜ`` the
    attention mask (1 for real tokens, 0 for padding); texts are truncated to 128 tokens.
    Nothing is cached on disk.

    Returns
    -------
    ndarray of shape (n, 384), float64
        One row per text, in the order given.
    """
    import torch

    check_int("batch_size", batch_size, low=1)
    tokenizer, model = _minilm()
    texts = [str(t) for t in texts]
    order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths: less padding
    out = np.zeros((len(texts), model.config.hidden_size))
    starts = range(0, len(texts), batch_size)
    with torch.no_grad():
        for start in tqdm(starts, desc="embedding", disable=not progress):
            rows = order[start : start + batch_size]
            batch = tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                              max_length=128, return_tensors="pt")  # fmt: skip
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            out[rows] = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)).numpy()
    return out


def prediction_metrics(
    y_true: ArrayLike, y_pred: ArrayLike, s: ArrayLike | None = None
) -> dict[str, float]:
    """Accuracy, and with groups ``s`` (0/1) the signed / absolute DP gap and the EOP gap."""
    result = {"accuracy": accuracy(y_true, y_pred)}
    if s is not None:
        result["dp"] = demographic_parity_difference(y_true, y_pred, sensitive_features=s,
                                                     signed=True)  # fmt: skip
        result["dp_abs"] = abs(result["dp"])
        result["eop_abs"] = equal_opportunity_difference(y_true, y_pred, sensitive_features=s)
    return result


def _mlp(hidden: tuple[int, ...], seed: int) -> MLPClassifier:
    return MLPClassifier(hidden_layer_sizes=hidden, alpha=1e-3, early_stopping=True,
                         max_iter=300, random_state=seed)  # fmt: skip


def _surrogate(H: np.ndarray, y: np.ndarray) -> InfluenceSelector:
    """L2 logistic regression (λ = 1, intercept) on standardized features ``H``."""
    from sklearn.preprocessing import StandardScaler

    return InfluenceSelector(1.0, fit_intercept=True, preprocessor=StandardScaler()).fit(H, y)


@dataclass(frozen=True)
class SurrogateConfig(ScenarioConfig):
    """Settings of the surrogate scenario (see :func:`run_surrogate`).

    ``cases``: ``"adult"`` (MLP on Adult) and/or ``"tweets"`` (MLP head on MiniLM
    embeddings). ``hidden``: hidden layer sizes of both MLPs. ``budget_utility`` /
    ``budget_fairness``: fractions of the training data removed by each objective (fixed in
    advance, near the paper's Adult optima of about 1.5 % and 5 %). ``n_train``: Adult
    training rows (all if None); ``n_texts``: tweets used (split 60/20/20).
    """

    cases: tuple[str, ...] = SURROGATE_CASES
    hidden: tuple[int, ...] = (32,)
    budget_utility: float = 0.02
    budget_fairness: float = 0.05
    n_train: int | None = 15000
    n_texts: int = 4000

    QUICK: ClassVar[dict[str, object]] = {"n_train": 5000, "n_texts": 1500}

    def __post_init__(self) -> None:
        if not self.cases:
            raise bad_value("cases", self.cases, f"a non-empty subset of {list(SURROGATE_CASES)}")
        for case in self.cases:
            check_choice("cases", case, SURROGATE_CASES)
        for size in self.hidden:
            check_int("hidden", size, low=1)
        check_fraction("budget_utility", self.budget_utility, ends="()")
        check_fraction("budget_fairness", self.budget_fairness, ends="()")
        check_int("n_texts", self.n_texts, low=50)


def _trimmed_runs(
    case: str, mlp: MLPClassifier, X_train: np.ndarray, y_train: np.ndarray,
    keeps: dict[str, np.ndarray], evaluate: Callable[[MLPClassifier], dict[str, float]],
) -> list[dict]:  # fmt: skip
    """Retrain ``mlp`` (same initialization seed) on each keep-mask and evaluate it."""
    rows = []
    for method, keep in keeps.items():
        model = clone(mlp).fit(X_train[keep], y_train[keep]) if not keep.all() else mlp
        rows.append({"case": case, "method": method, "n_removed": int((~keep).sum()),
                     **evaluate(model)})  # fmt: skip
    return rows


def run_adult_mlp(config: SurrogateConfig, seed: int) -> list[dict]:
    """Case ``"adult"``: MLP, trimmed by the surrogate's utility and fairness influence."""
    rng = np.random.default_rng([seed, 6])
    train, val, test = tabular_splits("adult", rng, n_train=config.n_train)
    pre = make_preprocessor(train.X).fit(train.X)
    X_train, X_val, X_test = (
        np.asarray(pre.transform(d.X), dtype=float) for d in (train, val, test)
    )
    y_train = train.y.to_numpy()
    mlp = _mlp(config.hidden, seed).fit(X_train, y_train)
    surrogate = _surrogate(mlp_hidden_features(mlp, X_train), y_train)
    H_val = mlp_hidden_features(mlp, X_val)
    scores = surrogate.influence(
        H_val, val.y.to_numpy(), sensitive_features=val.s.to_numpy(),
        objective=["utility", DemographicParity(absolute=True)],
    )  # fmt: skip
    n = len(train)
    keeps = {
        "none": np.ones(n, dtype=bool),
        "random": random_trim(n, config.budget_fairness, random_state=rng),
        "influence-utility": trim(scores["utility"], config.budget_utility),
        "influence-fairness": trim(scores["fairness_abs"], config.budget_fairness),
    }
    y_test, s_test = test.y.to_numpy(), test.s.to_numpy()
    return _trimmed_runs(
        "adult", mlp, X_train, y_train, keeps,
        lambda model: prediction_metrics(y_test, model.predict(X_test), s_test),
    )  # fmt: skip


def tweet_subset(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """``n`` random negative or positive tweets: columns ``text``, ``y`` (1 = positive),
    ``confidence`` (the annotators' agreement, NaN where unknown)."""
    tweets = load_tweets()
    tweets = tweets[tweets["sentiment"].isin(["negative", "positive"])].reset_index(drop=True)
    picked = tweets.iloc[rng.choice(len(tweets), size=min(n, len(tweets)), replace=False)]
    return pd.DataFrame({
        "text": picked["text"].to_numpy(),
        "y": (picked["sentiment"] == "positive").to_numpy(dtype=np.int64),
        "confidence": picked["confidence"].to_numpy(dtype=float),
    })  # fmt: skip


@lru_cache(maxsize=2)
def tweet_embeddings(n: int, progress: bool = False) -> tuple[pd.DataFrame, np.ndarray]:
    """A fixed random subset of ``n`` tweets (:func:`tweet_subset` with seed 0) and their
    MiniLM embeddings, computed once per process (the seeds of an experiment vary the
    splits, not the tweets)."""
    tweets = tweet_subset(n, np.random.default_rng(0))
    return tweets, embed_texts(tweets["text"].tolist(), progress=progress)


def run_tweets_head(config: SurrogateConfig, seed: int) -> list[dict]:
    """Case ``"tweets"``: MLP head on MiniLM embeddings, trimmed by utility influence."""
    rng = np.random.default_rng([seed, 7])
    tweets, E = tweet_embeddings(config.n_texts)
    y = tweets["y"].to_numpy()
    cut = np.round(np.cumsum([0.6, 0.2]) * len(y)).astype(int)
    train, val, test = np.split(rng.permutation(len(y)), cut)
    head = _mlp(config.hidden, seed).fit(E[train], y[train])
    surrogate = _surrogate(E[train], y[train])
    scores = surrogate.influence(E[val], y[val], objective="utility")["utility"]
    n = len(train)
    keeps = {
        "none": np.ones(n, dtype=bool),
        "random": random_trim(n, config.budget_utility, random_state=rng),
        "influence-utility": trim(scores, config.budget_utility),
    }
    confidence = tweets["confidence"].to_numpy()[train]
    rows = _trimmed_runs(
        "tweets", head, E[train], y[train], keeps,
        lambda model: prediction_metrics(y[test], model.predict(E[test])),
    )  # fmt: skip
    for row, keep in zip(rows, keeps.values(), strict=True):
        row["removed_confidence"] = (
            float(np.nanmean(confidence[~keep])) if (~keep).any() else np.nan
        )
        row["kept_confidence"] = float(np.nanmean(confidence[keep]))
    return rows


def run_surrogate(config: SurrogateConfig, seed: int = 0) -> pd.DataFrame:
    """One run of the surrogate scenario: the cases of ``config.cases``.

    Returns
    -------
    DataFrame
        One row per (case, method): ``case``, ``method`` (``none``, ``random``,
        ``influence-utility``, and for Adult ``influence-fairness``), ``seed``,
        ``n_removed``, test ``accuracy``; for Adult ``dp``, ``dp_abs``, ``eop_abs`` (groups:
        sex); for tweets the mean annotator confidence of the removed and kept tweets.
        The random baseline removes as many samples as the fairness trimming (Adult) or the
        utility trimming (tweets).
    """
    runners = {"adult": run_adult_mlp, "tweets": run_tweets_head}
    rows = [row for case in config.cases for row in runners[case](config, seed)]
    frame = pd.DataFrame(rows)
    frame.insert(2, "seed", seed)
    return frame
