"""The command a plan prints to run the build for real: copied as printed, it must run the build that was planned.
A recipe path with a space became two arguments (a recipe called `my`), the line was wrapped at 80 columns where
stdout is no terminal (inside the quoted path, too), and `--retry-failed` / `--no-push` were left out (the plan
counted the failed calls as re-sent; the printed command pushed where the recipe says hub.push)."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

from typer.testing import CliRunner

from textbookgen.cli import app

ROOT = Path(__file__).resolve().parents[1]


def _run_for_real(output: str) -> list[str]:
    """The 'use a server of your own' command of a plan's output, split as a shell splits it."""
    line = next(ln for ln in output.splitlines() if "use a server of your own:" in ln)
    command = line.split("use a server of your own:", 1)[1].split(" --set provider.name=")[0]
    return shlex.split(command)


def test_the_plan_s_command_quotes_the_recipe_path_and_keeps_the_flags(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    shutil.copytree(ROOT / "recipes", tmp_path / "my recipes" / "recipes")
    shutil.copytree(ROOT / "datasets_cards", tmp_path / "my recipes" / "datasets_cards")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["build", "my recipes/recipes/tiny-stories.yaml", "--plan", "--no-push", "--retry-failed",
                                      "--set", "samples=20", "--set", f"output={tmp_path / 'o'}"])
    assert result.exit_code == 0, result.output
    argv = _run_for_real(result.output)
    assert argv[:3] == ["textbookgen", "build", "my recipes/recipes/tiny-stories.yaml"]
    assert "--retry-failed" in argv and "--no-push" in argv and "--plan" not in argv
    assert argv[argv.index("--set") + 1] == "samples=20"


def test_the_plan_command_s_own_push_default_is_not_printed_as_a_flag(tmp_path, monkeypatch):
    """`textbookgen plan` never pushes, but the user asked for no --no-push: the build for real follows the recipe."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    result = CliRunner().invoke(app, ["plan", str(ROOT / "recipes" / "tiny-stories.yaml"), "--set", "samples=20",
                                      "--set", f"output={tmp_path / 'o'}"])
    assert result.exit_code == 0, result.output
    argv = _run_for_real(result.output)
    assert "--no-push" not in argv and "--push" not in argv


def test_the_server_of_your_own_command_gives_the_served_model_a_price_under_a_dollar_budget(tmp_path, monkeypatch):
    """quickstart has a dollar budget, which refuses a model with no price: the printed command for a server of
    your own (`--set model=<served model>`, no list price) was refused as soon as it was run."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    recipe = ROOT / "recipes" / "quickstart.yaml"
    result = CliRunner().invoke(app, ["plan", str(recipe), "--set", "samples=20", "--set", f"output={tmp_path / 'o'}"])
    assert result.exit_code == 0, result.output
    line = next(ln for ln in result.output.splitlines() if "use a server of your own:" in ln)
    argv = shlex.split(line.split("use a server of your own:", 1)[1].rstrip(")").replace("<served model>", "my/llm"))
    assert argv[:2] == ["textbookgen", "build"]
    checked = CliRunner().invoke(app, ["validate", *argv[2:]])
    assert checked.exit_code == 0, checked.output
