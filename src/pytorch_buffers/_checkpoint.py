"""Will this checkpoint load, and why not: torch loads it into a meta copy, then we explain."""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import torch
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from ._files import as_state_dict, plain_sentences, read_checkpoint
from ._inventory import Inventory, TensorKind, inventory, non_persistent_buffers
from ._keys import (
    KeyProblem,
    KeyReport,
    ModuleView,
    advice_missing,
    droppable_code,
    extra_state,
    rnn_direction,
    shape_advice,
    unexpected_row,
)
from ._meta import (
    LoadAttempt,
    MetaLoader,
    _named_tensors,
    after_assign,
    reshaped_attempt,
)
from ._module import as_module
from ._text import WIDTH, fit, pattern, render_text


@dataclass(frozen=True)
class PrefixFix:
    """Keys that differ only by a prefix, and the one line that renames them.

    ``action`` is ``"strip"`` (the checkpoint's keys carry ``prefix``) or ``"add"``
    (the module's keys do). ``keys`` counts the checkpoint keys it renames;
    ``loads_strict_after`` is what torch said when the renamed checkpoint was
    loaded with ``strict=True`` into a meta copy.
    """

    prefix: str
    action: str
    keys: int
    source: str
    code: str
    loads_strict_after: bool


# Where a prefix usually comes from, to name it in the report.
# Where a prefix comes from, named only for torch's own wrappers (known).
_PREFIX_SOURCES = {
    "module.": "as DataParallel / DistributedDataParallel save their model",
    "_orig_mod.": "as torch.compile's wrapper keeps the model",
    "module._orig_mod.": "a compiled model inside DistributedDataParallel",
}
_AVERAGED = "n_averaged"  # what torch.optim.swa_utils.AveragedModel saves beside it


_SIZE_MISMATCH = re.compile(
    r"size mismatch for (?P<key>\S+): copying a param with shape "
    r"torch\.Size\(\[(?P<checkpoint>[\d, ]*)\]\) from checkpoint, the shape in "
    r"current model is torch\.Size\(\[(?P<module>[\d, ]*)\]\)"
)


def _shape(text: str) -> tuple[int, ...]:
    return tuple(int(size) for size in text.split(",") if size.strip())


def _find_prefix(
    missing: Sequence[str], unexpected: Sequence[str]
) -> tuple[str, str, int] | None:
    """The prefix whose removal (or addition) turns most unexpected keys into missing ones."""
    missing_set, unexpected_set = set(missing), set(unexpected)
    votes: Counter[tuple[str, str]] = Counter()
    for key in unexpected:
        for index, char in enumerate(key):
            if char == "." and key[index + 1 :] in missing_set:
                votes["strip", key[: index + 1]] += 1
    for key in missing:
        for index, char in enumerate(key):
            if char == "." and key[index + 1 :] in unexpected_set:
                votes["add", key[: index + 1]] += 1
    if not votes:
        return None
    (action, prefix), count = max(votes.items(), key=lambda item: item[1])
    # A coincidence, unless it explains half the unexpected keys or half the
    # missing ones (a backbone saved with heads the module lacks).
    if count * 2 < len(unexpected) and count * 2 < len(missing):
        return None
    return action, prefix, count


def _renamed(state_dict: Mapping[str, Any], action: str, prefix: str) -> dict[str, Any]:
    renamed = dict(state_dict)
    if action == "strip":
        consume_prefix_in_state_dict_if_present(renamed, prefix)
        return renamed
    return {prefix + key: value for key, value in renamed.items()}


