"""What users get wrong or set elsewhere, on the curation commands: columns named in a --config file, null texts."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from textbookgen.cli import app

runner = CliRunner()
PAGES = [f"Page {i} tells how the river town of number {i} built its {i}th bridge over the years " * 4
         for i in range(6)]


@pytest.mark.parametrize("command", [["dedup", "--workers", "1"], ["filter", "--min-words", "5"]])
def test_a_config_files_columns_are_used_when_no_option_names_them(tmp_path: Path, command: list[str]):
    """`text_column` and `id_column` of the --config file were overridden by the options' defaults: a `body`
    corpus failed ("no 'text' field"), and an `id_column: doc_id` one got made-up `<file>:<row>` ids added."""
    src = tmp_path / "c.parquet"
    pl.DataFrame({"doc_id": [f"d{i}" for i in range(6)], "body": PAGES}).write_parquet(src)
    (tmp_path / "cur.yaml").write_text("curation:\n  text_column: body\n  id_column: doc_id\n")
    out = tmp_path / "out.parquet"
    res = runner.invoke(app, [command[0], str(src), "-o", str(out), "--config", str(tmp_path / "cur.yaml"),
                              *command[1:]])
    assert res.exit_code == 0, res.output
    assert pl.read_parquet(out).columns == ["doc_id", "body"]


def test_an_option_still_wins_over_the_config_file(tmp_path: Path):
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"id": i, "content": t}) + "\n" for i, t in enumerate(PAGES)))
    (tmp_path / "cur.yaml").write_text("text_column: body\n")
    res = runner.invoke(app, ["dedup", str(src), "-o", str(tmp_path / "o.jsonl"), "--config",
                              str(tmp_path / "cur.yaml"), "--text-column", "content", "--workers", "1"])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("command", [["dedup"], ["filter"]], ids=["streamed", "read whole"])
def test_a_null_text_is_named_by_its_row_and_what_to_do(tmp_path: Path, monkeypatch, command: list[str]):
    """It said only "f.jsonl: 2 row(s) with a null 'text'": which rows, and what then, the user had to find out."""
    from textbookgen.curation import corpus_io

    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", 4)
    src = tmp_path / "f.jsonl"
    src.write_text("".join(json.dumps({"id": f"d{i}", "text": None if i in (6, 9) else PAGES[i % 6]}) + "\n"
                           for i in range(10)))
    res = runner.invoke(app, [*command, str(src), "-o", str(tmp_path / "out.parquet")])
    assert res.exit_code == 1
    assert "f.jsonl: 2 row(s) with a null 'text' (the first: row 7); drop those rows or give them a text" in res.output


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize(("command", "kept_in"), [("dedup", "out.jsonl.work"), ("dedup --index idx", "idx"),
                                                   ("filter", None)])
def test_ctrl_c_says_what_was_kept_and_leaves_an_earlier_output(tmp_path: Path, monkeypatch, command: str,
                                                                kept_in: str | None):
    """Ctrl-C exited 130 with no word: whether the output, the input or the signatures survived, the user had
    to guess; and `filter`'s output was written in place, so a Ctrl-C while writing cut an earlier one short."""
    src, out = tmp_path / "c.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(PAGES)))
    name, *options = command.split()
    if name == "dedup":
        monkeypatch.setattr("textbookgen.curation.commands.CorpusWriter.write", _interrupt)
        options = [*(o if o != "idx" else str(tmp_path / o) for o in options), "--workers", "1"]
    else:
        out.write_text("an earlier run's output\n")
        monkeypatch.setattr(pl.DataFrame, "write_ndjson", lambda self, f: f.write(b"{") and _interrupt())
        options = ["--min-words", "5"]
    res = runner.invoke(app, [name, str(src), "-o", str(out), *options])
    assert res.exit_code == 130
    assert f"interrupted: {out} was not written (the input is untouched)" in res.output
    assert "rerun the same command" in res.output
    if kept_in:
        assert f"the MinHash signatures made so far are kept in {tmp_path / kept_in};" in res.output
    else:
        assert "signatures" not in res.output and out.read_text() == "an earlier run's output\n"
    assert src.read_text().count("\n") == 6


def test_duplicate_ids_across_shards_are_named_with_what_to_do(tmp_path: Path):
    """Shards numbered from 0 each: it said only "minhash_dedup: column 'id' has duplicate ids"."""
    (tmp_path / "in").mkdir()
    for k in range(2):
        pl.DataFrame({"id": [0, 1, 2], "text": PAGES[3 * k : 3 * k + 3]}).write_parquet(tmp_path / "in" / f"p{k}.parquet")
    res = runner.invoke(app, ["dedup", str(tmp_path / "in"), "-o", str(tmp_path / "o.parquet"), "--workers", "1"])
    assert res.exit_code == 1
    assert ("3 ids of column 'id' are given to more than one document (the first: '0', at rows 1 and 4); ids must be "
            "unique") in res.output and "--id-column" in res.output
