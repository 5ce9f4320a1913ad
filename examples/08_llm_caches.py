r"""
Caches in LLM code
==================

A language model generating text keeps two kinds of tensor that are neither
weights nor data: a rotary-embedding table computed once from the configuration,
and a key/value cache that grows with every generated token. Both must live on
the model's device, and neither belongs in a checkpoint. This chapter builds a
small GPT-style model that holds both as non-persistent buffers, generates a few
tokens with the cache, and checks the result against generation without it.
"""

# %%
# Where this page ran
# -------------------

import os

import torch
import torch.nn.functional as F
from torch import nn

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
# rebuilds them exactly. ``Attention`` preallocates its cache for the whole
# context (``k_cache``, ``v_cache``) and fills it position by position.


class Rotary(nn.Module):
    def __init__(self, head_dim, context_length):
        super().__init__()
        inv_freq = 1.0 / 10000 ** (torch.arange(0, head_dim, 2) / head_dim)
        angles = torch.outer(torch.arange(context_length), inv_freq)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x, start):
        cos = self.cos[start : start + x.shape[-2]]
        sin = self.sin[start : start + x.shape[-2]]
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    def __init__(self, dim, heads, context_length, batch_size=1):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.rotary = Rotary(self.head_dim, context_length)
        shape = (batch_size, heads, context_length, self.head_dim)
        self.register_buffer("k_cache", torch.zeros(shape), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape), persistent=False)

    def forward(self, x, start=0, use_cache=False):
        b, t, dim = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, self.head_dim).unbind(2)
        q, k, v = (tensor.transpose(1, 2) for tensor in (q, k, v))
        q, k = self.rotary(q, start), self.rotary(k, start)
        if use_cache:
            self.k_cache[:b, :, start : start + t] = k
            self.v_cache[:b, :, start : start + t] = v
            k, v = self.k_cache[:b, :, : start + t], self.v_cache[:b, :, : start + t]
        # A new token attends to all cached ones; a prompt is causal.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1)
        return self.out(y.transpose(1, 2).reshape(b, t, dim))


class Block(nn.Module):
    def __init__(self, dim, heads, context_length):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, context_length)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
        )

    def forward(self, x, start=0, use_cache=False):
        x = x + self.attn(self.norm1(x), start, use_cache)
        return x + self.mlp(self.norm2(x))


class TinyGPT(nn.Module):
    def __init__(self, vocab=100, dim=32, heads=4, layers=2, context_length=64):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(
            Block(dim, heads, context_length) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens, start=0, use_cache=False):
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, start, use_cache)
        return self.head(self.norm(x))


# %%
# The caches follow ``.to(device)``
# ---------------------------------

model = TinyGPT().to(device).eval()
for name, buffer in model.named_buffers():
    if name.startswith("blocks.0"):
        print(f"{name:26} {tuple(buffer.shape)!s:16} {buffer.device}")
print(
    "buffers in state_dict:",
    [n for n, _ in model.named_buffers() if n in model.state_dict()],
)

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


cached_tokens, cached_logits = generate_cached(model, prompt, new_tokens=8)
plain_tokens, plain_logits = generate_uncached(model, prompt, new_tokens=8)
print("with cache:   ", cached_tokens.tolist())
print("without cache:", plain_tokens.tolist())
print("same tokens:", torch.equal(cached_tokens, plain_tokens))
print("largest logit difference:", (cached_logits - plain_logits).abs().max().item())

# %%
# The cache now holds keys for the prompt and the generated tokens, on the
# model's device, and nothing beyond:

filled = model.blocks[0].attn.k_cache[0, 0].abs().sum(dim=-1) > 0
print("cache positions filled:", int(filled.sum()), "of", filled.numel())
print("cache device:", model.blocks[0].attn.k_cache.device)

# %%
# Why ``persistent=False``
# ------------------------
# A checkpoint of this model holds only its weights. Saving the cache would store
# whatever the last generation left behind, sized for one batch size and one
# context length; saving the rotary table would store numbers the configuration
# reproduces exactly.

state = model.state_dict()
weights = sum(t.numel() * t.element_size() for t in state.values())
all_buffers = sum(b.numel() * b.element_size() for b in model.buffers())
print(f"state_dict: {len(state)} tensors, {weights:,} bytes")
print(f"buffers left out: {all_buffers:,} bytes")

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
# - Rotary tables and key/value caches belong in buffers, so ``.to(device)`` and
#   ``.half()`` handle them with the weights.
# - Register them with ``persistent=False``: the configuration rebuilds the
#   table, and a cache is run-time state, not a learned value.
# - A cache is easy to get subtly wrong; compare cached against uncached
#   generation, as above, whenever you change it.
