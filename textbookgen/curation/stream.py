"""`filter`, `decontaminate` and `classifier score` on a corpus of any size: the corpus goes through steps that judge
each document on its own (`RowStep`) a chunk at a time, so memory follows a chunk, not the corpus; and each finished
chunk's verdicts are stored in the workdir, so a killed run, rerun, judges only the chunks it had not finished (as
MinHash keeps its signatures). The quality score goes the same way, its cut decided between two passes. A finished
run removes them: its output and reports say it all."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from itertools import chain
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, NamedTuple

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

import numpy as np
import polars as pl
from xxhash import xxh3_128_hexdigest

from textbookgen import __version__
from textbookgen.curation.base import ROW, RowStep, StageStats, Step, Verdict, add_extra
from textbookgen.curation.corpus_io import WORKDIR_MARK, Corpus, CorpusWriter, RowsKept, mark_workdir, typed

if TYPE_CHECKING:
    from textbookgen.curation.classifier import QualityCut, QualityScore

STORE = "finished_chunks"  # in the workdir: each finished chunk's kept rows and every step's verdict on it (or scores)
GROUPS = "finished_groups"  # in the workdir: a mixed run's last finished group (`groups.run_groups`), until it ends
KEY = "key.json"  # in STORE: the input files, columns, chunk size and steps the verdicts hold for
LOCK = ".finished_chunks.lock"  # in the workdir: held by the run using it (`_sole_run`)
# how a run refused by `_sole_run` gets another workdir: `filter` and `decontaminate`; `classifier score` (no --workdir)
ELSEWHERE = "give this one another --workdir"
SCORE_ELSEWHERE = "give this one another -o (its workdir is <output>.work)"


def stream_out_of_core(corpus: Corpus, output_path: str | Path | RowsKept, steps: list[RowStep],
                       work: Path, carried: str | None = None, with_rows: str | None = None, elsewhere: str = ELSEWHERE,
                       held: bool = False) -> dict[str, Any]:
    """`run_pipeline` and `write_corpus` for steps that judge each document on its own: the corpus goes through
    them a chunk at a time (`Corpus.chunks`, typed as the whole corpus is and numbered by input row as
    `run_pipeline` numbers it), so the kept rows, stats and reports are the in-memory ones. The chunks a killed
    run finished (`ChunkStore`) are read again but not judged. `carried`, `with_rows`: see `numbered`, `rows_out`;
    `elsewhere`, `held`: see `run_in`."""
    with run_in(work, elsewhere, held):
        return _stream(corpus, output_path, steps, work, carried, with_rows)


def score_out_of_core(corpus: Corpus, output_path: str | Path, score: QualityScore, cut: QualityCut | None,
                      work: Path, carried: str | None = None, with_rows: str | None = None,
                      elsewhere: str = SCORE_ELSEWHERE, held: bool = False) -> dict[str, Any]:
    """`run_pipeline` and `write_corpus` for `classifier score`, never holding the texts: pass 1 scores the texts a
    chunk at a time and keeps the scores (8 bytes a document) and where each chunk came from (`Scored`), from which
    the cut is decided (a top share needs every score); pass 2 reads the corpus again, checks each chunk is the one
    scored, and writes its kept rows with their scores, keeping the cut's report rows (id, row, score) of the
    documents it cuts. The kept rows, stats and dropped.parquet are the in-memory steps'. A killed run's scored
    chunks (`ChunkStore`) are not scored again. `carried`, `with_rows`: see `numbered`, `rows_out`; `elsewhere`,
    `held`: see `run_in`."""
    with run_in(work, elsewhere, held):
        store = ChunkStore(work, _key(corpus, [score]))
        scores, scored, fresh, seconds = _scores(corpus, score, store)
        stats, keep = _cut_stats(scores, score, cut, fresh, seconds)
        for st in stats.values():
            (work / st.stage).mkdir(parents=True, exist_ok=True)
            st.check()
        dropped = _write_scored(corpus, output_path, scores, keep, cut, scored, carried, with_rows)
        if cut is not None:
            cut.write_dropped(dropped, work / cut.name)
        store.remove()
        return {name: st.as_dict() for name, st in stats.items()}


class Scored(NamedTuple):
    """A chunk of pass 1 (`_scores`): where it came from and its `_digest`, which pass 2 must read again."""

    file: Path
    first: int  # the place of its first row in the file, from 0
    height: int
    digest: str


def _scores(corpus: Corpus, score: QualityScore, store: ChunkStore
            ) -> tuple[np.ndarray, list[Scored], int, float]:
    """Pass 1: every document's score, in corpus order, from the store where a killed run stored its chunk; each
    chunk's `Scored`; and how many documents this run scored, in how many seconds."""
    seconds, fresh, parts, scored = 0.0, 0, [], []
    for k, (file, first, chunk) in enumerate(corpus.located_chunks(())):
        digest = _digest(chunk)
        stored = store.load_scores(k, digest) if k < store.finished else None
        if stored is None:
            t0 = time.perf_counter()
            stored = score.scores(chunk[corpus.text_column])
            seconds += time.perf_counter() - t0
            fresh += chunk.height
            store.save_scores(k, digest, stored)
        parts.append(stored)
        scored.append(Scored(file, first, chunk.height, digest))
    return np.concatenate(parts), scored, fresh, seconds


