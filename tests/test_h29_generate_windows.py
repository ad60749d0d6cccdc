"""The generate stage a window of prompts at a time: the same documents, curated rows, shards, manifest and card as a
build in one window; the requests built and sent at once are the window; a budget stop in one window skips the
later ones at once; failures across windows tell the same; an interrupted build replays the windows it finished."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
import pytest
from test_build import QUICKSTART, prose_responder

from textbookgen import build as build_module
from textbookgen import parquet_rows
from textbookgen.build import build
from textbookgen.recipe import load_recipe

N = 30


def _sizes(monkeypatch) -> list[int]:
    """The request count of every engine run (what the generate stage built and sent at once)."""
    from textbookgen.engine import Generator

    sizes: list[int] = []
    run = Generator.run

    def spy(self, requests):
        sizes.append(len(requests))
        return run(self, requests)

    monkeypatch.setattr(Generator, "run", spy)
    return sizes


def _windowed(monkeypatch, window: int) -> None:
    # raising=False: on a tree without windows the build runs in one go, and the sizes say so
    monkeypatch.setattr(build_module, "GENERATE_WINDOW", window, raising=False)
    monkeypatch.setattr(parquet_rows, "ROW_GROUP_ROWS", 7)  # row groups across windows


def _published(out: Path) -> dict:
    """manifest.json less what differs between two runs of one build (when, how long, where)."""
    m = json.loads((out / "manifest.json").read_text())
    for key in ("created_at", "timings", "recipe_hash"):  # the recipe's hash covers its `output`
        m.pop(key)
    return m


def _card(out: Path) -> str:
    m = json.loads((out / "manifest.json").read_text())
    card = (out / "dataset" / "README.md").read_text().replace(m["created_at"], "WHEN").replace(m["recipe_hash"], "")
    return re.sub(r"\| [0-9.,]+ s \|", "| SECONDS |", card)  # the stages' timings


def _shards(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "dataset" / "data").glob("*.parquet"))}


def _over(out: Path, url: str, **more) -> dict:
    return {"output": str(out), "samples": N, "provider.base_url": url, **more}


def test_a_build_in_three_windows_writes_what_one_window_does(tmp_path, monkeypatch):
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    sizes = _sizes(monkeypatch)
    one, three = tmp_path / "one", tmp_path / "three"
    with Emulator(EmulatorConfig(latency_median_s=0.002, responder=prose_responder)) as emu:
        _windowed(monkeypatch, 1000)
        a = build(load_recipe(QUICKSTART, _over(one, emu.openai_base_url)), progress=False)
        assert sizes == [N]
        _windowed(monkeypatch, 11)
        b = build(load_recipe(QUICKSTART, _over(three, emu.openai_base_url)), progress=False)
        assert sizes == [N, 11, 11, 8]  # a window's requests at once, never the whole build's
        assert emu.billed == 2 * N
    assert a.stages == b.stages and b.stages["generate"] == "ran"
    for name in ("documents.parquet", "curated.parquet"):  # their hashes key the next stages
        assert (one / name).read_bytes() == (three / name).read_bytes(), name
        assert pq.ParquetFile(three / name).metadata.num_row_groups == -(-pl.read_parquet(three / name).height // 7)
    docs = pl.read_parquet(three / "documents.parquet")
    assert docs.height == N and docs["id"].n_unique() == N
    assert _shards(one) == _shards(three) and _shards(one)
    pub_a, pub_b = _published(one), _published(three)
    assert pub_a["coverage"] == pub_b["coverage"]
    assert pub_b["coverage"]["n_samples"] == N and pub_b["counts"]["curated"] == pl.read_parquet(
        three / "curated.parquet").height
    assert {k: v for k, v in pub_a.items() if k != "stages"} == {k: v for k, v in pub_b.items() if k != "stages"}
    assert _card(one) == _card(three)


def test_a_rerun_of_a_windowed_build_skips_every_stage(tmp_path, monkeypatch):
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    sizes = _sizes(monkeypatch)
    _windowed(monkeypatch, 11)
    with Emulator(EmulatorConfig(latency_median_s=0.002, responder=prose_responder)) as emu:
        over = _over(tmp_path / "o", emu.openai_base_url)
        build(load_recipe(QUICKSTART, over), progress=False)
        again = build(load_recipe(QUICKSTART, over), progress=False)
        assert emu.billed == N
    assert sizes == [11, 11, 8]
    assert all(again.stages[s] == "skipped" for s in ("taxonomy", "prompts", "generate", "curate", "dataset"))


def _journal_keys(path: Path) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]


def test_a_budget_stop_in_the_second_window_skips_the_later_ones_at_once(tmp_path, monkeypatch):
    """The budget stops the 2nd window: the 3rd is skipped without a request or a pending row, every skip is counted
    once, and a rerun with a larger budget sends exactly the skipped requests."""
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    sizes = _sizes(monkeypatch)
    _windowed(monkeypatch, 10)
    out = tmp_path / "o"
    budget = {"sampling.max_tokens": 512, "limits.concurrency": 1, "curation.filters.enabled": False,
              "budget.max_cost_usd": None, "budget.max_output_tokens": 5_000}  # fmt: skip
    with Emulator(EmulatorConfig(latency_median_s=0.002, responder=prose_responder)) as emu:
        res = build(load_recipe(QUICKSTART, _over(out, emu.openai_base_url, **budget)), progress=False)
        sent = emu.billed
        counts = res.manifest["counts"]
        assert sizes == [10, 10, 10] and res.unfinished == "budget"
        answered = counts["ok"] + counts["truncated"]
        assert counts["requests"] == N and answered == sent and counts["failed"] == 0
        assert 10 < sent < 20 and counts["skipped_budget"] == N - sent  # the 2nd window stopped, the 3rd never ran
        assert _journal_keys(out / "journal.sqlite") <= 20  # the 3rd window's requests were not even registered
        assert res.manifest["incomplete"]["not_sent"] == N - sent
        assert f"{N - sent} were not sent: budget.max_output_tokens" in res.manifest["incomplete"]["why"]
        assert pl.read_parquet(out / "documents.parquet").height == sent
        budget["budget.max_output_tokens"] = 50_000
        more = build(load_recipe(QUICKSTART, _over(out, emu.openai_base_url, **budget)), progress=False)
        assert emu.billed == N and emu.duplicates == 0  # the skipped ones, once each; the answered replayed free
    assert more.unfinished is None and more.manifest["counts"]["skipped_budget"] == 0


def _why(tmp_path: Path, monkeypatch, window: int) -> str:
    """The incomplete entry's why of a build in windows of `window`, each on a server of its own (a fault is drawn
    per request and attempt: a second build on one server would meet other faults)."""
    from textbookgen.testing.emulator import Emulator, EmulatorConfig, Fault

    _windowed(monkeypatch, window)
    faults = [Fault("400", rate=0.15), Fault("500", rate=0.2)]
    with Emulator(EmulatorConfig(latency_median_s=0.002, responder=prose_responder, faults=faults)) as emu:
        over = _over(tmp_path / f"w{window}", emu.openai_base_url,
                     **{"provider.max_attempts": 1, "curation.filters.enabled": False})
        res = build(load_recipe(QUICKSTART, over), progress=False)
    assert res.unfinished == "failed"
    return res.manifest["incomplete"]["why"]


def test_failures_of_several_classes_over_windows_tell_what_one_window_does(tmp_path, monkeypatch):
    sizes = _sizes(monkeypatch)
    whole = _why(tmp_path, monkeypatch, 1000)
    windowed = _why(tmp_path, monkeypatch, 7)
    assert sizes == [N, 7, 7, 7, 7, 2]
    assert windowed == whole
    assert "bad_request" in whole and "server_error" in whole and "a rerun re-sends the others" in whole


def interrupting_window_2() -> Callable[..., Any]:
    """`Generator.run` raising KeyboardInterrupt at its second call: Ctrl-C in a build's second window."""
    from textbookgen.engine import Generator

    run, calls = Generator.run, []

    def interrupted(self, requests):
        calls.append(len(requests))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return run(self, requests)

    return interrupted


