"""The crash-safe request journal: one SQLite row per request, keyed by the request's content hash.

SQLite in WAL mode survives SIGKILL at any instant: a committed transaction is in the WAL, an
uncommitted one is simply absent. Rows are written by one writer (`JournalWriter`, an asyncio task
that commits every batch of finished requests in one transaction), so no completed response waits on
a lock or is lost to a torn write. A restarted run reads the journal first and sends only what is
not done; a changed setting changes the key, so only the requests it touches are regenerated.
The API key is never written here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DONE_STATUSES = ("ok", "truncated")
# failures that would fail again if re-sent unchanged; transient ones (retries exhausted) are re-sent
PERMANENT_ERRORS = ("bad_request", "content_filter", "refusal")
WRITE_RETRIES, WRITE_RETRY_S = 4, 2.0  # a failed commit (locked, disk full) is retried after 2, 4, 8, 16 s

COLUMNS = ("key", "provider", "model", "status", "text", "finish_reason", "input_tokens", "output_tokens",
           "cost_usd", "latency_s", "attempts", "error", "error_class", "response_id", "request",
           "metadata", "created_at", "updated_at")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    key TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    text TEXT,
    finish_reason TEXT,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    latency_s REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    error_class TEXT,
    response_id TEXT,
    request TEXT NOT NULL,
    metadata TEXT,
    created_at REAL NOT NULL,
    updated_at REAL
);
CREATE INDEX IF NOT EXISTS requests_status ON requests(status);
CREATE TABLE IF NOT EXISTS batches (
    tag TEXT PRIMARY KEY,
    batch_id TEXT,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    keys TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL
);
"""
# batches (provider batch APIs, textbookgen/batch.py): a row is written with status "submitting" before the
# submission and gets the provider's batch_id ("running") right after, so a rerun polls it instead of paying
# for its requests again; "done" once its results are in the requests table, "lost" if never found again,
# "rejected" if the provider refused it as a whole (its requests are failed as bad requests), "deferred" if
# refused for lack of room (its requests go back to the queue), "cancelled" by `textbookgen journal
# --cancel-batches` (what ran is recorded; the rest stays pending).
OPEN_BATCH_STATUSES = ("submitting", "running")

# result rows written by the engine: (status, text, finish_reason, input_tokens, output_tokens,
# cost_usd, latency_s, attempts, error, error_class, response_id, updated_at, key)
_UPDATE = """UPDATE requests SET status=?, text=?, finish_reason=?, input_tokens=?, output_tokens=?,
cost_usd=?, latency_s=?, attempts=?, error=?, error_class=?, response_id=?, updated_at=? WHERE key=?"""

_SQL_VARS = 900  # stay under SQLite's bound-parameter limit


class JournalError(RuntimeError):
    """The journal file cannot be used (not SQLite, wrong schema, unwritable, in use by another run)."""


def lock_file(f) -> None:
    """Exclusive non-blocking lock on an open file, released when the process ends however it ends;
    raises OSError if another process holds it."""
    if os.name == "nt":
        import msvcrt

        msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
    else:
        import fcntl

        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


