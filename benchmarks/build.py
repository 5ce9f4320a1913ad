"""Time the docs build as a writer meets it: ``nox -s bench`` (or run with the docs env).

In a scratch copy of the repository, in one run: a cold build; no-op rebuilds
with plain ``nox -s docs`` and with ``sphinx-build`` alone, each against
Sphinx's floor (a one-page site on the same stack: furo, MyST-NB and
sphinx-gallery with an empty gallery, built with ``sphinx-build`` in the same
environment); a rebuild after editing one chapter, against that chapter's own
run as a script; and one after editing the prose of a MyST page. Prints the
median and the fastest of each. The no-op rounds alternate between the three
builds, and the ratios use the fastest run of each, the one least disturbed by
whatever else the machine was doing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scratch_site import build, build_env, scratch_copy

ROOT = Path(__file__).resolve().parent.parent
CHAPTER = Path("examples/02_register_buffer.py")
PAGE = Path("docs/index.md")
NOX_NO_OP_TARGET = 1.5  # plain `nox -s docs` on an up-to-date tree, x the floor
SPHINX_NO_OP_TARGET = 1.2  # sphinx-build alone, x the floor

FLOOR_CONF = """\
project = "floor"
extensions = ["myst_nb", "sphinx_gallery.gen_gallery"]
html_theme = "furo"
exclude_patterns = ["_build", "examples", "auto_examples/*.ipynb"]
sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "auto_examples",
    "image_scrapers": (),
    "reset_modules": (),
}
"""


def timed(command: list[str], cwd: Path) -> float:
    # The settings build() uses, so that the three builds see one banner (its date
    # comes from SOURCE_DATE_EPOCH; the scratch copy has no git history of its own).
    env = {**os.environ, **build_env()}
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def floor_site(destination: Path) -> list[str]:
    """A one-page site on the guide's stack; returns its sphinx-build command."""
    (destination / "examples").mkdir(parents=True)
    (destination / "examples" / "GALLERY_HEADER.rst").write_text("Gallery\n=======\n")
    (destination / "conf.py").write_text(FLOOR_CONF)
    (destination / "index.md").write_text(
        "# Floor\n\nOne page.\n\n```{toctree}\nauto_examples/index\n```\n"
    )
    return [
        sys.executable, "-m", "sphinx", "-b", "html", "-q",
        "-d", str(destination / "_build" / "doctrees"), str(destination),
        str(destination / "_build" / "html"),
    ]  # fmt: skip


def nox_docs() -> list[str]:
    """Plain ``nox -s docs`` (run in the scratch copy), reusing this checkout's docs
    environment."""
    nox = os.environ.get("GUIDE_NOX_PYTHON")
    launcher = [nox, "-m", "nox"] if nox else [shutil.which("nox") or "nox"]
    return [*launcher, "-s", "docs", "--envdir", str(ROOT / ".nox")]


ALWAYS_WRITTEN = {"genindex.html", "search.html", "py-modindex.html", "404.html"}


def page_times(repository: Path) -> dict[Path, int]:
    """The published pages made from a source, with their modification times."""
    site = repository / "docs" / "_build" / "html"
    return {
        path: path.stat().st_mtime_ns
        for path in site.rglob("*.html")
        if path.name not in ALWAYS_WRITTEN
    }


def written(before: dict[Path, int], repository: Path) -> int:
    """How many of those pages the last build wrote again."""
    after = page_times(repository)
    return sum(after.get(path) != when for path, when in before.items())


def append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def summary(values: list[float]) -> str:
    runs = ", ".join(f"{value:.2f}" for value in values)
    return (
        f"median {statistics.median(values):6.2f} s, fastest {min(values):6.2f} s"
        f"   (runs: {runs})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5, help="rounds of each rebuild")
    repeats = parser.parse_args().repeats
    with tempfile.TemporaryDirectory() as tmp:
        repository = scratch_copy(Path(tmp) / "repo")
        floor = floor_site(Path(tmp) / "floor")
        print("cold builds (the guide runs every chapter)...", flush=True)
        cold = build(repository)
        timed(floor, Path(tmp))  # the floor's own cold build, untimed
        times: dict[str, list[float]] = {
            "floor no-op": [], "sphinx-build no-op": [], "nox -s docs no-op": [],
            "chapter edited": [], "chapter as script": [], "page edited": [],
        }  # fmt: skip
        print(f"{repeats} rounds of no-op rebuilds...", flush=True)
        rewritten: list[int] = []  # pages each guide no-op wrote (should be 0)
        for _ in range(repeats):
            times["floor no-op"].append(timed(floor, Path(tmp)))
            before = page_times(repository)
            times["sphinx-build no-op"].append(build(repository))
            rewritten.append(written(before, repository))
            before = page_times(repository)
            times["nox -s docs no-op"].append(timed(nox_docs(), repository))
            rewritten.append(written(before, repository))
        pages = len(page_times(repository))
        print(f"{repeats} rounds of edits...", flush=True)
        for attempt in range(repeats):
            append(repository / CHAPTER, f"\n# edit {attempt}\n")
            times["chapter edited"].append(build(repository))
            times["chapter as script"].append(
                timed([sys.executable, str(CHAPTER)], repository)
            )
            append(repository / PAGE, f"\nAn edited sentence, {attempt}.\n")
            times["page edited"].append(build(repository))
    print(f"\n{repeats} runs each, {sys.platform}, Python {sys.version.split()[0]}")
    print(f"{'cold build':20} {cold:6.2f} s")
    for name, values in times.items():
        print(f"{name:20} {summary(values)}")
    print(
        f"pages written by the no-op rebuilds (of {pages}): "
        + ", ".join(map(str, rewritten))
    )
    fastest = {name: min(values) for name, values in times.items()}
    for name, target in (
        ("nox -s docs no-op", NOX_NO_OP_TARGET),
        ("sphinx-build no-op", SPHINX_NO_OP_TARGET),
    ):
        ratio = fastest[name] / fastest["floor no-op"]
        verdict = "within" if ratio <= target else "OVER"
        print(f"{name} / floor: {ratio:.2f}x ({verdict} the {target}x target)")
    extra = fastest["chapter edited"] - fastest["chapter as script"]
    print(
        "chapter-edited rebuild / chapter's own run time: "
        f"{fastest['chapter edited'] / fastest['chapter as script']:.1f}x "
        f"({extra:.2f} s on top of the chapter's run)"
    )
    print("(ratios from the fastest run of each)")


if __name__ == "__main__":
    main()
