"""`textbookgen publish`: a user's own corpus as a Hub dataset folder, every column as given, an honest card."""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path

import polars as pl
import pytest
from huggingface_hub import DatasetCard, HfApi
from huggingface_hub.utils import disable_progress_bars
from typer.testing import CliRunner

from textbookgen.cli import app
from textbookgen.dataset import SCHEMA, read_dataset
from textbookgen.hub import pull, push
from textbookgen.testing.fakehub import FakeHub

disable_progress_bars()
SYNTHETIC = re.compile(r"(?i)synthetic|machine-generated|language model|generated|written by|topics?\b|recipe")


def web_corpus(folder: Path) -> Path:
    """A folder of two files (parquet and jsonl) with web-text columns of several types and no id column."""
    folder.mkdir(parents=True)
    words = "the river runs past the old mill and into the sea"
    pl.DataFrame({
        "url": [f"https://example.org/{i}" for i in range(6)],
        "text": [" ".join(words.split()[: 3 + i]) for i in range(6)],
        "timestamp": [datetime.datetime(2024, 1, 1 + i) for i in range(6)],
        "source": ["cc", "cc", "wiki", "cc", "wiki", "cc"],
        "tags": [["a"], [], ["b", "c"], ["a"], [], ["d"]],
        "quality_score": [0.1, 0.5, 0.9, 0.3, 0.7, 0.2],
    }).write_parquet(folder / "a.parquet")  # fmt: skip
    rows = [{"url": f"https://example.org/j{i}", "text": f"page {i} of the river guide", "source": "guide"}
            for i in range(4)]  # fmt: skip
    (folder / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return folder


def publish(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["publish", *args])
    return result.exit_code, result.output


def test_publish_keeps_every_column_as_given_and_loads(tmp_path, monkeypatch):
    src, out = web_corpus(tmp_path / "corpus"), tmp_path / "out"
    code, output = publish(str(src), "-o", str(out), "--name", "River pages", "--license", "cc-by-4.0")
    assert code == 0, output
    expected = pl.concat([pl.read_parquet(src / "a.parquet"), pl.read_ndjson(src / "b.jsonl")], how="diagonal_relaxed")
    got = read_dataset(out, "train")
    assert got.schema == expected.schema  # the input's columns, order and types; no id, no generation columns
    assert got.equals(expected)
    assert not set(got.columns) & (set(SCHEMA) - {"text", "quality_score"})
    assert sorted(p.name for p in out.iterdir()) == [".card_defaults.json", "README.md", "assets", "data"]

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset(str(out), cache_dir=str(tmp_path / ".hf-cache"))
    assert set(ds) == {"train"} and ds["train"].num_rows == 10
    features = ds["train"].features
    assert features["timestamp"] == datasets.Value("timestamp[us]")
    assert features["tags"] == datasets.List(datasets.Value("string"))
    assert ds["train"][7]["url"] == "https://example.org/j1" and ds["train"][7]["tags"] is None


def test_card_describes_the_corpus_and_claims_no_generation(tmp_path):
    out = tmp_path / "out"
    assert publish(str(web_corpus(tmp_path / "corpus")), "-o", str(out), "--license", "cc-by-4.0")[0] == 0
    card = DatasetCard.load(out / "README.md")
    meta = card.data.to_dict()
    assert meta["license"] == "cc-by-4.0" and meta["language"] == ["en"] and meta["pretty_name"] == "out"
    assert not meta.get("tags") and not {"annotations_creators", "language_creators", "source_datasets"} & set(meta)
    assert meta["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]
    assert [f["name"] for f in meta["dataset_info"]["features"]] == ["url", "text", "timestamp", "source", "tags",
                                                                     "quality_score"]  # fmt: skip
    assert not SYNTHETIC.search(card.text), SYNTHETIC.search(card.text)
    assert "| `timestamp` | timestamp[us] |" in card.text and "| `tags` | list<string> |" in card.text
    assert "| documents | 10 |" in card.text and "## Curation" not in card.text
    assert sorted(p.name for p in (out / "assets").iterdir()) == ["length_histogram.png", "quality_histogram.png"]
    assert json.loads((out / ".card_defaults.json").read_text())["language"] == ["en"]  # not chosen: Hub's wins


def test_curation_stats_given_are_cited(tmp_path):
    """A real dedup run's `<output>.stats.json` becomes the card's curation table."""
    rows = [{"text": f"document number {i % 3} about rivers and mountains and the sea"} for i in range(6)]
    (tmp_path / "raw.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    curated = tmp_path / "curated.parquet"
    dedup = CliRunner().invoke(app, ["dedup", str(tmp_path / "raw.jsonl"), "-o", str(curated), "--workers", "1"])
    assert dedup.exit_code == 0, dedup.output
    stats = f"{curated}.stats.json"
    code, output = publish(str(curated), "-o", str(tmp_path / "out"), "--stats", stats)
    assert code == 0, output
    text = (tmp_path / "out" / "README.md").read_text()
    assert "## Curation" in text and "| exact_dedup | 6 | 3 | 3 | exact_duplicate: 3 |" in text


def test_stats_that_are_not_utf8_are_named(tmp_path):
    """A binary --stats file said only "'utf-8' codec can't decode byte ...", naming no file."""
    from textbookgen.publish import curation_report

    (tmp_path / "s.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(ValueError, match=r"^--stats .*s\.json: not JSON"):
        curation_report(tmp_path / "s.json")


def test_a_folder_of_curation_outputs_reads_back_without_their_reports(tmp_path):
    """Each curation command writes `<output>.stats.json` beside its output; the folder's corpus is the data."""
    rows = [{"text": f"document number {i % 3} about rivers and mountains and the sea"} for i in range(6)]
    (tmp_path / "raw.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    dedup = CliRunner().invoke(app, ["dedup", str(tmp_path / "raw.jsonl"), "-o", str(tmp_path / "cur" / "d.jsonl"),
                                     "--workers", "1", "--workdir", str(tmp_path / "work")])
    assert dedup.exit_code == 0 and (tmp_path / "cur" / "d.jsonl.stats.json").is_file(), dedup.output
    code, output = publish(str(tmp_path / "cur"), "-o", str(tmp_path / "out"))
    assert code == 0, output
    kept = len((tmp_path / "cur" / "d.jsonl").read_text().splitlines())
    assert read_dataset(tmp_path / "out").height == kept


def test_second_publish_adds_a_split(tmp_path, monkeypatch):
    src, out = web_corpus(tmp_path / "corpus"), tmp_path / "out"
    assert publish(str(src), "-o", str(out))[0] == 0
    code, output = publish(str(src / "b.jsonl"), "-o", str(out), "--split", "test")  # fewer columns: refused
    assert code == 1 and "unlike split(s) ['train']" in output and output.count("\n") == 1, output
    assert [p.name for p in (out / "data").iterdir()] == ["train-00000-of-00001.parquet"]
    assert publish(str(src), "-o", str(out), "--split", "test")[0] == 0
    meta = DatasetCard.load(out / "README.md").data.to_dict()
    assert {s["name"]: s["num_examples"] for s in meta["dataset_info"]["splits"]} == {"train": 10, "test": 10}
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset(str(out), cache_dir=str(tmp_path / ".hf-cache"))
    assert {k: v.num_rows for k, v in ds.items()} == {"train": 10, "test": 10}


def test_published_folder_pushes_to_the_hub_unchanged(tmp_path):
    out = tmp_path / "out"
    assert publish(str(web_corpus(tmp_path / "corpus")), "-o", str(out))[0] == 0
    with FakeHub() as hub:
        push(out, "tester/river", token=hub.token, endpoint=hub.endpoint)
        files = HfApi(endpoint=hub.endpoint, token=hub.token).list_repo_files("tester/river", repo_type="dataset")
        assert sorted(f for f in files if f != ".gitattributes") == [
            "README.md", "assets/length_histogram.png", "assets/quality_histogram.png",
            "data/train-00000-of-00001.parquet"]  # fmt: skip
        pulled = pull("tester/river", tmp_path / "pulled", token=hub.token, endpoint=hub.endpoint)
    card = (pulled / "README.md").read_text()
    assert 'load_dataset("tester/river"' in card and not SYNTHETIC.search(DatasetCard(card).text)
    assert read_dataset(pulled).drop("split").equals(read_dataset(out).drop("split"))


def _stats_file(tmp_path: Path) -> str:
    (tmp_path / "stats.json").write_text("[1, 2]")
    return str(tmp_path / "stats.json")


def _built_folder(tmp_path: Path) -> str:
    (tmp_path / "built").mkdir()
    (tmp_path / "built" / "manifest.json").write_text("{}")
    return str(tmp_path / "built")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (lambda t: ["-o", str(t / "out"), "--text-column", "body"], "no 'body' field"),
        (lambda t: ["-o", str(t / "corpus" / "out")], "is the input"),
        (lambda t: ["-o", str(t / "out"), "--stats", _stats_file(t)], "not a curation report"),
        (lambda t: ["-o", _built_folder(t)], "holds manifest.json of a textbookgen build"),
        (lambda t: ["-o", str(t / "out"), "--split", "a-b"], "invalid split name 'a-b'"),
        (lambda t: ["-o", str(t / "out"), "--language", "not a language"], "--language not a language"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, message):
    src = web_corpus(tmp_path / "corpus")
    code, output = publish(str(src), *args(tmp_path))
    assert code == 1 and output.count("\n") == 1 and output.startswith("error: ") and message in output, output
    assert not (tmp_path / "out").exists() and sorted(p.name for p in src.iterdir()) == ["a.parquet", "b.jsonl"]


def test_empty_input_is_refused(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    code, output = publish(str(tmp_path / "empty.jsonl"), "-o", str(tmp_path / "out"))
    assert code == 1 and output == f"error: {tmp_path / 'empty.jsonl'}: no documents (the file is empty or blank)\n"
    assert not (tmp_path / "out").exists()


def test_parquet_of_one_schema_is_sharded_as_it_is_without_a_staged_copy(tmp_path, monkeypatch):
    """A staged copy needs the corpus's size again in free disk: parquet input streams into the shards."""
    import textbookgen.curation.corpus_io as corpus_io

    src = tmp_path / "corpus"
    web_corpus(src)
    (src / "b.jsonl").unlink()
    pl.read_parquet(src / "a.parquet").reverse().write_parquet(src / "c.parquet")

    monkeypatch.setattr(corpus_io, "CorpusWriter", NoStaging)
    code, output = publish(str(src), "-o", str(tmp_path / "out"))
    assert code == 0, output
    expected = pl.concat([pl.read_parquet(src / "a.parquet"), pl.read_parquet(src / "c.parquet")])
    assert read_dataset(tmp_path / "out", "train").equals(expected)


def test_json_input_streams_into_the_shards_without_a_staged_copy(tmp_path, monkeypatch):
    """JSON input was staged in the output folder as one parquet copy of the corpus, its size again in free disk,
    before the shards; it goes straight into them now, and they are the same bytes as the staged copy gave."""
    import textbookgen.curation.corpus_io as corpus_io
    from textbookgen import dataset

    writer = corpus_io.CorpusWriter

    src = web_corpus(tmp_path / "corpus")  # parquet and JSON lines of other columns: typed by the reader
    rows = [{"text": f"array page {i} " + "word " * (i % 50), "source": "array", "n": i} for i in range(300)]
    (src / "c.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    monkeypatch.setattr(corpus_io, "CorpusWriter", NoStaging)
    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", 7)  # chunks that straddle the shards
    monkeypatch.setattr(dataset, "DEFAULT_MAX_SHARD_BYTES", 4_000)
    code, output = publish(str(src), "-o", str(tmp_path / "out"))
    assert code == 0, output
    corpus = corpus_io.Corpus(src, id_column="row")  # what was staged, then sharded
    with writer(tmp_path / "staged.parquet", corpus.schema().to_frame().drop("row").schema) as staged:
        for chunk in corpus.chunks():
            staged.write(chunk.drop("row"))
    expected = dataset.write_dataset(pl.scan_parquet(tmp_path / "staged.parquet"), tmp_path / "was", as_given=True,
                                     max_shard_bytes=4_000)
    shards = sorted((tmp_path / "out" / "data").iterdir())
    assert len(expected) == 15 and [p.name for p in shards] == [p.name for p in expected]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(shards, expected, strict=True))
    assert read_dataset(tmp_path / "out", "train").height == 310


class NoStaging:
    def __init__(self, *args, **kwargs):
        raise AssertionError("staged a copy of the input")


def test_a_null_text_in_parquet_input_names_the_file(tmp_path):
    src = tmp_path / "corpus"
    src.mkdir()
    pl.DataFrame({"text": ["a page", None]}).write_parquet(src / "a.parquet")
    code, output = publish(str(src), "-o", str(tmp_path / "out"))
    assert code == 1 and output.startswith(f"error: {src / 'a.parquet'}: 1 row(s) with a null 'text' (the first: "
                                           "row 2)"), output
    assert not (tmp_path / "out").exists()
