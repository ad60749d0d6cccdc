"""A subject given twice as a YAML key, once with a list of topics and once with a mapping of them, keeps
both branches (as two mappings or two lists do); the second one's topics were dropped without a word."""

from __future__ import annotations

from pathlib import Path

import pytest

from textbookgen.taxonomy import Taxonomy

LIST_THEN_MAPPING = "Physics: [Optics, Mechanics]\nChemistry: 1\nPhysics:\n  weight: 3\n  Waves: 2\n"
MAPPING_THEN_LIST = "Physics:\n  weight: 3\n  Waves: 2\nChemistry: 1\nPhysics: [Optics, Mechanics]\n"


@pytest.mark.parametrize(("text", "leaves", "weight"), [
    (LIST_THEN_MAPPING, ["Physics > Optics", "Physics > Mechanics", "Physics > Waves", "Chemistry"], 1.0),
    (MAPPING_THEN_LIST, ["Physics > Waves", "Physics > Optics", "Physics > Mechanics", "Chemistry"], 3.0),
])
def test_a_list_and_a_mapping_of_one_subject_are_joined(tmp_path: Path, text: str, leaves: list[str],
                                                         weight: float):
    path = tmp_path / "topics.yaml"
    path.write_text(text)
    tax = Taxonomy.load(path)
    assert [t.path_str for t in tax.leaves()] == leaves
    assert tax.topics[0].weight == weight  # the first one's, as merged siblings keep
