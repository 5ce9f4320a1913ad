"""Every class a chapter offers for reuse, in the settings readers use it in.

The settings are ``copied_code.CHECKS``; the classes are ``copied_registry.REGISTRY``.
"""

from __future__ import annotations

import ast
import dataclasses

import pytest
from copied_code import (
    CHECKS,
    EXAMPLES,
    INDUCTOR_CHECKS,
    STATE_CHECKS,
    Copied,
    Ranked,
    Stateful,
    check_ranks,
)
from copied_registry import NOT_OFFERED, RANKED, REGISTRY, STATEFUL

RUNS = [(entry, check) for entry in REGISTRY for check in CHECKS] + [
    (entry, check) for entry in REGISTRY if entry.inductor for check in INDUCTOR_CHECKS
]


@pytest.mark.parametrize(
    ("entry", "check"), RUNS, ids=[f"{entry.id}-{check}" for entry, check in RUNS]
)
def test_copied_code(entry: Copied, check: str) -> None:
    {**CHECKS, **INDUCTOR_CHECKS}[check](entry)


STATE_RUNS = [(entry, check) for entry in STATEFUL for check in STATE_CHECKS]


@pytest.mark.parametrize(
    ("entry", "check"),
    STATE_RUNS,
    ids=[f"{entry.id}-{check}" for entry, check in STATE_RUNS],
)
def test_copied_state(entry: Stateful, check: str) -> None:
    STATE_CHECKS[check](entry)


def chapter_classes() -> set[tuple[str, str]]:
    """Every class defined at the top of a chapter: (chapter, class name)."""
    found = set()
    for path in sorted(EXAMPLES.glob("[0-9][0-9]_*.py")):
        tree = ast.parse(path.read_text())
        found |= {(path.stem, n.name) for n in tree.body if isinstance(n, ast.ClassDef)}
    return found


def test_every_chapter_class_is_checked_or_says_why_not() -> None:
    checked = {
        (entry.chapter, entry.name.partition("(")[0])
        for entry in [*REGISTRY, *STATEFUL]
    }
    classes = chapter_classes()
    unaccounted = sorted(classes - checked - set(NOT_OFFERED))
    assert not unaccounted, (
        f"chapter classes neither in the harness nor in NOT_OFFERED: {unaccounted}"
    )
    stale = sorted((set(NOT_OFFERED) | checked) - classes)
    assert not stale, f"registered classes no chapter defines: {stale}"
    both = sorted(checked & set(NOT_OFFERED))
    assert not both, f"in the harness and in NOT_OFFERED: {both}"


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("entry", RANKED, ids=lambda entry: entry.id)
def test_copied_multi_process_code(entry: Ranked, world_size: int) -> None:
    check_ranks(entry, world_size)


def registered(entry_id: str) -> Copied:
    (entry,) = [entry for entry in REGISTRY if entry.id == entry_id]
    return entry


# Bugs a review found in code readers copied, each put back into today's source:
# the harness must fail on each (and passes on the fixed code above).
PUT_BACK = [
    # Chapter 13: RunningMean updated its buffers in grad mode; training failed at
    # its second backward ("Trying to backward through the graph a second time").
    ("13.RunningMean", "no_grad", "trains"),
    ("13.RunningMean", "no_grad", "compiles"),
    ("19.PeakScaledFixed", "no_grad", "trains"),
    ("19.PeakScaledFixed", "no_grad", "compiles"),
    # Chapter 8: the cache stored keys and values with their autograd history
    # (now it refuses grad mode; put back, the history is what training finds).
    ("08.TinyGPT(use_cache=True)", "grad_guard", "trains"),
]


@pytest.mark.parametrize(("entry_id", "fix", "check"), PUT_BACK)
def test_harness_catches_a_put_back_bug(entry_id: str, fix: str, check: str) -> None:
    entry = dataclasses.replace(
        registered(entry_id), put_back=frozenset({fix}), inference_only=None
    )
    with pytest.raises((AssertionError, RuntimeError)):
        CHECKS[check](entry)
