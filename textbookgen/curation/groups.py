"""A step list of several kinds (`pipeline.build_steps`': row steps, dedup, the quality score and cut) run on a
corpus of any size: cut into consecutive groups that one out-of-core path each runs, a group at a time, each
reading the one before it's output from the workdir; a killed run, rerun, resumes from the last group it
finished."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import xxhash

from textbookgen.curation.base import RowStep, Step
from textbookgen.curation.corpus_io import Corpus, RowsKept, file_digest
from textbookgen.curation.stream import (
    ELSEWHERE,
    GROUPS,
    InputChanged,
    carrier,
    code_digest,
    run_in,
    write_json,
)

if TYPE_CHECKING:
    from textbookgen.curation.config import CurationConfig
    from textbookgen.curation.decontaminate import ItemTexts

# how a build refused by the workdir lock (`stream._sole_run`) gets another: its workdir is <out>/.build/curation
log = logging.getLogger(__name__)

BUILD_ELSEWHERE = "build into another output folder (the curate stage's workdir is <output>/.build/curation)"


def run_out_of_core(input_path: str | Path, output_path: str | Path, steps: list[Step], work: Path,
                    text_column: str = "text", id_column: str = "id", elsewhere: str = ELSEWHERE
                    ) -> dict[str, Any] | None:
    """`run_pipeline` and `write_corpus` of the steps (`groups`: by one path, or `run_groups`) on the corpus at
    `input_path`, never holding it; their stats, or None (nothing run) where a step goes by none of the paths.
    `elsewhere`: how a run refused for a workdir in use gets another (`stream._sole_run`). Every run holds the
    workdir (`stream.run_in`); one of one group removes a killed mixed run's finished group (its reports outdated)."""
    parts = groups(steps, text_column, id_column)
    if not parts:
        return None
    corpus = Corpus(input_path, text_column, id_column)
    if len(parts) > 1:
        return run_groups(parts, corpus, output_path, work, elsewhere)
    with run_in(work, elsewhere):
        shutil.rmtree(work / GROUPS, ignore_errors=True)  # a killed mixed run's, which this run's reports outdate
        return run_group(parts[0], corpus, output_path, work, elsewhere=elsewhere, held=True)


def curate_out_of_core(input_path: str | Path, output_path: str | Path, config: CurationConfig, workdir: Path,
                       benchmark_texts: list[ItemTexts] | None = None, seed_texts: Mapping[str, str] | None = None
                       ) -> dict[str, Any] | None:
    """`pipeline.curate` of the corpus at `input_path` (a build's documents.parquet), its kept rows written to
    `output_path`, never holding the corpus (`run_out_of_core`); its stats, or None (nothing run) where no stage
    is on. The seed extracts as `curate` takes them: None reads a `seed_text` column where the corpus has one."""
    from textbookgen.curation.pipeline import build_steps, log
    from textbookgen.curation.seed_copy import SEED_TEXT_COLUMN

    seeds: Mapping[str, str] | str | None = seed_texts
    if seeds is None and SEED_TEXT_COLUMN in Corpus(input_path, config.text_column, config.id_column).schema():
        seeds = SEED_TEXT_COLUMN
    elif seeds is None and config.seed_copy.enabled:
        log.info("seed_copy: skipped: no seed extracts given and no %r column", SEED_TEXT_COLUMN)
    steps = build_steps(config, benchmark_texts, seeds)
    return run_out_of_core(input_path, output_path, steps, workdir, config.text_column, config.id_column,
                           BUILD_ELSEWHERE)


class Group(NamedTuple):
    """Consecutive steps that one out-of-core path runs: "rows" (`RowStep`s), "dedup" (exact and MinHash), "score"
    (a QualityScore, maybe with the QualityCut right after it) or "cut" (a QualityCut of scores given)."""

    kind: str
    steps: list[Step]


