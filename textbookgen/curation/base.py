"""The shape every curation step shares: a small class with one job, a DataFrame in, a DataFrame out,
and counts of what it dropped and why (datatrove's pipeline-step idea, over polars frames)."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import chain, islice
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

    def check(self) -> None:
        """Raise if the drop reasons do not account for every document that went."""
        if self.n_in - self.kept != sum(self.dropped.values()):
            raise RuntimeError(f"{self.stage}: dropped counts {dict(self.dropped)} do not explain "
                               f"{self.n_in} -> {self.kept}")


class Step:
    """One curation stage. Subclasses set `name` and implement `run`; `__call__` checks the counts add up."""

    name: str = "step"

    def run(self, df: pl.DataFrame, workdir: Path | None, stats: StageStats) -> pl.DataFrame:
        raise NotImplementedError

    def fingerprint(self) -> str | None:
        """What decides the verdicts (or scores) besides the rows and the code (settings, benchmark items, a
        model), so that a rerun uses those a killed run stored only where they still hold; None: never stored (a
        killed run's chunks, and a mixed run's group of the step and those after it, are run again), as for a step
        whose verdicts depend on more than its settings (an incremental MinHash's index). A step of one's own
        should return its settings: its class's source counts already (`stream.code_digest`), but not them."""
        return None

    def __call__(self, df: pl.DataFrame, workdir: Path | None = None) -> tuple[pl.DataFrame, StageStats]:
        stats = StageStats(self.name, n_in=df.height)
        if workdir is not None:
            workdir.mkdir(parents=True, exist_ok=True)
        out = self.run(df, workdir, stats)
        stats.kept = out.height
        stats.check()
        return out, stats


@dataclass
class Verdict:
    """What a `RowStep` made of one chunk: the rows it kept, the chunk's rows of its report (None: it writes
    none), its drop counts by reason, and extras (ints are summed over the chunks, other values are set)."""

    kept: pl.DataFrame
    report: pl.DataFrame | None = None
    dropped: Counter = field(default_factory=Counter)
    extra: dict[str, Any] = field(default_factory=dict)

    def add_to(self, stats: StageStats) -> None:
        stats.dropped.update(self.dropped)
        add_extra(stats.extra, self.extra)


def add_extra(total: dict[str, Any], extra: dict[str, Any]) -> None:
    """One chunk's extras into the run's: counts (ints, not bools) summed, other values set."""
    for key, value in extra.items():
        total[key] = total.get(key, 0) + value if type(value) is int else value


class RowStep(Step):
    """A step that keeps or drops each document on its own (filters, decontamination), so it can take a corpus
    a chunk at a time (`judge`; `stream.stream_out_of_core` runs it so): memory then grows with a chunk, not
    the corpus, and a killed run can keep the chunks it finished. `run` judges one chunk, the whole frame, so
    both give the same rows, stats and reports."""

    def judge(self, chunks: Iterable[pl.DataFrame], total: int | None = None) -> Iterator[Verdict]:
        """One verdict per chunk, in order (a chunk of no rows too). `total`: the rows of all the chunks, where
        known (for progress)."""
        raise NotImplementedError

    def finish(self, reports: list[pl.DataFrame], workdir: Path | None, stats: StageStats) -> None:
        """After the last chunk: the extras the whole run decides, and the report of every chunk's rows
        (`reports`, in order) written to `workdir`. Nothing by default."""

    def run(self, df: pl.DataFrame, workdir: Path | None, stats: StageStats) -> pl.DataFrame:
        (verdict,) = self.judge([df], df.height)  # the whole generator: a pool it started is shut down
        verdict.add_to(stats)
        self.finish([] if verdict.report is None else [verdict.report], workdir, stats)
        return verdict.kept


ROW = "\0input_row"  # each document's row in the pipeline's input, which `run_pipeline` adds and takes off


def input_rows(df: pl.DataFrame) -> pl.Series:
    """Each document's row in the input (from 0, files in read order), as the reports name it: `run_pipeline`
    numbers the input's rows, and a step run on its own frame numbers that frame's. Ids alone can repeat
    (shards numbered from 0 each) or be made up."""
    rows = df[ROW] if ROW in df.columns else pl.int_range(df.height, eager=True)
    return rows.cast(pl.Int64).alias("row")


def progress(items: Iterable[T], total: int | None, description: str, min_total: int = 5000) -> Iterator[T]:
    """Iterate with a rich progress bar on stderr for long runs on a terminal; without one (a log, nohup), a
    plain line at most once a minute (`logged_progress`), as the engine does, so a long stage is not silent.
    `total` None: not known (a corpus read a chunk at a time), so the count is shown without a share."""
    if total is not None and total < min_total:
        yield from items
    elif not sys.stderr.isatty():
        yield from logged_progress(items, total, description, sys.stderr)
    else:
        from rich.console import Console
        from rich.progress import track

        yield from track(items, total=total, description=description, console=Console(stderr=True), transient=True)


def logged_progress(items: Iterable[T], total: int | None, description: str, out: TextIO, every_s: float = LOG_EVERY_S,
                    clock: Callable[[], float] | None = None) -> Iterator[T]:
    """Yield `items`, writing `<description>: done/total (pct), elapsed` to `out` once `every_s` has passed since
    the start or the last line (checked as items come, so a line says what is done, never a guess). `clock`:
    seconds, time.monotonic unless given."""
    clock = clock or time.monotonic
    start = last = clock()
    for done, item in enumerate(items, 1):
        yield item
        now = clock()
        if now - last >= every_s and (total is None or done < total):
            last = now
            count = f"{done:,}" if total is None else f"{done:,}/{total:,} ({done / total:.0%})"
            out.write(f"{description}: {count} after {_minutes(now - start)}\n")
            out.flush()


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def worker_count(setting: int) -> int:
    """A `workers` setting as the config means it (`minhash.workers`): 0 = one process per CPU core."""
    return setting or os.cpu_count() or 1


_WORKER_STATE: Any = None  # in a pool worker: the step whose chunks it runs (set by `_install`)


def _install(state: Any, parent: int | None = None) -> None:
    global _WORKER_STATE
    _WORKER_STATE = state
    if parent is not None:
        _end_with(parent)


WATCH_S = 1.0  # how often a pool worker looks whether its run still lives (`_end_with`)


def _end_with(parent: int) -> None:
    """End this pool worker when its run (`parent`) ends, killed hard too (SIGKILL, out of memory): it would
    otherwise wait for chunks forever, holding the step (a benchmark index of 100+ MB). A thread looks every
    `WATCH_S`; not Linux's PDEATHSIG, which fires when the *thread* that forked the worker ends (a pool started by
    a thread that ended before it lost its workers mid-run) and whose parent, under a forkserver, is not the run."""
    if os.name != "posix":  # Windows: os.kill(pid, 0) would end the run, not look at it
        return
    threading.Thread(target=_watch, args=(parent, os.getppid()), name="textbookgen-run-watch", daemon=True).start()


def _watch(run: int, parent: int) -> None:
    """Exit once the run is gone or this worker's parent changed: the run's worker is then another's child (init's,
    a subreaper's), and a forkserver's ends with the forkserver, which ends with the run."""
    while os.getppid() == parent and _alive(run):
        time.sleep(WATCH_S)
    os._exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # there, though another user's
        pass
    return True


def _run_chunk(fn: Callable[[Any, list[tuple]], list[R]], rows: list[tuple]) -> list[R]:
    return fn(_WORKER_STATE, rows)


def map_rows(fn: Callable[[S, list[tuple]], list[R]], state: S, columns: Sequence[pl.Series], workers: int = 1,
             chunk_size: int = CHUNK_ROWS, start_method: str = START_METHOD) -> Iterator[R]:
    """`fn(state, rows)` over chunks of the rows of `columns`, one result per row, in row order
    (`map_columns` of one set of columns)."""
    return map_columns(fn, state, [columns], workers, chunk_size, start_method)


def map_columns(fn: Callable[[S, list[tuple]], list[R]], state: S, column_sets: Iterable[Sequence[pl.Series]],
                workers: int = 1, chunk_size: int = CHUNK_ROWS, start_method: str = START_METHOD) -> Iterator[R]:
    """`fn(state, rows)` over chunks of the rows of each set of columns in turn (a corpus's chunks, read as
    they are needed), one result per row, in row order.

    datatrove's tasks on one machine: with `workers` > 1 (0 = one per core) and more than one chunk, the
    chunks run in one process pool for all the sets, whose initializer gives each worker `state` once (never
    per chunk or set). Rows become Python objects a chunk at a time, and at most two chunks per worker are
    in flight, so memory does not grow with the corpus. `fn` must be a module-level function (it is sent by
    name)."""
    tasks = (list(zip(*(c.slice(start, chunk_size).to_list() for c in columns), strict=True))
             for columns in column_sets for start in range(0, columns[0].len() if columns else 0, chunk_size))
    head = list(islice(tasks, worker_count(workers)))  # as many as the pool could take: fewer need fewer workers
    workers = min(worker_count(workers), len(head))
    if workers <= 1:
        for rows in chain(head, tasks):
            yield from fn(state, rows)
        return
    pool = ProcessPoolExecutor(workers, mp_context=get_context(start_method), initializer=_install,
                               initargs=(state, os.getpid()))
    try:
        in_flight: deque[Future[list[R]]] = deque()
        for rows in chain(head, tasks):
            in_flight.append(pool.submit(_run_chunk, fn, rows))
            if len(in_flight) >= 2 * workers:
                yield from in_flight.popleft().result()
        while in_flight:
            yield from in_flight.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def judged_chunks(fn: Callable[[S, list[tuple]], list[R]], state: S, chunks: Iterable[pl.DataFrame],
                  columns: Callable[[pl.DataFrame], Sequence[pl.Series]], workers: int, chunk_size: int,
                  description: str, total: int | None = None) -> Iterator[tuple[pl.DataFrame, list[R]]]:
    """Each chunk with `fn`'s results for its rows (`map_columns` of `columns(chunk)`, one pool for all the
    chunks), in order; `total`: all the chunks' rows, where known (`progress`). A chunk is held from when its
    rows are handed out until its last result is back."""
    pending: deque[pl.DataFrame] = deque()

    def feed() -> Iterator[Sequence[pl.Series]]:
        for chunk in chunks:
            pending.append(chunk)
            yield columns(chunk)

    out: list[R] = []
    # a result comes only after its chunk was fed, so pending[0] is the chunk it belongs to
    for result in progress(map_columns(fn, state, feed(), workers, chunk_size), total, description):
        while len(out) == pending[0].height:  # chunks of no rows before the one this result is of
            yield pending.popleft(), out
            out = []
        out.append(result)
        if len(out) == pending[0].height:
            yield pending.popleft(), out
            out = []
    while pending:  # chunks of no rows after the last result
        yield pending.popleft(), out
        out = []


def require_columns(df: pl.DataFrame, columns: list[str], where: str) -> None:
    """A clear error naming the missing column(s) rather than a polars ColumnNotFoundError later."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{where}: missing column(s) {missing}; have {df.columns}")
