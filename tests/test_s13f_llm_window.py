"""`LLM` calls on large inputs go through `window` rows at a time, with the results of one call over all rows; and
a parse() that reaches the default one through super() is refused rows whose `response` it would overwrite."""

from __future__ import annotations

import polars as pl
import pytest

from textbookgen.llm import LLM
from textbookgen.testing.emulator import Emulator, EmulatorConfig, Fault


class Lesson(LLM):
    def prompt(self, row):
        return f"Write a short textbook section on {row['topic']}."


def make(cls: type[LLM], emu: Emulator, path, **kw) -> LLM:
    """A task on the emulator; no error-rate stop, which small windows would not reach (see the last test)."""
    kw = {"max_error_rate": None, **kw}
    return cls("gpt-4o-mini", base_url=emu.openai_base_url, api_key="sk-test", progress=False, max_tokens=200,
               journal=path, **kw)


def test_a_generator_of_rows_is_pulled_a_window_ahead_of_the_answers_not_whole():
    """A 10M-row call held every row, request and answer at once (~2.3 KB a row): rows now come a window at a
    time, each parsed before the next window is pulled."""
    events: list[tuple[str, int]] = []

    def rows(count: int):
        for i in range(count):
            events.append(("pulled", i))
            yield {"topic": f"topic {i}", "i": i}

    class Traced(Lesson):
        window = 8

        def parse(self, row, response):
            events.append(("parsed", row["i"]))
            return {"i": row["i"]}

    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        table = Traced("gpt-4o-mini", base_url=emu.openai_base_url, api_key="sk-test", progress=False,
                       max_error_rate=None)(rows(40))
        assert emu.billed == 40
    assert table["i"].to_list() == list(range(40))
    pulled, ahead = 0, []
    for kind, i in events:
        if kind == "pulled":
            pulled += 1
        else:
            ahead.append(pulled - i - 1)  # rows pulled beyond the one being parsed
    assert len(ahead) == 40 and max(ahead) < Traced.window


class Glossed(LLM):
    """Text answers for most rows; a row that names BROKEN is refused (400); n=2 samples per row."""

    def prompt(self, row):
        return f"Explain {row['topic']} in one paragraph."

    def parse(self, row, response):
        late = row["i"] >= 9
        return {"i": row["i"], "words": len(response.split()), "score": 1.5 if late else None,
                **({"note": "late"} if late else {})}


@pytest.mark.parametrize("window", [1, 4, 5])
def test_a_call_in_windows_gives_the_table_failures_stats_and_budget_of_one_window(window, tmp_path):
    rows = [{"topic": f"BROKEN {i}" if i in (2, 7) else f"topic {i}", "i": i} for i in range(12)]
    with Emulator(EmulatorConfig(latency_median_s=0.001, faults=[Fault("400", rate=1.0, match="BROKEN")])) as emu:
        whole = make(Glossed, emu, tmp_path / "whole.sqlite", n=2, seed=3, temperature=1.0)
        expected = whole(rows)
        parts = make(Glossed, emu, tmp_path / "parts.sqlite", n=2, seed=3, temperature=1.0, window=window)
        table = parts(iter(rows))
        assert emu.duplicates == 12 * 2 - 4  # the second call paid each answer again, in its own journal
    assert table.equals(expected) and table.columns == ["i", "words", "score", "sample", "note"]
    assert table.schema["score"] == pl.Float64  # all-null in the first windows, floats later: one Float64 column
    assert parts.failures == whole.failures and [f["row"] for f in parts.failures] == [2, 2, 7, 7]
    for key in ("sent", "ok", "failed", "replayed", "input_tokens", "output_tokens"):
        assert parts.generator.stats[key] == whole.generator.stats[key], key
    assert parts.generator.stats["cost_usd"] == pytest.approx(whole.generator.stats["cost_usd"])


def test_windows_share_the_calls_budget_and_a_rerun_pays_nothing_twice(tmp_path):
    from textbookgen.build import journal_spend

    rows = [{"topic": f"topic {i}", "i": i} for i in range(30)]
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        task = make(Lesson, emu, tmp_path / "j.sqlite", window=4, max_output_tokens=1000, concurrency=1)
        first = task(rows)
        billed = emu.billed
        again = make(Lesson, emu, tmp_path / "j.sqlite", window=7, max_output_tokens=1000, concurrency=1)(rows)
        assert emu.billed == billed and emu.duplicates == 0  # the rerun replays every window
    used = journal_spend(tmp_path / "j.sqlite")[1]
    assert 0 < first.height < 30 and used <= 1000  # the budget stopped the call, over all its windows
    assert any(f["error"].startswith("max_output_tokens=1,000 reached") for f in task.failures)
    assert again.equals(first)


