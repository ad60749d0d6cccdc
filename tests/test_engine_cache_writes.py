"""Anthropic prompt-cache writes, priced by their time to live: 1.25x the input price for the default 5 minutes,
2x for an hour (`"ttl": "1h"`, the one that outlasts a batch's queue). Real anthropic client, loopback emulator."""

from __future__ import annotations

import pytest

from textbookgen.engine import ChatRequest, Generator
from textbookgen.pricing import price_of
from textbookgen.testing.emulator import Emulator, EmulatorConfig

MODEL = "claude-haiku-4-5"
FAST = dict(backoff_initial_s=0.01, backoff_max_s=0.05, progress=False, timeout_s=20.0)


def cached_prompt(ttl: str | None) -> ChatRequest:
    control = {"type": "ephemeral", **({"ttl": ttl} if ttl else {})}
    block = {"type": "text", "text": "You write textbooks. " * 300, "cache_control": control}
    return ChatRequest(messages=[{"role": "system", "content": [block]},
                                 {"role": "user", "content": "Write a section on tides."}], max_tokens=64)


@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("ttl, rate", [(None, 1.25), ("5m", 1.25), ("1h", 2.0)])
def test_cache_writes_cost_what_their_time_to_live_costs(ttl, rate, batch, tmp_path):
    with Emulator(EmulatorConfig(latency_median_s=0.001, prompt_cache_write=0.5, batch_latency_s=0.05)) as emu:
        gen = Generator("anthropic", MODEL, base_url=emu.anthropic_base_url, api_key="sk-test-key",
                        journal=tmp_path / "j.sqlite", batch=batch, batch_poll_s=0.05, **FAST)
        [r] = gen.run([cached_prompt(ttl)])
        billed_in = emu.input_tokens
    written = r.input_tokens // 2
    assert written > 500 and r.input_tokens == billed_in
    price_in, price_out = (p * (0.5 if batch else 1.0) for p in price_of(MODEL))
    expected = ((r.input_tokens - written + written * rate) * price_in + r.output_tokens * price_out) / 1e6
    assert r.cost_usd == pytest.approx(expected)
