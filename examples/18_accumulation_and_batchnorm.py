r"""
Gradient accumulation and BatchNorm
===================================

Gradient accumulation trains with a batch too large for memory: split it into
micro-batches, run backward on each (the gradients add up in ``.grad``), and
step the optimizer once. For most layers the result is the large batch's
gradient. BatchNorm is not most layers: it normalises each micro-batch by that
micro-batch's own mean and variance, and it updates its running statistics
once per micro-batch, not once per optimizer step (PyTorch issue #46516).
This chapter measures both effects against the full batch and checks what each
remedy changes.
"""

# %%
# Where this page ran
# -------------------

import copy
import itertools
import os

import torch
from torch import nn

# sphinx_gallery_thumbnail_path = "_thumbnails/18_accumulation_and_batchnorm.png"

device = torch.device(
    os.environ.get("GUIDE_DEVICE")
    or torch.accelerator.current_accelerator(check_available=True)
    or "cpu"
)
print(f"torch {torch.__version__}, device: {device}")
torch.manual_seed(123)

# %%
# One batch, whole or in micro-batches
# ------------------------------------
# A small regression model with a normalisation layer in the middle, and one
# batch of 64 rows. ``accumulate`` runs the batch as micro-batches of a given
# size, dividing each micro-batch's loss by their number, so the accumulated
# gradient is the full batch's mean loss gradient when rows do not affect each
# other. A micro-batch of 64 is the full batch.

BATCH = 64


def make_model(norm):
    return nn.Sequential(nn.Linear(8, 16), norm, nn.ReLU(), nn.Linear(16, 1)).to(device)


# drawn on the CPU, so that every device sees the same numbers
inputs = (torch.randn(BATCH, 8) * 2 + 1).to(device)
targets = torch.randn(BATCH, 1).to(device)


def accumulate(model, micro):
    """Backward over ``inputs`` in micro-batches of ``micro`` rows, on a copy.

    Returns the copy (with its gradients and buffers) and its outputs.
    """
    model = copy.deepcopy(model).train()
    count = BATCH // micro
    outputs = []
    for x, y in zip(inputs.split(micro), targets.split(micro), strict=True):
        output = model(x)
        (nn.functional.mse_loss(output, y) / count).backward()
        outputs.append(output.detach())
    return model, torch.cat(outputs)


def gradient(model):
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def relative(a, b):
    """Largest difference of a from b, relative to b's largest magnitude.

    Every difference printed on this page is one of these.
    """
    return ((a - b).abs().max() / b.abs().max()).item()


batchnorm_model = make_model(nn.BatchNorm1d(16))
full, full_outputs = accumulate(batchnorm_model, BATCH)
micro, micro_outputs = accumulate(batchnorm_model, 16)
print("full batch:        num_batches_tracked", full[1].num_batches_tracked.item())
print("4 micro-batches:   num_batches_tracked", micro[1].num_batches_tracked.item())
outputs_gap = relative(micro_outputs, full_outputs)
gradient_gap = relative(gradient(micro), gradient(full))
print(f"largest output difference from the full batch:   {outputs_gap:.1e}")
print(f"largest gradient difference from the full batch: {gradient_gap:.1e}")
# sphinx_gallery_start_ignore
assert full[1].num_batches_tracked.item() == 1, "claim: the full batch counts once"
assert micro[1].num_batches_tracked.item() == 4, "claim: one count per micro-batch"
assert outputs_gap > 0.01, "claim: micro-batch outputs differ from the full batch's"
assert gradient_gap > 0.01, "claim: accumulated gradients differ from the full batch's"
# sphinx_gallery_end_ignore

# %%
# Two things went wrong at once: the counter says four batches for one
# optimizer step, and the gradient is not the full batch's. The second is not
# about buffers at all: in ``train()`` mode BatchNorm normalises with the batch
# statistics of whatever it is given, and a micro-batch's mean and variance
# are not the batch's. The same model with a layer that normalises each row
# on its own (``LayerNorm``, ``GroupNorm``), or none, accumulates the full
# batch's gradient, to rounding:

print(f"{'normalisation':24}{'largest gradient difference, 4 micro-batches':>46}")
gaps = {}
for label, norm in [
    ("BatchNorm1d", nn.BatchNorm1d(16)),
    ("LayerNorm", nn.LayerNorm(16)),
    ("GroupNorm(4 groups)", nn.GroupNorm(4, 16)),
    ("none", nn.Identity()),
]:
    model = make_model(norm)
    # the same Linear weights as batchnorm_model (the norm layers start at 1 and 0)
    model.load_state_dict(batchnorm_model.state_dict(), strict=False)
    gaps[label] = relative(
        gradient(accumulate(model, 16)[0]), gradient(accumulate(model, BATCH)[0])
    )
    print(f"{label:24}{gaps[label]:46.1e}")
# sphinx_gallery_start_ignore
assert gaps["BatchNorm1d"] > 0.01, "claim: BatchNorm's accumulated gradient differs"
for label in ("LayerNorm", "GroupNorm(4 groups)", "none"):
    assert gaps[label] < 1e-5, f"claim: {label} accumulates the full gradient: {gaps}"
