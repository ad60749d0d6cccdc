"""Dataset cards: metadata the Hub client validates, configs that resolve, a body with the build's numbers, plots."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml
from huggingface_hub import DatasetCard
from test_dataset import sample_documents

from textbookgen.card import (
    CARDS_DIR,
    language_code,
    load_card_template,
    redact,
    render_card,
    size_category,
    validate_card_text,
)
from textbookgen.dataset import write_dataset

RECIPE = {
    "name": "quickstart",
    "version": 1,
    "description": "A tiny build for the tests.",
    "license": "apache-2.0",
    "provider": "openai",
    "model": "gpt-4o-mini",
    "seed": 1234,
    "sampling": {"temperature": 0.8, "max_tokens": 1024},
    "hub": {"repo_id": "tester/quickstart", "private": False},
    "provider_options": {"api_key": "sk-test-abcdefghijklmnopqrstuvwx"},
}
MANIFEST = {
    "recipe_hash": "3f2a9c",
    "seed": 1234,
    "taxonomy": {"topics": 12, "leaves": 12, "depth": 2},
    "curation": {
        "exact_dedup": {"in": 140, "kept": 132, "dropped": {"exact_duplicate": 8}},
        "near_dedup": {"in": 132, "kept": 126, "dropped": {"near_duplicate": 6}},
        "decontaminate": {"in": 126, "kept": 123, "dropped": {"arc_easy": 2, "gsm8k": 1}, "ngram": 13,
                          "benchmark_items": {"arc_easy": 2376}},
        "filter": {"in": 123, "kept": 120, "dropped": {"too_short": 2, "refusal_phrase": 1}},
    },
    "tokens": {"input": 51234, "output": 98765},
    "cost_usd": 0.0421,
    "counts": {"requests": 140, "ok": 138, "failed": 2, "documents": 138, "curated": 120},
    "timings": {"generate": 42.5, "curate": 1.2},
    "journal_summary": {"ok": 138, "failed": 2, "authorization": "Bearer hf_abcdefghijklmnopqrstuvwxyz0123"},
}


@pytest.fixture()
def built(tmp_path):
    write_dataset(sample_documents(120), tmp_path)
    write_dataset(sample_documents(30, seed=9), tmp_path, split="test")
    readme = render_card(tmp_path, CARDS_DIR / "quickstart.md", RECIPE, MANIFEST)
    return tmp_path, readme


def test_card_metadata_validates_and_configs_resolve(built):
    folder, readme = built
    card = DatasetCard.load(readme, ignore_metadata_errors=False)
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0"
    assert data["language"] == ["en"] and data["task_categories"] == ["text-generation"]
    assert data["size_categories"] == ["n<1K"]
    assert {"synthetic", "textbookgen"} <= set(data["tags"])
    splits = data["dataset_info"]["splits"]  # num_bytes as `datasets` records them: tests/test_r2d_card_num_bytes.py
    assert [(s["name"], s["num_examples"]) for s in splits] == [("train", 120), ("test", 30)]
    assert data["dataset_info"]["dataset_size"] == sum(s["num_bytes"] for s in splits) > 0
    metadata = pytest.importorskip("datasets.utils.metadata")
    configs = metadata.MetadataConfigs.from_dataset_card_data(card.data)
    patterns = {e["split"]: e["path"] for e in configs["default"]["data_files"]}
    assert patterns == {"train": "data/train-*", "test": "data/test-*"}
    for split, pattern in patterns.items():  # each pattern matches exactly that split's shards
        assert [p.name for p in folder.glob(pattern)] == [f"{split}-00000-of-00001.parquet"]


def test_card_body_reports_build(built):
    folder, readme = built
    text = readme.read_text()
    assert "120" in text and "| `test` | 30 |" in text
    assert "| decontaminate | 126 | 123 | 3 | arc_easy: 2, gsm8k: 1 | ngram=13 |" in text
    assert "| arc_easy | 2,376 | 2 |" in text and "| gsm8k | – | 1 |" in text  # per benchmark
    assert "| filter | 123 | 120 | 3 | too_short: 2, refusal_phrase: 1 |" in text
    assert "$0.0421" in text and "98,765" in text and "| seed | 1234 |" in text
    assert "| requests ok | 138 |" in text and "| requests failed | 2 |" in text
    assert "| documents generated | 138 |" in text and "| documents after curation | 120 |" in text
    assert "temperature=0.8" in text and "`textbook_section`" in text and "sha256:" in text
    for name in ("topic_coverage", "length_histogram", "quality_histogram"):
        png = folder / "assets" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"](assets/{name}.png)" in text
    assert yaml.safe_load((folder / "recipe.yaml").read_text())["seed"] == 1234
    assert json.loads((folder / "manifest.json").read_text())["cost_usd"] == 0.0421
    assert json.loads((folder / "journal_summary.json").read_text())["ok"] == 138


def test_secrets_never_published(built):
    folder, _ = built
    for path in folder.rglob("*"):
        if path.is_file() and path.suffix in (".md", ".yaml", ".json"):
            text = path.read_text()
            assert "sk-test-abcdef" not in text and "hf_abcdefghij" not in text, path
    assert redact({"token": "x", "max_tokens": 5, "note": "key sk-abcdefghijklmnopqrstu"}) == {
        "token": "<redacted>", "max_tokens": 5, "note": "key <redacted>"}  # fmt: skip


@pytest.mark.parametrize("template", ["_base", "quickstart", "phi15-textbooks", "phi1-code-textbooks", "tiny-stories"])
def test_every_template_renders_valid_card(tmp_path, template):
    write_dataset(sample_documents(20), tmp_path)
    readme = render_card(tmp_path, CARDS_DIR / f"{template}.md", {"name": template, "license": "cc-by-4.0"}, {})
    card = DatasetCard.load(readme, ignore_metadata_errors=False)
    assert card.data.license == "cc-by-4.0"
    assert "No curation stage ran" in card.text and "## Limitations" in card.text


def test_rerender_is_stable_and_drops_stale_plots(tmp_path):
    docs = sample_documents(40)
    write_dataset(docs, tmp_path)
    first = render_card(tmp_path, CARDS_DIR / "quickstart.md", RECIPE, MANIFEST).read_bytes()
    pngs = {p.name: p.read_bytes() for p in (tmp_path / "assets").glob("*.png")}
    assert render_card(tmp_path, CARDS_DIR / "quickstart.md", RECIPE, MANIFEST).read_bytes() == first
    assert {p.name: p.read_bytes() for p in (tmp_path / "assets").glob("*.png")} == pngs  # no-op re-push
    write_dataset(docs.with_columns(quality_score=None), tmp_path)  # unscored: no quality plot
    text = render_card(tmp_path, CARDS_DIR / "quickstart.md", RECIPE, {}).read_text()
    assert not (tmp_path / "assets" / "quality_histogram.png").exists() and "quality_histogram" not in text


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no data/"):
        render_card(tmp_path, CARDS_DIR / "quickstart.md", RECIPE, {})
    write_dataset(sample_documents(5), tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.md"):
        render_card(tmp_path, tmp_path / "nope.md", RECIPE, {})
    with pytest.raises(ValueError, match="configs"):
        validate_card_text("---\nlicense: mit\n---\nbody\n")
    with pytest.raises(ValueError, match="bad data_files"):
        validate_card_text("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: a-b\n    path: x\n---\n")
    bad = Path(tmp_path / "bad.md")
    bad.write_text("---\nlicense: [unclosed\n---\n")
    with pytest.raises(ValueError, match="does not validate"):
        render_card(tmp_path, bad, RECIPE, {})


def test_features_follow_the_arrow_schema_or_name_the_column_they_cannot_declare(tmp_path):
    import pyarrow as pa

    from textbookgen.card import features

    schema = pa.schema([("n", pa.int16()), ("tags", pa.large_list(pa.large_string())),
                        ("spans", pa.list_(pa.struct([("start", pa.int64())])))])  # fmt: skip
    assert features(schema) == [
        {"name": "n", "dtype": "int16"},
        {"name": "tags", "list": "string"},
        {"name": "spans", "list": [{"name": "start", "dtype": "int64"}]},
    ]
    with pytest.raises(ValueError, match="column 'm': Arrow type map<string, int64>"):
        features(pa.schema([("m", pa.map_(pa.string(), pa.int64()))]))
    docs = sample_documents(3).with_columns(tags=pl.Series([["a"], [], ["b"]]))
    write_dataset(docs, tmp_path, keep_extra=True)
    assert "| `tags` | list<string> |" in render_card(tmp_path, CARDS_DIR / "quickstart.md", RECIPE, {}).read_text()


def test_a_card_template_that_is_not_there_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"^card template not found: {tmp_path / 'nope.md'}$"):
        load_card_template(tmp_path / "nope.md")


def test_size_categories():
    assert [size_category(n) for n in (0, 999, 1000, 54_321, 2_000_000, 10**13)] == [
        "n<1K", "n<1K", "1K<n<10K", "10K<n<100K", "1M<n<10M", "n>1T"]  # fmt: skip


def test_language_names_become_iso_codes(tmp_path):
    assert [language_code(x) for x in ("English", "french", "en", "pt-BR")] == ["en", "fr", "en", "pt-BR"]
    with pytest.raises(ValueError, match="Klingonese"):
        language_code("Klingonese")
    write_dataset(sample_documents(5), tmp_path)
    readme = render_card(tmp_path, CARDS_DIR / "quickstart.md", {**RECIPE, "language": "German"}, {})
    assert DatasetCard.load(readme).data.language == ["de"]


def test_empty_or_untagged_tables_still_render(tmp_path):
    """A build whose curation dropped everything, or documents without topics, still gets a valid card."""
    import polars as pl

    from textbookgen.dataset import SCHEMA

    (tmp_path / "empty" / "data").mkdir(parents=True)  # write_dataset refuses an empty table; push refuses this
    pl.DataFrame(schema=SCHEMA).write_parquet(tmp_path / "empty" / "data" / "train-00000-of-00001.parquet")
    card = DatasetCard.load(render_card(tmp_path / "empty", CARDS_DIR / "quickstart.md", RECIPE, {}))
    assert card.data.to_dict()["dataset_info"]["splits"][0]["num_examples"] == 0
    assert not list((tmp_path / "empty" / "assets").glob("*.png"))
    assert "This build kept no documents" in card.text
    write_dataset(sample_documents(10).with_columns(topic_path=None), tmp_path / "bare")
    render_card(tmp_path / "bare", CARDS_DIR / "tiny-stories.md", RECIPE, {})
    assert [p.name for p in (tmp_path / "bare" / "assets").glob("*.png")] != []
    assert not (tmp_path / "bare" / "assets" / "topic_coverage.png").exists()


def test_card_tables_order_ties_by_name_whatever_the_row_order():
    """Equal counts used to come out in hash order, so rebuilding the same dataset changed its card."""
    from textbookgen.card import data_stats

    rows = [{"template": t, "template_hash": f"h{t}", "audience": a} for t, a in
            [("qa", "kids"), ("exercises", "adults"), ("qa", "adults"), ("exercises", "kids"), ("story", "kids")]]
    base = pl.DataFrame(rows).with_columns(
        words=pl.lit(10), chars=pl.lit(50), input_tokens=pl.lit(1), output_tokens=pl.lit(2),
        topic_path=pl.lit("A > b"), quality_score=pl.lit(None, dtype=pl.Float64), seed_extract_id=pl.lit(None, pl.String),
        finish_reason=pl.lit("stop"), model=pl.lit("m"), style=pl.lit(None, pl.String), format=pl.lit(None, pl.String))
    for seed in range(5):
        stats = data_stats(base.sample(fraction=1.0, shuffle=True, seed=seed))
        assert [t["name"] for t in stats["templates"]] == ["exercises", "qa", "story"]
        assert [a["name"] for a in stats["audiences"]] == ["kids", "adults"]


def test_splits_with_different_columns_are_refused_naming_the_shard(tmp_path):
    """The card declares one schema for all splits; a split with other columns would not load as described."""
    write_dataset(sample_documents(10), tmp_path)
    write_dataset(sample_documents(5, seed=3).with_columns(pl.lit(1).alias("extra")), tmp_path, split="test",
                  keep_extra=True)  # fmt: skip
    with pytest.raises(ValueError, match=r"data/test-00000-of-00001.parquet has columns \['extra: int32'\] and lacks"):
        render_card(tmp_path, CARDS_DIR / "quickstart.md", RECIPE, MANIFEST)


def test_card_claims_only_what_the_build_did(tmp_path):
    """No decontamination or taxonomy growth is claimed for a build whose manifest has none."""
    write_dataset(sample_documents(20), tmp_path)
    text = render_card(tmp_path, CARDS_DIR / "phi15-textbooks.md", RECIPE, {"taxonomy": {"source": "builtin"}}).read_text()
    assert "No decontamination ran" in text and "Decontamination removes" not in text
    assert "taxonomy was grown" not in text and "open generator" not in text
    grown = {**MANIFEST, "taxonomy": {"source": "builtin", "grown_to": 500}}
    text = render_card(tmp_path, CARDS_DIR / "phi15-textbooks.md", RECIPE, grown).read_text()
    assert "taxonomy was grown" in text and "Decontamination removes" in text


def test_a_template_whose_parent_is_missing_or_broken_fails_when_loaded(tmp_path):
    """Jinja looks up an `{% extends %}` parent only at render time, after a build's paid generation."""
    (tmp_path / "mine.md").write_text('{% extends "gone.md" %}\n{% block body %}x{% endblock %}\n')
    with pytest.raises(FileNotFoundError, match=r"mine\.md: uses 'gone\.md', which is not in .*datasets_cards"):
        load_card_template(tmp_path / "mine.md")
    (tmp_path / "gone.md").write_text('{% include "part.md" %}{% block body %}{% endblock %}\n')
    (tmp_path / "part.md").write_text("{% if %}\n")
    with pytest.raises(ValueError, match=r"part\.md:1: "):
        load_card_template(tmp_path / "mine.md")
    (tmp_path / "part.md").write_text("fine\n")
    assert load_card_template(tmp_path / "mine.md").render() == "fine\nx"


