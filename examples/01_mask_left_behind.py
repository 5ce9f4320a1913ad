r"""
A mask left behind
==================

A causal attention module keeps a mask that hides future tokens. If that mask is
a plain tensor attribute, ``module.to(device)`` moves the weights and leaves the
mask where it was. This chapter builds the module from the "Understanding
PyTorch Buffers" notebook that accompanies chapter 3 of *Build a Large Language
Model From Scratch*, runs it with the book's seed and inputs, moves it to the
best device this build had, and shows what stayed behind.
"""


# %%
# Where this page ran
# -------------------
# Every output below was produced when this site was built. The chapter picks
# the best device present (CUDA, then MPS or any other accelerator torch knows,
# else the CPU); set ``GUIDE_DEVICE=cpu`` (or ``cuda``...) to choose one yourself.

import copy
import os

import torch
from torch import nn

# sphinx_gallery_thumbnail_path = "_thumbnails/01_mask_left_behind.png"

device = torch.device(
    os.environ.get("GUIDE_DEVICE")
    or torch.accelerator.current_accelerator(check_available=True)
    or "cpu"
)
print(f"torch {torch.__version__}, device: {device}")
# sphinx_gallery_start_ignore
if torch.cuda.is_available() and not os.environ.get("GUIDE_DEVICE"):
    assert device.type == "cuda", "claim: the chapter picks CUDA first when present"
# sphinx_gallery_end_ignore

# %%
# A module without buffers
# ------------------------
# This is the notebook's ``CausalAttentionWithoutBuffers``, unchanged in what it
# computes. Note the last line of ``__init__``: the mask is an ordinary tensor
# assigned to an attribute. ``nn.Module`` registers parameters and submodules
# that you assign, but a plain tensor is just stored.


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

        context_vec = attn_weights @ values
        return context_vec


# %%
# The book's inputs, on the CPU
# -----------------------------
# Six three-dimensional embeddings, one per token of "Your journey starts with
# one step", stacked twice into a batch of two. ``torch.manual_seed(123)`` comes
# right before the module is built, so its random weights, and therefore every
# number printed below, are the ones printed in the book.

torch.manual_seed(123)

inputs = torch.tensor(
    [
        [0.43, 0.15, 0.89],  # Your     (x^1)
        [0.55, 0.87, 0.66],  # journey  (x^2)
        [0.57, 0.85, 0.64],  # starts   (x^3)
        [0.22, 0.58, 0.33],  # with     (x^4)
        [0.77, 0.25, 0.10],  # one      (x^5)
        [0.05, 0.80, 0.55],  # step     (x^6)
    ]
)
batch = torch.stack((inputs, inputs), dim=0)
context_length = batch.shape[1]
d_in = inputs.shape[1]
d_out = 2

ca_without_buffer = CausalAttentionWithoutBuffers(d_in, d_out, context_length, 0.0)
# sphinx_gallery_start_ignore
assert [name for name, _ in ca_without_buffer.named_parameters()] == [
    "W_query.weight",
    "W_key.weight",
    "W_value.weight",
], "claim: nn.Module registers the parameters of the Linear layers you assign"
assert [name for name, _ in ca_without_buffer.named_children()] == [
    "W_query",
    "W_key",
    "W_value",
    "dropout",
], "claim: nn.Module registers the submodules you assign"
assert list(ca_without_buffer.named_buffers()) == [], (
    "claim: the plain tensor is not registered as a buffer"
)
assert "mask" in vars(ca_without_buffer), "claim: a plain tensor is just stored"
# sphinx_gallery_end_ignore

with torch.no_grad():
    cpu_context_vecs = ca_without_buffer(batch)
print(cpu_context_vecs)

# %%
# Both rows of the batch are the same sentence, so both halves of the output
# match. The numbers are the book's, to the four decimals it prints; the first
# row is ``[-0.4519, 0.2216]``. This line checks all six rows:

BOOK_CONTEXT_VECS = torch.tensor(
    [
        [-0.4519, 0.2216],
        [-0.5874, 0.0058],
        [-0.6300, -0.0632],
        [-0.5675, -0.0843],
        [-0.5526, -0.0981],
        [-0.5299, -0.1081],
    ]
)
assert torch.allclose(cpu_context_vecs, BOOK_CONTEXT_VECS, rtol=0, atol=5e-5), (
    "claim: seed 123 and the book's inputs reproduce the book's context vectors"
)
# sphinx_gallery_start_ignore
assert torch.equal(cpu_context_vecs[0], cpu_context_vecs[1]), (
    "claim: both halves of the output match"
)
# sphinx_gallery_end_ignore

# %%
# Moving the module to the device
# -------------------------------
# Now the module and the batch go to the device, and the forward pass runs
# again. On an accelerator this is where the notebook fails; the chapter catches
# the error and prints its real type and message.

