"""A recipe asking more prompts of a topic than its mix has cells, with nothing else to tell them apart (no
web extracts, no drawn words), makes prompts that repeat word for word: `validate` says so (it said "ok")
and what to change, as the plan, which counts them, now does too."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from textbookgen.cli import app
from textbookgen.recipe import load_recipe, repeated_prompts_note
from textbookgen.taxonomy import Taxonomy

RECIPE = """\
name: dup
model: gpt-4o-mini
taxonomy: {source: topics.txt}
mix:
  - template: textbook_section
    audiences: {college: 1, general: 1}
samples: 40
"""


def _recipe(tmp_path: Path, text: str = RECIPE) -> Path:
    (tmp_path / "topics.txt").write_text("Physics\n  Mechanics\n  Optics\nChemistry\n  Organic\n")
    (tmp_path / "seeds.txt").write_text(("A paragraph of real web text about the physical world. " * 6 + "\n\n") * 5)
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_validate_notes_prompts_that_must_repeat(tmp_path: Path):
    path = _recipe(tmp_path)
    res = CliRunner().invoke(app, ["validate", str(path)])
    assert res.exit_code == 0, res.output
    # hierarchical weights: Mechanics 10, Optics 10, Organic 20 prompts, each over 2 cells
    assert (f"note: {path}:7: samples: at least 34 of 40 prompts repeat an earlier one word for word "
            "(3 topics, up to 20 prompts each, over 2 mix cells") in res.output
    assert "add topics (taxonomy.grow), audiences, styles or formats, web_samples, or lower samples" in res.output


def test_no_note_when_prompts_can_differ(tmp_path: Path):
    path = _recipe(tmp_path)
    tax = Taxonomy.load(tmp_path / "topics.txt")
    assert repeated_prompts_note(load_recipe(path), tax) is not None
    few = load_recipe(_recipe(tmp_path, RECIPE.replace("samples: 40", "samples: 6")))
    assert repeated_prompts_note(few, tax) is None  # 1-2 prompts a topic, 2 cells each
    seeded = load_recipe(_recipe(tmp_path, RECIPE + "web_samples: {source: seeds.txt, min_chars: 100}\n"))
    assert repeated_prompts_note(seeded, tax) is None
    stories = load_recipe(_recipe(tmp_path, RECIPE.replace("textbook_section", "story")))
    assert repeated_prompts_note(stories, tax) is None  # each story draws its own words


def test_the_plan_says_what_to_change_about_duplicate_prompts(tmp_path: Path):
    res = CliRunner().invoke(app, ["plan", str(_recipe(tmp_path))])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "Duplicate prompts ask twice for the same document: add topics (taxonomy.grow), audiences" in text
