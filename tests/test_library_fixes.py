"""Fixes find_strays suggests, each done for real to show torch agrees."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import warnings

import pytest
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


class EveryStray(nn.Module):
    """One stray of each kind, each with a fix that torch should confirm."""

    table = torch.zeros(2)  # a tensor in the class body

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 2)
        self.child = nn.Module()
        self.child.register_buffer("mask", torch.ones(2))
        self.register_buffer("scale", torch.ones(2))
        self.register_buffer("rotary", torch.ones(2), persistent=False)
        self.attribute = torch.ones(2)
        self.cache = [torch.zeros(1), torch.zeros(1)]
        self.tables = {"cos": torch.ones(1)}
        self.trained = [nn.Parameter(torch.zeros(1))]
        self.experts = [nn.Linear(1, 1)]
        self.heads = {"a": nn.Linear(1, 1)}
        self.weight_t = self.proj.weight.t()
        self.scale_again = self.scale
        self.child_mask = self.child.mask


def by_name(report: pb.StrayReport) -> dict[str, _strays.Stray]:
    return {stray.record.name: stray for stray in report}


def test_every_fix_is_made_on_a_meta_copy_before_it_is_suggested():
    model = EveryStray()
    strays = by_name(pb.find_strays(model, include_non_persistent=True))
    expected = {
        "table": (
            "register_buffer refuses it; registered by a module without the class "
            "attribute, .to() reaches it and state_dict() saves it as 'table'"
        ),
        "attribute": ".to() reaches it, state_dict() saves it as 'attribute'",
        "cache[0]": ".to() reaches it, state_dict() saves it as 'cache_0'",
        "cache[1]": ".to() reaches it, state_dict() saves it as 'cache_1'",
        "tables['cos']": ".to() reaches it, state_dict() saves it as 'tables_cos'",
        "trained[0]": ".to() reaches it, state_dict() saves it as 'trained.0'",
        "experts[0].weight": ".to() reaches it, state_dict() saves it as 'experts.0.weight'",
        "heads['a'].bias": ".to() reaches it, state_dict() saves it as 'heads.a.bias'",
        "rotary": ".to() reaches it, state_dict() saves it as 'rotary'",
        "weight_t": ".to() reaches the parameter and the property returns its view",
        "scale_again": (
            ".to() gives the module a new tensor, which the property returns; the "
            "plain attribute keeps the old one"
        ),
        "child_mask": (
            ".to() gives the module a new tensor, which the property returns; the "
            "plain attribute keeps the old one"
        ),
    }
    for name, checked in expected.items():
        assert strays[name].confirmed, (name, strays[name].checked)
        assert strays[name].checked == checked, name
    assert "while the class has the name, torch refuses" in flat(strays["table"].fix)
    assert "nn.ParameterList([...])" in strays["trained[0]"].fix
    assert "self.experts = nn.ModuleList([...])" in strays["experts[0].weight"].fix
    assert "self.heads = nn.ModuleDict({...})" in strays["heads['a'].bias"].fix
    assert "return self.proj.weight.t()" in flat(strays["weight_t"].fix)
    assert "return self.scale" in flat(strays["scale_again"].fix)
    assert "return self.child.mask" in flat(strays["child_mask"].fix)
    text = flat(pb.find_strays(model))
    assert text.count("checked on a meta copy:") == len(pb.find_strays(model))


def test_checking_the_fixes_leaves_the_module_as_it_was():
    model, moved = EveryStray(), EveryStray().to("meta")
    for module, check in (
        (model, lambda: pb.find_strays(model, include_non_persistent=True)),
        (moved, lambda: pb.check_devices(moved, "meta")),
    ):
        attributes = dict(vars(module))
        saved = {name: id(t) for name, t in module.state_dict(keep_vars=True).items()}
        with contextlib.suppress(pb.DeviceMismatchError):
            check()
        assert type(module) is EveryStray
        assert vars(module) == attributes
        assert {n: id(t) for n, t in module.state_dict(keep_vars=True).items()} == saved
        assert "rotary" in module._non_persistent_buffers_set
    assert "table" in vars(EveryStray)
    assert model.scale_again is model.scale  # a property was added to no class


def test_a_fix_torch_refuses_is_not_suggested():
    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.parts = [nn.Linear(1, 1), torch.ones(1)]  # ModuleList refuses a tensor
            self.nested = [[torch.ones(1)]]

    strays = by_name(pb.find_strays(Mixed()))
    refused = strays["parts[0].weight"]
    assert not refused.confirmed
    assert refused.fix == ""
    assert "is not a Module subclass" in refused.checked
    assert "fix: none that torch confirmed (ModuleList/ModuleDict: TypeError" in flat(
        refused
    )
    assert not strays["nested[0][0]"].confirmed
    assert strays["parts[1]"].confirmed  # the tensor beside it can be a buffer


def test_a_buffer_outside_the_module_gets_no_property():
    model = nn.Module()
    model.register_buffer("mask", torch.ones(2))
    model.child = nn.Module()
    model.child.mask_ref = model.mask  # the child cannot read its parent's buffer
    (stray,) = pb.find_strays(model)
    assert not stray.confirmed
    assert (
        stray.checked == "the buffer is not inside the module that holds the reference"
    )


def test_a_fix_that_does_not_register_is_caught(monkeypatch):
    # If register_buffer left a plain attribute, torch's .to() would not reach it:
    # the check must see that, not trust the fix.
    def plain(self, name, tensor, persistent=True):  # noqa: ARG001  (register_buffer's signature)
        object.__setattr__(self, name, tensor)

    monkeypatch.setattr(nn.Module, "register_buffer", plain)
    (stray,) = [s for s in pb.find_strays(Holders()) if s.record.name == "scale"]
    assert not stray.confirmed
    assert stray.checked == "the copy no longer holds the tensor"


def test_a_module_that_cannot_be_copied_gets_no_fix():
    class Uncopyable:
        def __deepcopy__(self, memo):
            msg = "no copies"
            raise RuntimeError(msg)

    model = nn.Module()
    model.handle = Uncopyable()
    model.mask = torch.ones(2)
    (stray,) = pb.find_strays(model)
    assert not stray.confirmed
    assert (
        stray.checked
        == "not checked: no meta copy could be made (RuntimeError: no copies)"
    )
    with pytest.raises(pb.DeviceMismatchError, match="no fix that torch confirmed"):
        pb.check_devices(model.to("meta"), "meta")


def test_check_devices_suggests_only_confirmed_fixes():
    model = EveryStray().to("meta")
    with pytest.raises(pb.DeviceMismatchError) as caught:
        pb.check_devices(model, "meta")
    message = flat(caught.value)
    assert "attribute (plain attribute) is on cpu" in message
    assert message.count("(torch confirmed it on a meta copy)") >= 8
    assert "no fix that torch confirmed" not in message


class SharedEncoder(nn.Module):
    """Shared between copies: its deepcopy returns the object itself."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(2))
        self.mask = torch.ones(2)
        self.experts = [nn.Linear(1, 1)]

    def __deepcopy__(self, memo: dict[int, object]) -> SharedEncoder:
        return self


