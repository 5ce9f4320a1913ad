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

import contextlib
import copy
import os
import warnings

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
# unbuffered module on the CPU (the book's numbers), they agree up to rounding;
# a GPU may round the last bits differently from the CPU, so that comparison
# uses ``torch.testing.assert_close``, whose float32 defaults allow a relative
# 1.3e-6 (about 11 times float32's machine epsilon,
# ``torch.finfo(torch.float32).eps``, printed below) plus an absolute 1e-5.

with torch.no_grad():
    cpu_out = ca_without_buffer(batch)

ca_without_buffer.to(device)
ca_without_buffer.mask = ca_without_buffer.mask.to(device)
with torch.no_grad():
    unbuffered_out = ca_without_buffer(batch_on_device)

same_on_device = torch.equal(buffered_out, unbuffered_out)
print(f"torch.equal(buffered, unbuffered) on {device}:", same_on_device)
print(f"float32 machine epsilon: {torch.finfo(torch.float32).eps:.2e}")
print("first row:", buffered_out[0, 0].cpu())
assert same_on_device, "claim: buffered and unbuffered outputs are bit-for-bit equal"
torch.testing.assert_close(buffered_out.cpu(), cpu_out)  # raises if not close
close_to_cpu = True
# sphinx_gallery_start_ignore
assert round(1.3e-6 / torch.finfo(torch.float32).eps) == 11, (
    "claim: 1.3e-6 is about 11 times float32's machine epsilon"
)
big = torch.tensor([2.0**20])  # float32 numbers here are 0.125 apart
torch.testing.assert_close(big + 10 * 0.125, big)
try:
    torch.testing.assert_close(big + 11 * 0.125, big)
except AssertionError:
    pass
else:
    msg = "claim: assert_close's float32 default rtol is 1.3e-6"
    raise AssertionError(msg)
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
# ``.grad``, although an optimizer built from ``model.parameters()`` never
# updates it:

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
halved = copy.deepcopy(ca_with_buffer).half()
assert halved.mask.dtype == torch.float16, (
    "claim: .half() casts a floating-point buffer"
)
moved = copy.deepcopy(ca_with_buffer).to("meta")
assert moved.mask.is_meta, "claim: .to() moves the buffer"
if torch.cuda.is_available():
    on_cuda = copy.deepcopy(ca_with_buffer).cpu().cuda()
    assert on_cuda.mask.is_cuda, "claim: .cuda() moves the buffer"
# sphinx_gallery_end_ignore

# %%
# That gradient stops reaching the buffer once the module converts it.
# ``.double()``, ``.half()`` and ``.to(...)`` replace each buffer with
# ``buffer.to(...)``, and unless you call them under ``torch.no_grad()``,
# autograd records that copy: the new buffer is a *non-leaf* tensor with a
# ``grad_fn``. ``backward()`` then fills the ``.grad`` of the tensor you
# registered, which the module no longer holds, and the buffer's ``.grad``
# stays ``None`` (torch warns when you read it). Under ``torch.no_grad()`` the
# copy is a leaf that no longer requires a gradient at all. A conversion that
# changes nothing, such as ``.to(device)`` to the device the buffer is already
# on, keeps the very same tensor. Here is each case, asked of torch:


def convert_a_grad_buffer(conversion, under_no_grad):
    module = nn.Module()
    registered = torch.ones(2, device=device, requires_grad=True)
    module.register_buffer("scale", registered)
    with torch.no_grad() if under_no_grad else contextlib.nullcontext():
        conversion(module)
    buffer, grad, messages = module.scale, "no backward on meta", []
    if not buffer.is_meta:
        if buffer.requires_grad:
            (buffer * 3).sum().backward()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            grad = buffer.grad
        messages = [str(w.message) for w in caught]
    return buffer, registered, grad, messages


