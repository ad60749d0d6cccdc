"""Unit tests of the admission controller: header parsing, buckets, AIMD, no slot held while waiting."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import datetime, timedelta, timezone

import httpx2
import pytest

from textbookgen.ratelimit import (
    PROBES,
    SLOW_START_S,
    AdaptiveConcurrency,
    AdmissionController,
    Observation,
    RateLimits,
    TokenBucket,
    parse_duration,
    parse_rate_headers,
    parse_reset,
    parse_retry_after,
)


@pytest.mark.parametrize("text, seconds", [
    ("6m0s", 360.0), ("1s", 1.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0.5", 0.5), ("59.123s", 59.123),
    ("2m", 120.0),
])
def test_parse_duration_openai_format(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "5x", "1s garbage"])
def test_parse_duration_rejects_garbage(text):
    assert parse_duration(text) is None


def test_parse_reset_rfc3339_is_seconds_from_now():
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    later = (now + timedelta(seconds=42)).isoformat().replace("+00:00", "Z")
    assert parse_reset(later, now=now.timestamp()) == pytest.approx(42)
    assert parse_reset("2000-01-01T00:00:00Z") == 0.0  # in the past: no wait


def test_openai_headers_case_insensitive_via_httpx():
    headers = httpx2.Headers({
        "X-RateLimit-Limit-Requests": "6000", "X-RateLimit-Remaining-Requests": "5999",
        "X-RateLimit-Reset-Requests": "10ms", "x-ratelimit-limit-tokens": "2000000",
        "x-ratelimit-remaining-tokens": "1999000", "x-ratelimit-reset-tokens": "6m0s",
        "x-request-id": "abc"})
    obs = parse_rate_headers(headers)
    assert obs["requests"] == Observation(6000, 5999, pytest.approx(0.01))
    assert obs["tokens"] == Observation(2_000_000, 1_999_000, 360.0)
    assert set(obs) == {"requests", "tokens"}


def test_anthropic_headers_keep_input_and_output_apart():
    reset = (datetime.now(timezone.utc) + timedelta(seconds=30)).isoformat()
    headers = {
        "anthropic-ratelimit-requests-limit": "50", "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-requests-reset": reset,
        "anthropic-ratelimit-input-tokens-limit": "40000", "anthropic-ratelimit-input-tokens-remaining": "39000",
        "anthropic-ratelimit-output-tokens-limit": "8000", "anthropic-ratelimit-output-tokens-remaining": "7000",
        "anthropic-ratelimit-output-tokens-reset": reset, "anthropic-ratelimit-unified-status": "allowed",
        "anthropic-ratelimit-tokens-limit": "8000", "anthropic-ratelimit-tokens-remaining": "7000",
    }
    obs = parse_rate_headers(headers)
    assert obs["input_tokens"].limit == 40000 and obs["input_tokens"].remaining == 39000
    assert obs["output_tokens"].limit == 8000 and obs["output_tokens"].remaining == 7000  # not swapped
    assert 28 <= obs["requests"].reset_s <= 30
    assert "tokens" not in obs  # Anthropic's "tokens" is the tighter of the two, not a combined budget


def test_garbled_headers_are_ignored():
    obs = parse_rate_headers({"x-ratelimit-limit-requests": "lots", "x-ratelimit-remaining-requests": "-4",
                              "x-ratelimit-limit-bananas": "5"})
    assert obs == {"requests": Observation()}


def test_retry_after_prefers_milliseconds():
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "1"}) == 0.25
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({}) is None
    assert parse_retry_after(None) is None


def test_bucket_paces_at_the_limit_with_headroom():
    b = TokenBucket("requests", 600, headroom=1.0, burst_s=1.0, now=0.0)  # 10/s, burst 10
    assert b.capacity == 10
    for _ in range(10):
        assert b.wait_time(1, 0.0) == 0
        b.take(1)
    assert b.wait_time(1, 0.0) == pytest.approx(0.1)
    assert b.wait_time(1, 0.05) == pytest.approx(0.05)
    assert b.wait_time(1, 0.1) == 0


def test_bucket_learns_limit_and_clamps_to_remaining():
    b = TokenBucket("tokens", None, headroom=1.0, burst_s=60.0, now=0.0)
    assert b.wait_time(10**9, 0.0) == 0  # unknown limit: no waiting
    b.observe(Observation(limit=60_000, remaining=60_000), taken_since=0, age_s=0, now=0.0)
    assert b.limit == 60_000 and b.rate == 1000
    b.observe(Observation(limit=60_000, remaining=5_000), taken_since=1_000, age_s=0.5, now=0.0)
    assert b.level == pytest.approx(5_000 - 1_000 + 500)  # someone else shares the key
    # a stale, larger remaining never raises our level
    b.observe(Observation(limit=60_000, remaining=50_000), taken_since=0, age_s=0, now=0.0)
    assert b.level == pytest.approx(4_500)


def test_user_limit_is_kept_when_server_allows_more():
    b = TokenBucket("requests", 60, headroom=1.0, burst_s=1.0, now=0.0)
    b.observe(Observation(limit=10_000), taken_since=0, age_s=0, now=0.0)
    assert b.limit == 60


def test_aimd_decrease_cooldown_and_additive_increase():
    c = AdaptiveConcurrency(40, successes_per_increase=5, cooldown_s=1.0)
    c.on_rate_limited(now=10.0)
    assert c.limit == 30
    c.on_rate_limited(now=10.5)  # same burst of 429s: one cut
    assert c.limit == 30
    c.on_rate_limited(now=11.5)
    assert c.limit == 22
    for _ in range(10):
        c.on_success()
    assert c.limit == 24
    for _ in range(20):
        c.on_rate_limited(now=100.0 + _ * 2)
    assert c.limit == 1  # never below one


def test_semaphore_limit_is_enforced_and_cancellation_safe():
    async def main():
        c = AdaptiveConcurrency(4, initial=2)
        await c.acquire()
        await c.acquire()
        waiter = asyncio.ensure_future(c.acquire())
        await asyncio.sleep(0)
        assert not waiter.done()
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        c.release()
        assert c.in_use == 1
        c.set_limit(3)
        await c.acquire()
        await c.acquire()
        assert c.in_use == 3
        c.set_limit(100)
        assert c.limit == 4  # never above the user's concurrency

    asyncio.run(main())


def test_admission_waits_by_sleeping_not_polling():
    """20 admissions at 600 RPM (10/s), paced from the first: ~2 s, one computed sleep per admission."""
    async def main():
        adm = AdmissionController(RateLimits(rpm=600), concurrency=100, headroom=1.0, slow_start=False)
        sleeps = []
        real_sleep = asyncio.sleep

        async def counting_sleep(delay, *a):
            sleeps.append(delay)
            await real_sleep(delay, *a)

        asyncio.sleep = counting_sleep
        try:
            t0 = time.monotonic()
            tickets = await asyncio.gather(*(adm.acquire(10, 10) for _ in range(20)))
            elapsed = time.monotonic() - t0
        finally:
            asyncio.sleep = real_sleep
        for t in tickets:
            adm.complete(t, 10, 5)
        return elapsed, sleeps

    elapsed, sleeps = asyncio.run(main())
    assert 1.5 <= elapsed < 4.0
    assert len(sleeps) <= 21 and all(s > 0.01 for s in sleeps)  # a polling loop would sleep far more


def test_output_reservation_is_refunded():
    adm = AdmissionController(RateLimits(output_tpm=60_000), concurrency=10, headroom=1.0, slow_start=False)

    async def main():
        ticket = await adm.acquire(100, 4000)
        level_reserved = adm.buckets["output_tokens"].level
        adm.complete(ticket, 100, 50)
        return level_reserved, adm.buckets["output_tokens"].level

    reserved, after = asyncio.run(main())
    assert after - reserved == pytest.approx(3950, abs=5)


def test_an_abandoned_attempt_keeps_its_reservation_and_frees_its_slot():
    """The provider may still be generating a request the client gave up on: its tokens stay taken."""
    adm = AdmissionController(RateLimits(tpm=60_000, output_tpm=60_000), concurrency=1, headroom=1.0,
                              slow_start=False)

    async def main():
        ticket = await adm.acquire(100, 4000)
        levels = {name: adm.buckets[name].level for name in ("tokens", "output_tokens")}
        adm.abandon(ticket)
        return levels, await adm.acquire(1, 1)  # the slot is free again

    reserved, _ = asyncio.run(main())
    assert adm.buckets["tokens"].level == pytest.approx(reserved["tokens"], abs=5)
    assert adm.buckets["output_tokens"].level == pytest.approx(reserved["output_tokens"], abs=5)


def test_slow_start_until_first_answer_then_full_concurrency():
    async def main():
        adm = AdmissionController(None, concurrency=8)
        probes = [await adm.acquire(1, 1) for _ in range(PROBES)]
        more = asyncio.ensure_future(adm.acquire(1, 1))
        await asyncio.sleep(0.01)
        assert not more.done()  # a few probes on the wire until the server has answered once
        adm.complete(probes[0], 1, 1, {"x-ratelimit-limit-requests": "600"})
        t2 = await more
        assert adm.concurrency.limit == 8 and adm.headers_seen
        assert adm.limits["requests"] == 600
        for t in (*probes[1:], t2):
            adm.cancel(t)

    asyncio.run(main())


def test_429_cuts_concurrency_and_clamps_bucket():
    async def main():
        adm = AdmissionController(None, concurrency=40, slow_start=False, headroom=1.0)
        ticket = await adm.acquire(10, 10)
        adm.fail(ticket, rate_limited=True, headers={"x-ratelimit-limit-requests": "6000",
                                                     "x-ratelimit-remaining-requests": "0"})
        assert adm.concurrency.limit == 30 and adm.rate_limited == 1
        assert adm.buckets["requests"].level < 1
        t0 = time.monotonic()
        t = await adm.acquire(10, 10)  # waits for the refill (10 ms at 100/s), by one sleep
        assert time.monotonic() - t0 < 0.5
        adm.cancel(t)

    asyncio.run(main())


def test_first_answer_a_429_still_cuts_concurrency():
    async def main():
        adm = AdmissionController(None, concurrency=40)
        ticket = await adm.acquire(1, 1)
        adm.fail(ticket, rate_limited=True)
        return adm.concurrency.limit

    assert asyncio.run(main()) == 30  # opened to 40 by the first answer, then cut


def test_429_from_a_server_without_headers_pauses_admission_for_retry_after():
    async def main():
        adm = AdmissionController(None, concurrency=8, slow_start=False)
        ticket = await adm.acquire(1, 1)
        adm.fail(ticket, rate_limited=True, retry_after=0.3)
        t0 = time.monotonic()
        t = await adm.acquire(1, 1)
        waited = time.monotonic() - t0
        adm.complete(t, 1, 1, {"x-ratelimit-limit-requests": "6000"})  # a server with headers...
        t = await adm.acquire(1, 1)
        adm.fail(t, rate_limited=True, retry_after=5.0)  # ...is paced by its buckets, not paused
        return waited, adm.paused_until - time.monotonic()

    waited, left = asyncio.run(main())
    assert waited >= 0.25 and left < 0


def test_output_remaining_clamps_only_on_429():
    """A server that counts only generated tokens reports more output room than our reservations
    leave; trusting it on success would double-count, on a 429 it is the truth."""
    async def main():
        adm = AdmissionController(None, concurrency=8, slow_start=False, headroom=1.0)
        hdr = {"anthropic-ratelimit-output-tokens-limit": "60000",
               "anthropic-ratelimit-output-tokens-remaining": "100",
               "anthropic-ratelimit-requests-limit": "600", "anthropic-ratelimit-requests-remaining": "0"}
        t = await adm.acquire(10, 500)
        adm.complete(t, 10, 50, hdr)
        out_after_ok, req_after_ok = adm.buckets["output_tokens"].level, adm.buckets["requests"].level
        t = await adm.acquire(10, 500)
        adm.fail(t, rate_limited=True, headers=hdr)
        return out_after_ok, req_after_ok, adm.buckets["output_tokens"].level

    out_ok, req_ok, out_429 = asyncio.run(main())
    assert out_ok > 50_000 and req_ok < 1 and out_429 <= 200


def _share_a_key(foreign_per_s: float, seconds: float = 40.0, window_s: float = 1.0,
                 start_empty: bool = False) -> tuple[int, int, float]:
    """Virtual time: our controller and another process (pacing `foreign_per_s`) on one key of 600 RPM, enforced
    OpenAI-style (a 1 s bucket; a refused request counts too) or over a longer `window_s` (Anthropic's bucket holds
    a minute), answers after 0.3 s; `start_empty`: a run before ours emptied it. Returns our answered and refused
    requests in the second half, and the server's total admitted rate there, per second."""
    now = [0.0]
    limit, cap, latency = 600, 10.0 * window_s, 0.3
    server = {"level": 0.0 if start_empty else cap, "t": 0.0}

    def server_level() -> float:
        server["level"] = min(cap, server["level"] + (now[0] - server["t"]) * limit / 60)
        server["t"] = now[0]
        return server["level"]

    def admit() -> bool:
        ok = server_level() >= 1
        server["level"] = server["level"] - 1 if ok else max(-cap, server["level"] - 1)
        return ok

    def headers() -> dict:
        level = server_level()
        return {"x-ratelimit-limit-requests": str(limit), "x-ratelimit-remaining-requests": str(max(0, int(level))),
                "x-ratelimit-reset-requests": f"{max(0.0, cap - level) * 60 / limit:.3f}s"}

    async def main() -> tuple[int, int, float]:
        adm = AdmissionController(None, concurrency=1000, headroom=1.0, clock=lambda: now[0])
        on_wire: list[tuple[float, object, bool]] = []
        ours_ok = ours_refused = admitted = 0
        next_foreign = 0.0
        for step in range(int(seconds / 0.005)):
            now[0] = step * 0.005
            late = now[0] >= seconds / 2
            if foreign_per_s and now[0] >= next_foreign:
                next_foreign += 1 / foreign_per_s
                admitted += admit() and late
            for item in [w for w in on_wire if w[0] <= now[0]]:
                on_wire.remove(item)
                _, ticket, ok = item
                if ok:
                    adm.complete(ticket, 0, 0, headers())
                else:
                    adm.fail(ticket, rate_limited=True, headers=headers())
            while adm.buckets["requests"].wait_time(1, now[0]) <= 0 and \
                    adm.concurrency.in_use < int(adm.concurrency.limit):
                ticket = await adm.acquire(0, 0)
                ok = admit()
                admitted += ok and late
                ours_ok += ok and late
                ours_refused += (not ok) and late
                on_wire.append((now[0] + (latency if ok else 0.01), ticket, ok))
        return ours_ok, ours_refused, admitted / (seconds / 2)

    return asyncio.run(main())


