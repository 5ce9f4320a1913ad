"""Readers can install the library: a version, and chapters that say how to get it."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

import pytest
from conftest import EXAMPLES, ROOT
from test_install_lines import library_wheel

import pytorch_buffers as pb

wheel_url = library_wheel.wheel_url

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
GUARDED = sorted(
    path.name
    for path in EXAMPLES.glob("*.py")
    if "import pytorch_buffers" in path.read_text()
)


def test_version_is_in_the_changelog():
    assert re.fullmatch(r"\d+\.\d+\.\d+", pb.__version__)
    assert f"## {pb.__version__}" in (ROOT / "CHANGELOG.md").read_text()


@pytest.mark.parametrize("chapter", GUARDED)
def test_chapter_without_the_library_prints_the_pip_line(chapter):
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            # None in sys.modules makes `import pytorch_buffers` fail as if absent.
            (
                "import runpy, sys; sys.modules['pytorch_buffers'] = None; "
                "runpy.run_path(sys.argv[1], run_name='__main__')"
            ),
            str(EXAMPLES / chapter),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 1
    # The wheel the site ships (tests/test_install_lines.py keeps every line so).
    assert run.stderr.strip() == (
        f"This chapter needs the pytorch_buffers library: pip install {wheel_url()}"
    )
