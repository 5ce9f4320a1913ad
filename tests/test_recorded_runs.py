"""The tests record each chapter's clean output per torch (issue 19): the chapter
pages name those torches and the site diffs their outputs (docs/_ext/recorded_runs.py;
the build's side is checked in tests/test_build_integrity.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import conftest
import pytest
import torch

TINY = 'print("first line")\nanswer = 42\nprint("second line")\n'


def test_record_run_keeps_the_output_under_this_torch(tmp_path: Path) -> None:
    path = conftest.record_run("01_tiny", "old\n", tmp_path)
    path = conftest.record_run("01_tiny", "new\n", tmp_path)  # overwrites
    assert path == tmp_path / f"torch-{torch.__version__}-cpu" / "01_tiny.txt"
    assert path.read_text() == "new\n"
    assert [p.name for p in path.parent.iterdir()] == ["01_tiny.txt"], "a partial file"


def test_run_chapter_records_what_the_chapter_printed(
    run_chapter, tmp_path_factory: pytest.TempPathFactory, monkeypatch
) -> None:
    examples = tmp_path_factory.mktemp("examples")
    recorded = tmp_path_factory.mktemp("recorded")
    (examples / "99_tiny.py").write_text(TINY)
    monkeypatch.setattr(conftest, "EXAMPLES", examples)
    monkeypatch.setattr(conftest, "RECORDED", recorded)
    run = run_chapter("99_tiny", "answer")
    assert run.facts == [42]
    saved = recorded / f"torch-{torch.__version__}-cpu" / "99_tiny.txt"
    # What the chapter printed, without the driver's FACTS line.
    assert saved.read_text() == "first line\nsecond line\n" == run.stdout


def test_a_failed_run_records_nothing(
    run_chapter, tmp_path_factory: pytest.TempPathFactory, monkeypatch
) -> None:
    examples = tmp_path_factory.mktemp("examples")
    recorded = tmp_path_factory.mktemp("recorded")
    (examples / "99_broken.py").write_text('print("half")\nraise SystemExit(3)\n')
    monkeypatch.setattr(conftest, "EXAMPLES", examples)
    monkeypatch.setattr(conftest, "RECORDED", recorded)
    with pytest.raises(AssertionError):
        run_chapter("99_broken")
    assert list(recorded.iterdir()) == []


def test_a_recording_keeps_the_fingerprint_of_the_source_it_ran(tmp_path):
    # The docs build names a torch only for recordings of the chapter as it is now.
    target = conftest.record_run("01_mask_left_behind", "output\n", tmp_path)
    source = (conftest.EXAMPLES / "01_mask_left_behind.py").read_bytes()
    assert (
        target.with_suffix(".sha256").read_text() == hashlib.sha256(source).hexdigest()
    )
