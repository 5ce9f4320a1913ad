r"""
Buffers in functional code
==========================

``torch.func.functional_call(module, tensors, args)`` runs a module with
tensors you pass in place of its own parameters and buffers, leaving the
module's tensors you replaced untouched. It is how ``torch.func`` computes
per-sample gradients, how model ensembles are run with ``vmap``, and how
meta-learning code evaluates a model at other weights. Parameters are simple
there: nothing writes to them in ``forward``. Buffers are where it gets
subtle: which ones are used, where an update made in ``forward`` goes, and
what happens to a buffer that ``forward`` *reassigns*. This chapter asks torch
each question and prints its answer.
"""

# %%
# Where this page ran
# -------------------

import os
import textwrap
import warnings

import torch
from torch import nn
from torch.func import (
    functional_call,
    replace_all_batch_norm_modules_,
    stack_module_state,
    vmap,
)

# sphinx_gallery_thumbnail_path = "_thumbnails/16_functional_buffers.png"

device = torch.device(
    os.environ.get("GUIDE_DEVICE")
    or torch.accelerator.current_accelerator(check_available=True)
    or "cpu"
)
print(f"torch {torch.__version__}, device: {device}")
torch.manual_seed(123)

# %%
# Which buffers are used
# ----------------------
# A ``BatchNorm1d`` in training mode, run on a batch whose mean is about 5. The
# buffers go in as a dict of clones; the module's own buffers are zeros and
# ones, as built.

norm = nn.BatchNorm1d(3).to(device)
batch = torch.randn(16, 3, device=device) * 2 + 5
parameters = dict(norm.named_parameters())
buffers = {name: b.clone() for name, b in norm.named_buffers()}

functional_call(norm, (parameters, buffers), (batch,))
print(
    "passed-in running_mean:", [round(v, 4) for v in buffers["running_mean"].tolist()]
)
print("module's running_mean: ", norm.running_mean.tolist())
print(
    "num_batches_tracked, passed-in vs module's:",
    buffers["num_batches_tracked"].item(),
    norm.num_batches_tracked.item(),
)
# sphinx_gallery_start_ignore
assert buffers["num_batches_tracked"].item() == 1, "claim: the passed-in buffer counted"
assert not norm.running_mean.any(), "claim: the module's own buffer is untouched"
assert torch.allclose(
    buffers["running_mean"], 0.1 * batch.mean(0), rtol=1e-5, atol=1e-6
), "claim: the passed running_mean holds 10% of the batch mean"
# sphinx_gallery_end_ignore

# %%
# BatchNorm updates its running statistics *in place*, so the update lands in
# the tensors you passed: ``running_mean`` now holds 10% of the batch mean. The module's own
# buffers are untouched. That is what makes a functional training step work:
# keep the state in your dict, pass it in every step, and it evolves there.
#
# A name you leave out, or misspell
# ---------------------------------
# ``functional_call`` swaps in only the names you give. The module's own tensor
# is used for every other name, and updated in place if ``forward`` does that.
# And with the default ``strict=False`` a key that names nothing is ignored:

fresh = nn.BatchNorm1d(3).to(device)
typo = {"runing_mean": torch.zeros(3, device=device)}  # one "n" short
with warnings.catch_warnings(record=True) as typo_warnings:
    warnings.simplefilter("always")
    functional_call(fresh, typo, (batch,))
print("typo'd tensor after the call:  ", typo["runing_mean"].tolist())
print(
    "module's running_mean after it:",
    [round(v, 4) for v in fresh.running_mean.tolist()],
)
# sphinx_gallery_start_ignore
assert not typo["runing_mean"].any(), "claim: an unknown key is silently ignored"
assert fresh.running_mean.any(), "claim: the module's own buffer was updated instead"
assert not typo_warnings, "claim: no warning for an unknown key"
# sphinx_gallery_end_ignore

try:
    functional_call(fresh, typo, (batch,), strict=True)
    strict_error = None
