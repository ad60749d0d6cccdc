"""The provider emulator against the real `openai` and `anthropic` clients, on loopback."""

from __future__ import annotations

import asyncio
import doctest
import json
import math
import re
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from datetime import datetime

import anthropic
import openai
import pytest

from textbookgen.testing.emulator import Emulator, EmulatorConfig, Fault, go_duration
from textbookgen.testing.responder import default_responder, judge_score, requested_count, subject_of

USER = [{"role": "user", "content": "Write a short textbook section about the water cycle."}]


def oa(emu: Emulator, **kw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=emu.openai_base_url, api_key=kw.pop("api_key", "sk-test"),
                              max_retries=kw.pop("max_retries", 0), timeout=kw.pop("timeout", 10.0))


def an(emu: Emulator, **kw) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=emu.anthropic_base_url, api_key=kw.pop("api_key", "sk-ant-test"),
                                    max_retries=kw.pop("max_retries", 0), timeout=kw.pop("timeout", 10.0))


async def chat(client: openai.AsyncOpenAI, messages=USER, **kw):
    return await client.chat.completions.create(model=kw.pop("model", "gpt-4o-mini"), messages=messages,
                                                max_tokens=kw.pop("max_tokens", 200), **kw)


async def msg(client: anthropic.AsyncAnthropic, messages=USER, **kw):
    return await client.messages.create(model=kw.pop("model", "claude-haiku-4-5"), messages=messages,
                                        max_tokens=kw.pop("max_tokens", 200), **kw)


def cfg(**kw) -> EmulatorConfig:
    return EmulatorConfig(latency_median_s=kw.pop("latency_median_s", 0.002), latency_sigma=0.3, **kw)


def test_openai_round_trip_fields_usage_and_billing():
    with Emulator(cfg()) as emu:
        async def go():
            client = oa(emu)
            raw = await client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=USER, max_tokens=300)
            return raw.headers, raw.parse(), await chat(client, max_tokens=300)

        headers, c, again = asyncio.run(go())
        assert c.id.startswith("chatcmpl-") and c.object == "chat.completion" and c.model == "gpt-4o-mini"
        assert c.created > 1_700_000_000 and c.system_fingerprint.startswith("fp_")
        assert c.choices[0].finish_reason == "stop" and c.choices[0].message.role == "assistant"
        text = c.choices[0].message.content
        assert "water cycle" in text.lower() and 50 < len(text) <= 300 * 4
        assert again.choices[0].message.content == text  # deterministic in the request
        assert c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens
        assert headers["x-request-id"].startswith("req_")
        assert emu.received == emu.billed == 2 and emu.duplicates == 1
        assert emu.output_tokens == 2 * c.usage.completion_tokens
        assert emu.input_tokens == 2 * c.usage.prompt_tokens
        [(key, n)] = emu.billed_keys.items()
        assert n == 2 and emu.tokens_by_key[key] == [2 * c.usage.prompt_tokens, 2 * c.usage.completion_tokens]


def test_anthropic_round_trip_blocks_usage_and_prefill():
    async def go(emu):
        client = an(emu)
        m = await msg(client, system="You are a careful textbook author.")
        listed = await msg(client, messages=[{"role": "user", "content": "List 7 subtopics of optics."},
                                             {"role": "assistant", "content": "1."}], max_tokens=400)
        return m, listed

    async def main():
        async with Emulator(cfg()) as emu:  # the async form, on the running loop
            return (*await go(emu), emu.billed, emu.output_tokens)

    m, listed, billed, output_tokens = asyncio.run(main())
    assert m.id.startswith("msg_") and m.type == "message" and m.role == "assistant"
    assert m.stop_reason == "end_turn" and m.stop_sequence is None
    assert m.content[0].type == "text" and "water cycle" in m.content[0].text.lower()
    assert m.usage.input_tokens > 0 and 0 < m.usage.output_tokens <= 200
    assert billed == 2 and output_tokens == m.usage.output_tokens + listed.usage.output_tokens
    assert listed.content[0].text.startswith(" ")  # continues after the prefilled "1."
    assert len(("1." + listed.content[0].text).splitlines()) == 7


def test_models_listing_and_retrieval():
    with Emulator(cfg(models=["gpt-4o-mini", "claude-haiku-4-5"])) as emu:
        async def go():
            models = await oa(emu).models.list()
            one = await oa(emu).models.retrieve("gpt-4o-mini")
            amodels = await an(emu).models.list()
            return [m.id for m in models.data], one, [m.id for m in amodels.data]

        ids, one, aids = asyncio.run(go())
        with pytest.raises(openai.NotFoundError):
            asyncio.run(oa(emu).models.retrieve("gpt-nonexistent"))
    assert ids == aids == ["gpt-4o-mini", "claude-haiku-4-5"] and one.object == "model"


