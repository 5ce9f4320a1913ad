"""Check that two cold builds of this commit publish the same files: ``nox -s repro``.

Builds the site twice, each time in a fresh scratch copy (so paths differ too),
with the settings ``nox -s docs`` uses (``scratch_site.build_env``), and compares
every published file, byte for byte, except:

* lines that report running times, in text files (``TIMING``), and lines that
  print uninitialised memory, which chapter 12 shows as it is (``UNINITIALISED``);
* in ``searchindex.js``, the pages that print measurements (``MEASURED_PAGES``):
  their text is compared in their HTML, with those lines masked, and the index
  cannot mask a line;
* the files in ``MAY_DIFFER``, each with its reason.

Exits 1 and shows the first differences if anything else differs.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import re
import sys
import tempfile
from pathlib import Path

from scratch_site import build, scratch_copy

# Lines that report how long something took: sphinx-gallery's running times, and
# the measured timings (ms, ratios, winner) of the run-time cost chapter.
TIMING = re.compile(
    r"Total running time of the script|sphx-glr-timing|\d+ minutes? \d+\.\d+ seconds|"
    r"\d+:\d\d\.\d\d\d|\d+\.\d+ seconds|\d+\.\d+ ms|\d\.\d\dx the|fastest here|"
    r"lowest median here|\d+\.\d+ \[\d+\.\d+-\d+\.\d+\]"
)
# Chapter 12 prints what to_empty() left in memory: different on every run.
UNINITIALISED = re.compile(r"uninitialised memory|\d+ of \d+ zero, \d+ not finite: ")
# Published files that may differ between two builds of one commit, and why.
MAY_DIFFER = {
    "_images/sphx_glr_10_mask_cost_*.png": (
        "chapter 10 plots the times it measured (its thumbnail too)"
    ),
}
# Pages that print measurements. What they print can change the words the search
# index lists for them (a ratio "1.17x" is indexed as "17x"; leftover memory may
# make chapter 12's forward pass fail or not, so its words differ), so the index
# is compared without them; their HTML is compared with those lines masked.
MEASURED_PAGES = {
    "auto_examples/10_mask_cost",
    "auto_examples/12_meta_init",
    "auto_examples/13_compile_and_export",
}
TEXT = {".html", ".js", ".txt", ".rst", ".py", ".ipynb", ".json", ".xml", ".css"}


def allowed(name: str) -> str | None:
    """Why ``name`` may differ, or None when it must not."""
    return next(
        (why for pattern, why in MAY_DIFFER.items() if fnmatch.fnmatch(name, pattern)),
        None,
    )


def search_index(path: Path) -> list[str]:
    """``searchindex.js`` with the measured pages left out of every word's pages."""
    text = path.read_text()
    data = json.loads(text[text.index("(") + 1 : text.rindex(")")])
    measured = {
        number for number, name in enumerate(data["docnames"]) if name in MEASURED_PAGES
    }
    terms = {}
    for term, pages in data["terms"].items():
        # Sphinx stores a word found on one page as that page's number, not a list.
        on_pages = pages if isinstance(pages, list) else [pages]
        kept = [page for page in on_pages if page not in measured]
        if kept:
            terms[term] = kept
    data["terms"] = terms
    return json.dumps(data, sort_keys=True, indent=0).splitlines()


def comparable(path: Path) -> list[str] | bytes:
    """Text files as lines without the timing ones; anything else as bytes."""
    if path.name == "searchindex.js":
        return search_index(path)
    if path.suffix not in TEXT:
        return path.read_bytes()
    return [
        line
        for line in path.read_text(errors="replace").splitlines()
        if not TIMING.search(line) and not UNINITIALISED.search(line)
    ]


def compare_sites(first: Path, second: Path) -> tuple[list[str], list[str]]:
    """(files that differ and must not, files that differ and may) between two sites."""
    names = sorted(
        str(path.relative_to(site))
        for site in (first, second)
        for path in site.rglob("*")
        if path.is_file()
    )
    wrong, tolerated = [], []
    for name in dict.fromkeys(names):
        one, two = first / name, second / name
        if one.is_file() and two.is_file():
            if one.read_bytes() == two.read_bytes():
                continue
            if comparable(one) == comparable(two):
                continue
        (tolerated if allowed(name) else wrong).append(name)
    return wrong, tolerated


def show(first: Path, second: Path, name: str) -> None:
    one, two = first / name, second / name
    if not (one.is_file() and two.is_file()):
        print(f"  {name}: only in {'the first' if one.is_file() else 'the second'}")
        return
    left, right = comparable(one), comparable(two)
    if isinstance(left, bytes) or isinstance(right, bytes):
        print(f"  {name}: {len(left)} bytes vs {len(right)} bytes")
        return
    diff = difflib.unified_diff(left, right, name, name, lineterm="", n=0)
    print("\n".join(line[:300] for line in list(diff)[:12]))


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        sites = []
        for name in ("first", "second"):
            repository = scratch_copy(Path(tmp) / name)
            print(f"cold build {name}: {build(repository):.1f} s")
            sites.append(repository / "docs" / "_build" / "html")
        first, second = sites
        count = sum(1 for path in first.rglob("*") if path.is_file())
        wrong, tolerated = compare_sites(first, second)
        for name in tolerated:
            print(f"differs, as allowed: {name} ({allowed(name)})")
        if not wrong:
            print(f"identical: {count} published files (timing lines aside)")
            return 0
        print(f"{len(wrong)} of {count} published files differ:")
        for name in wrong[:8]:
            show(first, second, name)
    return 1


if __name__ == "__main__":
    sys.exit(main())
