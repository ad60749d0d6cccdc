"""Parquet files a build writes and reads a part at a time (prompts.parquet, documents.parquet, curated.parquet), so
its memory follows a row group, not the corpus, and the same rows give the same bytes (the file's hash keys the next
stage) however many parts they came in."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import polars as pl

#: Rows per row group: ~40 MB of text at 4 KB a document.
ROW_GROUP_ROWS = 10_000


def row_count(frame: pl.LazyFrame) -> int:
    """Rows of a scan (a parquet file's: read from its metadata, not its rows)."""
    return int(frame.select(pl.len()).collect().item())


def column_values(path: Path, column: str) -> Iterator[Any]:
    """One column of a parquet file, value by value, read a batch at a time (e.g. the documents' topic ids for
    the coverage, without the corpus in memory)."""
    with parquet_file(path) as f:
        for batch in f.iter_batches(columns=[column]):
            yield from batch.column(0).to_pylist()


def parquet_file(path: Path) -> Any:
    """A parquet file to read in batches, unbuffered ahead: pyarrow's default (`pre_buffer`) keeps what it has read
    until the file is closed (~0.3 of the file's size at 800K documents, growing with it), never a batch's worth."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)


class ParquetRows:
    """A parquet file written a frame at a time (zstd, no statistics), in row groups of ROW_GROUP_ROWS rows whatever
    the frames' sizes, so the same rows give the same bytes however they came (a window at a time, or whole), and
    memory holds one row group; into a temporary file renamed over `path` by `close`. (polars' `sink_parquet` holds
    about the whole file until it ends.)"""

    def __init__(self, path: Path, schema: Mapping[str, pl.DataType]) -> None:
        import pyarrow.parquet as pq

        self.path, self.tmp = path, path.with_name(f".{path.name}.tmp")
        self.schema = pl.DataFrame(schema=schema).to_arrow().schema
        self.writer = pq.ParquetWriter(self.tmp, self.schema, compression="zstd", write_statistics=False)
        self.held: list[pl.DataFrame] = []  # rows short of a row group
        self.rows = 0

    def add(self, frame: pl.DataFrame) -> None:
        self.rows += frame.height
        self.held.append(frame)
        held = pl.concat(self.held) if len(self.held) > 1 else frame
        full = held.height - held.height % ROW_GROUP_ROWS
        if full:
            self._write(held.head(full))
        self.held = [held.tail(held.height - full)] if held.height > full else []

    def close(self) -> None:
        """Write the rows left and put the file in place."""
        if self.held:
            self._write(pl.concat(self.held))
            self.held = []
        self.writer.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        """Drop the unfinished file."""
        self.writer.close()
        self.tmp.unlink(missing_ok=True)

    def _write(self, rows: pl.DataFrame) -> None:
        self.writer.write_table(rows.to_arrow().cast(self.schema), row_group_size=ROW_GROUP_ROWS)


def write_rows(frames: Iterable[pl.DataFrame], path: Path, schema: Mapping[str, pl.DataType]) -> Path:
    """`frames` as one parquet file (`ParquetRows`); nothing at `path` changes where one fails."""
    out = ParquetRows(path, schema)
    try:
        for frame in frames:
            out.add(frame)
        out.close()
    except BaseException:
        out.abort()
        raise
    return path


def rewrite_parquet(path: Path) -> Path:
    """A parquet file rewritten as `ParquetRows` writes it, read a row group's worth at a time: curated.parquet as
    curation wrote it out of core becomes what the build writes of a frame curated whole, so its hash (the dataset
    stage's key) does not depend on which way curation went."""
    with parquet_file(path) as f:
        batches = (pl.DataFrame(b) for b in f.iter_batches(batch_size=ROW_GROUP_ROWS))
        return write_rows(batches, path, pl.scan_parquet(path).collect_schema())
