"""Evaluating a fine-tuned model: perplexity, classification metrics, fidelity to a reference.

Every function runs the model(s) in eval mode without gradients and restores their previous
train/eval mode afterwards. Inputs are moved to the device of each model's first parameter.
Models are called as Hugging Face models are: ``model(input_ids=..., ...)`` returning an
object with ``logits`` (and ``hidden_states`` when asked for them); a ``peft.PeftModel``
qualifies.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from leanfit.checks import check_int
from leanfit.exceptions import BadInputError, bad_value
from leanfit.finetune.losses import causal_lm_loss, row_chunks, split_causal_lm, token_nll

if TYPE_CHECKING:
    from leanfit.finetune.data import ClassificationData


@contextlib.contextmanager
def _inference(*models: torch.nn.Module) -> Iterator[None]:
    """Eval mode and no gradients for the body; previous modes restored afterwards."""
    modes = [model.training for model in models]
    for model in models:
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for model, mode in zip(models, modes, strict=True):
            model.train(mode)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _check_token_ids(name: str, token_ids: object, ndim: int) -> torch.Tensor:
    if not isinstance(token_ids, torch.Tensor) or token_ids.dtype != torch.long:
        raise bad_value(name, type(token_ids).__name__, "a torch.LongTensor")
    if token_ids.ndim != ndim or token_ids.numel() == 0:
        raise bad_value(name, tuple(token_ids.shape), f"a non-empty {ndim}-D tensor")
    return token_ids


def _batches(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def sliding_windows(n_tokens: int, *, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows of the sliding-window perplexity and the tokens each one scores.

    Window ``k`` covers tokens ``[b_k, e_k)`` with ``b_k = k * stride`` and
    ``e_k = min(b_k + max_length, n_tokens)``; windows are added until one reaches the end.
    It scores the tokens ``[s_k, e_k)`` with ``s_0 = 1`` and ``s_k = e_{k-1}`` (the tokens no
    earlier window scored). Hence every token but the first is scored exactly once, and the
    first token scored by window ``k > 0`` sees ``max_length - stride`` tokens of context
    inside the window; later tokens of the window see more, up to ``max_length - 1``.

    Parameters
    ----------
    n_tokens : int, >= 2
    max_length : int, >= 2
        Window length (tokens the model sees at once).
    stride : int, 1 <= stride < max_length
        Shift between windows. ``stride < max_length`` keeps at least one context token
        before each window's first scored token.

    Returns
    -------
    list of (begin, end, first_scored)
    """
    n_tokens = check_int("n_tokens", n_tokens, low=2)
    max_length = check_int("max_length", max_length, low=2)
    stride = check_int("stride", stride, low=1)
    if stride >= max_length:
        raise bad_value("stride", stride, f"an int in [1, {max_length - 1}] (below max_length)")
    windows = []
    scored_until = 1
    for begin in range(0, n_tokens, stride):
        end = min(begin + max_length, n_tokens)
        windows.append((begin, end, scored_until))
        scored_until = end
        if end == n_tokens:
            break
    return windows


def perplexity(
    model: torch.nn.Module,
    token_ids: torch.Tensor,
    *,
    max_length: int,
    stride: int,
    progress: bool = False,
) -> float:
    """Sliding-window perplexity of a causal LM on one token sequence.

    ``PPL = exp(-(1/(N-1)) Σ_{t=1}^{N-1} log p(t_t | context_t))``: each token after the first
    is scored once, by the window of :func:`sliding_windows` that first contains it, with the
    tokens of that window before it as context (at least ``max_length - stride`` of them when
    the window starts after the sequence start). A smaller stride gives more context and
    costs more forward passes; ``max_length >= N`` gives the plain full-context perplexity.
    The logits of a window are computed a chunk of tokens at a time
    (:func:`~leanfit.finetune.losses.token_nll`).

    Parameters
    ----------
    model : causal LM
    token_ids : torch.LongTensor of shape (N,), N >= 2
    max_length, stride : int
        See :func:`sliding_windows`.
    progress : bool
        Show a tqdm bar over the windows.

    Returns
    -------
    float
    """
    token_ids = _check_token_ids("token_ids", token_ids, ndim=1)
    windows = sliding_windows(len(token_ids), max_length=max_length, stride=stride)
    device = _device(model)
    total = 0.0
    with _inference(model):
        split = split_causal_lm(model, token_ids[: windows[0][1]].to(device))
        for begin, end, first in tqdm(windows, disable=not progress, desc="perplexity"):
            window = token_ids[begin:end].to(device)
            features = split.features(window[None])[0]
            scored = features[first - begin - 1 : end - begin - 1]
            total += float(token_nll(split, scored, window[first - begin : end - begin]))
    return math.exp(total / (len(token_ids) - 1))


