"""The curation commands on plain jsonl/parquet corpora (no ids, no generation metadata)."""

from __future__ import annotations

import gzip
import json
import os
import re
import stat
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
    return json.loads(result.stdout)


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
    trained = runner.invoke(app, ["classifier", "train", "-o", str(tmp_path / "m"), "--positive",
                                  str(tmp_path / "pos.parquet"), "--negative", str(tmp_path / "neg.parquet"), "--lr",
                                  "0.5,1.0", "--epochs", "5", "--dim", "16", "--bucket", "10000"])
    assert trained.exit_code == 0, trained.output
    meta = json.loads(trained.stdout)  # the model's size goes to stderr, beside the metadata
    assert meta["chosen"]["lr"] in (0.5, 1.0) and len(meta["sha256"]) == 64
    size = (tmp_path / "m.bin").stat().st_size
    assert trained.stderr == f"{tmp_path / 'm.bin'}: {size / 1e6:.1f} MB\n"
    m = invoke("classifier", "eval", tmp_path / "m.bin", "--positive", tmp_path / "pos.parquet",
               "--negative", tmp_path / "neg.parquet")
    assert m["roc_auc"] > 0.9 and sum(m["confusion"].values()) == 400
    stats = invoke("classifier", "score", tmp_path / "m.bin", tmp_path / "neg.parquet", "-o", tmp_path / "s.parquet",
                   "--keep-top-percent", "25")
    scored = pl.read_parquet(tmp_path / "s.parquet")
    assert stats["quality_filter"]["kept"] == scored.height == 50 and scored["quality_score"].is_not_null().all()

    human = tmp_path / "human.parquet"  # a small labelled source beside the corpora: both weigh the same
    pl.DataFrame([{"text": r["text"], "label": r["label"]} for r in src[200:300]]).write_parquet(human)
    meta = invoke("classifier", "train", "-o", tmp_path / "b", "--positive", tmp_path / "pos.parquet",
                  "--negative", tmp_path / "neg.parquet", "--labelled", human, "--balance-sources", "--lr", "0.5",
                  "--epochs", "5", "--dim", "16", "--bucket", "10000")
    assert meta["groups"] == {"corpora": {"n": 400, "copies": 1}, str(human): {"n": 100, "copies": 4}}


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


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_rerunning_dedup_into_the_same_output_loses_no_document(corpus, tmp_path):
    """Each run is a fresh dedup: with made-up <file>:<row> ids, the same docs given again under other
    ids (a new file, a deleted row) were dropped as near-duplicates of an earlier run's, and the
    output, written over, lost them."""
    _, docs = corpus
    out = tmp_path / "out.parquet"
    invoke("dedup", write_jsonl(tmp_path / "docs.jsonl", [{"text": t} for t in docs[:40]]), "-o", out, "--workers", "1")
    stats = invoke("dedup", write_jsonl(tmp_path / "docs_v2.jsonl", [{"text": t} for t in docs]), "-o", out,
                   "--workers", "1")
    assert stats["minhash_dedup"]["dropped"] == {"near_duplicate": 0}
    assert sorted(pl.read_parquet(out)["text"]) == sorted(docs)
    one_less = docs[:10] + docs[11:40]
    invoke("dedup", write_jsonl(tmp_path / "docs.jsonl", [{"text": t} for t in one_less]), "-o", out, "--workers", "1")
    assert sorted(pl.read_parquet(out)["text"]) == sorted(one_less)


def test_dedup_with_an_index_is_incremental_and_keeps_the_indexed_documents(corpus, tmp_path):
    """--index: batch 2 holds batch 1 again (a1 rewritten), a near-copy of a0, an exact copy of a2 that
    comes first, and new docs. The indexed docs are kept as themselves, the copies go, a1's old text
    is no longer indexed; an output of an earlier batch is never written over."""
    _, docs = corpus
    first = [{"id": f"a{i}", "text": docs[i]} for i in range(20)]
    invoke("dedup", write_jsonl(tmp_path / "b1.jsonl", first), "-o", tmp_path / "o1.parquet", "--index",
           tmp_path / "idx", "--workers", "1")
    second = [{"id": "a1_copy", "text": docs[2]}, {"id": "a1", "text": docs[50]}, *first[:1], *first[2:],
              {"id": "b_copy", "text": docs[0] + " Thanks!"},
              {"id": "b_old", "text": docs[1]}, *({"id": f"b{i}", "text": docs[i]} for i in range(20, 30))]
    stats = invoke("dedup", write_jsonl(tmp_path / "b2.jsonl", second), "-o", tmp_path / "o2.parquet", "--index",
                   tmp_path / "idx", "--workers", "1")["minhash_dedup"]  # before exact dedup: see dedup_steps
    assert stats["dropped"] == {"near_duplicate": 0, "near_duplicate_of_indexed": 2}
    assert stats["already_indexed"] == 19 and stats["rewritten"] == 1
    kept = sorted(r["id"] for r in second if not r["id"].endswith("_copy"))
    assert sorted(pl.read_parquet(tmp_path / "o2.parquet")["id"]) == kept
    index = pl.read_parquet(next((tmp_path / "idx").glob("minhash-*")) / "index.parquet")
    assert index.height == index["id"].n_unique() == 31

    before = (tmp_path / "o1.parquet").read_bytes()
    result = runner.invoke(app, ["dedup", str(tmp_path / "b2.jsonl"), "-o", str(tmp_path / "o1.parquet"),
                                 "--index", str(tmp_path / "idx")])
    assert result.exit_code == 1 and "o1.parquet: exists" in result.output and len(result.output.splitlines()) == 1
    assert (tmp_path / "o1.parquet").read_bytes() == before


