"""Ask torch on a copy that costs no memory: a ``meta`` twin of a module, and a load into it."""

from __future__ import annotations

import copy
import functools
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import is_lazy
from torch.overrides import TorchFunctionMode

from ._inventory import inventory
from ._module import wrapped_module


def _meta_twin(tensor: torch.Tensor) -> torch.Tensor | None:
    """``tensor`` on ``meta`` (a Parameter stays a Parameter), or None if torch cannot."""
    if is_lazy(tensor):
        return None  # a lazy module's placeholder holds no data: copy it as it is
    try:
        twin = tensor.detach().to("meta")
    except (RuntimeError, NotImplementedError):  # quantized and other exotic tensors
        return None
    # issubclass: Parameter's isinstance check is slow under a torch function mode.
    if issubclass(type(tensor), nn.Parameter):
        return nn.Parameter(twin, requires_grad=tensor.requires_grad)
    return twin


class _CopyOnMeta(TorchFunctionMode):
    """During a deepcopy: every tensor copied (wherever it sits) becomes a meta twin.

    ``Tensor.__deepcopy__`` asks the active torch function mode first, so plain
    tensor attributes, tensors in containers and in other objects are copied
    without their data; ``clone`` is what ``Parameter.__deepcopy__`` calls.
    """

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if func in (torch.Tensor.__deepcopy__, torch.Tensor.clone) and args:
            original = args[0]
            twin = _meta_twin(original) if isinstance(original, torch.Tensor) else None
            if twin is not None:
                return twin if type(original) is type(twin) else twin.detach()
        return func(*args, **(kwargs or {}))


def meta_copy(module: nn.Module, memo: dict[int, Any] | None = None) -> nn.Module:
    """A deep copy of ``module`` whose tensors are all on ``meta``: parameters and
    buffers, plain tensor attributes, tensors in containers and other objects.

    The copy holds no tensor data, shares nothing with ``module``, and keeps ties
    (a tensor reached under two names is one tensor in the copy too). Pass an
    empty ``memo`` to learn each object's copy: ``memo[id(original)]``.

    Raises:
        ValueError: if the module cannot be deep-copied.
    """
    memo = {} if memo is None else memo
    for tensor in (*module.parameters(), *module.buffers()):
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
        with _CopyOnMeta():
            copied: Any = copy.deepcopy(module, memo)
    except (
        Exception
    ) as error:  # arbitrary user objects: any failure means "cannot copy"
        msg = (
            f"cannot make a meta copy of {type(module).__name__} to ask torch "
            f"({type(error).__name__}: {error}); build the model on the meta device "
            "(with torch.device('meta'): model = Model(...)) and pass that instead"
        )
        raise ValueError(msg) from error
    if not isinstance(copied, nn.Module):
        msg = (
            f"cannot make a meta copy of {type(module).__name__} to ask torch: "
            f"deepcopy returned a {type(copied).__name__}; build the model on the meta "
            "device (with torch.device('meta'): model = Model(...)) and pass that instead"
        )
        raise ValueError(msg)  # noqa: TRY004  (documented: a module that cannot be copied)
    shared = _shared_tensor(module, copied)
    if shared is not None:
        # A class whose __deepcopy__ returns the object itself (a shared, frozen
        # encoder) puts the model's own tensors in the copy: refuse, rather than
        # load into or move the real module.
        msg = (
            f"cannot make a meta copy of {type(module).__name__} to ask torch: "
            f"the copy holds the model's own {shared!r} (a __deepcopy__ that returns "
            "self?); build the model on the meta device (with torch.device('meta'): "
            "model = Model(...)) and pass that instead"
        )
        raise ValueError(msg)
    return copied


def _shared_tensor(module: nn.Module, copied: nn.Module) -> str | None:
    """The name of a tensor the copy shares with ``module`` (None if none), found
    wherever the inventory looks: registered, in attributes, in containers.
    Tensors in a class body belong to the class and are shared by design."""
    in_classes = {
        id(tensor)
        for sub in copied.modules()
        for klass in type(sub).__mro__
        for tensor in vars(klass).values()
        if isinstance(tensor, torch.Tensor)
    }
    originals = {record.tensor_id for record in inventory(module)} - in_classes
    for record in inventory(copied):
        if record.tensor_id in originals:
            return record.name
    return None


def copy_for_loading(module: nn.Module) -> nn.Module:
    """A meta copy whose ``load_state_dict`` behaves like ``module``'s.

    Wrappers that cannot be copied (DistributedDataParallel) are rebuilt as a
    plain module holding a copy of their model under the same attribute, so the
    keys keep their prefix.
    """
    inner, attribute = wrapped_module(module)
    if inner is module:
        return meta_copy(module)
    # Named like the wrapper, so torch's messages name it as the real load would.
    holder: nn.Module = type(type(module).__name__, (nn.Module,), {})()
    holder.add_module(attribute, meta_copy(inner))
    return holder