def test_busy_port_is_a_clear_error():
    with Emulator(cfg()) as emu, pytest.raises(OSError, match="cannot listen on 127.0.0.1"):
        with Emulator(cfg(), port=emu.port):
            pass


@pytest.mark.parametrize("flavour", ["openai", "anthropic"])
def test_auth_and_unknown_model_errors(flavour):
    with Emulator(cfg(api_keys={"good-key"}, models=["gpt-4o-mini", "claude-haiku-4-5"])) as emu:
        call, make = (chat, oa) if flavour == "openai" else (msg, an)
        errors = openai if flavour == "openai" else anthropic
        with pytest.raises(errors.AuthenticationError) as auth:
            asyncio.run(call(make(emu, api_key="bad-key")))
        with pytest.raises(errors.NotFoundError) as missing:
            asyncio.run(call(make(emu, api_key="good-key"), model="no-such-model"))
        ok = asyncio.run(call(make(emu, api_key="good-key")))
        assert ok is not None and emu.billed == 1 and emu.received == 3
    if flavour == "openai":
        assert auth.value.code == "invalid_api_key" and missing.value.code == "model_not_found"
    else:
        assert auth.value.body["error"]["type"] == "authentication_error"
        assert missing.value.body["error"]["type"] == "not_found_error"
    if flavour == "openai":  # as OpenAI does, part of a refused key is echoed (a short one whole): textbookgen redacts it
        assert "Incorrect API key provided: bad-key." in str(auth.value)
    else:
        assert "bad-key" not in str(auth.value)


def test_openai_401_echoes_the_refused_keys_first_8_and_last_4_characters():
    key = "sk-proj-0123456789abcdefWXYZ"
    with Emulator(cfg(api_keys={"good-key"})) as emu, pytest.raises(openai.AuthenticationError) as auth:
        asyncio.run(chat(oa(emu, api_key=key)))
    assert f"Incorrect API key provided: sk-proj-{'*' * 16}WXYZ." in auth.value.message


def test_bad_requests_are_400():
    with Emulator(cfg()) as emu:
        async def go():
            with pytest.raises(openai.BadRequestError):
                await oa(emu).chat.completions.create(model="gpt-4o-mini", messages=[])
            with pytest.raises(anthropic.BadRequestError):
                await an(emu).messages.create(model="claude-haiku-4-5", messages=USER, max_tokens=-1)

        asyncio.run(go())
        assert emu.billed == 0 and emu.outcomes["400"] == 2


ERROR_FAULTS = {
    # kind: (OpenAI exception, Anthropic exception)
    "429": (openai.RateLimitError, anthropic.RateLimitError),
    "500": (openai.InternalServerError, anthropic.InternalServerError),
    "502": (openai.InternalServerError, anthropic.InternalServerError),
    "503": (openai.InternalServerError, anthropic.ServiceUnavailableError),
    "529": (openai.InternalServerError, anthropic.OverloadedError),
    "quota": (openai.RateLimitError, anthropic.PaymentRequiredError),
    "400": (openai.BadRequestError, anthropic.BadRequestError),
    "content_filter": (openai.BadRequestError, anthropic.BadRequestError),
    "timeout": (openai.APITimeoutError, anthropic.APITimeoutError),
    "reset": (openai.APIConnectionError, anthropic.APIConnectionError),
    "bad_json": (json.JSONDecodeError, json.JSONDecodeError),
}


@pytest.mark.parametrize("kind", list(ERROR_FAULTS))
def test_each_error_fault_is_the_clients_exception(kind):
    openai_exc, anthropic_exc = ERROR_FAULTS[kind]
    timeout = 0.3 if kind == "timeout" else 10.0  # a short one only where it is the fault: a loaded CI box is slow
    with Emulator(cfg(faults=[Fault(kind, rate=1.0)], hang_s=30)) as emu:
        async def go():
            with pytest.raises(openai_exc) as e1:
                await chat(oa(emu, timeout=timeout))
            with pytest.raises(anthropic_exc) as e2:
                await msg(an(emu, timeout=timeout))
            return e1.value, e2.value

        e1, e2 = asyncio.run(go())
        billed = 2 if kind == "bad_json" else 0  # a malformed 200 was still generated, and billed
        assert emu.received == 2 and emu.billed == billed
    if kind == "quota":
        assert e1.code == "insufficient_quota" and e2.body["error"]["type"] == "billing_error"
    if kind == "429":
        assert e1.code == "rate_limit_exceeded" and e1.response.headers["retry-after"] == "1"
    if kind == "529":
        assert e2.status_code == 529 and e2.body["error"]["type"] == "overloaded_error"


