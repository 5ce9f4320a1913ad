"""Intersphinx inventories written from short text files, so links work offline.

The build machine has no network, so the real ``objects.inv`` files of PyTorch
and Python cannot be fetched. Each ``_inventories/<name>.txt`` lists the entries
this site links to; this module turns it into a Sphinx v2 inventory.
"""

from __future__ import annotations

import zlib
from pathlib import Path


def write_inventory(source: Path, target: Path, project: str) -> Path:
    """Write ``target`` (objects.inv format) from ``source`` unless already identical."""
    lines = []
    for line in source.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, role, uri = line.split()
            lines.append(f"{name} {role} 1 {uri} -")
    header = (
        f"# Sphinx inventory version 2\n# Project: {project}\n# Version: \n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    data = header.encode() + zlib.compress(("\n".join(lines) + "\n").encode(), 9)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists() or target.read_bytes() != data:
        target.write_bytes(data)
    return target
