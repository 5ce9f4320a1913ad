"""Apply each suggested fix to a meta copy and let torch say whether it works.

A fix is suggested only when, on the copy, ``.to()`` then reaches the tensor and
``state_dict()`` saves it (or leaves it out, when that is the point); otherwise
the report says what torch did instead.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ._inventory import TensorKind, TensorRecord
from ._meta import _meta_twin, meta_copy


@dataclass(frozen=True)
class Checked:
    """What torch did on the copy: ``ok`` when the fix did what it says."""

    ok: bool
    said: str


class _RecordTo(TorchFunctionMode):
    """Notes every tensor ``Tensor.to`` is called on (what ``module.to()`` reaches)."""

    def __init__(self) -> None:
        super().__init__()
        self.reached: set[int] = set()

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if func is torch.Tensor.to and args:
            self.reached.add(id(args[0]))
        return func(*args, **(kwargs or {}))


# The views of a parameter a module may keep, tried on the real parameter (a
# view costs no memory) to name the one the module holds.
_VIEWS: tuple[tuple[str, Callable[[torch.Tensor], torch.Tensor]], ...] = (
    ("t()", lambda p: p.t()),
    ("mT", lambda p: p.mT),
    ("detach()", lambda p: p.detach()),
    ("flatten()", lambda p: p.flatten()),
)


def view_expression(parameter: torch.Tensor, tensor: torch.Tensor) -> str | None:
    """Which of ``_VIEWS`` of ``parameter`` is ``tensor`` (same memory, shape and
    strides), as torch computes it; None if none is."""
    for text, view in _VIEWS:
        try:
            candidate = view(parameter)
        except RuntimeError:  # e.g. t() of a 3-d tensor
            continue
        same = (
            candidate.shape == tensor.shape
            and candidate.stride() == tensor.stride()
            and candidate.storage_offset() == tensor.storage_offset()
            and candidate.untyped_storage().data_ptr()
            == tensor.untyped_storage().data_ptr()
        )
        if same:
            return text
    return None


def _with_property(module: nn.Module, name: str, getter: Callable[[Any], Any]) -> None:
    """Give this one module (a copy) a property ``name``, as its class would define it."""
    cls = type(module)
    module.__class__ = type(cls.__name__, (cls,), {name: property(getter)})
    vars(module).pop(name, None)


def _without_class_tensor(module: nn.Module, name: str) -> None:
    """Make this one module (a copy) behave as if its class body had no ``name``:
    reading it falls through to torch's own lookup (parameters, buffers, modules)."""
    _with_property(module, name, lambda self: nn.Module.__getattr__(self, name))


def _relative(owner: str, name: str) -> str | None:
    """``name`` seen from the module at ``owner`` (None when it is not inside it)."""
    if not owner:
        return name
    return name.removeprefix(f"{owner}.") if name.startswith(f"{owner}.") else None


def _self_expression(relative: str, getter: str) -> str:
    """How a module's code reads ``relative``: ``self.proj.weight``, or through
    ``get_parameter``/``get_buffer`` when a name is no identifier (``layers.0``)."""
    if all(part.isidentifier() for part in relative.split(".")):
        return f"self.{relative}"
    return f"self.{getter}({relative!r})"