def test_hung_and_reset_requests_are_released_when_the_client_leaves():
    with Emulator(cfg(faults=[Fault("timeout", rate=0.5), Fault("reset", rate=0.5)], hang_s=60)) as emu:
        async def go():
            client = oa(emu, timeout=0.2)
            results = await asyncio.gather(*(chat(client, messages=[{"role": "user", "content": f"q{i}"}])
                                             for i in range(10)), return_exceptions=True)
            assert all(isinstance(r, openai.APIConnectionError) for r in results)

        asyncio.run(go())
        deadline = time.monotonic() + 5
        while emu.in_flight and time.monotonic() < deadline:
            time.sleep(0.02)
        assert emu.in_flight == 0 and emu.billed == 0


@pytest.mark.parametrize("flavour", ["openai", "anthropic"])
def test_truncate_and_refusal_are_billed_200s(flavour):
    faults = [Fault("truncate", first=1, match="TRUNC"), Fault("refusal", first=1, match="REFUSE")]
    with Emulator(cfg(faults=faults)) as emu:
        async def go():
            if flavour == "openai":
                client = oa(emu)
                t = await chat(client, messages=[{"role": "user", "content": "TRUNC water"}], max_tokens=50)
                r = await chat(client, messages=[{"role": "user", "content": "REFUSE water"}])
                assert t.choices[0].finish_reason == "length" and t.usage.completion_tokens == 50
                assert len(t.choices[0].message.content) <= 200
                assert r.choices[0].finish_reason == "content_filter" and r.choices[0].message.content is None
            else:
                client = an(emu)
                t = await msg(client, messages=[{"role": "user", "content": "TRUNC water"}], max_tokens=50)
                r = await msg(client, messages=[{"role": "user", "content": "REFUSE water"}])
                assert t.stop_reason == "max_tokens" and t.usage.output_tokens == 50
                assert r.stop_reason == "refusal" and r.content == []
            again = await (chat if flavour == "openai" else msg)(
                client, messages=[{"role": "user", "content": "TRUNC water"}], max_tokens=50)
            return again

        again = asyncio.run(go())
        finish = again.choices[0].finish_reason if flavour == "openai" else again.stop_reason
        assert finish in ("stop", "end_turn")  # `first=1`: only the first attempt is faulted
        assert emu.billed == 3 and emu.outcomes["truncate"] == 1 and emu.outcomes["refusal"] == 1


def test_schedule_fails_first_attempts_then_sdk_retry_succeeds_and_bills_once():
    faults = [Fault("500", first=2, match="flaky")]
    with Emulator(cfg(faults=faults)) as emu:
        async def go():
            client = oa(emu, max_retries=2)
            flaky = await chat(client, messages=[{"role": "user", "content": "a flaky prompt"}])
            steady = await chat(client, messages=[{"role": "user", "content": "a steady prompt"}])
            return flaky, steady

        flaky, steady = asyncio.run(go())
        assert flaky.choices[0].finish_reason == "stop" and steady.choices[0].finish_reason == "stop"
        assert emu.received == 4 and emu.billed == 2 and emu.duplicates == 0
        assert emu.outcomes["500"] == 2


def test_fault_rates_are_seeded_and_roughly_right():
    def run(seed):
        with Emulator(cfg(faults=[Fault("500", rate=0.3)], seed=seed)) as emu:
            async def go():
                client = oa(emu)
                return await asyncio.gather(*(chat(client, messages=[{"role": "user", "content": f"p{i}"}])
                                              for i in range(100)), return_exceptions=True)

            return [isinstance(r, openai.InternalServerError) for r in asyncio.run(go())]

    first, second, other = run(1), run(1), run(2)
    assert first == second and first != other
    assert 12 <= sum(first) <= 50


def test_rate_limit_headers_and_429_when_exceeded():
    with Emulator(cfg(rpm=3, input_tpm=100_000, output_tpm=20_000)) as emu:
        async def go():
            client = oa(emu)
            raws = [await client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=USER, max_tokens=100) for _ in range(3)]
            with pytest.raises(openai.RateLimitError) as limited:
                await chat(client)
            return [r.headers for r in raws], limited.value

        headers, limited = asyncio.run(go())
        assert [h["x-ratelimit-remaining-requests"] for h in headers] == ["2", "1", "0"]
        assert all(h["x-ratelimit-limit-requests"] == "3" and h["x-ratelimit-limit-tokens"] == "100000"
                   for h in headers)
        assert re.fullmatch(r"[\d.]+(ms|s)|\d+m[\d.]+s", headers[-1]["x-ratelimit-reset-requests"])
        assert int(headers[0]["x-ratelimit-remaining-tokens"]) < 100_000
        assert limited.code == "rate_limit_exceeded" and "requests per min" in limited.message
        assert int(limited.response.headers["retry-after"]) >= 1
        assert limited.response.headers["x-ratelimit-remaining-requests"] == "0"
        assert emu.billed == 3 and emu.rate_limited == 1 and emu.received == 4


