"""Card audit (h14): counts read as English ("1 document", not "1 documents"), the share of seeded documents says
what it is a share of, and count axes of the plots have whole-number ticks (one document drew 0.2, 0.4 ... on the
subjects panel and 525.6 tokens on the length axis)."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
from test_card import MANIFEST, RECIPE
from test_dataset import sample_documents

from textbookgen import card
from textbookgen.card import CARDS_DIR, render_card, render_corpus_card
from textbookgen.dataset import write_dataset

#: A count of one with a plural noun after it, as the card or a plot would print it.
ONE_PLURAL = re.compile(r"(?<![\d,.])1 (?:generated |distinct |scored )?(documents|topics|subjects|extracts|words|tokens)\b")


def one_document() -> pl.DataFrame:
    """A dataset of one document, seeded with a web extract, of one topic in one subject."""
    return sample_documents(1).with_columns(pl.lit("c4-7").alias("seed_extract_id"),
                                            pl.lit("stop").alias("finish_reason"))


def test_a_one_document_card_counts_in_the_singular(tmp_path):
    write_dataset(one_document(), tmp_path)
    text = render_card(tmp_path, CARDS_DIR / "quickstart.md", RECIPE, MANIFEST).read_text()
    assert not ONE_PLURAL.findall(text), ONE_PLURAL.findall(text)
    summary = text[text.index("**1 document, "):text.index("Made with textbookgen")]
    assert "from 1 topic\nin 1 subject, 100.0% of the documents seeded with a web extract." in summary, summary
    assert "| seeded documents | 100.0% (1 distinct extract) |" in text


def test_a_card_of_many_documents_keeps_its_plurals(tmp_path):
    docs = sample_documents(120)
    write_dataset(docs, tmp_path)
    text = render_card(tmp_path, CARDS_DIR / "quickstart.md", RECIPE, MANIFEST).read_text()
    topics = docs["topic_path"].n_unique()
    subjects = docs["topic_path"].str.split(" > ").list.first().n_unique()
    assert f"**120 documents, {docs['output_tokens'].sum():,} generated tokens (" in text
    assert f"from {topics} topics\nin {subjects} subjects, " in text and "% of the documents seeded" in text


def test_a_one_document_corpus_card_counts_in_the_singular(tmp_path):
    write_dataset(pl.DataFrame({"body": ["a single short text"]}), tmp_path, as_given=True)
    text = render_corpus_card(tmp_path, "body").read_text()
    assert "**1 document (4 words)**" in text and not ONE_PLURAL.findall(text)


def _figures(monkeypatch) -> dict:
    figures: dict = {}

    def keep(fig, path):
        figures[Path(path).stem] = fig
        return str(path)

    monkeypatch.setattr(card, "_save", keep)
    return figures


def _whole(labels: list) -> bool:
    return all(float(t.get_text().replace(",", "").replace("−", "-")).is_integer() for t in labels if t.get_text())


def test_plots_of_one_document_count_in_whole_numbers_and_the_singular(monkeypatch, tmp_path):
    figures = _figures(monkeypatch)
    df = pl.DataFrame({"topic_path": ["Civics > Voting"], "output_tokens": [526], "words": [301],
                       "quality_score": [0.7]})
    card.plot_all(df, tmp_path, {"threshold": 0.5, "dropped": {"low_quality": 1}})
    left, right = figures["topic_coverage"].axes
    figures["topic_coverage"].canvas.draw()
    assert left.get_title() == "Documents per subject (1 subject)" and right.get_title() == "1 distinct topic"
    assert _whole(left.get_xticklabels()), [t.get_text() for t in left.get_xticklabels()]
    length = figures["length_histogram"].axes[0]
    figures["length_histogram"].canvas.draw()
    assert length.get_title() == "Document length (output tokens), 1 document"
    assert _whole(length.get_xticklabels()), [t.get_text() for t in length.get_xticklabels()]
    quality = figures["quality_histogram"].axes[0]
    assert quality.get_title() == "Quality score, 1 scored document"
    assert [t.get_text() for t in quality.get_legend().get_texts()] == [
        "median 0.7", "quality cut 0.5 (1 document below it dropped)"]


def test_plots_of_many_documents_keep_their_plurals_and_whole_ticks(monkeypatch, tmp_path):
    figures = _figures(monkeypatch)
    df = pl.DataFrame({"topic_path": ["A > x", "A > y", "B > z"], "output_tokens": [400, 410, 900],
                       "words": [1, 2, 3], "quality_score": [0.1, 0.5, 0.9]})
    card.plot_all(df, tmp_path)
    left, right = figures["topic_coverage"].axes
    figures["topic_coverage"].canvas.draw()
    assert left.get_title() == "Documents per subject (2 subjects)" and right.get_title() == "3 distinct topics"
    assert _whole(left.get_xticklabels())
    length = figures["length_histogram"].axes[0]
    figures["length_histogram"].canvas.draw()
    assert length.get_title() == "Document length (output tokens), 3 documents" and _whole(length.get_xticklabels())


def test_shares_are_never_rounded_to_all_or_none(tmp_path):
    """2,001 documents, all but one seeded and one of another audience: 99.95% and 0.05% printed as "100.0%" and
    "0.0%" said every document was seeded and that an audience no document has."""
    docs = sample_documents(2001).with_columns(pl.lit("c4-1").alias("seed_extract_id"), pl.lit("general").alias("audience"))
    docs = docs.with_columns(
        pl.when(pl.int_range(pl.len()) == 0).then(None).otherwise(pl.col("seed_extract_id")).alias("seed_extract_id"),
        pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("researchers")).otherwise(pl.col("audience")).alias("audience"))
    write_dataset(docs, tmp_path)
    text = render_card(tmp_path, CARDS_DIR / "quickstart.md", RECIPE, MANIFEST).read_text()
    assert "subjects, >99.9% of the documents seeded with a web extract." in text
    assert "| seeded documents | >99.9% (1 distinct extract) |" in text
    assert "- **audiences:** general >99.9% · researchers <0.1%" in text
    assert [line for line in text.splitlines() if "0.0%" in line] == ["- **formats:** markdown 100.0%"]  # all of them


def test_an_incomplete_build_of_one_unsent_request_says_was(tmp_path):
    write_dataset(sample_documents(4), tmp_path)
    manifest = {**MANIFEST, "incomplete": {"missing": 1, "requests": 5, "not_sent": 1}}
    text = render_card(tmp_path, CARDS_DIR / "quickstart.md", RECIPE, manifest).read_text()
    assert ("**This dataset is incomplete**: 1 of 5 requests gave no document, 1 was not sent as the build's budget "
            "was reached.") in text