class FixChecker:
    """One meta copy of a module, the fixes for its strays applied to it, one
    ``.to()`` and one ``state_dict()`` to see what each fix did."""

    def __init__(self, root: nn.Module) -> None:
        self.root = root
        self.memo: dict[int, Any] = {}
        self.error: str | None = None
        try:
            self.twin: nn.Module | None = meta_copy(root, self.memo)
        except ValueError as error:
            self.twin, self.error = None, str(error)
        self._checks: dict[int, Callable[[], Checked]] = {}
        self._results: dict[int, Checked] = {}
        self._containers: dict[tuple[int, str], str | None] = {}
        self._counters: dict[tuple[int, str], int] = {}
        self._reached: set[int] = set()
        self._keys: dict[int, list[str]] = {}  # state_dict keys by tensor id

    def _owner(self, record: TensorRecord) -> nn.Module:
        assert self.twin is not None
        return self.twin.get_submodule(record.module_path)

    def _twin_of(self, record: TensorRecord) -> torch.Tensor | None:
        twin = self.memo.get(record.tensor_id)
        return twin if isinstance(twin, torch.Tensor) else None

    def plan(self, record: TensorRecord, fix: str) -> str:
        """Apply the fix for ``record`` to the copy and return the code it
        suggests (its check runs at :meth:`results`)."""
        if self.twin is None:
            return fix
        try:
            owner = self._owner(record)
        except AttributeError as error:
            self._fail(record, error)
            return fix
        if record.view_of and record.kind is not TensorKind.UNREGISTERED_MODULE:
            return self._plan_view(record, owner, fix)
        if record.alias_of:
            return self._plan_alias(record, owner, fix)
        if record.kind is TensorKind.ATTRIBUTE:
            return self._plan_register(record, owner, fix)
        if record.kind is TensorKind.CONTAINER_ITEM:
            return self._plan_item(record, owner, fix)
        if record.kind is TensorKind.UNREGISTERED_MODULE:
            return self._plan_module_list(record, owner, fix)
        if record.kind is TensorKind.NON_PERSISTENT_BUFFER:
            return self._plan_persistent(record, owner, fix)
        return fix

    def plan_move(self, record: TensorRecord) -> None:
        """Check that ``.to()`` reaches a registered tensor as the module holds it."""
        if self.twin is not None:
            tensor = self._twin_of(record)
            self._expect(record, lambda: tensor, saved=None)

    def _expect(
        self,
        record: TensorRecord,
        tensor: Callable[[], torch.Tensor | None],
        saved: bool | None,
    ) -> None:
        """After the fix, ``.to()`` must reach ``tensor()`` and ``state_dict()``
        must save it (or not, when ``saved`` is False; either, when None)."""

        def check() -> Checked:
            current = tensor()
            if current is None:
                return Checked(False, "the copy no longer holds the tensor")
            keys = self._keys.get(id(current), [])
            if id(current) not in self._reached:
                return Checked(False, ".to() still does not reach it")
            if saved is None:
                return Checked(True, ".to() reaches it")
            if saved and not keys:
                return Checked(
                    False, ".to() reaches it but state_dict() does not save it"
                )
            if not saved and keys:
                return Checked(False, f"state_dict() saves it as {keys[0]!r}")
            where = f"saves it as {keys[0]!r}" if keys else "leaves it out"
            return Checked(True, f".to() reaches it, state_dict() {where}")

        self._checks[record.tensor_id] = check

    def _fail(self, record: TensorRecord, error: BaseException) -> None:
        said = f"{type(error).__name__}: {error}"
        self._checks[record.tensor_id] = lambda: Checked(False, said)

    def _plan_register(self, record: TensorRecord, owner: nn.Module, fix: str) -> str:
        name = record.attribute
        tensor = self._twin_of(record)
        if tensor is None and name not in vars(
            owner
        ):  # a class-body tensor: not copied
            tensor = _meta_twin(getattr(owner, name))
        if tensor is None:
            self._checks[record.tensor_id] = lambda: Checked(
                False, "torch cannot copy it"
            )
            return fix
        in_class_body = name not in vars(owner)
        if in_class_body:
            # register_buffer refuses a name the class already has: the fix is to
            # move the tensor out of the class body.
            try:
                owner.register_buffer(name, tensor)
            except KeyError as error:
                refused = str(error).strip("'\"")
            else:  # pragma: no cover  (torch refuses whenever the class has it)
                refused = ""
            _without_class_tensor(owner, name)
            _, add, option = fix.partition("; add ")
            fix = (
                f'move it out of the class body: self.register_buffer("{name}", '
                f"tensor) in __init__ (while the class has the name, torch refuses: "
                f"{refused}){add}{option}"
            )
        else:
            delattr(owner, name)
        try:
            owner.register_buffer(name, tensor)
        except (KeyError, TypeError) as error:
            self._fail(record, error)
            return fix
        self._expect(record, lambda: owner._buffers.get(name), saved=True)
        return fix

    @staticmethod
    def _index(record: TensorRecord) -> int | str | None:
        """The list index or dict key of a container item (``cache[0]``,
        ``tables['cos']``); None for an item nested deeper."""
        prefix = f"{record.module_path}." if record.module_path else ""
        local = record.name.removeprefix(prefix).removeprefix(record.attribute)
        if not (
            local.startswith("[") and local.endswith("]") and local.count("[") == 1
        ):
            return None
        try:
            index = ast.literal_eval(local[1:-1])
        except (ValueError, SyntaxError):
            return None
        return index if isinstance(index, int | str) else None

    def _plan_item(self, record: TensorRecord, owner: nn.Module, fix: str) -> str:
        index = self._index(record)
        if index is None:
            self._checks[record.tensor_id] = lambda: Checked(
                False, "an item nested in containers: no one-line fix to apply"
            )
            return fix
        attribute = record.attribute
        if record.requires_grad:
            key = (id(owner), attribute)
            if key not in self._containers:
                self._containers[key] = self._hold_in(
                    owner, attribute, nn.ParameterList, nn.ParameterDict
                )
            refused = self._containers[key]
            if refused is not None:
                self._checks[record.tensor_id] = lambda: Checked(False, refused)
                return fix
            held = getattr(owner, attribute)
            self._expect(record, lambda: held[index], saved=True)
            holder = type(held).__name__
            opening = "{...}" if holder == "ParameterDict" else "[...]"
            return (
                f"hold the tensors to train in nn.{holder}: "
                f"self.{attribute} = nn.{holder}({opening})"
            )
        tensor = self._twin_of(record)
        name = f"{attribute}_{index}"
        if tensor is None:
            self._checks[record.tensor_id] = lambda: Checked(
                False, "torch cannot copy it"
            )
            return fix
        try:
            owner.register_buffer(name, tensor)
        except (KeyError, TypeError) as error:
            self._fail(record, error)
            return fix
        self._expect(record, lambda: owner._buffers.get(name), saved=True)
        return fix

    def _plan_module_list(
        self, record: TensorRecord, owner: nn.Module, fix: str
    ) -> str:
        key = (id(owner), record.attribute)
        container = vars(owner).get(record.attribute)
        if key not in self._containers:
            self._containers[key] = self._hold_in(
                owner, record.attribute, nn.ModuleList, nn.ModuleDict
            )
        refused = self._containers[key]
        if refused is not None:
            self._checks[record.tensor_id] = lambda: Checked(False, refused)
            return fix
        tensor = self._twin_of(record)
        self._expect(record, lambda: tensor, saved=True)
        holder = "ModuleDict" if isinstance(container, Mapping) else "ModuleList"
        if container is None:  # converted for an earlier record
            holder = type(getattr(owner, record.attribute)).__name__
        opening = "{...}" if holder == "ModuleDict" else "[...]"
        return (
            f"hold the modules in nn.{holder} so they are registered: "
            f"self.{record.attribute} = nn.{holder}({opening})"
        )

    @staticmethod
    def _hold_in(
        owner: nn.Module,
        attribute: str,
        as_list: type[nn.Module],
        as_dict: type[nn.Module],
    ) -> str | None:
        """Replace the container attribute by ``as_list(...)``/``as_dict(...)`` on
        the copy; None when torch took it, else what torch refused."""
        container = vars(owner).get(attribute)
        try:
            if isinstance(container, Mapping):
                setattr(owner, attribute, as_dict(container))
            elif isinstance(container, list | tuple):
                setattr(owner, attribute, as_list(container))
            else:
                return f"a {type(container).__name__} is neither a list nor a dict"
        except (TypeError, KeyError, ValueError, AttributeError) as error:
            return f"{as_list.__name__}/{as_dict.__name__}: {type(error).__name__}: {error}"
        return None

    def _plan_view(self, record: TensorRecord, owner: nn.Module, fix: str) -> str:
        parameter_name = record.view_of[0]
        relative = _relative(record.module_path, parameter_name)
        original = self.root.get_parameter(parameter_name)
        expression = None
        held = self._held(record)
        if held is not None:
            expression = view_expression(original, held)
        if (
            relative is None
            or expression is None
            or record.kind is not TensorKind.ATTRIBUTE
        ):
            reason = (
                "none of "
                + ", ".join(text for text, _ in _VIEWS)
                + " of the parameter "
                "is this view"
                if expression is None
                else "the parameter is not inside the module that holds the view"
            )
            self._checks[record.tensor_id] = lambda: Checked(False, reason)
            return fix
        source = _self_expression(relative, "get_parameter")
        view = dict(_VIEWS)[expression]
        _with_property(
            owner, record.attribute, lambda module: view(module.get_parameter(relative))
        )
        twin_parameter = self.twin.get_parameter(parameter_name)  # type: ignore[union-attr]

        def check() -> Checked:
            value = getattr(owner, record.attribute)
            reached = id(twin_parameter) in self._reached
            if reached and value._base is twin_parameter:
                return Checked(
                    True,
                    ".to() reaches the parameter and the property returns a view of it",
                )
            return Checked(
                False, "the property does not return a view of the parameter"
            )

        self._checks[record.tensor_id] = check
        return (
            f"compute it from the parameter where it is needed, e.g. a property: "
            f"@property def {record.attribute}(self): return {source}.{expression}"
        )

    def _held(self, record: TensorRecord) -> torch.Tensor | None:
        try:
            value = getattr(
                self.root.get_submodule(record.module_path), record.attribute
            )
        except AttributeError:
            return None
        return value if isinstance(value, torch.Tensor) else None

    def _plan_alias(self, record: TensorRecord, owner: nn.Module, fix: str) -> str:
        buffer_name = record.alias_of[0]
        relative = _relative(record.module_path, buffer_name)
        if relative is None or record.kind is not TensorKind.ATTRIBUTE:
            said = (
                "the buffer is not inside the module that holds the reference"
                if relative is None
                else "a reference inside a container cannot become a property"
            )
            self._checks[record.tensor_id] = lambda: Checked(False, said)
            return fix
        source = _self_expression(relative, "get_buffer")
        _with_property(
            owner, record.attribute, lambda module: module.get_buffer(relative)
        )
        twin = self.twin
        assert twin is not None

        def check() -> Checked:
            buffer = twin.get_buffer(buffer_name)
            if (
                getattr(owner, record.attribute) is buffer
                and id(buffer) in self._reached
            ):
                return Checked(
                    True,
                    ".to() reaches the buffer and the property returns it",
                )
            return Checked(
                False, "the property does not return the buffer .to() reaches"
            )

        self._checks[record.tensor_id] = check
        return (
            f"keep no second reference; read {source} where it is needed, or give it "
            f"this name with a property: @property def {record.attribute}(self): "
            f"return {source}"
        )

    def _plan_persistent(self, record: TensorRecord, owner: nn.Module, fix: str) -> str:
        name = record.attribute
        tensor = owner._buffers.get(name)
        if tensor is None:
            return fix
        delattr(owner, name)
        owner.register_buffer(name, tensor, persistent=True)
        self._expect(record, lambda: owner._buffers.get(name), saved=True)
        return fix

    def results(self) -> Mapping[int, Checked]:
        """Run ``.to()`` and ``state_dict()`` once on the fixed copy; what each fix
        did, by tensor id (a fix with no entry could not be applied)."""
        if self._results or not self._checks:
            return self._results
        assert self.twin is not None  # plan() adds no check without a copy
        recorder = _RecordTo()
        with recorder:
            self.twin.to("meta")
        self._reached = recorder.reached
        for name, value in self.twin.state_dict(keep_vars=True).items():
            self._keys.setdefault(id(value), []).append(name)
        for tensor_id, check in self._checks.items():
            try:
                self._results[tensor_id] = check()
            except Exception as error:  # noqa: BLE001  (user modules: any failure means "not confirmed")
                said = f"{type(error).__name__}: {error}"
                self._results[tensor_id] = Checked(False, said)
        return self._results

    def result(self, tensor_id: int) -> Checked:
        """What the fix for one tensor did (why it was not checked, if it was not)."""
        found = self.results().get(tensor_id)
        if found is not None:
            return found
        if self.twin is None:
            return Checked(False, f"not checked: {self.error}")
        return Checked(False, "no way to apply it to a copy")


def checked_fixes(
    root: nn.Module,
    records: Iterable[TensorRecord],
    fix_of: Callable[[TensorRecord], str],
) -> dict[int, tuple[str, Checked]]:
    """For each record (by tensor id): the fix, and what torch did when it was
    applied to a meta copy of ``root``."""
    checker = FixChecker(root)
    planned = {
        record.tensor_id: checker.plan(record, fix_of(record)) for record in records
    }
    return {key: (fix, checker.result(key)) for key, fix in planned.items()}
