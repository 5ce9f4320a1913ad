r"""
Registering the mask as a buffer
================================

``self.register_buffer("mask", tensor)`` tells a module that the tensor belongs
to its state. From then on ``.to(device)`` moves it with the weights, and (next
chapter) ``state_dict()`` saves it. This chapter writes the buffered module, gives
it exactly the weights of the module from the first chapter, and checks that the
buffer changes where the mask lives, not what the module computes.
"""


# %%
# Where this page ran
# -------------------

import os

import torch
from torch import nn

# sphinx_gallery_thumbnail_path = "_thumbnails/02_register_buffer.png"

device = torch.device(
    os.environ.get("GUIDE_DEVICE")
    or torch.accelerator.current_accelerator(check_available=True)
    or "cpu"
)
print(f"torch {torch.__version__}, device: {device}")

# %%
# Two versions of the module
# --------------------------
# Each chapter runs on its own, so here is the first chapter's module again,
# followed by the buffered version. The only difference between the two classes
# is the line that creates the mask.


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
        # Was: self.mask = torch.triu(...), a plain attribute. Now a buffer:
        self.register_buffer(
            "mask", torch.triu(torch.ones(context_length, context_length), diagonal=1)
        )

    forward = CausalAttentionWithoutBuffers.forward  # the very same computation


# %%
# ``forward`` is borrowed from the first class so that the two cannot differ in
# what they compute; only the mask's line in ``__init__`` changed.
#
# The same weights in both
# ------------------------
# Building the mask draws no random numbers, so seeding with the book's
# ``torch.manual_seed(123)`` right before each construction gives both modules
# the same three weight matrices. The check below proves it rather than
# assuming it.

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
context_length, d_in, d_out = batch.shape[1], inputs.shape[1], 2

torch.manual_seed(123)
ca_without_buffer = CausalAttentionWithoutBuffers(d_in, d_out, context_length, 0.0)
torch.manual_seed(123)
ca_with_buffer = CausalAttentionWithBuffer(d_in, d_out, context_length, 0.0)

for name, weight in ca_without_buffer.named_parameters():
    same = torch.equal(weight, ca_with_buffer.get_parameter(name))
    print(f"{name:15} identical in both modules: {same}")
    assert same, f"claim: {name} is identical in both modules"
# sphinx_gallery_start_ignore
rng_before = torch.get_rng_state()
torch.triu(torch.ones(context_length, context_length), diagonal=1)
assert torch.equal(rng_before, torch.get_rng_state()), (
    "claim: building the mask draws no random numbers"
)
assert CausalAttentionWithBuffer.forward is CausalAttentionWithoutBuffers.forward, (
    "claim: both classes run the very same forward"
)
# sphinx_gallery_end_ignore

# %%
# Everything follows ``.to()``
# ----------------------------
# Move the buffered module to the device and list what it holds. Parameters
# are what the optimizer trains (``requires_grad=True``); buffers are the rest
# of the module's state. Both moved.

ca_with_buffer.to(device)

print(f"{'name':15} {'kind':10} {'device':8} requires_grad")
for name, parameter in ca_with_buffer.named_parameters():
    print(
        f"{name:15} {'parameter':10} {parameter.device!s:8} {parameter.requires_grad}"
    )
for name, buffer in ca_with_buffer.named_buffers():
    print(f"{name:15} {'buffer':10} {buffer.device!s:8} {buffer.requires_grad}")
# sphinx_gallery_start_ignore
assert all(p.requires_grad for p in ca_with_buffer.parameters()), (
    "claim: parameters have requires_grad=True"
)
assert [name for name, _ in ca_with_buffer.named_buffers()] == ["mask"], (
    "claim: the mask is the module's one buffer"
)
assert all(
    t.device.type == device.type
    for t in [*ca_with_buffer.parameters(), *ca_with_buffer.buffers()]
), "claim: parameters and buffers both moved"
# sphinx_gallery_end_ignore

# %%
# The buffer is still an ordinary tensor: ``register_buffer`` changes how the
# module treats it, not what it is.

print("type(mask):", type(ca_with_buffer.mask).__name__)
print(
    "mask is the registered buffer:",
    ca_with_buffer.mask is ca_with_buffer.get_buffer("mask"),
)
# sphinx_gallery_start_ignore
assert type(ca_with_buffer.mask) is torch.Tensor, "claim: a buffer is a plain Tensor"
assert ca_with_buffer.mask is ca_with_buffer.get_buffer("mask"), (
    "claim: the attribute is the registered buffer"
)
# sphinx_gallery_end_ignore