def causal_lm_metrics(
    model: torch.nn.Module, blocks: torch.Tensor, *, batch_size: int = 8
) -> dict[str, float]:
    """Mean next-token NLL and perplexity over independent blocks.

    Each block is its own context (no information crosses blocks); ``L - 1`` tokens per block
    are scored, all with equal weight.

    Parameters
    ----------
    blocks : torch.LongTensor of shape (n, L)

    Returns
    -------
    dict with ``loss`` (mean NLL in nats) and ``perplexity`` (``exp(loss)``)
    """
    blocks = _check_token_ids("blocks", blocks, ndim=2)
    batch_size = check_int("batch_size", batch_size, low=1)
    if blocks.shape[1] < 2:
        raise bad_value("blocks", tuple(blocks.shape), "blocks of at least 2 tokens")
    device = _device(model)
    total = 0.0
    with _inference(model):
        split = split_causal_lm(model, blocks[:1].to(device))
        for part in _batches(len(blocks), batch_size):
            ids = blocks[part].to(device)
            total += float(causal_lm_loss(split, ids)) * len(ids)
    loss = total / len(blocks)
    return {"loss": loss, "perplexity": math.exp(loss)}


def macro_f1(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray) -> float:
    """Unweighted mean over classes of ``F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c)``.

    The classes are those present in ``y_true`` or ``y_pred`` (scikit-learn's default for
    ``f1_score(average="macro")``), so each has a non-zero denominator.
    """
    truth, pred = np.asarray(y_true), np.asarray(y_pred)
    if truth.shape != pred.shape or truth.ndim != 1 or truth.size == 0:
        raise BadInputError(
            f"y_true and y_pred must be non-empty 1-D arrays of one shape; got "
            f"{truth.shape} and {pred.shape}"
        )
    scores = []
    for label in np.union1d(truth, pred):
        tp = np.sum((truth == label) & (pred == label))
        wrong = np.sum((truth == label) != (pred == label))
        scores.append(2 * tp / (2 * tp + wrong))
    return float(np.mean(scores))


def classification_logits(
    model: torch.nn.Module, data: ClassificationData, *, batch_size: int = 32
) -> torch.Tensor:
    """Logits of a sequence classifier, float32 on the CPU, shape (n, n_classes)."""
    batch_size = check_int("batch_size", batch_size, low=1)
    device = _device(model)
    outputs = []
    with _inference(model):
        for part in _batches(len(data), batch_size):
            batch = data.batch(range(part.start, part.stop))
            logits = model(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
            ).logits
            outputs.append(logits.float().cpu())
    logits = torch.cat(outputs)
    if logits.shape[-1] != len(data.label_names):
        raise BadInputError(
            f"model predicts {logits.shape[-1]} classes but data has "
            f"{len(data.label_names)} labels {list(data.label_names)}"
        )
    return logits


def classification_metrics(
    model: torch.nn.Module, data: ClassificationData, *, batch_size: int = 32
) -> dict[str, float]:
    """Cross-entropy, accuracy and macro-F1 of a sequence classifier.

    Predictions are ``argmax`` of the logits. ``macro_f1`` follows :func:`macro_f1`.

    Returns
    -------
    dict with ``loss`` (mean cross-entropy in nats), ``accuracy`` and ``macro_f1``
    """
    logits = classification_logits(model, data, batch_size=batch_size)
    predicted = logits.argmax(dim=-1)
    return {
        "loss": float(F.cross_entropy(logits, data.labels)),
        "accuracy": float((predicted == data.labels).double().mean()),
        "macro_f1": macro_f1(data.labels.numpy(), predicted.numpy()),
    }


