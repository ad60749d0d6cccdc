"""Review of the emulator's schema answers and train-tokenizer's holdout check: a recursive union of models
(`Union[Expr, Num]`) that never ended, `pattern` and `format: ipv6` strings a strict model refused, and a
holdout_tokens counted with the tokenizer train-tokenizer is about to replace."""

from __future__ import annotations

import ipaddress
import json
import random
import re

import pytest
from pydantic import BaseModel, Field

from textbookgen.llm import LLM
from textbookgen.testing import responder
from textbookgen.testing.emulator import Emulator
from textbookgen.testing.responder import from_schema

CALLS = 20_000  # values one answer may take: the trees below need a few hundred


class Num(BaseModel):
    value: float


class Expr(BaseModel):
    op: str
    left: Expr | Num
    right: Expr | Num


class Pair(BaseModel):
    """No finite instance: both children are required and are Pairs again."""

    left: Pair
    right: Pair


class Ticket(BaseModel):
    code: str = Field(pattern=r"^[A-Z]{3}-\d{4}$")
    slug: str = Field(pattern=r"^[a-z]+(-[a-z]+)*$", min_length=12, max_length=20)
    version: str = Field(pattern=r"^\d+\.\d+(\.\d+)?$")
    host: ipaddress.IPv6Address
    tags: list[str] = Field(min_length=2, json_schema_extra={"items": {"type": "string", "pattern": "^#[a-z]{2,5}$"}})


@pytest.fixture
def counted(monkeypatch):
    """from_schema that fails, rather than runs on, past CALLS values (a tree that doubles at every level)."""
    calls = [0]
    value = responder._Instance.value

    def counting(self, *args, **kwargs):
        calls[0] += 1
        assert calls[0] < CALLS, "the answer does not end"
        return value(self, *args, **kwargs)

    monkeypatch.setattr(responder._Instance, "value", counting)

    def answer(schema: dict, seed: int):
        calls[0] = 0
        return from_schema(schema, "Algebra", None, random.Random(seed))

    return answer


def test_a_recursive_union_of_models_ends_in_the_other_model(counted):
    schema = Expr.model_json_schema()
    for seed in range(40):  # seed 2 drew Expr past the nesting depth on both sides: 2**42 values
        Expr.model_validate_json(json.dumps(counted(schema, seed)))


def test_a_model_required_inside_itself_twice_stops_unfilled(counted):
    assert isinstance(counted(Pair.model_json_schema(), 0), dict)


def test_pattern_and_ipv6_strings_are_valid_and_repeatable(counted):
    schema = Ticket.model_json_schema()
    assert schema["properties"]["tags"]["items"]["pattern"]  # the item pattern reaches the schema
    for seed in range(30):
        ticket = Ticket.model_validate_json(json.dumps(counted(schema, seed)))
        assert all(re.fullmatch(r"#[a-z]{2,5}", t) for t in ticket.tags)
    assert counted(schema, 7) == counted(schema, 7)


def test_the_emulator_answers_a_patterned_model_a_strict_client_accepts(tmp_path):
    class Task(LLM):
        def prompt(self, row):
            return f"File a ticket about {row['topic']}."

        def parse(self, row, response):
            return {"answer": response.model_dump_json()}

    with Emulator() as emu:
        task = Task("gpt-4o-mini", "openai", response_format=Ticket, base_url=emu.openai_base_url, api_key="sk-test",
                    progress=False, journal=tmp_path / "t.sqlite", max_tokens=2000, schema_retries=0)
        table = task([{"topic": t} for t in ("photosynthesis", "plate tectonics", "recursion")])
    assert not task.failures and table.height == 3
