r"""
Averaged models: SWA, EMA and their buffers
===========================================

Averaging the weights a model passes through while it trains can give a
better model than the last weights: stochastic weight averaging (SWA) takes the
plain mean of snapshots, an exponential moving average (EMA) weights recent
ones more. ``torch.optim.swa_utils.AveragedModel`` does both. Averaging is
defined for parameters. Buffers are another matter: a BatchNorm layer's running
statistics describe the activations of *some* set of weights, and after
averaging they may describe none. This chapter trains a small model, averages it
three ways, measures how far each averaged model's statistics are from the
truth, and shows the recipe that gets them right; then it shows what a
hand-written EMA over ``state_dict()`` leaves behind.
"""

# %%
# Where this page ran
# -------------------

import copy
import inspect
import os
import textwrap

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn

# sphinx_gallery_thumbnail_path = "_thumbnails/14_averaged_models.png"

device = torch.device(
    os.environ.get("GUIDE_DEVICE")
    or torch.accelerator.current_accelerator(check_available=True)
    or "cpu"
)
print(f"torch {torch.__version__}, device: {device}")
torch.manual_seed(123)

# %%
# A model, its data, three averages
# ---------------------------------
# A regression with a BatchNorm layer after the first ``Linear``; the data is
# drawn once and split into eight batches of 64. Three averaged copies are built
# from the model before training:
#
# - ``swa``: ``AveragedModel(model)``, the default ``use_buffers=False``;
# - ``swa_buffers``: the same with ``use_buffers=True``;
# - ``ema``: ``AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9),
#   use_buffers=True)``, the EMA recipe from torch's documentation.
#
# SWA averages one snapshot per epoch after a short warm-up, as the SWA recipe
# does; the EMA is updated after every step.


def make_model():
    return nn.Sequential(
        nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 1)
    ).to(device)


inputs = torch.randn(512, 4, device=device) * 2 + 1
targets = (inputs @ torch.randn(4, 1, device=device)).sin()
batches = list(zip(inputs.split(64), targets.split(64), strict=True))

model = make_model()
swa = AveragedModel(model)
swa_buffers = AveragedModel(model, use_buffers=True)
ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

EPOCHS, SWA_START = 12, 4
for epoch in range(EPOCHS):
    for x, y in batches:
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        ema.update_parameters(model)
    if epoch >= SWA_START:
        swa.update_parameters(model)
        swa_buffers.update_parameters(model)
print("snapshots averaged: swa", swa.n_averaged.item(), "ema", ema.n_averaged.item())

# %%
# What the averaged models hold in their BatchNorm buffers
# --------------------------------------------------------
# With ``use_buffers=False`` the buffers are not averaged at all: each
# ``update_parameters`` copies the live model's buffers. With ``True`` they are
# averaged like the parameters.

live_mean = model[1].running_mean
copied = torch.equal(swa.module[1].running_mean, live_mean)
copied_too = torch.equal(swa_buffers.module[1].running_mean, live_mean)
print("swa (use_buffers=False) holds the live model's running_mean:", copied)
print("swa_buffers (use_buffers=True) holds it:", copied_too)
# sphinx_gallery_start_ignore
assert copied, "claim: use_buffers=False copies the live model's buffers"
assert not copied_too, "claim: use_buffers=True averages the buffers instead"
# sphinx_gallery_end_ignore

# %%
# Either way, are they right? A BatchNorm layer in ``eval()`` normalises with
# its running mean and variance, which should be the mean and variance of its
# input over the data. For the averaged weights that input is
# ``averaged.module[0](inputs)``: compute it and compare, and measure each
# model's loss in ``eval()``.


@torch.no_grad()
def audit(network):
    """How far the BatchNorm buffers are from the truth, and the eval loss."""
    network.eval()
    features = network[0](inputs)
    norm = network[1]
    mean_gap = (norm.running_mean - features.mean(0)).abs().max().item()
    var_ratio = (norm.running_var / features.var(0)).log().abs().max().exp().item()
    loss = nn.functional.mse_loss(network(inputs), targets).item()
    return mean_gap, var_ratio, loss


def show(rows):
    print(f"{'model':34} {'mean off by':>11} {'var off by':>10} {'eval loss':>9}")
    for label, (mean_gap, var_ratio, loss) in rows.items():
        print(f"{label:34} {mean_gap:11.4f} {var_ratio:9.3f}x {loss:9.4f}")