@dataclass(frozen=True)
class LoadAttempt:
    """What ``load_state_dict`` did on one meta copy.

    torch passes ``strict=True`` to every module's loading code whatever the
    caller asked; ``strict`` only decides whether the missing and unexpected
    keys join the errors at the end. So one load answers both questions: the
    errors without those keys are what ``strict=False`` raises, and torch
    itself formats that message (on a stand-in module).
    """

    strict_error: str | None
    non_strict_error: str | None
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    filled: frozenset[str]  # module keys whose tensor received a checkpoint value
    #: ``assign=True``: keys whose tensor took another dtype: (key, before, after).
    dtype_changes: tuple[tuple[str, torch.dtype, torch.dtype], ...] = ()
    #: Groups of keys that were one tensor before the load and are not after.
    broken_ties: tuple[tuple[str, ...], ...] = ()


def _error_text(error: BaseException) -> str:
    return (
        str(error)
        if isinstance(error, RuntimeError)
        else f"{type(error).__name__}: {error}"
    )


def _torch_error(class_name: str, errors: list[str]) -> str | None:
    """The message torch raises for ``errors`` (None: no errors, it loads)."""
    if not errors:
        return None
    stand_in: nn.Module = type(class_name, (nn.Module,), {})()
    stand_in.register_load_state_dict_pre_hook(  # type: ignore[no-untyped-call]
        lambda *args: args[-1].extend(errors)
    )
    try:
        stand_in.load_state_dict({}, strict=False)
    except RuntimeError as error:
        return str(error)
    return None  # pragma: no cover  (torch raises whenever there are errors)


def own_copy(state_dict: Mapping[str, Any]) -> OrderedDict[str, Any]:
    """A new dict of the same tensors, with its own copy of ``_metadata``.

    ``load_state_dict(assign=True)`` writes into the ``_metadata`` it is given,
    so a later load of the same dict would assign too; each attempt gets its own.
    """
    own: OrderedDict[str, Any] = OrderedDict(state_dict)
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        # torch writes into the per-module dicts: copy each (deepcopy is slow).
        own._metadata = type(metadata)(  # type: ignore[attr-defined]
            (name, dict(entry) if isinstance(entry, dict) else copy.deepcopy(entry))
            for name, entry in metadata.items()
        )
    return own


def _snapshot(twin: nn.Module) -> list[tuple[int, list[tuple[str, int]]]]:
    """Which object each attribute of each submodule holds (to see a load change it)."""
    return [
        (id(sub), [(name, id(value)) for name, value in vars(sub).items()])
        for sub in twin.modules()
    ]


class MetaLoader:
    """Loads into meta copies of one module; a copy that a load left as it was
    (no ``assign``, no attribute of any submodule replaced) serves the next load."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self._spare: tuple[nn.Module, list[tuple[int, list[tuple[str, int]]]]] | None
        self._spare = None

    def attempt(self, state_dict: Mapping[str, Any], *, assign: bool) -> LoadAttempt:
        """Load ``state_dict`` into a meta copy and record what torch did."""
        if self._spare is not None:
            twin, snapshot = self._spare
            self._spare = None
        else:
            twin = copy_for_loading(self.module)
            snapshot = _snapshot(twin)
        result = attempt_load(twin, state_dict, assign=assign)
        if not assign and _snapshot(twin) == snapshot:
            self._spare = twin, snapshot
        return result


def after_assign(
    module: nn.Module,
    state_dict: Mapping[str, Any],
    then: Callable[[nn.Module], object],
) -> dict[str, torch.Tensor] | None:
    """Load ``state_dict`` with ``assign=True`` into a meta copy, call ``then`` on
    the copy (a suggested fix), and return every parameter and buffer it then
    holds, by name (non-persistent buffers and tied names included); None when
    the load or the fix raises."""
    twin = copy_for_loading(module)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*to a meta parameter.*no-op")
        try:
            twin.load_state_dict(own_copy(state_dict), strict=False, assign=True)
            then(twin)
        except Exception:  # noqa: BLE001  (a module's hooks or method may raise anything)
            return None
    return _named_tensors(twin)


def _named_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``module`` by name, tied names included."""
    return {
        **dict(module.named_parameters(remove_duplicate=False)),
        **dict(module.named_buffers(remove_duplicate=False)),
    }


def reshaped_attempt(
    module: nn.Module,
    state_dict: Mapping[str, Any],
    shapes: Mapping[str, tuple[int, ...]],
    *,
    assign: bool,
) -> LoadAttempt:
    """Load into a meta copy whose tensors at ``shapes``' keys take those shapes:
    would a module built with the checkpoint's shapes load it?"""
    twin = copy_for_loading(module)
    for key, shape in shapes.items():
        path, _, attribute = key.rpartition(".")
        owner = twin.get_submodule(path) if path else twin
        old = getattr(owner, attribute)
        new = torch.empty(shape, dtype=old.dtype, device="meta")
        if isinstance(old, nn.Parameter):
            setattr(
                owner, attribute, nn.Parameter(new, requires_grad=old.requires_grad)
            )
        else:
            setattr(owner, attribute, new)  # a registered buffer stays registered
    return attempt_load(twin, state_dict, assign=assign)


