r"""
Activation checkpointing and BatchNorm
======================================

Activation checkpointing (``torch.utils.checkpoint``) saves memory by not
keeping a segment's intermediate tensors for the backward pass: backward runs
the segment's ``forward`` a second time to get them back. A ``forward`` that
updates buffers updates them again. BatchNorm's running statistics and its
batch counter are such buffers, so a checkpointed BatchNorm counts every
training batch twice (PyTorch issue #96136). This chapter measures it
against the same model without checkpointing, states when it happens, and
checks the fixes.
"""

# %%
# Where this page ran
# -------------------

import contextlib
import copy
import os
import textwrap

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

# sphinx_gallery_thumbnail_path = "_thumbnails/17_checkpointing_and_batchnorm.png"

device = torch.device(
    os.environ.get("GUIDE_DEVICE")
    or torch.accelerator.current_accelerator(check_available=True)
    or "cpu"
)
print(f"torch {torch.__version__}, device: {device}")
torch.manual_seed(123)

# %%
# The same block, with and without checkpointing
# ----------------------------------------------
# A ``Linear`` layer, BatchNorm and ReLU, twice: once called plainly, once
# through ``checkpoint(..., use_reentrant=False)``, the flavour PyTorch
# recommends. Both train for five steps on the same batches with the same
# optimizer.


def make_block():
    return nn.Sequential(nn.Linear(16, 16), nn.BatchNorm1d(16), nn.ReLU())


STEPS = 5
batches = [torch.randn(32, 16, device=device) * 2 + 1 for _ in range(STEPS)]
initial_block = make_block().to(device)


def train(model, forward):
    """STEPS steps of SGD on ``batches``; returns the losses."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for batch in batches:
        loss = forward(model, batch).square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def plain(model, batch):
    return model(batch)


def checkpointed(model, batch):
    return checkpoint(model, batch, use_reentrant=False)


plain_model, checkpointed_model = (
    copy.deepcopy(initial_block),
    copy.deepcopy(initial_block),
)
plain_losses = train(plain_model, plain)
checkpointed_losses = train(checkpointed_model, checkpointed)


def compare(model):
    """The batch count, and the largest differences from ``plain_model``."""
    reference = plain_model
    norm, norm_ref = model[1], reference[1]
    return {
        "num_batches_tracked": norm.num_batches_tracked.item(),
        "running_mean": (norm.running_mean - norm_ref.running_mean).abs().max().item(),
        "running_var": (norm.running_var - norm_ref.running_var).abs().max().item(),
        "weights": max(
            (p - q).abs().max().item()
            for p, q in zip(model.parameters(), reference.parameters(), strict=True)
        ),
    }


def show(**runs):
    """A table: each run's batch count, and its largest differences from plain."""
    print(f"{'':24}{'batches':>8}   largest difference from plain")
    print(
        f"{'':24}{'counted':>8}{'running_mean':>15}{'running_var':>14}{'weights':>10}"
    )
    for label, numbers in runs.items():
        print(
            f"{label:24}{numbers['num_batches_tracked']:8}"
            f"{numbers['running_mean']:15.1e}{numbers['running_var']:14.1e}"
            f"{numbers['weights']:10.1e}"
        )


plain_numbers = compare(plain_model)
checkpointed_numbers = compare(checkpointed_model)
show(plain=plain_numbers, checkpointed=checkpointed_numbers)
print(
    "largest loss difference:",
    f"{max(abs(a - b) for a, b in zip(plain_losses, checkpointed_losses, strict=True)):.1e}",
)
# sphinx_gallery_start_ignore
assert plain_numbers["num_batches_tracked"] == STEPS, "claim: plain counts each step"
assert checkpointed_numbers["num_batches_tracked"] == 2 * STEPS, (
    "claim: checkpointed BatchNorm counts each training step twice"
)
assert checkpointed_numbers["running_mean"] > 1e-3, "claim: running_mean differs"
assert checkpointed_numbers["running_var"] > 1e-3, "claim: running_var differs"
assert checkpointed_numbers["weights"] < 1e-4, "claim: the weights do not differ"
assert (
    max(abs(a - b) for a, b in zip(plain_losses, checkpointed_losses, strict=True))
    < 1e-4
), "claim: the losses do not differ"
# sphinx_gallery_end_ignore

# %%
# The losses and the weights agree (to rounding): checkpointing computes the
# same gradients, which is its promise. The buffers do not: the checkpointed
# BatchNorm has counted ten batches in five steps, and its running statistics,
# the ones ``eval()`` will use, are off.
#
# When the second update happens
# ------------------------------
# One step, watched: the counter after the forward pass, then after backward.