def test_a_build_interrupted_in_its_second_window_replays_the_first_free(tmp_path, monkeypatch):
    from textbookgen.engine import Generator
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    _windowed(monkeypatch, 11)
    run, interrupted = Generator.run, interrupting_window_2()

    out = tmp_path / "o"
    with Emulator(EmulatorConfig(latency_median_s=0.002, responder=prose_responder)) as emu:
        over = _over(out, emu.openai_base_url, **{"curation.filters.enabled": False})
        monkeypatch.setattr(Generator, "run", interrupted)
        with pytest.raises(KeyboardInterrupt):
            build(load_recipe(QUICKSTART, over), progress=False)
        assert emu.billed == 11
        assert not (out / "documents.parquet").exists() and not (out / ".documents.parquet.tmp").exists()
        monkeypatch.setattr(Generator, "run", run)
        res = build(load_recipe(QUICKSTART, over), progress=False)
        assert emu.billed == N and emu.duplicates == 0  # the first window's answers replayed, not paid again
    assert res.manifest["counts"]["ok"] == N and res.manifest["counts"]["documents"] == N


def test_a_batch_build_submits_every_job_side_by_side(tmp_path, monkeypatch):
    """Through the batch API the build sends in one run of the engine (`run_windows`: not a run per window, whose jobs
    would all have to end before the next window's go out), so its jobs run side by side as the provider's room
    allows (review r29); the windows' runs then replay the answers from the journal (h43)."""
    from textbookgen.batch import BatchRunner
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    sizes = _sizes(monkeypatch)
    _windowed(monkeypatch, 1)
    submit, running = BatchRunner._submit_once, []

    async def spy(self, lines, tag):
        running.append(len(self.running))  # the batches running as this one goes out
        return await submit(self, lines, tag)

    monkeypatch.setattr(BatchRunner, "_submit_once", spy)
    with Emulator(EmulatorConfig(batch_latency_s=0.2, responder=prose_responder)) as emu:
        over = {"output": str(tmp_path / "b"), "samples": 20, "provider.name": "anthropic",
                "provider.base_url": emu.anthropic_base_url, "model": "claude-haiku-4-5", "provider.batch": True,
                "provider.batch_size": 4, "provider.batch_poll_s": 0.05,
                "curation.filters.enabled": False}  # fmt: skip
        res = build(load_recipe(QUICKSTART, over), progress=False)
        assert emu.stats()["batch_requests"] == 20 and emu.duplicates == 0
    assert sizes == [1] * 20 and running == [0, 1, 2, 3, 4]
    assert res.manifest["counts"]["ok"] == 20 and res.manifest["counts"]["documents"] == 20