averaged = {
    "swa, use_buffers=False": swa,
    "swa_buffers, use_buffers=True": swa_buffers,
    "ema, use_buffers=True": ema,
}
before = {"live model": audit(model)} | {
    label: audit(network.module) for label, network in averaged.items()
}
show(before)

# %%
# "mean off by" is the largest difference between a running mean and the true
# mean of the layer's input; "var off by" the largest factor between a running
# variance and the true one. Not one is exact. The live model's statistics are a
# momentum average over batches seen while its weights were still moving.
# ``use_buffers=False`` hands the averaged weights the live model's statistics,
# which belong to other weights. ``use_buffers=True`` averages the statistics
# of the snapshots, which approximates the statistics of the averaged weights,
# no more: a mean is linear in the first layer's weights, a variance is not, and
# deeper layers see a nonlinear function of all the weights before them.

# sphinx_gallery_start_ignore
assert all(gap > 1e-3 for gap, _, _ in before.values()), (
    "claim: no model's running_mean matches its weights' activations"
)
# sphinx_gallery_end_ignore

# %%
# The fix: ``update_bn``
# ----------------------
# ``torch.optim.swa_utils.update_bn(loader, model)`` resets every BatchNorm's
# running statistics, sets ``momentum=None`` (a cumulative average), runs one
# pass over the data in ``train()`` under ``no_grad``, and restores momentum
# (here ``0.1``) and the model's mode (here ``train()``; more on the mode
# below). The loader can be anything that yields batches: a ``DataLoader``,
# or here the list of ``(x, y)`` pairs (it takes the first element of each).

for network in averaged.values():
    update_bn(batches, network)
# sphinx_gallery_start_ignore
assert swa.module[1].momentum == 0.1, "claim: update_bn restores momentum"
assert swa.training, "claim: update_bn restores the mode"
# sphinx_gallery_end_ignore
after = {label: audit(network.module) for label, network in averaged.items()}
show(after)
for label in averaged:
    verdict = "lowered" if after[label][2] < before[label][2] else "did not lower"
    print(f"update_bn {verdict} the eval loss of {label}: "
          f"{before[label][2]:.4f} -> {after[label][2]:.4f}")  # fmt: skip

# sphinx_gallery_start_ignore
assert all(gap < 1e-4 for gap, _, _ in after.values()), (
    "claim: after update_bn the running mean is the mean of the averaged "
    "weights' activations"
)
with torch.no_grad():
    swa_features = swa.module[0](inputs)
per_batch_variances = torch.stack([f.var(0) for f in swa_features.split(64)])
assert torch.allclose(
    swa.module[1].running_var, per_batch_variances.mean(0), rtol=1e-4, atol=1e-6
), "claim: update_bn's running_var is the average of the per-batch variances"
assert all(1.0001 < ratio < 1.1 for _, ratio, _ in after.values()), (
    "claim: the running variance is close (within 10%) but not exact"
)
swa_var_ratio = swa.module[1].running_var / swa_features.var(0)
assert swa_var_ratio.min() < 1 < swa_var_ratio.max(), (
    "claim: the averaged per-batch variance is off in either direction"
)
assert "use_buffers=True" in AveragedModel.__doc__, "claim: torch's docs show this EMA"
# sphinx_gallery_end_ignore

# %%
# Now every running mean is the true mean of the input its layer sees, to float
# precision: ``update_bn`` averages the eight per-batch means with equal weight,
# and here the layer is the first BatchNorm and the batches have the same size.
# The running variance is close but not exact: ``update_bn`` averages the eight
# per-batch (unbiased) variances, which is not the variance over all the data,
# and is off in either direction (some features above it, some below). Whether
# it lowers the loss depends on the model and data (the lines above say what it
# did here); that the statistics then belong to the weights does not.

# %%
# Saving the averaged model
# -------------------------
# ``AveragedModel`` is a wrapper: its ``state_dict()`` holds the model under
# ``module.`` and one buffer of its own, ``n_averaged``. A plain model does not
# load it:

print("first keys:", list(ema.state_dict())[:3])
# sphinx_gallery_start_ignore
assert set(ema.state_dict()) == {"n_averaged"} | {
    f"module.{key}" for key in ema.module.state_dict()
}, "claim: the wrapper saves the model under module. and only n_averaged besides"
# sphinx_gallery_end_ignore
try:
    make_model().load_state_dict(ema.state_dict())
    load_error = None
except RuntimeError as error:
    load_error = error
    print(f"{type(error).__name__}:")
    for line in str(error).splitlines():
        print(textwrap.shorten(line.strip(), width=88, placeholder=" ..."))