watched = copy.deepcopy(initial_block)
output = checkpoint(watched, batches[0], use_reentrant=False)
after_forward = watched[1].num_batches_tracked.item()
output.square().mean().backward()
after_backward = watched[1].num_batches_tracked.item()
print("num_batches_tracked after forward:", after_forward)
print("num_batches_tracked after backward:", after_backward)
assert (after_forward, after_backward) == (1, 2), (
    "claim: the recomputation in backward updates the buffers a second time"
)

# %%
# The second update uses the same batch (the recomputation sees the same
# input), so the running mean moves twice towards the same batch mean. With
# ``momentum=0.1``, starting from zero, it lands at 0.1 + 0.9 x 0.1 = 0.19 of
# the batch mean instead of 0.1: as if the momentum were 0.19.

with torch.no_grad():
    batch_mean = initial_block[0](batches[0]).mean(dim=0)
ratio = (watched[1].running_mean / batch_mean).median().item()
print(f"running_mean / batch mean after one checkpointed step: {ratio:.4f}")
# sphinx_gallery_start_ignore
assert torch.allclose(watched[1].running_mean, 0.19 * batch_mean, atol=1e-5), (
    "claim: two updates with momentum 0.1 give 0.19 of the batch mean"
)
# sphinx_gallery_end_ignore

# %%
# The conditions
# --------------
# The extra update needs three things: training mode (in ``eval()`` BatchNorm
# updates nothing), grad mode (under ``torch.no_grad()`` checkpoint runs the
# segment once and recomputes nothing), and a backward pass. Both flavours of
# checkpoint do it. The number of updates after one forward pass (and one
# backward pass where grad mode is on):


def updates(flavour, training, grad):
    model = copy.deepcopy(initial_block).train(training)
    x = batches[0].clone().requires_grad_()
    with torch.set_grad_enabled(grad):
        if flavour == "none":
            output = model(x)
        else:
            output = checkpoint(model, x, use_reentrant=flavour == "reentrant")
        if grad:
            output.sum().backward()
    return model[1].num_batches_tracked.item()


table = {
    flavour: [
        updates(flavour, training=True, grad=True),
        updates(flavour, training=True, grad=False),
        updates(flavour, training=False, grad=True),
    ]
    for flavour in ("none", "non-reentrant", "reentrant")
}
print(f"{'checkpoint':14} {'train()':>8} {'train(), no_grad':>17} {'eval()':>7}")
for flavour, row in table.items():
    print(f"{flavour:14} {row[0]:8} {row[1]:17} {row[2]:7}")
# sphinx_gallery_start_ignore
assert table == {
    "none": [1, 1, 0],
    "non-reentrant": [2, 1, 0],
    "reentrant": [2, 1, 0],
}, f"claim: both flavours update twice in training with grad, once without: {table}"
# sphinx_gallery_end_ignore

# %%
# A forward pass under ``torch.no_grad()`` in training mode still updates the
# statistics once, checkpointed or not (chapter 7 showed that for plain
# BatchNorm).
#
# Can the layer tell the two passes apart?
# ----------------------------------------
# A common trick (fairscale's ``patch_batchnorm``) updates the statistics only
# in one of the two passes, told apart by ``torch.is_grad_enabled()``. A probe
# layer records what it sees on each call:

seen = []


class Probe(nn.Module):
    def forward(self, x):
        seen.append(torch.is_grad_enabled())
        return x


probed = nn.Sequential(nn.Linear(16, 16), Probe(), nn.BatchNorm1d(16)).to(device)
grad_mode_seen = {}
for flavour in ("non-reentrant", "reentrant"):
    seen.clear()
    x = batches[0].clone().requires_grad_()
    checkpoint(probed, x, use_reentrant=flavour == "reentrant").sum().backward()
    grad_mode_seen[flavour] = list(seen)
    print(f"{flavour:14} torch.is_grad_enabled() in forward, then recompute: {seen}")
# sphinx_gallery_start_ignore
assert grad_mode_seen == {
    "non-reentrant": [True, True],
    "reentrant": [False, True],
}, f"claim: only the reentrant flavour runs its first pass without grad: {seen}"
# sphinx_gallery_end_ignore

# %%
# The reentrant flavour runs its first pass under ``no_grad``, so the trick
# works there; the non-reentrant flavour, the recommended one, runs both passes
# in grad mode, and the layer cannot tell them apart.
#
# Fix 1: keep normalisation outside the checkpointed segment
# ----------------------------------------------------------
# Checkpoint the layers that hold no state (here, the ``Linear``) and call
# BatchNorm outside: it runs once per step, as without checkpointing. The
# memory saved is then only the checkpointed layers' activations.


