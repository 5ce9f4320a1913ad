r"""
Buffers that change: BatchNorm and the optimizer
================================================

The notebook says buffers, "unlike parameters, ... are not updated during
training". That is half right. The optimizer never updates a buffer, but a
module may update its own buffers in ``forward``. BatchNorm does exactly that:
its running mean and variance are buffers that change with every training
batch and freeze in ``eval()``. This chapter watches them change, and shows
what the optimizer sees.
"""

# %%
# Where this page ran
# -------------------

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
    print(
        f"parameter {name:20} {parameter.dtype!s:12} requires_grad={parameter.requires_grad}"
    )

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

# %%
# With the default ``momentum=0.1`` each batch moves the running mean 10% of the
# way to the batch mean. ``num_batches_tracked`` only counts, unless you build
# the layer with ``momentum=None``; then the running statistics are a plain
# cumulative average and the counter sets its weights:

cumulative = nn.BatchNorm1d(1, momentum=None)
for value in (1.0, 2.0, 6.0):
    cumulative(torch.full((8, 1), value) + torch.linspace(-1, 1, 8).unsqueeze(1))
    print(
        f"after a batch with mean {value}: running_mean "
        f"{cumulative.running_mean.item():.3f}, num_batches_tracked "
        f"{cumulative.num_batches_tracked.item()}"
    )

# %%
# ... and freezes them in ``eval()``
# ----------------------------------

model.eval()
frozen = norm.running_mean.clone()
with torch.no_grad():
    model(batch)
print("running_mean unchanged in eval():", torch.equal(frozen, norm.running_mean))

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
print("changed by forward:         ", changed(snapshot))
snapshot = {name: t.detach().clone() for name, t in model.state_dict().items()}
loss.backward()
optimizer.step()
print("changed by optimizer.step():", changed(snapshot))
print("gradients on buffers:", [b.grad for b in model.buffers()])
print("gradient of 0.bias:", [f"{g:.1e}" for g in model[0].bias.grad.tolist()])

# %%
# ``0.bias`` is a parameter the step left alone: BatchNorm subtracts the batch
# mean right after the ``Linear`` layer, so that bias gets a gradient that is
# zero up to rounding, too small to move it (the reason such layers are usually
# built with ``bias=False``).

# %%
# A correction to the notebook
# ----------------------------
# "Buffers are not updated during training" holds for the optimizer and for
# gradients: a buffer has none. It does not hold for the module: BatchNorm's
# buffers change with every training batch, by design, and are saved in
# ``state_dict()`` with their current values. A model evaluated without
# ``model.eval()`` keeps changing them with every batch it sees, test data
# included.
#
# What to remember
# ----------------
# - Buffers get no gradients and the optimizer never sees them, but ``forward``
#   may update them: BatchNorm's running statistics change in ``train()`` (even
#   under ``torch.no_grad()``) and freeze in ``eval()``.
# - ``num_batches_tracked`` counts training batches; with ``momentum=None`` it
#   turns the running statistics into a cumulative average.
# - Call ``model.eval()`` before evaluating, or the buffers keep learning from
#   whatever data passes through.
