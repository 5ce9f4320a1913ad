"""Every line that tells a reader how to install the library names the wheel the
site ships (``docs/_ext/library_wheel.py``), the same in scripts, notebooks, pages
and the README."""

from __future__ import annotations

import ast
import importlib.util
import re

from conftest import EXAMPLES, ROOT

spec = importlib.util.spec_from_file_location(
    "library_wheel", ROOT / "docs" / "_ext" / "library_wheel.py"
)
assert spec is not None
assert spec.loader is not None
library_wheel = importlib.util.module_from_spec(spec)
spec.loader.exec_module(library_wheel)
WHEEL = re.compile(r"pip install (\S+\.whl)")


def wheels_named_in(source: str) -> list[str]:
    """The wheel addresses in a chapter's strings (split literals joined by ast)."""
    return [
        node.value
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and ".whl" in node.value
    ]


def test_the_wheel_is_named_after_the_version_and_the_site():
    url = library_wheel.wheel_url()
    version = re.search(
        r'__version__ = "(.+)"', (ROOT / "src/pytorch_buffers/__init__.py").read_text()
    )
    assert version is not None
    assert url.endswith(f"/wheels/pytorch_buffers-{version[1]}-py3-none-any.whl")
    assert url.startswith("https://pytorch-buffers.github.io/pytorch-buffers-guide/")


def test_chapters_that_import_the_library_name_the_shipped_wheel():
    users = [
        p
        for p in sorted(EXAMPLES.glob("[0-9][0-9]_*.py"))
        if "import pytorch_buffers" in p.read_text()
    ]
    assert {p.stem[:2] for p in users} >= {"04", "11", "12"}
    for path in users:
        source = path.read_text()
        named = [
            line for line in wheels_named_in(source) if line.startswith("https://")
        ]
        assert named == [library_wheel.wheel_url()], f"{path.name}: {named}"
        for url in WHEEL.findall(source):  # prose too (the intro's install block)
            assert url == library_wheel.wheel_url(), f"{path.name}: {url}"
        assert "git+https" not in source, f"{path.name} still installs from git"


def test_pages_and_readme_name_the_shipped_wheel():
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        assert "git+https" not in text, f"{path.name} still installs from git"
        for url in WHEEL.findall(text):
            assert url == library_wheel.wheel_url(), f"{path.name}: {url}"
    assert WHEEL.findall((ROOT / "README.md").read_text())
