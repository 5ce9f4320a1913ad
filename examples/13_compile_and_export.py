r"""
``torch.compile`` and ``torch.export`` with buffers
===================================================

A buffer that ``forward`` updates (a step counter, a running statistic, a
key/value cache) is state that changes while the model runs, and compilers
prefer functions without state. This chapter compiles such modules with
``torch.compile`` and counts what its graph capture (Dynamo) did: graphs,
graph breaks, recompiles. Then it exports a module with ``torch.export`` and
reads where its parameters, buffers, non-persistent buffers and plain tensor
attributes ended up.
"""

# %%
# Where this page ran
# -------------------

import contextlib
import copy
import io
import logging
import os
import tempfile
import textwrap
import time
import warnings
from pathlib import Path

import torch
import torch._dynamo
from torch import nn
from torch._dynamo.utils import counters
from torch._inductor.runtime.cache_dir_utils import cache_dir, default_cache_dir

# sphinx_gallery_thumbnail_path = "_thumbnails/13_compile_and_export.png"

device = torch.device(
    os.environ.get("GUIDE_DEVICE")
    or torch.accelerator.current_accelerator(check_available=True)
    or "cpu"
)
print(
    f"torch {torch.__version__}, device: {device}, CPU threads: {torch.get_num_threads()}"
)
torch.manual_seed(123)

# %%
# Counting what Dynamo did
# ------------------------
# ``torch.compile`` first captures Python code into graphs (Dynamo), then hands
# each graph to a backend that generates code (inductor by default). Dynamo keeps
# counters in ``torch._dynamo.utils.counters``: graphs captured, the graph
# breaks it records with their reasons, frames it gave up on. Each experiment below starts with
# ``torch._dynamo.reset()``, which forgets every compiled function, and
# ``counters.clear()``, so the numbers are this experiment's alone.


def fresh_compiler():
    torch._dynamo.reset()
    counters.clear()


def dynamo_counts():
    return {
        "graphs": counters["stats"]["unique_graphs"],
        "graph breaks": sum(counters["graph_break"].values()),
        # frames (Python functions) Dynamo tried to compile and gave up on
        "gave up": counters["frames"]["total"] - counters["frames"]["ok"],
    }


# %%
# A buffer updated in place, compiled with inductor
# -------------------------------------------------
# A running mean with a step counter, both buffers, both updated in place in
# ``forward``, under ``torch.no_grad()``: they are statistics, and the section
# on training below shows what goes wrong without it. The first call of the
# compiled module compiles it: its time is Dynamo's capture, AOTAutograd's
# tracing, inductor's code generation and the C++ compiler (or, when
# inductor's on-disk cache already holds the graph, loading it instead), plus
# one run. The lines below say whether this build found the graph in the
# cache, and where that cache is.


class RunningMean(nn.Module):
    def __init__(self, dim=4):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("steps", torch.tensor(0))

    def forward(self, x):
        with torch.no_grad():  # statistics: no gradient flows into them
            self.steps += 1
            # .to(): under autocast x may be bfloat16; lerp_ wants mean's dtype
            self.mean.lerp_(x.mean(dim=0).to(self.mean.dtype), 1.0 / self.steps)
        return x - self.mean


batches = [torch.randn(8, 4, device=device) for _ in range(20)]

fresh_compiler()
eager_model = RunningMean().to(device)
compiled_model = RunningMean().to(device)
compiled = torch.compile(compiled_model)  # default backend: inductor
start = time.perf_counter()
compiled(batches[0])
compile_seconds = time.perf_counter() - start
eager_model(batches[0])
outputs_match = True
for batch in batches[1:]:
    outputs_match &= torch.allclose(
        compiled(batch), eager_model(batch), rtol=1e-5, atol=1e-6
    )
inductor_counts = dynamo_counts()
inductor_ran = sum(counters["inductor"].values()) > 0
inductor_cache = "hit" if counters["inductor"]["fxgraph_cache_hit"] else "miss"
print(
    f"the first call (compiling, and one run) took {compile_seconds:.2f} seconds "
    f"(inductor's on-disk cache: {inductor_cache})"
)
print("Dynamo:", inductor_counts)


def where(folder):
    """A cache folder as a reader can find it, without this machine's paths."""
    folder = Path(folder).absolute()
    if folder.parent == Path(tempfile.gettempdir()).absolute():
        return f"{folder.name} in tempfile.gettempdir()"
    return os.path.relpath(folder)


