r"""
Changing a buffer without breaking old checkpoints
==================================================

Code changes; checkpoints stay. Make a buffer non-persistent, rename it, or add
a new one, and every checkpoint saved before the change stops loading (a
``position_ids`` buffer made non-persistent in a popular model library is a
well-known case; BatchNorm checkpoints saved before ``num_batches_tracked``
existed lack that key). This chapter breaks a checkpoint in all three ways,
then fixes it the way torch fixes BatchNorm: a module version stored in every
checkpoint and a load hook that migrates old keys, so that the old checkpoint
loads into the new module with ``strict=True``.
"""

# %%
# Where this page ran
# -------------------

import inspect
import os
import re
import tempfile
import textwrap
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

try:
    import pytorch_buffers as pb
except ModuleNotFoundError:
    wheel = (  # built from this guide's commit and shipped with its site
        "https://pytorch-buffers.github.io/pytorch-buffers-guide/"
        "wheels/pytorch_buffers-0.2.0-py3-none-any.whl"
    )
    msg = f"This chapter needs the pytorch_buffers library: pip install {wheel}"
    raise SystemExit(msg) from None

# sphinx_gallery_thumbnail_path = "_thumbnails/11_evolving_buffers.png"

device = torch.device(
    os.environ.get("GUIDE_DEVICE")
    or torch.accelerator.current_accelerator(check_available=True)
    or "cpu"
)
print(f"torch {torch.__version__}, device: {device}")
torch.manual_seed(123)


def show(text, width=100):
    """Print torch's and the library's messages with no line wider than ``width``.

    A long line wraps; a row of a text table (below a rule of dashes) wraps
    inside its last column.
    """
    column = None
    for line in str(text).splitlines():
        if re.fullmatch(r"-+(  -+)+", line):  # a table's rule
            column = line.rindex("  ") + 2
            print(line[:width])
        elif column is not None and line[column - 2 : column] == "  ":  # a row
            last = textwrap.wrap(line[column:], width - column) or [""]
            print(line[:column] + last[0])
            for more in last[1:]:
                print(" " * column + more)
        else:
            column = None
            indent = " " * (len(line) - len(line.lstrip()) + 4)
            print(textwrap.fill(line, width, subsequent_indent=indent) or line)


# %%
# Version 1, and a checkpoint saved from it
# -----------------------------------------
# An embedding layer with two buffers: the position indices ``0 .. n-1``
# (persistent, as many models once had them) and a running average of its
# output, a statistic that ``forward`` updates in training, like BatchNorm's.


class EmbeddingV1(nn.Module):
    def __init__(self, vocab=32, dim=4, context_length=8):
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.positions = nn.Embedding(context_length, dim)
        self.register_buffer("position_ids", torch.arange(context_length))
        self.register_buffer("running_avg", torch.zeros(dim))

    def forward(self, ids):
        out = self.tokens(ids) + self.positions(self.position_ids[: ids.shape[-1]])
        if self.training:
            with torch.no_grad():
                every_token = tuple(range(out.dim() - 1))  # any batch shape
                self.running_avg.lerp_(out.mean(dim=every_token), 0.1)
        return out


class Model(nn.Module):
    def __init__(self, embedding):
        super().__init__()
        self.embed = embedding
        self.head = nn.Linear(4, 2)

    def forward(self, ids):
        return self.head(self.embed(ids))


model_v1 = Model(EmbeddingV1()).to(device)
for _ in range(5):  # "training": forward updates the running average
    model_v1(torch.randint(0, 32, (2, 8), device=device))

checkpoint_dir = tempfile.TemporaryDirectory()
v1_path = Path(checkpoint_dir.name) / "model_v1.pt"
torch.save(model_v1.state_dict(), v1_path)
v1_checkpoint = torch.load(v1_path, map_location=device, weights_only=True)
show(f"keys in the v1 checkpoint: {list(v1_checkpoint)}")
print(
    "running_avg:", [round(v, 4) for v in v1_checkpoint["embed.running_avg"].tolist()]
)