class Journal:
    """A request journal file. `Journal(path).summary()` and `.export_parquet(out)` work on any
    journal, also while another process is writing it."""

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        """Open (creating it if needed) the journal at `path`, or ":memory:". `read_only` opens an existing
        journal without writing to it (summaries, exports): a file that is not one raises JournalError."""
        self.path = Path(path) if str(path) != ":memory:" else None
        self._run_lock = None
        if self.path is not None and not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if read_only and self.path is not None:
                self.db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                                          check_same_thread=False, timeout=30.0)
            else:
                self.db = sqlite3.connect(str(self.path or ":memory:"), isolation_level=None,
                                          check_same_thread=False, timeout=30.0)
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable against process crashes
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise JournalError(f"journal {path} has schema version {version}; this textbookgen reads "
                                   f"version {SCHEMA_VERSION}")
            if read_only:
                tables = {row[0] for row in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                if not {"requests", "batches"} <= tables:
                    raise JournalError(f"{path}: not a textbookgen journal (no requests table)")
            else:
                self.db.executescript(_SCHEMA)
                self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"cannot open journal {path}: {exc}") from exc

    def close(self) -> None:
        self.db.close()
        if self._run_lock is not None:
            self._run_lock.close()

    def lock_for_run(self) -> None:
        """Claim the journal for one sending run. Two runs on one journal would each send the requests the
        other has in flight and pay for them twice, so the second fails here, naming the file. Readers
        (summary, export) need no lock."""
        if self.path is None:
            return
        handle = open(self.path.with_name(self.path.name + ".lock"), "a+")  # noqa: SIM115 - held until close()
        try:
            lock_file(handle)
        except OSError:
            handle.close()
            raise JournalError(f"journal {self.path} is in use by another run (lock {handle.name}); wait for it, "
                               "or give this run its own journal") from None
        self._run_lock = handle

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def rows(self, keys: Sequence[str]) -> dict[str, dict]:
        """Journal rows for these keys, {key: row dict} (missing keys absent)."""
        found: dict[str, dict] = {}
        for start in range(0, len(keys), _SQL_VARS):
            chunk = keys[start:start + _SQL_VARS]
            cursor = self.db.execute(
                f"SELECT {', '.join(COLUMNS)} FROM requests WHERE key IN ({','.join('?' * len(chunk))})", chunk)
            for values in cursor:
                found[values[0]] = dict(zip(COLUMNS, values, strict=True))
        return found

    def add_pending(self, rows: Iterable[tuple[str, str, str, str, str]]) -> None:
        """Insert (key, provider, model, request_json, metadata_json) rows not yet in the journal."""
        now = time.time()
        with self._transaction():
            self.db.executemany(
                "INSERT OR IGNORE INTO requests (key, provider, model, request, metadata, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)", ((*row, now) for row in rows))

    def write_results(self, results: Sequence[tuple]) -> None:
        """Record finished requests, all in one transaction (see `_UPDATE` for the tuple layout)."""
        with self._transaction():
            self.db.executemany(_UPDATE, results)

    def add_batch(self, tag: str, provider: str, model: str, keys: Sequence[str]) -> None:
        """Record a batch about to be submitted (before any money is at stake)."""
        self.db.execute("INSERT INTO batches (tag, provider, model, keys, status, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                        (tag, provider, model, json.dumps(list(keys)), "submitting", time.time()))

    def update_batch(self, tag: str, status: str, batch_id: str | None = None) -> None:
        self.db.execute("UPDATE batches SET status=?, batch_id=COALESCE(?, batch_id), updated_at=? WHERE tag=?",
                        (status, batch_id, time.time(), tag))

    def open_batches(self, provider: str, model: str) -> list[dict]:
        """Batches of this provider and model submitted (or being submitted) whose results are not in yet."""
        cursor = self.db.execute(
            "SELECT tag, batch_id, keys, status, created_at FROM batches WHERE provider=? AND model=? "
            f"AND status IN ({','.join('?' * len(OPEN_BATCH_STATUSES))}) ORDER BY created_at",
            (provider, model, *OPEN_BATCH_STATUSES))
        return [{"tag": t, "batch_id": b, "keys": json.loads(k), "status": st, "created_at": c}
                for t, b, k, st, c in cursor]

    @contextmanager
    def _transaction(self):
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def summary(self) -> dict:
        """Counts by status and failure class, token and dollar totals, attempts, provider batches by status
        (open ones, "submitting"/"running", are collected by the next run)."""
        db = self.db
        by_status = dict(db.execute("SELECT status, COUNT(*) FROM requests GROUP BY status").fetchall())
        failures = dict(db.execute("SELECT error_class, COUNT(*) FROM requests WHERE status='failed' "
                                   "GROUP BY error_class").fetchall())
        total, tin, tout, cost, attempts = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(input_tokens),0), COALESCE(SUM(output_tokens),0), "
            "COALESCE(SUM(cost_usd),0), COALESCE(SUM(attempts),0) FROM requests").fetchone()
        models = dict(db.execute("SELECT model, COUNT(*) FROM requests GROUP BY model").fetchall())
        batches = dict(db.execute("SELECT status, COUNT(*) FROM batches GROUP BY status").fetchall())
        return {"path": str(self.path) if self.path else ":memory:", "requests": total,
                "by_status": by_status, "done": sum(by_status.get(s, 0) for s in DONE_STATUSES),
                "failures": failures, "input_tokens": tin, "output_tokens": tout,
                "cost_usd": cost, "attempts": attempts, "models": models, "batches": batches}

    def export_parquet(self, out: str | Path, statuses: Sequence[str] | None = None,
                       chunk_rows: int = 50_000) -> Path:
        """Write the journal (optionally only rows with these statuses) to a parquet file, streaming
        `chunk_rows` rows at a time so a journal larger than memory exports too."""
        import polars as pl
        import pyarrow.parquet as pq

        query = f"SELECT {', '.join(COLUMNS)} FROM requests"
        params: tuple = ()
        if statuses:
            query += f" WHERE status IN ({','.join('?' * len(statuses))})"
            params = tuple(statuses)
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        cursor = self.db.execute(query + " ORDER BY created_at, key", params)
        schema = _parquet_schema()
        rows = cursor.fetchmany(chunk_rows)
        first = pl.DataFrame(rows, schema=schema, orient="row").to_arrow()
        with pq.ParquetWriter(tmp, first.schema) as writer:
            writer.write_table(first)
            while rows := cursor.fetchmany(chunk_rows):
                writer.write_table(pl.DataFrame(rows, schema=schema, orient="row").to_arrow())
        tmp.replace(out)
        return out


