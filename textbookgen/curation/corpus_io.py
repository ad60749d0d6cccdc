"""Read and write corpora as polars frames: parquet, jsonl/json (optionally .gz/.zst), files or folders,
whole (`read_corpus`) or a chunk at a time (`Corpus`, `CorpusWriter`), with the same ids, columns and errors."""

from __future__ import annotations

import codecs
import io
import json
import os
import re
import uuid
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import IO

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq
import xxhash

from textbookgen.dataset import check_complete
from textbookgen.jsonl import iter_jsonl_lines, open_compressed
from textbookgen.parquet_rows import parquet_file

SUFFIXES = (".parquet", ".jsonl", ".json", ".ndjson", ".jsonl.gz", ".json.gz", ".ndjson.gz", ".jsonl.zst", ".json.zst",
            ".ndjson.zst")


STATS_SUFFIX = ".stats.json"  # what a curation command writes beside its output (commands.run_steps)
WORKDIR_MARK = ".textbookgen-workdir"  # in a curation command's --workdir (commands.run_steps): reports, not data


def mark_workdir(work: Path) -> None:
    """Create `work` marked as a command's reports, once the input was read without error (bad input leaves no
    folder): a folder of outputs read as a corpus leaves the `<output>.work` beside each out (`corpus_files`)."""
    work.mkdir(parents=True, exist_ok=True)
    (work / WORKDIR_MARK).touch()


