"""One call before the forward pass: is every tensor where it should be?"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch import nn

from ._inventory import TensorKind, TensorRecord, inventory, pattern
from ._module import as_device, as_module, device_matches, device_missing

# At most this many lines of misplaced tensors (grouped by layer stack).
MAX_LINES = 20


class DeviceMismatchError(RuntimeError):
    """Some tensors of a module are not on the device the rest of it is on.

    ``misplaced`` maps each such tensor's name to the device it is on.
    """

    def __init__(self, message: str, misplaced: dict[str, torch.device]) -> None:
        super().__init__(message)
        self.misplaced = misplaced


def _how_to_fix(kind: TensorKind, attribute: str) -> str:
    if kind is TensorKind.UNREGISTERED_MODULE:
        return "hold the module in nn.ModuleList/ModuleDict so .to() moves it"
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
    tensor, where it is, where it should be, and the fix; beyond 20 tensors,
    one line per layer stack (``layers.*.attn.mask (x80)``), at most 20 lines. Nothing in the
    module is changed.

    Returns:
        The device the module is on (the given ``device`` when one was given).

    Raises:
        TypeError: if ``module`` is not an ``nn.Module`` or ``device`` is not a
            ``str``/``torch.device``.
        ValueError: if ``device`` is a string torch does not recognise, or a
            device this machine's torch does not have (``"cuda"`` without a GPU).
        DeviceMismatchError: if some tensor is elsewhere.
    """
    root = as_module(module, function="check_devices")
    expected = None if device is None else as_device(device, function="check_devices")
    if expected is not None:
        missing = device_missing(expected)
        if missing:
            msg = f"check_devices() got device={str(expected)!r}, but {missing}"
            raise ValueError(msg)
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
    header = (
        f"{len(misplaced)} of {len(records)} tensors of {type(root).__name__} are not on "
        f"{expected}:"
    )
    # One line per tensor while that stays short; else one per layer stack.
    grouped = len(misplaced) > MAX_LINES
    groups: dict[tuple[str, ...], list[TensorRecord]] = {}
    for r in misplaced:
        fix = _how_to_fix(r.kind, r.attribute)
        name = pattern(r.name) if grouped else r.name
        groups.setdefault((name, r.kind.value, str(r.device), fix), []).append(r)
    lines = [header]
    for (name_pattern, kind, where, fix), members in groups.items():
        name = ", ".join(members[0].names) if len(members) == 1 else name_pattern
        count = f" (x{len(members)})" if len(members) > 1 else ""
        lines.append(
            f"  {name}{count} ({kind}) is on {where}, expected {expected}; fix: {fix}"
        )
    if len(lines) > MAX_LINES + 1:
        more = len(lines) - 1 - MAX_LINES
        lines = [*lines[: MAX_LINES + 1], f"  ... and {more} more groups"]
    raise DeviceMismatchError("\n".join(lines), {r.name: r.device for r in misplaced})
