"""The tensors ``.to()`` will not move or ``state_dict()`` will not save, with a fix for each."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Self

from torch import nn

from ._fixes import checked_fixes
from ._inventory import TensorKind, TensorRecord, inventory
from ._text import WIDTH, fit, pattern, render_html, render_text

# Beyond this many strays, the text groups them by layer stack.
_MAX_LINES = 20
from ._meta import torch_answers
from ._module import as_module


@dataclass(frozen=True)
class Stray:
    """A tensor that will not follow the module, and the one-line change that fixes it.

    ``checked`` is what torch did when the change was made to a meta copy of the
    module. When torch did not confirm it, ``confirmed`` is False, ``fix`` is
    empty (no change is suggested) and ``checked`` says what torch did instead.
    """

    record: TensorRecord
    problem: str
    fix: str
    checked: str = ""
    confirmed: bool = True

    def _fix_lines(self) -> str:
        if not self.confirmed:
            return f"    fix: none that torch confirmed ({self.checked})"
        return f"    fix: {self.fix}\n    checked on a meta copy: {self.checked}"

    def __str__(self) -> str:
        return f"{', '.join(self.record.names)}: {self.problem}\n{self._fix_lines()}"


def _owner(record: TensorRecord) -> str:
    return (
        f"the module at {record.module_path!r}"
        if record.module_path
        else "the root module"
    )


def _harmless(record: TensorRecord) -> str:
    """A 0-dim CPU tensor: torch combines it with tensors on other devices."""
    if record.shape or record.device.type != "cpu" or not torch_answers().scalar_mixes:
        return ""
    return (
        "; harmless to the forward pass: torch accepts a 0-dim CPU tensor beside "
        "tensors on another device (asked on meta)"
    )


def _fix(record: TensorRecord) -> tuple[str, str]:
    where, attribute = _owner(record), record.attribute
    if record.alias_of:
        return (
            (
                f"a second reference to the buffer {record.alias_of[0]}: .to() gives "
                "the module a new tensor, and this reference keeps the old one (stale)"
            ),
            (
                f"keep no second reference; read self.{record.alias_of[0].rpartition('.')[2]} "
                "where it is needed (a @property can give it another name)"
            ),
        )
    if record.view_of and record.kind is not TensorKind.UNREGISTERED_MODULE:
        parameter = record.view_of[0]
        owner = record.module_path
        local = parameter.removeprefix(f"{owner}." if owner else "")
        stale = (
            ""
            if torch_answers().view_buffer_follows
            else "; register_buffer would not help: after .to() the buffer and the "
            "parameter are separate tensors (torch checked on a probe)"
        )
        return (
            (
                f"shares memory with the parameter {parameter} (a view of it): .to() "
                f"moves the parameter and leaves this on {record.device}, stale{stale}"
            ),
            (
                f"compute it from the parameter where it is needed, e.g. a property: "
                f"@property def {attribute}(self): return self.{local}.t() (or the "
                "view you took)"
            ),
        )
    if record.kind is TensorKind.UNREGISTERED_MODULE:
        return (
            (
                f"a module held in the plain attribute {attribute!r} of {where}: .to() "
                "and state_dict() skip it and all its tensors"
            ),
            "hold the modules in nn.ModuleList or nn.ModuleDict so they are registered",
        )
    if record.kind is TensorKind.ATTRIBUTE:
        non_persistent = (
            "; add persistent=False if it is rebuilt, not learned, and should stay out "
            "of checkpoints (torch, on a probe: still moved, then not saved)"
            if torch_answers().non_persistent_moved_not_saved
            else ""
        )
        return (
            (
                f"plain tensor attribute of {where}: .to() leaves it on {record.device}, "
                "state_dict() does not save it" + _harmless(record)
            ),
            (
                f'self.register_buffer("{attribute}", tensor) in __init__ instead of '
                f"self.{attribute} = tensor" + non_persistent
            ),
        )
    if record.kind is TensorKind.CONTAINER_ITEM:
        caches = (
            ", persistent=False for caches"
            if torch_answers().non_persistent_moved_not_saved
            else ""
        )
        fix = (
            "hold the tensors to train in nn.ParameterList or nn.ParameterDict"
            if record.requires_grad
            else "register each item as a buffer "
            f'(self.register_buffer(f"{attribute}_{{index}}", t){caches}) and read '
            "them by those names"
        )
        return (
            (
                f"tensor inside the list/dict attribute {attribute!r} of {where}: .to() and "
                "state_dict() do not look inside containers"
            ),
            fix,
        )
    return (
        f"non-persistent buffer of {where}: moved by .to() but not saved by state_dict()",
        (
            "nothing, if it is rebuilt in __init__ (masks, rotary tables); if it holds "
            f'state to keep, register it with persistent=True: self.register_buffer("{attribute}", '
            "tensor)"
        ),
    )


class StrayReport(tuple[Stray, ...]):
    """The strays of one module; empty (and falsy) when there are none.

    ``notes`` says where the scan was cut short (see :func:`inventory`). Printed,
    more than 20 strays are grouped by layer stack (``layers.*.mask (x80)``).
    """

    notes: tuple[str, ...]

    def __new__(
        cls, strays: Sequence[Stray] = (), *, notes: Sequence[str] = ()
    ) -> Self:
        report = super().__new__(cls, strays)
        report.notes = tuple(notes)
        return report

    def __str__(self) -> str:
        return self.to_text()

    def to_text(self, width: int = WIDTH) -> str:
        """The report, every line at most ``width`` columns wide."""
        return fit(self._text(), width)

    def _text(self) -> str:
        cut = [f"scan cut short: {note}" for note in self.notes]
        if not self:
            return "\n".join(
                [
                    "No stray tensors: every tensor is a parameter or a buffer.",
                    *cut,
                ]
            )
        if len(self) <= _MAX_LINES:
            return "\n".join([*(str(stray) for stray in self), *cut])
        # Large models: one entry per layer stack, the first of each shown in full.
        groups: dict[tuple[str, str], list[Stray]] = {}
        for stray in self:
            key = (pattern(stray.record.name), stray.record.kind.value)
            groups.setdefault(key, []).append(stray)
        lines = [f"{len(self)} strays in {len(groups)} groups:"]
        for (name, _), members in list(groups.items())[:_MAX_LINES]:
            first = members[0]
            lines.append(
                f"{name} (x{len(members)}), e.g. {first.record.name}: {first.problem}"
                f"\n{first._fix_lines()}"
            )
        if len(groups) > _MAX_LINES:
            lines.append(f"... and {len(groups) - _MAX_LINES} more groups")
        return "\n".join([*lines, *cut])

    def _repr_html_(self) -> str:
        if not self:
            return f"<p>{self}</p>"
        rows = [
            (
                ", ".join(s.record.names),
                s.problem,
                s.fix if s.confirmed else "none that torch confirmed",
                s.checked if s.confirmed else f"not confirmed: {s.checked}",
            )
            for s in self
        ]
        return render_html(("tensor", "problem", "fix", "checked on a meta copy"), rows)

    def as_text_table(self) -> str:
        """The strays as a fixed-width table (name, kind, device)."""
        rows = [
            (", ".join(s.record.names), s.record.kind.value, str(s.record.device))
            for s in self
        ]
        return render_text(("tensor", "kind", "device"), rows)


def find_strays(
    module: nn.Module, *, include_non_persistent: bool = False
) -> StrayReport:
    """Find the tensors of ``module`` that ``.to()`` will not move or ``state_dict()`` will not save.

    Plain tensor attributes, tensors inside containers (lists, tuples, dicts,
    sets, dataclasses) and modules held in them instead of ``nn.ModuleList`` are
    strays; so is a second reference to a buffer, which ``.to()`` leaves stale.
    A second reference to a parameter is not (``.to()`` updates the parameter in
    place; torch is asked on a probe module), nor is an attribute the old
    ``weight_norm`` rebuilds before each forward. Wrappers (``torch.compile``,
    ``DataParallel``, ``DistributedDataParallel``) are looked through.
    Non-persistent buffers are moved but deliberately not saved; pass
    ``include_non_persistent=True`` to list them too.

    Each stray comes with a one-line fix, and the fix is made first on one
    ``meta`` copy of the module (no memory): the tensor registered as a buffer
    (or as an ``nn.Parameter`` if it requires grad; from the class body, on a
    fresh module, as torch refuses the name while the class has it), a
    container's items registered one by one, its modules held in
    ``nn.ModuleList``/``ModuleDict``, its tensors that require grad in
    ``nn.ParameterList``/``ParameterDict``. Then the copy is cast once with
    ``.to(torch.float64)`` (a cast, like a move, gives buffers new tensors) and
    ``state_dict()`` is read: a fix is suggested only if ``.to()`` reached the
    tensor and ``state_dict()`` saves it under the fix's name
    (``Stray.checked`` says what torch did). A view of a parameter or a second
    reference to a buffer gets a property, checked by computing what the
    property would return after the cast; no class is changed or created.
    When torch refuses a fix (``nn.ModuleList`` of a list that also holds a
    tensor), or the module cannot be copied, ``Stray.confirmed`` is False and
    no fix is suggested. A registered view goes stale after ``.to()``, and a
    0-dim CPU tensor is harmless to the forward pass (torch combines it with
    tensors elsewhere); both are asked of torch on probes. The copy and its
    checks cost time only when there are strays (``benchmarks/inventory.py``
    measures it). Printed, the report wraps
    at 100 columns (``to_text(width)``). Nothing in the module is changed.

    Raises:
        TypeError: if ``module`` is not an ``nn.Module`` or the flag is not a bool.
    """
    root = as_module(module, function="find_strays")
    if not isinstance(include_non_persistent, bool):  # untyped callers
        msg = (  # type: ignore[unreachable]
            "find_strays() expects include_non_persistent to be True or False, got "
            f"{include_non_persistent!r}"
        )
        raise TypeError(msg)
    kinds = {
        TensorKind.ATTRIBUTE,
        TensorKind.CONTAINER_ITEM,
        TensorKind.UNREGISTERED_MODULE,
    }
    if include_non_persistent:
        kinds.add(TensorKind.NON_PERSISTENT_BUFFER)
    records = inventory(root)
    found = [
        record
        for record in records
        if record.kind in kinds
        and not record.rebuilt_by_hook
        # a second name for a parameter that .to() updates in place is no stray
        and not (record.alias_of and record.moved_by_to)
    ]
    if not found:
        return StrayReport((), notes=records.notes)
    problems = {id(record): _fix(record) for record in found}
    checked = checked_fixes(root, found, lambda record: problems[id(record)][1])
    strays = []
    for record in found:
        fix, verdict = checked[id(record)]
        strays.append(
            Stray(
                record,
                problems[id(record)][0],
                fix if verdict.ok else "",
                checked=verdict.said,
                confirmed=verdict.ok,
            )
        )
    return StrayReport(strays, notes=records.notes)