def _kind(step: Step, text_column: str, id_column: str) -> str | None:
    """The `Group` kind of one step; None where no out-of-core path runs it (one's own `Step`, or a step reading
    columns other than the corpus's text and id)."""
    from textbookgen.curation.classifier import QualityCut, QualityScore
    from textbookgen.curation.exact import ExactDedup
    from textbookgen.curation.near_dedup import MinHashDedup

    if isinstance(step, RowStep):
        return "rows"
    if isinstance(step, ExactDedup | MinHashDedup):
        return "dedup" if (step.text_column, step.id_column) == (text_column, id_column) else None
    if isinstance(step, QualityScore):
        return "score" if step.text_column == text_column else None
    if isinstance(step, QualityCut):
        return "cut" if step.id_column == id_column else None
    return None


def groups(steps: list[Step], text_column: str, id_column: str) -> list[Group]:
    """`steps` cut into consecutive `Group`s, in order; none where a step has no kind (`_kind`): the list then
    runs on the corpus read whole."""
    out: list[Group] = []
    for step in steps:
        kind = _kind(step, text_column, id_column)
        if kind is None:
            return []
        last = out[-1] if out else None
        if last is not None and _joins(kind, last):
            last.steps.append(step)
        else:
            out.append(Group(kind, [step]))
    return out


def _joins(kind: str, last: Group) -> bool:
    """Whether a step of `kind` runs in the group `last` (the one before it): row steps with row steps, dedup with
    dedup, and a cut right after a score alone."""
    if kind in ("rows", "dedup"):
        return last.kind == kind
    return kind == "cut" and last.kind == "score" and len(last.steps) == 1


def run_group(group: Group, corpus: Corpus, output_path: str | Path | RowsKept, work: Path, carried: str | None = None,
              with_rows: str | None = None, elsewhere: str = ELSEWHERE, held: bool = False) -> dict[str, Any]:
    """`run_pipeline` and `write_corpus` of one group's steps, by the path its kind has. `carried`: the column of
    the input (a mixed run's intermediate file, never a user's input) that holds each row's ROW; `with_rows`: the
    column the output keeps it in, for the groups after it (`stream.numbered`, `stream.rows_out`); `elsewhere`:
    how a run refused for a workdir in use gets another; `held`: the caller (`run_groups`) holds the workdir
    (`stream.run_in`)."""
    from textbookgen.curation import commands
    from textbookgen.curation.stream import score_out_of_core, stream_out_of_core

    if group.kind == "rows":
        return stream_out_of_core(corpus, output_path, group.steps, work, carried, with_rows,  # type: ignore[arg-type]
                                  elsewhere, held)
    if group.kind == "dedup":
        return commands.dedup_out_of_core(corpus, output_path, group.steps, work, carried, with_rows)
    if group.kind == "score":
        score, *cut = group.steps
        return score_out_of_core(corpus, output_path, score, cut[0] if cut else None, work,  # type: ignore[arg-type]
                                 carried, with_rows, elsewhere, held)
    return commands.cut_out_of_core(corpus, output_path, group.steps[0], work, carried,  # type: ignore[arg-type]
                                    with_rows)


