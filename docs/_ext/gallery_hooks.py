"""Hooks that sphinx-gallery calls by dotted name (function objects break ``-W``)."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any


def matplotlib_scraper(
    block: Any, block_vars: Any, gallery_conf: Any, **kwargs: Any
) -> str:
    """sphinx-gallery's matplotlib scraper, for chapters that imported pyplot only.

    Naming ``"matplotlib"`` in ``image_scrapers`` imports matplotlib whenever the
    configuration loads, a second of every no-op rebuild; this defers it.
    """
    if "matplotlib.pyplot" not in sys.modules:
        return ""
    from sphinx_gallery.scrapers import matplotlib_scraper as scrape  # noqa: PLC0415

    return str(scrape(block, block_vars, gallery_conf, **kwargs))


def reset_torch(gallery_conf: dict[str, Any], fname: str) -> None:
    """Give every chapter the same fresh global torch state, whatever ran before it."""
    import torch  # noqa: PLC0415 (only when a chapter runs; a no-op rebuild never pays)

    folders = gallery_conf["examples_dirs"]
    folders = [folders] if isinstance(folders, str) else folders
    sources = [Path(gallery_conf["src_dir"], folder, fname) for folder in folders]
    if any(path.is_file() and "matplotlib" in path.read_text() for path in sources):
        # What sphinx-gallery does for its own matplotlib scraper: a non-interactive
        # backend, and plt.show() as a no-op, before the chapter runs.
        import matplotlib as mpl  # noqa: PLC0415

        mpl.use("agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415

        plt.show = lambda *args, **kwargs: None  # noqa: ARG005

    torch.manual_seed(0)
    torch.set_default_dtype(torch.float32)
    torch.set_default_device(None)


def rerun_chapters_when_library_changes(
    examples: Path, gallery: Path, library: Path, stamp: Path
) -> list[str]:
    """Make sphinx-gallery re-execute the chapters that import the library after it changed.

    sphinx-gallery re-runs a chapter only when the chapter's own file changed (it
    keeps an ``.md5`` of each). When the library's source differs from the last
    build's, the ``.md5`` of each chapter that imports ``pytorch_buffers`` is
    removed so that those chapters, and only those, run again. Returns their names.
    """
    digest = hashlib.md5(usedforsecurity=False)
    for path in sorted(library.rglob("*.py")):
        digest.update(path.read_bytes())
    if stamp.exists() and stamp.read_text() == digest.hexdigest():
        return []
    users = [
        chapter.name
        for chapter in sorted(examples.glob("*.py"))
        if "import pytorch_buffers" in chapter.read_text()
    ]
    for name in users:
        (gallery / f"{name[:-3]}.py.md5").unlink(missing_ok=True)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(digest.hexdigest())
    return users
