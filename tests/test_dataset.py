"""The Hub-layout parquet writer: schema, splits, shards, row groups, and `datasets.load_dataset` on the folder."""

from __future__ import annotations

import json
import random

import polars as pl
import pyarrow.parquet as pq
import pytest

from textbookgen.dataset import (
    SCHEMA,
    check_rows,
    conform,
    read_dataset,
    split_rows,
    splits_of,
    validate_split,
    write_dataset,
)

SUBJECTS = {
    "Biology": ["Cells", "Genetics", "Ecology", "Evolution"],
    "Physics": ["Mechanics", "Optics", "Thermodynamics"],
    "Mathematics": ["Algebra", "Geometry", "Probability"],
    "History": ["Ancient Rome", "Industrial Revolution"],
}
WORDS = "the cell divides energy flows a force acts on each body light bends at the boundary proof follows".split()


def sample_documents(n: int = 120, seed: int = 0) -> pl.DataFrame:
    """A documents table shaped like the generator's output, deterministic in `seed`."""
    rng = random.Random(seed)
    topics = [(s, t) for s, ts in SUBJECTS.items() for t in ts]
    rows = []
    for i in range(n):
        subject, topic = rng.choice(topics)
        n_words = rng.randint(40, 400)
        template = rng.choice(["textbook_section", "exercises", "qa"])
        rows.append({
            "id": f"{seed:02d}{i:06d}",
            "text": f"# {topic}\n\n" + " ".join(rng.choice(WORDS) for _ in range(n_words)),
            "topic_path": f"{subject} > {topic}", "topic_id": f"{subject[:3]}-{topic[:3]}".lower(),
            "template": template, "template_hash": f"sha256:{abs(hash(template)) % 16**12:012x}",
            "audience": rng.choice(["high school students", "researchers", "young children"]),
            "style": rng.choice(["academic", "conversational"]), "format": "markdown",
            "seed_extract_id": rng.choice([None, f"c4-{rng.randint(0, 50)}"]), "model": "gpt-4o-mini",
            "finish_reason": "length" if rng.random() < 0.1 else "stop",
            "input_tokens": rng.randint(150, 400), "output_tokens": int(n_words * 1.3),
            "quality_score": round(rng.betavariate(5, 2) * 5, 3) if rng.random() < 0.9 else None,
            "provenance": json.dumps({"temperature": 0.8, "topic": topic}),
        })  # fmt: skip
    return pl.DataFrame(rows, schema=SCHEMA)


def test_validate_split_names():
    for good in ("train", "test", "validation", "train.clean", "split_2"):
        assert validate_split(good) == good
    for bad in ("train-clean", "", "train/x", "a b", "train."):
        with pytest.raises(ValueError, match="invalid split name"):
            validate_split(bad)
    with pytest.raises(ValueError, match="invalid split name"):
        write_dataset(sample_documents(3), "unused", split="dev-1")


