r"""
Distributed checkpoints and buffers
===================================

``torch.distributed.checkpoint`` (DCP) is PyTorch's checkpoint format for
models spread over many processes: a state dict becomes a folder of files. It
is not ``torch.save`` plus ``load_state_dict`` under another name:
``dcp.load`` fills the tensors of a state dict *you* give it, in place, and
then calls no ``load_state_dict``. That one fact decides which buffers travel,
what happens when the keys of the model and the checkpoint differ, and whether
the load hooks of chapter 11 run. This chapter asks each question in
one process, with no process group, and prints torch's answers.
"""

# %%
# Where this page ran
# -------------------
# DCP is built for many processes, but it also runs in one: this page starts no
# process group, so every save and load below is a single process's, on the
# page's device. Checkpoints go to a temporary folder that is deleted at the end.

import os
import tempfile
import textwrap
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    set_model_state_dict,
)

# sphinx_gallery_thumbnail_path = "_thumbnails/21_distributed_checkpoints.png"

device = torch.device(
    os.environ.get("GUIDE_DEVICE")
    or torch.accelerator.current_accelerator(check_available=True)
    or "cpu"
)
print(f"torch {torch.__version__}, device: {device}")
print("process group initialised:", dist.is_available() and dist.is_initialized())
# sphinx_gallery_start_ignore
assert not (dist.is_available() and dist.is_initialized()), "claim: no process group"
# sphinx_gallery_end_ignore
torch.manual_seed(123)

workdir = tempfile.TemporaryDirectory()
checkpoints = Path(workdir.name)


def wrapped(text, indent="  "):
    """``text`` on lines of at most 96 columns, runs of whitespace collapsed."""
    return textwrap.fill(
        " ".join(str(text).split()),
        width=96,
        initial_indent=indent,
        subsequent_indent="  ",
    )


# %%
# A model with both kinds of buffer
# ---------------------------------
# A linear layer, a ``BatchNorm1d`` (three persistent buffers) and a small
# module of our own with a persistent ``scale`` and a non-persistent
# ``window``. Its state is all that matters here, so it has no ``forward``.
# A few training batches move BatchNorm's statistics, and both of our buffers
# are changed, as a running statistic would be.


class Scaler(nn.Module):
    """State only: a saved ``scale`` and a ``window`` that is not saved."""

    def __init__(self, dim=4):
        super().__init__()
        self.register_buffer("scale", torch.ones(dim))
        self.register_buffer("window", torch.arange(float(dim)), persistent=False)


def make_model():
    return nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), Scaler()).to(device)


model = make_model()
for _ in range(3):
    model[:2](torch.randn(8, 4, device=device))
model[2].scale.mul_(2.0)
model[2].window.fill_(-1.0)
print(f"scale: {model[2].scale.tolist()}, window: {model[2].window.tolist()}")

# %%
# ``get_model_state_dict``: the same keys as ``state_dict()``
# -----------------------------------------------------------
# ``torch.distributed.checkpoint.state_dict.get_model_state_dict(model)`` is the
# distributed-aware way to ask for a model's state (chapter 15 uses it to gather
# an FSDP2 model's shards). For a plain model in one process it gives what
# ``state_dict()`` gives:

state = get_model_state_dict(model)
print(wrapped(f"keys: {list(state)}", indent=""))
print("'2.window' among them:", "2.window" in state)
shares = state["0.weight"].data_ptr() == model[0].weight.data_ptr()
print("state['0.weight'] shares memory with the model's weight:", shares)
assert list(state) == list(model.state_dict()), "claim: the same keys as state_dict()"
assert "2.window" not in state, "claim: the non-persistent buffer is left out"
# sphinx_gallery_start_ignore
assert "2.scale" in state, "claim: the persistent buffer is in"
assert "1.num_batches_tracked" in state, "claim: BatchNorm's counter is in"
assert shares, "claim: the state dict's tensors are the model's own memory"
# sphinx_gallery_end_ignore

# %%
# The non-persistent ``window`` is left out, as ``state_dict()`` leaves it out,
# and the tensors are the model's own memory: anything written into them is
# written into the model. ``dcp.load`` relies on exactly that.
#
# ``dcp.save`` in one process
# ---------------------------
# Without a process group, DCP says what it assumes, in a warning:

saved_at = checkpoints / "v1"
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    dcp.save(state, checkpoint_id=saved_at)
for warning in caught:
    print(f"{warning.category.__name__}:")
    print(wrapped(warning.message))
