r"""
Find the stray tensor in your own model
=======================================

In a real model the tensor that ``.to()`` left behind is one among hundreds: a
plain attribute, a tensor in a list, a table three submodules down. This chapter
uses the guide's small library, ``pytorch_buffers``, to find such tensors before
the model runs, on any machine, and to explain a ``load_state_dict`` mismatch.

.. note::

   Unlike the first three chapters, this one needs the library as well as
   torch. The library needs torch 2.13 or newer (``torch>=2.13`` in its
   ``pyproject.toml``). Install torch first (see the README), then the library's
   wheel, built from the same commit as this site and shipped with it::

       pip install https://pytorch-buffers.github.io/pytorch-buffers-guide/wheels/pytorch_buffers-0.2.0-py3-none-any.whl
"""

# %%
# Where this page ran
# -------------------

import os
import tempfile
import textwrap
from pathlib import Path

import torch
from torch import nn

try:
    import pytorch_buffers as pb
except ModuleNotFoundError:
    wheel = (  # built from this guide's commit and shipped with its site
        "https://pytorch-buffers.github.io/pytorch-buffers-guide/"
        "wheels/pytorch_buffers-0.2.0-py3-none-any.whl"
    )
    msg = f"This chapter needs the pytorch_buffers library: pip install {wheel}"
    raise SystemExit(msg) from None

# sphinx_gallery_thumbnail_path = "_thumbnails/04_find_the_stray.png"

device = torch.device(
    os.environ.get("GUIDE_DEVICE")
    or torch.accelerator.current_accelerator(check_available=True)
    or "cpu"
)
print(f"torch {torch.__version__}, device: {device}")
# sphinx_gallery_start_ignore
from importlib import metadata

from torch.torch_version import TorchVersion

try:
    library_requires = metadata.requires("pytorch-buffers") or []
except metadata.PackageNotFoundError:  # run from a source tree, not installed
    library_requires = ["torch>=2.13"]
assert "torch>=2.13" in library_requires, "claim: the library needs torch>=2.13"
assert TorchVersion(torch.__version__) >= "2.13", "claim: this torch meets the floor"
# sphinx_gallery_end_ignore

# %%
# The library's reports are plain text, and some of their lines are wider than
# this page. ``show`` prints them within its 100 columns; in your own code,
# ``print`` does the same job.


def show(text, width=100):
    """Print the library's text within ``width`` columns (the width of this page).

    A table too wide loses one of the two spaces between its columns, then
    wraps its last column under itself; any other long line wraps, indented.
    """
    lines, last_cell = str(text).expandtabs(4).splitlines(), {}
    for rule, line in enumerate(lines):
        if not (rule and line and set(line) <= {"-", " "}):
            continue
        gaps = [i for i in range(1, len(line)) if line[i - 1 : i + 1] == "  "]
        rows = [rule - 1, rule]  # the header, the rule, then rows while gaps line up
        for row in range(rule + 1, len(lines)):
            if not all(lines[row][i - 1 : i + 1] == "  " for i in gaps):
                break
            rows.append(row)
        if not gaps:  # a rule with no columns under it: nothing to realign
            lines[rule] = lines[rule][:width]
            continue
        start = gaps[-1] + 1
        if max(len(lines[row]) for row in rows) > width:
            for row in rows:
                for i in reversed(gaps):
                    lines[row] = lines[row][:i] + lines[row][i + 1 :]
            start -= len(gaps)
        last_cell.update(dict.fromkeys(rows, start))
        lines[rule] = lines[rule][:width]
    for number, line in enumerate(lines):
        if len(line) <= width:
            print(line)
        elif number in last_cell:
            start = last_cell[number]
            cell = textwrap.wrap(line[start:], width - start)
            print(line[:start] + cell[0])
            for more in cell[1:]:
                print(" " * start + more)
        else:
            indent = " " * (len(line) - len(line.lstrip()) + 4)
            print(textwrap.fill(line, width, subsequent_indent=indent))


# %%
# The notebook's module, inspected
# --------------------------------
# First the culprit of the first chapter, reduced to its ``__init__``.
# :func:`pytorch_buffers.inventory` lists the tensors the module holds (its
# parameters and buffers, plain tensor attributes, and tensors in containers
# up to four levels deep), what kind of tensor each is, and whether ``.to()``
# moves it and ``state_dict()`` saves it.


class CausalAttentionWithoutBuffers(nn.Module):
    def __init__(self, d_in, d_out, context_length, dropout, qkv_bias=False):
        super().__init__()
        self.d_out = d_out
        self.W_query = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=qkv_bias)
        self.dropout = nn.Dropout(dropout)
        self.mask = torch.triu(torch.ones(context_length, context_length), diagonal=1)


