"""Hooks that sphinx-gallery calls by dotted name (function objects break ``-W``)."""

from __future__ import annotations

import ast
import atexit
import functools
import hashlib
import logging
import os
import pickle
import shutil
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from sphinx.errors import ConfigError
from sphinx.util import logging as sphinx_logging

# Seconds a chapter (or the cheat sheet) may run before the build fails.
TIMEOUT_VARIABLE = "GUIDE_TIMEOUT"
DEFAULT_TIMEOUT = 900


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

    # No "Software" entry naming matplotlib's version: the same plot, the same bytes.
    kwargs.setdefault("metadata", {"Software": None})
    return str(scrape(block, block_vars, gallery_conf, **kwargs))


def reset_torch(gallery_conf: dict[str, Any], fname: str) -> None:  # noqa: ARG001
    """Give every chapter the same fresh global torch state, whatever ran before it."""
    import torch  # noqa: PLC0415 (only when a chapter runs; a no-op rebuild never pays)

    torch.manual_seed(0)
    torch.set_default_dtype(torch.float32)
    torch.set_default_device(None)


def run_time_limit() -> int:
    """``GUIDE_TIMEOUT`` in seconds (default 900): the bound on one chapter's run."""
    value = os.environ.get(TIMEOUT_VARIABLE, "") or str(DEFAULT_TIMEOUT)
    if not value.isdigit() or int(value) == 0:
        msg = f"{TIMEOUT_VARIABLE}={value!r}: give a whole number of seconds, e.g. 900"
        raise ConfigError(msg)
    return int(value)


class _Running:
    """The chapter now running: its file, its limit, and where it was stopped."""

    source: Path | None = None
    limit = 0


# "<chapter> ... at line N" for each chapter stopped by its limit in this build;
# build_guard fails the build on it even if the chapter caught the TimeoutError.
TIMED_OUT: list[str] = []


def _chapter_files(gallery_conf: dict[str, Any], fname: str) -> tuple[Path, Path]:
    """(the chapter's source, its copy in the gallery folder, next to its ``.md5``)."""
    src_dir = Path(gallery_conf["src_dir"])
    examples = gallery_conf["examples_dirs"]
    galleries = gallery_conf["gallery_dirs"]
    examples = [examples] if isinstance(examples, str) else examples
    galleries = [galleries] if isinstance(galleries, str) else galleries
    for example_dir, gallery_dir in zip(examples, galleries, strict=True):
        source = (src_dir / example_dir / fname).resolve()
        if source.exists():
            return source, src_dir / gallery_dir / fname
    return (src_dir / examples[0] / fname).resolve(), src_dir / galleries[0] / fname


def _out_of_time(signum: int, frame: FrameType | None) -> None:  # noqa: ARG001
    where = "an unknown line"
    while frame is not None:
        if Path(frame.f_code.co_filename).resolve() == _Running.source:
            where = f"line {frame.f_lineno}"
            break
        frame = frame.f_back
    msg = (
        f"{_Running.source} ran past its {_Running.limit} s limit and was stopped at "
        f"{where} (raise the limit with {TIMEOUT_VARIABLE}=<seconds>)"
    )
    TIMED_OUT.append(msg)
    # Again soon, in case the chapter catches the exception and carries on.
    signal.setitimer(signal.ITIMER_REAL, 10)
    raise TimeoutError(msg)


def chapter_guard(gallery_conf: dict[str, Any], fname: str | None, when: str) -> None:
    """Around each chapter's run (``reset_modules_order = "both"``).

    Before: forget the chapter's ``.md5`` (so a run that fails or is interrupted is
    never taken for a good one: the chapter runs again next build), mark it running
    (``build_guard`` re-runs it if the build stops before the mark is removed), and
    start its clock: past ``GUIDE_TIMEOUT`` seconds a ``TimeoutError`` is raised in
    the chapter, so the failure names the line it was stuck on. After: stop the clock.
    """
    if fname is None or threading.current_thread() is not threading.main_thread():
        return
    source, copy = _chapter_files(gallery_conf, fname)
    running = Path(f"{copy}.running")
    if when == "before":
        Path(f"{copy}.md5").unlink(missing_ok=True)
        running.parent.mkdir(parents=True, exist_ok=True)
        running.touch()
        _Running.source, _Running.limit = source, run_time_limit()
        signal.signal(signal.SIGALRM, _out_of_time)
        signal.setitimer(signal.ITIMER_REAL, _Running.limit)
        return
    signal.setitimer(signal.ITIMER_REAL, 0)
    running.unlink(missing_ok=True)


def imports_library(chapter: Path, library: str = "pytorch_buffers") -> bool:
    """Whether the chapter's code imports ``library`` (or a submodule of it).

    Read from the code itself (``import x``, ``import x.y as z``, ``from x import
    y``, ``from x.y import z``), not from its text: a comment or a docstring that
    mentions the library does not count. A chapter that names it but does not
    parse counts, so that it runs (and fails, naming the line) again.
    """
    text = chapter.read_text()
    if library not in text:  # most chapters: no need to parse (every build asks)
        return False
    try:
        tree = ast.parse(text, filename=str(chapter))
    except SyntaxError:
        return True
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        if any(name.split(".")[0] == library for name in names):
            return True
    return False


