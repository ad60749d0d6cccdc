"""Write a documents table as a Hugging Face Hub dataset: `data/{split}-NNNNN-of-NNNNN.parquet` shards.

The layout is the one `datasets.push_to_hub` produces, so `datasets.load_dataset(folder)` and the Hub's
viewer find the splits without any loading script. The schema is fixed (the contract's documents
table) so every build of every recipe has the same columns, in the same order, with the same types.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path

import polars as pl

log = logging.getLogger(__name__)

#: The documents table, in file order. `text` first: it is what a reader of the viewer wants to see.
SCHEMA: dict[str, pl.DataType] = {
    "text": pl.String(),
    "id": pl.String(),
    "topic_path": pl.String(),
    "topic_id": pl.String(),
    "template": pl.String(),
    "template_hash": pl.String(),
    "audience": pl.String(),
    "style": pl.String(),
    "format": pl.String(),
    "seed_extract_id": pl.String(),
    "model": pl.String(),
    "finish_reason": pl.String(),
    "input_tokens": pl.Int64(),
    "output_tokens": pl.Int64(),
    "quality_score": pl.Float64(),
    "provenance": pl.String(),
}
#: Columns that must be present and non-null; the rest are filled with nulls when absent.
REQUIRED = ("id", "text")
#: `datasets` split names: word characters and dots (`train`, `test`, `train.clean`), never dashes,
#: because the dash separates the split from the shard numbers in `data/{split}-00000-of-00001.parquet`.
SPLIT_RE = re.compile(r"^\w+(\.\w+)*$")
SHARD_RE = re.compile(r"^(?P<split>\w+(?:\.\w+)*)-(?P<index>\d{5})-of-(?P<total>\d{5})\.parquet$")

DEFAULT_MAX_SHARD_BYTES = 500 * 1000**2  # `datasets`' max_shard_size default, measured the same way
DEFAULT_ROW_GROUP_BYTES = 64 * 1024**2  # small enough for the viewer's random access, big enough to scan
#: Seed of the 64-bit id hash that stands for each id in the duplicate check. Polars' `hash` is stable within
#: one polars version (its docs), all a check that hashes and compares within one process needs.
ID_HASH_SEED = 0x7E57_1D5
_ID_HASH = "id_hash"  # the name of `check_unique_ids`' one column
#: pyarrow's content-defined chunking options, `datasets`' defaults (`config.DEFAULT_CDC_OPTIONS`):
#: pages cut by a rolling hash between 256 KiB and 1 MiB, so an insertion moves no later page boundary.
CDC_OPTIONS = {"min_chunk_size": 256 * 1024, "max_chunk_size": 1024 * 1024, "norm_level": 0}


def validate_split(split: str) -> str:
    """Return `split` if `datasets` accepts it as a split name, else raise naming the rule."""
    if not isinstance(split, str) or not SPLIT_RE.match(split):
        raise ValueError(
            f"invalid split name {split!r}: use letters, digits, '_' and '.' only (e.g. 'train', 'test'); "
            "a dash would be read as the shard separator in data/{split}-NNNNN-of-NNNNN.parquet"
        )
    return split


def conform(df: pl.DataFrame, keep_extra: bool = False) -> pl.DataFrame:
    """Cast `df` to `SCHEMA` (column order and types), adding absent optional columns as nulls.

    Raises a ValueError naming the column for a missing required column, a null id/text, a duplicate
    id or a value that does not cast. Extra columns are dropped unless `keep_extra` (then appended).
    """
    check_rows(df.lazy())
    return _cast(df, keep_extra)


def check_rows(lf: pl.LazyFrame, as_given: bool = False) -> tuple[int, int]:
    """Check required columns, nulls and duplicate ids in streaming passes; return (rows, est. bytes).

    One pass measures every column and counts nulls; duplicate ids are looked for in a second one, over the id
    column alone (`check_unique_ids`), so its sort of hashes is never held beside the first pass's read buffers.

    The byte estimate is the Arrow size of the conformed table: string bytes plus 4-byte offsets, 8
    bytes per number, the measure `datasets` uses for `max_shard_size`. `as_given` (a table written
    with its own columns, e.g. a user's corpus) checks nothing and measures every column, other than
    string ones as 8 bytes per value.
    """
    schema = lf.collect_schema()
    required = () if as_given else REQUIRED
    missing = [c for c in required if c not in schema]
    if missing:
        raise ValueError(f"documents table lacks required column(s) {missing}; it has {schema.names()}")
    types = dict(schema) if as_given else {c: t for c, t in SCHEMA.items() if c in schema}
    sizes = [
        (pl.col(c).cast(pl.String).str.len_bytes().cast(pl.Int64).sum() + 4 * pl.len().cast(pl.Int64))
        if t == pl.String else 8 * pl.len().cast(pl.Int64)  # Int64: a UInt32 sum wraps past 4 GiB
        for c, t in types.items()
    ]
    stats = lf.select(
        pl.len().alias("rows"),
        pl.sum_horizontal(sizes).alias("bytes"),
        *[pl.col(c).null_count().alias(f"null_{c}") for c in required],
        *[pl.col(c).is_null().arg_max().alias(f"first_{c}") for c in required],
    ).collect(engine="streaming").row(0, named=True)
    for name in required:
        if stats[f"null_{name}"]:
            raise ValueError(
                f"column {name!r} has {stats[f'null_{name}']} null value(s), first at row {stats[f'first_{name}']}"
            )
    if not as_given:
        check_unique_ids(lf)
    return stats["rows"], int(stats["bytes"] or 0)


def check_unique_ids(lf: pl.LazyFrame) -> None:
    """Raise naming the duplicated ids of `lf`, if any, holding 8-byte hashes of the ids, never the ids.

    Duplicates are looked for among 64-bit hashes of the ids, sorted (`repeated`): measured 13-19 bytes a row
    past the reader's buffers, where `is_duplicated` on the id strings held a hash table of them (~90 bytes a
    row; `check_rows` at 20M ids of 30 characters: 2.2 GB peak before, 0.5-0.6 GB).
    Only the rows whose hash repeats are read again and their ids compared (`raise_on_duplicate_ids`), so a
    hash collision is never reported and a duplicate always is.
    """
    # the hash is a streaming select of its own: in one select with the sort, the sort's (non-streaming)
    # node would be handed the id strings to hash
    hashes = lf.select(id_hash().alias(_ID_HASH)).sort(_ID_HASH).select(repeated(pl.col(_ID_HASH)))
    repeats = hashes.collect(engine="streaming").item()
    if repeats.len():
        raise_on_duplicate_ids(lf, repeats)


def id_hash() -> pl.Expr:
    """Each id as a UInt64 hash: 8 bytes a row stand for a 20-40 character id in the duplicate check."""
    return pl.col("id").hash(ID_HASH_SEED)


def repeated(ordered: pl.Expr) -> pl.Expr:
    """The values of an `ordered` (sorted) column seen more than once, as one list. The caller sorts the frame, a
    node of its own: a `.sort()` here, used three times in one expression, is computed three times (no CSE)."""
    return ordered.filter(ordered == ordered.shift(1)).unique().implode()


def raise_on_duplicate_ids(lf: pl.LazyFrame, hashes: pl.Series) -> None:
    """Raise naming the duplicated ids among the rows of `lf` whose `id_hash` is in `hashes`, if any.

    Two ids of one hash are a collision (~n^2 / 2^65: 1 in 90,000 runs at 20M ids) unless the strings are
    equal: only those few rows' ids are read and compared. The example is the first duplicated id in row order.
    """
    candidates = lf.filter(id_hash().is_in(hashes.implode())).select("id")
    ids = candidates.collect(engine="streaming")["id"]
    duplicated = ids.filter(ids.is_duplicated())
    if duplicated.len():
        raise ValueError(f"column 'id' has {duplicated.n_unique()} duplicated id(s), e.g. {duplicated[0]!r}")


def _cast(df: pl.DataFrame, keep_extra: bool) -> pl.DataFrame:
    """`df` in `SCHEMA` order and types; absent optional columns as nulls; a bad cast names its column."""
    exprs = []
    for name, dtype in SCHEMA.items():
        if name not in df.columns:
            exprs.append(pl.lit(None, dtype=dtype).alias(name))
            continue
        try:
            df.select(pl.col(name).cast(dtype, strict=True))
        except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError) as err:
            raise ValueError(
                f"column {name!r} has type {df.schema[name]} which does not cast to {dtype}: {err}"
            ) from err
        exprs.append(pl.col(name).cast(dtype, strict=True))
    extra = [c for c in df.columns if c not in SCHEMA]
    if extra and keep_extra:
        exprs.extend(pl.col(c) for c in extra)
    elif extra:
        log.info("dropping columns outside the documents schema: %s", extra)
    return df.select(exprs)


def plan_shards(rows: int, est_bytes: int, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> int:
    """Number of shards so that none holds more than `max_shard_bytes` of in-memory (Arrow) data.

    Same measure as `datasets`' `max_shard_size`: files on disk are smaller (zstd compresses text ~3x).
    """
    if max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    return max(1, min(rows, math.ceil(est_bytes / max_shard_bytes))) if rows else 1


def write_dataset(
    df: pl.DataFrame | pl.LazyFrame,
    out_dir: str | Path,
    split: str = "train",
    *,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    row_group_bytes: int = DEFAULT_ROW_GROUP_BYTES,
    compression_level: int = 9,
    keep_extra: bool = False,
    content_defined_chunking: bool = True,
    as_given: bool = False,
) -> list[Path]:
    """Write `df` as zstd parquet shards `out_dir/data/{split}-NNNNN-of-NNNNN.parquet`; return their paths.

    A LazyFrame (e.g. `pl.scan_parquet("curated/*.parquet")`) is written one shard at a time, so a
    corpus larger than memory needs only one shard's worth of it. Shards of the same split left by an
    earlier write are removed afterwards, so a folder never mixes two builds. Each shard is written
    under a temporary name and renamed, so a crash leaves no half-written shard that `load_dataset`
    would pick up. An empty table is refused (the folder is left as it was): `load_dataset` cannot load
    a split with no rows.

    `content_defined_chunking` (default on) cuts data pages where the content says, so a rebuild with
    more documents repeats most pages byte for byte and the Hub's Xet storage uploads only new ones.

    `as_given` writes the table's own columns, in its order and types, with no id checks: a user's
    corpus (`textbookgen publish`), not the documents table of a build.
    """
    validate_split(split)
    lf = df.lazy()
    rows, est_bytes = check_rows(lf, as_given)
    data_dir = Path(out_dir) / "data"
    if not rows:
        raise ValueError(
            f"no rows to write as split {split!r} of {out_dir}: a split with no rows cannot be loaded "
            "(datasets.load_dataset fails with 'corresponds to no data'), so it is not written"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    n_shards = plan_shards(rows, est_bytes, max_shard_bytes)
    row_group_rows = max(1, int(row_group_bytes // max(est_bytes / rows, 1)))
    paths = []
    for i in range(n_shards):
        start, end = i * rows // n_shards, (i + 1) * rows // n_shards
        shard = lf.slice(start, end - start).collect()
        shard = shard if as_given else _cast(shard, keep_extra)
        path = data_dir / f"{split}-{i:05d}-of-{n_shards:05d}.parquet"
        write_shard_atomically(shard, path, compression_level, row_group_rows, content_defined_chunking)
        paths.append(path)
    remove_stale_shards(out_dir, split, paths)
    log.info("wrote %d rows of split %r in %d shard(s) to %s", rows, split, n_shards, data_dir)
    return paths


def write_shard_atomically(shard: pl.DataFrame, path: Path, compression_level: int, row_group_rows: int,
                            cdc: bool) -> None:
    """Write one shard under a temporary name, then rename it: a crash leaves no half-written shard that
    `load_dataset` would pick up."""
    tmp = path.with_name(f".{path.name}.tmp")
    _write_shard(shard, tmp, compression_level, row_group_rows, cdc)
    tmp.replace(path)
    log.debug("wrote %s (%d rows)", path.name, shard.height)


def remove_stale_shards(out_dir: str | Path, split: str, written: list[Path]) -> None:
    """Remove the split's shards an earlier write left (another shard count), so a folder never mixes builds."""
    for stale in existing_shards(out_dir, split):
        if stale not in written:
            stale.unlink()
            log.info("removed stale shard %s", stale)


