"""The crash-safe request journal: one SQLite row per request, keyed by the request's content hash.

SQLite in WAL mode survives SIGKILL at any instant: a committed transaction is in the WAL, an
uncommitted one is simply absent. Rows are written by one writer (`JournalWriter`, an asyncio task
that commits every batch of finished requests in one transaction), so no completed response waits on
a lock or is lost to a torn write. A restarted run reads the journal first and sends only what is
not done; a changed setting changes the key, so only the requests it touches are regenerated.
The API key is never written here.

Each row also carries a reuse key, the hash of its request without max_tokens, so the engine can find an
answer given under another max_tokens (see `natural_stops`); a row that reuses one names it in `reused_from`
and records what it billed: nothing. Schema 2 added both columns: a version-1 journal gets them (reuse keys
computed from its stored requests) the first time it is opened for writing, and stays readable as it is.

Attempts abandoned on a timeout may be billed all the same, at most their max_tokens: each row adds up their
worst case in `abandoned_usd` and `abandoned_output_tokens` (schema 3), once per attempt, as it happens, so a
rerun's budget and a build's spend count that money once; older journals get the columns as zeros on opening
for writing. Their prompts (as estimated when sent) add up in `abandoned_input_tokens` (schema 8, with
`on_wire_input_tokens`), so token totals count the input side of what may have been billed too. Attempts cut off
by Ctrl-C or a cancelled task are added the same way on the way out. For a run killed outright, each attempt is
committed as on the wire (`on_wire_usd`, `on_wire_output_tokens`, schema 4) before it goes out and cleared when it
settles; the next run to lock the journal adds what a killed run left there to the abandoned columns, once.
Summaries count both as abandoned.

Each provider batch row records the server it went to (`base_url`, schema 5; never a key), so cancelling it later
needs no --base-url; rows of older journals have none.

A row's `input_tokens` and `output_tokens` describe its answer; a failure answered again (re-sent, or by reuse) was
billed its own, which `failed_output_tokens` (schema 6) and `failed_input_tokens` (schema 7) add up, as `cost_usd` does
its cost, so totals and budgets count what was paid; older journals get the columns as zeros (their failures answered
since are lost to them).

A cost computed at no price (a model neither the price table nor --price knew) is not a cost: its $0 says nothing.
Such tokens are kept apart (schema 9), in list-price tokens (a batch token counts `BATCH_DISCOUNT` of one):
`unpriced_input_tokens` and `unpriced_output_tokens` of answers and failures, `abandoned_unpriced_input_tokens` and
`abandoned_unpriced_output_tokens` of abandoned attempts (an attempt on the wire at no price has `on_wire_usd` NULL).
Whoever reads a cost prices them at the price it knows now (`unpriced_usd`), each time, and writes nothing back: a
later price table or --price counts them, and a reader and a run with the same prices agree. A cost that was computed
at a known price stands as recorded, also once the price changes: it is what that price billed (providers change
prices for later calls, not past ones), so a rerun's budget and a build's totals do not move under a price change. An
older journal's rows of $0 that hold tokens, and its attempts on the wire at $0, are taken for unpriced (a $0 price
given on purpose is then counted only if a later run gives the model a price), their batch discount unknown: counted at
list price, never less.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from textbookgen.pricing import is_priced, price_of

log = logging.getLogger(__name__)

SCHEMA_VERSION = 9  # 2: reuse_key, reused_from; 3: abandoned_*; 4: on_wire_*; 5: batches.base_url;
# 6: failed_output_tokens; 7: failed_input_tokens; 8: abandoned_input_tokens, on_wire_input_tokens; 9: *unpriced_*;
# older: migrated on open
DONE_STATUSES = ("ok", "truncated")
# failures that would fail again if re-sent unchanged; transient ones (retries exhausted) are re-sent
PERMANENT_ERRORS = ("bad_request", "content_filter", "refusal")
WRITE_RETRIES, WRITE_RETRY_S = 4, 2.0  # a failed commit (locked, disk full) is retried after 2, 4, 8, 16 s

COLUMNS = ("key", "provider", "model", "status", "text", "finish_reason", "input_tokens", "output_tokens",
           "cost_usd", "latency_s", "attempts", "error", "error_class", "response_id", "request",
           "metadata", "created_at", "updated_at", "reused_from", "abandoned_usd", "abandoned_output_tokens",
           "failed_output_tokens", "failed_input_tokens", "abandoned_input_tokens", "unpriced_input_tokens",
           "unpriced_output_tokens", "abandoned_unpriced_input_tokens", "abandoned_unpriced_output_tokens")
UNPRICED_COLUMNS = COLUMNS[-4:]

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
    updated_at REAL,
    reuse_key TEXT,
    reused_from TEXT,
    abandoned_usd REAL NOT NULL DEFAULT 0,
    abandoned_output_tokens INTEGER NOT NULL DEFAULT 0,
    on_wire_usd REAL,
    on_wire_output_tokens INTEGER,
    failed_output_tokens INTEGER NOT NULL DEFAULT 0,
    failed_input_tokens INTEGER NOT NULL DEFAULT 0,
    abandoned_input_tokens INTEGER NOT NULL DEFAULT 0,
    on_wire_input_tokens INTEGER,
    unpriced_input_tokens REAL NOT NULL DEFAULT 0,
    unpriced_output_tokens REAL NOT NULL DEFAULT 0,
    abandoned_unpriced_input_tokens REAL NOT NULL DEFAULT 0,
    abandoned_unpriced_output_tokens REAL NOT NULL DEFAULT 0
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
    updated_at REAL,
    base_url TEXT
);
"""
# batches (provider batch APIs, textbookgen/batch.py): a row is written with status "submitting" before the
# submission and gets the provider's batch_id ("running") right after, so a rerun polls it instead of paying
# for its requests again; "done" once its results are in the requests table, "lost" if never found again,
# "rejected" if the provider refused it as a whole (its requests are failed as bad requests), "deferred" if
# refused for lack of room (its requests go back to the queue), "cancelled" by `textbookgen journal
# --cancel-batches` (what ran is recorded; the rest stays pending). base_url: the server it was submitted to.
OPEN_BATCH_STATUSES = ("submitting", "running")

