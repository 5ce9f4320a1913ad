"""What a reader downloads is what the page shows, and runs where the reader is.

sphinx-gallery renders each chapter without its hidden build-time checks (the
lines between ``# sphinx_gallery_start_ignore`` and ``# sphinx_gallery_end_ignore``)
and writes notebooks without them, but offers the chapter's source file, checks
and all, as the ``.py`` download and inside the zips. After each build this
rewrites the published copies (``_downloads/`` and ``notebooks/``): scripts lose
their hidden blocks, and the notebooks of chapters that import the guide's
library get a first cell that installs it (from the repository at the built
commit, until the package is published). Zips are rewritten with the same
members, cleaned, in a fixed order with fixed timestamps.
"""

from __future__ import annotations

import ast
import json
import os
import time
import zipfile
from pathlib import Path
from typing import Any

from sphinx.application import Sphinx
from sphinx_gallery.py_source_parser import remove_ignore_blocks

LIBRARY = "pytorch_buffers"
# A zip member's timestamp: the build's SOURCE_DATE_EPOCH, else zip's own epoch.
ZIP_EPOCH = 315532800  # 1980-01-01, the earliest time a zip can hold


def imports_library(source: str) -> bool:
    """Whether a chapter's code imports the guide's library (in any import form)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import) and any(
            alias.name.split(".")[0] == LIBRARY for alias in node.names
        ):
            return True
        if (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").split(".")[0] == LIBRARY
        ):
            return True
    return False


def reader_script(source: str, name: str) -> str:
    """The chapter as a reader gets it: no hidden blocks, still valid Python."""
    script = remove_ignore_blocks(source)
    compile(script, name, "exec")  # a marker pair that cut a statement fails here
    return script


def install_cell(repository: str, commit: str | None) -> dict[str, Any]:
    """A notebook cell that installs the library when it is missing."""
    target = f"git+{repository}" + (f"@{commit}" if commit else "")
    return {
        "cell_type": "code",
        "execution_count": None,
        "metadata": {},
        "outputs": [],
        "source": (
            "# This chapter uses the guide's library, pytorch_buffers.\n"
            "try:\n"
            f"    import {LIBRARY}\n"
            "except ModuleNotFoundError:\n"
            f'    %pip install "pytorch-buffers @ {target}"'
        ),
    }


def reader_notebook(text: str, install: dict[str, Any]) -> str:
    """The notebook, with the install cell second when its code uses the library."""
    notebook = json.loads(text)
    sources = [
        "".join(cell["source"])
        for cell in notebook["cells"]
        if cell["cell_type"] == "code"
    ]
    if install["source"] in sources or not imports_library("\n".join(sources)):
        return text
    notebook["cells"].insert(1, install)
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"


def _clean(name: str, data: bytes, install: dict[str, Any]) -> bytes:
    if name.endswith(".py"):
        return reader_script(data.decode(), name).encode()
    if name.endswith(".ipynb"):
        return reader_notebook(data.decode(), install).encode()
    return data


def _rewrite(path: Path, data: bytes) -> None:
    if path.read_bytes() != data:
        path.write_bytes(data)


def _rewrite_zip(path: Path, install: dict[str, Any]) -> None:
    with zipfile.ZipFile(path) as archive:
        members = {
            info.filename: _clean(info.filename, archive.read(info), install)
            for info in archive.infolist()
        }
    stamp = os.environ.get("SOURCE_DATE_EPOCH")
    date_time = time.gmtime(max(int(stamp or 0), ZIP_EPOCH))[:6]
    new = path.with_suffix(".zip.new")
    with zipfile.ZipFile(new, "w") as archive:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=date_time)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, members[name])
    new.replace(path)


def clean_downloads(app: Sphinx, exception: Exception | None) -> None:
    """Rewrite the published scripts, notebooks and zips for readers."""
    if exception is not None or app.builder.format != "html":
        return
    from build_info import build_commit  # noqa: PLC0415

    install = install_cell(app.config.guide_repository, build_commit())
    out = Path(app.outdir)
    for path in sorted(out.glob("_downloads/*/*.py")):
        _rewrite(path, _clean(path.name, path.read_bytes(), install))
    notebooks = [*out.glob("_downloads/*/*.ipynb"), *out.glob("notebooks/*.ipynb")]
    for path in sorted(notebooks):
        _rewrite(path, _clean(path.name, path.read_bytes(), install))
    for path in sorted(out.glob("_downloads/*/*.zip")):
        _rewrite_zip(path, install)


def setup(app: Sphinx) -> dict[str, Any]:
    # After site_links copies the notebooks into notebooks/ (default priority 500).
    app.connect("build-finished", clean_downloads, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