def test_another_process_on_the_key_gets_its_share_without_a_429_storm():
    """Another process spending half the key's limit shows only in the server's `remaining`: we keep to the
    rest instead of pacing at the whole limit into 429s (which, counted by OpenAI, starve both)."""
    ours_ok, ours_refused, total = _share_a_key(foreign_per_s=5.0)
    assert ours_refused <= 0.1 * ours_ok
    assert total >= 0.85 * 10  # the key's limit is still used


def test_alone_on_the_key_the_whole_limit_is_used():
    ours_ok, ours_refused, total = _share_a_key(foreign_per_s=0.0)
    assert ours_refused == 0 and ours_ok >= 0.9 * 10 * 20


def test_alone_on_a_key_a_run_before_emptied_the_share_a_429_cut_comes_back():
    """A minute-long bucket (Anthropic's) that the run before ours emptied: the first requests draw 429s, which cut
    our share of the limit. Alone on the key, the server's room grows past what our share leaves us, and the share
    comes back within seconds; it used to wait until the server's bucket was half full, a minute and more at 3/4 of
    the limit."""
    ours_ok, ours_refused, total = _share_a_key(foreign_per_s=0.0, seconds=60.0, window_s=60.0, start_empty=True)
    assert ours_refused == 0 and ours_ok >= 0.9 * 10 * 30


