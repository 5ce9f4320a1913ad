r"""
Meta-device init, ``to_empty``, and the buffers no checkpoint restores
======================================================================

Large models are built on the ``meta`` device (shapes and dtypes, no memory),
then given real memory with ``to_empty()`` and filled from a checkpoint. That
restores every parameter and every persistent buffer. A non-persistent buffer,
a rotary ``inv_freq`` or a relative-position index, is in no checkpoint: after
``to_empty()`` it holds whatever bytes were in the memory it got, and
``load_state_dict`` still reports that all keys matched. This chapter shows it
happen, then the two fixes: re-run the buffers' initialisation after
``to_empty()``, and ``load_state_dict(assign=True)``, which makes the mistake
loud instead of silent.
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

# sphinx_gallery_thumbnail_path = "_thumbnails/12_meta_init.png"

device = torch.device(
    os.environ.get("GUIDE_DEVICE")
    or torch.accelerator.current_accelerator(check_available=True)
    or "cpu"
)
print(f"torch {torch.__version__}, device: {device}")
torch.manual_seed(123)


def show(text, width=100):
    """Print a long message (torch's, the library's) wrapped to ``width`` columns."""
    for line in str(text).splitlines():
        print(textwrap.fill(line, width, subsequent_indent="    ") or line)


# %%
# A model with three kinds of state
# ---------------------------------
# An attention layer with parameters (the projections, a table of relative
# position biases), persistent buffers (the running statistics of a
# BatchNorm) and two non-persistent buffers computed from the configuration:
# the rotary frequencies ``inv_freq`` and the relative-position ``index`` into
# the bias table. Each module computes its non-persistent buffers in a method
# of its own, ``init_buffers``, which ``__init__`` calls; most code computes
# them inline in ``__init__``, which is where the trouble starts.


class Rotary(nn.Module):
    def __init__(self, head_dim, base=10_000.0):
        super().__init__()
        self.head_dim, self.base = head_dim, base
        self.init_buffers()

    def init_buffers(self, device=None):
        steps = torch.arange(0, self.head_dim, 2, device=device, dtype=torch.float32)
        inv_freq = 1.0 / self.base ** (steps / self.head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x):
        # Positions and angles in float32 whatever x's dtype (see "bfloat16" below).
        positions = torch.arange(x.shape[-2], device=x.device, dtype=torch.float32)
        angles = torch.outer(positions, self.inv_freq.float())
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        even, odd = x[..., 0::2], x[..., 1::2]
        rotated = (even * cos - odd * sin, even * sin + odd * cos)
        return torch.stack(rotated, dim=-1).flatten(-2)


class RelativePositionBias(nn.Module):
    def __init__(self, window):
        super().__init__()
        self.window = window
        self.table = nn.Parameter(torch.randn(2 * window - 1))
        self.init_buffers()

    def init_buffers(self, device=None):
        positions = torch.arange(self.window, device=device)
        offsets = positions[:, None] - positions[None, :] + self.window - 1
        self.register_buffer("index", offsets, persistent=False)

    def forward(self, length):
        if length > self.window:  # index covers window x window positions
            msg = f"at most window={self.window} tokens, got {length}"
            raise ValueError(msg)
        return self.table[self.index[:length, :length]]


class Attention(nn.Module):
    def __init__(self, dim=16, window=8):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.rotary = Rotary(dim)
        self.bias = RelativePositionBias(window)
        self.norm = nn.BatchNorm1d(dim)

    def forward(self, x):  # x: (batch, tokens, dim)
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k = self.rotary(q), self.rotary(k)
        scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
        out = (scores + self.bias(x.shape[1])).softmax(dim=-1) @ v
        return self.norm(out.transpose(1, 2)).transpose(1, 2)


reference = Attention().to(device)
with torch.no_grad():
    for _ in range(3):  # a little "training", so the running statistics move
        reference(torch.randn(4, 8, 16, device=device))
reference.eval()

checkpoint_dir = tempfile.TemporaryDirectory()
checkpoint_path = Path(checkpoint_dir.name) / "attention.pt"
torch.save(reference.state_dict(), checkpoint_path)
checkpoint = torch.load(checkpoint_path, map_location=device, weights_only=True)
show(f"in the checkpoint: {list(checkpoint)}")

non_persistent = ["rotary.inv_freq", "bias.index"]
# sphinx_gallery_start_ignore
assert not set(non_persistent) & set(checkpoint), (
    "claim: the non-persistent buffers are not in the checkpoint"
)
try:
    reference(torch.zeros(1, reference.bias.window + 1, 16, device=device))
    too_long_refused = False
except ValueError:
    too_long_refused = True
assert too_long_refused, "claim: a sequence longer than the window is refused clearly"
# sphinx_gallery_end_ignore

# %%
# The meta-device recipe
# ----------------------
# Build on ``meta``: every tensor has a shape and a dtype but no data, and
# construction costs no memory however large the model. ``to_empty()`` then
# allocates real, uninitialised memory on the device (``torch.empty_like``) for
# every parameter and buffer, and ``load_state_dict`` fills it.

with torch.device("meta"):
    model = Attention()
print("before to_empty:", model.rotary.inv_freq)
# sphinx_gallery_start_ignore
assert all(t.is_meta for t in model.state_dict().values()), "claim: all on meta"
with torch.device("meta"):
    huge = nn.Linear(200_000, 200_000)  # 160 GB of float32 weights, if allocated
assert huge.weight.is_meta, "claim: construction on meta allocates nothing"
import inspect

assert "empty_like" in inspect.getsource(nn.Module.to_empty), "claim: to_empty uses it"
# sphinx_gallery_end_ignore
model.to_empty(device=device)
result = model.load_state_dict(checkpoint)
print("load_state_dict:", result)
model.eval()

# sphinx_gallery_start_ignore
assert not result.missing_keys, "claim: the load reports no missing key"
assert not result.unexpected_keys, "claim: the load reports no unexpected key"
# sphinx_gallery_end_ignore

# %%
# Every key matched. Now compare each tensor with the reference model's:

reference_tensors = dict(reference.named_parameters()) | dict(reference.named_buffers())
loaded_tensors = dict(model.named_parameters()) | dict(model.named_buffers())
restored = {}
for name, tensor in loaded_tensors.items():
    restored[name] = torch.equal(tensor, reference_tensors[name])
    where = "non-persistent buffer" if name in non_persistent else "in the checkpoint"
    print(f"{name:24} {where:22} same as the reference: {restored[name]}")

# sphinx_gallery_start_ignore
assert all(restored[name] for name in checkpoint), (
    "claim: every parameter and persistent buffer is restored"
)
# sphinx_gallery_end_ignore

# %%
# What the two non-persistent buffers hold is whatever the allocator handed
# ``to_empty()``: it can change from run to run, and by chance it can be zeros or
# even the right values (when the memory last held the same numbers). This is
# what this build found:


def describe(name, tensor, correct):
    values = tensor.float()  # float64 is not on every device (MPS)
    facts = (
        f"min {values.min().item():.4g}, max {values.max().item():.4g}, "
        f"{(tensor == 0).sum().item()} of {tensor.numel()} zero, "
        f"{(~values.isfinite()).sum().item()} not finite"
    )
    verdict = "the correct values" if torch.equal(tensor, correct) else "WRONG"
    print(f"  {name}  {facts}: {verdict}")


print("after to_empty() and the load (uninitialised memory):")
describe("rotary.inv_freq", model.rotary.inv_freq, reference.rotary.inv_freq)
describe("bias.index     ", model.bias.index, reference.bias.index)
print(
    "the correct inv_freq:", [round(v, 4) for v in reference.rotary.inv_freq.tolist()]
)

# sphinx_gallery_start_ignore
# Whatever the garbage was, the load did not write these buffers: fill them
# with a marker after to_empty, load again, and the marker is still there.
with torch.device("meta"):  # no random initialisation: the page's RNG stays put
    probe = Attention()
probe.to_empty(device=device)
probe.rotary.inv_freq.fill_(float("nan"))
probe.bias.index.fill_(-1)
probe.load_state_dict(checkpoint)
assert probe.rotary.inv_freq.isnan().all(), "claim: no load restores inv_freq"
assert (probe.bias.index == -1).all(), "claim: no load restores the index"
del probe
# sphinx_gallery_end_ignore

# %%
# And the model's output, against the reference's, on the same input:

x = torch.randn(2, 8, 16, device=device)
index = model.bias.index
index_in_range = bool(((index >= 0) & (index < model.bias.table.numel())).all())
with torch.no_grad():
    expected = reference(x)
    got, outcome = None, None
    if device.type != "cpu" and not index_in_range:
        # On an accelerator an out-of-range index is a device-side assertion,
        # which can leave the device unusable for the rest of the process.
        outcome = "not run here: the index is out of range"
    else:
        try:
            got = model(x)
        except (RuntimeError, IndexError) as error:
            outcome = f"{type(error).__name__}: {error}"
if got is None:
    # torch's message names the leftover index it met: a line of its own, marked.
    kind, _, message = outcome.partition(": ")
    print(f"forward with uninitialised memory: {kind}")
    if message:
        show(f"  {message} (uninitialised memory)")
elif torch.allclose(got, expected, rtol=1e-5, atol=1e-6):
    print("forward (uninitialised memory) matched the reference, by chance")
else:
    difference = (got - expected).abs().max().item()
    print(
        "forward with uninitialised memory: no error; largest difference "
        f"from the reference: {difference:.4g}"
    )

# sphinx_gallery_start_ignore
# Whether ``got`` holds a tensor depends on leftover memory; sphinx-gallery links
# a name by what it holds when the chapter ends, so drop it to keep the page's
# code links the same on every build.
del got
# sphinx_gallery_end_ignore

# %%
# Nothing warned before the forward pass: the load said every key matched,
# and what the forward pass then did depended on leftover memory.
#
# Fix 1: re-run the buffers' initialisation after ``to_empty``
# ------------------------------------------------------------
# ``to_empty()`` allocates memory and never runs ``__init__`` again, so the
# code that computes a non-persistent buffer has to be callable on its own.
# That is why the modules above keep it in ``init_buffers``; one walk over the
# model calls each after ``to_empty()`` (torch's own modules follow the same
# idea with ``reset_parameters()``, which for BatchNorm also resets its
# running statistics).


def init_buffers(model, device):
    for module in model.modules():
        if hasattr(module, "init_buffers"):
            module.init_buffers(device)


with torch.device("meta"):
    rebuilt = Attention()
rebuilt.to_empty(device=device)
init_buffers(rebuilt, device)
print(rebuilt.load_state_dict(checkpoint))
rebuilt.eval()
with torch.no_grad():
    fixed_out = rebuilt(x)
print(
    "inv_freq equal to the reference:",
    torch.allclose(rebuilt.rotary.inv_freq, reference.rotary.inv_freq, rtol=1e-6),
)
print(
    "index equal to the reference:",
    torch.equal(rebuilt.bias.index, reference.bias.index),
)
print(
    "output equal to the reference to float precision:",
    torch.allclose(fixed_out, expected, rtol=1e-5, atol=1e-6),
)

# sphinx_gallery_start_ignore
norm_check = nn.BatchNorm1d(2)
norm_check.running_mean.fill_(3.0)
norm_check.reset_parameters()
assert not norm_check.running_mean.any(), "claim: reset_parameters resets BN stats"
assert torch.allclose(rebuilt.rotary.inv_freq, reference.rotary.inv_freq, rtol=1e-6)
assert torch.equal(rebuilt.bias.index, reference.bias.index)
assert torch.allclose(fixed_out, expected, rtol=1e-5, atol=1e-6), (
    "claim: with the buffers re-initialised the meta-built model matches"
)
# sphinx_gallery_end_ignore

# %%
# The buffers are computed on the target device here; on an accelerator the
# last bits of ``inv_freq`` can differ from the reference's (computed on the
# CPU and moved), hence the comparison to float precision.
#
# The same recipe in ``bfloat16``
# -------------------------------
# Large models are built and loaded in ``bfloat16``, which keeps 8 bits of
# precision: above 256 it cannot count by one. Positions counted in the
# model's dtype collapse:

positions_bf16 = torch.arange(1024, dtype=torch.bfloat16)
print(
    "distinct values in arange(1024, dtype=bfloat16):", positions_bf16.unique().numel()
)
print("its entries 768 to 775:", positions_bf16[768:776].tolist())

# sphinx_gallery_start_ignore
assert positions_bf16.unique().numel() < 1024, "claim: bf16 positions collapse"
# sphinx_gallery_end_ignore

# %%
# So ``Rotary`` computes positions and angles in float32 whatever the input's
# dtype, and casts only ``cos`` and ``sin`` to it. (Counting in the input's
# dtype fails in a second way after ``init_buffers``, which makes a float32
# ``inv_freq``: the angles, and with them the rotated queries and keys, come
# out in float32, and the attention's matrix product with the ``bfloat16``
# values raises a dtype mismatch.) On a ``bfloat16`` input of 1024 tokens its
# error at the last positions is small, and far below the error further down,
# where ``inv_freq`` itself was rounded to ``bfloat16`` (compare the figures):

rotary = Rotary(16).to(device)
long_x = torch.randn(1024, 16, device=device)  # (tokens, head_dim)
exact = rotary(long_x)
late_error = (rotary(long_x.to(torch.bfloat16)).float() - exact)[768:].abs().max()
print(f"bfloat16 input, tokens 768-1023, largest error: {late_error.item():.3g}")

# sphinx_gallery_start_ignore
assert late_error < 0.05, (
    f"claim: float32 positions keep bf16 rotary close: {late_error}"
)
assert torch.outer(positions_bf16[:4], torch.ones(2)).dtype == torch.float32, (
    "claim: bf16 positions with a float32 inv_freq give float32 angles"
)
try:
    torch.ones(2, 2) @ torch.ones(2, 2, dtype=torch.bfloat16)
    matmul_mixes = True
except RuntimeError:
    matmul_mixes = False
assert not matmul_mixes, "claim: a float32 @ bfloat16 product raises"
# The old way (positions in x's dtype) is far off there: computed in float32
# from the collapsed positions, to keep the check on the positions alone.
collapsed = positions_bf16.float().to(device)
angles = torch.outer(collapsed, rotary.inv_freq)
even, odd = long_x[..., 0::2], long_x[..., 1::2]
old_way = torch.stack(
    (
        even * angles.cos() - odd * angles.sin(),
        even * angles.sin() + odd * angles.cos(),
    ),
    dim=-1,
).flatten(-2)
assert (old_way - exact)[768:].abs().max() > 1, "claim: collapsed positions err by >1"
# sphinx_gallery_end_ignore

# %%
# A module cast (``.to(torch.bfloat16)``) rounds every floating-point buffer,
# ``inv_freq`` too, and the angles at late positions then drift; running
# ``init_buffers`` after the cast computes it in float32 again:

cast = Rotary(16).to(device).to(torch.bfloat16)
print("inv_freq after .to(torch.bfloat16):", cast.inv_freq.dtype)
cast_error = (cast(long_x.to(torch.bfloat16)).float() - exact)[768:].abs().max()
cast.init_buffers(device)
recomputed_error = (cast(long_x.to(torch.bfloat16)).float() - exact)[768:].abs().max()
print("tokens 768-1023, largest error:")
print(f"  with the cast inv_freq {cast_error.item():.3g}")
print(f"  after init_buffers ({cast.inv_freq.dtype}) {recomputed_error.item():.3g}")

# sphinx_gallery_start_ignore
assert cast_error > 10 * recomputed_error, (
    "claim: a cast inv_freq drifts at late tokens"
)
assert cast.inv_freq.dtype == torch.float32, "claim: init_buffers restores float32"
assert late_error * 10 < cast_error, (
    "claim: float32 positions and inv_freq err far less than a bf16 inv_freq"
)
# sphinx_gallery_end_ignore

# %%
# And the whole recipe in ``bfloat16``: built on ``meta``, given memory,
# buffers re-initialised, loaded from a ``bfloat16`` checkpoint:

checkpoint_bf16 = {
    key: value.to(torch.bfloat16) if value.is_floating_point() else value
    for key, value in checkpoint.items()
}
with torch.device("meta"):
    model_bf16 = Attention().to(torch.bfloat16)
model_bf16.to_empty(device=device)
init_buffers(model_bf16, device)
print(model_bf16.load_state_dict(checkpoint_bf16))
model_bf16.eval()
with torch.no_grad():
    out_bf16 = model_bf16(x.to(torch.bfloat16))
bf16_difference = (out_bf16.float() - expected).abs().max().item()
print(
    f"bfloat16 model against the float32 reference: largest difference {bf16_difference:.3g}"
)

# sphinx_gallery_start_ignore
assert out_bf16.dtype == torch.bfloat16, "claim: the bf16 recipe runs in bf16"
assert bf16_difference < 0.1, f"claim: the bf16 model is close: {bf16_difference}"
# sphinx_gallery_end_ignore

# %%
# Fix 2: ``load_state_dict(assign=True)``, and when it helps
# ----------------------------------------------------------
# With ``assign=True``, ``load_state_dict`` does not copy into the module's
# tensors: it puts the checkpoint's tensors in their place. On a meta-built
# model that skips ``to_empty()`` altogether, so the model is never allocated
# twice. The parameters and persistent buffers are now the checkpoint's own
# tensors (training the model changes the loaded dictionary too, and two
# models loaded from one dictionary share their weights), and the
# non-persistent buffers stay on ``meta``:

with torch.device("meta"):
    assigned = Attention()
print(assigned.load_state_dict(checkpoint, assign=True))
assigned.eval()
for name, buffer in assigned.named_buffers():
    print(f"{name:24} on {buffer.device.type}")
shares_storage = assigned.qkv.weight.data_ptr() == checkpoint["qkv.weight"].data_ptr()
print("qkv.weight is the checkpoint's tensor (same memory):", shares_storage)

# sphinx_gallery_start_ignore
assert shares_storage, "claim: assign=True uses the checkpoint's tensors, no copy"
assert all(
    tensor.data_ptr() == checkpoint[key].data_ptr()
    for key, tensor in assigned.state_dict().items()
), "claim: every loaded tensor is the checkpoint's own"
still_meta = sorted(n for n, b in assigned.named_buffers() if b.is_meta)
assert still_meta == sorted(non_persistent), (
    f"claim: after assign=True only the non-persistent buffers are on meta: {still_meta}"
)
# sphinx_gallery_end_ignore

# %%
# That is the help it gives: the forgotten buffers cannot hold garbage, because
# they hold nothing. Using them fails, loudly:

with torch.no_grad():
    try:
        assigned(x)
        assign_forward_failed = False
        print("forward ran")
    except RuntimeError as error:
        assign_forward_failed = True
        print(f"{type(error).__name__}: {error}")

# sphinx_gallery_start_ignore
assert assign_forward_failed, "claim: meta buffers make the forward pass raise"
# sphinx_gallery_end_ignore

# %%
# It does not compute them either: the same ``init_buffers`` call finishes the
# job.

init_buffers(assigned, device)
with torch.no_grad():
    assigned_out = assigned(x)
print(
    "output equal to the reference to float precision:",
    torch.allclose(assigned_out, expected, rtol=1e-5, atol=1e-6),
)

# sphinx_gallery_start_ignore
assert torch.allclose(assigned_out, expected, rtol=1e-5, atol=1e-6), (
    "claim: assign=True plus init_buffers matches the reference"
)
# sphinx_gallery_end_ignore

# %%
# What else ``assign=True`` does
# ------------------------------
# Putting the checkpoint's tensors in place has three more consequences.
#
# **The dtype is the checkpoint's.** A copy converts into the module's
# tensors; ``assign=True`` takes the checkpoint's tensors as they are:

with torch.device("meta"):
    float32_model = Attention()  # float32, as built
float32_model.load_state_dict(checkpoint_bf16, assign=True)
print(
    "float32 model, bfloat16 checkpoint, assign=True:", float32_model.qkv.weight.dtype
)
copying = Attention().to(device)
copying.load_state_dict(checkpoint_bf16)
print("the same with a copying load:                   ", copying.qkv.weight.dtype)

# sphinx_gallery_start_ignore
assert float32_model.qkv.weight.dtype == torch.bfloat16, "claim: assign adopts dtype"
assert copying.qkv.weight.dtype == torch.float32, "claim: a copy keeps the module's"
# sphinx_gallery_end_ignore

# %%
# **It is remembered in the dictionary.** ``load_state_dict`` records
# ``assign_to_params_buffers`` in the ``_metadata`` of the state dict it was
# given (the per-module record that ``state_dict()`` and ``torch.load`` keep).
# ``checkpoint`` went through ``assign=True`` above, so a later load of it
# without ``assign`` assigns too, and that model shares its memory with the
# checkpoint and with ``assigned``:

print("checkpoint._metadata['qkv']:", checkpoint._metadata["qkv"])
later = Attention().to(device)
later.load_state_dict(checkpoint)  # no assign=True here
shares_again = later.qkv.weight.data_ptr() == checkpoint["qkv.weight"].data_ptr()
print("a later plain load shares the checkpoint's memory:", shares_again)
for module_record in checkpoint._metadata.values():
    module_record.pop("assign_to_params_buffers", None)
after_cleanup = Attention().to(device)
after_cleanup.load_state_dict(checkpoint)
copies_now = after_cleanup.qkv.weight.data_ptr() != checkpoint["qkv.weight"].data_ptr()
print("after removing the flag from _metadata, a plain load copies:", copies_now)

# sphinx_gallery_start_ignore
assert shares_again, "claim: the flag in _metadata makes a later load assign"
assert later.qkv.weight.data_ptr() == assigned.qkv.weight.data_ptr(), (
    "claim: the two models share memory"
)
assert copies_now, "claim: without the flag the load copies again"
# sphinx_gallery_end_ignore

# %%
# Load each model from its own ``torch.load`` (or remove the flag, as above)
# when models must not share weights.
#
# **Tied weights come apart, with ``to_empty()`` too** (with torch's default
# setting, under which ``torch.__future__.get_swap_module_params_on_conversion()``
# is ``False``). A language model whose output layer shares the embedding's
# weight holds one parameter under two names. Both ``to_empty()`` and
# ``assign=True`` then set each name's tensor on its own, and the two names
# hold two tensors: equal after a load, but trained apart. Tie them again
# afterwards:


class TiedLM(nn.Module):
    def __init__(self, vocab=10, dim=4):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.tie_weights()

    def tie_weights(self):
        self.head.weight = self.embed.weight

    def forward(self, ids):  # ids: (batch, tokens) -> logits (batch, tokens, vocab)
        return self.head(self.embed(ids))


tied_checkpoint = TiedLM().to(device).state_dict()
with torch.device("meta"):
    emptied = TiedLM()
    tied_assigned = TiedLM()
emptied.to_empty(device=device)
emptied.load_state_dict(tied_checkpoint)
tied_assigned.load_state_dict(tied_checkpoint, assign=True)
ties = {}
for label, lm in [("to_empty + load", emptied), ("assign=True", tied_assigned)]:
    ties[label] = lm.head.weight is lm.embed.weight
    print(
        f"{label:16} still tied: {ties[label]}, parameters: {len(list(lm.parameters()))}"
    )
    lm.tie_weights()
    print(f"{'':16} after tie_weights(): {lm.head.weight is lm.embed.weight}")

# sphinx_gallery_start_ignore
assert not torch.__future__.get_swap_module_params_on_conversion(), (
    "claim: torch's default does not swap module parameters on conversion"
)
assert not any(ties.values()), f"claim: both recipes untie the weights: {ties}"
assert emptied.head.weight is emptied.embed.weight, "claim: tie_weights re-ties"
assert len(list(emptied.parameters())) == 1, "claim: one parameter again"
# sphinx_gallery_end_ignore

# %%
# With ``torch.__future__.set_swap_module_params_on_conversion(True)``, both
# recipes swap each tensor's contents in place instead
# (``torch.utils.swap_tensors``), and in torch 2.13 the tie survives both:

# A fresh checkpoint: the assign=True load above marked tied_checkpoint's
# _metadata, which would make the plain load below assign too.
fresh_checkpoint = TiedLM().to(device).state_dict()
torch.__future__.set_swap_module_params_on_conversion(True)
try:
    with torch.device("meta"):
        swapped_emptied = TiedLM()
        swapped_assigned = TiedLM()
    swapped_emptied.to_empty(device=device)
    swapped_emptied.load_state_dict(fresh_checkpoint)
    swapped_assigned.load_state_dict(fresh_checkpoint, assign=True)
finally:
    torch.__future__.set_swap_module_params_on_conversion(False)  # the default
swapped_ties = {}
for label, lm in [
    ("to_empty + load", swapped_emptied),
    ("assign=True", swapped_assigned),
]:
    swapped_ties[label] = lm.head.weight is lm.embed.weight
    print(f"{label:16} still tied, swapping: {swapped_ties[label]}")

# sphinx_gallery_start_ignore
assert all(swapped_ties.values()), f"claim: swapping keeps the tie: {swapped_ties}"
assert torch.equal(swapped_assigned.embed.weight, fresh_checkpoint["embed.weight"])
assert torch.equal(swapped_emptied.embed.weight, fresh_checkpoint["embed.weight"])
assert (
    swapped_emptied.embed.weight.data_ptr()
    != fresh_checkpoint["embed.weight"].data_ptr()
), "claim: after to_empty the plain load copies (it shares no memory)"
# sphinx_gallery_end_ignore

# %%
# What the library says
# ---------------------
# :func:`pytorch_buffers.explain_state_dict` asks torch to load the checkpoint
# into meta copies of the model, so it can run before anything is allocated.
# The load succeeds, as it did above, and the report names the buffers that no
# checkpoint will fill, with what to do about them:

with torch.device("meta"):
    meta_model = Attention()
report = pb.explain_state_dict(meta_model, checkpoint)
show(report)

# sphinx_gallery_start_ignore
assert report.loads_strict, "claim: torch loads the checkpoint strictly"
assert report.on_meta == ("rotary.inv_freq", "bias.index"), (
    f"claim: the report names both unrestored buffers, got {report.on_meta}"
)
assert "WARNING" in str(report), "claim: the report warns about them"
# sphinx_gallery_end_ignore

checkpoint_dir.cleanup()

# %%
# What to remember
# ----------------
# - ``to_empty()`` allocates uninitialised memory; ``load_state_dict`` fills the
#   parameters and persistent buffers and still reports success when the
#   non-persistent buffers were never filled.
# - Keep the code that computes each non-persistent buffer in a method, and call
#   it after ``to_empty()`` (or after loading).
# - ``load_state_dict(assign=True)`` on a meta-built model skips ``to_empty()``
#   and its second allocation, and leaves the non-persistent buffers on
#   ``meta``, where using them raises instead of computing with garbage; they
#   still need their initialisation. It also adopts the checkpoint's dtype,
#   marks the dictionary's ``_metadata`` so later loads of it assign too, and,
#   like ``to_empty()``, unties tied weights (unless
#   ``torch.__future__.set_swap_module_params_on_conversion(True)`` was
#   called): tie them again.
# - In ``bfloat16``, compute positions and rotary angles in float32 (bf16
#   cannot count past 256), and run ``init_buffers`` again after a dtype cast.
