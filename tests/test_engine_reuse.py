"""Answers reused across a max_tokens change: an answer that stopped on its own within the new limit is not paid
for again (Curator #697); truncated ones, and ones that no longer fit, are."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3

import pytest

from textbookgen.engine import ChatRequest, Generator, canonical_request, fits, request_key, sampled
from textbookgen.journal import SCHEMA_VERSION, Journal, reuse_key
from textbookgen.llm import LLM
from textbookgen.testing.emulator import Emulator, EmulatorConfig

PROVIDERS = [("openai", "gpt-4o-mini"), ("anthropic", "claude-haiku-4-5")]
FAST = dict(backoff_initial_s=0.01, backoff_max_s=0.05, progress=False, timeout_s=20.0)
LENGTHS = (30, 50, 90, 200)  # tokens each prompt's answer takes when nothing cuts it


def sized(body: dict) -> str:
    """An answer of exactly the tokens the prompt names (4 characters a token), starting with the seed."""
    prompt = json.dumps(body.get("messages"))
    tokens = int(re.search(r"in (\d+) tokens", prompt).group(1))
    return f"[seed {body.get('seed')}] {prompt[:40]}".ljust(4 * tokens, "x")[:4 * tokens]


def emulator(**kw) -> Emulator:
    return Emulator(EmulatorConfig(latency_median_s=0.001, responder=sized, **kw))


def reqs(max_tokens: int) -> list[ChatRequest]:
    return [ChatRequest(messages=[{"role": "user", "content": f"Explain topic {i} in {n} tokens"}],
                        max_tokens=max_tokens, metadata={"i": i}) for i, n in enumerate(LENGTHS)]


def gen_for(emu: Emulator, provider: str, model: str, tmp_path, **kw) -> Generator:
    base = emu.anthropic_base_url if provider == "anthropic" else emu.openai_base_url
    return Generator(provider, model, base_url=base, api_key="sk-test-key", journal=tmp_path / "j.sqlite",
                     **{**FAST, **kw})


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_raising_max_tokens_pays_only_for_the_truncated_answers(provider, model, tmp_path):
    with emulator() as emu:
        first = gen_for(emu, provider, model, tmp_path).run(reqs(100))
        assert [r.finish_reason for r in first] == ["stop", "stop", "stop", "length"] and emu.billed == 4
        raised = gen_for(emu, provider, model, tmp_path).run(reqs(150))
        assert emu.billed == 5  # only the one cut at 100 tokens
        again = gen_for(emu, provider, model, tmp_path).run(reqs(150))  # now found under its own key
        assert emu.billed == 5
    for r in (raised, again):
        assert [x.reused_from for x in r] == [x.key for x in first[:3]] + [None]
        assert [x.text for x in r[:3]] == [x.text for x in first[:3]]
        assert [x.output_tokens for x in r[:3]] == [30, 50, 90] and [x.cost_usd for x in r[:3]] == [0.0] * 3
        assert [x.status for x in r] == ["ok", "ok", "ok", "truncated"] and r[3].output_tokens == 150
        assert [x.metadata["i"] for x in r] == [0, 1, 2, 3]
    assert raised[0].key != first[0].key
    with Journal(tmp_path / "j.sqlite") as j:
        summary, rows = j.summary(), j.rows([x.key for x in raised])
    assert summary["reused"] == 3 and summary["done"] == 8
    assert summary["output_tokens"] == 30 + 50 + 90 + 100 + 150  # what was paid: each answer once
    assert summary["cost_usd"] == pytest.approx(sum(x.cost_usd for x in first) + raised[3].cost_usd)
    assert [rows[x.key]["reused_from"] for x in raised] == [x.key for x in first[:3]] + [None]


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_lowering_max_tokens_reuses_only_the_answers_that_fit(provider, model, tmp_path):
    with emulator() as emu:
        first = gen_for(emu, provider, model, tmp_path).run(reqs(100))
        lowered = gen_for(emu, provider, model, tmp_path).run(reqs(50))
        assert emu.billed == 4 + 2  # 90 tokens no longer fit in 50; the truncated one never counts
    assert [r.reused_from for r in lowered] == [first[0].key, first[1].key, None, None]
    assert [r.status for r in lowered] == ["ok", "ok", "truncated", "truncated"]


def test_each_sample_reuses_its_own_seeds_answer(tmp_path):
    prompt = ChatRequest(messages=[{"role": "user", "content": "Explain tides in 40 tokens"}], max_tokens=100)
    with emulator() as emu:
        first = gen_for(emu, "openai", "gpt-4o-mini", tmp_path).run(sampled(prompt, 3))
        prompt.max_tokens = 200
        raised = gen_for(emu, "openai", "gpt-4o-mini", tmp_path).run(sampled(prompt, 4))
        assert emu.billed == 4  # only the new sample
    assert len({r.text for r in first}) == 3 and "[seed None]" in first[0].text  # sample 0 unseeded, as n=1 sends it
    assert all(f"[seed {j}]" in r.text for j, r in enumerate(first) if j)
    assert [r.text for r in raised[:3]] == [r.text for r in first]
    assert [r.reused_from for r in raised] == [r.key for r in first] + [None]


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_batch_runs_reuse_too(provider, model, tmp_path):
    with emulator(batch_latency_s=0.05) as emu:
        opts = dict(batch=True, batch_poll_s=0.02)
        gen_for(emu, provider, model, tmp_path, **opts).run(reqs(100))
        raised = gen_for(emu, provider, model, tmp_path, **opts).run(reqs(150))
        assert emu.stats()["batch_requests"] == 5 and emu.billed == 5
    assert [r.reused_from is not None for r in raised] == [True, True, True, False]


def test_an_llm_task_reuses_answers_after_a_max_tokens_change(tmp_path):
    class Lesson(LLM):
        def prompt(self, row):
            return f"Explain {row['topic']} in {row['tokens']} tokens"

    rows = [{"topic": t, "tokens": n} for t, n in (("tides", 30), ("enzymes", 90))]
    with emulator() as emu:
        def task(max_tokens):
            return Lesson("gpt-4o-mini", base_url=emu.openai_base_url, api_key="sk-test", progress=False, n=2,
                          journal=tmp_path / "llm.sqlite", max_tokens=max_tokens)

        first = task(100)(rows)
        raised = task(300)(rows)
        assert emu.billed == 4  # two rows x two samples, all reused
        task(60)(rows)
        assert emu.billed == 6  # the 90-token answers no longer fit
    assert raised.equals(first) and raised["sample"].to_list() == [0, 1, 0, 1]


@pytest.mark.parametrize("budget", ["max_cost_usd", "max_output_tokens"])
def test_reused_answers_count_nothing_against_the_budgets(budget, tmp_path):
    """The first run paid for them; the run that reuses them has its whole budget for what it sends."""
    prices = {"pricey": (1000.0, 1000.0)}  # $0.001 a token
    with emulator() as emu:
        first = gen_for(emu, "openai", "pricey", tmp_path, prices=prices).run(reqs(100))
        paid = {"max_cost_usd": 0.9 * sum(r.cost_usd for r in first), "max_output_tokens": 243}[budget]
        raised = gen_for(emu, "openai", "pricey", tmp_path, prices=prices, **{budget: paid}).run(reqs(150))
        assert emu.billed == 5
    assert [r.status for r in raised] == ["ok", "ok", "ok", "truncated"]


def test_requests_waiting_in_submitted_batches_are_collected_not_reused(tmp_path):
    """A request an interrupted --batch run submitted is paid for whatever happens: its batch answer is collected
    even when the journal meanwhile got an answer under another max_tokens."""
    with emulator(batch_latency_s=1.5) as emu:
        batch = gen_for(emu, "openai", "gpt-4o-mini", tmp_path, batch=True, batch_poll_s=0.02)

        async def interrupted() -> None:
            task = asyncio.ensure_future(batch.arun(reqs(150)))
            await asyncio.sleep(0)  # the run has created the journal
            while batch_statuses(batch.journal_path) != ["running"]:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(interrupted())
        gen_for(emu, "openai", "gpt-4o-mini", tmp_path).run(reqs(100))  # answered live meanwhile
        out = gen_for(emu, "openai", "gpt-4o-mini", tmp_path, batch=True, batch_poll_s=0.05).run(reqs(150))
        assert emu.billed == 8 and emu.stats()["batches_created"] == 1
    assert all(r.reused_from is None and r.cost_usd > 0 for r in out)


def batch_statuses(path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [status for (status,) in db.execute("SELECT status FROM batches ORDER BY created_at")]


def test_a_journal_from_before_reuse_is_migrated_and_its_answers_reused(tmp_path):
    """A version-1 journal (no reuse columns) reads as it is, and gets them, computed from its stored requests,
    when a run opens it: its answers are then reused across a max_tokens change like any."""
    path = tmp_path / "old.sqlite"
    old = ChatRequest(messages=[{"role": "user", "content": "Explain tides in 30 tokens"}], max_tokens=100)
    canonical = canonical_request("openai", "gpt-4o-mini", old)
    db = sqlite3.connect(path)
    db.executescript(V1_SCHEMA)
    db.execute("INSERT INTO requests (key, provider, model, status, text, finish_reason, input_tokens, output_tokens, "
               "cost_usd, attempts, request, metadata, created_at) VALUES (?, 'openai', 'gpt-4o-mini', 'ok', "
               "'the old answer', 'stop', 12, 30, 0.001, 1, ?, '{}', 1.0)",
               (request_key(canonical), json.dumps(canonical)))
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    with Journal(path, read_only=True) as j:  # an old journal stays readable without being changed
        assert j.summary()["done"] == 1 and j.summary()["reused"] == 0
        assert j.rows([request_key(canonical)])[request_key(canonical)]["reused_from"] is None
        assert j.export_parquet(tmp_path / "old.parquet").is_file()
    with emulator() as emu:
        old.max_tokens = 150
        [answer] = Generator("openai", "gpt-4o-mini", base_url=emu.openai_base_url, api_key="sk-test",
                             journal=path, **FAST).run([old])
        assert emu.billed == 0
    assert answer.text == "the old answer" and answer.reused_from == request_key(canonical)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        stored = db.execute("SELECT reuse_key FROM requests WHERE key=?", (request_key(canonical),)).fetchone()[0]
    assert stored == reuse_key(canonical)


def test_an_answer_without_usage_fits_only_a_max_tokens_at_least_its_own():
    """A server that reports no usage leaves no token count to compare: only a larger limit is safe."""
    row = {"text": "some answer", "output_tokens": 0, "request": json.dumps({"max_tokens": 100})}
    assert fits(row, 100) and fits(row, 150) and not fits(row, 99)
    counted = {**row, "output_tokens": 40}
    assert fits(counted, 40) and not fits(counted, 39)
    assert fits({**row, "text": ""}, 1)  # an empty answer fits anywhere


def test_journal_migration_computes_reuse_keys_from_stored_requests_and_reopens(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(V1_SCHEMA)
    db.executemany("INSERT INTO requests (key, provider, model, request, created_at) VALUES (?, 'openai', 'm', ?, ?)",
                   [("k1", json.dumps({"model": "m", "max_tokens": 8}), 1.0), ("k2", "not json", 2.0)])
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()
    with Journal(path) as j:
        keys = dict(j.db.execute("SELECT key, reuse_key FROM requests").fetchall())
        assert j.summary()["requests"] == 2
    assert keys == {"k1": reuse_key({"model": "m"}), "k2": None}
    with Journal(path) as j:  # reopened: already migrated, nothing added twice
        assert dict(j.db.execute("SELECT key, reuse_key FROM requests").fetchall()) == keys


V1_SCHEMA = """
CREATE TABLE requests (
    key TEXT PRIMARY KEY, provider TEXT NOT NULL, model TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'pending',
    text TEXT, finish_reason TEXT, input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0, latency_s REAL, attempts INTEGER NOT NULL DEFAULT 0, error TEXT,
    error_class TEXT, response_id TEXT, request TEXT NOT NULL, metadata TEXT, created_at REAL NOT NULL, updated_at REAL
);
CREATE INDEX requests_status ON requests(status);
CREATE TABLE batches (
    tag TEXT PRIMARY KEY, batch_id TEXT, provider TEXT NOT NULL, model TEXT NOT NULL, keys TEXT NOT NULL,
    status TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL
);
"""


def test_a_billed_failure_answered_by_reuse_keeps_what_it_cost_in_the_journal(tmp_path):
    """Empty answers at max_tokens 100 (billed), good ones at 150, then back to 100: the 100-token rows are answered
    free by the 150-token answers that fit, but what their empty answers cost was paid; the journal used to zero it."""
    from textbookgen.testing.emulator import Fault

    with emulator(faults=[Fault("empty", rate=1.0)]) as emu:
        empty = gen_for(emu, "openai", "gpt-4o-mini", tmp_path, max_error_rate=None).run(reqs(100))
        emu.config.faults.clear()
        good = gen_for(emu, "openai", "gpt-4o-mini", tmp_path).run(reqs(150))
        back = gen_for(emu, "openai", "gpt-4o-mini", tmp_path)
        again = back.run(reqs(100))
        assert emu.billed == 9  # the one cut at 100 tokens, sent again
    assert [r.error_class for r in empty] == ["empty_answer"] * 4 and all(r.cost_usd > 0 for r in empty)
    assert [r.reused_from for r in again[:3]] == [r.key for r in good[:3]]
    paid = sum(r.cost_usd for r in empty) + sum(r.cost_usd for r in good) + again[3].cost_usd
    with Journal(tmp_path / "j.sqlite") as j:
        assert j.summary()["cost_usd"] == pytest.approx(paid)
    assert back.stats["cost_usd"] == pytest.approx(sum(r.cost_usd for r in empty) + again[3].cost_usd)
    with emulator() as emu:  # and a later run, replaying it, counts it too
        later = gen_for(emu, "openai", "gpt-4o-mini", tmp_path)
        later.run(reqs(100))
        assert emu.billed == 0
    assert later.stats["cost_usd"] == pytest.approx(back.stats["cost_usd"])
