"""Every curation report names a dropped document by its id and its row in the input (from 0, files in read
order), the row counted before any stage dropped anything: ids repeat (shards numbered from 0 each) or are
made up, and a stage's own row numbers named other documents once an earlier stage had dropped some."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from textbookgen.cli import app
from textbookgen.curation import CurationConfig, curate, run_pipeline
from textbookgen.curation.classifier import QualityCut
from textbookgen.curation.config import ClassifierConfig
from textbookgen.curation.exact import ExactDedup

runner = CliRunner()

RIDDLE = ("A farmer has 17 sheep and all but 9 run away through a hole in the fence; how many sheep does the "
          "farmer have left standing in the field?")


@pytest.fixture(scope="module")
def pages(shared_data: Path) -> list[str]:
    """Real web pages the filters keep and that are no near copies of each other."""
    docs = [json.loads(x)["text"] for x in gzip.open(shared_data / "c4_en_sample_1k" / "c4_sample.jsonl.gz", "rt")]
    return [d for d in docs if 150 <= len(d.split()) <= 400][:6]


def test_curate_reports_input_rows_after_earlier_stages_dropped_rows(tmp_path, pages):
    """Exact dedup drops row 1, then decontamination and the filters report rows of the input (3 and 4),
    not of what reached them (2 and 3), which named other, clean documents."""
    texts = pages
    df = pl.DataFrame({"id": ["0", "1", "0", "1", "2"],
                       "text": [texts[0], texts[0], texts[1], f"Exercise: {RIDDLE} {texts[2]}", "As an AI language model,"
                                " I cannot help. " * 20]})
    cfg = CurationConfig.model_validate({
        "minhash": {"enabled": False}, "seed_copy": {"enabled": False},
        "decontamination": {"benchmarks": [str(tmp_path / "unused.jsonl")]}})
    out, _ = curate(df, cfg, workdir=tmp_path, benchmark_texts=[("riddles", "r1", [RIDDLE])])
    assert out["text"].to_list() == [texts[0], texts[1]] and out.columns == ["id", "text"]
    exact = pl.read_parquet(tmp_path / "exact_dedup" / "duplicates.parquet")
    assert exact.select("id", "row", "kept_id", "kept_row").rows() == [("1", 1, "0", 0)]
    contaminated = pl.read_parquet(tmp_path / "decontamination" / "contamination.parquet")
    assert contaminated.select("id", "row").rows() == [("1", 3)]
    assert pl.read_parquet(tmp_path / "filters" / "dropped.parquet").select("id", "row").rows() == [("2", 4)]


def test_the_quality_cut_reports_input_rows(tmp_path):
    df = pl.DataFrame({"id": ["a", "a", "b", "c"], "text": ["same", "same", "other", "third"],
                       "quality_score": [0.9, 0.9, 0.1, 0.8]})
    out, _ = run_pipeline(df, [ExactDedup(), QualityCut(ClassifierConfig(threshold=0.5))], tmp_path)
    assert out["text"].to_list() == ["same", "third"]
    report = pl.read_parquet(tmp_path / "quality_filter" / "dropped.parquet")
    assert report.rows() == [("b", 2, 0.1)] and report.columns == ["id", "row", "quality_score"]


def test_filter_command_reports_rows_when_ids_repeat(tmp_path, pages):
    """`filter`'s dropped.parquet had ids only: two shards' "0" could not be told apart."""
    src = tmp_path / "in.jsonl"
    rows = [{"id": 0, "text": pages[0]}, {"id": 0, "text": "too short"}, {"id": 1, "text": pages[1]}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = runner.invoke(app, ["filter", str(src), "-o", str(tmp_path / "out.jsonl"), "--workdir",
                                 str(tmp_path / "work")])
    assert result.exit_code == 0, result.output
    report = pl.read_parquet(tmp_path / "work" / "filters" / "dropped.parquet")
    assert report.select("id", "row", "reason").rows() == [(0, 1, "too_short")]


def test_streamed_dedup_reports_input_rows_after_exact_dedup(tmp_path: Path, pages):
    """The streamed dedup gives MinHash the rows exact dedup left: its clusters named their positions among
    those (one less than the input row after the dropped copy), and the exact report had no rows."""
    texts = pages
    near = texts[4] + " Thanks for reading."
    folder = tmp_path / "in"
    folder.mkdir()
    for name, part in (("a", [texts[0], texts[0].upper(), texts[1]]), ("b", [texts[2], texts[4], near])):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in part))
    result = runner.invoke(app, ["dedup", str(folder), "-o", str(tmp_path / "out.parquet"), "--workers", "1",
                                 "--threshold", "0.7", "--workdir", str(tmp_path / "work")])
    assert result.exit_code == 0, result.output
    exact = pl.read_parquet(tmp_path / "work" / "exact_dedup" / "duplicates.parquet")
    assert exact.select("id", "row", "kept_row").rows() == [("a:1", 1, 0)]
    clusters = pl.read_parquet(tmp_path / "work" / "minhash_dedup" / "clusters.parquet")
    assert sorted(clusters.select("id", "row").rows()) == [("b:1", 4), ("b:2", 5)]
