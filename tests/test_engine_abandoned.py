"""Attempts the engine abandons (no answer within its timeout): the provider goes on generating and bills them,
so they keep their rate-limit reservations and their worst-case cost is journaled, for reruns and builds.
Real openai/anthropic clients against the loopback emulator."""

from __future__ import annotations

import sqlite3

import pytest

from textbookgen.engine import ChatRequest, Generator, RateLimits, spent
from textbookgen.journal import SCHEMA_VERSION, Journal
from textbookgen.testing.emulator import Emulator, EmulatorConfig, Fault

FAST = dict(backoff_initial_s=0.01, backoff_max_s=0.05, progress=False)


def long_answer(body: dict) -> str:
    """Every answer runs to max_tokens, so what the emulator bills for an abandoned attempt is its reservation."""
    return "word " * 60_000


def ask(prefix: str, n: int, max_tokens: int) -> list[ChatRequest]:
    return [ChatRequest(messages=[{"role": "user", "content": f"{prefix} {i}"}], max_tokens=max_tokens)
            for i in range(n)]


@pytest.mark.parametrize("provider, model, limit", [("openai", "gpt-4o-mini", "tpm"),
                                                    ("anthropic", "claude-haiku-4-5", "output_tpm")])
def test_abandoned_attempts_keep_their_tokens_so_the_retries_meet_no_429(provider, model, limit, tmp_path):
    """A first attempt answers too slowly and is abandoned while large answers fill the token budget. The
    provider goes on generating the abandoned one, so its tokens stay spent there; an engine that handed them
    back to its buckets would send the retry at once, into a 429.

    One slow request, not several: after a timeout the engine waits longer for the attempts still on the wire
    (1, 2, 4, 8 s), so the retries of ten came seconds apart, each within what the budget had refilled by then,
    and the test passed with the tokens handed back. The retry's 3,100 tokens are more than the provider has left
    after the 1 s timeout (1% of 60,000 the engine keeps back, 1,000 a second refilled, 1.5 s to spare for a
    loaded machine's delays); the engine waits ~2 s for them."""
    cfg = EmulatorConfig(latency_median_s=0.001, latency_sigma=0.0, hang_s=30.0, responder=long_answer,
                         faults=[Fault("slow", first=1, match="SLOW")], **{limit: 60_000})
    with Emulator(cfg) as emu:
        base_url = emu.anthropic_base_url if provider == "anthropic" else emu.openai_base_url
        gen = Generator(provider, model, base_url=base_url, api_key="sk-test", journal=tmp_path / "j.sqlite",
                        # 1 s, not 0.1: on a busy 2-core machine the first answers could miss 0.1 s and the
                        # engine then (rightly) stopped the run as a hung server after 8 unanswered attempts
                        limits=RateLimits(**{limit: 60_000}), concurrency=32, timeout_s=1.0, **FAST)
        out = gen.run(ask("Hi", 1, 16) + ask("SLOW", 1, 3_100) + ask("FILL", 5, 11_200))
        assert gen.stats["timed_out"] >= 1
        assert emu.rate_limited == 0 and gen.stats["rate_limited"] == 0
    assert [r.status for r in out] == ["truncated"] * 7


def slow_first(**kw) -> EmulatorConfig:
    """Every SLOW request's first attempt answers too late for the engine, which abandons it (the emulator bills it)."""
    return EmulatorConfig(latency_median_s=0.001, hang_s=30.0, faults=[Fault("slow", first=1, match="SLOW")], **kw)


def gen_for(emu: Emulator, journal, **kw) -> Generator:
    return Generator("openai", "gpt-4o-mini", base_url=emu.openai_base_url, api_key="sk-test", journal=journal,
                     concurrency=8, timeout_s=0.1, **{**FAST, **kw})


