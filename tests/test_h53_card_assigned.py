"""A card template's own names (set, loop, macro, import) are not typos where a build leaves them unset."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_dataset import sample_documents

from textbookgen.card import render_card
from textbookgen.dataset import write_dataset
from textbookgen.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ds")
    write_dataset(sample_documents(20), out)
    return out


def _render(dataset: Path, folder: Path, body: str, manifest: dict) -> str:
    template = folder / "card.md"
    template.write_text('{% extends "_base.md" %}\n{% block summary %}\n' + body + "\n{% endblock %}\n")
    return render_card(dataset, template, load_recipe(REPO / "recipes" / "quickstart.yaml"), manifest).read_text()


def test_a_name_the_template_sets_in_one_branch_only_renders_empty_where_unset(dataset, tmp_path):
    """`{% set kept %}` inside `{% if manifest.curation %}`: a build without curation raised "'kept' is undefined"
    (it rendered empty before the card templates became strict), as did a loop variable used after its loop."""
    body = ("{% if manifest.curation %}{% set kept = 1 %}{% endif %}"
            "{% for doc in manifest.curation or [] %}{% endfor %}[{{ kept }}|{{ doc }}]")
    assert "[|]" in _render(dataset, tmp_path, body, {})
    assert "[1|]" in _render(dataset, tmp_path, body, {"curation": {"dedup": {"in": 3, "kept": 2}}})


def test_a_typo_of_a_name_the_template_sets_is_still_an_error(dataset, tmp_path):
    with pytest.raises(ValueError) as e:
        _render(dataset, tmp_path, "{% set kept = 1 %}{{ kpet }}", {})
    assert str(e.value) == f"card template {tmp_path / 'card.md'}:3: 'kpet' is undefined"
