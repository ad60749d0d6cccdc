"""Review r28 of h28's mixed step lists (`groups.run_groups`), mended by m28: an input column named as the carried
row, a cut on files one without scores, input changed in content only, a second run on a workdir in use, and how
many intermediate copies lie in the workdir at once."""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import polars as pl
import pytest
from conftest import SHARED_DATA
from test_h23_score_stream import read_whole

from textbookgen.curation import commands, corpus_io, groups
from textbookgen.curation.classifier import QualityCut
from textbookgen.curation.config import ClassifierConfig, FilterConfig
from textbookgen.curation.exact import ExactDedup
from textbookgen.curation.filters import HeuristicFilter
from textbookgen.curation.stream import ROW_FILE

DATA = SHARED_DATA  # ../shared/data beside the project (a user's clone has none: these tests skip)


def _texts(n: int) -> list[str]:
    path = DATA / "c4_en_sample_1k" / "c4_sample.jsonl.gz"
    if not path.exists():
        pytest.skip(f"{path} absent (only developer and CI machines have ../shared/data)")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(x)["text"] for x in f][:n]


def _steps(min_words: int = 50):
    return [HeuristicFilter(FilterConfig(min_words=min_words), "text", "id", workers=1), ExactDedup("text", "id")]


def test_an_input_column_named_like_the_carried_row_is_kept(tmp_path, monkeypatch):
    """An input of a column `__textbookgen_input_row__` of its own: run_pipeline keeps it as any column; the
    streamed run takes it for the row numbers (reports wrong) and drops it from the output."""
    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", 40)
    t = _texts(200)
    t[150] = t[3]
    src = tmp_path / "in"
    src.mkdir()
    pl.DataFrame({"id": [f"d{i}" for i in range(200)], "text": t, ROW_FILE: [7] * 200}).write_parquet(src / "a.parquet")
    expected = tmp_path / "whole.parquet"
    read_whole(src, _steps(), expected)
    out = tmp_path / "out.parquet"
    commands.run_steps(src, out, _steps(), tmp_path / "work")
    assert pl.read_parquet(out).equals(pl.read_parquet(expected))
    for rep in ("filters/dropped.parquet", "exact_dedup/duplicates.parquet"):
        if (Path(str(expected) + ".work") / rep).exists():
            assert pl.read_parquet(tmp_path / "work" / rep).equals(pl.read_parquet(Path(str(expected) + ".work") / rep)), rep


