"""Keep the published site true to its sources, device and torch, whatever happened before.

* One build at a time per clone: a second one stops at once with "another build is
  running in this folder" (an ``fcntl`` lock on ``docs/_build/build.lock``).
* Sphinx writes into ``<outdir>.staging``, a copy of the last good site; only a build
  that succeeded (no exception, no warning under ``-W``) is moved to ``<outdir>``
  (``docs/_build/html``), so a failed or interrupted build leaves the previous good
  site as it was, and a good one leaves no staging folder behind.
* A build that did not succeed leaves ``<outdir>.unfinished`` behind; the next build
  sees it and re-reads and re-writes every page (Sphinx itself would skip the pages
  it had read, and the search index would stay incomplete), and re-runs the
  chapters whose run did not complete (``gallery_hooks.chapter_timer`` marks them).
* The outputs record the device and torch that produced them
  (``docs/_build/outputs-made-with.txt``); when the banner would name another,
  every chapter and the cheat sheet run again.
* A deleted or renamed chapter or page leaves nothing behind (sphinx-gallery and
  Sphinx both keep what they generated for it).
* Zips are rewritten with fixed timestamps (``SOURCE_DATE_EPOCH``), so two builds of
  one commit publish the same bytes.
"""

from __future__ import annotations

import atexit
import fcntl
import functools
import gc
import glob
import io
import logging as stdlib_logging
import os
import re
import shutil
import sys
import time
import zipfile
from pathlib import Path
from typing import IO, Any

from gallery_hooks import TIMED_OUT
from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)

ENV_PICKLE = "environment.pickle"  # sphinx.application.ENV_PICKLE_FILENAME
OUTPUTS_KEY = "outputs-made-with.txt"
# Zip's epoch starts in 1980; earlier timestamps cannot be stored.
ZIP_EPOCH_MIN = 315532800

_held_lock: IO[str] | None = None


