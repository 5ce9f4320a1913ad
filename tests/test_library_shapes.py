"""Shape mismatches classified by what the key is, each fix tried by torch."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import pytorch_buffers as pb

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may download
transformers = pytest.importorskip("transformers")


def flat(text: object) -> str:
    return " ".join(str(text).split())


def bert(**changes: int) -> nn.Module:
    settings = {
        "vocab_size": 64,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 32,
        "num_labels": 3,
    } | changes
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(
        transformers.BertConfig(**settings)
    )


def advice(report: pb.StateDictReport, key: str) -> str:
    return next(r.advice for r in report.shape_mismatches if r.key == key)


def test_an_output_head_of_other_classes_is_dropped_and_stays_random():
    state = bert().state_dict()
    report = pb.explain_state_dict(bert(num_labels=5), state)
    assert "an output head of another size" in advice(report, "classifier.weight")
    text = flat(report)
    assert "k not in {'classifier.weight', 'classifier.bias'}" in text
    assert "then load_state_dict(strict=False) loads" in text
    assert "2 tensor(s) keep their initial (random) values" in text
    # torch: strict=False raises; after the drop it loads, the head missing.
    with pytest.raises(RuntimeError, match="size mismatch"):
        bert(num_labels=5).load_state_dict(state, strict=False)
    kept = {
        k: v
        for k, v in state.items()
        if k not in {"classifier.weight", "classifier.bias"}
    }
    result = bert(num_labels=5).load_state_dict(kept, strict=False)
    assert set(result.missing_keys) == {"classifier.weight", "classifier.bias"}


def test_a_position_table_and_a_vocabulary_are_told_apart():
    longer = pb.explain_state_dict(
        bert(max_position_embeddings=64), bert().state_dict()
    )
    key = "bert.embeddings.position_embeddings.weight"
    assert "a position table of another length" in advice(longer, key)
    vocab = pb.explain_state_dict(bert(vocab_size=80), bert().state_dict())
    key = "bert.embeddings.word_embeddings.weight"
    assert "a vocabulary of another size" in advice(vocab, key)
    assert "the checkpoint's vocabulary size to load it" in advice(vocab, key)
    # torch: a model built with the checkpoint's size loads strictly.
    assert "A module built with the checkpoint's shapes loads it" in flat(vocab)
    bert().load_state_dict(bert().state_dict(), strict=True)


def test_flip_a_reshape_that_does_not_fit_is_not_claimed():
    """Mis-shaped keys plus a renamed one: the checkpoint's shapes alone do not load."""
    state = bert().state_dict()
    state["extra.weight"] = torch.zeros(1)
    report = pb.explain_state_dict(bert(num_labels=5), state)
    assert "A module built with the checkpoint's shapes loads it" not in flat(report)


def test_a_bidirectional_lstm_is_a_configuration_difference():
    saved = nn.LSTM(4, 8, bidirectional=True).state_dict()
    report = pb.explain_state_dict(nn.LSTM(4, 8), saved)
    assert report.unexpected
    assert all(r.key.endswith("_reverse") for r in report.unexpected)
    assert "build it with bidirectional=True" in flat(report)
    result = nn.LSTM(4, 8).load_state_dict(saved, strict=False)
    assert {r.key for r in report.unexpected} == set(result.unexpected_keys)
    nn.LSTM(4, 8, bidirectional=True).load_state_dict(saved)  # the fix, for real
    back = pb.explain_state_dict(
        nn.LSTM(4, 8, bidirectional=True), nn.LSTM(4, 8).state_dict()
    )
    assert "build it with bidirectional=False" in flat(back)
