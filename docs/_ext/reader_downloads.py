"""What a reader downloads is what the page shows, and runs where the reader is.

sphinx-gallery renders each chapter without its hidden build-time checks (the
lines between ``# sphinx_gallery_start_ignore`` and ``# sphinx_gallery_end_ignore``)
and writes notebooks without them, but offers the chapter's source file, checks
and all, as the ``.py`` download and inside the zips. After each build this
rewrites the published copies (``_downloads/`` and ``notebooks/``): scripts lose
their hidden blocks, and the notebooks of chapters that import the guide's
library get a first cell that installs it (from the repository at the built
commit, until the package is published). Zips get the same treatment.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from sphinx.application import Sphinx
from sphinx_gallery.py_source_parser import remove_ignore_blocks

LIBRARY = "pytorch_buffers"


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
    """The notebook with the install cell second (once)."""
    notebook = json.loads(text)
    if install in notebook["cells"]:
        return text
    notebook["cells"].insert(1, install)
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"


def _clean(name: str, data: bytes, install: dict[str, Any], users: set[str]) -> bytes:
    stem, _, suffix = name.rpartition(".")
    if suffix == "py":
        return reader_script(data.decode(), name).encode()
    if suffix == "ipynb" and Path(stem).name in users:
        return reader_notebook(data.decode(), install).encode()
    return data


def _rewrite(path: Path, data: bytes) -> None:
    if path.read_bytes() != data:
        path.write_bytes(data)


def _rewrite_zip(path: Path, install: dict[str, Any], users: set[str]) -> None:
    # build_guard.publish then gives every zip a fixed order and timestamps.
    with zipfile.ZipFile(path) as archive:
        members = [
            (info, _clean(info.filename, archive.read(info), install, users))
            for info in archive.infolist()
        ]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for info, data in members:
            archive.writestr(info, data)


def clean_downloads(app: Sphinx, exception: Exception | None) -> None:
    """Rewrite the published scripts, notebooks and zips for readers."""
    if exception is not None or app.builder.format != "html":
        return
    from build_info import build_commit  # noqa: PLC0415
    from gallery_hooks import imports_library  # noqa: PLC0415

    install = install_cell(app.config.guide_repository, build_commit())
    examples = Path(app.srcdir).parent / "examples"
    users = {path.stem for path in examples.glob("*.py") if imports_library(path)}
    out = Path(app.outdir)
    for path in sorted(out.glob("_downloads/*/*.py")):
        _rewrite(path, _clean(path.name, path.read_bytes(), install, users))
    notebooks = [*out.glob("_downloads/*/*.ipynb"), *out.glob("notebooks/*.ipynb")]
    for path in sorted(notebooks):
        _rewrite(path, _clean(path.name, path.read_bytes(), install, users))
    for path in sorted(out.glob("_downloads/*/*.zip")):
        _rewrite_zip(path, install, users)


def setup(app: Sphinx) -> dict[str, Any]:
    # After site_links copies the notebooks into notebooks/ (default priority 500),
    # before build_guard publishes the staging folder (1000).
    app.connect("build-finished", clean_downloads, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