def _write_shard(shard: pl.DataFrame, path: Path, compression_level: int, row_group_rows: int, cdc: bool) -> None:
    """Write one shard: with CDC through pyarrow (polars' writer has no such option) as `datasets`
    writes it (same chunk sizes, a page index, the options in the footer); without, through polars."""
    if not cdc:
        shard.write_parquet(path, compression="zstd", compression_level=compression_level, statistics=True,
                            row_group_size=row_group_rows)  # fmt: skip
        return
    import pyarrow.parquet as pq

    table = shard.to_arrow()
    with pq.ParquetWriter(path, table.schema, compression="zstd", compression_level=compression_level,
                          write_statistics=True, write_page_index=True,
                          use_content_defined_chunking=CDC_OPTIONS) as writer:  # fmt: skip
        writer.add_key_value_metadata({"content_defined_chunking": json.dumps(CDC_OPTIONS)})
        writer.write_table(table, row_group_size=row_group_rows)


def existing_shards(out_dir: str | Path, split: str | None = None) -> list[Path]:
    """Shards under `out_dir/data` (of one split, or all), sorted by name."""
    data_dir = Path(out_dir) / "data"
    if not data_dir.is_dir():
        return []
    found = []
    for path in sorted(data_dir.glob("*.parquet")):
        m = SHARD_RE.match(path.name)
        if m and (split is None or m["split"] == split):
            found.append(path)
    return found


