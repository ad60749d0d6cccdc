"""A Generator's grown timeout is kept from run to run: a build's windows (and an LLM call's) are runs of one
Generator, and re-learning the timeout in each would abandon, and pay for, one more attempt per window."""

from __future__ import annotations

import logging

from textbookgen.engine import TIMEOUT_CAP, ChatRequest, Generator
from textbookgen.testing.emulator import Emulator, EmulatorConfig, Fault

TIMEOUT_S = 0.1
LATENCY_S = 0.3  # 3x timeout_s: a run starting from timeout_s abandons its first attempt for certain


def reqs(n: int, prefix: str) -> list[ChatRequest]:
    """`n` distinct requests, so that nothing of the second run is answered by the journal of the first."""
    return [ChatRequest(messages=[{"role": "user", "content": f"{prefix} {i}"}], max_tokens=64) for i in range(n)]


def test_a_later_run_starts_from_the_timeout_the_last_one_grew_to(tmp_path, caplog):
    """The first run's request answers only after 1 s three times (timeouts at 0.1, 0.2 and 0.4 s), so the timeout
    grows to its cap, 0.8 s; the second run's answers take 0.3 s: within the grown timeout, with 2.6x to spare, and
    3x over timeout_s, which a run starting afresh would abandon (and pay for) before learning it again."""
    cfg = EmulatorConfig(latency_median_s=LATENCY_S, latency_sigma=0.0, hang_s=1.0,
                         faults=[Fault("slow", first=3, match="WARM")])
    with Emulator(cfg) as emu:
        gen = Generator("openai", "gpt-4o-mini", base_url=emu.openai_base_url, api_key="sk-test-key",
                        journal=tmp_path / "gen.sqlite", concurrency=1, timeout_s=TIMEOUT_S, progress=False,
                        backoff_initial_s=0.01, backoff_max_s=0.05)
        first = gen.run(reqs(1, "WARM"))
        assert first[0].status == "ok" and gen.stats["timed_out"] >= 3  # grown to TIMEOUT_CAP x timeout_s
        assert TIMEOUT_CAP * TIMEOUT_S >= 2 * LATENCY_S  # the margin the second run relies on
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="textbookgen"):
            second = gen.run(reqs(3, "Explain topic"))
    assert [r.status for r in second] == ["ok"] * 3
    assert gen.stats["timed_out"] == 0 and gen.stats["abandoned_output_tokens"] == 0
    assert not [r for r in caplog.records if "no answer within" in r.getMessage()]  # no growth: no warning again
