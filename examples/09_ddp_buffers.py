r"""
Buffers across processes
========================

With ``DistributedDataParallel`` every process holds its own copy of the model.
Gradients are averaged, so parameters stay identical; buffers are not trained,
so DDP keeps them in step another way: with ``forward_sync_buffers=True`` (the
default) it copies rank 0's buffers to every rank at the start of a forward
pass, though not of every forward pass. This chapter runs real processes on the
CPU, trains a small model with BatchNorm on different data per rank, and prints
each rank's running statistics with and without that copy, at two moments:
right after the last training step, and after the forward pass that follows it.
Then it shows which forward passes skip the copy.
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

import datetime as dt
import gc
import inspect
import multiprocessing
import os
import socket
import sys
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
# The argument's name depends on the torch version. In torch 2.13, the version
# this guide was written with, it is ``forward_sync_buffers``, and the older
# ``broadcast_buffers`` is deprecated (the two differ at construction: see the
# FutureWarning printed further down, in this torch's words). An older torch has
# only ``broadcast_buffers``. This page passes whichever the torch it runs on has:

SYNC = "forward_sync_buffers"
if SYNC not in inspect.signature(DistributedDataParallel).parameters:
    SYNC = "broadcast_buffers"  # a torch without the new name
print("DDP's argument for the per-forward buffer copy here:", SYNC)
# sphinx_gallery_start_ignore
if torch.__version__.startswith("2.13"):
    assert SYNC == "forward_sync_buffers", "claim: torch 2.13 has forward_sync_buffers"
# sphinx_gallery_end_ignore

# %%
# The training run
# ----------------
# Each rank seeds its data with its rank number, so the ranks see different
# batches. The model is seeded identically on every rank. Each rank records its
# ``running_mean`` right after the fifth and last training step, and again after
# one forward pass in ``eval()``: the moment you would evaluate or save.
# ``run_on_ranks(job, *args, world_size=2)``, defined in the next section, runs
# ``job(rank, *args)`` on each rank and returns what each returned, by rank.

STEPS = 5


def train(rank, ddp_options):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    with warnings.catch_warnings(record=True) as caught:  # reported by the parent
        warnings.simplefilter("always")
        ddp = DistributedDataParallel(model, **ddp_options)
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
    """Do all ranks hold the same value at ``moment``?"""
    return all(report[moment] == reports[0][moment] for report in reports)


# %%
# Running it on separate processes
# --------------------------------
# ``run_on_ranks`` forks one process per rank (so it runs on Linux and macOS, not
# on Windows); each joins the group, runs the job and sends what it returns back
# through a pipe, then frees its models, leaves the group and exits at once; the
# parent waits a bounded time for each rank and says which one failed, and how.
# It is plumbing, not the lesson, and folded away below (unfold it to read it or
# copy it; chapter 15 uses the same code). Why each step is there is in its
# comments.
#
# .. raw:: html
#
#    <details><summary>The plumbing: <code>run_on_ranks</code> and its
#    helpers</summary>


def worker(job, rank, world_size, port, connection, args):
    """One rank: join the group, run ``job``, send its result, leave at once."""
    # With GNU OpenMP (libgomp, which Linux builds of torch use), a forked child
    # that uses the thread pool the parent already ran parallel code on can
    # hang: libgomp is not fork-safe. One thread each avoids the pool.
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=dt.timedelta(seconds=60),  # a rank left waiting gives up
    )
    try:
        try:
            message = ("done", job(rank, *args))
        except Exception as error:  # noqa: BLE001 - parent reports it, with the rank
            message = ("failed", f"{type(error).__name__}: {error}")
        connection.send(message)  # synchronous: the parent can read it from now on
    finally:
        # DDP and FSDP models sit in reference cycles that only the garbage
        # collector frees; free them now, while the process group is alive, not
        # at a later collection (which could drop the group's last reference
        # while holding the GIL, and wait for gloo's threads that need it).
        gc.collect()
        dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
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
        context.Process(
            target=worker,
            args=(job, rank, world_size, port, sender, args),
            daemon=True,  # a parent that dies takes its ranks with it
        )
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
# .. raw:: html
#
#    </details>
#
# ``forward_sync_buffers=True`` (the default)
# -------------------------------------------

with_broadcast = run_on_ranks(train, {SYNC: True})
# sphinx_gallery_start_ignore
assert [r["rank"] for r in with_broadcast] == [0, 1], "claim: ranks are 0 and 1"
assert {r["backend"] for r in with_broadcast} == {"gloo"}, "claim: gloo on the CPU"
assert not any(r["warnings"] for r in with_broadcast), (
    "claim: the current argument raises no warning"
)


def _default_then_manual_copy(rank):
    """DDP's default for the copy, and the manual broadcast the page suggests."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    ddp = DistributedDataParallel(model)  # no argument: the default
    with torch.no_grad():  # training mode, no grad: as update_bn does
        ddp(torch.arange(16.0).view(4, 4) + 3.0 * rank)  # ranks differ
    before = model[1].running_mean.tolist()
    for b in ddp.module.buffers():
        dist.broadcast(b, src=0)
    return {
        "default": getattr(ddp, SYNC),
        "before": before,
        "after": model[1].running_mean.tolist(),
    }


