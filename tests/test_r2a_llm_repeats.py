"""A row repeated more than a window apart (the same request key in two windows of one `LLM` call) is one request
of the call, as it is within one window: paid once, and counted once in the call's stats and budget."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from textbookgen.llm import LLM
from textbookgen.testing.emulator import Emulator, EmulatorConfig, Fault

COUNTS = ("total", "done", "sent", "ok", "failed", "empty", "replayed", "reused", "skipped_budget", "input_tokens",
          "output_tokens")


class Lesson(LLM):
    def prompt(self, row):
        return f"Write a short textbook section on {row['topic']}."

    def parse(self, row, response):
        return {"i": row["i"], "words": len(response.split())}


def make(emu: Emulator, path, window: int, **kw) -> Lesson:
    return Lesson("gpt-4o-mini", base_url=emu.openai_base_url, api_key="sk-test", progress=False, max_tokens=200,
                  journal=path, max_error_rate=None, window=window, **kw)


def called(emu: Emulator, task: Lesson, rows: list[dict]) -> tuple[object, int]:
    """The table of `task` on `rows` and what the emulator billed for it."""
    billed = emu.billed
    table = task(rows)
    return table, emu.billed - billed


def test_a_row_repeated_windows_apart_is_counted_once_in_the_stats_as_in_one_window(tmp_path):
    rows = [{"topic": f"topic {i % 4}" if i % 5 else "EMPTY", "i": i} for i in range(14)]  # 5 keys, in every window
    with Emulator(EmulatorConfig(latency_median_s=0.001, faults=[Fault("empty", rate=1.0, match="EMPTY")])) as emu:
        whole = make(emu, tmp_path / "whole.sqlite", window=10_000)
        expected, paid_whole = called(emu, whole, rows)
        parts = make(emu, tmp_path / "parts.sqlite", window=3)
        table, paid_parts = called(emu, parts, rows)
    assert paid_whole == paid_parts == 5  # the empty answer is not sent again a window later either
    assert table.equals(expected) and parts.failures == whole.failures and len(parts.failures) == 3
    for key in COUNTS:
        assert parts.generator.stats[key] == whole.generator.stats[key], key
    assert parts.generator.stats["total"] == 5 and parts.generator.stats["replayed"] == 0
    assert parts.generator.stats["cost_usd"] == pytest.approx(whole.generator.stats["cost_usd"])


def test_a_rerun_in_windows_counts_each_replayed_request_once(tmp_path):
    """Everything replayed: the journal's record of each request counted once, as one window counts it."""
    rows = [{"topic": f"topic {i % 3}", "i": i} for i in range(9)]
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        make(emu, tmp_path / "j.sqlite", window=10_000)(rows)
        whole = make(emu, tmp_path / "j.sqlite", window=10_000)
        _, paid_whole = called(emu, whole, rows)
        parts = make(emu, tmp_path / "j.sqlite", window=2)
        _, paid_parts = called(emu, parts, rows)
    assert paid_whole == paid_parts == 0
    for key in COUNTS:
        assert parts.generator.stats[key] == whole.generator.stats[key], key
    assert parts.generator.stats["replayed"] == 3
    assert parts.generator.stats["cost_usd"] == pytest.approx(whole.generator.stats["cost_usd"])


@pytest.mark.parametrize("budget", ["max_output_tokens", "max_cost_usd"])
def test_repeats_windows_apart_do_not_spend_the_budget_again(budget, tmp_path):
    """A budget that holds every distinct request (what one window spends, plus one request's worst case): the
    repeats in the second window were counted again, so the third window's new rows were skipped on the budget."""
    rows = [{"topic": f"topic {i % 3 if i < 6 else i}", "i": i} for i in range(9)]  # window 2 repeats window 1
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        whole = make(emu, tmp_path / "whole.sqlite", window=10_000, concurrency=1)
        expected, _ = called(emu, whole, rows)
        stats = whole.generator.stats
        gen = whole.generator  # room for one more request's worst case (200 tokens out, a prompt under 100 tokens)
        room = stats["output_tokens"] + 200 if budget == "max_output_tokens" else \
            stats["cost_usd"] + 200 * gen.price_out + 100 * gen.price_in
        parts = make(emu, tmp_path / "parts.sqlite", window=3, concurrency=1, **{budget: room})
        table, paid = called(emu, parts, rows)
    assert stats["sent"] == 6 and paid == 6
    assert parts.failures == [] and parts.generator.stats["skipped_budget"] == 0
    assert table.equals(expected)
    assert parts.generator.stats["output_tokens"] == stats["output_tokens"]


