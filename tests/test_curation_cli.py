"""The curation commands on plain jsonl/parquet corpora (no ids, no generation metadata)."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from textbookgen.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def corpus(shared_data: Path, tmp_path_factory) -> tuple[Path, list[str]]:
    docs = [json.loads(x)["text"] for x in gzip.open(shared_data / "c4_en_sample_1k" / "c4_sample.jsonl.gz", "rt")]
    docs = [d for d in docs if len(d.split()) >= 120][:60]
    rows = docs + [docs[0] + " Thanks for reading.", docs[1].upper(), "As an AI language model, I cannot. " * 30]
    path = tmp_path_factory.mktemp("cli") / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": t, "url": "u"}) + "\n" for t in rows))
    return path, docs


def invoke(*args: str) -> dict:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_dedup_filter_decontaminate_commands(corpus, tmp_path):
    path, docs = corpus
    stats = invoke("dedup", path, "-o", tmp_path / "dedup.parquet", "--workers", "1")
    assert stats["exact_dedup"]["dropped"] == {"exact_duplicate": 1}
    assert stats["minhash_dedup"]["dropped"] == {"near_duplicate": 1}
    assert (tmp_path / "dedup.parquet.work" / "minhash_dedup" / "clusters.parquet").exists()
    out = pl.read_parquet(tmp_path / "dedup.parquet")
    assert out.height == 61 and set(out.columns) >= {"id", "text", "url"}

    stats = invoke("filter", tmp_path / "dedup.parquet", "-o", tmp_path / "f.jsonl", "--min-words", "100")
    assert stats["filters"]["dropped"].get("boilerplate_phrase") == 1

    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"question": " ".join(docs[5].split()[20:60])}) + "\n")
    stats = invoke("decontaminate", tmp_path / "f.jsonl", "-o", tmp_path / "clean.jsonl", "-b", bench)
    assert stats["decontamination"]["dropped"] == {"bench": 1}
    assert len((tmp_path / "clean.jsonl").read_text().splitlines()) == stats["decontamination"]["kept"]


def test_bad_input_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": oops}\n')
    result = runner.invoke(app, ["filter", str(bad), "-o", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 1 and "bad.jsonl:2" in result.output
    (tmp_path / "latin1.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    result = runner.invoke(app, ["filter", str(tmp_path / "latin1.jsonl"), "-o", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 1 and "latin1.jsonl:2: not valid UTF-8" in result.output
    (tmp_path / "notext.jsonl").write_text('{"body": "x"}\n')
    result = runner.invoke(app, ["filter", str(tmp_path / "notext.jsonl"), "-o", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 1 and "no 'text' field" in result.output
    result = runner.invoke(app, ["dedup", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 1 and "missing.jsonl" in result.output


def test_classifier_train_eval_score(shared_data, tmp_path):
    src = [json.loads(x) for x in gzip.open(shared_data / "dclm_human_quality_labels" / "majority_data.jsonl.gz", "rt")]
    books = [json.loads(x)["text"] for x in gzip.open(
        shared_data / "sciphi_synthetic_textbooks" / "sciphi_textbooks.jsonl.gz", "rt")]
    pos = [{"text": " ".join(b.split()[i : i + 300])} for b in books for i in range(0, 6000, 300)][:200]
    pl.DataFrame(pos).write_parquet(tmp_path / "pos.parquet")
    pl.DataFrame([{"text": r["text"]} for r in src[:200]]).write_parquet(tmp_path / "neg.parquet")
    meta = invoke("classifier", "train", "-o", tmp_path / "m", "--positive", tmp_path / "pos.parquet",
                  "--negative", tmp_path / "neg.parquet", "--lr", "0.5,1.0", "--epochs", "5", "--dim", "16",
                  "--bucket", "10000")
    assert meta["chosen"]["lr"] in (0.5, 1.0) and len(meta["sha256"]) == 64
    m = invoke("classifier", "eval", tmp_path / "m.bin", "--positive", tmp_path / "pos.parquet",
               "--negative", tmp_path / "neg.parquet")
    assert m["roc_auc"] > 0.9 and sum(m["confusion"].values()) == 400
    stats = invoke("classifier", "score", tmp_path / "m.bin", tmp_path / "neg.parquet", "-o", tmp_path / "s.parquet",
                   "--keep-top-percent", "25")
    scored = pl.read_parquet(tmp_path / "s.parquet")
    assert stats["quality_filter"]["kept"] == scored.height == 50 and scored["quality_score"].is_not_null().all()


def test_folder_without_ids_gets_one_id_per_file_path(tmp_path):
    """Same-named files in different subfolders (train/part-0.jsonl, test/part-0.jsonl) must not
    make the same "<file>:<row>" ids."""
    from textbookgen.curation.corpus_io import read_corpus

    for sub in ("a", "b"):
        (tmp_path / "corpus" / sub).mkdir(parents=True)
        rows = [json.dumps({"text": f"{sub} text {i} " + "word " * 60}) for i in range(3)]
        (tmp_path / "corpus" / sub / "part-0.jsonl").write_text("\n".join(rows) + "\n")
    df = read_corpus(tmp_path / "corpus")
    assert df["id"].to_list()[::3] == ["a/part-0:0", "b/part-0:0"] and df["id"].n_unique() == 6
    assert read_corpus(tmp_path / "corpus" / "a" / "part-0.jsonl")["id"][0] == "part-0:0"
    stats = invoke("dedup", tmp_path / "corpus", "-o", tmp_path / "out.jsonl", "--workers", "1")
    assert stats["minhash_dedup"]["in"] == 6


def write_labels(path: Path, labels: list) -> Path:
    pl.DataFrame({"text": [f"document number {i}" for i in range(len(labels))], "label": labels}).write_parquet(path)
    return path


def test_labelled_files_read_numbers_written_as_text_and_fasttext_label_words(tmp_path):
    from textbookgen.curation.commands import load_labelled

    scores = write_labels(tmp_path / "scores.parquet", ["5", "4", " 3.0", "1", "0"])
    words = write_labels(tmp_path / "words.parquet", ["__label__hq", "__label__cc", "HQ", "no", "true"])
    flags = write_labels(tmp_path / "flags.parquet", [True, False])
    assert load_labelled([], [], [str(scores)], min_positive=3)[1] == [True, True, True, False, False]
    assert load_labelled([], [], [str(words)])[1] == [True, False, True, False, True]
    assert load_labelled([], [], [str(flags)], min_positive=3)[1] == [True, False]


@pytest.mark.parametrize("labels, message", [
    (["hq", "hgih"], r"typo.parquet: row 2: label 'hgih' is neither a number nor a known class word"),
    ([5, None, 0, None], r"typo.parquet: 2 of 4 rows have no 'label' \(null or NaN; first at row 2\)"),
    ([5.0, float("nan")], r"typo.parquet: 1 of 2 rows have no 'label'"),
    (["4", None], r"typo.parquet: 1 of 2 rows have no 'label'"),
])
def test_unreadable_or_missing_labels_are_an_error_naming_the_file_not_a_negative(tmp_path, labels, message):
    bad = write_labels(tmp_path / "typo.parquet", labels)
    for command in (["classifier", "train", "-o", str(tmp_path / "m")], ["classifier", "eval", str(tmp_path / "m.bin")]):
        result = runner.invoke(app, [*command, "--labelled", str(bad), "--min-positive", "3"])
        assert result.exit_code == 1 and re.search(message, result.output), result.output