torch.manual_seed(123)
attention = CausalAttentionWithoutBuffers(
    d_in=3, d_out=2, context_length=6, dropout=0.0
)
show(pb.inventory(attention))

# %%
# :func:`pytorch_buffers.find_strays` keeps only the tensors that will not follow
# the module, each with the change that fixes it. The library makes that change
# on a ``meta`` copy of the module first and suggests it only if torch's
# ``.to()`` then reaches the tensor and ``state_dict()`` saves it; the last line
# of each entry says what torch did:

attention_strays = pb.find_strays(attention)
show(attention_strays)

# sphinx_gallery_start_ignore
import copy

(mask_stray,) = attention_strays
assert mask_stray.confirmed, "claim: torch confirmed the fix on a meta copy"
assert 'register_buffer("mask"' in mask_stray.fix, "claim: the fix registers the mask"
assert str(attention_strays).splitlines()[-1].strip() == (
    f"checked on a meta copy: {mask_stray.checked}"
), "claim: the last line says what torch did"
assert mask_stray.checked.startswith(".to() reaches it"), "claim: .to() reaches it"
assert mask_stray.checked.endswith("saves it as 'mask'"), "claim: state_dict() saves it"
# The same change made for real, on a copy of the module: .to() casts the mask
# and state_dict() saves it.
registered = copy.deepcopy(attention)
del registered.mask
registered.register_buffer("mask", attention.mask.clone())
registered.to(torch.float64)
assert registered.mask.dtype == torch.float64, "claim: .to() reaches the buffer"
assert "mask" in registered.state_dict(), "claim: state_dict() saves it"
assert type(attention) is CausalAttentionWithoutBuffers, "claim: nothing was changed"
assert attention.mask.dtype == torch.float32, "claim: nothing was changed"
del registered


# While the report was made, Tensor.to never touched the module's own tensors
# (torch's copies of them went to meta), and the move it checked ran on meta
# tensors: the change was made on a meta copy.
class MovedTensors(torch.overrides.TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.tensors, self.devices = set(), set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.to:
            self.tensors.add(id(args[0]))
            self.devices.add(args[0].device.type)
        return func(*args, **(kwargs or {}))


own_tensors = {id(tensor) for tensor in (*attention.parameters(), attention.mask)}
with MovedTensors() as moved_tensors:
    pb.find_strays(attention)
assert not moved_tensors.tensors & own_tensors, "claim: the module itself is not moved"
assert "meta" in moved_tensors.devices, "claim: the change is made on a meta copy"
# sphinx_gallery_end_ignore

# %%
# When torch refuses the change, the report suggests none and says why. A plain
# list that holds a module and a tensor cannot become an ``nn.ModuleList``; the
# tensor beside the module can still become a buffer:


class MixedParts(nn.Module):
    def __init__(self):
        super().__init__()
        self.parts = [nn.Linear(2, 2), torch.ones(2)]


mixed = MixedParts()
mixed_strays = pb.find_strays(mixed)
show(mixed_strays)

# sphinx_gallery_start_ignore
refused = mixed_strays[0]
assert mixed_strays[-1].record.name == "parts[1]", "claim: the tensor is listed"
assert mixed_strays[-1].confirmed, "claim: the tensor can still become a buffer"
assert not refused.confirmed, "claim: the report suggests no change"
assert refused.fix == "", "claim: the report suggests no change"
assert "is not a Module subclass" in refused.checked, "claim: torch refuses ModuleList"
module_list_refusal = ""
try:
    nn.ModuleList(mixed.parts)
except TypeError as error:
    module_list_refusal = str(error)
assert "is not a Module subclass" in module_list_refusal, (
    "claim: torch refuses, for real"
)
# sphinx_gallery_end_ignore

# %%
# A model with several strays
# ---------------------------
# A small GPT-style model of the kind people write while learning: a rotary
# table computed once and kept as a plain attribute deep inside each block, a
# causal mask as a plain attribute, and a key/value cache held in a Python list.
# Its classes, like every class on this page, have an ``__init__`` only: they
# hold tensors the way real models do, for the library to inspect, and are not
# models to copy.


class Rotary(nn.Module):
    def __init__(self, head_dim, context_length):
        super().__init__()
        inv_freq = 1.0 / 10000 ** (torch.arange(0, head_dim, 2) / head_dim)
        angles = torch.outer(torch.arange(context_length), inv_freq)
        self.cos, self.sin = angles.cos(), angles.sin()  # plain attributes


class Attention(nn.Module):
    def __init__(self, dim, context_length):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.rotary = Rotary(dim, context_length)
        self.mask = torch.tril(
            torch.ones(context_length, context_length, dtype=torch.bool)
        )
        self.kv_cache = []  # filled during generation


class Block(nn.Module):
    def __init__(self, dim, context_length):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, context_length)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
        )


