r"""
Caches in LLM code
==================

A language model generating text keeps two kinds of tensor that are neither
weights nor data: a rotary-embedding table computed once from the configuration,
and a key/value cache that grows with every generated token. Both must live on
the model's device, and neither belongs in a checkpoint. This chapter builds a
small GPT-style model that holds both as non-persistent buffers, checks the
cached attention against the uncached one for prompts fed in chunks of any size,
generates a few tokens with the cache, and shows what a dtype cast does to
each buffer.
"""

# %%
# Where this page ran
# -------------------

import copy
import os
import textwrap

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.bias import causal_lower_right

# sphinx_gallery_thumbnail_path = "_thumbnails/08_llm_caches.png"

device = torch.device(
    os.environ.get("GUIDE_DEVICE")
    or torch.accelerator.current_accelerator(check_available=True)
    or "cpu"
)
print(f"torch {torch.__version__}, device: {device}")
torch.manual_seed(123)

# %%
# A rotary table and a key/value cache as buffers
# -----------------------------------------------
# ``Rotary`` builds cos/sin tables for every position up to the context length,
# in float32, and registers them with ``persistent=False``: the configuration
# rebuilds them (bit for bit on the same device). ``Attention`` preallocates its cache for the whole
# context (``k_cache``, ``v_cache``) and fills it position by position. It also
# keeps a boolean causal mask as a buffer, in the convention of
# ``scaled_dot_product_attention``: ``True`` means *may attend* (the book's mask
# is the opposite, ``True`` where a score is hidden). A chunk of ``t`` new
# tokens after ``earlier`` cached ones takes rows ``earlier .. earlier + t - 1``
# of it, so each new token sees the cache and the new tokens up to its own
# position.
#
# The cache holds ``max_batch_size`` sequences (1 unless you say otherwise) and
# is for inference only: ``use_cache=True`` refuses to run with gradients on,
# and a batch larger than the cache, with errors that say what to do (both shown
# further down). Training uses ``use_cache=False``, which never touches the
# cache. ``reset_buffers()`` rebuilds every non-persistent buffer, for instance
# after ``to_empty()`` on a model built on the ``meta`` device.