except RuntimeError as error:
    strict_error = error
    print(f"strict=True: {type(error).__name__}:")
    for line in str(error).splitlines():  # torch's own line breaks, kept
        print(textwrap.fill(line, 100, subsequent_indent="    ") or line)
# sphinx_gallery_start_ignore
assert strict_error is not None, "claim: strict=True rejects unknown and missing keys"
assert "Unexpected" in str(strict_error), "claim: strict=True names the unknown key"
assert "Missing" in str(strict_error), "claim: strict=True names the missing keys"
# sphinx_gallery_end_ignore

# %%
# No error, no warning: the call ran on the module's own buffer and changed it.
# ``strict=True`` names both the unexpected key and every missing one, so it
# demands the complete set: pass ``(parameters, buffers)`` from
# ``named_parameters()`` and ``named_buffers()`` and you have it, as long as
# ``tie_weights`` stays ``True`` (with ``False``, tied names need
# ``remove_duplicate=False``; see the section on tied tensors below).
#
# A buffer reassigned in ``forward``
# ----------------------------------
# The common bug: a counter written ``self.steps = self.steps + 1``. In an
# ordinary call that works (``nn.Module.__setattr__`` stores the new tensor as the
# buffer), so it goes unnoticed until the module is used functionally.


class StepCounter(nn.Module):
    """Counts calls and sums its inputs, in the two ways people write it."""

    def __init__(self):
        super().__init__()
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("total", torch.zeros(()))

    def forward(self, x):
        with torch.no_grad():  # statistics: no gradient flows into them
            self.steps = self.steps + 1  # reassigned: a new tensor each call
            self.total.add_(x.sum())  # in place: the same tensor, new values
        return 2 * x


def fresh_state(module):
    return {name: b.clone() for name, b in module.named_buffers()}


counter = StepCounter().to(device)
# sphinx_gallery_start_ignore
ordinary = StepCounter().to(device)
ordinary(torch.ones(3, device=device))
assert ordinary.steps.item() == 1, "claim: in an ordinary call the reassignment works"
assert "steps" in dict(ordinary.named_buffers()), "claim: and it stays a buffer"
# sphinx_gallery_end_ignore
ones = torch.ones(3, device=device)

as_tuple = fresh_state(counter)
functional_call(counter, ({}, as_tuple), (ones,))
one_dict = fresh_state(counter)
steps_passed_in = one_dict["steps"]
functional_call(counter, one_dict, (ones,))
merged_source = fresh_state(counter)
functional_call(counter, {**dict(counter.named_parameters()), **merged_source}, (ones,))

for label, state in [
    ("(parameters, buffers) tuple", as_tuple),
    ("one dict", one_dict),
    ("{**parameters, **buffers}", merged_source),
]:
    print(f"{label:28} steps={state['steps'].item()} total={state['total'].item()}")
print(f"{'module itself':28} steps={counter.steps.item()} total={counter.total.item()}")

# sphinx_gallery_start_ignore
assert as_tuple["steps"].item() == 0, "claim: a reassigned buffer is lost (tuple)"
assert merged_source["steps"].item() == 0, "claim: a reassigned buffer is lost (merged)"
assert one_dict["steps"].item() == 1, "claim: one dict gets the new tensor written back"
assert one_dict["steps"] is not steps_passed_in, "claim: the entry is a new tensor"
assert steps_passed_in.item() == 0, "claim: the tensor passed in was not updated"
assert all(s["total"].item() == 3.0 for s in (as_tuple, one_dict, merged_source)), (
    "claim: an in-place update reaches the passed tensor in every form"
)
assert counter.steps.item() == 0, "claim: the module's own buffers are untouched"
assert counter.total.item() == 0.0, "claim: the module's own buffers are untouched"
# sphinx_gallery_end_ignore

# %%
# The in-place ``total`` reached the passed tensor every time. The reassigned
# ``steps`` did not: during the call the module's attribute points at a brand
# new tensor, and at the end ``functional_call`` writes that new tensor back
# into *the dict it was given*. With a single dict that is your dict (its entry
# now holds a different tensor object, and the tensor you passed still says 0,
# so any other reference to it is stale); with a tuple of dicts, or a dict merged
# on the fly, it is a temporary that torch builds or you built, and the count is
# gone. The fix is one line: update in place.


