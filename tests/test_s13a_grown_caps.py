"""`taxonomy.min_per_topic` x `taxonomy.grow.target` over `samples` can never be met by the tree the build grows;
`validate` called such a recipe ok and the build paid for the growth before its prompts stage refused it. Both now
refuse it first, naming the field; a minimum that the roots' quotas make room for is still accepted."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from textbookgen.build import build
from textbookgen.cli import app
from textbookgen.recipe import RecipeError, load_recipe
from textbookgen.taxonomy import Taxonomy
from textbookgen.testing.emulator import Emulator, EmulatorConfig

ROOT = Path(__file__).resolve().parents[1]
RECIPE = """\
name: tiny
model: gpt-4o-mini
taxonomy:
  source: topics.yaml
  min_per_topic: 2
  grow: {target: 5}
mix:
  - template: textbook_section
    audiences: {college: 1}
samples: 9
"""


def _recipe(tmp_path: Path, topics: str) -> Path:
    (tmp_path / "topics.yaml").write_text(topics)
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE)
    return path


def test_validate_refuses_a_minimum_no_tree_of_the_target_size_meets(tmp_path):
    recipe = _recipe(tmp_path, "topics: [Physics, Chemistry, Biology]\n")
    res = CliRunner().invoke(app, ["validate", str(recipe)])  # 2 x 5 grown topics > 9 samples
    assert res.exit_code == 1, res.output
    assert res.output.startswith(f"error: {recipe}:5: taxonomy.min_per_topic: min_per_topic=2 x 5 topics "
                                 "(taxonomy.grow.target) > 9 samples: lower taxonomy.min_per_topic or raise samples")
    assert CliRunner().invoke(app, ["validate", str(recipe), "--set", "samples=10"]).exit_code == 0


def test_a_root_quota_under_the_minimum_leaves_room_for_it(tmp_path):
    """Physics' quota 0 replaces its minimum while it stays a leaf: 4 other topics x 2 = 8 <= 9 samples."""
    recipe = _recipe(tmp_path, "topics:\n  - {name: Physics, quota: 0}\n  - Chemistry\n  - Biology\n")
    res = CliRunner().invoke(app, ["validate", str(recipe)])
    assert res.exit_code == 0, res.output
    (tmp_path / "grown.yaml").write_text("topics:\n  - {name: Physics, quota: 0}\n  - Chemistry: [Acids, Salts]\n"
                                         "  - Biology: [Cells, Plants]\n")
    grown = Taxonomy.load(tmp_path / "grown.yaml")  # a tree of the target size that growth can give
    assert len(grown.leaves()) == 5 and len(grown.sample(9, 0, min_per_topic=2)) == 9


def test_the_build_refuses_it_before_paying_for_growth(tmp_path):
    with Emulator(EmulatorConfig(latency_median_s=0.0005)) as emu:
        recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml", {
            "output": str(tmp_path / "o"), "web_samples": None, "provider.base_url": emu.openai_base_url,
            "samples": 300, "taxonomy.max_per_topic": None, "taxonomy.min_per_topic": 2,
            "taxonomy.grow": {"target": 200}})
        for plan_only in (True, False):
            with pytest.raises(RecipeError, match=r"^--set taxonomy\.min_per_topic: min_per_topic=2 x 200 topics "
                                                  r"\(taxonomy\.grow\.target\) > 300 samples"):
                build(recipe, plan_only=plan_only, progress=False)
        assert emu.billed == 0
    assert not (tmp_path / "o" / ".build" / "grow.sqlite").exists()
