"""The card's stats and plots in bounded memory (h32): they come from lazy queries that collect small results and a
few numeric columns, never a table of every document's strings (several GB at phi-1.5's 20M documents), and give
the figures the eager code gave: GOLDEN was captured from that code on the datasets built here."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from textbookgen import card
from textbookgen.card import CARDS_DIR, data_stats, document_table, render_card, render_corpus_card
from textbookgen.dataset import SCHEMA, splits_of, write_dataset

RECIPE = {"name": "golden", "license": "apache-2.0", "provider": "openai", "model": "gpt-4o-mini"}
MANIFEST = {"curation": {"quality_filter": {"in": 10, "kept": 8, "threshold": 1.5, "dropped": {"low_quality": 2}}}}


def documents(n: int, seed: int, tokens: bool = True) -> pl.DataFrame:
    """Documents over 7 subjects and their topics, with nulls in every optional column, seeded and unseeded,
    scored and not; `tokens=False`: every output token count 0, so lengths are counted in words."""
    rng = random.Random(seed)
    subjects = {f"Subject {s}": [f"topic {s}{t}" for t in range(rng.randint(1, 6))] for s in "ABCDEFG"}
    topics = [(s, t) for s, ts in subjects.items() for t in ts]
    rows = []
    for i in range(n):
        subject, topic = rng.choice(topics)
        n_words = rng.randint(5, 300)
        template = rng.choice(["textbook_section", "exercises", "qa", None])
        rows.append({
            "id": f"{seed}-{i}",
            "text": " ".join(rng.choice(["alpha", "beta", "gamma\n", "delta  "]) for _ in range(n_words)),
            "topic_path": None if rng.random() < 0.1 else f"{subject} > {topic}", "topic_id": f"{subject}{topic}",
            "template": template, "template_hash": None if template is None else f"sha256:{template[:4]}",
            "audience": rng.choice(["kids", "adults", "researchers", None]), "style": None,
            "format": rng.choice(["markdown", None, "plain"]),
            "seed_extract_id": rng.choice([None, f"c4-{rng.randint(0, 30)}"]),
            "model": rng.choice(["gpt-4o-mini", "m2", None]), "finish_reason": rng.choice(["stop", "length", None]),
            "input_tokens": rng.choice([None, rng.randint(100, 400)]),
            "output_tokens": rng.choice([None, int(n_words * 1.3)]) if tokens else 0,
            "quality_score": rng.choice([None, round(rng.random() * 5, 3)]), "provenance": "{}",
        })  # fmt: skip
    return pl.DataFrame(rows, schema=SCHEMA)


def drawn(fig: Any) -> list[dict]:
    """What a figure shows: each panel's title, legend, y tick labels (the subjects' names) and bars (x, y, width,
    height)."""
    return [{"title": ax.get_title(), "yticks": [t.get_text() for t in ax.get_yticklabels()],
             "legend": [t.get_text() for t in ax.get_legend().get_texts()] if ax.get_legend() else [],
             "bars": [[round(float(v), 6) for v in (p.get_x(), p.get_y(), p.get_width(), p.get_height())] for p in ax.patches]}
            for ax in fig.axes]  # fmt: skip


@pytest.fixture
def figures(monkeypatch) -> dict:
    """{plot name: `drawn`} of every plot saved while the test runs."""
    seen: dict = {}
    real = card._save

    def keep(fig: Any, path: Path) -> str:
        seen[Path(path).stem] = drawn(fig)
        return real(fig, path)

    monkeypatch.setattr(card, "_save", keep)
    return seen


def test_card_figures_are_the_eager_codes(tmp_path, figures):
    """Stats and plotted data equal GOLDEN, for a build (shards of several row groups and a split added by hand,
    which no figure counts), a build without tokens and a user's corpus."""
    write_dataset(documents(400, 1), tmp_path / "build", max_shard_bytes=20_000)
    write_dataset(documents(50, 2), tmp_path / "build", split="test")
    write_dataset(documents(300, 3, tokens=False), tmp_path / "words")
    for name in ("build", "words"):
        figures.clear()
        render_card(tmp_path / name, CARDS_DIR / "phi15-textbooks.md", RECIPE, MANIFEST, built=["train"])
        stats = data_stats(document_table({"train": splits_of(tmp_path / name)["train"]}))
        assert stats == GOLDEN[name]["stats"]
        assert figures == GOLDEN[name]["figures"]
    corpus = documents(200, 4).select(pl.col("text").alias("body"), "quality_score", pl.col("topic_path").alias("label"))
    write_dataset(corpus, tmp_path / "corpus", as_given=True)
    figures.clear()
    render_corpus_card(tmp_path / "corpus", "body")
    assert figures == GOLDEN["corpus"]["figures"]


