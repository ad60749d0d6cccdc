"""The slow start at a server that sends no rate-limit headers, in virtual time: requests go through
`AdmissionController.acquire` as the engine's do (a 429 answered at once, its retry after the Retry-After or a
jittered backoff, whichever is longer), against the emulator's own limiter (`RateLimiter`, a refused request
charged as OpenAI charges it). Its first seconds used to draw bursts of 429s: a refused probe as the first answer
set the doubling period to the 429's 5 ms turnaround, the pace doubled while a Retry-After pause held every request
back, and a 429 refused only by the server's debt (nothing sent in the second before it) ended the slow start with
no pace at all."""

from __future__ import annotations

import asyncio
import math
import random
import selectors

import pytest

from textbookgen.ratelimit import AdmissionController
from textbookgen.testing.emulator import EmulatorConfig, RateLimiter

REFUSED_S = 0.005  # a 429 comes back in a network round trip
COSTS = {"requests": 1, "input_tokens": 0, "output_tokens": 0, "tokens": 0}


class _VirtualSelector(selectors.DefaultSelector):
    """Waiting for I/O advances the loop's clock instead: nothing here does I/O, so every wait is a timer's."""

    def __init__(self, loop: _VirtualLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list:
        if timeout is None:
            raise RuntimeError("virtual time: every task waits and no timer is due")
        self._loop.now += max(timeout, 1e-6)  # a wait rounded down to 0 must still move time on
        return []


class _VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.now = 0.0
        super().__init__(_VirtualSelector(self))

    def time(self) -> float:
        return self.now


def _run(rpm: int, latency: float | tuple[float, float], n: int, *, spread_s: float = 0.0, concurrency: int = 64,
         window_s: float = 1.0, arrivals: list[float] | None = None) -> dict:
    """`n` requests, each arriving at a random time within `spread_s` (or at `arrivals[i]`), at a header-less server
    limiting `rpm` per `window_s` window, answering after `latency` (seconds, or a uniform range). Returns when each
    was admitted (`ok`) or refused (`refused`)."""
    loop = _VirtualLoop()
    server = RateLimiter(EmulatorConfig(rpm=rpm, window_s=window_s), 0.0)
    adm = AdmissionController(None, concurrency=concurrency, clock=loop.time)
    rng = random.Random(0)
    seen: dict = {"ok": [], "refused": []}

    async def request(i: int) -> None:
        if arrivals is not None:
            await asyncio.sleep(arrivals[i])
        elif spread_s:  # arrivals spread over time, else all at once
            await asyncio.sleep(rng.uniform(0.0, spread_s))
        for attempt in range(30):
            ticket = await adm.acquire(0, 0)
            now = loop.time()
            refused = server.admit(COSTS, now)
            if refused is None:
                seen["ok"].append(now)
                await asyncio.sleep(rng.uniform(*latency) if isinstance(latency, tuple) else latency)
                adm.complete(ticket, 0, 0, {})
                return
            server.charge_refused(now)
            seen["refused"].append(now)
            retry_after = math.ceil(refused[2] * 1000) / 1000  # the emulator's retry-after-ms
            await asyncio.sleep(REFUSED_S)
            adm.fail(ticket, rate_limited=True, headers={}, retry_after=retry_after)
            await asyncio.sleep(max(retry_after, min(60.0, 2.0 ** attempt) + rng.uniform(0.0, 1.0)))
        raise AssertionError("a request was refused 30 times")

    async def main() -> None:
        await asyncio.gather(*(request(i) for i in range(n)))

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    return seen


def _between(times: list[float], start: float, end: float) -> int:
    return sum(start <= t < end for t in times)


def test_requests_arriving_during_the_first_pause_draw_no_burst_when_it_ends():
    """60 RPM: 3 of the 4 probes are refused; requests arriving during that Retry-After pause used to double the
    pace every 10 ms (the refused probe's turnaround taken for answers' latency, doublings counted while nothing
    could go), so a burst went when the pause ended, into 429s whose debt and backoff held the run back (before:
    7 429s in the first 5 s and 1 answer in the 30 s after them; now 2 and 28)."""
    seen = _run(rpm=60, latency=0.5, n=40, spread_s=3.0)
    assert _between(seen["refused"], 0.0, 5.0) <= 3
    assert _between(seen["ok"], 5.0, 35.0) >= 0.85 * 30


def test_a_429_only_the_servers_debt_explains_keeps_the_slow_start_paced():
    """120 RPM: the 2 probes refused leave the server in debt, so the first request after their pause is refused
    though nothing else went in the second before it. That ended the slow start with no pace at all: 36 requests
    at once, all refused (before: 39 429s; now 4)."""
    seen = _run(rpm=120, latency=0.5, n=40)
    assert len(seen["refused"]) <= 5
    assert _between(seen["ok"], 10.0, 30.0) >= 0.45 * 40  # no slower than before (about half the limit: the
    # rate learned from a debt-refused request, left open)


@pytest.mark.parametrize("rpm, latency", [(1200, 0.02), (600, 0.5), (3000, 0.2)])
def test_the_slow_start_finds_the_limit_with_a_few_429s_and_keeps_the_steady_rate(rpm, latency):
    """Where the first answers are successes the slow start is as it was: a few 429s where it overshoots the
    server's 1 s burst, then the limit used."""
    n = rpm // 60 * 10
    seen = _run(rpm=rpm, latency=latency, n=n)
    assert len(seen["refused"]) <= 6
    done = max(seen["ok"])
    assert _between(seen["ok"], 2.0, done) >= 0.95 * rpm / 60 * (done - 2.0) - 2
