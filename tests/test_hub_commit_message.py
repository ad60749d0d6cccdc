"""A push's commit message says what changed since the repo's head, as a data team reading the Hub's history
expects: rows added or removed per split, the recipe fields that changed (by name, never their values)."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub.utils import disable_progress_bars
from test_card import MANIFEST, RECIPE
from test_dataset import sample_documents

from textbookgen.card import CARDS_DIR, render_card
from textbookgen.dataset import write_dataset
from textbookgen.hub import push
from textbookgen.testing.fakehub import FakeHub

disable_progress_bars()
REPO = "tester/quickstart"


def build(folder: Path, train: int, test: int | None, recipe: dict) -> Path:
    write_dataset(sample_documents(train), folder)
    if test:
        write_dataset(sample_documents(test, seed=100), folder, split="test")
    render_card(folder, CARDS_DIR / "quickstart.md", recipe, MANIFEST)
    return folder


@pytest.fixture()
def hub():
    with FakeHub() as h:
        yield h


def test_the_commit_message_says_rows_and_recipe_fields_changed(hub, tmp_path):
    push(build(tmp_path / "a", 60, 10, RECIPE), REPO, token=hub.token, endpoint=hub.endpoint)
    edited = {**RECIPE, "seed": 99, "sampling": {**RECIPE["sampling"], "temperature": 1.0}, "notes": "secret-ish"}
    push(build(tmp_path / "b", 80, None, edited), REPO, token=hub.token, endpoint=hub.endpoint)
    titles = [c.title for c in hub.commits(REPO)]
    assert titles[1] == "textbookgen: first upload, train 60 rows, test 10 rows"
    assert titles[2] == ("textbookgen: train +20 rows (80); test removed (10 rows); "
                         "recipe: seed, sampling.temperature, notes changed")
    assert "99" not in titles[2] and "secret-ish" not in titles[2]  # field names only


def test_a_card_only_change_says_the_rows_and_recipe_are_the_same(hub, tmp_path):
    folder = build(tmp_path / "a", 30, None, RECIPE)
    push(folder, REPO, token=hub.token, endpoint=hub.endpoint)
    render_card(folder, CARDS_DIR / "_base.md", RECIPE, MANIFEST)  # another template, the same data
    push(folder, REPO, token=hub.token, endpoint=hub.endpoint)
    assert hub.commits(REPO)[-1].title == "textbookgen: same rows and recipe, card and files updated"


def test_a_message_given_is_used_as_given(hub, tmp_path):
    push(build(tmp_path / "a", 30, None, RECIPE), REPO, token=hub.token, endpoint=hub.endpoint,
         commit_message="March refresh")
    assert hub.commits(REPO)[-1].title == "March refresh"
