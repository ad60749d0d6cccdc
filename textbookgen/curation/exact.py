"""Exact dedup: one document per normalised text (NFKC, case-folded, whitespace-collapsed).

The kept member of a group is the one with the highest quality_score, then the first occurrence in input
order, whatever the workers and shard sizes: ids are labels, not an order ("file:10" sorts before
"file:9" as a string, and an edited copy given a lower id would win over its original). Every dropped
doc is reported in `<workdir>/duplicates.parquet` (id, row, kept_id, kept_row, exact_key)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import polars as pl
import xxhash

from textbookgen.curation.base import ROW, StageStats, Step, input_rows, require_columns
from textbookgen.curation.normalize import normalize_exact

KEY_COLUMNS = ["_exact_hi", "_exact_lo"]
REPORT = "duplicates.parquet"


def exact_key(text: str) -> str:
    """128-bit xxh3 of the normalised text (collisions negligible at any corpus size)."""
    return xxhash.xxh3_128_hexdigest(normalize_exact(text).encode("utf-8"))


def exact_key_columns(texts: Iterable[str | None]) -> list[pl.Series]:
    """`exact_key` of each text as KEY_COLUMNS, two integers (16 bytes a doc, not a 32-character string);
    a null text (an error once its file is read to its end) gets 0."""
    keys = [0 if t is None else int(exact_key(t), 16) for t in texts]
    return [pl.Series(KEY_COLUMNS[0], [k >> 64 for k in keys], dtype=pl.UInt64),
            pl.Series(KEY_COLUMNS[1], [k & (2**64 - 1) for k in keys], dtype=pl.UInt64)]


def best_first(df: pl.DataFrame, order: str) -> pl.DataFrame:
    """Rows ordered best-first: highest `quality_score` (nulls and NaN last: no score, which polars would
    sort above every real one), then first in input order (the integer column `order`), a total order
    whatever order `df` comes in."""
    if "quality_score" in df.columns:
        score = pl.col("quality_score").cast(pl.Float64).fill_nan(None)
        return df.sort([score, pl.col(order)], descending=[True, False], nulls_last=True)
    return df.sort(order)


class ExactDedup(Step):
    """Keep the best member (quality, then input order) of each group of identical normalised texts."""

    name = "exact_dedup"

    def __init__(self, text_column: str = "text", id_column: str = "id") -> None:
        self.text_column, self.id_column = text_column, id_column

    def fingerprint(self) -> str:
        return f"{self.name} {self.text_column} {self.id_column}"

    def run(self, df: pl.DataFrame, workdir: Path | None, stats: StageStats) -> pl.DataFrame:
        require_columns(df, [self.text_column, self.id_column], self.name)
        keyed = df.select(self.id_column, input_rows(df).alias(ROW),
                          *(["quality_score"] if "quality_score" in df.columns else []),
                          *exact_key_columns(df[self.text_column]))
        keep = first_per_key(keyed)
        if workdir is not None:
            write_report(keyed, keep, self.id_column, workdir)
        stats.dropped["exact_duplicate"] = int((~keep).sum())
        return df.filter(keep)


def first_per_key(df: pl.DataFrame) -> np.ndarray:
    """Keep mask (in row order) of the best member (quality, then row order) of each group of equal keys."""
    kept = best_first(df.with_row_index("_row"), "_row").unique(KEY_COLUMNS, keep="first")
    keep = np.zeros(df.height, dtype=bool)
    keep[kept["_row"].to_numpy()] = True
    return keep


def write_report(df: pl.DataFrame, keep: np.ndarray, id_column: str, workdir: Path) -> Path:
    """`workdir/duplicates.parquet`: per dropped doc (in input order) its id and row (`input_rows`), those of
    the doc kept in its place, and their `exact_key`; ids keep their type."""
    df = df.with_columns(input_rows(df).alias(ROW))
    kept = df.filter(keep).select(*KEY_COLUMNS, pl.col(id_column).alias("kept_id"), pl.col(ROW).alias("kept_row"))
    dropped = df.filter(~keep).select(pl.col(id_column).alias("id"), pl.col(ROW).alias("row"), *KEY_COLUMNS)
    report = dropped.join(kept, on=KEY_COLUMNS, how="left", maintain_order="left")
    hexes = [f"{hi:016x}{lo:016x}" for hi, lo in zip(report[KEY_COLUMNS[0]], report[KEY_COLUMNS[1]], strict=True)]
    path = workdir / REPORT
    report.select("id", "row", "kept_id", "kept_row", pl.Series("exact_key", hexes, dtype=pl.String)).write_parquet(path)
    return path
