"""What the first estimate and the worst-case budget hold missed: input a server bills that the request body does
not show (Anthropic's tool-use system prompt, the documents vLLM's chat template renders), and a dollar budget
on a model with no price, which could never stop a run. Each through the real clients against the emulator."""

from __future__ import annotations

import json

import anthropic
import openai
import pytest
from typer.testing import CliRunner

from textbookgen.cli import app
from textbookgen.engine import ChatRequest, Generator, estimate_input_tokens
from textbookgen.testing.emulator import Emulator, EmulatorConfig
from textbookgen.testing.responder import prompt_tokens

FAST = dict(backoff_initial_s=0.01, backoff_max_s=0.05, progress=False, timeout_s=20.0, concurrency=1)
SCHEMA = {"type": "json_schema", "json_schema": {"name": "answer", "schema": {
    "type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]}}}
TOOL = {"name": "answer", "description": "Give the answer.",
        "input_schema": {"type": "object", "properties": {"title": {"type": "string"}}}}


def _schemas_tokens(*parts: object) -> int:
    """The tokens the emulator bills for a body's tools and tool_choice as sent (their JSON)."""
    return prompt_tokens("\n".join(json.dumps(p, ensure_ascii=False) for p in parts if p))


@pytest.mark.parametrize("model, choice, hidden", [
    ("claude-sonnet-4-5", {"type": "tool", "name": "answer"}, 313),
    ("claude-sonnet-4-5", {"type": "auto"}, 346),
    ("claude-haiku-4-5-20251001", None, 346),  # no tool_choice: auto
    ("claude-3-haiku-20240307", {"type": "any"}, 340),
    ("claude-3-opus-latest", {"type": "auto"}, 530),
])
def test_the_emulator_bills_anthropics_tool_use_system_prompt_by_model_and_tool_choice(model, choice, hidden):
    messages = [{"role": "user", "content": "Name one topic in algebra."}]
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        client = anthropic.Anthropic(base_url=emu.anthropic_base_url, api_key="sk-ant-test", max_retries=0)
        plain = client.messages.create(model=model, max_tokens=50, messages=messages).usage.input_tokens
        extra = {"tool_choice": choice} if choice else {}
        tooled = client.messages.create(model=model, max_tokens=50, messages=messages, tools=[TOOL], **extra)
        counted = client.messages.count_tokens(model=model, messages=messages, tools=[TOOL], **extra).input_tokens
    assert tooled.usage.input_tokens - plain - _schemas_tokens([TOOL], choice) == hidden
    assert counted == tooled.usage.input_tokens  # count_tokens counts what a request bills


def test_a_structured_anthropic_request_is_held_with_the_hidden_tool_prompt(tmp_path):
    """Anthropic's structured output is a forced tool: 313 tokens more input than the body holds. A budget that fits
    the body's worst case but not the billed one sent it, and the run paid past its max_cost_usd."""
    req = ChatRequest(messages=[{"role": "user", "content": "Name one topic in algebra."}], max_tokens=10,
                      response_format=SCHEMA)
    body_worst = estimate_input_tokens(req) * 3e-6 + 10 * 15e-6  # claude-sonnet-4-5: $3 / $15 per 1M tokens
    budget = body_worst + 100 * 3e-6  # room for 100 tokens more input, not for the 313 Anthropic adds
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        gen = Generator("anthropic", "claude-sonnet-4-5", base_url=emu.anthropic_base_url, api_key="sk-ant-test",
                        journal=tmp_path / "j.sqlite", max_cost_usd=budget, **FAST)
        [held] = gen.run([req])
        assert held.status == "skipped_budget" and emu.billed == 0  # what it would have billed: over the budget
        roomy = Generator("anthropic", "claude-sonnet-4-5", base_url=emu.anthropic_base_url, api_key="sk-ant-test",
                          journal=tmp_path / "j2.sqlite", max_cost_usd=budget + 313 * 3e-6, **FAST)
        [sent] = roomy.run([req])
        assert emu.billed == 1  # sent (its answer cut at max_tokens 10, as paid for)
    assert sent.status in ("ok", "truncated") and sent.cost_usd <= budget + 313 * 3e-6
    assert sent.input_tokens >= 313 + prompt_tokens(req.messages[0]["content"])


def test_the_emulator_bills_vllm_documents_as_prompt_but_not_guided_decoding():
    """vLLM renders `documents` into the prompt through the chat template; guided_json / guided_regex /
    guided_choice / structured_outputs constrain the output and add no prompt token."""
    messages = [{"role": "user", "content": "Summarise the document."}]
    docs = [{"title": "Fractions", "text": "A fraction names parts of a whole. " * 40}]
    with Emulator(EmulatorConfig(latency_median_s=0.001, send_headers=False)) as emu:
        client = openai.OpenAI(base_url=emu.openai_base_url, api_key="EMPTY", max_retries=0)

        def billed(**extra: object) -> int:
            answer = client.chat.completions.create(model="my/llm", messages=messages, max_tokens=20, extra_body=extra)
            return answer.usage.prompt_tokens

        plain = billed()
        assert billed(documents=docs) - plain == _schemas_tokens(docs)
        guided = {"guided_json": SCHEMA["json_schema"]["schema"], "guided_regex": "[a-z]+",
                  "guided_choice": ["yes", "no"], "structured_outputs": {"choice": ["yes", "no"]}}
        assert all(billed(**{k: v}) == plain for k, v in guided.items())


def test_vllm_documents_are_held_against_the_budget_and_guided_decoding_is_not(tmp_path):
    """A long `documents` list was left out of the first estimate and the hold: the run sent a request whose
    rendered prompt cost several times what the budget had room for."""
    docs = [{"title": "Fractions", "text": "A fraction names parts of a whole. " * 100}]  # ~900 tokens
    base = ChatRequest(messages=[{"role": "user", "content": "Summarise the document."}], max_tokens=10)
    room = (estimate_input_tokens(base) + 200 + 10) * 1e-6  # $1 per 1M tokens: the prompt, 200 more, the answer
    guided = ChatRequest(messages=base.messages, max_tokens=10,
                         params={"guided_json": {"type": "object", "properties": {"t": {"type": "string"}}}})
    with_docs = ChatRequest(messages=base.messages, max_tokens=10, params={"documents": docs})
    with Emulator(EmulatorConfig(latency_median_s=0.001, send_headers=False)) as emu:
        gen = Generator("openai-compatible", "my/llm", base_url=emu.openai_base_url, journal=tmp_path / "j.sqlite",
                        max_cost_usd=room, prices={"my/llm": (1.0, 1.0)}, **FAST)
        [held] = gen.run([with_docs])
        assert held.status == "skipped_budget" and emu.billed == 0
        gen2 = Generator("openai-compatible", "my/llm", base_url=emu.openai_base_url, journal=tmp_path / "j2.sqlite",
                         max_cost_usd=room, prices={"my/llm": (1.0, 1.0)}, **FAST)
        [sent] = gen2.run([guided])  # its schema is no prompt: it fits
        assert emu.billed == 1
    assert sent.status in ("ok", "truncated") and sent.cost_usd <= room


def test_a_dollar_budget_on_a_model_with_no_price_is_refused_with_how_to_price_it(tmp_path):
    with pytest.raises(ValueError, match=r"no known price.*--price my-local-model=IN,OUT"):
        Generator("openai-compatible", "my-local-model", base_url="http://127.0.0.1:9/v1", max_cost_usd=5)
    Generator("openai-compatible", "my-local-model", base_url="http://127.0.0.1:9/v1", max_cost_usd=5,
              prices={"my-local-model": (0.0, 0.0)})  # free on purpose: a price
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "x"}\n{"prompt": "y"}\n')
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        cli = ["generate", str(prompts), "--provider", "openai-compatible", "--model", "my/llm", "--base-url",
               emu.openai_base_url, "--no-progress", "--max-cost", "1", "--out", str(tmp_path / "o.jsonl")]
        refused = CliRunner().invoke(app, cli)
        assert refused.exit_code == 1 and emu.received == 0, refused.output
        assert "error: " in refused.output and "--price my/llm=IN,OUT" in refused.output
        priced = CliRunner().invoke(app, [*cli, "--price", "my/llm=0,0"])
        assert priced.exit_code == 0 and emu.billed == 2, priced.output


def test_a_grow_plan_with_a_dollar_budget_on_an_unpriced_model_still_needs_no_key(tmp_path, monkeypatch):
    """Plans send nothing: they show the estimate and say a run would be refused, without a key or a price."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    src = tmp_path / "t.yaml"
    src.write_text("Mathematics:\n  - Algebra\n  - Geometry\n")
    res = CliRunner().invoke(app, ["topics", "grow", str(src), str(tmp_path / "g.yaml"), "--target", "20", "--model",
                                   "my/llm", "--provider", "openai-compatible", "--max-cost", "1", "--plan"])
    assert res.exit_code == 0, res.output
    assert "my/llm is not in the price table" in res.output and "a run with --max-cost is refused" in res.output
