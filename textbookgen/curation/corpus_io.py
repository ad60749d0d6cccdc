"""Read and write corpora as polars frames: parquet, jsonl/json (optionally .gz/.zst), files or folders,
whole (`read_corpus`) or a chunk at a time (`Corpus`, `CorpusWriter`), with the same ids, columns and errors."""

from __future__ import annotations

import gzip
import io
import json
import os
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from textbookgen.jsonl import decode_utf8, iter_jsonl_lines, open_compressed

SUFFIXES = (".parquet", ".jsonl", ".json", ".ndjson", ".jsonl.gz", ".json.gz", ".ndjson.gz")


def corpus_files(path: Path) -> list[Path]:
    """The data files of `path` (itself, or the corpus files under a folder, sorted)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES))
    if not files:
        raise ValueError(f"{path}: no corpus files ({', '.join(SUFFIXES)})")
    return files


def _read_jsonl(path: Path) -> pl.DataFrame:
    """JSON lines (or one JSON array), optionally gzipped: polars' fast reader, and on any failure a
    line-by-line parse whose error names the file and line."""
    with open_compressed(path) as f:
        raw = f.read()
    if raw.lstrip()[:1] == b"[":
        try:
            return pl.DataFrame(json.loads(decode_utf8(raw, path)), infer_schema_length=None)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: invalid JSON array (line {err.lineno}, column {err.colno}: {err.msg})") from None
    try:
        return pl.read_ndjson(io.BytesIO(raw), infer_schema_length=None)
    except Exception:  # re-parsed below, to say where and why
        rows = [row for _, row in iter_jsonl_lines(io.BytesIO(raw), str(path))]
        return pl.DataFrame(rows, infer_schema_length=None)


def read_records(path: Path) -> pl.DataFrame:
    """One parquet or jsonl/json file as it is; a file that is not one raises ValueError naming it."""
    try:
        return pl.read_parquet(path) if path.suffix == ".parquet" else _read_jsonl(path)
    except (pl.exceptions.PolarsError, EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise unreadable(path, err) from None


def unreadable(path: Path, err: BaseException) -> ValueError:
    """The one-line error for a file its reader failed on: its name, kind and the reader's first line."""
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return ValueError(f"{path}: not a readable {''.join(path.suffixes) or 'corpus'} file ({reason})")


def id_prefix(file: Path, root: Path) -> str:
    """The file's path under `root` without its suffixes ("a/part-0"), or its stem when `root` is the
    file: same-named files in different subfolders must not make the same ids."""
    rel = file.relative_to(root) if root.is_dir() else Path(file.name)
    return rel.with_name(rel.name.split(".")[0]).as_posix()


def _prepare(df: pl.DataFrame, file: Path, root: Path, first_row: int, text_column: str, id_column: str
             ) -> pl.DataFrame:
    """Rows `first_row`.. of one file as the corpus has them: "<file>:<row>" ids where the file has none,
    id and text as strings. Checks the text column (and leaves counting null texts to the caller)."""
    if text_column not in df.columns:
        raise ValueError(f"{file}: no {text_column!r} field (fields: {df.columns}); pass --text-column")
    if id_column not in df.columns:
        df = df.with_row_index(id_column, offset=first_row).with_columns(
            pl.format("{}:{}", pl.lit(id_prefix(file, root)), pl.col(id_column)).alias(id_column))
    return df.with_columns(pl.col(id_column).cast(pl.String), pl.col(text_column).cast(pl.String))


def _check_texts(file: Path, nulls: int, text_column: str) -> None:
    if nulls:
        raise ValueError(f"{file}: {nulls} row(s) with a null {text_column!r}")


def read_corpus(path: str | Path, text_column: str = "text", id_column: str = "id") -> pl.DataFrame:
    """All rows of a parquet/jsonl file or folder. Rows without `id_column` get "<file>:<row>" ids, where
    <file> is the path under the folder without suffixes (just the stem for a single file)."""
    if text_column == id_column:
        raise ValueError(f"the text column and the id column are both {text_column!r}; they must differ")
    frames = []
    for f in corpus_files(Path(path)):
        df = _prepare(read_records(f), f, Path(path), 0, text_column, id_column)
        _check_texts(f, df[text_column].null_count(), text_column)
        frames.append(df)
    return pl.concat(frames, how="diagonal_relaxed")


CHUNK_ROWS = 2_000  # rows per chunk of a streamed corpus: ~7 MB of 500-word texts (10,000-row batches of a
# 100k-row row group left ~200 MB more resident in arrow's allocator, measured; no faster)


