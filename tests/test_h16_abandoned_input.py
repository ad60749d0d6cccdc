"""An attempt abandoned on a timeout (or interrupted, or lost to a kill) may be billed: its worst case counted in
dollars and output tokens, but its prompt's input tokens were left out of every token total (run stats, the
journal's summary, a rerun's). They are journaled as `abandoned_input_tokens` (schema 8, `on_wire_input_tokens`
for an attempt on the wire), the prompt as estimated when the attempt went out."""

from __future__ import annotations

import sqlite3

import pytest

from textbookgen.engine import ChatRequest, Generator, estimate_input_tokens
from textbookgen.journal import SCHEMA_VERSION, Journal
from textbookgen.testing.emulator import Emulator, EmulatorConfig, Fault

FAST = dict(backoff_initial_s=0.01, backoff_max_s=0.05, progress=False)
PROMPT = "SLOW: explain how the tides follow the moon, in a short section for grade school " * 4


def ask(n: int) -> list[ChatRequest]:
    return [ChatRequest(messages=[{"role": "user", "content": f"{PROMPT}{i}"}], max_tokens=64) for i in range(n)]


def gen_for(emu: Emulator, journal) -> Generator:
    return Generator("openai", "gpt-4o-mini", base_url=emu.openai_base_url, api_key="sk-test", journal=journal,
                     concurrency=8, timeout_s=0.1, **FAST)


def test_abandoned_attempts_count_their_input_tokens_in_the_run_the_journal_and_a_rerun(tmp_path):
    journal, requests = tmp_path / "j.sqlite", ask(4)
    estimate = estimate_input_tokens(requests[0])
    cfg = EmulatorConfig(latency_median_s=0.001, hang_s=30.0, faults=[Fault("slow", first=1, match="SLOW")])
    with Emulator(cfg) as emu:
        gen = gen_for(emu, journal)
        assert [r.status for r in gen.run(requests)] == ["ok"] * 4
        s, timed_out = gen.stats, gen.stats["timed_out"]
        assert timed_out >= 4 and s["abandoned_output_tokens"] == 64 * timed_out
        # the first attempts went out before any answer could correct the estimate: each its prompt as estimated
        assert s["abandoned_input_tokens"] >= 4 * estimate
        assert s["abandoned_input_tokens"] == pytest.approx(timed_out * estimate, rel=0.5)
        with Journal(journal) as j:
            summary = j.summary()
        assert summary["abandoned_input_tokens"] == s["abandoned_input_tokens"]
        assert summary["input_tokens"] == s["input_tokens"]  # the answers' own, as before
        again = gen_for(emu, journal)
        again.run(requests)  # all answered by the journal: nothing sent, the earlier abandoned input counted
        assert again.stats["sent"] == 0
        assert again.stats["abandoned_input_tokens"] == again.stats["prior_abandoned_input_tokens"] == \
            s["abandoned_input_tokens"]


def _row(key: str) -> tuple:
    return ("ok", "hi", "stop", 10, 20, 0.5, 0.1, 1, None, None, "r", 1.0, key)


def test_an_attempt_a_killed_run_left_on_the_wire_counts_its_input_once(tmp_path):
    path = tmp_path / "j.sqlite"
    with Journal(path) as j:
        j.add_pending([("k1", "openai", "m", "{}", "{}"), ("k2", "openai", "m", "{}", "{}")])
        j.write_results([_row("k1")], [(0.25, 64, 30, "k1")], on_wire=[(0.5, 64, 40, "k2")])  # then killed
        assert j.summary()["abandoned_input_tokens"] == 70  # on the wire: may be billed
    for _ in range(2):  # the next run to lock it moves the wire's record into the abandoned columns, once
        with Journal(path) as j:
            j.lock_for_run()
            s = j.summary()
            assert (s["abandoned_input_tokens"], s["abandoned_output_tokens"], s["input_tokens"]) == (70, 128, 10)
            assert j.rows(["k2"])["k2"]["abandoned_input_tokens"] == 40


def test_a_schema_7_journal_reads_as_it_is_and_is_migrated(tmp_path):
    """A killed schema-7 run left an attempt on the wire with no input tokens recorded: it counts none of them
    (never a NULL in the totals), and the columns come as zeros."""
    path = tmp_path / "v7.sqlite"
    with Journal(path) as j:
        j.add_pending([("k1", "openai", "m", "{}", "{}"), ("k2", "openai", "m", "{}", "{}")])
        j.write_results([_row("k1")], [(0.25, 64, 30, "k1")])
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE requests DROP COLUMN abandoned_input_tokens")
    db.execute("ALTER TABLE requests DROP COLUMN on_wire_input_tokens")
    db.execute("UPDATE requests SET on_wire_usd = 0.5, on_wire_output_tokens = 64 WHERE key = 'k2'")
    db.execute("PRAGMA user_version=7")
    db.commit()
    db.close()
    with Journal(path, read_only=True) as j:
        s = j.summary()
        assert (s["abandoned_input_tokens"], s["abandoned_output_tokens"]) == (0, 128)
        assert j.export_parquet(tmp_path / "v7.parquet").is_file()
    with Journal(path) as j:
        j.lock_for_run()
        assert j.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 9
        s = j.summary()
        assert (s["abandoned_input_tokens"], s["abandoned_output_tokens"]) == (0, 128)
        j.write_results([], [(0.25, 64, 30, "k1")])
        assert j.summary()["abandoned_input_tokens"] == 30