def test_card_lists_counts_and_stage_times_in_pipeline_order(tmp_path):
    """A manifest read back from JSON has sorted keys; the card still reads requests -> ok -> failed and
    taxonomy -> prompts -> generate -> curate, not alphabetically ("requests" after "requests ok")."""
    write_dataset(sample_documents(10), tmp_path)
    manifest = {**MANIFEST, "counts": dict(sorted({**MANIFEST["counts"], "skipped_budget": 0}.items())),
                "timings": dict(sorted({"taxonomy": 0.1, "prompts": 0.4, "generate": 3.7, "curate": 0.6,
                                        "dataset": 0.2}.items()))}
    text = render_card(tmp_path, CARDS_DIR / "quickstart.md", RECIPE, manifest).read_text()
    rows = ["| requests | 140 |", "| requests ok | 138 |", "| requests failed | 2 |",
            "| requests skipped budget | 0 |", "| documents generated | 138 |", "| documents after curation | 120 |",
            "| time: taxonomy |", "| time: prompts |", "| time: generate |", "| time: curate |", "| time: dataset |"]
    at = [text.index(r) for r in rows]
    assert at == sorted(at)


def test_plots_count_in_whole_numbers_with_bins_fit_to_the_sample():
    """50 documents in 50 fixed bins drew a comb of 1s and 0s with ticks at 0.5, 1.5; a single
    documents-per-topic value got ticks 0.6 ... 1.4."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from textbookgen.card import _bins, _count_axis

    rng = np.random.default_rng(0)
    assert 3 <= _bins(rng.normal(480, 60, 50)) <= 15
    assert _bins(rng.lognormal(6, 1, 200_000)) == 60 and _bins(np.array([7.0])) == 1
    fig, (a, b) = plt.subplots(1, 2)
    a.hist([1] * 50, bins=[0.5, 1.5])
    _count_axis(a.xaxis, 1, 1)
    _count_axis(a.yaxis)
    b.hist(rng.normal(480, 60, 50), bins=8)
    _count_axis(b.yaxis)
    fig.canvas.draw()
    assert list(a.get_xticks()) == [1]
    for ticks in (a.get_yticks(), b.get_yticks()):
        assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks)
    plt.close(fig)


def test_a_corpus_card_names_missing_shards_and_a_text_column_it_cannot_use(tmp_path):
    from textbookgen.card import render_corpus_card

    with pytest.raises(FileNotFoundError, match=r"no data/\{split\}-NNNNN-of-NNNNN.parquet shards under .*write them"):
        render_corpus_card(tmp_path)
    write_dataset(pl.DataFrame({"body": ["one text", "two texts"], "n": [1, 2]}), tmp_path, as_given=True)
    with pytest.raises(ValueError, match=r"no text column 'text' in the shards \(columns: \['body', 'n'\]\); "
                                         r"pass --text-column"):
        render_corpus_card(tmp_path)
    with pytest.raises(ValueError, match=r"column 'n' holds int64, not text; pass --text-column"):
        render_corpus_card(tmp_path, "n")
    assert not (tmp_path / "README.md").exists()
    assert render_corpus_card(tmp_path, "body").is_file()


def test_plots_show_the_top_subjects_cut_long_names_and_bin_wide_topic_counts(monkeypatch, tmp_path):
    """30 subjects: the top 25 drawn and the title says so; a name past 45 characters is cut; a topic 100
    documents ahead of the others gets 60 bins, not one per count; untokenized lengths are counted in words."""
    from textbookgen import card

    figures = {}

    def keep(fig, path):
        figures[Path(path).stem] = fig
        return str(path)

    monkeypatch.setattr(card, "_save", keep)
    subjects = [f"Subject {i:02d} " + "with a very long name indeed, longer than the plot shows" * (i == 0)
                for i in range(30)]
    paths = [f"{s} > topic" for s in subjects] + [f"{subjects[0]} > big"] * 100
    df = pl.DataFrame({"topic_path": paths, "output_tokens": [0] * len(paths), "words": range(len(paths)),
                       "quality_score": [None] * len(paths)}, schema_overrides={"quality_score": pl.Float64})
    made = card.plot_all(df, tmp_path)
    assert made == {"topic_coverage": "assets/topic_coverage.png", "length_histogram": "assets/length_histogram.png"}
    left, right = figures["topic_coverage"].axes
    assert left.get_title() == "Documents per subject (top 25 of 30 subjects)"
    labels = [t.get_text() for t in left.get_yticklabels()]
    assert labels[-1] == subjects[0][:44] + "…" and len(labels) == 25
    assert len(right.patches) == 60 and right.get_title() == "31 distinct topics"
    assert figures["length_histogram"].axes[0].get_title() == f"Document length (words), {len(paths):,} documents"
