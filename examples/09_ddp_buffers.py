r"""
Buffers across processes
========================

With ``DistributedDataParallel`` every process holds its own copy of the model.
Gradients are averaged, so parameters stay identical; buffers are not trained,
so DDP keeps them in step another way: with ``broadcast_buffers=True`` (the
default) it copies rank 0's buffers to every rank at the start of a forward
pass. This chapter runs two real processes on the CPU, trains a small model
with BatchNorm on different data per rank, and prints each rank's running
statistics with and without that broadcast, at two moments: right after the
last training step, and after the forward pass that follows it.
"""

# %%
# Where this page ran
# -------------------
# Two processes on the CPU, whatever the device of the rest of the build: the
# point is the buffer traffic, which any machine shows. Three words first. A
# *rank* is a process's number in the group, from 0 to ``world_size - 1``.
# *gloo* is torch's communication backend for tensors on the CPU (NCCL is the
# one for CUDA GPUs). The processes find each other over *loopback*, the network
# address ``127.0.0.1`` that connects programs on the same machine without
# leaving it.

import gc
import multiprocessing
import os
import socket
import textwrap
import time
import warnings

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

# sphinx_gallery_thumbnail_path = "_thumbnails/09_ddp_buffers.png"

print(f"torch {torch.__version__}, device: cpu (2 processes, gloo backend)")
print("torch.distributed available:", dist.is_available())

# %%
# Two processes, and how they report back
# ---------------------------------------
# ``run_on_ranks(job, ...)`` forks one process per rank (so it runs on Linux and
# macOS, not on Windows); each joins the group, runs ``job(rank, ...)`` and sends
# what it returns back through a pipe. The order of the last steps matters: the
# report goes out first, over ``Pipe.send``, which has finished writing when it
# returns; then the DDP model is freed, then the process group destroyed; then
# the worker leaves with ``os._exit``. The other order, the group destroyed while
# the DDP model lives on, lets a later garbage collection free the group from
# inside DDP's destructor, holding Python's lock while it waits for gloo's
# threads, which may need that lock: the process hangs on its way out, and a
# report still waiting in a background thread (as with ``multiprocessing.Queue``)
# never arrives.


def worker(job, rank, world_size, port, connection, args):
    # A forked child cannot use the parent's OpenMP thread pool: once the parent
    # has run parallel torch code, a child using it hangs. One thread each.
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        message = ("done", job(rank, *args))
    except Exception as error:  # noqa: BLE001 - parent reports it, with the rank
        message = ("failed", f"{type(error).__name__}: {error}")
    connection.send(message)  # synchronous: the parent can read it from now on
    # DDP sits in a reference cycle that only the garbage collector frees; free
    # it now, while the process group is alive, not at a later collection
    # (which could drop the group's last reference while holding the GIL).
    gc.collect()
    dist.destroy_process_group()
    os._exit(0)  # everything is sent: skip the remaining destructors and exit


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def silence(rank, process, timeout):
    """Say, in words, why ``rank`` sent no report."""
    if process.exitcode is None:
        return (
            f"rank {rank} sent nothing within {timeout} s and is still running: it is"
            " stuck, most likely waiting in a collective for a rank that failed"
        )
    if process.exitcode < 0:
        return f"rank {rank} was killed by signal {-process.exitcode} before reporting"
    return f"rank {rank} exited (code {process.exitcode}) without sending a report"


def run_on_ranks(job, *args, world_size=2, timeout=120):
    """Run ``job(rank, *args)`` in ``world_size`` processes; return results by rank."""
    context = multiprocessing.get_context("fork")  # workers defined in this script
    port = free_port()
    pipes = [context.Pipe(duplex=False) for _ in range(world_size)]
    processes = [
        context.Process(target=worker, args=(job, rank, world_size, port, sender, args))
        for rank, (_, sender) in enumerate(pipes)
    ]
    for process, (_, sender) in zip(processes, pipes, strict=True):
        process.start()
        sender.close()  # the worker's copy stays open: closed when it exits
    deadline = time.monotonic() + timeout  # bounded: a stuck rank fails the run
    results, problems = [], []
    try:
        for rank, ((receiver, _), process) in enumerate(
            zip(pipes, processes, strict=True)
        ):
            if not receiver.poll(max(0.0, deadline - time.monotonic())):
                problems.append(silence(rank, process, timeout))
                continue
            try:
                status, value = receiver.recv()
            except EOFError:  # the pipe closed: the worker died before sending
                process.join(timeout=10)
                problems.append(silence(rank, process, timeout))
                continue
            if status == "failed":
                problems.append(f"rank {rank} failed: {value}")
            results.append(value)
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
    if problems:
        raise RuntimeError("; ".join(problems))
    return results


# %%
# The training run
# ----------------
# Each rank seeds its data with its rank number, so the two see different
# batches. The model is seeded identically on both ranks. Each rank records its
# ``running_mean`` right after the fifth and last training step, and again after
# one forward pass in ``eval()``: the moment you would evaluate or save.

STEPS = 5


def train(rank, broadcast_buffers):
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
    norm = model[1]
    after_last_step = norm.running_mean.tolist()
    ddp.eval()
    with torch.no_grad():
        ddp(torch.zeros(2, 4))
    return {
        "rank": dist.get_rank(),
        "backend": dist.get_backend(),
        "after last step": after_last_step,
        "after next forward": norm.running_mean.tolist(),
        "batches": norm.num_batches_tracked.item(),
        "sum(weight)": model[0].weight.sum().item(),
        "warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
    }


