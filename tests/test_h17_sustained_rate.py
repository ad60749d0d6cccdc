"""The cut to the rate a header-less server took since it began refusing (`_sustained_rpm`, 3b3a121), where
answers take seconds: it counted the requests answered since, over the time up to the last one sent, so the
successes still being generated were missing while the 429s (back in a round trip) were in, and the run was held
at about 2/3 of the limit. Virtual time and the emulator's limiter, as in test_h6_headerless_start."""

from __future__ import annotations

import asyncio
import math
import random

import test_h6_headerless_start as h6

from textbookgen.ratelimit import AdmissionController
from textbookgen.testing.emulator import EmulatorConfig, RateLimiter


def _admitted(rpm: int, n: int, latency: tuple[float, float], concurrency: int = 200) -> list[float]:
    """When each of `n` requests was admitted by a server limiting `rpm` per minute (a minute's bucket), answers
    taking a uniform `latency` range; 429s retried after their Retry-After or a backoff, as the engine does."""
    loop = h6._VirtualLoop()
    server = RateLimiter(EmulatorConfig(rpm=rpm, window_s=60.0), 0.0)
    adm = AdmissionController(None, concurrency=concurrency, clock=loop.time)
    rng = random.Random(0)
    admitted: list[float] = []

    async def request() -> None:
        for attempt in range(30):
            ticket = await adm.acquire(0, 0)
            now = loop.time()
            refused = server.admit(h6.COSTS, now)
            if refused is None:
                admitted.append(now)
                await asyncio.sleep(rng.uniform(*latency))
                adm.complete(ticket, 0, 0, {})
                return
            server.charge_refused(now)
            retry_after = math.ceil(refused[2] * 1000) / 1000
            await asyncio.sleep(h6.REFUSED_S)
            adm.fail(ticket, rate_limited=True, headers={}, retry_after=retry_after)
            await asyncio.sleep(max(retry_after, min(60.0, 2.0 ** attempt) + rng.uniform(0.0, 1.0)))
        raise AssertionError("a request was refused 30 times")

    async def main() -> None:
        await asyncio.gather(*(request() for _ in range(n)))

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    return admitted


def test_answers_of_seconds_do_not_hold_the_rate_under_the_limit():
    """1200 RPM, answers in 0.05 to 8 s: the minute's burst, then 429s at about 39 s. Counted as answered, the rate
    the server took read 777 RPM and 50 to 90 s admitted 691 requests (limit 800); counted as sent, ~1200."""
    admitted = _admitted(1200, 3000, (0.05, 8.0))
    assert sum(50.0 <= t < 90.0 for t in admitted) >= 0.95 * 800