written = sorted(p.name for p in saved_at.iterdir())
print("files written:", written)
saved_keys = list(dcp.FileSystemReader(saved_at).read_metadata().state_dict_metadata)
print(wrapped(f"keys in the checkpoint: {saved_keys}", indent=""))

assert any("single process" in str(w.message) for w in caught), (
    "claim: without a process group, DCP warns that it saves in a single process"
)
assert saved_keys == list(state), "claim: exactly the state dict's keys are saved"
# sphinx_gallery_start_ignore
assert ".metadata" in written, "claim: the folder holds a .metadata file"
saved_metadata = dcp.FileSystemReader(saved_at).read_metadata()
assert all(
    tuple(item.size) == tuple(state[name].shape)
    and item.properties.dtype == state[name].dtype
    for name, item in saved_metadata.state_dict_metadata.items()
), "claim: .metadata records each tensor's shape and dtype"
assert len(saved_metadata.storage_data) == len(state), (
    "claim: .metadata records where each tensor's bytes are"
)
assert sum(name.endswith(".distcp") for name in written) == 1, (
    "claim: one process wrote one data file"
)
# sphinx_gallery_end_ignore

# %%
# The folder holds a ``.metadata`` file (the keys, shapes, dtypes and where each
# tensor's bytes are) and the data files, one here since one process wrote. The
# warning is the condition this whole page runs under, so from here on it is
# filtered out:

warnings.filterwarnings("ignore", message="torch.distributed is disabled")

# %%
# ``dcp.load``: in place, into the tensors you pass
# -------------------------------------------------
# ``dcp.load(state_dict, checkpoint_id=...)`` reads the checkpoint into the
# tensors of the state dict it is given. Give it ``get_model_state_dict`` of a
# fresh model and the model is restored by the load alone, before
# ``set_model_state_dict`` is ever called:

fresh = make_model()
fresh_state = get_model_state_dict(fresh)
dcp.load(fresh_state, checkpoint_id=saved_at)
restored_before_set = torch.equal(fresh[1].running_mean, model[1].running_mean)
print("running_mean restored by dcp.load alone:", restored_before_set)
print(set_model_state_dict(fresh, fresh_state))
print("scale: ", fresh[2].scale.tolist())
print(
    f"window: {fresh[2].window.tolist()}, the saved model's: {model[2].window.tolist()}"
)

assert restored_before_set, "claim: dcp.load writes into the model's own tensors"
assert torch.equal(fresh[2].scale, model[2].scale), (
    "claim: the persistent buffer is back"
)
assert torch.equal(fresh[2].window, torch.arange(4.0, device=device)), (
    "claim: the non-persistent buffer keeps the fresh model's value"
)
# sphinx_gallery_start_ignore
assert all(
    torch.equal(a, b)
    for a, b in zip(fresh.state_dict().values(), state.values(), strict=True)
), "claim: every saved tensor is restored"
# sphinx_gallery_end_ignore

# %%
# The persistent ``scale`` came back; the non-persistent ``window`` is whatever
# the new model's ``__init__`` made it, not the value the saved model had. That
# is right for a table a module rebuilds from its configuration, and a silent
# loss for a statistic that training changed (chapter 5 has the same rule for
# ``torch.save``).
#
# Keys that differ
# ----------------
# With ``load_state_dict`` a missing or an unexpected key is an error under the
# default ``strict=True``. ``dcp.load`` is driven by the state dict you pass:
# it looks up each of *its* keys in the checkpoint. A model with a buffer the
# checkpoint lacks:


class ScalerWithCount(Scaler):
    def __init__(self, dim=4):
        super().__init__(dim)
        self.register_buffer("count", torch.tensor(0))  # new, persistent


newer = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), ScalerWithCount()).to(device)
try:
    dcp.load(get_model_state_dict(newer), checkpoint_id=saved_at)
    missing_error = None
except dcp.CheckpointException as error:
    missing_error = error
    print(
        f"{type(error).__name__}, a subclass of Exception: {isinstance(error, Exception)}"
    )
    for rank, (cause, _trace) in error.failures.items():
        print(f"  rank {rank}: {type(cause).__name__}: {cause}")

assert missing_error is not None, "claim: a key missing from the checkpoint raises"
assert not isinstance(missing_error, Exception), (
    "claim: CheckpointException is not an Exception: `except Exception` misses it"
)
# sphinx_gallery_start_ignore
(missing_cause,) = [cause for cause, _ in missing_error.failures.values()]
assert isinstance(missing_cause, RuntimeError), "claim: the cause is a RuntimeError"
assert "2.count" in str(missing_cause), "claim: the message names the missing key"
# sphinx_gallery_end_ignore

