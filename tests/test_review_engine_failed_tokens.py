"""Output tokens billed to a failed answer stay counted once the request is answered again: the journal's totals,
a later run's max_output_tokens budget and its stats are what was paid. A row's own output_tokens describe its
answer (document statistics), so what its failures were billed is kept apart (`failed_output_tokens`, schema 6).
Real openai client, loopback emulator."""

from __future__ import annotations

import sqlite3

import pytest

from textbookgen.engine import ChatRequest, Generator
from textbookgen.journal import Journal
from textbookgen.testing.emulator import Emulator, EmulatorConfig, Fault

FAST = dict(backoff_initial_s=0.01, backoff_max_s=0.05, progress=False, timeout_s=20.0, concurrency=8)
PRICES = {"pricey": (0.0, 1000.0)}  # $0.001 an output token, prompts free
MAX_TOKENS, SHORT = 400, 100


def answer(body: dict) -> str:
    return "abc " * SHORT


def ask(prefix: str, n: int, max_tokens: int = MAX_TOKENS) -> list[ChatRequest]:
    return [ChatRequest(messages=[{"role": "user", "content": f"{prefix} {i}"}], max_tokens=max_tokens)
            for i in range(n)]


def gen_for(emu: Emulator, tmp_path, **kw) -> Generator:
    return Generator("openai", "pricey", base_url=emu.openai_base_url, api_key="sk-test",
                     journal=tmp_path / "j.sqlite", prices=PRICES, **{**FAST, **kw})


def test_a_failure_answered_later_keeps_its_output_tokens_in_the_journal_and_the_next_budget(tmp_path):
    """Three answers cut at max_tokens while thinking (400 tokens each, billed), answered by the next run (100 each):
    1,500 tokens paid. The journal used to say 300 (the answers overwrote the failures' tokens), so a third run
    under max_output_tokens=1,900 sent two new requests where one worst case (400) was all that was left."""
    config = EmulatorConfig(latency_median_s=0.001, responder=answer, faults=[Fault("reasoning", first=1)])
    with Emulator(config) as emu:
        failed = gen_for(emu, tmp_path, max_error_rate=None).run(ask("Hi", 3))
        assert [r.error_class for r in failed] == ["empty_answer_reasoning"] * 3
        answered = gen_for(emu, tmp_path).run(ask("Hi", 3))
        assert [r.status for r in answered] == ["ok"] * 3 and [r.output_tokens for r in answered] == [SHORT] * 3
        paid = emu.output_tokens
        assert paid == 3 * MAX_TOKENS + 3 * SHORT
        with Journal(tmp_path / "j.sqlite") as j:
            assert j.summary()["output_tokens"] == paid
        emu.config.faults.clear()
        third = gen_for(emu, tmp_path, max_output_tokens=paid + MAX_TOKENS)
        out = third.run(ask("Hi", 3) + ask("New", 2))
        assert emu.output_tokens == paid + SHORT  # one new request: the second's worst case would not fit
    assert [r.status for r in out] == ["ok"] * 4 + ["skipped_budget"]
    assert [r.output_tokens for r in out[:3]] == [SHORT] * 3  # an answer's own tokens, for document statistics
    assert third.stats["output_tokens"] == paid + SHORT


def test_a_failure_answered_by_reuse_keeps_its_output_tokens(tmp_path):
    """Answers cut at max_tokens 100 while thinking (billed), good ones at 150, then back to 100: reuse answers the
    100-token rows free, and what their failed answers were billed stays in the journal and in a later run's count."""
    prompts = [ChatRequest(messages=[{"role": "user", "content": f"Topic {i}"}], max_tokens=100) for i in range(2)]
    raised = [ChatRequest(messages=r.messages, max_tokens=150) for r in prompts]
    config = EmulatorConfig(latency_median_s=0.001, responder=lambda body: "abc " * 50,
                            faults=[Fault("reasoning", rate=1.0)])
    with Emulator(config) as emu:
        gen_for(emu, tmp_path, max_error_rate=None).run(prompts)
        empty_tokens = emu.output_tokens
        assert empty_tokens > 0
        emu.config.faults.clear()
        gen_for(emu, tmp_path).run(raised)
        back = gen_for(emu, tmp_path)
        again = back.run(prompts)
        paid = emu.output_tokens
    assert all(r.reused_from for r in again) and [r.output_tokens for r in again] == [50, 50]
    with Journal(tmp_path / "j.sqlite") as j:
        assert j.summary()["output_tokens"] == paid
    with Emulator(config) as emu:
        later = gen_for(emu, tmp_path)
        later.run(prompts)
        assert emu.billed == 0
    assert later.stats["output_tokens"] == back.stats["output_tokens"] == empty_tokens


def test_a_journal_of_the_last_schema_gains_the_column_and_keeps_its_rows(tmp_path):
    """A schema-5 journal (before `failed_output_tokens`) opens, its rows replay, and the column starts at 0."""
    path = tmp_path / "j.sqlite"
    with Emulator(EmulatorConfig(latency_median_s=0.001, responder=answer)) as emu:
        gen_for(emu, tmp_path).run(ask("Hi", 2))
        db = sqlite3.connect(path)
        db.execute("ALTER TABLE requests DROP COLUMN failed_output_tokens")
        db.execute("PRAGMA user_version=5")
        db.commit()
        db.close()
        with Journal(path, read_only=True) as j:
            assert j.summary()["output_tokens"] == 2 * SHORT
        out = gen_for(emu, tmp_path).run(ask("Hi", 2))
        assert emu.billed == 2 and [r.status for r in out] == ["ok", "ok"]
    with Journal(path) as j:
        assert j.summary()["output_tokens"] == 2 * SHORT
        assert [row["failed_output_tokens"] for row in j.rows([r.key for r in out]).values()] == [0, 0]


@pytest.mark.parametrize("status", ["ok", "failed"])
def test_only_a_failure_moves_its_tokens_aside(status, tmp_path):
    """A row written again after a failure adds the failure's tokens to `failed_output_tokens`; after anything else
    (an older version's empty answer re-recorded as failed keeps its own tokens) nothing moves."""
    with Journal(tmp_path / "j.sqlite") as j:
        j.add_pending([("k", "openai", "m", "{}", "{}")])
        j.write_results([(status, "", "length", 10, 400, 0.4, 1.0, 1, None, None, None, 0.0, "k")])
        j.write_results([("ok", "text", "stop", 10, 100, 0.1, 1.0, 1, None, None, None, 0.0, "k")])
        row = j.rows(["k"])["k"]
        moved = 400 if status == "failed" else 0
        assert (row["output_tokens"], row["failed_output_tokens"]) == (100, moved)
        assert j.summary()["output_tokens"] == 100 + moved
