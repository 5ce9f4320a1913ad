"""How long pytorch_buffers takes on big models: ``python benchmarks/inventory.py``.

Two models:

- a deep one: an ``nn.Sequential`` of 1,000 ``Linear`` layers (2,000 tensors)
  with a stray plain attribute in every tenth layer;
- a 70B-shaped one built on ``meta`` (no memory): 80 Llama-style blocks at
  70B's sizes (hidden 8,192, MLP 28,672, vocabulary 128,256), each with a
  non-persistent rotary table and a stray causal mask.

Times ``inventory``, ``find_strays``, ``check_devices`` (which raises on the
strays) and ``explain_state_dict`` (a checkpoint saved by DistributedDataParallel,
every key prefixed ``module.``) over repeated runs and prints medians; then
the ratio of ``explain_state_dict`` to torch's own ``load_state_dict`` of the
plain keys, the calls taking turns, best of 7 each. ``explain_state_dict`` asks
torch one load per question: one for a plain checkpoint, two for a prefixed
one (the keys as given, then renamed to confirm the fix), so 2x is the floor
there; torch's load dominates either way (its cost grows with children x keys).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import pytorch_buffers as pb

LAYERS = 1000
REPEATS = 7


def deep_model() -> nn.Module:
    layers = [nn.Linear(16, 16) for _ in range(LAYERS)]
    for layer in layers[::10]:
        layer.scale = torch.ones(16)  # a plain attribute: a stray
    return nn.Sequential(*layers)


class Block(nn.Module):
    def __init__(self, hidden: int, mlp: int, kv: int, context: int) -> None:
        super().__init__()
        self.input_norm = nn.RMSNorm(hidden)
        self.q_proj = nn.Linear(hidden, hidden, bias=False)
        self.k_proj = nn.Linear(hidden, kv, bias=False)
        self.v_proj = nn.Linear(hidden, kv, bias=False)
        self.o_proj = nn.Linear(hidden, hidden, bias=False)
        self.post_norm = nn.RMSNorm(hidden)
        self.gate_proj = nn.Linear(hidden, mlp, bias=False)
        self.up_proj = nn.Linear(hidden, mlp, bias=False)
        self.down_proj = nn.Linear(mlp, hidden, bias=False)
        inv_freq = 1.0 / 500000 ** (torch.arange(0, 128, 2) / 128)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        # A stray: a plain attribute, left on the CPU when the model is built on meta.
        self.mask = torch.ones(context, context, dtype=torch.bool, device="cpu").tril()


class Llama70BShaped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        hidden, mlp, kv, vocab, context = 8192, 28672, 1024, 128256, 64
        self.embed_tokens = nn.Embedding(vocab, hidden)
        self.layers = nn.ModuleList(Block(hidden, mlp, kv, context) for _ in range(80))
        self.norm = nn.RMSNorm(hidden)
        self.lm_head = nn.Linear(hidden, vocab, bias=False)


def median_seconds(call: Callable[[], object]) -> float:
    call()  # warm-up
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_best(calls: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Best seconds of each call, the calls taking turns (a busy machine slows
    them alike, so their ratio holds)."""
    for call in calls.values():
        call()  # warm-up
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(REPEATS):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def raises(call: Callable[[], object]) -> Callable[[], object]:
    def run() -> None:
        with contextlib.suppress(pb.DeviceMismatchError):
            call()

    return run


def report(title: str, model: nn.Module, device: str) -> None:
    """Times on ``model``; ``device`` is the one check_devices is asked about."""
    plain = model.state_dict()
    checkpoint = {f"module.{k}": v for k, v in plain.items()}
    inv = pb.inventory(model)
    print(f"{title}: {len(inv)} tensors, {sum(r.nbytes for r in inv) / 1e9:.1f} GB")
    for name, call in [
        ("inventory", lambda: pb.inventory(model)),
        ("find_strays", lambda: pb.find_strays(model)),
        ("check_devices", raises(lambda: pb.check_devices(model, device))),
        ("explain_state_dict", lambda: pb.explain_state_dict(model, checkpoint)),
        # For scale: torch's own load of the same keys, unprefixed, into the model.
        ("load_state_dict", lambda: model.load_state_dict(plain, assign=True)),
    ]:
        print(
            f"  {name:19} median {median_seconds(call) * 1000:8.1f} ms over {REPEATS} runs"
        )
    best = interleaved_best(
        {
            "explain_state_dict, plain keys": lambda: pb.explain_state_dict(
                model, plain
            ),
            "explain_state_dict, 'module.' keys": lambda: pb.explain_state_dict(
                model, checkpoint
            ),
            "load_state_dict": lambda: model.load_state_dict(plain, assign=True),
        }
    )
    torch_load = best.pop("load_state_dict")
    for name, seconds in best.items():
        print(
            f"  {name}: {seconds / torch_load:.2f}x torch's load_state_dict (best of {REPEATS})"
        )
    try:
        pb.check_devices(model, device)
    except pb.DeviceMismatchError as error:
        print(f"  check_devices message: {len(str(error).splitlines())} lines")


def main() -> None:
    print(f"torch {torch.__version__}")
    report(f"{LAYERS} Linear layers", deep_model(), "meta")
    with torch.device("meta"):
        big = Llama70BShaped()
    report("70B-shaped model on meta", big, "meta")


if __name__ == "__main__":
    main()
