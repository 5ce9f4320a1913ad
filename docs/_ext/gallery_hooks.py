"""Hooks that sphinx-gallery calls by dotted name (function objects break ``-W``)."""

from __future__ import annotations

from typing import Any

import torch


def reset_torch(gallery_conf: dict[str, Any], fname: str) -> None:  # noqa: ARG001
    """Give every chapter the same fresh global torch state, whatever ran before it."""
    torch.manual_seed(0)
    torch.set_default_dtype(torch.float32)
    torch.set_default_device(None)