class FixedStepCounter(StepCounter):
    def forward(self, x):
        with torch.no_grad():
            self.steps.add_(1)  # in place, like BatchNorm's own counter
            self.total.add_(x.sum())
        return 2 * x


fixed = FixedStepCounter().to(device)
fixed_state = fresh_state(fixed)
for _ in range(3):
    functional_call(fixed, ({}, fixed_state), (ones,))
print("after 3 calls:", {name: t.item() for name, t in fixed_state.items()})
# sphinx_gallery_start_ignore
assert fixed_state["steps"].item() == 3, "claim: an in-place counter counts every call"
# sphinx_gallery_end_ignore

# %%
# Many models at once: ``vmap`` and BatchNorm's buffers
# -----------------------------------------------------
# ``torch.func.vmap`` runs a function over a batch dimension as if in a loop.
# An ensemble uses it with ``functional_call``: the weights of several copies
# of a model are stacked along a new first dimension, and each copy sees its
# own slice. Here two copies of a ``BatchNorm1d`` in ``train()`` mode, each
# with a batch of its own (means near 5 and near -5). Stacking the parameters
# and passing one unstacked set of buffers fails: each copy would update the
# same running statistics in place, and torch refuses.

ensemble = [nn.BatchNorm1d(3).to(device) for _ in range(2)]
member_shift = torch.tensor([5.0, -5.0], device=device).view(2, 1, 1)
member_batches = torch.randn(2, 16, 3, device=device) + member_shift
stacked_parameters, stacked_buffers = stack_module_state(ensemble)


def run_member(member_parameters, member_buffers, x):
    return functional_call(ensemble[0], (member_parameters, member_buffers), (x,))


one_set = fresh_state(ensemble[0])  # one set of buffers for both copies
try:
    vmap(run_member, in_dims=(0, None, 0))(stacked_parameters, one_set, member_batches)
    unstacked_error = None
except RuntimeError as error:
    unstacked_error = error
    print(f"unstacked buffers: {type(error).__name__}:")
    for line in str(error).splitlines():  # torch's own line breaks, kept
        print(textwrap.fill(line, 100, subsequent_indent="    ") or line)

# sphinx_gallery_start_ignore
assert unstacked_error is not None, (
    "claim: vmap over BatchNorm in train() with unbatched buffers raises"
)
# sphinx_gallery_end_ignore

# %%
# Two ways work. The first keeps a running statistic per copy:
# ``torch.func.stack_module_state`` stacks the buffers too (a new tensor per
# name, one row per copy; the copies' own buffers are not touched), and
# ``vmap`` hands each copy its row, which BatchNorm updates in place.

stacked_out = vmap(run_member)(stacked_parameters, stacked_buffers, member_batches)
stacked_means = stacked_buffers["running_mean"]
print("stacked running_mean, one row per copy:")
for row in stacked_means.tolist():
    print("   ", [round(v, 3) for v in row])
print("num_batches_tracked:", stacked_buffers["num_batches_tracked"].tolist())

# sphinx_gallery_start_ignore
assert torch.allclose(
    stacked_means, 0.1 * member_batches.mean(1), rtol=1e-5, atol=1e-6
), "claim: each copy's row holds 10% of its own batch mean"
assert stacked_buffers["num_batches_tracked"].tolist() == [1, 1], (
    "claim: each copy counted its batch"
)
assert all(not m.running_mean.any() for m in ensemble), (
    "claim: stack_module_state copies: the copies' own buffers are untouched"
)
one_by_one = []
for member, member_batch in zip(ensemble, member_batches, strict=True):
    alone = nn.BatchNorm1d(3).to(device)
    alone.load_state_dict(member.state_dict())
    one_by_one.append(alone(member_batch))
