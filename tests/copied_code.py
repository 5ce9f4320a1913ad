"""The harness for code readers copy: every class a chapter offers for reuse, beyond
the page's own case.

A chapter's page runs its classes in one setting (float32, inference, one batch
size, the CPU). Readers train them, cast them to bf16, feed other batch sizes and
lengths, copy them, build them on ``meta`` and compile them. Each :class:`Copied`
entry in ``copied_registry.py`` says how to build a small instance and an input;
the checks here run it in each of those settings and fail with a sentence that
names the setting. A chapter joins by adding entries there, not by writing tests.

The chapter's classes are loaded from its source without running its story
(:func:`definitions`): its imports, classes, functions and UPPER_CASE constants.
"""

from __future__ import annotations

import ast
import copy
import functools
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TRAINING_STEPS = 3
# Largest error relative to the float32 output's largest magnitude: bf16 keeps 8
# significant bits (eps 7.8e-3), fp16 11 (eps 9.8e-4); a few roundings add up.
LOW_PRECISION_TOLERANCE = {torch.bfloat16: 0.05, torch.float16: 0.01}


class PutBack(ast.NodeTransformer):
    """Undoes a fix in a chapter's source, to show that the harness catches the bug.

    ``no_grad``: ``with torch.no_grad():`` blocks run their body in grad mode, and
    ``@torch.no_grad()`` decorators go; ``detach``: ``x.detach()`` becomes ``x``;
    ``grad_guard``: an ``if torch.is_grad_enabled(): ...`` refusal goes.
    """

    def __init__(self, fixes: frozenset[str]) -> None:
        self.fixes = fixes

    @staticmethod
    def is_no_grad(node: ast.expr) -> bool:
        return "no_grad" in ast.unparse(node)

    def visit_With(self, node: ast.With) -> Any:
        self.generic_visit(node)
        if "no_grad" in self.fixes and all(
            self.is_no_grad(item.context_expr) for item in node.items
        ):
            return node.body
        return node

    def visit_If(self, node: ast.If) -> Any:
        self.generic_visit(node)
        if "grad_guard" in self.fixes and "is_grad_enabled" in ast.unparse(node.test):
            return node.orelse or ast.Pass()
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> Any:
        self.generic_visit(node)
        if "no_grad" in self.fixes:
            node.decorator_list = [
                d for d in node.decorator_list if not self.is_no_grad(d)
            ]
        return node

    def visit_Call(self, node: ast.Call) -> Any:
        self.generic_visit(node)
        function = node.func
        if (
            "detach" in self.fixes
            and isinstance(function, ast.Attribute)
            and function.attr == "detach"
            and not node.args
        ):
            return function.value
        return node


@functools.cache
def definitions(
    chapter: str, put_back: frozenset[str] = frozenset()
) -> types.SimpleNamespace:
    """The imports, classes, functions and constants of ``examples/<chapter>.py``.

    Runs those statements alone, in order, so that the classes exist without the
    chapter printing, training or spawning anything. ``device`` is the CPU.
    ``put_back`` names fixes to undo (:class:`PutBack`).
    """
    path = EXAMPLES / f"{chapter}.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    if put_back:
        tree = ast.fix_missing_locations(PutBack(put_back).visit(tree))

    def kept(node: ast.stmt) -> bool:
        if isinstance(node, ast.Import | ast.ImportFrom | ast.ClassDef):
            return True
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            return True
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            return all(isinstance(t, ast.Name) and t.id.isupper() for t in targets)
        return False

    module = ast.Module(body=[n for n in tree.body if kept(n)], type_ignores=[])
    namespace: dict[str, Any] = {
        "__name__": f"chapter_{chapter}",
        "__file__": str(path),
        "device": torch.device("cpu"),
    }
    exec(compile(module, str(path), "exec"), namespace)  # noqa: S102
    return types.SimpleNamespace(**namespace)


Inputs = tuple[Any, ...]