def test_a_run_that_collects_an_interrupted_runs_batches_has_the_next_one_read_the_journals(tmp_path, monkeypatch):
    """A run that collects an interrupted --batch run's batches journals the answers to requests it was not given
    (`_record_orphans`), paid but not in its stats: the next window starts from the journals, not from its count
    (review r29: counted short by a whole window's batches)."""
    from textbookgen.batch import BatchRunner
    from textbookgen.build import BudgetedGenerator
    from textbookgen.engine import ChatRequest, Generator, spent
    from textbookgen.recipe import BudgetConfig
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    journals = {"generate": tmp_path / "journal.sqlite"}

    def ask(first: int, last: int) -> list[ChatRequest]:
        return [ChatRequest(messages=[{"role": "user", "content": f"Explain topic {i}"}], max_tokens=200)
                for i in range(first, last)]  # fmt: skip

    def gen(url: str) -> Generator:
        return Generator("openai", "gpt-4o-mini", base_url=url, api_key="sk-test", journal=journals["generate"],
                         max_cost_usd=50.0, progress=False, batch=True, batch_size=5, batch_poll_s=0.05)

    with Emulator(EmulatorConfig(batch_latency_s=0.05)) as emu:
        collect = BatchRunner._collect

        async def interrupted(self, items, *, once=False):
            raise RuntimeError("killed after submitting")  # the batches stay open in the journal

        monkeypatch.setattr(BatchRunner, "_collect", interrupted)
        with pytest.raises(RuntimeError, match="killed"):
            gen(emu.openai_base_url).run(ask(10, 20))  # a killed run's 2nd window: submitted, not collected
        monkeypatch.setattr(BatchRunner, "_collect", collect)
        rerun = gen(emu.openai_base_url)
        budgeted = BudgetedGenerator(rerun, BudgetConfig(max_cost_usd=50.0), journals)
        budgeted.run(ask(0, 10))  # also collects the other window's open batches
        budgeted.run(ask(10, 25))  # replays their answers and sends 5 more
    spends = [build_module.journal_spend(p) for p in journals.values()]
    usd, out = sum(s.usd for s in spends), sum(s.output_tokens for s in spends)
    counted = spent(rerun.stats)  # what the engine holds against the budget: this run's, and beyond it
    assert out > 0 and rerun.stats["replayed"] == 10
    assert counted.output_tokens + rerun._beyond.output_tokens == out
    assert counted.usd + rerun._beyond.usd == pytest.approx(usd, rel=1e-9)