# result rows written by the engine: (status, text, finish_reason, input_tokens, output_tokens,
# cost_usd, latency_s, attempts, error, error_class, response_id, updated_at, unpriced_input_tokens,
# unpriced_output_tokens, key; the unpriced ones added to what the row holds: billed, at no price). A failed row sent again
# (retry_failed) keeps what its failure cost in cost_usd and its tokens in failed_input_tokens and failed_output_tokens:
# a refusal is billed, so the journal's totals stay what was paid (input_tokens and output_tokens describe the new
# answer). A row answered anew no longer reuses another's answer.
_UPDATE = """UPDATE requests SET status=?, text=?, finish_reason=?, input_tokens=?, output_tokens=?,
cost_usd=? + CASE WHEN status = 'failed' THEN COALESCE(cost_usd, 0) ELSE 0 END,
failed_output_tokens = failed_output_tokens + CASE WHEN status = 'failed' THEN output_tokens ELSE 0 END,
failed_input_tokens = failed_input_tokens + CASE WHEN status = 'failed' THEN input_tokens ELSE 0 END,
latency_s=?, attempts=?, error=?, error_class=?, response_id=?, updated_at=?, on_wire_usd=NULL,
on_wire_output_tokens=NULL, on_wire_input_tokens=NULL, reused_from=NULL,
unpriced_input_tokens = unpriced_input_tokens + ?, unpriced_output_tokens = unpriced_output_tokens + ? WHERE key=?"""
# abandoned attempts: (worst-case USD, max_tokens, estimated input tokens, key), added to what the row already holds;
# USD None: at no price (its tokens go to the abandoned_unpriced columns too)
_ABANDONED = """UPDATE requests SET abandoned_usd = abandoned_usd + COALESCE(?1, 0),
abandoned_output_tokens = abandoned_output_tokens + ?2, abandoned_input_tokens = abandoned_input_tokens + ?3,
abandoned_unpriced_output_tokens = abandoned_unpriced_output_tokens + CASE WHEN ?1 IS NULL THEN ?2 ELSE 0 END,
abandoned_unpriced_input_tokens = abandoned_unpriced_input_tokens + CASE WHEN ?1 IS NULL THEN ?3 ELSE 0 END,
on_wire_usd = NULL, on_wire_output_tokens = NULL, on_wire_input_tokens = NULL WHERE key=?4"""
# an attempt about to go on the wire: (worst-case USD, None at no price, max_tokens, estimated input tokens, key); an
# attempt that settled unbilled: (key,)
_ON_WIRE = "UPDATE requests SET on_wire_usd = ?, on_wire_output_tokens = ?, on_wire_input_tokens = ? WHERE key=?"
_OFF_WIRE = ("UPDATE requests SET on_wire_usd = NULL, on_wire_output_tokens = NULL, on_wire_input_tokens = NULL "
             "WHERE key=?")

