"""A recipe with `taxonomy.grow` whose target its root topics already meet grows nothing: its prompts are drawn
from the roots, so `validate` notes the ones that must repeat, as for a recipe without growth (it said nothing)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from textbookgen.cli import app
from textbookgen.recipe import load_recipe, repeated_prompts_note
from textbookgen.taxonomy import Taxonomy

RECIPE = """\
name: dup
model: gpt-4o-mini
taxonomy: {{source: topics.txt, grow: {{target: {target}}}}}
mix:
  - template: textbook_section
    audiences: {{college: 1, general: 1}}
samples: 40
"""


def _recipe(tmp_path: Path, target: int) -> Path:
    (tmp_path / "topics.txt").write_text("Physics\n  Mechanics\n  Optics\nChemistry\n  Organic\n")  # 3 leaves
    path = tmp_path / f"r{target}.yaml"
    path.write_text(RECIPE.format(target=target))
    return path


def test_a_grow_target_the_roots_meet_still_notes_repeats(tmp_path: Path) -> None:
    met = _recipe(tmp_path, 3)
    tax = Taxonomy.load(tmp_path / "topics.txt")
    note = repeated_prompts_note(load_recipe(met), tax)
    # hierarchical weights: Mechanics 10, Optics 10, Organic 20 prompts, each over 2 cells
    assert note is not None and "at least 34 of 40 prompts repeat an earlier one word for word" in note
    assert "raise taxonomy.grow.target, audiences" in note  # the recipe grows already: more growth is the advice
    assert repeated_prompts_note(load_recipe(_recipe(tmp_path, 4)), tax) is None  # grows: its topics are unknown


def test_validate_notes_them(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["validate", str(_recipe(tmp_path, 2))])
    assert res.exit_code == 0, res.output
    assert "samples: at least 34 of 40 prompts repeat an earlier one word for word" in res.output
    assert ", 3 topics, 1 mix entry" in res.output  # not "grown to 2 by the build": nothing grows