_reports = run_on_ranks(_default_then_manual_copy)
assert all(r["default"] is True for r in _reports), (
    "claim: the per-forward copy is on by default"
)
assert not identical(_reports, "before"), "claim: a no_grad() forward leaves them apart"
assert identical(_reports, "after"), (
    "claim: broadcasting ddp.module.buffers() from rank 0 makes the ranks agree"
)
del _reports
# sphinx_gallery_end_ignore
show(with_broadcast)
for moment in ("after last step", "after next forward"):
    print(f"ranks identical {moment}:", identical(with_broadcast, moment))

# %%
# Right after the last step the two ranks differ: the copy at the start of that
# step gave rank 1 rank 0's statistics, and rank 1's own batch then moved them.
# Only the next forward pass through DDP copies rank 0's statistics over again.
# So a checkpoint saved, or an evaluation run on ``ddp.module`` directly,
# between the last step and that forward sees different statistics on each
# rank: save from rank 0. After that forward every rank holds what rank 0 held:

assert not identical(with_broadcast, "after last step"), (
    "claim: with the per-forward copy the ranks differ right after a step"
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
# Not every forward pass copies
# -----------------------------
# DDP copies the buffers at the start of a forward pass only if the *previous*
# forward pass ran with gradients enabled and outside ``ddp.no_sync()``; a
# forward under ``torch.no_grad()``, or inside ``no_sync()`` (gradient
# accumulation), tells DDP that no gradient synchronisation follows, and the
# next forward skips the copy. Each rank below takes one ordinary training-mode
# forward with gradients on, then one more in training mode the way named, then
# the evaluation forward of the previous section:


def after_one_more_forward(rank, how):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    ddp = DistributedDataParallel(model, **{SYNC: True})
    batch = torch.randn(16, 4, generator=torch.Generator().manual_seed(rank))
    batch += 2.0 * rank  # ranks differ
    ddp(batch).sum().backward()
    if how == "with gradients":
        ddp(batch).sum().backward()
    elif how == "under no_grad()":
        with torch.no_grad():
            ddp(batch)
    else:  # "inside no_sync()"
        with ddp.no_sync():
            ddp(batch).sum().backward()
    ddp.eval()
    with torch.no_grad():
        ddp(torch.zeros(2, 4))
    return {"after next forward": model[1].running_mean.tolist()}


copied = {}
for how in ("with gradients", "under no_grad()", "inside no_sync()"):
    copied[how] = identical(
        run_on_ranks(after_one_more_forward, how), "after next forward"
    )
    print(
        f"one more forward {how:17} -> ranks identical after the next one: {copied[how]}"
    )
assert copied == {
    "with gradients": True,
    "under no_grad()": False,
    "inside no_sync()": False,
}, "claim: DDP copies buffers only after a forward with grad on, outside no_sync()"

# %%
# Where that bites: a loop that recomputes BatchNorm statistics under
# ``torch.no_grad()`` in training mode (as ``torch.optim.swa_utils.update_bn``
# does), or an evaluation right after a forward inside ``no_sync()``,
# leaves each rank with its own statistics, and no later forward under
# ``no_grad()`` brings them together. To make them agree before saving, run one
# forward with gradients on, or copy rank 0's buffers yourself (inside each
# rank's job; checked when this page was built):
# ``for b in ddp.module.buffers(): dist.broadcast(b, src=0)``.

# %%
# ``forward_sync_buffers=False``
# ------------------------------

# sphinx_gallery_start_ignore
from torch.optim import swa_utils

update_bn_source = inspect.getsource(swa_utils.update_bn)
assert "@torch.no_grad()" in update_bn_source, "claim: update_bn runs under no_grad"
assert "model.train()" in update_bn_source, "claim: ... in training mode"
# sphinx_gallery_end_ignore
without_broadcast = run_on_ranks(train, {SYNC: False})
show(without_broadcast)
for moment in ("after last step", "after next forward"):
    print(f"ranks identical {moment}:", identical(without_broadcast, moment))

# %%
# Now each rank's running statistics follow its own data and stay apart, while
# the parameters (see ``sum(weight)``) are identical in both runs, because
# gradients are averaged either way. Rank 0's statistics are the same in both
# runs: with the copy, rank 0's statistics, computed from rank 0's batches only,
# are the ones every rank ends up with.

assert not identical(without_broadcast, "after next forward"), (
    "claim: without the per-forward copy the ranks' buffers drift apart"
)
weight_sums = {r["sum(weight)"] for r in with_broadcast + without_broadcast}
assert len(weight_sums) == 1, "claim: parameters are identical on all ranks, both runs"
assert (
    with_broadcast[0]["after next forward"]
    == without_broadcast[0]["after next forward"]
), "claim: rank 0's statistics come from rank 0's batches only"

# %%
# The old name, ``broadcast_buffers``
# -----------------------------------
# What this torch says when a model is wrapped with the old argument, in its own
# words (a torch that has only the old name says nothing):

old_name = run_on_ranks(train, {"broadcast_buffers": True})
for message in old_name[0]["warnings"] or ["(no warning from this torch)"]:
    print(textwrap.fill(message, width=88))
same_statistics = [r["after next forward"] for r in old_name] == [
    r["after next forward"] for r in with_broadcast
]
print("same statistics as forward_sync_buffers=True:", same_statistics)
# sphinx_gallery_start_ignore
if SYNC == "forward_sync_buffers":
    assert any("deprecated" in w for w in old_name[0]["warnings"]), (
        "claim: this torch deprecates broadcast_buffers"
    )
assert same_statistics, "claim: the old name with True does the same copy"
# sphinx_gallery_end_ignore

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
assert '"cuda"' in inspect.getsource(nn.SyncBatchNorm.forward), (
    "claim: SyncBatchNorm works on CUDA"
)
# sphinx_gallery_end_ignore

# %%
# Which to choose
# ---------------
# ``forward_sync_buffers=True`` makes rank 0's statistics, computed from rank 0's
# batches only, the model's, at the cost of one broadcast per forward pass that
# follows a synchronised one, and the ranks agree from the start of such a
# forward pass, not after the last step. ``False`` saves that traffic, which is
# right for models whose buffers never change (masks, rotary tables). For
# BatchNorm on GPUs, ``nn.SyncBatchNorm`` computes the statistics from every
# rank's batch.

# %%
# What to remember
# ----------------
# - DDP averages gradients, so parameters agree across ranks; buffers are kept
#   in step only by copying rank 0's at the start of a forward pass
#   (``forward_sync_buffers=True``, the default; ``broadcast_buffers`` in a
#   torch without the new name).
# - That copy happens only when the previous forward ran with gradients on and
#   outside ``no_sync()``: after a ``no_grad()`` forward, the next one skips it.
# - Right after a training step the ranks' BatchNorm statistics differ; they
#   agree again once the next such forward pass has started. Save from rank 0,
#   or broadcast the buffers from rank 0 yourself.
# - With ``forward_sync_buffers=False``, buffers that ``forward`` updates drift
#   apart across ranks.
# - ``nn.SyncBatchNorm`` needs GPU modules; on the CPU, DDP raises the error above.
