"""explain_state_dict's verdicts, each checked against what load_state_dict really does."""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import pytorch_buffers as pb
from pytorch_buffers import TensorKind


def real_load(
    build: Callable[[], nn.Module],
    state_dict: Mapping[str, Any],
    *,
    strict: bool,
    assign: bool = False,
) -> tuple[nn.Module, str | None, list[str], list[str]]:
    """Load for real into a fresh module: (module, error, missing, unexpected)."""
    module = build()
    try:
        result = module.load_state_dict(state_dict, strict=strict, assign=assign)
    except RuntimeError as error:
        return module, str(error), [], []
    return module, None, result.missing_keys, result.unexpected_keys


def assert_matches_torch(
    build: Callable[[], nn.Module],
    state_dict: Mapping[str, Any],
    *,
    assign: bool = False,
) -> pb.StateDictReport:
    """The report's verdicts are what torch does on a real module."""
    report = pb.explain_state_dict(build(), state_dict, assign=assign)
    _, strict_error, _, _ = real_load(build, state_dict, strict=True, assign=assign)
    _, lenient_error, missing, unexpected = real_load(
        build, state_dict, strict=False, assign=assign
    )
    assert report.loads_strict == (strict_error is None)
    assert report.strict_error == strict_error
    assert report.loads_non_strict == (lenient_error is None)
    assert report.non_strict_error == lenient_error
    if lenient_error is None:
        assert {r.key for r in report.missing} == set(missing)
        assert {r.key for r in report.unexpected} == set(unexpected)
    return report


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight


def test_a_missing_tied_weight_is_filled_by_strict_false():
    state = Tied().state_dict()
    del state["head.weight"]
    report = assert_matches_torch(Tied, state)
    assert [(r.key, r.safe_to_ignore) for r in report] == [("head.weight", True)]
    assert report.safe_with_strict_false
    assert "same tensor as embed.weight" in " ".join(str(report).split())
    # What torch really does: the head holds the checkpoint's embedding.
    loaded, *_ = real_load(Tied, state, strict=False)
    assert torch.equal(loaded.head.weight, state["embed.weight"])


def test_assign_true_breaks_the_tie_and_the_report_says_so():
    state = Tied().state_dict()
    del state["head.weight"]
    report = assert_matches_torch(Tied, state, assign=True)
    assert not report.safe_with_strict_false
    assert "the tie is broken" in " ".join(str(report).split())
    loaded, *_ = real_load(Tied, state, strict=False, assign=True)
    assert loaded.head.weight is not loaded.embed.weight  # torch really untied them


def batchnorm() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))


def test_old_batchnorm_checkpoint_without_num_batches_tracked_loads():
    # An old checkpoint (no version metadata, as a plain dict has none): BatchNorm's
    # own _load_from_state_dict fills the counter, so strict=True loads.
    old = {k: v for k, v in batchnorm().state_dict().items() if "num_batches" not in k}
    report = assert_matches_torch(batchnorm, old)
    assert report.loads_strict
    assert not report


def test_current_batchnorm_checkpoint_without_num_batches_tracked_is_missing():
    # With version-2 metadata (a state_dict() with a key deleted), torch does
    # not fill it: the key is missing and strict=True raises.
    state = batchnorm().state_dict()
    del state["1.num_batches_tracked"]
    report = assert_matches_torch(batchnorm, state)
    assert [(r.key, r.kind) for r in report] == [
        ("1.num_batches_tracked", TensorKind.BUFFER)
    ]


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))


def test_compiled_checkpoint_into_a_plain_model():
    state = torch.compile(mlp()).state_dict()
    assert all(key.startswith("_orig_mod.") for key in state)
    report = assert_matches_torch(mlp, state)
    assert not report.loads_strict
    fix = report.prefix_fix
    assert fix is not None
    assert (fix.prefix, fix.action, fix.keys, fix.loads_strict_after) == (
        "_orig_mod.",
        "strip",
        4,
        True,
    )
    assert "consume_prefix_in_state_dict_if_present" in str(report)
    # The fix, applied by torch's own helper, really loads strictly.
    renamed = dict(state)
    torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(
        renamed, "_orig_mod."
    )
    assert real_load(mlp, renamed, strict=True)[1] is None


def test_plain_checkpoint_into_a_compiled_model():
    state = mlp().state_dict()
    report = assert_matches_torch(lambda: torch.compile(mlp()), state)
    fix = report.prefix_fix
    assert fix is not None
    assert (fix.prefix, fix.action, fix.loads_strict_after) == (
        "_orig_mod.",
        "add",
        True,
    )


@pytest.mark.parametrize("prefix", ["module.", "model."])
def test_wrapper_prefixes_in_one_line(prefix):
    state = {prefix + key: value for key, value in mlp().state_dict().items()}
    report = assert_matches_torch(mlp, state)
    assert report.prefix_fix is not None
    assert report.prefix_fix.prefix == prefix
    text = str(report)
    assert "key  " not in text  # no table: the prefix explains every row
    assert len(text.splitlines()) < 10


def test_data_parallel_model_keeps_its_prefix():
    state = mlp().state_dict()
    report = assert_matches_torch(lambda: nn.DataParallel(mlp()), state)
    assert report.prefix_fix is not None
    assert (report.prefix_fix.prefix, report.prefix_fix.action) == ("module.", "add")


