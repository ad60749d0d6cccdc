"""`filter` and `decontaminate` on a corpus of any size: the corpus goes through steps that judge each document on
its own (`RowStep`) a chunk at a time, so memory follows a chunk, not the corpus; and each finished chunk's verdicts
are stored in the workdir, so a killed run, rerun, judges only the chunks it had not finished (as MinHash keeps its
signatures). A finished run removes them: its output and reports say it all."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import chain
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

import polars as pl
from xxhash import xxh3_128_hexdigest

from textbookgen.curation.base import ROW, RowStep, StageStats, Verdict, add_extra
from textbookgen.curation.commands import _mark_workdir
from textbookgen.curation.corpus_io import Corpus, CorpusWriter, typed

STORE = "finished_chunks"  # in the workdir: each finished chunk's kept rows and every step's verdict on it
KEY = "key.json"  # in STORE: the input files, columns, chunk size and steps the verdicts hold for
LOCK = ".finished_chunks.lock"  # in the workdir: held by the run using it (`_sole_run`)


def stream_out_of_core(corpus: Corpus, output_path: str | Path, steps: list[RowStep], work: Path
                       ) -> dict[str, Any]:
    """`run_pipeline` and `write_corpus` for steps that judge each document on its own: the corpus goes through
    them a chunk at a time (`Corpus.chunks`, typed as the whole corpus is and numbered by input row as
    `run_pipeline` numbers it), so the kept rows, stats and reports are the in-memory ones. The chunks a killed
    run finished (`ChunkStore`) are read again but not judged. Bad input (a ValueError) leaves no workdir this run made."""
    made = not work.exists()
    with _sole_run(work):
        try:
            return _stream(corpus, output_path, steps, work)
        except ValueError:
            shutil.rmtree(work if made else work / STORE, ignore_errors=True)
            raise
        except BaseException:  # Ctrl-C before a chunk was stored: no folder of the lock's alone
            if made and not (work / STORE).is_dir():
                shutil.rmtree(work, ignore_errors=True)
            raise


_HELD: set[int] = set()  # the descriptors of the workdir locks this process holds (`_sole_run`)


def _drop_held_locks() -> None:
    """In a forked pool worker: close its copies of the run's locks. A copy holds the lock too, and workers of a
    run killed hard (SIGKILL, out of memory) outlive it, so the rerun would be refused while they live."""
    for fd in _HELD:
        os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork (nor fcntl)
    os.register_at_fork(after_in_child=_drop_held_locks)


@contextmanager
def _sole_run(work: Path) -> Iterator[None]:
    """Hold `work/LOCK` for the run: a second run on the workdir at once would remove the chunks this one
    stores (other settings) or store its verdicts under this one's key, which a rerun then takes for its own.
    Where the file system has no locks (or no `fcntl`: Windows), runs are not kept apart."""
    _mark_workdir(work)
    fd = os.open(work / LOCK, os.O_WRONLY | os.O_CREAT, 0o666)
    _HELD.add(fd)
    try:
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"--workdir {work}: another filter or decontaminate run is using it; wait for it "
                             "to end, or give this one another --workdir") from None
        except OSError:  # no locks on this file system
            pass
        yield
    finally:
        _HELD.discard(fd)
        os.close(fd)


def _stream(corpus: Corpus, output_path: str | Path, steps: list[RowStep], work: Path) -> dict[str, Any]:
    schema = corpus.schema()
    store = ChunkStore(work, _key(corpus, steps))
    chunks = enumerate(_numbered(corpus.chunks(), schema))
    fed: deque[tuple[int, pl.DataFrame]] = deque()  # the chunks handed to the steps and not yet written
    taps: list[deque[Verdict]] = [deque() for _ in steps]  # each step's verdicts on those chunks

    resumed: list[tuple[int, pl.DataFrame]] = []  # the first chunk to judge, once those stored are written

    def feed() -> Iterator[pl.DataFrame]:
        for k, chunk in chain(resumed, chunks):
            fed.append((k, chunk))
            yield chunk

    judges: list[Iterator[Verdict]] = []
    flow: Iterator[pl.DataFrame] = feed()
    for step, tap in zip(steps, taps, strict=True):
        judges.append(step.judge(flow))
        flow = _tapped(judges[-1], tap)
    totals = [StageStats(step.name) for step in steps]
    reports: list[list[pl.DataFrame]] = [[] for _ in steps]
    try:
        with CorpusWriter(output_path, schema) as out:
            for k, chunk in chunks:  # those a killed run finished, while their rows are the same: stored verdicts
                stored = store.load(k, _digest(chunk)) if k < store.finished else None
                if stored is None:
                    resumed.append((k, chunk))
                    break
                rows, parts = stored
                out.write(chunk.filter(pl.col(ROW).is_in(rows)).drop(ROW))
                for st, part, report in zip(totals, parts, reports, strict=True):
                    part.add_to(st, report)
            for kept in flow:
                k, chunk = fed.popleft()
                parts = _parts(chunk, [tap.popleft() for tap in taps])
                store.save(k, _digest(chunk), kept[ROW].to_list(), parts)
                out.write(kept.drop(ROW))
                for st, part, report in zip(totals, parts, reports, strict=True):
                    part.add_to(st, report)
    finally:  # a failure here (a full disk, Ctrl-C) must not leave the steps' worker pools to the traceback's life
        for gen in (flow, *reversed(judges)):
            gen.close()
    _mark_workdir(work)
    stats: dict[str, Any] = {}
    for step, st, report in zip(steps, totals, reports, strict=True):
        (work / step.name).mkdir(parents=True, exist_ok=True)
        step.finish(report, work / step.name, st)
        st.check()
        stats[step.name] = st.as_dict()  # a name given twice: the last step's, as `run_pipeline`
    store.remove()
    return stats


def _digest(chunk: pl.DataFrame) -> str:
    """A hash of the chunk's rows, every column and ROW: a file rewritten to other bytes of the same size and
    modification time (`_key` cannot tell) gets its stored verdicts from the first chunk that changed on judged
    again. `hash_rows` holds within a polars version, which `_key` names."""
    return xxh3_128_hexdigest(chunk.hash_rows().to_numpy().tobytes())


def _tapped(verdicts: Iterator[Verdict], tap: deque[Verdict]) -> Iterator[pl.DataFrame]:
    """The kept rows of each verdict, for the next step; the verdict itself goes to `tap`."""
    for verdict in verdicts:
        tap.append(verdict)
        yield verdict.kept


def _numbered(chunks: Iterator[pl.DataFrame], schema: pl.Schema) -> Iterator[pl.DataFrame]:
    """The chunks with the whole corpus's columns and types, and ROW (each row's place in the corpus)."""
    start = 0
    for chunk in chunks:
        yield typed(chunk, schema).with_row_index(ROW, offset=start)
        start += chunk.height


class Part:
    """One step's share of one chunk: documents in and kept, drops by reason, extras, and report rows."""

    def __init__(self, n_in: int, kept: int, dropped: dict[str, int], extra: dict[str, Any],
                 report: pl.DataFrame | None) -> None:
        self.n_in, self.kept, self.dropped, self.extra, self.report = n_in, kept, dropped, extra, report

    def add_to(self, stats: StageStats, reports: list[pl.DataFrame]) -> None:
        stats.n_in += self.n_in
        stats.kept += self.kept
        stats.dropped.update(Counter(self.dropped))
        add_extra(stats.extra, self.extra)
        if self.report is not None and (self.report.height or not reports):  # an empty one for its columns:
            reports.append(self.report)  # a frame per chunk (~2 KB) would grow with the corpus

    def as_json(self) -> dict[str, Any]:
        return {"in": self.n_in, "kept": self.kept, "dropped": dict(self.dropped), "extra": self.extra,
                "report": self.report is not None}