def corpus_files(path: Path) -> list[Path]:
    """The data files of `path` (itself, or the corpus files under a folder, sorted). A curation command's
    reports beside its output (`<output>.stats.json`, and its workdir, `<output>.work` by default, marked by
    WORKDIR_MARK) are not data: a folder of curation outputs reads back."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_file():
        return [path]
    check_complete(path)
    workdirs = {mark.parent for mark in path.rglob(WORKDIR_MARK)} - {path}  # a workdir named itself is read
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES)
                   and not p.name.endswith(STATS_SUFFIX) and workdirs.isdisjoint(p.parents))
    if not files:
        raise ValueError(f"{path}: no corpus files ({', '.join(SUFFIXES)})")
    return files


GZIP_MAGIC, ZSTD_MAGIC = b"\x1f\x8b", b"\x28\xb5\x2f\xfd"
READ_ERRORS = (pl.exceptions.PolarsError, pa.ArrowException, OSError, EOFError, zlib.error)  # OSError: bad gzip,
# zstd or bz2 data (pyarrow's codecs raise it through io.BufferedReader)


def _open_jsonl(path: Path) -> IO[bytes]:
    """`path` decompressed by its suffix (.gz, .bz2), else by a gzip or zstd magic number (polars' reader
    took those whole files, so a `.jsonl.zst` file still reads), past a leading UTF-8 BOM (which polars
    and `json` reject; Windows tools write one). Gzip and zstd go through pyarrow's streaming codecs
    (gzip 2x faster than the gzip module, members concatenated alike)."""
    if path.suffix == ".bz2":
        f = open_compressed(path)
    else:
        with path.open("rb") as f:
            magic = f.read(4)
        codec = "gzip" if path.suffix == ".gz" or magic.startswith(GZIP_MAGIC) else "zstd" if magic == ZSTD_MAGIC \
            else None
        f = path.open("rb") if codec is None else \
            io.BufferedReader(pa.input_stream(str(path), compression=codec))  # type: ignore[arg-type]
    if f.peek(len(codecs.BOM_UTF8))[: len(codecs.BOM_UTF8)] == codecs.BOM_UTF8:  # type: ignore[attr-defined]
        f.read(len(codecs.BOM_UTF8))
    return f


def _is_array(path: Path) -> bool:
    """Whether the file is one JSON array (its first non-blank byte is "["), not JSON lines."""
    with _open_jsonl(path) as f:
        while block := f.read(1 << 16):
            if head := block.lstrip():
                return head[:1] == b"["
    return False


ARRAY_BLOCK = 1 << 20  # bytes of a JSON array file decoded at a time
_WHITESPACE = re.compile(r"[ \t\n\r]*")  # JSON's, as the json module skips it


class _ArrayText:
    """A JSON array file's text, decoded a block at a time: `buf` from `pos` on is what is not parsed yet,
    and `line`, `column` say where `buf` starts in the file (for errors)."""

    def __init__(self, f: IO[bytes], path: Path) -> None:
        self.f, self.path = f, path
        self.utf8 = codecs.getincrementaldecoder("utf-8")()
        self.buf, self.pos, self.eof = "", 0, False
        self.line, self.column, self.raw_lines = 1, 0, 0  # raw_lines: newlines in the bytes read so far

    def more(self) -> bool:
        """Drop what is parsed and add the next block of text; False at the end of the file (then `buf`
        and `pos` are as they were)."""
        raw, pending = self.f.read(ARRAY_BLOCK), self.utf8.getstate()[0]  # pending: a character cut in two
        self.eof = not raw
        try:
            text = self.utf8.decode(raw, final=self.eof)
        except UnicodeDecodeError as err:
            line = self.raw_lines + (pending + raw)[: err.start].count(b"\n") + 1
            raise ValueError(f"{self.path}:{line}: not valid UTF-8 ({err.reason})") from None
        if self.eof:
            return False
        self.raw_lines += raw.count(b"\n")
        done, self.buf = self.buf[: self.pos], self.buf[self.pos :] + text
        self.pos, newlines = 0, done.count("\n")
        self.line += newlines
        self.column = len(done) - done.rfind("\n") - 1 if newlines else self.column + len(done)
        return True

    def next_char(self) -> str:
        """The next character past whitespace ("" at the end of the file), `pos` on it."""
        while True:
            self.pos = _WHITESPACE.match(self.buf, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.buf) or not self.more():
                return self.buf[self.pos : self.pos + 1]

    def record(self, decoder: json.JSONDecoder, record: int) -> str:
        """The text of the JSON object next (the array's `record`th), `pos` past it. Decoding fails at
        the end of a block on a value cut in two (a string at its start, else near the end): it is decoded
        again with one more block."""
        self.next_char()
        while True:
            try:
                value, end = decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as err:
                cut = err.msg.startswith("Unterminated string") or len(self.buf) - err.pos < 16
                if cut and self.more():
                    continue
                raise self.error(err.pos, record, err.msg) from None
            if end == len(self.buf) and self.more():  # a number may go on in the next block
                continue
            if not isinstance(value, dict):
                raise self.error(self.pos, record, f"not an object ({type(value).__name__})")
            text, self.pos = self.buf[self.pos : end], end
            return text

    def error(self, pos: int, record: int, message: str) -> ValueError:
        newlines = self.buf.count("\n", 0, pos)
        column = pos - self.buf.rfind("\n", 0, pos) + (0 if newlines else self.column)
        return ValueError(f"{self.path}: invalid JSON array (line {self.line + newlines}, column {column}, "
                          f"record {record}: {message})")


def _array_lines(path: Path) -> Iterator[bytes]:
    """The records of a file that is one JSON array, as JSON lines (each its own text, line breaks made
    spaces: the same values), decoded a block at a time, never whole. Bad JSON or UTF-8, or a record that
    is not an object, raises naming the file, line and record."""
    decoder = json.JSONDecoder()
    with _open_jsonl(path) as f:
        text, record = _ArrayText(f, path), 0
        text.next_char()
        text.pos += 1  # the "[" (`_is_array`)
        if text.next_char() != "]":
            while True:
                record += 1
                yield text.record(decoder, record).replace("\n", " ").replace("\r", " ").encode() + b"\n"
                if (sep := text.next_char()) == "]":
                    break
                if sep != ",":
                    raise text.error(text.pos, record, "Expecting ',' delimiter")
                text.pos += 1
        text.pos += 1  # the "]"
        if text.next_char():
            raise text.error(text.pos, record, "Extra data")


def _lines(path: Path) -> Iterator[bytes]:
    """The file's JSON lines: its own, or its records if it is one JSON array."""
    if _is_array(path):
        yield from _array_lines(path)
        return
    with _open_jsonl(path) as f:
        yield from f


def _line_batches(path: Path, rows: int) -> Iterator[bytes]:
    """The file's lines (`_lines`), `rows` at a time, as one bytes each; all-blank batches are left out
    (polars cannot type one, and blank lines are no rows)."""
    lines = _lines(path)
    while batch := list(islice(lines, rows)):
        if any(line.strip() for line in batch):
            yield b"".join(batch)


def _ndjson(raw: bytes, schema: pl.Schema) -> pl.DataFrame | None:
    """JSON lines parsed by polars with `schema`, or None if it fails."""
    try:
        return pl.read_ndjson(io.BytesIO(raw), schema=schema)
    except Exception:  # polars' errors do not name the line: `_parse_whole` parses again, to say where
        return None


SAMPLES = ((pl.Null, None), (pl.Boolean, True), (pl.Int64, 0), (pl.Int128, 2**64), (pl.Float64, 0.5), (pl.String, ""))


def _sample(dtype: pl.DataType) -> object:
    """A JSON value that polars types as `dtype` (one of those its JSON inference gives)."""
    if isinstance(dtype, pl.Struct):
        return {f.name: _sample(f.dtype) for f in dtype.fields}
    if isinstance(dtype, pl.List):
        return [_sample(dtype.inner)]
    return next(value for kind, value in SAMPLES if dtype == kind)


def _has_struct(dtype: pl.DataType) -> bool:
    """Whether `dtype` is or holds a struct (a JSON object), whose field order `jsonl_schema` cannot fold."""
    return isinstance(dtype, pl.Struct) or isinstance(dtype, pl.List) and _has_struct(dtype.inner)


def _polars_source(path: Path) -> Path | bytes:
    """The file as polars takes it: its path (plain, gzip or zstd), or, bz2 being none of those, its bytes."""
    if path.suffix != ".bz2":
        return path
    with open_compressed(path) as f:
        return f.read()


def jsonl_schema(path: Path, rows: int) -> pl.Schema | None:
    """The columns and types polars gives the whole file, found `rows` lines at a time, and every line
    checked to parse with them as it would in the whole file. None: polars cannot read the file (a bad
    line, a value its type cannot take such as a bool among ints, types without a supertype), and
    `_parse_whole` reads it. A JSON array's records are its lines (`_lines`).

    Polars types each distinct row type once, folding them into a supertype in the order they first come.
    Each batch is typed after a row with the types so far, so the fold goes on as over the whole file: a
    row type seen in an earlier batch is folded again, which changes nothing unless rows hold objects
    (polars orders a struct's fields by the longer struct, on a tie by the first at the top level but the
    second one level down); those files get polars' own inference over the whole file, which maps it
    rather than reading it into memory (a JSON array, which polars cannot map, keeps the batches' order).
    A batch parsed with the types it was given needs no second parse unless later batches widened them
    (then only the batches up to the last widening are read again)."""
    schema, given = None, []  # given: the types each batch parsed with (None: it did not parse with them)
    try:
        for raw in _line_batches(path, rows):
            head = b"" if schema is None else json.dumps(_sample(pl.Struct(schema))).encode() + b"\n"
            try:
                schema = pl.read_ndjson(io.BytesIO(head + raw), infer_schema_length=None).schema
                given.append(schema)
            except Exception:  # a value its batch's types cannot take; the file's may (see `_ndjson`)
                schema = pl.scan_ndjson(io.BytesIO(head + raw), infer_schema_length=None).collect_schema()
                given.append(None)
        if schema is not None and any(_has_struct(t) for t in schema.values()) and not _is_array(path):
            schema = pl.scan_ndjson(_polars_source(path), infer_schema_length=None).collect_schema()
    except pl.exceptions.PolarsError:  # see `_ndjson`
        return None
    again = {i for i, s in enumerate(given) if s != schema}
    for i, raw in enumerate(islice(_line_batches(path, rows), max(again, default=-1) + 1)):
        if i in again and _ndjson(raw, schema) is None:  # type: ignore[arg-type]
            return None
    return schema


def _parse_whole(path: Path, text_column: str | None = None) -> pl.DataFrame:
    """A file polars cannot read, parsed in Python and held whole: its lines (a JSON array's records) checked
    a line at a time first (a bad line raises naming the file and line, without holding what came before),
    and with `text_column` each row's text (`_not_text`)."""
    for n, (_, record) in enumerate(iter_jsonl_lines(_lines(path), str(path)), 1):
        if text_column is not None and isinstance(record, dict):
            _not_text(record.get(text_column), path, n, text_column)
    return pl.DataFrame([row for _, row in iter_jsonl_lines(_lines(path), str(path))], infer_schema_length=None)


JSON_KINDS = {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object"}


def _not_text(value: object, path: Path, row: int, text_column: str) -> None:
    """Raise naming the row (from 1) if a JSON text is neither a string nor null: polars types a field of
    strings and other values as text, so 123 would become "123" and a list its JSON."""
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{path}: row {row}: {text_column!r} is {JSON_KINDS.get(type(value), 'no string')} "
                         f"({json.dumps(value)[:40]}), not text; fix or drop the row, or pass --text-column "
                         "naming the text field")


# a line longer than a block fails `_check_texts`' screen, and is checked in Python
READ_OPTIONS = pa_json.ReadOptions(block_size=1 << 22, use_threads=False)


def _check_texts(raw: bytes, path: Path, text_column: str, first_row: int) -> None:
    """`_not_text` over a batch of JSON lines whose rows before it were `first_row`: pyarrow's reader, strict
    about the one field, screens the batch, and only a batch it rejects is read again in Python."""
    options = pa_json.ParseOptions(explicit_schema=pa.schema([(text_column, pa.string())]),
                                   unexpected_field_behavior="ignore")
    try:
        pa_json.read_json(io.BytesIO(raw), read_options=READ_OPTIONS, parse_options=options)
        return
    except pa.ArrowInvalid:  # a text that is no string, or JSON pyarrow is stricter about than polars
        pass
    lines = (line for line in raw.splitlines() if line.strip())
    for row, line in enumerate(lines, first_row + 1):
        _not_text(json.loads(line).get(text_column), path, row, text_column)


def jsonl_frames(path: Path, rows: int, schema: pl.Schema | None, text_column: str | None = None
                 ) -> Iterator[pl.DataFrame]:
    """The file's rows, at most `rows` at a time, typed by `schema` (`jsonl_schema`'s); with None, parsed
    whole by `_parse_whole` and then cut (at least one frame, maybe empty). With `text_column`, a row whose
    text is a JSON value other than a string raises, naming it."""
    if schema is None:
        df = _parse_whole(path, text_column)
        for start in range(0, max(df.height, 1), rows):
            yield df.slice(start, rows)
        return
    first_row = 0
    for raw in _line_batches(path, rows):
        if text_column is not None and schema.get(text_column) == pl.String:
            _check_texts(raw, path, text_column, first_row)
        df = pl.read_ndjson(io.BytesIO(raw), schema=schema)
        first_row += df.height
        yield df


@contextmanager
def _named(path: Path) -> Iterator[None]:
    """Raise a reader's failure on `path` as `unreadable`'s one-line error."""
    try:
        yield
    except READ_ERRORS as err:
        raise unreadable(path, err) from None


def read_records(path: Path, text_column: str | None = None) -> pl.DataFrame:
    """One parquet or jsonl/json file as it is; a file that is not one raises ValueError naming it. JSON
    lines are parsed a batch at a time (never the file's bytes and its frame at once); with `text_column`,
    a row whose text is a JSON value other than a string raises, naming it."""
    with _named(path):
        if path.suffix == ".parquet":
            return pl.read_parquet(path)
        return pl.concat(jsonl_frames(path, CHUNK_ROWS, jsonl_schema(path, CHUNK_ROWS), text_column))


def unreadable(path: Path, err: BaseException) -> ValueError:
    """The one-line error for a file its reader failed on: its name, kind and the reader's first line."""
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return ValueError(f"{path}: not a readable {''.join(path.suffixes) or 'corpus'} file ({reason})")


def id_prefix(file: Path, root: Path) -> str:
    """The file's path under `root` without its suffixes ("a/part-0"), or its stem when `root` is the
    file: same-named files in different subfolders must not make the same ids."""
    rel = file.relative_to(root) if root.is_dir() else Path(file.name)
    return rel.with_name(rel.name.split(".")[0]).as_posix()


def _no_text_field(file: Path, fields: Sequence[str], text_column: str) -> ValueError:
    return ValueError(f"{file}: no {text_column!r} field (fields: {list(fields)}); pass --text-column")


def _is_empty(df: pl.DataFrame) -> bool:
    """Whether a file's frame is that of an empty (or all-blank) JSON lines file: no rows and no fields.
    Such a file is a shard with no rows, as an empty parquet file is, not one without the text field."""
    return df.width == 0 and df.height == 0


def _no_documents(path: Path) -> ValueError:
    files = "every corpus file is" if path.is_dir() else "the file is"
    return ValueError(f"{path}: no documents ({files} empty or blank)")


def _prepare(df: pl.DataFrame, file: Path, root: Path, first_row: int, text_column: str, id_column: str
             ) -> pl.DataFrame:
    """Rows `first_row`.. of one file as the corpus has them: "<file>:<row>" ids where the file has none
    (its own ids keep their type), texts as strings. Checks the text and id columns' types (and leaves
    counting null texts and ids to the caller)."""
    if text_column not in df.columns:
        raise _no_text_field(file, df.columns, text_column)
    if id_column not in df.columns:
        df = df.with_row_index(id_column, offset=first_row).with_columns(
            pl.format("{}:{}", pl.lit(id_prefix(file, root)), pl.col(id_column)).alias(id_column))
    elif df.schema[id_column].is_nested():
        raise ValueError(f"{file}: column {id_column!r} holds {df.schema[id_column]} values, not ids; pass --id-column")
    dtype = df.schema[text_column]
    if not (dtype in (pl.String, pl.Null) or isinstance(dtype, pl.Categorical | pl.Enum)):
        texts = df[text_column]
        value = texts.drop_nulls().head(1).to_list()  # a Python value: a list cell's Series repr spans lines
        shown = f" (row {first_row + int(texts.is_not_null().arg_true()[0]) + 1}: {value[0]!r:.40})" if value else ""
        raise ValueError(f"{file}: column {text_column!r} holds {dtype} values, not text{shown}; pass --text-column "
                         "naming the text field")
    return df.with_columns(pl.col(text_column).cast(pl.String))


class _Nulls:
    """Null texts and null ids of one file, counted a chunk at a time, with the row (from 1) of the first of each."""

    def __init__(self) -> None:
        self.rows = 0
        self.texts, self.ids = 0, 0
        self.first_text: int | None = None
        self.first_id: int | None = None

    def add(self, texts: pl.Series, ids: pl.Series) -> None:
        if texts.null_count() and self.first_text is None:
            self.first_text = self.rows + int(texts.is_null().arg_true()[0]) + 1
        if ids.null_count() and self.first_id is None:
            self.first_id = self.rows + int(ids.is_null().arg_true()[0]) + 1
        self.texts += texts.null_count()
        self.ids += ids.null_count()
        self.rows += len(texts)

    def check(self, file: Path, text_column: str, id_column: str) -> None:
        """Refuse a file with null texts or null ids: near dedup would take null ids for duplicates, and a
        judge's journal keys its rows by id."""
        if self.texts:
            raise ValueError(f"{file}: {self.texts} row(s) with a null {text_column!r} (the first: row "
                             f"{self.first_text}); drop those rows or give them a text, or pass --text-column "
                             "if the text is in another field")
        if self.ids:
            raise ValueError(f"{file}: {self.ids} row(s) with a null {id_column!r} (the first: row {self.first_id}); "
                             "give every row an id, or pass --id-column naming a field the file lacks to have "
                             "<file>:<row> ids made up")


def read_corpus(path: str | Path, text_column: str = "text", id_column: str = "id") -> pl.DataFrame:
    """All rows of a parquet/jsonl file or folder. Rows without `id_column` get "<file>:<row>" ids, where
    <file> is the path under the folder without suffixes (just the stem for a single file)."""
    if text_column == id_column:
        raise ValueError(f"the text column and the id column are both {text_column!r}; they must differ")
    frames = []
    for f in corpus_files(Path(path)):
        raw = read_records(f, text_column)
        if _is_empty(raw):
            continue
        df = _prepare(raw, f, Path(path), 0, text_column, id_column)
        nulls = _Nulls()
        nulls.add(df[text_column], df[id_column])
        nulls.check(f, text_column, id_column)
        frames.append(df)
    if not frames:
        raise _no_documents(Path(path))
    return pl.concat(frames, how="diagonal_relaxed")


CHUNK_ROWS = 2_000  # rows per chunk of a streamed corpus: ~7 MB of 500-word texts (10,000-row batches of a
# 100k-row row group left ~200 MB more resident in arrow's allocator, measured; no faster)


class Corpus:
    """A corpus read a chunk at a time, in `read_corpus`'s row order and with its ids, types and errors,
    for steps whose memory must not grow with the texts. Parquet streams in record batches of
    `chunk_rows`, JSON lines (and a JSON array's records) in batches of `chunk_rows`, typed as `read_corpus`
    types the whole file (`jsonl_schema`, found once per file by a first pass). Lines polars cannot read
    are parsed whole, one file at a time, then cut into chunks."""

    def __init__(self, path: str | Path, text_column: str = "text", id_column: str = "id",
                 chunk_rows: int | None = None) -> None:
        if text_column == id_column:
            raise ValueError(f"the text column and the id column are both {text_column!r}; they must differ")
        self.path, self.text_column, self.id_column = Path(path), text_column, id_column
        self.files = corpus_files(self.path)
        self.chunk_rows = chunk_rows or CHUNK_ROWS
        self._schemas: dict[Path, pl.Schema | None] = {}  # jsonl files' `jsonl_schema`s, found when first read
        self._parsed: dict[Path, pl.DataFrame] = {}  # columns (empty frames) of those parsed whole, seen when read

    def chunks(self, columns: Sequence[str] | None = None) -> Iterator[pl.DataFrame]:
        """Every row, a chunk at a time: the id and text columns plus those of `columns` that the file
        has (None: all its columns). A file with a null text or id raises after its last chunk, and no chunk
        from its first null on is given (a step that reads the texts would fail on a null less clearly);
        an empty JSON lines file gives none."""
        return (df for _, _, df in self.located_chunks(columns))

    def located_chunks(self, columns: Sequence[str] | None = None) -> Iterator[tuple[Path, int, pl.DataFrame]]:
        """`chunks`, each with its file and the place (from 0) of its first row in that file: for an error that
        names where a chunk came from."""
        documents = False
        for f in self.files:
            first, nulls = 0, _Nulls()
            for raw in self._raw_chunks(f, columns):
                if _is_empty(raw):
                    continue
                documents = True
                start = first
                df = _prepare(raw, f, self.path, start, self.text_column, self.id_column)
                first += df.height
                nulls.add(df[self.text_column], df[self.id_column])
                if nulls.texts or nulls.ids:  # the rest of the file is only counted, for `nulls.check`'s error
                    continue
                yield f, start, (df if columns is None else df.select(self.id_column, self.text_column,
                                                                      *(c for c in columns if c in df.columns)))
            nulls.check(f, self.text_column, self.id_column)
        if not documents:
            raise _no_documents(self.path)

    def schema(self) -> pl.Schema:
        """The columns and types of `read_corpus`'s frame (files' columns joined, types widened)."""
        empty = [self._prepared(raw, f) for f in self.files if not _is_empty(raw := self._raw_schema(f))]
        if not empty:
            raise _no_documents(self.path)
        return pl.concat(empty, how="diagonal_relaxed").schema

    def _prepared(self, empty: pl.DataFrame, f: Path) -> pl.DataFrame:
        """`_prepare` of a file's columns; where their types are refused, the error `_prepare` gives on the
        file's rows, which names the first bad value (the columns alone cannot)."""
        try:
            return _prepare(empty, f, self.path, 0, self.text_column, self.id_column)
        except ValueError:
            first = 0
            for raw in self._raw_chunks(f, None):
                if not _is_empty(raw):
                    first += _prepare(raw, f, self.path, first, self.text_column, self.id_column).height
            raise

    def _raw_chunks(self, f: Path, columns: Sequence[str] | None) -> Iterator[pl.DataFrame]:
        if f.suffix != ".parquet":
            with _named(f):
                for df in jsonl_frames(f, self.chunk_rows, self._jsonl_schema(f), self.text_column):
                    self._parsed.setdefault(f, df.clear())
                    yield df
            return
        try:
            reader = parquet_file(f)
            have = reader.schema_arrow.names
            if self.text_column not in have:  # before the columns are pruned, to name those it has
                raise _no_text_field(f, have, self.text_column)
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

    def _jsonl_schema(self, f: Path) -> pl.Schema | None:
        if f not in self._schemas:
            with _named(f):
                self._schemas[f] = jsonl_schema(f, self.chunk_rows)
        return self._schemas[f]

    def _raw_schema(self, f: Path) -> pl.DataFrame:
        """The file's own columns as an empty frame: parquet metadata, a jsonl file's `jsonl_schema`, or
        the parse of one read whole (kept from its last reading, so parsed once more only if never read)."""
        if f in self._parsed:
            return self._parsed[f]
        if f.suffix == ".parquet":
            try:
                return pl.DataFrame(schema=pl.read_parquet_schema(f))
            except pl.exceptions.PolarsError as err:
                raise unreadable(f, err) from None
        schema = self._jsonl_schema(f)
        self._parsed[f] = pl.DataFrame(schema=schema) if schema is not None else read_records(f).clear()
        return self._parsed[f]


def new_path(folder: Path, prefix: str, suffix: str = "", directory: bool = False) -> Path:
    """A new empty file (or folder) of a unique name in `folder`, with the mode any new one gets (the
    umask applied), where tempfile's mkstemp and mkdtemp give 0600 and 0700: an output or a store folder
    renamed from it is then as readable as every other file written (0644 under the usual umask 022)."""
    path = folder / f"{prefix}{uuid.uuid4().hex}{suffix}"
    if directory:
        path.mkdir()
    else:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    return path


OUTPUT_SUFFIXES = (".parquet", ".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz", ".jsonl.zst", ".ndjson.zst")
CODECS = {".gz": "gzip", ".zst": "zstd"}  # an output's compression, by its last suffix


def check_output(path: str | Path, *inputs: str | Path) -> None:
    """Raise ValueError unless `path` can take a corpus: a file name of OUTPUT_SUFFIXES, not a folder, and
    neither one of `inputs` nor inside one (writing it would overwrite or grow the input)."""
    path = Path(path)
    if not path.name.endswith(OUTPUT_SUFFIXES):
        raise ValueError(f"{path}: write .parquet or .jsonl (.jsonl.gz and .jsonl.zst compress it)")
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; give a .parquet or .jsonl file name")
    for src in map(Path, inputs):
        if path.resolve() == src.resolve() or src.resolve() in path.resolve().parents:
            raise ValueError(f"{path}: is the input {src} or inside it; write the output elsewhere")


def typed(chunk: pl.DataFrame, schema: pl.Schema) -> pl.DataFrame:
    """`chunk` with the columns and types of `schema` (`Corpus.schema`'s): those its file lacks are null,
    types widened as `read_corpus` widens them."""
    return pl.concat([pl.DataFrame(schema=schema), chunk], how="diagonal_relaxed").cast(dict(schema))


def _jsonl_sink(tmp: Path, path: Path) -> IO[bytes]:
    """`tmp` opened to take JSON lines, compressed as `path`'s suffix says (.gz, .zst) by pyarrow's
    streaming codecs, which read them back (`_open_jsonl`)."""
    codec = CODECS.get(path.suffix)
    return tmp.open("wb") if codec is None else pa.output_stream(str(tmp), compression=codec)  # type: ignore[return-value]


class CorpusWriter:
    """`write_corpus` a chunk at a time, into a temporary file renamed over `path` only when complete;
    every chunk is first given `schema` (the whole corpus's columns and types, see `Corpus.schema`)."""

    def __init__(self, path: str | Path, schema: pl.Schema) -> None:
        check_output(path)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.empty = pl.DataFrame(schema=schema)
        self.tmp = new_path(self.path.parent, f".{self.path.name}.", ".tmp")
        parquet = self.path.suffix == ".parquet"
        self.parquet = pq.ParquetWriter(self.tmp, self.empty.to_arrow().schema, compression="zstd") if parquet else None
        self.jsonl = None if parquet else _jsonl_sink(self.tmp, self.path)

    @classmethod
    def to(cls, output: str | Path | RowsKept, schema: pl.Schema) -> CorpusWriter | RowsKept:
        """Where an out-of-core path writes its kept rows: a writer of the file `output`, or `output` itself where
        it is a `RowsKept`."""
        return output if isinstance(output, RowsKept) else cls(output, schema)

    def write(self, chunk: pl.DataFrame) -> None:
        """Append rows; columns the chunk's file lacks are null, types widened as `read_corpus` widens them."""
        chunk = typed(chunk, self.empty.schema)
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


class RowsKept:
    """An output that keeps which rows were written, not the rows: a bool by row number (one byte a row), set from the
    column `column` (a mixed run's carried ROW, `stream.rows_out`) of every chunk. A group of a mixed run whose
    output is a subset of its input's rows (`groups.run_groups`) ends here instead of in a copy of the corpus."""

    def __init__(self, column: str) -> None:
        self.column = column
        self.kept = np.zeros(0, dtype=bool)  # rows past its end: not written

    def write(self, chunk: pl.DataFrame) -> None:
        rows = chunk[self.column].to_numpy()
        if rows.size and (top := int(rows.max()) + 1) > len(self.kept):
            grown = np.zeros(max(top, 2 * len(self.kept)), dtype=bool)
            grown[: len(self.kept)] = self.kept
            self.kept = grown
        self.kept[rows] = True

    def __enter__(self) -> RowsKept:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        pass


def write_corpus(df: pl.DataFrame, path: str | Path) -> Path:
    """Write parquet (zstd) or jsonl by the suffix of `path`, into a temporary file renamed over `path` when
    complete: an interrupted write leaves an earlier output as it was, not cut short."""
    check_output(path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_path(path.parent, f".{path.name}.", ".tmp")
    try:
        if path.suffix == ".parquet":
            df.write_parquet(tmp, compression="zstd")
        else:
            with _jsonl_sink(tmp, path) as f:
                df.write_ndjson(f)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path


def file_digest(path: str | Path) -> str:
    """xxh3 of a file's bytes, read 16 MiB at a time (memory stays flat): a file rewritten in place is told apart."""
    digest = xxhash.xxh3_128()
    with Path(path).open("rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()