# an older journal's tokens billed at no price, as far as it tells: those of rows (answers and failures; abandoned
# attempts) that cost $0 (the migration's values, and what a read-only summary of one counts)
_UNPRICED_OF_OLD = {
    "unpriced_input_tokens": "CASE WHEN cost_usd = 0 THEN input_tokens + failed_input_tokens ELSE 0 END",
    "unpriced_output_tokens": "CASE WHEN cost_usd = 0 THEN output_tokens + failed_output_tokens ELSE 0 END",
    "abandoned_unpriced_input_tokens": "CASE WHEN abandoned_usd = 0 THEN abandoned_input_tokens ELSE 0 END",
    "abandoned_unpriced_output_tokens": "CASE WHEN abandoned_usd = 0 THEN abandoned_output_tokens ELSE 0 END",
}

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
            if not 0 <= version <= SCHEMA_VERSION:
                raise JournalError(f"journal {path} has schema version {version}; this textbookgen reads "
                                   f"versions up to {SCHEMA_VERSION}")
            if read_only:
                tables = {row[0] for row in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                if not {"requests", "batches"} <= tables:
                    raise JournalError(f"{path}: not a textbookgen journal (no requests table)")
            else:
                self.db.create_function("reuse_key_of", 1, _reuse_key_of_json, deterministic=True)
                self.db.executescript(_SCHEMA)
                self._migrate()
            present = {row[1] for row in self.db.execute("PRAGMA table_info(requests)")}
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"cannot open journal {path}: {exc}") from exc
        self._reuses = "reused_from" in present  # False only for a version-1 journal opened read-only
        self._abandons = "abandoned_usd" in present  # False only for an older journal opened read-only
        self._wires = "on_wire_usd" in present  # likewise
        self._fails = "failed_output_tokens" in present  # likewise
        self._fails_in = "failed_input_tokens" in present  # likewise
        self._abandons_in = "abandoned_input_tokens" in present  # likewise
        self._select = ", ".join(c if c in present else f"{self._missing_sql(c, present)} AS {c}" for c in COLUMNS)

    def _migrate(self) -> None:
        """Bring an older journal to this schema: the two reuse columns (version 1), reuse keys computed from the
        stored requests; the abandoned-attempt columns (version 2), zeros; the on-wire columns (version 3), empty;
        the batches' base_url (version 4), unknown; the failures' output tokens (version 5), zeros; their input
        tokens (version 6), zeros; the abandoned and on-wire attempts' input tokens (version 7), zeros and empty; the
        tokens billed at no price (version 8), those of $0 (`_UNPRICED_OF_OLD`), an attempt on the wire at $0 one at no
        price. One transaction: a process opening it meanwhile waits, then finds it done."""
        with self._transaction():
            present = {row[1] for row in self.db.execute("PRAGMA table_info(requests)")}
            if "reuse_key" not in present:
                self.db.execute("ALTER TABLE requests ADD COLUMN reuse_key TEXT")
                self.db.execute("ALTER TABLE requests ADD COLUMN reused_from TEXT")
                self.db.execute("UPDATE requests SET reuse_key = reuse_key_of(request)")
            if "abandoned_usd" not in present:
                self.db.execute("ALTER TABLE requests ADD COLUMN abandoned_usd REAL NOT NULL DEFAULT 0")
                self.db.execute("ALTER TABLE requests ADD COLUMN abandoned_output_tokens INTEGER NOT NULL DEFAULT 0")
            if "on_wire_usd" not in present:
                self.db.execute("ALTER TABLE requests ADD COLUMN on_wire_usd REAL")
                self.db.execute("ALTER TABLE requests ADD COLUMN on_wire_output_tokens INTEGER")
            if "failed_output_tokens" not in present:
                self.db.execute("ALTER TABLE requests ADD COLUMN failed_output_tokens INTEGER NOT NULL DEFAULT 0")
            if "failed_input_tokens" not in present:
                self.db.execute("ALTER TABLE requests ADD COLUMN failed_input_tokens INTEGER NOT NULL DEFAULT 0")
            if "abandoned_input_tokens" not in present:
                self.db.execute("ALTER TABLE requests ADD COLUMN abandoned_input_tokens INTEGER NOT NULL DEFAULT 0")
                self.db.execute("ALTER TABLE requests ADD COLUMN on_wire_input_tokens INTEGER")
            if "unpriced_input_tokens" not in present:
                for column in UNPRICED_COLUMNS:
                    self.db.execute(f"ALTER TABLE requests ADD COLUMN {column} REAL NOT NULL DEFAULT 0")
                self.db.execute("UPDATE requests SET " + ", ".join(f"{c} = {_UNPRICED_OF_OLD[c]}" for c in UNPRICED_COLUMNS))
                self.db.execute("UPDATE requests SET on_wire_usd = NULL WHERE on_wire_usd = 0 "  # a $0 worst case: no price
                                "AND on_wire_output_tokens IS NOT NULL")  # moved to abandoned_unpriced_* by the next run
            if "base_url" not in {row[1] for row in self.db.execute("PRAGMA table_info(batches)")}:
                self.db.execute("ALTER TABLE batches ADD COLUMN base_url TEXT")
            self.db.execute("CREATE INDEX IF NOT EXISTS requests_reuse ON requests(reuse_key)")
            self.db.execute("CREATE INDEX IF NOT EXISTS requests_on_wire ON requests(key) "
                            "WHERE on_wire_output_tokens IS NOT NULL")  # few rows: finds a killed run's at once
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        self.db.close()
        if self._run_lock is not None:
            self._run_lock.close()

    def lock_for_run(self) -> None:
        """Claim the journal for one sending run. Two runs on one journal would each send the requests the
        other has in flight and pay for them twice, so the second fails here, naming the file. Readers
        (summary, export) need no lock. The lock is beside the file a symlink points to: one journal, one lock."""
        if self.path is None:
            return
        real = self.path.resolve()
        handle = open(real.with_name(real.name + ".lock"), "a+")  # noqa: SIM115 - held until close()
        try:
            lock_file(handle)
        except OSError:
            handle.close()
            raise JournalError(f"journal {self.path} is in use by another run (lock {handle.name}); wait for it, "
                               "or give this run its own journal") from None
        self._run_lock = handle
        self._count_killed_attempts()

    def _count_killed_attempts(self) -> None:
        """Attempts a killed run left on the wire were billed and never answered: add their worst case to the
        abandoned columns, once (the record is cleared in the same transaction). Only under the run lock, so no
        live run's attempts are taken for a killed one's."""
        with self._transaction():  # an attempt a schema-7 run left has no input tokens recorded: none counted
            n, usd, out, tin = self.db.execute(
                "SELECT COUNT(*), COALESCE(SUM(on_wire_usd),0), COALESCE(SUM(on_wire_output_tokens),0), "
                "COALESCE(SUM(on_wire_input_tokens),0) FROM requests WHERE on_wire_output_tokens IS NOT NULL").fetchone()
            if n:
                self.db.execute(  # on_wire_usd NULL: sent at no price (a schema-9 run's)
                    "UPDATE requests SET abandoned_usd = abandoned_usd + COALESCE(on_wire_usd, 0), "
                    "abandoned_output_tokens = abandoned_output_tokens + on_wire_output_tokens, abandoned_input_tokens "
                    "= abandoned_input_tokens + COALESCE(on_wire_input_tokens, 0), abandoned_unpriced_output_tokens = "
                    "abandoned_unpriced_output_tokens + CASE WHEN on_wire_usd IS NULL THEN on_wire_output_tokens "
                    "ELSE 0 END, abandoned_unpriced_input_tokens = abandoned_unpriced_input_tokens + CASE WHEN "
                    "on_wire_usd IS NULL THEN COALESCE(on_wire_input_tokens, 0) ELSE 0 END, on_wire_usd = NULL, "
                    "on_wire_output_tokens = NULL, on_wire_input_tokens = NULL WHERE on_wire_output_tokens IS NOT NULL")
        if n:
            log.warning("journal %s: %d requests were on the wire when a run was killed; the provider may bill them, "
                        "so they count at their worst case (at most $%.4f, %d input and %d output tokens)", self.path,
                        n, usd, tin, out)

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
                f"SELECT {self._select} FROM requests WHERE key IN ({','.join('?' * len(chunk))})", chunk)
            for values in cursor:
                found[values[0]] = dict(zip(COLUMNS, values, strict=True))
        return found

    def natural_stops(self, keys: Sequence[str]) -> dict[str, list[dict]]:
        """{key: rows}, oldest first: for each of these requests (rows in the journal), the answers to the same
        request under another max_tokens (same reuse key) that stopped on their own (status ok, finish stop),
        leaving out rows that reuse one (they name it in `reused_from`)."""
        found: dict[str, list[dict]] = {}
        columns = ", ".join(f"s.{c}" for c in COLUMNS)
        for start in range(0, len(keys), _SQL_VARS):
            chunk = keys[start:start + _SQL_VARS]
            cursor = self.db.execute(  # +s.status: look rows up by reuse key, not by the (unselective) status
                f"SELECT r.key, {columns} FROM requests AS r JOIN requests AS s ON s.reuse_key = r.reuse_key "
                f"WHERE r.key IN ({','.join('?' * len(chunk))}) AND s.key != r.key AND +s.status = 'ok' "
                "AND s.finish_reason = 'stop' AND s.reused_from IS NULL ORDER BY s.created_at, s.key", chunk)
            for key, *values in cursor:
                found.setdefault(key, []).append(dict(zip(COLUMNS, values, strict=True)))
        return found

    def add_pending(self, rows: Iterable[tuple[str, str, str, str, str]]) -> None:
        """Insert (key, provider, model, request_json, metadata_json) rows not yet in the journal; each gets
        its reuse key from its request."""
        now = time.time()
        with self._transaction():
            self.db.executemany(
                "INSERT OR IGNORE INTO requests (key, provider, model, request, metadata, created_at, reuse_key) "
                "VALUES (?1, ?2, ?3, ?4, ?5, ?6, reuse_key_of(?4))", ((*row, now) for row in rows))

    def record_reused(self, pairs: Sequence[tuple[str, str]]) -> None:
        """Answer pending rows with the answers of others, (key, source key) pairs: the source's status, text,
        finish and response id, `reused_from` naming it, and nothing billed (no tokens, no cost, no attempt),
        so totals of what was paid count each answer once; a failed row keeps what its failure was billed (its
        cost, its tokens in `failed_input_tokens` and `failed_output_tokens`)."""
        now = time.time()
        with self._transaction():
            self.db.executemany(
                "UPDATE requests SET (status, text, finish_reason, response_id) = (SELECT status, text, "
                "finish_reason, response_id FROM requests AS source WHERE source.key = ?1), input_tokens=0, "
                "output_tokens=0, cost_usd = CASE WHEN status = 'failed' THEN cost_usd ELSE 0 END, "
                "failed_output_tokens = failed_output_tokens + CASE WHEN status = 'failed' THEN output_tokens "
                "ELSE 0 END, failed_input_tokens = failed_input_tokens + CASE WHEN status = 'failed' THEN "
                "input_tokens ELSE 0 END, latency_s=NULL, attempts=0, error=NULL, error_class=NULL, reused_from=?1, "
                "updated_at=?2 WHERE key=?3",
                ((source, now, key) for key, source in pairs))

    def write_results(self, results: Sequence[tuple], abandoned: Sequence[tuple[float | None, int, int, str]] = (),
                      off_wire: Sequence[tuple[str]] = (), on_wire: Sequence[tuple[float | None, int, int, str]] = ()) -> None:
        """Record finished requests, abandoned attempts, attempts that settled unbilled, then attempts about to go
        out, in that order and all in one transaction (see `_UPDATE`, `_ABANDONED`, `_OFF_WIRE` and `_ON_WIRE`
        for the tuple layouts; a result row without the two unpriced fields, as before schema 9, billed nothing at no
        price)."""
        with self._transaction():
            self.db.executemany(_UPDATE, (row if len(row) == 15 else (*row[:-1], 0.0, 0.0, row[-1]) for row in results))
            self.db.executemany(_ABANDONED, abandoned)
            self.db.executemany(_OFF_WIRE, off_wire)
            self.db.executemany(_ON_WIRE, on_wire)

    def add_batch(self, tag: str, provider: str, model: str, keys: Sequence[str], base_url: str | None = None) -> None:
        """Record a batch about to be submitted (before any money is at stake) to the server at `base_url`."""
        self.db.execute("INSERT INTO batches (tag, provider, model, keys, status, created_at, base_url) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (tag, provider, model, json.dumps(list(keys)), "submitting", time.time(), server(base_url)))

    def update_batch(self, tag: str, status: str, batch_id: str | None = None) -> None:
        self.db.execute("UPDATE batches SET status=?, batch_id=COALESCE(?, batch_id), updated_at=? WHERE tag=?",
                        (status, batch_id, time.time(), tag))

    def batch_ids(self) -> set[str]:
        """Every provider batch id the journal holds."""
        return {bid for (bid,) in self.db.execute("SELECT batch_id FROM batches WHERE batch_id IS NOT NULL")}

    def open_batch_groups(self) -> list[tuple[str, str, str | None]]:
        """The (provider, model, base_url) groups that have open batches (base_url None where not recorded)."""
        return self.db.execute(
            f"SELECT DISTINCT provider, model, base_url FROM batches WHERE status IN ({','.join('?' * len(OPEN_BATCH_STATUSES))})",
            OPEN_BATCH_STATUSES).fetchall()

    def open_batches(self, provider: str, model: str) -> list[dict]:
        """Batches of this provider and model submitted (or being submitted) whose results are not in yet."""
        cursor = self.db.execute(
            "SELECT tag, batch_id, keys, status, created_at, base_url FROM batches WHERE provider=? AND model=? "
            f"AND status IN ({','.join('?' * len(OPEN_BATCH_STATUSES))}) ORDER BY created_at",
            (provider, model, *OPEN_BATCH_STATUSES))
        return [{"tag": t, "batch_id": b, "keys": json.loads(k), "status": st, "created_at": c, "base_url": u}
                for t, b, k, st, c, u in cursor]

    @contextmanager
    def _transaction(self):
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def summary(self, prices: Mapping[str, tuple[float, float]] | None = None) -> dict:
        """Counts by status and failure class, token and dollar totals (what was paid: a reused answer counts
        once, the tokens of failures answered since too), the worst case of abandoned attempts and of those
        on the wire (what the provider may have billed besides: a killed run's, or a running one's), attempts,
        provider batches by status (open ones, "submitting"/"running", are collected by the next run), and how
        many rows reuse another's answer. Tokens billed at no price count at the price the table and `prices`
        (--price) give now, as a run's budget counts them (`unpriced_usd`); `unpriced_tokens`: those still without
        one, which the dollar totals leave out."""
        db = self.db
        by_status = dict(db.execute("SELECT status, COUNT(*) FROM requests GROUP BY status").fetchall())
        failures = dict(db.execute("SELECT error_class, COUNT(*) FROM requests WHERE status='failed' "
                                   "GROUP BY error_class").fetchall())
        total, tin, tout, cost, attempts = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(input_tokens),0), COALESCE(SUM(output_tokens),0), "
            "COALESCE(SUM(cost_usd),0), COALESCE(SUM(attempts),0) FROM requests").fetchone()
        models = dict(db.execute("SELECT model, COUNT(*) FROM requests GROUP BY model").fetchall())
        batches = dict(db.execute("SELECT status, COUNT(*) FROM batches GROUP BY status").fetchall())
        reused = db.execute("SELECT COUNT(reused_from) FROM requests").fetchone()[0] if self._reuses else 0
        abandoned_usd, abandoned_out = db.execute(
            "SELECT COALESCE(SUM(abandoned_usd),0), COALESCE(SUM(abandoned_output_tokens),0) FROM requests"
        ).fetchone() if self._abandons else (0.0, 0)
        if self._wires:
            wire_usd, wire_out = db.execute(
                "SELECT COALESCE(SUM(on_wire_usd),0), COALESCE(SUM(on_wire_output_tokens),0) FROM requests "
                "WHERE on_wire_output_tokens IS NOT NULL").fetchone()
            abandoned_usd, abandoned_out = abandoned_usd + wire_usd, abandoned_out + wire_out
        if self._fails:  # what failures answered since were billed
            tout += db.execute("SELECT COALESCE(SUM(failed_output_tokens),0) FROM requests").fetchone()[0]
        if self._fails_in:
            tin += db.execute("SELECT COALESCE(SUM(failed_input_tokens),0) FROM requests").fetchone()[0]
        repriced, repriced_abandoned, unpriced = self._repriced(prices)
        cost, abandoned_usd = cost + repriced, abandoned_usd + repriced_abandoned
        abandoned_in = db.execute(  # an attempt a schema-7 run left on the wire has none recorded (NULL)
            "SELECT COALESCE(SUM(abandoned_input_tokens),0) + COALESCE(SUM(on_wire_input_tokens),0) FROM requests"
        ).fetchone()[0] if self._abandons_in else 0
        return {"path": str(self.path) if self.path else ":memory:", "requests": total,
                "by_status": by_status, "done": sum(by_status.get(s, 0) for s in DONE_STATUSES),
                "failures": failures, "input_tokens": tin, "output_tokens": tout,
                "cost_usd": cost, "abandoned_usd": abandoned_usd, "abandoned_output_tokens": abandoned_out,
                "abandoned_input_tokens": abandoned_in,
                "attempts": attempts, "models": models, "batches": batches, "reused": reused,
                "unpriced_tokens": unpriced}

    def _repriced(self, prices: Mapping[str, tuple[float, float]] | None) -> tuple[float, float, int]:
        """USD of the tokens billed at no price, at the prices known now, per model: of answers and failures, and
        of abandoned attempts (those on the wire at no price included); and how many such tokens have no price yet."""
        present = {row[1] for row in self.db.execute("PRAGMA table_info(requests)")}
        sums = [self._unpriced_sql(column, present) for column in UNPRICED_COLUMNS]
        if "on_wire_usd" in present:  # sent at no price and not settled yet (at $0 in a journal not migrated yet)
            unpriced = "on_wire_usd IS NULL" if "unpriced_input_tokens" in present else \
                "COALESCE(on_wire_usd, 0) = 0"  # NULL: a run migrating it meanwhile
            wire_in = "COALESCE(on_wire_input_tokens, 0)" if "on_wire_input_tokens" in present else "0"
            sums[2] += f" + CASE WHEN {unpriced} THEN {wire_in} ELSE 0 END"
            sums[3] += f" + CASE WHEN {unpriced} THEN COALESCE(on_wire_output_tokens, 0) ELSE 0 END"
        usd = abandoned = 0.0
        left = 0
        for model, tin, tout, ain, aout in self.db.execute(
                f"SELECT model, {', '.join(f'COALESCE(SUM({s}), 0)' for s in sums)} FROM requests GROUP BY model"):
            usd += unpriced_usd(model, tin, tout, prices)
            abandoned += unpriced_usd(model, ain, aout, prices)
            left += 0 if is_priced(model, prices) else round(tin + tout + ain + aout)
        return usd, abandoned, left

    @classmethod
    def _missing_sql(cls, column: str, present: set[str]) -> str:
        """What an older journal opened read-only (not migrated) reads for a column it lacks: NULL, but for the
        unpriced ones what its migration will set, so its rows and export say what a migrated copy says."""
        return f"CAST({cls._unpriced_sql(column, present)} AS REAL)" if column in UNPRICED_COLUMNS else "NULL"

    @staticmethod
    def _unpriced_sql(column: str, present: set[str]) -> str:
        """The SQL of an unpriced column: itself, or in a journal not migrated yet (read-only) what its migration
        will set (`_UNPRICED_OF_OLD`), with 0 for the columns it lacks too."""
        if column in present:
            return column
        return re.sub(r"\b[a-z_]+_(?:usd|tokens)\b", lambda m: m[0] if m[0] in present else "0", _UNPRICED_OF_OLD[column])

    def export_parquet(self, out: str | Path, statuses: Sequence[str] | None = None,
                       chunk_rows: int = 50_000) -> Path:
        """Write the journal (optionally only rows with these statuses) to a parquet file, streaming
        `chunk_rows` rows at a time so a journal larger than memory exports too."""
        import polars as pl
        import pyarrow.parquet as pq

        query = f"SELECT {self._select} FROM requests"
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
            "created_at": pl.Float64, "updated_at": pl.Float64, "reused_from": pl.String,
            "abandoned_usd": pl.Float64, "abandoned_output_tokens": pl.Int64,
            "failed_output_tokens": pl.Int64, "failed_input_tokens": pl.Int64, "abandoned_input_tokens": pl.Int64,
            **dict.fromkeys(UNPRICED_COLUMNS, pl.Float64)}


