"""Reading checkpoints as users have them: files, folders of shards, wrapped state dicts."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch


def read_checkpoint(path: Path, function: str) -> Any:
    if path.is_dir():
        weights = sorted(
            p.name
            for pattern in ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt")
            for p in path.glob(pattern)
        )
        hint = (
            f"pass one of the weights files inside it: {weights[:5]}"
            if weights
            else "pass the checkpoint file inside it"
        )
        msg = f"{function}() got the folder {str(path)!r}, not a file; {hint}"
        raise ValueError(msg)
    if not path.is_file():
        msg = f"{function}() cannot read {str(path)!r}: no such file"
        raise ValueError(msg)
    if path.stat().st_size == 0:
        msg = f"{function}() cannot read {str(path)!r}: the file is empty (0 bytes); was the save interrupted?"
        raise ValueError(msg)
    if path.suffix == ".safetensors":
        return _load_safetensors(path, function)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types on a damaged file
        first_line = (str(error).splitlines() or [""])[0]
        msg = (
            f"{function}() cannot read {str(path)!r} as a checkpoint with "
            f"torch.load(weights_only=True): {type(error).__name__}: {first_line}; "
            "pass a file written by torch.save (a truncated or text file cannot be "
            "read), or a .safetensors file"
        )
        raise ValueError(msg) from error


def _load_safetensors(path: Path, function: str) -> Any:
    try:
        load_file = importlib.import_module("safetensors.torch").load_file
    except ImportError as error:
        msg = (
            f"{function}() needs the safetensors package to read {str(path)!r}: "
            "pip install safetensors"
        )
        raise ValueError(msg) from error
    try:
        return load_file(path, device="cpu")
    except Exception as error:  # safetensors raises its own error types
        msg = (
            f"{function}() cannot read {str(path)!r} as a safetensors file: "
            f"{type(error).__name__}: {error}"
        )
        raise ValueError(msg) from error


def as_state_dict(loaded: Any, key: str | None) -> Mapping[str, Any]:
    if key is not None:
        if not isinstance(loaded, Mapping) or key not in loaded:
            found = sorted(map(str, loaded)) if isinstance(loaded, Mapping) else []
            msg = f"explain_state_dict() found no key {key!r} in the checkpoint; keys: {found}"
            raise ValueError(msg)
        loaded = loaded[key]
    if not isinstance(loaded, Mapping):
        msg = (
            "explain_state_dict() expects a state dict (a mapping of names to tensors), "
            f"got {type(loaded).__name__}"
        )
        raise TypeError(msg)
    if loaded and not any(isinstance(v, torch.Tensor) for v in loaded.values()):
        wrapped = [name for name, value in loaded.items() if isinstance(value, Mapping)]
        hint = (
            f"; it looks like a wrapper: pass key={wrapped[0]!r}"
            if wrapped
            else "; if the checkpoint wraps the state dict, pass key='model'"
        )
        msg = (
            "explain_state_dict() expects a mapping of names to tensors, but none of "
            f"its values ({list(loaded)[:5]}) are tensors{hint}"
        )
        raise ValueError(msg)
    return loaded
