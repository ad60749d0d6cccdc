"""`textbookgen.llm.LLM`: curator-style prompt()/parse() tasks on the real clients against the emulator."""

from __future__ import annotations

import polars as pl
import pytest
from pydantic import BaseModel

from textbookgen.llm import LLM
from textbookgen.testing.emulator import Emulator, EmulatorConfig, Fault

PROVIDERS = [("openai", "gpt-4o-mini"), ("anthropic", "claude-haiku-4-5")]
TOPICS = [{"topic": t} for t in ("photosynthesis", "plate tectonics", "recursion", "supply and demand")]


class Terms(BaseModel):
    terms: list[str]


class Lesson(LLM):
    def prompt(self, row):
        return f"Write a short textbook section on {row['topic']}."


class Glossary(LLM):
    response_format = Terms

    def prompt(self, row):
        return f"List 5 key terms of a lesson on {row['topic']}."

    def parse(self, row, response):
        return [{"topic": row["topic"], "term": t} for t in response.terms]


def make(cls, emu, provider, model, tmp_path, **kw):
    base = emu.anthropic_base_url if provider == "anthropic" else emu.openai_base_url
    opts = {"journal": tmp_path / f"{cls.__name__}.sqlite", "max_tokens": 400, **kw}
    return cls(model, provider, base_url=base, api_key="sk-test", progress=False, **opts)


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_text_task_default_parse_keeps_the_row_and_the_answer(provider, model, tmp_path):
    with Emulator() as emu:
        table = make(Lesson, emu, provider, model, tmp_path, system="You write textbooks.")(TOPICS)
        assert emu.billed == 4
    assert table.columns == ["topic", "response"] and table["topic"].to_list() == [r["topic"] for r in TOPICS]
    assert all(len(text) > 100 for text in table["response"])


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_structured_task_validates_the_schema_and_parse_fans_out(provider, model, tmp_path):
    with Emulator(EmulatorConfig(record_requests=True)) as emu:
        task = make(Glossary, emu, provider, model, tmp_path)
        table = task(pl.DataFrame(TOPICS))
        bodies = [r["body"] for r in emu.requests]
    assert table.columns == ["topic", "term"] and table.height == 4 * 5 and not task.failures
    assert table.group_by("topic").len()["len"].to_list() == [5] * 4
    schema = Terms.model_json_schema()
    if provider == "anthropic":  # a forced tool carries the schema
        assert all(b["tools"][0]["input_schema"] == schema and b["tool_choice"]["type"] == "tool" for b in bodies)
    else:
        assert all(b["response_format"]["json_schema"]["schema"] == schema for b in bodies)


def test_editing_parse_re_parses_stored_answers_without_paying(tmp_path):
    class Count(Glossary):
        def parse(self, row, response):
            return {"topic": row["topic"], "n_terms": len(response.terms)}

    with Emulator() as emu:
        first = make(Glossary, emu, "openai", "gpt-4o-mini", tmp_path)(TOPICS)
        assert emu.billed == 4
        again = Count("gpt-4o-mini", base_url=emu.openai_base_url, api_key="sk-test", progress=False,
                      max_tokens=400, journal=tmp_path / "Glossary.sqlite")(TOPICS)
        assert emu.billed == 4  # same requests, answers from the journal
    assert first.height == 20 and again["n_terms"].to_list() == [5] * 4


def test_failed_requests_and_answers_that_miss_the_schema_are_listed_not_tabled(tmp_path):
    rows = TOPICS + [{"topic": "BROKEN thing"}]
    with Emulator(EmulatorConfig(faults=[Fault("400", rate=1.0, match="BROKEN")])) as emu:
        task = make(Glossary, emu, "openai", "gpt-4o-mini", tmp_path)
        table = task(rows)
        assert table.height == 20 and [f["row"] for f in task.failures] == [4]
        assert task.failures[0]["status"] == "failed" and "400" in task.failures[0]["error"]
        cut = make(Glossary, emu, "openai", "gpt-4o-mini", tmp_path / "cut", max_tokens=3)
        assert cut(TOPICS).height == 0  # 3 tokens cannot hold the JSON: truncated, does not validate
    assert len(cut.failures) == 4 and all("does not fit Terms" in f["error"] for f in cut.failures)


