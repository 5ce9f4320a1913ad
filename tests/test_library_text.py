"""Reports fit 100 columns, and one screen on a 70B-shaped model built on meta."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import pytorch_buffers as pb

WIDTH = 100
SCREEN = 50  # lines


LONG = "a_submodule_name_long_enough_to_push_every_table_column_past_the_right_margin_x"


class LongNames(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleDict({LONG: nn.Linear(4, 4), "b": nn.Linear(4, 4)})
        self.register_buffer(LONG + "_table", torch.zeros(3))
        setattr(self.blocks[LONG], LONG + "_cache", torch.ones(2))


def all_reports(model: nn.Module, checkpoint: dict[str, torch.Tensor]) -> list[str]:
    texts = [str(pb.inventory(model)), str(pb.find_strays(model))]
    texts.append(str(pb.explain_state_dict(model, checkpoint)))
    texts.append(str(pb.explain_state_dict(model, checkpoint, assign=True)))
    with pytest.raises(pb.DeviceMismatchError) as caught:
        pb.check_devices(model, "meta")
    texts.append(str(caught.value))
    return texts


CASES = {
    "long names, prefixed": lambda m: {
        "module." + k: v for k, v in m.state_dict().items()
    },
    "long names, half the keys": lambda m: dict(list(m.state_dict().items())[::2]),
    "head of another size": lambda m: {
        k: torch.zeros(7, *v.shape[1:]) if "b." in k else v
        for k, v in m.state_dict().items()
    },
}


@pytest.mark.parametrize("case", CASES)
def test_no_line_is_wider_than_100_columns(case):
    model = LongNames()
    for text in all_reports(model, CASES[case](model)):
        widest = max(text.splitlines(), key=len)
        assert len(widest) <= WIDTH, widest
    assert len(str(pb.inventory(model)).splitlines()[0]) <= WIDTH


def test_a_narrower_width_is_kept_too():
    model = LongNames()
    report = pb.explain_state_dict(model, CASES["long names, prefixed"](model))
    assert max(map(len, report.to_text(width=60).splitlines())) <= 60
    assert max(map(len, pb.find_strays(model).to_text(width=60).splitlines())) <= 60
    assert max(map(len, pb.inventory(model).to_text(width=60).splitlines())) <= 60


class Block(nn.Module):
    def __init__(self, hidden: int, mlp: int, kv: int) -> None:
        super().__init__()
        self.input_norm = nn.RMSNorm(hidden)
        self.q_proj = nn.Linear(hidden, hidden, bias=False)
        self.k_proj = nn.Linear(hidden, kv, bias=False)
        self.v_proj = nn.Linear(hidden, kv, bias=False)
        self.o_proj = nn.Linear(hidden, hidden, bias=False)
        self.post_norm = nn.RMSNorm(hidden)
        self.gate_proj = nn.Linear(hidden, mlp, bias=False)
        self.up_proj = nn.Linear(hidden, mlp, bias=False)
        self.down_proj = nn.Linear(mlp, hidden, bias=False)
        inv_freq = 1.0 / 500000 ** (torch.arange(0, 128, 2) / 128)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.mask = torch.ones(64, 64, dtype=torch.bool, device="cpu").tril()  # stray


class Llama70BShaped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        hidden, mlp, kv, vocab = 8192, 28672, 1024, 128256
        self.embed_tokens = nn.Embedding(vocab, hidden)
        self.layers = nn.ModuleList(Block(hidden, mlp, kv) for _ in range(80))
        self.norm = nn.RMSNorm(hidden)
        self.lm_head = nn.Linear(hidden, vocab, bias=False)


def test_reports_on_a_70b_shaped_meta_model_fit_one_screen():
    with torch.device("meta"):
        model = Llama70BShaped()
    state = model.state_dict()
    checkpoints = [
        {"module." + k: v for k, v in state.items()},
        {k: v for k, v in state.items() if "layers.3." not in k},
    ]
    texts = [str(pb.inventory(model)), str(pb.find_strays(model))]
    texts += [str(pb.explain_state_dict(model, ckpt)) for ckpt in checkpoints]
    with pytest.raises(pb.DeviceMismatchError) as caught:
        pb.check_devices(model, "meta")
    texts.append(str(caught.value))
    for text in texts:
        lines = text.splitlines()
        assert len(lines) <= SCREEN, text
        assert max(map(len, lines)) <= WIDTH, text
