"""Unit tests of the request journal: pending rows, batched results, summary, parquet export."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import polars as pl
import pytest

from textbookgen.journal import Journal, JournalError, JournalWriter


def _row(key, status="ok", text="hello", cost=0.5):
    return (status, text, "stop", 10, 20, cost, 0.1, 1, None, None, "resp-1", 1.0, key)


def test_pending_then_results_roundtrip(tmp_path):
    path = tmp_path / "j.sqlite"
    with Journal(path) as j:
        j.add_pending([("k1", "openai", "m", json.dumps({"a": 1}), "{}"), ("k2", "openai", "m", "{}", "{}")])
        j.add_pending([("k1", "openai", "m", "{}", '{"x": 1}')])  # already there: ignored
        j.write_results([_row("k1")])
    with Journal(path) as j:  # reopen: durable
        rows = j.rows(["k1", "k2", "missing"])
        assert set(rows) == {"k1", "k2"}
        assert rows["k1"]["status"] == "ok" and rows["k1"]["text"] == "hello" and rows["k1"]["metadata"] == "{}"
        assert rows["k2"]["status"] == "pending"
        assert j.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_rows_lookup_beyond_sqlite_variable_limit(tmp_path):
    with Journal(tmp_path / "j.sqlite") as j:
        j.add_pending((f"k{i}", "openai", "m", "{}", "{}") for i in range(2500))
        assert len(j.rows([f"k{i}" for i in range(2500)])) == 2500


def test_summary_counts_statuses_tokens_and_cost(tmp_path):
    with Journal(tmp_path / "j.sqlite") as j:
        j.add_pending((f"k{i}", "openai", "m", "{}", "{}") for i in range(4))
        j.write_results([_row("k0"), _row("k1", status="truncated"),
                         ("failed", None, None, 0, 0, 0.0, None, 8, "boom", "transient", None, 1.0, "k2")])
        s = j.summary()
    assert s["requests"] == 4 and s["done"] == 2
    assert s["by_status"] == {"ok": 1, "truncated": 1, "failed": 1, "pending": 1}
    assert s["failures"] == {"transient": 1}
    assert s["input_tokens"] == 20 and s["output_tokens"] == 40 and s["cost_usd"] == pytest.approx(1.0)


def test_export_parquet(tmp_path):
    with Journal(tmp_path / "j.sqlite") as j:
        j.add_pending([("k1", "openai", "m", '{"messages": []}', '{"topic": "t"}'), ("k2", "openai", "m", "{}", "{}")])
        j.write_results([_row("k1")])
        out = j.export_parquet(tmp_path / "out" / "journal.parquet", chunk_rows=1)  # streamed in chunks
        done = j.export_parquet(tmp_path / "done.parquet", statuses=["ok"])
    frame = pl.read_parquet(out)
    assert frame.height == 2 and frame.schema["input_tokens"] == pl.Int64
    assert json.loads(frame.filter(pl.col("key") == "k1")["metadata"][0]) == {"topic": "t"}
    assert pl.read_parquet(done)["key"].to_list() == ["k1"]
    with Journal(tmp_path / "empty.sqlite") as j:
        assert pl.read_parquet(j.export_parquet(tmp_path / "empty.parquet")).height == 0


def test_not_a_journal_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(JournalError, match="bad.sqlite"):
        Journal(bad)


def test_journal_from_a_future_schema_is_refused(tmp_path):
    path = tmp_path / "j.sqlite"
    Journal(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(JournalError, match="schema version 99"):
        Journal(path)


def test_writer_batches_in_one_task_and_flushes_on_close(tmp_path):
    async def main():
        j = Journal(tmp_path / "j.sqlite")
        j.add_pending((f"k{i}", "openai", "m", "{}", "{}") for i in range(100))
        w = JournalWriter(j)
        w.start()
        for i in range(100):
            w.put(_row(f"k{i}"))
        await w.close()
        return j, w

    j, w = asyncio.run(main())
    assert w.written == 100
    other = sqlite3.connect(tmp_path / "j.sqlite")  # another reader sees committed rows
    assert other.execute("SELECT COUNT(*) FROM requests WHERE status='ok'").fetchone()[0] == 100
    other.close()
    j.close()


def test_a_failed_commit_keeps_its_rows_and_the_writer_retries(tmp_path, monkeypatch):
    """'database is locked' past the busy timeout (or a full disk) loses no paid answer."""
    import textbookgen.journal as journal_mod

    real, calls = Journal.write_results, []

    def locked_twice(self, rows, *more):
        calls.append(len(rows))
        if len(calls) <= 2:
            raise sqlite3.OperationalError("database is locked")
        real(self, rows, *more)

    monkeypatch.setattr(Journal, "write_results", locked_twice)
    monkeypatch.setattr(journal_mod, "WRITE_RETRY_S", 0.001)

    async def main():
        j = Journal(tmp_path / "j.sqlite")
        j.add_pending((f"k{i}", "openai", "m", "{}", "{}") for i in range(10))
        w = JournalWriter(j)
        w.start()
        for i in range(10):
            w.put(_row(f"k{i}"))
            await asyncio.sleep(0)
        await w.close()
        return j

    j = asyncio.run(main())
    assert len(calls) >= 3 and j.summary()["done"] == 10
    j.close()


def test_a_writer_that_keeps_failing_stops_the_run_after_a_last_try(tmp_path, monkeypatch):
    import textbookgen.journal as journal_mod

    monkeypatch.setattr(journal_mod, "WRITE_RETRIES", 0)

    def full(self, rows, *more):
        raise sqlite3.OperationalError("database or disk is full")

    async def main():
        j = Journal(tmp_path / "j.sqlite")
        w = JournalWriter(j)
        w.start()
        w.put(_row("k0"))
        await asyncio.sleep(0.05)
        with pytest.raises(sqlite3.OperationalError):
            w.put(_row("k1"))  # the writer died: the next answer hears it
        assert len(w._pending) == 2  # nothing dropped
        with pytest.raises(sqlite3.OperationalError, match="disk is full"):
            await w.close()
        j.close()

    monkeypatch.setattr(Journal, "write_results", full)
    asyncio.run(main())


def test_two_runs_cannot_share_a_journal_but_readers_can(tmp_path):
    """A second sending run on a journal in use would pay again for the first one's requests in flight."""
    import asyncio

    from textbookgen.engine import ChatRequest, Generator
    from textbookgen.journal import JournalError
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    path = tmp_path / "j.sqlite"
    reqs = [ChatRequest(messages=[{"role": "user", "content": f"topic {i}"}], max_tokens=16) for i in range(8)]

    def gen(emu):
        return Generator("openai", "gpt-4o-mini", base_url=emu.openai_base_url, api_key="sk-x", journal=path,
                         progress=False)

    async def both(emu):
        return await asyncio.gather(gen(emu).arun(reqs), gen(emu).arun(reqs), return_exceptions=True)

    with Emulator(EmulatorConfig(latency_median_s=0.2)) as emu:
        first, second = asyncio.run(both(emu))
        assert isinstance(second, JournalError) and str(path) in str(second) and "in use by another run" in str(second)
        assert len(first) == 8 and emu.billed == 8
        with Journal(path) as reader:  # reading needs no lock
            assert reader.summary()["done"] == 8
        assert len(gen(emu).run(reqs)) == 8 and emu.billed == 8  # the lock went with the first run


