"""The train command's last line: figures for scripts, and which step a validation loss comes from."""

from __future__ import annotations

from pathlib import Path

from trainer.cli import final_line
from trainer.train import TrainResult


def _result(final_step: int, val_steps: tuple[int, ...], stop: str) -> TrainResult:
    history = [{"step": s, "loss": 5.0 - s / 10, "step_s": 0.5, "tokens_per_s": 1000.0, "mfu": None,
                **({"val_loss": 6.0 - s / 10} if s in val_steps else {})} for s in range(1, final_step + 1)]
    return TrainResult(Path("run"), 0, final_step, stop, history)


def test_a_run_stopped_between_evaluations_says_which_step_its_val_loss_is_from():
    line = final_line(_result(26, (10, 20), "interrupted"))
    assert line.startswith("final step=26 loss=2.4000 val_loss=4.0000 val_step=20 tokens_per_s=1000")
    assert line.endswith("stop=interrupted")


def test_a_val_loss_of_the_last_step_needs_no_step():
    line = final_line(_result(20, (10, 20), "done"))
    assert "val_loss=4.0000 tokens_per_s=" in line and "val_step" not in line
    assert "val_loss" not in final_line(_result(3, (), "done"))
