"""Review of the quiet windows after an `LLM` call's budget stop (`Generator.budget_stopped`): a quiet window is
a run that sends nothing, so it must still let Ctrl-C through and give the call the stats running it gave."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from textbookgen.llm import LLM
from textbookgen.testing.emulator import Emulator, EmulatorConfig

FAST = EmulatorConfig(latency_median_s=0.001)


class Lesson(LLM):
    def prompt(self, row):
        return f"Write a short textbook section on {row['topic']}."

    def parse(self, row, response):
        return {"i": row["i"], "words": len(response.split())}


def make(base_url: str | list[str], path, provider: str = "openai", model: str = "gpt-4o-mini") -> Lesson:
    """A call that its output-token budget stops within its first windows (of 4 rows, one request at a time)."""
    return Lesson(model, provider, base_url=base_url, api_key="sk-test", progress=False, max_tokens=200,
                  journal=path, max_error_rate=None, concurrency=1, window=4, max_output_tokens=1000)


def test_ctrl_c_after_the_budget_stop_ends_the_call_instead_of_walking_every_row(tmp_path):
    """The quiet windows awaited nothing that suspends, so a cancel (Ctrl-C: asyncio.run cancels the call's task)
    was only seen once every row of the input had been pulled and made into requests (10M rows: minutes)."""
    pulled = 0

    def rows() -> Iterator[dict]:
        nonlocal pulled
        for i in range(400):
            if i == 100:  # well after the stop (the budget holds about 5 answers): Ctrl-C
                asyncio.current_task().cancel()
            pulled += 1
            yield {"topic": f"topic {i}", "i": i}

    with Emulator(FAST) as emu:
        task = make(emu.openai_base_url, tmp_path / "j.sqlite")
        with pytest.raises(asyncio.CancelledError):
            asyncio.run(task.acall(rows()))
        assert 0 < emu.billed < 16
    assert pulled <= 100 + 2 * task.window


def test_what_each_replica_answered_survives_the_quiet_windows(tmp_path):
    """A quiet window has no provider, so no `answers_by_replica`, and the call's stats kept only the keys of its
    last run: the replicas' counts of the windows that ran were lost."""
    with Emulator(FAST) as a, Emulator(FAST) as b:
        task = make([a.openai_base_url, b.openai_base_url], tmp_path / "j.sqlite", "openai-compatible", "my-model")
        table = task([{"topic": f"topic {i}", "i": i} for i in range(40)])
        assert 0 < table.height < 16 and task.failures[-1]["row"] == 39  # stopped early, the last windows quiet
        assert task.generator.stats["answers_by_replica"] == {a.openai_base_url: a.billed,
                                                              b.openai_base_url: b.billed}