def unpriced_usd(model: str, input_tokens: float, output_tokens: float,
                 prices: Mapping[str, tuple[float, float]] | None = None) -> float:
    """USD of tokens billed at no price (list-price tokens, see the module docstring) at the price `model` has now in
    the price table and `prices`; 0 while it has none."""
    price_in, price_out = price_of(model, prices)
    return (input_tokens * price_in + output_tokens * price_out) / 1e6


def server(url: str | None) -> str | None:
    """A server's URL as the journal keeps it: no user:password, query or fragment, where a token may be (the
    journal is shared and exported; the key comes from the environment when the batch is cancelled)."""
    if not url:
        return url
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def request_key(canonical: Mapping) -> str:
    """A request's journal key: sha256 of its canonical JSON (sorted keys, no spaces, UTF-8)."""
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def reuse_key(canonical: Mapping) -> str:
    """The key of a request whatever its max_tokens: an answer that stopped on its own is the answer of every
    request with this key whose max_tokens it fits in."""
    return request_key({k: v for k, v in canonical.items() if k != "max_tokens"})


def _reuse_key_of_json(request: str) -> str | None:
    """`reuse_key` of a stored request (the SQL function reuse_key_of); None where it is no JSON object, so
    one odd row cannot stop a journal from opening."""
    try:
        canonical = json.loads(request)
    except (TypeError, ValueError):
        return None
    return reuse_key(canonical) if isinstance(canonical, dict) else None


