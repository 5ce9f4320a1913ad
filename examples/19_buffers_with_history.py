r"""
Buffers that carry autograd history
===================================

A buffer that ``forward`` updates from the activations (a running mean, a
running maximum, a cache) has to be updated outside autograd. Updated in grad
mode, the buffer becomes part of the autograd graph: it keeps every earlier
step's graph alive, training fails at its second ``backward``, and
``copy.deepcopy`` refuses the module. This chapter makes that mistake on
purpose, shows each symptom, fixes it, and ends with a check to paste into
your own tests.
"""

# %%
# Where this page ran
# -------------------

import copy
import itertools
import os
import textwrap

import torch
from torch import nn

# sphinx_gallery_thumbnail_path = "_thumbnails/19_buffers_with_history.png"

device = torch.device(
    os.environ.get("GUIDE_DEVICE")
    or torch.accelerator.current_accelerator(check_available=True)
    or "cpu"
)
print(f"torch {torch.__version__}, device: {device}")
torch.manual_seed(123)


def show_error(error):
    """Print an exception's type and message, wrapped to fit the page."""
    print(textwrap.fill(f"{type(error).__name__}: {error}", width=88))


# %%
# A running peak, updated in grad mode
# ------------------------------------
# A ``Linear`` layer whose output is divided by a running average of its
# largest magnitudes, a buffer updated in place in training (the same shape of
# code as BatchNorm's running statistics, written by hand):


class PeakScaled(nn.Module):
    def __init__(self, dim=32, momentum=0.1):
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.momentum = momentum
        self.register_buffer("peak", torch.ones(dim))

    def forward(self, x):
        y = self.proj(x)
        if self.training:
            self.peak.lerp_(y.abs().amax(dim=0), self.momentum)  # the mistake
        return y / self.peak


model = PeakScaled().to(device)
batches = [torch.randn(128, 32, device=device) for _ in range(5)]
print("before forward: peak.grad_fn =", model.peak.grad_fn)
model(batches[0])
print("after forward:  peak.grad_fn =", type(model.peak.grad_fn).__name__)
print("peak.requires_grad:", model.peak.requires_grad, " is_leaf:", model.peak.is_leaf)
# sphinx_gallery_start_ignore
assert model.peak.grad_fn is not None, "claim: the in-place update records history"
assert model.peak.requires_grad, "claim: the buffer now requires grad"
assert not model.peak.is_leaf, "claim: the buffer is no longer a leaf"
assert model.peak is model.get_buffer("peak"), "claim: still the registered buffer"
# sphinx_gallery_end_ignore

# %%
# ``lerp_`` mixed the batch's peaks, which depend on the layer's weight, into
# the buffer in place, and autograd recorded it: the buffer is now the output
# of a ``LerpBackward0`` node, no longer a leaf, and requires grad. The
# module still holds the same tensor, so nothing looks wrong yet.
#
# Symptom 1: the graph grows with every step
# ------------------------------------------
# Each update starts from the previous value of the buffer, so each step's
# graph hangs on the one before. The walk below counts the autograd nodes
# reachable from ``peak.grad_fn`` and the bytes of the tensors they saved for
# backward (the ``_saved_*`` attributes autograd's nodes expose), after each
# of five forward passes in grad mode, as an evaluation loop that forgot
# ``torch.no_grad()`` and ``model.eval()`` runs them:


def graph_size(tensor):
    """(autograd nodes, bytes of saved tensors) reachable from tensor.grad_fn."""
    nodes, storages, pending = set(), {}, [tensor.grad_fn]
    while pending:
        node = pending.pop()
        if node is None or node in nodes:
            continue
        nodes.add(node)
        for name in dir(node):
            if name.startswith("_saved_"):
                try:
                    saved = getattr(node, name)
                except RuntimeError:  # freed by an earlier backward
                    continue
                if isinstance(saved, torch.Tensor):
                    storage = saved.untyped_storage()
                    storages[storage.data_ptr()] = storage.nbytes()
        pending.extend(child for child, _ in node.next_functions)
    return len(nodes), sum(storages.values())


model = PeakScaled().to(device)
growth = []
print(f"{'forward passes':>14}{'graph nodes':>13}{'saved bytes':>13}")
for step, batch in enumerate(batches, start=1):
    model(batch)
    growth.append(graph_size(model.peak))
    print(f"{step:14}{growth[-1][0]:13}{growth[-1][1]:13}")
