"""Every tensor a module holds: what it is, where it is, what ``.to()`` and ``state_dict()`` do with it."""

from __future__ import annotations

import html
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, overload

import torch
from torch import nn

from ._module import as_module


class TensorKind(Enum):
    """How a module holds a tensor, which decides what ``.to()`` and ``state_dict()`` do."""

    PARAMETER = "parameter"
    BUFFER = "buffer"
    NON_PERSISTENT_BUFFER = "non-persistent buffer"
    ATTRIBUTE = "plain attribute"
    CONTAINER_ITEM = "in a container attribute"

    @property
    def moved_by_to(self) -> bool:
        """Whether ``module.to(device)`` moves (and ``.half()`` casts) such a tensor."""
        return self in _REGISTERED


_REGISTERED = frozenset(
    {TensorKind.PARAMETER, TensorKind.BUFFER, TensorKind.NON_PERSISTENT_BUFFER}
)

# Attributes every nn.Module has (hook dicts, _parameters...): never user tensors.
_MODULE_INTERNALS = frozenset(vars(nn.Module()))
# How deep to look into lists/dicts of lists/dicts held as attributes.
_MAX_CONTAINER_DEPTH = 4


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

    @property
    def name(self) -> str:
        """The first name the tensor was found under."""
        return self.names[0]

    @property
    def moved_by_to(self) -> bool:
        """Whether ``module.to(device)`` moves this tensor."""
        return self.kind.moved_by_to

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
    return (
        ", ".join(record.names),
        record.kind.value,
        str(record.device),
        str(record.dtype).removeprefix("torch."),
        "x".join(map(str, record.shape)) or "scalar",
        f"{record.nbytes:,}",
        "moved" if record.moved_by_to else "NOT moved",
        "saved" if record.saved_in_state_dict else "not saved",
    )


def render_text(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A fixed-width text table."""
    widths = [
        max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)
    ]
    lines = [
        "  ".join(
            cell.ljust(width) for cell, width in zip(row, widths, strict=True)
        ).rstrip()
        for row in (header, *rows)
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def render_html(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain HTML table (styled by the page it lands on)."""
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    return (
        f'<table class="pytorch-buffers"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table>"
    )


class Inventory(Sequence[TensorRecord]):
    """The tensors of one module: parameters, then buffers, then unregistered tensors."""

    def __init__(self, records: Sequence[TensorRecord]) -> None:
        self._records = tuple(records)

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
        return sum(record.nbytes for record in self._records)

    def __str__(self) -> str:
        if not self._records:
            return "(no tensors)"
        return render_text(_COLUMNS, [_row(record) for record in self._records])

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        return render_html(_COLUMNS, [_row(record) for record in self._records])


def _container_items(
    value: Any, label: str, depth: int = 0
) -> Iterator[tuple[str, Any]]:
    """``(label[index], item)`` for tensors inside lists, tuples and dicts."""
    if depth > _MAX_CONTAINER_DEPTH:
        return
    if isinstance(value, Mapping):
        entries: Iterator[tuple[Any, Any]] = iter(value.items())
    elif isinstance(value, list | tuple):
        entries = enumerate(value)
    else:
        return
    for key, item in entries:
        item_label = f"{label}[{key!r}]"
        if isinstance(item, torch.Tensor):
            yield item_label, item
        else:
            yield from _container_items(item, item_label, depth + 1)


def _unregistered_tensors(
    module: nn.Module,
) -> Iterator[tuple[str, TensorKind, torch.Tensor]]:
    """Tensors in a module's own ``__dict__``: plain attributes and container items."""
    for attribute, value in vars(module).items():
        if attribute in _MODULE_INTERNALS:
            continue
        if isinstance(value, torch.Tensor):
            yield attribute, TensorKind.ATTRIBUTE, value
        else:
            for label, item in _container_items(value, attribute):
                yield label, TensorKind.CONTAINER_ITEM, item


def _tensor_nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def inventory(module: nn.Module) -> Inventory:
    """List every tensor ``module`` holds, recursively through its submodules.

    Parameters and buffers come from ``named_parameters``/``named_buffers``
    (so ``nn.ModuleList``, ``ModuleDict`` and ``ParameterList`` are covered), and
    persistence from the keys of ``state_dict()``. Plain tensor attributes, and
    tensors inside list, tuple and dict attributes, come from each submodule's
    ``__dict__``. A tensor reachable under several names of the same kind (tied
    weights) is listed once with all its names. A buffer registered as ``None``
    holds no tensor and is not listed. Nothing in the module is changed.

    Raises:
        TypeError: if ``module`` is not an ``nn.Module``.
    """
    root = as_module(module, function="inventory")
    saved = set(root.state_dict(keep_vars=True))
    found: dict[tuple[int, TensorKind], list[str]] = {}
    tensors: dict[int, torch.Tensor] = {}

    def add(name: str, kind: TensorKind, tensor: torch.Tensor) -> None:
        tensors[id(tensor)] = tensor
        found.setdefault((id(tensor), kind), []).append(name)

    for name, parameter in root.named_parameters(remove_duplicate=False):
        add(name, TensorKind.PARAMETER, parameter)
    for name, buffer in root.named_buffers(remove_duplicate=False):
        kind = TensorKind.BUFFER if name in saved else TensorKind.NON_PERSISTENT_BUFFER
        add(name, kind, buffer)
    for prefix, submodule in root.named_modules(remove_duplicate=False):
        for label, kind, tensor in _unregistered_tensors(submodule):
            add(f"{prefix}.{label}" if prefix else label, kind, tensor)

    records = []
    for (tensor_id, kind), names in found.items():
        tensor = tensors[tensor_id]
        records.append(
            TensorRecord(
                names=tuple(dict.fromkeys(names)),
                kind=kind,
                device=tensor.device,
                dtype=tensor.dtype,
                shape=tuple(tensor.shape),
                nbytes=_tensor_nbytes(tensor),
                saved_in_state_dict=any(name in saved for name in names),
            )
        )
    return Inventory(records)
