r"""
Buffers, dtypes and memory
==========================

``module.half()`` and ``module.to(torch.bfloat16)`` cast parameters *and*
floating-point buffers, and leave bool and integer buffers alone. This chapter
shows that on a live module, measures what a rotary cos/sin table loses when
it is cast to bfloat16, and computes what a T x T causal mask costs as context
length grows, compared with not storing a mask at all.

.. note::

   Besides torch, this chapter needs matplotlib for its plot
   (``pip install matplotlib``).
"""

# %%
# Where this page ran
# -------------------

import copy
import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.bias import causal_lower_right

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
print(f"torch {torch.__version__}, device: {device}")
torch.manual_seed(123)

# %%
# What a dtype cast does to each buffer
# -------------------------------------
# One module with four buffers of different dtypes: a float mask (as in the
# book), a bool mask, integer position ids, and a float32 rotary table. (It has
# no ``forward``, nor has this chapter's other module: they only hold the
# tensors whose dtypes are compared.)


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

floating = {name for name, dtype in before.items() if dtype.startswith("float")}
for cast, after in (("float16", after_half), ("bfloat16", after_bf16)):
    assert all(
        after[name] == (cast if name in floating else before[name]) for name in before
    ), f"claim: a cast to {cast} reaches floating-point tensors only"
# sphinx_gallery_start_ignore
book_float_mask = torch.triu(torch.ones(8, 8, device=device), diagonal=1)
assert torch.equal(block.float_mask.float(), book_float_mask), (
    "claim: 0 and 1 survive the cast exactly"
)
# sphinx_gallery_end_ignore

# %%
# The floating-point buffers follow the cast, the bool and integer ones do not.
# Only the float mask changing is harmless (0 and 1 are exact in float16,
# bfloat16 and float32); the rotary table is another story.
#
# What bfloat16 does to a rotary table
# ------------------------------------
# bfloat16 keeps float32's range but only 8 significant bits (7 stored), where
# float32 has 24 and float16 11. A cos/sin table for 4,096 positions and head
# size 128, computed in float64 as reference:

reference = rotary_table(4096, 128, torch.float64)
table_errors = {}
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    error = (reference.to(dtype).to(torch.float64) - reference).abs()
    table_errors[dtype] = error.max().item()
    print(
        f"{dtype!s:15} max abs error {error.max().item():.2e}, mean {error.mean().item():.2e}"
    )
# sphinx_gallery_start_ignore
f32, f16, bf16 = (
    torch.finfo(d) for d in (torch.float32, torch.float16, torch.bfloat16)
)
assert (f32.eps, f16.eps, bf16.eps) == (2.0**-23, 2.0**-10, 2.0**-7), (
    "claim: float32, float16 and bfloat16 have 24, 11 and 8 significant bits"
)
assert 0.99 < bf16.max / f32.max <= 1, "claim: bfloat16 keeps float32's range"
assert (
    table_errors[torch.float32]
    < table_errors[torch.float16]
    < table_errors[torch.bfloat16]
), "claim: bfloat16 loses the most"
# sphinx_gallery_end_ignore

# %%
# What those errors do to a rotated query, as the largest error relative to the
# vector's length, over all 4,096 positions. For scale, the second column is
# what storing the exactly rotated query in that dtype costs anyway:

query = torch.randn(4096, 128, dtype=torch.float64)


