r"""
What the mask costs at run time
===============================

Memory is one cost of a registered mask; time is another. This chapter times the
forward pass of one causal attention layer three ways: with the mask registered
as a buffer (the book's approach), with the mask rebuilt in every forward pass
(what people write to avoid buffers), and with
``scaled_dot_product_attention(is_causal=True)``, which stores no mask tensor. The
numbers are medians of repeated measurements taken when this page was built, on
the device named below, with their spread; on other hardware they will differ,
and the conclusions printed at the end are computed from these numbers, not
written in advance.
"""

# %%
# Where this page ran
# -------------------

import os
import statistics

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import benchmark

try:
    import matplotlib.pyplot as plt
except ModuleNotFoundError:
    msg = "This chapter needs matplotlib for its plot: pip install matplotlib"
    raise SystemExit(msg) from None

device = torch.device(
    os.environ.get("GUIDE_DEVICE")
    or torch.accelerator.current_accelerator(check_available=True)
    or "cpu"
)
print(
    f"torch {torch.__version__}, device: {device}, threads: {torch.get_num_threads()}"
)
torch.manual_seed(123)

# %%
# Three versions of the same layer
# --------------------------------
# All three compute the same causal attention over ``heads`` heads with the same
# weights; they differ only in how they mask.


class Attention(nn.Module):
    MODES = ("buffer", "rebuilt", "sdpa")

    def __init__(self, dim=256, heads=4, context_length=2048, mode="buffer"):
        super().__init__()
        if mode not in self.MODES:
            msg = (
                f"mode must be one of {', '.join(map(repr, self.MODES))}, not {mode!r}"
            )
            raise ValueError(msg)
        self.heads, self.mode, self.context_length = heads, mode, context_length
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        if mode == "buffer":  # True = hidden: the book's convention, for masked_fill
            n = context_length
            causal = torch.ones(n, n, dtype=torch.bool).triu(1)
            self.register_buffer("mask", causal, persistent=False)

    def reset_buffers(self):
        """Rebuild the mask, which no ``state_dict`` holds (after ``to_empty``)."""
        if self.mode == "buffer":
            n = self.context_length
            self.mask.copy_(torch.ones(n, n, dtype=torch.bool).triu(1))

    def forward(self, x):
        b, t, dim = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, dim // self.heads).unbind(2)
        q, k, v = (tensor.transpose(1, 2) for tensor in (q, k, v))
        if self.mode == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            if self.mode == "buffer":
                if t > self.context_length:
                    msg = (
                        f"{t} tokens do not fit the mask built for "
                        f"context_length={self.context_length}: build the layer "
                        f"with context_length={t} or more"
                    )
                    raise ValueError(msg)
                mask = self.mask[:t, :t]
            else:  # "rebuilt": a fresh mask on every call
                mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
            scores = (q @ k.transpose(-2, -1)) / (dim // self.heads) ** 0.5
            y = scores.masked_fill(mask, float("-inf")).softmax(dim=-1) @ v
        return y.transpose(1, 2).reshape(b, t, dim)


modes = {
    "registered mask buffer": "buffer",
    "mask rebuilt each forward": "rebuilt",
    "sdpa is_causal=True": "sdpa",
}
layers = {}
for label, mode in modes.items():
    torch.manual_seed(0)
    layers[label] = Attention(mode=mode).to(device).eval()

x = torch.randn(2, 256, 256, device=device)
with torch.no_grad():
    outputs = [layer(x) for layer in layers.values()]
agree = all(torch.allclose(outputs[0], o, rtol=1e-4, atol=1e-4) for o in outputs)
print("all three agree (to 1e-4):", agree)
assert agree, "claim: the three layers compute the same attention"
# sphinx_gallery_start_ignore
for _bad, _says in (
    (lambda: Attention(dim=8, heads=2, mode="mask"), "'buffer', 'rebuilt', 'sdpa'"),
    (lambda: layers["registered mask buffer"](x.new_zeros(1, 2049, 256)), "=2048"),
):
    try:
        _bad()
        _why = ""
    except ValueError as error:
        _why = str(error)
    assert _says in _why, (
        "claim: an unknown mode and a sequence past context_length are ValueErrors"
    )
del _bad, _says, _why
# sphinx_gallery_end_ignore

# %%
# When the queries are fewer than the keys
# ----------------------------------------
# ``mask[:t, :t]`` and ``is_causal=True`` both align the triangle to the top
# left: query ``i`` sees keys ``0 .. i``. That is right here, where the queries
# and the keys are the same ``t`` tokens. With a key/value cache (chapter 8) the
# ``t`` new queries come after ``past`` cached keys, at positions
# ``past .. past + t - 1``, and query ``i`` must see keys ``0 .. past + i``: the
# right slice is the rows ``past .. past + t - 1`` of the full mask,
# ``mask[past : past + t, : past + t]`` (in SDPA's terms,
# ``torch.nn.attention.bias.causal_lower_right``). Three queries after five
# cached keys, checked against attention written out one query at a time:

past, t = 5, 3
q = torch.randn(1, 1, t, 8, device=device)
k, v = (torch.randn(1, 1, past + t, 8, device=device) for _ in range(2))
scores = (q @ k.transpose(-2, -1)) / 8**0.5
full_mask = layers["registered mask buffer"].mask  # True = hidden
right_slice = full_mask[past : past + t, : past + t]
with_slice = scores.masked_fill(right_slice, float("-inf")).softmax(dim=-1) @ v
top_left = F.scaled_dot_product_attention(q, k, v, is_causal=True)
one_at_a_time = torch.cat(
    [
        F.softmax(scores[..., i : i + 1, : past + i + 1], dim=-1)
        @ v[..., : past + i + 1, :]
        for i in range(t)
    ],
    dim=-2,
)
slice_right = torch.allclose(with_slice, one_at_a_time, rtol=1e-4, atol=1e-5)
is_causal_right = torch.allclose(top_left, one_at_a_time, rtol=1e-4, atol=1e-5)
print("mask[past : past + t, : past + t] matches the explicit attention:", slice_right)
print(
    "is_causal=True (top-left) matches the explicit attention:        ", is_causal_right
)
assert slice_right, (
    "claim: with a cache, the mask's rows past .. past + t - 1 are right"
)
assert not is_causal_right, "claim: the top-left triangle is wrong with a cache"
# sphinx_gallery_start_ignore
from torch.nn.attention.bias import causal_lower_right

assert torch.allclose(
    F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(t, past + t)),
    one_at_a_time,
    rtol=1e-4,
    atol=1e-5,
), "claim: causal_lower_right is the right alignment"
assert torch.equal(full_mask[:t, :t], full_mask[past : past + t, past : past + t]), (
    "claim: mask[:t, :t] is the same triangle, aligned top-left"
)
# sphinx_gallery_end_ignore

