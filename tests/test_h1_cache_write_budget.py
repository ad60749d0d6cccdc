"""A budget's worst case prices the prompt of a request that writes Anthropic's prompt cache at the write premium
(1.25x for 5 minutes, 2x for an hour), as its answer is billed: a budget close to its end is never overrun by it,
live or in a batch. Real anthropic client, loopback emulator reporting every prompt token as written."""

from __future__ import annotations

import pytest

from textbookgen.engine import ChatRequest, Generator, estimate_input_tokens
from textbookgen.testing.emulator import Emulator, EmulatorConfig

MODEL = "claude-haiku-4-5"  # its cache rates: 1.25x and 2x the input price
PRICES = {MODEL: (1000.0, 0.0)}  # $0.001 a prompt token, output free: cost is the prompt's
FAST = dict(backoff_initial_s=0.01, backoff_max_s=0.05, progress=False, timeout_s=20.0, concurrency=4)


def short(body: dict) -> str:
    return "Tides rise and fall."


def cached_prompt(i: int, control: dict | None) -> ChatRequest:
    """A long system block, written to the cache as `control` asks (None: not at all), and a short question."""
    block = {"type": "text", "text": "You write textbooks. " * 300, **({"cache_control": control} if control else {})}
    return ChatRequest(messages=[{"role": "system", "content": [block]},
                                 {"role": "user", "content": f"Write a section on tides, part {i}."}], max_tokens=16)


def run(tmp_path, control: dict | None, batch: bool, written: float) -> tuple[list, float, float]:
    """Four requests under a budget of two worst cases at the plain input price: (responses, budget, spent)."""
    requests = [cached_prompt(i, control) for i in range(4)]
    budget = 2 * estimate_input_tokens(requests[0]) * PRICES[MODEL][0] / 1e6 * (0.5 if batch else 1.0) + 1e-6
    config = EmulatorConfig(latency_median_s=0.01, latency_sigma=0.0, prompt_cache_write=written, responder=short,
                            batch_latency_s=0.05)
    with Emulator(config) as emu:
        gen = Generator("anthropic", MODEL, base_url=emu.anthropic_base_url, api_key="sk-test-key",
                        journal=tmp_path / "j.sqlite", prices=PRICES, max_cost_usd=budget, batch=batch,
                        batch_poll_s=0.05, **FAST)
        out = gen.run(requests)
    return out, budget, gen.stats["cost_usd"]


@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("ttl", [None, "5m", "1h"])  # None: Anthropic's default, 5 minutes
def test_cache_writes_never_overrun_a_budget_close_to_its_end(ttl, batch, tmp_path):
    """Two prompts fit at the plain input price, but written to the cache each costs 1.25x or 2x: the run used to
    send two at once (live) or in one batch and spend past the budget."""
    out, budget, spent = run(tmp_path, {"type": "ephemeral", **({"ttl": ttl} if ttl else {})}, batch, written=1.0)
    answered = [r for r in out if r.status == "ok"]
    assert answered and spent == pytest.approx(sum(r.cost_usd for r in answered))
    assert spent <= budget
    assert [r.status for r in out[len(answered):]] == ["skipped_budget"] * (4 - len(answered))


@pytest.mark.parametrize("batch", [False, True])
def test_a_prompt_that_writes_no_cache_is_held_at_the_plain_price(batch, tmp_path):
    """Without cache_control the worst case stays the plain price: both requests that fit are answered."""
    out, budget, spent = run(tmp_path, None, batch, written=0.0)
    assert [r.status for r in out] == ["ok", "ok", "skipped_budget", "skipped_budget"]
    assert spent <= budget


def test_cache_writes_are_found_wherever_a_request_asks_for_them():
    """Blocks in messages, tools and the body's own cache_control; a JSON schema's `cache_control` property is a
    field of the answer, not a cache write."""
    from textbookgen.engine import cache_write_ttls

    assert cache_write_ttls([{"content": [{"type": "text", "cache_control": {"type": "ephemeral"}}]}]) == {"5m"}
    tools = {"tools": [{"name": "t", "cache_control": {"type": "ephemeral", "ttl": "1h"},
                        "input_schema": {"properties": {"cache_control": {"type": "object"}}}}]}
    assert cache_write_ttls(tools) == {"1h"}
    assert cache_write_ttls({"cache_control": {"type": "ephemeral", "ttl": "5m"}, "top_k": 5}) == {"5m"}
    assert cache_write_ttls({"response": {"properties": {"cache_control": {"ttl": "1h"}}}}) == set()