# %%
# Version 2 breaks it
# -------------------
# Three reasonable changes: ``position_ids`` becomes non-persistent (the module
# rebuilds it, so why save it?); ``running_avg`` is renamed ``running_mean``;
# and a new persistent buffer, ``num_updates``, counts the updates (for a
# bias-corrected average). Nothing about the weights changed.


class EmbeddingV2(nn.Module):
    def __init__(self, vocab=32, dim=4, context_length=8):
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.positions = nn.Embedding(context_length, dim)
        self.context_length = context_length
        self.init_buffers()
        self.register_buffer("running_mean", torch.zeros(dim))  # was running_avg
        self.register_buffer("num_updates", torch.tensor(0))  # new

    def init_buffers(self, device=None):
        """(Re)build the non-persistent buffer, e.g. after ``to_empty()``.

        By default on the weights' device (``meta`` stays ``meta``).
        """
        if device is None:
            device = self.positions.weight.device
        position_ids = torch.arange(self.context_length, device=device)
        self.register_buffer("position_ids", position_ids, persistent=False)

    def forward(self, ids):
        out = self.tokens(ids) + self.positions(self.position_ids[: ids.shape[-1]])
        if self.training:
            with torch.no_grad():
                every_token = tuple(range(out.dim() - 1))  # any batch shape
                self.running_mean.lerp_(out.mean(dim=every_token), 0.1)
                self.num_updates += 1
        return out


model_v2 = Model(EmbeddingV2()).to(device)
try:
    model_v2.load_state_dict(v1_checkpoint)
    strict_load_failed = False
except RuntimeError as error:
    strict_load_failed = True
    show(f"{type(error).__name__}: {error}")

# sphinx_gallery_start_ignore
assert strict_load_failed, "claim: the v1 checkpoint does not load into v2 strictly"
# sphinx_gallery_end_ignore

# %%
# Each change shows up in the message: the non-persistent buffer as an
# unexpected key, the renamed one as a missing key plus an unexpected one, and
# the new one as a missing key. ``strict=False`` would load, and silently lose
# the statistic that was renamed:

model_v2 = Model(EmbeddingV2()).to(device)
skipped = model_v2.load_state_dict(v1_checkpoint, strict=False)
show(skipped)
print("running_mean after the load:", model_v2.embed.running_mean.tolist())

# sphinx_gallery_start_ignore
assert sorted(skipped.missing_keys) == ["embed.num_updates", "embed.running_mean"], (
    "claim: the renamed and the added buffer are missing keys"
)
assert sorted(skipped.unexpected_keys) == ["embed.position_ids", "embed.running_avg"], (
    "claim: the non-persistent and the renamed buffer are unexpected keys"
)
assert not model_v2.embed.running_mean.any(), (
    "claim: strict=False leaves the renamed statistic at its initial zeros"
)
assert model_v2.embed.num_updates.item() == 0, (
    "claim: and the added buffer at its initial value"
)
# sphinx_gallery_end_ignore

# %%
# What the library makes of it
# ----------------------------
# :func:`pytorch_buffers.explain_state_dict` lets torch load the checkpoint
# into meta copies of the model (nothing is allocated, nothing of yours is
# touched) and explains each key it complained about:

report = pb.explain_state_dict(Model(EmbeddingV2()), v1_checkpoint)
show(report)

# sphinx_gallery_start_ignore
assert not report.loads_strict, "claim: the library sees the strict load fail"
verdicts = {problem.key: problem.safe_to_ignore for problem in report}
assert verdicts == {
    "embed.running_mean": False,
    "embed.num_updates": False,
    "embed.position_ids": True,
    "embed.running_avg": False,
}, f"claim: only the now non-persistent position_ids is safe to skip, got {verdicts}"
# sphinx_gallery_end_ignore