def test_a_group_output_is_not_reused_for_an_input_changed_in_content(tmp_path, monkeypatch):
    """Killed in exact dedup, the input rewritten (same size, mtime put back): the rerun reuses the filters'
    output of the old input."""
    t = _texts(120)
    src = tmp_path / "in"
    src.mkdir()
    f = src / "a.jsonl"
    rows = [{"id": f"d{i}", "text": x} for i, x in enumerate(t)]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    calls = []
    real = commands.dedup_out_of_core

    def killed(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(commands, "dedup_out_of_core", killed)
    work, out = tmp_path / "work", tmp_path / "out.parquet"
    with pytest.raises(KeyboardInterrupt):
        commands.run_steps(src, out, _steps(), work)
    assert (work / groups.GROUPS / "00.parquet").exists()
    st = f.stat()
    rows[0]["text"], rows[1]["text"] = rows[1]["text"], rows[0]["text"]  # same bytes, other order
    rows[0]["id"], rows[1]["id"] = "d1", "d0"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    monkeypatch.undo()
    commands.run_steps(src, out, _steps(), work)
    expected = tmp_path / "whole.parquet"
    read_whole(src, _steps(), expected)
    assert pl.read_parquet(out).equals(pl.read_parquet(expected))


def test_intermediate_files_held_at_once(tmp_path, monkeypatch):
    """How many intermediate copies of the corpus lie in finished_groups when the last group starts."""
    from textbookgen.curation.truncated import DropTruncated
    t = _texts(100)
    src = tmp_path / "in"
    src.mkdir()
    pl.DataFrame({"id": [f"d{i}" for i in range(100)], "text": t, "finish_reason": ["stop"] * 100}).write_parquet(src / "a.parquet")
    seen = []
    real = groups.run_group

    def noting(group, corpus, output, work, *args, **kwargs):
        seen.append(len(list((work / groups.GROUPS).glob("*.parquet"))))
        return real(group, corpus, output, work, *args, **kwargs)

    monkeypatch.setattr(groups, "run_group", noting)
    steps = [DropTruncated(), ExactDedup("text", "id"), HeuristicFilter(FilterConfig(), "text", "id", workers=1),
             ExactDedup("text", "id")]
    steps[3].name = "exact_dedup_2"
    commands.run_steps(src, tmp_path / "out.parquet", steps, tmp_path / "work")
    assert len(seen) == 4 and max(seen) <= 1, seen


def test_a_second_mixed_run_on_a_workdir_in_use_is_refused(tmp_path, monkeypatch):
    """Run A waits in its dedup group; run B on the same workdir should be refused (as a streamed run is), not
    take A's finished group, write the output and remove the folder A is reading from."""
    import threading
    t = _texts(120)
    src = tmp_path / "in"
    src.mkdir()
    pl.DataFrame({"id": [f"d{i}" for i in range(120)], "text": t}).write_parquet(src / "a.parquet")
    entered, release = threading.Event(), threading.Event()
    real = commands.dedup_out_of_core
    first = []

    def waiting(*a, **k):
        if not first:
            first.append(1)
            entered.set()
            release.wait(60)
        return real(*a, **k)

    monkeypatch.setattr(commands, "dedup_out_of_core", waiting)
    work, errors = tmp_path / "work", []

    def run_a():
        try:
            commands.run_steps(src, tmp_path / "a.parquet", _steps(), work)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    a = threading.Thread(target=run_a)
    a.start()
    assert entered.wait(60)
    try:
        with pytest.raises(Exception, match="workdir|in use|another"):
            commands.run_steps(src, tmp_path / "b.parquet", _steps(), work)
    finally:
        release.set()
        a.join(60)
    assert not errors, errors


def test_a_filter_alone_keeps_an_input_column_named_like_the_carried_row(tmp_path, monkeypatch):
    """The same with the filters alone (a list that streamed before h28): the column is kept, reports numbered by
    place."""
    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", 40)
    src = tmp_path / "in"
    src.mkdir()
    pl.DataFrame({"id": [f"d{i}" for i in range(200)], "text": _texts(200), ROW_FILE: [7] * 200}
                 ).write_parquet(src / "a.parquet")
    steps = lambda: [HeuristicFilter(FilterConfig(min_words=50), "text", "id", workers=1)]  # noqa: E731
    expected = tmp_path / "whole.parquet"
    read_whole(src, steps(), expected)
    out = tmp_path / "out.parquet"
    commands.run_steps(src, out, steps(), tmp_path / "work")
    assert pl.read_parquet(out).equals(pl.read_parquet(expected))
    rep = "filters/dropped.parquet"
    assert pl.read_parquet(tmp_path / "work" / rep).equals(pl.read_parquet(Path(str(expected) + ".work") / rep))


def test_a_cut_alone_on_files_one_without_scores(tmp_path):
    """A cut alone on two files, one with no `quality_score`: the corpus read whole gives that file's rows null
    scores (0.0 to the cut); the streamed cut should do the same."""
    t = _texts(60)
    src = tmp_path / "in"
    src.mkdir()
    pl.DataFrame({"id": [f"a{i}" for i in range(30)], "text": t[:30], "quality_score": [i / 30 for i in range(30)]}
                 ).write_parquet(src / "a.parquet")
    pl.DataFrame({"id": [f"b{i}" for i in range(30)], "text": t[30:]}).write_parquet(src / "b.parquet")
    steps = lambda: [QualityCut(ClassifierConfig(threshold=0.5), "id")]  # noqa: E731
    expected = tmp_path / "whole.parquet"
    stats_whole = read_whole(src, steps(), expected)
    out = tmp_path / "out.parquet"
    stats = commands.run_steps(src, out, steps(), tmp_path / "work")
    assert pl.read_parquet(out).equals(pl.read_parquet(expected))
    assert stats == stats_whole
