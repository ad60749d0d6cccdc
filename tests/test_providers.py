"""providers.py against the emulator with the real clients: what a model refuses stops the run, a cut tool call
is truncated, a wrong base_url says so, and `ChatRequest.params` reach the request bodies (live and batch)."""

from __future__ import annotations

import pytest

from textbookgen.engine import ChatRequest, Generator
from textbookgen.errors import FatalProviderError
from textbookgen.ratelimit import PROBES
from textbookgen.testing.emulator import Emulator, EmulatorConfig

FAST = dict(backoff_initial_s=0.01, backoff_max_s=0.05, progress=False, timeout_s=20.0)
TERMS = {"type": "json_schema", "json_schema": {"name": "Terms", "schema": {
    "type": "object", "properties": {"terms": {"type": "array", "items": {"type": "string"}}},
    "required": ["terms"]}}}


def reqs(n: int, **kw) -> list[ChatRequest]:
    return [ChatRequest(messages=[{"role": "user", "content": f"Explain topic {i}"}], max_tokens=64, **kw)
            for i in range(n)]


def gen_for(emu: Emulator, provider: str, model: str, tmp_path, **kw) -> Generator:
    base = emu.anthropic_base_url if provider == "anthropic" else emu.openai_base_url
    return Generator(provider, model, base_url=base, api_key="sk-test-key", journal=tmp_path / "j.sqlite",
                     **{**FAST, **kw})


@pytest.mark.parametrize("provider, model, sampling, named", [
    ("openai", "gpt-5-mini", {"temperature": 0.7}, "refuses the request parameter 'temperature'"),
    ("anthropic", "claude-haiku-4-5", {"temperature": 0.8, "top_p": 0.95}, "does not take temperature and top_p "
                                                                           "together: set only one"),
])
def test_a_parameter_the_model_refuses_stops_the_run_naming_it(provider, model, sampling, named, tmp_path):
    with Emulator(EmulatorConfig(latency_median_s=0.001, model_rules=True)) as emu:
        with pytest.raises(FatalProviderError, match=f"{model}' at {provider} {named}") as info:
            gen_for(emu, provider, model, tmp_path).run(reqs(20, **sampling))
        assert emu.received <= PROBES and emu.billed == 0  # not one 400 per item
    assert "\n" not in str(info.value) and "HTTP 400" in str(info.value)


def test_the_same_model_with_what_it_takes_runs(tmp_path):
    with Emulator(EmulatorConfig(latency_median_s=0.001, model_rules=True)) as emu:
        out = gen_for(emu, "anthropic", "claude-haiku-4-5", tmp_path).run(reqs(3, temperature=0.8))
    assert all(r.status in ("ok", "truncated") for r in out)


def test_anthropic_tool_call_cut_at_max_tokens_is_truncated(tmp_path):
    """Structured output from Anthropic is a forced tool call; cut at max_tokens its input is incomplete."""
    request = ChatRequest(messages=[{"role": "user", "content": "List 40 terms about tides."}], max_tokens=30,
                          response_format=TERMS)
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        [r] = gen_for(emu, "anthropic", "claude-haiku-4-5", tmp_path).run([request])
        assert emu.received == 1
    assert r.status == "truncated" and r.finish_reason == "length"


@pytest.mark.parametrize("provider, model, hint", [
    ("openai-compatible", "Qwen/Qwen2.5-7B-Instruct", "serve under /v1"),
    ("anthropic", "claude-haiku-4-5", "adds /v1 itself"),
])
def test_a_base_url_that_serves_nothing_there_says_so(provider, model, hint, tmp_path):
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        base = emu.openai_base_url.removesuffix("/v1") if provider != "anthropic" else emu.openai_base_url
        gen = Generator(provider, model, base_url=base, api_key="sk-test-key", journal=tmp_path / "j.sqlite", **FAST)
        with pytest.raises(FatalProviderError, match="no such endpoint at http://") as info:
            gen.run(reqs(5))
    assert "check base_url" in str(info.value) and hint in str(info.value)
    assert "unknown model" not in str(info.value)


PARAMS = {"openai": ("gpt-4o-mini", {"stop": ["\n\n"], "presence_penalty": 0.5, "frequency_penalty": 0.2}),
          "openai-compatible": ("Qwen/Qwen2.5-7B-Instruct", {"min_p": 0.05, "repetition_penalty": 1.1, "top_k": 20}),
          "anthropic": ("claude-haiku-4-5", {"top_k": 40, "stop_sequences": ["END"]})}


