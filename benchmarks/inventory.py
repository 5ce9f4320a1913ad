"""How long pytorch_buffers takes on a deep model: ``python benchmarks/inventory.py``.

Builds an ``nn.Sequential`` of 1,000 ``Linear`` layers (2,000 tensors) with a
stray plain attribute in every tenth layer, then times ``inventory``,
``find_strays`` and ``check_devices`` over repeated runs and prints medians.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import pytorch_buffers as pb

LAYERS = 1000
REPEATS = 15


def build() -> nn.Module:
    layers = [nn.Linear(16, 16) for _ in range(LAYERS)]
    for layer in layers[::10]:
        layer.scale = torch.ones(16)  # a plain attribute: a stray
    return nn.Sequential(*layers)


def median_seconds(call: Callable[[], object]) -> float:
    call()  # warm-up
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    model = build()
    print(
        f"torch {torch.__version__}; {LAYERS} layers, {len(pb.inventory(model))} tensors"
    )
    for name, call in [
        ("inventory", lambda: pb.inventory(model)),
        ("find_strays", lambda: pb.find_strays(model)),
        ("check_devices", lambda: pb.check_devices(model, "cpu")),
    ]:
        print(
            f"{name:14} median {median_seconds(call) * 1000:7.1f} ms over {REPEATS} runs"
        )


if __name__ == "__main__":
    main()
