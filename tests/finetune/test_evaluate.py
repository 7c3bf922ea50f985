"""Evaluation: sliding-window perplexity, classification metrics, fidelity to a reference."""

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from peft import LoraConfig, get_peft_model
from sklearn.metrics import accuracy_score, f1_score
from transformers import AutoModel, AutoModelForSequenceClassification

from leanfit.datasets import load_text, load_tweets
from leanfit.exceptions import BadInputError
from leanfit.finetune.data import classification_data
from leanfit.finetune.evaluate import (
    causal_lm_metrics,
    classification_logits,
    classification_metrics,
    embedding_cosine,
    macro_f1,
    next_token_kl,
    perplexity,
    sliding_windows,
)
from leanfit.pretrained import model_path


@pytest.fixture(scope="module")
def chapter_one_ids(smollm2_model):
    tokenizer = smollm2_model[1]
    text = load_text("pride_and_prejudice")["text"][0]
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)


# ---------------------------------------------------------------- perplexity


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 300), st.integers(2, 80), st.data())
def test_sliding_windows_score_every_token_once(n_tokens, max_length, data):
    stride = data.draw(st.integers(1, max_length - 1))
    windows = sliding_windows(n_tokens, max_length=max_length, stride=stride)
    scored = [t for _, end, first in windows for t in range(first, end)]
    assert scored == list(range(1, n_tokens))  # every token but the first, once, in order
    for k, (begin, end, first) in enumerate(windows):
        assert begin == k * stride and 0 < end - begin <= max_length
        if k > 0:  # earlier windows are full, so the context before `first` is exact
            assert first - begin == max_length - stride
    assert windows[-1][1] == n_tokens


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n_tokens": 10, "max_length": 8, "stride": 8}, "stride"),
        ({"n_tokens": 10, "max_length": 8, "stride": 0}, "stride"),
        ({"n_tokens": 1, "max_length": 8, "stride": 4}, "n_tokens"),
        ({"n_tokens": 10, "max_length": 1, "stride": 1}, "max_length"),
    ],
)
def test_sliding_windows_reject_bad_input(kwargs, name):
    with pytest.raises(BadInputError, match=name):
        sliding_windows(**kwargs)


def test_full_window_perplexity_is_exp_mean_nll(smollm2_model, chapter_one_ids):
    model = smollm2_model[0]
    ids = chapter_one_ids[:60]
    with torch.no_grad():
        logits = model(input_ids=ids[None]).logits[0]
        direct = math.exp(float(F.cross_entropy(logits[:-1], ids[1:])))
        hugging_face = math.exp(float(model(input_ids=ids[None], labels=ids[None]).loss))
    got = perplexity(model, ids, max_length=60, stride=1)
    # One window, the same forward pass: only the summation order of 59 float32 NLLs
    # differs (float64 sum here, float32 mean in cross_entropy).
    assert got == pytest.approx(direct, rel=1e-6)
    assert got == pytest.approx(hugging_face, rel=1e-6)
    assert perplexity(model, ids, max_length=1000, stride=999) == got  # a longer window, same


def test_perplexity_falls_as_context_grows(smollm2_model, chapter_one_ids):
    model = smollm2_model[0]
    ids = chapter_one_ids[:192]
    full = perplexity(model, ids, max_length=192, stride=1)
    strided = [perplexity(model, ids, max_length=48, stride=s) for s in (16, 32, 47)]
    # The first scored token of each window sees 48 - stride tokens of context, so a larger
    # stride means less context and a worse model of the text. Observed on 320 tokens with
    # windows of 64: 17.9 (full), 21.1, 23.3, 26.8, 36.0 for strides 16, 32, 48, 63.
    assert full < strided[0] < strided[1] < strided[2]


def test_perplexity_rejects_bad_token_ids(smollm2_model, chapter_one_ids):
    model = smollm2_model[0]
    with pytest.raises(BadInputError, match="token_ids"):
        perplexity(model, chapter_one_ids[None, :10], max_length=8, stride=4)
    with pytest.raises(BadInputError, match="token_ids"):
        perplexity(model, chapter_one_ids[:10].float(), max_length=8, stride=4)
    with pytest.raises(BadInputError, match="n_tokens"):
        perplexity(model, chapter_one_ids[:1], max_length=8, stride=4)


def test_causal_lm_metrics_average_block_nll(tiny_llama):
    model = tiny_llama(0)
    blocks = torch.randint(0, 64, (5, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        per_block = [
            float(F.cross_entropy(model(input_ids=b[None]).logits[0, :-1], b[1:])) for b in blocks
        ]
    metrics = causal_lm_metrics(model, blocks, batch_size=2)
    # Batches of 2, 2, 1 versus one block at a time: float32 rounding only.
    assert metrics["loss"] == pytest.approx(np.mean(per_block), rel=1e-6)
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]), rel=1e-12)


# ---------------------------------------------------------------- classification


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=40))
def test_macro_f1_matches_scikit_learn(pairs):
    truth, pred = np.array(pairs).T
    assert macro_f1(truth, pred) == pytest.approx(
        f1_score(truth, pred, average="macro", zero_division=0.0), abs=1e-12
    )


def test_macro_f1_rejects_mismatched_arrays():
    with pytest.raises(BadInputError, match="y_true and y_pred"):
        macro_f1([0, 1], [0])