def test_a_minute_long_bucket_is_shared_with_another_process_without_a_429_storm():
    """The same with another process spending half the limit: the key's limit is used again within a minute (it
    used to stay at 0.7 of it for more than that), with few 429s."""
    ours_ok, ours_refused, total = _share_a_key(foreign_per_s=5.0, seconds=90.0, window_s=60.0, start_empty=True)
    assert ours_refused <= 0.1 * ours_ok
    assert total >= 0.85 * 10


def _headerless_server(rpm: float | None, latency: float, seconds: float = 20.0, concurrency: int = 64) -> dict:
    """Virtual time: a proxy with an RPM limit over a 1 s window that sends no limit headers, only 429s with a
    Retry-After (a refused request counts against the limit, as OpenAI's does, and the emulator's Retry-After
    leaves it out), answering after `latency`; rpm None: a server without limits (vLLM). We send as fast as the
    controller admits. Returns our answered and refused requests in the second half (`ok`, `refused`), refused
    ones in the first 2 s (`refused_early`), the most requests on the wire at once in the first `latency` after
    the first answer (`opened_to`), and the controller."""
    now = [0.0]
    rate, cap = (rpm or math.inf) / 60, max(1.0, (rpm or 0) / 60)
    server = {"level": cap, "t": 0.0}

    def admit() -> tuple[bool, float]:
        if rpm is None:
            return True, 0.0
        server["level"] = min(cap, server["level"] + (now[0] - server["t"]) * rate)
        server["t"] = now[0]
        ok = server["level"] >= 1
        retry_after = max(0.0, (1 - server["level"]) / rate)
        server["level"] = server["level"] - 1 if ok else max(-cap, server["level"] - 1)
        return ok, retry_after

    async def main() -> dict:
        adm = AdmissionController(None, concurrency=concurrency, clock=lambda: now[0])
        on_wire: list[tuple[float, object, bool, float]] = []
        seen = {"ok": 0, "refused": 0, "refused_early": 0, "opened_to": 0, "adm": adm}
        first_answer = None
        for step in range(int(seconds / 0.005)):
            now[0] = step * 0.005
            for item in [w for w in on_wire if w[0] <= now[0]]:
                on_wire.remove(item)
                _, ticket, ok, retry_after = item
                first_answer = now[0] if first_answer is None else first_answer
                if ok:
                    adm.complete(ticket, 0, 0, {})
                else:
                    adm.fail(ticket, rate_limited=True, headers={}, retry_after=retry_after)
            while adm.concurrency.in_use < int(adm.concurrency.limit) and now[0] >= adm.paused_until:
                if adm.buckets["requests"].wait_time(1, now[0]) > 0:
                    adm._paced_at = now[0]  # as a request waiting in acquire() would
                    break
                ticket = await adm.acquire(0, 0)
                ok, retry_after = admit()
                late = now[0] >= seconds / 2
                seen["ok"] += ok and late
                seen["refused"] += (not ok) and late
                seen["refused_early"] += (not ok) and now[0] < 2.0
                on_wire.append((now[0] + (latency if ok else 0.005), ticket, ok, retry_after))
            if first_answer is not None and now[0] <= first_answer + latency:
                seen["opened_to"] = max(seen["opened_to"], len(on_wire))
        return seen

    return asyncio.run(main())


