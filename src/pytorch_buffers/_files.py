"""Reading checkpoints as users have them: files, folders of shards, wrapped state dicts."""

from __future__ import annotations

import importlib
import json
import re
import zipfile
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

_WEIGHTS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt")
_SHARD = re.compile(r"-\d+-of-\d+\.(safetensors|bin)$")  # model-00001-of-00002.bin
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+) was not an allowed global")
# How deep, and how many entries of one mapping or list, the search looks.
_MAX_DEPTH = 6
_MAX_ENTRIES = 1000


def plain_sentences(text: str, limit: int = 300) -> str:
    """Torch's text without terminal escapes, as whole sentences up to ``limit``
    characters (the first sentence whole, however long)."""
    flat = " ".join(_ANSI.sub("", text).split())
    sentences = re.split(r"(?<=[.!?])\s+", flat)
    kept = [sentences[0]]
    for sentence in sentences[1:]:
        if len(" ".join([*kept, sentence])) > limit:
            break
        kept.append(sentence)
    return " ".join(kept)


def read_checkpoint(path: Path, function: str) -> Any:
    """What the file (or the folder of shards) at ``path`` holds, read safely."""
    if path.is_dir():
        return _read_folder(path, function)
    if not path.is_file():
        msg = f"{function}() cannot read {str(path)!r}: no such file"
        raise ValueError(msg)
    if path.stat().st_size == 0:
        msg = (
            f"{function}() cannot read {str(path)!r}: the file is empty (0 bytes); "
            "was the save interrupted?"
        )
        raise ValueError(msg)
    if path.suffix == ".safetensors":
        return _load_safetensors(path, function)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many types on a damaged file
        raise ValueError(_unreadable(path, function, error)) from error


def _unreadable(path: Path, function: str, error: Exception) -> str:
    text = _ANSI.sub("", str(error))
    refused = _GLOBAL.search(text)
    if refused and _pickles_a_module(path):
        return (
            f"{function}() cannot read {str(path)!r}: the file pickles a whole module "
            f"({refused[1]}, saved with torch.save(model)), not a state dict, and "
            "torch.load(weights_only=True) refuses to run the code that rebuilds it. "
            "Only if you trust the file: state_dict = torch.load(path, "
            "weights_only=False).state_dict(), and pass that (it runs code from the "
            "file, and the class must be importable)"
        )
    if refused:
        return (
            f"{function}() cannot read {str(path)!r} with torch.load(weights_only="
            f"True): it holds an object of {refused[1]}, which weights_only refuses. "
            "Only if you trust the file: torch.load(path, weights_only=False), then "
            "pass its state dict"
        )
    return (
        f"{function}() cannot read {str(path)!r} as a checkpoint with "
        f"torch.load(weights_only=True): {type(error).__name__}: "
        f"{plain_sentences(text)} Pass a file written by torch.save (a truncated "
        "or text file cannot be read), or a .safetensors file"
    )


def _pickles_a_module(path: Path) -> bool:
    """Whether the pickle inside a torch.save file holds an nn.Module's state
    (its ``_parameters`` and ``_modules`` dicts), read without unpickling."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
            data = archive.read(name)
    except (zipfile.BadZipFile, StopIteration, OSError):
        return False
    return b"_parameters" in data and b"_modules" in data


def _read_folder(path: Path, function: str) -> Any:
    """A folder: transformers' shards merged through their index, or its one file."""
    indexes = sorted(path.glob("*.safetensors.index.json")) or sorted(
        path.glob("*.index.json")
    )
    if indexes:
        try:
            weight_map = json.loads(indexes[0].read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as error:
            msg = (
                f"{function}() cannot read the shard index {str(indexes[0])!r}: {error}"
            )
            raise ValueError(msg) from error
        files = list(dict.fromkeys(weight_map.values()))
        return _merged(path, files, function)
    weights = sorted({p.name for pattern in _WEIGHTS for p in path.glob(pattern)})
    shards = [name for name in weights if _SHARD.search(name)]
    if len(weights) == 1:
        return read_checkpoint(path / weights[0], function)
    if shards and len(shards) == len(weights):
        return _merged(path, shards, function)
    hint = (
        f"pass one of the weights files inside it: {weights[:5]}"
        if weights
        else "it holds no weights file (*.safetensors, *.bin, *.pt, *.pth, *.ckpt)"
    )
    msg = f"{function}() got the folder {str(path)!r}, which is not one checkpoint; {hint}"
    raise ValueError(msg)


def _merged(folder: Path, files: list[str], function: str) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for name in files:
        shard = read_checkpoint(folder / name, function)
        if not isinstance(shard, Mapping):
            msg = f"{function}() expected a state dict in the shard {name!r}"
            raise ValueError(msg)  # noqa: TRY004  (a bad file, not a bad argument)
        merged.update(shard)
    return merged


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
            f"{type(error).__name__}: {plain_sentences(str(error))}"
        )
        raise ValueError(msg) from error