def test_classification_metrics_agree_with_scikit_learn(minilm_tokenizer):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(model_path("minilm"), num_labels=3)
    data = classification_data(
        load_tweets().sample(48, random_state=0),
        minilm_tokenizer,
        label_column="sentiment",
        max_length=48,
    )
    logits = classification_logits(model, data, batch_size=16)
    with torch.no_grad():  # all rows at once, padded to the longest of all 48
        direct = model.eval()(input_ids=data.input_ids, attention_mask=data.attention_mask).logits
    # Padding differs between the two (trimmed per batch vs global) and is masked out:
    # float32 rounding only.
    torch.testing.assert_close(logits, direct, rtol=1e-5, atol=1e-5)
    predicted = logits.argmax(dim=-1).numpy()
    metrics = classification_metrics(model, data, batch_size=16)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(data.labels, predicted), abs=1e-12)
    assert metrics["macro_f1"] == pytest.approx(
        f1_score(data.labels, predicted, average="macro"), abs=1e-12
    )
    assert metrics["loss"] == pytest.approx(float(F.cross_entropy(direct, data.labels)), rel=1e-5)


# ---------------------------------------------------------------- fidelity


class FixedNextToken(torch.nn.Module):
    """A bigram 'language model': the logits for the next token depend on the current one."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(torch.as_tensor(table, dtype=torch.float32))

    def forward(self, input_ids, **_):
        return SimpleNamespace(logits=self.table[input_ids])


def test_next_token_kl_closed_form():
    rng = np.random.default_rng(0)
    table, table_ref = rng.normal(size=(2, 5, 5))
    model, reference = FixedNextToken(table), FixedNextToken(table_ref)
    ids = torch.tensor([[0, 3, 3, 1], [4, 2, 0, 0]])

    def softmax(x):
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    p, p_ref = softmax(table[ids.numpy()]), softmax(table_ref[ids.numpy()])
    expected = float(np.mean(np.sum(p_ref * (np.log(p_ref) - np.log(p)), axis=-1)))
    # Logits are stored in float32: the tables round to 1e-7 relative, nothing else.
    assert next_token_kl(model, reference, ids, batch_size=1) == pytest.approx(expected, rel=1e-6)
    # KL is not symmetric: the arguments are (model, reference) for KL(p_ref || p_model).
    reverse = float(np.mean(np.sum(p * (np.log(p) - np.log(p_ref)), axis=-1)))
    assert next_token_kl(reference, model, ids) == pytest.approx(reverse, rel=1e-6)
    assert abs(expected - reverse) > 1e-3
    assert next_token_kl(model, model, ids) == 0.0
    with pytest.raises(BadInputError, match="logits' shape"):
        next_token_kl(model, FixedNextToken(np.zeros((5, 7))), ids)


def test_next_token_kl_of_lora_against_its_base(smollm2_model, fresh_smollm2, chapter_one_ids):
    base = smollm2_model[0]
    blocks = chapter_one_ids[:64].view(2, 32)
    model = get_peft_model(fresh_smollm2, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    # PEFT starts LoRA with B = 0: the adapted model is exactly the base model.
    assert next_token_kl(model, base, blocks) == 0.0
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    kl = next_token_kl(model, base, blocks)
    # A small perturbation of 60 projections moves the distributions a little, not a lot.
    assert 0.0 < kl < 1.0
    with pytest.raises(BadInputError, match="token_ids"):
        next_token_kl(model, base, chapter_one_ids[:32])


def test_embedding_cosine_of_lora_encoders(minilm_tokenizer):
    texts = load_tweets()["text"].iloc[:12].tolist()
    base = AutoModel.from_pretrained(model_path("minilm"))
    model = get_peft_model(
        AutoModel.from_pretrained(model_path("minilm")),
        LoraConfig(r=4, target_modules=["query", "value"]),
    )
    # Same weights (B = 0), same inputs: identical embeddings; cosine 1 up to float64 rounding.
    assert embedding_cosine(model, base, texts, minilm_tokenizer) == pytest.approx(1.0, abs=1e-12)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    batched = embedding_cosine(model, base, texts, minilm_tokenizer, batch_size=5)
    single = embedding_cosine(model, base, texts, minilm_tokenizer, batch_size=1)
    assert 0.5 < batched < 1.0 - 1e-4
    # Batches of one have no padding; batches of five do. Masked mean pooling makes them
    # agree up to float32 rounding of the forward pass.
    assert batched == pytest.approx(single, abs=1e-6)
    with pytest.raises(BadInputError, match="texts"):
        embedding_cosine(model, base, [], minilm_tokenizer)
    with pytest.raises(BadInputError, match="texts"):
        embedding_cosine(model, base, "one text", minilm_tokenizer)


def test_evaluation_restores_the_training_mode(tiny_llama):
    model = tiny_llama(0).train()
    blocks = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    causal_lm_metrics(model, blocks)
    assert model.training
    model.eval()
    perplexity(model, blocks[0], max_length=4, stride=2)
    assert not model.training


def test_classification_logits_reject_a_model_with_other_classes(minilm_tokenizer):
    model = AutoModelForSequenceClassification.from_pretrained(model_path("minilm"), num_labels=2)
    frame = pd.DataFrame({"text": ["a", "b", "c"], "label": ["x", "y", "z"]})
    data = classification_data(frame, minilm_tokenizer)
    with pytest.raises(BadInputError, match="model predicts 2 classes but data has 3"):
        classification_metrics(model, data)