def test_anthropic_rate_limit_headers_and_output_token_limit():
    with Emulator(cfg(rpm=1000, input_tpm=50_000, output_tpm=300)) as emu:
        async def go():
            client = an(emu)
            raw = await client.messages.with_raw_response.create(
                model="claude-haiku-4-5", messages=USER, max_tokens=100)
            with pytest.raises(anthropic.RateLimitError) as limited:  # 300 output tokens can't reserve 400
                await msg(client, max_tokens=400)
            return raw.headers, limited.value

        headers, limited = asyncio.run(go())
        for name in ("requests", "input-tokens", "output-tokens"):
            assert f"anthropic-ratelimit-{name}-limit" in headers
            datetime.fromisoformat(headers[f"anthropic-ratelimit-{name}-reset"].replace("Z", "+00:00"))
        assert headers["anthropic-ratelimit-requests-remaining"] == "999"
        assert limited.body["error"]["type"] == "rate_limit_error"
        assert int(limited.response.headers["retry-after"]) >= 1


def test_rate_limit_refills_over_time():
    with Emulator(cfg(rpm=120, window_s=0.5)) as emu:  # 1 request of burst, 2 a second
        async def go():
            client = oa(emu)
            await chat(client)
            with pytest.raises(openai.RateLimitError):
                await chat(client)
            await asyncio.sleep(1.1)  # the refused request counted too: two requests' worth to refill
            await chat(client)

        asyncio.run(go())
        assert emu.billed == 2 and emu.rate_limited == 1


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_refused_openai_request_counts_toward_the_limit(provider):
    """OpenAI counts unsuccessful requests toward the per-minute limit; a client that resends at once after a
    429 stays limited (Anthropic documents no such rule: a 429 there takes nothing)."""
    with Emulator(cfg(rpm=120, window_s=2.0)) as emu:  # 4 requests of burst, 2 a second
        async def go():
            client = oa(emu) if provider == "openai" else an(emu)
            send = chat if provider == "openai" else msg
            for _ in range(4):
                await send(client)
            for _ in range(3):  # refused, and (OpenAI) each one puts the bucket one request into debt
                with pytest.raises((openai.RateLimitError, anthropic.RateLimitError)):
                    await send(client)
            await asyncio.sleep(0.6)  # refills 1.2 requests: enough where the refusals took nothing; OpenAI's
            try:  # debt of 3 needs 2 s, so a sleep that overruns by up to 1.4 s (a loaded machine) still tells
                await send(client)
            except (openai.RateLimitError, anthropic.RateLimitError):
                return False
            return True

        assert asyncio.run(go()) is (provider == "anthropic")


def test_no_headers_mode_is_vllm_like():
    with Emulator(cfg(send_headers=False, rpm=1000)) as emu:
        async def go():
            return (await oa(emu).chat.completions.with_raw_response.create(
                model="m", messages=USER, max_tokens=10)).headers

        headers = asyncio.run(go())
    assert not [h for h in headers if h.startswith("x-ratelimit")]


def test_many_concurrent_requests():
    with Emulator(cfg(latency_median_s=0.5)) as emu:
        async def go():
            client = oa(emu)
            return await asyncio.gather(*(chat(client, messages=[{"role": "user", "content": f"topic {i}"}],
                                               max_tokens=30) for i in range(300)))

        results = asyncio.run(go())
        assert len(results) == 300 and emu.billed == 300 and emu.max_in_flight > 50
        assert len(emu.billed_keys) == 300 and emu.duplicates == 0


def test_custom_responder_and_stop_sequences():
    with Emulator(cfg(responder=lambda body: f"echo {len(body['messages'])} END tail")) as emu:
        async def go():
            plain = await chat(oa(emu))
            stopped = await msg(an(emu), stop_sequences=["END"])
            return plain, stopped

        plain, stopped = asyncio.run(go())
    assert plain.choices[0].message.content == "echo 1 END tail"
    assert stopped.content[0].text == "echo 1 " and stopped.stop_reason == "stop_sequence"
    assert stopped.stop_sequence == "END"


def test_default_responder_lists_json_and_length():
    prompt = "List 25 subtopics of 'Thermodynamics' for a college textbook."
    assert requested_count(prompt) == 25 and subject_of(prompt) == "Thermodynamics"
    body = {"messages": [{"role": "user", "content": prompt}]}
    lines = default_responder(body, seed=1, max_tokens=2000).splitlines()
    items = [re.sub(r"^\d+\.\s*", "", line) for line in lines]
    assert len(items) == 25 == len(set(items)) and all("Thermodynamics" in i for i in items)
    assert default_responder(body, seed=1, max_tokens=2000) == "\n".join(lines)

    as_json = {"messages": [{"role": "user", "content": "Give 40 topics within biology as a JSON array."}]}
    arr = json.loads(default_responder(as_json, seed=2, max_tokens=4000))
    assert len(arr) == len(set(arr)) == 40

    schema = {"type": "json_schema", "json_schema": {"name": "t", "schema": {
        "type": "object", "properties": {"subtopics": {"type": "array", "items": {"type": "string"}}},
        "required": ["subtopics"]}}}
    structured = {"messages": [{"role": "user", "content": "Name 12 subtopics of chemistry."}],
                  "response_format": schema}
    obj = json.loads(default_responder(structured, seed=3, max_tokens=4000))
    assert len(set(obj["subtopics"])) == 12

    essay = {"messages": [{"role": "user", "content": "Write about photosynthesis in about 300 words."}]}
    words = len(default_responder(essay, seed=4, max_tokens=2000).split())
    assert 200 <= words <= 400