@dataclass(frozen=True)
class Copied:
    """One class (or module-building function) a chapter offers for reuse."""

    chapter: str
    name: str
    # A small instance, built from the chapter's namespace.
    make: Callable[[types.SimpleNamespace], nn.Module]
    # Positional arguments for one forward call: (batch size, length, generator).
    example: Callable[[int, int, torch.Generator], Inputs]
    # Two lengths (sequence length or input size) the class must accept.
    lengths: tuple[int, int] = (5, 8)
    # How to call the module, when plain ``module(*inputs)`` is not it.
    call: Callable[[nn.Module, Inputs], torch.Tensor] = lambda module, inputs: module(
        *inputs
    )
    # Rebuilds the non-persistent state after ``to_empty`` (None: nothing to do).
    reinit: Callable[[nn.Module, Copied], None] | None = None
    # None, or the message (a regex) with which the class refuses to train.
    inference_only: str | None = None
    # A batch's rows do not affect each other (not so for BatchNorm in training).
    rows_independent: bool = True
    # A longer length for the low-precision checks (e.g. positions past 256).
    long_length: int | None = None
    # What the chapter says to run after a dtype cast (None: nothing).
    after_cast: Callable[[nn.Module, Copied], None] | None = None
    # Inductor as well as aot_eager, for classes whose inductor build is cheap.
    inductor: bool = False
    # Fixes undone in the chapter's source (tests of the harness itself).
    put_back: frozenset[str] = frozenset()

    @property
    def id(self) -> str:
        return f"{self.chapter[:2]}.{self.name}"

    def build(self) -> nn.Module:
        return self.make(definitions(self.chapter, self.put_back))

    def inputs(self, batch: int, length: int, seed: int = 0) -> Inputs:
        return self.example(batch, length, torch.Generator().manual_seed(seed))


@dataclass(frozen=True)
class Ranked:
    """Multi-process code a chapter offers for reuse: run on 2 and on 3 ranks."""

    chapter: str
    name: str
    # Runs the job on ``world_size`` ranks; returns what each rank returned.
    run: Callable[[types.SimpleNamespace, int], list[Any]]
    # What must hold of the reports, whatever the world size.
    agrees: Callable[[types.SimpleNamespace, list[Any]], bool] = lambda _ns, _r: True

    @property
    def id(self) -> str:
        return f"{self.chapter[:2]}.{self.name}"


def check_ranks(entry: Ranked, world_size: int) -> None:
    """The job runs on ``world_size`` ranks and each rank reports, in rank order."""
    namespace = definitions(entry.chapter)
    reports = entry.run(namespace, world_size)
    assert len(reports) == world_size, f"{len(reports)} reports from {world_size} ranks"
    assert entry.agrees(namespace, reports), f"on {world_size} ranks: {reports}"


@dataclass(frozen=True)
class Stateful:
    """A class a chapter offers for the state it holds, with no ``forward``
    (buffers registered as the page's fix shows): it must copy, save and load,
    and cast, like any module."""

    chapter: str
    name: str
    make: Callable[[types.SimpleNamespace], nn.Module]

    @property
    def id(self) -> str:
        return f"{self.chapter[:2]}.{self.name}"

    def build(self) -> nn.Module:
        return self.make(definitions(self.chapter))


def tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, persistent or not, by name."""
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def assert_same_tensors(actual: nn.Module, expected: nn.Module, what: str) -> None:
    ours, theirs = tensors(actual), tensors(expected)
    assert list(ours) == list(theirs), f"{what}: other tensors {list(ours)}"
    for name, tensor in theirs.items():
        assert ours[name].dtype == tensor.dtype, f"{what}: {name} is {ours[name].dtype}"
        assert_same(ours[name], tensor, f"{what}: {name}")


def check_state_copies(entry: Stateful) -> None:
    """deepcopy, and a state_dict round trip into an instance built under another
    seed (strict=True), give every tensor back, ties included."""
    with seeded(1):
        module = entry.build()
    with seeded(2):
        fresh = entry.build()
    assert_same_tensors(copy.deepcopy(module), module, "deepcopy")
    assert ties(copy.deepcopy(module)) == ties(module), "deepcopy changed the ties"
    fresh.load_state_dict(module.state_dict(), strict=True)
    assert_same_tensors(fresh, module, "state_dict round trip")
    assert ties(fresh) == ties(module), "a fresh instance has other ties"


def check_state_bfloat16(entry: Stateful) -> None:
    """``.to(torch.bfloat16)`` casts the floating-point tensors, leaves the others,
    and the cast module's state_dict loads into another cast instance."""
    with seeded(1):
        module = entry.build()
    cast_module = copy.deepcopy(module).to(torch.bfloat16)
    for name, tensor in tensors(module).items():
        expected = torch.bfloat16 if tensor.is_floating_point() else tensor.dtype
        got = tensors(cast_module)[name].dtype
        assert got == expected, f".to(bfloat16): {name} is {got}, not {expected}"
    with seeded(2):
        fresh = entry.build().to(torch.bfloat16)
    fresh.load_state_dict(cast_module.state_dict(), strict=True)
    assert_same_tensors(fresh, cast_module, "bfloat16 state_dict round trip")


STATE_CHECKS: dict[str, Callable[[Stateful], None]] = {
    "copies": check_state_copies,
    "bfloat16": check_state_bfloat16,
}


# --------------------------------------------------------------------------
# Helpers


def first_tensor(output: Any) -> torch.Tensor:
    """The output's tensor (the first, when a module returns several)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple | list):
        return first_tensor(output[0])
    if isinstance(output, dict):
        return first_tensor(next(iter(output.values())))
    msg = f"the module returned {type(output).__name__}, not a tensor"
    raise TypeError(msg)


def cast(inputs: Inputs, dtype: torch.dtype) -> Inputs:
    return tuple(
        x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x
        for x in inputs
    )


def first_rows(inputs: Inputs, rows: int) -> Inputs:
    return tuple(x[:rows] if isinstance(x, torch.Tensor) else x for x in inputs)


def trainable(inputs: Inputs) -> Inputs:
    """Float inputs that require grad, so a module without parameters backpropagates."""
    return tuple(
        x.clone().requires_grad_()
        if isinstance(x, torch.Tensor) and x.is_floating_point()
        else x
        for x in inputs
    )


def run(entry: Copied, module: nn.Module, inputs: Inputs) -> torch.Tensor:
    return first_tensor(entry.call(module, inputs))


def non_persistent_buffers(module: nn.Module) -> list[str]:
    saved = module.state_dict(keep_vars=True)
    return [name for name, _ in module.named_buffers() if name not in saved]


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Construct under a seed of our own without disturbing the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def assert_same(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(
        actual, expected, rtol=0, atol=0, msg=lambda m: f"{what}: {m}"
    )


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    scale = expected.abs().max().clamp_min(1e-6)
    return float((actual.float() - expected.float()).abs().max() / scale)


def train_steps(entry: Copied, module: nn.Module, steps: int = TRAINING_STEPS) -> None:
    """``steps`` optimizer steps with backward, as a reader's training loop runs."""
    module.train()
    parameters = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-2) if parameters else None
    length = entry.lengths[0]
    for step in range(steps):
        output = run(entry, module, trainable(entry.inputs(3, length, seed=step)))
        loss = output.float().square().mean()
        loss.backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad()
        assert torch.isfinite(loss), f"step {step + 1}: the loss is {loss.item()}"


def ties(module: nn.Module) -> list[tuple[str, ...]]:
    """Groups of names that hold one and the same tensor (tied weights)."""
    groups: dict[int, list[str]] = {}
    for name, tensor in [
        *module.named_parameters(remove_duplicate=False),
        *module.named_buffers(remove_duplicate=False),
    ]:
        groups.setdefault(id(tensor), []).append(name)
    return sorted(tuple(names) for names in groups.values() if len(names) > 1)