other_device = "meta" if device.type == "cpu" else "cpu"
conversions = {
    f".to({str(device)!r}) (already there)": lambda m: m.to(m.scale.device),
    ".double()": lambda m: m.double(),
    f".to({other_device!r})": lambda m: m.to(other_device),
    ".double() under no_grad": lambda m: m.double(),
}
print(f"{'conversion':28} {'same tensor':12} {'is_leaf':8} {'grad_fn':16} .grad")
results = {}
for label, conversion in conversions.items():
    results[label] = convert_a_grad_buffer(conversion, "no_grad" in label)
    buffer, registered, grad, _ = results[label]
    grad_fn = type(buffer.grad_fn).__name__ if buffer.grad_fn else "None"
    shown = grad.tolist() if isinstance(grad, torch.Tensor) else grad
    print(
        f"{label:28} {buffer is registered!s:12} {buffer.is_leaf!s:8} {grad_fn:16} {shown}"
    )

_, registered, _, messages = results[".double()"]
print("grad of the tensor registered before .double():", registered.grad.tolist())
first_sentence = messages[0].split(". ")[0] + "."
print("torch warned when the buffer's grad was read:")
print(f"  {first_sentence}")

# %%
# So a buffer that must get a gradient is converted under ``torch.no_grad()``
# and then given ``requires_grad_()`` again; or, if training should update
# it, it is a parameter after all: ``nn.Parameter`` stays a leaf through every
# conversion (the module converts parameters under ``no_grad``).

double_buffer, double_registered, double_grad, _ = results[".double()"]
assert not double_buffer.is_leaf, "claim: after .double() the buffer is a non-leaf"
assert double_grad is None, "claim: and its .grad stays None"
# sphinx_gallery_start_ignore
same_buffer, _, same_grad, _ = results[f".to({str(device)!r}) (already there)"]
no_grad_buffer, _, _, _ = results[".double() under no_grad"]
assert same_buffer.is_leaf, "claim: a conversion that changes nothing keeps the leaf"
assert same_grad is not None, "claim: and that leaf gets its gradient"
assert double_registered.grad is not None, "claim: the registered tensor gets it"
assert no_grad_buffer.is_leaf, "claim: under no_grad the copy is a leaf"
assert not no_grad_buffer.requires_grad, "claim: that no longer requires grad"
moved_buffer = results[f".to({other_device!r})"][0]
assert not moved_buffer.is_leaf, "claim: .to(another device) makes a non-leaf too"
assert double_buffer.grad_fn is not None, "claim: the non-leaf has a grad_fn"
assert "not a leaf Tensor" in messages[0], "claim: torch warns on reading its .grad"
as_parameter = nn.Module()
as_parameter.weight = nn.Parameter(torch.ones(2, device=device))
as_parameter.double()
assert as_parameter.weight.is_leaf, "claim: a parameter stays a leaf when converted"
assert as_parameter.weight.requires_grad, "claim: and keeps requiring grad"
refit = nn.Module()
refit.register_buffer("scale", torch.ones(2, device=device, requires_grad=True))
with torch.no_grad():
    refit.double()
refit.scale.requires_grad_()
(refit.scale * 3).sum().backward()
assert refit.scale.grad is not None, "claim: no_grad, then requires_grad_(), works"
# sphinx_gallery_end_ignore

# %%
# What to remember
# ----------------
# - ``self.register_buffer(name, tensor)`` makes a tensor part of the module's
#   state: ``.to()`` and ``.cuda()`` move it, ``.half()`` casts it (if it is
#   floating-point: see chapter 6).
# - ``named_parameters()`` lists what the optimizer trains; ``named_buffers()``
#   lists the rest of the state. A buffer gets no gradient by default (its
#   tensor does not require one), and an optimizer built from ``parameters()``
#   never updates it.
# - A buffer registered with ``requires_grad=True`` gets a gradient only while
#   it is the tensor you registered: ``.double()`` or ``.to(another device)``
#   outside ``torch.no_grad()`` make it a non-leaf whose ``.grad`` stays
#   ``None``.
# - The buffer changes where the mask lives, not what the module computes: both
#   versions give identical outputs on the same device.
