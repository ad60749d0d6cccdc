"""Budgets in batch mode hold as live ones do: a batch goes out only when its worst case (every answer at max_tokens,
at the batch price), with that of every batch still running, fits beside what is spent. When the next batch does not
fit, the requests that do go in a smaller one, or the run waits for running batches to end (their real cost frees
room); the budget is reached only when none is running and the next request's worst case does not fit. Real
openai/anthropic clients against the emulator's batch APIs."""

from __future__ import annotations

import pytest

from textbookgen.engine import ChatRequest, Generator
from textbookgen.journal import Journal
from textbookgen.testing.emulator import ANTHROPIC, OPENAI, Emulator, EmulatorConfig

PRICES = {"pricey": (0.0, 2000.0)}  # at the batch price (half) $0.001 an output token, prompts free
MAX_TOKENS, SHORT = 400, 100  # worst case $0.40; a short answer is a quarter of it
LIMITS = {"max_cost_usd": 1.4, "max_output_tokens": 1400}  # 14 short answers, 3.5 at max_tokens
PROVIDERS = ["openai", "anthropic"]


def short(body: dict) -> str:
    return "abc " * SHORT


def at_max_tokens(body: dict) -> str:
    return "word " * 10_000  # cut at max_tokens


class WatchedEmulator(Emulator):
    """Records, at each batch created, what was billed plus max_tokens for every request not answered yet in the
    unfinished batches (this one included): the most the run could be billed if all of them ran to max_tokens."""

    def __init__(self, config) -> None:
        super().__init__(config)
        self.worst: list[int] = []

    def _new_job(self, provider, prefix, requests, **kw):
        job = super()._new_job(provider, prefix, requests, **kw)
        unfinished = [j for p in (OPENAI, ANTHROPIC) for j in self._jobs[p].values() if j.ended is None]
        waiting = sum(body.get("max_completion_tokens") or body["max_tokens"]
                      for j in unfinished for _, body in j.requests[len(j.results):])
        self.worst.append(self.output_tokens + waiting)
        return job


def run(emu: Emulator, provider: str, tmp_path, n: int, **kw):
    base = emu.anthropic_base_url if provider == "anthropic" else emu.openai_base_url
    gen = Generator(provider, "pricey", base_url=base, api_key="sk-test", journal=tmp_path / f"{provider}.sqlite",
                    prices=PRICES, batch=True, batch_size=12, batch_poll_s=0.02, progress=False, timeout_s=20.0, **kw)
    requests = [ChatRequest(messages=[{"role": "user", "content": f"Hi {i}"}], max_tokens=MAX_TOKENS)
                for i in range(n)]
    return gen, gen.run(requests)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("budget", list(LIMITS))
def test_a_batch_budget_is_spent_to_within_one_worst_case(budget, provider, tmp_path):
    """The first batch takes the 3 requests whose worst case fits, and the run waits for it to end instead of
    stopping (it used to skip everything after those 3: $0.30 of $1.40 spent); never past the budget."""
    with WatchedEmulator(EmulatorConfig(batch_latency_s=0.02, responder=short)) as emu:
        gen, out = run(emu, provider, tmp_path, 60, **{budget: LIMITS[budget]})
        billed = emu.output_tokens
    sent = [r for r in out if r.status != "skipped_budget"]
    assert all(r.status == "ok" and r.output_tokens == SHORT for r in sent)
    assert billed == SHORT * len(sent) == gen.stats["output_tokens"]
    assert 1400 - MAX_TOKENS <= billed <= 1400 and max(emu.worst) <= 1400
    assert emu.stats()["batches_created"] > 1 and emu.duplicates == 0
    assert gen.stats["skipped_budget"] == 60 - len(sent) > 0
    with Journal(gen.journal_path) as j:
        summary = j.summary()
    assert summary["output_tokens"] == billed and summary["by_status"]["pending"] == 60 - len(sent)
    note = next(r.error for r in out if r.status == "skipped_budget")
    if budget == "max_cost_usd":
        assert note == f"max_cost_usd=$1.4000 reached (spent ${billed / 1000:.4f}; $0.4000 more would not fit)"
    else:
        assert note == f"max_output_tokens=1,400 reached (used {billed:,}; 400 more would not fit)"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_batch_budget_holds_when_every_answer_runs_to_max_tokens(provider, tmp_path):
    """Every answer at max_tokens, and the first batch expires with one of its 3 requests answered: the 2 that
    expired cost nothing, so 2 more requests fit once it has ended (the run used to stop at the first batch that
    did not fit whole, and skip even the expired ones: $0.40 spent)."""
    config = EmulatorConfig(batch_latency_s=0.02, responder=at_max_tokens, batch_outcomes=["expire:0.34"])
    with WatchedEmulator(config) as emu:
        gen, out = run(emu, provider, tmp_path, 20, max_cost_usd=1.4)
        billed = emu.output_tokens
    assert emu.worst[0] == 3 * MAX_TOKENS and max(emu.worst) <= 1400
    assert billed == 3 * MAX_TOKENS == gen.stats["output_tokens"] and emu.duplicates == 0
    assert [r.status for r in out].count("truncated") == 3 and gen.stats["skipped_budget"] == 17
    assert gen.stats["cost_usd"] == pytest.approx(1.2)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_batch_results_correct_the_prompt_size_estimate(provider, tmp_path):
    """Priced prompts in many short content blocks: the estimate counts their JSON (1,557 tokens) where the emulator
    counts their text (106), so at the raw estimate each worst case is $0.78 of a $1.00 budget, and the run sent
    5 of 8 requests one by one ($0.27 spent). The batches' reported usage corrects the estimate, as live answers do:
    all 8 fit, within the budget."""
    prices = {"pricey": (1000.0, 0.0)}  # at the batch price $0.0005 a prompt token, answers free
    with Emulator(EmulatorConfig(batch_latency_s=0.02)) as emu:
        base = emu.anthropic_base_url if provider == "anthropic" else emu.openai_base_url
        gen = Generator(provider, "pricey", base_url=base, api_key="sk-test", journal=tmp_path / "j.sqlite",
                        prices=prices, batch=True, batch_size=12, batch_poll_s=0.02, progress=False, timeout_s=20.0,
                        max_cost_usd=1.0)
        blocks = [{"type": "text", "text": "a"}] * 199
        requests = [ChatRequest(messages=[{"role": "user", "content": [{"type": "text", "text": f"{i}"}, *blocks]}],
                                max_tokens=16) for i in range(8)]
        out = gen.run(requests)
        billed = emu.input_tokens
    assert gen.stats["skipped_budget"] == 0 and all(r.status in ("ok", "truncated") for r in out)
    assert {r.input_tokens for r in out} == {106} and gen._in_ratio < 0.8
    assert billed == 8 * 106 and gen.stats["cost_usd"] == pytest.approx(8 * 106 * 0.0005)