deployable = make_model()
deployable.load_state_dict(ema.module.state_dict())
print("ema.module.state_dict() loads into a plain model: yes")
# sphinx_gallery_start_ignore
assert load_error is not None, (
    "claim: a wrapper's state_dict does not load into a model"
)
# sphinx_gallery_end_ignore

# %%
# Save ``ema.module.state_dict()`` for deployment; save ``ema.state_dict()`` to
# resume training, since ``n_averaged`` decides the weight of the next SWA
# snapshot. (``avg_fn`` and ``multi_avg_fn`` are not saved: pass them again.)
#
# A hand-written EMA over ``state_dict()``
# ----------------------------------------
# Many training scripts keep their own EMA: a deep copy of the model, and after
# each step every entry of ``state_dict()`` moved toward the live model's. That
# averages every parameter and persistent buffer, and nothing else. The model
# below has two more pieces of state, both common:
#
# - ``input_range``: a buffer that ``forward`` updates in ``train()`` (the
#   largest input seen, as a quantization observer keeps), registered with
#   ``persistent=False`` so that older checkpoints still load;
# - ``output_scale``: a plain tensor attribute that the training script sets from
#   the data after the model is built.
#
# ``output_scale`` is a 0-dim tensor: a plain attribute is not moved by
# ``.to()``, and torch lets a 0-dim CPU tensor join arithmetic on another
# device, where a ``(1,)`` CPU tensor raises.


class RangeScaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.register_buffer("input_range", torch.ones(4), persistent=False)
        self.output_scale = torch.ones(())  # plain attribute: not a buffer

    def forward(self, x):
        if self.training:
            with torch.no_grad():  # a statistic: no gradient flows into it
                torch.maximum(self.input_range, x.abs().amax(0), out=self.input_range)
        return self.linear(x / self.input_range) * self.output_scale


@torch.no_grad()
def hand_written_ema_update(ema_model, live_model, decay=0.9):
    ema_state = ema_model.state_dict()
    for name, value in live_model.state_dict().items():
        if value.is_floating_point():
            ema_state[name].lerp_(value, 1 - decay)
        else:
            ema_state[name].copy_(value)


linear_targets = inputs @ torch.randn(4, 1, device=device) + 1.0
scaled = RangeScaled().to(device)
hand_ema = copy.deepcopy(scaled)
torch_ema = AveragedModel(
    scaled, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True
)
scaled.output_scale = linear_targets.std()  # set once the data is known
linear_batches = list(zip(inputs.split(64), linear_targets.split(64), strict=True))
optimizer = torch.optim.SGD(scaled.parameters(), lr=0.01)
for _ in range(EPOCHS):
    for x, y in linear_batches:
        optimizer.zero_grad()
        nn.functional.mse_loss(scaled(x), y).backward()
        optimizer.step()
        hand_written_ema_update(hand_ema, scaled)
        torch_ema.update_parameters(scaled)


def state_row(label, network):
    network.eval()
    with torch.no_grad():
        loss = nn.functional.mse_loss(network(inputs), linear_targets).item()
    ranges = [round(v, 2) for v in network.input_range.tolist()]
    scale = network.output_scale.item()
    print(f"{label:22} input_range {ranges}  output_scale {scale:.3f}  loss {loss:.4f}")
    return loss


live_loss = state_row("live model", scaled)
hand_loss = state_row("hand-written EMA", hand_ema)
torch_loss = state_row("AveragedModel EMA", torch_ema.module)
# sphinx_gallery_start_ignore
assert torch.equal(hand_ema.input_range, torch.ones(4, device=device)), (
    "claim: a state_dict() EMA never updates a non-persistent buffer"
)
assert not torch.equal(torch_ema.module.input_range, hand_ema.input_range), (
    "claim: AveragedModel(use_buffers=True) averages non-persistent buffers"
)
assert hand_ema.output_scale.item() == 1.0, "claim: plain attributes are left behind"
assert torch_ema.module.output_scale.item() == 1.0, (
    "claim: AveragedModel leaves plain attributes behind too"
)
other_device = device if device.type != "cpu" else torch.device("meta")
on_other_device = torch.ones(2, 1, device=other_device)
assert (on_other_device * torch.ones(())).device == other_device, (
    "claim: a 0-dim CPU tensor joins arithmetic on another device"
)
try:
    on_other_device * torch.ones(1)
    mixed_error = None
except RuntimeError as error:
    mixed_error = error