def test_openai_json_schema_response_format_round_trip():
    with Emulator(cfg()) as emu:
        async def go():
            return await chat(oa(emu), messages=[{"role": "user", "content": "List 15 subtopics of geology."}],
                              max_tokens=2000, response_format={"type": "json_schema", "json_schema": {
                                  "name": "topics", "schema": {"type": "array", "items": {"type": "string"}}}})

        c = asyncio.run(go())
    assert len(set(json.loads(c.choices[0].message.content))) == 15


def test_stats_endpoint_and_cli_serves(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "textbookgen.testing.emulator", "--port", "0",
                             "--latency", "0.001", "--rpm", "100", "--fault", "500:first=1", "--model-rules"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        base = re.search(r"http://127\.0\.0\.1:\d+", line).group(0)
        client = openai.AsyncOpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=1)
        c = asyncio.run(client.chat.completions.create(model="gpt-4o-mini", messages=USER, max_tokens=20))
        assert c.choices[0].message.content
        with urllib.request.urlopen(base + "/_emulator/stats") as r:
            stats = json.load(r)
        assert stats["received"] == 2 and stats["billed"] == 1 and stats["outcomes"]["500"] == 1
        with pytest.raises(openai.BadRequestError, match="Only the default \\(1\\) value is supported"):
            openai.OpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0).chat.completions.create(
                model="gpt-5-mini", messages=USER, temperature=0.5)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0 and json.loads(out.strip().splitlines()[-1])["billed"] == 1  # final counters


def test_combined_tpm_context_limit_recording_and_cross_thread_stats():
    with Emulator(cfg(tpm=600, input_tpm=50_000, context_tokens=1000, record_requests=True)) as emu:
        async def go():
            raw = await oa(emu).chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=USER, max_tokens=100)
            araw = await an(emu).messages.with_raw_response.create(
                model="claude-haiku-4-5", messages=USER, max_tokens=100)
            with pytest.raises(openai.BadRequestError) as too_long:
                await chat(oa(emu), max_tokens=990)
            return raw.headers, araw.headers, too_long.value

        headers, aheaders, too_long = asyncio.run(go())
        assert headers["x-ratelimit-limit-tokens"] == "600"  # the combined bucket, as OpenAI reports it
        # prompt + 100 reserved + what was generated, less 10 tokens a second of refill
        assert 300 <= int(headers["x-ratelimit-remaining-tokens"]) < 600 - 100
        assert aheaders["anthropic-ratelimit-tokens-limit"] == "600"  # the tightest token bucket
        assert too_long.code == "context_length_exceeded"
        assert [r["provider"] for r in emu.requests] == ["openai", "anthropic"]
        assert emu.requests[0]["body"]["max_tokens"] == 100
        assert emu.stats()["billed"] == 2
        emu.reset()
        assert emu.stats()["billed"] == 0 and emu.requests == []


def test_config_validation_and_go_durations():
    with pytest.raises(ValueError, match="unknown fault kind"):
        Fault("418")
    with pytest.raises(ValueError, match="rpm"):
        EmulatorConfig(rpm=0)
    assert Fault.parse("429:0.05") == Fault("429", rate=0.05)
    assert Fault.parse("500:first=3") == Fault("500", first=3)
    assert [go_duration(s) for s in (0.02, 1, 360, 90.5, 3723)] == ["20ms", "1s", "6m0s", "1m30.5s", "1h2m3s"]