def rotate(x, table):
    half = table.shape[-1] // 2
    cos, sin = table[:, :half], table[:, half:]
    x1, x2 = x[:, :half], x[:, half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def largest_relative_error(approx, exact):
    return ((approx - exact).norm(dim=-1) / exact.norm(dim=-1)).max().item()


exact = rotate(query, reference)
print(f"{'':15} {'cast table':>10} {'result in dtype':>16}")
table_costs = {}
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    cast_table = largest_relative_error(
        rotate(query, reference.to(dtype).to(torch.float64)), exact
    )
    rounded_result = largest_relative_error(exact.to(dtype).to(torch.float64), exact)
    table_costs[dtype] = (cast_table, rounded_result)
    print(f"{dtype!s:15} {cast_table:10.1e} {rounded_result:16.1e}")

for dtype in (torch.float16, torch.bfloat16):
    cast_table, rounded_result = table_costs[dtype]
    verdict = (
        "no more than"
        if cast_table <= rounded_result
        else f"{cast_table / rounded_result:.1f}x what"
    )
    print(f"{dtype}: casting the finished table costs {verdict} storing the result")
    print(f"  in {dtype} costs anyway.")

# %%
# Worse than casting a finished table is *computing* one in bfloat16, which
# happens when code rebuilds the table from a tensor that has already been
# cast. The positions themselves no longer fit in 8 significant bits:

positions_bf16 = torch.arange(4096).to(torch.bfloat16)
print("distinct positions out of 4,096 in bfloat16:", positions_bf16.unique().numel())
inv_freq = 1.0 / 10000 ** (torch.arange(0, 128, 2) / 128)
angles_bf16 = torch.outer(positions_bf16, inv_freq.to(torch.bfloat16))
table_bf16 = torch.cat([angles_bf16.cos(), angles_bf16.sin()], dim=-1)
error = (table_bf16.to(torch.float64) - reference).abs()
print(f"table computed in bfloat16: max abs error {error.max().item():.2f}")
assert error.max().item() > 100 * table_errors[torch.bfloat16], (
    "claim: computing a table in bfloat16 is far worse than casting a finished one"
)
# sphinx_gallery_start_ignore
exact_integers = torch.arange(2**8 + 2)
round_trip = exact_integers.to(torch.bfloat16).long()
assert torch.equal(round_trip[:-1], exact_integers[:-1]), (
    "claim: bfloat16's 8 significant bits hold every position up to 256"
)
assert round_trip[-1] != 2**8 + 1, "claim: position 257 no longer fits in bfloat16"
# sphinx_gallery_end_ignore

# %%
# So what matters is *when* the low precision enters. Build a table in float32
# (or float64) from the configuration, never from positions or frequencies that
# a cast has already reached. A finished table that follows the model's cast
# costs about what that dtype costs anyway (the sentences above say how much on
# this build). To keep one in float32 after a model-wide cast all the same,
# rebuild it after the cast: assigning a tensor to a buffer's name replaces the
# buffer and keeps it registered, and non-persistent.

kept = Block().to(device).to(torch.bfloat16)
kept.rope = rotary_table(8, 16).to(device)  # Block's defaults: context 8, dim 16
print("rope after the cast and the rebuild:", kept.rope.dtype)
print("still a buffer:", "rope" in dict(kept.named_buffers()))
print("still out of state_dict:", "rope" not in kept.state_dict())
assert kept.rope.dtype == torch.float32, "claim: a rebuilt table stays float32"
assert "rope" in dict(kept.named_buffers()), "claim: and it stays registered"
assert "rope" not in kept.state_dict(), "claim: and it stays non-persistent"
# sphinx_gallery_start_ignore
for dtype in (torch.float16, torch.bfloat16):
    cast_table, rounded_result = table_costs[dtype]
    assert cast_table <= 2 * rounded_result, (
        f"claim: casting a finished table costs about what {dtype} costs anyway"
    )
# sphinx_gallery_end_ignore

# %%
# Complex buffers: a cast that ``.half()`` skips
# ----------------------------------------------
# Llama-style code keeps its rotary table as one complex tensor, ``freqs_cis``
# (cos + i sin). ``.half()`` casts floating-point tensors only, so it leaves a
# complex buffer complex64. ``.to(torch.bfloat16)`` (or ``.to(torch.float16)``)
# casts complex tensors too, to a *real* dtype: it keeps the real part, the
# cosines, and discards the sines, with nothing but a ``UserWarning``, which
# torch issues once per process.


class ComplexRotary(nn.Module):
    def __init__(self, head_dim=8, context_length=4):
        super().__init__()
        inv_freq = 1.0 / 10000 ** (torch.arange(0, head_dim, 2) / head_dim)
        angles = torch.outer(torch.arange(context_length), inv_freq)
        freqs_cis = torch.polar(torch.ones_like(angles), angles)
        self.register_buffer("freqs_cis", freqs_cis, persistent=False)


rotary = ComplexRotary().to(device)
print("built as:          ", rotary.freqs_cis.dtype)
print("after .half():     ", copy.deepcopy(rotary).half().freqs_cis.dtype)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    to_bf16 = copy.deepcopy(rotary).to(torch.bfloat16)
print("after .to(bf16):   ", to_bf16.freqs_cis.dtype)
for warning in caught:
    print(
        f"  {warning.category.__name__}: {str(warning.message).split(' (Triggered')[0]}"
    )
if not caught:
    print("  no warning this time: torch warns once per process, and it already had")
kept_real = torch.equal(to_bf16.freqs_cis, rotary.freqs_cis.real.to(torch.bfloat16))
print("what is left is the real part (the cosines):", kept_real)
assert copy.deepcopy(rotary).half().freqs_cis.dtype == torch.complex64, (
    "claim: .half() leaves a complex buffer complex64"
)
assert to_bf16.freqs_cis.dtype == torch.bfloat16, "claim: .to(bf16) makes it real"
assert kept_real, "claim: the cast keeps the real part and discards the imaginary one"
# sphinx_gallery_start_ignore
complex_warnings = [
    w for w in caught if "discards the imaginary part" in str(w.message)
]
assert len(complex_warnings) == len(caught) <= 1, "claim: only a warning, at most one"
assert all(w.category is UserWarning for w in caught), "claim: it is a UserWarning"
with warnings.catch_warnings(record=True) as caught_again:
    warnings.simplefilter("always")
    to_f16 = copy.deepcopy(rotary).to(torch.float16)
assert to_f16.freqs_cis.dtype == torch.float16, "claim: .to(float16) makes it real too"
assert not caught_again, "claim: torch issues the warning once per process"
# sphinx_gallery_end_ignore

# %%
# Keep such a table complex (``.half()`` does) or rebuild it after the cast,
# as above.
#
# What the mask costs in memory
# -----------------------------
# A T x T mask takes T² elements per layer that holds one: 4 bytes each in
# float32, 1 byte as bool. ``scaled_dot_product_attention(..., is_causal=True)``
# stores no mask tensor: you keep none, and its fused kernels build none (a
# CPU build checks the one it runs), while the math fallback,
# ``SDPBackend.MATH``, builds a T x T one on every call. These numbers are
# computed, not allocated: torch reports the size of a mask on the ``meta``
# device, which holds no data.

lengths = [1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072]


def mask_bytes(length, dtype):
    return torch.empty(length, length, dtype=dtype, device="meta").nbytes


# sphinx_gallery_start_ignore
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode


class SquareTensors(TorchDispatchMode):
    """Records the T x T boolean tensors (masks) an operation makes (no output, no
    random numbers); the T x T attention scores are floats and do not count."""

    def __init__(self, length):
        super().__init__()
        self.length, self.made = length, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        square = isinstance(out, torch.Tensor) and out.shape[-2:] == (self.length,) * 2
        if square and out.dtype == torch.bool:
            self.made.append(str(func))
        return out


qkv = [torch.zeros(1, 2, 64, 8, device=device) for _ in range(3)]
with sdpa_kernel(SDPBackend.MATH), SquareTensors(64) as math_made:
    F.scaled_dot_product_attention(*qkv, is_causal=True)
assert math_made.made, "claim: the math fallback builds a T x T mask on every call"
if device.type == "cpu":
    with SquareTensors(64) as fused_made:
        F.scaled_dot_product_attention(*qkv, is_causal=True)
    assert not fused_made.made, (
        f"claim: the fused kernel builds none: {fused_made.made}"
    )
del qkv
# sphinx_gallery_end_ignore
float32_bytes, bool_bytes = (
    torch.empty(0, dtype=dtype).element_size() for dtype in (torch.float32, torch.bool)
)
assert (float32_bytes, bool_bytes) == (4, 1), "claim: 4 bytes in float32, 1 as bool"


def size(nbytes):
    return (
        f"{nbytes / 2**30:.0f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.0f} MiB"
    )


print(f"{'context':>8} {'float32 mask':>13} {'bool mask':>10}  is_causal=True")
for length in lengths:
    float32_mask = mask_bytes(length, torch.float32)
    bool_mask = mask_bytes(length, torch.bool)
    print(f"{length:>8,} {size(float32_mask):>13} {size(bool_mask):>10}  none stored")
    # sphinx_gallery_start_ignore
    assert float32_mask == 4 * bool_mask == 4 * length**2, (
        "claim: a T x T mask takes T² elements; bool is four times smaller"
    )
    # sphinx_gallery_end_ignore

# %%
# When the queries and the keys have the same length, ``is_causal=True`` gives
# the same result as an explicit mask; checked here on this build's device.
# Mind the mask's meaning: for
# ``scaled_dot_product_attention`` a boolean ``attn_mask`` is True where a query
# *may attend*, the opposite of the book's mask, whose 1s mark what
# ``masked_fill_`` hides. So the mask below is the lower triangle (``tril``),
# exactly the negation of the book's ``triu(..., diagonal=1)``; passed unchanged,
# the book's mask would hide the past and show the future.

q, k, v = (torch.randn(2, 4, 64, 32, device=device) for _ in range(3))
book_mask = torch.triu(torch.ones(64, 64, device=device), diagonal=1).bool()
mask = torch.ones(64, 64, dtype=torch.bool, device=device).tril()
assert torch.equal(mask, ~book_mask), "claim: the SDPA mask is the book's, negated"
explicit = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
implicit = F.scaled_dot_product_attention(q, k, v, is_causal=True)
with_book_mask = F.scaled_dot_product_attention(q, k, v, attn_mask=book_mask)
difference = (explicit - implicit).abs().max().item()
print(f"explicit tril mask vs is_causal=True: largest difference {difference:.1e}")
print(
    "book's mask passed unchanged gives the same output:",
    torch.allclose(with_book_mask, implicit, rtol=1e-4, atol=1e-4),
)
assert torch.allclose(explicit, implicit, rtol=1e-4, atol=1e-4), (
    "claim: is_causal=True gives the same result as an explicit tril mask"
)
assert not torch.allclose(with_book_mask, implicit, rtol=1e-4, atol=1e-4), (
    "claim: the book's mask, passed unchanged, computes something else"
)
# %%
# With fewer queries than keys, as when a cache holds the earlier keys,
# ``is_causal=True`` aligns its triangle with the *top-left* corner: query 0
# sees key 0 only. The 16 queries below are the last 16 of the 64 positions, so
# each should see every key up to its own position, the *lower-right*
# alignment: the last 16 rows of the full mask, or
# ``torch.nn.attention.bias.causal_lower_right``.

late_queries = q[:, :, -16:]
last_rows = mask[-16:]  # lower-right: query i sees keys 0 .. 48 + i
right = F.scaled_dot_product_attention(late_queries, k, v, attn_mask=last_rows)
causal_flag = F.scaled_dot_product_attention(late_queries, k, v, is_causal=True)
lower_right = F.scaled_dot_product_attention(
    late_queries, k, v, attn_mask=causal_lower_right(16, 64)
)
short_gap = (right - causal_flag).abs().max().item()
print(
    f"16 queries, 64 keys: is_causal=True vs the last 16 rows: difference {short_gap:.2f}"
)
print(
    "causal_lower_right(16, 64) matches the last 16 rows:",
    torch.allclose(lower_right, right, rtol=1e-4, atol=1e-4),
)
assert not torch.allclose(causal_flag, right, rtol=1e-4, atol=1e-4), (
    "claim: with fewer queries than keys, is_causal=True is not the causal mask"
)
assert torch.allclose(lower_right, right, rtol=1e-4, atol=1e-4), (
    "claim: causal_lower_right is the lower-right causal mask"
)
# sphinx_gallery_start_ignore
top_left = F.scaled_dot_product_attention(late_queries, k, v, attn_mask=mask[:16])
assert torch.allclose(causal_flag, top_left, rtol=1e-4, atol=1e-4), (
    "claim: is_causal=True aligns top-left"
)
first_key_only = torch.zeros(64, 64, dtype=torch.bool, device=device)
first_key_only[:, 0] = True
attends_first = F.scaled_dot_product_attention(q, k, v, attn_mask=first_key_only)
assert torch.allclose(attends_first, v[:, :, :1].expand_as(attends_first)), (
    "claim: True in SDPA's boolean attn_mask means 'may attend'"
)
# sphinx_gallery_end_ignore

# %%
# One more difference, on CUDA only: there, passing an explicit ``attn_mask``
# rules out the FlashAttention backend (``SDPBackend.FLASH_ATTENTION``), while
# ``is_causal=True`` does not. That is torch's rule for choosing a backend, see
# :func:`torch.nn.functional.scaled_dot_product_attention` and
# `torch.nn.attention.SDPBackend
# <https://docs.pytorch.org/docs/stable/generated/torch.nn.attention.SDPBackend.html>`__;
# its speed is not measured on this page.

# sphinx_gallery_start_ignore
if device.type == "cuda" and torch.backends.cuda.is_flash_attention_available():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q16, k16, v16 = (t.half() for t in (q, k, v))
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns why each backend is refused
        try:
            F.scaled_dot_product_attention(q16, k16, v16, is_causal=True)
        except RuntimeError:
            flash_causal = False
        else:
            flash_causal = True
        try:
            F.scaled_dot_product_attention(q16, k16, v16, attn_mask=mask)
        except RuntimeError:
            flash_masked = False
        else:
            flash_masked = True
    if flash_causal:  # this GPU runs FlashAttention at all
        assert not flash_masked, "claim: an explicit attn_mask rules out FlashAttention"
# sphinx_gallery_end_ignore

# %%
# Against a typical GPU
# ---------------------
# The plot marks 24 GiB, the memory of a typical consumer GPU, and the context
# length where one float32 mask, for one layer, no longer fits in it.

gib = 2**30
fits_until = int((24 * gib / float32_bytes) ** 0.5)  # largest T with 4 T² <= 24 GiB
# sphinx_gallery_start_ignore
assert mask_bytes(fits_until, torch.float32) <= 24 * gib, "claim: it fits up to T"
assert mask_bytes(fits_until + 1, torch.float32) > 24 * gib, "claim: not beyond T"
# sphinx_gallery_end_ignore
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
ax.set_title("Memory of one T x T causal mask; is_causal=True stores none")
ax.legend(loc="lower right")
plt.show()

print(f"a float32 mask fits in 24 GiB up to T = {fits_until:,} tokens")

# %%
# What to remember
# ----------------
# - ``.half()`` / ``.to(dtype)`` cast floating-point parameters and buffers;
#   bool and integer buffers keep their dtype.
# - Casting a finished rotary table with the model costs about what the new
#   dtype costs anyway; *computing* one in bfloat16 ruins it. Build tables in
#   float32 from the configuration, and rebuild them after a cast if they must
#   stay float32.
# - ``.half()`` leaves a complex buffer (``freqs_cis``) complex64;
#   ``.to(torch.bfloat16)`` keeps only its real part, with a single warning.
# - A boolean ``attn_mask`` for ``scaled_dot_product_attention`` is True where
#   attention is allowed: the negation of the book's ``masked_fill_`` mask.
# - ``is_causal=True`` equals the causal mask only when queries and keys have
#   the same length; with fewer queries, use ``causal_lower_right``.
# - A T x T mask grows with T²; a bool mask is four times smaller than float32,
#   and ``scaled_dot_product_attention(is_causal=True)`` stores none.
