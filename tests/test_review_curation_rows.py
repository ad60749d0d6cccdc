"""Review of session 11's input rows: an error that names rows names those of the input, as the reports do,
not positions among the documents an earlier stage left."""

from __future__ import annotations

import json

import polars as pl
from typer.testing import CliRunner

from textbookgen.cli import app

runner = CliRunner()


def test_duplicate_ids_name_their_input_rows_after_exact_dedup_dropped_one(tmp_path):
    """Exact dedup drops line 2 (a copy of line 1); the two documents sharing id "c" are lines 3 and 4 of the
    file, not 2 and 3 (their places among the documents MinHash got), which are "a" and the first "c"."""
    copied = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
    rows = [{"id": "a", "text": copied}, {"id": "b", "text": copied},
            {"id": "c", "text": "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod"},
            {"id": "c", "text": "completely different words for the second document that shares the id"}]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = runner.invoke(app, ["dedup", str(src), "-o", str(tmp_path / "out.parquet"), "--workers", "1"])
    assert result.exit_code == 1
    assert "the first: 'c', at rows 3 and 4" in result.output, result.output


def test_a_list_text_column_is_named_by_its_value_on_one_line(tmp_path):
    """A column of lists showed polars' multi-line repr of a Series ("shape: (2,)"), and the error line was cut
    there: neither the value nor the way out (--text-column) was printed."""
    src = tmp_path / "in.parquet"
    pl.DataFrame({"id": ["a", "b"], "text": [None, ["first", "page"]]}).write_parquet(src)
    result = runner.invoke(app, ["filter", str(src), "-o", str(tmp_path / "out.parquet")])
    assert result.exit_code == 1
    assert "holds List(String) values, not text (row 2: ['first', 'page']); pass --text-column" in result.output, \
        result.output


def test_ctrl_c_in_a_dedup_without_minhash_names_no_signatures(tmp_path, monkeypatch):
    """`dedup --no-minhash` (or minhash.enabled: false in --config) signs nothing, yet Ctrl-C said "the MinHash
    signatures made so far are kept in out.jsonl.work"."""
    src = tmp_path / "c.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": f"page {i} of a river town's bridges " * 5}) + "\n"
                           for i in range(4)))

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("textbookgen.curation.commands.CorpusWriter.write", interrupt)
    (tmp_path / "c.yaml").write_text("minhash:\n  enabled: false\n")
    for options in (["--no-minhash"], ["--config", str(tmp_path / "c.yaml")]):
        res = runner.invoke(app, ["dedup", str(src), "-o", str(tmp_path / "out.jsonl"), *options])
        assert res.exit_code == 130 and "was not written" in res.output
        assert "signatures" not in res.output, res.output
