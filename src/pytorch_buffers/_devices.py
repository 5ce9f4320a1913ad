"""One call before the forward pass: is every tensor where it should be?"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch import nn

from ._fixes import FixChecker
from ._inventory import TensorKind, TensorRecord, inventory
from ._meta import torch_answers
from ._module import as_device, as_module, device_matches, device_missing
from ._strays import _fix as stray_fix
from ._text import fit, pattern

# At most this many lines of misplaced tensors (grouped by layer stack).
MAX_LINES = 20


class DeviceMismatchError(RuntimeError):
    """Some tensors of a module are not on the device the rest of it is on.

    ``misplaced`` maps each such tensor's name to the device it is on.
    """

    def __init__(self, message: str, misplaced: dict[str, torch.device]) -> None:
        super().__init__(message)
        self.misplaced = misplaced


def _torch_says() -> tuple[bool, str]:
    """Ask torch (on meta): does a 0-dim CPU tensor mix with tensors elsewhere, and
    what does ``.to()`` say to a tensor that holds no data?"""
    answers = torch_answers()
    return answers.scalar_mixes, answers.no_data


def _meta_fix(record: TensorRecord, expected: torch.device) -> str:
    """For a tensor on ``meta``: it holds no data, so no ``.to()`` can move it."""
    no_data = _torch_says()[1] or "it holds no data"
    register = (
        ""
        if record.kind.moved_by_to
        else f'register it (self.register_buffer("{record.attribute}", ...)), then '
    )
    return (
        f"fix: it holds no data, so .to() cannot move it ({no_data}); {register}"
        f"model.to_empty(device={str(expected)!r}) and initialise it again, or "
        "load it with load_state_dict(checkpoint, assign=True)"
    )


def _fixes(
    root: nn.Module, misplaced: list[TensorRecord], expected: torch.device
) -> dict[int, str]:
    """Each misplaced tensor's fix, made on a meta copy of ``root`` first: only a
    fix torch confirmed there is suggested."""
    checker = FixChecker(root)
    planned: dict[int, str] = {}
    for record in misplaced:
        if record.device.type == "meta" and expected.type != "meta":
            continue
        if record.moved_by_to:
            checker.plan_move(record)
            planned[id(record)] = (
                f"call model.to({str(expected)!r}) after creating or loading it"
            )
        else:
            planned[id(record)] = checker.plan(record, stray_fix(record)[1])
    fixes = {}
    for record in misplaced:
        if id(record) not in planned:
            fixes[id(record)] = _meta_fix(record, expected)
            continue
        verdict = checker.result(record)
        if verdict.ok:
            fix = f"fix (torch confirmed it on a meta copy): {planned[id(record)]}"
        else:
            fix = f"no fix that torch confirmed ({verdict.said})"
        if not record.shape and record.device.type == "cpu" and _torch_says()[0]:
            fix += (
                "; harmless to the forward pass: torch accepts a 0-dim CPU tensor "
                "beside tensors on another device (asked on meta)"
            )
        fixes[id(record)] = fix
    return fixes


def check_devices(module: nn.Module, device: Any = None) -> torch.device:
    """Raise ``DeviceMismatchError`` unless every tensor of ``module`` is on one device.

    With ``device`` (``"cuda"``, ``"cuda:1"``, ``torch.device("mps")``...), every
    tensor must be on it; ``"cuda"`` accepts any one CUDA index. Without it, the
    tensors must agree: the expected device is the one that holds most of the
    parameters (or of all tensors, for a module without parameters). ``"cuda"``
    without an index still asks for one device: tensors split over ``cuda:0``
    and ``cuda:1`` are reported, against the index that holds most parameters. Plain
    tensor attributes and tensors in list/dict attributes are checked too; they
    are the ones ``.to()`` leaves behind. The message names each misplaced
    tensor, where it is, where it should be, and the fix: those of
    :func:`find_strays`, or ``model.to(device)`` for a registered tensor, each
    made first on a ``meta`` copy of the module and suggested only where
    ``.to()`` then reaches the tensor. A tensor on ``meta`` holds no data:
    ``to_empty()`` plus initialisation, or ``assign=True``. A 0-dim CPU tensor
    is marked harmless to the forward pass, as torch accepts it beside tensors
    elsewhere. Beyond 20 tensors, one line per layer stack
    (``layers.*.attn.mask (x80)``), at most 20 lines. Nothing in the module is
    changed.

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
            msg = (
                f"check_devices() got device={str(expected)!r}, but {missing}; to see "
                "on any machine which tensors .to() would leave behind, check a copy "
                "moved to meta: check_devices(copy.deepcopy(model).to('meta'), 'meta')"
            )
            raise ValueError(msg)
    records = list(inventory(root))
    if not records:
        return expected or torch.device("cpu")
    if expected is None:
        parameters = [r for r in records if r.kind is TensorKind.PARAMETER] or records
        votes = Counter(r.device for r in parameters)
        expected = max(votes, key=lambda d: (votes[d], str(d)))
    split = ""
    index: int | None = expected.index  # None for "cuda": any index, but one for all
    if index is None:
        on_type = [r for r in records if device_matches(r.device, expected)]
        parameters = [r for r in on_type if r.kind is TensorKind.PARAMETER] or on_type
        votes = Counter(r.device for r in parameters)
        if len({r.device for r in on_type}) > 1:
            counts = Counter(r.device for r in on_type)
            expected = max(votes, key=lambda d: (votes[d], str(d)))
            split = (
                " they are split over "
                + ", ".join(f"{d} ({n})" for d, n in sorted(counts.items(), key=str))
                + "; a forward pass needs one device (if the split is meant, as with "
                "device_map or pipeline stages, check each stage on its own device)."
            )
    misplaced = [r for r in records if not device_matches(r.device, expected)]
    if not misplaced:
        return expected
    header = (
        f"{len(misplaced)} of {len(records)} tensors of {type(root).__name__} are not on "
        f"{expected}:{split}"
    )
    # One line per tensor while that stays short; else one per layer stack.
    grouped = len(misplaced) > MAX_LINES
    groups: dict[tuple[str, ...], list[TensorRecord]] = {}
    fixes = _fixes(root, misplaced, expected)
    for r in misplaced:
        fix = fixes[id(r)]
        name = pattern(r.name) if grouped else r.name
        groups.setdefault((name, r.kind.value, str(r.device), fix), []).append(r)
    lines = [header]
    for (name_pattern, kind, where, fix), members in groups.items():
        name = ", ".join(members[0].names) if len(members) == 1 else name_pattern
        count = f" (x{len(members)})" if len(members) > 1 else ""
        lines.append(
            f"  {name}{count} ({kind}) is on {where}, expected {expected}; {fix}"
        )
    if len(lines) > MAX_LINES + 1:
        more = len(lines) - 1 - MAX_LINES
        lines = [*lines[: MAX_LINES + 1], f"  ... and {more} more groups"]
    raise DeviceMismatchError(
        fit("\n".join(lines)), {r.name: r.device for r in misplaced}
    )
