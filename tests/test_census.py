"""The census page's code runs on the CPU and its checks hold (transformers from configs)."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

pytest.importorskip("transformers")
PAGE = Path(__file__).resolve().parent.parent / "docs" / "census.md"
CELL = re.compile(r"```\{code-cell\}[^\n]*\n(.*?)```", re.DOTALL)


def test_census_page_runs_and_checks_its_tables(monkeypatch: pytest.MonkeyPatch):
    shown: list[str] = []
    display = types.ModuleType("IPython.display")

    class Markdown:  # what the page displays: its tables and sentences
        def __init__(self, data: str) -> None:
            self.data = data

    display.Markdown = Markdown  # type: ignore[attr-defined]
    display.display = lambda item: shown.append(item.data)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", types.ModuleType("IPython"))
    monkeypatch.setitem(sys.modules, "IPython.display", display)
    namespace: dict[str, object] = {}
    for cell in CELL.findall(PAGE.read_text()):
        code = "\n".join(line for line in cell.splitlines() if not line.startswith(":"))
        exec(compile(code, str(PAGE), "exec"), namespace)  # noqa: S102
    assert len(namespace["ARCHITECTURES"]) >= 10  # type: ignore[arg-type]
    assert any("inv_freq" in line for line in shown[0].splitlines())
    assert "transformers " in shown[-1]
