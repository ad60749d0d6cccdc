"""Review of the streamed `filter` / `decontaminate` (`stream.stream_out_of_core`): null texts, worker pools after a
failure, and what a killed run's stored verdicts hold for (the input as given, the bytes read, one run at a time)."""

from __future__ import annotations

import gzip
import json
import multiprocessing
import os
from pathlib import Path

import polars as pl
import pytest

from textbookgen.curation import commands, corpus_io, decontaminate, filters, stream
from textbookgen.curation.config import FilterConfig
from textbookgen.curation.filters import HeuristicFilter

SHORT = "too short to keep"  # dropped by the filters (too_short)


@pytest.fixture(scope="module")
def texts(shared_data: Path) -> list[str]:
    """40 Wikipedia articles, which the default filters keep, with every fourth one made too short."""
    with gzip.open(shared_data / "wikipedia_en_1k" / "wikipedia.jsonl.gz", "rt", encoding="utf-8") as f:
        wiki = [json.loads(line)["eng_Latn"] for _, line in zip(range(40), f, strict=False)]
    kept = [t for t in wiki if not HeuristicFilter().check(filters.Doc(t, False))]
    return [SHORT if i % 4 == 1 else t for i, t in enumerate(kept)]


def _lines(texts: list[str], ids: bool = True) -> str:
    return "".join(json.dumps({"id": i, "text": t} if ids else {"text": t}) + "\n" for i, t in enumerate(texts))


def _killing(at: int, then=None):
    """A `require_columns` for the filters that raises KeyboardInterrupt on its `at`th call (a chunk handed to
    the filter), after calling `then` on earlier ones."""
    calls, check = [], filters.require_columns

    def noting(df: pl.DataFrame, columns: list[str], where: str) -> None:
        calls.append(df.height)
        if len(calls) == at:
            raise KeyboardInterrupt
        if then is not None:
            then(len(calls))
        check(df, columns, where)
    return noting