assert mixed_error is not None, "claim: a (1,) CPU tensor on another device raises"
with torch.random.fork_rng(devices=[]):  # the page's random numbers stay put
    moved = RangeScaled().to("meta")
assert moved.output_scale.device.type == "cpu", (
    "claim: .to() does not move a plain tensor attribute"
)
assert moved.input_range.device.type == "meta", "claim: .to() moves a buffer"
# Which stale scale costs what: fix one at a time on a copy of the hand-written EMA.
only_range_fixed = copy.deepcopy(hand_ema)
only_range_fixed.input_range.copy_(scaled.input_range)
only_scale_fixed = copy.deepcopy(hand_ema)
only_scale_fixed.output_scale = scaled.output_scale
with torch.no_grad():
    range_fixed_loss = nn.functional.mse_loss(
        only_range_fixed.eval()(inputs), linear_targets
    ).item()
    scale_fixed_loss = nn.functional.mse_loss(
        only_scale_fixed.eval()(inputs), linear_targets
    ).item()
assert abs(range_fixed_loss - torch_loss) < 1e-3 * torch_loss, (
    "claim: fixing only input_range gives the AveragedModel EMA's loss"
)
assert scale_fixed_loss > 10 * max(hand_loss, torch_loss), (
    "claim: fixing only output_scale makes the loss much larger"
)
# sphinx_gallery_end_ignore

# %%
# The hand-written EMA still holds the ``input_range`` and ``output_scale`` it was
# copied with: neither is in ``state_dict()``, so neither was ever averaged. Its
# loss comes from two stale scales that partly cancel: inputs not divided down
# by ``input_range``, outputs not multiplied up by ``output_scale``. Fixing only
# ``input_range`` gives the ``AveragedModel`` EMA's loss; fixing only
# ``output_scale`` makes the loss much larger still. ``AveragedModel`` walks
# ``module.buffers()``, not ``state_dict()``, so it carries the non-persistent
# buffer (averaged with ``use_buffers=True``, copied with ``False``); but neither
# EMA here walks plain attributes, and its ``output_scale`` is the one from when
# the copy was made. A plain attribute fails in one more way: ``.to(device)``
# leaves it where it was.
#
# The recipe: every tensor the model computes with is a buffer, and the
# averaging walks ``parameters()`` and ``buffers()``, as ``AveragedModel``
# does. The class below also makes ``input_range`` persistent: ``eval()``
# computes with its trained value, which a non-persistent buffer loses at
# every save and load (and after ``to_empty()``). Older checkpoints without
# the key then need a migration, as in the chapter on evolving buffers.


class RangeScaledFixed(RangeScaled):
    def __init__(self):
        super().__init__()
        del self.output_scale
        self.register_buffer("output_scale", torch.ones(()))
        self.register_buffer("input_range", self.input_range, persistent=True)


torch.manual_seed(123)
fixed = RangeScaledFixed().to(device)
fixed_ema = AveragedModel(
    fixed, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True
)
fixed.output_scale.copy_(linear_targets.std())  # a buffer: set in place
optimizer = torch.optim.SGD(fixed.parameters(), lr=0.01)
for _ in range(EPOCHS):
    for x, y in linear_batches:
        optimizer.zero_grad()
        nn.functional.mse_loss(fixed(x), y).backward()
        optimizer.step()
        fixed_ema.update_parameters(fixed)
fixed_loss = state_row("fixed model, its EMA", fixed_ema.module)
print(
    f"EMA loss: hand-written {hand_loss:.4f}, AveragedModel {torch_loss:.4f},\n"
    f"          with every tensor a buffer {fixed_loss:.4f} (live model {live_loss:.4f})"
)
# sphinx_gallery_start_ignore
assert torch.equal(fixed_ema.module.output_scale, fixed.output_scale), (
    "claim: a registered buffer is carried into the EMA"
)
assert {"input_range", "output_scale"} <= set(fixed.state_dict()), (
    "claim: the fixed class saves both scales"
)
assert "input_range" not in scaled.state_dict(), "claim: RangeScaled does not"
assert fixed_loss < min(hand_loss, torch_loss) / 10, (
    "claim: the EMA with every tensor a buffer is far better than either stale one"
)
# sphinx_gallery_end_ignore

# %%
# The mode after ``update_bn``
# ----------------------------
# "Restores the mode" is ``model.train(was_training)``, and ``train()``
# sets the mode of every submodule, as the pass itself (``model.train()``)
# already did. A submodule you keep in ``eval()`` on purpose inside a
# model in ``train()`` (here a ``Dropout`` switched off) comes back in
# ``train()``: set it again after ``update_bn``.