class TinyGPT(nn.Module):
    def __init__(self, vocab=64, dim=16, context_length=32, layers=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim, context_length) for _ in range(layers))
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied embeddings


torch.manual_seed(0)
model = TinyGPT()
# Pretend a generation step ran: the cache now holds tensors.
model.blocks[0].attn.kv_cache.append(torch.zeros(1, 4, 16))
model.blocks[0].attn.kv_cache.append(torch.zeros(1, 4, 16))

# %%
# The inventory shows all of it. The tied embedding appears once, under both of
# its names; the strays are at the bottom, marked ``NOT moved``.

inv = pb.inventory(model)
print(f"{len(inv)} tensors, {inv.nbytes:,} bytes")
show(inv)

# %%
strays = pb.find_strays(model)
print(f"{len(strays)} strays:")
for stray in strays:
    print(f"- {', '.join(stray.record.names)} ({stray.record.kind.value})")
# sphinx_gallery_start_ignore
tied_record = inv.get("head.weight")
assert tied_record is not None, "claim: the tied embedding is in the inventory"
assert tied_record.names == (
    "embed.weight",
    "head.weight",
), "claim: the tied embedding is listed under both of its names"
assert [record.names for record in inv].count(tied_record.names) == 1, (
    "claim: the tied embedding appears once"
)
moved_flags = [record.moved_by_to for record in inv]
assert moved_flags == sorted(moved_flags, reverse=True), (
    "claim: the rows not moved by .to() are at the bottom"
)
assert [record.names for record in inv if not record.moved_by_to] == [
    stray.record.names for stray in strays
], "claim: the rows marked NOT moved are the strays"
# sphinx_gallery_end_ignore

# %%
# The device check
# ----------------
# :func:`pytorch_buffers.check_devices` is the one call to make after
# ``model.to(device)`` and before the first forward pass. It names every tensor
# it finds that is not where the weights are. The check needs a second device
# to move to: this build's accelerator if it has one, else the ``meta`` device,
# which every torch build has and where ``.to()`` moves parameters and buffers as
# it would to a GPU, with one difference shown below.
#
# One surprise on the way: a move to ``meta`` unties tied weights. torch updates
# a parameter in place only when the old and the new tensor are of compatible
# types, and a CPU tensor and a meta tensor are not, so each module gets a new
# parameter. When the line below says ``False``, the check counts one
# tensor more than the inventory did.

target = device if device.type != "cpu" else torch.device("meta")
print(f"moving the model to {target}")
model.to(target)
print("embedding and head still tied:", model.embed.weight is model.head.weight)
device_error = None
try:
    pb.check_devices(model, target)
except pb.DeviceMismatchError as error:
    device_error = error
    show(f"{type(error).__name__}: {error}")
# sphinx_gallery_start_ignore
tied = model.embed.weight is model.head.weight
assert device_error is not None, "claim: the device check fails on the strays"
assert f"of {len(inv) + (not tied)} tensors" in str(device_error), (
    "claim: untied, the check counts one tensor more than the inventory"
)
if target.type == "meta":
    assert not torch._has_compatible_shallow_copy_type(
        torch.empty(1), torch.empty(1, device="meta")
    ), "claim: CPU and meta tensors are not of compatible types"
# sphinx_gallery_end_ignore

# %%
# For the cache, the hint says buffers, not ``nn.ParameterList``: that container
# is for tensors the optimizer should train. A cache put there becomes
# parameters, with ``requires_grad=True``, handed to every optimizer built from
# ``model.parameters()``, and saved in every checkpoint:

# sphinx_gallery_start_ignore
# One entry per tensor: its first line is indented by two spaces, the rest by six.
entries = str(device_error).replace("\n      ", " ").splitlines()
(cache_hint,) = [entry for entry in entries if "attn.kv_cache[0]" in entry]
assert "register each item as a buffer" in cache_hint, "claim: the hint says buffers"
assert "ParameterList" not in cache_hint, "claim: the hint does not say ParameterList"
assert "torch confirmed it on a meta copy" in cache_hint, "claim: torch confirmed it"
# sphinx_gallery_end_ignore

