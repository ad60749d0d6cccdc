"""A step list of several kinds (`pipeline.build_steps`': row steps, dedup, the quality score and cut) run on a
corpus of any size: cut into consecutive groups that one out-of-core path each runs, a group at a time, each
reading the one before it's output from the workdir; a killed run, rerun, resumes from the last group it
finished."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import polars as pl
import pyarrow.parquet as pq
import xxhash

from textbookgen.curation.base import RowStep, Step
from textbookgen.curation.corpus_io import Corpus, file_digest
from textbookgen.curation.stream import ELSEWHERE, GROUPS, carrier, code_digest, run_in, write_json

if TYPE_CHECKING:
    from textbookgen.curation.config import CurationConfig
    from textbookgen.curation.decontaminate import ItemTexts

# how a build refused by the workdir lock (`stream._sole_run`) gets another: its workdir is <out>/.build/curation
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


def run_group(group: Group, corpus: Corpus, output_path: str | Path, work: Path, carried: str | None = None,
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
    (`run_group`) reads the output of the one before it, `work/GROUPS/<i>.parquet`, which carries each row's place
    in the original input (in the column `stream.carrier` names) so that every report names it as the whole-corpus
    run does; the last writes the output. Once group i is recorded (`<i>.json`: its key, the stats so far, its
    output's row count and a digest of the report folders of the steps so far: `_finished` checks them),
    group i-1's files go: one finished copy of the corpus lies there (and the one being written; two where a
    step has no `fingerprint`, whose groups are never recorded: the last one recorded stays for a rerun). A
    killed run, rerun, resumes after the last group it finished (`_resumed`) where what that was made of is the
    same, and the group it was in as that group's path does; a finished run removes the folder. The whole run
    holds the workdir (`stream.run_in`; `elsewhere`: how a second run gets another)."""
    folder = work / GROUPS
    with run_in(work, elsewhere):
        keys = _keys(parts, corpus)
        start, stats = _resumed(work, parts, keys)
        carry = carrier(corpus.schema())
        source = corpus if start == 0 else _intermediate(folder, start - 1, corpus)
        for i in range(start, len(parts)):
            last = i == len(parts) - 1
            out = Path(output_path) if last else folder / f"{i:02d}.parquet"
            stats.update(run_group(parts[i], source, out, work, carry if i else None, None if last else carry,
                                   held=True))
            # a name given twice: the last step's, in the first one's place, as `run_pipeline`
            if not last:
                if keys[i] is not None:
                    _record(work, parts, i, keys[i], stats)  # type: ignore[arg-type]
                if i and (keys[i] is not None or keys[i - 1] is None):  # else i-1 is where a rerun resumes
                    _drop(folder, i - 1)
                source = _intermediate(folder, i, corpus)
        shutil.rmtree(folder, ignore_errors=True)
    return stats


def _intermediate(folder: Path, i: int, corpus: Corpus) -> Corpus:
    """Group i's output, read as the next group's input."""
    return Corpus(folder / f"{i:02d}.parquet", corpus.text_column, corpus.id_column, corpus.chunk_rows)


def _drop(folder: Path, i: int) -> None:
    """Group i's output and record, once the group after it is recorded: a rerun resumes from the latest."""
    for suffix in (".json", ".parquet"):
        (folder / f"{i:02d}{suffix}").unlink(missing_ok=True)


def _record(work: Path, parts: list[Group], i: int, key: str, stats: dict[str, Any]) -> None:
    """Group i's record, once its output is on disk (fsynced first: a record never outlives a file cut short)."""
    out = work / GROUPS / f"{i:02d}.parquet"
    with out.open("rb") as f:
        os.fsync(f.fileno())
    write_json(work / GROUPS / f"{i:02d}.json", {"key": key, "stats": stats, "rows": pq.read_metadata(out).num_rows,
                                                 "reports": _reports_digest(work, parts[: i + 1])})


def _reports_digest(work: Path, parts: list[Group]) -> str:
    """An xxh3 of the report folders (`work/<step name>`) of the groups' steps: the reports a resumed run's stats
    stand for, which another run on the workdir may have rewritten since."""
    names = sorted({step.name for group in parts for step in group.steps})
    files = [[str(f.relative_to(work)), file_digest(f)] for name in names
             for f in sorted((work / name).rglob("*")) if f.is_file()]
    return xxhash.xxh3_128_hexdigest(json.dumps(files).encode())


def _finished(work: Path, parts: list[Group], i: int, key: str | None) -> dict[str, Any] | None:
    """The stats up to group i as a killed run finished it, where it was made from what this run would make it
    from (`key`), its output is whole (the row count recorded; an unreadable file is not) and the reports of the
    steps so far are those it left; else None."""
    folder = work / GROUPS
    try:
        data = json.loads((folder / f"{i:02d}.json").read_text())
        rows = pq.read_metadata(folder / f"{i:02d}.parquet").num_rows
    except (OSError, ValueError):  # pyarrow's ArrowInvalid (no parquet footer) is a ValueError
        return None
    if key is None or not isinstance(data, dict) or data.get("key") != key or data.get("rows") != rows:
        return None
    return data.get("stats") if data.get("reports") == _reports_digest(work, parts[: i + 1]) else None


def _resumed(work: Path, parts: list[Group], keys: list[str | None]) -> tuple[int, dict[str, Any]]:
    """The group to start at and the stats of those before it: after the last group a killed run finished
    (`_finished`) of the keys this run has, else 0. Every other file in the folder goes (another run's, or
    settings since changed), so a rerun holds no more than the one it resumes from."""
    folder = work / GROUPS
    start, stats = 0, {}
    for i in reversed(range(len(keys) - 1)):
        done = _finished(work, parts, i, keys[i])
        if done is not None:
            start, stats = i + 1, done
            break
    if folder.is_dir():
        keep = {f"{start - 1:02d}.json", f"{start - 1:02d}.parquet"} if start else set()
        for f in folder.iterdir():
            if f.name not in keep:
                f.unlink(missing_ok=True)
    return start, stats


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
