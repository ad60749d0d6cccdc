"""The prompt estimate counts what the providers bill as input beside the messages: tool definitions (and the choice
of one) and a structured output's JSON schema, at the rate of any other prompt text. Left out, a tools- or
schema-heavy run's first requests were held at a fraction of their input against the budgets and the token limits.
Real openai/anthropic clients against the loopback emulator, which bills those parts' JSON as prompt text."""

from __future__ import annotations

import json

import openai
import pytest

from textbookgen.engine import ChatRequest, Generator, estimate_input_tokens
from textbookgen.testing.emulator import Emulator, EmulatorConfig

PRICES = {"gpt-4o-mini": (1000.0, 0.0), "claude-haiku-4-5": (1000.0, 0.0)}  # $0.001 a prompt token, output free
FAST = dict(backoff_initial_s=0.01, backoff_max_s=0.05, progress=False, timeout_s=20.0, concurrency=4)
QUESTION = [{"role": "user", "content": "Write a section on tides."}]


def tool(name: str, provider: str) -> dict:
    """A tool definition with a long description, as agents' tools run (hundreds of tokens each)."""
    schema = {"type": "object", "properties": {"query": {"type": "string", "description": "What to look up. " * 20}},
              "required": ["query"]}
    about = f"Looks up {name} in the reference library and returns the passages that match. " * 8
    if provider == "anthropic":
        return {"name": name, "description": about, "input_schema": schema}
    return {"type": "function", "function": {"name": name, "description": about, "parameters": schema}}


TOOLS = {p: [tool(f"lookup_{i}", p) for i in range(6)] for p in ("openai", "anthropic")}
SCHEMA = {"type": "json_schema", "json_schema": {"name": "section", "schema": {
    "type": "object", "required": ["text"], "additionalProperties": False,
    "properties": {"text": {"type": "string", "description": "The section's prose, in full sentences. " * 120}}}}}


def request(provider: str, heavy: str, i: int = 0) -> ChatRequest:
    """A short question carrying six tool definitions (`heavy` "tools") or a long JSON schema ("schema")."""
    messages = [{"role": "user", "content": f"Write a section on tides, part {i}."}]
    if heavy == "tools":
        return ChatRequest(messages=messages, max_tokens=16, params={"tools": TOOLS[provider]})
    return ChatRequest(messages=messages, max_tokens=16, response_format=SCHEMA)


def chars(value: object) -> int:
    return len(json.dumps(value, ensure_ascii=False))


def test_tools_and_schemas_count_at_the_prompt_rate():
    """Tools, tool_choice, functions and a response_format add their JSON at 4 characters a token (the rounding of
    the total aside); sampling knobs add nothing."""
    bare = estimate_input_tokens(ChatRequest(messages=QUESTION))
    choice = {"type": "tool", "name": "lookup_0"}
    for params in ({"tools": TOOLS["openai"]}, {"tools": TOOLS["anthropic"], "tool_choice": choice},
                   {"functions": [t["function"] for t in TOOLS["openai"]]}, {"response_format": SCHEMA}):
        added = estimate_input_tokens(ChatRequest(messages=QUESTION, params=params)) - bare
        assert abs(added - sum(chars(v) for v in params.values()) / 4) <= 1, params
    knobs = {"stop": ["\n\n"], "top_k": 40, "min_p": 0.1, "presence_penalty": 0.5}
    assert estimate_input_tokens(ChatRequest(messages=QUESTION, params=knobs)) == bare


def test_a_requests_schema_counts_in_the_longer_of_the_forms_it_is_sent_in():
    """As is to OpenAI; to Anthropic as a forced tool (a name, a description, the schema) and the choice of it,
    some tokens longer: the worst case holds the longer."""
    from textbookgen.providers import structured_output_tool

    tool = structured_output_tool(SCHEMA)
    as_tool = chars([tool, {"type": "tool", "name": "section"}])
    assert as_tool > chars(SCHEMA) + 20
    added = estimate_input_tokens(ChatRequest(messages=QUESTION, response_format=SCHEMA))
    added -= estimate_input_tokens(ChatRequest(messages=QUESTION))
    assert abs(added - as_tool / 4) <= 1
    plain = {"type": "json_object"}  # no schema, no tool: sent as is
    added = estimate_input_tokens(ChatRequest(messages=QUESTION, response_format=plain))
    assert abs(added - estimate_input_tokens(ChatRequest(messages=QUESTION)) - chars(plain) / 4) <= 1


