"""The emulator's OpenAI reasoning models (gpt-5, o-series) cut at max_tokens while thinking: the thinking is never
sent, streamed or not (content "", no `reasoning_content`, which is vLLM's), and it is billed as reasoning tokens."""

from __future__ import annotations

from openai import OpenAI

from textbookgen.testing.emulator import Emulator, EmulatorConfig, Fault


def test_an_openai_reasoning_model_shows_no_thinking_streamed_or_not():
    config = EmulatorConfig(latency_median_s=0.001, faults=[Fault("reasoning", rate=1.0)])
    with Emulator(config) as emu:
        client = OpenAI(base_url=emu.openai_base_url, api_key="sk-test", max_retries=0)
        ask = dict(model="gpt-5-mini", messages=[{"role": "user", "content": "Write about tides"}],
                   max_completion_tokens=64)
        whole = client.chat.completions.create(**ask)
        chunks = list(client.chat.completions.create(**ask, stream=True))
    message, usage = whole.choices[0].message, whole.usage
    assert message.content == "" and "reasoning_content" not in (message.model_extra or {})
    assert whole.choices[0].finish_reason == "length"
    assert usage.completion_tokens_details.reasoning_tokens == usage.completion_tokens == 64
    deltas = [chunk.choices[0].delta for chunk in chunks if chunk.choices]
    assert "".join(d.content or "" for d in deltas) == ""
    assert not any((d.model_extra or {}).get("reasoning_content") for d in deltas)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