def _fresh(src: Path, steps: list, tmp_path: Path, name: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A run never killed, on a workdir of its own: (its output, its dropped.parquet)."""
    commands.run_steps(src, tmp_path / f"{name}.parquet", steps, tmp_path / f"{name}.work")
    return pl.read_parquet(tmp_path / f"{name}.parquet"), pl.read_parquet(tmp_path / f"{name}.work/filters/dropped.parquet")


def _killed_filter(src: Path, tmp_path: Path, monkeypatch) -> None:
    """A filter run on `src` into tmp_path/work, killed (Ctrl-C) as its 5th chunk reaches the filter."""
    with monkeypatch.context() as m:
        m.setattr(filters, "require_columns", _killing(5))
        with pytest.raises(KeyboardInterrupt):
            commands.run_steps(src, tmp_path / "out.parquet", [HeuristicFilter(workers=1)], tmp_path / "work")


def test_a_null_text_is_named_before_a_step_reads_it(texts, tmp_path, monkeypatch):
    """The whole-corpus read refused a null text naming the file and row; streamed, the filter got the chunk
    first and failed on None ('NoneType' object has no attribute 'split')."""
    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", 4)
    src = tmp_path / "in.jsonl"
    src.write_text(_lines([None if i == 6 else t for i, t in enumerate(texts[:10])]))
    with pytest.raises(ValueError, match=r"in.jsonl: 1 row\(s\) with a null 'text' \(the first: row 7\)"):
        commands.run_steps(src, tmp_path / "out.jsonl", [HeuristicFilter(workers=1)], tmp_path / "work")
    assert not (tmp_path / "work").exists() and not (tmp_path / "out.jsonl").exists()


def test_a_failure_while_writing_leaves_no_worker_pool(texts, tmp_path, monkeypatch):
    """A failure in the stream's own loop (here a full disk as a chunk is stored) shuts the filter's pool down:
    its workers were left to live as long as the exception's traceback (a notebook keeps the last one)."""
    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", 5)
    src = tmp_path / "in.jsonl"
    src.write_text(_lines(texts))
    saved, save = [], stream.ChunkStore.save

    def failing(self, *args) -> None:
        saved.append(args[0])
        if len(saved) == 3:
            raise OSError(28, "No space left on device")
        save(self, *args)

    monkeypatch.setattr(stream.ChunkStore, "save", failing)
    before = set(multiprocessing.active_children())
    with pytest.raises(OSError, match="No space left") as failed:
        commands.run_steps(src, tmp_path / "out.jsonl", [HeuristicFilter(workers=2, chunk_size=2)], tmp_path / "work")
    assert failed.traceback and set(multiprocessing.active_children()) <= before


def test_a_rerun_on_a_subfolder_names_its_own_made_up_ids(texts, tmp_path, monkeypatch):
    """Made-up ids are "<path under the input>:<row>": a killed run on a folder, rerun on its subfolder that holds
    every file (the same files, the same key but the input), reported the folder run's ids for stored chunks."""
    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", 4)
    (tmp_path / "corpus" / "sub").mkdir(parents=True)
    (tmp_path / "corpus" / "sub" / "part.jsonl").write_text(_lines(texts, ids=False))
    sub = tmp_path / "corpus" / "sub"
    expected, report = _fresh(sub, [HeuristicFilter(workers=1)], tmp_path, "fresh")
    _killed_filter(tmp_path / "corpus", tmp_path, monkeypatch)
    assert len(list((tmp_path / "work" / stream.STORE).glob("0*.json"))) >= 2
    commands.run_steps(sub, tmp_path / "out.parquet", [HeuristicFilter(workers=1)], tmp_path / "work")
    dropped = pl.read_parquet(tmp_path / "work/filters/dropped.parquet")
    assert dropped["id"].to_list()[:2] == ["part:1", "part:5"]
    assert dropped.equals(report) and pl.read_parquet(tmp_path / "out.parquet").equals(expected)


def test_a_file_rewritten_with_the_same_size_and_time_is_judged_again(texts, tmp_path, monkeypatch):
    """Two lines swapped and the modification time put back (`cp -p`, `rsync -t` of another copy): the key of
    sizes and times is the same, yet the chunks are not; their stored verdicts kept a short text and dropped a
    long one."""
    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", 4)
    src = tmp_path / "in.jsonl"
    src.write_text(_lines(texts))
    _killed_filter(src, tmp_path, monkeypatch)
    before = src.stat()
    lines = src.read_text().splitlines(keepends=True)
    lines[0], lines[1] = lines[1], lines[0]  # row 0 is now the short text, row 1 a long one
    src.write_text("".join(lines))
    os.utime(src, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (src.stat().st_size, src.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)

    stats = commands.run_steps(src, tmp_path / "out.parquet", [HeuristicFilter(workers=1)], tmp_path / "work")
    expected, report = _fresh(src, [HeuristicFilter(workers=1)], tmp_path, "fresh")
    assert pl.read_parquet(tmp_path / "out.parquet").equals(expected)
    assert pl.read_parquet(tmp_path / "work/filters/dropped.parquet").equals(report)
    assert report["row"].to_list()[:2] == [0, 5] and stats["filters"]["dropped"] == {"too_short": report.height}


def test_a_second_run_on_the_workdir_at_once_is_refused(texts, tmp_path, monkeypatch):
    """Run A (default filters) is storing chunks when run B (stricter filters) starts on the same workdir. B
    removed A's chunks (another key) and stored its own; A went on storing into B's folder, under B's key; both
    killed, B's rerun took A's verdicts for its own and kept documents of under 120 words."""
    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", 4)
    src = tmp_path / "in.jsonl"
    src.write_text(_lines(texts))
    out, work = tmp_path / "out.parquet", tmp_path / "work"
    stricter = FilterConfig(min_words=120)
    refused: list[str] = []

    def run_b(call: int) -> None:
        if call != 3:
            return
        with monkeypatch.context() as m:
            m.setattr(filters, "require_columns", _killing(3))
            try:
                commands.run_steps(src, tmp_path / "b.parquet", [HeuristicFilter(stricter, workers=1)], work)
            except KeyboardInterrupt:
                pass
            except ValueError as err:
                refused.append(str(err))

    with monkeypatch.context() as m:
        m.setattr(filters, "require_columns", _killing(7, then=run_b))
        with pytest.raises(KeyboardInterrupt):
            commands.run_steps(src, out, [HeuristicFilter(workers=1)], work)
    stats = commands.run_steps(src, tmp_path / "b.parquet", [HeuristicFilter(stricter, workers=1)], work)
    expected, _ = _fresh(src, [HeuristicFilter(stricter, workers=1)], tmp_path, "fresh")
    assert pl.read_parquet(tmp_path / "b.parquet").equals(expected) and stats["filters"]["kept"] < len(texts) * 3 // 4
    assert refused == [f"workdir {work}: another curation run is using it; wait for it to end, "
                       "or give this one another --workdir"]


def test_reports_held_do_not_grow_with_chunks_that_report_nothing(tmp_path, monkeypatch):
    """A chunk with no match still made a report frame (~2 KB each, held to the end): 100k chunks of a clean corpus
    held ~200 MB of empty frames. One empty frame is kept for the columns, and the report is the whole run's."""
    from textbookgen.curation.config import DecontaminationConfig
    from textbookgen.curation.decontaminate import Decontaminate

    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", 20)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": f"note {i} on the harvest of the year {1900 + i % 99}"}) + "\n"
                           for i in range(2000)))
    item = "A farmer sells 12 eggs a day at 3 dollars each and keeps the rest for the family; how many are sold?"
    seen: list[int] = []
    finish = Decontaminate.finish

    def noting(self, reports: list[pl.DataFrame], workdir: Path | None, stats) -> None:
        seen.append(len(reports))
        finish(self, reports, workdir, stats)

    monkeypatch.setattr(Decontaminate, "finish", noting)
    steps = [Decontaminate(DecontaminationConfig(), texts=[("bench", "1", [item])], workers=1)]
    stats = commands.run_steps(src, tmp_path / "out.parquet", steps, tmp_path / "work")
    assert stats["decontamination"]["in"] == stats["decontamination"]["kept"] == 2000
    assert seen == [1]
    report = pl.read_parquet(tmp_path / "work/decontamination/contamination.parquet")
    assert report.height == 0 and report.schema == pl.Schema(decontaminate.REPORT_SCHEMA)


