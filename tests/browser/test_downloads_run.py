"""What a reader downloads from the site runs as it is, on the CPU, in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
CHAPTERS = sorted(path.stem for path in (ROOT / "examples").glob("[0-9][0-9]_*.py"))
ENV = {**os.environ, "GUIDE_DEVICE": "cpu", "MPLBACKEND": "Agg"}


def downloaded(site: Path, name: str) -> Path:
    (path,) = site.glob(f"_downloads/*/{name}")
    return path


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_downloaded_script_runs(site: Path, chapter: str, tmp_path: Path) -> None:
    script = tmp_path / f"{chapter}.py"
    script.write_bytes(downloaded(site, f"{chapter}.py").read_bytes())
    result = subprocess.run(
        [sys.executable, script.name], cwd=tmp_path, env=ENV, capture_output=True,
        text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "torch " in result.stdout


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_downloaded_notebook_runs(site: Path, chapter: str, tmp_path: Path) -> None:
    notebook = nbformat.read(downloaded(site, f"{chapter}.ipynb"), as_version=4)
    os.environ.update(GUIDE_DEVICE="cpu", MPLBACKEND="Agg")  # inherited by the kernel
    NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()
    outputs = [
        o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs
    ]
    assert not [o for o in outputs if o.output_type == "error"]