class StateDictReport(tuple[KeyReport, ...]):
    """What ``load_state_dict`` does with a checkpoint, as torch did it on a meta copy.

    The report is a tuple of :class:`KeyReport`, one per key ``strict=True``
    objects to (empty and falsy when ``strict=True`` loads), with:

    - ``loads_strict`` / ``loads_non_strict``: whether ``load_state_dict``
      with ``strict=True`` / ``strict=False`` returns instead of raising;
      ``strict_error`` / ``non_strict_error``: torch's message when it raises.
    - ``safe_with_strict_false``: ``strict=False`` loads and loses nothing that
      matters (every skipped key is rebuilt by the module or filled by a tie).
    - ``prefix_fix``: a :class:`PrefixFix` when the keys differ by a prefix.
    - ``not_restored``: the non-persistent buffers no checkpoint can restore;
      ``on_meta``: those of them still on the ``meta`` device.
    """

    loads_strict: bool
    loads_non_strict: bool
    strict_error: str | None
    non_strict_error: str | None
    prefix_fix: PrefixFix | None
    not_restored: tuple[str, ...]
    on_meta: tuple[str, ...]
    assign: bool
    max_rows: int
    _details: dict[str, Any]

    def __new__(cls, rows: Sequence[KeyReport] = (), **facts: Any) -> Self:
        report = super().__new__(cls, rows)
        defaults: dict[str, Any] = {
            "loads_strict": not rows,
            "loads_non_strict": True,
            "strict_error": None,
            "non_strict_error": None,
            "prefix_fix": None,
            "not_restored": (),
            "on_meta": (),
            "assign": False,
            "max_rows": 20,
            "_details": {},
        }
        for name, value in {**defaults, **facts}.items():
            setattr(report, name, value)
        return report

    @property
    def missing(self) -> tuple[KeyReport, ...]:
        """The module keys the checkpoint lacks."""
        return tuple(r for r in self if r.problem is KeyProblem.MISSING)

    @property
    def unexpected(self) -> tuple[KeyReport, ...]:
        """The checkpoint keys the module has no place for."""
        return tuple(r for r in self if r.problem is KeyProblem.UNEXPECTED)

    @property
    def shape_mismatches(self) -> tuple[KeyReport, ...]:
        """The keys whose shapes differ (``strict=False`` raises on them too)."""
        return tuple(r for r in self if r.problem is KeyProblem.SHAPE_MISMATCH)

    @property
    def safe_with_strict_false(self) -> bool:
        """Whether ``load_state_dict(..., strict=False)`` loads and loses nothing that matters."""
        return self.loads_non_strict and all(r.safe_to_ignore for r in self)

    def _verdict_lines(self) -> list[str]:
        call = "load_state_dict(strict={}" + (", assign=True)" if self.assign else ")")
        counts = Counter(r.problem.value for r in self)
        summary = ", ".join(f"{n} {problem}" for problem, n in counts.items())
        lines = [
            f"{call.format(True)}: "
            + ("loads" if self.loads_strict else f"raises ({summary or 'see below'})")
        ]
        if not self.loads_strict:
            if not self.loads_non_strict:
                reason = (
                    "shapes differ, see below"
                    if self.shape_mismatches
                    else plain_sentences((self.non_strict_error or "").splitlines()[-1])
                )
                verdict = f"raises too ({reason})"
            elif self.safe_with_strict_false:
                verdict = (
                    "loads, and is safe: every key it skips is rebuilt by the module "
                    "or filled through a tied tensor"
                )
            else:
                skipped = sum(not r.safe_to_ignore for r in self.missing)
                ignored = sum(not r.safe_to_ignore for r in self.unexpected)
                verdict = (
                    f"loads, but is NOT safe: {skipped} module key(s) would keep "
                    f"their initial values, {ignored} checkpoint key(s) would be "
                    "ignored"
                )
            lines.append(f"{call.format(False)}: {verdict}")
        other_errors = [
            line.strip()
            for line in (self.non_strict_error or "").splitlines()[1:]
            if not _SIZE_MISMATCH.search(line)
        ]
        lines += [f"  torch: {line}" for line in other_errors]
        return lines

    def _prefix_lines(self) -> list[str]:
        fix = self.prefix_fix
        if fix is None:
            return []
        where = (
            f"{fix.keys} checkpoint keys start with {fix.prefix!r}, which the "
            "module's keys lack"
            if fix.action == "strip"
            else f"the module's keys start with {fix.prefix!r}, which the "
            f"checkpoint's {fix.keys} keys lack"
        )
        remaining = len(self._details.get("remaining", ()))
        after = (
            "then load_state_dict(strict=True) loads (torch checked it on a meta copy)"
            if fix.loads_strict_after
            else f"after that (torch checked it on a meta copy), {remaining} key(s) "
            "below remain"
        )
        source = f" ({fix.source})" if fix.source else ""
        return [
            f"Prefix: {where}{source}. Fix:",
            f"    {fix.code}",
            f"  {after}",
        ]

    def _groups(self) -> list[tuple[str, ...]]:
        shown: Sequence[KeyReport] = self._details.get("remaining", self)
        groups: dict[tuple[Any, ...], list[KeyReport]] = {}
        for r in shown:
            shapes = (r.checkpoint_shape, r.module_shape)
            signature = (r.problem, r.kind, r.safe_to_ignore, r.advice, shapes)
            groups.setdefault((pattern(r.key), *signature), []).append(r)
        rows: list[tuple[str, ...]] = []
        for members in groups.values():
            first = members[0]
            name = first.key if len(members) == 1 else pattern(first.key)
            count = f" (x{len(members)})" if len(members) > 1 else ""
            rows.append(
                (
                    name + count,
                    first.problem.value,
                    first.kind.value if first.kind else "-",
                    "yes" if first.safe_to_ignore else "no",
                    first.advice,
                )
            )
        return rows

    def _not_restored_lines(self) -> list[str]:
        if not self.not_restored:
            return []
        names = _capped(self.not_restored, self.max_rows)
        if self.on_meta:
            head = (
                f"WARNING: {len(self.on_meta)} non-persistent buffer(s) are on the meta "
                "device and no checkpoint restores them: after to_empty() they hold "
                "uninitialised memory, and load_state_dict still reports success. "
                "Re-run their initialisation after to_empty() (the code in the module's "
                "__init__ that computes them):"
            )
        else:
            head = (
                f"{len(self.not_restored)} non-persistent buffer(s) are never loaded "
                "from a checkpoint and keep what the module holds (built on meta? "
                "compute them again after to_empty()):"
            )
        return [head, *(f"  {name}" for name in names)]

    def _assign_lines(self) -> list[str]:
        """What ``assign=True`` changes, then the fixes torch confirmed on a meta copy."""
        lines = []
        changes: Sequence[tuple[str, torch.dtype, torch.dtype]] = self._details.get(
            "dtype_changes", ()
        )
        keeps = self._details.get("without_assign", False)
        if changes:
            kinds = Counter((str(a), str(b)) for _, a, b in changes)
            (before, after), _ = kinds.most_common(1)[0]
            names = _capped([name for name, _, _ in changes], 5)
            fixes = (
                ["loading without assign keeps the module's dtypes"] if keeps else []
            )
            if "cast_back" in self._details:
                dtype, still = self._details["cast_back"]
                fixes.append(
                    f"model.to({dtype}) after loading gives every tensor its dtype back"
                    if not still
                    else f"model.to({dtype}) after loading would leave {len(still)} "
                    f"tensor(s) with another dtype than the module's: "
                    + ", ".join(_capped(still, 3))
                )
            lines.append(
                f"assign=True: {len(changes)} tensor(s) take the checkpoint's dtype "
                f"(e.g. {after.removeprefix('torch.')} where the module has "
                f"{before.removeprefix('torch.')}; torch did it on a meta copy): "
                + ", ".join(names)
                + _confirmed(fixes)
            )
        for group in self._details.get("broken_ties", ()):
            fixes = ["loading without assign keeps the tie"] if keeps else []
            if self._details.get("tie_weights"):
                fixes.append("model.tie_weights() after loading ties them again")
            lines.append(
                f"assign=True breaks a tie: {', '.join(group)} were one tensor and are "
                "two after the load (torch did it on a meta copy)" + _confirmed(fixes)
            )
        return lines

    def _shape_lines(self) -> list[str]:
        lines = []
        if "shape_drop" in self._details:
            dropped, missing = self._details["shape_drop"]
            names = ", ".join(repr(name) for name in dropped[:4])
            more = ", ..." if len(dropped) > 4 else ""
            kept = _capped(missing, 5)
            lines += [
                f"Drop the {len(dropped)} key(s) whose shapes differ. Fix:",
                (
                    "    state_dict = {k: v for k, v in state_dict.items() if k not in "
                    f"{{{names}{more}}}}}"
                ),
                "  then load_state_dict(strict=False) loads (torch checked it on a meta "
                f"copy); {len(missing)} tensor(s) keep their initial (random) values: "
                + ", ".join(kept),
            ]
        if self._details.get("reshape_fix"):
            lines.append(
                "A module built with the checkpoint's shapes loads it with strict=True "
                "(torch checked it on a meta copy): the shapes are the only difference."
            )
        return lines

    def _found_lines(self) -> list[str]:
        if "found_at" not in self._details:
            return []
        where, tensors = self._details["found_at"]
        line = (
            f"Checkpoint: the state dict is {where} ({tensors} tensors), the entry "
            "holding the most tensors named like the module's keys"
        )
        return [line]

    def _drop_lines(self) -> list[str]:
        if "drop_fix" not in self._details:
            return []
        count, code, loads = self._details["drop_fix"]
        after = (
            "then load_state_dict(strict=True) loads (torch checked it on a meta copy)"
            if loads
            else "after that, torch still objects to the keys below"
        )
        return [
            f"Drop the {count} key(s) marked safe (the module computes them). Fix:",
            f"    {code}",
            f"  {after}",
        ]

    def __str__(self) -> str:
        return self.to_text()

    def to_text(self, width: int = WIDTH) -> str:
        """The report, every line at most ``width`` columns wide."""
        lines = self._found_lines() + self._verdict_lines() + self._assign_lines()
        lines += self._shape_lines() + self._prefix_lines()
        lines += self._drop_lines()
        rows = self._groups()
        if rows:
            capped = rows[: self.max_rows]
            lines.append(
                render_text(
                    ("key", "problem", "in the module", "safe to ignore", "advice"),
                    capped,
                    width,
                )
            )
            if len(rows) > len(capped):
                lines.append(
                    f"... and {len(rows) - len(capped)} more groups (max_rows={self.max_rows})"
                )
        lines += self._not_restored_lines()
        return fit("\n".join(lines), width)

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        import html  # noqa: PLC0415  (only notebooks call this)

        text = html.escape(str(self))
        return f'<pre class="pytorch-buffers">{text}</pre>'