# sphinx_gallery_end_ignore

# %%
# The running statistics: one update per micro-batch
# --------------------------------------------------
# Training runs many optimizer steps, and the running statistics follow the
# activations as the weights change them. To see that drift alone, feed
# BatchNorm ten effective batches whose mean rises by one per batch (forward
# only: chapter 7 showed that statistics update without backward), as one
# batch of 64 or as four micro-batches of 16 each:

EFFECTIVE_BATCHES = 10
drifting = [
    (torch.randn(BATCH, 16) + step).to(device) for step in range(EFFECTIVE_BATCHES)
]


def running_stats(micro, momentum=0.1):
    norm = nn.BatchNorm1d(16, momentum=momentum).to(device)
    with torch.no_grad():
        for batch in drifting:
            for part in batch.split(micro):
                norm(part)
    return norm


reference = running_stats(BATCH)
naive = running_stats(16)


def report(label, norm):
    mean = norm.running_mean.mean().item()
    var = norm.running_var.mean().item()
    counted = norm.num_batches_tracked.item()
    print(f"{label:34}{counted:8}{mean:14.3f}{var:13.3f}")


print(f"{'':34}{'counted':>8}{'running_mean':>14}{'running_var':>13}")
report("full batches, momentum 0.1", reference)
report("micro-batches, momentum 0.1", naive)
# sphinx_gallery_start_ignore
assert naive.num_batches_tracked.item() == 4 * reference.num_batches_tracked.item()
assert naive.running_mean.mean() > reference.running_mean.mean() + 0.5, (
    "claim: four updates per step make the running mean follow the drift faster"
)
repeated = torch.randn(16, 16, generator=torch.Generator().manual_seed(0)) + 3
four, one = nn.BatchNorm1d(16), nn.BatchNorm1d(16, momentum=1 - 0.9**4)
with torch.no_grad():
    for _ in range(4):
        four(repeated)
    one(repeated.repeat(4, 1))
assert torch.allclose(four.running_mean, one.running_mean, atol=1e-5), (
    "claim: four updates with momentum 0.1 forget like one with 1 - 0.9**4"
)
# sphinx_gallery_end_ignore

# %%
# (The values are averages over the 16 features.) Four updates per step with
# ``momentum=0.1`` forget old batches as fast as one update with momentum
# 1 - 0.9\ :sup:`4` = 0.34 would: the running mean sits much closer to the
# latest batch than the full-batch run's.
#
# Remedy 1: a momentum for micro-batches
# --------------------------------------
# ``k`` updates with momentum ``m'`` keep (1 - ``m'``)\ :sup:`k` of the old
# value; one update with ``m`` keeps 1 - ``m``. Solving for ``m'``:

micro_count = BATCH // 16
adjusted_momentum = 1 - (1 - 0.1) ** (1 / micro_count)
print(f"momentum for {micro_count} micro-batches: {adjusted_momentum:.4f}")
adjusted = running_stats(16, momentum=adjusted_momentum)
print(f"{'':34}{'counted':>8}{'running_mean':>14}{'running_var':>13}")
report("full batches, momentum 0.1", reference)
report("micro-batches, momentum 0.1", naive)
report(f"micro-batches, momentum {adjusted_momentum:.4f}", adjusted)
mean_gaps = {
    label: (norm.running_mean - reference.running_mean).abs().max().item()
    for label, norm in (("naive", naive), ("adjusted", adjusted))
}
print(
    f"largest running_mean difference from full batches: "
    f"{mean_gaps['naive']:.3f} (momentum 0.1), {mean_gaps['adjusted']:.3f} (adjusted)"
)
# sphinx_gallery_start_ignore
assert mean_gaps["adjusted"] < mean_gaps["naive"] / 5, (
    f"claim: the adjusted momentum tracks the full batches' mean: {mean_gaps}"
)
assert adjusted.num_batches_tracked.item() == naive.num_batches_tracked.item(), (
    "claim: the momentum does not change the count"
)
# sphinx_gallery_end_ignore

# %%
# The running mean now follows the drift as the full-batch one does. Not
# exactly: the micro-batch updates weigh the later micro-batches of a step more
# than the earlier ones, and each micro-batch's variance comes from 16 rows,
# not 64. The counter still counts micro-batches. With a momentum the counter
# is only a count; with ``momentum=None`` BatchNorm keeps a cumulative average
# instead and divides by the counter, and there is no momentum to adjust. There,
# equal micro-batches give the full batches' running mean (the average of their
# means is the batch mean), but not their running variance: each micro-batch's
# variance is measured around its own mean from 16 rows, not around the batch
# mean from 64.