class Rotary(nn.Module):
    def __init__(self, head_dim, context_length):
        super().__init__()
        self.head_dim, self.context_length = head_dim, context_length
        cos, sin = self.table()
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def reset_buffers(self):
        """Rebuild the tables in float32 (after ``to_empty``, or after a cast)."""
        self.cos, self.sin = self.table(self.cos.device)

    def table(self, device=None):
        """cos and sin of every position's angles, computed in float32."""
        inv_freq = 1.0 / 10000 ** (
            torch.arange(0, self.head_dim, 2, device=device) / self.head_dim
        )
        angles = torch.outer(torch.arange(self.context_length, device=device), inv_freq)
        return angles.cos(), angles.sin()

    def forward(self, x, start):
        cos = self.cos[start : start + x.shape[-2]]
        sin = self.sin[start : start + x.shape[-2]]
        x1, x2 = x.chunk(2, dim=-1)
        # Rotated in the table's dtype, returned in x's (they differ after the
        # float32 table is restored in a half-precision model, further down).
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, dim, heads, context_length, max_batch_size=1):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.context_length, self.max_batch_size = context_length, max_batch_size
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.rotary = Rotary(self.head_dim, context_length)
        shape = (max_batch_size, heads, context_length, self.head_dim)
        self.register_buffer("k_cache", torch.zeros(shape), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape), persistent=False)
        # True = may attend, the convention of SDPA's boolean attn_mask.
        causal = torch.ones(context_length, context_length, dtype=torch.bool).tril()
        self.register_buffer("causal", causal, persistent=False)

    def reset_buffers(self):
        """Empty caches and a fresh mask (after ``to_empty``, or between prompts)."""
        self.k_cache.zero_()
        self.v_cache.zero_()
        n = self.context_length
        self.causal.copy_(torch.ones(n, n, dtype=torch.bool).tril())

    def check_cache(self, b):
        """Refuse what the cache cannot hold, with a message that says what to do."""
        if torch.is_grad_enabled():
            msg = (
                "the key/value cache is for inference only: call the model with "
                "use_cache=True under torch.no_grad() or torch.inference_mode(), "
                "and train with use_cache=False"
            )
            raise RuntimeError(msg)
        if b > self.max_batch_size:
            msg = (
                f"a batch of {b} does not fit the cache, allocated for "
                f"max_batch_size={self.max_batch_size}: build the model with "
                f"max_batch_size={b} or more, or feed batches of at most "
                f"{self.max_batch_size}"
            )
            raise ValueError(msg)

    def forward(self, x, start=0, use_cache=False):
        b, t, dim = x.shape
        if start + t > self.context_length:  # with or without the cache
            msg = (
                f"positions {start}..{start + t - 1} do not fit "
                f"context_length={self.context_length} (the rotary table, the mask "
                "and the cache end there): feed fewer tokens or build a longer model"
            )
            raise ValueError(msg)
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, self.head_dim).unbind(2)
        q, k, v = (tensor.transpose(1, 2) for tensor in (q, k, v))
        q, k = self.rotary(q, start), self.rotary(k, start)
        if use_cache:
            self.check_cache(b)
            self.k_cache[:b, :, start : start + t] = k
            self.v_cache[:b, :, start : start + t] = v
            k, v = self.k_cache[:b, :, : start + t], self.v_cache[:b, :, : start + t]
        # The t queries sit at positions earlier .. earlier + t - 1 of the keys;
        # each may see the keys up to its own position.
        earlier = k.shape[-2] - t  # keys cached before this chunk (0 without cache)
        mask = self.causal[earlier : earlier + t, : earlier + t]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(b, t, dim))


class Block(nn.Module):
    def __init__(self, dim, heads, context_length, max_batch_size=1):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, context_length, max_batch_size)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
        )

    def forward(self, x, start=0, use_cache=False):
        x = x + self.attn(self.norm1(x), start, use_cache)
        return x + self.mlp(self.norm2(x))


class TinyGPT(nn.Module):
    def __init__(
        self, vocab=100, dim=32, heads=4, layers=2, context_length=64, max_batch_size=1
    ):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(
            Block(dim, heads, context_length, max_batch_size) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def reset_buffers(self):
        """Rebuild every non-persistent buffer: rotary tables, masks, empty caches."""
        for module in self.modules():
            if isinstance(module, Rotary | Attention):
                module.reset_buffers()

    def forward(self, tokens, start=0, use_cache=False):
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, start, use_cache)
        return self.head(self.norm(x))


# %%
# Why not ``is_causal=True``
# --------------------------
# It is tempting to pass ``is_causal=True`` and no mask. With a cache, the queries
# are the last ``t`` positions and the keys are all ``earlier + t``;
# ``is_causal=True`` aligns its triangle to the *top left*, as if the queries
# were the first ``t`` positions. Three queries against five keys, on this
# build's device:

q, k, v = (torch.randn(1, 1, n, 8, device=device) for n in (3, 5, 5))
top_left = torch.ones(3, 5, dtype=torch.bool, device=device).tril()
bottom_right = torch.ones(3, 5, dtype=torch.bool, device=device).tril(diagonal=2)
is_causal = F.scaled_dot_product_attention(q, k, v, is_causal=True)
top_left_out = F.scaled_dot_product_attention(q, k, v, attn_mask=top_left)
bottom_right_out = F.scaled_dot_product_attention(q, k, v, attn_mask=bottom_right)
print("rows each query may attend to, the cache's way:")
print(bottom_right.int())
is_top_left = torch.allclose(is_causal, top_left_out, rtol=1e-4, atol=1e-5)
is_bottom_right = torch.allclose(is_causal, bottom_right_out, rtol=1e-4, atol=1e-5)
print("is_causal=True matches the top-left triangle:", is_top_left)
print("is_causal=True matches the cache's triangle: ", is_bottom_right)
assert is_top_left, "claim: SDPA's is_causal=True aligns its triangle top-left"
assert not is_bottom_right, "claim: is_causal=True is wrong for a chunk after a cache"

