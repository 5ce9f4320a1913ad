"""One call before the forward pass: is every tensor where it should be?"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch import nn

from ._inventory import TensorKind, inventory
from ._module import as_device, as_module, device_matches


class DeviceMismatchError(RuntimeError):
    """Some tensors of a module are not on the device the rest of it is on.

    ``misplaced`` maps each such tensor's name to the device it is on.
    """

    def __init__(self, message: str, misplaced: dict[str, torch.device]) -> None:
        super().__init__(message)
        self.misplaced = misplaced


def _how_to_fix(kind: TensorKind, attribute: str) -> str:
    if kind is TensorKind.ATTRIBUTE:
        return (
            f'register it: self.register_buffer("{attribute}", ...) so .to() moves it'
        )
    if kind is TensorKind.CONTAINER_ITEM:
        return "register each item as a buffer (or use nn.ParameterList/ModuleList)"
    return "call module.to(device) after creating or loading it"


def check_devices(module: nn.Module, device: Any = None) -> torch.device:
    """Raise ``DeviceMismatchError`` unless every tensor of ``module`` is on one device.

    With ``device`` (``"cuda"``, ``"cuda:1"``, ``torch.device("mps")``...), every
    tensor must be on it; ``"cuda"`` accepts any CUDA index. Without it, the
    tensors must agree: the expected device is the one that holds most of the
    parameters (or of all tensors, for a module without parameters). Plain
    tensor attributes and tensors in list/dict attributes are checked too; they
    are the ones ``.to()`` leaves behind. The message names each misplaced
    tensor, where it is, where it should be, and the fix. Nothing in the module
    is changed.

    Returns:
        The device the module is on (the given ``device`` when one was given).

    Raises:
        TypeError: if ``module`` is not an ``nn.Module`` or ``device`` is not a
            ``str``/``torch.device``.
        ValueError: if ``device`` is a string torch does not recognise.
        DeviceMismatchError: if some tensor is elsewhere.
    """
    root = as_module(module, function="check_devices")
    expected = None if device is None else as_device(device, function="check_devices")
    records = list(inventory(root))
    if not records:
        return expected or torch.device("cpu")
    if expected is None:
        parameters = [r for r in records if r.kind is TensorKind.PARAMETER] or records
        votes = Counter(r.device for r in parameters)
        expected = max(votes, key=lambda d: (votes[d], str(d)))
    misplaced = [r for r in records if not device_matches(r.device, expected)]
    if not misplaced:
        return expected
    lines = [
        (
            f"{len(misplaced)} of {len(records)} tensors of {type(root).__name__} are not on "
            f"{expected}:"
        )
    ]
    lines += [
        f"  {', '.join(r.names)} ({r.kind.value}) is on {r.device}, expected {expected}; "
        f"fix: {_how_to_fix(r.kind, r.attribute)}"
        for r in misplaced
    ]
    raise DeviceMismatchError("\n".join(lines), {r.name: r.device for r in misplaced})
