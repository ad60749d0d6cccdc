"""The refusal of a dollar budget on a model with no price says how to go on; each way it names must be one the
command run has (`classifier label` takes --max-cost and --price but no output-token budget)."""

from __future__ import annotations

import re

import typer
from typer.testing import CliRunner

from textbookgen.cli import app
from textbookgen.testing.emulator import Emulator, EmulatorConfig


def _options(*path: str) -> set[str]:
    """The long options a CLI command takes."""
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return {opt for param in command.params for opt in param.opts if opt.startswith("--")}


def test_the_unpriced_budget_refusal_of_classifier_label_names_only_options_it_takes(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "Fractions name parts of a whole."}\n{"text": "Buy cheap shoes now."}\n')
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        res = CliRunner().invoke(app, ["classifier", "label", str(corpus), "-o", str(tmp_path / "l.parquet"),
                                       "--provider", "openai-compatible", "--model", "my/llm", "--base-url",
                                       emu.openai_base_url, "--max-cost", "1"])
        assert res.exit_code == 1 and emu.received == 0, res.output
    assert "has no known price" in res.output and "--price my/llm=IN,OUT" in res.output
    named = set(re.findall(r"--[a-z][a-z-]*", res.output))
    assert named <= _options("classifier", "label"), named - _options("classifier", "label")