def test_no_collect_of_the_card_holds_every_documents_strings(tmp_path, monkeypatch):
    """The card used to collect every column but the text for every document: topic path, template, audience,
    ids... a few hundred bytes a row. Now a frame of one row per document holds at most two numeric columns,
    and a frame of strings is an aggregate, a row per topic, template, audience or model."""
    write_dataset(documents(300, 5), tmp_path, max_shard_bytes=30_000)
    collected: list[pl.DataFrame] = []
    one, every = pl.LazyFrame.collect, pl.collect_all
    monkeypatch.setattr(pl.LazyFrame, "collect", lambda lf, *a, **kw: collected.append(out := one(lf, *a, **kw)) or out)
    monkeypatch.setattr(pl, "collect_all", lambda lfs, *a, **kw: collected.extend(out := every(lfs, *a, **kw)) or out)
    render_card(tmp_path, CARDS_DIR / "phi15-textbooks.md", RECIPE, MANIFEST)
    per_document = [df.schema for df in collected if df.height >= 300]
    assert per_document and all(len(schema) <= 2 and pl.String not in schema.dtypes() for schema in per_document), \
        per_document
    assert max(df.height for df in collected if pl.String in df.schema.dtypes()) <= 40


def test_word_and_character_totals_do_not_wrap_at_2_to_the_32():
    """Word and character counts are UInt32, whose sum wrapped: two documents of 3 billion words each (or
    phi-1.5's 20M of a few hundred words) were said to hold 1.7 billion."""
    big = 3_000_000_000
    docs = documents(2, 6).drop("text").with_columns(words=pl.Series([big, big], dtype=pl.UInt32),
                                                     chars=pl.Series([big, big], dtype=pl.UInt32))
    stats = data_stats(docs)
    assert (stats["words"], stats["chars"], stats["median_words"]) == (2 * big, 2 * big, big)
    corpus = docs.select("words", "chars", "quality_score", "topic_path", "output_tokens")
    assert card.corpus_stats(corpus)["words"] == card.corpus_stats(corpus)["chars"] == 2 * big