# %%
# PyTorch names the two alignments in ``torch.nn.attention.bias``:
# ``causal_upper_left`` is what ``is_causal=True`` does, and
# ``causal_lower_right`` is the cache's triangle. Passed as ``attn_mask``, the
# latter gives what the chapter's mask slice gives (rows ``2 .. 4`` of a 5 x 5
# lower triangle, for three queries after two cached keys):

lower_right = causal_lower_right(3, 5)
lower_right_out = F.scaled_dot_product_attention(q, k, v, attn_mask=lower_right)
sliced = torch.ones(5, 5, dtype=torch.bool, device=device).tril()[2:5, :5]
sliced_out = F.scaled_dot_product_attention(q, k, v, attn_mask=sliced)
agrees = torch.allclose(lower_right_out, sliced_out, rtol=1e-4, atol=1e-5)
print("causal_lower_right(3, 5) agrees with the mask slice [2:5, :5]:", agrees)
assert agrees, "claim: causal_lower_right is the cache's triangle, the slice's"
# sphinx_gallery_start_ignore
from torch.nn.attention.bias import causal_upper_left

assert torch.allclose(
    F.scaled_dot_product_attention(q, k, v, attn_mask=causal_upper_left(3, 5)),
    is_causal,
    rtol=1e-4,
    atol=1e-5,
), "claim: causal_upper_left is what is_causal=True does"
# sphinx_gallery_end_ignore

# %%
# The caches follow ``.to(device)``
# ---------------------------------

model = TinyGPT().to(device).eval()
for name, buffer in model.named_buffers():
    if name.startswith("blocks.0"):
        print(f"{name:26} {tuple(buffer.shape)!s:16} {buffer.device}")
saved_buffers = [n for n, _ in model.named_buffers() if n in model.state_dict()]
print("buffers in state_dict:", saved_buffers)
# sphinx_gallery_start_ignore
assert all(b.device.type == device.type for b in model.buffers()), (
    "claim: the caches follow .to(device)"
)
assert saved_buffers == [], "claim: persistent=False keeps them out of state_dict"
assert model.blocks[0].attn.k_cache.shape[2] == 64, "claim: cache sized for context"
# sphinx_gallery_end_ignore

# %%
# The cache checked against no cache
# ----------------------------------
# Ten tokens fed in chunks, each chunk attending to the cache filled by the
# ones before, must give the same logits as the whole sequence at once without
# a cache, whatever the chunk sizes: one token at a time, a prefill of three
# then two, or uneven chunks. The largest logit difference for each pattern:

tokens = torch.randint(0, 100, (1, 10), device=device)
with torch.no_grad():
    reference = model(tokens)


@torch.no_grad()
def chunked(model, tokens, sizes):
    pieces, start = [], 0
    for size in sizes:
        pieces.append(model(tokens[:, start : start + size], start, use_cache=True))
        start += size
    return torch.cat(pieces, dim=1)


chunk_differences = {}
for sizes in [(10,), (1,) * 10, (3, 2, 5), (5, 1, 4), (2, 2, 2, 2, 2), (9, 1)]:
    difference = (chunked(model, tokens, sizes) - reference).abs().max().item()
    chunk_differences[sizes] = difference
    print(f"chunks {sizes!s:33} largest logit difference {difference:.1e}")
assert all(d < 1e-4 for d in chunk_differences.values()), (
    "claim: the cached attention matches the uncached one for any chunk sizes"
)

