"""`textbookgen.llm.LLM`: curator-style prompt()/parse() tasks on the real clients against the emulator."""

from __future__ import annotations

import gc

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


def test_a_text_answer_cut_at_max_tokens_is_parsed_and_listed(tmp_path, caplog):
    with Emulator() as emu:
        task = make(Lesson, emu, "openai", "gpt-4o-mini", tmp_path, max_tokens=5)
        table = task(TOPICS)
        whole = make(Lesson, emu, "openai", "gpt-4o-mini", tmp_path / "whole")
        whole(TOPICS[:1])
    assert table.height == 4 and not task.failures
    assert [t["row"] for t in task.truncated] == [0, 1, 2, 3] and "4 answers were cut at max_tokens" in caplog.text
    assert whole.truncated == []


def test_batch_mode_needs_a_journal_file():
    """A temporary journal dies with the object: a killed script's paid batches could not be collected."""
    with pytest.raises(ValueError, match="batch=True needs journal='path.sqlite'"):
        Lesson("gpt-4o-mini", batch=True, api_key="sk-test", progress=False)


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
    """Sample 0 is the request n=1 makes, so going from 1 to 3 samples pays for two more, not three."""
    with Emulator(EmulatorConfig(record_requests=True)) as emu:
        one = make(Lesson, emu, provider, model, tmp_path, temperature=1.0)(TOPICS)
        assert emu.billed == 4
        three = make(Lesson, emu, provider, model, tmp_path, n=3, temperature=1.0)(TOPICS)
        assert emu.billed == 4 * 3  # sample 0 comes from the journal
        bodies = [r["body"] for r in emu.requests]
        five = make(Lesson, emu, provider, model, tmp_path, n=5, temperature=1.0)(TOPICS)
        assert emu.billed == 4 * 5  # samples 0-2 come from the journal
    assert three.columns == ["topic", "response", "sample"]
    assert three.group_by("topic").agg(pl.col("sample").sort())["sample"].to_list() == [[0, 1, 2]] * 4
    assert three.filter(pl.col("sample") == 0)["response"].to_list() == one["response"].to_list()
    assert five.filter(pl.col("sample") < 3).sort("topic", "sample").equals(three.sort("topic", "sample"))
    if provider == "openai":  # the seed goes on the wire where the API takes one; sample 0 is unseeded, as n=1
        assert sorted(b.get("seed", -1) for b in bodies) == sorted([-1, 1, 2] * 4)
        assert three.group_by("topic").agg(pl.col("response").n_unique())["response"].to_list() == [3] * 4
    else:
        assert all("seed" not in b for b in bodies)


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_n_samples_at_temperature_0_warn_once_that_they_pay_for_one_answer(provider, model, tmp_path, caplog):
    with Emulator(EmulatorConfig()) as emu, caplog.at_level("WARNING", logger="textbookgen"):
        make(Lesson, emu, provider, model, tmp_path, n=3, temperature=1.0)(TOPICS)
        make(Lesson, emu, provider, model, tmp_path / "one", n=1, temperature=0.0)(TOPICS)
        assert "temperature 0" not in caplog.text
        make(Lesson, emu, provider, model, tmp_path / "greedy", n=3, temperature=0.0)(TOPICS)
    warnings = [r.getMessage() for r in caplog.records if "temperature 0" in r.getMessage()]
    assert len(warnings) == 1 and "are (nearly) the same answer, paid 3 times" in warnings[0]
    assert ("Anthropic's API takes no seed" in warnings[0]) == (provider == "anthropic")


def test_n_samples_failures_name_row_and_sample_and_n_is_checked(tmp_path):
    rows = TOPICS[:1] + [{"topic": "BROKEN thing"}]
    with Emulator(EmulatorConfig(faults=[Fault("400", rate=1.0, match="BROKEN")])) as emu:
        task = make(Lesson, emu, "openai", "gpt-4o-mini", tmp_path, n=2, seed=100)
        table = task(rows)
    assert table["sample"].to_list() == [0, 1] and [(f["row"], f["sample"]) for f in task.failures] == [(1, 0), (1, 1)]
    with pytest.raises(ValueError, match="at least 1"):
        LLM("gpt-4o-mini", api_key="sk-test", progress=False, n=0)