def test_shape_mismatch_has_both_shapes_and_strict_false_raises():
    state = mlp().state_dict()

    def wider() -> nn.Module:
        return nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 5))

    report = assert_matches_torch(wider, state)
    assert not report.loads_non_strict
    shapes = {
        r.key: (r.checkpoint_shape, r.module_shape) for r in report.shape_mismatches
    }
    assert shapes == {"2.weight": ((2, 3), (5, 3)), "2.bias": ((2,), (5,))}
    assert "load_state_dict(strict=False): raises too (shapes differ" in str(report)
    # Dropping the mis-shaped keys, as the report says, lets strict=False load.
    kept = {k: v for k, v in state.items() if k not in shapes}
    assert real_load(wider, kept, strict=False)[1] is None


class WithExtraState(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.step = 0

    def get_extra_state(self) -> dict[str, int]:
        return {"step": self.step}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.step = state["step"]


def test_non_tensor_entries_load():
    saved = WithExtraState()
    saved.step = 7
    state = saved.state_dict()
    assert not isinstance(state["_extra_state"], torch.Tensor)
    target = WithExtraState()
    report = assert_matches_torch(WithExtraState, state)
    assert report.loads_strict
    assert target.step == 0  # the copy ran set_extra_state, not the module


def test_dynamically_quantized_packed_params_load():
    with pytest.warns((DeprecationWarning, UserWarning)):
        quantized = torch.ao.quantization.quantize_dynamic(
            nn.Sequential(nn.Linear(4, 4)), {nn.Linear}, dtype=torch.qint8
        )
    state = quantized.state_dict()
    assert any(not isinstance(v, torch.Tensor) for v in state.values())
    report = pb.explain_state_dict(quantized, state)
    assert report.loads_strict
    assert quantized.load_state_dict(state) is not None


class Rotary(nn.Module):
    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        inv_freq = 1.0 / 10000 ** (torch.arange(0, dim, 2) / dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)


def test_meta_init_warns_about_non_persistent_buffers():
    state = Rotary().state_dict()
    with torch.device("meta"):
        model = Rotary()
    report = assert_matches_torch(Rotary, state)
    assert report.not_restored == ("inv_freq",)
    report = pb.explain_state_dict(model, state)
    assert report.loads_strict
    assert report.on_meta == ("inv_freq",)
    assert "WARNING" in str(report)
    assert "to_empty()" in str(report)
    # What torch does: after to_empty and a successful strict load, the buffer
    # holds whatever the fresh memory held, not the value __init__ computes.
    model.to_empty(device="cpu")
    model.load_state_dict(state)
    assert model.inv_freq.device.type == "cpu"
    assert "inv_freq" not in state


def test_large_reports_are_grouped_and_capped():
    def deep() -> nn.Module:
        return nn.Sequential(*[nn.Linear(2, 2) for _ in range(300)])

    state = {f"layer{k}": v for k, v in deep().state_dict().items()}
    report = pb.explain_state_dict(deep(), state, max_rows=5)
    assert len(report) == 1200
    text = str(report)
    assert "(x300)" in text
    assert len(text.splitlines()) < 20


def test_explain_never_changes_the_module():
    module = Tied()
    before = {
        k: (id(v), v.clone()) for k, v in module.state_dict(keep_vars=True).items()
    }
    state = {k: torch.zeros_like(v) for k, v in module.state_dict().items()}
    pb.explain_state_dict(module, state)
    after = module.state_dict(keep_vars=True)
    assert all(
        id(after[k]) == i and torch.equal(after[k], v) for k, (i, v) in before.items()
    )


def test_bad_checkpoint_files(tmp_path: Path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.pt.*the file is empty"):
        pb.explain_state_dict(nn.ReLU(), empty)
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    with pytest.raises(ValueError, match=r"notes\.txt.*torch\.save"):
        pb.explain_state_dict(nn.ReLU(), text)
    good = tmp_path / "good.pt"
    torch.save(mlp().state_dict(), good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert not zipfile.is_zipfile(truncated)
    with pytest.raises(ValueError, match=r"truncated\.pt.*truncated"):
        pb.explain_state_dict(mlp(), truncated)
    folder = tmp_path / "hf-model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"model\.safetensors.*empty"):
        pb.explain_state_dict(mlp(), folder)  # a folder's one file is read
    (folder / "other.pt").write_bytes(b"x")
    with pytest.raises(
        ValueError, match=r"folder.*not one checkpoint.*'model\.safetensors'"
    ):
        pb.explain_state_dict(mlp(), folder)


def test_wrapped_checkpoint_is_found():
    state = {"model": mlp().state_dict(), "epoch": 3}
    report = pb.explain_state_dict(mlp(), state)
    assert report.loads_strict
    assert "the state dict is checkpoint['model']" in " ".join(str(report).split())
    assert pb.explain_state_dict(mlp(), state, key="model").loads_strict
    with pytest.raises(ValueError, match="pass key="):
        pb.explain_state_dict(mlp(), {"config": {"lr": 0.1}})


def test_safetensors_files(tmp_path: Path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    path = tmp_path / "model.safetensors"
    safetensors_torch.save_file(mlp().state_dict(), path)
    assert pb.explain_state_dict(mlp(), path).loads_strict
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match=r"broken\.safetensors.*safetensors file"):
        pb.explain_state_dict(mlp(), broken)