# sphinx_gallery_start_ignore
node_steps = {b[0] - a[0] for a, b in itertools.pairwise(growth)}
byte_steps = {b[1] - a[1] for a, b in itertools.pairwise(growth)}
assert len(node_steps) == 1, f"claim: the same number of nodes per step: {growth}"
assert node_steps.pop() > 0, "claim: the graph grows with every step"
assert len(byte_steps) == 1, f"claim: the same saved bytes per step: {growth}"
assert byte_steps.pop() > 0, "claim: the saved tensors grow with every step"
# sphinx_gallery_end_ignore

# %%
# The same number of nodes and bytes more with every step, and they add up:
# none of it is freed while the buffer lives, because the buffer's ``grad_fn``
# reaches all of it.
#
# Symptom 2: the second ``backward`` fails
# ----------------------------------------
# In training, ``backward`` frees the tensors each graph saved. The next step's
# loss depends on the buffer, whose graph reaches the step before, already
# freed:

model = PeakScaled().to(device)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
completed, second_backward_error = 0, None
for batch in batches[:2]:
    try:
        model(batch).square().mean().backward()
    except RuntimeError as error:
        second_backward_error = error
        break
    optimizer.step()
    optimizer.zero_grad()
    completed += 1
print("steps completed:", completed)
show_error(second_backward_error)
# sphinx_gallery_start_ignore
assert completed == 1, "claim: the first step trains"
assert "backward through the graph a second time" in str(second_backward_error), (
    "claim: the second backward fails on the freed graph"
)
# sphinx_gallery_end_ignore

# %%
# The message suggests ``retain_graph=True``. That silences it and brings
# symptom 1 back, in training: every step's graph is kept. And the gradients
# were wrong from the start: the loss backpropagates through the running peak.
# Already on the first step, the gradient differs from the one the fixed module
# (below) computes from the same weights and batch.
#
# Symptom 3: ``copy.deepcopy`` refuses the module
# -----------------------------------------------
# Averaged models (chapter 14), early-stopping snapshots and many trainers
# deepcopy the model. With the buffer holding history:

model = PeakScaled().to(device)
model(batches[0])
try:
    copy.deepcopy(model)
    deepcopy_error = None
except RuntimeError as error:
    deepcopy_error = error
show_error(deepcopy_error)
# sphinx_gallery_start_ignore
assert str(deepcopy_error).startswith(
    "Only Tensors created explicitly by the user (graph leaves) support the "
    "deepcopy protocol"
), f"claim: deepcopy refuses a non-leaf buffer: {deepcopy_error}"
# sphinx_gallery_end_ignore

# %%
# The message names ``weight_norm`` as one cause; here the non-leaf tensor is
# the buffer.
# ``state_dict()``, on the other hand, hands out detached tensors, so saving a
# checkpoint works and hides the problem:

saved_peak = model.state_dict()["peak"]
print("state_dict()['peak'].grad_fn:", saved_peak.grad_fn)
# sphinx_gallery_start_ignore
assert saved_peak.grad_fn is None, "claim: state_dict() detaches buffers"
assert torch.equal(saved_peak, model.peak), "claim: ... with the buffer's values"
# sphinx_gallery_end_ignore

# %%
# The fix: update under ``torch.no_grad()``
# -----------------------------------------
# The update is bookkeeping, not part of the model's function: run it where
# autograd does not record.


class PeakScaledFixed(PeakScaled):
    def forward(self, x):
        y = self.proj(x)
        if self.training:
            with torch.no_grad():
                self.peak.lerp_(y.abs().amax(dim=0), self.momentum)
        return y / self.peak


# %%
# (``self.peak.lerp_(y.detach().abs().amax(dim=0), self.momentum)`` does the
# same: a detached input leaves nothing to record.) Trained for five steps:

fixed = PeakScaledFixed().to(device)
start = copy.deepcopy(fixed.state_dict())
optimizer = torch.optim.AdamW(fixed.parameters(), lr=1e-3)
for batch in batches:
    fixed(batch).square().mean().backward()
    optimizer.step()
    optimizer.zero_grad()
