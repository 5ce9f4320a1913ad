r"""
Buffers across processes
========================

With ``DistributedDataParallel`` every process holds its own copy of the model.
Gradients are averaged, so parameters stay identical; buffers are not trained,
so DDP keeps them in step another way: with ``broadcast_buffers=True`` (the
default) it copies rank 0's buffers to every rank at the start of each forward
pass. This chapter runs two real processes on the CPU (the ``gloo`` backend),
trains a small model with BatchNorm on different data per rank, and prints each
rank's running statistics with and without that broadcast.
"""

# %%
# Where this page ran
# -------------------
# Two processes on the CPU, whatever the device of the rest of the build: the
# point is the buffer traffic, which ``gloo`` shows on any machine.

import multiprocessing
import socket
import textwrap
import warnings

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

# sphinx_gallery_thumbnail_path = "_thumbnails/09_ddp_buffers.png"

print(f"torch {torch.__version__}, device: cpu (2 processes, gloo backend)")
print("torch.distributed available:", dist.is_available())

# %%
# The training run
# ----------------
# Each rank seeds its data with its rank number, so the two see different
# batches. The model is seeded identically on both ranks (DDP would broadcast
# rank 0's parameters at construction anyway). After five training steps, one
# forward pass in ``eval()``, the moment you would evaluate or save, and each
# rank reports its ``running_mean``. The two workers are forked from this
# process (so the chapter runs on Linux and macOS, not on Windows) and talk over
# the loopback interface.

STEPS = 5


def train(rank, world_size, port, broadcast_buffers, results):
    # A forked child cannot use the parent's OpenMP thread pool: once the parent
    # has run parallel torch code, a child using it hangs. One thread each.
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
        with warnings.catch_warnings(record=True) as caught:  # reported by the parent
            warnings.simplefilter("always")
            ddp = DistributedDataParallel(model, broadcast_buffers=broadcast_buffers)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.05)
        data = torch.Generator().manual_seed(100 + rank)
        for _ in range(STEPS):
            batch = torch.randn(16, 4, generator=data) + 2.0 * rank  # ranks differ
            optimizer.zero_grad()
            ddp(batch).pow(2).mean().backward()
            optimizer.step()
        ddp.eval()
        with torch.no_grad():
            ddp(torch.zeros(2, 4))
        norm = model[1]
        results.put(
            (
                rank,
                norm.running_mean.tolist(),
                norm.num_batches_tracked.item(),
                model[0].weight.sum().item(),
                [f"{w.category.__name__}: {w.message}" for w in caught],
            )
        )
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(broadcast_buffers, world_size=2, timeout=120):
    """Run ``train`` on ``world_size`` processes; never wait longer than ``timeout``."""
    context = multiprocessing.get_context("fork")  # workers defined in this script
    results = context.Queue()
    port = free_port()
    processes = [
        context.Process(
            target=train, args=(rank, world_size, port, broadcast_buffers, results)
        )
        for rank in range(world_size)
    ]
    for process in processes:
        process.start()
    try:  # bounded: a worker that hangs fails the run instead of the build hanging
        reports = sorted(results.get(timeout=timeout) for _ in processes)
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
    return reports


def show(reports):
    for rank, running_mean, batches, weight_sum, _ in reports:
        rounded = [round(value, 4) for value in running_mean]
        print(
            f"rank {rank}: running_mean {rounded}, batches {batches}, sum(weight) {weight_sum:.6f}"
        )


# %%
# ``broadcast_buffers=True`` (the default)
# ----------------------------------------
# Recent torch versions deprecate the ``broadcast_buffers`` argument in favour of
# ``forward_sync_buffers``. Whatever this build's torch said when the model was
# wrapped is printed first, in its own words.

with_broadcast = run(broadcast_buffers=True)
said = with_broadcast[0][4]
for message in said or ["(no warning from this torch version)"]:
    print(textwrap.fill(message, width=88))
show(with_broadcast)
print(
    "running_mean identical on both ranks:",
    with_broadcast[0][1] == with_broadcast[1][1],
)

# %%
# Both ranks report rank 0's statistics: at the start of the last forward pass
# DDP copied rank 0's buffers over rank 1's. Rank 1's own batches, drawn around
# a different mean, never shape what the model keeps.
#
# ``broadcast_buffers=False``
# ---------------------------

without_broadcast = run(broadcast_buffers=False)
show(without_broadcast)
print(
    "running_mean identical on both ranks:",
    without_broadcast[0][1] == without_broadcast[1][1],
)

# %%
# Now each rank's running statistics follow its own data and drift apart, while
# the parameters (see ``sum(weight)``) stay identical in both runs, because
# gradients are averaged either way. A checkpoint saved from rank 0 and one saved
# from rank 1 would normalise differently.
#
# Which to choose
# ---------------
# ``broadcast_buffers=True`` keeps every rank consistent at the cost of one
# broadcast per forward pass, and makes rank 0's statistics (computed from rank
# 0's batches only) the model's. ``False`` saves that traffic, which is right
# for models whose buffers never change (masks, rotary tables), or when the
# statistics are synchronised another way: ``nn.SyncBatchNorm`` computes batch
# statistics across all ranks in every forward pass.
#
# What to remember
# ----------------
# - DDP averages gradients, so parameters agree across ranks; buffers are kept
#   in step only by broadcasting rank 0's copy before each forward pass
#   (``broadcast_buffers=True``, the default).
# - With ``broadcast_buffers=False``, buffers that ``forward`` updates drift apart
#   across ranks.
# - For models whose buffers are constant, ``False`` saves a broadcast per step;
#   for BatchNorm, consider ``nn.SyncBatchNorm``.
# - Where torch deprecates ``broadcast_buffers`` (see the warning above, if any),
#   ``forward_sync_buffers`` controls the per-forward broadcast; read the warning:
#   the two differ in whether buffers are synchronised once at construction.
