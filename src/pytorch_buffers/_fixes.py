"""Make each suggested fix on a meta copy and let torch say whether it works.

A fix is suggested only when, on the copy, ``.to()`` then reaches the tensor and
``state_dict()`` saves it under the name the fix gives it; otherwise the report
says what torch did instead. The copy is cast with ``.to(torch.float64)``: like
a move to another device, a cast gives every floating-point buffer a new tensor,
so a second reference that goes stale is seen to go stale.
"""

from __future__ import annotations

import ast
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ._inventory import TensorKind, TensorRecord
from ._meta import _meta_twin, meta_copy

#: How every check below moves the copy (see the module's docstring).
_CAST = torch.float64


@dataclass(frozen=True)
class Checked:
    """What torch did on the copy: ``ok`` when the fix did what it says."""

    ok: bool
    said: str


class _RecordTo(TorchFunctionMode):
    """Notes every tensor ``Tensor.to`` is called on (what ``module.to()`` reaches).

    A tensor that cannot be converted (a quantized one) is noted and kept as it
    is, so that one exotic tensor does not hide the verdicts on the others.
    """

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
            try:
                return func(*args, **(kwargs or {}))
            except (NotImplementedError, RuntimeError):
                return args[0]
        return func(*args, **(kwargs or {}))


# The views of a parameter a module may keep, tried on the real parameter (a
# view costs no memory) to name the one the module holds.
_VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "t()": lambda p: p.t(),
    "mT": lambda p: p.mT,
    "detach()": lambda p: p.detach(),
    "flatten()": lambda p: p.flatten(),
}


def view_expression(parameter: torch.Tensor, tensor: torch.Tensor) -> str | None:
    """Which of ``_VIEWS`` of ``parameter`` is ``tensor`` (same memory, shape and
    strides), as torch computes it; None if none is."""
    for text, view in _VIEWS.items():
        try:
            candidate = view(parameter)
            same = (
                candidate.shape == tensor.shape
                and candidate.stride() == tensor.stride()
                and candidate.storage_offset() == tensor.storage_offset()
                and candidate.untyped_storage().data_ptr()
                == tensor.untyped_storage().data_ptr()
            )
        except (RuntimeError, NotImplementedError):  # t() of a 3-d tensor, no storage
            continue
        if same:
            return text
    return None


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