def history_in_buffers(module: nn.Module) -> list[str]:
    return [
        name for name, buffer in module.named_buffers() if buffer.grad_fn is not None
    ]


# --------------------------------------------------------------------------
# The checks: each raises AssertionError (or the error torch raised) on failure.


def check_trains(entry: Copied) -> None:
    """Grad on, three optimizer steps with backward; then copy and save it."""
    module = entry.build()
    if entry.inference_only is not None:
        inputs = trainable(entry.inputs(3, entry.lengths[0]))
        module.train()
        with pytest.raises((RuntimeError, ValueError), match=entry.inference_only):
            run(entry, module, inputs).float().sum().backward()
        return
    before = {name: p.detach().clone() for name, p in module.named_parameters()}
    train_steps(entry, module)
    carrying = history_in_buffers(module)
    assert not carrying, (
        f"after training, buffers {carrying} carry autograd history: update them "
        "under torch.no_grad() (or store .detach()ed values)"
    )
    trained = [n for n, p in module.named_parameters() if not torch.equal(p, before[n])]
    assert not before or trained, "three optimizer steps changed no parameter"
    copied = copy.deepcopy(module)  # fails on a buffer that is a non-leaf
    fresh = entry.build()
    fresh.load_state_dict(copied.state_dict(), strict=True)


def check_batches_and_lengths(entry: Copied) -> None:
    """Batch sizes 1 and 3 and two lengths; a batch's rows match their own run."""
    module = entry.build().eval()
    for length in entry.lengths:
        inputs = entry.inputs(3, length)
        with torch.no_grad():
            batched = run(entry, copy.deepcopy(module), inputs)
            single = run(entry, copy.deepcopy(module), first_rows(inputs, 1))
        assert batched.shape[0] == 3, f"length {length}: batch 3 gave {batched.shape}"
        assert single.shape[0] == 1, f"length {length}: batch 1 gave {single.shape}"
        assert torch.isfinite(batched).all(), f"length {length}: non-finite output"
        if entry.rows_independent:
            torch.testing.assert_close(
                batched[:1],
                single,
                rtol=1e-4,
                atol=1e-5,
                msg=lambda m, n=length: (
                    f"length {n}: row 0 of a batch of 3 differs "
                    f"from the same row alone: {m}"
                ),
            )


def check_low_precision(entry: Copied, dtype: torch.dtype) -> None:
    """The module cast to ``dtype``, and float32 under CPU autocast, stay close."""
    module = entry.build().eval()
    tolerance = LOW_PRECISION_TOLERANCE[dtype]
    lengths = [*entry.lengths, *([entry.long_length] if entry.long_length else [])]
    for length in lengths:
        inputs = entry.inputs(2, length)
        with torch.no_grad():
            reference = run(entry, copy.deepcopy(module), inputs)
            cast_module = copy.deepcopy(module).to(dtype)
            if entry.after_cast is not None:
                entry.after_cast(cast_module, entry)
            cast_output = run(entry, cast_module, cast(inputs, dtype))
            with torch.autocast("cpu", dtype=dtype):
                autocast_output = run(entry, copy.deepcopy(module), inputs)
        for how, output in (("module.to", cast_output), ("autocast", autocast_output)):
            assert torch.isfinite(output).all(), f"{how}({dtype}), length {length}"
            error = relative_error(output, reference)
            assert error <= tolerance, (
                f"{how}({dtype}), length {length}: off by {error:.3g} of the float32 "
                f"output's scale (allowed {tolerance})"
            )
        assert cast_output.dtype == dtype, (
            f"module.to({dtype}) returned {cast_output.dtype}"
        )