def test_a_stored_chunk_that_cannot_be_read_back_is_judged_again(texts, tmp_path, monkeypatch):
    """A report file cut short (a crash before it reached the disk, its record renamed in): every rerun failed
    reading it, and the error named no way out but removing the workdir."""
    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", 4)
    src = tmp_path / "in.jsonl"
    src.write_text(_lines(texts))
    _killed_filter(src, tmp_path, monkeypatch)
    report = tmp_path / "work" / stream.STORE / "000001.0.parquet"
    report.write_bytes(report.read_bytes()[:20])
    commands.run_steps(src, tmp_path / "out.parquet", [HeuristicFilter(workers=1)], tmp_path / "work")
    expected, dropped = _fresh(src, [HeuristicFilter(workers=1)], tmp_path, "fresh")
    assert pl.read_parquet(tmp_path / "out.parquet").equals(expected)
    assert pl.read_parquet(tmp_path / "work/filters/dropped.parquet").equals(dropped) and dropped.height >= 5


def test_ctrl_c_before_a_chunk_is_stored_leaves_no_workdir(texts, tmp_path, monkeypatch):
    """The workdir a run made for its lock goes with it when there is nothing in it for a rerun."""
    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", 4)
    monkeypatch.setattr(filters, "require_columns", _killing(1))
    src = tmp_path / "in.jsonl"
    src.write_text(_lines(texts))
    with pytest.raises(KeyboardInterrupt):
        commands.run_steps(src, tmp_path / "out.parquet", [HeuristicFilter(workers=1)], tmp_path / "work")
    assert not (tmp_path / "work").exists() and not (tmp_path / "out.parquet").exists()


def _wait_forever(started) -> None:
    """A forked child that says it runs (past fork's handlers), then idles as a pool worker waiting for work."""
    import time

    started.set()
    time.sleep(60)


def test_a_forked_worker_does_not_hold_the_workdir_lock(tmp_path):
    """Pool workers are forked while the run holds its lock; a run killed hard leaves them behind, and a copy of
    the lock they kept would refuse every rerun while they live."""
    fork = multiprocessing.get_context("fork")
    started = fork.Event()
    child = fork.Process(target=_wait_forever, args=(started,))
    with stream._sole_run(tmp_path / "work"):
        child.start()
        assert started.wait(30)
    try:
        with stream._sole_run(tmp_path / "work"):
            assert child.is_alive()
    finally:
        child.kill()
        child.join()