def _confirmed(fixes: Sequence[str]) -> str:
    """The fixes torch confirmed on a meta copy, as the end of a report line."""
    return f". Torch, on a meta copy: {'; '.join(fixes)}" if fixes else ""


def _capped(names: Sequence[str], limit: int) -> list[str]:
    """Names grouped by pattern (one line per layer stack), at most ``limit`` lines."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(pattern(name), []).append(name)
    lines = [
        members[0] if len(members) == 1 else f"{pattern} (x{len(members)})"
        for pattern, members in groups.items()
    ]
    if len(lines) > limit:
        lines = [*lines[:limit], f"... and {len(lines) - limit} more"]
    return lines


def explain_state_dict(
    module: nn.Module,
    state_dict: Mapping[str, Any] | str | os.PathLike[str],
    *,
    key: str | None = None,
    assign: bool = False,
    max_rows: int = 20,
) -> StateDictReport:
    """Explain what ``module.load_state_dict(state_dict)`` would do, without loading it.

    Torch itself decides: the checkpoint is loaded into a copy of ``module``
    on the ``meta`` device (which holds no data), so each module's own
    ``_load_from_state_dict`` and load hooks run; one load answers for
    ``strict=True`` and ``strict=False`` alike (torch passes ``strict=True`` to
    every module's loading code and only adds the key lists at the end). The
    report explains each key torch objected to, from what the module holds
    there: what it is, whether ``strict=False`` could skip it safely (a copy of
    a non-persistent buffer, a tie), both shapes of a shape mismatch and what
    the key is (an output head, a position table, a vocabulary), a prefix
    (``module.``, ``_orig_mod.``, partial or nested) with the line that fixes
    it, and the non-persistent buffers no checkpoint restores. Every fix it
    suggests (renaming, dropping keys, a module of the checkpoint's shapes) is
    applied to another meta copy, and the report says what torch then did;
    with ``assign=True`` it names the tensors whose dtype changes and the ties
    that break. Printed, it wraps at 100 columns (``to_text(width)``).

    ``state_dict`` is a mapping of names to tensors (non-tensor entries such as
    extra state are fine), or the path of a ``torch.save`` checkpoint (read with
    ``torch.load(..., weights_only=True)`` onto the CPU), of a ``.safetensors``
    file, or of a folder of shards (transformers' ``*.index.json``, or
    ``*-00001-of-00002.*`` files), merged. A checkpoint that wraps the state
    dict (``{"epoch": ..., "state_dict": {...}}``, at any depth) is searched:
    the mapping holding the most tensors named like the module's keys is used,
    and the report says where it was; ``key`` picks one by name instead.
    A file that pickles a whole module is refused with the recipe for trusted
    files. Use ``assign=True`` for the verdict of
    ``load_state_dict(..., assign=True)``, and ``max_rows`` to cap the rows of
    the printed report. Nothing in the module is changed.

    Raises:
        TypeError: if ``module`` is not an ``nn.Module`` or ``state_dict`` is not
            a mapping or a path.
        ValueError: if the path cannot be read as a checkpoint (empty, truncated,
            a text file, a pickled module, a folder that is not one checkpoint),
            ``key`` is not in it, no mapping in it holds tensors, or the module
            cannot be copied.
    """
    root = as_module(module, function="explain_state_dict", look_through=False)
    if not isinstance(assign, bool):  # untyped callers
        msg = f"explain_state_dict() expects assign to be True or False, got {assign!r}"  # type: ignore[unreachable]
        raise TypeError(msg)
    if not isinstance(max_rows, int) or max_rows < 1:
        msg = f"explain_state_dict() expects max_rows to be a positive int, got {max_rows!r}"
        raise ValueError(msg)
    module_keys = root.state_dict(keep_vars=True).keys()
    if isinstance(state_dict, str | os.PathLike):
        checkpoint = read_checkpoint(Path(state_dict), "explain_state_dict")
        loaded, where = as_state_dict(checkpoint, key, module_keys)
    elif isinstance(state_dict, Mapping):
        loaded, where = as_state_dict(state_dict, key, module_keys)
    else:  # untyped callers
        msg = (  # type: ignore[unreachable]
            "explain_state_dict() expects a state dict or a checkpoint path, got "
            f"{type(state_dict).__name__}"
        )
        raise TypeError(msg)
    report = _explain(root, loaded, assign=assign, max_rows=max_rows, find_prefix=True)
    if where is not None and key is None:
        tensors = sum(isinstance(value, torch.Tensor) for value in loaded.values())
        report._details["found_at"] = (where, tensors)
    return report


def _assign_fixes(
    root: nn.Module, loaded: Mapping[str, Any], first: LoadAttempt, loader: MetaLoader
) -> dict[str, Any]:
    """The fixes for what ``assign=True`` changed, each done on a meta copy: the
    load without ``assign``, a cast back, the module's own ``tie_weights()``."""
    fixes: dict[str, Any] = {}
    expected = root.state_dict(keep_vars=True)
    # A module built on meta holds no data: a load without assign copies into
    # nothing (torch only warns), so that is no fix for it.
    holds_data = not any(
        isinstance(value, torch.Tensor) and value.device.type == "meta"
        for value in expected.values()
    )
    plain = loader.attempt(loaded, assign=False) if holds_data else None
    fixes["without_assign"] = (
        plain is not None
        and not plain.dtype_changes
        and not plain.broken_ties
        and (plain.non_strict_error is None) == (first.non_strict_error is None)
    )
    if first.dtype_changes:
        counts = Counter(before for _, before, _ in first.dtype_changes)
        dtype = counts.most_common(1)[0][0]
        after = after_assign(root, loaded, lambda twin: twin.to(dtype))
        if after is not None:
            held = _named_tensors(root)
            fixes["cast_back"] = (
                dtype,
                tuple(
                    name
                    for name, value in held.items()
                    if name in after and after[name].dtype != value.dtype
                ),
            )
    tie_weights = getattr(root, "tie_weights", None)
    if first.broken_ties and callable(tie_weights):
        after = after_assign(root, loaded, lambda twin: twin.tie_weights())  # type: ignore[operator]
        fixes["tie_weights"] = after is not None and all(
            len({id(after.get(name)) for name in group}) == 1
            for group in first.broken_ties
        )
    return fixes


def _explain(
    root: nn.Module,
    loaded: Mapping[str, Any],
    *,
    assign: bool,
    max_rows: int,
    find_prefix: bool,
    records: Inventory | None = None,
    loader: MetaLoader | None = None,
) -> StateDictReport:
    loader = loader or MetaLoader(root)
    first = loader.attempt(loaded, assign=assign)
    mismatched = {
        match["key"]: (_shape(match["checkpoint"]), _shape(match["module"]))
        for match in _SIZE_MISMATCH.finditer(first.non_strict_error or "")
    }
    # strict=False raised: load again without the mis-shaped keys to learn what
    # else torch would skip (and that dropping them is the fix).
    base: LoadAttempt = first
    if first.non_strict_error is not None and mismatched:
        kept = {k: v for k, v in loaded.items() if k not in mismatched}
        base = loader.attempt(kept, assign=assign)

    expected = root.state_dict(keep_vars=True)
    # The inventory names what torch objected to; a clean load needs none.
    if records is None and (base.missing or base.unexpected or mismatched):
        records = inventory(root)
    kinds = {name: record.kind for record in records or () for name in record.names}
    view = ModuleView(root, records or Inventory(()))
    ties: dict[int, list[str]] = {}
    for name, value in expected.items():
        ties.setdefault(id(value), []).append(name)

    rows: list[KeyReport] = []
    details: dict[str, Any] = {}
    if mismatched:
        checkpoint_shapes = {name: shapes[0] for name, shapes in mismatched.items()}
        try:
            reshaped = reshaped_attempt(root, loaded, checkpoint_shapes, assign=assign)
            fits = reshaped.strict_error is None
        except (AttributeError, RuntimeError, TypeError):  # a key torch named oddly
            fits = False
        details["reshape_fix"] = fits
        if base.non_strict_error is None:
            details["shape_drop"] = (
                tuple(mismatched),
                tuple(name for name in dict.fromkeys(base.missing)),
            )
    for name, (checkpoint_shape, module_shape) in mismatched.items():
        advice = shape_advice(view, name, checkpoint_shape, module_shape)
        rows.append(
            KeyReport(
                name,
                KeyProblem.SHAPE_MISMATCH,
                kinds.get(name),
                False,
                advice,
                checkpoint_shape,
                module_shape,
            )
        )
    # dict.fromkeys: torch lists some keys twice (QAT's fake-quant scale).
    for name in dict.fromkeys(base.missing):
        if name in mismatched:
            continue
        partners = [
            other
            for other in ties.get(id(expected.get(name)), [])
            if other != name and other in loaded
        ]
        kind = kinds.get(name)
        filled = name in base.filled
        extra = extra_state(view, name)
        advice = advice_missing(kind, partners, filled=filled)
        if extra and kind is None:
            advice = f"{extra}: it keeps what the module's __init__ gave it"
        advice = rnn_direction(view, name, missing=True) or advice
        rows.append(
            KeyReport(name, KeyProblem.MISSING, kind, filled and bool(partners), advice)
        )
    for name in dict.fromkeys(base.unexpected):
        kind = kinds.get(name)
        rows.append(unexpected_row(view, name, kind, loaded.get(name)))

    droppable = [
        r.key for r in rows if r.problem is KeyProblem.UNEXPECTED and r.safe_to_ignore
    ]
    if droppable and base is first:
        code, dropped = droppable_code(droppable, loaded)
        after_drop = loader.attempt(dropped, assign=assign)
        details["drop_fix"] = (len(droppable), code, after_drop.strict_error is None)

    prefix_fix = None
    found = _find_prefix(base.missing, base.unexpected) if find_prefix else None
    if found is not None:
        action, prefix, _ = found
        renamed = _renamed(loaded, action, prefix)
        averaged = (
            action == "strip"
            and prefix == "module."
            and _AVERAGED in loaded
            and _AVERAGED not in expected
        )
        if averaged:
            renamed.pop(_AVERAGED)
        after = _explain(
            root,
            renamed,
            assign=assign,
            max_rows=max_rows,
            find_prefix=False,
            records=records,
            loader=loader,
        )
        code = (
            "torch.nn.modules.utils.consume_prefix_in_state_dict_if_present("
            f"state_dict, {prefix!r})"
            if action == "strip"
            else f"state_dict = {{{prefix!r} + key: value for key, value in state_dict.items()}}"
        )
        source = _PREFIX_SOURCES.get(prefix, "")
        if averaged:
            source = (
                "as torch.optim.swa_utils.AveragedModel saves its model, beside "
                f"{_AVERAGED}"
            )
            code = f"state_dict.pop({_AVERAGED!r}); {code}"
        # torch must confirm the rename helps: fewer missing keys, no new shape
        # mismatches; else it is a coincidence of names and is not suggested.
        helps = len(after.missing) < len(set(base.missing)) and len(
            after.shape_mismatches
        ) <= len(mismatched)
        if not helps:
            found = None
    if found is not None:
        action, prefix, _ = found
        # Count what the fix renames: every checkpoint key it touches.
        renames = sum(1 for key in loaded if action == "add" or key.startswith(prefix))
        prefix_fix = PrefixFix(
            prefix, action, renames, source, code, after.loads_strict
        )
        details["remaining"] = tuple(after)

    details["dtype_changes"] = first.dtype_changes
    details["broken_ties"] = first.broken_ties
    if first.dtype_changes or first.broken_ties:
        details.update(_assign_fixes(root, loaded, first, loader))
    non_persistent = (
        [(r.names, r.device) for r in records.of_kind(TensorKind.NON_PERSISTENT_BUFFER)]
        if records is not None
        else non_persistent_buffers(root)
    )
    return StateDictReport(
        rows,
        loads_strict=first.strict_error is None,
        loads_non_strict=first.non_strict_error is None,
        strict_error=first.strict_error,
        non_strict_error=first.non_strict_error,
        prefix_fix=prefix_fix,
        not_restored=tuple(name for names, _ in non_persistent for name in names),
        on_meta=tuple(
            name
            for names, device in non_persistent
            if device.type == "meta"
            for name in names
        ),
        assign=assign,
        max_rows=max_rows,
        _details=details,
    )


__all__ = [
    "KeyProblem",
    "KeyReport",
    "PrefixFix",
    "StateDictReport",
    "explain_state_dict",
]
