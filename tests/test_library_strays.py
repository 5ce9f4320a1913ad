"""inventory/find_strays/check_devices on the cases real models hit, checked by moving a copy."""

from __future__ import annotations

import ast
import copy
import dataclasses
import gc
import re
import time
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from torch import nn

import pytorch_buffers as pb
from pytorch_buffers import TensorKind

TOKEN = re.compile(r"\.?([A-Za-z_0-9]+)|\[(.*?)\]")


def resolve(root: object, name: str) -> object:
    """The object a record's name points at (``blocks.0.cache[1]['k']``)."""
    value = root
    for attribute, index in TOKEN.findall(name):
        value = (
            getattr(value, attribute) if attribute else value[ast.literal_eval(index)]
        )
    return value


def assert_moves_as_reported(model: nn.Module) -> None:
    """Every floating tensor's verdict is what a real dtype move of a copy does."""
    moved = copy.deepcopy(model).to(torch.float64)
    checked = 0
    for record in pb.inventory(model):
        if (
            record.dtype != torch.float32
            or "{#" in record.name
            or not record.initialized
        ):
            continue
        after = resolve(moved, record.name)
        assert (after.dtype == torch.float64) == record.moved_by_to, record.name
        checked += 1
    assert checked


@dataclasses.dataclass
class Stats:
    mean: torch.Tensor


class Holder(nn.Module):
    scale = torch.ones(2)  # class-level: shared, never moved

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.register_buffer("table", torch.zeros(2))
        self.experts = [nn.Linear(2, 2), nn.Linear(2, 2)]  # not registered
        self.by_name = {"gate": nn.Linear(2, 1)}
        self.views = [self.lin.weight, self.table]  # aliases
        self.stats = Stats(torch.zeros(3))
        self.ns = SimpleNamespace(bias=torch.zeros(1))
        self.seen = {torch.zeros(1)}
        self.step = torch.tensor(0.0)  # 0-d


@pytest.fixture
def holder() -> Holder:
    torch.manual_seed(0)
    return Holder()


def test_modules_in_plain_containers_are_reported(holder):
    inv = pb.inventory(holder)
    kinds = {name: r.kind for r in inv for name in r.names}
    assert kinds["experts[0].weight"] is TensorKind.UNREGISTERED_MODULE
    assert kinds["by_name['gate'].bias"] is TensorKind.UNREGISTERED_MODULE
    strays = {s.record.name: s for s in pb.find_strays(holder)}
    assert "nn.ModuleList" in strays["experts[1].bias"].fix
    assert not any(key.startswith("experts") for key in holder.state_dict())


def test_aliases_parameter_follows_buffer_goes_stale(holder):
    inv = pb.inventory(holder)
    weight_alias = inv.get("views[0]")
    table_alias = inv.get("views[1]")
    assert weight_alias.alias_of == ("lin.weight",)
    assert weight_alias.moved_by_to
    assert table_alias.alias_of == ("table",)
    assert not table_alias.moved_by_to
    strays = {s.record.name: s for s in pb.find_strays(holder)}
    assert "views[0]" not in strays
    assert "stale" in strays["views[1]"].problem
    moved = copy.deepcopy(holder).to(torch.float64)
    assert moved.views[0] is moved.lin.weight  # torch updated the parameter in place
    assert moved.views[1] is not moved.table


def test_a_move_to_meta_replaces_parameters():
    # What torch does, for the record: to meta, a parameter is a new object, so
    # an alias is left behind (the probe asks about a dtype move, which is how
    # moves between CPU and accelerators behave too).
    module = nn.Linear(2, 2)
    alias = module.weight
    module.to("meta")
    assert alias is not module.weight


def test_everything_scanned_moves_as_reported(holder):
    assert_moves_as_reported(holder)


def test_what_is_scanned(holder):
    names = {name for r in pb.inventory(holder) for name in r.names}
    assert {"scale", "stats.mean", "ns.bias", "seen{#0}", "step"} <= names
    assert pb.inventory(holder).get("step").shape == ()


def test_nbytes_counts_a_shared_tensor_once(holder):
    inv = pb.inventory(holder)
    unique = {id(t): t for t in [*holder.parameters(), *holder.buffers()]}
    assert inv.get("views[0]").nbytes == inv.get("lin.weight").nbytes
    assert inv.nbytes < sum(r.nbytes for r in inv)
    assert inv.nbytes >= sum(t.numel() * t.element_size() for t in unique.values())


