"""Maintainer entry points: ``nox -s docs``, ``nox -s tests``, ``nox -s lint``."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import nox

# The reproducibility check's build settings, for nox -s docs to use the same.
sys.path.insert(0, str(Path(__file__).parent / "benchmarks"))
from scratch_site import build_env

nox.needs_version = ">=2025.2.9"
# venv + pip, not uv: pip honours this machine's find-links (the local CPU torch
# wheel); uv ignores it and would resolve torch to the CUDA build.
nox.options.default_venv_backend = "venv"
nox.options.sessions = ["lint", "tests", "docs"]
# nox probes for uv before each session and logs its absence; this project uses
# venv + pip on purpose (above), so the line is noise.
nox.logger.logger.addFilter(
    lambda record: record.getMessage() != "uv binary not found."
)

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
    """Install torch first (pinned), then the project and one dependency group.

    Skipped when nothing it depends on changed since the last install into this
    environment: pip's "already satisfied" pass alone costs seconds on every run.
    """
    venv = Path(session.virtualenv.location)
    stamp = venv / "guide-install.stamp"
    key = json.dumps(
        {
            "pyproject.toml": hashlib.sha256(Path("pyproject.toml").read_bytes()).hexdigest(),
            "TORCH_SPEC": torch_spec,
            "TORCH_INDEX_URL": TORCH_INDEX_URL,
            "group": group,
            "python": (venv / "pyvenv.cfg").read_text(),  # interpreter and version
        }
    )  # fmt: skip
    if stamp.exists() and stamp.read_text() == key:
        session.log(f"{group} dependencies up to date: nothing to install")
        return
    stamp.unlink(missing_ok=True)
    index = ["--index-url", TORCH_INDEX_URL] if TORCH_INDEX_URL else []
    session.log(f"installing {torch_spec}, then the {group!r} dependency group")
    session.install(torch_spec, *index, silent=False)
    # Held by a constraint: a package that requires torch (accelerate) must not
    # make pip replace the pinned build with another one.
    constraints = venv / "torch-constraint.txt"
    constraints.write_text(torch_spec + "\n")
    session.install(
        "-c", str(constraints),
        "-e", ".", *nox.project.dependency_groups(PYPROJECT, group), silent=False,
    )  # fmt: skip
    # Kept only if the installs ran: run_install, like install, is skipped
    # under --no-install (nox -R).
    pending = stamp.with_suffix(".pending")
    pending.write_text(key)
    session.run_install(
        "python", "-c", "import os, sys; os.replace(*sys.argv[1:])",
        os.path.relpath(pending), os.path.relpath(stamp), silent=True,
    )  # fmt: skip


def check_guide_device(session: nox.Session) -> None:
    """Stop at once, in one line, if GUIDE_DEVICE names a device the build cannot use."""
    if os.environ.get("GUIDE_DEVICE"):
        problem = session.run(
            "python", "docs/_ext/build_info.py", silent=True, success_codes=[0, 1]
        )
        if problem:
            session.error(str(problem).strip())


@nox.session(reuse_venv=True)
def docs(session: nox.Session) -> None:
    """Build the site into docs/_build/html; ``-- --serve`` live-reloads, ``-- --preview`` skips running code."""
    install(session, "docs")
    check_guide_device(session)
    output = "html"
    if "--preview" in session.posargs:
        # Not executed: its own output folder and doctrees, so it never mixes
        # with (or gets published as) the real site.
        session.env["GUIDE_PREVIEW"] = "1"
        output = "preview"
    # SOURCE_DATE_EPOCH (last commit) and PYTHONHASHSEED, as nox -s repro checks.
    session.env.update(build_env())
    # torch.compile's kernel cache stays with this clone's build (conf.py agrees),
    # unless the caller chose a folder.
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        session.env["TORCHINDUCTOR_CACHE_DIR"] = str(
            (BUILD / "torchinductor").resolve()
        )
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
            # Anything else after -- goes to sphinx-autobuild: --port 8001, --host ...
            *[arg for arg in session.posargs if arg not in {"--serve", "--preview"}],
        )  # fmt: skip
    else:
        session.run("sphinx-build", "-b", "html", *sphinx_args, *paths)


def docs_python(session: nox.Session) -> str:
    """The docs session's Python, its environment created or brought up to date first.

    bench and repro build the same site, so they share that environment instead
    of installing two more of the same size (about 1.2 GB each).
    """
    session.run(sys.executable, "-m", "nox", "-s", "docs", "--install-only")
    return str(Path(".nox", "docs", "bin", "python"))


@nox.session(venv_backend="none")
def bench(session: nox.Session) -> None:
    """Time cold, no-op and edited builds, and the library on a 1,000-layer model."""
    python = docs_python(session)
    session.run(
        python, "benchmarks/build.py", *session.posargs,
        env={"GUIDE_NOX_PYTHON": sys.executable},  # times plain `nox -s docs` too
    )  # fmt: skip
    session.run(python, "benchmarks/inventory.py")


@nox.session(venv_backend="none")
def repro(session: nox.Session) -> None:
    """Build the site twice from scratch and check the pages are identical."""
    session.run(docs_python(session), "benchmarks/reproducible.py")


@nox.session(reuse_venv=True)
def build_checks(session: nox.Session) -> None:
    """The docs build under faults (hangs, Ctrl-C, failed chapters, two at once) on a tiny site."""
    install(session, "docs")
    session.install("pytest>=8", "pytest-timeout>=2.3")  # the timeout in pyproject
    session.run("pytest", "tests/test_build_integrity.py", *session.posargs)


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
    # Lighthouse, as package-lock.json pins it; again only when the lock changes.
    lock = Path("tests/browser/package-lock.json")
    installed = Path("tests/browser/node_modules/.package-lock.json")
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        session.run_install(
            "npm", "ci", "--prefix", "tests/browser", "--no-audit", "--no-fund",
            external=True,
        )  # fmt: skip
    session.run("pytest", "tests/browser", f"--site={BUILD / 'html'}", *session.posargs)


@nox.session(reuse_venv=True)
def lint(session: nox.Session) -> None:
    """Ruff, mypy strict on the library, and the hosting configs (schemas, actionlint)."""
    install(session, "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")
    # The hosting configs, against the schemas these tools ship (no download).
    workflows = sorted(str(path) for path in Path(".github/workflows").glob("*.yml"))
    session.run("validate-pyproject", "pyproject.toml")
    session.run(
        "check-jsonschema", "--builtin-schema", "vendor.github-workflows", *workflows
    )
    session.run(
        "check-jsonschema",
        "--builtin-schema",
        "vendor.readthedocs",
        ".readthedocs.yaml",
    )
    session.run("actionlint", "-no-color", *workflows)


@nox.session(reuse_venv=True)
def build(session: nox.Session) -> None:
    """Build the library's sdist and wheel into dist/ and check them."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "build"))
    shutil.rmtree("dist", ignore_errors=True)
    session.run("python", "-m", "build", "--outdir", "dist")
    session.run("twine", "check", "--strict", *map(str, Path("dist").iterdir()))
    session.run("check-wheel-contents", "dist")


@nox.session(venv_backend="none")
def clean(session: nox.Session) -> None:
    """Remove everything the docs build generates."""
    for path in GENERATED:
        session.log(f"removing {path}")
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
