"""`params` are sent as is, over the request body the engine builds: a key that overrides what the engine prices,
budgets and reads answers by is refused when the request is made. `n=4` was billed four answers, one kept and one
counted (a budget of $0.001 spent $0.0024 on the emulator); `max_tokens` there passed the budget's worst case (11x)."""

from __future__ import annotations

import pytest

from textbookgen.engine import ChatRequest, Generator, sampled
from textbookgen.testing.emulator import Emulator, EmulatorConfig

MESSAGES = [{"role": "user", "content": "Write about tides"}]


@pytest.mark.parametrize("params, why", [
    ({"n": 4}, "sampled"), ({"max_tokens": 2000}, "max_tokens"), ({"max_completion_tokens": 2000}, "max_tokens"),
    ({"model": "gpt-4o"}, "price"), ({"stream": True}, "whole"), ({"top_k": 5, "n": 2}, "sampled"),
])
def test_params_that_override_what_the_engine_counts_are_refused(params, why):
    name = next(k for k in params if k != "top_k")
    with pytest.raises(ValueError, match=f"'params' must not set '{name}'.*{why}"):
        ChatRequest(messages=MESSAGES, params=params)


def test_their_harmless_values_are_sent(tmp_path):
    """n=1 and stream=false are what the engine sends anyway: such requests go out, one answer each."""
    requests = [ChatRequest(messages=MESSAGES, max_tokens=64, params={"n": 1, "stream": False}),
                *sampled(ChatRequest(messages=MESSAGES, max_tokens=64, temperature=1.0), 2)]
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        out = Generator("openai", "gpt-4o-mini", base_url=emu.openai_base_url, api_key="sk-test",
                        journal=tmp_path / "j.sqlite", progress=False).run(requests)
        assert emu.billed == 3
    assert all(r.status in ("ok", "truncated") and r.text for r in out)
