"""Which device, torch version, date and commit built the site (shown on every page)."""

from __future__ import annotations

import datetime as dt
import os
import subprocess

import torch


def build_device() -> torch.device:
    """The device the chapters run on: ``GUIDE_DEVICE`` if set, else the best present.

    An explicitly requested device that is not there stops the build: a GPU build
    must never quietly turn into a CPU build.
    """
    best = torch.accelerator.current_accelerator(check_available=True)
    requested = os.environ.get("GUIDE_DEVICE")
    if not requested:
        return best or torch.device("cpu")
    device = torch.device(requested)
    if device.type != "cpu" and (best is None or best.type != device.type):
        msg = (
            f"GUIDE_DEVICE={requested!r} was requested but this torch "
            f"({torch.__version__}) sees {best or 'no accelerator'}; install a torch "
            "build for that device or unset GUIDE_DEVICE"
        )
        raise RuntimeError(msg)
    return device


def device_description(device: torch.device) -> str:
    """``cuda (NVIDIA H100 80GB HBM3)``, ``mps``, ``cpu``."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def build_date() -> str:
    """The build date, taken from ``SOURCE_DATE_EPOCH`` when set (reproducible builds)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
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
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return result.stdout.strip() or None


def build_line() -> str:
    """One line for the top of every page."""
    parts = [
        f"Outputs produced on {device_description(build_device())}",
        f"with torch {torch.__version__}",
        f"built {build_date()}",
    ]
    if commit := build_commit():
        parts.append(f"commit {commit}")
    return ", ".join(parts[:2]) + " · " + " · ".join(parts[2:])
