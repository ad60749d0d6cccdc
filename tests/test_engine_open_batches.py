"""Batches an interrupted --batch run left running at the provider, met by a later live or batch run."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest

from textbookgen.engine import ChatRequest, Generator
from textbookgen.errors import FatalProviderError
from textbookgen.journal import Journal
from textbookgen.pricing import estimate_cost
from textbookgen.testing.emulator import Emulator, EmulatorConfig

PROVIDERS = [("openai", "gpt-4o-mini"), ("anthropic", "claude-haiku-4-5")]
LATENCY_S = 2.0  # long enough for a live rerun to find the batches still running


def reqs(n: int, prefix: str = "Explain topic") -> list[ChatRequest]:
    return [ChatRequest(messages=[{"role": "user", "content": f"{prefix} {i}"}], max_tokens=64) for i in range(n)]


def gen_for(emu: Emulator, provider: str, model: str, tmp_path, **kw) -> Generator:
    base = emu.anthropic_base_url if provider == "anthropic" else emu.openai_base_url
    opts = dict(batch_size=12, batch_poll_s=0.05, progress=False, timeout_s=20.0, journal=tmp_path / "j.sqlite")
    return Generator(provider, model, base_url=base, api_key="sk-test-key", **{**opts, **kw})


def batch_statuses(path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [status for (status,) in db.execute("SELECT status FROM batches ORDER BY created_at")]


def interrupt_after_submission(gen: Generator, requests: list[ChatRequest], batches: int) -> float:
    """Ctrl-C once `batches` batches run at the provider; returns when they are due to end (time.time())."""
    async def run() -> None:
        task = asyncio.ensure_future(gen.arun(requests))
        await asyncio.sleep(0)
        while batch_statuses(gen.journal_path).count("running") < batches:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    return time.time() + LATENCY_S


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_a_live_rerun_never_pays_again_for_requests_in_running_batches(provider, model, tmp_path):
    requests = reqs(24)
    with Emulator(EmulatorConfig(latency_median_s=0.001, batch_latency_s=LATENCY_S)) as emu:
        due = interrupt_after_submission(gen_for(emu, provider, model, tmp_path, batch=True), requests, 2)
        with pytest.raises(FatalProviderError, match=r"24 of these requests are in 2 \w+ batches still running "
                                                     r".*nothing was sent: rerun with --batch"):
            gen_for(emu, provider, model, tmp_path).run(requests)
        assert emu.received == 0 and batch_statuses(tmp_path / "j.sqlite") == ["running"] * 2
        time.sleep(max(0.0, due - time.time()) + 0.05)  # the batches end at the provider
        gen = gen_for(emu, provider, model, tmp_path)
        out = gen.run(requests)  # live again: collects the ended batches, sends nothing
        assert emu.received == 0 and emu.billed == 24 and emu.duplicates == 0
    assert all(r.text for r in out) and batch_statuses(tmp_path / "j.sqlite") == ["done"] * 2
    r = out[0]  # billed, and journaled, at the batch price
    assert r.cost_usd == pytest.approx(0.5 * estimate_cost(model, r.input_tokens, r.output_tokens))
    assert gen.price_in == pytest.approx(estimate_cost(model, 1e6, 0) / 1e6)  # the live price is back


def test_cancelled_batches_leave_their_unanswered_requests_to_the_live_rerun(tmp_path):
    import openai

    requests = reqs(12)
    with Emulator(EmulatorConfig(latency_median_s=0.001, batch_latency_s=LATENCY_S)) as emu:
        interrupt_after_submission(gen_for(emu, "openai", "gpt-4o-mini", tmp_path, batch=True), requests, 1)
        client = openai.OpenAI(base_url=emu.openai_base_url, api_key="sk-test-key")
        with Journal(tmp_path / "j.sqlite") as journal:
            [batch] = journal.open_batches("openai", "gpt-4o-mini")
        client.batches.cancel(batch["batch_id"])
        out = gen_for(emu, "openai", "gpt-4o-mini", tmp_path).run(requests)
        answered_in_batch = emu.stats()["batch_requests"]
        assert emu.received == 12 - answered_in_batch and emu.billed == 12 and emu.duplicates == 0
    assert all(r.text for r in out) and batch_statuses(tmp_path / "j.sqlite") == ["done"]


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_a_batch_rerun_with_nothing_to_submit_still_collects_open_batches(provider, model, tmp_path):
    other, requests = reqs(3, "Other"), reqs(12)
    with Emulator(EmulatorConfig(latency_median_s=0.001, batch_latency_s=0.3)) as emu:
        gen_for(emu, provider, model, tmp_path, batch=True).run(other)
        interrupt_after_submission(gen_for(emu, provider, model, tmp_path, batch=True), requests, 1)
        gen_for(emu, provider, model, tmp_path, batch=True).run(other)  # all replayed, yet it waits for the batch
        assert batch_statuses(tmp_path / "j.sqlite") == ["done", "done"]
        out = gen_for(emu, provider, model, tmp_path).run(requests)  # their answers are in the journal
        assert emu.received == 0 and emu.billed == 15 and emu.duplicates == 0
    assert all(r.text for r in out)
