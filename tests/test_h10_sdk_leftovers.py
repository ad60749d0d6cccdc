"""SDK leftovers: the emulator answers nested pydantic schemas with valid instances, `load_template` takes the
`builtin:` spelling templates' origins print, and LLM's warnings count in agreement ("1 answer was cut")."""

from __future__ import annotations

import datetime
import uuid
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, Field

from textbookgen.llm import LLM
from textbookgen.recipe import load_recipe
from textbookgen.templates import TemplateError, builtin_templates, load_template
from textbookgen.testing.emulator import Emulator, EmulatorConfig, Fault

PROVIDERS = [("openai", "gpt-4o-mini"), ("anthropic", "claude-haiku-4-5")]
TOPICS = [{"topic": t} for t in ("photosynthesis", "plate tectonics", "recursion")]


class Term(BaseModel):
    term: str
    definition: str


class Glossary(BaseModel):
    terms: list[Term]


class Question(BaseModel):
    question: str
    difficulty: Literal["easy", "medium", "hard"]
    hint: str | None = None
    options: list[str] = Field(min_length=2, max_length=4)


class Quiz(BaseModel):
    title: str
    questions: list[Question] = Field(min_length=3, max_length=4)
    source: Term | None = None


class Reading(BaseModel):
    kind: Literal["reading"]
    pages: int = Field(ge=20, le=40)


class Practice(BaseModel):
    kind: Literal["practice"]
    share: float = Field(gt=0.1, lt=0.2)


class Plan(BaseModel):
    weights: dict[str, int]
    span: tuple[int, str]
    tags: set[str]
    levels: set[Literal[1, 2, 3]] = Field(min_length=3)
    due: datetime.date
    updated: datetime.datetime
    id: uuid.UUID
    minutes: int = Field(gt=0, le=100, multiple_of=5)
    code: str = Field(min_length=3, max_length=8)
    steps: list[Annotated[Reading | Practice, Field(discriminator="kind")]] = Field(min_length=2)


class Node(BaseModel):
    name: str
    children: list[Node] = []
    parent: Node | None = None


def task(response_format: type[BaseModel], instruction: str, emu: Emulator, provider: str, model: str,
         tmp_path, **kw) -> LLM:
    """An LLM task asking for `response_format` on `instruction` about each row's topic, against `emu`."""

    class Task(LLM):
        def prompt(self, row):
            return instruction.format(topic=row["topic"])

        def parse(self, row, response):
            return {"topic": row["topic"], "answer": response.model_dump_json()}

    base = emu.anthropic_base_url if provider == "anthropic" else emu.openai_base_url
    return Task(model, provider, response_format=response_format, base_url=base, api_key="sk-test",
                progress=False, journal=tmp_path / f"{response_format.__name__}.sqlite", max_tokens=2000,
                schema_retries=0, **kw)


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_a_list_of_nested_models_gets_objects_as_many_as_the_prompt_asks(provider, model, tmp_path):
    with Emulator() as emu:
        glossary = task(Glossary, "List 6 key terms of a lesson on {topic}.", emu, provider, model, tmp_path)
        table = glossary(TOPICS)
    assert not glossary.failures and table.height == 3
    answers = [Glossary.model_validate_json(a) for a in table["answer"]]
    assert [len(a.terms) for a in answers] == [6, 6, 6]
    assert all(len({t.term for t in a.terms}) == 6 and all(t.definition.strip() for t in a.terms) for a in answers)


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_literals_optionals_and_item_bounds_of_nested_models_are_kept(provider, model, tmp_path):
    with Emulator() as emu:
        quiz = task(Quiz, "Write 8 questions on {topic}.", emu, provider, model, tmp_path)
        table = quiz(TOPICS)
    assert not quiz.failures and table.height == 3
    for answer in map(Quiz.model_validate_json, table["answer"]):
        assert len(answer.questions) == 4  # 8 asked, maxItems 4
        assert all(2 <= len(q.options) <= 4 for q in answer.questions)


def test_dicts_tuples_sets_formats_bounds_and_tagged_unions_fit(tmp_path):
    with Emulator() as emu:
        plan = task(Plan, "Plan a study week on {topic}.", emu, "openai", "gpt-4o-mini", tmp_path)
        table = plan([{"topic": f"topic {i}"} for i in range(12)])
    assert not plan.failures and table.height == 12
    steps = [s.kind for a in map(Plan.model_validate_json, table["answer"]) for s in a.steps]
    assert set(steps) == {"reading", "practice"}


def test_a_recursive_model_is_answered_with_a_finite_tree(tmp_path):
    with Emulator() as emu:
        tree = task(Node, "Outline the subtopics of {topic}.", emu, "openai", "gpt-4o-mini", tmp_path)
        table = tree(TOPICS)
    assert not tree.failures and table.height == 3
    root = Node.model_validate_json(table["answer"][0])
    assert root.children and root.children[0].children and root.children[0].parent is None


@pytest.mark.parametrize("spelling", ["builtin:textbook_section", "builtin:textbook_section.j2"])
def test_a_builtin_loads_by_the_spelling_its_origin_prints(spelling):
    by_name = load_template("textbook_section")
    assert by_name.origin == "builtin:textbook_section.j2"
    loaded = load_template(spelling)
    assert (loaded.name, loaded.hash, loaded.origin) == (by_name.name, by_name.hash, by_name.origin)


def test_every_builtin_loads_by_its_own_origin():
    assert all(load_template(t.origin) == t for t in builtin_templates().values())


def test_an_unknown_builtin_is_refused_naming_the_builtins():
    with pytest.raises(TemplateError, match=r"'builtin:textbook': no such built-in \(the built-ins: textbook_section"):
        load_template("builtin:textbook")


def test_a_recipe_may_name_a_builtin_template_with_its_prefix(tmp_path):
    (tmp_path / "topics.yaml").write_text("topics: [Physics, Chemistry]\n")
    (tmp_path / "r.yaml").write_text("name: tiny\nmodel: gpt-4o-mini\ntaxonomy:\n  source: topics.yaml\nmix:\n"
                                     "  - template: builtin:qa\nsamples: 10\n")
    recipe = load_recipe(tmp_path / "r.yaml")
    assert load_template(recipe.mix[0].template, recipe.base_dir).name == "qa"


class Lesson(LLM):
    def prompt(self, row):
        return f"Write a short textbook section on {row['topic']}."


def lesson(emu: Emulator, tmp_path, **kw) -> Lesson:
    return Lesson("gpt-4o-mini", base_url=emu.openai_base_url, api_key="sk-test", progress=False,
                  journal=tmp_path / "lesson.sqlite", **kw)


def test_one_cut_answer_is_counted_in_the_singular(tmp_path, caplog):
    with Emulator() as emu, caplog.at_level("WARNING", logger="textbookgen.llm"):
        task_ = lesson(emu, tmp_path, max_tokens=5)
        task_(TOPICS[:1])
    assert len(task_.truncated) == 1
    assert "Lesson: 1 answer was cut at max_tokens" in caplog.text and "answers were" not in caplog.text


def test_one_failed_request_of_one_row_is_counted_in_the_singular(tmp_path, caplog):
    with Emulator(EmulatorConfig(faults=[Fault("400", rate=1.0, match="BROKEN")])) as emu:
        with caplog.at_level("WARNING", logger="textbookgen.llm"):
            lesson(emu, tmp_path, max_tokens=200)([{"topic": "BROKEN thing"}])
    assert "Lesson: 1 of 1 request failed (n=1 per row), on 1 of 1 row (see .failures)" in caplog.text
