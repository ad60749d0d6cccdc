"""After a batch build's send run (`Generator.run_windows`), its document windows only read the journal (brief h54).

The send run leaves each request answered, failed (after its rounds) or pending (the budget stopped it); a window
then gives those back as they are (`Generator.replay_only`): no provider call, no batch, no budget read or warning
per window, so the journal reads and the batches do not grow with the number of windows.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time

import pytest
from test_batch import batch_rows
from test_build import QUICKSTART, prose_responder
from test_h43_batch_windows import gen_for, reqs, windows

from textbookgen import build as build_module
from textbookgen.batch import BatchRunner
from textbookgen.build import BuildError, build
from textbookgen.journal import Journal
from textbookgen.recipe import load_recipe
from textbookgen.testing.emulator import Emulator, EmulatorConfig, Fault


def batch_recipe(emu: Emulator, tmp_path, **over):
    return load_recipe(QUICKSTART, {
        "output": str(tmp_path / "b"), "samples": 20, "provider.name": "anthropic",
        "provider.base_url": emu.anthropic_base_url, "model": "claude-haiku-4-5", "provider.batch": True,
        "provider.batch_poll_s": 0.05, "curation.filters.enabled": False, **over})


def test_requests_the_send_run_left_failed_are_not_sent_again_by_the_document_windows(tmp_path, monkeypatch):
    """Every request fails transiently: the send run gives each its 3 rounds (3 batches of 20); the 4 document
    windows give them back failed, where a batch run each would send them again (15 batches: r47's F1)."""
    monkeypatch.setattr(build_module, "GENERATE_WINDOW", 5)
    config = EmulatorConfig(batch_latency_s=0.05, responder=prose_responder, faults=[Fault("500", rate=1.0)])
    with Emulator(config) as emu:
        with pytest.raises(BuildError, match="no request gave a document"):
            build(batch_recipe(emu, tmp_path, **{"provider.batch_size": 20}), progress=False)
        assert emu.stats()["batches_created"] == 3


def test_a_budget_stop_of_the_send_run_is_warned_once_and_the_windows_skip_the_rest(tmp_path, monkeypatch, caplog):
    """The budget stops the send run: the requests it left pending come back skipped_budget with its note, one
    "budget stop" warning for the build, not one per window, and no batch beyond the send run's."""
    monkeypatch.setattr(build_module, "GENERATE_WINDOW", 5)
    send, sent = build_module.Build._send_batches, []

    def spy(self, gen, prompts, size):
        note = send(self, gen, prompts, size)
        sent.append(emu.stats()["batches_created"])
        return note

    monkeypatch.setattr(build_module.Build, "_send_batches", spy)
    with Emulator(EmulatorConfig(batch_latency_s=0.05, responder=prose_responder)) as emu:
        recipe = batch_recipe(emu, tmp_path, **{"provider.batch_size": 3, "sampling.max_tokens": 1000,
                                                "budget.max_output_tokens": 6000})
        with caplog.at_level(logging.WARNING, logger="textbookgen"):
            res = build(recipe, progress=False)
        assert sent == [emu.stats()["batches_created"]]
    counts = res.manifest["counts"]
    assert counts["skipped_budget"] == 20 - counts["documents"] > 0
    stops = [r for r in caplog.records if r.getMessage().startswith("budget stop")]
    assert len(stops) == 1


def summaries_of_a_budgeted_batch_build(tmp_path, monkeypatch, window: int) -> int:
    """How many journal summaries (a pass over every row) a budgeted batch build of 20 prompts reads."""
    monkeypatch.setattr(build_module, "GENERATE_WINDOW", window)
    summary, calls = build_module.journal_summary, []

    def spy(path, prices=None):
        calls.append(path.name)
        return summary(path, prices)

    monkeypatch.setattr(build_module, "journal_summary", spy)
    with Emulator(EmulatorConfig(batch_latency_s=0.05, responder=prose_responder)) as emu:
        build(batch_recipe(emu, tmp_path / str(window), **{"provider.batch_size": 4, "budget.max_cost_usd": 50.0}),
              progress=False)
    return len(calls)


def test_a_budgeted_batch_build_reads_the_journals_whole_a_number_of_times_not_growing_with_its_windows(
        tmp_path, monkeypatch):
    """r47's F2: each window read every journal whole for its budget (14 reads at 4 windows, 6 at one)."""
    assert summaries_of_a_budgeted_batch_build(tmp_path, monkeypatch, 5) == \
        summaries_of_a_budgeted_batch_build(tmp_path, monkeypatch, 20)


def test_a_window_reads_the_open_batches_keys_only_where_an_answer_could_be_reused(tmp_path, monkeypatch):
    """r47's F3: each window's replay read every open batch's keys (every request in flight) though no answer
    under another max_tokens was there to reuse; the send run's reads of them do not grow with its windows."""
    reads = []
    open_batches = Journal.open_batches

    def spy(self, provider, model):
        rows = open_batches(self, provider, model)
        reads.append(len(rows))
        return rows

    monkeypatch.setattr(Journal, "open_batches", spy)
    counts = []
    with Emulator(EmulatorConfig(batch_latency_s=0.05)) as emu:
        for size, name in ((16, "one"), (2, "eight")):
            reads.clear()
            gen_for(emu, tmp_path / name).run_windows(windows(16, size, [], name), total=16)
            counts.append(len(reads))
        assert emu.billed == 32 and emu.duplicates == 0
    assert counts[0] == counts[1]


def test_a_batch_cancelled_at_the_provider_is_not_sent_again_by_the_document_windows(tmp_path, monkeypatch):
    """A batch cancelled in the provider's console (to stop its spending) while the build waited: its requests fail
    for this build (a rerun sends them); the document windows give them back failed, not in new batches."""
    import anthropic

    monkeypatch.setattr(build_module, "GENERATE_WINDOW", 5)
    journal = tmp_path / "b" / "journal.sqlite"

    def submitted() -> list[tuple]:
        try:
            return batch_rows(journal) if journal.exists() else []
        except sqlite3.OperationalError:  # the build is making the journal
            return []

    def cancel_the_first_batch() -> None:
        while len(rows := submitted()) < 2 or any(row[1] is None for row in rows):
            time.sleep(0.01)
        client = anthropic.Anthropic(base_url=emu.anthropic_base_url, api_key="sk-test-key")
        client.messages.batches.cancel(rows[0][1])

    with Emulator(EmulatorConfig(batch_latency_s=1.0, responder=prose_responder)) as emu:
        canceller = threading.Thread(target=cancel_the_first_batch, daemon=True)
        canceller.start()
        res = build(batch_recipe(emu, tmp_path, **{"provider.batch_size": 10}), progress=False)
        canceller.join(5)
        assert emu.stats()["batches_created"] == 2
    assert res.manifest["counts"]["failed"] == 10 and res.manifest["counts"]["documents"] == 10


def test_another_runs_open_batch_is_collected_but_its_failures_are_not_sent_again(tmp_path, monkeypatch):
    """r47's F4: a run over windows adopts an earlier run's open batch of the same journal and model; that batch's
    requests no window asks for (another config's) went round again on transient failures, paid by this run. They
    are now collected only: their rows stay pending, for a run that asks for them."""
    collect = BatchRunner._collect

    async def killed(self, items, *, once=False):
        raise RuntimeError("killed after submitting")

    faults = [Fault("500", first=1, match="Other")]  # the other run's requests fail once: transient
    with Emulator(EmulatorConfig(batch_latency_s=0.05, faults=faults)) as emu:
        monkeypatch.setattr(BatchRunner, "_collect", killed)
        with pytest.raises(RuntimeError):
            gen_for(emu, tmp_path).run_windows(iter([reqs(0, 4, "Other seed")]), total=4)
        monkeypatch.setattr(BatchRunner, "_collect", collect)
        gen = gen_for(emu, tmp_path)
        gen.run_windows(windows(8, 4, []), total=8)
        assert gen.stats["retries"] == 0 and emu.stats()["batches_created"] == 3
    with sqlite3.connect(tmp_path / "j.sqlite") as db:
        statuses = dict(db.execute("SELECT status, COUNT(*) FROM requests GROUP BY status").fetchall())
    assert statuses == {"ok": 8, "pending": 4}
