"""Calibration for calibrated LoftQ: the input Gram matrix of every target, block by block.

Calibrated LoftQ (``LoftQConfig(calibration=...)``) fits each LoRA initialization to the
layer's outputs on calibration text, ``min ‖X (W − Q − L R)ᵀ‖_F``, which needs the Gram
``G = XᵀX`` (``n_in × n_in``) of the layer's inputs ``X`` (one row per calibration token)
(:mod:`leanfit.quantization.whitening`). The inputs of block ``i`` are what the model computes
once blocks ``0 … i−1`` are quantized: ``Q + s·B·A`` in place of ``W``. So
:class:`BlockCalibrator` runs the calibration tokens through the model one decoder block at a
time, holding only the hidden states (``n_tokens × hidden``), one block's weights and its
Grams (float64):

1. the embeddings of the tokens;
2. for block ``i``: build it from the checkpoint's full-precision weights, run the hidden
   states through it and accumulate each target's ``XᵀX`` (float64) from its input;
3. the walker quantizes the block's targets with those Grams and hands back each effective
   weight ``Q + s·B·A``;
4. rebuild block ``i`` with the effective weights, run the hidden states through it: they are
   the inputs of block ``i + 1``. The block is then let go.

Calibration text (:func:`calibration_texts`) never overlaps the held-out text of
``leanfit finetune`` / ``leanfit evaluate`` (:func:`leanfit.datasets.text.split_chapters`,
last 10 % of the chapters or paragraphs held out): it is taken from the start of the part
before them. For the built-in book, chapters 1–55 are that part and 56–61 are held out;
the default 2,048 tokens come from chapters 1–2.
"""

from __future__ import annotations

import copy
import re
import weakref
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from leanfit.checkpoints.targets import Target
from leanfit.exceptions import BadInputError, MissingResourceError, bad_value

BUILTIN_TEXTS = ("pride_and_prejudice",)
"""Built-in calibration texts (:func:`leanfit.datasets.load_text`)."""

SUPPORTED_MODEL_TYPES = ("llama",)
"""Model types whose blocks :class:`BlockCalibrator` can run one at a time (transformers'
``LlamaDecoderLayer``; tested on SmolLM2 and tiny random llamas)."""

SEQUENCE_LENGTH = 256
"""Tokens per calibration sequence (fewer when ``calib_tokens`` is smaller)."""

HELD_OUT = 0.1
"""Fraction of the chapters (paragraphs of a text file) kept out of calibration: the same
held-out part as ``leanfit finetune``'s default ``eval_fraction``."""

_BLOCK = re.compile(r"^(?P<prefix>(?:.*\.)?layers\.)(?P<index>\d+)\.(?P<rest>.+)$")