def test_a_schema_in_params_is_counted_once_over_the_requests_own():
    """params go over the body as sent: a response_format there replaces the request's, so only it is billed."""
    small = {"type": "json_object"}
    both = ChatRequest(messages=QUESTION, response_format=SCHEMA, params={"response_format": small})
    alone = estimate_input_tokens(ChatRequest(messages=QUESTION, response_format=small))
    assert estimate_input_tokens(both) == alone > estimate_input_tokens(ChatRequest(messages=QUESTION))


def test_wide_characters_in_a_tool_count_as_prompt_text_does():
    """A tool described in Chinese is billed about a token a character, like a Chinese prompt."""
    described = {"name": "lookup", "description": "在参考资料库中查找并返回匹配的段落。" * 20}
    added = estimate_input_tokens(ChatRequest(messages=QUESTION, params={"tools": [described]}))
    added -= estimate_input_tokens(ChatRequest(messages=QUESTION))
    assert added >= len(described["description"])


@pytest.mark.parametrize("heavy", ["tools", "schema"])
def test_the_emulator_bills_tools_and_schemas_as_input(heavy):
    """The emulator's prompt tokens include the tool definitions and the response_format's schema, so the tests
    below meet what a provider bills."""
    with Emulator(EmulatorConfig(latency_median_s=0.0, latency_sigma=0.0)) as emu:
        client = openai.OpenAI(base_url=emu.openai_base_url, api_key="sk-test-key")
        extra = {"tools": TOOLS["openai"]} if heavy == "tools" else {"response_format": SCHEMA}
        billed = [client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, max_tokens=8, **kw)
                  .usage.prompt_tokens for kw in ({}, extra)]
    added = billed[1] - billed[0]
    assert abs(added - sum(chars(v) for v in extra.values()) / 4) <= 2


def short(body: dict) -> str:
    return "Tides rise and fall."


@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("heavy", ["tools", "schema"])
def test_a_budget_close_to_its_end_is_not_overrun_by_tools_or_schemas(heavy, provider, batch, tmp_path):
    """A budget of two requests' prompts (as estimated), four requests, at most four at once: the prompts are mostly
    tools or schema. Estimated from the messages alone, all four used to go out at once (live) or in one batch and
    be billed about a hundred times the budget; now two are answered and two skipped, within the budget."""
    requests = [request(provider, heavy, i) for i in range(4)]
    model = "claude-haiku-4-5" if provider == "anthropic" else "gpt-4o-mini"
    est = estimate_input_tokens(requests[0], provider, model)  # Anthropic's: its tool-use system prompt too
    budget = 2 * est * PRICES[model][0] / 1e6 * (0.5 if batch else 1.0) + 1e-6
    config = EmulatorConfig(latency_median_s=0.01, latency_sigma=0.0, responder=short, batch_latency_s=0.05)
    with Emulator(config) as emu:
        base_url = emu.anthropic_base_url if provider == "anthropic" else emu.openai_base_url
        gen = Generator(provider, model, base_url=base_url, api_key="sk-test-key", journal=tmp_path / "j.sqlite",
                        prices=PRICES, max_cost_usd=budget, batch=batch, batch_poll_s=0.05, **FAST)
        out = gen.run(requests)
        billed = emu.input_tokens
    answered = [r for r in out if r.status == "ok"]
    assert billed == sum(r.input_tokens for r in answered) > 0
    # the requests' prompts are mostly tools or schema: what the messages alone make is a small part of it
    assert estimate_input_tokens(ChatRequest(messages=requests[0].messages)) * len(answered) < billed / 10
    spent = gen.stats["cost_usd"]
    assert spent == pytest.approx(sum(r.cost_usd for r in answered)) and spent <= budget
    assert [r.status for r in out] == ["ok", "ok", "skipped_budget", "skipped_budget"]