# torch itself sets TORCHINDUCTOR_CACHE_DIR once it has chosen: compare folders.
chosen = Path(cache_dir()).absolute() != Path(default_cache_dir()).absolute()
print(
    "inductor's cache here:",
    where(cache_dir()),
    "(TORCHINDUCTOR_CACHE_DIR)" if chosen else "(torch's default)",
)
print("torch's default, without TORCHINDUCTOR_CACHE_DIR:", where(default_cache_dir()))
print(
    "steps, compiled vs eager:", compiled_model.steps.item(), eager_model.steps.item()
)
buffers_match = torch.allclose(
    compiled_model.mean, eager_model.mean, rtol=1e-5, atol=1e-6
)
print(
    "outputs and running mean equal to float precision:",
    outputs_match and buffers_match,
)

# sphinx_gallery_start_ignore
assert inductor_ran, f"claim: inductor is the default backend: {dict(counters)}"
assert inductor_counts == {"graphs": 1, "graph breaks": 0, "gave up": 0}, (
    f"claim: one graph, no break, no recompile for in-place updates: {inductor_counts}"
)
assert compiled_model.steps.item() == eager_model.steps.item() == len(batches)
assert outputs_match, "claim: compiled in-place updates give eager's outputs"
assert buffers_match, "claim: compiled in-place updates give eager's buffers"
# sphinx_gallery_end_ignore

# %%
# One graph for twenty calls, no graph break, no recompile, and the buffers
# hold what eager mode computed: the in-place updates became part of the
# compiled code, which writes them back into the module's own tensors. That
# holds for these calls: inputs that need no gradient, all of one shape. The
# section on training below changes both.
#
# The cache is ``torchinductor_<user>`` in the system's temporary folder
# unless the environment variable ``TORCHINDUCTOR_CACHE_DIR`` names another;
# the line above says which this build used. Your own run caches in the
# folder that the same code prints on your machine; delete it to measure a
# cold compile.
#
# The experiments that follow are about graph capture, which happens before any
# backend runs, so they compile with ``backend="eager"``: Dynamo captures the
# same graphs and runs them as they are, without generating code. Here it is on
# the same module, with the same counts, and the time of its first call:

fresh_compiler()
start = time.perf_counter()
torch.compile(RunningMean().to(device), backend="eager")(batches[0])
eager_seconds = time.perf_counter() - start
print("Dynamo, backend='eager':", dynamo_counts())
print(
    f"first call with backend='eager': {eager_seconds:.2f} seconds, "
    f"with inductor: {compile_seconds:.2f} seconds"
)

# sphinx_gallery_start_ignore
assert dynamo_counts() == inductor_counts, "claim: same capture with backend=eager"
# sphinx_gallery_end_ignore

# %%
# In training, the updates need ``torch.no_grad()``
# -------------------------------------------------
# In training the input of ``RunningMean`` comes from layers that learn, so it
# needs a gradient, and an in-place update of a buffer from it is recorded by
# autograd unless it runs under ``torch.no_grad()``. The same class without
# that block, trained for three steps behind a ``Linear`` layer, eagerly and
# compiled (``backend="aot_eager"``: Dynamo and AOTAutograd, which builds the
# backward graph, without inductor's code generation), and once more with the
# step counter a float tensor instead of an integer one:


class RunningMeanWithGraph(RunningMean):
    def forward(self, x):  # the same updates, recorded by autograd
        self.steps += 1
        self.mean.lerp_(x.mean(dim=0), 1.0 / self.steps)
        return x - self.mean


class RunningMeanWithGraphFloatCounter(RunningMeanWithGraph):
    def __init__(self, dim=4):
        super().__init__(dim)
        self.steps = torch.tensor(0.0)  # still a buffer: a float one, not int64


first_layer = nn.Linear(4, 4).to(device)  # every run starts from these weights


def train_three_steps(statistic_class, backend=None):
    """Three SGD steps of a Linear layer and the statistic; the losses, or the error."""
    net = nn.Sequential(copy.deepcopy(first_layer), statistic_class().to(device))
    forward = net if backend is None else torch.compile(net, backend=backend)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    losses = []
    for step, batch in enumerate(batches[:3], start=1):
        try:
            optimizer.zero_grad()
            loss = forward(batch).pow(2).mean()
            loss.backward()
            optimizer.step()
        except RuntimeError as error:
            message = (
                f"step {step}: {type(error).__name__}: {str(error).splitlines()[0]}"
            )
            return net, forward, textwrap.shorten(message, 200, placeholder=" ...")
        losses.append(loss.item())
    return net, forward, losses