def _cut_stats(scores: np.ndarray, score: QualityScore, cut: QualityCut | None, fresh: int, seconds: float
               ) -> tuple[dict[str, StageStats], np.ndarray]:
    """Each step's stats, as `run_pipeline` counts them (the speed of the `fresh` documents this run scored), and
    which documents the cut keeps."""
    stats = {score.name: StageStats(score.name, n_in=len(scores), kept=len(scores))}
    score.note(stats[score.name], scores, fresh, seconds)
    if cut is None:
        return stats, np.ones(len(scores), dtype=bool)
    stats[cut.name] = StageStats(cut.name, n_in=len(scores))
    keep = cut.keep(scores, stats[cut.name])
    stats[cut.name].kept = int(keep.sum())
    return stats, keep


def _write_scored(corpus: Corpus, output_path: str | Path, scores: np.ndarray, keep: np.ndarray,
                  cut: QualityCut | None, scored: list[Scored], carried: str | None, with_rows: str | None
                  ) -> list[pl.DataFrame]:
    """Pass 2: the kept rows with their scores, a chunk at a time, each chunk the one pass 1 `scored`; the cut's
    report rows of each chunk."""
    from textbookgen.curation.classifier import with_scores

    schema, dropped, start = corpus.schema(), [], 0
    with CorpusWriter(output_path, with_scores(pl.DataFrame(schema=row_schema(schema, carried, with_rows)),
                                               scores[:0]).schema) as out:
        for chunk in numbered(_rescanned(corpus, scored), schema, carried):
            end = start + chunk.height
            chunk = with_scores(chunk, scores[start:end])
            if cut is not None:
                dropped.append(cut.dropped(chunk, keep[start:end]))
            out.write(rows_out(chunk.filter(pl.Series(keep[start:end])), with_rows))
            start = end
    return dropped


def _rescanned(corpus: Corpus, scored: list[Scored]) -> Iterator[pl.DataFrame]:
    """Every chunk of the corpus (all its columns), each checked to be the rows pass 1 `scored` (their id and text,
    as `_scores` read them): input rewritten between the passes would get other rows' scores, or fail on a
    length that names nothing."""
    read = -1
    for read, (file, first, chunk) in enumerate(corpus.located_chunks()):
        now = Scored(file, first, chunk.height, _digest(chunk.select(corpus.id_column, corpus.text_column)))
        if read >= len(scored) or scored[read] != now:
            raise _changed(scored[read] if read < len(scored) else None, now)
        yield chunk
    if read + 1 < len(scored):
        raise _changed(scored[read + 1], None)


class InputChanged(ValueError):
    """Input rewritten between `classifier score`'s passes: refused, but unlike other bad input its stored scores
    are kept (`run_in`), as each is stored with its chunk's digest, so the rerun it asks for scores only the
    chunks that changed."""


