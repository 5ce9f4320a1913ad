"""The library on real architectures built from transformers configs (no downloads, no weights).

Each verdict is checked against what torch itself does with the real model.
timm is not used: it requires torchvision, and the torchvision on PyPI does not
import beside the pinned CPU torch. Its Swin pattern (a non-persistent
relative-position index) is covered twice: written out by hand as timm has it,
and in transformers' own Swin.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import pytorch_buffers as pb

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may download
transformers = pytest.importorskip("transformers")

SMALL = {
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "max_position_embeddings": 32,
}


def llama(*, device: str = "cpu", tie: bool = True) -> nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=64, num_key_value_heads=1, tie_word_embeddings=tie, **SMALL
    )
    torch.manual_seed(0)
    with torch.device(device):
        return transformers.LlamaForCausalLM(config)


def bert(head: bool, labels: int = 3) -> nn.Module:
    config = transformers.BertConfig(vocab_size=64, num_labels=labels, **SMALL)
    torch.manual_seed(0)
    if head:
        return transformers.BertForSequenceClassification(config)
    return transformers.BertModel(config)


def real_load(module: nn.Module, state: dict[str, object], *, strict: bool):
    try:
        result = module.load_state_dict(state, strict=strict)
    except RuntimeError as error:
        return str(error), None
    return None, result


def test_causal_lm_saved_without_its_tied_head():
    model = llama()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    state = model.state_dict()
    del state["lm_head.weight"]  # what saving a tied model without duplicates gives
    report = pb.explain_state_dict(llama(), state)
    target = llama()
    strict_error, _ = real_load(target, state, strict=True)
    assert not report.loads_strict
    assert strict_error is not None
    assert report.strict_error == strict_error
    _, result = real_load(target, state, strict=False)
    assert result.missing_keys == ["lm_head.weight"]
    assert report.safe_with_strict_false
    assert torch.equal(target.lm_head.weight, state["model.embed_tokens.weight"])


def test_rotary_inv_freq_after_meta_init():
    state = llama().state_dict()
    meta_model = llama(device="meta")
    report = pb.explain_state_dict(meta_model, state)
    assert report.loads_strict
    assert set(report.on_meta) >= {"model.rotary_emb.inv_freq"}
    assert "WARNING" in str(report)
    # torch: to_empty + a strict load succeeds, and inv_freq is not in the checkpoint.
    meta_model.to_empty(device="cpu")
    assert meta_model.load_state_dict(state) is not None
    assert "model.rotary_emb.inv_freq" not in state


def test_base_model_checkpoint_into_a_task_model():
    base_state = bert(head=False).state_dict()
    target = bert(head=True)
    report = pb.explain_state_dict(target, base_state)
    fix = report.prefix_fix
    assert fix is not None
    assert (fix.prefix, fix.action, fix.loads_strict_after) == ("bert.", "add", False)
    renamed = {"bert." + key: value for key, value in base_state.items()}
    _, result = real_load(target, renamed, strict=False)
    remaining = str(report).split("Fix:")[1]
    assert sorted(result.missing_keys) == ["classifier.bias", "classifier.weight"]
    assert "classifier.weight" in remaining
    assert "bert.encoder" not in remaining


def test_classifier_head_with_another_number_of_labels():
    state = bert(head=True, labels=3).state_dict()
    target = bert(head=True, labels=5)
    report = pb.explain_state_dict(target, state)
    error, _ = real_load(target, state, strict=False)
    assert error is not None  # strict=False still raises on shapes
    assert not report.loads_non_strict
    assert {r.key: r.module_shape for r in report.shape_mismatches} == {
        "classifier.weight": (5, 16),
        "classifier.bias": (5,),
    }
    kept = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    assert real_load(target, kept, strict=False)[0] is None


class WindowAttention(nn.Module):
    """Swin's pattern (timm): a relative-position index kept out of checkpoints."""

    def __init__(self, window: int = 3, heads: int = 2) -> None:
        super().__init__()
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window - 1) ** 2, heads)
        )
        coords = torch.stack(
            torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
        ).flatten(1)
        relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
        relative += window - 1
        index = relative[..., 0] * (2 * window - 1) + relative[..., 1]
        self.register_buffer("relative_position_index", index, persistent=False)
        self.qkv = nn.Linear(8, 24)


def test_swin_relative_position_index_after_meta_init():
    state = WindowAttention().state_dict()
    with torch.device("meta"):
        model = WindowAttention()
    report = pb.explain_state_dict(model, state)
    assert report.loads_strict
    assert report.on_meta == ("relative_position_index",)
    model.to_empty(device="cpu")
    assert model.load_state_dict(state) is not None  # torch reports success


def _tiny(name: str) -> nn.Module:
    t = transformers
    small = {**SMALL, "max_position_embeddings": 32}
    configs = {
        "gpt2": lambda: t.GPT2LMHeadModel(
            t.GPT2Config(
                n_embd=16, n_layer=2, n_head=2, vocab_size=64, n_positions=32,
                bos_token_id=0, eos_token_id=0,
            )
        ),
        "t5": lambda: t.T5ForConditionalGeneration(
            t.T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2)
        ),
        "qwen2": lambda: t.Qwen2ForCausalLM(
            t.Qwen2Config(vocab_size=64, num_key_value_heads=1, **small)
        ),
        "mistral": lambda: t.MistralForCausalLM(
            t.MistralConfig(vocab_size=64, num_key_value_heads=1, **small)
        ),
        "vit": lambda: t.ViTForImageClassification(
            t.ViTConfig(image_size=8, patch_size=4, num_labels=3, **SMALL)
        ),
        "resnet": lambda: t.ResNetForImageClassification(
            t.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3)
        ),
        "swin": lambda: t.SwinForImageClassification(
            t.SwinConfig(
                image_size=16, patch_size=4, embed_dim=8, depths=[1, 1],
                num_heads=[1, 2], window_size=2, num_labels=3,
            )
        ),
    }  # fmt: skip
    torch.manual_seed(0)
    return configs[name]()


ARCHITECTURES = ["gpt2", "t5", "qwen2", "mistral", "vit", "resnet", "swin"]


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_architecture(name):
    model = _tiny(name)
    state = model.state_dict()
    inv = pb.inventory(model)
    assert set(state) <= {n for r in inv for n in r.names}
    assert not pb.find_strays(model)
    # A model's own checkpoint loads strictly, as torch says on the real model.
    assert pb.explain_state_dict(model, state).loads_strict
    assert real_load(_tiny(name), state, strict=True)[0] is None
    # Built on meta: the warning names exactly the buffers state_dict() leaves out.
    with torch.device("meta"):
        meta_model = _tiny(name)
    non_persistent = {n for n, _ in meta_model.named_buffers() if n not in state}
    report = pb.explain_state_dict(meta_model, state)
    assert report.loads_strict
    assert set(report.on_meta) == non_persistent
    if name == "swin":  # the pattern issue 11 names, in transformers' Swin
        assert any(n.endswith("relative_position_index") for n in non_persistent)
