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
import textwrap

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


def print_error(error):
    """Print an exception's type and message, wrapped to this page's 100 columns."""
    for line in f"{type(error).__name__}: {error}".expandtabs(4).splitlines():
        print(textwrap.fill(line, 100, subsequent_indent="        "))


# %%
# Two ways to say "not persistent"
# --------------------------------
# ``register_buffer`` takes ``persistent=False``. ``nn.Buffer`` wraps a tensor so
# that plain attribute assignment registers it, like ``nn.Parameter`` does for
# parameters; it also takes ``persistent=False``. (The module below has no
# ``forward``: it only holds the tensors this chapter saves and loads.)


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
assert all(b.device.type == device.type for b in attention.buffers()), (
    "claim: non-persistent buffers move with .to(device)"
)
assert list(attention.state_dict()) == ["qkv.weight"], (
    "claim: neither non-persistent buffer is in state_dict()"
)
# sphinx_gallery_start_ignore
assert sorted(name for name, _ in attention.named_buffers()) == ["angles", "mask"], (
    "claim: assigning an nn.Buffer registers it, like register_buffer"
)
# sphinx_gallery_end_ignore

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
# sphinx_gallery_start_ignore
assert persistent_size - non_persistent_size >= 12 * 4096**2, (
    "claim: persistent bool masks add 4,096² bytes per layer to the checkpoint"
)
# sphinx_gallery_end_ignore

# %%
# The other reason is shape. A persistent mask records the context length the
# checkpoint was trained with. Load it into a model built for a longer context
# and the mask, not the weights, refuses to load:

short = Attention(dim=8, context_length=16, persistent_mask=True)
long = Attention(dim=8, context_length=32, persistent_mask=True)
try:
    long.load_state_dict(short.state_dict())
except RuntimeError as error:
    shape_error = str(error)
    print_error(error)
else:
    shape_error = ""
assert "size mismatch for mask" in shape_error, "claim: the mask refuses to load"
# sphinx_gallery_start_ignore
assert "qkv.weight" not in shape_error, "claim: the weights are not what refuses"
# sphinx_gallery_end_ignore

# %%
# With a non-persistent mask the same load works, and the longer model keeps
# the mask its own ``__init__`` built:

long_np = Attention(dim=8, context_length=32, persistent_mask=False)
long_np_result = long_np.load_state_dict(
    Attention(8, 16, persistent_mask=False).state_dict()
)
print(long_np_result)
print("mask shape after loading:", tuple(long_np.mask.shape))
assert long_np.mask.shape == (32, 32), "claim: the longer model keeps its own mask"
# sphinx_gallery_start_ignore
assert tuple(long_np_result) == ([], []), "claim: with a non-persistent mask it loads"
# sphinx_gallery_end_ignore

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
    unexpected_error = str(error)
    print_error(error)
else:
    unexpected_error = ""
# sphinx_gallery_start_ignore
assert 'Unexpected key(s) in state_dict: "mask"' in unexpected_error, (
    "claim: a strict load of the old checkpoint fails and names the mask"
)
# sphinx_gallery_end_ignore

# %%
# Note what the exception does not undo: ``load_state_dict`` copies every key
# that matches before it raises, so the module is now half loaded.

weight_copied = torch.equal(new_module.qkv.weight, old_checkpoint["qkv.weight"])
print("weight copied anyway:", weight_copied)
assert weight_copied, "claim: a failed strict load still copies the matching keys"

# %%
# The reverse: a checkpoint saved without the mask, loaded into a module that
# now expects one.

try:
    Attention(8, 16, persistent_mask=True).load_state_dict(new_module.state_dict())
except RuntimeError as error:
    missing_error = str(error)
    print_error(error)
else:
    missing_error = ""
# sphinx_gallery_start_ignore
assert 'Missing key(s) in state_dict: "mask"' in missing_error, (
    "claim: a strict load into a module that expects the mask fails and names it"
)
# sphinx_gallery_end_ignore

# %%
# What ``strict=False`` does, and what it does not
# ------------------------------------------------
# ``strict=False`` forgives exactly two things, missing keys and unexpected
# keys: it makes both loads above pass and returns the keys it skipped.

new_checkpoint = new_module.state_dict()
skipped_unexpected = Attention(8, 16, persistent_mask=False).load_state_dict(
    old_checkpoint, strict=False
)
skipped_missing = Attention(8, 16, persistent_mask=True).load_state_dict(
    new_checkpoint, strict=False
)
print(skipped_unexpected)
print(skipped_missing)
# sphinx_gallery_start_ignore
assert skipped_unexpected.unexpected_keys == ["mask"], "claim: strict=False skips it"
assert skipped_missing.missing_keys == ["mask"], "claim: strict=False skips it"
# sphinx_gallery_end_ignore

# %%
# That is harmless here, but it skips a real problem just as quietly. Below, the
# old checkpoint has also lost its weight (say, after a rename): with
# ``strict=False`` the load "succeeds" and the module keeps random weights.