# %%
# The cache is for inference
# --------------------------
# Training feeds whole sequences with ``use_cache=False`` and never touches the
# cache: one optimizer step on a copy of the model shows it trains, and leaves
# the cache as it was. The cache refuses two calls: one with gradients on and a
# batch larger than the ``max_batch_size`` it was built for. Without the first
# refusal, a write under autograd makes the cache part of the graph (after one
# chunk ``k_cache.grad_fn`` is a ``CopySlices`` and the model no longer
# deep-copies); one backward over two chunks then fails, because the second
# chunk's in-place write changed the cache the first chunk saved for its
# gradient, and a backward per chunk fails on the second chunk, which runs back
# through the first chunk's graph, already freed. What each refusal says:

trainee = copy.deepcopy(model).train()
# sphinx_gallery_start_ignore
buffers_before = {name: b.clone() for name, b in trainee.named_buffers()}
# sphinx_gallery_end_ignore
optimizer = torch.optim.SGD(trainee.parameters(), lr=0.1)
head_before = trainee.head.weight.detach().clone()
logits = trainee(tokens[:, :-1])  # use_cache=False: the whole sequence at once
loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
loss.backward()
optimizer.step()
moved = not torch.equal(head_before, trainee.head.weight)
print(f"one step without the cache: loss {loss.item():.3f}, weights moved: {moved}")
assert moved, "claim: the uncached path trains"
# sphinx_gallery_start_ignore
assert all(torch.equal(b, buffers_before[n]) for n, b in trainee.named_buffers()), (
    "claim: use_cache=False never touches the cache"
)
del buffers_before
# sphinx_gallery_end_ignore

refusals = {}
for label, call in (
    ("use_cache=True with gradients on", lambda: trainee(tokens, use_cache=True)),
    ("a batch of 2, cache for 1", lambda: chunked(model, tokens.repeat(2, 1), (10,))),
):
    try:
        call()
    except (RuntimeError, ValueError) as error:
        refusals[label] = f"{type(error).__name__}: {error}"
    print(textwrap.fill(f"{label}: {refusals.get(label, 'ran')}", width=88))
    print()
assert refusals.keys() == {
    "use_cache=True with gradients on",
    "a batch of 2, cache for 1",
}, "claim: the cache refuses gradients and batches beyond max_batch_size"
# sphinx_gallery_start_ignore
assert refusals["a batch of 2, cache for 1"].startswith("ValueError"), (
    "claim: a batch beyond max_batch_size is a ValueError"
)
assert all(b.is_leaf and b.grad_fn is None for b in trainee.buffers()), (
    "claim: a refused call leaves no graph in the buffers"
)
_ = copy.deepcopy(trainee)  # would fail on a buffer that carries a graph


def _unguarded_copy():
    """A training copy whose caches skip the refusals (what the prose describes)."""
    bare = copy.deepcopy(model).train()
    for block in bare.blocks:
        block.attn.check_cache = lambda *_: None
    return bare


_bare = _unguarded_copy()
_logits = torch.cat(
    [_bare(tokens[:, :4], 0, use_cache=True), _bare(tokens[:, 4:], 4, use_cache=True)],
    dim=1,
)
try:
    _logits.sum().backward()
    _why = ""
except RuntimeError as error:
    _why = str(error)
assert "modified by an inplace operation" in _why, (
    "claim: one backward over two cached chunks fails on the in-place cache write"
)
_bare = _unguarded_copy()
_bare(tokens[:, :4], 0, use_cache=True).sum().backward()
assert type(_bare.blocks[0].attn.k_cache.grad_fn).__name__ == "CopySlices", (
    "claim: after one chunk under grad, k_cache.grad_fn is a CopySlices"
)
try:
    copy.deepcopy(_bare)
    _why = ""
except RuntimeError as error:
    _why = str(error)
assert "graph leaves" in _why, "claim: a cache written under grad stops deepcopy"
try:
    _bare(tokens[:, 4:], 4, use_cache=True).sum().backward()
    _why = ""
except RuntimeError as error:
    _why = str(error)