cache_as_parameters = nn.ParameterList([torch.zeros(1, 4, 16), torch.zeros(1, 4, 16)])
print("requires_grad:", [p.requires_grad for p in cache_as_parameters])
print("parameters():", len(list(cache_as_parameters.parameters())))
print("state_dict():", list(cache_as_parameters.state_dict()))
assert all(p.requires_grad for p in cache_as_parameters), (
    "claim: nn.ParameterList makes the cache trainable"
)
assert len(list(cache_as_parameters.parameters())) == 2, (
    "claim: an optimizer built from parameters() gets the cache"
)
assert list(cache_as_parameters.state_dict()) == ["0", "1"], (
    "claim: nn.ParameterList puts the cache in every checkpoint"
)

# %%
# The fix
# -------
# Each stray becomes a buffer, the cache included. The rotary tables and the mask are rebuilt by
# ``__init__`` from the configuration, so they are registered with
# ``persistent=False``: they follow ``.to()`` but stay out of checkpoints. The
# cache becomes two non-persistent buffers that generation overwrites.


class FixedRotary(nn.Module):
    def __init__(self, head_dim, context_length):
        super().__init__()
        inv_freq = 1.0 / 10000 ** (torch.arange(0, head_dim, 2) / head_dim)
        angles = torch.outer(torch.arange(context_length), inv_freq)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)


class FixedAttention(nn.Module):
    def __init__(self, dim, context_length):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.rotary = FixedRotary(dim, context_length)
        causal = torch.tril(
            torch.ones(context_length, context_length, dtype=torch.bool)
        )
        self.register_buffer("mask", causal, persistent=False)
        self.register_buffer(
            "k_cache", torch.zeros(1, context_length, dim), persistent=False
        )
        self.register_buffer(
            "v_cache", torch.zeros(1, context_length, dim), persistent=False
        )


class FixedBlock(Block):
    def __init__(self, dim, context_length):
        super().__init__(dim, context_length)
        self.attn = FixedAttention(dim, context_length)


class FixedTinyGPT(TinyGPT):
    def __init__(self, vocab=64, dim=16, context_length=32, layers=2):
        super().__init__(vocab, dim, context_length, layers)
        self.blocks = nn.ModuleList(
            FixedBlock(dim, context_length) for _ in range(layers)
        )


fixed = FixedTinyGPT().to(target)
show(pb.find_strays(fixed))
print("every tensor on:", pb.check_devices(fixed, target))
# sphinx_gallery_start_ignore
with torch.device("meta"):
    fixed_keys = FixedTinyGPT().state_dict().keys()
for buffer_name in ("mask", "cos", "sin", "k_cache", "v_cache"):
    assert not any(key.endswith(buffer_name) for key in fixed_keys), (
        f"claim: the non-persistent {buffer_name} stays out of checkpoints"
    )
assert all(buffer.device.type == target.type for buffer in fixed.buffers()), (
    "claim: the non-persistent buffers follow .to()"
)
# sphinx_gallery_end_ignore

# %%
# With ``include_non_persistent=True`` the report also lists the buffers that are
# deliberately kept out of checkpoints, so you can confirm each is meant to be:

show(pb.find_strays(fixed, include_non_persistent=True).as_text_table())

# %%
# Explaining a checkpoint that no longer loads
# --------------------------------------------
# A common story: an early version of a module registered its mask as an
# ordinary (persistent) buffer, and checkpoints were saved with it. A later
# version makes the mask non-persistent. Loading an old checkpoint into the new
# module fails, and the message alone does not say whether ``strict=False`` is
# safe. :func:`pytorch_buffers.explain_state_dict` does.


class MaskedAttentionV1(nn.Module):
    def __init__(self, dim=8, context_length=6):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        causal = torch.tril(
            torch.ones(context_length, context_length, dtype=torch.bool)
        )
        self.register_buffer("mask", causal)  # persistent: saved in checkpoints


class MaskedAttentionV2(MaskedAttentionV1):
    def __init__(self, dim=8, context_length=6):
        super().__init__(dim, context_length)
        causal = torch.tril(
            torch.ones(context_length, context_length, dtype=torch.bool)
        )
        self.register_buffer("mask", causal, persistent=False)  # rebuilt, not saved


with tempfile.TemporaryDirectory() as tmp:
    checkpoint = Path(tmp) / "v1.pt"
    torch.save(MaskedAttentionV1().state_dict(), checkpoint)
    report = pb.explain_state_dict(MaskedAttentionV2(), checkpoint)
    state = torch.load(checkpoint, weights_only=True)

show(report)

