"""A topic that a YAML taxonomy gets wrong (a negative weight, a branch of zero weights, a bad quota, an
unknown key) is named with the file's line as well as its path: in a 26K-topic file the path alone is a
search; and each error says what to do."""

from __future__ import annotations

from pathlib import Path

import pytest

from textbookgen.taxonomy import Taxonomy, TaxonomyError

SUBJECTS = """\
Chemistry:
  Organic: 1
  Inorganic: 1
Physics:
  Mechanics: 1
  "Optics": {weight}
  Waves: 1
"""


def _load(tmp_path: Path, text: str) -> str:
    path = tmp_path / "topics.yaml"
    path.write_text(text)
    with pytest.raises(TaxonomyError) as err:
        Taxonomy.load(path)
    return str(err.value).removeprefix(f"{path}")


def test_a_negative_weight_names_its_line(tmp_path: Path):
    assert _load(tmp_path, SUBJECTS.format(weight=-1)) == (
        ":6: topic 'Physics > Optics': weight must be a finite number >= 0, not -1.0")


def test_a_branch_of_zero_weights_names_its_line_and_what_to_do(tmp_path: Path):
    text = SUBJECTS.format(weight=0).replace("Mechanics: 1", "Mechanics: 0").replace("Waves: 1", "Waves: 0")
    assert _load(tmp_path, text) == (
        ":4: topic 'Physics': every topic below it has weight 0, so nothing there can be sampled: give one a "
        "weight above 0, or give 'Physics' itself weight 0 to leave it out")


def test_under_a_single_root_the_line_is_found_too(tmp_path: Path):
    """The book's title names the taxonomy (its children are the subjects), so the path starts below it."""
    text = "My book:\n" + "".join(f"  {line}\n" for line in SUBJECTS.format(weight=-2).splitlines())
    assert _load(tmp_path, text).startswith(":7: topic 'Physics > Optics': weight must be")


def test_native_nodes_name_their_line(tmp_path: Path):
    text = "topics:\n  - name: Physics\n    children:\n      - name: Optics\n        quota: -3\n"
    # one subject: it names the taxonomy, and its topics are the subjects
    assert _load(tmp_path, text) == ":4: topic 'Optics': quota must be an integer >= 0, not -3"
    text = "topics:\n  - name: Physics\n    children:\n      - name: Optics\n        weigth: 3\n"
    assert _load(tmp_path, text).startswith(":4: topic 'Physics > Optics': unknown key 'weigth'")