print("after five steps: peak.grad_fn =", fixed.peak.grad_fn)
print("graph nodes and saved bytes reachable from peak:", graph_size(fixed.peak))
copied = copy.deepcopy(fixed)
print("deepcopy works:", torch.equal(copied.peak, fixed.peak))
# sphinx_gallery_start_ignore
assert fixed.peak.grad_fn is None, "claim: no history"
assert not fixed.peak.requires_grad, "claim: the buffer does not require grad"
assert graph_size(fixed.peak) == (0, 0), "claim: nothing reachable"
assert torch.equal(copied.peak, fixed.peak), "claim: deepcopy works"
with torch.random.fork_rng(devices=[]):  # hidden checks draw no global numbers
    detached, reference = PeakScaled().to(device), PeakScaledFixed().to(device)
detached.load_state_dict(start)
reference.load_state_dict(start)
detached.peak.lerp_(detached.proj(batches[0]).detach().abs().amax(dim=0), 0.1)
reference(batches[0])
assert detached.peak.grad_fn is None, "claim: a detached input records nothing"
assert torch.equal(detached.peak, reference.peak), "claim: detach() does the same"
# sphinx_gallery_end_ignore

# %%
# And the gradients: the first step's, from the same weights and batch, with
# and without the fix (the buggy module's first ``backward`` still works):

buggy, clean = PeakScaled().to(device), PeakScaledFixed().to(device)
buggy.load_state_dict(start)
clean.load_state_dict(start)
buggy(batches[0]).square().mean().backward()
clean(batches[0]).square().mean().backward()
gradient_gap = (buggy.proj.weight.grad - clean.proj.weight.grad).abs().max().item()
print(f"largest difference of proj.weight.grad: {gradient_gap:.2e}")
# sphinx_gallery_start_ignore
assert gradient_gap > 1e-6, "claim: the history changes the gradient"
assert torch.equal(buggy.peak.detach(), clean.peak), "claim: ... not the buffer value"
with torch.random.fork_rng(devices=[]):
    retained = PeakScaled().to(device)
sizes = []
for batch in batches[:3]:  # retain_graph=True: no error, and the graph keeps growing
    retained(batch).square().mean().backward(retain_graph=True)
    sizes.append(graph_size(retained.peak))
assert sizes[0] < sizes[1] < sizes[2], f"claim: retain_graph keeps every graph: {sizes}"
# sphinx_gallery_end_ignore

# %%
# Detecting it
# ------------
# A buffer should never have a ``grad_fn``. After one training step of your
# model (forward, backward, optimizer step), three lines find the buffers that
# carry history:

carrying = [name for name, b in model.named_buffers() if b.grad_fn is not None]
if carrying:
    print(f"buffers with autograd history: {carrying}")
# sphinx_gallery_start_ignore
assert carrying == ["peak"], "claim: the check names the buggy buffer"
assert not [n for n, b in fixed.named_buffers() if b.grad_fn is not None], (
    "claim: the check passes the fixed module"
)
# sphinx_gallery_end_ignore

# %%
# This is why the guide's own tests train every class a chapter offers for
# reuse (``tests/copied_code.py`` in the guide's repository): three optimizer
# steps with backward, then this check, then ``copy.deepcopy``. A page that
# runs a class only for inference never sees the bug: under
# ``torch.no_grad()``, or with inputs and weights that need no gradient,
# nothing is recorded.

# sphinx_gallery_start_ignore
with torch.random.fork_rng(devices=[]), torch.no_grad():
    quiet = PeakScaled().to(device)
    quiet(batches[0])
assert quiet.peak.grad_fn is None, "claim: under no_grad nothing is recorded"
with torch.random.fork_rng(devices=[]):
    frozen = PeakScaled().to(device).requires_grad_(False)
frozen(batches[0])
assert frozen.peak.grad_fn is None, "claim: without gradients nothing is recorded"
# sphinx_gallery_end_ignore

# %%
# What to remember
# ----------------
# - A buffer updated in grad mode from activations that require grad becomes a
#   non-leaf tensor with a ``grad_fn``. It keeps every step's graph alive,
#   makes the second ``backward`` fail ("Trying to backward through the graph a
#   second time"), changes the gradients, and makes ``copy.deepcopy`` fail
#   ("Only Tensors created explicitly by the user (graph leaves) support the
#   deepcopy protocol"). ``state_dict()`` detaches, so checkpoints hide it.
# - ``retain_graph=True`` silences the error and keeps the growing graph.
# - Update buffers under ``torch.no_grad()`` (or from ``.detach()`` results).
# - Test for it: after a training step, no buffer may have a ``grad_fn``.
