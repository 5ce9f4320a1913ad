r"""
Loading big models with accelerate
==================================

To load a model too big to build twice, ``accelerate`` builds it empty first:
``init_empty_weights()`` puts the parameters on the ``meta`` device, which
allocates nothing, and the checkpoint then fills them. Buffers are treated
differently, and that difference decides whether a rotary table or a causal
mask survives the load. This chapter builds a small language model the way a
big one is loaded, and shows, for each way of loading it, where every buffer
ends up, what it costs in memory, and whether the model still computes what
it computed before. It needs ``accelerate`` (``pip install accelerate``).
"""

# %%
# Where this page ran
# -------------------

import os
import tempfile
import textwrap
from pathlib import Path

import torch
from torch import nn

try:
    import accelerate
    from accelerate import (
        disk_offload,
        init_empty_weights,
        load_checkpoint_and_dispatch,
    )
except ModuleNotFoundError:
    msg = "This chapter needs accelerate: pip install accelerate"
    raise SystemExit(msg) from None

# sphinx_gallery_thumbnail_path = "_thumbnails/22_accelerate_big_models.png"

device = torch.device(
    os.environ.get("GUIDE_DEVICE")
    or torch.accelerator.current_accelerator(check_available=True)
    or "cpu"
)
print(
    f"torch {torch.__version__}, accelerate {accelerate.__version__}, device: {device}"
)
torch.manual_seed(123)


def show_error(error):
    """Print an exception's type and message, wrapped to fit the page."""
    print(textwrap.fill(f"{type(error).__name__}: {error}", width=88))


# %%
# A model with the usual three kinds of buffer
# --------------------------------------------
# ``TinyLM`` holds a rotary frequency table and a causal mask as non-persistent
# buffers (its ``__init__`` computes them; no checkpoint carries them), and a
# learned-elsewhere ``logit_scale`` as a persistent buffer that the checkpoint
# does carry. The mask is sized for a 4,096-token context, as a big model's
# would be: 16 MiB of ``bool``. ``reset_buffers`` recomputes the non-persistent
# ones on whatever device the module is on.