def hold_build_lock(build_dir: Path) -> None:
    """Stop at once (exit status 2) if another build holds this folder; else hold
    the folder until this process exits.

    The lock is the kernel's (``flock``): it goes away with the process however the
    process ends, so a killed build never leaves a stale lock behind.
    """
    global _held_lock  # noqa: PLW0603 (held for the life of the process)
    if _held_lock is not None:
        return
    build_dir.mkdir(parents=True, exist_ok=True)
    handle = (build_dir / "build.lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        # One line and out, before anything is written: Sphinx would wrap a
        # ConfigError in a page of version details.
        print(
            f"another build is running in this folder ({holder}, lock "
            f"{build_dir / 'build.lock'}); wait for it to finish or stop it",
            file=sys.stderr,
            flush=True,
        )
        sys.stdout.flush()
        os._exit(2)
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    _held_lock = handle


def _fresh_environment(app: Sphinx) -> None:
    """Make Sphinx read (and so write) every page again."""
    (Path(app.doctreedir) / ENV_PICKLE).unlink(missing_ok=True)


def _gallery_files(app: Sphinx, pattern: str) -> list[Path]:
    gallery = app.config.sphinx_gallery_conf.get("gallery_dirs", "auto_examples")
    folders = [gallery] if isinstance(gallery, str) else list(gallery)
    return [
        path
        for folder in folders
        for path in sorted((Path(app.srcdir) / folder).glob(pattern))
    ]


def _rerun_unfinished_chapters(app: Sphinx) -> None:
    """A chapter still marked running (its build stopped mid-chapter) runs again.

    sphinx-gallery writes a chapter's ``.md5`` before its page; the mark, removed
    only once the page is written, covers that gap.
    """
    for marker in _gallery_files(app, "*.py.running"):
        Path(str(marker).removesuffix(".running") + ".md5").unlink(missing_ok=True)
        marker.unlink()


def _forget_removed_chapters(app: Sphinx) -> None:
    """Delete what sphinx-gallery generated for a chapter that no longer exists.

    It keeps a deleted or renamed chapter's page, which Sphinx would then build as
    an orphan (and fail ``-W``: not in any toctree).
    """
    gallery_conf = app.config.sphinx_gallery_conf
    examples = gallery_conf.get("examples_dirs", "../examples")
    galleries = gallery_conf.get("gallery_dirs", "auto_examples")
    examples = [examples] if isinstance(examples, str) else list(examples)
    galleries = [galleries] if isinstance(galleries, str) else list(galleries)
    for example_dir, gallery_dir in zip(examples, galleries, strict=True):
        chapters = {path.name for path in (Path(app.srcdir) / example_dir).glob("*.py")}
        gallery = Path(app.srcdir) / gallery_dir
        for copy in sorted(gallery.glob("*.py")):
            if copy.name in chapters:
                continue
            logger.info("%s was removed: deleting its generated page", copy.name)
            images = re.compile(rf"sphx_glr_{re.escape(copy.stem)}_(\d+|thumb)\.\w+")
            for generated in [
                *gallery.glob(f"{glob.escape(copy.stem)}.*"),
                *(p for p in gallery.rglob("sphx_glr_*") if images.fullmatch(p.name)),
            ]:
                generated.unlink()


def drop_removed_pages(
    app: Sphinx,
    env: Any,
    added: set[str],  # noqa: ARG001 (the env-get-outdated event's signature)
    changed: set[str],  # noqa: ARG001
    removed: set[str],
) -> list[str]:
    """After a page's source was removed: write every page into an empty folder.

    Sphinx leaves a removed page's HTML, images and downloads behind; starting the
    staging folder afresh (rare: pages are seldom removed) gives what a clean build
    gives.
    """
    if not removed or app.builder.format != "html":
        return []
    logger.info(
        "%s removed: writing every page again into an empty folder",
        ", ".join(sorted(removed)),
    )
    for child in Path(app.outdir).iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    return sorted(env.found_docs)


def _jupyter_cache(app: Sphinx, outdir: Path) -> Path:
    configured = app.config.nb_execution_cache_path
    return Path(configured) if configured else outdir.parent / ".jupyter_cache"


def prepare(app: Sphinx, config: Any) -> None:  # noqa: ARG001
    """Before Sphinx loads its environment: decide what must be read and run again."""
    published = Path(app.outdir)
    staging = published.with_name(published.name + ".staging")
    unfinished = published.with_name(published.name + ".unfinished")
    if published.is_dir() and not any(published.iterdir()):
        # Sphinx made the output folder before this hook moved the output to the
        # staging folder; a build that fails must not leave it behind, empty.
        published.rmdir()
    if unfinished.exists():
        logger.info(
            "the last build of %s did not finish: re-reading and re-writing every "
            "page, and re-running any chapter it left unfinished",
            published.name,
        )
        shutil.rmtree(staging, ignore_errors=True)
    elif not staging.is_dir() and (published / ".buildinfo").is_file():
        # Start from the last good site (copy2 keeps the files' times, which is how
        # Sphinx tells which pages are up to date); publish() moves it back.
        shutil.copytree(published, staging, symlinks=True)
    if not staging.is_dir():
        _fresh_environment(app)
    _rerun_unfinished_chapters(app)
    _forget_removed_chapters(app)

    made_with = app.config.guide_outputs_made_with
    key = published.parent / OUTPUTS_KEY
    previous = key.read_text() if key.exists() else None
    if made_with and previous != made_with:
        if previous is None:
            logger.info("first build: running every chapter (on %s)", made_with)
        else:
            logger.info(
                "outputs on disk were produced on %s, this build runs on %s: "
                "running every chapter and the cheat sheet again",
                previous,
                made_with,
            )
        for stamp in _gallery_files(app, "*.py.md5"):
            stamp.unlink()
        shutil.rmtree(_jupyter_cache(app, published), ignore_errors=True)
        _fresh_environment(app)

    staging.mkdir(parents=True, exist_ok=True)
    unfinished.write_text("a build started here and has not succeeded yet\n")
    # Read by the builder, made next. Sphinx's own path type, which also acts as a
    # str for extensions that still treat outdir as one.
    app.outdir = type(app.outdir)(staging)
    app.guide_published = published  # type: ignore[attr-defined]


def zip_epoch() -> int:
    """The zips' one timestamp: ``SOURCE_DATE_EPOCH`` (the last commit's time)."""
    return int(os.environ.get("SOURCE_DATE_EPOCH", ZIP_EPOCH_MIN))


def _zip_info(name: str, epoch: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=time.gmtime(max(epoch, ZIP_EPOCH_MIN))[:6])
    info.compress_type = zipfile.ZIP_DEFLATED
    info.create_system = 3  # Unix, whatever machine built it
    info.external_attr = 0o644 << 16
    return info


def deterministic_zip_bytes(entries: list[tuple[str, bytes]], epoch: int) -> bytes:
    """A zip of ``(name, data)`` entries: sorted, one timestamp, fixed permissions."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as target:
        for name, data in sorted(entries):
            target.writestr(_zip_info(name, epoch), data)
    return buffer.getvalue()


def _is_deterministic(archive: zipfile.ZipFile, epoch: int) -> bool:
    """Whether ``deterministic_zip_bytes`` wrote it (read from its directory alone)."""
    infos = archive.infolist()
    names = [info.filename for info in infos]
    expected = _zip_info("", epoch)
    # A zip stores seconds halved: an odd second reads back one lower.
    *day_and_minute, second = expected.date_time
    stored = (*day_and_minute, second - second % 2)
    return names == sorted(names) and all(
        (info.date_time, info.compress_type, info.create_system, info.external_attr)
        == (stored, expected.compress_type, expected.create_system,
            expected.external_attr)
        for info in infos
    )  # fmt: skip


def deterministic_zip(path: Path, epoch: int) -> None:
    """Rewrite ``path`` with sorted entries, one timestamp and fixed permissions."""
    with zipfile.ZipFile(path) as source:
        if _is_deterministic(source, epoch):  # reader_downloads already wrote it so
            return
        entries = [(info.filename, source.read(info)) for info in source.infolist()]
    data = deterministic_zip_bytes(entries, epoch)
    if path.read_bytes() != data:
        path.write_bytes(data)


def _failing_chapters(app: Sphinx) -> dict[str, str]:
    """sphinx-gallery's failed chapters: ``{source path: traceback}``."""
    return dict(app.config.sphinx_gallery_conf.get("failing_examples") or {})


def _succeeded(app: Sphinx, exception: Exception | None) -> bool:
    # Under -W --keep-going Sphinx sets the failing status only after this event.
    warned = getattr(app, "_fail_on_warnings", False) and getattr(app, "_warncount", 0)
    return (
        exception is None
        and not app.statuscode
        and not warned
        and not _failing_chapters(app)
        and not TIMED_OUT
    )


def _project_path(path: str | Path) -> str:
    """``examples/02_x.py``: relative to the working folder when inside it."""
    relative = os.path.relpath(path)
    return str(path) if relative.startswith("..") else relative


def chapter_error(source: str, traceback: str) -> str:
    """``examples/02_x.py:17: NameError: name 'y' is not defined``: the chapter's own
    line (the innermost frame in the chapter's file) and the error's last line."""
    where = _project_path(source)
    frames = re.findall(r'File "([^"]+)", line (\d+)', traceback)
    chapter = Path(source).resolve()
    lines = [line for path, line in frames if Path(path).resolve() == chapter]
    if lines:
        where += f":{lines[-1]}"
    error = next(
        (line.strip() for line in reversed(traceback.splitlines()) if line.strip()),
        "failed",
    )
    return f"{where}: {error}"


def rst_line_in_chapter(chapter: Path, rst: Path, line: int) -> int | None:
    """The chapter line that a line of its generated ``.rst`` came from.

    sphinx-gallery copies a chapter's text blocks into the ``.rst`` line by line,
    without the leading ``# ``; the line whose text occurs once in the chapter is
    found there. ``None`` when it cannot be told (generated lines, repeated text).
    """
    try:
        text = rst.read_text().splitlines()[line - 1].strip()
    except (OSError, IndexError):
        return None
    if not text:
        return None
    found = [
        number
        for number, source in enumerate(chapter.read_text().splitlines(), start=1)
        if source.strip().removeprefix("#").strip() == text
    ]
    return found[0] if len(found) == 1 else None


class ChapterLocations(stdlib_logging.Filter):
    """Report a problem Sphinx finds in a generated chapter page at the chapter's line.

    ``docs/auto_examples/02_x.rst:49`` becomes ``examples/02_x.py:23``: the file an
    author edits. Also keeps the build's first warning for the closing line.
    """

    def __init__(self, app: Sphinx) -> None:
        super().__init__()
        self.app = app
        self.first_warning: str | None = None

    def filter(self, record: stdlib_logging.LogRecord) -> bool:
        location = getattr(record, "location", None)
        if isinstance(location, str):
            record.location = self.chapter_location(location)
        if self.first_warning is None and record.levelno >= stdlib_logging.WARNING:
            self.first_warning = record.getMessage().strip().splitlines()[0]
        return True

    def chapter_location(self, location: str) -> str:
        match = re.fullmatch(r"(.*[/\\](\d\d_\w+)\.rst)(?::(\d+))?", location)
        if not match:
            return location
        rst, stem, line = match.groups()
        chapters = self.app.config.sphinx_gallery_conf.get(
            "examples_dirs", "../examples"
        )
        chapters = [chapters] if isinstance(chapters, str) else list(chapters)
        for folder in chapters:
            chapter = (Path(self.app.srcdir) / folder / f"{stem}.py").resolve()
            if chapter.is_file():
                number = line and rst_line_in_chapter(chapter, Path(rst), int(line))
                where = _project_path(chapter)
                return f"{where}:{number}" if number else where
        return location


def _watch_warnings(app: Sphinx) -> None:
    """Put a ``ChapterLocations`` after Sphinx's own location filter on its handlers."""
    watcher = ChapterLocations(app)
    app.guide_warnings = watcher  # type: ignore[attr-defined]
    for handler in stdlib_logging.getLogger("sphinx").handlers:
        if any(
            type(f).__name__ == "WarningLogRecordTranslator" for f in handler.filters
        ):
            handler.addFilter(watcher)


def report_failure(app: Sphinx, exception: Exception | None) -> None:
    """After a build that failed: one closing line that says what and where.

    The failing chapter's file and line (or the first warning), and that the
    published site was left as it was. Printed when the process exits, after
    Sphinx's own summary; sphinx-gallery's failure summary is a warning
    (``only_warn_on_example_error``), not a crash report asking to file a bug.
    """
    published: Path | None = getattr(app, "guide_published", None)
    if published is None or exception is not None or _succeeded(app, exception):
        return
    problems = [
        chapter_error(source, traceback)
        for source, traceback in sorted(_failing_chapters(app).items())
    ]
    problems += [m for m in TIMED_OUT if not any(m in p for p in problems)]
    watcher = getattr(app, "guide_warnings", None)
    if not problems and watcher is not None and watcher.first_warning:
        problems = [watcher.first_warning]
    app.statuscode = app.statuscode or 1
    site = _project_path(published)
    outcome = (
        f"{site} was left as it was"
        if published.exists()
        else f"nothing was published to {site}"
    )
    line = (
        f"build failed: {'; '.join(problems or ['see the messages above'])}; {outcome}"
    )
    atexit.register(print, line, file=sys.stderr, flush=True)


def publish(app: Sphinx, exception: Exception | None) -> None:
    """After a build that succeeded: copy the staging folder over the published site."""
    published: Path | None = getattr(app, "guide_published", None)
    # Not after a failed chapter, nor one that hit its limit and caught the
    # TimeoutError (report_failure says which).
    if published is None or not _succeeded(app, exception):
        return
    staging = Path(app.outdir)
    for archive in sorted(staging.rglob("*.zip")):
        deterministic_zip(archive, zip_epoch())
    old = published.with_name(published.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    # Two renames: a reader (or the live-reload server) sees the old site or the new
    # one, never a half-written one; the staging folder does not stay behind (the
    # next build copies the published site to start from).
    if published.exists():
        published.rename(old)
    staging.rename(published)
    shutil.rmtree(old, ignore_errors=True)
    if app.config.guide_outputs_made_with:
        (published.parent / OUTPUTS_KEY).write_text(app.config.guide_outputs_made_with)
    published.with_name(published.name + ".unfinished").unlink(missing_ok=True)
    app.outdir = type(app.outdir)(published)  # for "The HTML pages are in ..."


def _not_found_page_when_pages_changed(
    collect: Any, app: Sphinx
) -> list[tuple[str, dict[str, Any], str]]:
    """sphinx-notfound-page's 404 page, unless the staging copy's still stands.

    It renders the whole navigation for every build (a tenth of a second, most of
    a no-op's page writing). The 404 page is made from the navigation, the
    configuration and the templates, and Sphinx rewrites pages when any of those
    changes; so while no page is newer than the last good site's 404, it stands.
    (A changed stylesheet alone rewrites no page, the 404 page included.)
    """
    page = Path(app.outdir) / f"{app.config.notfound_pagename}.html"
    if page.is_file():
        made = page.stat().st_mtime_ns
        pages = [
            Path(app.outdir) / app.builder.get_target_uri(name)
            for name in app.env.found_docs
        ]
        if all(path.is_file() and path.stat().st_mtime_ns <= made for path in pages):
            return []
    return list(collect(app))


def _wrap_not_found_page(app: Sphinx) -> None:
    for listener in list(app.events.listeners.get("html-collect-pages", [])):
        if getattr(listener.handler, "__module__", "") == "notfound.extension":
            app.disconnect(listener.id)
            app.connect(
                "html-collect-pages",
                functools.partial(_not_found_page_when_pages_changed, listener.handler),
                priority=listener.priority,
            )


def _freeze_loaded_objects(app: Sphinx) -> None:  # noqa: ARG001
    """Leave what is loaded so far (modules, configuration, the saved environment)
    out of the garbage collector's later passes (``gc.freeze``).

    Those objects live as long as the build; each full collection would walk them
    all again (a tenth of a second per pass on an up-to-date tree).
    """
    gc.freeze()


def setup(app: Sphinx) -> dict[str, Any]:
    _wrap_not_found_page(app)  # conf.py loads notfound.extension first
    # What the banner says produced the outputs ("cpu with torch 2.13.0"); empty
    # for builds that run no code.
    app.add_config_value("guide_outputs_made_with", "", "env", types=[str])
    app.connect("config-inited", prepare, priority=900)
    app.connect("builder-inited", _watch_warnings)
    app.connect("builder-inited", _freeze_loaded_objects, priority=100)
    app.connect("env-get-outdated", drop_removed_pages)
    # Last of all build-finished handlers, after sphinx-gallery's failure summary.
    app.connect("build-finished", publish, priority=1000)
    app.connect("build-finished", report_failure, priority=1001)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
