"""Curation progress where stderr is no terminal (a log file, nohup): a plain line at most once a minute,
as the engine gives, instead of silence for the whole of a long stage."""

from __future__ import annotations

import io
import itertools
import time

from textbookgen.curation import base


def test_logged_progress_writes_a_line_per_interval_with_counts() -> None:
    ticks = itertools.count(0, 10)  # a clock 10 s further on at each reading
    out = io.StringIO()
    items = list(base.logged_progress(range(20), 20, "filtering", out, every_s=60, clock=lambda: next(ticks)))
    assert items == list(range(20))
    lines = out.getvalue().splitlines()
    # 60 s pass every 6 items (the first reading is the start); no line once all are done
    assert lines == ["filtering: 6/20 (30%) after 1m00s", "filtering: 12/20 (60%) after 2m00s",
                     "filtering: 18/20 (90%) after 3m00s"]


def test_progress_without_a_terminal_is_not_silent(monkeypatch, capsys) -> None:
    ticks = itertools.count(0, 30)
    monkeypatch.setattr(time, "monotonic", lambda: next(ticks))
    assert sum(base.progress(iter(range(6000)), 6000, "decontaminating")) == sum(range(6000))
    err = capsys.readouterr().err.splitlines()
    assert err, "no line at all on stderr"
    assert err[0] == "decontaminating: 2/6,000 (0%) after 1m00s"
    assert len(err) == 2999


def test_short_runs_stay_quiet(capsys) -> None:
    assert list(base.progress(range(10), 10, "filtering")) == list(range(10))
    assert capsys.readouterr().err == ""
