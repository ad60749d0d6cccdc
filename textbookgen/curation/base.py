"""The shape every curation step shares: a small class with one job, a DataFrame in, a DataFrame out,
and counts of what it dropped and why (datatrove's pipeline-step idea, over polars frames)."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import polars as pl

T = TypeVar("T")


@dataclass
class StageStats:
    """What one stage did: documents in, kept, and dropped by reason (plus stage-specific extras)."""

    stage: str
    n_in: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"in": self.n_in, "kept": self.kept, "dropped": dict(sorted(self.dropped.items())), **self.extra}


class Step:
    """One curation stage. Subclasses set `name` and implement `run`; `__call__` checks the counts add up."""

    name: str = "step"

    def run(self, df: pl.DataFrame, workdir: Path | None, stats: StageStats) -> pl.DataFrame:
        raise NotImplementedError

    def __call__(self, df: pl.DataFrame, workdir: Path | None = None) -> tuple[pl.DataFrame, StageStats]:
        stats = StageStats(self.name, n_in=df.height)
        if workdir is not None:
            workdir.mkdir(parents=True, exist_ok=True)
        out = self.run(df, workdir, stats)
        stats.kept = out.height
        if stats.n_in - stats.kept != sum(stats.dropped.values()):
            raise RuntimeError(f"{self.name}: dropped counts {dict(stats.dropped)} do not explain "
                                 f"{stats.n_in} -> {stats.kept}")
        return out, stats


def progress(items: Iterable[T], total: int, description: str, min_total: int = 5000) -> Iterator[T]:
    """Iterate with a rich progress bar on stderr for long runs on a terminal; silently otherwise."""
    if total < min_total or not sys.stderr.isatty():
        yield from items
        return
    from rich.console import Console
    from rich.progress import track

    yield from track(items, total=total, description=description, console=Console(stderr=True), transient=True)


def require_columns(df: pl.DataFrame, columns: list[str], where: str) -> None:
    """A clear error naming the missing column(s) rather than a polars ColumnNotFoundError later."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}; have {df.columns}")