ca_without_buffer.to(device)
batch_on_device = batch.to(device)
weights_on = ca_without_buffer.W_query.weight.device
mask_on = ca_without_buffer.mask.device

forward_error = ""
try:
    with torch.no_grad():
        context_vecs = ca_without_buffer(batch_on_device)
except RuntimeError as error:
    forward_failed = True
    forward_error = str(error)
    print(f"{type(error).__name__}: {error}")
else:
    forward_failed = False
    together = "share a device" if weights_on == mask_on else "are on different devices"
    print(f"No error on {device}: the weights ({weights_on}) and the mask ({mask_on})")
    print(f"{together}, and masked_fill_ accepted them.")

# %%
# Whatever the device, this line checks the story so far: the forward pass fails
# exactly when the weights and the mask are on different devices.

assert forward_failed == (weights_on != mask_on), (
    "claim: the forward pass fails exactly when the weights and the mask are on "
    "different devices"
)
# sphinx_gallery_start_ignore
if forward_failed:
    assert "expected self and mask to be on the same device" in forward_error, (
        f"claim: masked_fill_ raises the notebook's message; got {forward_error!r}"
    )
# sphinx_gallery_end_ignore

# %%
# Where did each tensor end up? ``.to()`` moved the weights of the three
# ``nn.Linear`` layers; the mask is where it was built. If this build had an
# accelerator, the two lines below differ and the error above is the real one.
# If it ran on the CPU, both say ``cpu``, which is why nothing failed; the next
# section shows the cause anyway.

print("W_query.weight.device:", ca_without_buffer.W_query.weight.device)
print("mask.device:          ", ca_without_buffer.mask.device)
# sphinx_gallery_start_ignore
assert all(p.device.type == device.type for p in ca_without_buffer.parameters()), (
    "claim: .to() moved the weights of the three nn.Linear layers"
)
assert mask_on.type == "cpu", "claim: the mask stays where it was built"
assert (weights_on != mask_on) == (device.type != "cpu"), (
    "claim: the two devices differ exactly when the build has an accelerator"
)
# sphinx_gallery_end_ignore

# %%
# Seeing the cause on any machine
# -------------------------------
# The error only happens when the weights go somewhere the mask is not. The
# ``meta`` device exists on every build of torch: a tensor there has a shape and
# a dtype but no data. Moving a *copy* of the module to ``meta`` shows where
# ``.to()`` sends each tensor, even on a machine without a GPU.

meta_copy = copy.deepcopy(ca_without_buffer).to("meta")
for name, parameter in meta_copy.named_parameters():
    print(f"{name:16} parameter  -> {parameter.device}")
print(f"{'mask':16} plain attr -> {meta_copy.mask.device}")
assert all(p.is_meta for p in meta_copy.parameters()), "claim: .to() moves every weight"
assert not meta_copy.mask.is_meta, "claim: .to() leaves the plain mask behind"
# sphinx_gallery_start_ignore
try:
    meta_copy.W_query.weight.cpu()
except NotImplementedError as error:
    meta_refusal = str(error)
else:
    meta_refusal = ""
assert "no data" in meta_refusal, "claim: a meta tensor has no data to copy out"
assert ca_without_buffer.W_query.weight.device.type == device.type, (
    "claim: moving the copy leaves the original module where it was"
)
# sphinx_gallery_end_ignore

# %%
# The weights followed ``.to("meta")``; the mask did not. On a GPU the same thing
# puts the weights on ``cuda:0`` and leaves the mask on ``cpu``.
#
# The dry run shows where the tensors went; it does not reproduce the error. A
# forward pass on ``meta`` with the mask still on the CPU raises nothing:

meta_forward_error = None
try:
    with torch.no_grad():
        meta_out = meta_copy(batch.to("meta"))
except RuntimeError as error:
    meta_forward_error = error
print("forward on meta, mask on cpu:", meta_forward_error or "no error")
assert meta_forward_error is None, (
    "claim: a forward pass on meta with a CPU mask raises nothing"
)

# %%
# Which operation fails?
# ----------------------
# The notebook blames "a matrix multiplication between a tensor on a GPU and a
# tensor on a CPU". That is not what fails. ``queries @ keys.transpose(1, 2)``
# multiplies two tensors computed from the moved weights, so both are on the
# device. ``self.mask.bool()`` and its slice run on the CPU without complaint; the
# first operation that combines the mask with a tensor on the device is
# ``masked_fill_``, and the
# message the notebook shows, "expected self and mask to be on the same device,
# but got mask on cpu and self on cuda:0", names that method's arguments:
# ``self`` is ``attn_scores`` and ``mask`` is its first argument.

masked_fill_signature = torch.Tensor.masked_fill_.__doc__.strip().splitlines()[0]
print(masked_fill_signature)

with torch.no_grad():
    x = batch.to("meta")
    queries, keys = meta_copy.W_query(x), meta_copy.W_key(x)
    attn_scores = queries @ keys.transpose(1, 2)