# %%
# Dropping ``embed.position_ids`` is safe: the module rebuilds it. The rename and
# the new counter are not: the checkpoint has to be translated. Torch has a
# place for exactly that.
#
# The mechanism: a version in every checkpoint
# --------------------------------------------
# Every module class has a ``_version`` (1 unless the class sets it), and
# ``state_dict()`` records each submodule's version in a ``_metadata``
# attribute of the dictionary it returns, keyed by the submodule's prefix.
# ``torch.save`` keeps it (the state dict is an ``OrderedDict`` and the
# attribute is pickled with it), and ``torch.load(weights_only=True)`` restores it:

print("nn.Module._version:", nn.Module._version)
print("nn.BatchNorm1d._version:", nn.BatchNorm1d._version)
show(f"metadata of the v1 checkpoint: {dict(v1_checkpoint._metadata)}")

# sphinx_gallery_start_ignore
v1_state_type = type(model_v1.state_dict())
assert (v1_state_type.__module__, v1_state_type.__name__) == (
    "collections",
    "OrderedDict",
), "claim: the state dict is an OrderedDict"
assert nn.Module._version == 1, "claim: a module's version is 1 by default"
assert nn.BatchNorm1d._version == 2, "claim: BatchNorm is at version 2"
assert v1_checkpoint._metadata["embed"] == {"version": 1}, (
    "claim: torch.load(weights_only=True) restores the per-module version"
)
# sphinx_gallery_end_ignore

# %%
# When ``load_state_dict`` reaches a submodule, it calls the submodule's
# ``_load_from_state_dict`` with that submodule's prefix and its recorded
# metadata. BatchNorm (version 2) overrides it: when a checkpoint from version 1
# lacks ``num_batches_tracked``, it adds the key before the normal load runs.
# This is the installed torch's own code:

print(inspect.getsource(nn.modules.batchnorm._NormBase._load_from_state_dict))


# sphinx_gallery_start_ignore
def built_without_rng(embedding_class):
    """The model built on meta, then given memory: no random initialisation."""
    with torch.device("meta"):
        built = Model(embedding_class())
    return built.to_empty(device=device)


load_calls = []


class SpyEmbedding(EmbeddingV1):
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args):
        load_calls.append((prefix, dict(local_metadata)))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)


spied = built_without_rng(SpyEmbedding)
spied.load_state_dict(v1_checkpoint)
spied.load_state_dict(dict(v1_checkpoint))
assert load_calls == [("embed.", {"version": 1}), ("embed.", {})], (
    "claim: the submodule gets its prefix and recorded metadata; "
    "a plain dict copy records no version"
)
# sphinx_gallery_end_ignore

# %%
# And it works: a BatchNorm checkpoint that claims version 1 and lacks the
# counter loads strictly; the same dictionary claiming version 2 does not.

old_norm = nn.BatchNorm1d(3).state_dict()
del old_norm["num_batches_tracked"]
old_norm._metadata[""]["version"] = 1
print("version 1 without the counter:", nn.BatchNorm1d(3).load_state_dict(old_norm))

old_norm._metadata[""]["version"] = 2
try:
    nn.BatchNorm1d(3).load_state_dict(old_norm)
    norm_v2_loaded = True
except RuntimeError as error:
    norm_v2_loaded = False
    show(f"version 2 without the counter: {type(error).__name__}: {error}")

# sphinx_gallery_start_ignore
assert not norm_v2_loaded, "claim: BatchNorm migrates only checkpoints older than v2"
# sphinx_gallery_end_ignore

# %%
# The fix: version 2 migrates version 1 checkpoints
# -------------------------------------------------
# The same two steps for our module: raise ``_version``, and translate the old
# keys in ``_load_from_state_dict`` before calling the parent's. Each step checks
# that the key it translates is really there, rather than trusting the version
# alone: a state dict copied into a plain ``dict`` has lost its
# ``_metadata``, and then every module reports no version at all.


class Embedding(EmbeddingV2):
    # 1: position_ids persistent, running_avg; 2: the changes above.
    _version = 2

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args):
        version = local_metadata.get("version")
        if version is None or version < 2:
            # position_ids is rebuilt by __init__ now: drop the saved copy.
            state_dict.pop(prefix + "position_ids", None)
            if prefix + "running_avg" in state_dict:
                state_dict[prefix + "running_mean"] = state_dict.pop(
                    prefix + "running_avg"
                )
            if prefix + "num_updates" not in state_dict:
                # An old checkpoint's count is unknown: start at 0.
                state_dict[prefix + "num_updates"] = torch.tensor(0)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)


