"""The emulator answers as the real providers do where users' code looks: tool calls, structured outputs,
parameter validation, logprobs, n>1 streams and each provider's own error wording (real SDK clients)."""

from __future__ import annotations

import json
import math

import anthropic
import openai
import pydantic
import pytest

from textbookgen.testing.emulator import Emulator, EmulatorConfig, Fault, go_duration

USER = [{"role": "user", "content": "Give one topic about rivers."}]
SCHEMA = {"type": "object", "properties": {"title": {"type": "string"}, "score": {"type": "integer"}},
          "required": ["title", "score"], "additionalProperties": False}
OPENAI_TOOLS = [{"type": "function", "function": {"name": "record", "parameters": SCHEMA}},
                {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}}]
ANTHROPIC_TOOLS = [{"name": "record", "description": "Record a topic.", "input_schema": SCHEMA},
                   {"name": "other", "description": "Something else.", "input_schema": {"type": "object"}}]


@pytest.fixture
def emu():
    with Emulator(EmulatorConfig(latency_median_s=0.001, latency_sigma=0.0)) as emulator:
        yield emulator


def oa(emu: Emulator, key: str = "sk-test") -> openai.OpenAI:
    return openai.OpenAI(base_url=emu.openai_base_url, api_key=key, max_retries=0, timeout=10)


def an(emu: Emulator, key: str = "sk-ant-test") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=emu.anthropic_base_url, api_key=key, max_retries=0, timeout=10)


def chat(emu: Emulator, **kw):
    return oa(emu).chat.completions.create(model="gpt-4o-mini", messages=kw.pop("messages", USER), **kw)


def message(emu: Emulator, **kw):
    return an(emu).messages.create(model="claude-haiku-4-5", messages=USER, max_tokens=kw.pop("max_tokens", 200), **kw)


# ----- 1, 5c: OpenAI tool_choice ------------------------------------------------------------------------

@pytest.mark.parametrize("choice", ["auto", "none"])
def test_openai_string_tool_choice_that_forces_nothing_is_answered_in_text(emu, choice):
    c = chat(emu, tools=OPENAI_TOOLS, tool_choice=choice, max_tokens=60)
    assert c.choices[0].message.content and c.choices[0].message.tool_calls is None
    assert c.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("choice, finish", [({"type": "function", "function": {"name": "record"}}, "stop"),
                                            ("required", "tool_calls")])
def test_openai_forced_tool_returns_a_tool_call(emu, choice, finish):
    c = chat(emu, tools=OPENAI_TOOLS, tool_choice=choice, max_tokens=200)
    [call] = c.choices[0].message.tool_calls
    assert c.choices[0].message.content is None and c.choices[0].finish_reason == finish
    assert call.id.startswith("call_") and call.type == "function" and call.function.name == "record"
    assert set(json.loads(call.function.arguments)) == {"title", "score"}


def test_openai_forced_tool_streams_its_arguments(emu):
    with oa(emu).chat.completions.stream(model="gpt-4o-mini", messages=USER, tools=OPENAI_TOOLS, max_tokens=200,
                                         tool_choice={"type": "function", "function": {"name": "record"}}) as s:
        final = s.get_final_completion()
    [call] = final.choices[0].message.tool_calls
    assert call.function.name == "record" and set(json.loads(call.function.arguments)) == {"title", "score"}
    assert final.choices[0].message.content is None


# ----- 2, 3: OpenAI request validation --------------------------------------------------------------------