# %%
# (:doc:`05_non_persistent_buffers` shows what ``load_state_dict`` itself says
# about such a checkpoint.) The report's advice, applied: drop the keys the
# module now rebuilds itself, by name, then load strictly, so that any other
# mismatch would still fail loudly.

new_module = MaskedAttentionV2()
# sphinx_gallery_start_ignore
with torch.device("meta"):
    strict_target = MaskedAttentionV2()
try:
    strict_target.load_state_dict(state, assign=True)
except RuntimeError:
    strict_load_failed = True
else:
    strict_load_failed = False
assert strict_load_failed, "claim: the old checkpoint fails a strict load"
assert not report.loads_strict, "claim: the report sees the strict load fail"
# sphinx_gallery_end_ignore
for problem in report:
    if problem.safe_to_ignore:
        state.pop(problem.key)
print(new_module.load_state_dict(state))

# %%
# A checkpoint saved from a wrapper
# ---------------------------------
# Checkpoints saved from ``nn.DataParallel``, ``DistributedDataParallel``,
# ``torch.compile`` or a LightningModule carry the wrapper's attribute name in
# every key. ``load_state_dict`` then reports the keys twice, once missing and
# once unexpected (all of them, for this model). The report finds the prefix
# instead, prints the line that removes it, and says whether torch then loads
# the result with ``strict=True``. It decides by loading the checkpoint into copies of the
# model on the ``meta`` device, which hold no data.

torch.manual_seed(0)
wrapped = nn.DataParallel(FixedTinyGPT())  # on a machine without GPUs it just wraps
wrapped_state = wrapped.state_dict()
print(f"{len(wrapped_state)} keys, e.g. {next(iter(wrapped_state))!r}")
prefix_report = pb.explain_state_dict(FixedTinyGPT(), wrapped_state)
show(prefix_report)

# %%
# The line it printed, run as printed: torch's own helper strips the prefix in
# place, and the strict load that failed now succeeds.

torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(wrapped_state, "module.")
print(FixedTinyGPT().load_state_dict(wrapped_state))
# sphinx_gallery_start_ignore
assert not prefix_report.loads_strict, "claim: the prefixed checkpoint fails strict"
assert (
    len(prefix_report.missing) == len(prefix_report.unexpected) == len(wrapped_state)
), "claim: torch reports every key twice, once missing and once unexpected"
assert prefix_report.prefix_fix is not None, "claim: the report finds the prefix"
assert prefix_report.prefix_fix.prefix == "module.", "claim: the prefix is 'module.'"
assert prefix_report.prefix_fix.loads_strict_after, "claim: after the fix it loads"
load_devices = []


class SpyLinear(nn.Linear):
    def _load_from_state_dict(self, *args, **kwargs):
        load_devices.append(self.weight.device.type)
        super()._load_from_state_dict(*args, **kwargs)


spy = SpyLinear(2, 2, device="meta").to_empty(device="cpu")  # draws no random numbers
torch.nn.init.zeros_(spy.weight)
torch.nn.init.zeros_(spy.bias)
with torch.random.fork_rng(devices=[]):  # the library's inventory draws (issue 16)
    pb.explain_state_dict(spy, spy.state_dict())
assert load_devices, "claim: the report loads the checkpoint into a copy"
assert set(load_devices) == {"meta"}, (
    "claim: the report loads the checkpoint into copies on the meta device"
)
assert spy.weight.device.type == "cpu", "claim: the model itself stays where it is"
# sphinx_gallery_end_ignore

# %%
# The report also warns about the non-persistent buffers that no checkpoint
# restores when a model is built on the ``meta`` device; chapter 12
# (:doc:`12_meta_init`) shows that case and its fix.
#
# What to remember
# ----------------
# - ``pb.inventory(model)`` lists the module's tensors, registered or not
#   (attributes and containers included), with kind, device, and whether
#   ``.to()`` and ``state_dict()`` handle them.
# - ``pb.find_strays(model)`` names the tensors that will not follow the module,
#   each with a one-line fix where torch confirmed one on a ``meta`` copy of the
#   model; ``pb.check_devices(model, device)`` after
#   ``.to(device)`` names, before the first forward pass, every tensor it finds
#   left on another device.
# - ``pb.explain_state_dict(model, path)`` lets torch load the checkpoint into a
#   ``meta`` copy and explains the result: which keys differ, what they are,
#   and whether ``strict=False`` would be safe (prefer dropping the keys named
#   safe and loading strictly); a wrapper's prefix, with the line that removes
#   it; and the non-persistent buffers no checkpoint restores.
# - A cache goes in non-persistent buffers, not in ``nn.ParameterList``, which
#   makes it trainable and saves it.
