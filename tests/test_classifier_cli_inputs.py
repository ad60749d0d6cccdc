"""`classifier eval` and `classifier score` on what users give them: held-out text of one class, an id column
of another name."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from textbookgen.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def dclm(shared_data: Path) -> list[dict]:
    return [json.loads(x) for x in gzip.open(shared_data / "dclm_human_quality_labels" / "majority_data.jsonl.gz", "rt")]


@pytest.fixture(scope="module")
def model(dclm: list[dict], tmp_path_factory) -> Path:
    """A small model trained on 200 of DCLM's human labels."""
    folder = tmp_path_factory.mktemp("model")
    (folder / "all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dclm[:200]))
    trained = runner.invoke(app, ["classifier", "train", "-o", str(folder / "m"), "--labelled", str(folder / "all.jsonl"),
                                  "--lr", "0.5", "--epochs", "5", "--dim", "16", "--bucket", "10000", "--folds", "1"])
    assert trained.exit_code == 0, trained.output
    return folder / "m.bin"


def _strict(constant: str) -> None:
    raise ValueError(f"not JSON: {constant}")


def test_eval_on_one_class_prints_valid_json_with_a_null_auc(dclm, model, tmp_path: Path):
    """DCLM's positives alone printed `"roc_auc": NaN`, which no JSON parser but Python's reads (jq: "Invalid
    numeric literal"), with nothing saying that AUC needs both classes."""
    (tmp_path / "pos.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dclm[200:] if r["label"] == 1))
    res = runner.invoke(app, ["classifier", "eval", str(model), "--labelled", str(tmp_path / "pos.jsonl")])
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.stdout, parse_constant=_strict)
    assert metrics["roc_auc"] is None and metrics["confusion"]["tn"] == metrics["confusion"]["fp"] == 0
    assert "every labelled text is positive" in res.stderr and "ROC AUC" in res.stderr


def test_score_reports_the_cut_by_the_id_column_given(dclm, model, tmp_path: Path):
    """With --id-column doc_id, the cut's quality_filter/dropped.parquet was not written (it looked for `id`)."""
    pl.DataFrame({"doc_id": [f"d{i}" for i in range(100)], "text": [r["text"] for r in dclm[200:300]]}
                 ).write_parquet(tmp_path / "c.parquet")
    out = tmp_path / "s.parquet"
    res = runner.invoke(app, ["classifier", "score", str(model), str(tmp_path / "c.parquet"), "-o", str(out),
                              "--id-column", "doc_id", "--keep-top-percent", "60"])
    assert res.exit_code == 0, res.output
    dropped = pl.read_parquet(tmp_path / "s.parquet.work" / "quality_filter" / "dropped.parquet")
    assert dropped.columns == ["doc_id", "row", "quality_score"]
    assert sorted(dropped["doc_id"]) == sorted(set(map("d{}".format, range(100))) - set(pl.read_parquet(out)["doc_id"]))
    assert dropped["doc_id"].to_list() == [f"d{row}" for row in dropped["row"]]