model = Model(Embedding()).to(device)
print(model.load_state_dict(v1_checkpoint, strict=True))
print("running_mean:", [round(v, 4) for v in model.embed.running_mean.tolist()])
print("num_updates: ", model.embed.num_updates.item())
statistic_migrated = torch.equal(
    model.embed.running_mean, v1_checkpoint["embed.running_avg"]
)
migrated_num_updates = model.embed.num_updates.item()

# sphinx_gallery_start_ignore
assert statistic_migrated, "claim: the renamed statistic is restored from v1"
with torch.device("meta"):
    _embedding = Embedding()
_embedding.init_buffers()  # outside the meta context: follows the weights
assert _embedding.position_ids.device.type == "meta", "claim: meta stays meta"
_embedding.to_empty(device=device).init_buffers()
assert _embedding.position_ids.device.type == device.type, (
    "claim: init_buffers() builds position_ids on the weights' device"
)
_one, _batch = (built_without_rng(Embedding).embed.train() for _ in range(2))
for _fresh in (_one, _batch):
    _fresh.init_buffers()
    _fresh.load_state_dict(model.embed.state_dict())  # the same weights in both
with torch.no_grad():
    _one(torch.arange(8, device=device))  # ids of shape (t,)
    _batch(torch.arange(8, device=device)[None])  # the same ids, a batch of one
assert torch.allclose(_one.running_mean, _batch.running_mean), (
    "claim: forward's statistic averages every token, whatever the batch shape"
)
del _embedding, _one, _batch, _fresh
assert all(
    torch.equal(model.state_dict()[k], v1_checkpoint[k])
    for k in ("embed.tokens.weight", "embed.positions.weight", "head.weight")
), "claim: the weights are restored"
# sphinx_gallery_end_ignore

# %%
# The library agrees, because torch now agrees: the migrating module loads the
# old checkpoint strictly (the remaining note is about ``position_ids``, which
# the module computes itself):

fixed_report = pb.explain_state_dict(Model(Embedding()), v1_checkpoint)
show(fixed_report)

# sphinx_gallery_start_ignore
assert fixed_report.loads_strict, "claim: the library reports a strict load now"
assert list(fixed_report) == [], "claim: no key is left to explain"
# sphinx_gallery_end_ignore

# %%
# The migration edits a dictionary, but not yours: ``load_state_dict`` works on
# a shallow copy of the one you pass, so the checkpoint keeps its old keys:

show(f"keys still in v1_checkpoint: {list(v1_checkpoint)}")

# sphinx_gallery_start_ignore
assert "embed.running_avg" in v1_checkpoint, "claim: the caller's dict is untouched"
# sphinx_gallery_end_ignore

# %%
# New checkpoints record version 2, so they skip the migration, and a version 2
# state dict that lost its metadata still loads with its counter intact,
# because each step looks at the keys before it touches them:

model.train()
model(torch.randint(0, 32, (2, 8), device=device))
v2_checkpoint = model.state_dict()
show(f"metadata of a new checkpoint: {dict(v2_checkpoint._metadata)}")
plain = dict(v2_checkpoint)  # no _metadata: every version reads as None
reloaded = Model(Embedding()).to(device)
print(reloaded.load_state_dict(plain, strict=True))
print("num_updates after the metadata-less load:", reloaded.embed.num_updates.item())

# sphinx_gallery_start_ignore
assert not hasattr(plain, "_metadata"), "claim: a plain dict copy drops _metadata"
assert v2_checkpoint._metadata["embed"] == {"version": 2}
assert reloaded.embed.num_updates.item() == model.embed.num_updates.item() == 1, (
    "claim: the migration keeps the counter of a metadata-less v2 state dict"
)
without_counter = model.state_dict()
del without_counter["embed.num_updates"]
v2_strict_failed = False
try:
    built_without_rng(Embedding).load_state_dict(without_counter)