# %%
# Timing
# ------
# ``torch.utils.benchmark.Timer`` warms up, synchronises an accelerator before
# reading the clock, and repeats the statement until it has at least 0.1 s of
# runs; its median is one measurement. Each layer is measured ``REPEATS`` times,
# the three layers taking turns so that a slow moment of a shared machine hits
# all three alike; the table gives the median of those measurements and their
# range. The timer runs on one thread, its default, whatever torch would use
# here (printed at the top): a choice, so that the figures compare the three
# layers rather than how each spreads over cores.

REPEATS = 5
threads = 1  # benchmark.Timer's default, passed explicitly to name it
lengths = [128, 256, 512, 1024]
runs = {label: [[] for _ in lengths] for label in layers}  # ms, per length
for i, length in enumerate(lengths):
    x = torch.randn(2, length, 256, device=device)
    for _ in range(REPEATS):
        for label, layer in layers.items():
            timer = benchmark.Timer(
                stmt="with torch.no_grad(): layer(x)",
                globals={"layer": layer, "x": x, "torch": torch},
                num_threads=threads,
            )
            measurement = timer.blocked_autorange(min_run_time=0.1)
            runs[label][i].append(measurement.median * 1e3)
# sphinx_gallery_start_ignore
import inspect

assert measurement.task_spec.num_threads == threads, "claim: timed on one thread"
assert inspect.signature(benchmark.Timer).parameters["num_threads"].default == 1, (
    "claim: one thread is the Timer's default"
)
assert "synchronize" in inspect.getsource(benchmark.utils.timer.timer), (
    "claim: the default timer synchronises an accelerator"
)
# sphinx_gallery_end_ignore
medians = {
    label: [statistics.median(r) for r in values] for label, values in runs.items()
}

