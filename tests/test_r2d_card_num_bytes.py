"""The card's `dataset_info` sizes equal what `datasets` records when it loads the same parquet shards."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from test_card import MANIFEST, RECIPE

from textbookgen.card import CARDS_DIR, render_card, render_corpus_card
from textbookgen.dataset import splits_of, write_dataset


@pytest.fixture(scope="module")
def corpus(shared_data: Path) -> pl.DataFrame:
    """Real web and encyclopedia text with urls (a third null), lengths and word lists (a sixth null)."""
    c4_path, wiki_path = shared_data / "c4_en_sample_1k/c4_sample.jsonl.gz", shared_data / "wikipedia_en_1k/wikipedia.jsonl.gz"
    if not (c4_path.exists() and wiki_path.exists()):
        pytest.skip(f"real text not found under {shared_data} (c4_en_sample_1k, wikipedia_en_1k)")
    c4 = pl.read_ndjson(c4_path).select("text", "url")
    wiki = pl.read_ndjson(wiki_path).select(pl.col("eng_Latn").alias("text"), pl.lit(None, pl.String).alias("url"))
    df = pl.concat([c4, wiki.head(200)]).with_row_index("i")
    return df.select(
        pl.format("doc-{}", pl.col("i")).alias("id"),
        "text",
        pl.when(pl.col("i") % 3 == 0).then(None).otherwise(pl.col("url")).alias("url"),
        pl.col("text").str.len_chars().alias("chars"),
        pl.when(pl.col("i") % 6 == 1).then(None).otherwise(pl.col("text").str.split(" ").list.head(5)).alias("first_words"),
        pl.when(pl.col("i") % 4 == 0).then(None).otherwise(pl.col("i").cast(pl.Int32)).alias("maybe"),
    )


def assert_card_sizes_as_loaded(folder: Path, readme: Path) -> None:
    """The card's split sizes and total equal those `datasets.load_dataset` records for the folder (which
    reads the card's features, so large strings and lists load as plain ones)."""
    datasets = pytest.importorskip("datasets")
    info = yaml.safe_load(readme.read_text(encoding="utf-8").split("---\n")[1])["dataset_info"]
    loaded = datasets.load_dataset(str(folder), cache_dir=str(folder.parent / "cache"))
    recorded = next(iter(loaded.values())).info
    assert {s["name"]: s["num_bytes"] for s in info["splits"]} == {n: s.num_bytes for n, s in recorded.splits.items()}
    assert info["dataset_size"] == recorded.dataset_size


def test_documents_schema_shards(corpus, tmp_path):
    """A build's shards (documents schema: large_string, int64, float64, optional columns all null)."""
    folder = tmp_path / "ds"
    docs = corpus.select("id", "text", pl.col("url").alias("provenance"), pl.col("chars").alias("input_tokens"))
    write_dataset(docs.head(900), folder, max_shard_bytes=600_000, row_group_bytes=150_000)
    write_dataset(docs.tail(300), folder, split="test", max_shard_bytes=200_000, content_defined_chunking=False)
    splits = splits_of(folder)
    assert len(splits["train"]) > 2 and len(splits["test"]) > 1
    assert_card_sizes_as_loaded(folder, render_card(folder, CARDS_DIR / "quickstart.md", RECIPE, MANIFEST))


def test_user_corpus_with_lists_structs_nulls_and_int32(corpus, tmp_path):
    """A user's corpus as given: list<large_string>, struct (some rows null), categorical, nullable int32 and string
    columns."""
    folder = tmp_path / "ds"
    source = pl.struct(pl.col("url"), pl.col("maybe").alias("rank"))
    host = pl.col("url").str.extract(r"//([^/]+)").cast(pl.Categorical)  # a dictionary column, loaded decoded
    corpus = corpus.with_columns(source=pl.when(pl.col("chars") % 7 == 0).then(None).otherwise(source), host=host)
    write_dataset(corpus, folder, max_shard_bytes=800_000, row_group_bytes=100_000, as_given=True)
    assert len(splits_of(folder)["train"]) > 2
    assert_card_sizes_as_loaded(folder, render_corpus_card(folder))


