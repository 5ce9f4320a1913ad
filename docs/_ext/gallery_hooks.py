"""Hooks that sphinx-gallery calls by dotted name (function objects break ``-W``)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any


def matplotlib_scraper(
    block: Any, block_vars: Any, gallery_conf: Any, **kwargs: Any
) -> str:
    """sphinx-gallery's matplotlib scraper, imported only when a chapter has run.

    Naming ``"matplotlib"`` in ``image_scrapers`` imports matplotlib whenever the
    configuration loads, a second of every no-op rebuild; this defers it. The Agg
    backend and the silenced ``plt.show()`` come from the ``"matplotlib"`` entry of
    ``reset_modules``, which runs before each chapter.
    """
    from sphinx_gallery.scrapers import matplotlib_scraper as scrape  # noqa: PLC0415

    return str(scrape(block, block_vars, gallery_conf, **kwargs))


def reset_torch(gallery_conf: dict[str, Any], fname: str) -> None:  # noqa: ARG001
    """Give every chapter the same fresh global torch state, whatever ran before it."""
    import torch  # noqa: PLC0415 (only when a chapter runs; a no-op rebuild never pays)

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
