r"""
Model ensembles with torch.func
===============================

An ensemble is several copies of one architecture with different weights, run
on the same or on different data. ``torch.func`` runs the whole ensemble as one
batched model: ``stack_module_state`` stacks every member's tensors along a new
first dimension, and ``vmap`` over ``functional_call`` runs the members side by
side, one slice each. Parameters stack without surprises. Buffers are where it
gets interesting: BatchNorm in training mode updates its running statistics
*in place*, and under ``vmap`` that update needs a buffer per member, or no
buffer at all. This chapter stacks three small models, checks the batched run
against a plain loop over the members, and shows what each choice does to the
running statistics.
"""

# %%
# Where this page ran
# -------------------

import copy
import os
import textwrap

import torch
from torch import nn
from torch.func import (
    functional_call,
    replace_all_batch_norm_modules_,
    stack_module_state,
    vmap,
)

# sphinx_gallery_thumbnail_path = "_thumbnails/20_ensembles_with_torch_func.png"

device = torch.device(
    os.environ.get("GUIDE_DEVICE")
    or torch.accelerator.current_accelerator(check_available=True)
    or "cpu"
)
print(f"torch {torch.__version__}, device: {device}")
torch.manual_seed(123)

# %%
# Three members, one stack
# ------------------------
# Each member is a small network with a ``BatchNorm1d`` in the middle, so it has
# three buffers: ``running_mean``, ``running_var`` and the integer counter
# ``num_batches_tracked``. ``stack_module_state(models)`` returns two dicts,
# parameters and buffers, keyed by the names ``named_parameters()`` and
# ``named_buffers()`` give, each value the members' tensors stacked.

MEMBERS = 3


def make_member():
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


models = [make_member().to(device) for _ in range(MEMBERS)]
params, buffers = stack_module_state(models)

print(f"{'name':22} {'kind':9} {'shape':12} {'dtype':14} requires_grad")
for kind, stacked in (("parameter", params), ("buffer", buffers)):
    for name, tensor in stacked.items():
        shape = str(tuple(tensor.shape))
        print(
            f"{name:22} {kind:9} {shape:12} {tensor.dtype!s:14} {tensor.requires_grad}"
        )

assert list(buffers) == [n for n, _ in models[0].named_buffers()], (
    "claim: the buffers are stacked too, under their named_buffers() names"
)
# sphinx_gallery_start_ignore
assert list(params) == [n for n, _ in models[0].named_parameters()], (
    "claim: the parameters are stacked under their named_parameters() names"
)
assert all(t.shape[0] == MEMBERS for t in [*params.values(), *buffers.values()]), (
    "claim: every stacked tensor has the members along a new first dimension"
)
assert all(t.is_leaf and t.requires_grad for t in params.values()), (
    "claim: stacked parameters are new leaves that require grad"
)
assert not any(t.requires_grad for t in buffers.values()), (
    "claim: stacked buffers do not require grad"
)
assert buffers["1.num_batches_tracked"].dtype == torch.int64, (
    "claim: the integer counter is stacked as an integer"
)
assert all(
    torch.equal(params["0.weight"][i], m[0].weight)
    and torch.equal(buffers["1.running_var"][i], m[1].running_var)
    for i, m in enumerate(models)
), "claim: slice i holds member i's tensor"
assert params["0.weight"].data_ptr() != models[0][0].weight.data_ptr(), (
    "claim: the stacks are copies"
)
# sphinx_gallery_end_ignore

# %%
# The stacked parameters are new leaf tensors that require grad, ready for an
# optimizer; the stacked buffers require no grad, like the buffers they came
# from, and ``num_batches_tracked`` stays an integer. Both are *copies*
# (``torch.stack`` allocates new memory): from here on the stacks are the
# ensemble's state, and the three ``nn.Module`` objects no longer see what
# happens to it.
#
# Running the stack with ``vmap``
# -------------------------------
# ``functional_call`` needs a module to run; any member will do, and a copy on
# the ``meta`` device holds no data at all, so nothing of it can leak into the
# result: every tensor the forward uses comes from the dicts passed in.
# ``vmap`` then maps over the first dimension of the stacks (``in_dims=0``) and
# gives every member the same input (``None``). In ``eval()`` mode first:

base = copy.deepcopy(models[0]).to("meta")


def call_member(member_params, member_buffers, x):
    return functional_call(base, (member_params, member_buffers), (x,))


for model in [base, *models]:
    model.eval()
x = torch.randn(16, 4, device=device)
with torch.no_grad():
    batched = vmap(call_member, in_dims=(0, 0, None))(params, buffers, x)
    looped = torch.stack([model(x) for model in models])
print("ensemble output:", tuple(batched.shape))
print(
    f"largest difference from a loop over the members: {(batched - looped).abs().max():.2e}"
)
assert torch.allclose(batched, looped, rtol=1e-4, atol=1e-5), (
    "claim: vmap over functional_call matches a loop over the members"
)

# %%
# BatchNorm in ``train()`` mode: stacked buffers
# ----------------------------------------------
# Now each member trains on a batch of its own (``in_dims=0`` for the data too).
# In training mode BatchNorm normalises with the batch's statistics and updates
# ``running_mean``, ``running_var`` and ``num_batches_tracked`` in place. Under
# ``vmap`` each member sees its own slice of the stacked buffers, so the update
# should land in its own row. The reference is a loop over copies of the three
# members.

for model in [base, *models]:
    model.train()
batches = torch.randn(MEMBERS, 16, 4, device=device) * 2 + 3
stacked_buffers = {name: b.clone() for name, b in buffers.items()}
loop_models = copy.deepcopy(models)
with torch.no_grad():
    batched = vmap(call_member)(params, stacked_buffers, batches)
    looped = torch.stack(
        [m(batch) for m, batch in zip(loop_models, batches, strict=True)]
    )

print(
    "num_batches_tracked per member:", stacked_buffers["1.num_batches_tracked"].tolist()
)
print("running_mean[:3], from the stack and from the loop:")
for i, model in enumerate(loop_models):
    mine = [round(v, 4) for v in stacked_buffers["1.running_mean"][i, :3].tolist()]
    loop = [round(v, 4) for v in model[1].running_mean[:3].tolist()]
    print(f"  member {i}: stack {mine}, loop {loop}")
print(
    "the members' own running_mean still all zero:",
    not any(m[1].running_mean.any() for m in models),
)

assert stacked_buffers["1.num_batches_tracked"].tolist() == [1] * MEMBERS, (
    "claim: each member's counter in the stack counted its batch"
)
assert torch.allclose(
    stacked_buffers["1.running_mean"],
    torch.stack([m[1].running_mean for m in loop_models]),
    rtol=1e-4,
    atol=1e-6,
), "claim: each member's slice of the stacked buffer got its own update"
# sphinx_gallery_start_ignore
assert torch.allclose(
    stacked_buffers["1.running_var"],
    torch.stack([m[1].running_var for m in loop_models]),
    rtol=1e-4,
    atol=1e-6,
), "claim: running_var's slices are updated per member too"
assert torch.allclose(batched, looped, rtol=1e-4, atol=1e-5), (
    "claim: in train mode too, the batched run matches the loop"
)
assert not any(m[1].running_mean.any() for m in models), (
    "claim: the members' own buffers are untouched"
)
assert not buffers["1.running_mean"].any(), "claim: the clones were updated, not these"
# sphinx_gallery_end_ignore

# %%
# The in-place updates under ``vmap`` were written back into the stacked
# tensors: each row moved exactly as the member's own buffer moves in the loop,
# and every member's counter is 1. Keep ``stacked_buffers`` and pass it in
# every step, as chapter 16 does for a single model, and each member's
# statistics evolve in its own row. The original modules, again, saw nothing.
#
# BatchNorm in ``train()`` mode: one buffer for everyone
# ------------------------------------------------------
# Passing one member's buffers unbatched (``in_dims=None``) looks like a way to
# share the statistics. But then three members would update one tensor in
# place, each with its own batch's statistics. What torch says:

shared_buffers = {name: b[0].clone() for name, b in buffers.items()}
try:
    vmap(call_member, in_dims=(0, None, 0))(params, shared_buffers, batches)
    unbatched_error = None