def test_a_copy_that_shares_the_models_parts_is_refused_not_changed():
    model = nn.Sequential(SharedEncoder(), nn.Linear(2, 2))
    encoder = model[0]
    (mask, *_) = pb.find_strays(model)
    assert not mask.confirmed
    assert "the copy holds the model's own '0.scale'" in mask.checked
    with pytest.raises(ValueError, match="the copy holds the model's own"):
        pb.explain_state_dict(model, model.state_dict())
    assert type(encoder) is SharedEncoder
    assert list(encoder._buffers) == ["scale"]
    assert encoder.scale.device.type == "cpu"
    assert isinstance(encoder.experts, list)


def test_no_class_is_made_or_changed_to_check_a_fix():
    registry: dict[str, type] = {}

    class Registered(nn.Module):
        table = torch.zeros(2)

        def __init_subclass__(cls, **kwargs: object) -> None:
            super().__init_subclass__(**kwargs)
            if cls.__name__ in registry:
                msg = f"{cls.__name__} already registered"
                raise ValueError(msg)
            registry[cls.__name__] = cls

    class Block(Registered):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(3, 2)
            self.proj_t = self.proj.weight.t()
            self.register_buffer("scale", torch.ones(2))
            self.scale_again = self.scale

    strays = by_name(pb.find_strays(Block()))
    with contextlib.suppress(pb.DeviceMismatchError):
        pb.check_devices(Block().to("meta"), "meta")
    assert registry == {"Block": Block}
    assert all(stray.confirmed for stray in strays.values()), strays


def test_two_names_for_one_tensor_get_their_own_fixes():
    model = nn.Module()
    shared = torch.ones(2)
    model.a = shared
    model.cache = [shared]
    strays = by_name(pb.find_strays(model))
    assert 'register_buffer("a"' in strays["a"].fix
    assert strays["a"].checked.endswith("saves it as 'a'")
    assert "register each item" in strays["cache[0]"].fix
    assert strays["cache[0]"].checked.endswith("saves it as 'cache_0'")
    with pytest.raises(pb.DeviceMismatchError) as caught:
        pb.check_devices(EveryStray(), "meta")
    entries = str(caught.value).replace("\n      ", " ").splitlines()
    (scale,) = [entry for entry in entries if entry.startswith("  scale ")]
    assert "call model.to('meta')" in scale, scale


def test_a_trainable_plain_tensor_becomes_a_parameter_not_a_buffer():
    model = nn.Module()
    model.temperature = torch.ones(1, requires_grad=True)
    (stray,) = pb.find_strays(model)
    assert stray.confirmed
    assert "self.temperature = nn.Parameter(tensor)" in stray.fix
    assert stray.checked == ".to() reaches it, state_dict() saves it as 'temperature'"
    # For real: a parameter, trained, and still a leaf after .to().
    model.temperature = nn.Parameter(vars(model).pop("temperature"))
    model.to(torch.float64)
    assert [name for name, _ in model.named_parameters()] == ["temperature"]
    assert model.temperature.is_leaf


