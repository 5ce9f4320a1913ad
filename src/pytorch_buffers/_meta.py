"""Ask torch on a copy that costs no memory: a ``meta`` twin of a module."""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import is_lazy
from torch.overrides import TorchFunctionMode


def _meta_twin(tensor: torch.Tensor) -> torch.Tensor | None:
    """``tensor`` on ``meta`` (a Parameter stays a Parameter), or None if torch cannot."""
    if is_lazy(tensor):
        return None  # a lazy module's placeholder holds no data: copy it as it is
    try:
        twin = tensor.detach().to("meta")
    except (RuntimeError, NotImplementedError):  # quantized and other exotic tensors
        return None
    if isinstance(tensor, nn.Parameter):
        return nn.Parameter(twin, requires_grad=tensor.requires_grad)
    return twin


def meta_copy(module: nn.Module, tensors: Iterator[torch.Tensor]) -> nn.Module:
    """A deep copy of ``module`` whose tensors (those given, plus its parameters and
    buffers) are on ``meta``: the copy holds no data, shares nothing with
    ``module``, and keeps ties (a tensor reached under two names is one tensor in
    the copy too).

    Raises:
        ValueError: if the module cannot be deep-copied.
    """
    memo: dict[int, Any] = {}
    everything = [
        *module.parameters(),
        *module.buffers(),
        *tensors,
    ]
    for tensor in everything:
        if id(tensor) not in memo:
            twin = _meta_twin(tensor)
            if twin is not None:
                memo[id(tensor)] = twin
    # Every module holds a dozen hook dicts, nearly all empty; deepcopy rebuilds
    # an OrderedDict or set slowly (through copyreg), so hand it fresh empty ones.
    for submodule in module.modules():
        for value in vars(submodule).values():
            if isinstance(value, OrderedDict | set) and not value:
                memo[id(value)] = type(value)()
    try:
        copied: nn.Module = copy.deepcopy(module, memo)
    except (
        Exception
    ) as error:  # arbitrary user objects: any failure means "cannot copy"
        msg = (
            f"cannot make a meta copy of {type(module).__name__} to ask torch "
            f"({type(error).__name__}: {error}); build the model on the meta device "
            "(with torch.device('meta'): model = Model(...)) and pass that instead"
        )
        raise ValueError(msg) from error
    return copied


class RecordCopies(TorchFunctionMode):
    """Remembers every tensor that ``Tensor.copy_`` wrote into (by ``id``)."""

    def __init__(self) -> None:
        super().__init__()
        self.written: set[int] = set()

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if func is torch.Tensor.copy_ and args:
            self.written.add(id(args[0]))
        return func(*args, **(kwargs or {}))