timer_threads = measurement.task_spec.num_threads
short = dict(zip(layers, ("buffer", "rebuilt", "sdpa"), strict=True))


def ms(value):
    """A time in ms with about four significant digits, and always a decimal point."""
    decimals = 3 if value < 10 else 2 if value < 100 else 1
    return f"{value:.{decimals}f}"


print(f"timer threads: {timer_threads} (torch here: {torch.get_num_threads()})")
for label, name in short.items():
    print(f"{name:>8}: {label}")
print(f"{REPEATS} measurements per cell: median [range], ms")
cells = {
    label: [
        f"{ms(medians[label][i])} [{ms(min(r))}-{ms(max(r))}]"
        for i, r in enumerate(values)
    ]
    for label, values in runs.items()
}
width = 22  # fixed, so the header reads the same whatever was measured
print(f"{'tokens':>6}  " + "  ".join(f"{short[label]:>{width}}" for label in layers))
for i, length in enumerate(lengths):
    print(
        f"{length:>6}  " + "  ".join(f"{cells[label][i]:>{width}}" for label in layers)
    )

# %%
fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
for (label, values), marker in zip(medians.items(), "osD", strict=True):
    lows = [min(r) for r in runs[label]]
    highs = [max(r) for r in runs[label]]
    (line,) = ax.plot(lengths, values, marker=marker, label=label)
    ax.fill_between(lengths, lows, highs, color=line.get_color(), alpha=0.2)
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set_xlabel("sequence length (tokens)")
ax.set_ylabel("forward pass, ms (median, range shaded)")
plural = "s" if threads != 1 else ""
ax.set_title(
    f"One causal attention layer, batch 2, on {device}, {threads} thread{plural}"
)
ax.legend()
plt.show()

# %%
# What these numbers say
# ----------------------
# Computed from the measurements above, for the longest sequence. A difference
# counts as measured only when the two ranges of repeated measurements do not
# overlap; otherwise this page says there was no measurable difference.

longest = -1


def compare(label, against="registered mask buffer"):
    """The sentence these measurements support about ``label`` against ``against``."""
    mine, theirs = runs[label][longest], runs[against][longest]
    ratio = medians[label][longest] / medians[against][longest]
    if min(mine) > max(theirs):
        verdict = "slower"
    elif max(mine) < min(theirs):
        verdict = "faster"
    else:
        verdict = "no measurable difference (ranges overlap)"
    return verdict, f"{label}: {ratio:.2f}x the {short[against]}'s median, {verdict}"


print(f"at {lengths[longest]} tokens on {device}, timer threads {threads}:")
verdicts = {}
for label in ("mask rebuilt each forward", "sdpa is_causal=True"):
    verdicts[label], sentence = compare(label)
    print(f"  {sentence}")
fastest = min(layers, key=lambda label: medians[label][longest])
print(f"  lowest median here: {fastest}")

# %%
# What to remember
# ----------------
# - A registered mask costs memory, built once; a mask rebuilt in every forward
#   pass costs building time on every call, which may or may not be measurable
#   next to the attention itself: the verdict above is this device's.
# - ``scaled_dot_product_attention(is_causal=True)`` stores no mask tensor at all,
#   and torch picks the kernel it runs on each device; whether it is the fastest
#   of the three on yours is a measurement, like the one above, not an assumption.
# - ``mask[:t, :t]`` and ``is_causal=True`` are right only while the queries and
#   the keys are the same tokens; after ``past`` cached keys, take
#   ``mask[past : past + t, : past + t]`` (or ``causal_lower_right``).
# - Time with repeats and look at the spread before concluding, and say how many
#   threads the timer used: ``torch.utils.benchmark.Timer`` uses one unless told.
