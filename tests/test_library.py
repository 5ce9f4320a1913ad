"""The library on every kind of tensor a module can hold, bad input, and real models."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import pytorch_buffers as pb
from pytorch_buffers import TensorKind


class Attention(nn.Module):
    """A block with a stray mask, a non-persistent table, an empty buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.mask = torch.triu(torch.ones(6, 6), diagonal=1)
        self.register_buffer("rope", torch.zeros(6, 2), persistent=False)
        self.register_buffer("empty", None)


class Model(nn.Module):
    """Every kind of tensor: tied weights, ModuleList/Dict, containers, BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.blocks = nn.ModuleList([Attention(), Attention()])
        self.heads = nn.ModuleDict({"lm": nn.Linear(4, 10, bias=False)})
        self.heads["lm"].weight = self.embed.weight  # tied
        self.norm = nn.BatchNorm1d(4)
        self.scales = nn.ParameterList([nn.Parameter(torch.ones(2))])
        self.cache = [torch.zeros(2), (torch.zeros(3),)]
        self.tables = {"cos": torch.ones(3)}


def snapshot(module: nn.Module) -> dict[str, object]:
    """Everything inspection must not change: each tensor's identity, device and
    values, every attribute of every submodule (hooks included)."""
    facts: dict[str, object] = {}
    for prefix, sub in module.named_modules():
        for name, value in vars(sub).items():
            facts[f"{prefix}.{name}"] = (type(value), id(value), repr(value))
    for name, tensor in module.state_dict(keep_vars=True).items():
        facts[name] = (id(tensor), tensor.device, tensor.detach().clone().tolist())
    return facts


@pytest.fixture
def model() -> Model:
    torch.manual_seed(0)
    return Model()


def test_inventory_kinds(model):
    inv = pb.inventory(model)
    kinds = {name: record.kind for record in inv for name in record.names}
    assert kinds["blocks.0.proj.weight"] is TensorKind.PARAMETER
    assert kinds["scales.0"] is TensorKind.PARAMETER
    assert kinds["norm.running_mean"] is TensorKind.BUFFER
    assert kinds["norm.num_batches_tracked"] is TensorKind.BUFFER
    assert kinds["blocks.1.rope"] is TensorKind.NON_PERSISTENT_BUFFER
    assert kinds["blocks.0.mask"] is TensorKind.ATTRIBUTE
    assert kinds["cache[0]"] is TensorKind.CONTAINER_ITEM
    assert kinds["cache[1][0]"] is TensorKind.CONTAINER_ITEM
    assert kinds["tables['cos']"] is TensorKind.CONTAINER_ITEM
    assert not any("empty" in name for name in kinds)  # a None buffer holds no tensor


def test_inventory_facts_per_tensor(model):
    inv = pb.inventory(model)
    mask = inv.get("blocks.0.mask")
    assert mask is not None
    assert (mask.device.type, mask.dtype, mask.shape, mask.nbytes) == (
        "cpu",
        torch.float32,
        (6, 6),
        6 * 6 * 4,
    )
    assert not mask.moved_by_to
    assert not mask.saved_in_state_dict
    assert mask.module_path == "blocks.0"
    assert mask.attribute == "mask"
    rope = inv.get("blocks.0.rope")
    assert rope.moved_by_to
    assert not rope.saved_in_state_dict
    counter = inv.get("norm.num_batches_tracked")
    assert (counter.dtype, counter.shape, counter.saved_in_state_dict) == (
        torch.int64,
        (),
        True,
    )


def test_tied_weights_appear_once_with_both_names(model):
    inv = pb.inventory(model)
    tied = [record for record in inv if "embed.weight" in record.names]
    assert len(tied) == 1
    assert set(tied[0].names) == {"embed.weight", "heads.lm.weight"}
    assert inv.nbytes == sum(record.nbytes for record in inv)


def test_every_state_dict_key_is_in_the_inventory(model):
    names = {name for record in pb.inventory(model) for name in record.names}
    assert set(model.state_dict()) <= names


def test_inventory_moves_with_to_and_text_and_html_render(model):
    inv = pb.inventory(model.to("meta"))
    by_name = {record.name: record for record in inv}
    assert by_name["blocks.0.proj.weight"].device.type == "meta"
    assert by_name["blocks.0.rope"].device.type == "meta"
    assert by_name["blocks.0.mask"].device.type == "cpu"
    text = str(inv)
    assert "blocks.0.mask" in text
    assert "NOT moved" in text
    assert "heads.lm.weight" in text
    html = inv._repr_html_()
    assert html.startswith("<table")
    assert html.count("<tr>") == len(inv) + 1


def test_find_strays_with_fixes(model):
    strays = pb.find_strays(model)
    names = [stray.record.name for stray in strays]
    assert sorted(names) == sorted(
        ["blocks.0.mask", "blocks.1.mask", "cache[0]", "cache[1][0]", "tables['cos']"]
    )
    mask = next(s for s in strays if s.record.name == "blocks.0.mask")
    assert 'register_buffer("mask"' in mask.fix
    assert "persistent=False" in mask.fix
    cache = next(s for s in strays if s.record.name == "cache[0]")
    assert "ParameterList" not in cache.fix  # a cache is not trained
    with_non_persistent = pb.find_strays(model, include_non_persistent=True)
    assert len(with_non_persistent) == len(strays) + 2


def test_no_strays_after_the_fix():
    module = nn.Linear(2, 2)
    module.register_buffer("mask", torch.ones(2))
    report = pb.find_strays(module)
    assert not report
    assert "No stray tensors" in str(report)


def test_check_devices_names_every_misplaced_tensor(model):
    model.to("meta")
    with pytest.raises(pb.DeviceMismatchError) as caught:
        pb.check_devices(model)
    message = str(caught.value)
    for name in ("blocks.0.mask", "blocks.1.mask", "cache[0]", "tables['cos']"):
        assert name in message
    assert "is on cpu, expected meta" in message
    assert "register_buffer" in message
    assert set(caught.value.misplaced) >= {"blocks.0.mask", "cache[0]"}


def test_check_devices_with_an_explicit_device():
    module = nn.Linear(2, 2)
    assert pb.check_devices(module, "cpu") == torch.device("cpu")
    assert pb.check_devices(module) == torch.device("cpu")
    with pytest.raises(pb.DeviceMismatchError, match=r"weight \(parameter\) is on cpu"):
        pb.check_devices(module, torch.device("meta"))


def test_check_devices_on_a_module_without_tensors():
    assert pb.check_devices(nn.ReLU()) == torch.device("cpu")


def test_inspection_never_changes_the_module(model):
    before = snapshot(model)
    hooks_before = copy.copy(vars(model))
    pb.inventory(model)
    pb.find_strays(model, include_non_persistent=True)
    with pytest.raises(pb.DeviceMismatchError):
        pb.check_devices(model, "meta")
    pb.explain_state_dict(model, Model().state_dict())
    assert snapshot(model) == before
    assert vars(model).keys() == hooks_before.keys()
    assert all(
        not getattr(sub, hooks, None)
        for sub in model.modules()
        for hooks in ("_forward_hooks", "_forward_pre_hooks", "_state_dict_hooks")
    )


def test_meta_module_inventory():
    with torch.device("meta"):
        module = Model()
    inv = pb.inventory(module)
    assert inv.get("embed.weight").device.type == "meta"
    assert pb.check_devices(nn.Linear(2, 2, device="meta")) == torch.device("meta")


def test_compiled_module_is_looked_through(model):
    compiled = torch.compile(model)
    names = [record.name for record in pb.inventory(compiled)]
    assert names == [record.name for record in pb.inventory(model)]
    assert not any(name.startswith("_orig_mod") for name in names)


def test_a_thousand_layers():
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(1000)])
    inv = pb.inventory(model)
    assert len(inv) == 2000
    assert not pb.find_strays(model)


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda: pb.inventory("model"), TypeError, "expects a torch.nn.Module, got str"),
        (lambda: pb.find_strays(None), TypeError, "got NoneType"),
        (lambda: pb.find_strays(nn.ReLU(), include_non_persistent="yes"), TypeError, "True or False"),
        (lambda: pb.check_devices([]), TypeError, "got list"),
        (lambda: pb.check_devices(nn.ReLU(), "gpu"), ValueError, "device='gpu'"),
        (lambda: pb.check_devices(nn.ReLU(), 0), TypeError, "str or torch.device"),
        (lambda: pb.explain_state_dict(nn.ReLU(), 42), TypeError, "got int"),
        (lambda: pb.explain_state_dict(nn.ReLU(), {"w": 1}), ValueError, "none of its values"),
        (lambda: pb.explain_state_dict(nn.ReLU(), {"w": torch.ones(1)}, key="model"), ValueError, "no key 'model'"),
    ],
)  # fmt: skip
def test_bad_input(call, error, words):
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        call()


def test_unreadable_checkpoint_paths(tmp_path: Path):
    with pytest.raises(ValueError, match="no such file"):
        pb.explain_state_dict(nn.ReLU(), tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        pb.explain_state_dict(nn.ReLU(), garbage)


class Masked(nn.Module):
    def __init__(self, *, persistent: bool) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 3)
        self.register_buffer("mask", torch.ones(3, 3), persistent=persistent)


def test_explain_persistent_checkpoint_into_non_persistent_module(tmp_path: Path):
    path = tmp_path / "old.pt"
    torch.save(Masked(persistent=True).state_dict(), path)
    report = pb.explain_state_dict(Masked(persistent=False), path)
    assert [(r.key, r.problem, r.kind) for r in report] == [
        ("mask", pb.KeyProblem.UNEXPECTED, TensorKind.NON_PERSISTENT_BUFFER)
    ]
    assert report.safe_with_strict_false
    assert "state_dict.pop(key)" in str(report)


def test_explain_the_reverse_and_wrapped_checkpoints(tmp_path: Path):
    path = tmp_path / "wrapped.pt"
    torch.save({"model": Masked(persistent=False).state_dict(), "epoch": 3}, path)
    report = pb.explain_state_dict(Masked(persistent=True), path, key="model")
    assert [(r.key, r.problem, r.kind) for r in report] == [
        ("mask", pb.KeyProblem.MISSING, TensorKind.BUFFER)
    ]
    assert not report.safe_with_strict_false
    found = pb.explain_state_dict(Masked(persistent=True), path)  # found by its keys
    assert [(r.key, r.problem) for r in found] == [("mask", pb.KeyProblem.MISSING)]


def test_explain_shape_mismatch_unexpected_and_clean():
    module = Masked(persistent=True)
    state = module.state_dict()
    assert not pb.explain_state_dict(module, state)
    state["proj.weight"] = torch.zeros(2, 2)
    state["renamed.bias"] = torch.zeros(3)
    problems = {r.key: r for r in pb.explain_state_dict(module, state)}
    assert problems["proj.weight"].problem is pb.KeyProblem.SHAPE_MISMATCH
    assert problems["renamed.bias"].kind is None
    assert not problems["renamed.bias"].safe_to_ignore