@pytest.mark.parametrize("latency", [0.02, 0.5])
def test_a_server_without_headers_gets_its_rate_learned_from_429s(latency):
    """A proxy with an RPM limit and no headers: concurrency cannot cap a rate when answers are quick (one in
    flight at 20 ms is 50 a second), so the rate is learned from the 429s: most of the limit, few 429s."""
    seen = _headerless_server(rpm=1200, latency=latency)
    assert seen["ok"] >= 0.9 * 20 * 10 and seen["refused"] <= 0.02 * seen["ok"]


def test_the_first_burst_at_a_server_without_headers_is_a_few_requests():
    """Until its first 429 the request rate is slow-started (doubling every round trip of 20 ms), so a 1200 RPM
    proxy refuses a few requests, not most of 64 sent at once (before: 59 in the first 2 s; now 2)."""
    assert _headerless_server(rpm=1200, latency=0.02, seconds=4.0)["refused_early"] <= 8


def test_a_low_rpm_limit_without_headers_is_mostly_used():
    """60 RPM counted per second: a 429 one second is no success in the next, so the rate is learned from what
    was sent (before: from answers of the last second, often none, so nothing was learned: 38 answers and 17
    429s a minute), then held just under the rate refused (now 56 and 2)."""
    seen = _headerless_server(rpm=60, latency=0.5, seconds=120.0)
    assert seen["ok"] >= 0.85 * 60 and seen["refused"] <= 4


