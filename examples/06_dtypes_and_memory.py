r"""
Buffers, dtypes and memory
==========================

``module.half()`` and ``module.to(torch.bfloat16)`` cast parameters *and*
floating-point buffers, and leave bool and integer buffers alone. This chapter
shows that on a live module, measures what a rotary cos/sin table loses when
it is cast to bfloat16, and computes what a T x T causal mask costs as context
length grows, compared with not storing a mask at all.
"""

# %%
# Where this page ran
# -------------------

import os

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn

device = torch.device(
    os.environ.get("GUIDE_DEVICE")
    or torch.accelerator.current_accelerator(check_available=True)
    or "cpu"
)
print(f"torch {torch.__version__}, device: {device}")
torch.manual_seed(123)

# %%
# What a dtype cast does to each buffer
# -------------------------------------
# One module with four buffers of different dtypes: a float mask (as in the
# book), a bool mask, integer position ids, and a float32 rotary table.


def rotary_table(context_length, head_dim, dtype=torch.float32):
    inv_freq = 1.0 / 10000 ** (
        torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim
    )
    angles = torch.outer(torch.arange(context_length, dtype=torch.float64), inv_freq)
    return torch.cat([angles.cos(), angles.sin()], dim=-1).to(dtype)


class Block(nn.Module):
    def __init__(self, dim=16, context_length=8):
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        ones = torch.ones(context_length, context_length)
        self.register_buffer("float_mask", torch.triu(ones, diagonal=1))
        self.register_buffer("bool_mask", torch.triu(ones, diagonal=1).bool())
        self.register_buffer("position_ids", torch.arange(context_length))
        self.register_buffer(
            "rope", rotary_table(context_length, dim), persistent=False
        )


def dtypes(module):
    tensors = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    return {name: str(t.dtype).removeprefix("torch.") for name, t in tensors.items()}


block = Block().to(device)
before = dtypes(block)
after_half = dtypes(block.half())
after_bf16 = dtypes(Block().to(device).to(torch.bfloat16))
print(f"{'tensor':13} {'built as':9} {'.half()':9} .to(torch.bfloat16)")
for name in before:
    print(f"{name:13} {before[name]:9} {after_half[name]:9} {after_bf16[name]}")

# %%
# The floating-point buffers follow the cast, the bool and integer ones do not.
# Only the float mask changing is harmless (0 and 1 are exact in every float
# format); the rotary table is another story.
#
# What bfloat16 does to a rotary table
# ------------------------------------
# bfloat16 keeps float32's range but only 8 bits of mantissa. A cos/sin table
# for 4,096 positions and head size 128, computed in float64 as reference:

reference = rotary_table(4096, 128, torch.float64)
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    error = (reference.to(dtype).to(torch.float64) - reference).abs()
    print(
        f"{dtype!s:15} max abs error {error.max().item():.2e}, mean {error.mean().item():.2e}"
    )

# %%
# What those errors do to a rotated query, as the largest error relative to the
# vector's length, over all 4,096 positions:

query = torch.randn(4096, 128, dtype=torch.float64)


def rotate(x, table):
    cos, sin = table[:, :64], table[:, 64:]
    x1, x2 = x[:, :64], x[:, 64:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


exact = rotate(query, reference)
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    approx = rotate(query, reference.to(dtype).to(torch.float64))
    relative = ((approx - exact).norm(dim=-1) / exact.norm(dim=-1)).max()
    print(
        f"{dtype!s:15} largest relative error of a rotated query {relative.item():.1e}"
    )

# %%
# Worse than casting a finished table is *computing* one in bfloat16, which
# happens when code rebuilds the table from a tensor that has already been
# cast. The positions themselves no longer fit in 8 bits of mantissa:

positions_bf16 = torch.arange(4096).to(torch.bfloat16)
print("distinct positions out of 4,096 in bfloat16:", positions_bf16.unique().numel())
inv_freq = 1.0 / 10000 ** (torch.arange(0, 128, 2) / 128)
angles_bf16 = torch.outer(positions_bf16, inv_freq.to(torch.bfloat16))
table_bf16 = torch.cat([angles_bf16.cos(), angles_bf16.sin()], dim=-1)
error = (table_bf16.to(torch.float64) - reference).abs()
print(f"table computed in bfloat16: max abs error {error.max().item():.2f}")

# %%
# Which is why some model code builds such tables in float32, keeps them
# non-persistent, and casts the *result* of the rotation rather than the table,
# or recomputes the table after a dtype cast.
#
# What the mask costs in memory
# -----------------------------
# A T x T mask takes T² elements per layer that holds one: 4 bytes each in
# float32, 1 byte as bool. ``scaled_dot_product_attention(..., is_causal=True)``
# needs no mask tensor at all. These numbers are computed, not allocated:

lengths = [1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072]


def size(nbytes):
    return (
        f"{nbytes / 2**30:.0f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.0f} MiB"
    )


print(f"{'context':>8} {'float32 mask':>13} {'bool mask':>10}  is_causal=True")
for length in lengths:
    print(
        f"{length:>8,} {size(4 * length**2):>13} {size(length**2):>10}  no mask tensor"
    )

# %%
# ``is_causal=True`` gives the same result as an explicit mask; checked here on
# this build's device:

q, k, v = (torch.randn(2, 4, 64, 32, device=device) for _ in range(3))
mask = torch.ones(64, 64, dtype=torch.bool, device=device).tril()
explicit = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
implicit = F.scaled_dot_product_attention(q, k, v, is_causal=True)
print("same output:", torch.allclose(explicit, implicit, atol=1e-4))

# %%
# Against a typical GPU
# ---------------------
# The plot marks 24 GiB, the memory of a typical consumer GPU, and the context
# length where one float32 mask, for one layer, no longer fits in it.

gib = 2**30
fits_until = int((24 * gib / 4) ** 0.5)  # largest T with 4 * T**2 <= 24 GiB
xs = torch.logspace(10, 17, 200, base=2)

fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
ax.plot(xs, 4 * xs**2 / gib, label="float32 mask (4 bytes per entry)", color="#e15759")
ax.plot(xs, xs**2 / gib, label="bool mask (1 byte per entry)", color="#4e79a7")
ax.axhline(24, color="0.4", linestyle="--", linewidth=1)
ax.text(xs[0], 30, "24 GiB: a typical consumer GPU", color="0.3")
ax.axvline(fits_until, color="#e15759", linestyle=":", linewidth=1)
ax.annotate(
    f"float32 mask alone exceeds 24 GiB\nbeyond {fits_until:,} tokens",
    xy=(fits_until, 24),
    xytext=(2**10.2, 1.5),
    arrowprops={"arrowstyle": "->", "color": "0.3"},
)
ax.set_xscale("log", base=2)
ax.set_xticks(lengths, [f"{length // 1024}k" for length in lengths])
ax.set_yscale("log")
ax.set_xlabel("context length T (tokens)")
ax.set_ylabel("memory per layer (GiB)")
ax.set_title("Memory of one T x T causal mask; is_causal=True needs none")
ax.legend(loc="lower right")
plt.show()

print(f"a float32 mask fits in 24 GiB up to T = {fits_until:,} tokens")

# %%
# What to remember
# ----------------
# - ``.half()`` / ``.to(dtype)`` cast floating-point parameters and buffers;
#   bool and integer buffers keep their dtype.
# - Casting a rotary table to bfloat16 costs precision that the measured errors
#   above quantify; build such tables in float32 and keep them so, or recompute.
# - A T x T mask grows with T²; a bool mask is four times smaller than float32,
#   and ``scaled_dot_product_attention(is_causal=True)`` needs none.
