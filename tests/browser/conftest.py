"""The built site, served on localhost, and Debian's Chromium driven by Playwright."""

from __future__ import annotations

import functools
import gzip
import io
import os
import threading
import tomllib
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO

import pytest
from playwright.sync_api import Browser, sync_playwright

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Flags that keep Chromium from phoning home on a machine without network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
PAGE_WEIGHTS: dict[str, int] = {}
LIGHTHOUSE_SCORES: dict[str, dict[str, object]] = {}
COMPRESSED_TYPES = (
    "text/",
    "application/javascript",
    "application/json",
    "application/xml",
    "image/svg+xml",
)
ROOT = Path(__file__).resolve().parents[2]
REPOSITORY = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"][
    "Repository"
]
# GitHub Pages serves a project site under /<repository name>/; so does this server,
# so that the 404 page's absolute links resolve as they will when hosted.
PREFIX = "/" + REPOSITORY.rstrip("/").rsplit("/", 1)[1] + "/"


def site_pages(site: Path) -> list[str]:
    """Every HTML page of the site, relative to its root."""
    return sorted(
        str(path.relative_to(site))
        for path in site.rglob("*.html")
        if not path.relative_to(site).parts[0].startswith("_")
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "page_path" in metafunc.fixturenames:
        site = Path(metafunc.config.getoption("--site"))
        metafunc.parametrize("page_path", site_pages(site))


@pytest.fixture(scope="session")
def site(pytestconfig: pytest.Config) -> Path:
    path = Path(pytestconfig.getoption("--site")).resolve()
    assert (path / "index.html").is_file(), f"no built site at {path}: run nox -s docs"
    return path


class SiteHandler(SimpleHTTPRequestHandler):
    """Serves the site under PREFIX, quietly, gzipping text as GitHub Pages and Read
    the Docs do (without it, page weights and Lighthouse scores are pessimistic)."""

    def send_head(self) -> BinaryIO | None:
        path = Path(self.translate_path(self.path))
        kind = self.guess_type(str(path))
        if (
            "gzip" not in self.headers.get("Accept-Encoding", "")
            or not path.is_file()
            or not kind.startswith(COMPRESSED_TYPES)
        ):
            return super().send_head()  # directories, errors, images, archives
        body = gzip.compress(path.read_bytes(), mtime=0)
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Vary", "Accept-Encoding")
        self.end_headers()
        return io.BytesIO(body)

    def translate_path(self, path: str) -> str:
        if path.startswith(PREFIX):
            path = "/" + path.removeprefix(PREFIX)
        else:
            path = "/__outside_the_site__"
        return super().translate_path(path)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="session")
def base_url(site: Path) -> Iterator[str]:
    """The site served over HTTP on a free localhost port for the whole session."""
    handler = functools.partial(SiteHandler, directory=str(site))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}{PREFIX}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if LIGHTHOUSE_SCORES:
        terminalreporter.write_line(
            "Lighthouse (performance, accessibility, best practices, SEO):"
        )
        for page, scores in sorted(LIGHTHOUSE_SCORES.items()):
            categories = ("performance", "accessibility", "best-practices", "seo")
            line = "  ".join(f"{scores[name]:.2f}" for name in categories)  # type: ignore[str-format]
            notes = ", ".join(
                [*(["second run"] if scores.get("retried") else []), *scores["skipped"]]  # type: ignore[misc]
            )
            terminalreporter.write_line(
                f"  {line}  {page}" + (f" ({notes})" if notes else "")
            )
    if PAGE_WEIGHTS:
        heaviest = max(PAGE_WEIGHTS, key=PAGE_WEIGHTS.__getitem__)
        terminalreporter.write_line(
            f"{len(PAGE_WEIGHTS)} pages loaded; heaviest: {heaviest}, "
            f"{PAGE_WEIGHTS[heaviest]:,} bytes transferred"
        )