kept_off = nn.Sequential(make_model(), nn.Dropout(0.5))
kept_off[1].eval()  # dropout off on purpose; the model as a whole trains
print("before update_bn, the Dropout is training:", kept_off[1].training)
update_bn(batches, kept_off)
dropout_switched = kept_off[1].training
print("after update_bn, the Dropout is training: ", dropout_switched)

# sphinx_gallery_start_ignore
assert kept_off.training, "claim: the model as a whole was in train()"
assert dropout_switched, (
    "claim: update_bn switches a submodule kept in eval() to train()"
)
assert "model.train(was_training)" in inspect.getsource(update_bn), (
    "claim: update_bn restores the mode with model.train(was_training)"
)
# sphinx_gallery_end_ignore

# %%
# Integer buffers in the EMA recipe
# ---------------------------------
# ``use_buffers=True`` hands every buffer to ``multi_avg_fn``, integer ones
# too, and ``get_ema_multi_avg_fn`` computes ``decay * ema + (1 - decay) *
# live`` for them and copies the result back into the integer tensor, which
# truncates it. BatchNorm's ``num_batches_tracked`` falls behind the live
# model's count, and a constant integer table (a relative-position index, a
# vocabulary map) changes although the live model's never does. One update
# of a table that holds ``0 .. 7`` in both models, computed as torch does it:

table = torch.arange(8, device=device)
one_update = table * 0.9 + table * (1 - 0.9)
print("0.9 * k + 0.1 * k:", [round(v, 7) for v in one_update.tolist()])
print("copied back into the integer table:", one_update.long().tolist())

# sphinx_gallery_start_ignore
assert not torch.equal(one_update.long(), table), (
    "claim: one EMA update truncates some entries of a constant integer table"
)
# sphinx_gallery_end_ignore

# %%
# Some sums land a hair under the integer, and the copy truncates them. The
# fix: average the floating-point tensors, copy the others.


def ema_floats_copy_rest(decay):
    """Like get_ema_multi_avg_fn(decay), but integer tensors are copied, not averaged."""
    average = get_ema_multi_avg_fn(decay)

    @torch.no_grad()
    def update(ema_tensors, live_tensors, num_averaged):
        pairs = list(zip(ema_tensors, live_tensors, strict=True))
        floats = [(e, v) for e, v in pairs if e.is_floating_point() or e.is_complex()]
        if floats:
            average([e for e, _ in floats], [v for _, v in floats], num_averaged)
        for ema_tensor, live_tensor in pairs:
            if not (ema_tensor.is_floating_point() or ema_tensor.is_complex()):
                ema_tensor.copy_(live_tensor)

    return update


indexed = make_model()
indexed.register_buffer("index", torch.arange(8, device=device))  # a constant table
recipe_ema = AveragedModel(
    indexed, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True
)
copying_ema = AveragedModel(
    indexed, multi_avg_fn=ema_floats_copy_rest(0.9), use_buffers=True
)
swa_default = AveragedModel(indexed, use_buffers=True)  # torch's default average
optimizer = torch.optim.SGD(indexed.parameters(), lr=0.1, momentum=0.9)
for _ in range(3):
    for x, y in batches:
        optimizer.zero_grad()
        nn.functional.mse_loss(indexed(x), y).backward()
        optimizer.step()
        recipe_ema.update_parameters(indexed)
        copying_ema.update_parameters(indexed)
        swa_default.update_parameters(indexed)

print(f"{'':32} {'num_batches_tracked':>19}  index")
for label, network in [
    ("live model", indexed),
    ("EMA, get_ema_multi_avg_fn", recipe_ema.module),
    ("EMA, floats averaged, rest copied", copying_ema.module),
    ("SWA, the default average", swa_default.module),
]:
    count = network[1].num_batches_tracked.item()
    print(f"{label:33} {count:>19}  {network.index.tolist()}")

# sphinx_gallery_start_ignore
live_count = indexed[1].num_batches_tracked.item()
assert recipe_ema.module[1].num_batches_tracked.item() < live_count, (
    "claim: the EMA recipe's num_batches_tracked falls behind the live count"
)
assert not torch.equal(recipe_ema.module.index, indexed.index), (
    "claim: the EMA recipe changes a constant integer table"
)
assert copying_ema.module[1].num_batches_tracked.item() == live_count, (
    "claim: copying integer buffers keeps the count"
)
assert torch.equal(copying_ema.module.index, indexed.index), (
    "claim: copying integer buffers keeps the table"
)
assert all(
    torch.equal(a, b)
    for a, b in zip(
        recipe_ema.module.parameters(), copying_ema.module.parameters(), strict=True
    )
), "claim: both EMAs average the floating-point tensors alike"
assert swa_default.module[1].num_batches_tracked.item() == 1 < live_count, (
    "claim: the default average keeps num_batches_tracked at its first copy, 1"
)
# sphinx_gallery_end_ignore