def calibration_texts(source: str) -> list[str]:
    """The texts calibration may use: the part of a book before its held-out chapters.

    Parameters
    ----------
    source : str
        ``"pride_and_prejudice"`` (chapters 1–55 of the built-in book; 56–61 are held out),
        or a UTF-8 text file, split into paragraphs on blank lines as ``leanfit finetune``
        splits it; its last 10 % of paragraphs are left out.

    Raises
    ------
    MissingResourceError
        ``source`` is neither a built-in name nor an existing file.
    BadInputError
        The text has no paragraph to calibrate on.
    """

    from leanfit.datasets import load_text
    from leanfit.datasets.text import paragraph_chapters, split_chapters

    if not isinstance(source, str):
        raise bad_value("calibration", source, f"one of {BUILTIN_TEXTS} or a text file path")
    if source in BUILTIN_TEXTS:
        frame = load_text(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise MissingResourceError(
                f"calibration must be one of {list(BUILTIN_TEXTS)} or an existing text file; "
                f"got {source!r}, which is neither",
                param="calibration",
                value=source,
            )
        frame = paragraph_chapters(path, "calibration file")
        if len(frame) < 2:
            raise BadInputError(
                f"calibration file {source!r} has {len(frame)} paragraph(s); it needs at "
                "least 2 (blank-line separated), the last 10 % being held out"
            )
    train, _ = split_chapters(frame, held_out=HELD_OUT)
    return train["text"].tolist()


def calibration_tokens(
    texts: Sequence[str], tokenizer: Any, n_tokens: int, *, seq_len: int = SEQUENCE_LENGTH
) -> Tensor:
    """The first ``n_tokens`` calibration tokens as sequences: ``(⌊n/L⌋, L)``, L = min(seq_len, n).

    Texts are joined by EOS (:func:`leanfit.datasets.text.causal_lm_blocks`); tokens beyond
    the last whole sequence are dropped.

    Raises
    ------
    BadInputError
        ``n_tokens`` < 2, or more tokens asked for than the texts hold.
    """
    from leanfit.datasets.text import causal_lm_blocks

    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 2:
        raise bad_value("calib_tokens", n_tokens, "an int >= 2")
    length = min(seq_len, n_tokens)
    wanted = n_tokens // length
    try:
        blocks = causal_lm_blocks(texts, tokenizer, length)
    except BadInputError as err:  # fewer tokens than one sequence
        blocks, reason = torch.zeros(0, length, dtype=torch.long), f" ({err})"
    else:
        reason = f" ({len(blocks) * length:,} tokens in sequences of {length})"
    if len(blocks) < wanted:
        raise BadInputError(
            "calib_tokens must be at most the number of tokens of the calibration text (its "
            f"part before the held-out 10 %){reason}; got {n_tokens:,}"
        )
    return blocks[:wanted]


def source_tokenizer(source: Any) -> Any:
    """The tokenizer of a checkpoint
    (:meth:`leanfit.checkpoints.base.Checkpoint.tokenizer`)."""
    if not callable(getattr(source, "tokenizer", None)):
        raise BadInputError(
            "calibration needs a checkpoint with a tokenizer (quantize_checkpoint on a "
            f"transformers directory or a GGUF file); got a {type(source).__name__}"
        )
    return source.tokenizer()


def check_calibratable(model_type: str, targets: Iterable[Target]) -> None:
    """Refuse a model or targets that :class:`BlockCalibrator` cannot run block by block."""
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise BadInputError(
            f"calibration runs the model block by block, which is implemented for model types "
            f"{list(SUPPORTED_MODEL_TYPES)} (e.g. SmolLM2); got {model_type!r}. Quantize it "
            "without calibration (plain LoftQ)"
        )
    for target in targets:
        if target.kind != "linear" or target.transposed or not _BLOCK.match(target.name):
            raise BadInputError(
                f"calibration needs every target to be a linear layer inside a decoder block "
                f"(...layers.N...); got {target.name!r}"
            )


class BlockCalibrator:
    """Input Grams of the targets, computed one decoder block at a time (see module docstring).

    Parameters
    ----------
    source : Checkpoint
        An open checkpoint (:func:`leanfit.checkpoints.source.open_checkpoint`) with a
        ``config`` of a :data:`SUPPORTED_MODEL_TYPES` model.
    targets : list of Target
        The weights being quantized; every one inside a block.
    input_ids : LongTensor, shape (n_sequences, L)
        Calibration tokens (:func:`calibration_tokens`).
    batch_size : int
        Sequences per forward pass.

    Use: for the targets in :meth:`order`, ``gram(target)`` (float64, in × in) before
    quantizing it, ``record(target, effective_weight)`` after. Asking for a target of a later
    block first finishes the current one: all its targets must have been recorded.
    """

    def __init__(
        self, source: Any, targets: Sequence[Target], input_ids: Tensor, *, batch_size: int = 8
    ) -> None:
        check_calibratable(source.model_type, targets)
        if (
            not isinstance(input_ids, Tensor)
            or input_ids.dtype != torch.long
            or input_ids.ndim != 2
        ):
            raise bad_value(
                "input_ids", getattr(input_ids, "shape", type(input_ids)), "a 2-D LongTensor"
            )
        self.source = source
        self.config = copy.deepcopy(source.config)
        self.config._attn_implementation = "sdpa"  # causal attention without a mask tensor
        self.batch_size = batch_size
        self._by_block: dict[int, list[Target]] = defaultdict(list)
        prefixes = set()
        for target in targets:
            found = _BLOCK.match(target.name)
            assert found is not None  # check_calibratable matched every name
            prefixes.add(found["prefix"])
            self._by_block[int(found["index"])].append(target)
        if len(prefixes) != 1:
            raise BadInputError(f"calibration needs one stack of blocks; got {sorted(prefixes)}")
        self._prefix = prefixes.pop()
        self._names = source.names()
        self._hidden = self._embed(input_ids)
        self._position_ids = torch.arange(input_ids.shape[1])[None]
        self._position = self._rotary()
        self._done = 0  # self._hidden holds the input of block self._done
        self._current: int | None = None
        self._grams: dict[str, Tensor] = {}
        self._effective: dict[str, Tensor] = {}
        self.built: list[weakref.ref[nn.Module]] = []
        """Weak references to every block built (one live at a time, at most)."""

    def order(self, names: Sequence[str]) -> list[str]:
        """``names`` with the targets moved after the other tensors, block by block."""
        block_of = {t.name: i for i, ts in self._by_block.items() for t in ts}
        others = [n for n in names if n not in block_of]
        ranked = sorted((block_of[n], k) for k, n in enumerate(names) if n in block_of)
        return others + [names[k] for _, k in ranked]

    def gram(self, target: Target) -> Tensor:
        """``XᵀX`` (float64, n_in × n_in) of the target's calibration inputs."""
        index = self._index(target)
        if index != self._current:
            if self._current is not None and index < self._current:
                raise BadInputError(
                    f"calibration visits blocks in order; {target.name!r} (block {index}) "
                    f"comes after block {self._current}"
                )
            self._advance_to(index)
            self._grams = self._collect(index)
            self._current = index
        return self._grams[target.name]

    def record(self, target: Target, effective_weight: Tensor) -> None:
        """The quantized target's ``Q + s·B·A`` (n_out × n_in), used for the next blocks."""
        if self._index(target) != self._current:
            raise BadInputError(f"record {target.name!r} after asking for its gram")
        self._effective[target.name] = effective_weight.detach().float()

    def _index(self, target: Target) -> int:
        found = _BLOCK.match(target.name)
        if found is None or int(found["index"]) not in self._by_block:
            raise bad_value("target", target.name, "one of the targets given to the calibrator")
        return int(found["index"])

    def _advance_to(self, index: int) -> None:
        """Run the hidden states through the blocks before ``index`` not run yet (the current
        one with its recorded effective weights)."""
        if self._current is not None:
            missing = [
                t.name for t in self._by_block[self._current] if t.name not in self._effective
            ]
            if missing:
                raise BadInputError(
                    f"block {self._current} must be finished before block {index}: no "
                    f"effective weight recorded for {missing[:3]}"
                )
        while self._done < index:
            replaced = self._effective if self._done == self._current else {}
            layer = self._build(self._done, replaced)
            self._hidden = self._run(layer, self._hidden)
            del layer
            self._done += 1
        self._effective = {}
        self._grams = {}

    def _collect(self, index: int) -> dict[str, Tensor]:
        """Run block ``index`` (full precision) and accumulate its targets' input Grams.

        Targets fed the same tensor (q, k, v; gate, up) share one Gram: the first of them
        to see it in the first batch accumulates it, the others point to it.
        """
        layer = self._build(index, {})
        grams: dict[str, Tensor] = {}
        owner: dict[str, str] = {}  # a target -> the target whose Gram it shares
        seen: dict[int, tuple[Tensor, str]] = {}  # id(input) -> (input, first target), per batch

        def hook(name: str) -> Any:
            def accumulate(module: nn.Module, args: tuple[Tensor, ...]) -> None:
                x = args[0]
                hit = seen.get(id(x))
                if name in owner or (hit is not None and hit[0] is x):
                    owner.setdefault(name, hit[1] if hit is not None else name)
                    return
                seen[id(x)] = (x, name)
                flat = x.reshape(-1, x.shape[-1]).double()
                if name in grams:
                    grams[name].addmm_(flat.T, flat)
                else:
                    grams[name] = flat.T @ flat

            return accumulate

        handles = [
            layer.get_submodule(self._local(t.module)).register_forward_pre_hook(hook(t.name))
            for t in self._by_block[index]
        ]
        try:
            self._run(layer, self._hidden, after_batch=seen.clear)
        finally:
            for handle in handles:
                handle.remove()
        return {t.name: grams[owner.get(t.name, t.name)] for t in self._by_block[index]}

    def _local(self, name: str) -> str:
        """A name inside its block: ``model.layers.3.mlp.up_proj`` → ``mlp.up_proj``."""
        found = _BLOCK.match(name)
        assert found is not None
        return found["rest"]

    def _build(self, index: int, replaced: dict[str, Tensor]) -> nn.Module:
        """Decoder block ``index`` from the checkpoint, with ``replaced`` weights swapped in."""
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer

        start = f"{self._prefix}{index}."
        state = {
            name[len(start) :]: replaced.get(name) if name in replaced else self.source.read(name)
            for name in self._names
            if name.startswith(start)
        }
        with torch.device("meta"):
            layer = LlamaDecoderLayer(self.config, index)
        layer.load_state_dict(state, strict=True, assign=True)
        self.built.append(weakref.ref(layer))
        return layer.eval()

    def _embed(self, input_ids: Tensor) -> Tensor:
        name = self._prefix.removesuffix("layers.") + "embed_tokens.weight"
        if name not in self._names:
            raise BadInputError(f"calibration needs the token embeddings {name!r}; not found")
        table = self.source.read(name)
        if int(input_ids.max()) >= table.shape[0]:
            raise BadInputError(
                f"calibration token ids reach {int(input_ids.max())}, beyond the "
                f"{table.shape[0]} embeddings: the tokenizer does not match the model"
            )
        return table[input_ids].float()

    def _rotary(self) -> tuple[Tensor, Tensor]:
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        rotary = LlamaRotaryEmbedding(self.config)
        with torch.no_grad():
            cos, sin = rotary(self._hidden[:1], self._position_ids)
        return cos, sin

    def _run(self, layer: nn.Module, hidden: Tensor, after_batch: Any = None) -> Tensor:
        outputs = []
        with torch.no_grad():
            for start in range(0, hidden.shape[0], self.batch_size):
                batch = hidden[start : start + self.batch_size]
                outputs.append(
                    layer(
                        batch,
                        attention_mask=None,
                        position_ids=self._position_ids,
                        position_embeddings=self._position,
                    )
                )
                if after_batch is not None:
                    after_batch()
        return torch.cat(outputs)