except RuntimeError as error:
    unbatched_error = error
    print(f"{type(error).__name__}:")
    print(
        textwrap.fill(str(error), width=96, initial_indent="  ", subsequent_indent="  ")
    )
assert unbatched_error is not None, "claim: unbatched buffers in train mode raise"
# sphinx_gallery_start_ignore
assert "track_running_stats" in str(unbatched_error), (
    "claim: the message points at track_running_stats"
)
assert shared_buffers["1.running_mean"].count_nonzero().item() == 0, (
    "claim: the failed call left running_mean alone"
)
# sphinx_gallery_end_ignore
print(
    "num_batches_tracked after the failed call:",
    shared_buffers["1.num_batches_tracked"].item(),
)
assert shared_buffers["1.num_batches_tracked"].item() == 1, (
    "claim: the failed call had already counted a batch"
)

# %%
# The call failed, yet it had already counted the batch in the shared counter
# (``running_mean`` was left alone): a failed step can leave a changed buffer
# behind, so retry with fresh buffers, not these. The message
# offers the other way out: no running statistics at all.
#
# ``replace_all_batch_norm_modules_``: no running statistics
# ----------------------------------------------------------
# ``torch.func.replace_all_batch_norm_modules_(module)`` changes every BatchNorm
# in ``module`` in place: its three buffers become ``None`` and
# ``track_running_stats`` becomes ``False``. Nothing is left to update, so
# ``vmap`` needs only the parameters:

patched = replace_all_batch_norm_modules_(copy.deepcopy(models[0])).to("meta")
print("buffers listed after the patch:", [n for n, _ in patched.named_buffers()])
print("track_running_stats:", patched[1].track_running_stats)


def call_patched(member_params, x):
    return functional_call(patched, member_params, (x,))


with torch.no_grad():
    patched.train()
    patched_train = vmap(call_patched)(params, batches)
    patched.eval()
    patched_eval = vmap(call_patched)(params, batches)
print(
    "train() output matches the stacked-buffer run:",
    torch.allclose(patched_train, batched, rtol=1e-4, atol=1e-5),
)
eval_is_train = torch.allclose(patched_eval, patched_train, rtol=0, atol=1e-6)
print("eval() output equals train() output:", eval_is_train)
assert [n for n, _ in patched.named_buffers()] == [], "claim: no buffers are left"
assert eval_is_train, (
    "claim: with no running statistics, eval() normalises with the batch's own"
)
# sphinx_gallery_start_ignore
assert torch.allclose(patched_train, batched, rtol=1e-4, atol=1e-5), (
    "claim: in train mode the patched ensemble matches the stacked-buffer run"
)
with torch.no_grad():
    first_half = vmap(call_patched)(params, batches[:, :8])
assert not torch.allclose(first_half, patched_eval[:, :8], rtol=1e-3, atol=1e-4), (
    "claim: in eval() a sample's output depends on the rest of its batch"
)
# sphinx_gallery_end_ignore


# %%
# In training mode the patched ensemble computes what the stacked-buffer run
# computed: training-mode BatchNorm uses the batch's statistics either way. The
# price shows in ``eval()``: with no running statistics to fall back on,
# BatchNorm keeps normalising with each batch's own statistics, so the output
# for a sample depends on the rest of its batch, and a batch of one sample
# cannot be normalised at all:

try:
    with torch.no_grad():
        vmap(call_patched)(params, batches[:, :1])
    single_error = None
except ValueError as error:
    single_error = error
    print(f"eval() on one sample: {type(error).__name__}:")
    print(
        textwrap.fill(str(error), width=96, initial_indent="  ", subsequent_indent="  ")
    )
assert single_error is not None, "claim: the patched model cannot take a batch of one"
# sphinx_gallery_start_ignore
passed_anyway = {name: b.clone() for name, b in buffers.items()}
patched.train()
with torch.no_grad():
    vmap(lambda p, b, x: functional_call(patched, (p, b), (x,)))(
        params, passed_anyway, batches
    )
assert passed_anyway["1.num_batches_tracked"].tolist() == [0] * MEMBERS, (
    "claim: buffers passed to the patched module are not updated in train mode"
)
# sphinx_gallery_end_ignore