# %%
# The default average (``AveragedModel`` without ``multi_avg_fn``, the
# running mean of SWA) breaks integer buffers too, in its own way: with
# ``use_buffers=True`` its ``num_batches_tracked`` does not follow the live
# model's count: updated after every batch, as here, it stays at the 1 it
# copied first. Copying the integer
# buffers instead of averaging them, as ``ema_floats_copy_rest`` does, keeps
# them equal to the live model's.
#
# ``AveragedModel``'s own docstring shows the EMA recipe as
# ``AveragedModel(model, get_ema_multi_avg_fn(0.9), use_buffers=True)``:
# the averaging function passed positionally. The second positional
# parameter is ``device``, so the function lands there, and the model's
# ``.to()`` refuses it. Pass ``multi_avg_fn=`` by name (``update_bn``'s
# third positional parameter is a ``device`` too).

averaged_parameters = list(inspect.signature(AveragedModel.__init__).parameters)
print("AveragedModel's parameters:", averaged_parameters[1:])
print("update_bn's parameters:    ", list(inspect.signature(update_bn).parameters))
docstring_example = [
    line.strip().removeprefix(">>>").strip()
    for line in AveragedModel.__doc__.splitlines()
    if "get_ema_multi_avg_fn(0.9)" in line or "ema_model = " in line
]
print("its docstring's example:")
for line in docstring_example:
    print("   ", line)
try:
    AveragedModel(model, get_ema_multi_avg_fn(0.9), use_buffers=True)
    docstring_error = None
except TypeError as error:
    docstring_error = error
    first, *signatures = str(error).splitlines()  # torch lists each signature
    print(textwrap.fill(f"{type(error).__name__}: {first}", 100))
    print(textwrap.fill(signatures[0], 100, subsequent_indent="     "))
    print(f" (and {len(signatures) - 1} more signatures)")

# sphinx_gallery_start_ignore
assert averaged_parameters[:3] == ["self", "model", "device"], (
    f"claim: AveragedModel's second positional parameter is device: {averaged_parameters}"
)
assert list(inspect.signature(update_bn).parameters) == ["loader", "model", "device"], (
    "claim: update_bn(loader, model, device=None)"
)
assert any(
    "get_ema_multi_avg_fn(0.9), use_buffers=True)" in line for line in docstring_example
), "claim: the docstring passes it positionally"
assert docstring_error is not None, "claim: the docstring's call raises"
assert "torch.device device" in str(docstring_error).splitlines()[1], (
    "claim: to()'s first signature takes a device: the function landed there"
)
# sphinx_gallery_end_ignore

# %%
# What to remember
# ----------------
# - ``AveragedModel`` averages parameters. With ``use_buffers=False`` (the
#   default) it *copies* the live model's buffers at each update; with ``True``
#   it averages them too. Neither gives BatchNorm statistics that belong to the
#   averaged weights.
# - Call ``update_bn(loader, averaged_model)`` after averaging: one pass over the
#   data makes each running mean the average of its per-batch input means: the
#   exact mean for the first BatchNorm when all batches have the same size.
# - ``update_bn`` ends with ``model.train(was_training)``: a submodule kept in
#   ``eval()`` inside a training model comes back in ``train()``.
# - ``get_ema_multi_avg_fn`` with ``use_buffers=True`` truncates integer
#   buffers (``num_batches_tracked``, index tables): average the
#   floating-point tensors and copy the rest (``ema_floats_copy_rest``).
#   Pass ``multi_avg_fn=`` by name: ``AveragedModel``'s second positional
#   parameter is ``device``.
# - Save ``averaged.module.state_dict()`` for deployment; ``averaged.state_dict()``
#   has ``module.``-prefixed keys and ``n_averaged``.
# - An EMA that walks ``state_dict()`` skips non-persistent buffers; neither EMA
#   here carries plain tensor attributes, and ``.to()`` does not move them. Make
#   every tensor the model computes with a
#   buffer, and average over ``parameters()`` and ``buffers()``.
