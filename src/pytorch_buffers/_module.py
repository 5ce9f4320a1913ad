"""Argument checks shared by the public functions."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def as_module(module: Any, *, function: str) -> nn.Module:
    """Return ``module`` as an ``nn.Module`` to inspect, or raise ``TypeError``.

    A ``torch.compile`` wrapper is looked through to the module it wraps, so names
    come out as the original module's ``state_dict`` spells them.
    """
    if not isinstance(module, nn.Module):
        msg = (
            f"{function}() expects a torch.nn.Module, got {type(module).__name__}; "
            "pass the model itself (e.g. the object you call .to(device) on)"
        )
        raise TypeError(msg)
    original = getattr(module, "_orig_mod", None)  # set by torch.compile
    return original if isinstance(original, nn.Module) else module


def as_device(device: Any, *, function: str) -> torch.device:
    """Parse ``device`` (``"cuda:0"``, ``torch.device``...) or raise ``TypeError``/``ValueError``."""
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        msg = (
            f"{function}() expects device as a str or torch.device, got "
            f"{type(device).__name__}; for example 'cuda', 'cuda:1', 'mps' or 'cpu'"
        )
        raise TypeError(msg)
    try:
        return torch.device(device)
    except RuntimeError as error:
        msg = (
            f"{function}() got device={device!r}, which torch does not recognise "
            f"({error}); use a name such as 'cuda', 'cuda:1', 'mps' or 'cpu'"
        )
        raise ValueError(msg) from error


def device_matches(actual: torch.device, expected: torch.device) -> bool:
    """Whether a tensor on ``actual`` is on ``expected`` (``cuda`` matches ``cuda:1``)."""
    if actual.type != expected.type:
        return False
    return expected.index is None or actual.index == expected.index