def test_the_clash_of_column_types_across_windows_names_the_column_and_rows(tmp_path):
    class Clash(Lesson):
        def parse(self, row, response):
            return {"i": row["i"], "score": [1] if row["i"] >= 6 else 1}

    rows = [{"topic": f"t{i}", "i": i} for i in range(8)]
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        with pytest.raises(TypeError, match=r"column 'score' mixes int \(first on row 0\) and list \(first on row 6\)"):
            make(Clash, emu, tmp_path / "c.sqlite", window=3)(rows)


def test_a_parse_that_calls_super_parse_is_refused_rows_with_a_response_field(tmp_path):
    """`super().parse()` puts the answer in `response` as the default parse does: a chained task's answers were
    silently replaced where the class added a field of its own."""
    class Critic(Lesson):
        def parse(self, row, response):
            return {**super().parse(row, response), "critic": True}

    class Direct(Lesson):
        def parse(self, row, response):
            return {**LLM.parse(self, row, response), "direct": True}

    class Own(Lesson):
        def parse(self, row, response):
            return {"topic": row["topic"], "review": response}

    class Chained(Own):  # its super().parse() is Own's, which keeps `response` apart
        def parse(self, row, response):
            return {**super().parse(row, response), "chained": True}

    drafts = [{"topic": "tides", "response": "draft one"}, {"topic": "enzymes", "response": "draft two"}]
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        with pytest.raises(ValueError, match=r"row 0 has a 'response' field, which the default parse\(\) would "
                                             r"overwrite.*give Critic a parse\(\) that does not call super"):
            make(Critic, emu, tmp_path / "j.sqlite")(drafts)
        assert emu.billed == 0  # refused before anything was sent
        with pytest.raises(ValueError, match=r"the row has a 'response' field, which LLM.parse\(\) would overwrite") \
                as err:
            make(Direct, emu, tmp_path / "j.sqlite")(drafts)  # LLM.parse called by name: refused where it runs
        if hasattr(err.value, "add_note"):
            assert "Direct.parse() on row 0" in err.value.__notes__[0]
        table = make(Chained, emu, tmp_path / "j.sqlite")(drafts)
        assert emu.billed == 2  # the refused answers are in the journal: the next call paid nothing
    assert table.columns == ["topic", "review", "chained"] and table.height == 2


def test_rows_in_memory_are_checked_whole_before_the_first_window_is_sent(tmp_path):
    rows = [{"topic": f"topic {i}"} for i in range(6)] + [{"topic": "late", "response": "a draft"}]
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        with pytest.raises(ValueError, match=r"row 6 has a 'response' field"):
            make(Lesson, emu, tmp_path / "j.sqlite", n=2, window=2)(rows)
        assert emu.billed == 0


def test_an_error_in_prompt_in_a_later_window_says_what_was_sent_and_kept(tmp_path):
    rows = [{"topic": f"topic {i}"} for i in range(5)] + [{"title": "no topic"}]
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        with pytest.raises(KeyError) as err:
            make(Lesson, emu, tmp_path / "j.sqlite", window=2)(iter(rows))
        assert emu.billed == 4  # two windows answered before the third failed in prompt()
        if hasattr(err.value, "add_note"):
            assert err.value.__notes__ == ["in Lesson.prompt() on row 5; rows 0 to 3 (earlier windows) were answered "
                                           "and journaled, so calling again pays nothing for them; nothing from row 4 "
                                           "on was sent"]
        table = make(Lesson, emu, tmp_path / "j.sqlite", window=2)(rows[:5])
        assert emu.billed == 5 and table.height == 5


def test_a_window_too_small_for_the_error_rate_stop_is_refused():
    """Each window is a Generator run of its own: under error_window requests, a model that ignores the schema
    would be paid for every row instead of stopping the call."""
    with pytest.raises(ValueError, match=r"window=10 rows x n=2 is fewer requests than error_window=50"):
        Lesson("gpt-4o-mini", api_key="sk-test", progress=False, window=10, n=2)
    Lesson("gpt-4o-mini", api_key="sk-test", progress=False, window=10, n=2, error_window=20)
    with pytest.raises(ValueError, match="window"):
        Lesson("gpt-4o-mini", api_key="sk-test", progress=False, window=0)


def test_a_reader_that_breaks_mid_input_leaves_the_windows_before_it_paid_once(tmp_path):
    """A data loader that fails at row 25: the two windows before it are journaled, and the rerun pays only the
    rows they did not hold."""
    rows = [{"topic": f"topic {i}"} for i in range(30)]

    def flaky():
        for i, row in enumerate(rows):
            if i == 25:
                raise OSError("connection to the dataset lost")
            yield row

    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        with pytest.raises(OSError, match="dataset lost"):
            make(Lesson, emu, tmp_path / "j.sqlite", window=10)(flaky())
        assert emu.billed == 20
        table = make(Lesson, emu, tmp_path / "j.sqlite", window=10)(rows)
        assert emu.billed == 30 and emu.duplicates == 0
    assert table["topic"].to_list() == [r["topic"] for r in rows]