def test_the_spend_is_read_from_the_journals_once_then_counted_window_by_window(tmp_path, monkeypatch):
    """Before the first window the journals say what the build spent (a scan of every row: minutes at 20M rows);
    each later window starts from what the engine counted at the end of the one before, which is what the journals
    say then: replayed answers, empty answers paid for and sent again, and abandoned attempts included."""
    from textbookgen.build import BudgetedGenerator
    from textbookgen.engine import ChatRequest, Generator
    from textbookgen.recipe import BudgetConfig
    from textbookgen.testing.emulator import Emulator, EmulatorConfig, Fault

    journals = {"taxonomy": tmp_path / "grow.sqlite", "generate": tmp_path / "journal.sqlite"}
    journal_spend, reads = build_module.journal_spend, []

    def counted_read(path, prices=None):
        reads.append(path)
        return journal_spend(path, prices)

    def ask(first: int, last: int) -> list[ChatRequest]:
        return [ChatRequest(messages=[{"role": "user", "content": f"Explain topic {i}"}], max_tokens=200)
                for i in range(first, last)]  # fmt: skip

    monkeypatch.setattr(build_module, "journal_spend", counted_read)
    config = EmulatorConfig(latency_median_s=0.002, faults=[Fault("empty", rate=0.3), Fault("timeout", first=1, match="topic 3")])
    with Emulator(config) as emu:
        gen = Generator("openai", "gpt-4o-mini", base_url=emu.openai_base_url, api_key="sk-test",
                        journal=journals["generate"], max_cost_usd=50.0, max_attempts=2, progress=False,
                        timeout_s=0.2, backoff_initial_s=0.01, backoff_max_s=0.02, max_error_rate=None)
        budgeted = BudgetedGenerator(gen, BudgetConfig(max_cost_usd=50.0), journals)
        for first, last in ((0, 10), (5, 15), (0, 20)):  # overlapping windows: answers replayed, empty ones re-sent
            budgeted.run(ask(first, last))
            usd, out = (sum(s) for s in zip(*(journal_spend(p, gen.prices) for p in journals.values()), strict=True))
            assert out > 0 and budgeted.counted.output_tokens == out
            assert budgeted.counted.usd == pytest.approx(usd, rel=1e-9)
        assert gen.stats["replayed"] > 0 and gen.stats["prior_abandoned_usd"] > 0
    assert reads == list(journals.values())  # once each, before the first window


def test_a_live_window_whose_own_batch_expired_still_reads_orphans_from_the_journals(tmp_path, monkeypatch):
    """(review r32) A live window adopts every open batch of an interrupted --batch run: the batch holding its own requests
    expired unanswered (they go live: `collected` stays 0) while another window's batch ended and its answers
    were journaled as orphans (`_record_orphans`), paid. The next window must start from a spend that has them."""
    from textbookgen.batch import BatchRunner
    from textbookgen.build import BudgetedGenerator
    from textbookgen.engine import ChatRequest, Generator
    from textbookgen.recipe import BudgetConfig
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    journals = {"generate": tmp_path / "journal.sqlite"}

    def ask(first: int, last: int) -> list[ChatRequest]:
        return [ChatRequest(messages=[{"role": "user", "content": f"Explain topic {i}"}], max_tokens=200)
                for i in range(first, last)]  # fmt: skip

    def gen(url: str, batch: bool) -> Generator:
        return Generator("openai", "gpt-4o-mini", base_url=url, api_key="sk-test", journal=journals["generate"],
                         max_cost_usd=50.0, progress=False, batch=batch, batch_size=5, batch_poll_s=0.05)

    with Emulator(EmulatorConfig(batch_latency_s=0.05, batch_outcomes=["expire:0"])) as emu:
        collect = BatchRunner._collect

        async def interrupted(self, items, *, once=False):
            raise RuntimeError("killed after submitting")  # the batches stay open in the journal

        monkeypatch.setattr(BatchRunner, "_collect", interrupted)
        for first in (0, 10):  # 1st batch (window 1's) expires with nothing answered, 2nd (window 2's) completes
            with pytest.raises(RuntimeError, match="killed"):
                gen(emu.openai_base_url, batch=True).run(ask(first, first + 5))
        monkeypatch.setattr(BatchRunner, "_collect", collect)
        live = gen(emu.openai_base_url, batch=False)
        budgeted = BudgetedGenerator(live, BudgetConfig(max_cost_usd=50.0), journals)
        budgeted.run(ask(0, 5))  # collects both batches: its own expired (sent live), the other's orphans kept
        assert live.stats["collected"] == 0
        budgeted.run(ask(10, 15))  # replays the orphans
        assert live.stats["replayed"] == 5
    usd, out = build_module.journal_spend(journals["generate"], live.prices)
    counted = budgeted.counted or budgeted.spent()
    assert counted.output_tokens == out
    assert counted.usd == pytest.approx(usd, rel=1e-9)
