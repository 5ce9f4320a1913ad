r"""
Buffers that change: BatchNorm and the optimizer
================================================

The notebook says buffers, "unlike parameters, ... are not updated during
training". That is half right. An optimizer built from ``model.parameters()``
never updates a buffer, but a module may update its own buffers in ``forward``. BatchNorm does exactly that:
its running mean and variance are buffers that change with every training
batch and freeze in ``eval()``. This chapter watches them change, and shows
what the optimizer sees.
"""

# %%
# Where this page ran
# -------------------

import copy
import os

import torch
from torch import nn

# sphinx_gallery_thumbnail_path = "_thumbnails/07_batchnorm_and_optimizer.png"

device = torch.device(
    os.environ.get("GUIDE_DEVICE")
    or torch.accelerator.current_accelerator(check_available=True)
    or "cpu"
)
print(f"torch {torch.__version__}, device: {device}")
torch.manual_seed(123)

# %%
# BatchNorm's buffers
# -------------------
# ``nn.BatchNorm1d(3)`` has two parameters (a scale and a shift, trained by the
# optimizer) and three buffers: the running mean and variance it uses in
# ``eval()``, and a counter of training batches.

model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).to(device)
norm = model[1]
for name, buffer in norm.named_buffers():
    print(f"buffer    {name:20} {buffer.dtype!s:12} {buffer.tolist()}")
for name, parameter in norm.named_parameters():
    grad = parameter.requires_grad
    print(f"parameter {name:20} {parameter.dtype!s:12} requires_grad={grad}")
# sphinx_gallery_start_ignore
assert [n for n, _ in norm.named_parameters()] == ["weight", "bias"], (
    "claim: BatchNorm1d has two parameters, a scale and a shift"
)
assert [n for n, _ in norm.named_buffers()] == [
    "running_mean",
    "running_var",
    "num_batches_tracked",
], "claim: BatchNorm1d has three buffers: mean, variance, a batch counter"
# sphinx_gallery_end_ignore

# %%
# ``forward`` updates buffers in ``train()``
# ------------------------------------------
# One forward pass in training mode, no optimizer involved, and no gradient
# either: under ``torch.no_grad()`` the running statistics still move, because
# they are updated by ``forward``, not by autograd.

batch = torch.randn(64, 4, device=device) * 3 + 1
model.train()
with torch.no_grad():
    model(batch)
print("running_mean:", [round(v, 4) for v in norm.running_mean.tolist()])
print("running_var: ", [round(v, 4) for v in norm.running_var.tolist()])
print("num_batches_tracked:", norm.num_batches_tracked.item())
# sphinx_gallery_start_ignore
assert norm.running_mean.abs().sum() > 0, "claim: running stats move under no_grad"
assert norm.num_batches_tracked.item() == 1, "claim: one batch counted"
# sphinx_gallery_end_ignore

# %%
# With the default ``momentum=0.1`` each batch moves the running mean 10% of the
# way to the batch mean (here from zero, so it lands at a tenth of the batch
# mean), and the running variance 10% of the way from one to the batch's
# *unbiased* variance (divided by ``n - 1``), although the batch itself is
# normalised with the biased one (divided by ``n``):

with torch.no_grad():
    features = model[0](batch)
batch_mean = features.mean(dim=0)
unbiased = features.var(dim=0, unbiased=True)
biased = features.var(dim=0, unbiased=False)
print("momentum:", norm.momentum)
print("0.1 x batch mean:        ", [round(v, 4) for v in (0.1 * batch_mean).tolist()])
print(
    "0.9 + 0.1 x unbiased var:", [round(v, 4) for v in (0.9 + 0.1 * unbiased).tolist()]
)
print("0.9 + 0.1 x biased var:  ", [round(v, 4) for v in (0.9 + 0.1 * biased).tolist()])
assert torch.allclose(norm.running_mean, 0.1 * batch_mean, rtol=1e-4, atol=1e-6), (
    "claim: momentum=0.1 moves the running mean 10% of the way to the batch mean"
)
follows_unbiased = torch.allclose(norm.running_var, 0.9 + 0.1 * unbiased, rtol=1e-4)
assert follows_unbiased, "claim: running_var moves toward the unbiased batch variance"
# sphinx_gallery_start_ignore
assert not torch.allclose(norm.running_var, 0.9 + 0.1 * biased, rtol=1e-4), (
    "claim: not toward the biased one"
)
normalised = (features - batch_mean) / (biased + norm.eps).sqrt()
with torch.no_grad():
    out = norm.train()(features)
    norm.running_mean.copy_(0.1 * batch_mean)  # undo this check's update
    norm.running_var.copy_(0.9 + 0.1 * unbiased)
    norm.num_batches_tracked.fill_(1)
expected = normalised * norm.weight + norm.bias
assert torch.allclose(out, expected, rtol=1e-4, atol=1e-5), (
    "claim: the batch is normalised with the biased variance"
)
# sphinx_gallery_end_ignore