cumulative_full = running_stats(BATCH, momentum=None)
cumulative_micro = running_stats(16, momentum=None)
cumulative_gaps = {
    name: (getattr(cumulative_micro, name) - getattr(cumulative_full, name))
    .abs()
    .max()
    .item()
    for name in ("running_mean", "running_var")
}
print(
    "momentum=None, largest difference from full batches: "
    f"running_mean {cumulative_gaps['running_mean']:.1e}, "
    f"running_var {cumulative_gaps['running_var']:.1e}"
)
# sphinx_gallery_start_ignore
assert cumulative_gaps["running_mean"] < 1e-4, (
    f"claim: momentum=None, equal micro-batches keep the mean: {cumulative_gaps}"
)
assert cumulative_gaps["running_var"] > 100 * cumulative_gaps["running_mean"], (
    f"claim: momentum=None, micro-batches still change the variance: {cumulative_gaps}"
)
assert cumulative_micro.num_batches_tracked.item() == 4 * EFFECTIVE_BATCHES, (
    "claim: momentum=None, the counter counts micro-batches"
)
# sphinx_gallery_end_ignore

# %%
# And the momentum changes only the buffers: the gradients are the same as
# before, still not the full batch's.

adjusted_model = copy.deepcopy(batchnorm_model)
adjusted_model[1].momentum = adjusted_momentum
same_gradient = torch.equal(
    gradient(accumulate(adjusted_model, 16)[0]), gradient(micro)
)
print("gradient with the adjusted momentum identical to momentum 0.1's:", same_gradient)
# sphinx_gallery_start_ignore
assert same_gradient, "claim: the momentum does not change the gradients"
# sphinx_gallery_end_ignore

# %%
# Remedy 2: larger micro-batches
# ------------------------------
# The gradient error comes from the micro-batch statistics, which come closer
# to the batch's as micro-batches grow. Measured on the same batch:

print(f"{'micro-batch':>12}{'micro-batches':>15}{'gradient difference':>21}")
by_size = {}
for size in (4, 8, 16, 32, BATCH):
    model, _ = accumulate(batchnorm_model, size)
    by_size[size] = relative(gradient(model), gradient(full))
    print(f"{size:12}{BATCH // size:15}{by_size[size]:21.1e}")
# sphinx_gallery_start_ignore
sizes = sorted(by_size)
assert all(by_size[a] > by_size[b] for a, b in itertools.pairwise(sizes)), (
    f"claim: the gradient difference shrinks as micro-batches grow: {by_size}"
)
assert by_size[BATCH] == 0.0, "claim: one micro-batch of 64 is the full batch"
# sphinx_gallery_end_ignore

# %%
# It shrinks, slowly, and reaches zero only at the full batch.
#
# Remedy 3: normalisation without running statistics
# --------------------------------------------------
# ``LayerNorm`` and ``GroupNorm`` normalise each row by its own features: they
# have no running statistics to update too often, and, as measured above, they
# accumulate the full batch's gradient. Switching changes the model, so it is a
# design decision rather than a fix.
#
# ``BatchNorm1d(track_running_stats=False)`` is not that. It has no running
# buffers, so nothing is updated per micro-batch, but it still normalises each
# micro-batch by its own statistics, in training and also in ``eval()``:

untracked = make_model(nn.BatchNorm1d(16, track_running_stats=False))
print("buffers:", [name for name, _ in untracked.named_buffers()])
untracked_gap = relative(
    gradient(accumulate(untracked, 16)[0]), gradient(accumulate(untracked, BATCH)[0])
)
print(f"gradient difference, 4 micro-batches: {untracked_gap:.1e}")
untracked.eval()
with torch.no_grad():
    in_batch = untracked(inputs)[:1]
    alone = untracked(inputs[:2])[:1]
print(
    f"eval(): row 0's output in the batch {in_batch.item():.4f}, "
    f"in a batch of two {alone.item():.4f}"
)
# sphinx_gallery_start_ignore
assert list(untracked.named_buffers()) == [], "claim: no buffers without running stats"
for norm in (nn.LayerNorm(16), nn.GroupNorm(4, 16)):
    assert list(norm.buffers()) == [], "claim: LayerNorm, GroupNorm have no buffers"
assert untracked_gap > 0.01, "claim: track_running_stats=False still differs"
assert not torch.allclose(in_batch, alone), "claim: eval output depends on the batch"
# sphinx_gallery_end_ignore

# %%
# What to remember
# ----------------
# - With gradient accumulation, BatchNorm in ``train()`` mode normalises each
#   micro-batch by its own statistics: outputs and gradients differ from the
#   full batch's, and no buffer setting changes that. Larger micro-batches
#   shrink the difference; row-wise normalisation (``LayerNorm``,
#   ``GroupNorm``) removes it.
# - It also updates its running statistics once per micro-batch: they
#   forget old batches as if the momentum were 1 - (1 - m)\ :sup:`k`. A
#   momentum of 1 - (1 - m)\ :sup:`1/k` restores the forgetting rate;
#   ``num_batches_tracked`` still counts micro-batches.
# - ``track_running_stats=False`` removes the buffers but keeps batch
#   statistics, in ``eval()`` too: a row's output then depends on its batch.
