r"""
Sharded training: FSDP2 and buffers
===================================

Fully sharded data parallel training splits each parameter across the
processes (the *ranks*) instead of copying it to all of them: each rank stores
one slice, gathers the whole parameter just before a layer runs, and frees it
again after. PyTorch's current API for it is ``fully_shard`` (FSDP2). What does
it do with buffers? This chapter runs it for real on two CPU processes that talk
over the loopback network interface with the ``gloo`` backend (PyTorch's CPU
communication library), and asks each rank what it holds: parameters, buffers,
the ``state_dict()``, and what a mixed-precision policy casts.
"""

# %%
# Where this page ran
# -------------------
# Two processes on the CPU, whatever the device of the rest of the build, as in
# the chapter on DDP: ``gloo`` runs on any machine. What this page shows about
# buffers was checked on a CPU mesh only (see the end of the page).

import datetime as dt
import gc
import inspect
import multiprocessing
import os
import socket
import sys
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

# sphinx_gallery_thumbnail_path = "_thumbnails/15_fsdp2_buffers.png"

print(f"torch {torch.__version__}, device: cpu (2 processes, gloo backend)")
print("torch.distributed available:", dist.is_available())

# %%
# The model
# ---------
# A ``Linear``, a ``BatchNorm1d`` (two buffers of statistics and a counter) and
# a second ``Linear``, plus a non-persistent buffer of our own that scales the
# output (``reset_buffers()`` refills it, for a model built on ``meta``).


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 6)
        self.norm = nn.BatchNorm1d(6)
        self.out = nn.Linear(6, 2)
        self.register_buffer("output_scale", torch.full((2,), 0.5), persistent=False)

    def reset_buffers(self):
        """Refill the non-persistent buffer (after ``to_empty``, say)."""
        self.output_scale.fill_(0.5)

    def forward(self, x):
        return self.out(self.norm(self.inp(x))) * self.output_scale


# %%
# What each rank does
# -------------------
# Each rank builds the model from the same seed, calls ``fully_shard`` on the
# first ``Linear`` and then on the whole model (the usual pattern: inner blocks
# first, the root last), and reports what it holds. Then it trains five steps on
# its own data (each rank draws batches around a different mean), and reports
# again. Last, it tries a ``MixedPrecisionPolicy`` that computes in bfloat16.
# Everything a rank reports is sent to this process over a pipe.

STEPS = 5


def describe(tensor):
    """Type, global shape, this rank's shape and dtype of a tensor."""
    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    placements = (
        [repr(p) for p in tensor.placements] if isinstance(tensor, DTensor) else []
    )
    return {
        "type": type(tensor).__name__,
        "shape": list(tensor.shape),
        "local_shape": list(local.shape),
        "placements": placements,
        "dtype": str(tensor.dtype).removeprefix("torch."),
    }


def seen_in_forward(model):
    """Record the dtypes each submodule computes with during the next forward."""
    seen = {}

    def record(name):
        def hook(module, args, output):
            seen[name] = {
                "input": str(args[0].dtype).removeprefix("torch."),
                "weight": str(module.weight.dtype).removeprefix("torch."),
                "output": str(output.dtype).removeprefix("torch."),
            }
            if isinstance(module, nn.BatchNorm1d):
                seen[name]["running_mean"] = str(
                    module.running_mean.dtype
                ).removeprefix("torch.")

        return hook

    for name in ("inp", "norm", "out"):
        getattr(model, name).register_forward_hook(record(name))
    return seen