training = {}
for statistic_class in (
    RunningMeanWithGraph,
    RunningMeanWithGraphFloatCounter,
    RunningMean,
):
    for backend in (None, "aot_eager"):
        fresh_compiler()
        label = f"{statistic_class.__name__}, {backend or 'eager mode'}"
        training[label] = train_three_steps(statistic_class, backend)
        if isinstance(training[label][2], str):
            print(f"{label}: fails at")
            print(textwrap.indent(textwrap.fill(training[label][2], 96), "    "))
        else:
            rounded = [round(loss, 4) for loss in training[label][2]]
            print(f"{label}: trains, losses {rounded}")
compiled_training_counts = dynamo_counts()
print("Dynamo, the three compiled steps:", compiled_training_counts)

eager_net = training["RunningMean, eager mode"][0]
compiled_net = training["RunningMean, aot_eager"][0]
training_matches = all(
    abs(a - b) <= 1e-5 * max(1.0, abs(a))
    for a, b in zip(
        training["RunningMean, eager mode"][2],
        training["RunningMean, aot_eager"][2],
        strict=True,
    )
)
buffers_match_in_training = torch.allclose(
    eager_net[1].mean, compiled_net[1].mean, rtol=1e-5, atol=1e-6
)
print(
    "compiled training: losses and running mean equal to eager's:",
    training_matches and buffers_match_in_training,
)

# sphinx_gallery_start_ignore
assert training["RunningMeanWithGraph, eager mode"][2].startswith("step 2:"), (
    "claim: without no_grad, eager training fails at the second step"
)
assert training["RunningMeanWithGraph, aot_eager"][2].startswith("step 1:"), (
    "claim: with an int64 counter, compiled training fails at the first step"
)
assert "could not infer output dtype" in training["RunningMeanWithGraph, aot_eager"][2]
assert training["RunningMeanWithGraph, aot_eager"][2].endswith("Got: Long"), (
    "claim: the first-step error is about an integer (Long) tensor"
)
for backend in ("eager mode", "aot_eager"):
    assert training[f"RunningMeanWithGraphFloatCounter, {backend}"][2].startswith(
        "step 2: RuntimeError: Trying to backward through the graph a second time"
    ), f"claim: with a float counter, {backend} fails at step 2, on the freed graph"
assert isinstance(training["RunningMean, eager mode"][2], list), "claim: trains"
assert isinstance(training["RunningMean, aot_eager"][2], list), "claim: compiled too"
assert compiled_training_counts == {"graphs": 1, "graph breaks": 0, "gave up": 0}, (
    f"claim: three compiled training steps, one graph: {compiled_training_counts}"
)
assert training_matches, "claim: compiled training gives eager's losses"
assert buffers_match_in_training, "claim: and eager's running mean"
assert compiled_net[1].steps.item() == 3, "claim: the counter counted three steps"
# sphinx_gallery_end_ignore

# %%
# Eagerly, the first step's update records a graph into ``mean``, and the
# second step's backward pass runs into that graph, already freed by the
# first. Compiled, in torch 2.13, it fails at the first step with another
# error: ``mean()`` refuses a ``Long`` tensor, and the integer step counter is
# the cause, since with a float counter the compiled module gets through the
# first step and fails at the second, on the freed graph, like eager mode.
# Either way the fix is the same: with the updates under
# ``torch.no_grad()`` both train, and the compiled module computes what eager
# mode does, in one graph. That graph is for one batch size. A batch of
# another size makes Dynamo compile once more, with the batch size as a
# symbol (automatic dynamic shapes); a batch of one is specialised
# separately, once more:

compiled_forward = training["RunningMean, aot_eager"][1]
graphs_by_batch_size = {}
for size in (8, 3, 5, 1):
    compiled_forward(torch.randn(size, 4, device=device)).pow(2).mean().backward()
    graphs_by_batch_size[size] = dynamo_counts()["graphs"]
print("graphs so far, after a batch of size:", graphs_by_batch_size)

# sphinx_gallery_start_ignore
assert graphs_by_batch_size == {8: 1, 3: 2, 5: 2, 1: 3}, (
    f"claim: one recompile for a new batch size, one for size 1: {graphs_by_batch_size}"
)
# sphinx_gallery_end_ignore