def next_token_kl(
    model: torch.nn.Module,
    reference: torch.nn.Module,
    token_ids: torch.Tensor,
    *,
    batch_size: int = 4,
) -> float:
    """Mean KL divergence from the reference's next-token distribution to the model's.

    ``KL = (1/(n L)) Σ_{i,j} Σ_v p_ref(v | c_ij) [log p_ref(v | c_ij) - log p(v | c_ij)]``
    with context ``c_ij = t_{i,0..j}``, over every position ``j`` of every block ``i`` (nats,
    >= 0, 0 iff the distributions are equal). Sign convention: large when the model puts
    little mass where the reference puts much. Evaluated in float64 from float32 logits,
    a chunk of positions at a time (:mod:`leanfit.finetune.losses`).

    Parameters
    ----------
    model, reference : causal LMs with the same vocabulary
    token_ids : torch.LongTensor of shape (n, L)
        Blocks, e.g. from :func:`leanfit.finetune.data.causal_lm_blocks`.
    batch_size : int
        Blocks per forward pass.

    Returns
    -------
    float
    """
    token_ids = _check_token_ids("token_ids", token_ids, ndim=2)
    batch_size = check_int("batch_size", batch_size, low=1)
    total = 0.0
    with _inference(model, reference):
        probe = token_ids[:1]
        split = split_causal_lm(model, probe.to(_device(model)))
        split_ref = split_causal_lm(reference, probe.to(_device(reference)))
        if split.vocab != split_ref.vocab:
            raise BadInputError(
                f"model and reference disagree on the logits' shape: vocabularies of "
                f"{split.vocab} and {split_ref.vocab}"
            )
        for part in _batches(len(token_ids), batch_size):
            ids = token_ids[part]
            features = split.features(ids.to(_device(model))).flatten(0, 1)
            features_ref = split_ref.features(ids.to(_device(reference))).flatten(0, 1)
            for rows in row_chunks(len(features), split, split_ref):
                log_p = torch.log_softmax(split.head(features[rows]).cpu().double(), dim=-1)
                logits_ref = split_ref.head(features_ref[rows]).cpu().double()
                log_p_ref = torch.log_softmax(logits_ref, dim=-1)
                total += float((log_p_ref.exp() * (log_p_ref - log_p)).sum())
    return total / token_ids.numel()


def _mean_embeddings(model: torch.nn.Module, encoded: dict[str, torch.Tensor]) -> torch.Tensor:
    device = _device(model)
    inputs = {key: value.to(device) for key, value in encoded.items()}
    hidden = model(**inputs, output_hidden_states=True).hidden_states[-1].double().cpu()
    mask = encoded["attention_mask"].double()[..., None]
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1)


def embedding_cosine(
    model: torch.nn.Module,
    reference: torch.nn.Module,
    texts: Sequence[str],
    tokenizer: Any,
    *,
    max_length: int = 128,
    batch_size: int = 32,
) -> float:
    """Mean cosine similarity of mean-pooled last-layer embeddings of an encoder and a reference.

    For text ``i`` with real-token mask ``m`` and last hidden states ``h`` (shape (L, H)) the
    embedding is ``e = Σ_j m_j h_j / Σ_j m_j`` (padding excluded); the result is
    ``(1/n) Σ_i cos(e_i^model, e_i^ref)`` in [-1, 1], 1 when the embeddings are parallel.

    Parameters
    ----------
    model, reference : encoders accepting ``output_hidden_states=True``
    texts : sequence of str
    tokenizer : transformers tokenizer shared by both models
    max_length : int
        Texts are truncated to this many tokens.
    batch_size : int

    Returns
    -------
    float
    """
    if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts):
        raise bad_value(
            "texts",
            texts if isinstance(texts, str) else list(texts)[:3],
            "a non-empty sequence of strings",
        )
    max_length = check_int("max_length", max_length, low=2)
    batch_size = check_int("batch_size", batch_size, low=1)
    texts = list(texts)
    cosines = []
    with _inference(model, reference):
        for part in _batches(len(texts), batch_size):
            encoded = dict(
                tokenizer(
                    texts[part],
                    truncation=True,
                    max_length=max_length,
                    padding=True,
                    return_tensors="pt",
                )
            )
            cosines.append(
                F.cosine_similarity(
                    _mean_embeddings(model, encoded), _mean_embeddings(reference, encoded), dim=-1
                )
            )
    return float(torch.cat(cosines).mean())