def test_streaming_both_formats_and_a_mid_stream_drop():
    with Emulator(cfg(faults=[Fault("reset", first=1, match="DROP")])) as emu:
        async def go():
            stream = await chat(oa(emu), max_tokens=60, stream=True, stream_options={"include_usage": True})
            parts, finish, usage = [], None, None
            async for chunk in stream:
                if chunk.choices:
                    parts.append(chunk.choices[0].delta.content or "")
                    finish = chunk.choices[0].finish_reason or finish
                usage = chunk.usage or usage
            async with an(emu).messages.stream(model="claude-haiku-4-5", max_tokens=300, messages=USER) as s:
                message = await s.get_final_message()
            with pytest.raises(openai.APIConnectionError):
                dropped = await chat(oa(emu), messages=[{"role": "user", "content": "DROP"}], stream=True)
                async for _ in dropped:
                    pass
            return "".join(parts), finish, usage, message

        text, finish, usage, message = asyncio.run(go())
        assert finish in ("stop", "length") and usage.completion_tokens == -(-len(text) // 4) <= 60
        assert message.stop_reason == "end_turn" and "water cycle" in message.content[0].text.lower()
        assert message.usage.output_tokens + usage.completion_tokens == emu.output_tokens
        assert emu.billed == 2 and emu.outcomes["reset"] == 1


def test_n_choices_are_distinct_and_usage_sums():
    with Emulator(cfg()) as emu:
        c = asyncio.run(chat(oa(emu), n=3, max_tokens=80))
        assert [ch.index for ch in c.choices] == [0, 1, 2]
        assert len({ch.message.content for ch in c.choices}) == 3
        assert c.usage.completion_tokens == emu.output_tokens and emu.billed == 1


def test_abandoned_request_is_still_billed_like_a_real_provider():
    with Emulator(cfg(latency_median_s=0.5)) as emu:
        with pytest.raises(openai.APITimeoutError):
            asyncio.run(chat(oa(emu, timeout=0.1)))
        deadline = time.monotonic() + 5
        while emu.in_flight and time.monotonic() < deadline:
            time.sleep(0.02)
        assert emu.billed == 1 and emu.outcomes["billed_after_disconnect"] == 1
    with Emulator(cfg(latency_median_s=0.5, bill_disconnects=False)) as emu:
        with pytest.raises(openai.APITimeoutError):
            asyncio.run(chat(oa(emu, timeout=0.1)))
        time.sleep(0.1)
        assert emu.billed == 0


FINEWEB_EDU_PROMPT = """Below is an extract from a web page. Evaluate whether the page has a high educational value \
using the additive 5-point scoring system described below.
- Add 1 point if the extract provides some basic information relevant to educational topics.

The extract:
{text}

After examining the extract:
- Briefly justify your total score, up to 100 words.
- Conclude with the score using the format: 'Educational score: <total points>'"""
TEXTBOOK = ("Photosynthesis is the process by which plants convert light energy into chemical energy. "
            "For example, chlorophyll in the leaves absorbs light. Students can observe this in an experiment "
            "and compare the results, because the equation shows how carbon dioxide and water become glucose. ") * 3
SPAM = "Buy now! Click here for a free discount offer. Subscribe today. Cheap deals and free shipping on every order."


def test_default_responder_judges_like_a_rater():
    def ask(content, **extra):
        return default_responder({"messages": [{"role": "user", "content": content}], **extra}, seed=5, max_tokens=300)

    good, bad = ask(FINEWEB_EDU_PROMPT.format(text=TEXTBOOK)), ask(FINEWEB_EDU_PROMPT.format(text=SPAM))
    score = lambda answer: int(re.search(r"Educational score: (\d)$", answer).group(1))  # noqa: E731
    assert score(good) >= 3 > score(bad)
    assert judge_score(TEXTBOOK, 1, 10) > judge_score(SPAM, 1, 10)
    as_json = json.loads(ask(f"Rate this text on a scale of 1 to 10. Reply in JSON.\n\nText:\n{TEXTBOOK}"))
    assert 6 <= as_json["score"] <= 10 and as_json["reason"]
    schema = {"type": "object", "properties": {"rationale": {"type": "string"},
                                               "score": {"type": "integer", "minimum": 0, "maximum": 5}}}
    structured = json.loads(ask(f"Score the educational value of this document from 0 to 5.\n\nDocument:\n{SPAM}",
                                response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}))
    assert structured["score"] <= 1 and "promotional" in structured["rationale"]
    assert requested_count("List 10 topics for grade 3 to 5 students") == 10  # not a judging prompt
    assert ask("List 10 topics for grade 3 to 5 students about optics").count("\n") == 9



def test_a_judge_takes_its_scale_and_format_from_the_rubric_not_the_judged_document():
    """`classifier label`'s prompt marks the document ("The extract:" ... "After examining the extract:"): a
    date range, a heading line, a scale or "JSON" inside the document must not change the answer's scale."""
    from textbookgen.curation.judge import FINEWEB_EDU_PROMPT as LABEL_PROMPT
    from textbookgen.curation.judge import parse_score

    def ask(content):
        return default_responder({"messages": [{"role": "user", "content": content}]}, seed=5, max_tokens=300)

    doc = (f"{TEXTBOOK}\n\nSchedule:\nThe workshop runs June 14-15, for grades 6 to 8; rate it on a scale of "
           f"1 to 10 and send JSON.\n\nAbstract:\n{TEXTBOOK}")
    answer = ask(LABEL_PROMPT.replace("{text}", doc))
    assert re.search(r"\nEducational score: [0-5]$", answer) and parse_score(answer) >= 3, answer
    closing = ask(f"Text:\n{TEXTBOOK} Held June 14-15.\n\nRate the text above on a scale of 1 to 10.\nScore: <n>")
    assert 6 <= int(re.search(r"Score: (\d+)$", closing).group(1)) <= 10, closing