def norm_outside(model, batch):
    hidden = checkpoint(model[0], batch, use_reentrant=False)
    return model[2](model[1](hidden))


outside_model = copy.deepcopy(initial_block)
outside_losses = train(outside_model, norm_outside)
outside_numbers = compare(outside_model)
show(plain=plain_numbers, **{"BatchNorm outside": outside_numbers})
# sphinx_gallery_start_ignore
assert outside_numbers["num_batches_tracked"] == STEPS, "claim: fix 1 counts once"
assert outside_numbers["running_mean"] < 1e-5, "claim: fix 1 gives plain's mean"
assert outside_numbers["running_var"] < 1e-5, "claim: fix 1 gives plain's var"
assert outside_numbers["weights"] < 1e-4, "claim: fix 1 trains like plain"
# sphinx_gallery_end_ignore

# %%
# Fix 2: tell checkpoint what to do during the recomputation
# ----------------------------------------------------------
# The non-reentrant flavour takes ``context_fn``: a function that returns two
# context managers, one for the forward pass and one for the recomputation.
# That second context manager lets code act on the recomputation alone. The
# one below notes a module's buffers, by name, when the recomputation starts
# and puts them back when it ends, so the recomputation leaves no trace in
# them. Putting back by name covers both ways a ``forward`` can update a
# buffer: in place (BatchNorm's ``running_mean``) and by replacing it
# (``self.n = self.n + 1``); copying the old values back into the tensors
# alone would miss the second. Wrapped in a module, for reuse:


@contextlib.contextmanager
def buffers_put_back(module):
    """Run a block, then give ``module``'s buffers back their values from before.

    Each buffer is put back by name: its old tensor gets its old values back and
    is registered again, in case the block replaced it with a new tensor.
    """
    saved = {name: (buffer, buffer.clone()) for name, buffer in module.named_buffers()}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, (buffer, value) in saved.items():
                buffer.copy_(value)
                owner, _, attr = name.rpartition(".")
                setattr(module.get_submodule(owner), attr, buffer)


class Checkpointed(nn.Module):
    """Runs ``body`` under activation checkpointing; its buffers update once."""

    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        if not (self.training and torch.is_grad_enabled()):
            return self.body(x)  # no backward will recompute anything
        if torch.compiler.is_compiling():
            # compiled, the plain call: for BatchNorm's in-place updates its
            # recomputation repeated no buffer update (measured below)
            return checkpoint(self.body, x, use_reentrant=False)
        return checkpoint(self.body, x, use_reentrant=False, context_fn=self.contexts)

    def contexts(self):
        return contextlib.nullcontext(), buffers_put_back(self.body)


fixed_model = Checkpointed(copy.deepcopy(initial_block))
fixed_losses = train(fixed_model, plain)
fixed_numbers = compare(fixed_model.body)
show(plain=plain_numbers, Checkpointed=fixed_numbers)
# sphinx_gallery_start_ignore
assert fixed_numbers["num_batches_tracked"] == STEPS, "claim: fix 2 counts once"
assert fixed_numbers["running_mean"] < 1e-5, "claim: fix 2 gives plain's mean"
assert fixed_numbers["running_var"] < 1e-5, "claim: fix 2 gives plain's var"
assert fixed_numbers["weights"] < 1e-4, "claim: fix 2 trains like plain"


