"""Truncated answers: documents the model stopped at max_tokens.

A section cut off mid-sentence, or a solution without its end, teaches a model to stop that way; Curator
treats a `length` finish as a failed answer. The engine writes `finish_reason` "length" for such answers
from every provider, and this step, first in the pipeline (a cut-off copy must not be the one a duplicate
cluster keeps), drops them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator

import polars as pl

from textbookgen.curation.base import RowStep, Verdict


class DropTruncated(RowStep):
    """Drop rows whose `finish_reason` is "length". A corpus with no `finish_reason` column (not written by
    the engine) passes whole, and the stats say so."""

    name = "truncated"
    reason = "cut_at_max_tokens"

    def judge(self, chunks: Iterable[pl.DataFrame], total: int | None = None) -> Iterator[Verdict]:
        for chunk in chunks:
            if "finish_reason" not in chunk.columns:
                yield Verdict(chunk, extra={"finish_reason_column": False})
                continue
            cut = (chunk["finish_reason"] == "length").fill_null(False)
            yield Verdict(chunk.filter(~cut), dropped=Counter({self.reason: int(cut.sum())}))

    def fingerprint(self) -> str:
        return self.name