def test_a_server_without_limits_is_held_back_only_for_a_moment():
    """vLLM never sends a 429: the slow start opens up to the whole concurrency within a second of its first
    answer (answers take 1 s), then leaves it unpaced."""
    seen = _headerless_server(rpm=None, latency=1.0, seconds=4.0, concurrency=256)
    assert seen["opened_to"] == 256 and seen["refused"] == 0 and seen["adm"].buckets["requests"].limit is None


def test_a_rate_is_learned_only_from_429s_and_forgotten_once_the_server_sends_headers():
    """No 429, no pacing (vLLM has no limit at all); a limit header makes the guess moot."""
    async def main():
        now = [0.0]
        adm = AdmissionController(None, concurrency=8, slow_start=False, clock=lambda: now[0])
        for _ in range(10):
            adm.complete(await adm.acquire(0, 0), 0, 0)
        unlimited = adm.limits["requests"]
        adm.fail(await adm.acquire(0, 0), rate_limited=True, retry_after=0.0)
        learned = adm.limits["requests"]
        now[0] = 1.0  # the learned bucket has refilled
        adm.complete(await adm.acquire(0, 0), 0, 0, {"x-ratelimit-limit-tokens": "100000"})
        return unlimited, learned, adm.limits["requests"]

    unlimited, learned, after = asyncio.run(main())
    assert unlimited is None and learned == pytest.approx(0.75 * 10 * 60) and after is None