# %%
# Reassigning instead of updating in place
# ----------------------------------------
# The same statistic written as ``self.mean = ...`` (a new tensor each call)
# instead of ``self.mean.lerp_(...)``:


class RunningMeanReassigned(RunningMean):
    def forward(self, x):
        self.steps = self.steps + 1
        self.mean = self.mean + (x.mean(dim=0) - self.mean) / self.steps
        return x - self.mean


fresh_compiler()
reassigned_model = RunningMeanReassigned().to(device)
reassigned = torch.compile(reassigned_model, backend="eager")
reference = RunningMean().to(device)
for batch in batches:
    reassigned(batch)
    reference(batch)
reassigned_counts = dynamo_counts()
print("Dynamo:", reassigned_counts)
print(
    "running mean equal to the in-place version's:",
    torch.allclose(reassigned_model.mean, reference.mean, rtol=1e-5, atol=1e-6),
)
print("still a buffer:", "mean" in dict(reassigned_model.named_buffers()))

# sphinx_gallery_start_ignore
assert reassigned_counts == {"graphs": 1, "graph breaks": 0, "gave up": 0}, (
    f"claim: reassigning a buffer compiles to one graph too: {reassigned_counts}"
)
assert torch.allclose(reassigned_model.mean, reference.mean, rtol=1e-5, atol=1e-6)
assert "mean" in dict(reassigned_model.named_buffers()), "claim: still a buffer"
# sphinx_gallery_end_ignore

# %%
# Dynamo handles that too: one graph, and assigning a tensor to a buffer's name
# keeps it a buffer. The difference is what other code sees. An in-place
# update keeps the buffer's tensor; a reassignment replaces it, and anything
# that kept a reference to the old tensor (another module sharing it, a view,
# a logger, an EMA copy made with ``buffers()``) silently stops following:

held_in_place = compiled_model.mean
held_reassigned = reassigned_model.mean
compiled(batches[0])
reassigned(batches[0])
print(
    "in place:     the held tensor is still the buffer:",
    held_in_place is compiled_model.mean,
)
print(
    "reassignment: the held tensor is still the buffer:",
    held_reassigned is reassigned_model.mean,
)

# sphinx_gallery_start_ignore
assert held_in_place is compiled_model.mean, "claim: in place keeps the tensor"
assert held_reassigned is not reassigned_model.mean, "claim: reassigning replaces it"
# sphinx_gallery_end_ignore

# %%
# A Python number instead of a buffer: a recompile on every call
# --------------------------------------------------------------
# Counting steps in a plain Python ``int`` looks harmless. Dynamo treats an
# integer attribute of a module as a constant of the graph and guards on its
# value, so every call sees a new value and compiles again, until it reaches
# ``torch._dynamo.config.recompile_limit`` and gives up on the function, which
# then runs in eager mode. Torch's own log says so; the page captures it.


class RunningMeanIntCounter(nn.Module):
    def __init__(self, dim=4):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.steps = 0  # a Python int, not a buffer

    def forward(self, x):
        self.steps += 1
        self.mean.lerp_(x.mean(dim=0), 1.0 / self.steps)
        return x - self.mean


@contextlib.contextmanager
def captured_dynamo_log():
    """Send what torch._dynamo logs to a string instead of torch's stderr handler."""
    log = io.StringIO()
    logger = logging.getLogger("torch._dynamo")
    torch_handlers = logger.handlers[:]
    logger.handlers = [logging.StreamHandler(log)]
    try:
        yield log
    finally:
        logger.handlers = torch_handlers


fresh_compiler()
int_model = RunningMeanIntCounter().to(device)
int_compiled = torch.compile(int_model, backend="eager")
int_reference = RunningMean().to(device)
with captured_dynamo_log() as log:
    for batch in batches:
        int_compiled(batch)
        int_reference(batch)
int_counts = dynamo_counts()
print(f"{len(batches)} calls:", int_counts)
print("recompile_limit:", torch._dynamo.config.recompile_limit)
# Torch's message, without its source locations (they name this build's files):
for line in log.getvalue().splitlines():
    if "recompile_limit" in line or "last reason" in line:
        print("torch._dynamo:", line.split("#")[0].strip())
print(
    "running mean still correct:",
    torch.allclose(int_model.mean, int_reference.mean, rtol=1e-5, atol=1e-6),
)