class Corpus:
    """A corpus read a chunk at a time, in `read_corpus`'s row order and with its ids, types and errors,
    for steps whose memory must not grow with the texts. Parquet streams in record batches of
    `chunk_rows`; a jsonl/json file is parsed whole, one file at a time (its schema is inferred over all
    its rows, as `read_corpus` does), then cut into chunks."""

    def __init__(self, path: str | Path, text_column: str = "text", id_column: str = "id",
                 chunk_rows: int | None = None) -> None:
        if text_column == id_column:
            raise ValueError(f"the text column and the id column are both {text_column!r}; they must differ")
        self.path, self.text_column, self.id_column = Path(path), text_column, id_column
        self.files = corpus_files(self.path)
        self.chunk_rows = chunk_rows or CHUNK_ROWS
        self._parsed: dict[Path, pl.DataFrame] = {}  # jsonl files' columns (empty frames), seen when read

    def chunks(self, columns: Sequence[str] | None = None) -> Iterator[pl.DataFrame]:
        """Every row, a chunk at a time: the id and text columns plus those of `columns` that the file
        has (None: all its columns). A file with a null text raises after its last chunk."""
        for f in self.files:
            first, nulls = 0, 0
            for raw in self._raw_chunks(f, columns):
                df = _prepare(raw, f, self.path, first, self.text_column, self.id_column)
                first += df.height
                nulls += df[self.text_column].null_count()
                yield df if columns is None else df.select(self.id_column, self.text_column,
                                                           *(c for c in columns if c in df.columns))
            _check_texts(f, nulls, self.text_column)

    def schema(self) -> pl.Schema:
        """The columns and types of `read_corpus`'s frame (files' columns joined, types widened)."""
        empty = [_prepare(self._raw_schema(f), f, self.path, 0, self.text_column, self.id_column)
                 for f in self.files]
        return pl.concat(empty, how="diagonal_relaxed").schema

    def _raw_chunks(self, f: Path, columns: Sequence[str] | None) -> Iterator[pl.DataFrame]:
        if f.suffix != ".parquet":
            df = read_records(f)
            self._parsed[f] = df.clear()
            for start in range(0, max(df.height, 1), self.chunk_rows):
                yield df.slice(start, self.chunk_rows)
            return
        try:
            reader = pq.ParquetFile(f, pre_buffer=False, buffer_size=1 << 20)
            have = reader.schema_arrow.names
            wanted = None if columns is None else [c for c in have if c in
                                                   {self.id_column, self.text_column, *columns}]
            empty = True
            for batch in reader.iter_batches(batch_size=self.chunk_rows, columns=wanted):
                empty = False
                yield pl.from_arrow(batch)  # type: ignore[misc]
            if empty:
                yield self._raw_schema(f).select(wanted or have)
        except (OSError, pa.ArrowException, pl.exceptions.PolarsError) as err:
            raise unreadable(f, err) from None

    def _raw_schema(self, f: Path) -> pl.DataFrame:
        """The file's own columns as an empty frame: parquet metadata, or a jsonl file's parse (kept from
        its last reading, so a jsonl file is parsed once more only if it was never read)."""
        if f in self._parsed:
            return self._parsed[f]
        if f.suffix == ".parquet":
            try:
                return pl.DataFrame(schema=pl.read_parquet_schema(f))
            except pl.exceptions.PolarsError as err:
                raise unreadable(f, err) from None
        self._parsed[f] = read_records(f).clear()
        return self._parsed[f]


def check_output(path: str | Path, *inputs: str | Path) -> None:
    """Raise ValueError unless `path` can take a corpus: a .parquet or .jsonl file name, not a folder, and
    neither one of `inputs` nor inside one (writing it would overwrite or grow the input)."""
    path = Path(path)
    if path.suffix not in (".parquet", ".jsonl", ".ndjson"):
        raise ValueError(f"{path}: write .parquet or .jsonl")
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; give a .parquet or .jsonl file name")
    for src in map(Path, inputs):
        if path.resolve() == src.resolve() or src.resolve() in path.resolve().parents:
            raise ValueError(f"{path}: is the input {src} or inside it; write the output elsewhere")


class CorpusWriter:
    """`write_corpus` a chunk at a time, into a temporary file renamed over `path` only when complete;
    every chunk is first given `schema` (the whole corpus's columns and types, see `Corpus.schema`)."""

    def __init__(self, path: str | Path, schema: pl.Schema) -> None:
        check_output(path)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.empty = pl.DataFrame(schema=schema)
        fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(name)
        parquet = self.path.suffix == ".parquet"
        self.parquet = pq.ParquetWriter(self.tmp, self.empty.to_arrow().schema, compression="zstd") if parquet else None
        self.jsonl = None if parquet else self.tmp.open("wb")

    def write(self, chunk: pl.DataFrame) -> None:
        """Append rows; columns the chunk's file lacks are null, types widened as `read_corpus` widens them."""
        chunk = pl.concat([self.empty, chunk], how="diagonal_relaxed").cast(dict(self.empty.schema))
        if self.parquet is not None:
            self.parquet.write_table(chunk.to_arrow())
        else:
            chunk.write_ndjson(self.jsonl)

    def __enter__(self) -> CorpusWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        (self.parquet or self.jsonl).close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


def write_corpus(df: pl.DataFrame, path: str | Path) -> Path:
    """Write parquet (zstd) or jsonl by the suffix of `path`."""
    check_output(path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        df.write_parquet(path, compression="zstd")
    else:
        df.write_ndjson(path)
    return path
