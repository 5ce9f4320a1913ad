"""Every tensor a module holds: what it is, where it is, what ``.to()`` and ``state_dict()`` do with it."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from types import SimpleNamespace
from typing import Any, overload

import torch
from torch import nn
from torch.nn.parameter import is_lazy
from torch.nn.utils.prune import BasePruningMethod
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

from ._module import as_module
from ._text import WIDTH, fit, pattern, render_html, render_text


class TensorKind(Enum):
    """How a module holds a tensor, which decides what ``.to()`` and ``state_dict()`` do."""

    PARAMETER = "parameter"
    BUFFER = "buffer"
    NON_PERSISTENT_BUFFER = "non-persistent buffer"
    ATTRIBUTE = "plain attribute"
    CONTAINER_ITEM = "in a container attribute"
    UNREGISTERED_MODULE = "in an unregistered module"

    @property
    def moved_by_to(self) -> bool:
        """Whether ``module.to(device)`` moves (and ``.half()`` casts) such a tensor."""
        return self in _REGISTERED


_REGISTERED = frozenset(
    {TensorKind.PARAMETER, TensorKind.BUFFER, TensorKind.NON_PERSISTENT_BUFFER}
)

# Attributes every nn.Module has (hook dicts, _parameters...): never user tensors.
_MODULE_INTERNALS = frozenset(vars(nn.Module()))
# How deep to look into lists/dicts of lists/dicts held as attributes, and how
# many items of one container to look at (a million-entry list stays fast).
_MAX_CONTAINER_DEPTH = 4
_MAX_CONTAINER_ITEMS = 10_000
_REBUILDING_HOOKS = (WeightNorm, SpectralNorm)
_SCALARS = frozenset({int, float, bool, str, type(None)})


@dataclass(frozen=True)
class TensorRecord:
    """One tensor held by a module, under one or more names.

    ``names`` are qualified as ``state_dict`` would spell them (``blocks.0.attn.mask``);
    items of a container attribute get an index: ``cache[0]``, ``tables['cos']``.
    """

    names: tuple[str, ...]
    kind: TensorKind
    device: torch.device
    dtype: torch.dtype
    shape: tuple[int, ...]
    nbytes: int
    saved_in_state_dict: bool
    #: The names of the registered tensor this one is a second reference to.
    alias_of: tuple[str, ...] = ()
    #: Whether ``.to()`` reaches it, when that is not decided by ``kind`` alone
    #: (an alias: torch updates a parameter in place, but replaces a buffer).
    moved: bool | None = None
    #: An attribute a forward pre-hook recomputes (the old ``weight_norm``).
    rebuilt_by_hook: bool = False
    #: False for a lazy module's parameter before its first forward.
    initialized: bool = True
    #: The parameters an unregistered tensor shares memory with (a view such as
    #: ``self.weight.t()``), by name.
    view_of: tuple[str, ...] = ()
    requires_grad: bool = False
    tensor_id: int = field(default=0, compare=False, repr=False)

    @property
    def name(self) -> str:
        """The first name the tensor was found under."""
        return self.names[0]

    @property
    def moved_by_to(self) -> bool:
        """Whether ``module.to(device)`` moves this tensor (or the module's view of it)."""
        return self.kind.moved_by_to if self.moved is None else self.moved

    @property
    def module_path(self) -> str:
        """The qualified name of the submodule that holds it (``""`` for the root)."""
        head = self.name.split("[", 1)[0]
        return head.rpartition(".")[0]

    @property
    def attribute(self) -> str:
        """The attribute name on that submodule (``mask``, ``cache``)."""
        head = self.name.split("[", 1)[0]
        return head.rpartition(".")[2]


_COLUMNS = ("name", "kind", "device", "dtype", "shape", "bytes", ".to()", "saved")


def _row(record: TensorRecord) -> tuple[str, ...]:
    alias = f" (= {record.alias_of[0]})" if record.alias_of else ""
    if not record.initialized:
        shape = "uninitialized"
    else:
        shape = "x".join(map(str, record.shape)) or "scalar"
    if record.rebuilt_by_hook:
        moved = "rebuilt by hook"
    else:
        moved = "moved" if record.moved_by_to else "NOT moved"
    return (
        ", ".join(record.names) + alias,
        record.kind.value,
        str(record.device),
        str(record.dtype).removeprefix("torch."),
        shape,
        f"{record.nbytes:,}",
        moved,
        "saved" if record.saved_in_state_dict else "not saved",
    )


def _grouped(records: Sequence[TensorRecord]) -> list[tuple[str, ...]]:
    """One row per layer stack: same pattern and same row apart from name and bytes."""
    groups: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
    for record in records:
        row = _row(record)
        key = (pattern(record.name), *row[1:5], *row[6:])
        groups.setdefault(key, []).append(row)
    rows = []
    for (name, *rest), members in groups.items():
        label = members[0][0] if len(members) == 1 else f"{name} (x{len(members)})"
        nbytes = sum(int(member[5].replace(",", "")) for member in members)
        rows.append((label, *rest[:4], f"{nbytes:,}", *rest[4:]))
    return rows


class Inventory(Sequence[TensorRecord]):
    """The tensors of one module: parameters, then buffers, then unregistered tensors."""

    def __init__(
        self, records: Sequence[TensorRecord], *, notes: Sequence[str] = ()
    ) -> None:
        self._records = tuple(records)
        #: Where the scan was cut short (container depth or size), one line each.
        self.notes = tuple(notes)

    @overload
    def __getitem__(self, index: int) -> TensorRecord: ...
    @overload
    def __getitem__(self, index: slice) -> Inventory: ...
    def __getitem__(self, index: int | slice) -> TensorRecord | Inventory:
        if isinstance(index, slice):
            return Inventory(self._records[index])
        return self._records[index]

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[TensorRecord]:
        return iter(self._records)

    def get(self, name: str) -> TensorRecord | None:
        """The record that has ``name`` among its names, or ``None``."""
        return next((record for record in self._records if name in record.names), None)

    def of_kind(self, *kinds: TensorKind) -> Inventory:
        """Only the records of the given kinds."""
        return Inventory([record for record in self._records if record.kind in kinds])

    @property
    def devices(self) -> set[torch.device]:
        """Every device some tensor is on."""
        return {record.device for record in self._records}

    @property
    def nbytes(self) -> int:
        """Bytes held by all listed tensors (each shared tensor counted once)."""
        counted: dict[int, int] = {}
        for index, record in enumerate(self._records):
            counted[record.tensor_id or -1 - index] = record.nbytes
        return sum(counted.values())

    def __str__(self) -> str:
        return self.to_text()

    def to_text(self, width: int = WIDTH, max_rows: int = 40) -> str:
        """The table, at most ``width`` columns wide; beyond ``max_rows`` tensors,
        one row per layer stack (``layers.*.mask (x80)``, bytes summed)."""
        rows = [_row(record) for record in self._records]
        if len(rows) > max_rows:
            rows = _grouped(self._records)
        table = render_text(_COLUMNS, rows, width) if rows else "(no tensors)"
        notes = [f"scan cut short: {note}" for note in self.notes]
        return fit("\n".join([table, *notes]), width)

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        return render_html(_COLUMNS, [_row(record) for record in self._records])


class _Scan:
    """Walks the Python objects a module holds, looking for tensors ``.to()`` cannot see.

    Scanned: plain attributes, class attributes, lists, tuples, dicts, sets,
    dataclass and ``SimpleNamespace`` objects, and modules held in any of them
    (not registered: ``.to()`` and ``state_dict()`` skip them). Not scanned:
    other objects' attributes. A scan stops ``_MAX_CONTAINER_DEPTH`` containers
    deep and after ``_MAX_CONTAINER_ITEMS`` items of one container, and says so
    in ``notes``.
    """

    def __init__(self) -> None:
        self.notes: list[str] = []

    def items(
        self, value: Any, label: str, depth: int = 0
    ) -> Iterator[tuple[str, TensorKind, torch.Tensor]]:
        if isinstance(value, torch.Tensor):
            kind = TensorKind.CONTAINER_ITEM if depth else TensorKind.ATTRIBUTE
            yield label, kind, value
            return
        if isinstance(value, nn.Module):
            for name, tensor in (
                *value.named_parameters(remove_duplicate=False),
                *value.named_buffers(remove_duplicate=False),
            ):
                yield f"{label}.{name}", TensorKind.UNREGISTERED_MODULE, tensor
            return
        entries = _entries(value, label)
        if entries is None:
            return
        size, pairs = entries
        if depth >= _MAX_CONTAINER_DEPTH:
            if size:
                self.notes.append(
                    f"{label}: not scanned, {depth} containers deep "
                    f"(the limit is {_MAX_CONTAINER_DEPTH})"
                )
            return
        if size > _MAX_CONTAINER_ITEMS:
            self.notes.append(
                f"{label}: scanned the first {_MAX_CONTAINER_ITEMS:,} of its "
                f"{size:,} items"
            )
        for item_label, item in itertools.islice(pairs, _MAX_CONTAINER_ITEMS):
            yield from self.items(item, item_label, depth + 1)


def _entries(value: Any, label: str) -> tuple[int, Iterator[tuple[str, Any]]] | None:
    """``(size, (label, item) pairs)`` for the containers the scan looks into."""
    if isinstance(value, Mapping):
        return len(value), ((f"{label}[{k!r}]", v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return len(value), ((f"{label}[{i}]", v) for i, v in enumerate(value))
    if isinstance(value, set | frozenset):
        return len(value), ((f"{label}{{#{i}}}", v) for i, v in enumerate(value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = [f.name for f in dataclasses.fields(value)]
        return len(fields), ((f"{label}.{f}", getattr(value, f)) for f in fields)
    if isinstance(value, SimpleNamespace):
        return len(vars(value)), ((f"{label}.{k}", v) for k, v in vars(value).items())
    return None


def _class_tensors(cls: type) -> tuple[tuple[str, torch.Tensor], ...]:
    """Tensors defined in the class body of a module class (shared by its instances)."""
    found: dict[str, torch.Tensor] = {}
    for klass in reversed(cls.__mro__):
        if klass.__module__.startswith("torch.") or klass is object:
            continue
        found.update(
            (name, value)
            for name, value in vars(klass).items()
            if isinstance(value, torch.Tensor)
        )
    return tuple(found.items())


_class_tensors_of: dict[type, tuple[tuple[str, torch.Tensor], ...]] = {}


def _rebuilt_by_hooks(module: nn.Module) -> set[str]:
    """Attributes the old ``weight_norm``/``spectral_norm`` recompute before each forward."""
    hooks = module._forward_pre_hooks  # no public way to list hooks
    if not hooks:
        return set()
    names = {h.name for h in hooks.values() if isinstance(h, _REBUILDING_HOOKS)}
    # torch.nn.utils.prune: weight = weight_orig * weight_mask, before each forward
    # (a PruningContainer when pruned twice).
    names.update(
        h._tensor_name for h in hooks.values() if isinstance(h, BasePruningMethod)
    )
    return names


def _alias_probe() -> tuple[bool, bool]:
    """Ask torch: after ``.to()``, does a second reference still see the parameter / buffer?"""
    # Built from zeros, not nn.Linear: its initialisation would draw from the
    # caller's random number generator.
    probe = nn.Module()
    probe.weight = nn.Parameter(torch.zeros(1, 1))
    probe.register_buffer("table", torch.zeros(1))
    weight, table = probe.weight, probe.table
    probe.to(torch.float64)
    return weight is probe.weight, table is probe.table


def _unregistered_tensors(
    module: nn.Module, scan: _Scan
) -> Iterator[tuple[str, TensorKind, torch.Tensor]]:
    """Tensors a module holds outside its parameters and buffers."""
    attributes = vars(module)
    for attribute, value in attributes.items():
        # Most attributes are settings (in_features, eps...): skip them fast.
        if attribute not in _MODULE_INTERNALS and type(value) not in _SCALARS:
            yield from scan.items(value, attribute)
    cls = type(module)
    if cls not in _class_tensors_of:
        _class_tensors_of[cls] = _class_tensors(cls)
    for attribute, tensor in _class_tensors_of[cls]:
        if attribute not in attributes:
            yield attribute, TensorKind.ATTRIBUTE, tensor


def _tensor_nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


_WRAPPED = "_checkpoint_wrapped_module."  # activation checkpointing's wrapper


def _state_dict_names(
    names: list[str], saved: list[str] | None, kind: TensorKind
) -> tuple[str, ...]:
    """A registered tensor's names as ``state_dict`` spells them (found by
    identity); others without the activation-checkpoint wrapper's segment."""
    if saved and kind.moved_by_to:
        return tuple(dict.fromkeys(saved))
    return tuple(dict.fromkeys(name.replace(_WRAPPED, "") for name in names))


def non_persistent_buffers(
    root: nn.Module,
) -> list[tuple[tuple[str, ...], torch.device]]:
    """The non-persistent buffers (names, device), as :func:`inventory` lists
    them, without scanning anything else."""
    found: dict[int, tuple[list[str], torch.device]] = {}
    for prefix, submodule in root.named_modules(remove_duplicate=False):
        dotted = f"{prefix}." if prefix else ""
        for local in submodule._non_persistent_buffers_set:
            buffer = submodule._buffers.get(local)
            if buffer is not None:
                entry = found.setdefault(id(buffer), ([], buffer.device))
                entry[0].append((dotted + local).replace(_WRAPPED, ""))
    return [(tuple(dict.fromkeys(names)), device) for names, device in found.values()]


def _has_storage(tensor: torch.Tensor) -> bool:
    """Whether the tensor has memory of its own to compare (not meta, not lazy)."""
    if is_lazy(tensor) or tensor.device.type == "meta" or tensor.is_sparse:
        return False
    try:
        return tensor.untyped_storage().data_ptr() != 0
    except (RuntimeError, NotImplementedError):  # tensors without storage
        return False


def _parameter_storages(root: nn.Module) -> dict[int, list[str]]:
    """Parameter names by the address of their memory."""
    found: dict[int, list[str]] = {}
    for name, parameter in root.named_parameters():
        if _has_storage(parameter):
            found.setdefault(parameter.untyped_storage().data_ptr(), []).append(name)
    return found


def inventory(module: nn.Module) -> Inventory:
    """List every tensor ``module`` holds, recursively through its submodules.

    Parameters and buffers come from ``named_parameters``/``named_buffers``
    (so ``nn.ModuleList``, ``ModuleDict`` and ``ParameterList`` are covered), and
    persistence from the keys of ``state_dict()``. Each submodule's own
    attributes are scanned for what ``.to()`` and ``state_dict()`` do not see:

    - plain tensor attributes, and tensors defined in the module's class body;
    - tensors inside lists, tuples, dicts, sets, dataclass and
      ``SimpleNamespace`` objects (4 levels deep, the first 10,000 items of each;
      ``Inventory.notes`` says where a scan was cut short);
    - modules held in such containers instead of ``nn.ModuleList``/``ModuleDict``
      (kind ``UNREGISTERED_MODULE``: ``.to()`` and ``state_dict()`` skip them);
    - second references to a registered tensor (``alias_of``): torch is asked
      whether ``.to()`` keeps them current (it updates a parameter in
      place, so the alias follows; it gives a buffer a new tensor, so the alias
      goes stale), by moving a probe module to another dtype; a move to the
      ``meta`` device replaces parameters instead (torch swaps data in place
      only between compatible tensor types), so there their aliases go stale too;
    - attributes the old ``weight_norm``/``spectral_norm`` rebuild before each
      forward (``rebuilt_by_hook``), which are not strays;
    - unregistered tensors that share memory with a parameter (``view_of``,
      e.g. ``self.weight_t = self.weight.t()``).

    0-d tensors count like any other. Other objects' attributes are not
    scanned. A tensor reachable under several names of the same kind (tied
    weights) is listed once with all its names; a lazy module's parameter
    before its first forward is listed as uninitialized; a buffer registered as
    ``None`` holds no tensor and is not listed. Wrappers (``torch.compile``,
    ``DataParallel``, ``DistributedDataParallel``) are looked through: the
    model inside is listed, not the wrapper's bookkeeping. Nothing in the
    module is changed.

    Raises:
        TypeError: if ``module`` is not an ``nn.Module``.
    """
    root = as_module(module, function="inventory")
    # What state_dict saves, by tensor identity: wrappers (activation
    # checkpointing's _checkpoint_wrapped_module.) rewrite its names.
    saved_names: dict[int, list[str]] = {}
    for key, value in root.state_dict(keep_vars=True).items():
        saved_names.setdefault(id(value), []).append(key)
    found: dict[tuple[int, TensorKind], list[str]] = {}
    tensors: dict[int, torch.Tensor] = {}
    registered: dict[int, list[str]] = {}
    rebuilt: set[str] = set()
    scan = _Scan()

    def add(name: str, kind: TensorKind, tensor: torch.Tensor) -> None:
        tensors[id(tensor)] = tensor
        found.setdefault((id(tensor), kind), []).append(name)

    parameter_ids = set()
    for name, parameter in root.named_parameters(remove_duplicate=False):
        add(name, TensorKind.PARAMETER, parameter)
        registered.setdefault(id(parameter), []).append(name)
        parameter_ids.add(id(parameter))
    for prefix, submodule in root.named_modules(remove_duplicate=False):
        dotted = f"{prefix}." if prefix else ""
        # Persistence is each module's own choice (register_buffer(persistent=)).
        not_kept = submodule._non_persistent_buffers_set
        for local, buffer in submodule._buffers.items():
            if buffer is None:
                continue
            persistent = local not in not_kept
            kind = TensorKind.BUFFER if persistent else TensorKind.NON_PERSISTENT_BUFFER
            add(dotted + local, kind, buffer)
            registered.setdefault(id(buffer), []).append(dotted + local)
    for prefix, submodule in root.named_modules(remove_duplicate=False):
        dotted = f"{prefix}." if prefix else ""
        rebuilt.update(dotted + name for name in _rebuilt_by_hooks(submodule))
        for label, kind, tensor in _unregistered_tensors(submodule, scan):
            add(dotted + label, kind, tensor)

    parameter_alias_follows, buffer_alias_follows = _alias_probe()
    storages: dict[int, list[str]] | None = None
    records = []
    for (tensor_id, kind), names in found.items():
        tensor = tensors[tensor_id]
        alias_of: tuple[str, ...] = ()
        moved = None
        if not kind.moved_by_to and tensor_id in registered:
            alias_of = tuple(registered[tensor_id])
            moved = (
                parameter_alias_follows
                if tensor_id in parameter_ids
                else buffer_alias_follows
            )
        lazy = is_lazy(tensor)
        view_of: tuple[str, ...] = ()
        if not kind.moved_by_to and not alias_of and _has_storage(tensor):
            if storages is None:
                storages = _parameter_storages(root)
            view_of = tuple(storages.get(tensor.untyped_storage().data_ptr(), ()))
        records.append(
            TensorRecord(
                names=_state_dict_names(names, saved_names.get(tensor_id), kind),
                kind=kind,
                device=tensor.device,
                dtype=tensor.dtype,
                shape=() if lazy else tuple(tensor.shape),
                nbytes=0 if lazy else _tensor_nbytes(tensor),
                saved_in_state_dict=kind.moved_by_to and tensor_id in saved_names,
                alias_of=alias_of,
                moved=moved,
                rebuilt_by_hook=any(name in rebuilt for name in names),
                initialized=not lazy,
                view_of=view_of,
                requires_grad=tensor.requires_grad,
                tensor_id=tensor_id,
            )
        )
    return Inventory(records, notes=scan.notes)
