"""What a reader downloads holds the chapter as the page shows it, nothing more."""

from __future__ import annotations

import ast
import json
import re
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "docs" / "_ext"))
from library_wheel import wheel_url  # the address every install line gives

CHAPTERS = sorted(path.stem for path in (ROOT / "examples").glob("[0-9][0-9]_*.py"))
MARKERS = ("sphinx_gallery_start_ignore", "sphinx_gallery_end_ignore")
# A Sphinx role (:func:`x`, :py:class:`y`, :doc:`z`): Jupyter shows it as raw text.
ROLE = re.compile(r":(?:py:)?[a-z]+:`")


def published(site: Path) -> dict[str, str]:
    """Every published script and notebook, loose or zipped, by a readable name."""
    files = {
        str(path.relative_to(site)): path.read_text()
        for pattern in ("_downloads/*/*.py", "_downloads/*/*.ipynb", "notebooks/*")
        for path in site.glob(pattern)
    }
    for path in site.glob("_downloads/*/*.zip"):
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                files[f"{path.name}:{name}"] = archive.read(name).decode()
    return files


def uses_library(chapter: str) -> bool:
    tree = ast.parse((ROOT / "examples" / f"{chapter}.py").read_text())
    return any(
        isinstance(node, ast.Import | ast.ImportFrom)
        and "pytorch_buffers" in ast.unparse(node)
        for node in ast.walk(tree)
    )


def test_no_hidden_check_is_published(site: Path) -> None:
    files = published(site)
    assert len(files) >= 4 * len(CHAPTERS)  # .py, .ipynb, zipped .py and .ipynb
    leaked = [name for name, text in files.items() if any(m in text for m in MARKERS)]
    assert not leaked


def test_published_scripts_are_python(site: Path) -> None:
    for name, text in published(site).items():
        if name.endswith(".py"):
            compile(text, name, "exec")


@pytest.mark.parametrize("chapter", [c for c in CHAPTERS if uses_library(c)])
def test_library_chapters_install_it_first(site: Path, chapter: str) -> None:
    for path in [
        *site.glob(f"_downloads/*/{chapter}.ipynb"),
        site / "notebooks" / f"{chapter}.ipynb",
    ]:
        cells = json.loads(path.read_text())["cells"]
        install = "".join(cells[1]["source"])
        # The wheel shipped with the site, as the .py download names it too.
        assert f"%pip install {wheel_url()}" in install


def test_notebooks_carry_no_sphinx_roles(site: Path) -> None:
    """Roles in a chapter's prose become Markdown links (chapter 4 had four)."""
    raw = {
        name: ROLE.findall("".join(cell["source"]))
        for name, text in published(site).items()
        if name.endswith(".ipynb")
        for cell in json.loads(text)["cells"]
        if cell["cell_type"] == "markdown" and ROLE.search("".join(cell["source"]))
    }
    assert raw == {}
    chapter4 = (site / "notebooks" / "04_find_the_stray.ipynb").read_text()
    assert "[`pytorch_buffers.inventory()`](https://" in chapter4
    assert "/api.html#pytorch_buffers.inventory)" in chapter4
