r"""
Buffers in ``state_dict``
=========================

A registered buffer is part of the module's state, so ``state_dict()`` saves it
and ``load_state_dict()`` restores it. A plain tensor attribute is neither saved
nor restored: a change to it is silently lost in a checkpoint. This chapter
changes the mask in both versions of the module, saves both, loads them into
fresh modules, and shows which change survives.
"""


# %%
# Where this page ran
# -------------------

import os
import tempfile
from pathlib import Path

import torch
from torch import nn

# sphinx_gallery_thumbnail_path = "_thumbnails/03_state_dict.png"

device = torch.device(
    os.environ.get("GUIDE_DEVICE")
    or torch.accelerator.current_accelerator(check_available=True)
    or "cpu"
)
print(f"torch {torch.__version__}, device: {device}")

# %%
# The two modules
# ---------------
# As in the previous chapter: the same module with the mask as a plain attribute
# and as a registered buffer.


class CausalAttentionWithoutBuffers(nn.Module):
    def __init__(self, d_in, d_out, context_length, dropout, qkv_bias=False):
        super().__init__()
        self.d_out = d_out
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.dropout = nn.Dropout(dropout)
        self.mask = torch.triu(torch.ones(context_length, context_length), diagonal=1)

    def forward(self, x):
        b, num_tokens, d_in = x.shape
        keys = self.W_key(x)
        queries = self.W_query(x)
        values = self.W_value(x)

        attn_scores = queries @ keys.transpose(1, 2)
        attn_scores.masked_fill_(self.mask.bool()[:num_tokens, :num_tokens], -torch.inf)
        attn_weights = torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1)
        attn_weights = self.dropout(attn_weights)
        return attn_weights @ values


class CausalAttentionWithBuffer(nn.Module):
    def __init__(self, d_in, d_out, context_length, dropout, qkv_bias=False):
        super().__init__()
        self.d_out = d_out
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer(
            "mask", torch.triu(torch.ones(context_length, context_length), diagonal=1)
        )

    forward = CausalAttentionWithoutBuffers.forward  # the very same computation


context_length, d_in, d_out = 6, 3, 2
torch.manual_seed(123)
ca_without_buffer = CausalAttentionWithoutBuffers(d_in, d_out, context_length, 0.0).to(
    device
)
torch.manual_seed(123)
ca_with_buffer = CausalAttentionWithBuffer(d_in, d_out, context_length, 0.0).to(device)

# %%
# What each ``state_dict`` holds
# ------------------------------
# ``state_dict()`` is an ordered mapping from names to tensors: parameters
# first, then persistent buffers, submodule by submodule.

without_keys = list(ca_without_buffer.state_dict())
with_keys = list(ca_with_buffer.state_dict())
print("without buffer:", without_keys)
print("with buffer:   ", with_keys)
print("only in the buffered module:", sorted(set(with_keys) - set(without_keys)))

# %%
# Changing the mask
# -----------------
# As in the notebook, change every 1 in the mask to a 2 in both modules. (A real
# model would rather change a running statistic or a rotary cache; the point is
# the same.)

with torch.no_grad():
    ca_with_buffer.mask[ca_with_buffer.mask == 1.0] = 2.0
    ca_without_buffer.mask[ca_without_buffer.mask == 1.0] = 2.0
print(ca_with_buffer.mask)

# %%
# Saving and loading
# ------------------
# Each state dict goes to a file in a temporary directory (nothing is written
# where you run this), then into a freshly built module.
#
# ``torch.load(..., weights_only=True)`` matters: a ``.pt`` file is a pickle,
# and unpickling an arbitrary object can run arbitrary code. With
# ``weights_only=True`` (the default since torch 2.6; spelled out here so the
# code is safe on older versions too) torch only rebuilds tensors and plain
# containers, which is all a state dict holds.

with tempfile.TemporaryDirectory() as tmp:
    checkpoint_dir = Path(tmp)
    with_path = checkpoint_dir / "with_buffer.pt"
    without_path = checkpoint_dir / "without_buffer.pt"
    torch.save(ca_with_buffer.state_dict(), with_path)
    torch.save(ca_without_buffer.state_dict(), without_path)
    print(f"{with_path.name:18} {with_path.stat().st_size:6,} bytes")
    print(f"{without_path.name:18} {without_path.stat().st_size:6,} bytes")

    loaded_with = CausalAttentionWithBuffer(d_in, d_out, context_length, 0.0)
    loaded_with.load_state_dict(
        torch.load(with_path, weights_only=True, map_location="cpu")
    )
    loaded_without = CausalAttentionWithoutBuffers(d_in, d_out, context_length, 0.0)
    loaded_without.load_state_dict(
        torch.load(without_path, weights_only=True, map_location="cpu")
    )

# %%
# The buffered module comes back with the modified mask:

print(loaded_with.mask)

# %%
# The unbuffered module comes back with the mask its constructor built; the 2s
# were never saved:

print(loaded_without.mask)
print("change survived, with buffer:   ", bool((loaded_with.mask == 2.0).any()))
print("change survived, without buffer:", bool((loaded_without.mask == 2.0).any()))

# %%
# ``map_location="cpu"`` loads the tensors onto the CPU whatever device they were
# saved from, so the checkpoint also opens on a machine without that device.
#
# What to remember
# ----------------
# - ``state_dict()`` holds parameters and (persistent) buffers; plain tensor
#   attributes are not in it, so they are neither saved nor restored.
# - A buffer that carries learned or updated state must be registered, or every
#   checkpoint silently drops it.
# - Load checkpoints with ``torch.load(path, weights_only=True)``: a checkpoint is
#   a pickle, and only that setting stops it from running code on load.
