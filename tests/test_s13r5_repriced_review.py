"""Review of journal schema 9 (tokens billed at no price counted at a later price): what a journal written before it
left on the wire at no price ($0 worst case) counts once priced, read-only as after the migration."""

from __future__ import annotations

import shutil
import sqlite3

import polars as pl
import pytest

from textbookgen.journal import Journal

MODEL = "my/llm"
PRICE = {MODEL: (1000.0, 1000.0)}  # $0.001 a token, input and output
UNPRICED = ("unpriced_input_tokens", "unpriced_output_tokens", "abandoned_unpriced_input_tokens",
            "abandoned_unpriced_output_tokens")  # journal schema 9


def schema_8_journal(path) -> None:
    """A journal as schema 8 left it after a run at no price was killed: one answer billed $0 (10 input, 20 output
    tokens) and an attempt on the wire whose worst case was $0 (40 input tokens estimated, max_tokens 64)."""
    with Journal(path) as j:
        j.add_pending([("k1", "openai", MODEL, '{"max_tokens": 64}', "{}"),
                       ("k2", "openai", MODEL, '{"max_tokens": 64}', "{}")])
        j.write_results([("ok", "hi", "stop", 10, 20, 0.0, 0.1, 1, None, None, None, 0.0, "k1")])
    with sqlite3.connect(path) as db:
        for column in UNPRICED:
            db.execute(f"ALTER TABLE requests DROP COLUMN {column}")
        db.execute("UPDATE requests SET on_wire_usd = 0.0, on_wire_output_tokens = 64, on_wire_input_tokens = 40 "
                   "WHERE key = 'k2'")  # schema 8's on_wire(key, 0.0, 64, 40): $0 at no price
        db.execute("PRAGMA user_version=8")
    db.close()


def test_an_attempt_a_schema_8_run_left_on_the_wire_at_0_dollars_counts_once_priced(tmp_path):
    """Schema 8 journaled an attempt on the wire at no price as $0, as it did answers: the migration took the $0
    answers for unpriced but not that attempt, which the next run then moved to the abandoned ones as $0 spent, so a
    budget given with the price never counted its worst case (104 tokens: $0.104 here) and unpriced_tokens left it out."""
    path = tmp_path / "j.sqlite"
    schema_8_journal(path)
    with Journal(path, read_only=True) as j:  # a build's spent_before, a summary, before any run migrates it
        before = j.summary(PRICE)
        assert before["abandoned_usd"] == pytest.approx(0.104) and before["cost_usd"] == pytest.approx(0.03)
        assert j.summary()["unpriced_tokens"] == 30 + 104
    with Journal(path) as j:  # the next run: migrated, then the killed run's attempt moved to the abandoned ones
        j.lock_for_run()
        after = j.summary(PRICE)
        assert (after["abandoned_usd"], after["cost_usd"]) == pytest.approx((0.104, 0.03))
        assert j.summary()["unpriced_tokens"] == 30 + 104
        row = j.db.execute("SELECT abandoned_unpriced_input_tokens, abandoned_unpriced_output_tokens, on_wire_usd "
                           "FROM requests WHERE key = 'k2'").fetchone()
    assert row == (40, 64, None)


def test_the_export_of_a_journal_from_before_schema_9_has_its_unpriced_tokens_read_only_as_migrated(tmp_path):
    """`textbookgen journal --export` reads an older journal without migrating it: its unpriced columns were NULL
    there, while a migrated copy's held the tokens of its $0 rows, which the summary of the same file counts."""
    path = tmp_path / "j.sqlite"
    schema_8_journal(path)
    shutil.copy(path, tmp_path / "copy.sqlite")
    with Journal(path, read_only=True) as j:
        old = pl.read_parquet(j.export_parquet(tmp_path / "old.parquet"))
    with Journal(tmp_path / "copy.sqlite") as j:
        migrated = pl.read_parquet(j.export_parquet(tmp_path / "migrated.parquet"))
    columns = ["key", *UNPRICED]
    assert old.select(columns).rows() == [("k1", 10.0, 20.0, 0.0, 0.0), ("k2", 0.0, 0.0, 0.0, 0.0)]
    assert old.select(columns).equals(migrated.select(columns))