def rank_report(rank):
    report = {"rank": rank}
    # An explicit CPU mesh: these workers are CPU processes, whatever the machine.
    # Without mesh=, fully_shard picks the accelerator, which a forked child
    # cannot initialise.
    cpu = init_device_mesh("cpu", (dist.get_world_size(),))
    torch.manual_seed(0)
    model = Net()
    fully_shard(model.inp, mesh=cpu)
    fully_shard(model, mesh=cpu)
    report["class"] = type(model).__name__
    report["parameters"] = {n: describe(p) for n, p in model.named_parameters()}
    report["buffers"] = {n: describe(b) for n, b in model.named_buffers()}
    report["inp.weight shard"] = model.inp.weight.to_local().tolist()

    # fully_shard sends no buffer anywhere, not even once at wrap time: a buffer
    # that differs across ranks (here set from the rank) stays different until
    # you broadcast it yourself.
    uneven = Net()
    uneven.output_scale.fill_(0.5 + rank)  # as if each rank computed its own
    fully_shard(uneven, mesh=cpu)
    report["output_scale at wrap"] = uneven.output_scale.tolist()
    for buffer in uneven.buffers():
        dist.broadcast(buffer, src=0)
    report["output_scale after broadcast"] = uneven.output_scale.tolist()

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.Generator().manual_seed(100 + rank)
    for _ in range(STEPS):
        batch = torch.randn(16, 4, generator=data) + 2.0 * rank  # ranks differ
        optimizer.zero_grad()
        model(batch).pow(2).mean().backward()
        optimizer.step()
    report["gradient type"] = type(model.inp.weight.grad).__name__
    report["inp.weight full"] = model.inp.weight.full_tensor().tolist()
    report["running_mean"] = model.norm.running_mean.tolist()

    state = model.state_dict()
    report["state_dict"] = {k: describe(v) for k, v in state.items()}
    full_everywhere = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True)
    )
    report["full state_dict keys without cpu_offload"] = len(full_everywhere)
    full = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    report["full state_dict"] = {k: describe(v) for k, v in full.items()}
    report["full running_mean"] = (
        full["norm.running_mean"].tolist() if "norm.running_mean" in full else None
    )

    # The fix for drifting statistics: combine them over the ranks before saving,
    # each rank weighted by the number of samples it saw (equal here; with
    # unequal counts a plain average would over-weight the smaller ranks).
    # A variance over the pooled data is the weighted mean of
    # (variance + mean**2) minus the pooled mean squared: averaging the
    # variances alone would leave out how far apart the ranks' means are.
    norm = model.norm
    # samples this rank trained on, on the buffers' device: NCCL reduces only
    # tensors on the GPU (gloo, here, takes CPU tensors)
    seen = torch.tensor(float(16 * STEPS), device=norm.running_mean.device)
    total = seen.clone()
    dist.all_reduce(total)  # in place: the sum over the ranks
    share = seen / total
    second_moment = norm.running_var + norm.running_mean**2
    averaged_var = norm.running_var.clone()
    for buffer in (norm.running_mean, second_moment, averaged_var):
        buffer.mul_(share)
        dist.all_reduce(buffer)  # the weighted sum over the ranks
    norm.running_var.copy_(second_moment - norm.running_mean**2)
    report["samples seen"] = seen.item()
    report["averaged running_mean"] = norm.running_mean.tolist()
    report["averaged running_var"] = averaged_var.tolist()
    report["pooled running_var"] = norm.running_var.tolist()

    bfloat16 = MixedPrecisionPolicy(
        param_dtype=torch.bfloat16, reduce_dtype=torch.float32
    )
    torch.manual_seed(0)
    naive = Net()
    batchnorm_got = {}

    def record_batchnorm_inputs(module, args):
        batchnorm_got["input"] = str(args[0].dtype).removeprefix("torch.")
        batchnorm_got["weight"] = str(module.weight.dtype).removeprefix("torch.")
        batchnorm_got["running_mean"] = str(module.running_mean.dtype).removeprefix(
            "torch."
        )

    naive.norm.register_forward_pre_hook(record_batchnorm_inputs)
    fully_shard(naive.inp, mesh=cpu, mp_policy=bfloat16)
    fully_shard(naive, mesh=cpu, mp_policy=bfloat16)
    try:
        naive(torch.randn(8, 4))
        report["bfloat16 error"] = None
    except RuntimeError as error:
        report["bfloat16 error"] = f"{type(error).__name__}: {error}"
    report["batchnorm got"] = batchnorm_got

    torch.manual_seed(0)
    mixed = Net()
    seen = seen_in_forward(mixed)
    float32 = MixedPrecisionPolicy(param_dtype=torch.float32)
    fully_shard(mixed.inp, mesh=cpu, mp_policy=bfloat16)
    fully_shard(mixed.norm, mesh=cpu, mp_policy=float32)  # BatchNorm in float32
    fully_shard(mixed.out, mesh=cpu, mp_policy=bfloat16)
    fully_shard(mixed, mesh=cpu, mp_policy=bfloat16)
    output = mixed(torch.randn(8, 4))
    output.sum().backward()

    # reduce_dtype is the dtype of the reduce-scatter, not of the stored gradient.
    torch.manual_seed(0)
    bf16_reduced = nn.Linear(4, 2)
    fully_shard(
        bf16_reduced,
        mesh=cpu,
        mp_policy=MixedPrecisionPolicy(
            param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16
        ),
    )
    try:
        bf16_reduced(torch.randn(8, 4)).float().sum().backward()
        report["grad dtype, bf16 reduce"] = describe(bf16_reduced.weight.grad)["dtype"]
    except RuntimeError as error:
        report["grad dtype, bf16 reduce"] = f"{type(error).__name__}: {error}"

    report["forward dtypes"] = seen
    report["output dtype"] = str(output.dtype).removeprefix("torch.")
    report["after"] = {
        "inp.weight (stored shard)": describe(mixed.inp.weight)["dtype"],
        "inp.weight.grad": describe(mixed.inp.weight.grad)["dtype"],
        "norm.running_mean": describe(mixed.norm.running_mean)["dtype"],
        "output_scale": describe(mixed.output_scale)["dtype"],
    }
    return report