# %%
# ``num_batches_tracked`` only counts, unless you build the layer with
# ``momentum=None``; then the running statistics are a plain cumulative average
# and the counter sets its weights:

# sphinx_gallery_start_ignore
fresh, counted = nn.BatchNorm1d(1), nn.BatchNorm1d(1)
counted.num_batches_tracked.fill_(1000)
sample = torch.randn(8, 1, generator=torch.Generator().manual_seed(0))
fresh(sample), counted(sample)
assert torch.equal(fresh.running_mean, counted.running_mean), (
    "claim: with a momentum, num_batches_tracked only counts"
)
# sphinx_gallery_end_ignore
cumulative = nn.BatchNorm1d(1, momentum=None)
means = []
for value in (1.0, 2.0, 6.0):
    cumulative(torch.full((8, 1), value) + torch.linspace(-1, 1, 8).unsqueeze(1))
    means.append(value)
    print(
        f"after a batch with mean {value}: running_mean "
        f"{cumulative.running_mean.item():.3f}, num_batches_tracked "
        f"{cumulative.num_batches_tracked.item()}"
    )
    assert abs(cumulative.running_mean.item() - sum(means) / len(means)) < 1e-5, (
        "claim: momentum=None gives the plain average of the batch means so far"
    )

# %%
# ... and freezes them in ``eval()`` only
# ---------------------------------------
# ``requires_grad_(False)``, the usual way to freeze a layer for fine-tuning,
# freezes its *parameters*: it stops their gradients. The running statistics
# are not trained by gradients, so it does not stop them. Only ``eval()`` does,
# and a later ``model.train()`` (which a training loop calls on the whole model)
# sets it back to updating them. Each in turn, on a copy:


def moves(layer):
    """Does one forward pass under no_grad change the layer's running mean?"""
    before = layer.running_mean.clone()
    with torch.no_grad():
        layer(model[0](batch))
    return not torch.equal(before, layer.running_mean)


frozen_copy = copy.deepcopy(norm).train()
frozen_copy.requires_grad_(False)
moved_after_requires_grad = moves(frozen_copy)
frozen_copy.eval()
moved_in_eval = moves(frozen_copy)
frozen_copy.train()  # what model.train() does to every submodule
moved_after_train = moves(frozen_copy)
print("after requires_grad_(False), running_mean moves:", moved_after_requires_grad)
print("after eval(), running_mean moves:               ", moved_in_eval)
print("after train() again, running_mean moves:        ", moved_after_train)
assert moved_after_requires_grad, "claim: requires_grad_(False) freezes no buffer"
assert not moved_in_eval, "claim: eval() freezes the running statistics"
assert moved_after_train, "claim: train() undoes eval()'s freeze"

# %%
# To keep a frozen BatchNorm frozen during fine-tuning, call ``eval()`` on it
# after every ``model.train()``, or override the model's ``train()`` to do so:


class FrozenNormSequential(nn.Sequential):
    def train(self, mode=True):
        super().train(mode)
        for layer in self.modules():
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                layer.eval()  # the statistics stay frozen in train() too
        return self


fine_tuned = FrozenNormSequential(*copy.deepcopy(model)).train()
print("after train(): Linear training:", fine_tuned[0].training, end=", ")
print("BatchNorm training:", fine_tuned[1].training, end=", ")
print("running_mean moves:", moves(fine_tuned[1]))
assert fine_tuned[0].training, "claim: the override leaves the other layers in train()"
assert not moves(fine_tuned[1]), "claim: the override keeps the statistics frozen"

# %%
# Here is the whole model in ``eval()``:

model.eval()
frozen = {name: b.clone() for name, b in norm.named_buffers()}
with torch.no_grad():
    model(batch)
unchanged = all(torch.equal(frozen[name], b) for name, b in norm.named_buffers())
print(
    "running_mean unchanged in eval():",
    torch.equal(frozen["running_mean"], norm.running_mean),
)
assert unchanged, "claim: eval() freezes every BatchNorm buffer"

# %%
# What the optimizer sees
# -----------------------
# An optimizer is built from ``model.parameters()``; buffers are not among them.

optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
parameter_names = {id(p): name for name, p in model.named_parameters()}
in_optimizer = [
    parameter_names[id(p)] for group in optimizer.param_groups for p in group["params"]
]
print("optimizer.param_groups:", in_optimizer)
print("named_buffers():       ", [name for name, _ in model.named_buffers()])
# sphinx_gallery_start_ignore
optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
assert not any(id(b) in optimized for b in model.buffers()), (
    "claim: buffers are not among the optimizer's tensors"
)
# sphinx_gallery_end_ignore

# %%
# So ``optimizer.step()`` changes parameters and never buffers, and ``forward``
# in ``train()`` changes buffers and never parameters. One training step, split
# into its two halves:

model.train()
snapshot = {name: t.detach().clone() for name, t in model.state_dict().items()}


def changed(since):
    current = model.state_dict()
    return sorted(name for name in since if not torch.equal(since[name], current[name]))


loss = model(batch).pow(2).mean()
by_forward = changed(snapshot)
print("changed by forward:         ", by_forward)
snapshot = {name: t.detach().clone() for name, t in model.state_dict().items()}
loss.backward()
optimizer.step()
by_step = changed(snapshot)
print("changed by optimizer.step():", by_step)
print("gradients on buffers:", [b.grad for b in model.buffers()])
print("gradient of 0.bias:", [f"{g:.1e}" for g in model[0].bias.grad.tolist()])
print("0.bias moved by the step:", "0.bias" in by_step)
# sphinx_gallery_start_ignore
buffer_names = {name for name, _ in model.named_buffers()}
parameter_names_set = set(parameter_names.values())
assert by_forward, "claim: forward in train() changes buffers"
assert set(by_forward) <= buffer_names, "claim: forward changes no parameter"
assert by_step, "claim: optimizer.step() changes parameters"
assert set(by_step) <= parameter_names_set, "claim: optimizer.step() changes no buffer"
assert all(b.grad is None for b in model.buffers()), "claim: buffers got no gradient"
assert model[0].bias.grad.abs().max() < 1e-5, "claim: 0.bias's gradient is ~zero"
# sphinx_gallery_end_ignore

# %%
# ``0.bias`` is a parameter whose gradient is zero up to rounding: BatchNorm
# subtracts the batch mean right after the ``Linear`` layer, so that bias cannot
# change the output. The step moves it by a rounding error at most, often not
# at all (the last line above says which happened here). That is why such
# layers are usually built with ``bias=False``.

# %%
# A correction to the notebook
# ----------------------------
# "Buffers are not updated during training" holds for the optimizer, and for
# gradients by default: a buffer registered from an ordinary tensor gets none
# (one registered from a tensor with ``requires_grad=True`` would, but nothing
# registers BatchNorm's that way; and such a buffer loses its gradient at the
# first ``.double()``, or ``.to()`` that changes its device or dtype: the module
# converts buffers outside ``no_grad``, so the new buffer is the result of an
# operation, a non-leaf tensor whose ``.grad`` stays ``None``). It does not hold
# for the module: BatchNorm's buffers change with every training batch, by
# design, and are saved in ``state_dict()`` with their current values. A model
# evaluated without ``model.eval()`` keeps changing them with every batch it
# sees, test data included.
#
# Each rank of a data-parallel run has its own copy of these statistics, updated
# from its own batches: chapter 9 shows what ``DistributedDataParallel`` does
# about that, and ``nn.SyncBatchNorm``, which computes each batch's statistics
# over all ranks.

# sphinx_gallery_start_ignore
import warnings

with_grad = nn.Module()
with_grad.register_buffer("scale", torch.ones(2, requires_grad=True))
(with_grad.scale * 2).sum().backward()
assert with_grad.scale.grad is not None, "claim: a buffer that requires grad gets one"
converted = copy.deepcopy(with_grad).double()
assert not converted.scale.is_leaf, "claim: .double() makes such a buffer a non-leaf"
(converted.scale * 2).sum().backward()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # torch warns when a non-leaf's .grad is read
    assert converted.scale.grad is None, "claim: its .grad stays None"
moved_buffer = copy.deepcopy(with_grad).to("meta")
assert not moved_buffer.scale.is_leaf, "claim: a .to() that moves it does the same"
assert copy.deepcopy(with_grad).to("cpu").scale.is_leaf, (
    "claim: only a .to() that changes device or dtype"
)
assert hasattr(nn, "SyncBatchNorm"), "claim: nn.SyncBatchNorm exists"
assert all(not b.requires_grad for b in model.buffers()), "claim: BN's don't"
assert torch.equal(model.state_dict()["1.running_mean"], norm.running_mean), (
    "claim: state_dict() saves the buffers' current values"
)
# sphinx_gallery_end_ignore

# %%
# What to remember
# ----------------
# - An optimizer built from ``parameters()`` never sees buffers, and they get no
#   gradients unless
#   registered from a tensor that requires one, but ``forward`` may update them:
#   BatchNorm's running statistics change in ``train()`` (even under
#   ``torch.no_grad()``) and freeze in ``eval()``.
# - ``num_batches_tracked`` counts training batches; with ``momentum=None`` it
#   turns the running statistics into a cumulative average.
# - Call ``model.eval()`` before evaluating, or the buffers keep learning from
#   whatever data passes through. ``requires_grad_(False)`` does not freeze
#   them, and ``model.train()`` undoes ``eval()``.
# - ``running_var`` tracks the unbiased batch variance; the batch itself is
#   normalised with the biased one.
# - Across processes each rank's statistics follow its own data: see chapter 9
#   and ``nn.SyncBatchNorm``.
