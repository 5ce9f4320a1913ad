"""Build the site in a scratch copy of the repository (for the build benchmark, the
reproducibility check and tests/test_build_integrity.py), with the Python that runs
this module, under the same settings as ``nox -s docs`` (``build_env``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build_env() -> dict[str, str]:
    """The reproducible-build settings ``nox -s docs`` also uses (keep them alike).

    ``SOURCE_DATE_EPOCH``: the last commit's time unless already set, so the banner's
    date and the zips' timestamps depend on the commit, not on the clock.
    ``PYTHONHASHSEED=0``: no set or dict order that varies between runs.
    """
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if not epoch:
        result = subprocess.run(
            ["git", "log", "-1", "--format=%ct"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        epoch = result.stdout.strip() or "1767225600"  # outside git: 2026-01-01
    return {"SOURCE_DATE_EPOCH": epoch, "PYTHONHASHSEED": "0"}


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


def sphinx_command(repository: Path) -> list[str]:
    """The strict build ``nox -s docs`` runs, in ``repository``."""
    docs = repository / "docs"
    return [
        sys.executable, "-m", "sphinx", "-b", "html", "-n", "-W", "--keep-going", "-q",
        "-d", str(docs / "_build" / "doctrees-html"), str(docs), str(docs / "_build" / "html"),
    ]  # fmt: skip


def build(repository: Path) -> float:
    """Run the strict Sphinx build in ``repository``; return its wall time in seconds."""
    env = {**os.environ, **build_env()}
    start = time.perf_counter()
    subprocess.run(sphinx_command(repository), cwd=repository, env=env, check=True)
    return time.perf_counter() - start


TINY_INDEX = """# A tiny site

```{toctree}
auto_examples/index
%s
```
"""


def tiny_site(
    destination: Path, chapters: dict[str, str], pages: dict[str, str] | None = None
) -> Path:
    """A scratch copy with the real conf.py and extensions, but only ``chapters``
    (``{"01_name.py": code}``) in its gallery and ``pages`` (``{"name.md": text}``)
    beside its index: it builds in seconds, for tests of the build itself."""
    scratch_copy(destination)
    for chapter in (destination / "examples").glob("*.py"):
        chapter.unlink()
    for name, code in chapters.items():
        (destination / "examples" / name).write_text(code)
    docs = destination / "docs"
    for page in docs.glob("*.md"):
        page.unlink()
    pages = pages or {}
    for name, text in pages.items():
        (docs / name).write_text(text)
    toctree = "\n".join(name.removesuffix(".md") for name in pages)
    (docs / "index.md").write_text(TINY_INDEX % toctree)
    return destination