assert torch.allclose(stacked_out, torch.stack(one_by_one), rtol=1e-5, atol=1e-5), (
    "claim: the vmapped ensemble computes what each copy computes alone"
)
# sphinx_gallery_end_ignore

# %%
# The second gives the statistics up:
# ``torch.func.replace_all_batch_norm_modules_(module)`` patches every
# BatchNorm in ``module``, in place, to keep no running statistics (its
# ``running_mean`` and ``running_var`` become ``None``). Then nothing is
# updated, ``vmap`` works, and every call normalises with the statistics of
# its own batch, in ``eval()`` too. Use it when nothing needs the running
# statistics later.

patched = nn.BatchNorm1d(3).to(device)
replace_all_batch_norm_modules_(patched)
print(
    "after replace_all_batch_norm_modules_:", patched.running_mean, patched.running_var
)
patched_out = vmap(patched)(member_batches)
patched.eval()
eval_out = vmap(patched)(member_batches)
print("eval() output equal to train() output:", torch.equal(eval_out, patched_out))

# sphinx_gallery_start_ignore
assert patched.running_mean is None, "claim: the patch removes running_mean"
assert patched.running_var is None, "claim: the patch removes the running statistics"
assert torch.allclose(stacked_out, patched_out, rtol=1e-5, atol=1e-5), (
    "claim: the patched module normalises each copy's batch with its own statistics"
)
assert torch.equal(eval_out, patched_out), "claim: eval() uses batch statistics too"
# sphinx_gallery_end_ignore

# %%
# Tied tensors and ``tie_weights``
# --------------------------------
# A module may hold one tensor under two names: the classic case is a language
# model whose output layer shares the embedding's weight. The same happens with
# buffers registered twice. ``named_buffers()`` and ``named_parameters()`` report
# each tensor once unless you pass ``remove_duplicate=False``; ``state_dict()``
# keeps every name.