def test_write_layout_schema_and_roundtrip(tmp_path):
    docs = sample_documents(50)
    paths = write_dataset(docs, tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == ["data/train-00000-of-00001.parquet"]
    back = pl.read_parquet(paths[0])
    assert back.columns == list(SCHEMA)
    assert back.equals(docs)
    meta = pq.ParquetFile(paths[0]).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"
    assert read_dataset(tmp_path, "train").equals(docs)


def test_conform_fills_optional_and_names_bad_columns():
    minimal = pl.DataFrame({"id": ["a", "b"], "text": ["x", "y"], "extra": [1, 2]})
    out = conform(minimal)
    assert out.columns == list(SCHEMA)
    assert out["quality_score"].null_count() == 2 and out.schema["input_tokens"] == pl.Int64
    assert "extra" in conform(minimal, keep_extra=True).columns
    with pytest.raises(ValueError, match="'text'"):
        conform(pl.DataFrame({"id": ["a"]}))
    with pytest.raises(ValueError, match="'input_tokens'"):
        conform(pl.DataFrame({"id": ["a"], "text": ["x"], "input_tokens": ["many"]}))
    with pytest.raises(ValueError, match="'id' has 1 duplicated id"):
        conform(pl.DataFrame({"id": ["a", "a", "b"], "text": ["x", "y", "z"]}))
    with pytest.raises(ValueError, match="'text' has 1 null value.*row 1"):
        conform(pl.DataFrame({"id": ["a", "b"], "text": ["x", None]}))


def test_shards_row_groups_and_stale_shards(tmp_path):
    docs = sample_documents(300, seed=1)
    size = check_rows(docs.lazy())[1]
    paths = write_dataset(docs, tmp_path, max_shard_bytes=size // 3 + 1, row_group_bytes=size // 20)
    names = [p.name for p in paths]
    assert names == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    heights = [pq.ParquetFile(p).metadata.num_rows for p in paths]
    assert sum(heights) == 300 and max(heights) - min(heights) <= 1
    assert all(pq.ParquetFile(p).metadata.num_row_groups >= 5 for p in paths)
    assert read_dataset(tmp_path, "train")["id"].to_list() == docs["id"].to_list()  # order kept

    write_dataset(docs.head(10), tmp_path)  # a smaller rebuild: one shard, the three old ones removed
    assert [p.name for p in splits_of(tmp_path)["train"]] == ["train-00000-of-00001.parquet"]
    write_dataset(docs.head(5), tmp_path, split="test")
    assert list(splits_of(tmp_path)) == ["train", "test"]
    assert not list((tmp_path / "data").glob(".*"))  # no temporary files left


def test_split_rows_of_a_folder_or_of_its_shards(tmp_path):
    """One row counter for a written folder (the push checks) and a split -> shards mapping (the card)."""
    docs = sample_documents(60, seed=2)
    write_dataset(docs, tmp_path, max_shard_bytes=check_rows(docs.lazy())[1] // 2 + 1)
    write_dataset(docs.head(7), tmp_path, split="test")
    splits = splits_of(tmp_path)
    assert split_rows(tmp_path) == split_rows(splits) == {"train": 60, "test": 7}
    assert split_rows({"test": splits["test"]}) == {"test": 7}


def test_empty_table_is_refused_and_the_folder_left_as_it_was(tmp_path):
    before = write_dataset(sample_documents(5), tmp_path)
    with pytest.raises(ValueError, match=rf"no rows to write as split 'train' of {tmp_path}"):
        write_dataset(sample_documents(0), tmp_path)
    assert splits_of(tmp_path) == {"train": before}


def test_lazy_input_is_written_shard_by_shard_like_eager(tmp_path):
    docs = sample_documents(200, seed=4)
    for i in range(4):  # a curated corpus spread over several files, as curation writes it
        docs.slice(i * 50, 50).write_parquet(tmp_path / f"curated-{i}.parquet")
    size = check_rows(docs.lazy())[1]
    lazy = write_dataset(pl.scan_parquet(tmp_path / "curated-*.parquet"), tmp_path / "lazy", max_shard_bytes=size // 4 + 1)
    eager = write_dataset(docs, tmp_path / "eager", max_shard_bytes=size // 4 + 1)
    assert [p.name for p in lazy] == [p.name for p in eager] == [f"train-0000{i}-of-00004.parquet" for i in range(4)]
    for a, b in zip(lazy, eager, strict=True):
        assert pl.read_parquet(a).equals(pl.read_parquet(b))
    bad = pl.concat([docs, docs.head(1)]).lazy()
    with pytest.raises(ValueError, match="duplicated id"):
        write_dataset(bad, tmp_path / "bad")


def test_load_dataset_on_built_folder(tmp_path, monkeypatch):
    """The folder loads with `datasets` as a Hub repo would: splits, rows and features."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    from textbookgen.card import CARDS_DIR, render_card

    train, test = sample_documents(80, seed=2), sample_documents(20, seed=3)
    write_dataset(train, tmp_path, max_shard_bytes=check_rows(train.lazy())[1] // 2 + 1)
    write_dataset(test, tmp_path, split="test")
    render_card(tmp_path, CARDS_DIR / "quickstart.md", {"name": "t", "license": "apache-2.0"}, {})
    ds = datasets.load_dataset(str(tmp_path), cache_dir=str(tmp_path / ".hf-cache"))
    assert set(ds) == {"train", "test"}
    assert ds["train"].num_rows == 80 and ds["test"].num_rows == 20
    expected = datasets.Features({
        name: datasets.Value({pl.String: "string", pl.Int64: "int64", pl.Float64: "float64"}[type(dtype)])
        for name, dtype in SCHEMA.items()
    })  # fmt: skip
    assert ds["train"].features == expected
    assert ds["train"][0]["text"] == train["text"][0]
    assert ds["test"]["id"] == test["id"].to_list()


def test_load_dataset_reads_extra_columns_of_any_type_as_written(tmp_path, monkeypatch):
    """With `keep_extra`, the card declares each extra column's own type (not `string`), so it loads."""
    import datetime

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    from textbookgen.card import CARDS_DIR, render_card

    docs = sample_documents(3).with_columns(
        pl.Series("score", [1, 2, 3], dtype=pl.Int32),
        pl.Series("ratio", [0.5, 1.5, None], dtype=pl.Float32),
        pl.Series("flag", [True, False, True]),
        pl.Series("tags", [["a"], [], ["b", "c"]]),
        pl.Series("grid", [[[1, 2]], [], [[3]]]),
        pl.Series("meta", [{"k": 1, "v": "x"}, {"k": 2, "v": None}, None]),
        pl.Series("spans", [[{"start": 0}], [], [{"start": 4}]]),
        pl.Series("pair", [[1, 2], [3, 4], [5, 6]], dtype=pl.Array(pl.Int64, 2)),
        pl.Series("kind", ["x", "y", "x"], dtype=pl.Categorical),
        pl.Series("day", [datetime.date(2024, 1, d) for d in (1, 2, 3)]),
        pl.Series("at", [datetime.datetime(2024, 1, 1, h) for h in (1, 2, 3)]).dt.replace_time_zone("UTC"),
    )
    write_dataset(docs, tmp_path, keep_extra=True)
    render_card(tmp_path, CARDS_DIR / "quickstart.md", {"name": "t", "license": "apache-2.0"}, {})
    ds = datasets.load_dataset(str(tmp_path), cache_dir=str(tmp_path / ".hf-cache"))["train"]
    features = ds.features
    assert features["score"] == datasets.Value("int32") and features["ratio"] == datasets.Value("float32")
    assert features["tags"] == datasets.List(datasets.Value("string"))
    assert features["pair"] == datasets.List(datasets.Value("int64"), length=2)
    assert features["at"] == datasets.Value("timestamp[us, tz=UTC]")
    extra = [c for c in docs.columns if c not in SCHEMA]
    assert ds.select_columns(extra).to_list() == docs.select(extra).with_columns(
        pl.col("kind").cast(pl.String)).to_dicts()  # fmt: skip


def test_load_dataset_without_card_finds_splits_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    write_dataset(sample_documents(10), tmp_path)
    write_dataset(sample_documents(4, seed=5), tmp_path, split="validation")
    ds = datasets.load_dataset(str(tmp_path), cache_dir=str(tmp_path / ".hf-cache"))
    assert {k: v.num_rows for k, v in ds.items()} == {"train": 10, "validation": 4}


def content_chunks(data: bytes) -> list[bytes]:
    """`data` cut where a gear hash of the last 64 bytes has its top 12 bits zero (about every 4 KiB, at
    least 1 KiB apart): a small model of how the Hub's Xet storage splits an upload to deduplicate it."""
    import numpy as np

    a = np.frombuffer(data, np.uint8)
    gear = np.random.default_rng(0).integers(0, 2**63, 256, dtype=np.uint64)
    h = np.zeros(len(a), np.uint64)
    for k in range(64):
        h[k:] += gear[a[: len(a) - k]] << np.uint64(k)
    chunks, start = [], 0
    for cut in [*(np.flatnonzero(h >> np.uint64(52) == 0) + 1).tolist(), len(data)]:
        if cut - start >= 1024 or (cut == len(data) > start):
            chunks.append(data[start:cut])
            start = cut
    return chunks


def shared_share(old: bytes, new: bytes) -> float:
    """Share of `new`'s bytes in chunks `old` already has: what a re-push need not upload."""
    known = set(content_chunks(old))
    return sum(len(c) for c in content_chunks(new) if c in known) / len(new)


def test_content_defined_chunking_keeps_pages_of_a_grown_build(tmp_path):
    """Documents added before the old ones (1%) move every page boundary of a plainly written shard;
    with content-defined chunking (the default) the later pages come out byte for byte as before."""
    docs = sample_documents(6000, seed=5)
    grown = pl.concat([sample_documents(60, seed=6), docs])
    share = {}
    for cdc in (False, True):
        old = write_dataset(docs, tmp_path / f"old{cdc}", content_defined_chunking=cdc)[0]
        new = write_dataset(grown, tmp_path / f"new{cdc}", content_defined_chunking=cdc)[0]
        share[cdc] = shared_share(old.read_bytes(), new.read_bytes())
        assert read_dataset(tmp_path / f"new{cdc}")["id"].to_list() == grown["id"].to_list()
    assert share[True] > 0.6 and share[False] < 0.3, share
    default = write_dataset(docs, tmp_path / "default")[0]
    assert default.read_bytes() == old.read_bytes()  # on by default
    assert json.loads(pq.ParquetFile(default).metadata.metadata[b"content_defined_chunking"]) == {
        "min_chunk_size": 256 * 1024, "max_chunk_size": 1024 * 1024, "norm_level": 0}  # as `datasets` records it