# %%
# Running it on separate processes
# --------------------------------
# ``run_on_ranks(job, *args, world_size=2)`` forks one process per rank (so the
# chapter needs the ``fork`` start method, which Windows lacks); each joins the
# group, runs ``job(rank, *args)`` and sends what it returns back through a
# pipe, then frees its models, leaves the group and exits at once. The parent
# waits a bounded time for each rank and, if one stays silent, says which and
# why, instead of hanging the build. It is plumbing, not the lesson: the same
# code as in chapter 9, folded away below (unfold it to read or copy it).
#
# .. raw:: html
#
#    <details><summary>The plumbing: <code>run_on_ranks</code> and its
#    helpers</summary>


def worker(job, rank, world_size, port, connection, args):
    """One rank: join the group, run ``job``, send its result, leave at once."""
    # A forked child cannot use the parent's OpenMP thread pool: once the parent
    # has run parallel torch code, a child using it hangs. One thread each.
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

reports = run_on_ranks(rank_report)
rank0, rank1 = reports

# %%
# Parameters become sharded DTensors
# ----------------------------------
# ``fully_shard`` changed the model's class (it is now a subclass named
# ``FSDPNet``) and replaced every parameter by a ``DTensor``: a tensor that knows
# its global shape and how it is laid out across the ranks. ``Shard(dim=0)``
# means each rank stores a slice of the rows.

print("class after fully_shard:", rank0["class"])
for name, info in rank0["parameters"].items():
    print(
        f"  {name:12} {info['type']:8} global {info['shape']!s:7} "
        f"this rank {info['local_shape']!s:7} {info['placements']}"
    )
for report in reports:
    print(f"rank {report['rank']}'s slice of inp.weight, one row a line:")
    for row in report["inp.weight shard"]:
        print("   ", [round(v, 3) for v in row])
assert all(i["type"] == "DTensor" for i in rank0["parameters"].values()), (
    "claim: every parameter becomes a DTensor"
)
# sphinx_gallery_start_ignore
assert rank0["class"] == "FSDPNet", "claim: fully_shard changes the class to FSDPNet"
weight = rank0["parameters"]["inp.weight"]
assert weight["shape"] == [6, 4], "claim: a DTensor keeps its global shape"
assert weight["local_shape"] == [3, 4], "claim: each rank stores half the rows"
assert weight["placements"] == ["Shard(dim=0)"], "claim: sharded along dim 0"
assert rank0["inp.weight shard"] != rank1["inp.weight shard"], (
    "claim: the ranks hold different slices"
)
# sphinx_gallery_end_ignore