class TinyLM(nn.Module):
    def __init__(self, vocab=64, dim=16, context_length=4096):
        super().__init__()
        self.dim, self.context_length = dim, context_length
        self.embed = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, vocab)
        self.register_buffer("inv_freq", torch.empty(dim // 2), persistent=False)
        causal = torch.empty(context_length, context_length, dtype=torch.bool)
        self.register_buffer("causal", causal, persistent=False)
        self.register_buffer("logit_scale", torch.ones(()))
        self.reset_buffers()

    def reset_buffers(self):
        """Recompute the non-persistent buffers where they are (not on meta).

        Also after a dtype cast: ``.to(torch.bfloat16)`` rounds ``inv_freq`` too,
        and this puts back a float32 one.
        """
        if self.inv_freq.is_meta:
            return  # nothing to compute on meta; call again after materialising
        steps = torch.arange(0, self.dim, 2, device=self.inv_freq.device).float()
        self.inv_freq = 1.0 / 10000 ** (steps / self.dim)  # still the buffer
        with torch.no_grad():
            self.causal.copy_(torch.ones_like(self.causal).tril())

    def forward(self, ids):
        t = ids.shape[-1]
        x = self.embed(ids)
        # Angles in float32 (inv_freq is float32 unless the module was cast).
        angles = torch.outer(
            torch.arange(t, device=x.device).float(), self.inv_freq.float()
        )
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        x = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
        scores = (x @ x.transpose(-2, -1)).masked_fill(~self.causal[:t, :t], -torch.inf)
        return self.head(scores.softmax(dim=-1) @ x) * self.logit_scale


reference = TinyLM().to(device).eval()
with torch.no_grad():
    reference.logit_scale.fill_(2.0)  # a value only the checkpoint knows
checkpoint = {k: v.cpu() for k, v in reference.state_dict().items()}
on_device = {k: v.to(device) for k, v in checkpoint.items()}  # for assign=True
ids = torch.randint(0, 64, (2, 10), device=device)
with torch.no_grad():
    expected = reference(ids)
print("the checkpoint holds:", ", ".join(checkpoint))
# sphinx_gallery_start_ignore
assert set(checkpoint) == {"embed.weight", "head.weight", "head.bias", "logit_scale"}, (
    "claim: the checkpoint holds the parameters and logit_scale, not the tables"
)
# sphinx_gallery_end_ignore

# %%
# ``init_empty_weights()``: parameters on meta, buffers for real
# --------------------------------------------------------------
# By default (``include_buffers=False``) only the parameters go to ``meta``.
# Buffers are created on the default device (the CPU here), so ``__init__``
# computes their values as usual,
# and they take real memory: for a big model, a large mask is allocated at once.


def placement(model):
    """Each tensor's kind, device and the bytes it holds in memory (0 on meta)."""
    saved = model.state_dict(keep_vars=True)
    rows = []
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        kind = "parameter" if isinstance(tensor, nn.Parameter) else "buffer"
        if kind == "buffer" and name not in saved:
            kind = "buffer, not saved"
        held = 0 if tensor.is_meta else tensor.numel() * tensor.element_size()
        rows.append((name, kind, tensor.device.type, held))
    return rows


def show_placement(model):
    print(f"{'tensor':14} {'kind':18} {'device':7} {'bytes held':>12}")
    for name, kind, where, held in placement(model):
        print(f"{name:14} {kind:18} {where:7} {held:>12,}")


with init_empty_weights():
    empty = TinyLM().eval()
show_placement(empty)
# sphinx_gallery_start_ignore
rows = {name: (where, held) for name, _, where, held in placement(empty)}
assert all(rows[n][0] == "meta" for n, _ in empty.named_parameters()), (
    "claim: init_empty_weights puts the parameters on meta"
)
assert all(rows[n][0] == "cpu" for n, _ in empty.named_buffers()), (
    "claim: by default, buffers are created on the CPU"
)
assert rows["causal"][1] == 4096 * 4096, "claim: the mask takes 16 MiB for real"
assert torch.equal(empty.inv_freq, reference.inv_freq.cpu()), (
    "claim: __init__ computed the buffers' values"
)
# sphinx_gallery_end_ignore

# %%
# Three ways to fill it, and what each does to the buffers
# --------------------------------------------------------
# ``load_state_dict(..., assign=True)`` makes each parameter *be* the
# checkpoint's tensor and leaves the non-persistent buffers alone: they were
# computed by ``__init__``, so the model is complete. ``to_empty()`` followed by
# a load, the recipe for models built entirely on ``meta``, replaces *every*
# tensor with uninitialised memory, the correct buffers too, and the checkpoint
# cannot refill what it does not hold. accelerate's own
# ``load_checkpoint_and_dispatch`` reads a file and places the model on the
# devices of a ``device_map``.

with init_empty_weights():
    assigned = TinyLM().eval()
assigned.load_state_dict(on_device, assign=True)
assigned.to(device)  # the buffers, still on the CPU

with init_empty_weights():
    emptied = TinyLM().eval()
computed_table = emptied.inv_freq
emptied.to_empty(device=device)
replaced = emptied.inv_freq is not computed_table
with torch.no_grad():
    for buffer in (emptied.inv_freq, emptied.causal):
        buffer.fill_(True)  # a marker, to see whether the load writes them
emptied.load_state_dict(checkpoint)
kept_marker = bool((emptied.inv_freq == 1).all() and emptied.causal.all())

with tempfile.TemporaryDirectory() as folder:
    path = str(Path(folder) / "tiny_lm.pt")  # accelerate wants a str
    torch.save(checkpoint, path)
    with init_empty_weights():
        dispatched = TinyLM().eval()
    dispatched = load_checkpoint_and_dispatch(
        dispatched, path, device_map={"": str(device)}
    )

with torch.no_grad():
    for label, model in (
        ("assign=True", assigned),
        ("load_checkpoint_and_dispatch", dispatched),
    ):
        print(
            f"{label:29} computes what the original did: {torch.equal(model(ids), expected)}"
        )
print(
    "to_empty() replaced the computed buffers with new, uninitialised ones:", replaced
)
print("the load then left them as they were (the marker is still there):", kept_marker)
# sphinx_gallery_start_ignore
assert assigned.head.weight.data_ptr() == on_device["head.weight"].data_ptr(), (
    "claim: assign=True makes the parameter be the checkpoint's tensor"
)
with torch.no_grad():
    assert torch.equal(assigned(ids), expected), "claim: assign=True gives the model"
    assert torch.equal(dispatched(ids), expected), "claim: dispatch gives the model"
assert replaced, "claim: to_empty replaces the buffers"
assert kept_marker, "claim: the load does not write non-persistent buffers"
# sphinx_gallery_end_ignore

# %%
# So after ``to_empty()`` the model's own recipe must run again:
# ``reset_buffers()`` here, ``init_buffers`` in chapter 12.

emptied.reset_buffers()
with torch.no_grad():
    print("after reset_buffers():", torch.equal(emptied(ids), expected))
# sphinx_gallery_start_ignore
with torch.no_grad():
    assert torch.equal(emptied(ids), expected), "claim: reset_buffers repairs it"
# sphinx_gallery_end_ignore

# %%
# ``include_buffers=True``: nothing allocated, nothing computed
# -------------------------------------------------------------
# Asking for the buffers on ``meta`` too saves the mask's memory, but then
# ``__init__`` computes nothing: the tables exist only as shapes. A load writes
# the persistent ``logit_scale``; the non-persistent ones stay on ``meta``, and
# the first forward pass fails. accelerate's loader fails earlier: it moves the
# model to the ``device_map``'s device with ``.to()``, which cannot copy a tensor
# that has no data.

with init_empty_weights(include_buffers=True):
    all_meta = TinyLM().eval()
show_placement(all_meta)
meta_rows = placement(all_meta)
all_meta.load_state_dict(on_device, assign=True)
still_on_meta = [name for name, b in all_meta.named_buffers() if b.is_meta]
print("on meta after the load:", still_on_meta)
forward_error = None
try:
    with torch.no_grad():
        all_meta(ids)
except RuntimeError as error:
    forward_error = error
    show_error(error)

dispatch_error = None
with tempfile.TemporaryDirectory() as folder:
    path = str(Path(folder) / "tiny_lm.pt")  # accelerate wants a str
    torch.save(checkpoint, path)
    with init_empty_weights(include_buffers=True):
        model = TinyLM().eval()
    try:
        load_checkpoint_and_dispatch(model, path, device_map={"": str(device)})
    except NotImplementedError as error:
        dispatch_error = error
        show_error(error)
# sphinx_gallery_start_ignore
assert all(held == 0 for *_, held in meta_rows), "claim: nothing allocated"
assert still_on_meta == ["inv_freq", "causal"], "claim: non-persistent stay on meta"
assert forward_error is not None, "claim: the forward pass fails"
assert dispatch_error is not None, "claim: load_checkpoint_and_dispatch fails"
# sphinx_gallery_end_ignore

# %%
# The fix is the same as after ``to_empty()``: give the tables real memory on the
# model's device, then compute them.

all_meta.inv_freq = torch.empty_like(all_meta.inv_freq, device=device)
all_meta.causal = torch.empty_like(all_meta.causal, device=device)
all_meta.reset_buffers()
with torch.no_grad():
    print("after reset_buffers():", torch.equal(all_meta(ids), expected))
# sphinx_gallery_start_ignore
with torch.no_grad():
    assert torch.equal(all_meta(ids), expected), "claim: rebuilt, the model computes"
assert [n for n, _ in all_meta.named_buffers()] == [
    "inv_freq",
    "causal",
    "logit_scale",
], "claim: assigning a tensor to a buffer's name keeps it a buffer"
# sphinx_gallery_end_ignore

# %%
# Offloading: ``offload_buffers``
# -------------------------------
# When even the parameters do not fit, ``disk_offload`` keeps them in files and
# brings each layer's weights to the execution device for its forward pass.
# Buffers stay in memory, on the execution device, unless ``offload_buffers=True``;
# with it, this accelerate version offloads the buffers a ``state_dict`` holds
# and keeps the non-persistent ones in memory, on the execution device.

for offload_buffers in (False, True):
    model = TinyLM().eval()
    model.load_state_dict(checkpoint)
    with tempfile.TemporaryDirectory() as folder:
        model = disk_offload(
            model, folder, execution_device=device, offload_buffers=offload_buffers
        )
        with torch.no_grad():
            same = torch.equal(model(ids), expected)
        where = {name: b.device.type for name, b in model.named_buffers()}
        on = ", ".join(f"{name} on {kind}" for name, kind in where.items())
        print(f"offload_buffers={offload_buffers!s:5} {on}; same output: {same}")
        # sphinx_gallery_start_ignore
        assert same, "claim: the offloaded model computes the same"
        assert where["inv_freq"] == where["causal"] == device.type, (
            "claim: non-persistent buffers stay in memory, on the execution device"
        )
        assert (where["logit_scale"] == "meta") == offload_buffers, (
            "claim: offload_buffers=True offloads the saved buffer"
        )
        # sphinx_gallery_end_ignore

# %%
# What to take away
# -----------------
# - With accelerate's default, buffers are real from the start: non-persistent
#   tables are computed by ``__init__`` and survive a load with ``assign=True`` or
#   ``load_checkpoint_and_dispatch``, at the price of allocating them at once.
# - ``to_empty()`` throws those values away; so does ``include_buffers=True``,
#   before they ever existed. Either way, recompute the non-persistent buffers
#   (a ``reset_buffers``-style method that works on any device) before the first
#   forward pass.
# - A checkpoint never helps here: it holds no non-persistent buffer.