def _changed(scored: Scored | None, now: Scored | None) -> InputChanged:
    """The error for input whose chunk read by pass 2 (`now`; None: the input ended) is not the one pass 1 `scored`
    (None: it had ended there): it names the rows of each, by file and row (from 1)."""
    places = list(dict.fromkeys(f"{c.file} rows {c.first + 1}-{c.first + c.height}" for c in (scored, now)
                                if c is not None))
    return InputChanged(f"{' and '.join(places)}: the input changed while it was scored (the rows read for the "
                        "output are not those scored); rerun")


@contextmanager
def run_in(work: Path, elsewhere: str, held: bool = False) -> Iterator[None]:
    """A run on `work`, the only one (`_sole_run`, whose refusal says `elsewhere`; `held`: the caller holds it
    already, as `groups.run_out_of_core` and `groups.run_groups` do for each group: a second flock by one process
    would refuse it): bad input (a ValueError) leaves no workdir this run made, nor chunks stored for it; Ctrl-C
    before anything a rerun reuses was stored (`_reusable`), or input changed while it was read (`InputChanged`:
    its rerun reuses the chunks still the same), no folder of the lock's alone."""
    made = not work.exists()
    with nullcontext() if held else _sole_run(work, elsewhere):
        try:
            yield
        except BaseException as err:
            if isinstance(err, ValueError) and not isinstance(err, InputChanged):
                shutil.rmtree(work if made else work / STORE, ignore_errors=True)
            elif made and not _reusable(work):
                shutil.rmtree(work, ignore_errors=True)
            raise


def _reusable(work: Path) -> bool:
    """Whether a workdir holds what a rerun reuses: stored chunks, a mixed run's recorded group, a step's own store
    (MinHash's signed shards): anything but the lock, the workdir's mark and a group folder with no record."""
    if any((work / GROUPS).glob("*.json")):
        return True
    return work.is_dir() and any(p.name not in (LOCK, WORKDIR_MARK, GROUPS) for p in work.iterdir())


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
def _sole_run(work: Path, elsewhere: str = ELSEWHERE) -> Iterator[None]:
    """Hold `work/LOCK` for the run: a second run on the workdir at once would remove the chunks this one
    stores (other settings) or store its verdicts under this one's key, which a rerun then takes for its own; it
    is refused, told to wait or to go `elsewhere` (how its command gives another workdir).
    Where the file system has no locks (or no `fcntl`: Windows), runs are not kept apart."""
    mark_workdir(work)
    fd = os.open(work / LOCK, os.O_WRONLY | os.O_CREAT, 0o666)
    _HELD.add(fd)
    try:
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"workdir {work}: another curation run is using it; wait for it to end, or "
                             f"{elsewhere}") from None
        except OSError:  # no locks on this file system
            pass
        yield
    finally:
        _HELD.discard(fd)
        os.close(fd)


def _stream(corpus: Corpus, output_path: str | Path | RowsKept, steps: list[RowStep], work: Path,
            carried: str | None, with_rows: str | None) -> dict[str, Any]:
    schema = corpus.schema()
    store = ChunkStore(work, _key(corpus, steps))
    chunks = enumerate(numbered(corpus.chunks(), schema, carried))
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
        with CorpusWriter.to(output_path, row_schema(schema, carried, with_rows)) as out:
            for k, chunk in chunks:  # those a killed run finished, while their rows are the same: stored verdicts
                stored = store.load(k, _digest(chunk)) if k < store.finished else None
                if stored is None:
                    resumed.append((k, chunk))
                    break
                rows, parts = stored
                out.write(rows_out(chunk.filter(pl.col(ROW).is_in(rows)), with_rows))
                for st, part, report in zip(totals, parts, reports, strict=True):
                    part.add_to(st, report)
            for kept in flow:
                k, chunk = fed.popleft()
                parts = _parts(chunk, [tap.popleft() for tap in taps])
                store.save(k, _digest(chunk), kept[ROW].to_list(), parts)
                out.write(rows_out(kept, with_rows))
                for st, part, report in zip(totals, parts, reports, strict=True):
                    part.add_to(st, report)
    finally:  # a failure here (a full disk, Ctrl-C) must not leave the steps' worker pools to the traceback's life
        for gen in (flow, *reversed(judges)):
            gen.close()
    mark_workdir(work)
    stats: dict[str, Any] = {}
    for step, st, report in zip(steps, totals, reports, strict=True):
        (work / step.name).mkdir(parents=True, exist_ok=True)
        step.finish(report, work / step.name, st)
        st.check()
        stats[step.name] = st.as_dict()  # a name given twice: the last step's, as `run_pipeline`
    store.remove()
    return stats