# sphinx_gallery_start_ignore
limit = torch._dynamo.config.recompile_limit
assert int_counts["graphs"] == limit, (
    f"claim: one graph per call up to the limit: {int_counts}"
)
assert int_counts["gave up"] >= 1, "claim: Dynamo gives up at the recompile limit"
assert "hit config.recompile_limit" in log.getvalue(), "claim: torch logs the limit"
assert torch.allclose(int_model.mean, int_reference.mean, rtol=1e-5, atol=1e-6)
graph_inputs = []


def record(gm, _example_inputs):
    graph_inputs.append([n.target for n in gm.graph.nodes if n.op == "placeholder"])
    return gm.forward


fresh_compiler()
torch.compile(RunningMean().to(device), backend=record)(batches[0])
fresh_compiler()
assert any("steps" in name for name in graph_inputs[0]), (
    f"claim: a tensor buffer is a graph input: {graph_inputs}"
)
# sphinx_gallery_end_ignore

# %%
# The results stay right, but every call until the limit paid a compile, and
# every call after it runs uncompiled. A tensor buffer (the first experiment)
# is a graph input instead of a constant: one graph for any number of calls.
#
# A Python branch on a buffer: a graph break
# ------------------------------------------
# A warm-up that depends on the step counter, written with ``.item()``:
# ``.item()`` turns the buffer into a Python number, which Dynamo does not
# trace (by default), so the graph breaks there; the code after the break is
# compiled again whenever that number changes what it does.


class WarmupScale(nn.Module):
    def __init__(self, warmup=3):
        super().__init__()
        self.warmup = warmup
        self.register_buffer("steps", torch.tensor(0))

    def forward(self, x):
        self.steps += 1
        if self.steps.item() <= self.warmup:
            return x * 0.5
        return x


class WarmupScaleInGraph(WarmupScale):
    def forward(self, x):
        self.steps += 1
        return x * torch.where(self.steps <= self.warmup, 0.5, 1.0)


for module_class in (WarmupScale, WarmupScaleInGraph):
    fresh_compiler()
    module = module_class().to(device)
    compiled_module = torch.compile(module, backend="eager")
    with captured_dynamo_log():
        outputs = [compiled_module(batch).sum().item() for batch in batches[:6]]
    expected = [
        batch.sum().item() * (0.5 if i < 3 else 1.0)
        for i, batch in enumerate(batches[:6])
    ]
    counts = dynamo_counts()
    reasons = {reason.splitlines()[0] for reason in counters["graph_break"]}
    print(f"{module_class.__name__}: {counts}")
    for reason in sorted(reasons):
        print("   graph break:", reason)
    print(
        "   outputs right:",
        all(abs(a - b) < 1e-4 for a, b in zip(outputs, expected, strict=True)),
    )
    # sphinx_gallery_start_ignore
    assert all(abs(a - b) < 1e-4 for a, b in zip(outputs, expected, strict=True)), (
        module_class
    )
    if module_class is WarmupScale:
        assert counts["graph breaks"] >= 1, (
            "claim: .item() on a buffer breaks the graph"
        )
        assert any("item()" in reason for reason in reasons), reasons
        assert counts["graphs"] > 2, (
            f"claim: the code after .item() recompiles: {counts}"
        )
    else:
        assert counts == {"graphs": 1, "graph breaks": 0, "gave up": 0}, (
            f"claim: torch.where keeps the warm-up in one graph: {counts}"
        )
    # sphinx_gallery_end_ignore

# %%
# ``torch.where`` keeps the decision inside the graph: one graph and no break.
#
# A key/value cache written at a position
# ---------------------------------------
# A generation loop writes each new key into a cache buffer at the current
# position. The position is a Python ``int`` argument, which changes every
# call. Dynamo first compiles for the exact value; when it changes, it
# compiles once more with the position as a symbolic size (automatic dynamic
# shapes), and that graph serves every later position. The cache is for
# inference (generation): a write from a key that needs a gradient would put
# autograd's graph into the buffer, so ``forward`` refuses one.


class KeyCache(nn.Module):
    def __init__(self, length=16, dim=4):
        super().__init__()
        self.register_buffer("k_cache", torch.zeros(1, length, dim), persistent=False)

    def forward(self, k, position):
        if torch.is_grad_enabled() and k.requires_grad:
            msg = "KeyCache is for inference: call it under torch.no_grad()"
            raise RuntimeError(msg)
        if k.shape[0] != 1:
            msg = "KeyCache holds one sequence: pass k of shape (1, tokens, dim)"
            raise ValueError(msg)
        self.k_cache[:, position : position + k.shape[1]] = k
        return self.k_cache[:, : position + k.shape[1]].sum(dim=1)


