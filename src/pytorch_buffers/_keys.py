"""What a checkpoint key is to the module, decided by looking at the module itself."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ._inventory import Inventory, TensorKind

_EXTRA_STATE = "_extra_state"  # torch's name for get_extra_state's entry


def _owner(root: nn.Module, key: str) -> tuple[nn.Module | None, str]:
    """The submodule a key belongs to, and the attribute name within it."""
    path, _, attribute = key.rpartition(".")
    try:
        return (root.get_submodule(path) if path else root), attribute
    except AttributeError:
        return None, attribute


def empty_slot(root: nn.Module, key: str) -> str | None:
    """``"parameter"``/``"buffer"`` when ``key`` names a slot registered as None
    (``Linear(bias=False)`` keeps ``bias`` so), else None."""
    owner, attribute = _owner(root, key)
    if owner is None or getattr(owner, attribute, 0) is not None:
        return None
    # No public API lists None slots: named_parameters/named_buffers skip them.
    if attribute in owner._parameters:
        return "parameter"
    if attribute in owner._buffers:
        return "buffer"
    return None


def extra_state(root: nn.Module, key: str) -> str | None:
    """For a ``..._extra_state`` key: whether its module saves extra state."""
    owner, attribute = _owner(root, key)
    if attribute != _EXTRA_STATE:
        return None
    if owner is None:
        return (
            "extra state (what a module's get_extra_state saved), for a module not here"
        )
    takes = type(owner).set_extra_state is not nn.Module.set_extra_state
    where = (
        f"{type(owner).__name__} at {key.rpartition('.')[0]!r}"
        if "." in key
        else (type(owner).__name__)
    )
    if takes:
        return f"extra state of {where} (set_extra_state), not a tensor buffer"
    return (
        f"extra state (what get_extra_state saved); {where} defines no set_extra_state"
    )


def copy_of_non_persistent(
    root: nn.Module, key: str, value: Any, records: Inventory
) -> tuple[str, bool] | None:
    """A non-persistent buffer of the module that ``value`` is a copy of: same
    attribute name, shape and dtype; ``(name, True)`` when the values are equal
    too (``torch.equal``), ``(name, False)`` when the module's buffer is on meta
    and holds no values to compare."""
    attribute = key.rpartition(".")[2]
    if not isinstance(value, torch.Tensor):
        return None
    for record in records.of_kind(TensorKind.NON_PERSISTENT_BUFFER):
        if record.attribute != attribute or record.shape != tuple(value.shape):
            continue
        if record.dtype != value.dtype:
            continue
        try:
            buffer = root.get_buffer(record.name)
        except AttributeError:  # a buffer reached only through a wrapper's name
            continue
        if buffer.device.type == "meta" or value.device.type == "meta":
            return record.name, False
        if torch.equal(buffer, value.to(buffer.device)):
            return record.name, True
    return None


def droppable_code(
    keys: Sequence[str], checkpoint: Mapping[str, Any]
) -> tuple[str, dict[str, Any]]:
    """The line that drops ``keys`` from ``state_dict``, and its result on ``checkpoint``."""
    suffixes = {key.rpartition(".")[2] for key in keys}
    if len(suffixes) == 1 and all("." in key for key in keys):
        suffix = suffixes.pop()
        matching = [key for key in checkpoint if key.rpartition(".")[2] == suffix]
        if set(matching) == set(keys):
            code = (
                "state_dict = {k: v for k, v in state_dict.items() "
                f"if not k.endswith({'.' + suffix!r})}}"
            )
            return code, {k: v for k, v in checkpoint.items() if k not in set(keys)}
    names = ", ".join(repr(key) for key in keys[:3])
    more = ", ..." if len(keys) > 3 else ""
    code = f"for key in [{names}{more}]: state_dict.pop(key)"
    return code, {k: v for k, v in checkpoint.items() if k not in set(keys)}