class Terms(BaseModel):
    terms: list[str]


class Glossary(LLM):
    response_format = Terms

    def prompt(self, row):
        return f"List the key terms of {row['topic']}."

    def parse(self, row, response):
        return {"i": row["i"], "terms": len(response.terms)}


def prose_for_odd(body: dict) -> str:
    """A fit answer for topics named 'even'; prose, which is asked again (twice), for the others."""
    return '{"terms": ["a", "b"]}' if "even" in body["messages"][-1]["content"] else "no JSON here"


def test_re_asks_of_a_row_repeated_windows_apart_are_counted_once(tmp_path):
    rows = [{"topic": ("even" if i % 2 == 0 else "odd") + f" {i % 4}", "i": i} for i in range(10)]

    def call(path, window: int) -> tuple[Glossary, object, int]:
        task = Glossary("gpt-4o-mini", base_url=emu.openai_base_url, api_key="sk-test", progress=False,
                        max_tokens=64, journal=path, max_error_rate=None, window=window)
        return task, *called(emu, task, rows)

    with Emulator(EmulatorConfig(latency_median_s=0.001, responder=prose_for_odd)) as emu:
        whole, expected, paid_whole = call(tmp_path / "whole.sqlite", 10_000)
        parts, table, paid_parts = call(tmp_path / "parts.sqlite", 3)
    assert paid_whole == paid_parts == 2 + 2 * 3  # two fit topics; two unfit ones, each asked three times
    assert table.equals(expected) and parts.failures == whole.failures and len(parts.failures) == 5
    for key in COUNTS:
        assert parts.generator.stats[key] == whole.generator.stats[key], key
    assert parts.generator.stats["total"] == 8


def test_a_row_skipped_on_the_budget_is_not_answered_by_an_earlier_calls_failure(tmp_path):
    """A key a window skipped on the budget was taken for handled: the next window's repeat of it replayed the 500
    an earlier call left in the journal, as this call's answer, never sending it; skipped rows stay pending."""
    journal = tmp_path / "j.sqlite"
    with Emulator(EmulatorConfig(latency_median_s=0.001, faults=[Fault("500", first=1, match="KEY")])) as emu:
        make(emu, journal, window=10, max_attempts=1)([{"topic": "KEY", "i": 0}])  # a transient failure journaled
        task = make(emu, journal, window=2, max_attempts=1, concurrency=1, max_output_tokens=250)
        task([{"topic": "x", "i": 0}, {"topic": "KEY", "i": 1}, {"topic": "KEY", "i": 2}])
    assert [f["status"] for f in task.failures] == ["skipped_budget", "skipped_budget"], task.failures


def test_a_new_call_still_retries_a_transient_failure_its_windows_shared(tmp_path):
    """Within a call the failed key is sent once and its repeat in a later window replayed; the next call (and the
    engine used directly) sends it again, as before windows counted keys aside."""
    rows = [{"topic": "FAIL" if i % 3 == 0 else f"t{i}", "i": i} for i in range(6)]  # FAIL in windows 1 and 2
    with Emulator(EmulatorConfig(latency_median_s=0.001, faults=[Fault("500", rate=1.0, match="FAIL")])) as emu:
        task = make(emu, tmp_path / "j.sqlite", window=2, max_attempts=1)
        before = emu.received
        task(rows)
        first = emu.received - before
        assert task.generator.counted_aside == ()
        before = emu.received
        task(rows)
        assert (first, emu.received - before) == (5, 1)