# %%
# Stacked buffers passed to the patched module anyway are not updated in
# training mode either (``track_running_stats=False``). So the two choices are:
#
# - **stacked buffers** (``in_dims=0``): every member tracks its own running
#   statistics, as it would trained alone, and ``eval()`` uses them;
# - **replace_all_batch_norm_modules_**: no running statistics are tracked;
#   the members always normalise with the current batch, in ``eval()`` too.
#
# Training the ensemble
# ---------------------
# The stacked parameters are leaves, so one optimizer trains every member at
# once. Summing the members' losses gives each member its own gradient (to float
# rounding), because no member's loss depends on another member's slice. One AdamW step,
# checked against the loop's gradients:

optimizer = torch.optim.AdamW(params.values(), lr=1e-2)
targets = torch.randn(MEMBERS, 16, 2, device=device)
loss = (
    (vmap(call_member)(params, stacked_buffers, batches) - targets)
    .pow(2)
    .mean(dim=(1, 2))
)
loss.sum().backward()
for model, batch, target in zip(loop_models, batches, targets, strict=True):
    (model(batch) - target).pow(2).mean().backward()
loop_grad = torch.stack([m[0].weight.grad for m in loop_models])
grad_gap = (params["0.weight"].grad - loop_grad).abs().max()
print(f"largest gradient difference from the loop: {grad_gap:.2e}")
optimizer.step()
print(
    "counters after the second step:", stacked_buffers["1.num_batches_tracked"].tolist()
)
assert torch.allclose(params["0.weight"].grad, loop_grad, rtol=1e-4, atol=1e-6), (
    "claim: each member gets its own gradient"
)
# sphinx_gallery_start_ignore
assert all(t.grad is None for t in stacked_buffers.values()), (
    "claim: the stacked buffers that went through backward get no gradient"
)
assert not any(t.requires_grad for t in stacked_buffers.values()), (
    "claim: the stacked buffers are not part of the autograd graph"
)
assert stacked_buffers["1.num_batches_tracked"].tolist() == [2] * MEMBERS, (
    "claim: the second step counted in the stacked buffers"
)
assert all(
    torch.allclose(stacked_buffers["1.running_mean"][i], m[1].running_mean, atol=1e-6)
    for i, m in enumerate(loop_models)
), "claim: after two steps the stacked statistics still match the loop"
# sphinx_gallery_end_ignore

# %%
# Back to ordinary modules
# ------------------------
# To save a member, or to use it alone, copy its slices back into a module with
# ``load_state_dict``: slice ``i`` of every parameter *and buffer*. Forgetting
# the buffers gives a module with trained weights and the statistics of an
# untrained one.

for i, model in enumerate(models):
    state = {name: t[i].detach() for name, t in {**params, **stacked_buffers}.items()}
    model.load_state_dict(state)
    model.eval()
base.eval()
with torch.no_grad():
    from_stack = vmap(call_member, in_dims=(0, 0, None))(params, stacked_buffers, x)
    from_members = torch.stack([model(x) for model in models])
print(
    "members rebuilt from the stack match the ensemble:",
    torch.allclose(from_stack, from_members, rtol=1e-4, atol=1e-5),
)
assert torch.allclose(from_stack, from_members, rtol=1e-4, atol=1e-5), (
    "claim: slice i of the parameters and buffers is member i"
)

# %%
# What to remember
# ----------------
# - ``stack_module_state(models)`` stacks parameters *and* buffers (copies, with
#   the members along dimension 0); the parameters are new trainable leaves,
#   the buffers require no grad, and the original modules see no updates.
# - ``vmap`` over ``functional_call`` with the stacks matches a loop over the
#   members; a ``meta`` copy of one member is enough as the module to call.
# - BatchNorm in ``train()`` mode under ``vmap`` needs the stacked buffers: each
#   member's in-place update lands in its own slice. Unbatched buffers raise.
# - ``replace_all_batch_norm_modules_`` removes the running statistics: nothing
#   is tracked, and ``eval()`` normalises with the batch, so a batch of one fails.
# - Copy slices of the parameters and the buffers back with ``load_state_dict``
#   to get ordinary modules again.
