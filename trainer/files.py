"""Reading JSON and weight files so that a corrupt one is reported by name (`FileFormatError`), not as a
bare decoder error."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch


class FileFormatError(ValueError):
    """A file that exists but cannot be parsed; the message names it."""


def read_json(path: str | Path) -> Any:
    """The parsed JSON of `path` (UTF-8)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FileFormatError(f"{path}: not valid UTF-8 JSON ({e})") from e


def load_weights(path: str | Path, mmap: bool = False) -> Any:
    """A `.safetensors` state dict, or what a `.pt` file holds (weights_only, on CPU)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        if Path(path).suffix == ".safetensors":
            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (SafetensorError, RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise FileFormatError(f"{path}: corrupt or unreadable weights ({e})") from e
