"""Fixes find_strays suggests, each done for real to show torch agrees."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

import pytorch_buffers as pb
from pytorch_buffers import _meta, _strays


def flat(text: object) -> str:
    return " ".join(str(text).split())


class Transposed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 2)
        self.weight_t = self.proj.weight.t()  # a view of a parameter


class AsBuffer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 2)
        self.register_buffer("weight_t", self.proj.weight.detach().t())


class AsProperty(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 2)

    @property
    def weight_t(self) -> torch.Tensor:
        return self.proj.weight.t()


def shares(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def test_a_view_of_a_parameter_gets_a_property_not_a_buffer():
    (stray,) = pb.find_strays(Transposed())
    assert stray.record.view_of == ("proj.weight",)
    assert "@property def weight_t(self): return self.proj.weight.t()" in flat(
        stray.fix
    )
    assert "register_buffer" not in stray.fix
    assert "register_buffer would not help" in flat(stray.problem)
    # torch: a registered view goes stale after .to(); the property follows.
    buffered = AsBuffer().to(torch.float64)
    assert not shares(buffered.weight_t, buffered.proj.weight)
    proper = AsProperty().to(torch.float64)
    assert proper.weight_t.dtype == torch.float64
    assert shares(proper.weight_t, proper.proj.weight)
    assert not pb.find_strays(AsProperty())


def test_flip_the_buffer_warning_follows_torchs_answer(monkeypatch):
    real = _meta.torch_answers()
    wrong = dataclasses.replace(real, view_buffer_follows=True)
    monkeypatch.setattr(_strays, "torch_answers", lambda: wrong)
    (stray,) = pb.find_strays(Transposed())
    assert "register_buffer would not help" not in flat(stray.problem)


class Holders(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(2, 2)
        self.cache = [torch.zeros(2)]  # never trained
        self.extra = [nn.Parameter(torch.zeros(2))]  # meant to be trained
        self.step = torch.tensor(0)  # 0-dim
        self.scale = torch.ones(2)


def test_parameter_list_only_for_tensors_that_train():
    strays = {s.record.name: s for s in pb.find_strays(Holders())}
    assert "ParameterList" not in strays["cache[0]"].fix
    assert "ParameterList" in strays["extra[0]"].fix
    assert not strays["cache[0]"].record.requires_grad


def test_a_0_dim_cpu_stray_is_a_stray_marked_harmless():
    strays = {s.record.name: s for s in pb.find_strays(Holders())}
    assert "step" in strays, "still a stray: .to() leaves it, state_dict() skips it"
    assert "harmless to the forward pass" in flat(strays["step"].problem)
    assert "harmless" not in strays["scale"].problem
    model = Holders().to("meta")
    assert (model.proj.weight @ model.proj.weight * model.step).device.type == "meta"
