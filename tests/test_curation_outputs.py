"""What the curation commands write: compressed JSON lines as they read them, and text fields as given (a
number or a list in the text field is an error naming the file, row and column, not a string written out)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from textbookgen.cli import app
from textbookgen.curation.corpus_io import GZIP_MAGIC, ZSTD_MAGIC, read_corpus

runner = CliRunner()


@pytest.fixture(scope="module")
def pages(shared_data: Path) -> list[str]:
    docs = [json.loads(x)["text"] for x in gzip.open(shared_data / "c4_en_sample_1k" / "c4_sample.jsonl.gz", "rt")]
    return [d for d in docs if 150 <= len(d.split()) <= 400][:12]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("command", [["dedup", "--workers", "1"], ["filter"]], ids=["streamed", "read whole"])
@pytest.mark.parametrize("suffix,magic", [(".jsonl.gz", GZIP_MAGIC), (".jsonl.zst", ZSTD_MAGIC)])
def test_compressed_jsonl_outputs_are_written(tmp_path, pages, command, suffix, magic):
    """`-o out.jsonl.gz` was refused ("write .parquet or .jsonl") though every command reads it."""
    src = write_jsonl(tmp_path / "in.jsonl", [{"id": f"d{i}", "text": t} for i, t in enumerate(pages)])
    plain, packed = tmp_path / "plain.jsonl", tmp_path / f"packed{suffix}"
    for out in (plain, packed):
        result = runner.invoke(app, [*command, str(src), "-o", str(out)])
        assert result.exit_code == 0, result.output
    assert packed.read_bytes().startswith(magic)
    assert read_corpus(packed).equals(read_corpus(plain)) and read_corpus(plain).height > 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == sorted(
        ["in.jsonl", "plain.jsonl", "plain.jsonl.stats.json", packed.name, f"{packed.name}.stats.json"])


def test_other_outputs_are_still_refused(tmp_path, pages):
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": pages[0]}])
    result = runner.invoke(app, ["filter", str(src), "-o", str(tmp_path / "out.csv.gz")])
    assert result.exit_code == 1 and "write .parquet or .jsonl" in result.output


@pytest.mark.parametrize("command", [["dedup", "--workers", "1"], ["filter"]], ids=["streamed", "read whole"])
@pytest.mark.parametrize("value,kind", [(123, "a number"), (["a", "list"], "a list"), ({"en": "x"}, "an object")])
def test_a_text_that_is_no_string_names_its_row(tmp_path, monkeypatch, pages, command, value, kind):
    """polars types a field of strings and numbers as text: 123 came out as "123" and a list as its JSON.
    The row is counted across chunks (here 4 rows each) and past blank lines."""
    from textbookgen.curation import corpus_io

    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", 4)
    rows = [json.dumps({"text": t}) for t in pages[:9]]
    rows.insert(2, "")
    rows.append(json.dumps({"text": value}))
    (src := tmp_path / "in.jsonl").write_text("\n".join(rows) + "\n")
    result = runner.invoke(app, [*command, str(src), "-o", str(tmp_path / "out.jsonl")])
    assert result.exit_code == 1
    assert f"in.jsonl: row 10: 'text' is {kind}" in result.output and "--text-column" in result.output
    assert not (tmp_path / "out.jsonl").exists()


def test_a_text_that_is_no_string_in_a_file_polars_cannot_type(tmp_path, pages):
    """A file polars' reader refuses (a bool among ints elsewhere) is parsed in Python: its texts are checked too."""
    src = write_jsonl(tmp_path / "in.jsonl", [{"n": 1, "text": pages[0]}, {"n": True, "text": 7}])
    result = runner.invoke(app, ["filter", str(src), "-o", str(tmp_path / "out.jsonl")])
    assert result.exit_code == 1 and "in.jsonl: row 2: 'text' is a number (7)" in result.output


def test_a_parquet_text_column_of_numbers_is_refused(tmp_path):
    src = tmp_path / "in.parquet"
    pl.DataFrame({"id": ["a", "b", "c"], "text": [None, 5, 7]}).write_parquet(src)
    result = runner.invoke(app, ["filter", str(src), "-o", str(tmp_path / "out.jsonl")])
    assert result.exit_code == 1
    assert "in.parquet: column 'text' holds Int64 values, not text (row 2: 5)" in result.output


def test_strings_and_nulls_still_read(tmp_path, pages):
    """Only non-string texts are refused: a null text keeps its own error, and categorical parquet text reads."""
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": pages[0]}, {"text": None}])
    result = runner.invoke(app, ["filter", str(src), "-o", str(tmp_path / "out.jsonl")])
    assert result.exit_code == 1 and "1 row(s) with a null 'text'" in result.output
    cat = tmp_path / "cat.parquet"
    pl.DataFrame({"text": pages[:2]}).with_columns(pl.col("text").cast(pl.Categorical)).write_parquet(cat)
    assert read_corpus(cat)["text"].to_list() == pages[:2]
