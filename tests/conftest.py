"""Shared fixtures: run a chapter the way a reader would, as a script."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TESTS = ROOT / "tests"
DRIVER = Path(__file__).with_name("chapter_driver.py")
# Each chapter's output from its last clean run, per torch (docs/_ext/recorded_runs.py
# names these torches on the chapter pages and diffs their outputs).
RECORDED = ROOT / "docs" / "_build" / "recorded-runs"


def recording(stem: str, folder: Path | None = None) -> Path:
    """Where a clean CPU run of chapter ``stem`` on this torch is kept."""
    import torch  # noqa: PLC0415 (the chapters' runs import it anyway)

    return (folder or RECORDED) / f"torch-{torch.__version__}-cpu" / f"{stem}.txt"


def forget_run(stem: str) -> None:
    """Drop the recording of ``stem`` before it runs again: a run that fails
    must not leave an earlier clean run standing for the same source."""
    target = recording(stem)
    target.unlink(missing_ok=True)
    target.with_suffix(".sha256").unlink(missing_ok=True)


def record_run(stem: str, output: str, folder: Path | None = None) -> Path:
    """Keep ``output``, a clean CPU run of chapter ``stem``, under
    ``RECORDED/torch-<torch.__version__>-cpu/<stem>.txt``; return that file."""
    target = recording(stem, folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    source = EXAMPLES / f"{stem}.py"
    # The source it ran: a recording of an edited chapter is stale, not "clean".
    fingerprint = target.with_suffix(".sha256")
    fingerprint.unlink(missing_ok=True)
    partial = target.with_name(f".{stem}.{os.getpid()}.tmp")
    partial.write_text(output)
    partial.replace(target)  # a reader never sees half a file
    if source.is_file():
        fingerprint.write_text(hashlib.sha256(source.read_bytes()).hexdigest())
    return target


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--site",
        default=None,
        help="a built site (docs/_build/html) to run the browser suite in tests/browser on",
    )


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """The browser suite needs a built site and a browser: only with --site."""
    if "browser" in collection_path.parts and not config.getoption("--site"):
        return True
    return None


@dataclass
class ChapterRun:
    """What one run of a chapter printed, the facts asked of it, and its folder."""

    stdout: str
    facts: list[Any]
    cwd: Path


@pytest.fixture
def run_chapter(tmp_path: Path):
    """Run ``examples/<stem>.py`` on the CPU in an empty folder; return a ChapterRun."""

    def run(stem: str, *expressions: str) -> ChapterRun:
        forget_run(stem)
        env = {
            **os.environ,
            "GUIDE_DEVICE": "cpu",
            "PYTHONHASHSEED": "0",
            "MPLBACKEND": "Agg",
        }
        result = subprocess.run(
            [sys.executable, str(DRIVER), str(EXAMPLES / f"{stem}.py"), *expressions],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        # A reader's folder stays clean: chapters write only to temporary folders.
        assert list(tmp_path.iterdir()) == [], "the chapter wrote to its working dir"
        output, _, facts = result.stdout.rpartition("FACTS:")
        record_run(stem, output)
        return ChapterRun(stdout=output, facts=json.loads(facts), cwd=tmp_path)

    return run
