"""Admission control: token buckets for requests, input and output tokens, fed by the server's headers,
under an AIMD concurrency limit.

Why this shape (field notes §7-8): providers enforce RPM and (separate or combined) token budgets;
they say where you stand in every response's headers, so we learn and clamp the limits from real
responses (no paid probe call), pace requests evenly instead of bursting into 429s, reserve
`max_tokens` of output up front and refund what was not used (an attempt abandoned on a timeout refunds
nothing: the provider goes on generating it), and cut concurrency multiplicatively when a 429 still gets
through. Processes on one host on the same server, key and model keep one set of buckets in a small file
(textbookgen/sharedlimits.py, field notes §7.1), and send PROBES requests between them before the server first
answers (`HostProbes`); processes on other hosts share the key through the same headers:
when the server's `remaining` falls faster than this host's spend explains, the host cuts its share of the refill
rate, and grows it back while the server's bucket has room. A server that sends no limit headers (a proxy with an
RPM limit) speaks only through 429s, and concurrency cannot cap a rate when answers are quick: its request rate
is slow-started until the first 429 (`AdmissionController._ramp`), then learned from the 429s, AIMD on the
requests bucket held just under the rate last refused (`_cut_rate`, `_grow`), or cut at once to the rate the server
took since it began refusing, where that is far less (`_sustained_rpm`: a minute's burst spent by the slow start).
Waiting is a computed sleep (no polling loop; only a process waiting for another's probes to be answered looks at
the shared file again every SLOW_START_S, the one place that answer shows), and a request gives its concurrency slot
back before any retry backoff.
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
import re
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from textbookgen.sharedlimits import SharedRecord, process_alive

BUCKETS = ("requests", "tokens", "input_tokens", "output_tokens")
_INDEX = {name: i for i, name in enumerate(BUCKETS)}
_EXACT = ("requests", "input_tokens")  # known in full when a request is sent
LEARN_CUT = 0.75  # a 429 from a header-less server: pace at this much of the rate it just admitted
LEARN_GROWTH = 0.15  # then grow back by this fraction of the rate refused per second of successes...
LEARN_NEAR = 0.95  # ...up to this much of it (where a 429 at about the same rate again cuts back to), and on by
LEARN_PROBE = 0.002  # this fraction a second, doubling every LEARN_PROBE_DOUBLING_S: the limit is most likely where
LEARN_PROBE_DOUBLING_S = 30.0  # the last 429 came, but may have been raised, or left by others
GUESS_DOUBLING_S = 5.0  # or every this many seconds above a rate only guessed (`_cut_rate`: the server's debt)
MIN_LEARNED_RPM = 1.0  # the least a learned limit falls to
REFUSALS_GAP_S = 10.0  # a 429 this long after the last cut begins a new run of refusals (`_sustained_rpm`), whose
SUSTAINED_S = 0.3  # requests, once sent over this long, say the rate the server takes (counted as they go, not
# as answered, they need no round trip to be complete; 300 RPM in a minute's bucket: done in 42.0 s, at 0.5 s 43.6)
MIN_SHARE = 1 / 32  # the least of a limit a process keeps when others on its key spend the rest
SPARE_S = 2.0  # a server's bucket holding this many seconds of the limit beyond our model has room nobody takes
PROBES = 4  # requests on the wire before the server first answers: a bad key costs at most this many (the host's
# processes on one shared budget together, see `HostProbes`)
PROBE_HOLD_S = 60.0  # a probe of a process still alive but silent this long frees its place (a stopped process)
SLOW_START_S = 0.1  # from then on a header-less server's request rate starts at an eighth of the concurrency (at
# least PROBES) per this, and doubles as often (or once per first answer's latency, if shorter)

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


@dataclass
class RateLimits:
    """Per-minute budgets you want to stay under (None: learn from headers, or no limit).

    `tpm` is a combined input+output budget (OpenAI's `x-ratelimit-*-tokens`); Anthropic has separate
    input and output budgets. The effective limit of each bucket is the smaller of yours and the
    server's.
    """

    rpm: float | None = None
    input_tpm: float | None = None
    output_tpm: float | None = None
    tpm: float | None = None

    def __post_init__(self) -> None:
        for name in ("rpm", "input_tpm", "output_tpm", "tpm"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")


def parse_duration(value: str) -> float | None:
    """Seconds in an OpenAI reset value such as "6m0s", "1s", "20ms", "1h2m3.5s" or a bare "0.5"."""
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    parts = _DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value.replace(" ", ""):
        return None
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def parse_reset(value: str, now: float | None = None) -> float | None:
    """Seconds until a reset given as a duration ("6m0s") or an RFC 3339 instant (Anthropic)."""
    seconds = parse_duration(value)
    if seconds is not None:
        return seconds
    try:
        instant = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=timezone.utc)
    return max(0.0, instant.timestamp() - (time.time() if now is None else now))


def parse_retry_after(headers) -> float | None:
    """The server's retry hint in seconds: `retry-after-ms`, else `retry-after` (seconds or HTTP date)."""
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


@dataclass
class Observation:
    """What one response said about one bucket."""

    limit: float | None = None
    remaining: float | None = None
    reset_s: float | None = None


def parse_rate_headers(headers) -> dict[str, Observation]:
    """Read OpenAI (`x-ratelimit-{limit,remaining,reset}-{requests,tokens}`) and Anthropic
    (`anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}`)
    headers into {bucket: Observation}. One pass over the headers; unknown or garbled values are
    skipped, never fatal."""
    found: dict[str, Observation] = {}
    if headers is None:
        return found
    raw = getattr(headers, "raw", None)  # httpx: bytes pairs; decode only the few headers we want
    pairs = ((k.decode("latin-1"), v.decode("latin-1")) for k, v in raw if k[:1] in b"xXaA") if raw \
        else headers.items()
    for raw_name, value in pairs:
        name = raw_name.lower()
        if name.startswith("x-ratelimit-"):
            field, _, bucket = name[12:].partition("-")
        elif name.startswith("anthropic-ratelimit-"):
            bucket, _, field = name[20:].rpartition("-")
            if bucket == "tokens":  # "the most restrictive" of input/output, not a combined budget
                continue
        else:
            continue
        bucket = bucket.replace("-", "_")
        if bucket not in BUCKETS or field not in ("limit", "remaining", "reset"):
            continue
        obs = found.setdefault(bucket, Observation())
        if field == "reset":
            obs.reset_s = parse_reset(value)
            continue
        try:
            number = float(value)
        except ValueError:
            continue
        if math.isfinite(number) and number >= 0:
            setattr(obs, field, number)
    return found


class TokenBucket:
    """A per-minute budget refilled continuously, with a small burst (`burst_s` seconds of refill).

    A small burst paces requests evenly, the way providers actually enforce per-minute limits
    (quantised to seconds), rather than spending a minute's budget in the first second.
    """

    __slots__ = ("name", "user_limit", "server_limit", "headroom", "burst_s", "start_full", "rate",
                 "capacity", "level", "t", "taken", "share", "full_rate", "_decided_at", "_foreign",
                 "learned_limit")

    def __init__(self, name: str, user_limit: float | None, *, headroom: float, burst_s: float,
                 now: float, start_full: bool = True) -> None:
        self.name = name
        self.user_limit = user_limit
        self.server_limit: float | None = None
        self.learned_limit: float | None = None  # from 429s alone, where the server sends no limit headers
        self.headroom = headroom
        self.burst_s = burst_s
        self.start_full = start_full
        self.rate = math.inf
        self.capacity = math.inf
        self.level = 0.0
        self.t = now
        self.taken = 0.0  # running total of everything taken: lets a response's `remaining` be aged
        self.share = 1.0  # of the limit we refill at: less while others spend the same key (see `observe`)
        self.full_rate = math.inf
        self._decided_at = now  # when `share` was last changed or confirmed
        self._foreign = 0.0  # how far the server fell below our model since then: others' spend
        self._configure(now, fill=True)

    @property
    def limit(self) -> float | None:
        limits = [x for x in (self.user_limit, self.server_limit, self.learned_limit) if x]
        return min(limits) if limits else None

    def _configure(self, now: float, fill: bool = False) -> None:
        self.refill(now)
        self._derive(fill)

    def _derive(self, fill: bool = False) -> None:
        """Rate and capacity from the limit and share; `fill` starts the level full (or empty)."""
        limit = self.limit
        if limit is None:
            self.rate = self.full_rate = self.capacity = math.inf
            return
        self.full_rate = limit * self.headroom / 60.0
        self.rate = self.full_rate * self.share
        self.capacity = max(self.full_rate * self.burst_s, 1.0)
        if fill:
            self.level = self.capacity if self.start_full else 0.0
        else:
            self.level = min(self.level, self.capacity)

    SHARED = ("level", "t", "taken", "share", "server_limit", "learned_limit", "_decided_at", "_foreign")

    def state(self) -> list[float | None]:
        """What processes on one host share of this bucket (`SHARED`); the user's limit stays each process's own."""
        return [getattr(self, name) for name in self.SHARED]

    def restore(self, values: Sequence[float | None]) -> None:
        """Take on another process's `state()` on this host, under our own user limit."""
        for name, value in zip(self.SHARED, values, strict=True):
            setattr(self, name, value)
        self.share = min(max(self.share or 1.0, MIN_SHARE), 1.0)
        self._derive()

    def join(self, now: float) -> None:
        """A process's first look at a shared bucket: it holds no more than this process's fresh one would
        (`start_full`), as alone. A requests bucket nobody drew from for a second is full, and a joining process's
        burst on fresh connections reached a server at its exact rate as one late clump (20-130 ms after admission
        while we count that time's refill), into 429s; a debt (a 429's `empty_at`) stays."""
        self.refill(now)
        if not self.start_full:
            self.level = min(self.level, 0.0)

    def learn(self, limit: float | None, now: float) -> None:
        """Set (None: forget) the limit learned from 429s; the level carries over, so a cut sends no burst."""
        self.learned_limit = limit
        self._configure(now)

    def empty_at(self, t: float, now: float) -> None:
        """The server's bucket is empty (it said so with a 429) and refills from `t` on: so does ours."""
        if self.rate != math.inf:
            self.refill(now)
            self.level = min(self.level, -(t - now) * self.rate)

    def refill(self, now: float) -> None:
        if now > self.t:
            if self.rate != math.inf:
                self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
            self.t = now

    def wait_time(self, n: float, now: float) -> float:
        """Seconds until `n` can be taken (a request bigger than the burst waits for a full burst)."""
        if self.rate == math.inf:
            return 0.0
        self.refill(now)
        need = min(n, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def take(self, n: float) -> None:
        self.taken += n
        if self.rate != math.inf:
            self.level -= n

    def give(self, n: float) -> None:
        if self.rate != math.inf:
            self.level = min(self.capacity, self.level + n)

    def observe(self, obs: Observation, taken_since: float, age_s: float, now: float,
                clamp: bool = True, sent_at: float | None = None, rate_limited: bool = False) -> None:
        """Learn the server's limit; with `clamp`, lower our level to the server's `remaining`, aged
        by what we have taken since that request was sent and what refilled since (our share of it),
        and adapt that share to what others spend (see `_adapt`)."""
        if obs.limit and obs.limit != self.server_limit:
            self.server_limit = obs.limit
            self._configure(now, fill=self.rate == math.inf)  # first limit known: start full, then clamp
        if obs.remaining is None or self.rate == math.inf:
            return
        self.refill(now)
        server_level = obs.remaining * self.headroom - taken_since + age_s * self.rate
        if clamp and server_level < self.level:
            self._foreign += self.level - server_level
            self.level = max(server_level, 0.0)
        if sent_at is not None:
            self._adapt(obs, server_level, sent_at, now, rate_limited)

    def _adapt(self, obs: Observation, server_level: float, sent_at: float, now: float,
               rate_limited: bool) -> None:
        """Share the limit with other processes on the same key, which nobody tells us about but the
        server's `remaining`: once per round trip (an answer to a request sent after the last decision),
        cut our refill rate by a quarter when the server's bucket is in its lower half and either its level
        fell below our model by more than noise (others spent it) or a 429 got through; grow it back
        while the server's bucket is over half full (nobody is short), or holds more than our model by over
        SPARE_S of the limit and a twentieth of the bucket (nobody takes what our share leaves: with a minute-long
        bucket, Anthropic's, waiting for half of it held a process alone on its key at 3/4 of the limit for a minute
        or more after one 429; a bucket of a second's limit, OpenAI's, never holds that much). Each process
        cutting by the same factor keeps the total stable however many share the key; growing while there is room
        reclaims what a finished process leaves."""
        if sent_at <= self._decided_at:
            return
        span = now - self._decided_at
        server_capacity = self.capacity
        if obs.reset_s is not None and obs.remaining is not None:
            server_capacity = max(1.0, obs.remaining + obs.reset_s * (self.server_limit or self.limit) / 60.0)
        low = server_level < 0.5 * server_capacity
        others = self._foreign > 1.0 + 0.05 * self.full_rate * span
        spare = server_level - self.level > SPARE_S * self.full_rate + 0.05 * server_capacity
        if low and (rate_limited or others):  # `others` only where `remaining` is trusted (clamped)
            self.share = max(MIN_SHARE, self.share * 0.75)
        elif not low or spare:
            self.share = min(1.0, self.share * (1.0 + 0.5 * min(span, 1.0)) + 0.02)
        self._foreign = 0.0
        self._decided_at = now
        self.refill(now)
        self.rate = self.full_rate * self.share


class AdaptiveConcurrency:
    """A semaphore whose size follows AIMD: x`decrease` on a 429 (at most once per `cooldown_s`),
    +1 per `successes_per_increase` successes, never above `max_limit` nor below 1."""

    def __init__(self, max_limit: int, *, initial: int | None = None, decrease: float = 0.75,
                 successes_per_increase: int = 25, cooldown_s: float = 1.0) -> None:
        if max_limit < 1:
            raise ValueError(f"concurrency must be >= 1, got {max_limit}")
        self.max_limit = max_limit
        self.limit = float(min(initial or max_limit, max_limit))  # slow start never exceeds your maximum
        self.decrease = decrease
        self.successes_per_increase = successes_per_increase
        self.cooldown_s = cooldown_s
        self.in_use = 0
        self._successes = 0
        self._last_decrease = -math.inf
        self._waiters: deque[asyncio.Future] = deque()

    async def acquire(self) -> None:
        if self.in_use < int(self.limit) and not self._waiters:
            self.in_use += 1
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # granted just as we were cancelled: pass the slot on
            elif fut in self._waiters:
                self._waiters.remove(fut)
            raise

    def release(self) -> None:
        self.in_use -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_use < int(self.limit):
            fut = self._waiters.popleft()
            if not fut.done():
                self.in_use += 1
                fut.set_result(None)

    def set_limit(self, limit: float) -> None:
        self.limit = max(1.0, min(float(self.max_limit), limit))
        self._wake()

    def on_success(self) -> None:
        self._successes += 1
        if self._successes >= self.successes_per_increase and self.limit < self.max_limit:
            self._successes = 0
            self.set_limit(self.limit + 1)

    def on_rate_limited(self, now: float) -> None:
        self._successes = 0
        if now - self._last_decrease >= self.cooldown_s:
            self._last_decrease = now
            self.set_limit(math.floor(self.limit * self.decrease))


class Ticket:
    """One admitted attempt: what it reserved, so it can be refunded and its headers aged."""

    __slots__ = ("tokens_in", "tokens_out", "t_send", "taken", "sent_before", "probe", "sends_before", "after_pause")

    def __init__(self, tokens_in: float, tokens_out: float, t_send: float, taken: tuple, sent_before: int = 0) -> None:
        self.tokens_in = tokens_in
        self.tokens_out = tokens_out
        self.t_send = t_send
        self.taken = taken
        self.sent_before = sent_before  # requests sent in the second before it (kept while no headers are seen)
        self.probe = False  # it holds one of the host's places for probes (`HostProbes`)
        self.sends_before = 0.0  # requests sent before it since the controller began (while no headers are seen)
        self.after_pause = False  # a Retry-After pause ended in the second before it (while no headers are seen)


class HostProbes:
    """The probes of the processes on one shared budget: PROBES requests on the wire between them before the
    server first answers this host's key, not PROBES each, since N processes started together would otherwise put
    N x PROBES on the wire at once, into 429s behind a proxy that says nothing of its limit. Each place is held as
    (pid, sent at): its answer frees it, and so does its process's death (a SIGKILL answers nothing) or, for a
    process alive but silent, PROBE_HOLD_S. Once an answer has shown the key works (a success or a 429) the
    places are done with: a process that has yet to hear from the server sends its own probes, as a lone one
    does, paced by the shared buckets."""

    LAYOUT = ("probes.opened_at", *(f"probes.{field}{i}" for i in range(PROBES) for field in ("pid", "sent")))
    SIZE = len(LAYOUT)

    def __init__(self) -> None:
        self.opened_at: float | None = None  # when the server first answered the key (None: not yet)
        self.places: list[float | None] = [None] * (2 * PROBES)  # pid, sent at; pid, sent at; ...

    def state(self) -> list[float | None]:
        return [self.opened_at, *self.places]

    def restore(self, values: Sequence[float | None]) -> None:
        self.opened_at, self.places = values[0], list(values[1:])

    def hold(self, pid: int, now: float) -> bool:
        """Take a free place for a probe `pid` sends now; False where all are held."""
        for i in range(0, len(self.places), 2):
            holder, sent = self.places[i], self.places[i + 1]
            if holder is None or sent is None or not 0 <= now - sent <= PROBE_HOLD_S \
                    or not process_alive(int(holder)):
                self.places[i:i + 2] = [pid, now]
                return True
        return False

    def free(self, pid: int, sent: float) -> None:
        """The probe `pid` sent at `sent` is answered, failed or given up on: its place is free."""
        for i in range(0, len(self.places), 2):
            if self.places[i:i + 2] == [pid, sent]:
                self.places[i:i + 2] = [None, None]
                return


def _on_host(method):
    """Run an `AdmissionController` method on the buckets it shares with the processes on this host (`_synced`)."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        return self._synced(lambda: method(self, *args, **kwargs))
    return run


class AdmissionController:
    """Decides when the next attempt may go: a concurrency slot, then the buckets (FIFO, one computed
    sleep at a time). Call exactly one of `complete`, `fail`, `abandon` or `cancel` per admitted ticket.

    `shared` (a `SharedRecord` opened with `SHARED_SIZE`, laid out here as `shared_layout()`): the buckets, the
    limits learned, the header-less rate learning and the probes sent before the server first answered
    (`HostProbes`) are kept there, one budget for the processes on this host on the same (server, key, model), read
    and written back around every admission and answer, so their spend is not foreign to each other's `share`;
    concurrency stays each process's own. Its times are `time.monotonic()`, which is the host's: keep the clock."""

    _SHARED = ("paused_until", "_rate_decided_at", "_grown_at", "_refused_at_rpm", "_sent_count", "_sent_t",
               "_ramp_at", "_ramp_s", "_paced_at",  # one slow start for the host, doubling what they all send
               "_sends", "_sent_last", "_waiting_until", "_idle_until", "_refusing_at", "_refusing_from", "_guessed")
    SHARED_SIZE = len(BUCKETS) * len(TokenBucket.SHARED) + len(_SHARED) + HostProbes.SIZE

    @classmethod
    def shared_layout(cls) -> tuple[str, ...]:
        """The names of the numbers in the host's shared record, in order (`SharedRecord.lay_out`): a process that
        lays them out otherwise (another version) reads this one's record as foreign."""
        return (*(f"{bucket}.{name}" for bucket in BUCKETS for name in TokenBucket.SHARED), *cls._SHARED,
                *HostProbes.LAYOUT)

    def __init__(self, limits: RateLimits | None, concurrency: int, *, headroom: float = 0.99,
                 request_burst_s: float = 1.0, token_burst_s: float = 60.0, slow_start: bool = True,
                 batch_s: float = 0.1, clock=time.monotonic, shared: SharedRecord | None = None) -> None:
        limits = limits or RateLimits()
        self.clock = clock
        now = clock()
        user = {"requests": limits.rpm, "tokens": limits.tpm, "input_tokens": limits.input_tpm,
                "output_tokens": limits.output_tpm}
        # Requests are paced from the first one (a 1 s burst: providers quantise per-minute limits to
        # seconds, and a burst of fresh connections reaches the server as one clump); token buckets
        # hold a minute, room for max_tokens reservations that are mostly refunded.
        self.buckets = {name: TokenBucket(name, user[name], headroom=headroom, now=now,
                                          burst_s=request_burst_s if name == "requests" else token_burst_s,
                                          start_full=name != "requests")
                        for name in BUCKETS}
        self._req, self._tok, self._in, self._out = (self.buckets[b] for b in BUCKETS)
        # Until the first answer we do not know the server's limits: a few probes on the wire (the first
        # of several latencies comes back sooner than one's); the first answer opens up to `concurrency`.
        self.concurrency = AdaptiveConcurrency(concurrency, initial=PROBES if slow_start else None)
        self._started = not slow_start
        self._lock = asyncio.Lock()
        self.headers_seen = False
        self.rate_limited = 0
        self.paused_until = -math.inf
        self._sent: deque[float] = deque()  # when the last second's requests were sent, while no headers are seen
        self._shared = shared
        self._joined = False  # this process has read the shared record once (`TokenBucket.join`)
        if shared is not None:
            shared.lay_out(self.shared_layout())
        self._sent_count, self._sent_t = 0.0, now  # the same for the host's processes together, decaying in 1 s
        self._rate_decided_at = -math.inf  # when the learned rate was last cut: one cut per round trip
        self._grown_at = -math.inf
        self._paced_at = -math.inf  # when a request last waited for the requests bucket
        self._refused_at_rpm = 0.0  # the rate a header-less server last refused: its limit is about there
        self._guessed = 0.0  # 1: that rate is a guess, counted in a second the server's debt paused (`_cut_rate`)
        self._sends, self._sent_last = 0.0, -math.inf  # requests sent (while no headers are seen), the last when
        self._waiting_until = -math.inf  # a request told to wait (`_admit`) asks for admission until then at least
        self._idle_until = -math.inf  # when a request last asked with nobody asking since the last one went
        self._refusing_at, self._refusing_from = math.inf, 0.0  # the current run of 429s began: when, at which send
        self._ramp_at: float | None = None  # slow start: when the request rate next doubles (None: not ramping)
        self._ramp_s = SLOW_START_S
        self._opened_at = math.inf if slow_start else -math.inf  # when the first answer came (probes went before)
        self._probes = HostProbes()  # with a shared budget, the probes of the host's processes together
        # Admit in small batches rather than one wake-up per request: the same rate, a tenth of the
        # wake-ups (and warmer caches: ~20% less CPU a request) at thousands of requests per minute.
        self.min_sleep_s = batch_s

    async def acquire(self, tokens_in: float, tokens_out: float) -> Ticket:
        # Slot first: a request let through by the buckets goes on the wire at once, so the pacing
        # the buckets compute is the pacing the server sees (no herd released when a slot frees up).
        asked = self.clock()
        await self.concurrency.acquire()
        try:
            async with self._lock:
                while not isinstance(admitted := self._admit(tokens_in, tokens_out, asked), Ticket):
                    await asyncio.sleep(admitted if self._ramp_at is not None else max(admitted, self.min_sleep_s))
        except BaseException:
            self.concurrency.release()
            raise
        return admitted

    @_on_host
    def _admit(self, tokens_in: float, tokens_out: float, asked: float | None = None) -> Ticket | float:
        """Take from the buckets and return the ticket, or return the seconds to wait first; `asked`: when its
        `acquire` began (None: now)."""
        now = self.clock()
        if self._ramp_at is not None:
            self._ramp(now)
        paced = self._req.wait_time(1, now)
        if paced > 0:
            self._paced_at = now
        wait = max(paced, self._tok.wait_time(tokens_in + tokens_out, now),
                   self._in.wait_time(tokens_in, now), self._out.wait_time(tokens_out, now), self.paused_until - now)
        probe = not self._started and self._shared is not None and self._probes.opened_at is None
        if wait <= 0 and probe and not self._probes.hold(os.getpid(), now):
            wait = SLOW_START_S  # another process's probes are out: look again (their answer shows only here)
        if wait > 0:
            self._waiting_until = max(self._waiting_until, now + wait)
            return wait
        self._req.take(1)
        self._tok.take(tokens_in + tokens_out)
        self._in.take(tokens_in)
        self._out.take(tokens_out)
        ticket = Ticket(tokens_in, tokens_out, now, (self._req.taken, self._tok.taken, self._in.taken,
                                                     self._out.taken), 0 if self.headers_seen else self._count_sent(now))
        ticket.probe = probe
        if not self.headers_seen:
            ticket.after_pause = now - self.paused_until < 1.0
            asked = now if asked is None else asked
            if asked > max(self._sent_last, self._waiting_until):  # nobody asked since the last request went
                self._idle_until = asked
            ticket.sends_before, self._sends, self._sent_last = self._sends, self._sends + 1, now
        return ticket

    def _count_sent(self, now: float) -> int:
        """How many requests went in the second before this one (kept while no headers are seen): this process's,
        or with a shared budget the host's, decaying with a 1 s time constant (about the same at a steady rate)."""
        if self._shared is not None:
            self._sent_count = self._sent_count * math.exp(min(self._sent_t - now, 0.0)) + 1.0
            self._sent_t = now
            return round(self._sent_count - 1.0)
        while self._sent and self._sent[0] <= now - 1.0:
            self._sent.popleft()
        self._sent.append(now)
        return len(self._sent) - 1

    def _synced(self, step):
        """`step()` on the host's shared state (loaded before it, written back after it, under the file's lock),
        or on this process's alone (no shared record, or it stopped working)."""
        if self._shared is None:
            return step()
        result = None

        def change(values: list[float | None] | None) -> list[float | None]:
            nonlocal result
            if values is not None:
                self._load(values)
                if not self._joined:  # others' budget, idle or not: start it as a lone process starts its own
                    for bucket in self.buckets.values():
                        bucket.join(self.clock())
            self._joined = True
            result = step()
            return [*(v for b in self.buckets.values() for v in b.state()),
                    *(getattr(self, name) for name in self._SHARED), *self._probes.state()]

        if not self._shared.update(change):
            self._shared = None
            return step()
        return result

    def _load(self, values: list[float | None]) -> None:
        n = len(TokenBucket.SHARED)
        for i, bucket in enumerate(self.buckets.values()):
            bucket.restore(values[i * n:(i + 1) * n])
        start = len(BUCKETS) * n
        for name, value in zip(self._SHARED, values[start:start + len(self._SHARED)], strict=True):
            setattr(self, name, value)
        self._probes.restore(values[start + len(self._SHARED):])

    def _refund(self, tokens_in: float, tokens_out: float, requests: float = 0) -> None:
        self._req.give(requests)
        self._tok.give(tokens_in + tokens_out)
        self._in.give(tokens_in)
        self._out.give(tokens_out)

    def _learn(self, ticket: Ticket, headers, rate_limited: bool = False) -> None:
        """Limits from every answer. `remaining` clamps requests and input tokens on every answer
        (counted the same way on both sides at send time); output and combined token buckets hold our
        max_tokens reservations, which a server may count differently (reserved, or only what was
        generated), so their `remaining` is trusted only when the server says no with a 429."""
        observations = parse_rate_headers(headers)
        if not observations:
            return
        self.headers_seen = True
        now = self.clock()
        if self._req.learned_limit is not None:  # the server states its limits now: nothing left to guess
            self._req.learn(None, now)
        age = now - ticket.t_send
        for name, obs in observations.items():
            bucket = self.buckets[name]
            bucket.observe(obs, bucket.taken - ticket.taken[_INDEX[name]], age, now,
                           clamp=rate_limited or name in _EXACT, sent_at=ticket.t_send, rate_limited=rate_limited)

    def _first_answer(self, ticket: Ticket, answered_ok: bool) -> None:
        """Open up to `concurrency`; a server that sent no limit headers gets its request rate slow-started, doubling
        once per answer's latency where that is under SLOW_START_S: a success's (`answered_ok`), never a refusal's,
        which comes back in a network round trip (a refused probe's 5 ms doubled the pace 20 times a second)."""
        self._started = True
        self.concurrency.set_limit(self.concurrency.max_limit)
        self._opened_at = now = self.clock()
        if not self.headers_seen and self._req.learned_limit is None:
            latency = now - ticket.t_send if answered_ok else SLOW_START_S  # a 429 says nothing of answers' latency
            self._ramp_s = min(SLOW_START_S, max(latency, 0.01))
            self._req.learn(max(PROBES, self.concurrency.max_limit / 8) / SLOW_START_S * 60.0, now)
            self._ramp_at = now + self._ramp_s

    def _ramp(self, now: float) -> None:
        """Slow start for a server that has sent neither limit headers nor a 429: its request rate doubles every
        SLOW_START_S, so the first burst it may refuse is a few requests (a 429 comes back in a network round
        trip, however long answers take), not the whole concurrency, which is on the wire after about four
        doublings (0.4 s at most). It ends, unpaced, once the rate no longer binds (no request waited for it over
        a doubling: concurrency or the work at hand limits instead), so a server without limits (vLLM) is held
        back for a fraction of a second; a 429 ends it in `_cut_rate`. A Retry-After pause over part of a doubling
        holds every request back, which says nothing of the rate: neither a doubling nor the end, the doubling
        starts over once the pause is over (requests arriving during it used to double the pace every round trip,
        and burst into 429s when it ended)."""
        if now < self._ramp_at:
            return
        if self.paused_until > self._ramp_at - self._ramp_s:
            self._ramp_at = max(now, self.paused_until) + self._ramp_s
            return
        learned = self._req.learned_limit
        if learned is None or self.headers_seen or self._paced_at < self._ramp_at - self._ramp_s:
            self._ramp_at = None
            if not self.headers_seen:
                self._req.learn(None, now)
            return
        self._req.learn(2.0 * learned, now)
        self._ramp_at = now + self._ramp_s

    @_on_host
    def complete(self, ticket: Ticket, input_tokens: int, output_tokens: int, headers=None) -> None:
        """A successful answer: reconcile reservations with real usage, learn from headers."""
        self.concurrency.release()
        # Refund (or charge) the difference between what was reserved and what was used.
        d_in = ticket.tokens_in - input_tokens
        d_out = ticket.tokens_out - output_tokens
        self._tok.give(d_in + d_out) if d_in + d_out >= 0 else self._tok.take(-(d_in + d_out))
        self._in.give(d_in) if d_in >= 0 else self._in.take(-d_in)
        self._out.give(d_out) if d_out >= 0 else self._out.take(-d_out)
        self._learn(ticket, headers)
        if not self.headers_seen:
            self._grow(self.clock())
        self.concurrency.on_success()
        self._probe_answered(ticket, key_works=True)
        if not self._started:
            self._first_answer(ticket, answered_ok=True)

    @_on_host
    def fail(self, ticket: Ticket, *, rate_limited: bool = False, headers=None,
             retry_after: float | None = None, answered: bool = True) -> None:
        """A failed attempt: tokens were not used (the request itself still counted), learn, and cut
        concurrency on a 429. A server that sends no limit headers only speaks through 429s: its
        Retry-After (else a 1 s cooldown) then pauses admission for everyone, since with short
        latencies fewer slots alone would not slow the request rate enough."""
        self.concurrency.release()
        self._refund(ticket.tokens_in, ticket.tokens_out)
        self._learn(ticket, headers, rate_limited)
        self._probe_answered(ticket, key_works=rate_limited)
        if answered and not self._started:  # no answer at all (connection refused) opens nothing
            self._first_answer(ticket, answered_ok=False)
        if rate_limited:
            self.rate_limited += 1
            now = self.clock()
            self.concurrency.on_rate_limited(now)
            if not self.headers_seen:
                self._cut_rate(ticket, now)
                pause = min(retry_after if retry_after is not None else self.concurrency.cooldown_s, 60.0)
                self.paused_until = max(self.paused_until, now + pause)
                self._req.empty_at(self.paused_until, now)  # no burst saved up while paused

    def _probe_answered(self, ticket: Ticket, key_works: bool = False) -> None:
        """Free the host's place `ticket` held as a probe; an answer that shows the key works (a success, a 429)
        ends the host's probing, a refusal of the key (401) or a 5xx does not."""
        if ticket.probe:
            self._probes.free(os.getpid(), ticket.t_send)
        if key_works and self._probes.opened_at is None:
            self._probes.opened_at = self.clock()

    def _grow(self, now: float) -> None:
        """A success from a header-less server: while a learned limit binds (a request waited for it in the last
        second, or two of its intervals), grow it back towards the rate last refused, quickly up to 95% of it, then
        slowly, faster the longer no 429 comes (the server may have raised its limit, or others left it room)."""
        learned = self._req.learned_limit
        if learned is None or self._ramp_at is not None:
            return
        dt = min(now - self._grown_at, 1.0)
        self._grown_at = now
        if now - self._paced_at <= max(1.0, 120.0 / learned):  # it binds: requests wait for it
            near = LEARN_NEAR * self._refused_at_rpm
            doubling = GUESS_DOUBLING_S if self._guessed else LEARN_PROBE_DOUBLING_S
            probe = LEARN_PROBE * 2.0 ** min((now - self._rate_decided_at) / doubling, 10.0)
            grown = min(near, learned + LEARN_GROWTH * self._refused_at_rpm * dt) if learned < near \
                else learned + probe * self._refused_at_rpm * dt
            self._req.learn(grown, now)

    def _cut_rate(self, ticket: Ticket, now: float) -> None:
        """A 429 from a server that sends no limit headers: pace requests at 3/4 of the learned rate (the first
        time, or during the slow start, of what the server admitted in the second before it refused: the requests
        sent then), or at 95% of the rate last refused where it refuses about there again; at most once per round
        trip (only an attempt sent after the last cut says the cut was not enough; the Retry-After pause keeps the
        server's debt from cutting again). Concurrency cannot do this: one request in flight at 20 ms is already
        50 a second. A 429 with nothing sent in the second before it and nothing learned (the server's debt from
        earlier 429s refused it) teaches no rate: the Retry-After pause is all it says, and a slow start goes on
        after it (it used to end the slow start with no pace at all, into a burst of 429s). A 429 in the slow start
        with a Retry-After pause in the second before it (the probes' 429s left the server in debt) counts a second
        mostly paused, not the rate refused: 1 request, 60 RPM, where the server takes 120. It ends the slow start at
        3/4 of that as any 429 does, but the rate is a guess (`_guessed`): past 95% of it the rate grows on as above
        a rate refused, its probe doubling every GUESS_DOUBLING_S rather than LEARN_PROBE_DOUBLING_S; the next 429
        holds it at 95% of the guess only where it comes within 1/0.95 of it (the guess was right: a 60 RPM server),
        and further above is cut from as a first one. Taken for the limit, the guess held a 120 RPM server at 57 RPM
        until the probe reached 133 two minutes on, and that 429 held it at 95% of the guess again. Where the rate
        the server took since it began refusing (`_sustained_rpm`) is under 3/4 of the rate, the cut goes to it at
        once."""
        if ticket.t_send <= self._rate_decided_at or ticket.t_send < self._opened_at:
            return  # a probe's 429 says how many the server takes at once, not how many a second
        ramping = self._ramp_at is not None
        current = (not ramping and self._req.learned_limit) or ticket.sent_before * 60.0
        if not current:
            return
        if now - self._rate_decided_at > REFUSALS_GAP_S or self._idle_until > self._rate_decided_at:
            # a new run of 429s (long after the last cut, or nobody asked for a while since): this one and what went
            # with it or since
            self._refusing_at, self._refusing_from = ticket.t_send, ticket.sends_before
        self._ramp_at = None
        self._rate_decided_at = now
        self._grown_at = now
        if ramping and ticket.after_pause:  # the server's debt refused it: the second counted was mostly paused
            self._refused_at_rpm, self._guessed = current, 1.0
            self._req.learn(max(MIN_LEARNED_RPM, LEARN_CUT * current), now)
            return
        guessed, self._guessed = self._guessed, 0.0
        sustained = self._sustained_rpm(now)
        if sustained is not None and sustained < LEARN_CUT * current:  # far over the limit: go to it at once
            self._refused_at_rpm = min(current, sustained / LEARN_CUT)
            self._req.learn(max(MIN_LEARNED_RPM, sustained), now)
            return
        if self._refused_at_rpm and current >= LEARN_NEAR * self._refused_at_rpm \
                and (not guessed or current <= self._refused_at_rpm / LEARN_NEAR):  # the limit is there
            self._refused_at_rpm = min(current, self._refused_at_rpm)
            self._req.learn(max(MIN_LEARNED_RPM, LEARN_NEAR * self._refused_at_rpm), now)
            return
        self._refused_at_rpm = current
        self._req.learn(max(MIN_LEARNED_RPM, LEARN_CUT * current), now)

    def _sustained_rpm(self, now: float) -> float | None:
        """The rate the server took since the current run of 429s began: the requests sent since, up to the last one
        (every one reaches the server, a success or a 429: a refusal counts against the limit, as OpenAI counts it),
        per minute; None while that is under SUSTAINED_S. Where a server's bucket holds a minute's burst, the slow
        start spends it and the rate sent in the second before a 429 is ~60x the limit, which 3/4 cuts took ~14
        round trips (~100 429s) to come down from. Successes alone say far less than the limit (1 in 2.6 s at 1200 RPM): the refusals
        charged the rest; as the rate grows back towards 4/3 of this, a rate it overstates (a server that does not
        charge refusals) is cut by 3/4 as before. Counted as sent, not as answered: answers that take seconds (a
        long generation) were not back yet while the 429s were, so the rate read ~2/3 of the limit and the run was
        held there (1200 RPM, latency 0.05 to 8 s: cut to 777 RPM). A run spans only time requests were asking for
        admission: one that asks with nobody asking since the last request went (the caller had no work, or every
        request was backing off) ends it, and the next 429 begins another (`_cut_rate`). Idle seconds are no rate the
        server refused: 9 s of them in a run read 458 RPM of a 1200 RPM server (1-s window), which held the rest of
        the run at 726 RPM (695 to 977 over the idle spans and windows tested; about 1195 now)."""
        span = self._sent_last - self._refusing_at
        return (self._sends - self._refusing_from) / span * 60.0 if span >= SUSTAINED_S else None

    def abandon(self, ticket: Ticket) -> None:
        """An attempt given up on (no answer in time): its slot is free, but the provider may still be generating
        it, up to max_tokens, so what it reserved stays taken; handing it back would send more than the
        provider's per-minute budget has left, into 429s. A probe's place is free: no answer is coming."""
        self.concurrency.release()
        if ticket.probe:
            self._synced(lambda: self._probe_answered(ticket))

    @_on_host
    def cancel(self, ticket: Ticket) -> None:
        """The attempt never completed (run cancelled): give everything back."""
        self.concurrency.release()
        self._refund(ticket.tokens_in, ticket.tokens_out, requests=1)
        self._probe_answered(ticket)

    @property
    def limits(self) -> dict[str, float | None]:
        """Effective per-minute limits now (None: unlimited); a slow start's pace is none."""
        limits = {name: b.limit for name, b in self.buckets.items()}
        if self._ramp_at is not None:
            limits["requests"] = self._req.user_limit
        return limits