# %%
# Buffers stay whole
# ------------------

for name, info in rank0["buffers"].items():
    print(f"  {name:24} {info['type']:8} shape {info['shape']!s:5} {info['dtype']}")
assert all(i["type"] == "Tensor" for i in rank0["buffers"].values()), (
    "claim: buffers stay plain tensors, not DTensors"
)
# sphinx_gallery_start_ignore
assert all(i["shape"] == i["local_shape"] for i in rank0["buffers"].values()), (
    "claim: each rank holds every buffer whole"
)
assert "output_scale" in rank0["buffers"], "claim: non-persistent buffers stay too"
assert rank1["buffers"] == rank0["buffers"], "claim: every rank holds every buffer"
# sphinx_gallery_end_ignore

# %%
# Every rank holds a full copy of every buffer, the non-persistent
# ``output_scale`` included, as plain ``torch.Tensor`` objects: not sharded, and
# not even a ``DTensor`` with a "replicated" layout. FSDP2 never communicates
# them, not even once when it wraps the model (DDP copies rank 0's buffers to
# every rank at construction; ``fully_shard`` does not). So the ranks' buffers
# agree at the start only if every rank built them alike: this page seeds every
# rank the same and computes the same ``output_scale``. A buffer each rank
# computed its own way (here ``output_scale`` set to ``0.5 + rank`` before
# ``fully_shard``) stays different until you broadcast it from rank 0 yourself,
# ``for b in model.buffers(): dist.broadcast(b, src=0)``:

for report in reports:
    print(
        f"rank {report['rank']} output_scale after fully_shard:",
        report["output_scale at wrap"],
        " after the broadcast:",
        report["output_scale after broadcast"],
    )
assert rank0["output_scale at wrap"] != rank1["output_scale at wrap"], (
    "claim: fully_shard does not broadcast buffers at wrap time"
)
assert rank1["output_scale after broadcast"] == rank0["output_scale at wrap"], (
    "claim: a broadcast from rank 0 makes them agree"
)

# %%
# Buffers are usually small, so keeping them whole costs little; what it means
# for BatchNorm shows after training.
#
# After training: parameters agree, buffers drift
# -----------------------------------------------

same_weights = rank0["inp.weight full"] == rank1["inp.weight full"]
print("gradients are", rank0["gradient type"] + "s")
print("inp.weight (gathered with full_tensor()) identical on both ranks:", same_weights)
for report in reports:
    print(f"rank {report['rank']} running_mean:",
          [round(v, 4) for v in report["running_mean"]])  # fmt: skip
drifted = rank0["running_mean"] != rank1["running_mean"]
print("running_mean identical on both ranks:", not drifted)
assert same_weights, "claim: gradients are reduced, so parameters agree"
assert drifted, "claim: FSDP2 does not synchronise buffers"
# sphinx_gallery_start_ignore
assert not [a for a in inspect.signature(fully_shard).parameters if "buffer" in a], (
    "claim: fully_shard has no option about buffers"
)
# sphinx_gallery_end_ignore

# %%
# Gradients are reduced across the ranks, so the parameters agree; each rank's
# BatchNorm statistics followed its own batches, and nothing brought them back
# together. This is DDP with ``broadcast_buffers=False``, without the choice:
# ``fully_shard`` has no option to broadcast buffers.
#
# What ``state_dict()`` holds
# ---------------------------

for name, info in rank0["state_dict"].items():
    print(f"  {name:24} {info['type']:8} global {info['shape']!s:7} "
          f"this rank {info['local_shape']}")  # fmt: skip
assert "output_scale" not in rank0["state_dict"], "claim: non-persistent is not saved"
# sphinx_gallery_start_ignore
kinds = {k: i["type"] for k, i in rank0["state_dict"].items()}
assert all(kinds[k] == "DTensor" for k in rank0["parameters"]), (
    "claim: state_dict() holds parameters as DTensors"
)
assert all(kinds[k] == "Tensor" for k in rank0["buffers"] if k != "output_scale"), (
    "claim: state_dict() holds buffers as plain tensors"
)
# sphinx_gallery_end_ignore

