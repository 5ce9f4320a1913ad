"""Modules whose tensors hooks rebuild or whose names wrappers rewrite, against torch."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import pytorch_buffers as pb
from pytorch_buffers import TensorKind


def pruned() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    prune.l1_unstructured(model[0], "weight", amount=0.5)
    return model


def test_a_pruned_module_is_inventoried_and_its_weight_is_no_stray():
    model = pruned()
    records = pb.inventory(model)
    weight = records.get("0.weight")
    assert weight is not None
    assert weight.rebuilt_by_hook
    assert records.get("0.weight_orig").kind is TensorKind.PARAMETER
    assert records.get("0.weight_mask").kind is TensorKind.BUFFER
    assert not pb.find_strays(model)
    # torch: the forward pre-hook recomputes weight from weight_orig * weight_mask.
    model[0].weight_orig.data.fill_(2.0)
    model(torch.ones(1, 4))
    assert torch.equal(model[0].weight, 2.0 * model[0].weight_mask)


def test_a_plain_checkpoint_into_a_pruned_module_as_torch_sees_it():
    plain = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).state_dict()
    report = pb.explain_state_dict(pruned(), plain)
    result = pruned().load_state_dict(plain, strict=False)
    assert {r.key for r in report.missing} == set(result.missing_keys)
    assert {r.key for r in report.unexpected} == set(result.unexpected_keys)


def test_the_legacy_weight_norm_is_inventoried_not_refused():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = torch.nn.utils.weight_norm(nn.Linear(4, 4))
    assert pb.inventory(model).get("weight").rebuilt_by_hook
    assert not pb.find_strays(model)
    assert pb.explain_state_dict(model, model.state_dict()).loads_strict


def test_activation_checkpoint_names_are_mapped_and_saved_by_identity():
    wrappers = pytest.importorskip(
        "torch.distributed.algorithms._checkpoint.checkpoint_wrapper"
    )
    model = nn.Sequential(
        wrappers.checkpoint_wrapper(nn.BatchNorm1d(3)), nn.Linear(3, 2)
    )
    records = pb.inventory(model)
    saved = set(model.state_dict())
    mean = records.get("0.running_mean")
    assert mean is not None, "named as state_dict spells it"
    assert mean.kind is TensorKind.BUFFER
    assert mean.saved_in_state_dict
    assert {name for r in records for name in r.names} == saved
    assert not pb.find_strays(model, include_non_persistent=True)
    assert pb.explain_state_dict(model, model.state_dict()).loads_strict