# %%
# ``CheckpointException`` derives from ``BaseException``, not ``Exception``, so
# an ``except Exception:`` around a load does not catch it: name it, as above.
# Its ``failures`` map each rank that failed to the real error, here a
# ``RuntimeError`` naming the missing key. A partial load is possible, but you
# must ask for it, and then the new buffer silently keeps its initial value:

dcp.load(
    get_model_state_dict(newer),
    checkpoint_id=saved_at,
    planner=dcp.DefaultLoadPlanner(allow_partial_load=True),
)
print("allow_partial_load=True: count =", newer[2].count.item(), "(never saved)")
print("                         scale =", newer[2].scale.tolist())
assert newer[2].count.item() == 0, "claim: a partially loaded new buffer keeps its init"
assert torch.equal(newer[2].scale, model[2].scale), "claim: the rest is loaded"

# %%
# The other way round, a checkpoint with keys the model does not have (a model
# without the ``Scaler``), ``load_state_dict`` refuses and ``dcp.load`` does
# not say a word:

smaller = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).to(device)
try:
    smaller.load_state_dict(model.state_dict())
except RuntimeError as error:
    print(f"load_state_dict: {type(error).__name__}:")
    print(wrapped(error))
smaller_state = get_model_state_dict(smaller)
with warnings.catch_warnings(record=True) as unexpected_warnings:
    warnings.simplefilter("always")
    warnings.filterwarnings("ignore", message="torch.distributed is disabled")
    dcp.load(smaller_state, checkpoint_id=saved_at)
print(
    "dcp.load: no error, no warning; weight loaded:",
    torch.equal(smaller[0].weight, model[0].weight),
)
assert not unexpected_warnings, "claim: dcp.load ignores unrequested keys silently"
assert torch.equal(smaller[0].weight, model[0].weight), "claim: the rest is loaded"

# %%
# DCP only reads what it is asked for, so a checkpoint's extra keys are never
# looked at. That is what lets a model load a larger checkpoint's part, and
# also what hides a checkpoint that has the keys under other names: the model's
# keys then go missing, as in the next section.
#
# Load hooks do not run
# ---------------------
# Chapter 11 made an old checkpoint load by migrating its keys inside the
# module: ``_load_from_state_dict`` (or a hook registered with
# ``register_load_state_dict_pre_hook``) renames them on the way in. Both run
# inside ``load_state_dict``, which ``dcp.load`` of a state dict never calls.
# Version 1 of our
# module called its persistent buffer ``gain``; version 2 renames it ``scale``
# and migrates, and records each call:


class ScalerV1(nn.Module):
    def __init__(self, dim=4):
        super().__init__()
        self.register_buffer("gain", torch.full((dim,), 3.0))


calls = []


class ScalerV2(Scaler):
    _version = 2  # 1: "gain"; 2: renamed "scale"

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args):
        version = local_metadata.get("version")
        calls.append(f"migration (version {version})")
        if prefix + "gain" in state_dict:
            state_dict[prefix + "scale"] = state_dict.pop(prefix + "gain")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)


def note_hook(*_):
    calls.append("pre-hook")


old = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), ScalerV1()).to(device)
old_at = checkpoints / "old"
dcp.save(get_model_state_dict(old), checkpoint_id=old_at)

current = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), ScalerV2()).to(device)
current[2].register_load_state_dict_pre_hook(note_hook)
try:
    dcp.load(get_model_state_dict(current), checkpoint_id=old_at)
    old_error = None
except dcp.CheckpointException as error:
    old_error = error
    for rank, (cause, _trace) in error.failures.items():
        print(f"dcp.load: rank {rank}: {type(cause).__name__}: {cause}")
print("calls so far:", calls)
assert old_error is not None, "claim: the renamed buffer is missing for dcp.load"
assert calls == [], "claim: neither the migration nor the pre-hook ran in dcp.load"

# %%
# The migration never saw the checkpoint: DCP looked up ``2.scale``, the name
# the *new* module asked for, and did not find it. Even a load that works runs
# no hook. A checkpoint saved by version 2 itself loads, and the calls list stays
# empty until ``set_model_state_dict``, which does call ``load_state_dict``:

current_at = checkpoints / "current"
dcp.save(get_model_state_dict(current), checkpoint_id=current_at)
current_state = get_model_state_dict(current)
dcp.load(current_state, checkpoint_id=current_at)
print("after dcp.load:             ", calls)
set_model_state_dict(current, current_state)
print("after set_model_state_dict: ", calls)
assert calls[:2] == ["migration (version 2)", "pre-hook"], (
    "claim: set_model_state_dict runs the migration and the hook"
)
assert len(calls) == 2, "claim: dcp.load itself ran none of them"
calls.clear()
# sphinx_gallery_start_ignore
with torch.random.fork_rng(devices=[]):  # hidden: leave the global RNG as it was
    spied = make_model()
