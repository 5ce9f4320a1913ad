"""What a checkpoint key is to the module, decided by looking at the module itself."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
from torch import nn

from ._inventory import Inventory, TensorKind, TensorRecord


class KeyProblem(Enum):
    """What ``load_state_dict(strict=True)`` objects to for one key."""

    MISSING = "missing"
    UNEXPECTED = "unexpected"
    SHAPE_MISMATCH = "shape mismatch"


@dataclass(frozen=True)
class KeyReport:
    """One key ``load_state_dict`` objects to, and whether ``strict=False`` is safe for it.

    ``checkpoint_shape`` and ``module_shape`` are set for shape mismatches.
    """

    key: str
    problem: KeyProblem
    kind: TensorKind | None  # what the key is in the module; None: not in the module
    safe_to_ignore: bool
    advice: str
    checkpoint_shape: tuple[int, ...] | None = None
    module_shape: tuple[int, ...] | None = None


_EXTRA_STATE = "_extra_state"  # torch's name for get_extra_state's entry


class ModuleView:
    """A module's submodules by name and its non-persistent buffers by attribute,
    gathered once for the many keys of one checkpoint."""

    def __init__(self, root: nn.Module, records: Inventory) -> None:
        self.root = root
        self.modules = dict(root.named_modules(remove_duplicate=False))
        self.non_persistent: dict[str, list[TensorRecord]] = {}
        for record in records.of_kind(TensorKind.NON_PERSISTENT_BUFFER):
            self.non_persistent.setdefault(record.attribute, []).append(record)
        linears = [n for n, m in self.modules.items() if isinstance(m, nn.Linear)]
        self.last_linear = linears[-1] if linears else None


def _owner(view: ModuleView, key: str) -> tuple[nn.Module | None, str]:
    """The submodule a key belongs to, and the attribute name within it."""
    path, _, attribute = key.rpartition(".")
    return view.modules.get(path), attribute


def empty_slot(view: ModuleView, key: str) -> str | None:
    """``"parameter"``/``"buffer"`` when ``key`` names a slot registered as None
    (``Linear(bias=False)`` keeps ``bias`` so), else None."""
    owner, attribute = _owner(view, key)
    if owner is None or getattr(owner, attribute, 0) is not None:
        return None
    # No public API lists None slots: named_parameters/named_buffers skip them.
    if attribute in owner._parameters:
        return "parameter"
    if attribute in owner._buffers:
        return "buffer"
    return None


def extra_state(view: ModuleView, key: str) -> str | None:
    """For a ``..._extra_state`` key: whether its module saves extra state."""
    owner, attribute = _owner(view, key)
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
    view: ModuleView, key: str, value: Any
) -> tuple[str, bool] | None:
    """A non-persistent buffer of the module that ``value`` is a copy of: same
    attribute name, shape and dtype; ``(name, True)`` when the values are equal
    too (``torch.equal``), ``(name, False)`` when the module's buffer is on meta
    and holds no values to compare."""
    attribute = key.rpartition(".")[2]
    if not isinstance(value, torch.Tensor):
        return None
    for record in view.non_persistent.get(attribute, ()):
        if record.shape != tuple(value.shape):
            continue
        if record.dtype != value.dtype:
            continue
        owner = view.modules.get(record.module_path)
        buffer = getattr(owner, record.attribute, None)
        if not isinstance(buffer, torch.Tensor):  # reached only through a wrapper
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


_HEAD_NAMES = ("head", "classifier", "fc", "score", "out_proj", "output")


def shape_advice(
    view: ModuleView,
    key: str,
    checkpoint_shape: tuple[int, ...],
    module_shape: tuple[int, ...],
) -> str:
    """What a mis-shaped key is, from the module that holds it, and its fix."""
    owner, _ = _owner(view, key)
    sizes = f"checkpoint {list(checkpoint_shape)} vs module {list(module_shape)}"
    path = key.rpartition(".")[0]
    if isinstance(owner, nn.Embedding) and "position" in path:
        return (
            f"{sizes}: a position table of another length; build the model with "
            "the checkpoint's length (max_position_embeddings)"
        )
    if isinstance(owner, nn.Embedding):
        return (
            f"{sizes}: a vocabulary of another size; build the model with the "
            "checkpoint's vocabulary size to load it"
        )
    last = path.rpartition(".")[2]
    if isinstance(owner, nn.Linear) and any(part in last for part in _HEAD_NAMES):
        return (
            f"{sizes}: an output head of another size (e.g. other classes); drop it "
            "and load the rest with strict=False: the head stays random, train it"
        )
    if last.isdigit() and isinstance(owner, nn.Linear) and view.last_linear == path:
        return (
            f"{sizes}: the last layer, an output head of another size; drop it and "
            "load the rest with strict=False: the head stays random, train it"
        )
    return (
        f"{sizes}: the saved model was configured otherwise; build the module with "
        "the checkpoint's shapes"
    )


def rnn_direction(view: ModuleView, key: str, *, missing: bool) -> str | None:
    """For an RNN's ``*_reverse`` key: the checkpoint and the module differ in
    ``bidirectional``."""
    owner, attribute = _owner(view, key)
    if not attribute.endswith("_reverse") or not isinstance(owner, nn.RNNBase):
        return None
    name = type(owner).__name__
    if missing:
        return (
            f"the module's {name} is bidirectional and the saved one was not (no "
            "*_reverse weights saved): build it with bidirectional=False"
        )
    return (
        f"the saved {name} was bidirectional (it has *_reverse weights) and the "
        "module's is not: build it with bidirectional=True"
    )


def advice_missing(
    kind: TensorKind | None, partners: Sequence[str], *, filled: bool
) -> str:
    if partners and filled:
        return (
            f"filled anyway: it is the same tensor as {partners[0]}, which the "
            "checkpoint has (tied weights)"
        )
    if partners:
        return (
            f"assign=True gives {partners[0]} the checkpoint's tensor and leaves this "
            "one as it was: the tie is broken; tie them again after loading"
        )
    if kind is TensorKind.PARAMETER:
        return "the parameter would keep its random initial value"
    return (
        "the buffer would keep the value the module's __init__ gave it (e.g. reset "
        "running statistics); safe only if that value is right"
    )


def unexpected_row(
    view: ModuleView, name: str, kind: TensorKind | None, value: Any
) -> KeyReport:
    """An unexpected key, named by what the module holds there (if anything)."""
    problem = KeyProblem.UNEXPECTED
    if kind is TensorKind.NON_PERSISTENT_BUFFER:
        advice = (
            "saved while the buffer was persistent; the module now rebuilds it, so "
            "drop the key"
        )
        return KeyReport(name, problem, kind, True, advice)
    slot = empty_slot(view, name)
    if slot is not None:
        advice = (
            f"the module's {slot} slot holds None (e.g. bias=False), so torch skips "
            "the key; the saved model had this tensor: build the module with it, or "
            "its outputs differ from the saved model's"
        )
        return KeyReport(name, problem, kind, False, advice)
    extra = extra_state(view, name)
    if extra is not None:
        return KeyReport(name, problem, kind, False, f"{extra}: torch ignores it")
    direction = rnn_direction(view, name, missing=False)
    if direction is not None:
        return KeyReport(name, problem, kind, False, direction)
    copy = copy_of_non_persistent(view, name, value)
    if copy is not None and copy[1]:
        advice = (
            f"a copy of the module's non-persistent buffer {copy[0]} (equal values, "
            "checked): the module computes it, so drop the key"
        )
        return KeyReport(name, problem, kind, True, advice)
    if copy is not None:
        advice = (
            f"same name, shape and dtype as the non-persistent buffer {copy[0]}, "
            "which is on meta: no values to compare; drop the key if it is derived"
        )
        return KeyReport(name, problem, kind, False, advice)
    advice = (
        "not in the module: a renamed or removed tensor? strict=False would "
        "silently ignore it"
    )
    return KeyReport(name, problem, kind, False, advice)