except RuntimeError:
    v2_strict_failed = True
assert v2_strict_failed, "claim: a version 2 checkpoint skips the migration"
plain_v2_failed = False
try:
    built_without_rng(Embedding).load_state_dict(dict(without_counter))
except RuntimeError:
    plain_v2_failed = True
assert not plain_v2_failed, "claim: without metadata, the migration runs"
# sphinx_gallery_end_ignore

# %%
# The public way: a load pre-hook
# -------------------------------
# ``_load_from_state_dict`` is a method you override in your own class. For a
# class you cannot edit (it comes from a library), torch offers a public hook:
# ``module.register_load_state_dict_pre_hook(hook)`` runs ``hook(module,
# state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
# error_msgs)`` on that instance just before it loads its own keys. The hook
# must change ``state_dict`` in place. Here it adapts the v1 checkpoint to an
# unmodified ``EmbeddingV2``:


def migrate_v1(_module, state_dict, prefix, *_):
    state_dict.pop(prefix + "position_ids", None)
    if prefix + "running_avg" in state_dict:
        state_dict[prefix + "running_mean"] = state_dict.pop(prefix + "running_avg")
    state_dict.setdefault(prefix + "num_updates", torch.tensor(0))


library_model = Model(EmbeddingV2()).to(device)
handle = library_model.embed.register_load_state_dict_pre_hook(migrate_v1)
print(library_model.load_state_dict(v1_checkpoint, strict=True))
handle.remove()  # hooks belong to one instance; a handle takes one off again

# sphinx_gallery_start_ignore
assert torch.equal(
    library_model.embed.running_mean, v1_checkpoint["embed.running_avg"]
), "claim: the public pre-hook migrates the v1 checkpoint too"
# sphinx_gallery_end_ignore

# %%
# ``EmbeddingV2`` never raised its ``_version``, so its own checkpoints record
# version 1, exactly as v1's do: the version cannot tell them apart, and the
# hook decides from the keys alone. That is also why the migrations above never
# overwrite a key that is present.

# sphinx_gallery_start_ignore
with torch.device("meta"):
    v2_metadata = Model(EmbeddingV2()).state_dict()._metadata
assert v2_metadata["embed"] == v1_checkpoint._metadata["embed"] == {"version": 1}, (
    "claim: EmbeddingV2's checkpoints record version 1 like v1's"
)
# sphinx_gallery_end_ignore

# %%
# The same translation can of course be done once, outside the module: load
# the old file, rename the keys, save a new file. That is fine for checkpoints
# you own; a migration inside the module also covers every copy you do not.
#
# A loader that skips the migration: ``torch.distributed.checkpoint``
# --------------------------------------------------------------------
# Both migrations run inside ``load_state_dict``, and only there.
# Distributed checkpoints (``torch.distributed.checkpoint``, DCP, the format
# of sharded training such as FSDP2) load another way: ``dcp.load(state_dict,
# checkpoint_id=...)`` takes the state dict of the model you load into,
# reads each of *its* keys from the checkpoint into its tensors in place, and,
# given a state dict as here, calls neither ``load_state_dict`` nor a module's
# ``_load_from_state_dict`` or hooks. So the v1 checkpoint, saved with DCP, does
# not load into the migrating module. DCP runs without a process group too: it then works in a
# single process (and warns that it assumes so; the page silences that
# warning), which is how this page runs it. It raises a
# ``CheckpointException``, a ``BaseException`` (``except Exception`` misses
# it) that holds each rank's own exception:

dcp_dir = Path(checkpoint_dir.name) / "model_v1_dcp"
target = Model(Embedding()).to(device)
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="torch.distributed is disabled")
    dcp.save(model_v1.state_dict(), checkpoint_id=dcp_dir)
    try:
        dcp.load(target.state_dict(), checkpoint_id=dcp_dir)
        dcp_failures = {}
    except CheckpointException as error:
        dcp_failures = {rank: exc for rank, (exc, _) in error.failures.items()}
        print(f"{type(error).__name__}, by rank:")
        for rank, exc in dcp_failures.items():
            show(f"  rank {rank}: {type(exc).__name__}: {exc}")