def mixed_corpus(folder: Path) -> Path:
    """Files whose columns differ (ids or not, ints in one and floats in another, dates, lists, a
    categorical), parquet in row groups of 7 and an empty one, jsonl plain and gzipped, and a JSON array."""
    folder.mkdir(parents=True)
    n = 40
    pl.DataFrame({"id": [f"p{i}" for i in range(n)], "text": [f"parquet text {i}" for i in range(n)],
                  "score": list(range(n)), "day": [__import__("datetime").date(2020, 1, 1 + i % 28) for i in range(n)],
                  "tags": [["a", "b"][: i % 3] for i in range(n)],
                  "kind": pl.Series(["x", "y"] * (n // 2), dtype=pl.Categorical)}).write_parquet(
        folder / "a.parquet", row_group_size=7)
    pl.DataFrame(schema={"id": pl.String, "text": pl.String}).write_parquet(folder / "b_empty.parquet")
    (folder / "c.jsonl").write_text("".join(json.dumps({"text": f"jsonl {i}", "score": i + 0.5, "url": "u"}) + "\n"
                                            for i in range(25)))
    with gzip.open(folder / "d.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps({"text": f"gz {i}", "id": i}) + "\n" for i in range(9)))
    (folder / "e.json").write_text(json.dumps([{"text": "array one"}, {"text": "array two", "extra": True}]))
    return folder


@pytest.mark.parametrize("chunk_rows", [3, 7, 1000])
def test_corpus_chunks_are_read_corpus(tmp_path, chunk_rows):
    """Read a chunk at a time, a corpus has `read_corpus`'s rows, ids, columns and types."""
    from textbookgen.curation.corpus_io import Corpus, read_corpus

    folder = mixed_corpus(tmp_path / "corpus")
    whole = read_corpus(folder)
    corpus = Corpus(folder, chunk_rows=chunk_rows)
    chunks = list(corpus.chunks())
    assert max(c.height for c in chunks) <= chunk_rows
    assert pl.concat(chunks, how="diagonal_relaxed").equals(whole) and corpus.schema() == whole.schema
    assert pl.concat(corpus.chunks(["score", "nothing"]), how="diagonal_relaxed").equals(
        whole.select("id", "text", "score"))


def test_dedup_never_reads_the_corpus_whole(corpus, tmp_path, monkeypatch):
    """`textbookgen dedup` streams its input (200k docs of 500 words held 700 MB of texts, twice): its
    output is the input's rows, in order and with their columns, less the exact and near duplicates."""
    from textbookgen.curation import commands

    path, _ = corpus

    def whole(*args, **kwargs):
        raise AssertionError("read_corpus called")

    monkeypatch.setattr(commands, "read_corpus", whole)
    stats = invoke("dedup", path, "-o", tmp_path / "out.jsonl", "--workers", "1")
    assert stats["minhash_dedup"]["kept"] == 61
    monkeypatch.undo()
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    source = commands.read_corpus(path)
    assert [r["id"] for r in rows] == [i for i in source["id"] if i not in ("corpus:60", "corpus:61")]
    assert set(rows[0]) == {"id", "text", "url"}


def test_a_null_text_in_a_late_chunk_fails_before_any_output(tmp_path, monkeypatch):
    from textbookgen.curation import corpus_io

    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", 4)
    src = tmp_path / "in.parquet"
    pl.DataFrame({"text": [f"doc {i} " + "word " * 30 for i in range(10)] + [None]}).write_parquet(src)
    result = runner.invoke(app, ["dedup", str(src), "-o", str(tmp_path / "out.parquet")])
    assert result.exit_code == 1 and "in.parquet: 1 row(s) with a null 'text'" in result.output
    assert not list(tmp_path.glob("out.parquet*"))


@pytest.mark.parametrize("command", [["dedup"], ["filter"]], ids=["streamed", "read whole"])
def test_null_ids_are_refused_naming_the_file_and_count(tmp_path, monkeypatch, command):
    """Null ids used to reach near dedup, which called them duplicate ids (or failed later)."""
    from textbookgen.curation import corpus_io

    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", 4)
    src = tmp_path / "f.jsonl"
    src.write_text("".join(json.dumps({"id": None if i in (1, 9) else f"d{i}", "text": f"doc {i} " + "word " * 30})
                           + "\n" for i in range(10)))
    result = runner.invoke(app, [*command, str(src), "-o", str(tmp_path / "out.parquet"), "--id-column", "id"])
    assert result.exit_code == 1
    assert re.search(r"f\.jsonl: 2 row\(s\) with a null 'id'.*--id-column", result.output), result.output
    assert not list(tmp_path.glob("out.parquet*"))


@pytest.mark.parametrize("with_ids", [True, False], ids=["int ids", "made-up ids"])
def test_dedup_keeps_the_first_occurrence_and_the_ids_as_given(corpus, tmp_path, with_ids):
    """"Keep the lowest id" compared ids as strings: an exact copy with id 10 (or "f:10") was kept over
    its original 9 ("f:9"), a near copy 11 over 2, and int ids came out as strings."""
    _, docs = corpus
    texts = [*docs[:10], docs[9].upper(), docs[2] + " Thanks for reading."]
    rows = [{"id": i, "text": t} if with_ids else {"text": t} for i, t in enumerate(texts)]
    out = tmp_path / "out.jsonl"
    stats = invoke("dedup", write_jsonl(tmp_path / "f.jsonl", rows), "-o", out, "--workers", "1")
    assert stats["exact_dedup"]["kept"] == 11 and stats["minhash_dedup"]["kept"] == 10
    kept = [json.loads(x)["id"] for x in out.read_text().splitlines()]
    assert kept == (list(range(10)) if with_ids else [f"f:{i}" for i in range(10)])


def test_dedup_reports_the_exact_duplicates_it_drops(corpus, tmp_path):
    from textbookgen.curation.exact import exact_key

    _, docs = corpus
    rows = [{"id": f"d{i}", "text": t} for i, t in enumerate(docs[:5])] + [{"id": "a_copy", "text": docs[3].upper()}]
    invoke("dedup", write_jsonl(tmp_path / "f.jsonl", rows), "-o", tmp_path / "out.parquet", "--workers", "1")
    report = pl.read_parquet(tmp_path / "out.parquet.work" / "exact_dedup" / "duplicates.parquet")
    assert report.rows() == [("a_copy", 5, "d3", 3, exact_key(docs[3]))]  # id, row, kept_id, kept_row, key


@pytest.mark.parametrize("option", ["--workdir", "--index"])
def test_a_workdir_or_index_inside_the_input_folder_is_refused(tmp_path, option):
    """A rerun on the folder read the reports and index written into it as corpus shards."""
    folder = tmp_path / "in"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [{"text": f"document {i} " + "word " * 20} for i in range(3)])
    result = runner.invoke(app, ["dedup", str(folder), "-o", str(tmp_path / "o.parquet"), option, str(folder / "w")])
    assert result.exit_code == 1 and len(result.output.splitlines()) == 1, result.output
    assert f"{option} {folder / 'w'}: is inside the input {folder}" in result.output
    assert not (folder / "w").exists() and not list(tmp_path.glob("o.parquet*"))


def test_an_index_the_run_cannot_use_is_refused_before_any_work(corpus, tmp_path):
    _, docs = corpus
    src = write_jsonl(tmp_path / "b.jsonl", [{"id": f"a{i}", "text": docs[i]} for i in range(5)])
    invoke("dedup", src, "-o", tmp_path / "o1.parquet", "--index", tmp_path / "idx", "--workers", "1")
    result = runner.invoke(app, ["dedup", str(src), "-o", str(tmp_path / "o2.parquet"), "--index",
                                 str(tmp_path / "idx"), "--ngram", "4"])
    assert result.exit_code == 1 and len(result.output.splitlines()) == 1, result.output
    assert f"{tmp_path / 'idx'}: its index holds 5 documents" in result.output and "ngram=4" in result.output
    assert not list(tmp_path.glob("o2.parquet*"))


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_dedup_output_and_index_get_the_mode_of_any_new_file(corpus, tmp_path, suffix):
    """The output was written to a mkstemp file (0600) and renamed, shards to mkdtemp folders (0700):
    other users could not read them, where every other command's files are 0644."""
    path, _ = corpus
    umask = os.umask(0o022)
    try:
        invoke("dedup", path, "-o", tmp_path / f"out{suffix}", "--index", tmp_path / "idx", "--workers", "1")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / f"out{suffix}").stat().st_mode) == 0o644
    shards = list((tmp_path / "idx").glob("minhash-*/shards/*"))
    assert shards and all(stat.S_IMODE(s.stat().st_mode) == 0o755 for s in shards)


def test_a_config_file_error_names_the_file_and_its_key(tmp_path):
    """A typo in --config's file was reported as `--min-wordz: Extra inputs...`, an option that does not exist."""
    from typer.testing import CliRunner

    from textbookgen.cli import app

    (tmp_path / "c.jsonl").write_text('{"text": "a short page about rivers"}\n')
    (tmp_path / "c.yaml").write_text("filters:\n  min_wordz: 5\n")
    res = CliRunner().invoke(app, ["filter", str(tmp_path / "c.jsonl"), "-o", str(tmp_path / "o.parquet"),
                                   "--config", str(tmp_path / "c.yaml")])
    assert res.exit_code == 1
    assert res.output == f"error: --config {tmp_path / 'c.yaml'}: filters.min_wordz: Extra inputs are not permitted\n"
