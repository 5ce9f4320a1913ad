"""Maintainer entry points: ``nox -s docs``, ``nox -s tests``, ``nox -s lint``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nox

nox.needs_version = ">=2025.2.9"
# venv + pip, not uv: pip honours this machine's find-links (the local CPU torch
# wheel); uv ignores it and would resolve torch to the CUDA build.
nox.options.default_venv_backend = "venv"
nox.options.sessions = ["lint", "tests", "docs"]

PYPROJECT = nox.project.load_toml("pyproject.toml")
DOCS = Path("docs")
BUILD = DOCS / "_build"
# Pinned so pip takes the CPU wheel on these machines; override elsewhere, e.g.
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu (see README).
TORCH_SPEC = os.environ.get("TORCH_SPEC", "torch==2.13.0")
# The newest torch the tests run on as well (tests_newest); on these machines a
# CUDA build from local disk (about 5.5 GB in its venv) that runs on the CPU.
TORCH_NEWEST = os.environ.get("TORCH_NEWEST", "torch==2.14.1")
TORCH_INDEX_URL = os.environ.get("TORCH_INDEX_URL")
GENERATED = [
    DOCS / "auto_examples",
    DOCS / "gen_modules",
    DOCS / "sg_execution_times.rst",
    DOCS / "_thumbnails",
    BUILD,
]


def install(session: nox.Session, group: str, torch_spec: str = TORCH_SPEC) -> None:
    """Install torch first (pinned), then the project and one dependency group."""
    index = ["--index-url", TORCH_INDEX_URL] if TORCH_INDEX_URL else []
    session.install(torch_spec, *index)
    session.install("-e", ".", *nox.project.dependency_groups(PYPROJECT, group))


@nox.session(reuse_venv=True)
def docs(session: nox.Session) -> None:
    """Build the site into docs/_build/html; ``-- --serve`` live-reloads, ``-- --preview`` skips running code."""
    install(session, "docs")
    output = "html"
    if "--preview" in session.posargs:
        # Not executed: its own output folder and doctrees, so it never mixes
        # with (or gets published as) the real site.
        session.env["GUIDE_PREVIEW"] = "1"
        output = "preview"
    sphinx_args = ["-n", "-W", "--keep-going", "-d", str(BUILD / f"doctrees-{output}")]
    paths = [str(DOCS), str(BUILD / output)]
    if "--serve" in session.posargs:
        ignores = [
            "*/auto_examples/*",
            "*/gen_modules/*",
            "*/sg_execution_times.rst*",
            "*/.jupyter_cache/*",
            "*/__pycache__/*",
            "*/_thumbnails/*",
            "*/_build/*",
        ]
        session.run(
            "sphinx-autobuild",
            *[arg for pattern in ignores for arg in ("--ignore", pattern)],
            "--watch", "examples",
            "--watch", "src",
            *paths,
            *sphinx_args,
        )  # fmt: skip
    else:
        session.run("sphinx-build", "-b", "html", *sphinx_args, *paths)


@nox.session(reuse_venv=True)
def bench(session: nox.Session) -> None:
    """Time cold, no-op and edited builds, and the library on a 1,000-layer model."""
    install(session, "docs")
    session.run("python", "benchmarks/build.py", *session.posargs)
    session.run("python", "benchmarks/inventory.py")


@nox.session(reuse_venv=True)
def repro(session: nox.Session) -> None:
    """Build the site twice from scratch and check the pages are identical."""
    install(session, "docs")
    session.run("python", "benchmarks/reproducible.py")


@nox.session(reuse_venv=True)
def tests(session: nox.Session) -> None:
    """Run the test suite (library and chapters as scripts) on the CPU."""
    install(session, "test")
    session.run("pytest", *session.posargs)


@nox.session(reuse_venv=True)
def tests_newest(session: nox.Session) -> None:
    """Run the tests (library and chapters) on the newest torch tested, on the CPU."""
    install(session, "test", torch_spec=TORCH_NEWEST)
    session.run("pytest", *session.posargs)


@nox.session(reuse_venv=True)
def browser(session: nox.Session) -> None:
    """Check the built site in Debian's Chromium: pages, links, a11y, themes, downloads."""
    if not (BUILD / "html" / "index.html").exists():
        session.error("no built site: run nox -s docs first")
    install(session, "browser")
    session.run("pytest", "tests/browser", f"--site={BUILD / 'html'}", *session.posargs)


@nox.session(reuse_venv=True)
def lint(session: nox.Session) -> None:
    """Ruff (check and format) on everything, mypy strict on the library."""
    install(session, "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")


@nox.session(venv_backend="none")
def clean(session: nox.Session) -> None:
    """Remove everything the docs build generates."""
    for path in GENERATED:
        session.log(f"removing {path}")
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
