"""Argument checks shared by the public functions."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def wrapped_module(module: nn.Module) -> tuple[nn.Module, str]:
    """The user's model inside a wrapper, and the attribute the wrapper keeps it in.

    ``torch.compile`` keeps it as ``_orig_mod``, ``DataParallel`` and
    ``DistributedDataParallel`` as ``module``; any other module is its own model
    (FSDP2's ``fully_shard`` changes the model's class in place, no wrapper).
    """
    original = getattr(module, "_orig_mod", None)  # set by torch.compile
    if isinstance(original, nn.Module):
        return original, "_orig_mod"
    if isinstance(module, nn.DataParallel | nn.parallel.DistributedDataParallel):
        return module.module, "module"
    return module, ""


def as_module(module: Any, *, function: str, look_through: bool = True) -> nn.Module:
    """Return ``module`` as an ``nn.Module`` to inspect, or raise ``TypeError``.

    A wrapper (``torch.compile``, ``DataParallel``, ``DistributedDataParallel``)
    is looked through to the model it wraps, so names come out as the model's own
    ``state_dict`` spells them and the wrapper's bookkeeping is not reported;
    ``look_through=False`` keeps the wrapper (its ``state_dict`` keys carry the
    prefix).
    """
    if not isinstance(module, nn.Module):
        msg = (
            f"{function}() expects a torch.nn.Module, got {type(module).__name__}; "
            "pass the model itself (e.g. the object you call .to(device) on)"
        )
        raise TypeError(msg)
    if not look_through:
        return module
    while (inner := wrapped_module(module)[0]) is not module:
        module = inner
    return module


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


def device_missing(device: torch.device) -> str | None:
    """Why torch on this machine has no ``device`` (``None`` when it has it)."""
    if device.type in {"cpu", "meta"}:
        return None
    backend = getattr(torch, device.type, None)
    is_available = getattr(backend, "is_available", None)
    if device.type == "mps":
        available, count = torch.backends.mps.is_available(), 1
    elif callable(is_available):
        available = bool(is_available())
        count_devices = getattr(backend, "device_count", None)
        count = int(count_devices()) if callable(count_devices) else 1
    else:
        return None  # a backend torch cannot be asked about: let the check run
    if not available:
        return f"this torch ({torch.__version__}) has no {device.type} device"
    if device.index is not None and device.index >= count:
        return f"this machine has {count} {device.type} device(s), numbered from 0"
    return None