def test_abandoned_attempts_are_journaled_once_and_count_in_a_reruns_budget(tmp_path):
    """A rerun's budget counts what earlier runs' abandoned attempts may have cost: a budget they used up sends
    nothing more. The journal holds each attempt once, however often the requests are run again."""
    journal = tmp_path / "j.sqlite"
    first = ask("SLOW", 4, 64)
    with Emulator(slow_first()) as emu:
        gen = gen_for(emu, journal)
        assert [r.status for r in gen.run(first)] == ["ok"] * 4
        abandoned, tokens = gen.stats["abandoned_usd"], gen.stats["abandoned_output_tokens"]
        assert gen.stats["timed_out"] >= 4 and tokens == 64 * gen.stats["timed_out"]
        with Journal(journal) as j:
            s = j.summary()
        assert s["abandoned_usd"] == pytest.approx(abandoned) and s["abandoned_output_tokens"] == tokens
        assert tuple(spent(s)) == pytest.approx((s["cost_usd"] + abandoned, s["output_tokens"] + tokens))
        billed = emu.billed
        # spent: the answers and the abandoned attempts; what is left cannot pay for one more request
        tight = gen_for(emu, journal, max_cost_usd=s["cost_usd"] + abandoned * 0.9)
        more = tight.run(first + ask("NEW", 4, 64))
        assert [r.status for r in more[4:]] == ["skipped_budget"] * 4 and emu.billed == billed
        assert "timed-out, interrupted or garbled attempts counted at max_tokens" in more[4].error
        again = gen_for(emu, journal)
        assert all(r.status == "ok" for r in again.run(first + ask("NEW", 4, 64)))
        assert again.stats["abandoned_usd"] == pytest.approx(abandoned)  # counted, not added twice
        assert again.stats["prior_abandoned_output_tokens"] == tokens and again.stats["timed_out"] == 0
    with Journal(journal) as j:
        assert j.summary()["abandoned_usd"] == pytest.approx(abandoned)
        assert j.summary()["abandoned_output_tokens"] == tokens


def test_the_builds_budget_counts_attempts_abandoned_in_any_of_its_journals(tmp_path):
    """The build's budget is for every journal of its output folder: attempts abandoned while growing the
    taxonomy count against the documents' budget, and in the spend the manifest reports."""
    from textbookgen.build import BudgetedGenerator, journal_spend
    from textbookgen.recipe import BudgetConfig

    journals = {"taxonomy": tmp_path / "grow.sqlite", "generate": tmp_path / "journal.sqlite"}
    with Emulator(slow_first()) as emu:
        grow = BudgetedGenerator(gen_for(emu, journals["taxonomy"]), BudgetConfig(), journals)
        grow.run(ask("SLOW", 4, 64))
        stats = grow.gen.stats
        assert journal_spend(journals["taxonomy"]) == pytest.approx(tuple(spent(stats)))
        budget = BudgetConfig(max_cost_usd=stats["cost_usd"] + 0.9 * stats["abandoned_usd"])
        billed = emu.billed
        docs = BudgetedGenerator(gen_for(emu, journals["generate"], max_cost_usd=budget.max_cost_usd), budget, journals)
        assert [r.status for r in docs.run(ask("DOC", 4, 64))] == ["skipped_budget"] * 4
        assert emu.billed == billed and docs.skipped == 4


def test_a_journal_from_before_abandoned_attempts_were_journaled_opens_and_is_migrated(tmp_path):
    """A version-2 journal reads as it is (no abandoned attempts), and gets the columns, zeros, when a run opens it."""
    path = tmp_path / "v2.sqlite"
    with Journal(path) as j:
        j.add_pending([("k1", "openai", "m", "{}", "{}")])
        j.write_results([("ok", "hi", "stop", 10, 20, 0.5, 0.1, 1, None, None, "r", 1.0, "k1")])
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE requests DROP COLUMN abandoned_usd")
    db.execute("ALTER TABLE requests DROP COLUMN abandoned_output_tokens")
    db.execute("PRAGMA user_version=2")
    db.commit()
    db.close()
    with Journal(path, read_only=True) as j:
        s = j.summary()
        assert (s["cost_usd"], s["abandoned_usd"], s["abandoned_output_tokens"]) == (0.5, 0, 0)
        assert j.export_parquet(tmp_path / "v2.parquet").is_file()
    with Journal(path) as j:
        j.write_results([], [(0.25, 64, 30, "k1")])
        assert spent(j.summary()) == (0.75, 84)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_an_answer_with_an_unreadable_body_counts_at_worst_case(provider, tmp_path):
    """A 200 whose body is cut is billed by the provider: the budget must count it (it was taken as free)."""
    with Emulator(EmulatorConfig(latency_median_s=0.02, latency_sigma=0.0, responder=lambda body: "abc " * 100,
                                 faults=[Fault("bad_json", rate=0.5)])) as emu:  # fmt: skip
        base = emu.anthropic_base_url if provider == "anthropic" else emu.openai_base_url
        gen = Generator(provider, "pricey", base_url=base, api_key="sk-test", journal=tmp_path / "j.sqlite",
                        prices={"pricey": (0.0, 1000.0)}, concurrency=8, max_output_tokens=1400, progress=False,
                        backoff_initial_s=0.01, backoff_max_s=0.05, max_error_rate=None)  # fmt: skip
        gen.run([ChatRequest(messages=[{"role": "user", "content": f"Hi {i}"}], max_tokens=400) for i in range(60)])
    assert emu.outcomes["bad_json"] > 0 and gen.stats["garbled"] == emu.outcomes["bad_json"]
    assert emu.output_tokens <= 1400  # was about twice the budget
    assert gen.stats["abandoned_output_tokens"] == 400 * gen.stats["garbled"]
