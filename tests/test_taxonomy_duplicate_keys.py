"""A subject listed twice as a YAML key (a second `Physics:` further down, a pasted block) is merged as the
README says same-name siblings are, children joined; PyYAML kept only the last one, dropping the first's
whole branch without a word."""

from __future__ import annotations

from pathlib import Path

from textbookgen.taxonomy import Taxonomy

TWICE = """\
Physics:
  Mechanics: 1
  Waves:
    Sound: 1
Chemistry:
  Organic: 1
Physics:
  Optics: 1
  Waves:
    Light: 1
"""


def test_a_subject_given_twice_keeps_both_branches(tmp_path: Path):
    path = tmp_path / "topics.yaml"
    path.write_text(TWICE)
    leaves = [t.path_str for t in Taxonomy.load(path).leaves()]
    assert leaves == ["Physics > Mechanics", "Physics > Waves > Sound", "Physics > Waves > Light",
                      "Physics > Optics", "Chemistry > Organic"]


def test_a_topic_given_twice_keeps_its_first_weight(tmp_path: Path):
    """As merging same-name siblings does: the first one's weight (a weighted title list, SciPhi's, has such
    repeats)."""
    path = tmp_path / "titles.yaml"
    path.write_text('title:\n  "Rainbows with Prisms": 2\n  "Plant Life Cycles": 1\n  "Rainbows with Prisms": 3\n')
    tax = Taxonomy.load(path)
    assert [(t.name, t.weight) for t in tax.leaves()] == [("Rainbows with Prisms", 2.0), ("Plant Life Cycles", 1.0)]
