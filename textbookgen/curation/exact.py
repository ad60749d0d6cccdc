"""Exact dedup: one document per normalised text (NFKC, case-folded, whitespace-collapsed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import xxhash

from textbookgen.curation.base import StageStats, Step, require_columns
from textbookgen.curation.normalize import normalize_exact


def exact_key(text: str) -> str:
    """128-bit xxh3 of the normalised text (collisions negligible at any corpus size)."""
    return xxhash.xxh3_128_hexdigest(normalize_exact(text).encode("utf-8"))


def best_first(df: pl.DataFrame, id_column: str) -> pl.DataFrame:
    """Rows ordered best-first: highest `quality_score` (nulls last), then lowest id."""
    if "quality_score" in df.columns:
        return df.sort(["quality_score", id_column], descending=[True, False], nulls_last=True)
    return df.sort(id_column)


class ExactDedup(Step):
    """Keep the best member (quality, then id) of each group of identical normalised texts."""

    name = "exact_dedup"

    def __init__(self, text_column: str = "text", id_column: str = "id") -> None:
        self.text_column, self.id_column = text_column, id_column

    def run(self, df: pl.DataFrame, workdir: Path | None, stats: StageStats) -> pl.DataFrame:
        require_columns(df, [self.text_column, self.id_column], self.name)
        keyed = df.with_columns(
            pl.col(self.text_column).map_elements(exact_key, return_dtype=pl.String).alias("_exact")
        )
        kept = df.filter(first_per_key(keyed, ["_exact"], self.id_column))
        stats.dropped["exact_duplicate"] = df.height - kept.height
        return kept


def first_per_key(df: pl.DataFrame, key_columns: list[str], id_column: str) -> np.ndarray:
    """Keep mask (in row order) of the best member (quality, then id) of each group of equal keys."""
    kept = best_first(df.with_row_index("_first_row"), id_column).unique(key_columns, keep="first")
    keep = np.zeros(df.height, dtype=bool)
    keep[kept["_first_row"].to_numpy()] = True
    return keep