@pytest.mark.parametrize("params, param", [
    ({"n": 0}, "n"), ({"n": 129}, "n"), ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"), ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"temperature": 2.5}, "temperature"), ({"temperature": -0.1}, "temperature"), ({"top_p": 1.5}, "top_p"),
    ({"top_p": -1}, "top_p"), ({"top_logprobs": 3}, "top_logprobs"), ({"logprobs": True, "top_logprobs": 21},
                                                                      "top_logprobs"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"messages": [{"role": "bot", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": "hi"}, {"content": "no role"}]}, "messages[1].role"),
])
def test_openai_rejects_what_the_real_api_rejects(emu, params, param):
    messages = params.pop("messages", USER)
    with pytest.raises(openai.BadRequestError) as e:
        chat(emu, messages=messages, extra_body=params)
    assert e.value.param == param and e.value.type == "invalid_request_error"
    assert emu.billed == 0


def test_openai_accepts_the_edges_of_the_documented_ranges(emu):
    messages = [{"role": "developer", "content": "Be brief."}, *USER]
    c = chat(emu, messages=messages, temperature=2, top_p=0, stop=["a1", "b2", "c3", "d4"], n=128, max_tokens=1)
    assert len(c.choices) == 128


# ----- 4, 5a, 5b, 8: Anthropic ------------------------------------------------------------------------------

class Topic(pydantic.BaseModel):
    title: str
    score: int


def test_anthropic_parse_with_output_format_gets_schema_valid_json(emu):
    parsed = an(emu).messages.parse(model="claude-haiku-4-5", max_tokens=200, messages=USER, output_format=Topic)
    assert isinstance(parsed.parsed_output, Topic) and parsed.stop_reason == "end_turn"
    raw = message(emu, output_config={"format": {"type": "json_schema", "schema": SCHEMA}})
    assert set(json.loads(raw.content[0].text)) == {"title", "score"}


def test_anthropic_forced_tool_streams_a_tool_use_block(emu):
    with an(emu).messages.stream(model="claude-haiku-4-5", max_tokens=300, messages=USER, tools=ANTHROPIC_TOOLS,
                                 tool_choice={"type": "tool", "name": "record"}) as s:
        events = [e.type for e in s]
        final = s.get_final_message()
    [block] = final.content
    assert final.stop_reason == "tool_use" and block.type == "tool_use" and block.name == "record"
    assert block.id.startswith("toolu_") and set(block.input) == {"title", "score"}
    assert "input_json" in events and "text" not in events


def test_anthropic_tool_choice_any_forces_the_first_tool(emu):
    m = message(emu, tools=ANTHROPIC_TOOLS, tool_choice={"type": "any"})
    assert m.stop_reason == "tool_use" and m.content[0].name == "record"


def test_anthropic_max_tokens_zero_only_bills_the_input(emu):
    m = message(emu, max_tokens=0)
    assert m.content == [] and m.stop_reason == "max_tokens" and m.usage.output_tokens == 0
    assert emu.billed == 1 and emu.output_tokens == 0 and emu.input_tokens == m.usage.input_tokens > 0


# ----- 6, 7: n > 1 streams, logprobs ------------------------------------------------------------------------

def test_openai_streams_n_choices_by_index(emu):
    stream = chat(emu, n=3, max_tokens=40, stream=True, stream_options={"include_usage": True})
    texts, finishes, usage = ["", "", ""], [None, None, None], None
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            finishes[choice.index] = choice.finish_reason or finishes[choice.index]
        usage = chunk.usage or usage
    assert all(texts) and len(set(texts)) == 3 and None not in finishes
    assert usage.completion_tokens == sum(-(-len(t) // 4) for t in texts) == emu.output_tokens


def test_openai_logprobs_have_the_real_shape_and_match_the_text(emu):
    c = chat(emu, logprobs=True, top_logprobs=3, max_tokens=60)
    tokens = c.choices[0].logprobs.content
    assert "".join(t.token for t in tokens) == c.choices[0].message.content
    assert len(tokens) == c.usage.completion_tokens
    for t in tokens:
        assert t.bytes == list(t.token.encode()) and t.logprob <= 0 and len(t.top_logprobs) == 3
        assert t.top_logprobs[0].token == t.token and sorted(t.top_logprobs, key=lambda x: -x.logprob) == t.top_logprobs
        assert sum(math.exp(x.logprob) for x in t.top_logprobs) <= 1
    streamed = chat(emu, logprobs=True, max_tokens=60, stream=True)
    text, joined = "", ""
    for chunk in streamed:
        text += chunk.choices[0].delta.content or ""
        joined += "".join(t.token for t in (chunk.choices[0].logprobs.content if chunk.choices[0].logprobs else []))
    assert text and joined == text
    assert chat(emu, max_tokens=20).choices[0].logprobs is None


# ----- 9: each provider's own error wording, rate-limit numbers, Go durations ------------------------------

def test_injected_faults_use_each_providers_wording():
    with Emulator(EmulatorConfig(latency_median_s=0.001, faults=[Fault("429", rate=1.0)])) as emu:
        with pytest.raises(openai.RateLimitError) as o:
            chat(emu)
        with pytest.raises(anthropic.RateLimitError) as a:
            message(emu)
    assert "platform.openai.com/account/billing" in o.value.message and o.value.code == "rate_limit_exceeded"
    assert "openai" not in a.value.message and "docs.claude.com" in a.value.message
    with Emulator(EmulatorConfig(latency_median_s=0.001, faults=[Fault("500", rate=1.0)], api_keys=["k"])) as emu:
        with pytest.raises(anthropic.AuthenticationError) as auth:
            an(emu, key="bad").messages.create(model="claude-haiku-4-5", messages=USER, max_tokens=10)
        with pytest.raises(anthropic.InternalServerError) as server:
            an(emu, key="k").messages.create(model="claude-haiku-4-5", messages=USER, max_tokens=10)
    assert auth.value.body["error"]["message"] == "invalid x-api-key"
    assert server.value.body["error"] == {"type": "api_error", "message": "Internal server error"}


def test_rate_limit_429_counts_agree_with_the_headers():
    with Emulator(EmulatorConfig(latency_median_s=0.001, rpm=2)) as emu:
        chat(emu, max_tokens=5)
        chat(emu, max_tokens=5)
        with pytest.raises(openai.RateLimitError) as e:
            chat(emu, max_tokens=5)
    assert e.value.response.headers["x-ratelimit-remaining-requests"] == "0"
    assert "Limit 2, Used 2, Requested 1." in e.value.message


def test_go_durations_below_a_millisecond_and_to_the_millisecond_above():
    assert [go_duration(s) for s in (0, 0.0004, 0.02, 8.64, 29.989531)] == ["0s", "400µs", "20ms", "8.64s", "29.99s"]


# ----- 10: parameters particular models refuse (model_rules), tool calls cut at max_tokens ------------------

@pytest.fixture
def strict():
    with Emulator(EmulatorConfig(latency_median_s=0.001, latency_sigma=0.0, model_rules=True)) as emulator:
        yield emulator


@pytest.mark.parametrize("params, param, code, words", [
    ({"temperature": 0.5}, "temperature", "unsupported_value",
     "Unsupported value: 'temperature' does not support 0.5 with this model. Only the default (1) value is supported."),
    ({"max_tokens": 50}, "max_tokens", "unsupported_parameter",
     "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead."),
])
def test_model_rules_openai_reasoning_models_refuse_sampling_in_openais_words(strict, params, param, code, words):
    with pytest.raises(openai.BadRequestError) as e:
        oa(strict).chat.completions.create(model="gpt-5-mini", messages=USER, **params)
    assert e.value.body == {"message": words, "type": "invalid_request_error", "param": param, "code": code}
    assert oa(strict).chat.completions.create(model="gpt-5-mini", messages=USER, temperature=1,
                                              max_completion_tokens=20).choices[0].message.content
    assert chat(strict, temperature=0.5, max_tokens=20).choices[0].message.content  # gpt-4o-mini takes both
    assert strict.billed == 2


def test_model_rules_claude_45_takes_temperature_or_top_p_not_both(strict):
    with pytest.raises(anthropic.BadRequestError) as e:
        message(strict, extra_body={"temperature": 0.8, "top_p": 0.95})
    assert e.value.body["error"] == {"type": "invalid_request_error", "message": "`temperature` and `top_p` cannot "
                                     "both be specified for this model. Please use only one."}
    assert message(strict, extra_body={"temperature": 0.8}).content
    old = an(strict).messages.create(model="claude-3-5-haiku-latest", messages=USER, max_tokens=20,
                                     extra_body={"temperature": 0.8, "top_p": 0.95})
    assert old.content and strict.billed == 2


def test_without_model_rules_every_model_takes_every_parameter(emu):
    assert oa(emu).chat.completions.create(model="gpt-5-mini", messages=USER, temperature=0.5, max_tokens=20).choices
    assert message(emu, extra_body={"temperature": 0.8, "top_p": 0.95}).content


def test_anthropic_forced_tool_cut_at_max_tokens_is_an_incomplete_tool_use_block(emu):
    """Anthropic's answer to a forced tool call that hits max_tokens: stop_reason max_tokens and a tool_use
    block whose input holds what was complete before the cut (streamed: the partial JSON)."""
    terms = [{"name": "terms", "description": "Record terms.", "input_schema": {
        "type": "object", "properties": {"terms": {"type": "array", "items": {"type": "string"}}}}}]
    kw = dict(model="claude-haiku-4-5", max_tokens=30, tools=terms, tool_choice={"type": "tool", "name": "terms"},
              messages=[{"role": "user", "content": "List 40 terms about tides."}])
    m = an(emu).messages.create(**kw)
    [block] = m.content
    assert m.stop_reason == "max_tokens" and block.type == "tool_use" and block.name == "terms"
    assert isinstance(block.input, dict) and m.usage.output_tokens <= 30
    with an(emu).messages.stream(**kw) as s:
        final = s.get_final_message()
    [block] = final.content
    assert final.stop_reason == "max_tokens" and block.type == "tool_use" and isinstance(block.input, dict)


# ----- role-"system" messages in Anthropic's messages ---------------------------------------------------------

UNEXPECTED_SYSTEM = ('messages: Unexpected role "system". The Messages API accepts a top-level `system` parameter, '
                     'not "system" as an input message role.')
LATER_SYSTEM = [*USER, {"role": "system", "content": "Answer in French."}]


@pytest.mark.parametrize("messages", [[{"role": "system", "content": "Be brief."}, *USER], LATER_SYSTEM])
def test_anthropic_refuses_a_system_role_in_messages_before_opus_4_8(emu, messages):
    with pytest.raises(anthropic.BadRequestError) as e:
        an(emu).messages.create(model="claude-haiku-4-5", messages=messages, max_tokens=20)
    assert e.value.body["type"] == "error" and e.value.body["request_id"].startswith("req_")
    assert e.value.body["error"] == {"type": "invalid_request_error", "message": UNEXPECTED_SYSTEM}
    assert emu.billed == 0


@pytest.mark.parametrize("messages, words", [
    ([{"role": "system", "content": "Be brief."}, *USER], "messages.0: a system message cannot be the first"),
    ([*LATER_SYSTEM, {"role": "user", "content": "Go on."}], "messages.1: a system message must be the last"),
    ([*USER, {"role": "assistant", "content": "Rivers."}, {"role": "system", "content": "Shorter."}],
     "messages.2: role 'system' must follow a 'user' message"),
])
def test_anthropic_opus_4_8_places_mid_conversation_system_messages_by_its_rules(emu, messages, words):
    with pytest.raises(anthropic.BadRequestError, match=words):
        an(emu).messages.create(model="claude-opus-4-8", messages=messages, max_tokens=20)
    assert an(emu).messages.create(model="claude-opus-4-8", messages=LATER_SYSTEM, max_tokens=20).content
    assert emu.billed == 1
