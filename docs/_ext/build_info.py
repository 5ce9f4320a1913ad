"""Which device, torch version, date and commit built the site (shown on every page)."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
from importlib.metadata import version
from pathlib import Path
from typing import Any


def build_device() -> Any:
    """The device the chapters run on: ``GUIDE_DEVICE`` if set, else the best present.

    An explicitly requested device that is not there stops the build: a GPU build
    must never quietly turn into a CPU build.
    """
    import torch  # noqa: PLC0415 (slow import, only when the cached line is stale)
    from sphinx.errors import ConfigError  # noqa: PLC0415

    best = torch.accelerator.current_accelerator(check_available=True)
    requested = os.environ.get("GUIDE_DEVICE")
    if not requested:
        return best or torch.device("cpu")
    choices = ["cpu", *([best.type] if best else [])]
    try:
        device = torch.device(requested)
    except RuntimeError:  # not a device string torch knows ("banana")
        device = None
    if device is None or device.type not in choices:
        # ConfigError: Sphinx prints its message alone, without a traceback or
        # its "programmable error in your configuration file" wrapper.
        reason = (
            "is not a device name"
            if device is None
            else f"is not present for torch {torch.__version__} on this machine"
        )
        msg = (
            f"GUIDE_DEVICE={requested!r} {reason}; choose one of: {', '.join(choices)}, "
            "or unset GUIDE_DEVICE to use the best device present"
        )
        raise ConfigError(msg)
    return device


def device_description() -> str:
    """``cuda (NVIDIA H100 80GB HBM3)``, ``mps``, ``cpu``."""
    device = build_device()
    if device.type == "cuda":
        import torch  # noqa: PLC0415

        return f"cuda ({torch.cuda.get_device_name(device)})"
    return str(device.type)


def _git(*arguments: str) -> str | None:
    """What a git command prints, or ``None`` outside a git checkout."""
    try:
        result = subprocess.run(
            ["git", *arguments], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return result.stdout.strip() or None


def commit_epoch() -> str | None:
    """The checkout's last commit time (seconds since 1970), or ``None`` outside git."""
    return _git("log", "-1", "--format=%ct")


def dated_by_commit() -> bool:
    """Whether the banner's date is a commit's: ``SOURCE_DATE_EPOCH`` (``nox -s docs``
    sets it to the last commit's time) or, without it, the checkout's last commit."""
    return bool(os.environ.get("SOURCE_DATE_EPOCH") or commit_epoch())


def build_date() -> str:
    """``SOURCE_DATE_EPOCH``'s day, else the last commit's, else today's (no git).

    A bare ``sphinx-build`` thus gives the banner ``nox -s docs`` gives: the same
    page text, so a no-op rebuild after ``nox -s docs`` writes no page.
    """
    epoch = os.environ.get("SOURCE_DATE_EPOCH") or commit_epoch()
    moment = (
        dt.datetime.fromtimestamp(int(epoch), tz=dt.UTC)
        if epoch
        else dt.datetime.now(tz=dt.UTC)
    )
    return moment.strftime("%Y-%m-%d")


def build_commit() -> str | None:
    """The short commit hash of the checkout, or ``None`` outside a git checkout."""
    for variable in ("READTHEDOCS_GIT_COMMIT_HASH", "GITHUB_SHA"):
        if os.environ.get(variable):
            return os.environ[variable][:12]
    return _git("rev-parse", "--short=12", "HEAD")


def cached_device_description(cache: Path) -> str:
    """``device_description()``, remembered per machine, torch build and device request.

    Importing torch to ask for the device costs about two seconds, most of a
    no-op rebuild; the answer only changes with the machine, the torch build or
    the environment variables that choose a device, so those key the cache. A
    cold build (no ``docs/_build``) always asks torch.
    """
    key = json.dumps(
        [
            platform.node(),
            version("torch"),
            os.environ.get("GUIDE_DEVICE"),
            os.environ.get("CUDA_VISIBLE_DEVICES"),
        ]
    )
    if cache.exists():
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            return str(saved["device"])
    description = device_description()
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"key": key, "device": description}))
    return description


def outputs_made_with(cache: Path) -> str:
    """``cpu with torch 2.13.0``: what produces the outputs (the build re-runs every
    chapter when this differs from what produced the outputs on disk)."""
    return f"{cached_device_description(cache)} with torch {version('torch')}"


def build_line(cache: Path) -> str:
    """One line for the top of every page: the date is the commit's, and says so;
    outside a git checkout (no commit), the day of the build."""
    line = f"Outputs produced on {outputs_made_with(cache)}"
    commit = build_commit()
    if commit and dated_by_commit():
        return f"{line} · commit {commit}, committed {build_date()}"
    line += f" · built {build_date()}"
    if commit:
        line += f" · commit {commit}"
    return line


if __name__ == "__main__":
    # nox -s docs asks this before starting Sphinx, whose own report of a
    # configuration error buries the one line that matters under a traceback.
    import sys

    from sphinx.errors import ConfigError

    try:
        build_device()
    except ConfigError as error:
        sys.exit(str(error))
