"""A rerun's stats and budget words describe that run and the budget given: a run the journal answers whole, a
batch run that collects an earlier run's batches, and a budget that earlier runs spent part of."""

from __future__ import annotations

import asyncio

import pytest
from test_batch import _interrupt_after_submission, batch_gen
from test_engine import PROVIDERS, gen_for, reqs

from textbookgen.engine import Spend
from textbookgen.testing.emulator import Emulator, EmulatorConfig


def test_a_run_the_journal_answers_whole_reports_its_own_stats_not_the_last_runs(tmp_path):
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        gen = gen_for(emu, "openai", "gpt-4o-mini", tmp_path)
        gen.run(reqs(4))
        assert gen.stats["sent"] == 4
        out = gen.run(reqs(2))
        fresh = gen_for(emu, "openai", "gpt-4o-mini", tmp_path)
        fresh.run(reqs(3))
        assert emu.billed == 4
    stats = gen.stats
    assert (stats["sent"], stats["replayed"], stats["total"], stats["done"]) == (0, 2, 2, 2)
    assert stats["cost_usd"] == pytest.approx(sum(r.cost_usd for r in out))
    assert (fresh.stats["sent"], fresh.stats["replayed"], fresh.stats["total"]) == (0, 3, 3)


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_a_batch_run_counts_the_answers_it_collects_from_an_earlier_runs_batches(provider, model, tmp_path):
    requests = reqs(24)
    with Emulator(EmulatorConfig(batch_latency_s=0.5)) as emu:
        asyncio.run(_interrupt_after_submission(batch_gen(emu, provider, model, tmp_path), emu, requests))
        gen = batch_gen(emu, provider, model, tmp_path)
        gen.run(requests)
        assert emu.billed == 24
    assert (gen.stats["sent"], gen.stats["collected"], gen.stats["ok"] + gen.stats["truncated"]) == (0, 24, 24)
    assert gen.stats["cost_usd"] > 0


def test_a_budget_stop_names_the_budget_given_and_what_earlier_runs_spent(tmp_path):
    """A build or `topics grow` passes what earlier runs spent (spent_before): the message states the budget the
    user gave, not the remainder this run was left."""
    prices = {"budget-model": (1000.0, 1000.0)}  # $0.001 per token
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        gen = gen_for(emu, "openai", "budget-model", tmp_path, prices=prices, max_cost_usd=0.5, concurrency=1,
                      spent_before=Spend(0.2, 200))
        out = gen.run(reqs(30))
    note = next(r.error for r in out if r.status == "skipped_budget")
    assert note.startswith("max_cost_usd=$0.5000 reached (spent $")
    assert "$0.2000 of it by earlier runs" in note
    spent = float(note.split("spent $")[1].split(",")[0])
    assert 0.2 < spent <= 0.5
