"""A build checks its generic benchmark files against the recipe's `min_item_words`, as `decontaminate` does."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from textbookgen.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_a_plan_refuses_a_benchmark_too_short_for_the_recipes_min_item_words(tmp_path):
    """The build loaded benchmarks with the default 8 words: 10-word questions passed its check under
    `min_item_words: 20`, then matched no document, where `decontaminate` refuses the same file."""
    bench = tmp_path / "short.jsonl"
    bench.write_text("".join(json.dumps({"question": f"What is the capital city of country number {i} today?"})
                             + "\n" for i in range(5)))
    overrides = [f"output={tmp_path / 'p'}", "curation.decontamination.min_item_words=20",
                 f"curation.decontamination.benchmarks=['{bench}']"]
    result = runner.invoke(app, ["plan", str(ROOT / "recipes" / "quickstart.yaml"),
                                 *(arg for o in overrides for arg in ("--set", o))])
    assert result.exit_code == 1
    assert "benchmarks[0]" in result.output and "20 words or more" in result.output
