"""The library's wheel, as the site ships it, installs and runs chapter 4 as downloaded."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "docs" / "_ext"))
from library_wheel import FOLDER, wheel_name

ENV = {**os.environ, "GUIDE_DEVICE": "cpu", "MPLBACKEND": "Agg"}


def test_wheel_from_the_site_installs_and_runs_chapter_4(
    site: Path, base_url: str, tmp_path: Path
) -> None:
    assert (site / FOLDER / wheel_name()).is_file(), "the site ships no wheel"
    reader = tmp_path / "venv"
    venv.create(reader, with_pip=True)
    python = reader / "bin" / "python"
    # torch is this suite's own (a .pth line), not a second 200 MB install; the
    # suite's editable library is not on that path's .pth list, so the reader's
    # environment sees only the wheel's copy.
    own = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    Path(own, "suite-torch.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         f"{base_url}{FOLDER}/{wheel_name()}"],
        check=True, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )  # fmt: skip
    where = subprocess.run(
        [python, "-c", "import pytorch_buffers; print(pytorch_buffers.__file__)"],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    ).stdout  # fmt: skip
    assert where.startswith(str(reader)), f"imported {where}, not the wheel"
    chapter = tmp_path / "04_find_the_stray.py"
    (script,) = site.glob(f"_downloads/*/{chapter.name}")
    chapter.write_bytes(script.read_bytes())
    result = subprocess.run(
        [python, chapter.name], cwd=tmp_path, env=ENV, capture_output=True,
        text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "strays:" in result.stdout
