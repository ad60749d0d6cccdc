"""The shape every curation step shares: a small class with one job, a DataFrame in, a DataFrame out,
and counts of what it dropped and why (datatrove's pipeline-step idea, over polars frames)."""

from __future__ import annotations

import os
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, TextIO, TypeVar

import polars as pl

T = TypeVar("T")
S = TypeVar("S")
R = TypeVar("R")

CHUNK_ROWS = 1000  # rows per task of a parallel step: ~2 s of filtering or decontamination on one core
# Linux forks: a worker inherits the step (a benchmark index of 100+ MB) copy-on-write, nothing pickled.
# Elsewhere fork is unsafe or absent, so each worker gets the step pickled once, by its initializer.
START_METHOD = "fork" if sys.platform == "linux" else "spawn"
LOG_EVERY_S = 60.0  # the least time between two progress lines where stderr is no terminal (the engine's too)


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


ROW = "\0input_row"  # each document's row in the pipeline's input, which `run_pipeline` adds and takes off


def input_rows(df: pl.DataFrame) -> pl.Series:
    """Each document's row in the input (from 0, files in read order), as the reports name it: `run_pipeline`
    numbers the input's rows, and a step run on its own frame numbers that frame's. Ids alone can repeat
    (shards numbered from 0 each) or be made up."""
    rows = df[ROW] if ROW in df.columns else pl.int_range(df.height, eager=True)
    return rows.cast(pl.Int64).alias("row")


def progress(items: Iterable[T], total: int, description: str, min_total: int = 5000) -> Iterator[T]:
    """Iterate with a rich progress bar on stderr for long runs on a terminal; without one (a log, nohup), a
    plain line at most once a minute (`logged_progress`), as the engine does, so a long stage is not silent."""
    if total < min_total:
        yield from items
    elif not sys.stderr.isatty():
        yield from logged_progress(items, total, description, sys.stderr)
    else:
        from rich.console import Console
        from rich.progress import track

        yield from track(items, total=total, description=description, console=Console(stderr=True), transient=True)


def logged_progress(items: Iterable[T], total: int, description: str, out: TextIO, every_s: float = LOG_EVERY_S,
                    clock: Callable[[], float] | None = None) -> Iterator[T]:
    """Yield `items`, writing `<description>: done/total (pct), elapsed` to `out` once `every_s` has passed since
    the start or the last line (checked as items come, so a line says what is done, never a guess). `clock`:
    seconds, time.monotonic unless given."""
    clock = clock or time.monotonic
    start = last = clock()
    for done, item in enumerate(items, 1):
        yield item
        now = clock()
        if now - last >= every_s and done < total:
            last = now
            out.write(f"{description}: {done:,}/{total:,} ({done / total:.0%}) after {_minutes(now - start)}\n")
            out.flush()


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def worker_count(setting: int) -> int:
    """A `workers` setting as the config means it (`minhash.workers`): 0 = one process per CPU core."""
    return setting or os.cpu_count() or 1


_WORKER_STATE: Any = None  # in a pool worker: the step whose chunks it runs (set by `_install`)


def _install(state: Any) -> None:
    global _WORKER_STATE
    _WORKER_STATE = state


def _run_chunk(fn: Callable[[Any, list[tuple]], list[R]], rows: list[tuple]) -> list[R]:
    return fn(_WORKER_STATE, rows)


def map_rows(fn: Callable[[S, list[tuple]], list[R]], state: S, columns: Sequence[pl.Series], workers: int = 1,
             chunk_size: int = CHUNK_ROWS, start_method: str = START_METHOD) -> Iterator[R]:
    """`fn(state, rows)` over chunks of the rows of `columns`, one result per row, in row order.

    datatrove's tasks on one machine: with `workers` > 1 (0 = one per core) and more than one chunk, the
    chunks run in a process pool whose initializer gives each worker `state` once (never per chunk).
    Rows become Python objects a chunk at a time, and at most two chunks per worker are in flight, so
    memory does not grow with the corpus. `fn` must be a module-level function (it is sent by name)."""
    height = columns[0].len() if columns else 0
    chunks = (list(zip(*(c.slice(start, chunk_size).to_list() for c in columns), strict=True))
              for start in range(0, height, chunk_size))
    workers = min(worker_count(workers), -(-height // chunk_size))
    if workers <= 1:
        for rows in chunks:
            yield from fn(state, rows)
        return
    pool = ProcessPoolExecutor(workers, mp_context=get_context(start_method), initializer=_install,
                               initargs=(state,))
    try:
        in_flight: deque[Future[list[R]]] = deque()
        for rows in chunks:
            in_flight.append(pool.submit(_run_chunk, fn, rows))
            if len(in_flight) >= 2 * workers:
                yield from in_flight.popleft().result()
        while in_flight:
            yield from in_flight.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def require_columns(df: pl.DataFrame, columns: list[str], where: str) -> None:
    """A clear error naming the missing column(s) rather than a polars ColumnNotFoundError later."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}; have {df.columns}")