assert "backward through the graph a second time" in _why, (
    "claim: a backward per chunk fails on the second chunk"
)
with torch.no_grad():
    for _use_cache, _start, _t in ((False, 0, 65), (True, 60, 5)):
        try:
            model(
                torch.zeros(1, _t, dtype=torch.long, device=device), _start, _use_cache
            )
            _why = ""
        except ValueError as error:
            _why = str(error)
        assert "do not fit context_length=64" in _why, (
            "claim: both paths refuse positions past context_length with a ValueError"
        )
del _bare, _logits, _why, _use_cache, _start, _t
with torch.random.fork_rng(devices=[]):  # leaves the global RNG as it was
    pair = TinyGPT(max_batch_size=2)
pair.load_state_dict(model.state_dict())
pair = pair.to(device).eval()
two = torch.cat([tokens, tokens.flip(1)])
with torch.no_grad():
    pair_gap = (chunked(pair, two, (3, 7)) - pair(two)).abs().max().item()
assert pair_gap < 1e-4, "claim: max_batch_size=2 caches a batch of two correctly"
# sphinx_gallery_end_ignore

# %%
# Generating with the cache
# -------------------------
# The prompt goes through once and fills the cache for its positions; each new
# token then runs alone, attending to the cached keys and values. Greedy
# decoding, untrained weights: the tokens mean nothing, the mechanics are real.

prompt = torch.tensor([[11, 42, 7, 3, 99]], device=device)


@torch.no_grad()
def generate_cached(model, prompt, new_tokens):
    logits = model(prompt, start=0, use_cache=True)
    tokens, steps = prompt, []
    for _ in range(new_tokens):
        next_token = logits[:, -1].argmax(dim=-1, keepdim=True)
        steps.append(logits[:, -1])
        tokens = torch.cat([tokens, next_token], dim=1)
        logits = model(next_token, start=tokens.shape[1] - 1, use_cache=True)
    return tokens, torch.stack(steps)