# sphinx_gallery_start_ignore
assert list(dcp_failures) == [0], "claim: DCP loads in one process, rank 0"
assert issubclass(CheckpointException, BaseException), "claim: a BaseException"
assert not issubclass(CheckpointException, Exception), (
    "claim: except Exception misses CheckpointException"
)
assert "Missing key" in str(dcp_failures[0]), "claim: DCP reports the missing key"
assert not target.embed.running_mean.any(), "claim: the migration did not run"
hooked_target = built_without_rng(EmbeddingV2)
hooked_target.embed.register_load_state_dict_pre_hook(migrate_v1)
same_v1 = built_without_rng(EmbeddingV1)
same_v1_state = same_v1.state_dict()
pointer_before = same_v1.embed.running_avg.data_ptr()
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="torch.distributed is disabled")
    try:
        dcp.load(hooked_target.state_dict(), checkpoint_id=dcp_dir)
        hook_ran = True
    except CheckpointException:
        hook_ran = False
    dcp.load(same_v1_state, checkpoint_id=dcp_dir)
assert not hook_ran, "claim: dcp.load runs no load_state_dict pre-hook either"
assert torch.equal(same_v1.embed.running_avg, v1_checkpoint["embed.running_avg"]), (
    "claim: dcp.load fills the module's tensors"
)
assert same_v1.embed.running_avg.data_ptr() == pointer_before, "claim: in place"
# sphinx_gallery_end_ignore

# %%
# The module's migration works again once the old keys are in an ordinary
# state dict that goes through ``load_state_dict``. For a checkpoint that
# fits in one process, ``dcp_to_torch_save``
# (``torch.distributed.checkpoint.format_utils``) converts it to a
# ``torch.save`` file. The conversion keeps no ``_metadata``, so every
# version reads as ``None``, and the migration, which looks at the keys,
# still does the right thing:

converted_path = Path(checkpoint_dir.name) / "model_v1_from_dcp.pt"
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="torch.distributed is disabled")
    dcp_to_torch_save(dcp_dir, converted_path)
converted = torch.load(converted_path, map_location=device, weights_only=True)
print("_metadata after the conversion:", getattr(converted, "_metadata", None))
print(target.load_state_dict(converted, strict=True))
dcp_migrated = torch.equal(
    target.embed.running_mean, v1_checkpoint["embed.running_avg"]
)
print("running_mean restored from the DCP checkpoint:", dcp_migrated)

# sphinx_gallery_start_ignore
assert getattr(converted, "_metadata", None) is None, "claim: no _metadata kept"
assert dcp_migrated, "claim: the converted DCP checkpoint migrates"
# sphinx_gallery_end_ignore

checkpoint_dir.cleanup()

# %%
# What to remember
# ----------------
# - Making a buffer non-persistent, renaming it or adding a persistent one
#   changes the state dict's keys, and every older checkpoint then fails
#   ``load_state_dict(strict=True)``; ``strict=False`` loads it and silently
#   keeps the module's initial values for what was renamed or added.
# - ``state_dict()`` stores each module's ``_version`` in ``_metadata``; a class
#   that changes its keys raises ``_version`` and translates old keys in
#   ``_load_from_state_dict``, as BatchNorm does for ``num_batches_tracked``.
# - For a class you cannot edit, ``register_load_state_dict_pre_hook`` runs the
#   same translation on an instance.
# - Decide from the keys present, not from the version alone: a state dict
#   copied into a plain ``dict`` has no ``_metadata``.
# - Both migrations run only inside ``load_state_dict``:
#   ``torch.distributed.checkpoint.load`` reads the new module's keys from the
#   checkpoint and raises on the ones it lacks. Convert such a checkpoint
#   (``dcp_to_torch_save``) and load it with ``load_state_dict``.
