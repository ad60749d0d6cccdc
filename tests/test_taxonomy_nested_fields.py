"""A nested-mapping taxonomy takes a topic's own fields (weight, quota, description) beside its children."""

from __future__ import annotations

import pytest

from textbookgen.taxonomy import Taxonomy, TaxonomyError


def _load(tmp_path, text: str) -> Taxonomy:
    path = tmp_path / "t.yaml"
    path.write_text(text)
    return Taxonomy.load(path)


def test_quota_and_description_are_the_topics_not_child_topics(tmp_path):
    tax = _load(tmp_path, "Science:\n  Physics:\n    quota: 3\n    description: Matter and energy\n"
                          "    weight: 2\n    Optics: 1\n    Mechanics: 1\n  Chemistry: 1\nArts: 1\n")
    paths = {t.path_str for t in tax.leaves()}
    assert paths == {"Science > Physics > Optics", "Science > Physics > Mechanics", "Science > Chemistry", "Arts"}
    physics = next(t for t in tax.walk() if t.path == ("Science", "Physics"))
    assert physics.meta == {"quota": 3, "description": "Matter and energy"} and physics.weight == 2.0


def test_a_leaf_given_as_a_mapping_of_its_fields_stays_a_leaf(tmp_path):
    tax = _load(tmp_path, "Science:\n  Physics: {quota: 4}\n  Chemistry: 1\nArts: 1\n")
    assert {t.path_str for t in tax.leaves()} == {"Science > Physics", "Science > Chemistry", "Arts"}
    assert next(t for t in tax.leaves() if t.name == "Physics").meta["quota"] == 4


@pytest.mark.parametrize(("field", "problem"), [("weight: heavy", "weight must be a number"),
                                                ("quota: -1", "quota must be an integer >= 0")])
def test_a_bad_field_is_named_by_line_not_made_a_topic(tmp_path, field, problem):
    with pytest.raises(TaxonomyError, match=rf"t\.yaml:2: topic 'Science > Physics': {problem}"):
        _load(tmp_path, f"Science:\n  Physics:\n    {field}\n    Optics: 1\nArts: 1\n")