def test_a_bug_in_parse_surfaces_and_costs_nothing_to_fix(tmp_path):
    class Buggy(Glossary):
        def parse(self, row, response):
            return {"first": response.terms[99]}

    with Emulator() as emu:
        task = make(Buggy, emu, "openai", "gpt-4o-mini", tmp_path, journal=tmp_path / "g.sqlite")
        with pytest.raises(IndexError) as err:
            task(TOPICS)
        if hasattr(err.value, "add_note"):  # Python >= 3.11 says where it happened and what to do
            assert "Buggy.parse() on row 0" in err.value.__notes__[0] and "nothing is paid twice" in err.value.__notes__[0]
        fixed = make(Glossary, emu, "openai", "gpt-4o-mini", tmp_path, journal=tmp_path / "g.sqlite")(TOPICS)
        assert emu.billed == 4 and fixed.height == 20


def test_rows_of_strings_batch_mode_and_bad_input(tmp_path):
    class Echo(LLM):
        def prompt(self, row):
            return [{"role": "user", "content": f"Explain {row} in one paragraph."}]

    with Emulator(EmulatorConfig(batch_latency_s=0.05)) as emu:
        task = make(Echo, emu, "anthropic", "claude-haiku-4-5", tmp_path, batch=True, batch_poll_s=0.02)
        table = task(["gravity", "tides"])
        assert emu.stats()["batch_requests"] == 2 and table["row"].to_list() == ["gravity", "tides"]
    assert task.generator.stats["cost_usd"] > 0
    with pytest.raises(TypeError, match="iterable of rows"):
        task({"topic": "one dict"})
    class Wrong(LLM):
        def prompt(self, row):
            return 42 if row == "b" else row

    with pytest.raises(TypeError, match=r"Wrong.prompt\(\) on row 1 returned int"):
        Wrong("gpt-4o-mini", api_key="sk-test", progress=False)(["a", "b"])
    with pytest.raises(NotImplementedError, match="must define prompt"):
        LLM("gpt-4o-mini", api_key="sk-test", progress=False)(["x"])


def test_calling_inside_a_running_event_loop_works_like_a_notebook_cell(tmp_path):
    import asyncio

    async def cell(task):
        return task(TOPICS[:2]), await task.acall(TOPICS[:2])

    with Emulator() as emu:
        task = make(Lesson, emu, "openai", "gpt-4o-mini", tmp_path)
        plain, awaited = asyncio.run(cell(task))
        assert emu.billed == 2  # the awaited call replays the journal
    assert plain.equals(awaited) and plain.height == 2


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_structured_output_through_the_batch_api(provider, model, tmp_path):
    with Emulator(EmulatorConfig(batch_latency_s=0.05)) as emu:
        task = make(Glossary, emu, provider, model, tmp_path, batch=True, batch_poll_s=0.02)
        table = task(TOPICS)
        assert emu.stats()["batch_requests"] == 4 and emu.billed == 4
    assert table.height == 20 and not task.failures


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_n_samples_per_row_are_seeded_requests_and_growing_n_pays_only_the_new_ones(provider, model, tmp_path):
    with Emulator(EmulatorConfig(record_requests=True)) as emu:
        three = make(Lesson, emu, provider, model, tmp_path, n=3, temperature=1.0)(TOPICS)
        assert emu.billed == 4 * 3
        bodies = [r["body"] for r in emu.requests]
        five = make(Lesson, emu, provider, model, tmp_path, n=5, temperature=1.0)(TOPICS)
        assert emu.billed == 4 * 5  # samples 0-2 come from the journal
    assert three.columns == ["topic", "response", "sample"]
    assert three.group_by("topic").agg(pl.col("sample").sort())["sample"].to_list() == [[0, 1, 2]] * 4
    assert five.filter(pl.col("sample") < 3).sort("topic", "sample").equals(three.sort("topic", "sample"))
    if provider == "openai":  # the seed goes on the wire where the API takes one
        assert sorted(b["seed"] for b in bodies) == sorted([0, 1, 2] * 4)
        assert three.group_by("topic").agg(pl.col("response").n_unique())["response"].to_list() == [3] * 4
    else:
        assert all("seed" not in b for b in bodies)


def test_n_samples_failures_name_row_and_sample_and_n_is_checked(tmp_path):
    rows = TOPICS[:1] + [{"topic": "BROKEN thing"}]
    with Emulator(EmulatorConfig(faults=[Fault("400", rate=1.0, match="BROKEN")])) as emu:
        task = make(Lesson, emu, "openai", "gpt-4o-mini", tmp_path, n=2, seed=100)
        table = task(rows)
    assert table["sample"].to_list() == [0, 1] and [(f["row"], f["sample"]) for f in task.failures] == [(1, 0), (1, 1)]
    with pytest.raises(ValueError, match="at least 1"):
        LLM("gpt-4o-mini", api_key="sk-test", progress=False, n=0)