fresh_compiler()
cache = KeyCache().to(device)
compiled_cache = torch.compile(cache, backend="eager")
prompt = torch.randn(1, 3, 4, device=device)
compiled_cache(prompt, 0)
steps = list(range(3, 12))
for position in steps:
    compiled_cache(torch.randn(1, 1, 4, device=device), position)
cache_counts = dynamo_counts()
print(f"a prompt and {len(steps)} single-token writes:", cache_counts)
print("cache filled up to position:", int(cache.k_cache.abs().sum(-1).bool().sum()))

# sphinx_gallery_start_ignore
assert cache_counts == {"graphs": 2, "graph breaks": 0, "gave up": 0}, (
    f"claim: two graphs for any number of cache positions: {cache_counts}"
)
assert torch.equal(cache.k_cache[:, :3], prompt), "claim: the write reached the buffer"
try:
    KeyCache().to(device)(torch.ones(1, 1, 4, device=device, requires_grad=True), 0)
    cache_refused = False
except RuntimeError:
    cache_refused = True
assert cache_refused, "claim: the cache refuses a key that needs a gradient"
scratch = KeyCache().to(device)  # the write forward refuses, done by hand
scratch.k_cache[:, 0:1] = torch.ones(1, 1, 4, device=device, requires_grad=True)
assert scratch.k_cache.grad_fn is not None, (
    "claim: a write from a key that needs a gradient puts autograd's graph in the buffer"
)
# sphinx_gallery_end_ignore

# %%
# ``torch.export``: where each kind of tensor goes
# ------------------------------------------------
# ``torch.export`` turns a module into an ``ExportedProgram``: one graph that
# takes every tensor the module uses as an input, next to the user's
# arguments, and the values of those tensors. Its graph signature says what
# each input is. A module with one
# of each: parameters, a persistent buffer that ``forward`` updates, a
# non-persistent buffer (a mask) and a plain tensor attribute (a scale).


class Everything(nn.Module):
    def __init__(self, dim=4, context_length=6):
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.register_buffer("steps", torch.tensor(0))
        causal = torch.tril(
            torch.ones(context_length, context_length, dtype=torch.bool)
        )
        self.register_buffer("mask", causal, persistent=False)
        self.scale = torch.full((dim,), 0.5)  # plain attribute

    def forward(self, x):  # x: (tokens, dim)
        self.steps += 1
        n = x.shape[0]
        scores = (self.proj(x) * self.scale) @ x.T
        return scores.masked_fill(~self.mask[:n, :n], float("-inf")).softmax(dim=-1)


fresh_compiler()
example = torch.randn(5, 4)
start = time.perf_counter()
original = Everything()
exported = torch.export.export(original, (example,))
export_seconds = time.perf_counter() - start
print(f"exporting took {export_seconds:.2f} seconds")
for spec in exported.graph_signature.input_specs:
    print(" ", spec)
print("state_dict:", list(exported.state_dict))
print("constants: ", list(exported.constants))

# sphinx_gallery_start_ignore
kinds = {
    spec.target: (spec.kind.name, getattr(spec, "persistent", None))
    for spec in exported.graph_signature.input_specs
    if spec.target is not None
}
assert kinds["steps"] == ("BUFFER", True), kinds
assert kinds["mask"] == ("BUFFER", False), kinds
assert kinds["scale"] == ("CONSTANT_TENSOR", None), kinds
assert sorted(exported.state_dict) == ["proj.bias", "proj.weight", "steps"], (
    "claim: the exported state_dict holds parameters and persistent buffers only"
)
assert sorted(exported.constants) == ["mask", "scale"], (
    "claim: non-persistent buffers and plain tensors become constants"
)
# sphinx_gallery_end_ignore

# %%
# The three kinds of module state land in three places:
#
# - parameters and the persistent buffer are ``PARAMETER`` and ``BUFFER``
#   inputs whose values sit in ``exported.state_dict``, as in a checkpoint;
# - the non-persistent buffer is a ``BUFFER`` input with ``persistent=False``,
#   and its value sits in ``exported.constants``, not in the state dict;
# - the plain tensor attribute is a lifted constant, ``CONSTANT_TENSOR``: the
#   export found the tensor, but it is part of the program, not of its state.
#
# And the update in ``forward``? The program keeps it: the module that
# ``exported.module()`` rebuilds counts its calls in its ``steps`` buffer.

