"""`textbookgen.llm.LLM` as a notebook user drives it: the inputs they have at hand (pandas, arrow, polars lazy
frames, `datasets`), curator's habits (response_format as a keyword, chained tasks), large structured-output calls,
answers that miss the schema, mistakes in options and prompt(), and calls overlapping or cancelled in an event loop."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import polars as pl
import pytest
from pydantic import BaseModel

from textbookgen.llm import LLM
from textbookgen.testing.emulator import Emulator, EmulatorConfig

ROWS = [{"topic": "tides", "grade": 3}, {"topic": "enzymes", "grade": 4}]


class Lesson(LLM):
    def prompt(self, row):
        return f"Write a short section on {row['topic']} for grade {row['grade']}."


class Counted(BaseModel):
    """A response_format that counts how often its JSON schema is built."""

    built: ClassVar[list[int]] = []
    terms: list[str]

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        cls.built.append(1)
        return super().model_json_schema(*args, **kwargs)


class Glossary(LLM):
    response_format = Counted

    def prompt(self, row):
        return f"List 5 key terms of a lesson on {row['topic']}."

    def parse(self, row, response):
        return {"topic": row["topic"], "terms": len(response.terms)}


def make(cls: type[LLM], emu: Emulator, **kw: Any) -> LLM:
    return cls("gpt-4o-mini", base_url=emu.openai_base_url, api_key="sk-test", progress=False, max_tokens=200, **kw)


def test_a_pandas_frame_gives_its_records_not_its_column_names():
    """Iterating a pandas DataFrame yields its column names: they must not become the rows that are paid for."""
    pd = pytest.importorskip("pandas")
    with Emulator() as emu:
        table = make(Lesson, emu)(pd.DataFrame(ROWS, index=[10, 20]))
        assert emu.billed == 2
    assert table.select("topic", "grade").to_dicts() == ROWS


def test_an_arrow_table_gives_its_records_not_its_columns():
    pa = pytest.importorskip("pyarrow")
    with Emulator() as emu:
        table = make(Lesson, emu)(pa.Table.from_pylist(ROWS))
        batch = make(Lesson, emu)(pa.RecordBatch.from_pylist(ROWS))
        assert emu.billed == 4  # two rows each, not one request per column
    assert table.select("topic", "grade").to_dicts() == ROWS == batch.select("topic", "grade").to_dicts()


def test_a_lazy_frame_is_collected_and_its_rows_generated():
    with Emulator() as emu:
        table = make(Lesson, emu)(pl.LazyFrame(ROWS).filter(pl.col("grade") > 3))
        assert emu.billed == 1
    assert table["topic"].to_list() == ["enzymes"]


def test_a_datasets_split_is_rows_and_a_dataset_dict_asks_for_a_split():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list(ROWS)
    with Emulator() as emu:
        table = make(Lesson, emu)(ds)
        with pytest.raises(TypeError, match=r"not a single DatasetDict \(pick a split: ds\['train'\]\)"):
            make(Lesson, emu)(datasets.DatasetDict({"train": ds}))
        assert emu.billed == 2
    assert table.select("topic", "grade").to_dicts() == ROWS


def test_the_response_format_schema_is_built_once_per_call_not_per_row(tmp_path):
    """Building a pydantic JSON schema takes about a millisecond and its dict some KB: per row, a million-row call
    spent minutes and GBs before sending anything."""
    rows = [{"topic": f"topic {i}"} for i in range(40)]
    with Emulator() as emu:
        task = make(Glossary, emu, journal=tmp_path / "g.sqlite")
        Counted.built.clear()
        table = task(rows)
        assert emu.billed == 40
    assert table.height == 40 and not task.failures and len(Counted.built) == 1


def test_overlapping_calls_on_one_object_are_refused_by_the_tasks_name():
    """`asyncio.gather(task.acall(a), task.acall(b))`: the rounds of one call share the object's Generator."""
    async def both(task: LLM) -> None:
        await asyncio.gather(task.acall(ROWS), task.acall(ROWS[:1]))

    with Emulator() as emu:
        task = make(Lesson, emu)
        with pytest.raises(RuntimeError, match="this Lesson is already running a call: await it"):
            asyncio.run(both(task))
        table = task(ROWS)  # the refused call leaves the object usable
    assert table.height == 2