# %%
# Each rank's ``state_dict()`` holds its parameter shards as ``DTensor`` and its
# own copy of every persistent buffer; the non-persistent ``output_scale`` is
# left out, as always. ``torch.save`` of it on every rank writes the same
# parameters in pieces and *different* BatchNorm statistics. For one ordinary
# checkpoint, ``get_model_state_dict`` with ``full_state_dict=True`` gathers the
# parameters into plain tensors; with ``cpu_offload=True`` as well, only rank 0
# keeps them (other ranks get an empty dict; without it every rank gets all the
# keys), and the buffers rank 0 writes are its own:

print("keys on rank 0:", len(rank0["full state_dict"]), " on rank 1:",
      len(rank1["full state_dict"]))  # fmt: skip
print(
    "types on rank 0:", sorted({i["type"] for i in rank0["full state_dict"].values()})
)
print(
    "its running_mean is rank 0's:", rank0["full running_mean"] == rank0["running_mean"]
)
# sphinx_gallery_start_ignore
assert rank1["full state_dict"] == {}, "claim: other ranks get an empty dict"
assert rank1["full state_dict keys without cpu_offload"] == len(
    rank0["full state_dict"]
), "claim: without cpu_offload every rank gets all the keys"
assert {i["type"] for i in rank0["full state_dict"].values()} == {"Tensor"}, (
    "claim: the full state dict holds plain tensors"
)
assert rank0["full running_mean"] == rank0["running_mean"], (
    "claim: the full state dict's buffers are rank 0's"
)
# sphinx_gallery_end_ignore

# %%
# So rank 1's statistics are simply dropped. If every rank's data should count,
# combine the statistics over the ranks yourself before saving, as each rank did
# above: an ``all_reduce`` of ``running_mean``, each rank's share weighted by the
# number of samples it saw. Here every rank saw the same number, so the weights
# are equal and this is the plain average; dividing the sum by the number of
# ranks, as often written, is right only in that case. For ``running_var`` the
# average of the ranks' variances is not enough: it leaves out how far apart the
# ranks' means are (rank 1's data is shifted by 2). Average
# ``running_var + running_mean**2`` instead and subtract the averaged mean
# squared:

print("samples seen by each rank:", [report["samples seen"] for report in reports])
for report in reports:
    print(f"rank {report['rank']} averaged running_mean:",
          [round(v, 4) for v in report["averaged running_mean"]])  # fmt: skip
for label in ("averaged running_var", "pooled running_var"):
    print(f"rank 0 {label}:", [round(v, 4) for v in rank0[label]])
assert rank0["averaged running_mean"] == rank1["averaged running_mean"], (
    "claim: after an all_reduce the ranks agree"
)
# sphinx_gallery_start_ignore
rank_means = torch.tensor([rank0["running_mean"], rank1["running_mean"]])
spread_of_means = rank_means.var(0, unbiased=False)
assert torch.allclose(
    torch.tensor(rank0["pooled running_var"]),
    torch.tensor(rank0["averaged running_var"]) + spread_of_means,
    atol=1e-5,
), "claim: the averaged variance leaves out the spread of the ranks' means"
assert (spread_of_means > 0).all(), "claim: the ranks' means differ"
assert rank0["samples seen"] == rank1["samples seen"], "claim: equal sample counts"
assert torch.allclose(
    torch.tensor(rank0["averaged running_mean"]), rank_means.mean(0)
), "claim: with equal counts the weighted combination is the plain average"
# sphinx_gallery_end_ignore

# %%
# Mixed precision on a CPU mesh: parameters are cast, buffers are not
# -------------------------------------------------------------------
# ``MixedPrecisionPolicy(param_dtype=torch.bfloat16)`` makes FSDP2 gather each
# parameter in bfloat16 for the forward pass. Applied to the whole model, it
# casts BatchNorm's weight and bias but not its running statistics, and on the
# CPU, where these ranks run, the layer refuses the mix (whether a GPU's
# BatchNorm kernel accepts it was not run here):

