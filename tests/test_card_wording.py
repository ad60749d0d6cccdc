"""The card's "How it was made" table reads right for a small build without web samples: one document per
topic is "1 document", and a recipe with no web samples has no "seeded documents: 0.0%" row."""

from __future__ import annotations

import polars as pl
from test_card import MANIFEST, RECIPE
from test_dataset import sample_documents

from textbookgen.card import BASE_TEMPLATE, render_card
from textbookgen.dataset import write_dataset


def test_one_document_per_topic_and_no_web_samples(tmp_path):
    docs = sample_documents(40).unique("topic_path").with_columns(seed_extract_id=pl.lit(None, pl.String))
    write_dataset(docs, tmp_path)
    text = render_card(tmp_path, BASE_TEMPLATE, RECIPE, MANIFEST).read_text()
    assert f"| topics used | {docs.height} (median 1 document per topic) |" in text
    assert "seeded documents" not in text and "distinct extracts" not in text


def test_a_build_with_web_samples_keeps_its_seeded_row(tmp_path):
    write_dataset(sample_documents(40), tmp_path)
    text = render_card(tmp_path, BASE_TEMPLATE, RECIPE, {**MANIFEST, "web_samples": {"source": "c4.jsonl"}}).read_text()
    assert "| seeded documents | " in text and "documents per topic) |" in text
