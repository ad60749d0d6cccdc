"""Card audit (h14): the "How it was made" text of a build with web samples and a grown taxonomy says what the build
did. The phi-1.5 card claimed "coverage is even by construction" beside a plot of subjects drawn 17 and 4 times (the
built-in subjects' weights differ); the web samples row printed the loader's raw keys ("documents: 1000; dropped:
104; ...; language_dropped: 0"), web documents read beside the dataset's documents under one word."""

from __future__ import annotations

from test_card import MANIFEST, RECIPE
from test_dataset import sample_documents

from textbookgen.card import BASE_TEMPLATE, CARDS_DIR, render_card
from textbookgen.dataset import write_dataset

WEB = {"documents": 1000, "dropped": 104, "extracts": 896, "language_dropped": 3, "hash": "59920b624c974334",
       "source": "c4_sample.jsonl.gz"}


def _card(tmp_path, template, recipe=RECIPE, manifest=MANIFEST) -> str:
    write_dataset(sample_documents(60), tmp_path)
    return render_card(tmp_path, template, recipe, manifest).read_text()


def test_phi15_card_states_the_weights_and_cap_it_sampled_by(tmp_path):
    recipe = {**RECIPE, "taxonomy": {"source": "builtin:commonsense", "weighting": "hierarchical", "max_per_topic": 12}}
    text = _card(tmp_path, CARDS_DIR / "phi15-textbooks.md", recipe)
    assert "even by construction" not in text
    assert ("Topics are drawn by the taxonomy's weights: each subject in proportion to its weight, whatever its number "
            "of topics,\nand no topic drawn more than 12 times (see the topic coverage plot).") in text


def test_phi15_card_of_a_flat_weighting_without_a_cap(tmp_path):
    recipe = {**RECIPE, "taxonomy": {"source": "topics.yaml", "weighting": "flat", "max_per_topic": None}}
    text = _card(tmp_path / "flat", CARDS_DIR / "phi15-textbooks.md", recipe)
    assert ("Topics are drawn by the taxonomy's weights: each topic in proportion to its own\nweight "
            "(see the topic coverage plot).") in text


def test_web_samples_row_tells_extracts_from_web_documents(tmp_path):
    text = _card(tmp_path, BASE_TEMPLATE, manifest={**MANIFEST, "web_samples": WEB})
    row = next(line for line in text.splitlines() if line.startswith("| web samples |"))
    assert row == ("| web samples | 896 extracts from 1,000 web documents read (104 dropped as too short or too long, "
                   "boilerplate or duplicates, or, 3 of them, not in the recipe's language); "
                   "source: c4_sample.jsonl.gz; hash: 59920b624c974334 |")


def test_web_samples_row_without_drops_and_of_a_manifest_without_counts(tmp_path):
    clean = {**WEB, "documents": 30, "dropped": 0, "extracts": 30, "language_dropped": 0}
    text = _card(tmp_path / "a", BASE_TEMPLATE, manifest={**MANIFEST, "web_samples": clean})
    assert "| web samples | 30 extracts from 30 web documents read; source: c4_sample.jsonl.gz; hash: " in text
    text = _card(tmp_path / "b", BASE_TEMPLATE, manifest={**MANIFEST, "web_samples": {"source": "c4.jsonl"}})
    assert "| web samples | source: c4.jsonl |" in text


def test_taxonomy_row_says_what_its_counts_are(tmp_path):
    grown = {"source": "builtin:commonsense", "topics": 334, "leaves": 300, "depth": 3, "hash": "2993424db05fc469",
             "grown_to": 300}
    text = _card(tmp_path / "a", BASE_TEMPLATE, manifest={**MANIFEST, "taxonomy": grown})
    assert ("| taxonomy | 300 topics to draw from (the leaves of 334 nodes, 3 levels deep), grown by the model toward "
            "300 leaves; source: builtin:commonsense; hash: 2993424db05fc469 |") in text
    text = _card(tmp_path / "b", BASE_TEMPLATE, manifest=MANIFEST)  # {"topics": 12, "leaves": 12, "depth": 2}
    assert "| taxonomy | 12 topics to draw from (the leaves of 12 nodes, 2 levels deep) |" in text


def test_phi1_card_names_the_phi1_recipe_it_follows(tmp_path):
    """The phi-1 card's summary says it follows phi-1; its method said "This is the phi-1.5 recipe"."""
    text = _card(tmp_path, CARDS_DIR / "phi1-code-textbooks.md")
    method = text[text.index("## How it was made"):text.index("| generator |")]
    assert 'This is the phi-1 recipe ("Textbooks Are All You Need", Gunasekar et al.\n2023)' in method
    assert "phi-1.5" not in method and "an extract of web text" in method  # sample_documents seeds some


def test_tiny_stories_card_does_not_claim_an_age_its_prompts_did_not_ask_for(tmp_path):
    """The built-in `young_children` audience asks for about 5- to 8-year-olds; the card said every story was for
    a three- to four-year-old reader."""
    text = _card(tmp_path, CARDS_DIR / "tiny-stories.md", recipe={**RECIPE, "description": ""})
    method = text[text.index("## How it was made"):text.index("| generator |")]
    assert "for the reader of the `audience`\ncolumn (the built-in `young_children` asks for about 5- to 8-year-olds)" in method
    assert "three- to four-year-old reader" not in text and "vocabulary of a three- to four-year-old child" not in text
