"""Once an `LLM` call's budget stops it in one window, the later windows only replay what the journal holds: their
other rows come back skipped_budget as before, but are not journaled as pending, nor warned about window after
window (10M rows in 10k windows logged ~2,000 "budget" warnings and journaled every row left as pending)."""

from __future__ import annotations

import logging
import sqlite3

from pydantic import BaseModel

from textbookgen.engine import Generator
from textbookgen.llm import LLM
from textbookgen.testing.emulator import Emulator, EmulatorConfig


class Lesson(LLM):
    def prompt(self, row):
        return f"Write a short textbook section on {row['topic']}." + " Be brief." * row.get("pad", 0)

    def parse(self, row, response):
        return {"i": row["i"], "words": len(response.split())}


def make(emu: Emulator, path, **kw) -> Lesson:
    return Lesson("gpt-4o-mini", base_url=emu.openai_base_url, api_key="sk-test", progress=False, max_tokens=200,
                  journal=path, max_error_rate=None, concurrency=1, window=4, **kw)


def statuses(path) -> dict[str, int]:
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT status, count(*) FROM requests GROUP BY status").fetchall())


def budget_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "budget" in r.getMessage()]


def without_time(stats: dict) -> dict:
    return {k: v for k, v in stats.items() if k != "elapsed_s"}


def test_windows_after_the_budget_stop_journal_no_pending_rows_and_warn_no_more(tmp_path, caplog):
    rows = [{"topic": f"topic {i}", "i": i} for i in range(40)]
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu, caplog.at_level(logging.WARNING):
        task = make(emu, tmp_path / "j.sqlite", max_output_tokens=1000)
        table = task(rows)
    skipped = [f["row"] for f in task.failures]
    assert 0 < table.height < 16 and skipped == list(range(table.height, 40))  # stopped in an early window
    stopped_in = table.height // 4 * 4  # the window the budget stopped in registered its rows before it knew
    pending = statuses(tmp_path / "j.sqlite").get("pending", 0)
    # the run that stopped warned "budget: ..." and "budget stop: ..."; were 2 warnings a window, 40 - height pending
    assert (len(budget_warnings(caplog)), pending) == (2, stopped_in + 4 - table.height)


def test_the_quiet_windows_give_the_table_failures_and_stats_of_running_them(tmp_path, monkeypatch):
    """Against each window run in full (as before): the same table, `.failures` (errors included) and stats; the
    journal's answers to later rows (an earlier call's) replayed, a later row whose request fits still sent;
    and a rerun with a raised budget pays once for exactly the rows skipped."""
    rows = [{"topic": f"topic {i}", "i": i, "pad": 200 if i < 4 else 0} for i in range(40)]

    def call(path, emu):
        make(emu, path)(rows[20:28])  # answers already in the journal for rows 20-27
        task = make(emu, path, max_cost_usd=4.7e-4)
        return task, task(rows)

    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        quiet, table = call(tmp_path / "quiet.sqlite", emu)
        with monkeypatch.context() as patched:
            patched.setattr(Generator, "_skipped_whole", lambda *args: False, raising=False)  # every window run in full
            full, expected = call(tmp_path / "full.sqlite", emu)
        assert table.equals(expected) and quiet.failures == full.failures
        assert without_time(quiet.generator.stats) == without_time(full.generator.stats)
        skipped = {f["row"] for f in quiet.failures}
        assert set(range(20, 28)) <= set(table["i"]) and skipped and skipped.isdisjoint(range(20, 28))
        assert 4 in table["i"] and 3 in skipped  # after the stop in window 0-3, row 4's shorter prompt fit
        billed = emu.billed
        again = make(emu, tmp_path / "quiet.sqlite", max_cost_usd=1.0)(rows)
        assert emu.billed - billed == len(skipped) and again.height == 40
    assert statuses(tmp_path / "quiet.sqlite") == {"ok": 40}


class Terms(BaseModel):
    terms: list[str]


class Glossary(LLM):
    response_format = Terms

    def prompt(self, row):
        return f"List key terms of {row['topic']}."

    def parse(self, row, response):
        return {"i": row["i"], "terms": len(response.terms)}


def fits_on_even_rows(body: dict) -> str:
    """A fit answer for rows named 'even', prose (re-asked, twice) for the others."""
    return '{"terms": ["a", "b"]}' if "even" in body["messages"][-1]["content"] else "no JSON here"


def test_re_ask_rounds_after_the_stop_give_what_running_them_in_full_gives(tmp_path, monkeypatch):
    """Two samples a row and schema re-asks: rounds after the stop (the stopping window's re-asks, later windows and
    theirs) replay the journal's answers and re-asks (an earlier call's) and skip the rest as running them did."""
    rows = [{"topic": f"{'even' if i % 2 == 0 else 'odd'} {i}", "i": i} for i in range(24)]

    def call(path, emu):
        Glossary("gpt-4o-mini", base_url=emu.openai_base_url, api_key="sk-test", progress=False, max_tokens=64,
                 journal=path, max_error_rate=None, n=2, seed=1, temperature=1.0)(rows[12:20])
        task = Glossary("gpt-4o-mini", base_url=emu.openai_base_url, api_key="sk-test", progress=False,
                        max_tokens=64, journal=path, max_error_rate=None, concurrency=1, window=4, n=2, seed=1,
                        temperature=1.0, max_output_tokens=100)
        return task, task(rows)

    with Emulator(EmulatorConfig(latency_median_s=0.001, responder=fits_on_even_rows)) as emu:
        quiet, table = call(tmp_path / "quiet.sqlite", emu)
        with monkeypatch.context() as patched:
            patched.setattr(Generator, "_skipped_whole", lambda *args: False, raising=False)
            full, expected = call(tmp_path / "full.sqlite", emu)
    assert table.equals(expected) and quiet.failures == full.failures
    assert without_time(quiet.generator.stats) == without_time(full.generator.stats)
    assert {"skipped_budget", "ok"} <= {f["status"] for f in quiet.failures}  # skipped, and unfit after re-asks
    assert set(range(12, 20, 2)) <= set(table["i"]) and quiet.generator.stats["skipped_budget"] > 0
