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

import io
import os
import pickle
import tempfile
import zipfile
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
# ``state_dict()`` is an ordered mapping from names to tensors, built module by
# module: a module's own parameters, then its own persistent buffers, then the
# entries of each submodule in the order they were assigned. Here the attention
# module has no parameters of its own (the weights belong to its three
# ``nn.Linear`` submodules), so its own buffer ``mask`` comes first.

without_keys = list(ca_without_buffer.state_dict())
with_keys = list(ca_with_buffer.state_dict())
print("without buffer:", without_keys)
print("with buffer:   ", with_keys)
print("only in the buffered module:", sorted(set(with_keys) - set(without_keys)))
assert with_keys == ["mask", *without_keys], (
    "claim: the module's own buffer comes before its submodules' parameters"
)
# sphinx_gallery_start_ignore
assert without_keys == ["W_query.weight", "W_key.weight", "W_value.weight"], (
    "claim: submodules' entries come in the order they were assigned"
)


class Order(nn.Module):
    def __init__(self, device=None):
        super().__init__()
        self.child = nn.Linear(1, 1, device=device)  # on meta: draws no random numbers
        self.register_buffer("own_buffer", torch.zeros(1))
        self.register_buffer("own_scratch", torch.zeros(1), persistent=False)
        self.own_parameter = nn.Parameter(torch.zeros(1))


assert list(Order(device="meta").state_dict()) == [
    "own_parameter",
    "own_buffer",
    "child.weight",
    "child.bias",
], "claim: own parameters, then own persistent buffers, then submodules"
# sphinx_gallery_end_ignore

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
# ``weights_only=True`` (the default since torch 2.6, spelled out here for
# older versions) torch's restricted unpickler only rebuilds tensors, plain
# containers and an allowlist of torch types (``torch.Size``, dtypes, and what
# ``torch.serialization.add_safe_globals`` adds), which covers a state dict.

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
    without_result = loaded_without.load_state_dict(
        torch.load(without_path, weights_only=True, map_location="cpu")
    )

# sphinx_gallery_start_ignore
assert not checkpoint_dir.exists(), "claim: nothing is left where you run this"
checkpoint = io.BytesIO()
torch.save(ca_with_buffer.state_dict(), checkpoint)  # saved from this build's device
with zipfile.ZipFile(checkpoint) as archive:
    assert any(n.endswith("data.pkl") for n in archive.namelist()), (
        "claim: a .pt file holds a pickle"
    )
checkpoint.seek(0)
saved = torch.load(checkpoint, weights_only=True, map_location="cpu")
assert isinstance(saved, dict), "claim: a state dict is a plain container"
assert all(type(t) is torch.Tensor for t in saved.values()), (
    "claim: a state dict holds only tensors"
)
assert all(t.device.type == "cpu" for t in saved.values()), (
    "claim: map_location='cpu' loads every tensor onto the CPU"
)
# weights_only=True stops a pickle from running code; without it, loading runs it.
# The payload is this check's own, harmless (it sets a flag): weights_only=False
# below loads it only to prove the claim, never a file from elsewhere.
import builtins


class Payload:
    def __reduce__(self):
        return (exec, ("import builtins; builtins._guide_payload_ran = True",))


payload = io.BytesIO()
torch.save({"weights": Payload()}, payload)
refusals = []
for load_arguments in ({"weights_only": True}, {}):  # {}: torch's own default
    payload.seek(0)
    try:
        torch.load(payload, **load_arguments)
    except pickle.UnpicklingError as error:
        refusals.append(str(error))
assert len(refusals) == 2, "claim: weights_only=True, the default, refuses a payload"
assert not hasattr(builtins, "_guide_payload_ran"), "claim: no code ran on load"
assert "PyTorch 2.6" in refusals[1], "claim: weights_only=True is the default since 2.6"
payload.seek(0)
torch.load(payload, weights_only=False)
assert builtins._guide_payload_ran, "claim: unpickling an arbitrary object runs code"
del builtins._guide_payload_ran
# sphinx_gallery_end_ignore

# %%
# ``weights_only=True`` is a safeguard, not a guarantee. Before torch 2.6.0 a
# crafted file could run code despite it (CVE-2025-32434), and before 2.10.0 a
# crafted file could corrupt memory in its unpickler (CVE-2026-24747). Treat a
# checkpoint from someone you do not trust as code. For files from others,
# prefer the `safetensors <https://huggingface.co/docs/safetensors>`__ format,
# which stores raw tensors and no pickle (``pip install safetensors``; this
# chapter needs torch alone). The torch that ran this page, against both:

from torch.torch_version import TorchVersion

running = TorchVersion(torch.__version__)
WEIGHTS_ONLY_FIXES = {
    "CVE-2025-32434": ("2.6.0", "code execution despite weights_only=True"),
    "CVE-2026-24747": ("2.10.0", "memory corruption in its unpickler"),
}
weights_only_status = {}
for cve, (fixed_in, flaw) in WEIGHTS_ONLY_FIXES.items():
    weights_only_status[cve] = "fixed" if running >= fixed_in else "AFFECTED"
    print(
        f"{cve} ({flaw}; fixed in {fixed_in}): {weights_only_status[cve]} in {running}"
    )
# sphinx_gallery_start_ignore
assert TorchVersion("2.10.0") > "2.9.1", "claim: versions compare as numbers"
assert TorchVersion("2.5.1+cu124") < "2.6.0", "claim: 2.5.1 is before the first fix"
assert TorchVersion("2.9.1") < "2.10.0", "claim: 2.9.1 is before the second fix"
# sphinx_gallery_end_ignore

# %%
# The buffered module comes back with the modified mask:

print(loaded_with.mask)

# %%
# The unbuffered module comes back with the mask its constructor built; the 2s
# were never saved:

print(loaded_without.mask)
survived_with = bool((loaded_with.mask == 2.0).any())
survived_without = bool((loaded_without.mask == 2.0).any())
print("change survived, with buffer:   ", survived_with)
print("change survived, without buffer:", survived_without)
print("load_state_dict said, without buffer:", without_result)
assert survived_with, "claim: the registered buffer's change survives the checkpoint"
assert not survived_without, "claim: the plain attribute's change is lost"
assert tuple(without_result) == ([], []), "claim: and it is lost silently"

# %%
# ``map_location="cpu"`` loads the tensors onto the CPU whatever device they were
# saved from, so the checkpoint also opens on a machine without that device.
#
# What to remember
# ----------------
# - ``state_dict()`` holds parameters and (persistent) buffers, each module's
#   own before its submodules'; plain tensor attributes are not in it, so they
#   are neither saved nor restored.
# - A buffer that carries learned or updated state must be registered, or every
#   checkpoint silently drops it.
# - Load checkpoints with ``torch.load(path, weights_only=True)``: a checkpoint is
#   a pickle, and that setting refuses objects that run code on load. It had
#   flaws before torch 2.6.0 and 2.10.0 (CVE-2025-32434, CVE-2026-24747): treat
#   an untrusted checkpoint as code, and prefer safetensors for files from
#   others.
