"""Prefixes and renames, each fix tried by torch and checked against a real load."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present
from torch.optim.swa_utils import AveragedModel

import pytorch_buffers as pb


def flat(text: object) -> str:
    return " ".join(str(text).split())


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def test_an_averaged_model_is_module_prefix_plus_n_averaged():
    state = AveragedModel(mlp()).state_dict()
    assert "n_averaged" in state
    report = pb.explain_state_dict(mlp(), state)
    fix = report.prefix_fix
    assert fix is not None
    assert fix.prefix == "module."
    assert "AveragedModel" in fix.source
    assert fix.loads_strict_after
    assert fix.code.startswith("state_dict.pop('n_averaged'); ")
    # The report's code, run as a reader would, makes strict=True load.
    namespace = {"state_dict": dict(state), "torch": torch}
    exec(fix.code, namespace)  # noqa: S102
    mlp().load_state_dict(namespace["state_dict"])


def test_a_nested_prefix_is_one_fix():
    state = {f"module._orig_mod.{k}": v for k, v in mlp().state_dict().items()}
    report = pb.explain_state_dict(mlp(), state)
    assert report.prefix_fix.prefix == "module._orig_mod."
    assert report.prefix_fix.loads_strict_after
    consume_prefix_in_state_dict_if_present(state, "module._orig_mod.")
    mlp().load_state_dict(state)


class Backbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 4)


class WithHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = Backbone()
        self.heads = nn.ModuleList(nn.Linear(4, 2) for _ in range(5))


def test_a_backbone_checkpoint_with_many_heads_is_still_recognised():
    """Most unexpected keys are heads; the prefix resolves every missing key."""
    state = WithHeads().state_dict()
    report = pb.explain_state_dict(Backbone(), state)
    fix = report.prefix_fix
    assert fix is not None
    assert fix.prefix == "backbone."
    assert fix.source == "", "no guess where an unknown prefix came from"
    assert not fix.loads_strict_after
    text = flat(report)
    assert "10 key(s) below remain" in text
    assert "heads.*.weight (x5)" in text
    # torch agrees: after the rename, only the heads are left over.
    consume_prefix_in_state_dict_if_present(state, "backbone.")
    result = Backbone().load_state_dict(state, strict=False)
    assert not result.missing_keys
    assert len(result.unexpected_keys) == 10


def test_a_partial_prefix_renames_only_the_keys_that_carry_it():
    state = mlp().state_dict()
    state = {(f"model.{k}" if k.startswith("2.") else k): v for k, v in state.items()}
    report = pb.explain_state_dict(mlp(), state)
    fix = report.prefix_fix
    assert fix.prefix == "model."
    assert fix.keys == 2
    assert fix.loads_strict_after


def test_flip_a_coincidental_prefix_is_not_suggested():
    """One shared name among many unrelated keys is no renamed checkpoint."""
    state = {f"other.{i}.weight": torch.zeros(1) for i in range(10)}
    state["x.0.weight"] = mlp().state_dict()["0.weight"]
    report = pb.explain_state_dict(mlp(), state)
    assert report.prefix_fix is None