class TiedTable(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("table", torch.ones(2))
        self.register_buffer("alias", self.table)  # the same tensor, a second name
        self.offset = nn.Buffer(torch.full((2,), 10.0))  # persistent by default

    def forward(self, x):
        return x + self.table + self.alias + self.offset


tied = TiedTable().to(device)
print("named_buffers():                      ", [n for n, _ in tied.named_buffers()])
print(
    "named_buffers(remove_duplicate=False):",
    [n for n, _ in tied.named_buffers(remove_duplicate=False)],
)
print("state_dict() keys:                    ", list(tied.state_dict()))

zeros = torch.zeros(2, device=device)
tied_out = functional_call(tied, {"table": zeros}, (zeros,))
untied_out = functional_call(tied, {"table": zeros}, (zeros,), tie_weights=False)
print("tie_weights=True  (default):", tied_out.tolist())
print("tie_weights=False:          ", untied_out.tolist())
try:
    functional_call(tied, {"table": zeros, "alias": ones[:2]}, (zeros,))
    both_error = None
except ValueError as error:
    both_error = error
    print(f"both names given: {type(error).__name__}:")
    for line in str(error).splitlines():  # torch's own line breaks, kept
        print(textwrap.fill(line, 100, subsequent_indent="    ") or line)
same_out = functional_call(tied, {"table": zeros, "alias": zeros}, (zeros,))
# sphinx_gallery_start_ignore
assert tied_out.tolist() == [10.0, 10.0], "claim: tie_weights swaps the alias too"
assert untied_out.tolist() == [11.0, 11.0], "claim: without it the alias keeps the old"
assert both_error is not None, "claim: two values for one tied tensor raise"
assert same_out.tolist() == [10.0, 10.0], "claim: one tensor under both names works"
every_buffer = ({}, dict(tied.named_buffers()))
functional_call(tied, every_buffer, (zeros,), strict=True)  # tie_weights=True: fine
try:
    functional_call(tied, every_buffer, (zeros,), strict=True, tie_weights=False)
    untied_strict_error = None
except RuntimeError as error:
    untied_strict_error = error
assert untied_strict_error is not None, (
    "claim: with tie_weights=False, strict=True misses the deduplicated alias"
)
every_name = ({}, dict(tied.named_buffers(remove_duplicate=False)))
# Assigned, not left as the block's last expression: sphinx-gallery would print it.
every_name_out = functional_call(
    tied, every_name, (zeros,), strict=True, tie_weights=False
)
# sphinx_gallery_end_ignore

# %%
# With the default ``tie_weights=True``, replacing ``table`` replaces every name
# that shares its tensor; with ``False`` the alias keeps the module's own ones.
# Giving both names two different tensors is an error, because torch cannot
# tell which you meant; the same tensor under both names is accepted.
#
# ``recurse=False`` and ``nn.Buffer``
# -----------------------------------
# ``named_buffers(recurse=False)`` lists a module's own buffers and not its
# children's, which is what you want when walking a model module by module
# (``named_modules()`` then each module's own buffers) so no buffer is listed
# under both a parent and its child. ``nn.Buffer(tensor)`` assigned as an
# attribute registers a buffer, as ``offset`` above shows; its ``persistent``
# argument defaults to ``True``, so it is saved in ``state_dict()`` like
# ``register_buffer``'s default.

outer = nn.Sequential(tied, nn.BatchNorm1d(2)).to(device)
outer.register_buffer("scale", torch.ones(()), persistent=False)
all_names = [n for n, _ in outer.named_buffers()]
print(textwrap.fill(f"recurse=True:  {all_names}", 100, subsequent_indent=" " * 16))
print("recurse=False:", [n for n, _ in outer.named_buffers(recurse=False)])
print("'offset' saved in state_dict():", "offset" in tied.state_dict())
# sphinx_gallery_start_ignore
assert [n for n, _ in outer.named_buffers(recurse=False)] == ["scale"], (
    "claim: recurse=False lists only the module's own buffers"
)
assert [n for n, _ in tied.named_buffers()] == ["table", "offset"], (
    "claim: named_buffers() reports a shared tensor once"
)
assert [n for n, _ in tied.named_buffers(remove_duplicate=False)] == [
    "table",
    "alias",
    "offset",
], "claim: remove_duplicate=False lists every name"
assert list(tied.state_dict()) == ["table", "alias", "offset"], (
    "claim: state_dict() keeps every name"
)
assert "offset" in tied.state_dict(), "claim: nn.Buffer is persistent by default"
with torch.device("meta"):  # no random initialisation: the page's RNG stays put
    tied_linears = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
tied_linears[1].weight = tied_linears[0].weight
assert [n for n, _ in tied_linears.named_parameters()] == [
    "0.weight",
    "0.bias",
    "1.bias",
], "claim: named_parameters() reports a shared parameter once"
assert len(list(tied_linears.named_parameters(remove_duplicate=False))) == 4, (
    "claim: remove_duplicate=False lists every parameter name"
)
# sphinx_gallery_end_ignore

# %%
# What to remember
# ----------------
# - ``functional_call`` uses the tensors you pass and the module's own for every
#   name you leave out; with the default ``strict=False`` a misspelt key is
#   ignored without a word. ``strict=True`` catches it.
# - In-place buffer updates in ``forward`` (BatchNorm in ``train()``) land in the
#   tensors you passed; the module's own buffers are untouched.
# - A buffer *reassigned* in ``forward`` (``self.steps = self.steps + 1``) is
#   written back only into a single dict you passed; with ``(params, buffers)``
#   or a merged dict the update is lost. Update buffers in place.
# - ``vmap`` over BatchNorm in ``train()`` needs one set of buffers per copy
#   (``torch.func.stack_module_state``); or patch the module with
#   ``torch.func.replace_all_batch_norm_modules_`` to keep no running
#   statistics at all.
# - Tied tensors are swapped together (``tie_weights=True``);
#   ``named_buffers()`` lists a shared tensor once, ``remove_duplicate=False``
#   and ``state_dict()`` list every name; ``recurse=False`` lists a module's own.
# - ``nn.Buffer(t)`` as an attribute is ``register_buffer`` with
#   ``persistent=True`` by default.