def run_groups(parts: list[Group], corpus: Corpus, output_path: str | Path, work: Path, elsewhere: str = ELSEWHERE
               ) -> dict[str, Any]:
    """`run_pipeline` and `write_corpus` of steps of several kinds, never holding the corpus: each group
    (`run_group`) reads what the one before it kept, carrying each row's place in the original input (in the column
    `stream.carrier` names) so that every report names it as the whole-corpus run does; the last writes the output.
    A group that only drops rows (all but the quality score, which adds a column) writes no copy of the corpus:
    it keeps which rows it kept (`RowsKept`), and the next group reads the last corpus written (the input, where it
    is parquet) through that (`Masked`): one write and one read of the corpus saved at each such boundary, for a
    pass that reads the rows dropped too. Once group i is recorded (`<i>.json`: its key, the stats so far, its
    rows, a digest of the report folders of the steps so far, `_finished` checks them; `<i>.parquet`: its rows, or
    the rows it kept), the files of the groups before it go, but for the corpus it reads. A step with no
    `fingerprint` leaves its group and those after it unrecorded (a rerun resumes from the last one recorded). A
    killed run, rerun, resumes after the last group it finished (`_resumed`) where what that was made of is the
    same, and the group it was in as that group's path does; a finished run removes the folder. The whole run holds
    the workdir (`stream.run_in`; `elsewhere`: how a second run gets another)."""
    folder = work / GROUPS
    with run_in(work, elsewhere):
        stamps = _stamps(corpus.files)  # before the digest that keys the groups: a later change is caught
        keys = _keys(parts, corpus)
        start, stats, source = _resumed(work, parts, keys)
        carry = carrier(corpus.schema())
        resume = _files(start - 1, source) if start else set()
        for i in range(start, len(parts)):
            reader = _reader(source, folder, corpus, carry, stamps)
            carried = None if reader is corpus else carry
            if i == len(parts) - 1:
                stats.update(run_group(parts[i], reader, output_path, work, carried, None, held=True))
                break  # a name given twice: the last step's, in the first one's place, as `run_pipeline`
            if _writes(parts[i], reader):
                stats.update(run_group(parts[i], reader, folder / f"{i:02d}.parquet", work, carried, carry,
                                       held=True))
                source, kept = Source(i, None), None
            else:
                sink = RowsKept(carry)
                stats.update(run_group(parts[i], reader, sink, work, carried, carry, held=True))
                kept = sink.kept
                source = Source(source.written, kept)
            if keys[i] is not None:
                _record(work, parts, i, keys[i], stats, source, kept)  # type: ignore[arg-type]
                resume = _files(i, source)
            elif i == start or keys[i - 1] is not None:
                _unrecorded(parts[i])
            _prune(folder, resume | _files(None, source))
        shutil.rmtree(folder, ignore_errors=True)
    return stats


def _unrecorded(group: Group) -> None:
    """Say which step leaves its group and those after it unrecorded, and how to have them reused. Not an error: a
    step may have nothing to compare (an incremental MinHash, whose output depends on its index too), and a digest of
    its class's source would not do (its settings are the instance's; the source is in the key already)."""
    names = ", ".join(step.name for step in group.steps if step.fingerprint() is None)
    log.info("%s: no fingerprint(), so a rerun runs this group and those after it again; give the step a "
             "fingerprint() returning its settings as a string to have them reused", names)


class Source(NamedTuple):
    """What the next group of a mixed run reads: the rows of `written` (the last group whose rows were written to
    GROUPS/<i>.parquet; None: the input) that `kept` holds (a bool by row of the original input; None: all)."""

    written: int | None
    kept: np.ndarray | None


def _writes(group: Group, reader: Corpus) -> bool:
    """Whether a group's rows are written, not only which it kept: the quality score adds a column, and a corpus of
    JSON (the input) read again at every pass of the groups after it costs more than one parquet written."""
    return group.kind == "score" or any(f.suffix != ".parquet" for f in reader.files)


def _reader(source: Source, folder: Path, corpus: Corpus, carry: str, stamps: list[tuple[int, int]]) -> Corpus:
    """The corpus a group reads (`Source`): the input, a group's written rows, or those `Masked` by the rows kept
    since (the input then checked unchanged since the run began, `stamps`)."""
    base = corpus if source.written is None else _intermediate(folder, source.written, corpus)
    if source.kept is None:
        return base
    return Masked(base, source.kept, carry, stamps if source.written is None else None)


def _stamps(files: list[Path]) -> list[tuple[int, int]]:
    return [(st.st_size, st.st_mtime_ns) for st in (f.stat() for f in files)]