def attempt_load(
    twin: nn.Module, state_dict: Mapping[str, Any], *, assign: bool
) -> LoadAttempt:
    """Load ``state_dict`` into ``twin`` (a meta copy) and record what torch did."""
    before = twin.state_dict(keep_vars=True)
    seen: dict[str, list[Any]] = {}

    def keep_errors(*args: Any) -> None:
        seen["errors"] = args[-1]

    def keep_keys(_: nn.Module, incompatible: Any) -> None:
        seen["missing"] = list(incompatible.missing_keys)
        seen["unexpected"] = list(incompatible.unexpected_keys)
        seen["errors_then"] = list(seen.get("errors", []))

    # Ours run first (errors list) and last (keys, after the module's own hooks).
    hooks = (
        twin.register_load_state_dict_pre_hook(keep_errors),  # type: ignore[no-untyped-call]
        twin.register_load_state_dict_post_hook(keep_keys),  # type: ignore[no-untyped-call]
    )
    strict_error = non_strict_error = None
    with warnings.catch_warnings():
        # Copying into a meta tensor is a no-op, which torch warns about; that
        # no-op is the point of the copy.
        warnings.filterwarnings("ignore", message=r".*to a meta parameter.*no-op")
        try:
            twin.load_state_dict(own_copy(state_dict), strict=True, assign=assign)
        except Exception as caught:  # noqa: BLE001  (a module's load hook may raise anything)
            strict_error = _error_text(caught)
            non_strict_error = (
                _torch_error(type(twin).__name__, seen["errors_then"])
                if "errors_then" in seen
                else strict_error  # raised before torch checked the keys
            )
    for hook in hooks:
        hook.remove()
    after = twin.state_dict(keep_vars=True)
    # A key was filled when torch loaded it (not missing) or assigned it a new
    # tensor, or when its tensor is one that a loaded key shares (a tie).
    missing = set(seen.get("missing", after))
    loaded_ids = {id(value) for name, value in after.items() if name not in missing}
    filled = frozenset(
        name
        for name, value in after.items()
        if value is not before.get(name) or id(value) in loaded_ids
    )
    changes = tuple(
        (name, before[name].dtype, value.dtype)
        for name, value in after.items()
        if name in before
        and isinstance(value, torch.Tensor)
        and isinstance(before[name], torch.Tensor)
        and value.dtype != before[name].dtype
    )
    ties: dict[int, list[str]] = {}
    for name, value in before.items():
        ties.setdefault(id(value), []).append(name)
    broken = tuple(
        tuple(names)
        for names in ties.values()
        if len(names) > 1 and len({id(after.get(name)) for name in names}) > 1
    )
    return LoadAttempt(
        strict_error,
        non_strict_error,
        tuple(seen.get("missing", ())),
        tuple(seen.get("unexpected", ())),
        filled,
        changes,
        broken,
    )


@dataclass(frozen=True)
class TorchAnswers:
    """What torch answered to small probes (on ``meta`` or tiny CPU tensors)."""

    #: A 0-dim CPU tensor combines with a tensor on another device (meta here).
    scalar_mixes: bool
    #: What ``.to()`` raises for a tensor that holds no data ("" if it does not).
    no_data: str
    #: A buffer registered as a view of a parameter still shares its memory
    #: after ``module.to(float64)``.
    view_buffer_follows: bool
    #: A buffer registered with ``persistent=False`` is cast by ``module.to()``
    #: and left out of ``state_dict()``.
    non_persistent_moved_not_saved: bool = False


@functools.cache
def torch_answers() -> TorchAnswers:
    """Ask torch once per process."""
    on_meta = torch.ones(2, device="meta")
    try:
        scalar_mixes = (on_meta * torch.tensor(2.0)).device == on_meta.device
    except RuntimeError:
        scalar_mixes = False
    try:
        on_meta.to("cpu")
        no_data = ""
    except (NotImplementedError, RuntimeError) as error:
        no_data = f"{type(error).__name__}: {error}"
    probe = nn.Module()  # zeros: no draw from the caller's random number generator
    probe.weight = nn.Parameter(torch.zeros(2, 2))
    probe.register_buffer("weight_t", probe.weight.detach().t())
    probe.to(torch.float64)
    view = probe.get_buffer("weight_t")
    follows = view.untyped_storage().data_ptr() == (
        probe.weight.untyped_storage().data_ptr()
    )
    cache = nn.Module()
    cache.register_buffer("table", torch.zeros(1), persistent=False)
    cache.to(torch.float64)
    non_persistent = (
        cache.get_buffer("table").dtype == torch.float64
        and "table" not in cache.state_dict()
    )
    return TorchAnswers(scalar_mixes, no_data, follows, non_persistent)