runnable = exported.module()
for _ in range(3):
    runnable(example)
steps_after_three_calls = runnable.steps.item()
print("steps after three calls:", steps_after_three_calls)

# sphinx_gallery_start_ignore
assert steps_after_three_calls == 3, "claim: the exported program updates its buffer"
# sphinx_gallery_end_ignore

# %%
# One surprise: export did not copy the module's tensors. The program's
# ``state_dict`` holds the very tensors of the module it was exported from,
# and so does the module that ``exported.module()`` rebuilt. Running the
# exported module has advanced the original module's counter too:

shares_state = exported.state_dict["steps"] is original.steps
print("exported.state_dict['steps'] is original.steps:", shares_state)
original_steps = original.steps.item()
print("original.steps after the exported module ran:", original_steps)

# sphinx_gallery_start_ignore
assert shares_state, "claim: the exported state_dict holds the module's own tensors"
assert original_steps == 3, "claim: running the export advances the original"
with torch.no_grad():
    original.steps.add_(10)
steps_seen_by_runnable = runnable.steps.item()
with torch.no_grad():
    original.steps.sub_(10)
assert steps_seen_by_runnable == original_steps + 10, (
    "claim: an update to the original shows in the exported module"
)
# sphinx_gallery_end_ignore

# %%
# Export a copy (``copy.deepcopy(model)``) when the original must stay as it
# was, or when the exported program will keep running alongside it.

# sphinx_gallery_start_ignore
with torch.random.fork_rng(devices=[]):  # the page's random numbers stay put
    kept = Everything()
torch.export.export(copy.deepcopy(kept), (example,)).module()(example)
assert kept.steps.item() == 0, "claim: exporting a deepcopy leaves the original alone"
# sphinx_gallery_end_ignore

# %%
# Lowered to core ATen operators (``run_decompositions()``, the form that
# backends and runtimes consume), the graph is functional: the in-place update
# becomes an extra output marked ``BUFFER_MUTATION``, which the runtime writes
# back into the buffer after each call.

with warnings.catch_warnings():
    # torch's own pytree code warns about a deprecated check it uses itself.
    warnings.simplefilter("ignore", FutureWarning)
    lowered = exported.run_decompositions()
for spec in lowered.graph_signature.output_specs:
    print(" ", spec)

# sphinx_gallery_start_ignore
mutations = [
    spec.target
    for spec in lowered.graph_signature.output_specs
    if spec.kind.name == "BUFFER_MUTATION"
]
assert mutations == ["steps"], (
    f"claim: the update is a BUFFER_MUTATION output: {mutations}"
)
lowered_runnable = lowered.module()
steps_before = lowered_runnable.steps.item()
lowered_runnable(example)
assert lowered_runnable.steps.item() == steps_before + 1, (
    "claim: the runtime writes the BUFFER_MUTATION output back into the buffer"
)
torch._dynamo.reset()
# sphinx_gallery_end_ignore

# %%
# What to remember
# ----------------
# - Buffers updated in place in ``forward`` compile to one graph, without
#   graph breaks, and the compiled module updates them as eager mode does; a
#   new batch size costs one recompile (automatic dynamic shapes), a batch of
#   one another.
# - Update statistics under ``torch.no_grad()``: without it, training fails
#   at the second step, whose backward pass meets the first step's freed
#   graph (compiled with an integer counter, in torch 2.13, already at the
#   first, on ``mean()`` of a ``Long`` tensor).
# - Reassigning a buffer (``self.mean = ...``) compiles too, but replaces the
#   tensor every call: references held elsewhere stop following it. Prefer
#   in-place updates (``add_``, ``lerp_``, ``copy_``, slice assignment).
# - Keep changing state in tensors: a Python ``int`` counter on the module
#   recompiles on every call until Dynamo gives up, and a Python ``if`` on a
#   buffer's value (``.item()``) breaks the graph; ``torch.where`` does not.
# - ``torch.export`` puts parameters and persistent buffers in the program's
#   ``state_dict``, non-persistent buffers and plain tensor attributes in its
#   ``constants``; the signature tells them apart (``BUFFER``,
#   ``persistent=False``, ``CONSTANT_TENSOR``).
# - The exported program shares the original module's tensors: buffer updates
#   in one show in the other.
