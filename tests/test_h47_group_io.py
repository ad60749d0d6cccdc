"""A mixed out-of-core run (`groups.run_groups`) writes a copy of the corpus only where a group adds a column (the
quality score) or its input is JSON: a group that only drops rows hands the next one the rows it kept, read from the
last corpus written. Output, stats and reports stay those of the corpus read whole; a run killed at any boundary
resumes to the same; a rerun reuses the groups it finished."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from test_h28_review import _texts

from textbookgen.curation import commands, corpus_io, groups
from textbookgen.curation.base import RowStep, Verdict
from textbookgen.curation.config import FilterConfig
from textbookgen.curation.exact import ExactDedup
from textbookgen.curation.filters import HeuristicFilter
from textbookgen.curation.pipeline import run_pipeline
from textbookgen.curation.truncated import DropTruncated

CHUNK = 17  # rows per chunk: a kept chunk gathers rows of several read ones, and the files are cut mid-chunk


def _corpus(tmp_path: Path, suffix: str = ".parquet") -> Path:
    """Two files of C4 documents (ids, `finish_reason`), exact copies within and across them, some cut off."""
    t = _texts(150)
    t[100], t[140], t[20] = t[3], t[60], t[21]
    rows = [{"id": f"d{i}", "text": x, "finish_reason": "length" if i % 11 == 4 else "stop"} for i, x in enumerate(t)]
    src = tmp_path / "in"
    src.mkdir()
    for name, part in (("a", rows[:70]), ("b", rows[70:])):
        if suffix == ".parquet":
            pl.DataFrame(part).write_parquet(src / f"a{name}.parquet")
        else:
            (src / f"a{name}{suffix}").write_text("".join(json.dumps(r) + "\n" for r in part))
    return src


def _steps() -> list:
    """Groups: rows (truncated), dedup (exact), rows (filters), dedup (exact again)."""
    again = ExactDedup("text", "id")
    again.name = "exact_dedup_2"
    return [DropTruncated(), ExactDedup("text", "id"), HeuristicFilter(FilterConfig(min_words=60), "text", "id",
                                                                       workers=1), again]


def _whole(src: Path, steps: list, out: Path) -> dict:
    work = Path(str(out) + ".work")
    work.mkdir()
    kept, stats = run_pipeline(corpus_io.read_corpus(src), steps, work)
    corpus_io.write_corpus(kept, out)
    return stats


def _reports(work: Path) -> dict[str, pl.DataFrame]:
    return {str(p.relative_to(work)): pl.read_parquet(p) for p in sorted(work.glob("*/*.parquet"))}


def _same(out: Path, work: Path, stats: dict, expected: Path, expected_stats: dict) -> None:
    assert pl.read_parquet(out).equals(pl.read_parquet(expected))
    assert stats == expected_stats
    whole = _reports(Path(str(expected) + ".work"))
    assert set(whole) == set(_reports(work)) and whole
    for name, report in _reports(work).items():
        assert report.equals(whole[name]), name
    assert not (work / groups.GROUPS).exists()


@pytest.fixture
def writes(monkeypatch) -> list[Path]:
    """The files a run writes a corpus to (`CorpusWriter`), in order; chunks of CHUNK rows."""
    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", CHUNK)
    seen: list[Path] = []
    init = corpus_io.CorpusWriter.__init__

    def noting(self, path, schema) -> None:
        seen.append(Path(path))
        init(self, path, schema)

    monkeypatch.setattr(corpus_io.CorpusWriter, "__init__", noting)
    return seen


def test_a_mixed_run_writes_no_copy_of_a_parquet_corpus_between_its_groups(tmp_path, writes):
    """Four groups (rows, dedup, rows, dedup) on parquet: the output alone is written (before: a copy of the kept rows
    at each of the three boundaries), with the whole-corpus run's rows, stats and reports."""
    src = _corpus(tmp_path)
    expected = tmp_path / "whole.parquet"
    expected_stats = _whole(src, _steps(), expected)
    assert all(sum(st["dropped"].values()) for st in list(expected_stats.values())[:3]), expected_stats
    out, work = tmp_path / "out.parquet", tmp_path / "work"
    writes.clear()
    stats = commands.run_steps(src, out, _steps(), work)
    assert writes == [out]
    _same(out, work, stats, expected, expected_stats)