def _parts(chunk: pl.DataFrame, verdicts: list[Verdict]) -> list[Part]:
    """Each step's Part of a chunk: it took in what the step before it kept."""
    heights = [chunk.height, *(v.kept.height for v in verdicts)]
    return [Part(heights[i], heights[i + 1], dict(v.dropped), v.extra, v.report) for i, v in enumerate(verdicts)]


def _key(corpus: Corpus, steps: list[RowStep]) -> dict[str, Any] | None:
    """What stored verdicts hold for: the input, each file as it is (size, modification time), the columns, the
    chunk size (chunk k must be the same rows) and each step's `fingerprint`; None where a step has none."""
    prints = [step.fingerprint() for step in steps]
    if any(p is None for p in prints):
        return None
    files = [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in corpus.files]
    # the input as given too: made-up ids ("<file>:<row>", which the reports name) are paths under it
    return {"input": str(corpus.path.resolve()), "files": files, "text_column": corpus.text_column,
            "id_column": corpus.id_column, "chunk_rows": corpus.chunk_rows, "steps": prints,
            "polars": pl.__version__}


class ChunkStore:
    """`work/STORE`: per finished chunk k, `k.json` (a `_digest` of its rows, its kept rows by ROW and every
    step's Part, written last, so a chunk is stored whole or not at all) and `k.<step>.parquet` (a step's report
    rows). Verdicts stored for another key (the input, the settings or the steps changed) are removed, not used;
    a chunk whose rows are not those stored is judged again (`load`)."""

    def __init__(self, work: Path, key: dict[str, Any] | None) -> None:
        self.work, self.folder, self.key = work, work / STORE, key
        self.finished = 0  # chunks 0.. stored (the output is written in order, so they are the first ones)
        if key is None or not self.folder.is_dir():
            return
        try:
            same = json.loads((self.folder / KEY).read_text()) == key
        except (OSError, ValueError):
            same = False
        if not same:
            shutil.rmtree(self.folder)
            return
        while (self.folder / f"{self.finished:06d}.json").is_file():
            self.finished += 1

    def save(self, k: int, digest: str, rows: list[int], parts: list[Part]) -> None:
        if self.key is None:
            return
        if not self.folder.is_dir():
            _mark_workdir(self.work)
            self.folder.mkdir()
            (self.folder / KEY).write_text(json.dumps(self.key))
        for i, part in enumerate(parts):
            if part.report is not None:
                part.report.write_parquet(self.folder / f"{k:06d}.{i}.parquet")
        tmp = self.folder / f".{k:06d}.json.tmp"
        tmp.write_text(json.dumps({"digest": digest, "rows": rows, "parts": [p.as_json() for p in parts]}))
        os.replace(tmp, self.folder / f"{k:06d}.json")

    def load(self, k: int, digest: str) -> tuple[list[int], list[Part]] | None:
        """Chunk k's kept rows (ROW) and Parts, as `save` stored them; None where the chunk read now is not the
        one they were stored for (`digest`), or whose files cannot be read back (cut short by a crash before
        they reached the disk): it is judged again, not refused on every rerun."""
        try:
            data = json.loads((self.folder / f"{k:06d}.json").read_text())
            if data.get("digest") != digest:
                return None
            parts = [Part(p["in"], p["kept"], p["dropped"], p["extra"],
                          pl.read_parquet(self.folder / f"{k:06d}.{i}.parquet") if p["report"] else None)
                     for i, p in enumerate(data["parts"])]
        except (OSError, ValueError, KeyError, pl.exceptions.PolarsError):
            return None
        return data["rows"], parts

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
