"""The API page review: memory of the meta copy, split CUDA devices, ``_metadata``
isolation, and what ``assign=True`` changes, each checked against torch."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import pytorch_buffers as pb
from pytorch_buffers import _devices
from pytorch_buffers._inventory import Inventory, TensorKind, TensorRecord

SRC = Path(pb.__file__).resolve().parents[1]

MEMORY_PROBE = textwrap.dedent(
    """
    import resource
    import torch
    from torch import nn
    import pytorch_buffers as pb

    class Big(nn.Module):
        def __init__(self, size=100_000_000):
            super().__init__()
            self.proj = nn.Linear(8, 8)
            self.table = torch.ones(size)  # 400 MB plain attribute
            self.cache = [torch.ones(size // 4)]  # 100 MB in a list

    def reports(model):
        state = model.state_dict()
        print(pb.inventory(model), pb.find_strays(model))
        try:
            pb.check_devices(model, "meta")
        except pb.DeviceMismatchError as error:
            print(error)
        print(pb.explain_state_dict(model, state))
        print(pb.explain_state_dict(model, state, assign=True))

    # The first run on a small model pays torch's one-time set-up (its first
    # meta-with-CPU operation alone takes ~70 MB), which is not the model's memory.
    reports(Big(size=8))
    model = Big()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reports(model)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("GROWTH_KB", after - before)
    """
)


def test_reports_on_a_model_with_a_400_mb_attribute_stay_within_10_mb():
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=300,
    )
    growth_kb = int(done.stdout.rsplit("GROWTH_KB", 1)[1])
    # ru_maxrss is in KiB on Linux: the peak grew by less than 10 MB.
    assert growth_kb < 10 * 1024, f"peak memory grew by {growth_kb / 1024:.0f} MB"


def record(
    name: str, device: str, kind: TensorKind = TensorKind.PARAMETER
) -> TensorRecord:
    return TensorRecord(
        (name,), kind, torch.device(device), torch.float32, (4,), 16, True
    )


def test_check_devices_cuda_reports_a_split_over_two_gpus(monkeypatch):
    records = Inventory(
        [
            record("a.weight", "cuda:0"),
            record("a.bias", "cuda:0"),
            record("b.weight", "cuda:1"),
        ]
    )
    monkeypatch.setattr(_devices, "inventory", lambda _module: records)
    monkeypatch.setattr(_devices, "device_missing", lambda _device: None)
    with pytest.raises(pb.DeviceMismatchError) as caught:
        pb.check_devices(nn.Linear(1, 1), "cuda")
    text = " ".join(str(caught.value).split())
    assert "split over cuda:0 (2), cuda:1 (1)" in text
    assert caught.value.misplaced == {"b.weight": torch.device("cuda:1")}
    # One GPU for all: no complaint.
    monkeypatch.setattr(
        _devices, "inventory", lambda _module: Inventory(list(records)[:2])
    )
    assert pb.check_devices(nn.Linear(1, 1), "cuda") == torch.device("cuda")


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight


def test_an_earlier_assign_load_cannot_change_the_verdict():
    state = Tied().state_dict()
    del state["head.weight"]
    metadata = copy.deepcopy(state._metadata)
    first = pb.explain_state_dict(Tied(), state)
    assigned = pb.explain_state_dict(Tied(), state, assign=True)
    again = pb.explain_state_dict(Tied(), state)
    assert state._metadata == metadata, "explain_state_dict wrote into _metadata"
    assert first.safe_with_strict_false
    assert again.safe_with_strict_false
    assert not assigned.safe_with_strict_false
    # torch agrees on fresh modules: plain strict=False keeps the tie filled.
    target = Tied()
    target.load_state_dict(copy.deepcopy(state), strict=False)
    assert target.head.weight is target.embed.weight
    assert torch.equal(target.head.weight, state["embed.weight"])


def test_assign_names_the_dtype_change_and_the_broken_tie_as_torch_does():
    saved = Tied().half().state_dict()
    report = pb.explain_state_dict(Tied(), saved, assign=True)
    text = " ".join(str(report).split())
    target = Tied()
    # A copy: torch's assign=True load writes into the dict's _metadata.
    target.load_state_dict(copy.deepcopy(saved), assign=True)
    assert target.embed.weight.dtype == torch.float16, "torch: assign adopts the dtype"
    assert target.head.weight is not target.embed.weight, "torch: assign breaks the tie"
    assert (
        "take the checkpoint's dtype (e.g. float16 where the module has float32" in text
    )
    assert "assign=True breaks a tie: embed.weight, head.weight" in text
    # The fixes the report offers, each confirmed by torch: a cast back, and a
    # load without assign (Tied has no tie_weights(), so none is offered).
    assert (
        "model.to(torch.float32) after loading gives every tensor its dtype back"
        in text
    )
    assert "loading without assign keeps the module's dtypes" in text
    assert "loading without assign keeps the tie" in text
    assert "tie_weights" not in text
    cast_back = Tied()
    cast_back.load_state_dict(copy.deepcopy(saved), assign=True)
    cast_back.to(torch.float32)
    assert all(t.dtype == torch.float32 for t in cast_back.state_dict().values())
    # Without assign, torch casts into the module's tensors and keeps the tie.
    plain = pb.explain_state_dict(Tied(), saved)
    assert "dtype" not in str(plain)
    assert "tie" not in str(plain)
    target = Tied()
    target.load_state_dict(saved)
    assert target.embed.weight.dtype == torch.float32
    assert target.head.weight is target.embed.weight


class TiedWithMethod(Tied):
    def tie_weights(self) -> None:
        self.head.weight = self.embed.weight


class MixedDtypes(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(2, 2).half()
        self.norm = nn.LayerNorm(2)  # float32 beside a float16 layer


def test_assign_fixes_are_offered_only_as_torch_confirms_them():
    saved = TiedWithMethod().half().state_dict()
    text = " ".join(
        str(pb.explain_state_dict(TiedWithMethod(), saved, assign=True)).split()
    )
    assert "model.tie_weights() after loading ties them again" in text
    retied = TiedWithMethod()
    retied.load_state_dict(copy.deepcopy(saved), assign=True)
    retied.tie_weights()
    assert retied.head.weight is retied.embed.weight
    # One cast cannot give a float16 layer and a float32 norm their dtypes back.
    mixed = {k: v.to(torch.bfloat16) for k, v in MixedDtypes().state_dict().items()}
    text = " ".join(
        str(pb.explain_state_dict(MixedDtypes(), mixed, assign=True)).split()
    )
    assert "gives every tensor its dtype back" not in text
    assert "would leave 2 tensor(s) with another dtype than the module's" in text
    cast = MixedDtypes()
    cast.load_state_dict(copy.deepcopy(mixed), assign=True)
    cast.to(torch.float16)
    assert cast.norm.weight.dtype != MixedDtypes().norm.weight.dtype


def test_meta_tensors_are_fixed_by_to_empty_or_assign_never_to():
    with torch.device("meta"):
        model = nn.Linear(2, 2)
    with pytest.raises(pb.DeviceMismatchError) as caught:
        pb.check_devices(model, "cpu")
    text = " ".join(str(caught.value).split())
    assert "to_empty(device='cpu')" in text
    assert "assign=True" in text
    assert "call model.to(" not in text
    # Each suggested fix, done for real, passes the check; .to() raises.
    with pytest.raises(NotImplementedError):
        copy.deepcopy(model).to("cpu")
    emptied = copy.deepcopy(model).to_empty(device="cpu")
    emptied.reset_parameters()
    assert pb.check_devices(emptied, "cpu") == torch.device("cpu")
    assigned = copy.deepcopy(model)
    assigned.load_state_dict(nn.Linear(2, 2).state_dict(), assign=True)
    assert pb.check_devices(assigned, "cpu") == torch.device("cpu")


def entries_of(message: str) -> dict[str, str]:
    """A device message's entries, unwrapped, by tensor name."""
    entries: dict[str, str] = {}
    name = ""
    for line in message.splitlines()[1:]:
        if line.startswith("      "):
            entries[name] += " " + line.strip()
        else:
            name = line.split()[0]
            entries[name] = line.strip()
    return entries


class Counted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(2, 2)
        self.step = torch.tensor(0)  # a 0-dim CPU tensor, a stray all the same
        self.scale = torch.ones(2)


def test_a_0_dim_cpu_stray_is_marked_harmless_as_torch_says():
    model = Counted().to("meta")
    with pytest.raises(pb.DeviceMismatchError) as caught:
        pb.check_devices(model, "meta")
    assert set(caught.value.misplaced) == {"step", "scale"}, "still strays"
    entries = entries_of(str(caught.value))
    assert "harmless to the forward pass" in entries["step"]
    assert "harmless" not in entries["scale"]
    # torch: a 0-dim CPU tensor mixes with meta tensors, a 1-dim one does not.
    assert (model.proj.weight * model.step).device.type == "meta"
    with pytest.raises(RuntimeError):
        model.proj.weight * model.scale


def test_flip_the_harmless_mark_follows_torchs_answer(monkeypatch):
    """A wrong premise (torch refusing the 0-dim tensor) removes the mark."""
    monkeypatch.setattr(_devices, "_torch_says", lambda: (False, ""))
    model = Counted().to("meta")
    with pytest.raises(pb.DeviceMismatchError) as caught:
        pb.check_devices(model, "meta")
    assert "harmless" not in str(caught.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_missing_device_suggests_the_meta_check():
    model = Counted()
    with pytest.raises(ValueError, match="has no cuda device") as caught:
        pb.check_devices(model, "cuda")
    text = " ".join(str(caught.value).split())
    recipe = "check_devices(copy.deepcopy(model).to('meta'), 'meta')"
    assert recipe in text
    # The recipe runs here and names the strays .to() leaves behind.
    with pytest.raises(pb.DeviceMismatchError) as meta_check:
        eval("pb." + recipe, {"pb": pb, "copy": copy, "model": model})
    assert set(meta_check.value.misplaced) == {"step", "scale"}


def test_the_library_leaves_the_callers_random_numbers_alone():
    # A reader who calls the library between torch.manual_seed and building a
    # model must get the model the seed promises (the probes drew numbers once).
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    model.stray = torch.zeros(1)
    state = torch.get_rng_state()
    pb.inventory(model)
    pb.find_strays(model)
    pb.explain_state_dict(model, model.state_dict())
    assert torch.equal(torch.get_rng_state(), state)