def _error(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


@dataclass
class _Expectation:
    """After the fix, ``.to()`` must reach ``tensor()`` and ``state_dict()`` must
    hold it under ``key`` (for a registered tensor, ``key`` is "": only the move
    is in question)."""

    tensor: Callable[[], torch.Tensor | None]
    key: str


class FixChecker:
    """One meta copy of a module, the fixes for its strays made on it, one
    ``.to()`` and one ``state_dict()`` to see what each fix did.

    Nothing is done to the module itself, nor to any class: a fix that would
    change a class (a property, a tensor moved out of the class body) is
    checked by calling what the class would run, or on a fresh module.
    """

    def __init__(self, root: nn.Module) -> None:
        self.root = root
        self.memo: dict[int, Any] = {}
        self.error: str | None = None
        self.twin: nn.Module | None = None
        try:
            self.twin = meta_copy(root, self.memo)
        except ValueError as error:
            cause = error.__cause__
            self.error = (
                f"no meta copy could be made ({_error(cause)})"
                if cause is not None
                else str(error)
            )
        self._checks: dict[int, Callable[[], Checked]] = {}
        self._expected: dict[int, _Expectation] = {}
        self._results: dict[int, Checked] = {}
        self._containers: dict[tuple[int, str], str | None] = {}
        self._reached: set[int] = set()
        self._saved: dict[str, torch.Tensor] = {}
        self._ran = False

    # -- what each kind of stray gets -------------------------------------

    def plan(self, record: TensorRecord, fix: str) -> str:
        """Make the fix for ``record`` on the copy and return the code it
        suggests; what torch did is known after :meth:`result`."""
        if self.twin is None:
            return fix
        try:
            return self._plan(record, fix)
        except Exception as error:  # noqa: BLE001  (user modules: any failure means "not confirmed")
            self._fail(record, error)
            return fix

    def _plan(self, record: TensorRecord, fix: str) -> str:
        assert self.twin is not None
        owner = self.twin.get_submodule(record.module_path)
        if record.view_of and record.kind is not TensorKind.UNREGISTERED_MODULE:
            return self._plan_view(record, owner, fix)
        if record.alias_of:
            return self._plan_alias(record, owner, fix)
        if record.kind is TensorKind.ATTRIBUTE:
            return self._plan_attribute(record, owner, fix)
        if record.kind is TensorKind.CONTAINER_ITEM:
            return self._plan_item(record, owner, fix)
        if record.kind is TensorKind.UNREGISTERED_MODULE:
            return self._plan_module_list(record, owner, fix)
        if record.kind is TensorKind.NON_PERSISTENT_BUFFER:
            tensor = owner.get_buffer(record.attribute)
            delattr(owner, record.attribute)
            self._register(record, owner, record.attribute, tensor)
        return fix

    def plan_move(self, record: TensorRecord) -> None:
        """Check that ``.to()`` reaches a registered tensor as the module holds it."""
        if self.twin is not None:
            tensor = self._twin_of(record)
            self._expected[id(record)] = _Expectation(lambda: tensor, "")

    def _key(self, record: TensorRecord, local: str) -> str:
        return f"{record.module_path}.{local}" if record.module_path else local

    def _twin_of(self, record: TensorRecord) -> torch.Tensor | None:
        twin = self.memo.get(record.tensor_id)
        return twin if isinstance(twin, torch.Tensor) else None

    def _fail(self, record: TensorRecord, error: BaseException | str) -> None:
        """The fix could not be made on the copy: ``error`` says why."""
        said = error if isinstance(error, str) else _error(error)
        self._checks[id(record)] = lambda: Checked(False, said)

    def _register(
        self, record: TensorRecord, owner: nn.Module, name: str, tensor: torch.Tensor
    ) -> None:
        """``owner.register_buffer(name, tensor)`` on the copy, then expect
        ``.to()`` to reach it and ``state_dict()`` to save it as that name."""
        owner.register_buffer(name, tensor)
        self._expected[id(record)] = _Expectation(
            lambda: owner._buffers.get(name), self._key(record, name)
        )

    def _plan_attribute(self, record: TensorRecord, owner: nn.Module, fix: str) -> str:
        name = record.attribute
        if name in vars(owner):
            tensor = self._twin_of(record)
            if tensor is None:
                self._fail(record, "torch cannot copy it")
                return fix
            original = vars(self.root.get_submodule(record.module_path)).get(name)
            delattr(owner, name)
            # A leaf that requires grad is meant to be trained; one computed from
            # other tensors (it has a grad_fn) is a result, kept as a buffer.
            if record.requires_grad and getattr(original, "is_leaf", False):
                setattr(owner, name, nn.Parameter(tensor))
                self._expected[id(record)] = _Expectation(
                    lambda: owner._parameters.get(name), self._key(record, name)
                )
                return (
                    f"self.{name} = nn.Parameter(tensor) in __init__, so that it is "
                    "trained, moved and saved"
                )
            self._register(record, owner, name, tensor)
            if record.requires_grad:
                return fix.replace(
                    f'"{name}", tensor)', f'"{name}", tensor.detach())', 1
                ).replace(
                    " in __init__", " in __init__ (it has a grad_fn: detach it)", 1
                )
            return fix
        # Defined in the class body: register_buffer refuses the name while the
        # class has it. Ask torch that on the copy, then check the fix (the tensor
        # registered by __init__) on a fresh module, leaving the class alone.
        tensor = _meta_twin(getattr(type(owner), name))
        if tensor is None:
            self._fail(record, "torch cannot copy it")
            return fix
        try:
            owner.register_buffer(name, tensor)
        except KeyError as error:
            refused = str(error).strip("'\"")
        else:
            self._expected[id(record)] = _Expectation(
                lambda: owner._buffers.get(name), self._key(record, name)
            )
            return fix
        self._checks[id(record)] = lambda: _registered_on_a_fresh_module(name, tensor)
        _, add, option = fix.partition("; add ")
        return (
            f'move it out of the class body: self.register_buffer("{name}", tensor) '
            f"in __init__ (while the class has the name, torch refuses: {refused})"
            f"{add}{option}"
        )

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
            self._fail(record, "an item nested in containers: no one-line fix to apply")
            return fix
        attribute = record.attribute
        if self._mixed(record):
            self._fail(
                record,
                "the container holds tensors to train and others: no one-line fix "
                "serves both",
            )
            return fix
        if record.requires_grad:
            refused = self._hold(owner, attribute, nn.ParameterList, nn.ParameterDict)
            if refused is not None:
                self._fail(record, refused)
                return fix
            held = getattr(owner, attribute)
            self._expected[id(record)] = _Expectation(
                lambda: held[index], self._key(record, f"{attribute}.{index}")
            )
            holder = type(held).__name__
            opening = "{...}" if holder == "ParameterDict" else "[...]"
            return (
                f"hold the tensors to train in nn.{holder}: "
                f"self.{attribute} = nn.{holder}({opening})"
            )
        tensor = self._twin_of(record)
        if tensor is None:
            self._fail(record, "torch cannot copy it")
            return fix
        self._register(record, owner, f"{attribute}_{index}", tensor)
        return fix

    def _mixed(self, record: TensorRecord) -> bool:
        """Whether the container attribute that holds ``record`` (in the model)
        holds tensors that require grad and tensors that do not."""
        owner = self.root.get_submodule(record.module_path)
        container = vars(owner).get(record.attribute)
        items = container.values() if isinstance(container, Mapping) else container
        if not isinstance(items, Iterable):
            return False
        flags = {item.requires_grad for item in items if isinstance(item, torch.Tensor)}
        return len(flags) > 1

    def _plan_module_list(
        self, record: TensorRecord, owner: nn.Module, fix: str
    ) -> str:
        container = vars(owner).get(record.attribute)
        refused = self._hold(owner, record.attribute, nn.ModuleList, nn.ModuleDict)
        if refused is not None:
            self._fail(record, refused)
            return fix
        tensor = self._twin_of(record)
        # experts[0].weight is saved as experts.0.weight, heads['a'] as heads.a.
        local = re.sub(
            r"\[([^\[\]]+)\]",
            lambda match: f".{ast.literal_eval(match.group(1))}",
            record.name.removeprefix(
                f"{record.module_path}." if record.module_path else ""
            ),
        )
        self._expected[id(record)] = _Expectation(
            lambda: tensor, self._key(record, local)
        )
        holder = type(getattr(owner, record.attribute)).__name__
        if container is not None:
            holder = "ModuleDict" if isinstance(container, Mapping) else "ModuleList"
        opening = "{...}" if holder == "ModuleDict" else "[...]"
        return (
            f"hold the modules in nn.{holder} so they are registered: "
            f"self.{record.attribute} = nn.{holder}({opening})"
        )

    def _hold(
        self,
        owner: nn.Module,
        attribute: str,
        as_list: type[nn.Module],
        as_dict: type[nn.Module],
    ) -> str | None:
        """Replace the container attribute by ``as_list(...)``/``as_dict(...)`` on
        the copy, once per container; None when torch took it, else what torch
        refused."""
        key = (id(owner), attribute)
        if key in self._containers:
            return self._containers[key]
        container = vars(owner).get(attribute)
        refused = None
        try:
            if isinstance(container, Mapping):
                setattr(owner, attribute, as_dict(container))
            elif isinstance(container, list | tuple):
                setattr(owner, attribute, as_list(container))
            else:
                refused = f"a {type(container).__name__} is neither a list nor a dict"
        except (TypeError, KeyError, ValueError, AttributeError) as error:
            refused = f"{as_list.__name__}/{as_dict.__name__}: {_error(error)}"
        self._containers[key] = refused
        return refused

    def _plan_view(self, record: TensorRecord, owner: nn.Module, fix: str) -> str:
        if record.kind is not TensorKind.ATTRIBUTE:
            self._fail(
                record, "a view kept inside a container cannot become a property"
            )
            return fix
        # The parameter under a name inside this module (a tied one may be named
        # first elsewhere).
        original = self.root.get_parameter(record.view_of[0])
        twin_parameter = self.memo.get(id(original))
        inside = [
            name
            for name, candidate in owner.named_parameters(remove_duplicate=False)
            if candidate is twin_parameter
        ]
        if not inside:
            self._fail(
                record, "the parameter is not inside the module that holds the view"
            )
            return fix
        relative = inside[0]
        held = vars(self.root.get_submodule(record.module_path)).get(record.attribute)
        expression = (
            view_expression(original, held) if isinstance(held, torch.Tensor) else None
        )
        if expression is None:
            self._fail(
                record, f"none of {', '.join(_VIEWS)} of the parameter is this view"
            )
            return fix
        view = _VIEWS[expression]
        parameter = owner.get_parameter(relative)

        def check() -> Checked:
            # What the property would return after .to(): the view of the
            # parameter as the cast left it.
            now = owner.get_parameter(relative)
            value = view(now)
            if id(parameter) not in self._reached:
                return Checked(False, ".to() does not reach the parameter")
            if now.is_floating_point() and value.dtype != _CAST:
                return Checked(
                    False, "the property's view does not follow the parameter"
                )
            return Checked(
                True, ".to() reaches the parameter and the property returns its view"
            )

        self._checks[id(record)] = check
        source = _self_expression(relative, "get_parameter")
        return (
            f"compute it from the parameter where it is needed, e.g. a property: "
            f"@property def {record.attribute}(self): return {source}.{expression}"
        )

    def _plan_alias(self, record: TensorRecord, owner: nn.Module, fix: str) -> str:
        buffer_name = record.alias_of[0]
        relative = _relative(record.module_path, buffer_name)
        if relative is None or record.kind is not TensorKind.ATTRIBUTE:
            self._fail(
                record,
                "the buffer is not inside the module that holds the reference"
                if relative is None
                else "a reference inside a container cannot become a property",
            )
            return fix
        stale = vars(owner)[record.attribute]

        def check() -> Checked:
            # What the property would return after .to(): the buffer the module
            # holds now; the plain attribute still holds the one from before.
            buffer = owner.get_buffer(relative)
            if id(stale) not in self._reached:
                return Checked(False, ".to() does not reach the buffer")
            if buffer is stale:
                return Checked(
                    True,
                    ".to() kept the same tensor (not floating point): the property "
                    "returns the buffer",
                )
            return Checked(
                True,
                ".to() gives the module a new tensor, which the property returns; the "
                "plain attribute keeps the old one",
            )

        self._checks[id(record)] = check
        source = _self_expression(relative, "get_buffer")
        return (
            f"keep no second reference; read {source} where it is needed, or give it "
            f"this name with a property: @property def {record.attribute}(self): "
            f"return {source}"
        )

    # -- one .to() and one state_dict() for all of them --------------------

    def _run(self) -> None:
        self._ran = True
        assert self.twin is not None
        # The tensors each fix put in place, before .to() replaces any of them.
        before: dict[int, torch.Tensor | None] = {}
        for key, expectation in self._expected.items():
            try:
                before[key] = expectation.tensor()
            except Exception as error:  # noqa: BLE001  (user modules)
                self._results[key] = Checked(False, _error(error))
        try:
            self._reached = self._move(self.twin)
            self._saved = self.twin.state_dict(keep_vars=True)
        except Exception as error:  # noqa: BLE001  (a module's to() or state_dict() may raise)
            said = f"not checked: on the copy, {_error(error)}"
            self._results = {
                key: Checked(False, said) for key in (*self._checks, *self._expected)
            }
            return
        for key, expectation in self._expected.items():
            if key in before:
                self._results[key] = self._met(expectation, before[key])
        for key, check in self._checks.items():
            try:
                self._results[key] = check()
            except Exception as error:  # noqa: BLE001  (user modules: any failure means "not confirmed")
                self._results[key] = Checked(False, _error(error))

    @staticmethod
    def _move(twin: nn.Module) -> set[int]:
        """``twin.to(torch.float64)``, or ``twin.to("meta")`` for a module that
        refuses casts (quantized ones do); the ids of the tensors it reached."""
        recorder = _RecordTo()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # complex to float64 and the like
            try:
                with recorder:
                    twin.to(_CAST)
            except (ValueError, TypeError, RuntimeError):
                recorder = _RecordTo()
                with recorder:
                    twin.to("meta")
        return recorder.reached

    def _met(self, expectation: _Expectation, tensor: torch.Tensor | None) -> Checked:
        if tensor is None:
            return Checked(False, "the copy no longer holds the tensor")
        if id(tensor) not in self._reached:
            return Checked(False, ".to() still does not reach it")
        if not expectation.key:
            return Checked(True, ".to() reaches it")
        if expectation.key not in self._saved:
            return Checked(
                False, f".to() reaches it but state_dict() has no {expectation.key!r}"
            )
        return Checked(
            True, f".to() reaches it, state_dict() saves it as {expectation.key!r}"
        )

    def result(self, record: TensorRecord) -> Checked:
        """What the fix for ``record`` did (why it was not checked, if it was not)."""
        if self.twin is None:
            return Checked(False, f"not checked: {self.error}")
        if not self._ran:
            self._run()
        return self._results.get(
            id(record), Checked(False, "no way to make it on a copy")
        )


def _registered_on_a_fresh_module(name: str, tensor: torch.Tensor) -> Checked:
    """A tensor registered by ``__init__`` of a module whose class does not have
    the name: does ``.to()`` reach it and ``state_dict()`` save it?"""
    module = nn.Module()
    module.register_buffer(name, tensor)
    recorder = _RecordTo()
    with recorder:
        module.to(_CAST)
    if id(tensor) in recorder.reached and name in module.state_dict():
        return Checked(
            True,
            f"register_buffer refuses it; registered by a module without the class "
            f"attribute, .to() reaches it and state_dict() saves it as {name!r}",
        )
    return Checked(
        False, "registered on a fresh module, .to() or state_dict() misses it"
    )


def checked_fixes(
    root: nn.Module,
    records: Iterable[TensorRecord],
    fix_of: Callable[[TensorRecord], str],
) -> dict[int, tuple[str, Checked]]:
    """For each record (by ``id(record)``): the fix, and what torch did when it
    was made on a meta copy of ``root``."""
    checker = FixChecker(root)
    records = list(records)
    planned = {id(record): checker.plan(record, fix_of(record)) for record in records}
    return {
        id(record): (planned[id(record)], checker.result(record)) for record in records
    }
