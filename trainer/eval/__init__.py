"""Offline evaluation: the phi-1.5 paper's benchmark table for any checkpoint (see harness.py)."""

from trainer.eval.harness import PAPER_TASKS, TaskResult, evaluate
from trainer.eval.models import CausalLM, load_model

__all__ = ["PAPER_TASKS", "CausalLM", "TaskResult", "evaluate", "load_model"]
