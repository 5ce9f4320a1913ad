"""Time the docs build as a writer meets it: ``nox -s bench`` (or run with the docs env).

In a scratch copy of the repository: a cold build, a no-op rebuild, a rebuild
after editing one chapter, and one after editing the prose of a MyST page, each
repeated; prints medians, and the edited-chapter rebuild against that chapter's
own run time as a script.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scratch_site import build, scratch_copy

CHAPTER = Path("examples/02_register_buffer.py")
PAGE = Path("docs/index.md")


def chapter_run_time(repository: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, str(CHAPTER)], cwd=repository, check=True, capture_output=True
    )
    return time.perf_counter() - start


def append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    repeats = parser.parse_args().repeats
    times: dict[str, list[float]] = {
        "cold": [], "no-op": [], "chapter edited": [], "page edited": [], "chapter as script": [],
    }  # fmt: skip
    for attempt in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            repository = scratch_copy(Path(tmp) / "repo")
            times["cold"].append(build(repository))
            times["no-op"].append(build(repository))
            append(repository / CHAPTER, f"\n# edit {attempt}\n")
            times["chapter edited"].append(build(repository))
            append(repository / PAGE, f"\nAn edited sentence, {attempt}.\n")
            times["page edited"].append(build(repository))
            times["chapter as script"].append(chapter_run_time(repository))
            shutil.rmtree(repository)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"median of {repeats} runs, {sys.platform}, Python {sys.version.split()[0]}")
    for name, value in medians.items():
        print(
            f"{name:18} {value:6.2f} s   (runs: {', '.join(f'{v:.2f}' for v in times[name])})"
        )
    extra = medians["chapter edited"] - medians["chapter as script"]
    print(
        f"chapter-edited rebuild / chapter's own run time: "
        f"{medians['chapter edited'] / medians['chapter as script']:.1f}x "
        f"({extra:.2f} s on top of the chapter's run)"
    )


if __name__ == "__main__":
    main()
