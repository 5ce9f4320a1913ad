"""Run chapters 1-9 in one process, as sphinx-gallery does, many times; count failures.

Each run is a fresh Python process that executes the chapters in build order
with ``runpy`` (stdout captured, matplotlib figures closed between chapters, an
empty temporary working folder), the way one ``sphinx-build`` runs them. A run
fails if any chapter raises or the run outlives ``--timeout``; the failing
chapter and the last lines of its output are printed. Chapter 10 is left out:
it only times things, and takes long.

Usage (with the tests environment, after ``nox -s tests`` created it once)::

    .nox/tests/bin/python benchmarks/stress_chapters.py --runs 100
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def one_build(examples: Path) -> None:
    """Run chapters 1-9 in this process; exit 1 naming the first that fails."""
    for chapter in sorted(examples.glob("0[1-9]_*.py")):  # chapters 1-9, build order
        captured = io.StringIO()
        try:
            with contextlib.redirect_stdout(captured):
                runpy.run_path(str(chapter), run_name="__main__")
        except BaseException as error:  # noqa: BLE001 - report any failure, then stop
            tail = captured.getvalue().splitlines()[-5:]
            print(f"FAILED {chapter.name}: {type(error).__name__}: {error}")
            print("\n".join(f"    | {line}" for line in tail))
            sys.exit(1)
        finally:
            plt.close("all")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=600, help="seconds per run")
    parser.add_argument("--one-build", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_build:
        one_build(args.one_build)
        return

    # A snapshot of the chapters, so that editing them meanwhile changes no run.
    snapshot = Path(tempfile.mkdtemp(prefix="stress-chapters-"))
    shutil.copytree(EXAMPLES, snapshot, dirs_exist_ok=True)
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONFAULTHANDLER": "1"}
    failures, durations = [], []
    start = time.perf_counter()
    for run in range(1, args.runs + 1):
        run_start = time.perf_counter()
        with tempfile.TemporaryDirectory() as cwd:
            try:
                result = subprocess.run(
                    [sys.executable, __file__, "--one-build", str(snapshot)],
                    cwd=cwd,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=args.timeout,
                    check=False,
                )
                failed = result.returncode != 0
                why = (result.stdout + result.stderr).strip()[-2000:]
            except subprocess.TimeoutExpired:
                failed, why = True, f"no result within {args.timeout:.0f} s (hung)"
        durations.append(time.perf_counter() - run_start)
        if failed:
            failures.append(run)
            print(f"run {run}: FAILED\n{why}", flush=True)
        else:
            print(f"run {run}: ok in {durations[-1]:.1f} s", flush=True)
    total = time.perf_counter() - start
    shutil.rmtree(snapshot)
    print(
        f"\n{len(failures)} failures in {args.runs} runs of chapters 1-9 in one process"
        f" (runs {failures or 'none'}); {total / 60:.1f} min in all,"
        f" {min(durations):.1f}-{max(durations):.1f} s per run,"
        f" Python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
