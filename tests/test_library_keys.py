"""Keys that are safe to ignore, or named for what they are, decided from the module
and checked against torch's own load."""

from __future__ import annotations

import os
import warnings

import pytest
import torch
from torch import nn

import pytorch_buffers as pb

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may download


def flat(report: pb.StateDictReport) -> str:
    return " ".join(str(report).split())


def llama() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config)


def old_llama_checkpoint(
    model: nn.Module, scale: float = 1.0
) -> dict[str, torch.Tensor]:
    """A checkpoint as older transformers saved it: one inv_freq per layer."""
    state = dict(model.state_dict())
    inv_freq = model.model.rotary_emb.inv_freq
    for index in range(len(model.model.layers)):
        state[f"model.layers.{index}.self_attn.rotary_emb.inv_freq"] = inv_freq * scale
    return state


def test_per_layer_inv_freq_copies_are_safe_and_the_drop_is_confirmed():
    model = llama()
    state = old_llama_checkpoint(model)
    report = pb.explain_state_dict(model, state)
    assert [r.safe_to_ignore for r in report.unexpected] == [True, True]
    assert report.safe_with_strict_false
    text = flat(report)
    assert (
        "copy of the module's non-persistent buffer model.rotary_emb.inv_freq" in text
    )
    code = "state_dict = {k: v for k, v in state_dict.items() if not k.endswith('.inv_freq')}"
    assert code in text
    assert "then load_state_dict(strict=True) loads" in text
    # torch agrees: strict=True refuses the keys; the suggested line, run, loads.
    with pytest.raises(RuntimeError, match="Unexpected key"):
        llama().load_state_dict(state)
    namespace = {"state_dict": dict(state)}
    exec(code, namespace)  # noqa: S102  (the report's own line, run as a reader would)
    llama().load_state_dict(namespace["state_dict"])


def test_flip_inv_freq_of_another_rope_base_is_not_called_safe():
    model = llama()
    state = old_llama_checkpoint(model, scale=0.5)  # not the module's values
    report = pb.explain_state_dict(model, state)
    assert not any(r.safe_to_ignore for r in report.unexpected)
    assert "Drop the" not in str(report)


def test_a_slot_holding_none_is_named_not_called_absent():
    state = nn.Linear(4, 4).state_dict()
    report = pb.explain_state_dict(nn.Linear(4, 4, bias=False), state)
    _, unexpected = report.missing, report.unexpected
    assert [r.key for r in unexpected] == ["bias"]
    assert "parameter slot holds None" in flat(report)
    assert not report.safe_with_strict_false
    result = nn.Linear(4, 4, bias=False).load_state_dict(state, strict=False)
    assert result.unexpected_keys == ["bias"], "torch: the None slot takes nothing"


class Counter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(2, 2)
        self.calls = 0

    def get_extra_state(self) -> dict[str, int]:
        return {"calls": self.calls}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.calls = state["calls"]


class NoExtra(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(2, 2)


def test_extra_state_is_named_as_extra_state():
    model = nn.Sequential(Counter())
    state = model.state_dict()
    assert "0._extra_state" in state
    without = {k: v for k, v in state.items() if not k.endswith("_extra_state")}
    report = pb.explain_state_dict(nn.Sequential(Counter()), without)
    assert [r.key for r in report.missing] == ["0._extra_state"]
    assert "extra state of Counter at '0' (set_extra_state)" in flat(report)
    assert "buffer would keep" not in flat(report)
    # A module without set_extra_state: torch calls the key unexpected.
    report = pb.explain_state_dict(nn.Sequential(NoExtra()), state)
    assert [r.key for r in report.unexpected] == ["0._extra_state"]
    assert "defines no set_extra_state" in flat(report)
    with pytest.raises(
        RuntimeError, match=r'Unexpected key\(s\) in state_dict: "0._extra_state"'
    ):
        nn.Sequential(NoExtra()).load_state_dict(state)


def qat_model() -> nn.Module:
    quantization = torch.ao.quantization
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU()).train()
    model.qconfig = quantization.get_default_qat_qconfig("fbgemm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantization.prepare_qat(model)


def test_keys_torch_counts_twice_are_listed_once():
    state = nn.Sequential(nn.Linear(4, 4), nn.ReLU()).state_dict()
    result = qat_model().load_state_dict(state, strict=False)
    assert len(result.missing_keys) > len(set(result.missing_keys)), "torch: twice"
    report = pb.explain_state_dict(qat_model(), state)
    keys = [r.key for r in report.missing]
    assert len(keys) == len(set(keys))
    assert set(keys) == set(result.missing_keys)