@torch.no_grad()
def generate_uncached(model, prompt, new_tokens):
    tokens, steps = prompt, []
    for _ in range(new_tokens):
        logits = model(tokens)  # the whole sequence, every step
        steps.append(logits[:, -1])
        tokens = torch.cat([tokens, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
    return tokens, torch.stack(steps)


for attention in (block.attn for block in model.blocks):  # start from empty caches
    attention.k_cache.zero_()
    attention.v_cache.zero_()
cached_tokens, cached_logits = generate_cached(model, prompt, new_tokens=8)
plain_tokens, plain_logits = generate_uncached(model, prompt, new_tokens=8)
print("with cache:   ", cached_tokens.tolist())
print("without cache:", plain_tokens.tolist())
print("same tokens:", torch.equal(cached_tokens, plain_tokens))
print("largest logit difference:", (cached_logits - plain_logits).abs().max().item())
# sphinx_gallery_start_ignore
assert torch.equal(cached_tokens, plain_tokens), "claim: the cache changes no token"
# sphinx_gallery_end_ignore

# %%
# The cache now holds keys for the prompt and every generated token, on the
# model's device, and nothing beyond:

filled = model.blocks[0].attn.k_cache[0, 0].abs().sum(dim=-1) > 0
print("cache positions filled:", int(filled.sum()), "of", filled.numel())
print("cache device:", model.blocks[0].attn.k_cache.device)
# sphinx_gallery_start_ignore
assert int(filled.sum()) == cached_tokens.shape[1], (
    "claim: the cache holds every position fed to the model, and nothing beyond"
)
# sphinx_gallery_end_ignore

# %%
# Why ``persistent=False``
# ------------------------
# A checkpoint of this model holds only its weights. Saving the cache would store
# whatever the last generation left behind, sized for one batch size and one
# context length; saving the rotary table would store numbers the configuration
# reproduces.

state = model.state_dict()
weights = sum(t.numel() * t.element_size() for t in state.values())
all_buffers = sum(b.numel() * b.element_size() for b in model.buffers())
print(f"state_dict: {len(state)} tensors, {weights:,} bytes")
print(f"buffers left out: {all_buffers:,} bytes")

# %%
# What a dtype cast does to them
# ------------------------------
# ``.half()`` casts every floating-point buffer along with the weights: the
# caches (which is what you want: keys and values in the model's dtype) and the
# rotary table (which chapter 6 shows costs precision). The boolean mask keeps
# its dtype. On a copy:

half_model = copy.deepcopy(model).half()
rotary = half_model.blocks[0].attn.rotary
half_dtypes = {
    name: str(b.dtype).removeprefix("torch.")
    for name, b in half_model.blocks[0].attn.named_buffers()
}
print(textwrap.fill(f"after .half(): {half_dtypes}", width=88))
full_cos = model.blocks[0].attn.rotary.cos
table_error = (rotary.cos.float() - full_cos).abs().max().item()
print(f"rotary table after .half(): largest error {table_error:.1e}")
assert half_dtypes["rotary.cos"] == half_dtypes["k_cache"] == "float16", (
    "claim: .half() casts the rotary table and the cache"
)
assert half_dtypes["causal"] == "bool", "claim: .half() leaves a bool buffer alone"

# %%
# To keep the table in float32 in a half-precision model, rebuild it after the
# cast, as ``Rotary.reset_buffers()`` does: assigning a tensor to a buffer's
# name replaces the buffer (it stays a non-persistent buffer).
# ``Rotary.forward`` rotates in the table's dtype and returns the input's.

for module in half_model.modules():
    if isinstance(module, Rotary):
        module.reset_buffers()  # self.cos, self.sin = self.table(...)
print("rebuilt:", rotary.cos.dtype, "buffer:", "cos" in dict(rotary.named_buffers()))
print(
    "still out of state_dict:",
    "blocks.0.attn.rotary.cos" not in half_model.state_dict(),
)
assert rotary.cos.dtype == torch.float32, "claim: the table is float32 again"
if full_cos.device.type == "cpu":  # built and rebuilt on the CPU: bit for bit
    assert torch.equal(rotary.cos, full_cos), "claim: rebuilt exactly"
else:  # built on the CPU, rebuilt on the device: cos kernels may differ in a bit
    torch.testing.assert_close(rotary.cos, full_cos)

# %%
# Where real models do this
# -------------------------
# The same choices appear in well-known open code (as read when this chapter was
# written; check the current source before relying on it):
#
# - Hugging Face ``transformers``, ``models/llama/modeling_llama.py``,
#   ``LlamaRotaryEmbedding``: ``inv_freq`` is registered with
#   ``persistent=False``, and the forward pass forces float32 for the angles.
# - ``torchtune``, ``torchtune/modules/kv_cache.py``, ``KVCache``: ``k_cache`` and
#   ``v_cache`` are registered with ``persistent=False``.
# - ``gpt-fast`` (pytorch-labs), ``model.py``, ``KVCache``: ``k_cache`` and
#   ``v_cache`` are registered as buffers with the default ``persistent=True``,
#   so they appear in that model's ``state_dict()``.
#
# What to remember
# ----------------
# - Rotary tables and key/value caches belong in buffers, so ``.to(device)``
#   moves them with the weights.
# - A dtype cast such as ``.half()`` casts them too: right for a cache, a loss of
#   precision for a rotary table; rebuild the table in float32 after the cast.
# - Register them with ``persistent=False``: the configuration rebuilds the
#   table, and a cache is run-time state, not a learned value.
# - With a cache, ``is_causal=True`` is wrong for a chunk after the first: give
#   SDPA a mask aligned to the end of the keys (the slice above, or
#   ``causal_lower_right``), and compare cached against uncached output, for
#   several chunk sizes, whenever you change it.
# - A preallocated cache has a batch size: size it with ``max_batch_size`` and
#   refuse larger batches with a message that says so. Keep it out of autograd:
#   this one refuses ``use_cache=True`` with gradients on; training uses the
#   uncached path.