broken_checkpoint = dict(old_checkpoint)
del broken_checkpoint["qkv.weight"]
fresh_module = Attention(8, 16, persistent_mask=False)
broken_result = fresh_module.load_state_dict(broken_checkpoint, strict=False)
print(broken_result)
weights_loaded = torch.equal(fresh_module.qkv.weight, old_checkpoint["qkv.weight"])
print("weights loaded?", weights_loaded)
assert broken_result.missing_keys == ["qkv.weight"], "claim: strict=False skips it"
assert not weights_loaded, "claim: and the module keeps its random weights"

# %%
# What ``strict=False`` does not forgive is a key whose *shape* differs. The
# 16-token mask from above still refuses to load into the 32-token model:

try:
    long.load_state_dict(short.state_dict(), strict=False)
except RuntimeError as error:
    strict_false_error = str(error)
    print_error(error)
else:
    strict_false_error = ""
assert "size mismatch for mask" in strict_false_error, (
    "claim: strict=False still raises on a shape mismatch"
)

# %%
# The usual fix: drop the keys the module no longer saves, by name, then load
# strictly, so that any other mismatch still fails loudly.

NO_LONGER_SAVED = {"mask"}  # made non-persistent in this version of the code


def drop_no_longer_saved(checkpoint):
    return {k: v for k, v in checkpoint.items() if k not in NO_LONGER_SAVED}


filtered = drop_no_longer_saved(old_checkpoint)
print("dropped:", sorted(old_checkpoint.keys() - filtered.keys()))
print(new_module.load_state_dict(filtered))

# %%
# Dropping by name matters. Keeping only the keys the module expects would
# also throw away a key that does not belong to this model at all, and the
# load would report "All keys matched". Here the old checkpoint carries a
# stray ``proj.weight`` (from another model, say); the strict load still names
# it:

foreign_checkpoint = {**old_checkpoint, "proj.weight": torch.zeros(8, 8)}
try:
    Attention(8, 16, persistent_mask=False).load_state_dict(
        drop_no_longer_saved(foreign_checkpoint)
    )
except RuntimeError as error:
    foreign_error = str(error)
    print_error(error)
else:
    foreign_error = ""
assert 'Unexpected key(s) in state_dict: "proj.weight"' in foreign_error, (
    "claim: after dropping by name, a foreign key still fails the strict load"
)
# sphinx_gallery_start_ignore
expected_keys = new_module.state_dict().keys()
kept_expected = {k: v for k, v in foreign_checkpoint.items() if k in expected_keys}
with torch.device("meta"):
    hides_it = Attention(8, 16, persistent_mask=False)
assert not any(hides_it.load_state_dict(kept_expected, assign=True)), (
    "claim: keeping only expected keys drops the foreign key: all keys match"
)
with torch.device("meta"):
    still_strict = Attention(8, 16, persistent_mask=False)
try:
    still_strict.load_state_dict(drop_no_longer_saved(broken_checkpoint), assign=True)
except RuntimeError as error:
    other_mismatch = str(error)
else:
    other_mismatch = ""
assert 'Missing key(s) in state_dict: "qkv.weight"' in other_mismatch, (
    "claim: after dropping by name, a strict load still fails on a missing key"
)
# sphinx_gallery_end_ignore

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

# sphinx_gallery_start_ignore
assert [name for name, _ in model.named_buffers()] == ["0.mask", "0.angles"], (
    "claim: named_buffers() walks the tree, persistent or not"
)
assert model.get_buffer("0.mask") is model[0].mask, "claim: get_buffer takes a path"
# sphinx_gallery_end_ignore

slot = nn.Module()
slot.register_buffer("cache", None)
print("None buffer: named_buffers", [n for n, _ in slot.named_buffers()],
      "state_dict", list(slot.state_dict()))  # fmt: skip
# sphinx_gallery_start_ignore
assert list(slot.named_buffers()) == [], "claim: named_buffers() skips a None buffer"
assert list(slot.state_dict()) == [], "claim: state_dict() skips a None buffer"
assert slot.to("meta").cache is None, "claim: .to() skips a None buffer"
# sphinx_gallery_end_ignore
slot.cache = torch.zeros(3)  # assigning to the slot registers the tensor
print("after assignment: named_buffers", [n for n, _ in slot.named_buffers()],
      "state_dict", list(slot.state_dict()))  # fmt: skip
assert list(slot.state_dict()) == ["cache"], "claim: assigning registers the tensor"

# %%
# What to remember
# ----------------
# - ``persistent=False`` (on ``register_buffer`` or ``nn.Buffer``) keeps a buffer
#   on the module's device and out of ``state_dict()``: smaller checkpoints, and
#   no shape baked into them for tensors the code rebuilds.
# - A persistence change breaks strict loading in both directions; the error
#   names the key.
# - ``strict=False`` forgives missing and unexpected keys, real problems
#   included, but still raises on a shape mismatch. Drop the keys the module no
#   longer saves and load strictly instead.