def test_a_json_corpus_is_written_once_after_the_first_group(tmp_path, writes):
    """JSON lines are parsed again at every read: the first group's rows are written as parquet, then no copy more."""
    src = _corpus(tmp_path, ".jsonl")
    expected = tmp_path / "whole.parquet"
    expected_stats = _whole(src, _steps(), expected)
    out, work = tmp_path / "out.parquet", tmp_path / "work"
    writes.clear()
    stats = commands.run_steps(src, out, _steps(), work)
    assert writes == [work / groups.GROUPS / "00.parquet", out]
    _same(out, work, stats, expected, expected_stats)


@pytest.mark.parametrize("killed_in", [1, 2, 3])
def test_a_run_killed_at_each_boundary_resumes_to_the_same_output(tmp_path, monkeypatch, killed_in):
    """Killed as group `killed_in` starts (the ones before it finished and recorded): the rerun runs only the groups
    from there, on the rows the finished ones kept, and writes what a run never killed writes."""
    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", CHUNK)
    src = _corpus(tmp_path)
    expected = tmp_path / "whole.parquet"
    expected_stats = _whole(src, _steps(), expected)
    real, ran, kill = groups.run_group, [], {"at": killed_in}

    def killing(group, *args, **kwargs):
        ran.append(group.steps[0].name)
        if len(ran) == kill["at"] + 1:
            raise KeyboardInterrupt
        return real(group, *args, **kwargs)

    monkeypatch.setattr(groups, "run_group", killing)
    out, work = tmp_path / "out.parquet", tmp_path / "work"
    with pytest.raises(KeyboardInterrupt):
        commands.run_steps(src, out, _steps(), work)
    left = sorted(f.name for f in (work / groups.GROUPS).iterdir())
    assert left == [f"{killed_in - 1:02d}.json", f"{killed_in - 1:02d}.parquet"]
    assert "text" not in pq.read_schema(work / groups.GROUPS / left[1]).names  # the rows kept, no copy of them
    ran.clear()
    kill["at"] = -2
    stats = commands.run_steps(src, out, _steps(), work)
    assert ran == [step.name for step in _steps()][killed_in:]
    _same(out, work, stats, expected, expected_stats)


class _Unprinted(RowStep):
    """A step of one's own with no `fingerprint`: drops documents under 80 words."""

    name = "short"

    def judge(self, chunks: Iterable[pl.DataFrame], total: int | None = None) -> Iterator[Verdict]:
        for chunk in chunks:
            short = chunk["text"].str.split(" ").list.len() < 80
            yield Verdict(chunk.filter(~short), dropped=Counter({"short": int(short.sum())}))


def test_a_step_without_a_fingerprint_leaves_no_copy_of_the_corpus(tmp_path, monkeypatch):
    """A group of a step with no fingerprint is never recorded (its output would be reused for settings it cannot
    compare): a rerun resumes from the last group recorded. Its rows kept are held in memory, so when the last group
    starts GROUPS holds that record alone, no copy of the corpus (before: the record's copy and the group's)."""
    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", CHUNK)
    src = _corpus(tmp_path)
    steps = _steps()
    steps[2] = _Unprinted()
    expected = tmp_path / "whole.parquet"
    expected_stats = _whole(src, steps, expected)
    real, held = groups.run_group, []

    def noting(group, corpus, output, work, *args, **kwargs):
        held.append(sorted(f.name for f in (work / groups.GROUPS).glob("*")) if (work / groups.GROUPS).exists()
                    else [])
        if len(held) == 4:
            for f in (work / groups.GROUPS).glob("*.parquet"):
                assert "text" not in pq.read_schema(f).names, f.name
        return real(group, corpus, output, work, *args, **kwargs)

    monkeypatch.setattr(groups, "run_group", noting)
    out, work = tmp_path / "out.parquet", tmp_path / "work"
    stats = commands.run_steps(src, out, steps, work)
    assert held[3] == ["01.json", "01.parquet"], held
    _same(out, work, stats, expected, expected_stats)


def test_input_changed_after_the_first_group_is_refused(tmp_path, monkeypatch):
    """The groups after the first read the input again (through the rows kept): an input rewritten after the first
    group read it is refused, naming it, not read as if its rows were those kept."""
    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", CHUNK)
    src = _corpus(tmp_path)
    real, ran = groups.run_group, []

    def rewriting(group, *args, **kwargs):
        ran.append(group)
        if len(ran) == 2:
            f = src / "ab.parquet"
            df = pl.read_parquet(f)
            df.with_columns(pl.col("text").reverse()).write_parquet(f)
            os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 1))
        return real(group, *args, **kwargs)

    monkeypatch.setattr(groups, "run_group", rewriting)
    with pytest.raises(ValueError, match="the input changed while this run read it"):
        commands.run_steps(src, tmp_path / "out.parquet", _steps(), tmp_path / "work")