print(
    "BatchNorm got:", ", ".join(f"{k} {v}" for k, v in rank0["batchnorm got"].items())
)
print(rank0["bfloat16 error"])
assert rank0["bfloat16 error"] is not None, "claim: BatchNorm fails with bf16 params"
# sphinx_gallery_start_ignore
assert rank0["batchnorm got"]["weight"] == "bfloat16", "claim: BN's weight is cast"
assert rank0["batchnorm got"]["running_mean"] == "float32", "claim: its stats are not"
# sphinx_gallery_end_ignore

# %%
# The usual fix keeps normalisation layers in float32: give BatchNorm its own
# ``fully_shard`` with a float32 policy. Its inputs are then cast to float32 on
# the way in (``cast_forward_inputs=True``, the default), and the next layer,
# sharded with the bfloat16 policy, casts them back. Here is what each layer saw:

for name, dtypes in rank0["forward dtypes"].items():
    print(f"  {name:5}", ", ".join(f"{k} {v}" for k, v in dtypes.items()))
print("model output:", rank0["output dtype"])
for name, dtype in rank0["after"].items():
    print(f"  {name:26} {dtype}")
forward = rank0["forward dtypes"]
assert forward["inp"]["weight"] == "bfloat16", "claim: parameters are cast to bf16"
assert forward["norm"]["running_mean"] == "float32", "claim: buffers are not cast"
assert rank0["output dtype"] == "float32", "claim: a float32 buffer promotes the output"
# sphinx_gallery_start_ignore
assert forward["norm"]["input"] == forward["norm"]["weight"] == "float32", (
    "claim: the float32 group casts its input to float32"
)
assert forward["out"]["input"] == "bfloat16", "claim: the next bf16 group casts back"
assert MixedPrecisionPolicy().cast_forward_inputs, (
    "claim: cast_forward_inputs defaults on"
)
assert rank0["after"]["inp.weight (stored shard)"] == "float32", (
    "claim: the stored shards stay float32"
)
assert rank0["after"]["inp.weight.grad"] == "float32", "claim: gradients are float32"
assert rank0["after"]["output_scale"] == "float32", "claim: buffers stay float32"
assert rank0["grad dtype, bf16 reduce"] == "float32", (
    "claim: stored gradients are float32 even with reduce_dtype=bfloat16"
)
# sphinx_gallery_end_ignore

# %%
# What the policy casts: the parameters a sharded module computes with, and the
# inputs of each ``fully_shard`` module's ``forward``. What it does not: buffers
# (the running statistics and our ``output_scale`` stay float32, and multiplying
# by ``output_scale`` promotes the bfloat16 output to float32), the sharded
# parameters it stores (float32, which the optimizer updates) and the gradients
# it stores (float32 too: ``reduce_dtype`` sets only the dtype the gradients are
# reduce-scattered in; even ``reduce_dtype=torch.bfloat16`` stores float32). A
# buffer you do want in bfloat16, cast it yourself.
#
# What could not be shown here
# ----------------------------
# FSDP2 on GPUs, with NCCL doing the communication: every output above comes
# from two CPU processes talking over ``gloo``, so what FSDP2 does with buffers,
# and the bfloat16 refusal above, were checked here on the CPU only.
#
# What to remember
# ----------------
# - ``fully_shard`` turns every parameter into a sharded ``DTensor``; buffers stay
#   plain tensors, whole on every rank.
# - FSDP2 never synchronises buffers, not even at wrap time: seed every rank
#   alike or broadcast them from rank 0 yourself. BatchNorm statistics drift
#   apart across ranks. Combine them with ``all_reduce`` before saving (weighted
#   by each rank's sample count, the variance with the spread of the ranks'
#   means added back), or accept rank 0's.
# - ``state_dict()`` holds ``DTensor`` shards and each rank's own buffers;
#   ``get_model_state_dict`` with ``full_state_dict=True, cpu_offload=True``
#   gathers parameters on rank 0 and takes rank 0's buffers (without
#   ``cpu_offload``, every rank gets the full dict).
# - ``MixedPrecisionPolicy`` casts parameters (and module inputs), never buffers:
#   keep BatchNorm in float32 with its own ``fully_shard``, and watch float32
#   buffers promote bfloat16 activations.