@pytest.mark.parametrize("provider", list(PARAMS))
def test_params_reach_the_request_body(provider, tmp_path):
    model, params = PARAMS[provider]
    with Emulator(EmulatorConfig(latency_median_s=0.001, record_requests=True)) as emu:
        gen_for(emu, provider, model, tmp_path).run(reqs(2, params=params))
        bodies = [r["body"] for r in emu.requests]
    assert len(bodies) == 2 and all(b.items() >= params.items() for b in bodies)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_params_reach_the_batch_request_bodies(provider, tmp_path):
    model, params = PARAMS[provider]
    with Emulator(EmulatorConfig(batch_latency_s=0.05, record_requests=True)) as emu:
        out = gen_for(emu, provider, model, tmp_path, batch=True, batch_poll_s=0.05).run(reqs(2, params=params))
        bodies = [r["body"] for r in emu.requests]
    assert all(r.status in ("ok", "truncated") for r in out)
    assert len(bodies) == 2 and all(b.items() >= params.items() for b in bodies)


@pytest.mark.parametrize("provider, path", [("openai-compatible", "/v1"), ("anthropic", "")])
@pytest.mark.parametrize("http", ["aiohttp", "httpx"])
def test_a_refused_connection_says_cannot_connect_to_the_base_url(provider, path, http):
    """The openai SDK's aiohttp transport raises a timeout for it: "request timed out (Cannot connect ...)"."""
    import asyncio
    import socket

    from textbookgen.errors import RetryableError
    from textbookgen.providers import make_provider

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        base = f"http://127.0.0.1:{s.getsockname()[1]}{path}"  # nothing listens here once closed
    client = make_provider(provider, "m", base_url=base, api_key="sk-test-key", http=http)

    async def ask() -> None:
        try:
            await client.complete(reqs(1)[0])
        finally:
            await client.aclose()

    with pytest.raises(RetryableError) as info:
        asyncio.run(ask())
    assert str(info.value).startswith(f"{provider}: cannot connect to {base} (") and not info.value.reached
    assert "timed out" not in str(info.value)


SYSTEM_LEAD = [{"role": "system", "content": "You write glossaries."}, {"role": "user", "content": "Define entropy"}]


@pytest.mark.parametrize("system, sent", [
    (None, "You write glossaries."),
    ("Be brief.", "Be brief.\n\nYou write glossaries."),  # the field first, then the messages
])
@pytest.mark.parametrize("batch", [False, True])
def test_anthropic_leading_system_messages_go_to_the_system_field(system, sent, batch, tmp_path):
    """The Messages API refuses a role-"system" message first in `messages` (curator-style prompts send one)."""
    with Emulator(EmulatorConfig(latency_median_s=0.001, batch_latency_s=0.05, record_requests=True)) as emu:
        out = gen_for(emu, "anthropic", "claude-haiku-4-5", tmp_path, batch=batch, batch_poll_s=0.05).run(
            [ChatRequest(messages=SYSTEM_LEAD, max_tokens=64, system=system)])
        bodies = [r["body"] for r in emu.requests]
    assert out[0].status in ("ok", "truncated"), out[0].error
    assert [(b["system"], b["messages"]) for b in bodies] == [(sent, SYSTEM_LEAD[1:])]


def test_anthropic_system_content_blocks_join_the_field_as_blocks():
    from textbookgen.providers import anthropic_system

    cached = [{"type": "text", "text": "Long rules.", "cache_control": {"type": "ephemeral"}}]
    assert anthropic_system("Be brief.", [{"role": "system", "content": cached}, *SYSTEM_LEAD[1:]]) == (
        [{"type": "text", "text": "Be brief."}, *cached], SYSTEM_LEAD[1:])


def test_anthropic_body_without_leading_system_messages_is_unchanged():
    """Bodies of requests without a leading system message are the same as before (batch lines, emulator keys);
    a later one is a mid-conversation system message, sent where it is (the API takes it on Opus 4.8)."""
    from textbookgen.providers import AnthropicProvider

    later = [{"role": "user", "content": "Define entropy"}, {"role": "system", "content": "Answer in French."}]
    provider = AnthropicProvider("claude-opus-4-8", "sk-test-key", "http://127.0.0.1:9", 5.0, "httpx")
    for messages in (SYSTEM_LEAD[1:], later):
        assert provider.body(ChatRequest(messages=messages, max_tokens=64, system="Be brief.")) == {
            "model": "claude-opus-4-8", "messages": messages, "max_tokens": 64, "system": "Be brief."}
