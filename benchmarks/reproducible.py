"""Check that two cold builds of this commit give the same pages: ``nox -s repro``.

Builds the site twice, each time in a fresh scratch copy (so paths differ too),
with the same ``SOURCE_DATE_EPOCH``, and compares every HTML page after removing
the lines that report running times. Exits 1 and shows the first differences if
any page differs.
"""

from __future__ import annotations

import difflib
import re
import sys
import tempfile
from pathlib import Path

from scratch_site import build, scratch_copy

# Lines that report how long something took: sphinx-gallery's running times, and
# the measured timings (ms, ratios, winner) of the run-time cost chapter.
TIMING = re.compile(
    r"Total running time of the script|sphx-glr-timing|\d+ minutes? \d+\.\d+ seconds|"
    r"\d+:\d\d\.\d\d\d|\d+\.\d+ seconds|\d+\.\d+ ms|\d\.\d\dx the|fastest here"
)


def pages(site: Path) -> dict[str, list[str]]:
    return {
        str(path.relative_to(site)): [
            line for line in path.read_text().splitlines() if not TIMING.search(line)
        ]
        for path in sorted(site.rglob("*.html"))
    }


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        sites = []
        for name in ("first", "second"):
            repository = scratch_copy(Path(tmp) / name)
            print(f"cold build {name}: {build(repository):.1f} s")
            sites.append(pages(repository / "docs" / "_build" / "html"))
    first, second = sites
    differing = sorted(
        n for n in first.keys() | second.keys() if first.get(n) != second.get(n)
    )
    if not differing:
        print(f"identical: {len(first)} pages (timing lines aside)")
        return 0
    print(f"{len(differing)} of {len(first)} pages differ:")
    for name in differing[:5]:
        diff = difflib.unified_diff(
            first.get(name, []), second.get(name, []), lineterm="", n=0
        )
        print("\n".join(list(diff)[:12]))
    return 1


if __name__ == "__main__":
    sys.exit(main())
