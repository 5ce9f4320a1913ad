"""Checkpoints as users have them: nested, sharded, pickled modules; checked against torch."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

import pytorch_buffers as pb

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may download


def flat(text: object) -> str:
    return " ".join(str(text).split())


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))


def test_the_state_dict_is_found_at_any_depth_behind_a_config():
    state = mlp().state_dict()
    checkpoint = {
        "config": {"hidden": 8, "lr": 0.1},  # the first entry: a config
        "best_accuracy": torch.tensor(0.91),  # a 0-dim metric at the top level
        "run": {"epoch": 3, "weights": {"model": state}},
    }
    report = pb.explain_state_dict(mlp(), checkpoint)
    assert report.loads_strict
    assert "checkpoint['run']['weights']['model'] (9 tensors)" in flat(report)
    mlp().load_state_dict(checkpoint["run"]["weights"]["model"])  # torch agrees
    with pytest.raises(RuntimeError, match="Unexpected key"):
        mlp().load_state_dict(checkpoint)  # the top level is not it


def test_the_entry_with_the_most_matching_tensors_wins(tmp_path: Path):
    state = mlp().state_dict()
    partial = {k: v for k, v in state.items() if k.startswith("0.")}
    checkpoint = {"ema": partial, "model": state, "optimizer": {"state": {}}}
    path = tmp_path / "last.ckpt"
    torch.save(checkpoint, path)
    report = pb.explain_state_dict(mlp(), path)
    assert report.loads_strict
    assert "checkpoint['model']" in flat(report)


def test_flip_choosing_by_position_would_be_wrong():
    state = mlp().state_dict()
    partial = {k: v for k, v in state.items() if k.startswith("0.")}
    by_position = pb.explain_state_dict(
        mlp(), {"ema": partial, "model": state}, key="ema"
    )
    assert not by_position.loads_strict  # the first entry is not the state dict


def test_a_lightning_checkpoint_with_a_model_prefix():
    state = {f"model.{k}": v for k, v in mlp().state_dict().items()}
    checkpoint = {"epoch": 3, "global_step": 30, "state_dict": state}
    checkpoint["optimizer_states"] = [{"state": {}, "param_groups": []}]
    report = pb.explain_state_dict(mlp(), checkpoint)
    assert "checkpoint['state_dict']" in flat(report)
    assert report.prefix_fix is not None
    assert report.prefix_fix.prefix == "model."
    assert report.prefix_fix.loads_strict_after


def test_a_pickled_module_gets_the_trusted_file_recipe(tmp_path: Path):
    path = tmp_path / "whole.pt"
    torch.save(mlp(), path)
    with pytest.raises(ValueError, match="pickles a whole module") as caught:
        pb.explain_state_dict(mlp(), path)
    message = str(caught.value)
    assert "torch.load(path, weights_only=False).state_dict()" in message
    assert "\x1b" not in message
    assert "Sequential" in message
    # The recipe, done for real on this trusted file, gives a state dict that loads.
    state = torch.load(path, weights_only=False).state_dict()
    assert pb.explain_state_dict(mlp(), state).loads_strict


class Settings:
    lr = 0.1


def test_torch_text_comes_without_escapes_and_in_whole_sentences(tmp_path: Path):
    path = tmp_path / "odd.pt"
    torch.save({"0.weight": torch.ones(8, 4), "settings": Settings()}, path)
    with pytest.raises(ValueError, match="weights_only") as caught:
        pb.explain_state_dict(mlp(), path)
    message = str(caught.value)
    assert "\x1b" not in message
    assert "pickles a whole module" not in message
    assert "Settings" in message
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="cannot read") as caught:
        pb.explain_state_dict(mlp(), text)
    assert "\x1b" not in str(caught.value)


def bert(labels: int = 3) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=32,
        num_labels=labels,
    )
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config)


def test_sharded_safetensors_are_merged_as_transformers_reads_them(tmp_path: Path):
    pytest.importorskip("safetensors")
    transformers = pytest.importorskip("transformers")
    bert().save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len([p for p in tmp_path.iterdir() if "-of-" in p.name]) > 1
    report = pb.explain_state_dict(bert(), tmp_path)
    _, info = transformers.BertForSequenceClassification.from_pretrained(
        tmp_path, output_loading_info=True
    )
    assert report.loads_strict
    assert not info["missing_keys"]
    assert not info["unexpected_keys"]
    # A head of another size: torch refuses, transformers says mismatched too.
    other = pb.explain_state_dict(bert(labels=5), tmp_path)
    assert {r.key for r in other.shape_mismatches} == {
        "classifier.weight",
        "classifier.bias",
    }
    _, info = transformers.BertForSequenceClassification.from_pretrained(
        tmp_path, num_labels=5, ignore_mismatched_sizes=True, output_loading_info=True
    )
    assert {key for key, *_ in info["mismatched_keys"]} == {
        "classifier.weight",
        "classifier.bias",
    }


@pytest.mark.parametrize("with_index", [True, False], ids=["index", "no-index"])
def test_sharded_bin_files_are_merged(tmp_path: Path, with_index):
    state = mlp().state_dict()
    keys = list(state)
    halves = {
        "pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
        "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2 :],
    }
    for name, part in halves.items():
        torch.save({key: state[key] for key in part}, tmp_path / name)
    if with_index:  # transformers' layout
        weight_map = {key: name for name, part in halves.items() for key in part}
        index = {"metadata": {}, "weight_map": weight_map}
        (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    assert pb.explain_state_dict(mlp(), tmp_path).loads_strict
    # One shard alone is not the model: the report lists what torch finds missing.
    first = tmp_path / "pytorch_model-00001-of-00002.bin"
    half = pb.explain_state_dict(mlp(), first)
    result = mlp().load_state_dict(torch.load(first, weights_only=True), strict=False)
    assert {r.key for r in half.missing} == set(result.missing_keys)