def request_of(row: dict) -> dict:
    """The canonical request stored in a journal row, as a dict."""
    return json.loads(row["request"])


class JournalWriter:
    """The journal's single writer: an asyncio task that commits whatever finished since its last
    commit in one transaction. Writing on the loop thread (no thread hop per request) costs a few
    microseconds per row; batching keeps commits few under load and immediate when idle. An attempt about to go
    on the wire is committed at once (`on_wire`), with whatever is queued before it, so the order holds."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._pending: list[tuple] = []
        self._abandoned: list[tuple[float | None, int, int, str]] = []
        self._off_wire: list[tuple[str]] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task | None = None
        self.written = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="journal-writer")

    def put(self, row: tuple) -> None:
        """Queue a result row (see `_UPDATE`)."""
        self._pending.append(row)  # kept even if the writer died: close() tries once more
        self._queued()

    def put_abandoned(self, key: str, usd: float | None, output_tokens: int, input_tokens: int) -> None:
        """Queue an abandoned attempt's worst case, added to its request's row: money (None at no price) and tokens
        the provider may bill."""
        self._abandoned.append((usd, output_tokens, input_tokens, key))
        self._queued()

    def put_off_wire(self, key: str) -> None:
        """Queue the end of an attempt that settled without a bill (a 429, a 5xx, never sent)."""
        self._off_wire.append((key,))
        self._queued()

    def on_wire(self, key: str, usd: float | None, output_tokens: int, input_tokens: int) -> None:
        """Commit now, with everything queued, that an attempt of `key` whose worst case is this is about to go
        out: a run killed before it settles leaves the record, which the next run counts as abandoned. Nothing of
        it stays queued if the commit fails (the attempt is not sent)."""
        self.flush([(usd, output_tokens, input_tokens, key)])

    def _queued(self) -> None:
        self._wake.set()
        if self._task is not None and self._task.done() and not self._task.cancelled():
            self._task.result()  # the writer died (disk full, say): surface its error now

    def flush(self, on_wire: Sequence[tuple[float | None, int, int, str]] = ()) -> None:
        """Commit everything queued now (used at shutdown and by the loop), then `on_wire`. Rows a failed commit
        could not write stay queued: they are paid answers."""
        if self._pending or self._abandoned or self._off_wire or on_wire:
            batch, abandoned, off_wire = self._pending, self._abandoned, self._off_wire
            self._pending, self._abandoned, self._off_wire = [], [], []
            try:
                self.journal.write_results(batch, abandoned, off_wire, on_wire)
            except BaseException:
                self._pending[:0], self._abandoned[:0], self._off_wire[:0] = batch, abandoned, off_wire
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