class CountCalls(nn.Module):
    """Counts training calls by replacing its buffer, not updating it in place."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x):
        if self.training:
            self.calls = self.calls + 1
        return x


# no random initialisation here: this check draws nothing from the global RNG
reassigning = Checkpointed(nn.Sequential(CountCalls(), nn.BatchNorm1d(16))).to(device)
for batch in batches:
    reassigning(batch).square().mean().backward()
assert reassigning.body[0].calls.item() == STEPS, (
    "claim: Checkpointed puts back a buffer that forward replaces"
)
assert reassigning.body[1].num_batches_tracked.item() == STEPS, (
    "claim: Checkpointed puts back a buffer that forward updates in place"
)


@contextlib.contextmanager
def values_copied_back(module):
    """The in-place alternative: old values copied into the tensors, no names."""
    saved = [(buffer, buffer.clone()) for buffer in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


class CopiedBack(Checkpointed):
    def contexts(self):
        return contextlib.nullcontext(), values_copied_back(self.body)


copied_back = CopiedBack(nn.Sequential(CountCalls(), nn.BatchNorm1d(16))).to(device)
for batch in batches:
    copied_back(batch).square().mean().backward()
assert copied_back.body[0].calls.item() == 2 * STEPS, (
    "claim: copying values back misses a buffer that forward replaces"
)
assert copied_back.body[1].num_batches_tracked.item() == STEPS, (
    "claim: copying values back covers a buffer updated in place"
)
assert list(fixed_model.state_dict()) == [
    f"body.{key}" for key in plain_model.state_dict()
], "claim: Checkpointed adds body. to every state_dict key"
unprefixed_error = ""
try:
    copy.deepcopy(fixed_model).load_state_dict(plain_model.state_dict())
except RuntimeError as error:
    unprefixed_error = str(error)
assert 'Missing key(s) in state_dict: "body.0.weight"' in unprefixed_error, (
    f"claim: the unwrapped checkpoint needs the prefix: {unprefixed_error!r}"
)
copy.deepcopy(fixed_model).body.load_state_dict(plain_model.state_dict())
_ = copy.deepcopy(fixed_model).load_state_dict(  # _ =: a bare call's repr shows
    {f"body.{key}": value for key, value in plain_model.state_dict().items()}
)
# sphinx_gallery_end_ignore

# %%
# The counts and the statistics now match the plain run. The cost is a copy of
# the segment's buffers during each recomputation: for BatchNorm, two vectors
# and a counter per layer. The wrapper adds ``body.`` to every key of its
# ``state_dict``: a checkpoint saved from the unwrapped model loads into
# ``wrapped.body``, or into ``wrapped`` once its keys carry the prefix.
# ``context_fn`` belongs to the non-reentrant flavour only; the reentrant one
# refuses it:

try:
    checkpoint(initial_block, batches[0], use_reentrant=True, context_fn=lambda: 0)
    refused = None
except ValueError as error:
    refused = f"{type(error).__name__}: {error}"
print(textwrap.fill(refused, width=88))
# sphinx_gallery_start_ignore
assert refused is not None, "claim: the reentrant flavour refuses context_fn"
# sphinx_gallery_end_ignore

# %%
# Under ``torch.compile``
# -----------------------
# Compiled with ``backend="aot_eager"`` (the graph capture and autograd part of
# the default inductor backend, without generating code), the plainly
# checkpointed block counts each step once, and its statistics match the plain
# run's: here the recomputation repeated no buffer update. ``Checkpointed``,
# compiled, takes its plain ``checkpoint`` branch (``context_fn`` is not used
# there) and counts once too, for this block:

torch._dynamo.reset()
compiled_model = copy.deepcopy(initial_block)
compiled_losses = train(
    compiled_model, torch.compile(checkpointed, backend="aot_eager")
)
compiled_numbers = compare(compiled_model)
torch._dynamo.reset()
compiled_wrapped = Checkpointed(copy.deepcopy(initial_block))
compiled_wrapped_losses = train(
    compiled_wrapped, torch.compile(plain, backend="aot_eager")
)
compiled_wrapped_numbers = compare(compiled_wrapped.body)
torch._dynamo.reset()
show(
    plain=plain_numbers,
    **{
        "compiled, checkpointed": compiled_numbers,
        "compiled Checkpointed": compiled_wrapped_numbers,
    },
)
# sphinx_gallery_start_ignore
for numbers in (compiled_numbers, compiled_wrapped_numbers):
    assert numbers["num_batches_tracked"] == STEPS, "claim: compiled, once"
    assert numbers["running_mean"] < 1e-5, "claim: compiled gives plain's mean"
    assert numbers["running_var"] < 1e-5, "claim: compiled gives plain's var"
    assert numbers["weights"] < 1e-4, "claim: compiled trains like plain"
# sphinx_gallery_end_ignore

# %%
# That is a measurement for BatchNorm, whose updates are in place, on this
# torch version, not a promise: the compiled branch has no ``context_fn`` to
# put buffers back.

# %%
# What to remember
# ----------------
# - ``torch.utils.checkpoint`` runs a segment's ``forward`` again during
#   backward; any buffer that ``forward`` updates is updated again. For
#   BatchNorm in ``train()`` mode with grad enabled, both flavours
#   (``use_reentrant=False`` and ``True``) count each batch twice and move the
#   running statistics twice towards the same batch. The gradients are right;
#   the statistics that ``eval()`` uses are not.
# - Checkpoint only layers without running statistics, and call the
#   normalisation layers outside, or pass ``context_fn`` (non-reentrant only)
#   whose second context manager puts the buffers back after the
#   recomputation, as ``Checkpointed`` above does.
# - ``torch.is_grad_enabled()`` tells the passes apart only in the reentrant
#   flavour. Compiled with ``aot_eager``, the checkpointed BatchNorm block,
#   plain or wrapped in ``Checkpointed``, updated its statistics once per step.
