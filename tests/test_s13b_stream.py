"""`filter` and `decontaminate` (`run_steps` with steps that judge each document on its own) stream the corpus a
chunk at a time: the kept rows, ids, order, stats and reports of the corpus read whole, memory bounded by a chunk."""

from __future__ import annotations

import gzip
import json
import os
import random
from pathlib import Path

import polars as pl
import pytest

from textbookgen.curation import commands, corpus_io, decontaminate, filters
from textbookgen.curation.config import DecontaminationConfig, FilterConfig
from textbookgen.curation.decontaminate import Decontaminate
from textbookgen.curation.exact import ExactDedup
from textbookgen.curation.filters import HeuristicFilter
from textbookgen.curation.pipeline import run_pipeline
from textbookgen.curation.truncated import DropTruncated

CHUNK = 700  # rows per streamed chunk here: files of 1,000-2,500 rows cut mid-file, off the 300-row tasks
REPORTS = ("filters/dropped.parquet", "decontamination/contamination.parquet")
PID_FILE: Path | None = None  # where `_judge_noting_pid` notes the process that judged each task


def _read(path: Path, field: str) -> list[str]:
    return [json.loads(line)[field] for line in gzip.open(path, "rt", encoding="utf-8")]


@pytest.fixture(scope="module")
def bench(shared_data: Path) -> tuple[list[tuple[str, str, list[str]]], list[str]]:
    """(GSM8K and HumanEval test items, texts copied from some of them)."""
    from textbookgen.benchmarks import load_benchmark

    items = {"gsm8k": load_benchmark("gsm8k", shared_data / "gsm8k" / "test.jsonl.gz"),
             "humaneval": load_benchmark("humaneval", shared_data / "humaneval" / "HumanEval.jsonl.gz")}
    texts = [(name, it.id, [*it.texts(), it.exercise()]) for name, its in items.items() for it in its]
    copied = [items["gsm8k"][k].context for k in (3, 90, 400, 1200)] + [items["humaneval"][7].exercise()]
    return texts, copied