def test_the_default_parse_refuses_rows_whose_response_it_would_overwrite(tmp_path):
    """Chaining tasks (`Critic(...)(lessons_table)`) must not silently replace the first task's answers."""
    with Emulator() as emu:
        drafts = make(Lesson, emu, journal=tmp_path / "drafts.sqlite")(ROWS)
        with pytest.raises(ValueError, match=r"row 0 has a 'response' field, which the default parse\(\) would "
                                             r"overwrite.*give Lesson a parse\(\)"):
            make(Lesson, emu)(drafts)
        assert emu.billed == 2  # refused before anything was sent
        own = make(Lesson, emu, journal=tmp_path / "drafts.sqlite")
        own.parse = lambda row, response: {**row, "review": response}
        reviewed = own(drafts)
        assert emu.billed == 2  # the same prompts: answered from the journal
    assert reviewed["response"].to_list() == drafts["response"].to_list() and reviewed.height == 2


def test_an_answer_that_misses_the_schema_is_failed_naming_its_wrong_fields(tmp_path):
    """pydantic's first line ("1 validation error for Counted") does not say what to fix in the prompt or model."""
    with Emulator(EmulatorConfig(latency_median_s=0.001, responder=lambda body: '{"terms": "tide, moon"}')) as emu:
        task = make(Glossary, emu, journal=tmp_path / "g.sqlite", schema_retries=0)
        assert task(ROWS[:1]).height == 0
    assert task.failures[0]["error"] == ("answer does not fit Counted (1 try): 1 validation error for Counted: "
                                         "terms: Input should be a valid array")


def test_a_brace_in_the_prose_before_the_json_does_not_cost_a_re_ask(tmp_path):
    """Models without structured output wrap the object in prose that may itself hold a brace."""
    answer = 'The key terms of {the lesson} are:\n```json\n{"terms": ["tide", "moon"]}\n```'
    with Emulator(EmulatorConfig(latency_median_s=0.001, responder=lambda body: answer)) as emu:
        task = make(Glossary, emu, journal=tmp_path / "g.sqlite")
        table = task(ROWS[:1])
        assert emu.received == 1
    assert table.to_dicts() == [{"topic": "tides", "terms": 2}] and not task.failures


def test_response_format_can_be_given_as_a_keyword_as_in_curator(tmp_path):
    class Terms(LLM):
        def prompt(self, row):
            return f"List 5 key terms of a lesson on {row['topic']}."

    with Emulator() as emu:
        task = make(Terms, emu, journal=tmp_path / "t.sqlite", response_format=Counted)
        table = task(ROWS)
    assert table.columns == ["topic", "grade", "response"] and [len(r["terms"]) for r in table["response"]] == [5, 5]
    assert Terms.response_format is None  # the keyword is this object's, not the class's


@pytest.mark.parametrize("typo, meant", [("temprature", "temperature"), ("max_cost", "max_cost_usd")])
def test_a_mistyped_option_names_the_task_and_the_option_meant(typo, meant):
    with pytest.raises(TypeError, match=rf"Lesson\(\) got an unexpected keyword argument '{typo}' "
                                        rf"\(did you mean '{meant}'\?\)"):
        Lesson("gpt-4o-mini", api_key="sk-test", progress=False, **{typo: 1})


def test_an_error_in_prompt_names_the_row_before_anything_is_sent():
    rows = ROWS + [{"title": "no topic"}]
    with Emulator() as emu:
        with pytest.raises(KeyError) as err:
            make(Lesson, emu)(rows)
        assert emu.received == 0
    if hasattr(err.value, "add_note"):  # Python >= 3.11
        assert err.value.__notes__ == ["in Lesson.prompt() on row 2; nothing was sent"]


def test_a_cancelled_call_leaves_the_object_ready_and_its_answers_kept():
    """Interrupting a notebook cell cancels the call: calling again pays only for what was not answered."""
    rows = [{"topic": f"topic {i}", "grade": 1} for i in range(60)]

    async def interrupted(task: LLM, emu: Emulator) -> None:
        call = asyncio.ensure_future(task.acall(rows))
        while emu.billed < 10:
            await asyncio.sleep(0.001)
        assert call.cancel()  # still running: 60 answers at 4 at a time take far longer than 10
        await asyncio.gather(call, return_exceptions=True)

    with Emulator(EmulatorConfig(latency_median_s=0.05)) as emu:
        task = make(Lesson, emu, concurrency=4)
        asyncio.run(interrupted(task, emu))
        first = emu.billed
        table = task(rows)
        assert first < 60 and emu.billed <= 60 + 4  # at most the requests on the wire at the cancel, twice
    assert table.height == 60


@pytest.mark.parametrize("schema", [{"type": "object", "properties": {"terms": {"type": "array"}}},
                                    Counted(terms=["tide"])])
def test_a_response_format_that_is_not_a_model_class_is_refused_at_once(schema):
    with pytest.raises(TypeError, match=rf"Lesson.response_format must be a pydantic model class .* not "
                                        rf"{type(schema).__name__}; a JSON schema of your own goes in a ChatRequest"):
        type("Lesson", (Lesson,), {"response_format": schema})("gpt-4o-mini", api_key="sk-test", progress=False)