class Masked(Corpus):
    """The rows of `base` (a parquet corpus) that `keep` holds, by their row in the original input (`base`'s place
    where it is the input, else its `carry` column), with that row in `carry`: what the groups since `base` would
    have written, read from `base` a chunk at a time: each read chunk's kept rows (not gathered into chunks of
    `chunk_rows`: holding and joining the pieces cost a 300 MB corpus's exact-dedup pass ~20 MB more, measured).
    `stamps`: the input's files' size and modification time when the run began; a pass refuses input changed since
    (the groups before read it as it was)."""

    def __init__(self, base: Corpus, keep: np.ndarray, carry: str, stamps: list[tuple[int, int]] | None) -> None:
        self.base, self.keep, self.carry, self.stamps = base, keep, carry, stamps
        self.path, self.files, self.chunk_rows = base.path, base.files, base.chunk_rows
        self.text_column, self.id_column = base.text_column, base.id_column

    def schema(self) -> pl.Schema:
        schema = self.base.schema()
        return schema if self.carry in schema else pl.Schema({**schema, self.carry: pl.Int64})

    def located_chunks(self, columns: Sequence[str] | None = None) -> Iterator[tuple[Path, int, pl.DataFrame]]:
        if self.stamps is not None and _stamps(self.files) != self.stamps:
            raise InputChanged(f"{self.path}: the input changed while this run read it (the groups after the first "
                               "read it again); rerun")
        own, start, given = self.carry in self.base.schema(), 0, False
        last: tuple[Path, pl.DataFrame] | None = None
        wanted = None if columns is None else list(dict.fromkeys([*columns, self.carry]))
        for file, first, chunk in self.base.located_chunks(wanted):
            rows = chunk[self.carry].to_numpy() if own else np.arange(start, start + chunk.height)
            start += chunk.height
            inside = rows < len(self.keep)
            inside[inside] = self.keep[rows[inside]]
            if not own:
                chunk = chunk.with_columns(pl.Series(self.carry, rows, dtype=pl.Int64))
            chunk = chunk if inside.all() else chunk.filter(pl.Series(inside))  # no copy of a chunk kept whole
            if columns is not None and self.carry not in columns:
                chunk = chunk.drop(self.carry)
            if chunk.height:
                given = True
                yield file, first, chunk
            last = (file, chunk.clear())
        if not given and last is not None:  # none kept: one chunk of no rows, as a written file of none
            yield last[0], 0, last[1]


def _intermediate(folder: Path, i: int, corpus: Corpus) -> Corpus:
    """Group i's written rows, read as the next group's input."""
    return Corpus(folder / f"{i:02d}.parquet", corpus.text_column, corpus.id_column, corpus.chunk_rows)


def _files(i: int | None, source: Source) -> set[str]:
    """The files in GROUPS a rerun or the next group needs: group i's record and rows (None: no record), and the
    corpus `source` reads."""
    names = {f"{i:02d}.json", f"{i:02d}.parquet"} if i is not None else set()
    return names | ({f"{source.written:02d}.parquet"} if source.written is not None else set())


def _prune(folder: Path, keep: set[str]) -> None:
    """Every file in GROUPS but those of `keep`: one copy of the corpus lies there at most while a group runs (two
    where a group after the score writes, or where a step with no fingerprint left the last one recorded)."""
    if folder.is_dir():
        for f in folder.iterdir():
            if f.name not in keep:
                f.unlink(missing_ok=True)


def _record(work: Path, parts: list[Group], i: int, key: str, stats: dict[str, Any], source: Source,
            kept: np.ndarray | None) -> None:
    """Group i's record, once its rows are on disk (fsynced first: a record never outlives a file cut short): its
    written rows (`source.written` is i), or `kept`, a bool by row of the original input (`RowsKept`), of the rows
    of the corpus `source` reads (`kept_of`: its group, -1 the input)."""
    out = work / GROUPS / f"{i:02d}.parquet"
    data: dict[str, Any] = {"key": key, "stats": stats, "reports": _reports_digest(work, parts[: i + 1])}
    if kept is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        pl.DataFrame({KEPT: kept}).write_parquet(out)
        over = source.written
        data["kept_of"] = -1 if over is None else over
        if over is not None:
            data["kept_of_rows"] = pq.read_metadata(work / GROUPS / f"{over:02d}.parquet").num_rows
    with out.open("rb") as f:
        os.fsync(f.fileno())
    data["rows"] = pq.read_metadata(out).num_rows
    write_json(work / GROUPS / f"{i:02d}.json", data)


KEPT = "kept"  # the column of a group's record of the rows it kept, a bool by row of the input (`_record`)