def rerun_chapters_when_library_changes(
    examples: Path, gallery: Path, library: Path, stamp: Path, notebook_cache: Path
) -> list[str]:
    """Make sphinx-gallery re-execute the chapters that import the library after it changed.

    sphinx-gallery re-runs a chapter only when the chapter's own file changed (it
    keeps an ``.md5`` of each). When the library's source differs from the last
    build's, the ``.md5`` of each chapter that imports ``pytorch_buffers`` is
    removed so that those chapters, and only those, run again. myst-nb's cache is
    keyed on a page's own code, so it is dropped too: the API page, which autodoc
    re-reads after a library change, then runs its examples again. Returns the
    chapters' names.
    """
    digest = hashlib.md5(usedforsecurity=False)
    for path in sorted(library.rglob("*.py")):
        digest.update(path.read_bytes())
    if stamp.exists() and stamp.read_text() == digest.hexdigest():
        return []
    users = [
        chapter.name
        for chapter in sorted(examples.glob("*.py"))
        if imports_library(chapter)
    ]
    for name in users:
        (gallery / f"{name[:-3]}.py.md5").unlink(missing_ok=True)
    shutil.rmtree(notebook_cache, ignore_errors=True)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(digest.hexdigest())
    return users


class _WarningCount(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:  # noqa: ARG002
        self.count += 1


def parse_each_chapter_once(
    examples: Path, gallery: Path, store: Path, gallery_conf: dict[str, Any]
) -> None:
    """Parse each chapter in full only when sphinx-gallery may run it.

    sphinx-gallery (0.22) parses every chapter in full (its syntax tree) to read
    its per-file settings, then again to write its page, even when the chapter
    is up to date; on a rebuild that changed nothing, those parses are most of
    its time. Here, a chapter whose ``.md5`` in the gallery matches its source
    (so sphinx-gallery will not run it, unless ``run_stale_examples`` is set in
    ``gallery_conf``, which ``-D`` overrides update) gets the settings and text
    blocks recorded when it was last parsed (``store``, keyed on its path and
    bytes) and no syntax tree, which sphinx-gallery uses only to run a chapter.
    A parse that logged a warning (a bad per-file setting) is not recorded, so
    that the warning, and a ``-W`` build's failure, come back on every build.
    Any other chapter is parsed once and the same result given to the next
    caller too (the first, sphinx-gallery's settings pass, only reads it).
    """
    try:
        import sphinx_gallery  # noqa: PLC0415
        from sphinx_gallery import py_source_parser  # noqa: PLC0415
        from sphinx_gallery.utils import get_md5sum  # noqa: PLC0415
    except ImportError:  # the tests import this module without sphinx-gallery
        return
    parse = py_source_parser.split_code_and_text_blocks
    if getattr(parse, "parse_each_chapter_once", False):
        return
    version = f"{sphinx_gallery.__version__} {sys.version}"
    recorded: dict[bytes, Any] = {}
    try:  # a cache: whatever is wrong with it, parse afresh
        recorded_version, pickled = pickle.loads(store.read_bytes())
        if recorded_version == version:
            recorded = dict(pickle.loads(pickled))
    except Exception:  # noqa: BLE001, S110
        pass
    seen: dict[bytes, Any] = {}
    kept: dict[tuple[bytes, bool], Any] = {}
    warnings = _WarningCount()
    sphinx_logger = sphinx_logging.getLogger(__name__)

    def up_to_date(path: Path) -> bool:
        stamp = gallery / f"{path.name}.md5"
        return (
            not gallery_conf.get("run_stale_examples")
            and path.parent.resolve() == examples.resolve()
            and stamp.is_file()
            and stamp.read_text() == get_md5sum(path, mode="t")
        )

    @functools.wraps(parse)
    def parse_once(source_file: str, return_node: bool = False) -> Any:
        path = Path(source_file)
        digest = hashlib.sha256(
            f"{path.resolve()}\0".encode() + path.read_bytes()
        ).digest()
        if digest in recorded and up_to_date(path):
            sphinx_logger.verbose("%s: settings and text as last parsed", path.name)
            seen[digest] = settings_and_blocks = recorded[digest]
            return (*settings_and_blocks, None) if return_node else settings_and_blocks
        if (digest, return_node) in kept:
            return kept.pop((digest, return_node))
        logger = logging.getLogger(
            "sphinx"
        )  # Sphinx's loggers, sphinx-gallery's among them
        logger.addHandler(warnings)
        before = warnings.count
        try:
            parsed = parse(source_file, return_node=return_node)
        finally:
            logger.removeHandler(warnings)
        kept[digest, return_node] = parsed
        if warnings.count == before:
            seen[digest] = parsed[:2]
        return parsed

    @atexit.register
    def record() -> None:
        if seen and seen != recorded:
            store.parent.mkdir(parents=True, exist_ok=True)
            partial = store.with_name(f"{store.name}.{os.getpid()}")
            partial.write_bytes(pickle.dumps((version, pickle.dumps(seen))))
            partial.replace(store)

    parse_once.parse_each_chapter_once = True  # type: ignore[attr-defined]
    py_source_parser.split_code_and_text_blocks = parse_once