def _mappings(
    value: Any, label: str, depth: int = 0
) -> Iterator[tuple[str, Mapping[Any, Any], int]]:
    """Every mapping inside a loaded checkpoint, with where it is and its depth."""
    if isinstance(value, Mapping):
        yield label, value, depth
        children = list(value.items())[:_MAX_ENTRIES]
    elif isinstance(value, list | tuple):
        children = list(enumerate(value))[:_MAX_ENTRIES]
    else:
        return
    if depth >= _MAX_DEPTH:
        return
    for key, child in children:
        if isinstance(child, Mapping | list | tuple):
            yield from _mappings(child, f"{label}[{key!r}]", depth + 1)


def _matcher(module_keys: Collection[str]) -> Any:
    """Whether a checkpoint key names a module key, up to a prefix on either side."""
    exact = set(module_keys)
    endings = {
        key.split(".", i)[-1] for key in exact for i in range(key.count(".") + 1)
    }

    def matches(key: Any) -> bool:
        if not isinstance(key, str):
            return False
        if key in endings:
            return True
        parts = key.split(".")
        return any(".".join(parts[i:]) in exact for i in range(1, min(len(parts), 4)))

    return matches


def as_state_dict(
    loaded: Any, key: str | None, module_keys: Collection[str] = ()
) -> tuple[Mapping[str, Any], str | None]:
    """The state dict in ``loaded``, and where it was found (None: it is ``loaded``).

    Without ``key``, every mapping inside the checkpoint, at any depth, is a
    candidate; the one holding the most tensors named like the module's keys
    (up to a prefix) wins, the shallowest on a tie.
    """
    if key is not None:
        if not isinstance(loaded, Mapping) or key not in loaded:
            found = sorted(map(str, loaded)) if isinstance(loaded, Mapping) else []
            msg = f"explain_state_dict() found no key {key!r} in the checkpoint; keys: {found}"
            raise ValueError(msg)
        return _checked(loaded[key]), f"checkpoint[{key!r}]"
    if not isinstance(loaded, Mapping | list | tuple):
        msg = (
            "explain_state_dict() expects a state dict (a mapping of names to tensors), "
            f"got {type(loaded).__name__}"
        )
        raise TypeError(msg)
    matches = _matcher(module_keys)
    best: tuple[int, int, str, Mapping[Any, Any]] | None = None
    for label, mapping, depth in _mappings(loaded, "checkpoint"):
        score = sum(
            1
            for name, value in mapping.items()
            if isinstance(value, torch.Tensor) and matches(name)
        )
        if score and (best is None or (score, -depth) > (best[0], -best[1])):
            best = score, depth, label, mapping
    if best is not None:
        where = None if best[3] is loaded else best[2]
        return _checked(best[3]), where
    return _checked(loaded), None


def _checked(loaded: Any) -> Mapping[str, Any]:
    if not isinstance(loaded, Mapping):
        msg = (
            "explain_state_dict() expects a state dict (a mapping of names to tensors), "
            f"got {type(loaded).__name__}"
        )
        raise TypeError(msg)
    if loaded and not any(isinstance(v, torch.Tensor) for v in loaded.values()):
        msg = (
            "explain_state_dict() expects a mapping of names to tensors, but none of "
            f"its values ({list(loaded)[:5]}) are tensors, and no mapping inside it "
            "holds tensors named like the module's; pass key='...' to choose one"
        )
        raise ValueError(msg)
    return loaded
