"""Input tokens billed to a failed answer stay counted once the request is answered again (re-sent with retry_failed,
or by reuse): the journal's totals and a later run's stats are what the provider billed. A row's own input_tokens
describe its answer, so what its failures were billed is kept apart (`failed_input_tokens`, schema 7), as their
output tokens are (`failed_output_tokens`, schema 6). Real openai client, loopback emulator."""

from __future__ import annotations

import sqlite3

import pytest

from textbookgen.engine import ChatRequest, Generator
from textbookgen.journal import SCHEMA_VERSION, Journal
from textbookgen.testing.emulator import Emulator, EmulatorConfig, Fault

FAST = dict(backoff_initial_s=0.01, backoff_max_s=0.05, progress=False, timeout_s=20.0, concurrency=8)
PRICES = {"pricey": (1000.0, 1000.0)}  # $0.001 a token, in and out


def ask(n: int, max_tokens: int = 200) -> list[ChatRequest]:
    return [ChatRequest(messages=[{"role": "user", "content": f"Write about topic number {i} " * 20}],
                        max_tokens=max_tokens) for i in range(n)]


def gen_for(emu: Emulator, tmp_path, **kw) -> Generator:
    return Generator("openai", "pricey", base_url=emu.openai_base_url, api_key="sk-test",
                     journal=tmp_path / "j.sqlite", prices=PRICES, **{**FAST, "max_error_rate": None, **kw})


def test_a_refusal_sent_again_keeps_its_input_tokens(tmp_path):
    """Refused (billed), then answered with retry_failed: each prompt was billed twice. The journal used to say
    once (the answer overwrote the refusal's input tokens), and so did the rerun's stats."""
    config = EmulatorConfig(latency_median_s=0.001, responder=lambda body: "abc " * 20,
                            faults=[Fault("refusal", first=1)])
    with Emulator(config) as emu:
        refused = gen_for(emu, tmp_path).run(ask(3))
        assert [r.error_class for r in refused] == ["content_filter"] * 3  # OpenAI's refusal
        prompt_in = [r.input_tokens for r in refused]
        again = gen_for(emu, tmp_path, retry_failed=True)
        answered = again.run(ask(3))
        billed_in, billed_out = emu.input_tokens, emu.output_tokens
    assert [r.status for r in answered] == ["ok"] * 3
    assert [r.input_tokens for r in answered] == prompt_in  # the answer's own, for document statistics
    assert billed_in == 2 * sum(prompt_in)
    assert again.stats["input_tokens"] == billed_in and again.stats["output_tokens"] == billed_out
    with Journal(tmp_path / "j.sqlite") as j:
        summary = j.summary()
        rows = j.rows([r.key for r in answered])
    assert (summary["input_tokens"], summary["output_tokens"]) == (billed_in, billed_out)
    assert [rows[r.key]["failed_input_tokens"] for r in answered] == prompt_in


def test_a_failure_answered_by_reuse_keeps_its_input_tokens(tmp_path):
    """Answers cut at max_tokens 100 while thinking (billed), good ones at 150, then back to 100: reuse answers the
    100-token rows free, and the input their failed answers were billed stays in the journal and in a later run."""
    prompts = ask(2, max_tokens=100)
    raised = [ChatRequest(messages=r.messages, max_tokens=150) for r in prompts]
    config = EmulatorConfig(latency_median_s=0.001, responder=lambda body: "abc " * 50,
                            faults=[Fault("reasoning", rate=1.0)])
    with Emulator(config) as emu:
        failed = gen_for(emu, tmp_path).run(prompts)
        failed_in = emu.input_tokens
        assert failed_in > 0 and all(r.status == "failed" for r in failed)
        emu.config.faults.clear()
        gen_for(emu, tmp_path).run(raised)
        again = gen_for(emu, tmp_path).run(prompts)
        billed_in = emu.input_tokens
    assert all(r.reused_from for r in again)
    with Journal(tmp_path / "j.sqlite") as j:
        assert j.summary()["input_tokens"] == billed_in == 2 * failed_in
    with Emulator(config) as emu:
        later = gen_for(emu, tmp_path)
        later.run(prompts)
        assert emu.billed == 0
    assert later.stats["input_tokens"] == failed_in


def test_a_journal_of_schema_6_gains_the_column_and_keeps_its_rows(tmp_path):
    """A schema-6 journal (before `failed_input_tokens`) reads as it is, opens for a run, its rows replay, and the
    column starts at 0."""
    path = tmp_path / "j.sqlite"
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        first = gen_for(emu, tmp_path).run(ask(2))
        db = sqlite3.connect(path)
        db.execute("ALTER TABLE requests DROP COLUMN failed_input_tokens")
        db.execute("PRAGMA user_version=6")
        db.commit()
        db.close()
        paid_in = emu.input_tokens
        with Journal(path, read_only=True) as j:
            assert j.summary()["input_tokens"] == paid_in
        out = gen_for(emu, tmp_path).run(ask(2))
        assert emu.billed == 2 and [r.text for r in out] == [r.text for r in first]
    with Journal(path) as j:
        assert j.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 9
        assert j.summary()["input_tokens"] == paid_in
        assert [row["failed_input_tokens"] for row in j.rows([r.key for r in out]).values()] == [0, 0]


@pytest.mark.parametrize("status", ["ok", "failed"])
def test_only_a_failure_moves_its_input_tokens_aside(status, tmp_path):
    """A row written again after a failure adds the failure's input tokens to `failed_input_tokens`; after anything
    else nothing moves. The export carries the column."""
    import polars as pl

    with Journal(tmp_path / "j.sqlite") as j:
        j.add_pending([("k", "openai", "m", "{}", "{}")])
        j.write_results([(status, "", "length", 30, 400, 0.4, 1.0, 1, None, None, None, 0.0, "k")])
        j.write_results([("ok", "text", "stop", 10, 100, 0.1, 1.0, 1, None, None, None, 0.0, "k")])
        row = j.rows(["k"])["k"]
        moved = 30 if status == "failed" else 0
        assert (row["input_tokens"], row["failed_input_tokens"]) == (10, moved)
        assert j.summary()["input_tokens"] == 10 + moved
        exported = pl.read_parquet(j.export_parquet(tmp_path / "j.parquet"))
    assert exported["failed_input_tokens"].to_list() == [moved]