def test_a_429_answered_late_learns_from_what_was_sent_around_its_request():
    """A 429 may come back seconds after its request went out (a slow proxy): the rate is learned from the
    requests sent in the second before that request, not from those sent since."""
    async def main():
        now = [0.0]
        adm = AdmissionController(None, concurrency=64, slow_start=False, clock=lambda: now[0])
        early = [await adm.acquire(0, 0) for _ in range(10)]  # 10 in the second before the refused one
        refused = await adm.acquire(0, 0)
        now[0] = 1.5
        later = [await adm.acquire(0, 0) for _ in range(30)]
        now[0] = 3.0
        adm.fail(refused, rate_limited=True, retry_after=0.0)
        for t in early + later:
            adm.cancel(t)
        return adm.limits["requests"]

    assert asyncio.run(main()) == pytest.approx(0.75 * 10 * 60)


def test_refused_probes_teach_a_pause_not_a_rate():
    """The probes go out at once before anything is known: a 429 among them says how many the server takes at
    once (or that others drained the key), not how many a second, so the slow start goes on from its first pace
    rather than from 45 RPM learned from one request."""
    async def main():
        now = [0.0]
        adm = AdmissionController(None, concurrency=64, clock=lambda: now[0])
        probes = [await adm.acquire(0, 0) for _ in range(PROBES)]
        now[0] = 0.01
        for ticket in probes[1:]:
            adm.fail(ticket, rate_limited=True, retry_after=1.0)
        adm.cancel(probes[0])
        return adm.buckets["requests"].learned_limit

    assert asyncio.run(main()) == pytest.approx(64 / 8 / SLOW_START_S * 60)
