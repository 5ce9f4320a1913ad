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

with torch.no_grad():
    cpu_context_vecs = ca_without_buffer(batch)
print(cpu_context_vecs)

# %%
# Both rows of the batch are the same sentence, so both halves of the output
# match. The first row, ``[-0.4519, 0.2216]``, is the book's.
#
# Moving the module to the device
# -------------------------------
# Now the module and the batch go to the device, and the forward pass runs
# again. On an accelerator this is where the notebook fails; the chapter catches
# the error and prints its real type and message.

ca_without_buffer.to(device)
batch_on_device = batch.to(device)

try:
    with torch.no_grad():
        context_vecs = ca_without_buffer(batch_on_device)
except RuntimeError as error:
    forward_failed = True
    print(f"{type(error).__name__}: {error}")
else:
    forward_failed = False
    weights_on = ca_without_buffer.W_query.weight.device
    mask_on = ca_without_buffer.mask.device
    print(f"No error on {device}: nothing failed here. The weights ({weights_on}) and")
    print(f"the mask ({mask_on}) share a device, so masked_fill_ found them together.")

# %%
# Where did each tensor end up? ``.to()`` moved the weights of the three
# ``nn.Linear`` layers; the mask is where it was built. If this build had an
# accelerator, the two lines below differ and the error above is the real one.
# If it ran on the CPU, both say ``cpu``, which is why nothing failed; the next
# section shows the cause anyway.

print("W_query.weight.device:", ca_without_buffer.W_query.weight.device)
print("mask.device:          ", ca_without_buffer.mask.device)

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

# %%
# The weights followed ``.to("meta")``; the mask did not. On a GPU the same thing
# puts the weights on ``cuda:0`` and leaves the mask on ``cpu``.
#
# Which operation fails?
# ----------------------
# The notebook blames "a matrix multiplication between a tensor on a GPU and a
# tensor on a CPU". That is not what fails. ``queries @ keys.transpose(1, 2)``
# multiplies two tensors computed from the moved weights, so both are on the
# device. The first operation that touches the mask is ``masked_fill_``, and the
# message the notebook shows, "expected self and mask to be on the same device,
# but got mask on cpu and self on cuda:0", names that method's arguments:
# ``self`` is ``attn_scores`` and ``mask`` is its first argument.

print(torch.Tensor.masked_fill_.__doc__.strip().splitlines()[0])

with torch.no_grad():
    x = batch.to("meta")
    queries, keys = meta_copy.W_query(x), meta_copy.W_key(x)
    attn_scores = queries @ keys.transpose(1, 2)
print("queries:", queries.device, " keys:", keys.device, " scores:", attn_scores.device)
print("mask passed to masked_fill_:", meta_copy.mask.device)

# %%
# Fixing it by hand
# -----------------
# Moving the mask yourself makes the module work again, and it computes exactly
# what it computed on the CPU.

ca_without_buffer.mask = ca_without_buffer.mask.to(device)
print("mask.device:", ca_without_buffer.mask.device)

with torch.no_grad():
    context_vecs = ca_without_buffer(batch_on_device)
print(context_vecs)
print("same as on the CPU:", torch.allclose(context_vecs.cpu(), cpu_context_vecs))

# %%
# That fix has to be repeated after every ``.to()``, ``.cuda()`` or
# ``.half()``, and in every module with such an attribute. The next chapter
# registers the mask as a *buffer* so that the module moves it itself.
#
# What to remember
# ----------------
# - ``module.to(device)`` moves parameters, buffers and submodules, never a
#   plain tensor attribute.
# - The error appears at the first operation that mixes devices: here
#   ``masked_fill_``, not the matrix multiplication.
# - On a CPU-only machine the bug hides: everything is on the CPU. Moving a copy
#   to ``meta`` shows which tensors would be left behind.
