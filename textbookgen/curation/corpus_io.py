"""Read and write corpora as polars frames: parquet, jsonl/json (optionally .gz/.zst), files or folders."""

from __future__ import annotations

import gzip
import io
import json
import zlib
from pathlib import Path

import polars as pl

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
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"{path}: not a readable {''.join(path.suffixes) or 'corpus'} file ({reason})") from None


def id_prefix(file: Path, root: Path) -> str:
    """The file's path under `root` without its suffixes ("a/part-0"), or its stem when `root` is the
    file: same-named files in different subfolders must not make the same ids."""
    rel = file.relative_to(root) if root.is_dir() else Path(file.name)
    return rel.with_name(rel.name.split(".")[0]).as_posix()


def read_corpus(path: str | Path, text_column: str = "text", id_column: str = "id") -> pl.DataFrame:
    """All rows of a parquet/jsonl file or folder. Rows without `id_column` get "<file>:<row>" ids, where
    <file> is the path under the folder without suffixes (just the stem for a single file)."""
    if text_column == id_column:
        raise ValueError(f"the text column and the id column are both {text_column!r}; they must differ")
    frames = []
    for f in corpus_files(Path(path)):
        df = read_records(f)
        if text_column not in df.columns:
            raise ValueError(f"{f}: no {text_column!r} field (fields: {df.columns}); pass --text-column")
        if id_column not in df.columns:
            df = df.with_row_index(id_column).with_columns(
                pl.format("{}:{}", pl.lit(id_prefix(f, Path(path))), pl.col(id_column)).alias(id_column))
        nulls = df[text_column].null_count()
        if nulls:
            raise ValueError(f"{f}: {nulls} row(s) with a null {text_column!r}")
        frames.append(df.with_columns(pl.col(id_column).cast(pl.String), pl.col(text_column).cast(pl.String)))
    return pl.concat(frames, how="diagonal_relaxed")


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