def test_a_journal_from_before_batch_servers_were_recorded_opens_and_is_migrated(tmp_path):
    """Schema 4 had no batches.base_url: it still reads (read-only too), and opening it to write adds the column, its
    open batches' server unknown (a cancel then uses --base-url or the provider's API)."""
    from textbookgen.journal import SCHEMA_VERSION

    path = tmp_path / "j.sqlite"
    with Journal(path) as j:
        j.add_pending([("k1", "openai", "m", "{}", "{}")])
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE batches DROP COLUMN base_url")
    db.execute("INSERT INTO batches (tag, batch_id, provider, model, keys, status, created_at) "
               "VALUES ('t', 'b', 'openai', 'm', '[\"k1\"]', 'running', 1.0)")
    db.execute("PRAGMA user_version=4")
    db.commit()
    db.close()
    with Journal(path, read_only=True) as j:
        assert j.summary()["batches"] == {"running": 1}
    with Journal(path) as j:
        assert j.open_batch_groups() == [("openai", "m", None)]
        assert j.open_batches("openai", "m")[0]["base_url"] is None
        j.add_batch("t2", "openai", "m", ["k1"], "http://127.0.0.1:8000/v1/")
        assert set(j.open_batch_groups()) == {("openai", "m", None), ("openai", "m", "http://127.0.0.1:8000/v1/")}
        assert j.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 9


def test_a_second_run_through_a_symlink_to_the_journal_is_refused(tmp_path):
    """`latest.sqlite -> run-3.sqlite`: the same file under another name is still one journal; two runs on it
    would each send what the other has in flight and pay twice."""
    path = tmp_path / "run-3.sqlite"
    (tmp_path / "latest.sqlite").symlink_to(path.name)
    with Journal(path) as first:
        first.lock_for_run()
        with Journal(tmp_path / "latest.sqlite") as second, pytest.raises(JournalError, match="in use by another run"):
            second.lock_for_run()