def _digest(chunk: pl.DataFrame) -> str:
    """A hash of all a step is handed of the chunk: its columns' names and types (a column renamed, or two swapped,
    is read otherwise: `hash_rows` hashes the values alone) and its rows, every column (and ROW where it has it). A
    file rewritten to other bytes of the same size (`_key` cannot tell) gets its stored verdicts from the first
    chunk that changed on judged again, its stored scores for each chunk that changed. `hash_rows` holds within a
    polars version, which `_key` names."""
    columns = repr([(name, str(dtype)) for name, dtype in chunk.schema.items()]).encode()
    return xxh3_128_hexdigest(columns + b"\0" + chunk.hash_rows().to_numpy().tobytes())


def _tapped(verdicts: Iterator[Verdict], tap: deque[Verdict]) -> Iterator[pl.DataFrame]:
    """The kept rows of each verdict, for the next step; the verdict itself goes to `tap`."""
    for verdict in verdicts:
        tap.append(verdict)
        yield verdict.kept


ROW_FILE = "__textbookgen_input_row__"  # ROW as a mixed run's intermediate file keeps it (arrow takes no NUL in a name)


def carrier(schema: pl.Schema) -> str:
    """The column a mixed run's intermediate files (`groups.run_groups`) carry ROW in: ROW_FILE, or, where the input
    has a column of that name (kept as any other column), ROW_FILE with the first number that makes it new."""
    name, n = ROW_FILE, 1
    while name in schema:
        name, n = f"{ROW_FILE}{n}", n + 1
    return name


def numbered(chunks: Iterator[pl.DataFrame], schema: pl.Schema, carried: str | None = None
             ) -> Iterator[pl.DataFrame]:
    """The chunks with the whole corpus's columns and types, and ROW: each row's place in the corpus, or where
    `carried` names a column (only of a mixed run's intermediate file, `groups.run_groups`) the row in the original
    input that column carries."""
    start = 0
    for chunk in chunks:
        chunk = typed(chunk, schema)
        yield chunk.rename({carried: ROW}) if carried else chunk.with_row_index(ROW, offset=start)
        start += chunk.height


def row_schema(schema: pl.Schema, carried: str | None, with_rows: str | None) -> pl.Schema:
    """An output's columns: the input's (less the `carried` column, `numbered`), then the `with_rows` column that
    carries ROW where it is given (`rows_out`)."""
    own = {name: dtype for name, dtype in schema.items() if name != carried}
    return pl.Schema({**own, with_rows: pl.Int64} if with_rows else own)


def rows_out(chunk: pl.DataFrame, with_rows: str | None) -> pl.DataFrame:
    """A chunk to write (it has ROW): ROW kept as the column `with_rows` names (an intermediate file of a mixed run,
    `groups.run_groups`: the reports of the steps after it name a document by its row in the original input), else
    dropped."""
    return chunk.rename({ROW: with_rows}) if with_rows else chunk.drop(ROW)


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


def _key(corpus: Corpus, steps: Sequence[Step]) -> dict[str, Any] | None:
    """What stored verdicts hold for: the input, its files (path and size; their bytes are each chunk's `_digest`,
    so a file touched or copied without its modification time keeps its verdicts), the columns, the chunk size
    (chunk k must be the same rows), each step's `fingerprint` and `code_digest`; None where a step has none."""
    prints = [step.fingerprint() for step in steps]
    if any(p is None for p in prints):
        return None
    files = [[str(f.resolve()), f.stat().st_size] for f in corpus.files]
    # the input as given too: made-up ids ("<file>:<row>", which the reports name) are paths under it
    return {"input": str(corpus.path.resolve()), "files": files, "text_column": corpus.text_column,
            "id_column": corpus.id_column, "chunk_rows": corpus.chunk_rows, "steps": prints,
            "code": [code_digest(step) for step in steps], "polars": pl.__version__}


