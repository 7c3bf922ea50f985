"""Next-token losses of causal LMs that never hold the logits of every token at once.

A causal LM maps token ids (b, L) to hidden states (b, L, H) and then, through its output
head, to logits (b, L, V). With a vocabulary of V = 49,152 (SmolLM2) the logits of a batch of
2 × 512 tokens take 200 MB in float32, as much again for their gradient — more than the
LoRA adapter, the packed backbone and the activations of a checkpointed model together.
:class:`CausalLMSplit` runs the model up to the hidden states, and :func:`token_nll` applies
the head to at most :data:`CHUNK_ELEMENTS` logits at a time; under autograd each chunk is
recomputed in backward (``torch.utils.checkpoint``), so only one chunk's logits exist at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

logger = logging.getLogger(__name__)

#: Logit values (tokens × vocabulary) computed at once: 2²² float32 numbers, 16 MiB.
CHUNK_ELEMENTS = 2**22

#: Tokens of the probe that checks a split against the model's own logits.
PROBE_TOKENS = 8


@dataclass(frozen=True)
class CausalLMSplit:
    """A causal LM cut before its output head: ``logits = head(features(input_ids))``.

    Attributes
    ----------
    features : callable
        ``input_ids`` (b, L) -> (b, L, H): the last hidden states (after the final norm), or
        the logits themselves when the model could not be split (then ``head`` is the
        identity and nothing is saved).
    head : callable
        (n, H) -> (n, V) logits.
    vocab : int
        V.
    chunk : int
        Tokens per head application, ``max(1, CHUNK_ELEMENTS // V)``.
    """

    features: Callable[[Tensor], Tensor]
    head: Callable[[Tensor], Tensor]
    vocab: int

    @property
    def chunk(self) -> int:
        return max(1, CHUNK_ELEMENTS // self.vocab)

    @property
    def is_split(self) -> bool:
        return not isinstance(self.head, nn.Identity)


def _parts(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(decoder, output head) of a transformers causal LM (a ``PeftModel`` on one included)."""
    get_base = getattr(model, "get_base_model", None)
    base = get_base() if callable(get_base) else model
    get_decoder = getattr(base, "get_decoder", None)
    get_head = getattr(base, "get_output_embeddings", None)
    if not callable(get_decoder) or not callable(get_head):
        return None
    try:
        decoder, head = get_decoder(), get_head()
    except (AttributeError, NotImplementedError, ValueError):
        return None
    if not isinstance(decoder, nn.Module) or not isinstance(head, nn.Module) or decoder is base:
        return None
    return decoder, head


def split_causal_lm(model: nn.Module, probe: Tensor) -> CausalLMSplit:
    """Cut ``model`` before its output head, checked on ``probe`` tokens.

    The split is used only if ``head(decoder(probe).last_hidden_state)`` reproduces
    ``model(input_ids=probe).logits`` (relative 1e-4 of their largest magnitude: the same
    operations, summed in another order at most). A model that computes anything after its
    head (e.g. Gemma 2's logit soft-capping), or is not a transformers causal LM, falls back
    to its plain logits with identity head: correct, but without the memory saving.

    Parameters
    ----------
    model : causal LM called as ``model(input_ids=...)`` returning ``.logits``
    probe : torch.LongTensor of shape (b, L)
        Tokens to check with; only the first :data:`PROBE_TOKENS` of the first row are used.
    """
    ids = probe.reshape(-1)[:PROBE_TOKENS][None]
    parts = _parts(model)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            reference = model(input_ids=ids).logits.float()
            same = parts is not None and _reproduces(*parts, ids, reference)
    finally:
        model.train(training)
    if parts is not None and same:
        decoder, head = parts
        return CausalLMSplit(
            features=lambda x: decoder(input_ids=x).last_hidden_state,
            head=head,
            vocab=reference.shape[-1],
        )
    logger.info(
        "%s cannot be cut before its output head; its loss holds the logits of every token",
        type(model).__name__,
    )
    return unsplit(model, reference.shape[-1])


def _reproduces(decoder: nn.Module, head: nn.Module, ids: Tensor, reference: Tensor) -> bool:
    """Whether ``head(decoder(ids).last_hidden_state)`` equals ``reference`` to 1e-4 of its
    largest magnitude (the same operations, summed in another order at most)."""
    hidden = getattr(decoder(input_ids=ids), "last_hidden_state", None)
    if not isinstance(hidden, Tensor) or hidden.shape[:2] != ids.shape:
        return False
    logits = head(hidden).float()
    scale = float(reference.abs().max()) or 1.0
    return logits.shape == reference.shape and bool(
        (logits - reference).abs().max() <= 1e-4 * scale
    )


def unsplit(model: nn.Module, vocab: int) -> CausalLMSplit:
    """The whole model as ``features`` (its logits) with the identity as head: the plain
    computation, holding every token's logits."""
    return CausalLMSplit(
        features=lambda x: model(input_ids=x).logits, head=nn.Identity(), vocab=vocab
    )


def _nll_sum(head: Callable[[Tensor], Tensor], features: Tensor, targets: Tensor) -> Tensor:
    return F.cross_entropy(head(features).float(), targets, reduction="sum")


def token_nll(split: CausalLMSplit, features: Tensor, targets: Tensor) -> Tensor:
    """``Σ_i -log softmax(head(features_i))[targets_i]`` in float32, chunk by chunk.

    Parameters
    ----------
    split : CausalLMSplit
    features : torch.Tensor of shape (n, H)
        Rows of ``split.features`` (the position whose next token is predicted).
    targets : torch.LongTensor of shape (n,)

    Returns
    -------
    torch.Tensor, float64 scalar (the chunks' float32 sums added in float64; differentiable:
    under autograd each chunk's logits are recomputed in backward, so at most one chunk's
    logits and their gradient exist at a time)
    """
    targets = targets.to(features.device)
    total = features.new_zeros((), dtype=torch.float64)  # a scalar: summed without rounding
    grad = torch.is_grad_enabled() and features.requires_grad and split.is_split
    for rows in row_chunks(len(features), split):
        if grad:
            part = checkpoint(
                _nll_sum, split.head, features[rows], targets[rows], use_reentrant=False
            )
        else:
            part = _nll_sum(split.head, features[rows], targets[rows])
        total = total + part
    return total


def causal_lm_loss(split: CausalLMSplit, input_ids: Tensor) -> Tensor:
    """Mean next-token NLL of blocks, ``-(1/(b (L-1))) Σ_i Σ_{j≥1} log p(t_ij | t_i,<j)``.

    The same value as ``F.cross_entropy`` on the full logits, up to float32 summation order;
    see :func:`token_nll` for memory.

    Parameters
    ----------
    split : CausalLMSplit
    input_ids : torch.LongTensor of shape (b, L), L >= 2
    """
    features = split.features(input_ids)
    rows = features[:, :-1].reshape(-1, features.shape[-1])
    targets = input_ids[:, 1:].reshape(-1)
    return token_nll(split, rows, targets) / len(targets)


def row_chunks(n: int, *splits: CausalLMSplit) -> Iterator[slice]:
    """Consecutive slices of ``range(n)`` small enough for the head of every split."""
    chunk = min(split.chunk for split in splits)
    for start in range(0, n, chunk):
        yield slice(start, min(start + chunk, n))
