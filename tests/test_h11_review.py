"""Review of the LLM SDK's new inputs and answer search, the web samples' filter check and the collapsed-code rule:
what an expert user's data and a model's answers do to them (pandas gaps, nested and strict JSON, a duck-typed
language filter, prose that names an import)."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from textbookgen.curation.filters import HeuristicFilter, looks_like_code
from textbookgen.llm import LLM
from textbookgen.testing.emulator import Emulator, EmulatorConfig
from textbookgen.websamples import WebSamples


def make(cls: type[LLM], emu: Emulator, **kw: Any) -> LLM:
    return cls("gpt-4o-mini", base_url=emu.openai_base_url, api_key="sk-test", progress=False, max_tokens=200, **kw)


def answering(text: str) -> Emulator:
    return Emulator(EmulatorConfig(latency_median_s=0.001, responder=lambda body: text))


# ----- pandas frames: a missing value is None, as in a polars frame's rows ----------------------------------------
class Lesson(LLM):
    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.topics: list[Any] = []

    def prompt(self, row):
        self.topics.append(row["topic"])
        return f"Write a short section on {row['topic'] or 'anything'}."


def test_a_pandas_frames_missing_values_are_none_as_in_the_same_polars_frame():
    """pandas marks a gap NaN/NaT/NA: a prompt read the string 'nan' as a topic (paid for), polars built a missing
    topic as the string "NaN", and one missing timestamp made the table fail after every answer was paid."""
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"topic": ["tides", None], "due": pd.to_datetime(["2026-01-05", None]),
                          "grade": [3.0, float("nan")]}, index=[7, 9])
    with Emulator() as emu:
        task = make(Lesson, emu)
        table = task(frame)
    assert task.topics == ["tides", None]
    assert table.select("topic", "due", "grade").to_dicts() == [
        {"topic": "tides", "due": datetime.datetime(2026, 1, 5), "grade": 3.0},
        {"topic": None, "due": None, "grade": None}]


# ----- the JSON search in an answer --------------------------------------------------------------------------------
class Section(BaseModel):
    title: str
    sections: list[Section] = []


class Outline(LLM):
    response_format = Section

    def prompt(self, row):
        return f"Outline a chapter on {row['topic']} as JSON."

    def parse(self, row, response):
        return {"topic": row["topic"], "title": response.title}


def test_an_object_that_misses_the_schema_is_not_answered_by_one_nested_in_it(tmp_path):
    """The root misses `title`; its first subsection fits the (recursive) model. Taking it as the answer put a
    subsection's title in the table as the chapter's, silently, where the answer should fail (or be asked again)."""
    answer = 'Here it is: {"heading": "Tides", "sections": [{"title": "Spring tides"}]}'
    with answering(answer) as emu:
        task = make(Outline, emu, journal=tmp_path / "o.sqlite", schema_retries=0)
        table = task([{"topic": "tides"}])
    assert table.height == 0
    assert task.failures[0]["error"].startswith("answer does not fit Section (1 try): 1 validation error for "
                                                "Section: title: Field required")


class Due(BaseModel):
    model_config = ConfigDict(strict=True)
    day: datetime.date


class Deadline(LLM):
    response_format = Due

    def prompt(self, row):
        return f"When is {row['topic']} due? Answer in JSON."


def test_json_in_prose_is_validated_as_json_as_a_bare_answer_is(tmp_path):
    """A strict model takes "2026-01-05" for a date in JSON, not as a Python str: the object found in prose was
    validated as Python data, so a right answer wrapped in a sentence failed (and was paid for again)."""
    with answering('Sure: {"day": "2026-01-05"}') as emu:
        task = make(Deadline, emu, journal=tmp_path / "d.sqlite", schema_retries=0)
        table = task([{"topic": "the essay"}])
        assert emu.received == 1
    assert not task.failures and table["response"].to_list() == [{"day": datetime.date(2026, 1, 5)}]


# ----- web samples: a language filter that lacks what from_texts reads ---------------------------------------------
class KeepAll:
    """A filter written by hand with `keep` only (LanguageFilter also asks for a `description`)."""

    def keep(self, text: str) -> bool:
        return True


def test_a_language_filter_without_a_description_is_refused_before_any_text_is_read():
    """It passed the check, and from_texts read and cut the whole stream before failing on `.description`."""
    read: list[str] = []

    def texts():
        for i in range(3):
            read.append(str(i))
            yield f"Text number {i} about the tides, the moon and the oceans of the world. " * 5

    with pytest.raises(TypeError, match=r"language_filter must be a LanguageFilter .*: KeepAll has no "
                                        r"'description'"):
        WebSamples.from_texts(texts(), language_filter=KeepAll())
    assert read == []


# ----- the collapsed-code rule and prose that says 'import ... class' ---------------------------------------------
TRADE = ("# The Wool Trade In the fourteenth century England began to import first class wool from Flanders and "
         "Brabant, while its own farmers sold cheaper fleeces to weavers in the towns of the east. Merchants in "
         "London and Bristol built warehouses near the docks, and the crown raised a tax on every sack that left "
         "the country. By the end of the century the cloth made at home had begun to replace the cloth bought "
         "abroad, and the trade in raw wool slowly declined as new guilds of weavers grew in the market towns.")


def test_a_collapsed_heading_then_prose_that_imports_first_class_goods_stays_prose():
    """'import first class wool' matched an import followed by a class statement: the section read as a collapsed
    program and was dropped as code_too_short."""
    assert len(TRADE.split()) >= 50
    assert not looks_like_code(TRADE)
    assert HeuristicFilter().reason(TRADE) is None


def test_a_collapsed_program_whose_import_is_followed_by_a_class_is_still_code():
    program = ("# Shapes for the geometry exercises, kept small on purpose. import math class Circle: def "
               "__init__(self, r): self.r = r def area(self): return math.pi * self.r ** 2 def perimeter(self): "
               "return 2 * math.pi * self.r def scaled(self, k): return Circle(self.r * k) def __repr__(self): "
               "return 'Circle(' + str(self.r) + ')' def main(): print(Circle(2).area()) main() # done")
    assert len(program.split()) >= 50
    assert looks_like_code(program)