# %%
# The forward pass on the device
# ------------------------------
# No manual fix this time: the mask went with the module.

batch_on_device = batch.to(device)
with torch.no_grad():
    buffered_out = ca_with_buffer(batch_on_device)
print(buffered_out)
assert ca_with_buffer.mask.device == ca_with_buffer.W_query.weight.device, (
    "claim: the buffered mask went with the module"
)

# %%
# Same computation, new home for the mask
# ---------------------------------------
# Give the unbuffered module the first chapter's manual fix, run it on the same
# device, and compare: the outputs are bit-for-bit identical. Compared with the
# unbuffered module on the CPU (the book's numbers), they agree to float
# precision; a GPU may round differently from the CPU, so that comparison uses
# ``allclose`` with float32's relative precision (about 1e-6).

with torch.no_grad():
    cpu_out = ca_without_buffer(batch)

ca_without_buffer.to(device)
ca_without_buffer.mask = ca_without_buffer.mask.to(device)
with torch.no_grad():
    unbuffered_out = ca_without_buffer(batch_on_device)

same_on_device = torch.equal(buffered_out, unbuffered_out)
close_to_cpu = torch.allclose(buffered_out.cpu(), cpu_out, rtol=1.3e-6, atol=1e-6)
print(f"torch.equal(buffered, unbuffered) on {device}:", same_on_device)
print("torch.allclose(buffered, CPU result, rtol=1.3e-6, atol=1e-6):", close_to_cpu)
print("first row:", buffered_out[0, 0].cpu())
assert same_on_device, "claim: buffered and unbuffered outputs are bit-for-bit equal"
assert close_to_cpu, (
    "claim: the buffered output matches the CPU result to float precision"
)
# sphinx_gallery_start_ignore
assert torch.allclose(
    buffered_out[0, 0].cpu(), torch.tensor([-0.4519, 0.2216]), rtol=0, atol=5e-5
), "claim: the first row is the book's"
# sphinx_gallery_end_ignore

# %%
# Buffers get no gradient, by default
# -----------------------------------
# The ``requires_grad`` column above says ``False`` for the mask because
# ``torch.triu(torch.ones(...))`` made a tensor that does not require gradients,
# not because it is a buffer: ``register_buffer`` keeps the tensor as it is
# given. Register one that requires gradients and ``backward()`` fills its
# ``.grad``, although the optimizer, which only sees ``parameters()``, still
# never updates it:

scale = torch.ones(2, device=device, requires_grad=True)
scaled = nn.Module()
scaled.register_buffer("scale", scale)
(scaled.scale * 3).sum().backward()
print("buffer's grad:", scaled.scale.grad)
print("parameters the optimizer would see:", list(scaled.parameters()))
assert scaled.scale.grad is not None, (
    "claim: a buffer registered with requires_grad=True gets a gradient"
)
assert list(scaled.parameters()) == [], "claim: the optimizer never sees a buffer"
# sphinx_gallery_start_ignore
assert scaled.scale is scale, "claim: register_buffer keeps the tensor as it is given"
assert not ca_with_buffer.mask.requires_grad, "claim: the mask does not require grad"
assert "mask" in ca_with_buffer.state_dict(), "claim: state_dict() saves the buffer"
halved = CausalAttentionWithBuffer(d_in, d_out, context_length, 0.0).half()
assert halved.mask.dtype == torch.float16, (
    "claim: .half() casts a floating-point buffer"
)
moved = CausalAttentionWithBuffer(d_in, d_out, context_length, 0.0).to("meta")
assert moved.mask.is_meta, "claim: .to() moves the buffer"
if torch.cuda.is_available():
    on_cuda = CausalAttentionWithBuffer(d_in, d_out, context_length, 0.0).cuda()
    assert on_cuda.mask.is_cuda, "claim: .cuda() moves the buffer"
# sphinx_gallery_end_ignore

# %%
# What to remember
# ----------------
# - ``self.register_buffer(name, tensor)`` makes a tensor part of the module's
#   state: ``.to()`` and ``.cuda()`` move it, ``.half()`` casts it (if it is
#   floating-point: see chapter 6).
# - ``named_parameters()`` lists what the optimizer trains; ``named_buffers()``
#   lists the rest of the state. A buffer gets no gradient by default (its
#   tensor does not require one), and the optimizer never updates it.
# - The buffer changes where the mask lives, not what the module computes: both
#   versions give identical outputs on the same device.
