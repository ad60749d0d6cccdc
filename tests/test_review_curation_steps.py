"""Review of session 11: a step of one's own in `run_pipeline` (README: a step takes a frame and returns the
rows it kept) meets the hidden column that numbers the input's rows for the reports."""

from __future__ import annotations

import json

import polars as pl
import pytest
from typer.testing import CliRunner

from textbookgen.cli import app
from textbookgen.curation import run_pipeline
from textbookgen.curation.base import StageStats, Step
from textbookgen.curation.exact import ExactDedup


class LongOnly(Step):
    """Keeps texts of more than 3 characters, and only the columns it knows."""

    name = "long_only"

    def run(self, df: pl.DataFrame, workdir, stats: StageStats) -> pl.DataFrame:
        keep = df["text"].str.len_chars() > 3
        stats.dropped["short"] = int((~keep).sum())
        return df.filter(keep).select("id", "text")


def test_a_step_that_drops_the_row_numbers_is_named_before_the_next_step_runs(tmp_path):
    """It ran every later step, their reports naming rows by position (wrong ones), and then failed with polars'
    bare `ColumnNotFoundError: "\\0input_row" not found`, naming neither the step nor what to do."""
    df = pl.DataFrame({"id": ["a", "b", "c", "d"], "text": ["hi", "hello", "hello", "world"]})
    with pytest.raises(ValueError, match="long_only: returned its rows without the column") as err:
        run_pipeline(df, [LongOnly(), ExactDedup()], tmp_path)
    assert "keep every column" in str(err.value)
    assert not (tmp_path / "exact_dedup").exists()


def test_a_folder_of_curation_outputs_reads_back_beside_their_work_folders(tmp_path):
    """Each command writes its reports into `<output>.work` by default: a folder of outputs (shards curated one
    by one) read those as corpus files, and `dedup curated/` failed on `duplicates.parquet` (no 'text' field),
    or on a killed run's signature shards."""
    runner = CliRunner()
    (tmp_path / "curated").mkdir()
    kept = 0
    for k in range(2):
        src = tmp_path / f"shard{k}.jsonl"
        src.write_text("".join(json.dumps({"id": f"{k}-{i}", "text": f"shard {k} page {i} on bridges and rivers " * 4})
                               + "\n" for i in (0, 1, 1)))
        res = runner.invoke(app, ["dedup", str(src), "-o", str(tmp_path / "curated" / f"part{k}.jsonl"), "--workers", "1"])
        assert res.exit_code == 0, res.output
        kept += json.loads(res.stdout)["minhash_dedup"]["kept"]
    assert (tmp_path / "curated" / "part0.jsonl.work" / "exact_dedup" / "duplicates.parquet").is_file()
    res = runner.invoke(app, ["dedup", str(tmp_path / "curated"), "-o", str(tmp_path / "all.jsonl"), "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["exact_dedup"]["in"] == kept > 0
