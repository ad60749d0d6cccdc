"""The budgets under concurrency: an attempt goes out only when its worst case (max_tokens) fits beside what is
spent and the worst case of every attempt in flight; when it does not, it waits for those to settle (they mostly
answer far below max_tokens) instead of ending the run, in line: in arrival order, only the first looking for room.
Real openai/anthropic clients against the loopback emulator."""

from __future__ import annotations

import asyncio
import io

import pytest
from rich.console import Console

from textbookgen.engine import ChatRequest, Generator
from textbookgen.journal import Journal
from textbookgen.progress import RunProgress
from textbookgen.testing.emulator import Emulator, EmulatorConfig, Fault, request_key

FAST = dict(backoff_initial_s=0.01, backoff_max_s=0.05, progress=False, timeout_s=20.0)
PRICES = {"pricey": (0.0, 1000.0)}  # $0.001 an output token, prompts free: cost is output tokens / 1000
MAX_TOKENS, SHORT = 400, 100  # worst case $0.40; a short answer is a quarter of it, $0.10


def answer(body: dict) -> str:
    """SHORT tokens (4 characters each) for most prompts; a LONG prompt runs to max_tokens."""
    prompt = body["messages"][-1]["content"]
    return "word " * 10_000 if "LONG" in str(prompt) else "abc " * SHORT


def ask(prefix: str, n: int, max_tokens: int = MAX_TOKENS) -> list[ChatRequest]:
    return [ChatRequest(messages=[{"role": "user", "content": f"{prefix} {i}"}], max_tokens=max_tokens)
            for i in range(n)]


def gen_for(emu: Emulator, provider: str, tmp_path, **kw) -> Generator:
    base_url = emu.anthropic_base_url if provider == "anthropic" else emu.openai_base_url
    return Generator(provider, "pricey", base_url=base_url, api_key="sk-test", journal=tmp_path / f"{provider}.sqlite",
                     prices=PRICES, **{"concurrency": 32, **FAST, **kw})


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("budget", ["max_cost_usd", "max_output_tokens"])
def test_a_budget_is_spent_to_within_one_worst_case_whatever_the_concurrency(budget, provider, tmp_path):
    """The budget fits 14 answers at their size but only 3.5 at max_tokens. At concurrency 32 the run used to stop
    after 3 (the worst case of those in flight filled it); it now waits for them to settle and sends more."""
    limit = {"max_cost_usd": 1.4, "max_output_tokens": 1400}[budget]
    with Emulator(EmulatorConfig(latency_median_s=0.02, latency_sigma=0.0, responder=answer)) as emu:
        gen = gen_for(emu, provider, tmp_path, **{budget: limit})
        out = gen.run(ask("Hi", 60))
        billed = emu.output_tokens
    sent = [r for r in out if r.status != "skipped_budget"]
    assert all(r.status == "ok" and r.output_tokens == SHORT for r in sent)
    assert billed == SHORT * len(sent) == gen.stats["output_tokens"]
    assert 1400 - MAX_TOKENS <= billed <= 1400  # within one request's worst case of the budget, never past it
    assert len(sent) < 60 and gen.stats["skipped_budget"] == 60 - len(sent)
    with Journal(gen.journal_path) as j:
        assert j.summary()["output_tokens"] == billed
    note = next(r.error for r in out if r.status == "skipped_budget")  # what the run stopped on, as it stood
    if budget == "max_cost_usd":
        assert note == f"max_cost_usd=$1.4000 reached (spent ${billed / 1000:.4f}; $0.4000 more would not fit)"
    else:
        assert note == f"max_output_tokens=1,400 reached (used {billed:,}; 400 more would not fit)"


def test_the_budget_holds_even_if_every_answer_in_flight_runs_to_max_tokens(tmp_path):
    """At each request the provider gets, what it billed plus max_tokens for every request it is working on stays
    within the budget. Short answers (all of their max_tokens) first teach the engine that answers are small; then
    answers run to a 16 times larger max_tokens: counting those in flight at the average let them pass it."""
    started: dict[str, int] = {}  # request hash: max_tokens
    worst: list[int] = []

    def watched(body: dict) -> str:
        started[request_key("openai", body)] = body.get("max_completion_tokens") or body["max_tokens"]
        in_flight = sum(n for key, n in started.items() if key not in emu.billed_keys)
        worst.append(emu.output_tokens + in_flight)
        return answer(body)

    with Emulator(EmulatorConfig(latency_median_s=0.02, latency_sigma=0.0, responder=watched)) as emu:
        gen = gen_for(emu, "openai", tmp_path, max_cost_usd=20.0)
        out = gen.run(ask("Hi", 80, max_tokens=SHORT) + ask("LONG", 60, max_tokens=16 * SHORT))
        billed = emu.output_tokens
    assert max(worst) <= 20_000 and len(worst) == emu.billed
    assert [r.status for r in out[:80]] == ["ok"] * 80
    assert 20_000 - 16 * SHORT <= billed <= 20_000
    assert sum(r.cost_usd for r in out) == pytest.approx(billed / 1000)


def test_the_progress_line_shows_the_requests_held_for_the_budget():
    s = {"done": 3, "failed": 0, "cost_usd": 0.3, "input_tokens": 30, "output_tokens": 300, "sent": 5,
         "rate_limited": 0, "in_flight": 2, "concurrency": 32, "rpm_limit": None, "replayed": 0, "replayed_usd": 0.0,
         "replayed_output_tokens": 0, "abandoned_usd": 0.0, "abandoned_output_tokens": 0, "max_cost_usd": 1.4,
         "max_output_tokens": None, "budget_held": 30}
    display = RunProgress(60, lambda: s, console=Console(file=io.StringIO()))
    display._draw()
    assert display._progress.tasks[0].fields["info"].endswith("in-flight 2/32  held for budget 30")
    s["budget_held"] = 0
    display._draw()
    assert display._progress.tasks[0].fields["info"].endswith("in-flight 2/32")