#: Captured from the eager code (git 742ee52) on the datasets of `test_card_figures_are_the_eager_codes`.
GOLDEN: dict = {'build': {'figures': {'length_histogram': [{'bars': [[6.0, 0.0, 42.444444, 22.0], [48.444444, 0.0, 42.444444, 25.0],
                                                      [90.888889, 0.0, 42.444444, 20.0],
                                                      [133.333333, 0.0, 42.444444, 16.0],
                                                      [175.777778, 0.0, 42.444444, 22.0],
                                                      [218.222222, 0.0, 42.444444, 22.0],
                                                      [260.666667, 0.0, 42.444444, 29.0],
                                                      [303.111111, 0.0, 42.444444, 22.0],
                                                      [345.555556, 0.0, 42.444444, 24.0]],
                                             'legend': ['median 214'],
                                             'title': 'Document length (output tokens), 202 documents',
                                             'yticks': ['0', '4', '8', '12', '16', '20', '24', '28', '32']}],
                       'quality_histogram': [{'bars': [[0.014, 0.0, 0.551444, 28.0], [0.565444, 0.0, 0.551444, 14.0],
                                                       [1.116889, 0.0, 0.551444, 27.0],
                                                       [1.668333, 0.0, 0.551444, 26.0],
                                                       [2.219778, 0.0, 0.551444, 24.0],
                                                       [2.771222, 0.0, 0.551444, 22.0],
                                                       [3.322667, 0.0, 0.551444, 24.0],
                                                       [3.874111, 0.0, 0.551444, 21.0],
                                                       [4.425556, 0.0, 0.551444, 21.0]],
                                              'legend': ['median 2.42',
                                                         'quality cut 1.5 (2 documents below it dropped)'],
                                              'title': 'Quality score, 207 scored documents',
                                              'yticks': ['0', '3', '6', '9', '12', '15', '18', '21', '24', '27',
                                                         '30']}],
                       'topic_coverage': [{'bars': [[0.0, -0.4, 10.0, 0.8], [0.0, 0.6, 22.0, 0.8],
                                                    [0.0, 1.6, 31.0, 0.8], [0.0, 2.6, 60.0, 0.8],
                                                    [0.0, 3.6, 61.0, 0.8], [0.0, 4.6, 67.0, 0.8],
                                                    [0.0, 5.6, 104.0, 0.8]],
                                           'legend': [],
                                           'title': 'Documents per subject (7 subjects)',
                                           'yticks': ['Subject C', 'Subject E', 'Subject A', 'Subject D', 'Subject G',
                                                      'Subject F', 'Subject B']},
                                          {'bars': [[9.5, 0.0, 1.0, 1.0], [10.5, 0.0, 1.0, 0.0],
                                                    [11.5, 0.0, 1.0, 1.0], [12.5, 0.0, 1.0, 1.0],
                                                    [13.5, 0.0, 1.0, 3.0], [14.5, 0.0, 1.0, 0.0],
                                                    [15.5, 0.0, 1.0, 3.0], [16.5, 0.0, 1.0, 3.0],
                                                    [17.5, 0.0, 1.0, 0.0], [18.5, 0.0, 1.0, 2.0],
                                                    [19.5, 0.0, 1.0, 1.0], [20.5, 0.0, 1.0, 0.0],
                                                    [21.5, 0.0, 1.0, 2.0], [22.5, 0.0, 1.0, 0.0],
                                                    [23.5, 0.0, 1.0, 1.0], [24.5, 0.0, 1.0, 1.0],
                                                    [25.5, 0.0, 1.0, 0.0], [26.5, 0.0, 1.0, 0.0],
                                                    [27.5, 0.0, 1.0, 1.0]],
                                           'legend': [],
                                           'title': '20 distinct topics',
                                           'yticks': ['0', '1', '2', '3', '4']}]},
           'stats': {'audiences': [{'n': 111, 'name': '(none)', 'share': 0.2775},
                                   {'n': 111, 'name': 'adults', 'share': 0.2775},
                                   {'n': 91, 'name': 'researchers', 'share': 0.2275},
                                   {'n': 87, 'name': 'kids', 'share': 0.2175}],
                     'chars': 393939,
                     'distinct_extracts': 31,
                     'docs_per_topic_median': 17.0,
                     'formats': [{'n': 136, 'name': 'plain', 'share': 0.34},
                                 {'n': 135, 'name': '(none)', 'share': 0.3375},
                                 {'n': 129, 'name': 'markdown', 'share': 0.3225}],
                     'input_tokens': 49026,
                     'median_output_tokens': 214.5,
                     'median_words': 151.0,
                     'models': ['gpt-4o-mini', 'm2'],
                     'output_tokens': 40869,
                     'quality': {'mean': 2.445811594202899, 'median': 2.415, 'n': 207},
                     'rows': 400,
                     'seeded_share': 0.515,
                     'styles': [],
                     'subjects': 7,
                     'templates': [{'hash': None, 'n': 108, 'name': None},
                                   {'hash': 'sha256:qa', 'n': 104, 'name': 'qa'},
                                   {'hash': 'sha256:exer', 'n': 95, 'name': 'exercises'},
                                   {'hash': 'sha256:text', 'n': 93, 'name': 'textbook_section'}],
                     'topics': 20,
                     'truncated': 134,
                     'words': 60643}},
 'corpus': {'figures': {'length_histogram': [{'bars': [[5.0, 0.0, 32.777778, 19.0], [37.777778, 0.0, 32.777778, 19.0],
                                                       [70.555556, 0.0, 32.777778, 33.0],
                                                       [103.333333, 0.0, 32.777778, 24.0],
                                                       [136.111111, 0.0, 32.777778, 15.0],
                                                       [168.888889, 0.0, 32.777778, 23.0],
                                                       [201.666667, 0.0, 32.777778, 19.0],
                                                       [234.444444, 0.0, 32.777778, 26.0],
                                                       [267.222222, 0.0, 32.777778, 22.0]],
                                              'legend': ['median 146'],
                                              'title': 'Document length (words), 200 documents',
                                              'yticks': ['0', '4', '8', '12', '16', '20', '24', '28', '32', '36']}],
                        'quality_histogram': [{'bars': [[0.118, 0.0, 0.5875, 10.0], [0.7055, 0.0, 0.5875, 12.0],
                                                        [1.293, 0.0, 0.5875, 13.0], [1.8805, 0.0, 0.5875, 14.0],
                                                        [2.468, 0.0, 0.5875, 13.0], [3.0555, 0.0, 0.5875, 12.0],
                                                        [3.643, 0.0, 0.5875, 10.0], [4.2305, 0.0, 0.5875, 9.0]],
                                               'legend': ['median 2.37'],
                                               'title': 'Quality score, 93 scored documents',
                                               'yticks': ['0', '2', '4', '6', '8', '10', '12', '14', '16']}]}},
 'words': {'figures': {'length_histogram': [{'bars': [[5.0, 0.0, 29.5, 33.0], [34.5, 0.0, 29.5, 23.0],
                                                      [64.0, 0.0, 29.5, 29.0], [93.5, 0.0, 29.5, 33.0],
                                                      [123.0, 0.0, 29.5, 26.0], [152.5, 0.0, 29.5, 26.0],
                                                      [182.0, 0.0, 29.5, 33.0], [211.5, 0.0, 29.5, 37.0],
                                                      [241.0, 0.0, 29.5, 29.0], [270.5, 0.0, 29.5, 31.0]],
                                             'legend': ['median 163'],
                                             'title': 'Document length (words), 300 documents',
                                             'yticks': ['0', '4', '8', '12', '16', '20', '24', '28', '32', '36',
                                                        '40']}],
                       'quality_histogram': [{'bars': [[0.006, 0.0, 0.554222, 24.0], [0.560222, 0.0, 0.554222, 14.0],
                                                       [1.114444, 0.0, 0.554222, 17.0],
                                                       [1.668667, 0.0, 0.554222, 21.0],
                                                       [2.222889, 0.0, 0.554222, 16.0],
                                                       [2.777111, 0.0, 0.554222, 9.0],
                                                       [3.331333, 0.0, 0.554222, 18.0],
                                                       [3.885556, 0.0, 0.554222, 16.0],
                                                       [4.439778, 0.0, 0.554222, 17.0]],
                                              'legend': ['median 2.22',
                                                         'quality cut 1.5 (2 documents below it dropped)'],
                                              'title': 'Quality score, 152 scored documents',
                                              'yticks': ['0', '3', '6', '9', '12', '15', '18', '21', '24', '27']}],
                       'topic_coverage': [{'bars': [[0.0, -0.4, 19.0, 0.8], [0.0, 0.6, 27.0, 0.8],
                                                    [0.0, 1.6, 30.0, 0.8], [0.0, 2.6, 35.0, 0.8],
                                                    [0.0, 3.6, 54.0, 0.8], [0.0, 4.6, 56.0, 0.8],
                                                    [0.0, 5.6, 61.0, 0.8]],
                                           'legend': [],
                                           'title': 'Documents per subject (7 subjects)',
                                           'yticks': ['Subject D', 'Subject A', 'Subject E', 'Subject G', 'Subject C',
                                                      'Subject B', 'Subject F']},
                                          {'bars': [[5.5, 0.0, 1.0, 1.0], [6.5, 0.0, 1.0, 2.0], [7.5, 0.0, 1.0, 2.0],
                                                    [8.5, 0.0, 1.0, 3.0], [9.5, 0.0, 1.0, 3.0], [10.5, 0.0, 1.0, 4.0],
                                                    [11.5, 0.0, 1.0, 4.0], [12.5, 0.0, 1.0, 4.0],
                                                    [13.5, 0.0, 1.0, 1.0], [14.5, 0.0, 1.0, 1.0],
                                                    [15.5, 0.0, 1.0, 1.0]],
                                           'legend': [],
                                           'title': '26 distinct topics',
                                           'yticks': ['0', '1', '2', '3', '4', '5']}]},
           'stats': {'audiences': [{'n': 83, 'name': 'kids', 'share': 0.27666666666666667},
                                   {'n': 76, 'name': '(none)', 'share': 0.25333333333333335},
                                   {'n': 75, 'name': 'researchers', 'share': 0.25},
                                   {'n': 66, 'name': 'adults', 'share': 0.22}],
                     'chars': 303176,
                     'distinct_extracts': 30,
                     'docs_per_topic_median': 11.0,
                     'formats': [{'n': 119, 'name': 'markdown', 'share': 0.39666666666666667},
                                 {'n': 92, 'name': '(none)', 'share': 0.30666666666666664},
                                 {'n': 89, 'name': 'plain', 'share': 0.2966666666666667}],
                     'input_tokens': 35352,
                     'median_output_tokens': 0.0,
                     'median_words': 163.0,
                     'models': ['gpt-4o-mini', 'm2'],
                     'output_tokens': 0,
                     'quality': {'mean': 2.386763157894737, 'median': 2.223, 'n': 152},
                     'rows': 300,
                     'seeded_share': 0.48,
                     'styles': [],
                     'subjects': 7,
                     'templates': [{'hash': 'sha256:exer', 'n': 81, 'name': 'exercises'},
                                   {'hash': 'sha256:text', 'n': 75, 'name': 'textbook_section'},
                                   {'hash': 'sha256:qa', 'n': 73, 'name': 'qa'},
                                   {'hash': None, 'n': 71, 'name': None}],
                     'topics': 26,
                     'truncated': 119,
                     'words': 46690}}}