def test_limits_can_change_mid_run():
    with Emulator(cfg(rpm=100)) as emu:
        async def go():
            client = oa(emu)
            before = (await client.chat.completions.with_raw_response.create(
                model="m", messages=USER, max_tokens=10)).headers
            emu.set_limits(rpm=1, output_tpm=5000)
            after = (await client.chat.completions.with_raw_response.create(
                model="m", messages=USER, max_tokens=10)).headers
            with pytest.raises(openai.RateLimitError):
                await chat(client, max_tokens=10)
            return before, after

        before, after = asyncio.run(go())
    assert before["x-ratelimit-limit-requests"] == "100" and after["x-ratelimit-limit-requests"] == "1"
    with pytest.raises(ValueError, match="unknown limit"):
        emu.set_limits(rpd=5)


def _dup_5gram_char_frac(text: str) -> float:
    """Gopher's rule: the share of characters inside word 5-grams that occur more than once."""
    words = text.lower().split()
    grams = [tuple(words[i:i + 5]) for i in range(len(words) - 4)]
    counts = Counter(grams)
    covered = [False] * len(words)
    for i, g in enumerate(grams):
        if counts[g] > 1:
            covered[i:i + 5] = [True] * 5
    return sum(len(w) for w, c in zip(words, covered, strict=True) if c) / max(1, sum(len(w) for w in words))


def test_default_prose_survives_repetition_filters_and_is_not_near_duplicate():
    def doc(topic, words, seed):
        body = {"messages": [{"role": "user", "content": f"Write a textbook chapter about {topic} in about {words} words."}]}
        return default_responder(body, seed=seed, max_tokens=8192)

    docs = [doc(t, w, i) for i, t in enumerate(("photosynthesis", "probability", "poetry")) for w in (300, 2000)]
    assert all(_dup_5gram_char_frac(d) <= 0.15 for d in docs)  # Gopher's limit for 5-grams
    shingles = [{tuple(d.lower().split()[i:i + 5]) for i in range(len(d.split()) - 4)} for d in docs]
    worst = max(len(a & b) / len(a | b) for i, a in enumerate(shingles) for b in shingles[i + 1:])
    assert worst < 0.2  # far below near-duplicate thresholds (~0.7-0.8)
    assert 1500 <= len(docs[1].split()) <= 3000


def test_concurrent_burst_is_admitted_exactly_up_to_the_bucket():
    with Emulator(cfg(rpm=600, window_s=1.0, latency_median_s=0.05)) as emu:  # 10 requests of burst
        async def go():
            client = oa(emu)
            t0 = time.monotonic()
            results = await asyncio.gather(*(chat(client, messages=[{"role": "user", "content": f"q{i}"}],
                                                  max_tokens=10) for i in range(40)), return_exceptions=True)
            return results, time.monotonic() - t0

        results, elapsed = asyncio.run(go())
        ok = [r for r in results if not isinstance(r, Exception)]
        limited = [r for r in results if isinstance(r, openai.RateLimitError)]
        refilled = math.ceil(elapsed * 10)  # 10 a second come back while the burst is in flight
        assert len(ok) + len(limited) == 40 and 10 <= len(ok) <= 10 + refilled
        assert emu.billed == len(ok) and emu.rate_limited == len(limited)
        # each refusal also counts (OpenAI's rule), down to one window in debt: a wait of at most two windows
        assert all(float(r.response.headers["retry-after-ms"]) <= 2000 for r in limited)


def test_default_responder_writes_exercises_questions_and_sections():
    def ask(content):
        return default_responder({"messages": [{"role": "user", "content": content}]}, seed=9, max_tokens=1024)

    exercises = ask('Write a set of 5 exercises with full worked solutions on "Optics" for high school students.')
    assert [int(k) for k in re.findall(r"^Exercise (\d+)\.", exercises, re.M)] == [1, 2, 3, 4, 5]
    assert exercises.count("\nSolution. ") == 5 and exercises.count("\nAnswer: ") == 5
    qa = ask('Write a question-and-answer study text about "Optics".\nAsk 6 to 8 questions a learner would ask.')
    questions = re.findall(r"^Q\d+: (.+\?)$", qa, re.M)
    assert 6 <= len(questions) == len(set(questions)) <= 8 and qa.count("\nA: ") == len(questions)
    section = ask('Write a section of a textbook on "Optics".\nInclude at least two worked examples and '
                  'a few exercises at the end.')
    assert not section.startswith("1.") and "\n\nExercises\n\n" in section and "Exercise 3." in section
    keyed = json.loads(ask('List 6 distinct subtopics of "Optics". Answer with JSON only: {"subtopics": ["..."]}'))
    assert len(set(keyed["subtopics"])) == 6


