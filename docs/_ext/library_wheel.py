"""Ship the library's wheel with the site: ``wheels/pytorch_buffers-<version>-...whl``.

Readers install the library the chapters import from the site that shows them,
built from the same commit (``pip install <site>/wheels/<name>``), until the
package is on PyPI. Every install line in the project names :func:`wheel_url`;
``tests/test_install_lines.py`` keeps them in step. The wheel is built by hatchling
(the project's build backend) with ``SOURCE_DATE_EPOCH`` set by the build, so two
builds of one commit ship the same bytes; it is rewritten only when they change,
and built only when what hatchling reads changed (``library-wheel.json`` beside the
build's doctrees records a hash of those files and of the wheel).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the tests import this module without Sphinx
    from sphinx.application import Sphinx

ROOT = Path(__file__).resolve().parents[2]
FOLDER = "wheels"


def version(root: Path = ROOT) -> str:
    """The library's version, read where hatch reads it (``__init__.py``)."""
    text = (root / "src" / "pytorch_buffers" / "__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"', text, re.MULTILINE)
    assert match, "src/pytorch_buffers/__init__.py sets no __version__"
    return match[1]


def wheel_name(root: Path = ROOT) -> str:
    return f"pytorch_buffers-{version(root)}-py3-none-any.whl"


def site_url(root: Path = ROOT) -> str:
    """Where GitHub Pages serves the site, from ``[project.urls] Repository``."""
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    owner, repo = pyproject["project"]["urls"]["Repository"].rstrip("/").split("/")[-2:]
    return f"https://{owner}.github.io/{repo}/"


def wheel_url(root: Path = ROOT) -> str:
    """The address every install line in the project gives."""
    return f"{site_url(root)}{FOLDER}/{wheel_name(root)}"


# Beside pyproject.toml: the files hatchling reads for the wheel's metadata and
# file selection (readme, licence files it picks up by name, ignore rules, its own
# configuration file).
METADATA_FILES = (
    "pyproject.toml", "hatch.toml", "README*", "LICEN[CS]E*", "COPYING*", "NOTICE*",
    "AUTHORS*", ".gitignore",
)  # fmt: skip


def wheel_inputs(root: Path = ROOT) -> str:
    """A hash of what hatchling reads to build the wheel: the package's files
    (``[tool.hatch.build.targets.wheel] packages``) and their executable bits, the
    metadata files, hatchling's version and ``SOURCE_DATE_EPOCH``."""
    from hatchling import __about__  # noqa: PLC0415

    digest = hashlib.sha256()
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    digest.update(f"{__about__.__version__} {epoch}".encode())
    package = root / "src" / "pytorch_buffers"
    files = [
        *(path for pattern in METADATA_FILES for path in root.glob(pattern)),
        *(path for path in package.rglob("*") if "__pycache__" not in path.parts),
    ]
    for path in sorted(set(files)):
        if path.is_file():
            executable = path.stat().st_mode & 0o100
            digest.update(f"\0{path.relative_to(root)} {executable}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def ship_wheel(app: Sphinx, exception: Exception | None) -> None:
    """Build the wheel into the output's ``wheels/`` folder (html builds only)."""
    if exception is not None or app.builder.format != "html":
        return
    target = Path(app.outdir) / FOLDER / wheel_name()
    memo = Path(app.doctreedir) / "library-wheel.json"
    inputs = wheel_inputs()
    try:
        recorded = dict(json.loads(memo.read_text()))
    except (OSError, ValueError, TypeError):
        recorded = {}  # none yet, or not one this module wrote: build the wheel
    if (
        recorded.get("inputs") == inputs
        and target.is_file()
        and hashlib.sha256(target.read_bytes()).hexdigest() == recorded.get("wheel")
    ):
        return  # the last good site's wheel (build_guard's staging copy) stands
    from hatchling.builders.wheel import WheelBuilder  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as scratch:
        (built,) = WheelBuilder(str(ROOT)).build(
            directory=scratch, versions=["standard"]
        )
        data = Path(built).read_bytes()
    assert Path(built).name == target.name, f"hatchling built {Path(built).name}"
    if not target.exists() or target.read_bytes() != data:
        target.parent.mkdir(exist_ok=True)
        for stale in target.parent.glob("*.whl"):
            stale.unlink()
        target.write_bytes(data)
    wheel = hashlib.sha256(data).hexdigest()
    memo.write_text(json.dumps({"inputs": inputs, "wheel": wheel}, indent=1) + "\n")


def setup(app: Sphinx) -> dict[str, Any]:
    # Before build_guard publishes the staging folder (priority 1000).
    app.connect("build-finished", ship_wheel, priority=800)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