def test_shards_written_by_pyarrow_with_plain_and_fixed_size_types(corpus, tmp_path):
    """Shards as another tool writes them: 4-byte offset types (string, list<string>), uneven row groups,
    and required fixed-size lists, alone, in a struct and in a large list, to which `datasets`' cast adds
    a validity bitmap (a plain `Array.cast` adds none), and in a plain list, where it keeps them as read."""
    pair = pa.list_(pa.int64(), 2)
    pairs = pa.array([[n, n + 1] for n in range(corpus.height)], pair)
    required = pa.field("item", pair, nullable=False)
    table = corpus.to_arrow().cast(pa.schema([
        ("id", pa.string()), ("text", pa.string()), ("url", pa.string()), ("chars", pa.int64()),
        ("first_words", pa.list_(pa.string())), ("maybe", pa.int32()),
    ]))
    table = table.append_column(pa.field("pair", pair, nullable=False), pairs)
    table = table.append_column("in_struct", pa.StructArray.from_arrays([pairs], fields=[required]))
    offsets = pa.array(range(corpus.height + 1), pa.int64())
    table = table.append_column("in_list", pa.LargeListArray.from_arrays(offsets, pairs, pa.large_list(required)))
    offsets = offsets.cast(pa.int32())  # a plain list whose items' type stays is kept as read, bitmap-less
    table = table.append_column("in_plain_list", pa.ListArray.from_arrays(offsets, pairs, pa.list_(required)))
    data = tmp_path / "ds" / "data"
    data.mkdir(parents=True)
    for i, (start, end, group) in enumerate([(0, 250, 40), (250, 700, 100), (700, 1200, 333)]):
        pq.write_table(table.slice(start, end - start), data / f"train-{i:05d}-of-00003.parquet", row_group_size=group)
    assert_card_sizes_as_loaded(tmp_path / "ds", render_corpus_card(tmp_path / "ds"))


def test_single_row_row_groups_are_pooled_as_datasets_pools_them(corpus, tmp_path):
    """Documents longer than a row group make one-row row groups; `datasets` concatenates such rows, 1000
    at a time, before it measures them, so a column's validity bitmap is counted per pool: one byte per 8
    rows in the first pool (it holds nulls), none in the second (rows from 1000 on hold none)."""
    folder = tmp_path / "ds"
    n = pl.int_range(pl.len())
    rows = corpus.head(1100).select("id", "text", note=pl.when((n % 5 == 0) & (n < 1000)).then(None).otherwise(n))
    write_dataset(rows.head(1099), folder, max_shard_bytes=1_500_000, row_group_bytes=1, as_given=True)
    write_dataset(rows.tail(1), folder, split="test", as_given=True)
    assert pq.ParquetFile(splits_of(folder)["train"][0]).metadata.row_group(0).num_rows == 1
    assert_card_sizes_as_loaded(folder, render_corpus_card(folder))


def test_binary_columns_are_pooled_a_hundred_rows_at_a_time(corpus, tmp_path):
    """`datasets` pools one-row tables 100 at a time where a feature holds binary (1000 otherwise): counted
    per 1000, the null bitmaps of a binary column with one-row row groups came out 12 bytes short."""
    folder = tmp_path / "ds"
    n = pl.int_range(pl.len())
    rows = corpus.head(400).select("id", "text", blob=pl.when(n % 3 == 0).then(None).otherwise(pl.col("text").cast(pl.Binary)))
    write_dataset(rows, folder, max_shard_bytes=1_500_000, row_group_bytes=1, as_given=True)
    assert pq.ParquetFile(splits_of(folder)["train"][0]).metadata.row_group(0).num_rows == 1
    assert_card_sizes_as_loaded(folder, render_corpus_card(folder))


def test_a_split_added_by_hand_is_checked_as_written_documents_are(tmp_path):
    """Measuring bytes by casting (not `check_rows`) dropped the card's check of a build's documents: a test split
    added by hand with duplicate ids and a null text got a card."""
    folder = tmp_path / "ds"
    write_dataset(pl.DataFrame({"id": [f"d{i}" for i in range(20)], "text": ["some words here"] * 20}), folder)
    train = pq.read_table(splits_of(folder)["train"][0])
    bad = pl.from_arrow(train.slice(0, 5)).with_columns(
        id=pl.lit("dup"), text=pl.when(pl.int_range(5) == 0).then(None).otherwise(pl.col("text")))
    pq.write_table(bad.to_arrow().cast(train.schema), folder / "data" / "test-00000-of-00001.parquet")
    with pytest.raises(ValueError, match="split 'test'.*(null|duplicat)"):
        render_card(folder, CARDS_DIR / "quickstart.md", RECIPE, MANIFEST, built=["train"])


def test_a_shard_whose_first_row_group_is_empty_is_named(tmp_path):
    """An empty row group (pyarrow's write of an empty table) stopped the card on pyarrow's 'BatchSize must be
    greater than 0', naming no file; `datasets.load_dataset` cannot read such a shard either."""
    folder = tmp_path / "ds"
    write_dataset(pl.DataFrame({"id": ["a", "b"], "text": ["one text", "another"]}), folder, as_given=True)
    empty = folder / "data" / "test-00000-of-00001.parquet"
    pq.write_table(pq.read_table(splits_of(folder)["train"][0]).slice(0, 0), empty)
    with pytest.raises(ValueError, match=f"{empty}: its first row group holds no rows"):
        render_corpus_card(folder)
