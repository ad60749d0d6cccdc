"""A string column holding bytes that are not UTF-8 (parquet written by a tool that does not validate) is one
line naming the file and row; it was `'utf-8' codec can't decode byte 0xff in position 4`, and nothing else."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trainer.cli import main


def unvalidated_strings(values: list[bytes]) -> pa.Array:
    """A string array over raw bytes, as writers that skip UTF-8 validation leave them."""
    raw = pa.array(values, pa.binary())
    return pa.Array.from_buffers(pa.string(), len(raw), raw.buffers())


@pytest.mark.parametrize("workers", ["1", "2"])
def test_text_that_is_not_utf8_names_its_file_and_row(tmp_path, shared_data, capsys, workers):
    data = tmp_path / "ds" / "data"
    data.mkdir(parents=True)
    good = [f"document {i}".encode() for i in range(5)]
    pq.write_table(pa.table({"text": pa.array([b.decode() for b in good])}), data / "train-00000-of-00002.parquet")
    bad = data / "train-00001-of-00002.parquet"
    pq.write_table(pa.table({"text": unvalidated_strings([*good, b"bad \xff\xfe bytes", b"ok"])}), bad,
                   row_group_size=4)
    argv = ["prepare", str(tmp_path / "ds"), "--out", str(tmp_path / "tok"), "--workers", workers,
            "--tokenizer", str(shared_data / "tokenizer_gpt2")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {bad}: row 5 (from 0): column 'text' is not valid UTF-8") and "\n" not in err, err
    assert not (tmp_path / "tok").exists()


def test_train_tokenizer_names_the_row_too(tmp_path, capsys):
    bad = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"text": unvalidated_strings([b"fine", b"\xc3\x28 broken"])}), bad)
    assert main(["train-tokenizer", str(bad), "--vocab-size", "300", "--out", str(tmp_path / "tok.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {bad}: row 1 (from 0): column 'text' is not valid UTF-8"), err


def test_rows_without_text_are_counted_aloud(tmp_path, shared_data, capsys):
    """Null or empty texts are skipped (a failed generation's row, a column mostly unfilled); the summary said
    only '2 documents', so a dataset half of whose rows held no text trained on half of it unnoticed."""
    (tmp_path / "ds" / "data").mkdir(parents=True)
    pq.write_table(pa.table({"text": ["hello world", None, "", "more text"]}),
                   tmp_path / "ds" / "data" / "train-00000-of-00001.parquet")
    assert main(["prepare", str(tmp_path / "ds"), "--out", str(tmp_path / "tok"), "--workers", "1",
                 "--tokenizer", str(shared_data / "tokenizer_gpt2")]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'tok'}: 2 documents (2 of 4 rows skipped: empty or null 'text'), " in out, out


def test_trains_start_up_lines_count_rows_without_text_too(tmp_path, shared_data):
    """`train` prepares stale data itself and prints no prepare summary: its data line says what was skipped."""
    from trainer_testlib import small_tokenizer, tiny_overrides, wiki_texts

    from trainer import distributed
    from trainer.config import load_config
    from trainer.train import Trainer

    (tmp_path / "ds" / "data").mkdir(parents=True)
    texts = wiki_texts(shared_data, 20)
    pq.write_table(pa.table({"text": [*texts, None, ""]}), tmp_path / "ds" / "data" / "train-00000-of-00001.parquet")
    tok = small_tokenizer(tmp_path / "tok.json", [tmp_path / "ds"])
    cfg = load_config(None, tiny_overrides(tmp_path / "run", tmp_path / "cache", tok, [(tmp_path / "ds", 1.0)]))
    (line,) = Trainer(cfg, distributed.setup("cpu"), False).sampler.epoch_lines(80)
    assert line.startswith("data ds: draws ") and line.endswith("; 2 of 22 rows skipped: empty or null 'text'")
