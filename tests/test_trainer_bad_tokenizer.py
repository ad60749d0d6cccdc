"""A tokenizer path that does not exist is one line naming the option or field to fix and what to give it
(it said only `tokenizer not found: nope.json`, which option of which command left unsaid)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from trainer.cli import main


def error_line(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


@pytest.fixture()
def dataset(tmp_path):
    (tmp_path / "ds" / "data").mkdir(parents=True)
    pq.write_table(pa.table({"text": ["hello world"] * 4}), tmp_path / "ds" / "data" / "train-00000-of-00001.parquet")
    return tmp_path / "ds"


@pytest.mark.parametrize("spec", ["nope.json", "nope/", "empty"])
def test_a_missing_tokenizer_names_what_to_set(dataset, tmp_path, capsys, spec):
    (tmp_path / "empty").mkdir()  # a folder without tokenizer files
    missing = str(tmp_path / spec)
    err = error_line(["prepare", str(dataset), "--out", str(tmp_path / "tok"), "--tokenizer", missing], capsys)
    assert missing.rstrip("/") in err and "give --tokenizer (data.tokenizer in a config) a folder holding" in err
    err = error_line(["train", "-c", "tiny", "--set", f"data.tokenizer={missing}", "--set",
                      f"data.datasets.0.source={dataset}", "--set", f"run_dir={tmp_path / 'run'}"], capsys)
    assert "set data.tokenizer (in the config, or --set data.tokenizer=PATH) to a folder holding" in err
    assert not (tmp_path / "run").exists()
