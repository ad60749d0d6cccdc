"""A split added by hand to a build's dataset/ folder (a parquet the build did not write) was counted in the card
as the recipe's documents (its rows, tokens, topics, templates, plots). The card now describes the build's own
split in every figure and names the added split as not built by the recipe; the metadata still lists it, so it
loads with the rest and a push publishes the folder as it is."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
from huggingface_hub import DatasetCard
from test_build import prose_responder
from test_card import MANIFEST, RECIPE
from test_dataset import sample_documents

from textbookgen.build import build
from textbookgen.card import CARDS_DIR, render_card
from textbookgen.dataset import write_dataset
from textbookgen.hub import card_rows, check_card_matches_data
from textbookgen.recipe import load_recipe

ADDED = "Split `test` was added to the dataset's folder by hand, not built by the recipe"


def _body(readme: Path) -> str:
    """The card without its metadata and its table of splits (the part that describes the documents)."""
    body = readme.read_text("utf-8").split("\n---\n", 1)[1]
    return re.sub(r"## Dataset structure.*?Files:", "", body, flags=re.S)


def test_the_figures_of_the_card_are_the_built_splits_only(tmp_path):
    alone, mixed = tmp_path / "alone", tmp_path / "mixed"
    for folder in (alone, mixed):
        write_dataset(sample_documents(40), folder)
    write_dataset(sample_documents(15, seed=100), mixed, split="test")  # hand-added
    render_card(alone, CARDS_DIR / "quickstart.md", RECIPE, MANIFEST)
    readme = render_card(mixed, CARDS_DIR / "quickstart.md", RECIPE, MANIFEST, built=["train"])
    text = readme.read_text("utf-8")
    assert "**40 documents" in text and ADDED in text
    assert "| `test` (added, not built by the recipe) | 15 |" in text and "| `train` | 40 |" in text
    assert _body(readme) == _body(alone / "README.md")  # every figure, the templates and mix tables too
    assert [p.read_bytes() for p in sorted((mixed / "assets").glob("*.png"))] == \
        [p.read_bytes() for p in sorted((alone / "assets").glob("*.png"))]  # fmt: skip
    check_card_matches_data(mixed, text)  # the metadata lists both: the push's check passes, both load


def test_a_build_does_not_count_a_split_added_to_its_folder(tmp_path):
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    project = tmp_path / "project"
    project.mkdir()
    (project / "topics.txt").write_text("Physics\nChemistry\nBiology\n")
    recipe = project / "r.yaml"
    recipe.write_text("name: added\nmodel: gpt-4o-mini\nsamples: 6\ntaxonomy: {source: topics.txt}\n"
                      "mix: [{template: qa}]\ncuration: {filters: {enabled: false}}\n")
    dataset = project / "out" / "dataset"
    with Emulator(EmulatorConfig(latency_median_s=0.002, responder=prose_responder)) as emu:
        over = {"output": str(project / "out"), "provider.base_url": emu.openai_base_url}
        build(load_recipe(recipe, over), progress=False)
        built = pl.read_parquet(dataset / "data" / "train-00000-of-00001.parquet").height
        write_dataset(sample_documents(25, seed=100), dataset, split="test")  # a split of one's own, by hand
        build(load_recipe(recipe, over), progress=False)  # the card is rendered again
    text = (dataset / "README.md").read_text("utf-8")
    assert f"**{built} documents" in text and ADDED in text
    assert f"| documents | {built} |" in text
    assert card_rows(DatasetCard(text).data.to_dict()) == {"train": built, "test": 25}
