r"""
Non-persistent buffers and ``nn.Buffer``
========================================

Some buffers should follow the module to the device but stay out of its
checkpoints: a causal mask or a rotary table that ``__init__`` rebuilds from the
configuration. ``register_buffer(..., persistent=False)``, or
``nn.Buffer(..., persistent=False)`` since torch 2.5, does exactly that. This
chapter shows what changes, what goes wrong when a checkpoint and a module
disagree about persistence, and the buffer-related methods of ``nn.Module``.
"""

# %%
# Where this page ran
# -------------------

import io
import os

import torch
from torch import nn

# sphinx_gallery_thumbnail_path = "_thumbnails/05_non_persistent_buffers.png"

device = torch.device(
    os.environ.get("GUIDE_DEVICE")
    or torch.accelerator.current_accelerator(check_available=True)
    or "cpu"
)
print(f"torch {torch.__version__}, device: {device}")
torch.manual_seed(123)

# %%
# Two ways to say "not persistent"
# --------------------------------
# ``register_buffer`` takes ``persistent=False``. ``nn.Buffer`` wraps a tensor so
# that plain attribute assignment registers it, like ``nn.Parameter`` does for
# parameters; it also takes ``persistent=False``.


class Attention(nn.Module):
    def __init__(self, dim, context_length, *, persistent_mask):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        causal = torch.tril(
            torch.ones(context_length, context_length, dtype=torch.bool)
        )
        self.register_buffer("mask", causal, persistent=persistent_mask)
        # A rotary-embedding angle table, rebuilt from the configuration:
        inv_freq = 1.0 / 10000 ** (torch.arange(0, dim, 2) / dim)
        positions = torch.arange(context_length, dtype=torch.float32)
        self.angles = nn.Buffer(torch.outer(positions, inv_freq), persistent=False)


attention = Attention(dim=8, context_length=16, persistent_mask=False).to(device)
for name, buffer in attention.named_buffers():
    print(f"buffer {name:7} on {buffer.device}, dtype {buffer.dtype}")
print("state_dict keys:", list(attention.state_dict()))

# %%
# Both buffers moved with ``.to(device)``; neither is in ``state_dict()``, which
# holds the weight alone.
#
# Why LLM code keeps masks and caches out of checkpoints
# ------------------------------------------------------
# A persistent mask is saved with every checkpoint, although any copy of the
# code can rebuild it. For a context of 4,096 tokens and a bool mask in each of
# 12 layers, here is what that costs (saved to memory, not to disk):


def checkpoint_bytes(module):
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def stack(persistent_mask):
    return nn.ModuleList(
        Attention(64, 4096, persistent_mask=persistent_mask) for _ in range(12)
    )


persistent_size = checkpoint_bytes(stack(persistent_mask=True))
non_persistent_size = checkpoint_bytes(stack(persistent_mask=False))
print(f"checkpoint with persistent masks:     {persistent_size / 2**20:7.1f} MiB")
print(f"checkpoint with non-persistent masks: {non_persistent_size / 2**20:7.1f} MiB")

# %%
# The other reason is shape. A persistent mask records the context length the
# checkpoint was trained with. Load it into a model built for a longer context
# and the mask, not the weights, refuses to load:

short = Attention(dim=8, context_length=16, persistent_mask=True)
long = Attention(dim=8, context_length=32, persistent_mask=True)
try:
    long.load_state_dict(short.state_dict())
except RuntimeError as error:
    print(f"{type(error).__name__}: {error}")

# %%
# With a non-persistent mask the same load works, and the longer model keeps
# the mask its own ``__init__`` built:

long_np = Attention(dim=8, context_length=32, persistent_mask=False)
print(long_np.load_state_dict(Attention(8, 16, persistent_mask=False).state_dict()))
print("mask shape after loading:", tuple(long_np.mask.shape))

# %%
# A checkpoint that disagrees with the module
# -------------------------------------------
# Code changes; checkpoints stay. First, a checkpoint saved while the mask was
# persistent, loaded into the new version where it is not:

old_checkpoint = Attention(8, 16, persistent_mask=True).state_dict()
new_module = Attention(8, 16, persistent_mask=False)
try:
    new_module.load_state_dict(old_checkpoint)
except RuntimeError as error:
    print(f"{type(error).__name__}: {error}")

# %%
# Note what the exception does not undo: ``load_state_dict`` copies every key
# that matches before it raises, so the module is now half loaded.

print(
    "weight copied anyway:",
    torch.equal(new_module.qkv.weight, old_checkpoint["qkv.weight"]),
)

# %%
# The reverse: a checkpoint saved without the mask, loaded into a module that
# now expects one.

try:
    Attention(8, 16, persistent_mask=True).load_state_dict(new_module.state_dict())
except RuntimeError as error:
    print(f"{type(error).__name__}: {error}")

# %%
# ``strict=False`` and what it hides
# ----------------------------------
# ``strict=False`` makes both loads pass and returns the keys it skipped. That is
# harmless here, but it skips a real problem just as quietly. Below, the old
# checkpoint has also lost its weight (say, after a rename): with
# ``strict=False`` the load "succeeds" and the module keeps random weights.

broken_checkpoint = dict(old_checkpoint)
del broken_checkpoint["qkv.weight"]
fresh_module = Attention(8, 16, persistent_mask=False)
print(fresh_module.load_state_dict(broken_checkpoint, strict=False))
weights_loaded = torch.equal(fresh_module.qkv.weight, old_checkpoint["qkv.weight"])
print("weights loaded?", weights_loaded)

# %%
# The usual fix: drop exactly the keys the module no longer saves, then load
# strictly, so that any other mismatch still fails loudly.

expected_keys = new_module.state_dict().keys()
filtered = {key: value for key, value in old_checkpoint.items() if key in expected_keys}
print("dropped:", sorted(old_checkpoint.keys() - filtered.keys()))
print(new_module.load_state_dict(filtered))

# %%
# The buffer methods of ``nn.Module``
# -----------------------------------
# ``buffers()`` and ``named_buffers()`` walk the module tree, persistent or not;
# ``get_buffer()`` takes a dotted path. A buffer can also be registered as
# ``None``: a named slot that ``.to()``, ``named_buffers()`` and
# ``state_dict()`` skip until a tensor is assigned to it.

model = nn.Sequential(Attention(8, 16, persistent_mask=True), nn.Linear(8, 8))
print("named_buffers():", [name for name, _ in model.named_buffers()])
print("buffers():      ", [tuple(b.shape) for b in model.buffers()])
print("get_buffer('0.mask'):", tuple(model.get_buffer("0.mask").shape))

slot = nn.Module()
slot.register_buffer("cache", None)
print("None buffer: named_buffers", [n for n, _ in slot.named_buffers()],
      "state_dict", list(slot.state_dict()))  # fmt: skip
slot.cache = torch.zeros(3)  # assigning to the slot registers the tensor
print("after assignment: named_buffers", [n for n, _ in slot.named_buffers()],
      "state_dict", list(slot.state_dict()))  # fmt: skip

# %%
# What to remember
# ----------------
# - ``persistent=False`` (on ``register_buffer`` or ``nn.Buffer``) keeps a buffer
#   on the module's device and out of ``state_dict()``: smaller checkpoints, and
#   no shape baked into them for tensors the code rebuilds.
# - A persistence change breaks strict loading in both directions; the error
#   names the key.
# - ``strict=False`` hides every mismatch, including real ones. Drop the keys the
#   module no longer saves and load strictly instead.