def is_build_folder(folder: str | Path) -> bool:
    """A `textbookgen build` output folder (manifest.json and the .build/ state beside it), not a dataset: its
    parquet files are generation and curation files, and its dataset is `folder/dataset`."""
    folder = Path(folder)
    return (folder / "manifest.json").is_file() and (folder / ".build").is_dir() and not (folder / "data").is_dir()


#: Left in a folder while `hub.pull` downloads into it: some files may be missing until a pull completes it.
PULL_INCOMPLETE = ".pull-incomplete"


def check_complete(folder: str | Path, error: type[Exception] = ValueError) -> None:
    """Refuse a dataset folder that an interrupted pull left with files missing (it would train, curate or
    push as a smaller dataset, silently)."""
    if (Path(folder) / PULL_INCOMPLETE).exists():
        raise error(f"{folder}: an interrupted `textbookgen pull` left it with files missing; rerun the pull to "
                    "complete it")


def splits_of(out_dir: str | Path) -> dict[str, list[Path]]:
    """Split name -> its shards, read from the folder's file names; train, validation, test first. A folder
    an interrupted pull left is refused (`check_complete`)."""
    check_complete(out_dir)
    splits: dict[str, list[Path]] = {}
    for path in existing_shards(out_dir):
        splits.setdefault(SHARD_RE.match(path.name)["split"], []).append(path)
    order = {"train": 0, "validation": 1, "test": 2}
    return dict(sorted(splits.items(), key=lambda kv: (order.get(kv[0], 3), kv[0])))


def split_rows(splits: str | Path | Mapping[str, list[Path]]) -> dict[str, int]:
    """Rows of each split, from the shards' parquet footers (no data is read): of a written folder, or
    of a split -> shards mapping (`splits_of`'s, which a caller that has it need not list again)."""
    import pyarrow.parquet as pq

    shards = splits if isinstance(splits, Mapping) else splits_of(splits)
    return {s: sum(pq.ParquetFile(p).metadata.num_rows for p in paths) for s, paths in shards.items()}


def read_dataset(out_dir: str | Path, split: str | None = None) -> pl.DataFrame:
    """Read the shards of one split (or all splits, with a `split` column) back into one table."""
    splits = splits_of(out_dir)
    if not splits:
        raise FileNotFoundError(f"no data/{{split}}-NNNNN-of-NNNNN.parquet shards under {out_dir}")
    if split is not None:
        if split not in splits:
            raise KeyError(f"split {split!r} not in {out_dir} (splits: {sorted(splits)})")
        return pl.read_parquet(splits[split])
    return pl.concat(
        [pl.read_parquet(paths).with_columns(pl.lit(name).alias("split")) for name, paths in splits.items()]
    )