def test_the_table_takes_every_records_keys_and_types_and_a_clash_names_the_column(tmp_path):
    class Late(Lesson):  # a key and a type first seen after polars' default 100-row inference window
        def parse(self, row, response):
            late = row["i"] >= 110
            return {"i": row["i"], "score": 1.5 if late else None, **({"note": "late"} if late else {})}

    class Clash(Late):
        def parse(self, row, response):
            return {"i": row["i"], "score": [1] if row["i"] >= 110 else 1}

    rows = [{"topic": f"t{i}", "i": i} for i in range(120)]
    with Emulator() as emu:
        table = make(Late, emu, "openai", "gpt-4o-mini", tmp_path)(rows)
        clash = make(Clash, emu, "openai", "gpt-4o-mini", tmp_path, journal=tmp_path / "Late.sqlite")
        with pytest.raises(TypeError, match=r"column 'score' mixes int \(first on row 0\) and list \(first on row 110\)"
                                            r".*Late.sqlite.*nothing is paid twice"):
            clash(rows)
        assert emu.billed == 120  # the clash came after the answers were journaled, not instead of them
    assert table.columns == ["i", "score", "note"] and table.schema["score"] == pl.Float64
    assert table["note"].null_count() == 110 and table["score"].drop_nulls().to_list() == [1.5] * 10


def test_without_a_journal_the_object_keeps_its_answers_so_fixing_parse_costs_nothing(tmp_path):
    class Buggy(Lesson):
        def parse(self, row, response):
            return {"first": response.split()[10_000]}

    with Emulator() as emu:
        task = make(Buggy, emu, "openai", "gpt-4o-mini", tmp_path, journal=None)
        with pytest.raises(IndexError) as err:
            task(TOPICS)
        if hasattr(err.value, "add_note"):
            assert "this object keeps the answers" in err.value.__notes__[0]
        task.parse = lambda row, response: {"topic": row["topic"], "words": len(response.split())}
        table = task(TOPICS)
        assert emu.billed == 4
        scratch = task.generator.journal_path
        assert scratch.exists()
        del task, err
        gc.collect()  # the traceback held the task
        assert not scratch.exists()  # the temporary journal goes with its object
    assert table.columns == ["topic", "words"] and table.height == 4


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_a_chat_request_from_prompt_gets_the_class_response_format(provider, model, tmp_path):
    from textbookgen.engine import ChatRequest

    class Own(Glossary):  # a full ChatRequest, e.g. for a per-row max_tokens
        def prompt(self, row):
            return ChatRequest(messages=[{"role": "user", "content": f"List 5 key terms of {row['topic']}."}],
                               max_tokens=300)

    with Emulator(EmulatorConfig(record_requests=True)) as emu:
        task = make(Own, emu, provider, model, tmp_path)
        table = task(TOPICS)
        bodies = [r["body"] for r in emu.requests]
    assert table.height == 20 and not task.failures
    if provider == "anthropic":
        assert all(b["tools"][0]["input_schema"] == Terms.model_json_schema() for b in bodies)
    else:
        assert all(b["response_format"]["json_schema"]["name"] == "Terms" for b in bodies)


def test_with_n_samples_a_sample_field_is_refused_not_mistaken_for_the_answer_index(tmp_path):
    class Tagged(Lesson):
        def parse(self, row, response):
            return {"topic": row["topic"], "sample": "mine"}

    with Emulator() as emu:
        with pytest.raises(ValueError, match="row 0 has a 'sample' field.*answer index"):
            make(Lesson, emu, "openai", "gpt-4o-mini", tmp_path, n=2)([{"topic": "a", "sample": "x"}])
        assert emu.billed == 0  # refused before anything is sent
        with pytest.raises(ValueError, match=r"Tagged.parse\(\) on row 0 returned a 'sample' field"):
            make(Tagged, emu, "openai", "gpt-4o-mini", tmp_path, n=2)(TOPICS[:1])
        one = make(Lesson, emu, "openai", "gpt-4o-mini", tmp_path / "one")([{"topic": "a", "sample": "x"}])
    assert one["sample"].to_list() == ["x"]  # with one answer per row there is no index: the field is data


def test_the_failure_warning_counts_requests_and_rows_apart(tmp_path, caplog):
    with Emulator(EmulatorConfig(faults=[Fault("400", rate=1.0, match="BROKEN")])) as emu:
        task = make(Lesson, emu, "openai", "gpt-4o-mini", tmp_path, n=4)
        with caplog.at_level("WARNING", logger="textbookgen.llm"):
            task(TOPICS[:2] + [{"topic": "BROKEN thing"}])
    assert "Lesson: 4 of 12 requests failed (n=4 per row), on 1 of 3 rows" in caplog.text


def test_an_answer_that_misses_the_schema_is_asked_again_once_and_then_replayed(tmp_path):
    """A structured answer in prose is not kept as the row's answer forever: the row is asked again with a new
    seed (its own journal entry), and later calls replay that chain without paying."""
    import json

    calls = []

    def responder(body):
        calls.append(body)
        return "Sure! The terms are: tide, moon" if len(calls) == 1 else json.dumps({"terms": ["tide", "moon"]})

    with Emulator(EmulatorConfig(latency_median_s=0.001, responder=responder)) as emu:
        for _ in range(3):
            task = make(Glossary, emu, "openai", "gpt-4o-mini", tmp_path)
            table = task([{"topic": "tides"}])
            assert table["term"].to_list() == ["tide", "moon"] and not task.failures
        assert emu.received == 2 and emu.duplicates == 0


