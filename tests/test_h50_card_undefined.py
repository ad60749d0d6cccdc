"""A typo in a card template is an error naming the file, line and name, not a silently empty section."""

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


def _render(dataset: Path, folder: Path, body: str, recipe=None, manifest: dict | None = None) -> str:
    template = folder / "card.md"
    template.write_text('{% extends "_base.md" %}\n{% block summary %}\n' + body + "\n{% endblock %}\n")
    recipe = load_recipe(REPO / "recipes" / "quickstart.yaml") if recipe is None else recipe
    return render_card(dataset, template, recipe, manifest or {}).read_text()


@pytest.mark.parametrize(("body", "message"), [
    ("{{ recipe.nope.x }}", "the recipe has no field 'nope' here"),
    ("{{ recipe.provider.nmae }}", "the recipe has no field 'nmae' here (did you mean 'name'?)"),
    ("{% if recipe.descripton %}x{% endif %}", "the recipe has no field 'descripton' here (did you mean 'description'?)"),
    ("{{ recipee.name }}", "'recipee' is undefined"),
])
def test_a_typo_in_a_card_template_names_the_file_the_line_and_the_name(dataset, tmp_path, body, message):
    """These rendered as empty text, and the build exited 0 with a blank section."""
    with pytest.raises(ValueError) as e:
        _render(dataset, tmp_path, body)
    assert str(e.value) == f"card template {tmp_path / 'card.md'}:3: {message}"


def test_optional_lookups_still_render_empty_or_their_default(dataset, tmp_path):
    """A manifest key some builds lack, a null section, `is defined` and `default` are not typos."""
    body = ("[{{ manifest.incomplete.missing }}|{{ recipe.system.text }}|{{ recipe.nope is defined }}|"
            "{{ recipe.nope | default('d') }}|{{ recipe.name }}]")
    assert "[||False|d|quickstart]" in _render(dataset, tmp_path, body)
    # a recipe given as a dict of some keys (the library's render_card) has no fixed fields: lenient as before
    assert "[|||" in _render(dataset, tmp_path, "[{{ recipe.nope.x }}|{{ recipe.provider.name }}||]",
                               {"name": "q"})


def test_a_name_the_template_sets_in_one_branch_only_renders_empty_where_unset(dataset, tmp_path):
    """`{% set kept %}` inside `{% if manifest.curation %}`: a build without curation raised "'kept' is undefined"
    (it rendered empty before the card templates became strict), as did a loop variable used after its loop."""
    body = ("{% if manifest.curation %}{% set kept = 1 %}{% endif %}"
            "{% for doc in manifest.curation or [] %}{% endfor %}[{{ kept }}|{{ doc }}]")
    assert "[|]" in _render(dataset, tmp_path, body)
    assert "[1|]" in _render(dataset, tmp_path, body, manifest={"curation": {"dedup": {"in": 3, "kept": 2}}})


def test_a_typo_of_a_name_the_template_sets_is_still_an_error(dataset, tmp_path):
    with pytest.raises(ValueError) as e:
        _render(dataset, tmp_path, "{% set kept = 1 %}{{ kpet }}")
    assert str(e.value) == f"card template {tmp_path / 'card.md'}:3: 'kpet' is undefined"