@pytest.fixture(scope="module")
def corpus(shared_data: Path, bench, tmp_path_factory) -> Path:
    """A folder of 4,540 real documents in three files of different formats and columns: Wikipedia (jsonl.gz,
    own ids), C4 + HumanEval code (parquet, `format` and `finish_reason`), WebText (jsonl, no ids: made up),
    with benchmark questions pasted into documents of each."""
    folder = tmp_path_factory.mktemp("s13b") / "corpus"
    (folder / "sub").mkdir(parents=True)
    rng = random.Random(13)
    wiki = _read(shared_data / "wikipedia_en_1k" / "wikipedia.jsonl.gz", "eng_Latn")
    c4 = _read(shared_data / "c4_en_sample_1k" / "c4_sample.jsonl.gz", "text")
    web = _read(shared_data / "webtext_snippets" / "webtext.valid.jsonl.gz", "text")[:2500]
    for docs in (wiki, c4, web):
        for k, leak in enumerate(bench[1]):
            i = rng.randrange(len(docs)) if k else len(docs) - 1 - k  # one in each file's last chunk
            docs[i] = f"{docs[i]}\n{leak}"
    with gzip.open(folder / "a.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"id": f"w{i}", "text": t}) + "\n" for i, t in enumerate(wiki))
    code = _read(shared_data / "humaneval" / "HumanEval.jsonl.gz", "canonical_solution")[:40]
    texts = c4 + code
    pl.DataFrame({"id": [f"c{i}" for i in range(len(texts))], "text": texts,
                  "format": ["web"] * len(c4) + ["code"] * len(code),
                  "finish_reason": ["length" if i % 37 == 5 else "stop" for i in range(len(texts))]}
                 ).write_parquet(folder / "b.parquet")
    (folder / "sub" / "c.jsonl").write_text("".join(json.dumps({"text": t, "source": "webtext"}) + "\n" for t in web))
    return folder


def steps(bench, workers: int) -> list:
    return [DropTruncated(), HeuristicFilter(FilterConfig(), workers=workers, chunk_size=300),
            Decontaminate(DecontaminationConfig(), texts=bench[0], workers=workers, chunk_size=300)]


def _judge_noting_pid(step: HeuristicFilter, rows: list[tuple[str, str | None]]) -> list[tuple[str | None, bool]]:
    assert PID_FILE is not None
    with PID_FILE.open("a") as f:
        f.write(f"{os.getpid()}\n")
    return [(step.check(doc := filters.Doc(text, step.is_code(text, fmt))), doc.is_code) for text, fmt in rows]


def test_streamed_filter_and_decontamination_match_the_whole_corpus_run(corpus, bench, tmp_path, monkeypatch):
    global PID_FILE
    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", CHUNK)
    monkeypatch.setattr(filters, "_judge_rows", _judge_noting_pid)
    PID_FILE = tmp_path / "pids.txt"
    stats = commands.run_steps(corpus, tmp_path / "out.parquet", steps(bench, 2), tmp_path / "work")
    pids = set(PID_FILE.read_text().split())
    # one pool of two workers for the whole stream, not one per chunk
    assert len(pids) == 2 and str(os.getpid()) not in pids

    whole = corpus_io.read_corpus(corpus)
    kept, expected = run_pipeline(whole, steps(bench, 1), tmp_path / "mem")
    corpus_io.write_corpus(kept, tmp_path / "mem.parquet")
    assert pl.read_parquet(tmp_path / "out.parquet").equals(pl.read_parquet(tmp_path / "mem.parquet"))
    assert stats == expected
    assert json.loads((tmp_path / "out.parquet.stats.json").read_text()) == expected
    for report in REPORTS:
        assert pl.read_parquet(tmp_path / "work" / report).equals(pl.read_parquet(tmp_path / "mem" / report))
    # not a comparison of runs that did nothing: every step dropped, in every file
    assert whole.height == 4540 and expected["truncated"]["dropped"]["cut_at_max_tokens"] == 28
    assert sum(expected["filters"]["dropped"].values()) > 300 and expected["filters"]["code_docs"] >= 40
    assert sum(expected["decontamination"]["dropped"].values()) >= 15
    assert {i[:1] for i in pl.read_parquet(tmp_path / "work" / REPORTS[1])["id"]} == {"w", "c", "s"}


@pytest.fixture(scope="module")
def streamed(corpus, bench, tmp_path_factory) -> dict:
    """One streamed run of the steps, noting the rows each step was handed at once and refusing a read of the whole
    corpus: what test_no_step_is_handed_more_than_a_chunk checks, and the run a killed one's rerun must equal
    (test_a_killed_run_resumes_from_the_chunks_it_finished), made once for both (a pass over the corpus each)."""
    def whole_read(*args, **kwargs):
        raise AssertionError("the corpus was read whole (read_corpus)")

    folder = tmp_path_factory.mktemp("streamed")
    handed: dict[str, list[int]] = {"filters": [], "decontamination": []}
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(corpus_io, "CHUNK_ROWS", CHUNK)
        monkeypatch.setattr(commands, "read_corpus", whole_read)
        for module in (filters, decontaminate):
            def noting(df: pl.DataFrame, columns: list[str], where: str, check=module.require_columns) -> None:
                handed[where].append(df.height)
                check(df, columns, where)
            monkeypatch.setattr(module, "require_columns", noting)
        stats = commands.run_steps(corpus, folder / "out.jsonl", steps(bench, 1), folder / "work")
    return {"stats": stats, "handed": handed, "out": folder / "out.jsonl", "work": folder / "work"}


def test_no_step_is_handed_more_than_a_chunk(streamed):
    """The bounded memory: the corpus is never read whole, and each step gets at most a chunk's rows at once."""
    handed, stats = streamed["handed"], streamed["stats"]
    assert max(handed["filters"]) == CHUNK and max(handed["decontamination"]) <= CHUNK  # after the filters' drops
    assert sum(handed["filters"]) == stats["filters"]["in"] == stats["truncated"]["kept"]
    assert sum(handed["decontamination"]) == stats["decontamination"]["in"] == stats["filters"]["kept"]
    assert len(handed["filters"]) >= 7  # 4,540 rows over three files in chunks of 700 at most


def test_a_list_mixing_a_streamed_step_with_dedup_gives_what_the_whole_corpus_gives(corpus, tmp_path):
    """A row step then exact dedup (which needs every document at once) run a group at a time (`groups.run_groups`:
    the row step streamed, dedup on its output): the stats and kept rows of the steps on the corpus read whole."""
    stats = commands.run_steps(corpus, tmp_path / "out.parquet", [DropTruncated(), ExactDedup()], tmp_path / "work")
    kept, expected = run_pipeline(corpus_io.read_corpus(corpus), [DropTruncated(), ExactDedup()])
    assert stats == expected and expected["truncated"]["kept"] < 4540
    assert pl.read_parquet(tmp_path / "out.parquet")["id"].to_list() == kept["id"].to_list()


def test_progress_of_a_stream_of_unknown_length_gives_the_count():
    """A corpus read a chunk at a time has no known total: the log line says how many are done, not a share."""
    import io
    import itertools

    from textbookgen.curation.base import logged_progress

    ticks, out = itertools.count(0, 30), io.StringIO()
    assert list(logged_progress(range(5), None, "filtering", out, every_s=60, clock=lambda: next(ticks))) == [0, 1, 2, 3, 4]
    assert out.getvalue().splitlines() == ["filtering: 2 after 1m00s", "filtering: 4 after 2m00s"]


def test_a_killed_run_resumes_from_the_chunks_it_finished(corpus, bench, streamed, tmp_path, monkeypatch):
    """Killed between chunks (an exception while the filter takes the fifth chunk), the rerun judges only the
    chunks the first run had not finished, and writes what a run never killed writes (`streamed`)."""
    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", CHUNK)
    fresh = streamed["stats"]
    handed: list[int] = []

    def noting(df: pl.DataFrame, columns: list[str], where: str, check=filters.require_columns) -> None:
        handed.append(df.height)
        if len(handed) == 5 and kill:
            raise KeyboardInterrupt
        check(df, columns, where)

    monkeypatch.setattr(filters, "require_columns", noting)
    kill, out, work = True, tmp_path / "out.jsonl", tmp_path / "work"
    with pytest.raises(KeyboardInterrupt):
        commands.run_steps(corpus, out, steps(bench, 1), work)
    assert not out.exists()
    stored = sorted((work / "finished_chunks").glob("0*.json"))
    assert len(stored) >= 2
    skipped = sum(json.loads(p.read_text())["parts"][1]["in"] for p in stored)  # rows the filter had judged

    kill, handed[:] = False, []
    stats = commands.run_steps(corpus, out, steps(bench, 1), work)
    assert sum(handed) == fresh["filters"]["in"] - skipped and skipped > 0
    assert stats == fresh
    assert out.read_bytes() == streamed["out"].read_bytes()
    for report in REPORTS:
        assert pl.read_parquet(work / report).equals(pl.read_parquet(streamed["work"] / report))
    assert not (work / "finished_chunks").exists()  # a finished run leaves its output and reports only


def test_stored_chunks_of_other_settings_are_not_used(corpus, bench, tmp_path, monkeypatch):
    """Verdicts a killed run stored hold only for its settings: a rerun with others judges every chunk again."""
    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", CHUNK)
    calls = []

    def killing(df: pl.DataFrame, columns: list[str], where: str, check=filters.require_columns) -> None:
        calls.append(df.height)
        if len(calls) == 4:
            raise KeyboardInterrupt
        check(df, columns, where)

    monkeypatch.setattr(filters, "require_columns", killing)
    with pytest.raises(KeyboardInterrupt):
        commands.run_steps(corpus, tmp_path / "out.parquet", [HeuristicFilter(workers=1)], tmp_path / "work")
    assert list((tmp_path / "work" / "finished_chunks").glob("0*.json"))
    monkeypatch.undo()
    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", CHUNK)
    stricter = [HeuristicFilter(FilterConfig(min_words=120), workers=1)]
    stats = commands.run_steps(corpus, tmp_path / "out.parquet", stricter, tmp_path / "work")
    kept, expected = run_pipeline(corpus_io.read_corpus(corpus), [HeuristicFilter(FilterConfig(min_words=120),
                                                                                  workers=1)])
    assert stats == expected
    assert pl.read_parquet(tmp_path / "out.parquet")["id"].to_list() == kept["id"].to_list()


def test_ctrl_c_in_filter_says_where_the_finished_chunks_are(shared_data, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from textbookgen.cli import app

    texts = _read(shared_data / "wikipedia_en_1k" / "wikipedia.jsonl.gz", "eng_Latn")[:30]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", 3)
    calls = []

    def killing(df: pl.DataFrame, columns: list[str], where: str, check=filters.require_columns) -> None:
        calls.append(df.height)
        if len(calls) == 8:  # past the chunks a pool of workers takes ahead
            raise KeyboardInterrupt
        check(df, columns, where)

    monkeypatch.setattr(filters, "require_columns", killing)
    out = tmp_path / "out.jsonl"
    res = CliRunner().invoke(app, ["filter", str(src), "-o", str(out)])
    assert res.exit_code == 130 and not out.exists()
    assert f"the chunks judged so far are kept in {out}.work; rerun the same command" in res.output