def code_digest(step: object) -> str:
    """A digest of the source of the step's module (`step`: a step, or its class), of the modules of the classes of
    the objects it holds (`_held_modules`: rules given to `HeuristicFilter(rules=...)` from another module), and
    of every textbookgen module those draw on (transitively, by their module-level names): a rule edited between
    a killed run and its rerun (`git pull`, an editable install) changes it, where `textbookgen.__version__`
    stays the same from one release to the next. A module without a source file (a frozen install) counts by
    that version. Not covered: what a module outside textbookgen imports, and objects held deeper than
    `_held_modules` looks."""
    cls = step if isinstance(step, type) else type(step)
    seen: dict[str, ModuleType] = {}
    todo = [sys.modules[name] for name in (cls.__module__, *_held_modules(step)) if name in sys.modules]
    while todo:
        module = todo.pop()
        if module.__name__ in seen:
            continue
        seen[module.__name__] = module
        for value in vars(module).values():
            name = value.__name__ if isinstance(value, ModuleType) else getattr(value, "__module__", None)
            found = sys.modules.get(name) if isinstance(name, str) and name.split(".")[0] == "textbookgen" else None
            if found is not None and not hasattr(found, "__path__"):  # a package's names are the submodules
                todo.append(found)  # imported so far, which differ from run to run
    return xxh3_128_hexdigest(b"".join(name.encode() + b"\0" + _source(seen[name]) for name in sorted(seen)))


def _held_modules(step: object) -> list[str]:
    """The modules (outside the standard library) of the classes of what a step instance holds: its attributes,
    and the items of those that are lists or tuples (a class held counts by its own module)."""
    if isinstance(step, type):
        return []
    held = [item for value in getattr(step, "__dict__", {}).values()
            for item in (value if isinstance(value, list | tuple) else (value,))]
    names = {(item if isinstance(item, type) else type(item)).__module__ for item in held}
    return sorted(n for n in names if n.split(".")[0] not in sys.stdlib_module_names)


def _source(module: ModuleType) -> bytes:
    """The module's source file, or the package version where it has none."""
    file = getattr(module, "__file__", None)
    if isinstance(file, str) and file.endswith(".py"):
        try:
            return Path(file).read_bytes()
        except OSError:
            pass
    return f"version {__version__}".encode()


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
        self._open()
        for i, part in enumerate(parts):
            if part.report is not None:
                part.report.write_parquet(self.folder / f"{k:06d}.{i}.parquet")
        self._write(k, {"digest": digest, "rows": rows, "parts": [p.as_json() for p in parts]})

    def _open(self) -> None:
        """The folder and its KEY, made with the first chunk stored."""
        if not self.folder.is_dir():
            mark_workdir(self.work)
            self.folder.mkdir()
            (self.folder / KEY).write_text(json.dumps(self.key))

    def _write(self, k: int, data: dict[str, Any]) -> None:
        """`k.json`, written last and whole, so a chunk is stored whole or not at all."""
        write_json(self.folder / f"{k:06d}.json", data)

    def save_scores(self, k: int, digest: str, scores: np.ndarray) -> None:
        """Chunk k's scores (`score_out_of_core`'s pass 1), as `save` stores verdicts."""
        if self.key is not None:
            self._open()
            self._write(k, {"digest": digest, "scores": scores.tolist()})  # JSON floats read back exactly

    def load_scores(self, k: int, digest: str) -> np.ndarray | None:
        """Chunk k's scores as `save_scores` stored them; None where the chunk read now is not the one they were
        stored for, or they cannot be read back."""
        try:
            data = json.loads((self.folder / f"{k:06d}.json").read_text())
            if data.get("digest") != digest:
                return None
            return np.asarray(data["scores"], dtype=np.float64)
        except (OSError, ValueError, KeyError, TypeError):
            return None

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


def write_json(path: Path, data: Any) -> None:
    """`path` written whole or not at all (a temporary file renamed over it)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)