def test_a_model_that_never_fits_the_schema_is_asked_a_bounded_number_of_times(tmp_path):
    with Emulator(EmulatorConfig(latency_median_s=0.001, record_requests=True, responder=lambda body: "no JSON")) as emu:
        task = make(Glossary, emu, "openai", "gpt-4o-mini", tmp_path, n=2)
        assert task(TOPICS[:1]).height == 0 and emu.received == 2 * 3  # 2 samples, each asked 3 times
        assert [f["sample"] for f in task.failures] == [0, 1]
        assert all("does not fit Terms (3 tries): no JSON object" in f["error"] for f in task.failures)
        seeds = sorted(r["body"].get("seed", -1) for r in emu.requests)  # re-asks never take another sample's seed
        make(Glossary, emu, "openai", "gpt-4o-mini", tmp_path, n=2)(TOPICS[:1])
        assert emu.received == 6  # the next call replays them all
        make(Glossary, emu, "openai", "gpt-4o-mini", tmp_path, n=2, schema_retries=3)(TOPICS[:1])
        assert emu.received == 8 and emu.duplicates == 0  # one more try each
    assert seeds == [-1, 1, 1_000_000, 1_000_001, 2_000_000, 2_000_001]  # sample 0 unseeded, as with n=1
    with pytest.raises(ValueError, match="schema_retries"):
        LLM("gpt-4o-mini", api_key="sk-test", progress=False, schema_retries=-1)


@pytest.mark.parametrize("budget", [{"max_cost_usd": 4.2e-4}, {"max_output_tokens": 150}])
def test_schema_re_asks_share_the_calls_budget_and_its_stats(budget, tmp_path):
    """Each round of re-asks is a Generator run of its own; the call's budget covers them all, not each."""
    from textbookgen.journal import Journal

    with Emulator(EmulatorConfig(latency_median_s=0.001, responder=lambda body: "no JSON")) as emu:
        task = make(Glossary, emu, "openai", "gpt-4o-mini", tmp_path, max_tokens=64, concurrency=1, **budget)
        task([{"topic": f"topic {i}"} for i in range(30)])  # 30 answers, schema billed, fit; 90 do not
        billed = emu.billed
    with Journal(task.generator.journal_path, read_only=True) as j:
        summary = j.summary()
    stats = task.generator.stats
    assert billed > 30 and stats["sent"] == billed and stats["skipped_budget"] > 0  # the re-asks ran into it
    assert stats["cost_usd"] == pytest.approx(summary["cost_usd"])
    if "max_cost_usd" in budget:
        assert summary["cost_usd"] <= budget["max_cost_usd"]
    else:
        assert stats["output_tokens"] <= budget["max_output_tokens"]
    assert (task.generator.max_cost_usd, task.generator.max_output_tokens) == \
        (budget.get("max_cost_usd"), budget.get("max_output_tokens"))


@pytest.mark.parametrize("budget", [{"max_cost_usd": 4.2e-4}, {"max_output_tokens": 150}])
def test_calling_again_keeps_to_the_one_budget_over_every_round_and_rerun(budget, tmp_path):
    """A rerun whose first round the journal answers whole leaves its re-ask rounds only what the call has not
    spent, replayed answers included: the journal never holds more than the budget, and a budget stop names it."""
    from textbookgen.build import journal_spend

    rows = [{"topic": f"topic {i}"} for i in range(30)]
    with Emulator(EmulatorConfig(latency_median_s=0.001, responder=lambda body: "no JSON")) as emu:
        for _ in range(3):
            task = make(Glossary, emu, "openai", "gpt-4o-mini", tmp_path, max_tokens=64, concurrency=1, **budget)
            task(rows)
        assert emu.duplicates == 0
    usd, used = journal_spend(task.generator.journal_path)
    if "max_cost_usd" in budget:
        assert usd <= budget["max_cost_usd"]
        assert any(f["error"].startswith("max_cost_usd=$0.0004 reached") for f in task.failures)
    else:
        assert used <= budget["max_output_tokens"]
        assert any(f["error"].startswith("max_output_tokens=150 reached") for f in task.failures)
    assert task.generator.stats["sent"] == 0 and task.generator.stats["replayed"] > 30


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_a_leading_think_block_is_not_part_of_the_answer_parse_gets(provider, model, tmp_path):
    """Qwen3 / R1 distills on vLLM without a reasoning parser put `<think>...</think>` before the answer."""
    with Emulator(EmulatorConfig(faults=[Fault("think", rate=1.0)])) as emu:
        table = make(Lesson, emu, provider, model, tmp_path)(TOPICS[:2])
    assert table.height == 2 and all(t and "<think>" not in t and "</think>" not in t for t in table["response"])