def check_copies(entry: Copied) -> None:
    """deepcopy, and a state_dict round trip into a fresh instance (strict=True)."""
    with seeded(1):
        module = entry.build().eval()
    with seeded(2):
        fresh = entry.build().eval()
    inputs = entry.inputs(2, entry.lengths[-1])
    fresh.load_state_dict(module.state_dict(), strict=True)
    assert ties(copy.deepcopy(module)) == ties(module), "deepcopy changed the ties"
    assert ties(fresh) == ties(module), "a fresh instance has other ties"
    with torch.no_grad():
        expected = run(entry, copy.deepcopy(module), inputs)
        assert_same(run(entry, copy.deepcopy(module), inputs), expected, "deepcopy")
        assert_same(run(entry, fresh, inputs), expected, "state_dict round trip")


def check_meta_init(entry: Copied) -> None:
    """Built on ``meta``, materialised with ``to_empty``, re-initialised, loaded."""
    with seeded(1):
        reference = entry.build().eval()
    with torch.device("meta"):
        module = entry.build().eval()
    on_meta = [n for n, t in module.state_dict(keep_vars=True).items()]
    placed = {t.device.type for t in [*module.parameters(), *module.buffers()]}
    assert placed <= {"meta"}, f"built under torch.device('meta'), tensors on {placed}"
    module.to_empty(device="cpu")
    rebuild = non_persistent_buffers(module)
    if entry.reinit is None:
        assert not rebuild, (
            f"non-persistent buffers {rebuild} hold uninitialised memory after "
            "to_empty(); the entry must name how the chapter rebuilds them"
        )
    else:
        entry.reinit(module, entry)
    module.load_state_dict(reference.state_dict(), strict=True)
    assert on_meta == list(module.state_dict()), "the state_dict keys changed"
    assert ties(module) == ties(reference), (
        f"tied tensors {ties(reference)} are not tied after meta + to_empty + load: "
        f"{ties(module)}"
    )
    inputs = entry.inputs(2, entry.lengths[-1])
    with torch.no_grad():
        assert_same(
            run(entry, module, inputs),
            run(entry, copy.deepcopy(reference), inputs),
            "meta + to_empty + re-initialisation + load",
        )


def check_compiles(entry: Copied, backend: str = "aot_eager") -> None:
    """torch.compile gives eager's output at two lengths, and trains if it may."""
    torch._dynamo.reset()
    module = entry.build().eval()
    compiled_module = copy.deepcopy(module)
    compiled = torch.compile(compiled_module, backend=backend)
    for length in entry.lengths:
        inputs = entry.inputs(2, length)
        with torch.no_grad():
            expected = run(entry, copy.deepcopy(module), inputs)
            # Same state before the call: a stateful module compares like with like.
            compiled_module.load_state_dict(module.state_dict())
            for (_, ours), (_, theirs) in zip(
                compiled_module.named_buffers(), module.named_buffers(), strict=True
            ):
                ours.copy_(theirs)
            actual = run(entry, compiled, inputs)
        torch.testing.assert_close(
            actual,
            expected,
            rtol=1e-4,
            atol=1e-5,
            msg=lambda m, n=length: f"{backend}, length {n}: {m}",
        )
    if entry.inference_only is None and backend == "aot_eager":
        trained = copy.deepcopy(module)
        train_steps(entry, torch.compile(trained, backend=backend))
        carrying = history_in_buffers(trained)
        assert not carrying, f"compiled training left history in buffers {carrying}"
    torch._dynamo.reset()


def check_inductor(entry: Copied) -> None:
    """The same as check_compiles, with inductor (only where it compiles quickly)."""
    check_compiles(entry, backend="inductor")


CHECKS: dict[str, Callable[[Copied], None]] = {
    "trains": check_trains,
    "batches_and_lengths": check_batches_and_lengths,
    "bfloat16": functools.partial(check_low_precision, dtype=torch.bfloat16),
    "float16": functools.partial(check_low_precision, dtype=torch.float16),
    "copies": check_copies,
    "meta_init": check_meta_init,
    "compiles": check_compiles,
}
# Only for entries with ``inductor=True``: a C++ build per graph costs seconds.
INDUCTOR_CHECKS = {"compiles_with_inductor": check_inductor}
