r"""
What the mask costs at run time
===============================

Memory is one cost of a registered mask; time is another. This chapter times the
forward pass of one causal attention layer three ways: with the mask registered
as a buffer (the book's approach), with the mask rebuilt in every forward pass
(what people write to avoid buffers), and with
``scaled_dot_product_attention(is_causal=True)``, which needs no mask tensor. The
numbers are medians measured when this page was built, on the device named
below; on other hardware they will differ, and the conclusions printed at the
end are computed from these numbers, not written in advance.
"""

# %%
# Where this page ran
# -------------------

import os

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import benchmark

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
    def __init__(self, dim=256, heads=4, context_length=2048, mode="buffer"):
        super().__init__()
        self.heads, self.mode = heads, mode
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        if mode == "buffer":
            causal = torch.ones(context_length, context_length, dtype=torch.bool).triu(
                1
            )
            self.register_buffer("mask", causal, persistent=False)

    def forward(self, x):
        b, t, dim = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, dim // self.heads).unbind(2)
        q, k, v = (tensor.transpose(1, 2) for tensor in (q, k, v))
        if self.mode == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            if self.mode == "buffer":
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
print(
    "all three agree:", all(torch.allclose(outputs[0], o, atol=1e-4) for o in outputs)
)

# %%
# Timing
# ------
# ``torch.utils.benchmark.Timer`` warms up, synchronises the device where that
# matters, and repeats each measurement until it has at least 0.2 s of runs; we
# keep its median.

lengths = [128, 256, 512, 1024]
medians = {label: [] for label in layers}
for length in lengths:
    x = torch.randn(2, length, 256, device=device)
    for label, layer in layers.items():
        timer = benchmark.Timer(
            stmt="with torch.no_grad(): layer(x)",
            globals={"layer": layer, "x": x, "torch": torch},
        )
        medians[label].append(timer.blocked_autorange(min_run_time=0.2).median * 1e3)

print(f"{'tokens':>6}  " + "  ".join(f"{label:>26}" for label in layers))
for i, length in enumerate(lengths):
    print(
        f"{length:>6}  "
        + "  ".join(f"{medians[label][i]:>23.3f} ms" for label in layers)
    )

# %%
fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
for (label, values), marker in zip(medians.items(), "osD", strict=True):
    ax.plot(lengths, values, marker=marker, label=label)
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set_xlabel("sequence length (tokens)")
ax.set_ylabel("forward pass, median (ms)")
ax.set_title(f"One causal attention layer, batch 2, on {device}")
ax.legend()
plt.show()

# %%
# What these numbers say
# ----------------------
# Computed from the medians above, for the longest sequence measured:

longest = -1
buffer_ms = medians["registered mask buffer"][longest]
rebuilt_ms = medians["mask rebuilt each forward"][longest]
sdpa_ms = medians["sdpa is_causal=True"][longest]
print(f"at {lengths[longest]} tokens on {device}:")
print(f"  rebuilding the mask costs {rebuilt_ms / buffer_ms:.2f}x the buffered version")
print(
    f"  sdpa is_causal=True runs in {sdpa_ms / buffer_ms:.2f}x the buffered version's time"
)
fastest = min(layers, key=lambda label: medians[label][longest])
print(f"  fastest here: {fastest}")

# %%
# What to remember
# ----------------
# - A registered mask costs memory but no time to build; a mask rebuilt in every
#   forward pass costs the time printed above on this device.
# - ``scaled_dot_product_attention(is_causal=True)`` needs no mask tensor at all,
#   and on many devices it dispatches to fused kernels; whether it is the fastest
#   of the three on yours is a measurement, like the one above, not an assumption.