def _parquet_schema() -> dict:
    import polars as pl

    return {"key": pl.String, "provider": pl.String, "model": pl.String, "status": pl.String,
            "text": pl.String, "finish_reason": pl.String, "input_tokens": pl.Int64, "output_tokens": pl.Int64,
            "cost_usd": pl.Float64, "latency_s": pl.Float64, "attempts": pl.Int64, "error": pl.String,
            "error_class": pl.String, "response_id": pl.String, "request": pl.String, "metadata": pl.String,
            "created_at": pl.Float64, "updated_at": pl.Float64}


def request_of(row: dict) -> dict:
    """The canonical request stored in a journal row, as a dict."""
    return json.loads(row["request"])


class JournalWriter:
    """The journal's single writer: an asyncio task that commits whatever finished since its last
    commit in one transaction. Writing on the loop thread (no thread hop per request) costs a few
    microseconds per row; batching keeps commits few under load and immediate when idle."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._pending: list[tuple] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None
        self.written = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="journal-writer")

    def put(self, row: tuple) -> None:
        self._pending.append(row)  # kept even if the writer died: close() tries once more
        self._wake.set()
        if self._task is not None and self._task.done() and not self._task.cancelled():
            self._task.result()  # the writer died (disk full, say): surface its error now

    def flush(self) -> None:
        """Commit everything queued now (used at shutdown and by the loop). Rows a failed commit could
        not write stay queued: they are paid answers."""
        if self._pending:
            batch, self._pending = self._pending, []
            try:
                self.journal.write_results(batch)
            except BaseException:
                self._pending[:0] = batch
                raise
            self.written += len(batch)

    async def _run(self) -> None:
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            await self._commit()

    async def _commit(self) -> None:
        """`flush`, retried when a commit fails (locked past the busy timeout, disk full): its rows are paid answers."""
        failures = 0
        while True:
            try:
                return self.flush()
            except sqlite3.OperationalError as exc:
                failures += 1
                if failures > WRITE_RETRIES:
                    raise
                delay = WRITE_RETRY_S * 2 ** (failures - 1)
                log.warning("journal %s: commit failed (%s); %d answers kept in memory, retrying in %.0f s",
                            self.journal.path, exc, len(self._pending), delay)
                await asyncio.sleep(delay)

    async def close(self) -> None:
        """Stop the task and commit what is left; safe to call while the run is being cancelled. If the
        writer died, this last commit still tries to save its rows before the writer's error is raised."""
        self._closing = True
        self._wake.set()
        try:
            if self._task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(self._task)
        finally:
            await self._commit()