print("queries:", queries.device, " keys:", keys.device, " scores:", attn_scores.device)
print("mask passed to masked_fill_:", meta_copy.mask.device)
assert queries.device == keys.device == attn_scores.device != meta_copy.mask.device, (
    "claim: the matrix multiplication only sees moved tensors; the mask is elsewhere"
)
# sphinx_gallery_start_ignore
assert masked_fill_signature.startswith("masked_fill_(mask, value)"), (
    "claim: masked_fill_'s first argument is called mask"
)
# sphinx_gallery_end_ignore

# %%
# Fixing it by hand
# -----------------
# Moving the mask yourself makes the module work again, and it computes what it
# computed on the CPU up to rounding: an accelerator may round the last bits
# differently. So the check is ``torch.testing.assert_close`` with its default
# tolerances for float32: a relative 1.3e-6, about 11 times float32's machine
# epsilon (the spacing of float32 numbers just above 1, printed below), plus an
# absolute 1e-5.

ca_without_buffer.mask = ca_without_buffer.mask.to(device)
print("mask.device:", ca_without_buffer.mask.device)

with torch.no_grad():
    context_vecs = ca_without_buffer(batch_on_device)
print(context_vecs)
largest_difference = (context_vecs.cpu() - cpu_context_vecs).abs().max().item()
bitwise = torch.equal(context_vecs.cpu(), cpu_context_vecs)
float32_eps = torch.finfo(torch.float32).eps
print(f"largest difference from the CPU result: {largest_difference:.1e}")
print(f"float32 machine epsilon, torch.finfo(torch.float32).eps: {float32_eps:.2e}")
print("identical bit for bit:", bitwise)
torch.testing.assert_close(context_vecs.cpu(), cpu_context_vecs)  # default tolerances
# sphinx_gallery_start_ignore
if device.type == "cpu":
    assert bitwise, "claim: on the CPU the result is identical bit for bit"
assert round(1.3e-6 / float32_eps) == 11, "claim: 1.3e-6 is about 11 float32 epsilons"
# Ask torch for its float32 defaults: near 2**20 float32 numbers are 0.125 apart,
# so 10 steps are within rtol=1.3e-6 and 11 are not; at 0 only atol=1e-5 counts.
big = torch.tensor([2.0**20])
torch.testing.assert_close(big + 10 * 0.125, big)
torch.testing.assert_close(torch.tensor([1e-5]), torch.tensor([0.0]))
for too_far, reference in ((big + 11 * 0.125, big), ([1.1e-5], [0.0])):
    try:
        torch.testing.assert_close(torch.as_tensor(too_far), torch.as_tensor(reference))
    except AssertionError:
        pass
    else:
        msg = "claim: float32 defaults are rtol=1.3e-6 and atol=1e-5"
        raise AssertionError(msg)
# What to remember: .to() moves buffers too, never a plain tensor attribute.
holder = nn.Module()
holder.register_buffer("buffer", torch.zeros(1))
holder.child = nn.Identity()
holder.child.register_buffer("inner", torch.zeros(1))
holder.plain = torch.zeros(1)
holder.to("meta")
assert holder.buffer.is_meta, "claim: .to() moves buffers"
assert holder.child.inner.is_meta, "claim: .to() moves submodules"
assert not holder.plain.is_meta, "claim: .to() never moves a plain tensor attribute"
# sphinx_gallery_end_ignore

# %%
# That fix has to be repeated after every move to another device (``.to(device)``,
# ``.cuda()``), in every module with such an attribute. A dtype cast leaves the
# mask alone too, but here that does no harm: after ``.half()`` the mask is
# still float32, and ``forward`` turns it into a bool with ``.bool()`` before it
# uses it, so the half-precision module runs:

halved = copy.deepcopy(ca_without_buffer).half()
with torch.no_grad():
    half_out = halved(batch_on_device.half())
print(f"after .half(): mask {halved.mask.dtype}, output {half_out.dtype}")
# sphinx_gallery_start_ignore
assert halved.mask.dtype == torch.float32, "claim: .half() leaves the mask float32"
assert half_out.dtype == torch.float16, "claim: the half-precision module runs"
moved_again = copy.deepcopy(ca_without_buffer).to("meta")
assert not moved_again.mask.is_meta, "claim: the fix must be repeated after .to()"
# sphinx_gallery_end_ignore

# %%
# The next chapter registers the mask as a *buffer* so that the module moves it
# itself.
#
# What to remember
# ----------------
# - ``module.to(device)`` moves parameters, buffers and submodules, never a
#   plain tensor attribute.
# - The error appears at the first operation that mixes devices: here
#   ``masked_fill_``, not the matrix multiplication.
# - On a CPU-only machine the bug hides: everything is on the CPU. Moving a copy
#   to ``meta`` shows which tensors would be left behind, though a forward pass
#   there does not raise the error.
