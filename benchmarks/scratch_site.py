"""Build the site in a scratch copy of the repository (for the build benchmark and
the reproducibility check), with the Python that runs this module."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Fixed date for every build, so the build-info line does not differ.
SOURCE_DATE_EPOCH = "1767225600"  # 2026-01-01


def scratch_copy(destination: Path) -> Path:
    """Copy the files git tracks (and untracked, unignored ones) to ``destination``."""
    listing = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listing.split("\0")):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def build(repository: Path) -> float:
    """Run the strict Sphinx build in ``repository``; return its wall time in seconds."""
    docs = repository / "docs"
    command = [
        sys.executable, "-m", "sphinx", "-b", "html", "-n", "-W", "--keep-going", "-q",
        "-d", str(docs / "_build" / "doctrees-html"), str(docs), str(docs / "_build" / "html"),
    ]  # fmt: skip
    env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH, "PYTHONHASHSEED": "0"}
    start = time.perf_counter()
    subprocess.run(command, cwd=repository, env=env, check=True)
    return time.perf_counter() - start