def _reports_digest(work: Path, parts: list[Group]) -> str:
    """An xxh3 of the report folders (`work/<step name>`) of the groups' steps: the reports a resumed run's stats
    stand for, which another run on the workdir may have rewritten since."""
    names = sorted({step.name for group in parts for step in group.steps})
    files = [[str(f.relative_to(work)), file_digest(f)] for name in names
             for f in sorted((work / name).rglob("*")) if f.is_file()]
    return xxhash.xxh3_128_hexdigest(json.dumps(files).encode())


def _finished(work: Path, parts: list[Group], i: int, key: str | None) -> tuple[dict[str, Any], Source] | None:
    """The stats up to group i as a killed run finished it and what the next group reads, where it was made from
    what this run would make it from (`key`), its rows are whole (the row count recorded; an unreadable file is
    not), as is the corpus they are kept of, and the reports of the steps so far are those it left; else None."""
    folder = work / GROUPS
    try:
        data = json.loads((folder / f"{i:02d}.json").read_text())
        rows = pq.read_metadata(folder / f"{i:02d}.parquet").num_rows
        if key is None or not isinstance(data, dict) or data.get("key") != key or data.get("rows") != rows:
            return None
        if data.get("reports") != _reports_digest(work, parts[: i + 1]):
            return None
        over = data.get("kept_of")
        if over is None:
            return data["stats"], Source(i, None)
        if over >= 0 and pq.read_metadata(folder / f"{over:02d}.parquet").num_rows != data.get("kept_of_rows"):
            return None
        kept = pl.read_parquet(folder / f"{i:02d}.parquet")[KEPT]
        if kept.dtype != pl.Boolean:
            return None
    except (OSError, ValueError, TypeError, KeyError, pl.exceptions.PolarsError):  # pyarrow's ArrowInvalid (no
        return None  # parquet footer) is a ValueError
    return data["stats"], Source(None if over < 0 else over, kept.to_numpy())


def _resumed(work: Path, parts: list[Group], keys: list[str | None]) -> tuple[int, dict[str, Any], Source]:
    """The group to start at, the stats of those before it and what it reads: after the last group a killed run
    finished (`_finished`) of the keys this run has, else 0. Every other file in the folder goes (another run's, or
    settings since changed), so a rerun holds no more than what it resumes from."""
    start, stats, source = 0, {}, Source(None, None)
    for i in reversed(range(len(keys) - 1)):
        done = _finished(work, parts, i, keys[i])
        if done is not None:
            start, (stats, source) = i + 1, done
            break
    _prune(work / GROUPS, _files(start - 1, source) if start else set())
    return start, stats, source


def _keys(parts: list[Group], corpus: Corpus) -> list[str | None]:
    """Each group's output key (`_chain`), from the input's (`_input_key`) on."""
    keys: list[str | None] = []
    key: str | None = _input_key(corpus)
    for group in parts:
        key = _chain(key, group.steps)
        keys.append(key)
    return keys


def _input_key(corpus: Corpus) -> str:
    """What the first group's output depends on in the input: its files (path and an xxh3 of their bytes, read
    once a run: a file rewritten to the same size with its mtime put back is told apart) and the columns read."""
    files = [[str(f.resolve()), file_digest(f)] for f in corpus.files]
    return json.dumps([str(corpus.path.resolve()), files, corpus.text_column, corpus.id_column])


def _chain(before: str | None, steps: list[Step]) -> str | None:
    """The key of a group's output: that of its input (`before`), each step's settings (`Step.fingerprint`) and
    `stream.code_digest`, and the source of the modules that run groups (`_runner_source`); None (never reused)
    where a step has no settings to compare or its input none."""
    settings = [step.fingerprint() for step in steps]
    if before is None or any(s is None for s in settings):
        return None
    return xxhash.xxh3_128_hexdigest(json.dumps([before, settings, [code_digest(s) for s in steps],
                                                 _runner_source(), pl.__version__]).encode())


def _runner_source() -> str:
    """A digest of the modules that run the groups (this one, `commands`, `stream`): how an intermediate file is
    written (its rows, the carried column) is theirs, not the steps'."""
    from textbookgen.curation import commands, stream

    modules = (commands, stream, sys.modules[__name__])
    return xxhash.xxh3_128_hexdigest(b"".join(Path(m.__file__).read_bytes() for m in modules))  # type: ignore[arg-type]