def show(reports):
    for moment in ("after last step", "after next forward"):
        print(moment)
        for report in reports:
            rounded = [round(value, 4) for value in report[moment]]
            print(
                f"  rank {report['rank']}: running_mean {rounded},"
                f" sum(weight) {report['sum(weight)']:.6f}"
            )


def identical(reports, moment):
    return reports[0][moment] == reports[1][moment]


# %%
# ``broadcast_buffers=True`` (the default)
# ----------------------------------------
# Recent torch versions deprecate the ``broadcast_buffers`` argument in favour of
# ``forward_sync_buffers``. Whatever this build's torch said when the model was
# wrapped is printed first, in its own words.

with_broadcast = run_on_ranks(train, True)
# sphinx_gallery_start_ignore
assert [r["rank"] for r in with_broadcast] == [0, 1], "claim: ranks are 0 and 1"
assert {r["backend"] for r in with_broadcast} == {"gloo"}, "claim: gloo on the CPU"
# sphinx_gallery_end_ignore
for message in with_broadcast[0]["warnings"] or ["(no warning from this torch)"]:
    print(textwrap.fill(message, width=88))
show(with_broadcast)
for moment in ("after last step", "after next forward"):
    print(f"ranks identical {moment}:", identical(with_broadcast, moment))

# %%
# Right after the last step the two ranks differ: the broadcast at the start of
# that step gave rank 1 rank 0's statistics, and rank 1's own batch then moved
# them. Only the next forward pass through DDP copies rank 0's statistics over
# again. So a checkpoint saved, or an evaluation run on ``ddp.module`` directly,
# between the last step and that forward sees different statistics on each
# rank: save from rank 0. After that forward both ranks hold what rank 0 held:

assert not identical(with_broadcast, "after last step"), (
    "claim: with broadcast_buffers=True the ranks differ right after a step"
)
assert identical(with_broadcast, "after next forward"), (
    "claim: the next forward makes every rank's buffers equal"
)
assert (
    with_broadcast[1]["after next forward"] == with_broadcast[0]["after last step"]
), "claim: the forward copies rank 0's buffers, as they were, to rank 1"
print(
    "rank 1 now holds rank 0's statistics from after the last step:",
    with_broadcast[1]["after next forward"] == with_broadcast[0]["after last step"],
)

# %%
# ``broadcast_buffers=False``
# ---------------------------

without_broadcast = run_on_ranks(train, False)
show(without_broadcast)
for moment in ("after last step", "after next forward"):
    print(f"ranks identical {moment}:", identical(without_broadcast, moment))

# %%
# Now each rank's running statistics follow its own data and stay apart, while
# the parameters (see ``sum(weight)``) are identical in both runs, because
# gradients are averaged either way. Rank 0's statistics are the same in both
# runs: with the broadcast, rank 0's copy, computed from rank 0's batches only,
# is the one every rank ends up with.

assert not identical(without_broadcast, "after next forward"), (
    "claim: without the broadcast the ranks' buffers drift apart"
)
weight_sums = {r["sum(weight)"] for r in with_broadcast + without_broadcast}
assert len(weight_sums) == 1, "claim: parameters are identical on all ranks, both runs"
assert (
    with_broadcast[0]["after next forward"]
    == without_broadcast[0]["after next forward"]
), "claim: rank 0's statistics come from rank 0's batches only"

# %%
# ``nn.SyncBatchNorm``, and where it works
# ----------------------------------------
# ``nn.SyncBatchNorm`` computes each batch's statistics across all ranks, so
# every rank's running statistics come from all the data. It needs the model on
# an accelerator that supports it (CUDA with NCCL, among others); for a model on
# the CPU, DDP refuses it. What this build's torch says when asked:


def sync_batchnorm(_rank):
    model = nn.SyncBatchNorm.convert_sync_batchnorm(
        nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    )
    try:
        DistributedDataParallel(model)
    except ValueError as error:  # expected on the CPU
        return f"{type(error).__name__}: {error}"
    return None


refusals = run_on_ranks(sync_batchnorm)
print("SyncBatchNorm in DDP on the CPU:", refusals[0] or "accepted")
assert all(refusals), "claim: DDP refuses SyncBatchNorm for a model on the CPU"
# sphinx_gallery_start_ignore
import inspect

assert '"cuda"' in inspect.getsource(nn.SyncBatchNorm.forward), (
    "claim: SyncBatchNorm works on CUDA"
)
# sphinx_gallery_end_ignore

# %%
# Which to choose
# ---------------
# ``broadcast_buffers=True`` makes rank 0's statistics, computed from rank 0's
# batches only, the model's, at the cost of one broadcast per forward pass, and
# the ranks agree from the start of each forward pass, not after the last step.
# ``False`` saves that traffic, which is right for models whose buffers never
# change (masks, rotary tables). For BatchNorm on GPUs, ``nn.SyncBatchNorm``
# computes the statistics from every rank's batch.
#
# What to remember
# ----------------
# - DDP averages gradients, so parameters agree across ranks; buffers are kept
#   in step only by broadcasting rank 0's copy at the start of a forward pass
#   (``broadcast_buffers=True``, the default).
# - Right after a training step the ranks' BatchNorm statistics differ; they
#   agree again once the next forward pass has started. Save from rank 0.
# - With ``broadcast_buffers=False``, buffers that ``forward`` updates drift apart
#   across ranks.
# - ``nn.SyncBatchNorm`` needs GPU modules; on the CPU, DDP raises the error above.
# - Where torch deprecates ``broadcast_buffers`` (see the warning above, if any),
#   ``forward_sync_buffers`` controls the per-forward broadcast; read the warning:
#   the two differ in whether buffers are synchronised once at construction.
