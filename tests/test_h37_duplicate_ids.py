"""The duplicate-id check in bounded memory (h37): `check_rows` looks for repeats among 64-bit hashes of the ids
and compares the ids themselves only where hashes repeat, so no query holds every id string (`is_duplicated` on
the strings held ~90 bytes a row: 2 GB at phi-1.5's 20M documents), a hash collision is not a duplicate, and a
real duplicate is reported as before."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from test_dataset import sample_documents

from textbookgen import dataset
from textbookgen.card import dataset_info
from textbookgen.dataset import check_rows, conform

#: A node of polars' streaming physical plan that holds its whole input: an in-memory fallback (blue) or a
#: potentially memory-intensive node (yellow), in the DOT that `show_graph(raw_output=True)` gives.
HOLDING_NODE = re.compile(r'\[label="((?:[^"\\]|\\.)*)",style=filled,fillcolor="0\.(?:0|16) 0\.3 1\.0"\]')
#: Marked so but holding no column whole: a morsel buffer between two branches, the caller's own (eager) frame.
PASSING = ("multiplexer", "in-memory-source")


def two_files(tmp_path: Path, docs: pl.DataFrame) -> list[Path]:
    """`docs` in two parquet files of several row groups each, as a curated corpus or a split's shards are."""
    half = docs.height // 2
    paths = [tmp_path / "part-0.parquet", tmp_path / "part-1.parquet"]
    docs.head(half).write_parquet(paths[0], row_group_size=20)
    docs.tail(docs.height - half).write_parquet(paths[1], row_group_size=20)
    assert all(pq.ParquetFile(p).metadata.num_row_groups >= 3 for p in paths)
    return paths


def test_a_duplicate_in_the_first_and_last_rows_of_two_files_is_found(tmp_path):
    """The first row's id again in the last row of the other file, rows and row groups apart: reported by
    `check_rows` over both files and by the card's `dataset_info` for the split, with the message of before."""
    docs = sample_documents(150, seed=3)
    first = docs["id"][0]
    docs = docs.with_columns(id=pl.when(pl.int_range(pl.len()) == docs.height - 1).then(pl.lit(first))
                             .otherwise(pl.col("id")))
    paths = two_files(tmp_path, docs)
    message = rf"column 'id' has 1 duplicated id\(s\), e.g. '{first}'"
    with pytest.raises(ValueError, match=message):
        check_rows(pl.scan_parquet(paths))
    with pytest.raises(ValueError, match=rf"split 'train' \({tmp_path}\): {message}"):
        dataset_info({"train": paths}, pq.read_schema(paths[0]))


def test_the_message_counts_distinct_duplicated_ids_and_names_the_first_in_row_order():
    table = pl.DataFrame({"id": ["u", "b", "x", "b", "a", "x", "x"], "text": list("1234567")})
    with pytest.raises(ValueError, match=r"^column 'id' has 2 duplicated id\(s\), e.g. 'b'$"):
        conform(table)
    assert check_rows(table.unique("id", keep="first", maintain_order=True).lazy())[0] == 4  # u, b, x, a


def test_a_hash_collision_is_not_reported_as_a_duplicate(monkeypatch):
    """Ids of one length given one hash: every id collides with every other, yet only equal ids are duplicates.
    The collision path runs (its ids compared), rather than the hash being trusted."""
    monkeypatch.setattr(dataset, "id_hash", lambda: pl.col("id").str.len_bytes().cast(pl.UInt64))
    compared: list[int] = []
    raise_on = dataset.raise_on_duplicate_ids
    monkeypatch.setattr(dataset, "raise_on_duplicate_ids",
                        lambda lf, hashes: compared.append(hashes.len()) or raise_on(lf, hashes))
    distinct = pl.DataFrame({"id": ["aa", "bb", "cc", "d", "e"], "text": list("vwxyz")})
    assert check_rows(distinct.lazy()) == (5, 5 + 8 + 4 * 5 + 4 * 5) and compared == [2]  # lengths 1 and 2 repeat
    with pytest.raises(ValueError, match=r"^column 'id' has 1 duplicated id\(s\), e.g. 'cc'$"):
        check_rows(pl.DataFrame({"id": ["aa", "cc", "bb", "cc"], "text": list("wxyz")}).lazy())


def test_no_query_of_the_check_holds_the_id_strings(tmp_path, monkeypatch):
    """Every node of check_rows' queries that holds its whole input (an in-memory fallback, a sort, a group-by)
    holds hashes, never the `id` column: `is_duplicated` on the ids was such a node, over every id string."""
    docs = sample_documents(120, seed=5)
    clean = two_files(tmp_path, docs)
    queries: list[pl.LazyFrame] = []
    collect = pl.LazyFrame.collect
    monkeypatch.setattr(pl.LazyFrame, "collect", lambda lf, *a, **kw: queries.append(lf) or collect(lf, *a, **kw))
    check_rows(pl.scan_parquet(clean))
    with pytest.raises(ValueError, match="duplicated id"):
        check_rows(pl.concat([docs, docs.tail(1)]).lazy())
    plans = [q.show_graph(engine="streaming", plan_stage="physical", raw_output=True) for q in queries]
    holding = [label for plan in plans for label in HOLDING_NODE.findall(plan) if not label.startswith(PASSING)]
    # a label may hide its input (`is_duplicated(...)`): each must name the hash column as what it holds
    assert holding and all(r'col(\"id_hash\")' in label for label in holding), holding


SORT = re.compile(r"\.sort\(|SORT BY")


def test_the_id_hashes_are_sorted_once(monkeypatch):
    """Every query `check_rows` collects, on a clean table and on one with a duplicate: one sort of the hashes
    in all (the optimized plan names each sort it will run)."""
    queries: list[pl.LazyFrame] = []
    collect = pl.LazyFrame.collect
    monkeypatch.setattr(pl.LazyFrame, "collect", lambda lf, *a, **kw: queries.append(lf) or collect(lf, *a, **kw))
    check_rows(pl.LazyFrame({"id": ["a", "b", "c"], "text": list("xyz")}))
    clean = [q.explain(engine="streaming") for q in queries]
    assert sum(len(SORT.findall(plan)) for plan in clean) == 1, clean
    queries.clear()
    with pytest.raises(ValueError, match=r"^column 'id' has 1 duplicated id\(s\), e.g. 'b'$"):
        check_rows(pl.LazyFrame({"id": ["a", "b", "c", "b"], "text": list("wxyz")}))
    assert sum(len(SORT.findall(q.explain(engine="streaming"))) for q in queries) == 1