def test_a_release_wakes_one_attempt_in_line_not_all_of_them(monkeypatch, tmp_path):
    """At concurrency 64 the budget holds a few attempts' worst case and the rest (over a hundred) wait for room. Each
    answer used to wake every one of them to re-check the budgets (a thundering herd: thousands of checks); now it
    wakes the first in line alone, so the budgets are checked once per attempt and once per answer at most."""
    checks = 0
    over_budget = Generator._over_budget

    def counted(self, more):
        nonlocal checks
        checks += 1
        return over_budget(self, more)

    monkeypatch.setattr(Generator, "_over_budget", counted)
    with Emulator(EmulatorConfig(latency_median_s=0.005, latency_sigma=0.5, responder=answer)) as emu:
        gen = gen_for(emu, "openai", tmp_path, concurrency=64, max_output_tokens=6000)
        out = gen.run(ask("Hi", 200))
        billed = emu.output_tokens
    assert 6000 - MAX_TOKENS <= billed <= 6000 and gen.stats["skipped_budget"] > 0
    assert checks <= len(out) + gen.stats["sent"] + 1


def test_a_big_request_in_line_is_not_passed_over_by_small_ones(tmp_path):
    """A request whose worst case is most of the budget waits behind five small ones for room; those after it wait
    behind it, in line, instead of taking every bit of room that opens (it used to be skipped for the budget at the
    end while the small ones after it were sent). What is sent is a prefix of the requests."""
    requests = ask("Hi", 5) + ask("Big", 1, max_tokens=3000) + ask("Then", 40)
    with Emulator(EmulatorConfig(latency_median_s=0.01, latency_sigma=0.5, responder=answer)) as emu:
        gen = gen_for(emu, "openai", tmp_path, max_output_tokens=4000)
        out = gen.run(requests)
        billed = emu.output_tokens
    statuses = [r.status for r in out]
    sent = statuses.index("skipped_budget")
    assert statuses == ["ok"] * sent + ["skipped_budget"] * (len(out) - sent) and sent > 6
    assert 4000 - MAX_TOKENS <= billed == SHORT * sent <= 4000


def test_a_run_cancelled_with_attempts_in_line_for_the_budget_ends_and_counts_those_on_the_wire(tmp_path):
    """Ctrl-C while the budget holds two attempts on the wire and 38 wait in line: the run ends (no waiter is left
    stranded by a turn handed to a cancelled one), and the two cut off count at their worst case."""
    with Emulator(EmulatorConfig(latency_median_s=60.0, latency_sigma=0.0, responder=answer)) as emu:
        gen = gen_for(emu, "openai", tmp_path, concurrency=64, max_output_tokens=2 * MAX_TOKENS + SHORT)

        async def cut_off() -> int:
            run = asyncio.ensure_future(gen.arun(ask("Hi", 40)))
            while emu.in_flight < 2 or gen._live_stats()["budget_held"] < 38:
                await asyncio.sleep(0.01)
            held = gen._live_stats()["budget_held"]
            run.cancel()  # what Ctrl-C does to a run
            done, _ = await asyncio.wait((run,), timeout=30)
            assert done and run.cancelled()
            return held

        assert asyncio.run(cut_off()) == 38
    assert gen.stats["interrupted"] == 2 and gen.stats["abandoned_output_tokens"] == 2 * MAX_TOKENS
    with Journal(gen.journal_path) as j:
        assert j.summary()["by_status"]["pending"] == 40


@pytest.mark.parametrize("budget", ["max_cost_usd", "max_output_tokens"])
def test_a_rerun_counts_what_the_failed_answers_it_sends_again_cost_before(budget, tmp_path):
    """Answers that were billed and failed (only reasoning, cut at max_tokens: 400 tokens, $0.40 each) are sent again
    by the next run. That run used to count none of what they cost before, so a rerun under the same budget paid
    for them a second time past it; now it starts from their spend, and with no room left sends nothing."""
    limit = {"max_cost_usd": 2.2, "max_output_tokens": 2200}[budget]
    config = EmulatorConfig(latency_median_s=0.001, responder=answer, faults=[Fault("reasoning", first=1)])
    with Emulator(config) as emu:
        first = gen_for(emu, "openai", tmp_path, max_error_rate=None).run(ask("Hi", 5))
        assert [r.error_class for r in first] == ["empty_answer_reasoning"] * 5 and emu.output_tokens == 5 * MAX_TOKENS
        gen = gen_for(emu, "openai", tmp_path, **{budget: limit})
        again = gen.run(ask("Hi", 5))
        assert emu.output_tokens == 5 * MAX_TOKENS  # $2.00 of the $2.20 spent: no room for one more worst case
    assert [r.status for r in again] == ["skipped_budget"] * 5
    assert gen.stats["cost_usd"] == pytest.approx(2.0) and gen.stats["output_tokens"] == 5 * MAX_TOKENS
    if budget == "max_cost_usd":
        assert again[0].error == ("max_cost_usd=$2.2000 reached (spent $2.0000, $2.0000 of it by earlier runs; "
                                  "$0.4000 more would not fit)")
    with Journal(gen.journal_path) as j:
        assert j.summary()["cost_usd"] == pytest.approx(2.0)
