"""Offline evaluation: the phi-1.5 paper's benchmark table for any checkpoint (see harness.py).

Exports load lazily, so `python -m trainer --help` does not import torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PAPER_TASKS", "CausalLM", "TaskResult", "evaluate", "load_model"]
_HOME = {"PAPER_TASKS": "harness", "TaskResult": "harness", "evaluate": "harness",
         "CausalLM": "models", "load_model": "models"}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'trainer.eval' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"trainer.eval.{_HOME[name]}"), name)
