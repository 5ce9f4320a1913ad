"""Why ``load_state_dict`` complains: missing, unexpected and mis-shaped keys, explained."""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._inventory import TensorKind, inventory, render_html, render_text
from ._module import as_module


class KeyProblem(Enum):
    """What ``load_state_dict(strict=True)`` objects to for one key."""

    MISSING = "missing"
    UNEXPECTED = "unexpected"
    SHAPE_MISMATCH = "shape mismatch"


@dataclass(frozen=True)
class KeyReport:
    """One key ``load_state_dict`` would object to, and whether ``strict=False`` is safe."""

    key: str
    problem: KeyProblem
    kind: TensorKind | None  # what the key is in the module; None: not in the module
    safe_to_ignore: bool
    advice: str


def _advise(key: str, problem: KeyProblem, kind: TensorKind | None) -> tuple[bool, str]:
    if problem is KeyProblem.SHAPE_MISMATCH:
        return False, "shapes differ: load_state_dict fails even with strict=False"
    if problem is KeyProblem.UNEXPECTED:
        if kind is TensorKind.NON_PERSISTENT_BUFFER:
            return True, (
                "saved while the buffer was persistent; the module now rebuilds it, "
                f"so drop the key: state_dict.pop({key!r})"
            )
        return False, (
            "not in the module: a renamed or removed tensor? strict=False would "
            "silently ignore it"
        )
    if kind is TensorKind.PARAMETER:
        return False, "the parameter would keep its random initial value"
    return False, (
        "the buffer would keep the value the module's __init__ gave it (e.g. reset "
        "running statistics); safe only if that value is right"
    )


class StateDictReport(tuple[KeyReport, ...]):
    """The keys ``load_state_dict`` would object to; empty (and falsy) when it would load."""

    @property
    def safe_with_strict_false(self) -> bool:
        """Whether ``load_state_dict(..., strict=False)`` loses nothing that matters."""
        return all(report.safe_to_ignore for report in self)

    def __str__(self) -> str:
        if not self:
            return "The state dict matches the module: load_state_dict(strict=True) will load it."
        verdict = (
            "strict=False is safe: only keys the module rebuilds itself differ."
            if self.safe_with_strict_false
            else "strict=False is NOT safe: it would hide the problems marked 'no'."
        )
        return render_text(_COLUMNS, [_row(report) for report in self]) + "\n" + verdict

    def _repr_html_(self) -> str:
        if not self:
            return f"<p>{self}</p>"
        return render_html(_COLUMNS, [_row(report) for report in self])


_COLUMNS = ("key", "problem", "in the module", "safe to ignore", "advice")


def _row(report: KeyReport) -> tuple[str, ...]:
    kind = report.kind.value if report.kind else "-"
    safe = "yes" if report.safe_to_ignore else "no"
    return (report.key, report.problem.value, kind, safe, report.advice)


def _load(path: Path) -> Any:
    if not path.is_file():
        msg = f"explain_state_dict() cannot read {str(path)!r}: no such file"
        raise ValueError(msg)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
        msg = (
            f"explain_state_dict() cannot read {str(path)!r} as a checkpoint with "
            f"torch.load(weights_only=True): {type(error).__name__}: "
            f"{str(error).splitlines()[0]}"
        )
        raise ValueError(msg) from error


def _as_state_dict(loaded: Any, key: str | None) -> Mapping[str, torch.Tensor]:
    if key is not None:
        if not isinstance(loaded, Mapping) or key not in loaded:
            found = sorted(map(str, loaded)) if isinstance(loaded, Mapping) else []
            msg = f"explain_state_dict() found no key {key!r} in the checkpoint; keys: {found}"
            raise ValueError(msg)
        loaded = loaded[key]
    if not isinstance(loaded, Mapping):
        msg = (
            "explain_state_dict() expects a state dict (a mapping of names to tensors), "
            f"got {type(loaded).__name__}"
        )
        raise TypeError(msg)
    not_tensors = [
        name for name, value in loaded.items() if not isinstance(value, torch.Tensor)
    ]
    if not_tensors:
        msg = (
            "explain_state_dict() expects a mapping of names to tensors, but "
            f"{not_tensors[:5]} are not tensors; if the checkpoint wraps the state "
            "dict (e.g. {'model': ..., 'optimizer': ...}), pass key='model'"
        )
        raise ValueError(msg)
    return loaded


def explain_state_dict(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor] | str | os.PathLike[str],
    *,
    key: str | None = None,
) -> StateDictReport:
    """Explain what ``module.load_state_dict(state_dict)`` would object to, without loading.

    ``state_dict`` is a mapping of names to tensors, or the path of a checkpoint,
    which is read with ``torch.load(..., weights_only=True)`` onto the CPU. Use
    ``key`` when the checkpoint wraps the state dict (``key="model"``). For each
    missing, unexpected or mis-shaped key the report says what it is in the
    module (parameter, buffer, non-persistent buffer, or absent) and whether
    ``strict=False`` could safely ignore it. Nothing in the module is changed.

    Raises:
        TypeError: if ``module`` is not an ``nn.Module`` or ``state_dict`` is not
            a mapping or a path.
        ValueError: if the path cannot be read as a checkpoint, ``key`` is not in
            it, or its values are not tensors.
    """
    root = as_module(module, function="explain_state_dict")
    if isinstance(state_dict, str | os.PathLike):
        loaded = _as_state_dict(_load(Path(state_dict)), key)
    elif isinstance(state_dict, Mapping):
        loaded = _as_state_dict(state_dict, key)
    else:  # untyped callers
        msg = (  # type: ignore[unreachable]
            "explain_state_dict() expects a state dict or a checkpoint path, got "
            f"{type(state_dict).__name__}"
        )
        raise TypeError(msg)

    expected = root.state_dict(keep_vars=True)
    kinds = {name: record.kind for record in inventory(root) for name in record.names}
    reports = []
    for name in expected:
        if name not in loaded:
            problem = KeyProblem.MISSING
        elif tuple(loaded[name].shape) != tuple(expected[name].shape):
            problem = KeyProblem.SHAPE_MISMATCH
        else:
            continue
        safe, advice = _advise(name, problem, kinds.get(name))
        reports.append(KeyReport(name, problem, kinds.get(name), safe, advice))
    for name in loaded:
        if name not in expected:
            safe, advice = _advise(name, KeyProblem.UNEXPECTED, kinds.get(name))
            reports.append(
                KeyReport(name, KeyProblem.UNEXPECTED, kinds.get(name), safe, advice)
            )
    return StateDictReport(reports)