def test_models_torch_cannot_move_or_copy_still_get_a_report():
    class Frozen(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mask = torch.ones(2)

        def __delattr__(self, name: str) -> None:
            msg = "frozen"
            raise AttributeError(msg)

    class NoMove(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mask = torch.ones(2)

        def to(self, *args: object, **kwargs: object) -> NoMove:  # noqa: ARG002
            msg = "this model cannot move"
            raise RuntimeError(msg)

    quantized = nn.Module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates quantized tensors
        quantized.q = torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8)
    quantized.mask = torch.ones(2)
    (frozen,) = pb.find_strays(Frozen())
    assert not frozen.confirmed
    assert frozen.checked == "AttributeError: frozen"
    (no_move,) = pb.find_strays(NoMove())
    assert (
        no_move.checked
        == "not checked: on the copy, RuntimeError: this model cannot move"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # copying a quantized tensor warns, in torch
        strays = by_name(pb.find_strays(quantized))
    assert strays["mask"].confirmed


def test_a_view_of_a_tied_parameter_is_read_from_inside_the_module():
    model = nn.Module()
    model.proj = nn.Linear(3, 2)
    model.layer = nn.Module()
    model.layer.proj = nn.Linear(3, 2)
    model.layer.proj.weight = model.proj.weight  # tied: named first outside the layer
    model.layer.weight_t = model.proj.weight.t()
    (stray,) = pb.find_strays(model)
    assert stray.confirmed, stray.checked
    assert "return self.proj.weight.t()" in flat(stray.fix)


def test_assign_on_a_model_built_on_meta_is_not_told_to_load_without_assign():
    with torch.device("meta"):
        model = nn.Linear(2, 2)
    half = nn.Linear(2, 2).half().state_dict()
    text = flat(pb.explain_state_dict(model, half, assign=True))
    assert "take the checkpoint's dtype" in text
    assert "loading without assign" not in text
    # torch: loading into meta without assign leaves it on meta, with no data.
    with pytest.warns(UserWarning, match="meta parameter"):
        model.load_state_dict(half)
    assert model.weight.is_meta


class Frozen(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(2, 2)

    def __deepcopy__(self, memo: dict[int, object]) -> Frozen:
        return self


def test_a_shared_module_in_a_plain_list_is_not_cast_by_the_checks():
    model = nn.Module()
    model.head = nn.Linear(2, 2)
    model.encoders = [Frozen()]
    weight = model.encoders[0].proj.weight
    strays = pb.find_strays(model)
    with pytest.raises(pb.DeviceMismatchError, match="no fix that torch confirmed"):
        pb.check_devices(model, "meta")
    assert all(not stray.confirmed for stray in strays)
    assert weight.dtype == torch.float32
    assert model.encoders[0].proj.weight is weight


def test_a_deepcopy_that_returns_no_module_gives_a_report_not_a_crash():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mask = torch.ones(2)

        def __deepcopy__(self, memo: dict[int, object]) -> None:
            return None

    (stray,) = pb.find_strays(Odd())
    assert stray.checked.startswith("not checked: cannot make a meta copy of Odd")
    with pytest.raises(ValueError, match="deepcopy returned a NoneType"):
        pb.explain_state_dict(Odd(), {})


def test_a_tensor_computed_from_parameters_is_not_made_a_parameter():
    model = nn.Module()
    model.proj = nn.Linear(2, 2)
    model.scaled = model.proj.weight * 2  # has a grad_fn: a result, not a weight
    (stray,) = pb.find_strays(model)
    assert "nn.Parameter" not in stray.fix
    assert 'register_buffer("scaled", tensor.detach())' in flat(stray.fix)
    assert stray.confirmed


def test_a_container_mixing_tensors_to_train_and_others_gets_no_fix():
    model = nn.Module()
    model.extra = [torch.zeros(2, requires_grad=True), torch.ones(2)]
    strays = pb.find_strays(model)
    assert [stray.confirmed for stray in strays] == [False, False]
    assert "tensors to train and others" in strays[0].checked


def test_a_cast_back_counts_non_persistent_buffers_too():
    class Rotary(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(2, 2)
            inv_freq = torch.ones(2, dtype=torch.float64)
            self.register_buffer("inv_freq", inv_freq, persistent=False)

    saved = {k: v.to(torch.bfloat16) for k, v in Rotary().state_dict().items()}
    text = flat(pb.explain_state_dict(Rotary(), saved, assign=True))
    assert (
        "would leave 1 tensor(s) with another dtype than the module's: inv_freq" in text
    )
    real = Rotary()
    real.load_state_dict(copy.deepcopy(saved), assign=True)
    real.to(torch.float32)
    assert real.inv_freq.dtype == torch.float32  # the module had float64


def test_a_model_that_refuses_casts_is_checked_with_a_move():
    class NoCasts(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mask = torch.ones(2)

        def to(self, *args: object, **kwargs: object) -> NoCasts:
            if any(isinstance(arg, torch.dtype) for arg in args):
                msg = "`.to` is not supported for quantized models"
                raise ValueError(msg)
            return super().to(*args, **kwargs)  # type: ignore[return-value]

    (stray,) = pb.find_strays(NoCasts())
    assert stray.confirmed, stray.checked
