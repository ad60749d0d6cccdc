"""Review of `LLM` windows: a `window` set on the object after it was made is checked when it is called, as the
keyword and class attribute are when it is made; `generator.stats` counts what each replica answered over all
windows, and are an empty run's after a call on no rows."""

from __future__ import annotations

import pytest

from textbookgen.llm import LLM
from textbookgen.testing.emulator import Emulator, EmulatorConfig


class Lesson(LLM):
    def prompt(self, row):
        return f"Write a short textbook section on {row}."


@pytest.mark.parametrize("window", [0, -3, 2.5])
def test_a_window_set_on_the_object_that_is_no_positive_int_is_refused_at_the_call(window, tmp_path):
    """`task.window = 0` made the call pull no rows: an empty table, no failures, nothing asked or said."""
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        task = Lesson("gpt-4o-mini", base_url=emu.openai_base_url, api_key="sk-test", progress=False,
                      max_error_rate=None, journal=tmp_path / "j.sqlite")
        task.window = window
        with pytest.raises(ValueError, match=r"window \(rows in memory at once\) must be an int >= 1"):
            task(["cells", "tides", "atoms"])
        assert emu.billed == 0


def test_a_window_set_on_the_object_too_small_for_the_error_rate_stop_is_refused_at_the_call(tmp_path):
    """The refusal of a window x n under error_window held for the keyword and the class attribute, not for the
    object's attribute set after: the call ran windows none of which could reach the error-rate stop."""
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        task = Lesson("gpt-4o-mini", base_url=emu.openai_base_url, api_key="sk-test", progress=False,
                      error_window=10, journal=tmp_path / "j.sqlite")
        task.window = 3
        with pytest.raises(ValueError, match=r"window=3 rows x n=1 is fewer requests than error_window=10"):
            task([f"topic {i}" for i in range(12)])
        assert emu.billed == 0
        task.window = 10
        assert task([f"topic {i}" for i in range(12)]).height == 12 and emu.billed == 12


def test_what_each_replica_answered_is_counted_over_all_windows(tmp_path):
    """Each window is a run of the engine with its own replica counts, and the call's stats kept the last window's
    alone (5 of 20 answers), not the call's."""
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as a, Emulator(EmulatorConfig(latency_median_s=0.001)) as b:
        task = Lesson("my-model", "openai-compatible", base_url=[a.openai_base_url, b.openai_base_url],
                      progress=False, max_error_rate=None, window=5, journal=tmp_path / "j.sqlite")
        task([f"topic {i}" for i in range(20)])
        assert a.billed + b.billed == 20
        assert task.generator.stats["answers_by_replica"] == {a.openai_base_url: a.billed, b.openai_base_url: b.billed}


@pytest.mark.parametrize("empty", [list, lambda: iter(())])
def test_a_call_on_no_rows_has_the_stats_of_an_empty_run_not_the_call_before(empty, tmp_path):
    """A call on no rows ran no window, which left `generator.stats` as the call before it made them (2 sent and
    their cost), where an empty run's were before calls went window by window."""
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        task = Lesson("gpt-4o-mini", base_url=emu.openai_base_url, api_key="sk-test", progress=False,
                      max_error_rate=None, journal=tmp_path / "j.sqlite")
        task(["cells", "tides"])
        assert task.generator.stats["sent"] == 2 and task.generator.stats["cost_usd"] > 0
        assert task(empty()).height == 0
    stats = task.generator.stats
    assert (stats["sent"], stats["done"], stats["total"], stats["cost_usd"]) == (0, 0, 0, 0)
