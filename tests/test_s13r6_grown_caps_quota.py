"""`recipe.grown_caps_problems` weighs a root leaf's quota against `min_per_topic` (a quota under it frees samples
where that topic stays a leaf) but not against `max_per_topic`: a quota over the cap takes samples the cap does not
limit (`Taxonomy.sample` fills quotas first, caps only the other topics), so `validate`, and since 007eb91 the build
before growth, refused caps that a tree of `grow.target` topics growth can give meets."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from textbookgen.cli import app
from textbookgen.recipe import grown_caps_problems, load_recipe
from textbookgen.taxonomy import Taxonomy

RECIPE = """\
name: tiny
model: gpt-4o-mini
taxonomy:
  source: topics.yaml
  max_per_topic: 1
  grow: {target: 5}
mix:
  - template: textbook_section
    audiences: {college: 1}
samples: 8
"""
ROOTS = "topics:\n  - {name: Physics, quota: 5}\n  - Chemistry\n  - Biology\n"


def _recipe(tmp_path: Path) -> Path:
    (tmp_path / "topics.yaml").write_text(ROOTS)
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE)
    return path


def test_a_root_quota_over_the_cap_makes_room_for_the_samples(tmp_path):
    """Physics' quota 5 while it stays a leaf, 1 for each of the 4 others: 9 >= 8 samples (1 x 5 topics < 8)."""
    path = _recipe(tmp_path)
    res = CliRunner().invoke(app, ["validate", str(path)])
    assert res.exit_code == 0, res.output
    recipe = load_recipe(path)
    assert grown_caps_problems(recipe, Taxonomy.load(tmp_path / "topics.yaml")) == []  # the build's check
    (tmp_path / "grown.yaml").write_text("topics:\n  - {name: Physics, quota: 5}\n  - Chemistry: [Acids, Salts]\n"
                                         "  - Biology: [Cells, Plants]\n")
    grown = Taxonomy.load(tmp_path / "grown.yaml")  # a tree of the target size that growth can give
    assert len(grown.leaves()) == 5 and len(grown.sample(8, 0, max_per_topic=1)) == 8


def test_samples_past_the_quota_s_room_are_still_refused_naming_it(tmp_path):
    path = _recipe(tmp_path)
    res = CliRunner().invoke(app, ["validate", str(path), "--set", "samples=10"])  # 1 x 5 + 4 = 9 < 10
    assert res.exit_code == 1, res.output
    assert "taxonomy.max_per_topic: max_per_topic=1 x 5 topics (taxonomy.grow.target), plus 4 for root topics " \
           "whose quota is over it, < 10 samples" in res.output
