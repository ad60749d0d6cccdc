"""Write a documents table as a Hugging Face Hub dataset: `data/{split}-NNNNN-of-NNNNN.parquet` shards.

The layout is the one `datasets.push_to_hub` produces, so `datasets.load_dataset(folder)` and the Hub's
viewer find the splits without any loading script. The schema is fixed (the contract's documents
table) so every build of every recipe has the same columns, in the same order, with the same types.
"""

from __future__ import annotations

import logging
import math
import re
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
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ValueError(f"documents table lacks required column(s) {missing}; it has {df.columns}")
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
    out = df.select(exprs)
    for name in REQUIRED:
        nulls = out[name].null_count()
        if nulls:
            first = out.with_row_index().filter(pl.col(name).is_null())["index"][0]
            raise ValueError(f"column {name!r} has {nulls} null value(s), first at row {first}")
    dup = out.filter(pl.col("id").is_duplicated())
    if dup.height:
        raise ValueError(f"column 'id' has {dup['id'].n_unique()} duplicated id(s), e.g. {dup['id'][0]!r}")
    return out


def plan_shards(df: pl.DataFrame, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> int:
    """Number of shards so that none holds more than `max_shard_bytes` of in-memory (Arrow) data.

    Same measure as `datasets`' `max_shard_size`: files on disk are smaller (zstd compresses text ~3x).
    """
    if max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    return max(1, min(df.height, math.ceil(df.estimated_size() / max_shard_bytes))) if df.height else 1


def write_dataset(
    df: pl.DataFrame,
    out_dir: str | Path,
    split: str = "train",
    *,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    row_group_bytes: int = DEFAULT_ROW_GROUP_BYTES,
    compression_level: int = 9,
    keep_extra: bool = False,
) -> list[Path]:
    """Write `df` as zstd parquet shards `out_dir/data/{split}-NNNNN-of-NNNNN.parquet`; return their paths.

    Shards of the same split left by an earlier write are removed afterwards, so a folder never mixes
    two builds. Each shard is written under a temporary name and renamed, so a crash leaves no
    half-written shard that `load_dataset` would pick up.
    """
    validate_split(split)
    if isinstance(df, pl.LazyFrame):
        df = df.collect()
    table = conform(df, keep_extra=keep_extra)
    data_dir = Path(out_dir) / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    n_shards = plan_shards(table, max_shard_bytes)
    avg_row = table.estimated_size() / table.height if table.height else 1
    row_group_rows = max(1, int(row_group_bytes // max(avg_row, 1)))
    paths = []
    for i in range(n_shards):
        start, end = i * table.height // n_shards, (i + 1) * table.height // n_shards
        shard = table.slice(start, end - start)
        path = data_dir / f"{split}-{i:05d}-of-{n_shards:05d}.parquet"
        tmp = path.with_name(f".{path.name}.tmp")
        shard.write_parquet(
            tmp,
            compression="zstd",
            compression_level=compression_level,
            statistics=True,
            row_group_size=row_group_rows,
        )
        tmp.replace(path)
        paths.append(path)
    for stale in existing_shards(out_dir, split):
        if stale not in paths:
            stale.unlink()
            log.info("removed stale shard %s", stale)
    log.info("wrote %d rows of split %r in %d shard(s) to %s", table.height, split, n_shards, data_dir)
    return paths


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


def splits_of(out_dir: str | Path) -> dict[str, list[Path]]:
    """Split name -> its shards, read from the folder's file names; train, validation, test first."""
    splits: dict[str, list[Path]] = {}
    for path in existing_shards(out_dir):
        splits.setdefault(SHARD_RE.match(path.name)["split"], []).append(path)
    order = {"train": 0, "validation": 1, "test": 2}
    return dict(sorted(splits.items(), key=lambda kv: (order.get(kv[0], 3), kv[0])))


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
