"""Run chapters 1-9 in one process, as sphinx-gallery does, many times; count failures.

A run executes chapters 1-9 in build order with ``runpy`` in one process (stdout
captured, matplotlib figures closed between chapters, an empty temporary working
folder), the way ``sphinx-build`` runs them. Each Python process does
``--per-process`` runs one after the other (the first is exactly a build's;
later ones also meet what earlier runs left behind: threads, pools, garbage), so
imports are paid once. A run fails if a chapter raises or the process outlives
``--timeout``; the chapter and the last lines of its output are printed, and a
fresh process takes over. Chapter 10 is left out: it only times things.

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
from collections import defaultdict
from pathlib import Path

import matplotlib.pyplot as plt

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def runs_in_this_process(examples: Path, count: int) -> None:
    """Run chapters 1-9 ``count`` times; print one line per run; exit 1 on a failure."""
    chapters = sorted(examples.glob("0[1-9]_*.py"))  # chapters 1-9, build order
    for _ in range(count):
        seconds = {}
        for chapter in chapters:
            captured = io.StringIO()
            start = time.perf_counter()
            try:
                with contextlib.redirect_stdout(captured):
                    runpy.run_path(str(chapter), run_name="__main__")
            except BaseException as error:  # noqa: BLE001 - report any failure, then stop
                tail = captured.getvalue().splitlines()[-5:]
                print(f"FAILED {chapter.name}: {type(error).__name__}: {error}")
                print("\n".join(f"    | {line}" for line in tail), flush=True)
                sys.exit(1)
            finally:
                plt.close("all")
            seconds[chapter.name[:2]] = time.perf_counter() - start
        print(
            "RUN OK " + " ".join(f"{n}:{s:.1f}" for n, s in seconds.items()), flush=True
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100, help="runs in all")
    parser.add_argument("--per-process", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=1800, help="s per process")
    parser.add_argument(
        "--examples", type=Path, default=EXAMPLES, help="chapters to run (to compare)"
    )
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        runs_in_this_process(Path(args.child[0]), int(args.child[1]))
        return

    # A snapshot of the chapters, so that editing them meanwhile changes no run.
    snapshot = Path(tempfile.mkdtemp(prefix="stress-chapters-"))
    shutil.copytree(args.examples, snapshot, dirs_exist_ok=True)
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONFAULTHANDLER": "1"}
    done, failures, processes = 0, 0, 0
    seconds = defaultdict(list)
    start = time.perf_counter()
    while done < args.runs:
        count = min(args.per_process, args.runs - done)
        processes += 1
        with tempfile.TemporaryDirectory() as cwd:
            child = [sys.executable, __file__, "--child", str(snapshot), str(count)]
            try:
                result = subprocess.run(
                    child,
                    cwd=cwd,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=args.timeout,
                    check=False,
                )
                output, failed = result.stdout, result.returncode != 0
                why = (result.stdout + result.stderr).strip()[-2000:]
            except subprocess.TimeoutExpired as expired:
                output = (expired.stdout or b"").decode()
                failed, why = True, f"process outlived {args.timeout:.0f} s (hung)"
        passed = [line for line in output.splitlines() if line.startswith("RUN OK")]
        for line in passed:
            for item in line.split()[2:]:
                name, value = item.split(":")
                seconds[name].append(float(value))
        done += len(passed)
        print(f"process {processes}: {len(passed)} runs ok (total {done})", flush=True)
        if failed:
            failures += 1
            done += 1  # the failed run counts
            print(f"FAILED run {done}:\n{why}", flush=True)
    total = time.perf_counter() - start
    shutil.rmtree(snapshot)
    print(
        f"\n{failures} failures in {done} runs of chapters 1-9 in one process"
        f" ({processes} processes); {total / 60:.1f} min in all,"
        f" Python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )
    print(
        "median seconds per chapter: "
        + ", ".join(f"{n}: {sorted(v)[len(v) // 2]:.1f}" for n, v in seconds.items())
    )
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