def test_default_responder_stories_and_python_with_passing_doctests():
    def ask(content):
        return default_responder({"messages": [{"role": "user", "content": content}]}, seed=4, max_tokens=1024)

    tale = ask('Write a short story (3 to 5 paragraphs) about sharing that a young child can understand.\n'
               'The story should use the verb "jump", the noun "ball" and the adjective "shiny".')
    assert 3 <= len(tale.split("\n\n")) <= 5 and all(w in tale for w in ("jump", "ball", "shiny"))
    solved = ask('Write 3 Python exercises on "Recursion" for beginners.')
    blocks = re.findall(r"```python\n(.*?)```", solved, re.S)
    assert len(blocks) == 3 and solved.count("Time complexity: O(") == 3
    for block in blocks:  # the doctest examples were computed by running the code: they pass
        namespace: dict = {}
        exec(block, namespace)
        fn = next(v for k, v in namespace.items() if callable(v) and not k.startswith("__"))
        failures = doctest.DocTestRunner().run(doctest.DocTestFinder().find(fn, globs=namespace)[0])
        assert failures.failed == 0 and failures.attempted == 2
    section = ask('Write a section of a Python programming textbook on "Recursion".\n'
                  '- end with two exercises, each with a function signature and docstring.')
    assert section.count("```python") == 3 and section.count("    ...\n```") == 2


def test_answer_faults_in_both_wire_formats_streamed_or_not():
    """What reasoning models and odd servers send: no text; reasoning apart from an answer never reached (vLLM's
    reasoning_content, Anthropic's thinking block), cut at max_tokens; a <think> block opening the answer."""
    faults = [Fault(kind, rate=1.0, match=f"[{kind}]") for kind in ("empty", "reasoning", "think", "think_cut")]

    def ask(kind: str) -> list[dict]:
        return [{"role": "user", "content": f"[{kind}] write about tides"}]

    async def go() -> dict:
        seen = {}
        for kind in ("empty", "reasoning", "think", "think_cut"):
            c = await chat(oa(emu), messages=ask(kind), max_tokens=100)
            m = await an(emu).messages.create(model="claude-haiku-4-5", max_tokens=100, messages=ask(kind))
            parts, reasoning, finish = [], [], None
            async for chunk in await chat(oa(emu), messages=ask(kind), max_tokens=100, stream=True):
                delta = chunk.choices[0].delta
                parts.append(delta.content or "")
                reasoning.append((delta.model_extra or {}).get("reasoning_content") or "")
                finish = chunk.choices[0].finish_reason or finish
            async with an(emu).messages.stream(model="claude-haiku-4-5", max_tokens=100, messages=ask(kind)) as s:
                streamed = await s.get_final_message()
            seen[kind] = (c.choices[0], m, ("".join(parts), "".join(reasoning), finish), streamed)
        return seen

    with Emulator(cfg(faults=faults)) as emu:
        seen = asyncio.run(go())
        assert emu.billed == 16 and emu.outcomes["empty"] == 4
    choice, message, (text, reasoning, finish), streamed = seen["empty"]
    assert choice.message.content == "" and choice.finish_reason == "stop" and (text, finish) == ("", "stop")
    assert message.content == [] == streamed.content and message.stop_reason == "end_turn"
    choice, message, (text, reasoning, finish), streamed = seen["reasoning"]
    assert choice.message.content is None and choice.finish_reason == "length"
    assert choice.message.model_extra["reasoning_content"].startswith("Okay, the user wants")
    assert (text, finish) == ("", "length") and reasoning.startswith("Okay, the user wants")
    for m in (message, streamed):
        assert [b.type for b in m.content] == ["thinking"] and m.stop_reason == "max_tokens"
        assert m.content[0].thinking.startswith("Okay, the user wants") and m.usage.output_tokens == 100
    choice, message, (text, _, finish), streamed = seen["think"]
    assert choice.message.content.startswith("<think>\nOkay") and "</think>\n\n" in choice.message.content
    assert text.startswith("<think>\nOkay") and message.content[0].text.startswith("<think>")
    choice, message, (text, _, finish), streamed = seen["think_cut"]
    assert choice.finish_reason == finish == "length" and message.stop_reason == "max_tokens"
    assert choice.message.content.startswith("<think>") and "</think>" not in choice.message.content + text


def test_a_chinese_prompt_is_billed_about_a_token_a_character():
    """At 4 characters a token a dry run of a Chinese build showed a quarter of its real input cost."""
    from textbookgen.testing.responder import estimate_tokens, prompt_tokens

    chinese = "光合作用是植物利用光能把二氧化碳和水转化为有机物的过程。" * 10
    english = "Photosynthesis turns light, water and carbon dioxide into sugar. " * 10
    assert 0.95 * len(chinese) <= prompt_tokens(chinese) <= 1.05 * len(chinese)
    assert prompt_tokens(english) == estimate_tokens(english)