def test_lazy_modules_report_uninitialized_parameters():
    model = nn.Sequential(nn.LazyLinear(3), nn.ReLU())
    record = pb.inventory(model).get("0.weight")
    assert not record.initialized
    assert "uninitialized" in str(pb.inventory(model))
    assert not pb.find_strays(model)
    model(torch.ones(1, 4))
    assert pb.inventory(model).get("0.weight").shape == (3, 4)


def test_old_weight_norm_attribute_is_not_a_stray():
    with pytest.warns(FutureWarning):
        model = nn.utils.weight_norm(nn.Linear(2, 2))
    record = pb.inventory(model).get("weight")
    assert record.rebuilt_by_hook
    assert not pb.find_strays(model)


def test_a_million_entry_list_is_fast_and_says_it_was_cut():
    model = nn.Linear(2, 2)
    model.history = list(range(1_000_000))
    model.deep = [[[[[[torch.zeros(1)]]]]]]
    start = time.perf_counter()
    report = pb.find_strays(model)
    assert time.perf_counter() - start < 1.0
    assert any("history" in note and "1,000,000" in note for note in report.notes)
    assert any(note.startswith("deep") and "deep" in note for note in report.notes)
    assert "scan cut short" in str(report)


def test_data_parallel_and_ddp_report_the_model_not_the_wrapper(tmp_path):
    def convnet() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())

    expected = [r.names for r in pb.inventory(convnet())]
    assert [r.names for r in pb.inventory(nn.DataParallel(convnet()))] == expected
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(convnet())
        assert any(isinstance(v, list) and v for v in vars(ddp).values())
        assert not pb.find_strays(ddp)
        assert [r.names for r in pb.inventory(ddp)] == expected
    finally:
        # DDP sits in a reference cycle: free it while the process group lives,
        # or a later collection drops the group in gloo's destructor holding the
        # GIL, and the process hangs (the deadlock chapter 9 explains).
        ddp = None
        gc.collect()
        dist.destroy_process_group()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_check_devices_on_a_device_torch_does_not_have():
    with pytest.raises(ValueError, match=r"device='cuda'.*has no cuda device"):
        pb.check_devices(nn.Linear(2, 2), "cuda")


def test_check_devices_groups_and_caps_its_message():
    layers = [nn.Linear(2, 2) for _ in range(200)]
    for layer in layers:
        layer.mask = torch.ones(2)
    model = nn.Sequential(*layers).to("meta")
    with pytest.raises(pb.DeviceMismatchError) as caught:
        pb.check_devices(model, "meta")
    lines = str(caught.value).splitlines()
    assert lines[0].startswith("200 of 600 tensors")
    assert lines[1].startswith("  *.mask (x200) (plain attribute) is on cpu")
    entries = [line for line in lines if not line.startswith("      ")]  # unwrapped
    assert len(entries) == 2
    assert max(map(len, lines)) <= 100
    assert len(caught.value.misplaced) == 200


def test_fsdp2_fully_shard_reports_the_model(tmp_path):
    fully_shard = pytest.importorskip("torch.distributed.fsdp").fully_shard
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    expected = [r.names for r in pb.inventory(model)]
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        fully_shard(model[0])
        fully_shard(model)
        assert type(model[0].weight).__name__ == "DTensor"
        assert [r.names for r in pb.inventory(model)] == expected
        assert not pb.find_strays(model)
        # FSDP2 refuses deepcopy, so there is no meta copy to ask: a clear error.
        with pytest.raises(ValueError, match="FSDP does not support deepcopy"):
            pb.explain_state_dict(model, model.state_dict())
    finally:
        del model
        gc.collect()  # as above: nothing of the group left for a later collection
        dist.destroy_process_group()


def test_many_strays_print_grouped():
    layers = [nn.Linear(2, 2) for _ in range(100)]
    for layer in layers:
        layer.mask = torch.ones(2)
        layer.cache = [torch.zeros(1)]
    report = pb.find_strays(nn.Sequential(*layers))
    assert len(report) == 200
    lines = report.to_text(width=10_000).splitlines()
    assert lines[0] == "200 strays in 2 groups:"
    assert lines[1].startswith("*.mask (x100), e.g. 0.mask: plain tensor attribute")
    assert len(lines) == 7  # a header, then per group: problem, fix, what torch did
    assert lines[3].startswith("    checked on a meta copy: .to() reaches it")
