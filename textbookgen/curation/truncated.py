"""Truncated answers: documents the model stopped at max_tokens.

A section cut off mid-sentence, or a solution without its end, teaches a model to stop that way; Curator
treats a `length` finish as a failed answer. The engine writes `finish_reason` "length" for such answers
from every provider, and this step, first in the pipeline (a cut-off copy must not be the one a duplicate
cluster keeps), drops them.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from textbookgen.curation.base import StageStats, Step


class DropTruncated(Step):
    """Drop rows whose `finish_reason` is "length". A corpus with no `finish_reason` column (not written by
    the engine) passes whole, and the stats say so."""

    name = "truncated"
    reason = "cut_at_max_tokens"

    def run(self, df: pl.DataFrame, workdir: Path | None, stats: StageStats) -> pl.DataFrame:
        if "finish_reason" not in df.columns:
            stats.extra["finish_reason_column"] = False
            return df
        cut = (df["finish_reason"] == "length").fill_null(False)
        stats.dropped[self.reason] = int(cut.sum())
        return df.filter(~cut)