load_calls = []
original_load = spied.load_state_dict


def spy_load(*args, **kwargs):
    load_calls.append("load_state_dict")
    return original_load(*args, **kwargs)


spied.load_state_dict = spy_load
spied_state = get_model_state_dict(spied)
dcp.load(spied_state, checkpoint_id=saved_at)
assert load_calls == [], "claim: dcp.load never calls load_state_dict"
set_model_state_dict(spied, spied_state)
assert load_calls == ["load_state_dict"], (
    "claim: set_model_state_dict calls load_state_dict"
)
del spied.load_state_dict
# sphinx_gallery_end_ignore

# %%
# The version the migration saw, 2, came from the new model: the state dict
# that ``get_model_state_dict`` returned carries *its* ``_metadata``, where
# ``state_dict()`` records each module's version. DCP saves the dict's entries,
# and ``_metadata`` is an attribute, not an entry: converted back to a
# ``torch.save`` file (``dcp_to_torch_save``), a DCP checkpoint has none.

torch_save_copy = checkpoints / "old.pt"
dcp_to_torch_save(old_at, torch_save_copy)
round_trip = torch.load(torch_save_copy, weights_only=True)
print("get_model_state_dict(current)._metadata['2']:", current_state._metadata["2"])
print(
    "_metadata in the DCP checkpoint, via torch.save:", hasattr(round_trip, "_metadata")
)
assert not hasattr(round_trip, "_metadata"), "claim: DCP keeps no module versions"
# sphinx_gallery_start_ignore
assert current_state._metadata["2"] == {"version": 2}, (
    "claim: get_model_state_dict's dict carries the new model's versions"
)
assert list(round_trip) == list(get_model_state_dict(old)), "claim: the same entries"
# sphinx_gallery_end_ignore

# %%
# Migrating a DCP checkpoint
# --------------------------
# In one process the way through is to load the checkpoint under its own keys,
# which its ``.metadata`` lists with shapes and dtypes, and hand that dict to
# ``load_state_dict`` (or ``set_model_state_dict``), where the migration runs.
# It cannot rely on a version number (there is none in the dict), only on the
# keys, as chapter 11's migration was written to:

metadata = dcp.FileSystemReader(old_at).read_metadata()
as_saved = {
    name: torch.empty(item.size, dtype=item.properties.dtype, device=device)
    for name, item in metadata.state_dict_metadata.items()
}
dcp.load(as_saved, checkpoint_id=old_at)
print(wrapped(f"keys as saved: {list(as_saved)}", indent=""))
print(set_model_state_dict(current, as_saved))
print("calls:", calls)
print(f"scale: {current[2].scale.tolist()}, version 1's gain: {old[2].gain.tolist()}")
assert calls[0] == "migration (version None)", (
    "claim: the migration ran, with no version"
)
assert torch.equal(current[2].scale, old[2].gain), "claim: the old buffer migrated"
# sphinx_gallery_start_ignore
assert torch.equal(current[0].weight, old[0].weight), "claim: the weights loaded too"
# sphinx_gallery_end_ignore

# %%
# This builds the whole state dict in one process's memory, which is fine for a
# model one process can hold; this page does not run the case of a model
# sharded over several processes.

workdir.cleanup()

# %%
# What to remember
# ----------------
# - ``get_model_state_dict`` gives ``state_dict()``'s keys for a plain model:
#   persistent buffers in, non-persistent ones out; DCP saves exactly those.
# - Without a process group, ``dcp.save`` and ``dcp.load`` warn and work in a
#   single process.
# - ``dcp.load`` writes into the tensors of the state dict you pass (the
#   model's own, from ``get_model_state_dict``). A key the checkpoint lacks
#   raises ``CheckpointException`` (a ``BaseException``: ``except Exception``
#   misses it) unless ``allow_partial_load=True``; a key the model lacks is
#   ignored without a word. A non-persistent buffer keeps the new model's value.
# - ``dcp.load`` of a state dict calls no ``load_state_dict``, so
#   ``_load_from_state_dict``
#   migrations and load pre-hooks do not run; ``set_model_state_dict`` runs
#   them, with the *new* model's version. To migrate an old checkpoint, load it
#   under its own keys (from its ``.metadata``) and migrate by keys.
