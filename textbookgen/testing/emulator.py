"""A loopback LLM provider: the OpenAI and Anthropic wire formats, rate limits, faults and a bill.

The real `openai` and `anthropic` clients talk to it unmodified (point `base_url` at it), so tests,
benchmarks and users' dry runs exercise the same code paths as production: latency drawn from a
lognormal, token-bucket rate limits that send the providers' headers and 429s (a refused OpenAI request
still counts toward the RPM limit, as OpenAI's does), injected faults (5xx,
529, hangs, dropped connections, malformed JSON, truncation, refusals, quota, empty answers, reasoning
models' answers), and counters of what it billed so a test can prove nothing was paid twice.

    with Emulator(EmulatorConfig(rpm=600, faults=[Fault("500", rate=0.1)])) as emu:
        client = openai.AsyncOpenAI(base_url=emu.openai_base_url, api_key="sk-test")
        ...
        assert emu.duplicates == 0

Routes: POST /v1/chat/completions (OpenAI, incl. n, stop, response_format, forced tools, synthetic logprobs,
stream + include_usage; the 400s of the real API for the parameters the SDK documents, and with `model_rules`
those of models that refuse a parameter), POST /v1/messages (Anthropic, incl. system, stop_sequences, prefill,
output_config.format, forced tools (cut at max_tokens: an incomplete tool_use block), max_tokens 0, stream, the
400s for a role-"system" message in messages: refused before Opus 4.8, placed by its rules on it), POST
/v1/messages/count_tokens, GET /v1/models[/{id}] (either shape), GET /_emulator/stats and POST
/_emulator/reset (counters for a benchmark running the emulator in another process).
Batches (see textbookgen.testing.batches for the lifecycle): OpenAI's POST /v1/files (multipart),
GET|DELETE /v1/files/{id}, GET /v1/files/{id}/content, POST|GET /v1/batches, GET /v1/batches/{id},
POST /v1/batches/{id}/cancel; Anthropic's POST|GET /v1/messages/batches, GET /v1/messages/batches/{id},
POST /v1/messages/batches/{id}/cancel, GET /v1/messages/batches/{id}/results. A batched request is
answered as the online route would answer it (per-request faults included, latency, rate limits and
transport faults not) when its batch ends, after `batch_latency_s`; `batch_outcomes` makes batches expire.

Input is billed as the providers bill it: messages, tool definitions and schemas, the `documents` a vLLM chat
template renders, and Anthropic's hidden tool-use system prompt (`pricing.tool_prompt_tokens`) where tools are sent.

Counters: received (every online completion request), billed (answered with a 200, online or in a batch,
or abandoned by the client after admission: providers bill those too), billed_keys (Counter of request
hashes), duplicates (billed beyond the first per hash, across online calls and batches), tokens_by_key,
input_tokens, output_tokens, rate_limited (429s from the real limits), outcomes (Counter by fault/finish),
in_flight, max_in_flight, batches_created, batch_requests (requests billed inside batches).

CLI: `python -m textbookgen.testing.emulator --port 8000 --rpm 500 --latency 0.8 --fault 429:0.05`
(--port 0 picks a free port; the first line printed names the URL; SIGTERM prints the counters as JSON;
--batch-latency 5 --batch-outcome expire:0.5 for batches).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import random
import re
import secrets
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from typing import Any, NamedTuple

from aiohttp import web

from textbookgen.pricing import tool_prompt_tokens
from textbookgen.testing.batches import (
    OPENAI_ENDPOINT,
    Job,
    StoredFile,
    anthropic_batch,
    anthropic_requests,
    anthropic_results,
    openai_batch,
    openai_output,
    openai_requests,
    page,
    parse_outcome,
    token_limit_errors,
)
from textbookgen.testing.responder import (
    CHARS_PER_TOKEN,
    default_responder,
    estimate_tokens,
    forced_tool,
    prompt_text,
    prompt_tokens,
)

FAULT_KINDS = (
    "429", "500", "502", "503", "529", "timeout", "reset", "bad_json", "truncate", "refusal",
    "quota", "400", "content_filter", "slow", "empty", "reasoning", "think", "think_cut",
)
"""429: rate-limit error; 500/502/503: server errors (502 with an HTML body, like a proxy); 529: overloaded
(Anthropic's 529 overloaded_error, OpenAI's 503 overloaded); timeout: hang `hang_s` (longer than any sane
client timeout), then 504; reset: drop the TCP connection without a response (halfway through the events
when streaming); bad_json: a 200 whose body
is malformed JSON (billed: the provider did the work); truncate: stop at max_tokens (finish_reason length /
stop_reason max_tokens); refusal: finish_reason content_filter / stop_reason refusal; quota: OpenAI 429
insufficient_quota / Anthropic 402 billing_error; 400: invalid request; content_filter: a 400 for a
flagged prompt; slow: answer only after `hang_s` (the client gives up first, but the provider goes on generating
and bills it, as it does a slow answer). Answers of reasoning models and odd servers, all billed 200s: empty: no
text (OpenAI content "", Anthropic no content block), finish stop; reasoning: max_tokens spent thinking, no answer
(OpenAI content null with `reasoning_content`, as vLLM's reasoning parser returns it, finish length; OpenAI's own
gpt-5 and o-series content "", the tokens counted in `reasoning_tokens`; Anthropic a thinking block only, stop_reason
max_tokens); think: the answer starts with a `<think>...</think>` block (a reasoning model served without a
reasoning parser); think_cut: an unterminated `<think>` block cut at max_tokens."""
ANSWER_FAULTS = ("empty", "reasoning", "think", "think_cut")
"""Faults that shape a billed answer, online or in a batch."""
THINKING = ("Okay, the user wants a textbook section. Let me work out what it should cover first, then how to "
            "order it, and which example makes the idea clearest before I write anything. ")
"""What the emulated reasoning model thinks, repeated as long as it thinks."""

DEFAULT_MODELS = (
    "gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-5-mini",
    "claude-3-5-haiku-latest", "claude-sonnet-4-5", "claude-haiku-4-5",
)
OPENAI = "openai"
ANTHROPIC = "anthropic"


@dataclass(frozen=True)
class Fault:
    """A fault injected into completion requests.

    `rate`: probability per admitted attempt (drawn from a RNG seeded by the config seed, the request's
    hash and its attempt number, so the same retry sequence always meets the same faults). `first`: the
    first N admitted attempts of every distinct request get it, deterministically (exact tests). `match`: only requests
    whose prompt text contains this substring. `provider`: only "openai" or "anthropic" requests.
    """

    kind: str
    rate: float = 0.0
    first: int = 0
    match: str | None = None
    provider: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {', '.join(FAULT_KINDS)}")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"fault {self.kind!r}: rate must be in [0, 1], got {self.rate}")
        if self.first < 0:
            raise ValueError(f"fault {self.kind!r}: first must be >= 0, got {self.first}")
        if self.provider not in (None, OPENAI, ANTHROPIC):
            raise ValueError(f"fault {self.kind!r}: provider must be 'openai', 'anthropic' or None")

    def applies(self, provider: str, prompt: str) -> bool:
        return (self.provider in (None, provider)) and (self.match is None or self.match in prompt)

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """'429:0.05' (a rate) or '500:first=2' (the first two attempts of every request)."""
        kind, _, arg = spec.partition(":")
        try:
            if arg.startswith("first="):
                return cls(kind, first=int(arg[len("first="):]))
            return cls(kind, rate=float(arg) if arg else 1.0)
        except ValueError as e:
            raise ValueError(f"bad fault spec {spec!r} ({e}); use KIND:RATE or KIND:first=N") from e


@dataclass
class EmulatorConfig:
    """How the emulated provider behaves. Limits are per minute; None means unlimited."""

    latency_median_s: float = 0.01
    latency_sigma: float = 0.5
    rpm: int | None = None
    input_tpm: int | None = None
    output_tpm: int | None = None
    tpm: int | None = None
    """OpenAI-style combined tokens per minute (input + reserved output); reported as x-ratelimit-*-tokens."""
    send_headers: bool = True
    """False: a vLLM-like server that sends no rate-limit headers (limits, if set, still apply)."""
    faults: list[Fault] = field(default_factory=list)
    seed: int = 0
    responder: Callable[[dict[str, Any]], str] | None = None
    """responder(request_body) -> completion text; replaces the default textbook-ish responder."""
    api_keys: Collection[str] | None = None
    """Keys accepted; None accepts any non-empty key."""
    models: Collection[str] | None = None
    """Models served; None serves any model name (and lists DEFAULT_MODELS)."""
    latency_per_output_token_s: float = 0.0
    """Added per generated token, so long answers take longer (decode time)."""
    window_s: float = 60.0
    """Bucket capacity in seconds of refill: 60 lets a full minute's limit burst (Anthropic's continuous
    replenishment); 1.0 quantizes to per-second buckets, as OpenAI does for high limits."""
    start_full: bool = True
    reserve_max_tokens: bool = True
    """Admit against the output bucket with max_tokens and refund the unused part on completion, as
    the providers estimate output tokens; False charges only the tokens generated."""
    default_max_tokens: int = 4096
    hang_s: float = 600.0
    """How long a `timeout` fault hangs, and a `slow` one takes to answer (the client's timeout should be shorter)."""
    bill_disconnects: bool = True
    """A request the client abandons mid-generation (timeout, killed process) is still billed, as providers do."""
    context_tokens: int | None = 128_000
    """Prompt + max_tokens beyond this is a 400 context_length_exceeded; None disables the check."""
    record_requests: bool = False
    """Keep every completion request (provider, key, attempt, body) in `Emulator.requests`, for tests."""
    batch_latency_s: float = 1.0
    """How long a batch runs before it ends and its requests are answered (an OpenAI batch validates for the
    first quarter of it)."""
    prompt_cache_hit: float = 0.0
    """The share of every prompt's input tokens reported as read from the provider's prompt cache: OpenAI's
    `prompt_tokens_details.cached_tokens` (part of prompt_tokens), Anthropic's `cache_read_input_tokens`
    (not part of input_tokens)."""
    prompt_cache_write: float = 0.0
    """The share of every Anthropic prompt's input tokens reported as written to its prompt cache
    (`cache_creation_input_tokens`, not part of input_tokens), split in `cache_creation` by the time to live its
    `cache_control` blocks ask for: `ephemeral_1h_input_tokens` where one says `"ttl": "1h"`, else
    `ephemeral_5m_input_tokens`. OpenAI bills no cache writes."""
    batch_outcomes: list[str] = field(default_factory=list)
    """How batches end, one per created batch in creation order, then 'complete': 'complete' or
    'expire:<fraction>' (the batch expires with only its first round(fraction * n) requests answered)."""
    batch_enqueued_tokens: int | None = None
    """OpenAI's per-model enqueued-token limit: a batch whose prompt tokens, with those of the model's unfinished
    batches, pass it fails validation as a whole (`token_limit_exceeded`, no line); None: no limit."""
    model_rules: bool = False
    """Refuse, with the real APIs' 400s, the parameters particular models refuse: gpt-5 and o-series models a
    temperature other than 1 (OpenAI's `unsupported_value`) and `max_tokens` (`unsupported_parameter`: they
    take max_completion_tokens); Claude Sonnet 4.5, Haiku 4.5 and Opus 4.1 temperature and top_p set together.
    False: every model takes every parameter, as a lenient server (vLLM) does."""

    def __post_init__(self) -> None:
        if self.latency_median_s < 0 or self.latency_sigma < 0:
            raise ValueError("latency_median_s and latency_sigma must be >= 0")
        for name in ("rpm", "input_tpm", "output_tpm", "tpm"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be a positive number of units per minute or None, got {value}")
        if self.window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {self.window_s}")
        if self.batch_latency_s < 0:
            raise ValueError(f"batch_latency_s must be >= 0, got {self.batch_latency_s}")
        if self.batch_enqueued_tokens is not None and self.batch_enqueued_tokens < 1:
            raise ValueError(f"batch_enqueued_tokens must be >= 1 or None, got {self.batch_enqueued_tokens}")
        for spec in self.batch_outcomes:
            parse_outcome(spec)
        self.faults = [Fault.parse(f) if isinstance(f, str) else f for f in self.faults]


class TokenBucket:
    """A per-minute limit as a bucket refilled continuously; `level` is what may be spent now."""

    def __init__(self, limit: int, window_s: float, now: float, full: bool = True) -> None:
        self.limit = limit
        self.rate = limit / 60.0
        self.capacity = max(1.0, limit * window_s / 60.0)
        self.level = self.capacity if full else 0.0
        self.t = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
        self.t = now

    def wait_s(self, n: float) -> float:
        """Seconds until n units are available (after refill)."""
        return max(0.0, (min(n, self.capacity) - self.level) / self.rate)

    def remaining(self) -> int:
        """Whole units that may be spent now, as the providers' `remaining` headers report them."""
        return max(0, int(self.level))

    def reset_s(self) -> float:
        """Seconds until the bucket is full again (what providers call `reset`)."""
        return max(0.0, (self.capacity - self.level) / self.rate)


class RateLimiter:
    """Requests, input, output and combined token buckets, checked together before a request is admitted."""

    def __init__(self, cfg: EmulatorConfig, now: float) -> None:
        def bucket(limit: int | None) -> TokenBucket | None:
            return TokenBucket(limit, cfg.window_s, now, cfg.start_full) if limit else None

        self.buckets: dict[str, TokenBucket | None] = {
            "requests": bucket(cfg.rpm), "input_tokens": bucket(cfg.input_tpm),
            "output_tokens": bucket(cfg.output_tpm), "tokens": bucket(cfg.tpm),
        }

    def admit(self, costs: dict[str, float], now: float) -> tuple[str, float, float] | None:
        """Take `costs` from every bucket, or take nothing and return (bucket name, requested, wait_s)."""
        worst: tuple[str, float, float] | None = None
        for name, b in self.buckets.items():
            if b is None:
                continue
            b.refill(now)
            if b.level < costs[name] or costs[name] > b.capacity:
                wait = b.wait_s(costs[name]) if costs[name] <= b.capacity else b.reset_s() + 60.0
                if worst is None or wait > worst[2]:
                    worst = (name, costs[name], wait)
        if worst is not None:
            return worst
        for name, b in self.buckets.items():
            if b is not None:
                b.level -= costs[name]
        return None

    def charge_refused(self, now: float) -> None:
        """A refused request still takes one from the requests bucket, down to one window in debt: OpenAI's
        rate-limit guide says unsuccessful requests count toward the per-minute limit, so a client that
        resends at once after a 429 keeps itself limited."""
        b = self.buckets["requests"]
        if b is not None:
            b.refill(now)
            b.level = max(-b.capacity, b.level - 1)

    def refund(self, name: str, n: float, now: float) -> None:
        b = self.buckets[name]
        if b is not None and n:
            b.refill(now)
            b.level = min(b.capacity, b.level + n)


def go_duration(seconds: float) -> str:
    """OpenAI's reset format: a Go time.Duration string, to the millisecond as OpenAI sends them (to the
    microsecond below one): '0s', '400µs', '20ms', '1.5s', '6m0s', '1h2m3.5s'."""
    us = max(0, round(seconds * 1_000_000))
    if us < 1000:
        return f"{us}µs" if us else "0s"
    us = round(us, -3)
    if us < 1_000_000:
        return f"{_decimal(us, 1000)}ms"
    hours, rem = divmod(us, 3_600_000_000)
    minutes, rem = divmod(rem, 60_000_000)
    secs = f"{_decimal(rem, 1_000_000)}s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    return f"{minutes}m{secs}" if minutes else secs


def _decimal(n: int, unit: int) -> str:
    """n / unit without trailing zeros, as Go prints durations: 1500 / 1000 -> '1.5'."""
    whole, frac = divmod(n, unit)
    digits = str(frac).zfill(len(str(unit)) - 1).rstrip("0")
    return f"{whole}.{digits}" if digits else str(whole)


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def request_key(provider: str, body: dict[str, Any]) -> str:
    """A stable hash of the API and the whole request body (model, messages, sampling params): what was billed."""
    canonical = json.dumps([provider, body], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest()


class Outcome(Exception):
    """An early answer (an error response) raised from inside request handling."""

    def __init__(self, response: web.StreamResponse, label: str) -> None:
        super().__init__(label)
        self.response = response
        self.label = label


@dataclass
class _Call:
    """One completion request, normalized across the two wire formats."""

    provider: str
    body: dict[str, Any]
    model: str
    max_tokens: int
    prompt: str
    input_tokens: int
    stops: list[str]
    key: str
    attempt: int = 0
    n: int = 1
    stream: bool = False
    include_usage: bool = False


class Emulator:
    """The emulated provider server. Use as `with Emulator(cfg) as emu:` (a server thread with its own
    event loop) or `async with Emulator(cfg) as emu:` (on the running loop)."""

    def __init__(self, config: EmulatorConfig | None = None, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config or EmulatorConfig()
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fingerprint = "fp_" + hashlib.sha1(str(self.config.seed).encode()).hexdigest()[:10]
        self.in_flight = 0
        self.reset()

    # ----- counters -------------------------------------------------------------------------------
    def reset(self) -> None:
        """Zero the counters, refill the rate-limit buckets and forget files and batches (between benchmark
        phases; `batch_outcomes` start over); safe from any thread."""
        loop = getattr(self, "_loop", None)
        if loop is not None and threading.current_thread() is not self._thread and loop.is_running():
            loop.call_soon_threadsafe(self.reset)
            asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(timeout=30)
            return
        self.received = 0
        self.billed = 0
        self.billed_keys: Counter[str] = Counter()
        self.admitted_keys: Counter[str] = Counter()
        self.tokens_by_key: dict[str, list[int]] = {}
        self.input_tokens = 0
        self.output_tokens = 0
        self.outcomes: Counter[str] = Counter()
        self.rate_limited = 0
        self.max_in_flight = self.in_flight
        self.requests: list[dict[str, Any]] = []
        self._limiter = RateLimiter(self.config, time.monotonic())
        self.batches_created = 0
        self.batch_requests = 0
        self._files: dict[str, StoredFile] = {}
        self._jobs: dict[str, dict[str, Job]] = {OPENAI: {}, ANTHROPIC: {}}

    def set_limits(self, **limits: int | None) -> None:
        """Change rpm / input_tpm / output_tpm / tpm mid-run (buckets start over, full), as when a provider
        moves an account to another tier: clients should follow the new headers."""
        unknown = set(limits) - {"rpm", "input_tpm", "output_tpm", "tpm"}
        if unknown:
            raise ValueError(f"unknown limit(s) {sorted(unknown)}; expected rpm, input_tpm, output_tpm, tpm")
        self.config = dataclasses.replace(self.config, **limits)
        self._limiter = RateLimiter(self.config, time.monotonic())  # one assignment: atomic for the loop

    @property
    def duplicates(self) -> int:
        """Billed requests beyond the first for each distinct request body: money paid twice."""
        return sum(n - 1 for n in self.billed_keys.values() if n > 1)

    def stats(self) -> dict[str, Any]:
        """A JSON-able snapshot of the counters (also served at GET /_emulator/stats); safe from any thread.
        Batches whose time has come end first, so their requests are counted without anyone polling them."""
        if self._loop is not None and threading.current_thread() is not self._thread and self._loop.is_running():
            return asyncio.run_coroutine_threadsafe(self._astats(), self._loop).result(timeout=30)
        for provider, jobs in self._jobs.items():
            for job in jobs.values():
                self._settle(provider, job)
        return {
            "received": self.received, "billed": self.billed, "distinct_billed": len(self.billed_keys),
            "duplicates": self.duplicates, "rate_limited": self.rate_limited,
            "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
            "outcomes": dict(self.outcomes), "in_flight": self.in_flight, "max_in_flight": self.max_in_flight,
            "batches_created": self.batches_created, "batch_requests": self.batch_requests,
        }

    async def _astats(self) -> dict[str, Any]:
        return self.stats()

    # ----- lifecycle ------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.base_url

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[self._answer_outcomes])
        app.router.add_post("/v1/chat/completions", self._openai_chat)
        app.router.add_post("/v1/messages", self._anthropic_messages)
        app.router.add_post("/v1/messages/count_tokens", self._anthropic_count_tokens)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/v1/models/{model}", self._model)
        app.router.add_get("/_emulator/stats", self._stats)
        app.router.add_post("/_emulator/reset", self._reset)
        app.router.add_post("/v1/files", self._file_upload)
        app.router.add_get("/v1/files/{id}", self._file_get)
        app.router.add_get("/v1/files/{id}/content", self._file_content)
        app.router.add_delete("/v1/files/{id}", self._file_delete)
        app.router.add_post("/v1/batches", self._openai_batch_create)
        app.router.add_post("/v1/messages/batches", self._anthropic_batch_create)
        app.router.add_get("/v1/messages/batches/{id}/results", self._anthropic_batch_results)
        for provider, prefix in ((OPENAI, "/v1/batches"), (ANTHROPIC, "/v1/messages/batches")):
            app.router.add_get(prefix, partial(self._batch_list, provider))
            app.router.add_get(prefix + "/{id}", partial(self._batch_get, provider))
            app.router.add_post(prefix + "/{id}/cancel", partial(self._batch_cancel, provider))
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
        except OSError as e:
            sock.close()
            await self.stop()
            raise OSError(e.errno, f"emulator cannot listen on {self.host}:{self.port}: {e.strerror}") from e
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock, backlog=4096).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def __enter__(self) -> Emulator:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="llm-emulator", daemon=True)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.start(), self._loop).result(timeout=30)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._thread is not None
        asyncio.run_coroutine_threadsafe(self.stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()
        self._loop = self._thread = None

    @web.middleware
    async def _answer_outcomes(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        """Error answers are raised as Outcome from anywhere in a handler; count and send them."""
        try:
            return await handler(request)
        except Outcome as o:
            self.outcomes[o.label] += 1
            return o.response

    # ----- admin and model routes -----------------------------------------------------------------
    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset()  # on the server's loop, so no request is half-counted
        return web.json_response(self.stats())

    def _served_models(self) -> list[str]:
        return list(self.config.models) if self.config.models is not None else list(DEFAULT_MODELS)

    @staticmethod
    def _provider_of(request: web.Request) -> str:
        return ANTHROPIC if "anthropic-version" in request.headers or "x-api-key" in request.headers else OPENAI

    def _model_entry(self, provider: str, model: str) -> dict[str, Any]:
        if provider == ANTHROPIC:
            return {"type": "model", "id": model, "display_name": model, "created_at": "2025-01-01T00:00:00Z"}
        return {"id": model, "object": "model", "created": 1735689600, "owned_by": "textbookgen-emulator"}

    async def _models(self, request: web.Request) -> web.Response:
        provider = self._provider_of(request)
        self._check_auth(request, provider)
        data = [self._model_entry(provider, m) for m in self._served_models()]
        if provider == ANTHROPIC:
            return web.json_response({"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                                      "last_id": data[-1]["id"] if data else None})
        return web.json_response({"object": "list", "data": data})

    async def _model(self, request: web.Request) -> web.Response:
        provider = self._provider_of(request)
        self._check_auth(request, provider)
        model = request.match_info["model"]
        if self.config.models is not None and model not in self.config.models:
            raise self._error(provider, "model_not_found", model=model)
        return web.json_response(self._model_entry(provider, model))

    # ----- completion routes ----------------------------------------------------------------------
    async def _openai_chat(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, OPENAI)

    async def _anthropic_messages(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, ANTHROPIC)

    async def _anthropic_count_tokens(self, request: web.Request) -> web.Response:
        self._check_auth(request, ANTHROPIC)
        body = await self._json_body(request, ANTHROPIC)
        return web.json_response({"input_tokens": self._count_input(body, ANTHROPIC)})

    async def _complete(self, request: web.Request, provider: str) -> web.StreamResponse:
        self.received += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._handle(request, provider)
        finally:
            self.in_flight -= 1

    async def _handle(self, request: web.Request, provider: str) -> web.StreamResponse:
        cfg = self.config
        self._check_auth(request, provider)
        call = self._parse_call(provider, await self._json_body(request, provider))
        reserve = call.max_tokens if cfg.reserve_max_tokens else 0
        costs = {"requests": 1, "input_tokens": call.input_tokens, "output_tokens": reserve,
                 "tokens": call.input_tokens + reserve}
        denied = self._limiter.admit(costs, time.monotonic())
        if denied is not None:
            self.rate_limited += 1
            if provider == OPENAI:
                self._limiter.charge_refused(time.monotonic())
            raise self._rate_limited(call, *denied)
        # Faults are drawn per admitted attempt, so the same retry sequence always meets the same faults.
        call.attempt = self.admitted_keys[call.key]
        self.admitted_keys[call.key] += 1
        if cfg.record_requests:
            self.requests.append({"provider": provider, "key": call.key, "attempt": call.attempt, "body": call.body})
        rng = random.Random(f"{cfg.seed}:{call.key}:{call.attempt}")
        fault = self._pick_fault(call, rng)
        try:
            return await self._generate(request, call, fault, rng)
        finally:
            for name in ("output_tokens", "tokens"):
                self._limiter.refund(name, reserve, time.monotonic())

    async def _generate(self, request: web.Request, call: _Call, fault: str | None,
                        rng: random.Random) -> web.StreamResponse:
        cfg = self.config
        if fault in ("429", "quota", "400", "content_filter"):
            raise self._error(call.provider, fault, model=call.model, headers=self._limit_headers(call.provider))
        choices = [self._completion_text(call, fault, i) for i in range(call.n)]
        output_tokens = sum(estimate_tokens(text) for text, _ in choices)
        latency = cfg.latency_median_s * math.exp(cfg.latency_sigma * rng.gauss(0.0, 1.0))
        decode_s = 0.0 if call.stream else cfg.latency_per_output_token_s * output_tokens
        slow_s = cfg.hang_s if fault == "slow" else 0.0
        try:
            await asyncio.sleep(latency + decode_s + slow_s)
        except asyncio.CancelledError:  # the client left; the provider still finishes the work and bills it
            if cfg.bill_disconnects and fault in (None, "truncate", "refusal", "bad_json", "slow", *ANSWER_FAULTS):
                self._bill(call, output_tokens, "billed_after_disconnect")
            raise
        if fault == "reset":
            self.outcomes["reset"] += 1
            if not call.stream:
                await self._drop(request)
        if fault == "timeout":
            self.outcomes["timeout"] += 1
            await asyncio.sleep(cfg.hang_s)  # the client gives up first; its disconnect cancels us
            raise self._error(call.provider, "timeout", model=call.model, label="timeout_unanswered")
        if fault in ("500", "502", "503", "529"):
            raise self._error(call.provider, fault, model=call.model, headers=self._limit_headers(call.provider))
        headers = self._limit_headers(call.provider) | self._id_headers(call.provider, latency)
        if fault != "reset":
            self._bill(call, output_tokens, fault or choices[0][1].partition(":")[0])
        if call.stream:
            return await self._stream(request, call, choices, output_tokens, fault, headers)
        payload = (self._openai_payload if call.provider == OPENAI else self._anthropic_payload)(
            call, choices, output_tokens)
        raw = json.dumps(payload, ensure_ascii=False)
        if fault == "bad_json":
            raw = raw[: max(1, len(raw) // 2)]
        return web.Response(text=raw, content_type="application/json", headers=headers)

    def _bill(self, call: _Call, output_tokens: int, outcome: str) -> None:
        """Charge a completed online generation: its output tokens against the buckets, then the bill."""
        for name in ("output_tokens", "tokens"):
            self._limiter.refund(name, -output_tokens, time.monotonic())
        self._charge(call, output_tokens, outcome)

    def _charge(self, call: _Call, output_tokens: int, outcome: str) -> None:
        """Count what the provider bills, online or in a batch: per request hash, so paying twice shows."""
        self.billed += 1
        self.billed_keys[call.key] += 1
        totals = self.tokens_by_key.setdefault(call.key, [0, 0])
        totals[0] += call.input_tokens
        totals[1] += output_tokens
        self.input_tokens += call.input_tokens
        self.output_tokens += output_tokens
        self.outcomes[outcome] += 1

    async def _drop(self, request: web.Request) -> None:
        """Close the TCP connection without an answer; the disconnect cancels this handler."""
        if request.transport is not None:
            request.transport.abort()
        await asyncio.sleep(self.config.hang_s)
        raise Outcome(web.Response(status=500), "reset_unanswered")

    async def _stream(self, request: web.Request, call: _Call, choices: list[tuple[str, str]], output_tokens: int,
                      fault: str | None, headers: dict[str, str]) -> web.StreamResponse:
        """Server-sent events in the provider's stream format; reset drops the connection halfway."""
        events = (self._openai_events if call.provider == OPENAI else self._anthropic_events)(
            call, choices, output_tokens)
        if fault == "bad_json":
            mid = len(events) // 2
            events[mid] = events[mid][: len(events[mid]) // 2] + "\n\n"
        resp = web.StreamResponse(headers=headers | {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        per_event_s = self.config.latency_per_output_token_s * output_tokens / max(1, len(events))
        cut = len(events) // 2 if fault == "reset" else len(events)
        if per_event_s:
            for event in events[:cut]:
                await resp.write(event.encode())
                await asyncio.sleep(per_event_s)
        else:
            await resp.write("".join(events[:cut]).encode())
        if fault == "reset":
            await self._drop(request)
        await resp.write_eof()
        return resp

    def _openai_events(self, call: _Call, choices: list[tuple[str, str]], output_tokens: int) -> list[str]:
        """chat.completion.chunk events: each choice's deltas, the choices interleaved as OpenAI sends them."""
        head = {"id": "chatcmpl-" + secrets.token_hex(12), "object": "chat.completion.chunk",
                "created": int(time.time()), "model": call.model, "service_tier": "default",
                "system_fingerprint": self._fingerprint}
        usage = {"usage": None} if call.include_usage else {}
        per_choice = [_openai_deltas(call, i, text, finish) for i, (text, finish) in enumerate(choices)]
        interleaved = [c for group in itertools.zip_longest(*per_choice) for c in group if c is not None]
        events = ["data: " + json.dumps(head | {"choices": [c]} | usage, ensure_ascii=False) + "\n\n"
                  for c in interleaved]
        if call.include_usage:
            events.append("data: " + json.dumps(head | {"choices": [], "usage": self._openai_usage(
                call, output_tokens)}) + "\n\n")
        return [*events, "data: [DONE]\n\n"]

    def _anthropic_events(self, call: _Call, choices: list[tuple[str, str]], output_tokens: int) -> list[str]:
        """Message stream events; a forced tool's call streams as a tool_use block of input_json_delta pieces."""
        def event(name: str, data: dict[str, Any]) -> str:
            return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"

        [(text, finish)] = choices
        tool = _anthropic_tool(call, text, finish)
        stop_reason, stop_sequence = ("tool_use", None) if tool and finish == "stop" else _anthropic_stop(finish)
        message = self._anthropic_payload(call, [("", finish)], 1) | {"content": [], "stop_reason": None}
        events = [event("message_start", {"type": "message_start", "message": message}),
                  event("ping", {"type": "ping"})]
        pieces = [] if finish == "refusal" else _pieces(text)
        if tool:
            block = {"type": "tool_use", "id": _tool_use_id(), "name": tool[0], "input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in pieces]
        elif finish == "reasoning":
            block = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [{"type": "thinking_delta", "thinking": p} for p in pieces]
        else:
            block = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": p} for p in pieces]
        if pieces:
            events.append(event("content_block_start", {"type": "content_block_start", "index": 0,
                                                        "content_block": block}))
            events += [event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": d})
                       for d in deltas]
            events.append(event("content_block_stop", {"type": "content_block_stop", "index": 0}))
        events.append(event("message_delta", {"type": "message_delta", "delta": {
            "stop_reason": stop_reason, "stop_sequence": stop_sequence}, "usage": {"output_tokens": output_tokens}}))
        return [*events, event("message_stop", {"type": "message_stop"})]

    # ----- batches --------------------------------------------------------------------------------
    def _batch_answer(self, provider: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """One request inside a batch, answered as the online route would (its faults drawn per attempt as
        there), minus latency, rate limits and transport faults. A 200 is billed like an online call, so a
        prompt paid in two batches, or in a batch and online, shows as a duplicate."""
        try:
            call = self._parse_call(provider, body)
            call.attempt = self.admitted_keys[call.key]
            self.admitted_keys[call.key] += 1
            if self.config.record_requests:
                self.requests.append({"provider": provider, "key": call.key, "attempt": call.attempt, "body": body})
            rng = random.Random(f"{self.config.seed}:{call.key}:{call.attempt}")
            fault = _BATCH_FAULTS.get(self._pick_fault(call, rng))
            if fault in ("400", "content_filter", "500"):
                raise self._error(provider, fault, model=call.model)
        except Outcome as o:
            self.outcomes[o.label] += 1
            return o.response.status, json.loads(o.response.text)
        choices = [self._completion_text(call, fault, i) for i in range(call.n)]
        output_tokens = sum(estimate_tokens(text) for text, _ in choices)
        self._charge(call, output_tokens, fault or choices[0][1].partition(":")[0])
        self.batch_requests += 1
        build = self._openai_payload if provider == OPENAI else self._anthropic_payload
        return 200, build(call, choices, output_tokens)

    def _new_job(self, provider: str, prefix: str, requests: list[tuple[str, dict[str, Any]]], **kw: Any) -> Job:
        """Create a batch, ending as the next of `batch_outcomes` says (then 'complete')."""
        outcomes = self.config.batch_outcomes
        fraction = parse_outcome(outcomes[self.batches_created]) if self.batches_created < len(outcomes) else None
        self.batches_created += 1
        answered = len(requests) if fraction is None else round(fraction * len(requests))
        job = Job(prefix + secrets.token_hex(12), requests, time.time(), self.config.batch_latency_s, answered,
                  expires=fraction is not None, **kw)
        self._jobs[provider][job.id] = job
        return job

    def _settle(self, provider: str, job: Job) -> None:
        """End `job` if its time has come: answer (and bill) its requests, and write OpenAI's output files."""
        if job.settle(time.time(), partial(self._batch_answer, provider)) and provider == OPENAI:
            self._write_outputs(job)

    def _write_outputs(self, job: Job) -> None:
        """Store an ended OpenAI batch's output and error files; like OpenAI, an empty one gets no file."""
        output, errors = openai_output(job)
        job.output_file_id = self._store_file(f"{job.id}_output.jsonl", "batch_output", output).id if output else None
        job.error_file_id = self._store_file(f"{job.id}_error.jsonl", "batch_output", errors).id if errors else None

    def _store_file(self, filename: str, purpose: str, data: bytes) -> StoredFile:
        file = StoredFile("file-" + secrets.token_hex(12), filename, purpose, data, int(time.time()))
        self._files[file.id] = file
        return file

    def _job(self, request: web.Request, provider: str) -> Job:
        """The batch the path names, settled to now; the provider's 404 if there is none."""
        self._check_auth(request, provider)
        job = self._jobs[provider].get(request.match_info["id"])
        if job is None:
            raise self._error(provider, "not_found", message=f"No batch found with id '{request.match_info['id']}'.",
                              param="batch_id")
        self._settle(provider, job)
        return job

    def _wire(self, request: web.Request, provider: str, job: Job, *, cancelling: bool = False) -> dict[str, Any]:
        if provider == OPENAI:
            return openai_batch(job, time.time(), cancelling=cancelling)
        results_url = f"{request.url.origin()}/v1/messages/batches/{job.id}/results"  # absolute, as Anthropic's
        return anthropic_batch(job, results_url, canceling=cancelling)

    def _list_limit(self, request: web.Request, provider: str, maximum: int) -> int:
        try:
            limit = int(request.query.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= maximum:
            raise self._error(provider, "400", message=f"limit must be an integer in [1, {maximum}]", param="limit")
        return limit

    async def _batch_get(self, provider: str, request: web.Request) -> web.Response:
        return web.json_response(self._wire(request, provider, self._job(request, provider)))

    async def _batch_list(self, provider: str, request: web.Request) -> web.Response:
        """Newest first; OpenAI pages with `after`, Anthropic with `after_id` or `before_id`."""
        self._check_auth(request, provider)
        jobs, query = self._jobs[provider], request.query
        limit = self._list_limit(request, provider, 100 if provider == OPENAI else 1000)
        if provider == OPENAI:
            ids, has_more = page(list(reversed(jobs)), limit, query.get("after"))
        else:
            ids, has_more = page(list(reversed(jobs)), limit, query.get("after_id"), query.get("before_id"))
        for job_id in ids:
            self._settle(provider, jobs[job_id])
        body = {"data": [self._wire(request, provider, jobs[i]) for i in ids], "has_more": has_more,
                "first_id": ids[0] if ids else None, "last_id": ids[-1] if ids else None}
        return web.json_response({"object": "list", **body} if provider == OPENAI else body)

    async def _batch_cancel(self, provider: str, request: web.Request) -> web.Response:
        """End the batch at once; this answer shows it cancelling, the next poll cancelled (Anthropic: ended)."""
        job = self._job(request, provider)
        if job.ended is not None:
            raise self._error(provider, "400", message=f"Batch {job.id} has already ended and cannot be cancelled.")
        job.cancel(time.time())
        if provider == OPENAI:
            self._write_outputs(job)
        return web.json_response(self._wire(request, provider, job, cancelling=True))

    async def _openai_batch_create(self, request: web.Request) -> web.Response:
        self._check_auth(request, OPENAI)
        body = await self._json_body(request, OPENAI)
        if body.get("endpoint") != OPENAI_ENDPOINT:
            raise self._error(OPENAI, "400", message=f"The emulator batches only {OPENAI_ENDPOINT}.",
                              param="endpoint")
        if body.get("completion_window") != "24h":
            raise self._error(OPENAI, "400", message="completion_window must be '24h'.", param="completion_window")
        file_id = body.get("input_file_id")
        file = self._files.get(file_id) if isinstance(file_id, str) else None
        if file is None:
            raise self._error(OPENAI, "not_found", message=f"No such File object: {file_id}", param="input_file_id")
        if file.purpose != "batch":
            raise self._error(OPENAI, "400", message=f"File {file_id} was not uploaded with purpose 'batch'.",
                              param="input_file_id")
        requests, errors = openai_requests(file.data)
        errors = errors or token_limit_errors(self._jobs[OPENAI].values(), requests, self._count_input,
                                              self.config.batch_enqueued_tokens, time.time())
        fields = {"endpoint": OPENAI_ENDPOINT, "input_file_id": file_id, "completion_window": "24h",
                  "metadata": body.get("metadata"), "model": requests[0][1].get("model") if requests else None}
        job = self._new_job(OPENAI, "batch_", [] if errors else requests, errors=errors, fields=fields)
        return web.json_response(self._wire(request, OPENAI, job))

    async def _anthropic_batch_create(self, request: web.Request) -> web.Response:
        self._check_auth(request, ANTHROPIC)
        body = await self._json_body(request, ANTHROPIC)
        try:
            requests = anthropic_requests(body)
        except ValueError as e:
            raise self._error(ANTHROPIC, "400", message=str(e)) from e
        job = self._new_job(ANTHROPIC, "msgbatch_", requests)
        return web.json_response(self._wire(request, ANTHROPIC, job))

    async def _anthropic_batch_results(self, request: web.Request) -> web.Response:
        job = self._job(request, ANTHROPIC)
        if job.ended is None:
            raise self._error(ANTHROPIC, "400", message=f"Batch {job.id} is still in_progress; its results are "
                              "available once its processing_status is 'ended'.")
        return web.Response(body=anthropic_results(job), content_type="application/binary")

    def _file(self, request: web.Request) -> StoredFile:
        self._check_auth(request, OPENAI)
        file = self._files.get(request.match_info["id"])
        if file is None:
            raise self._error(OPENAI, "not_found", message=f"No such File object: {request.match_info['id']}",
                              param="id")
        return file

    async def _file_upload(self, request: web.Request) -> web.Response:
        """POST /v1/files as multipart/form-data (purpose, file), as the openai client sends it."""
        self._check_auth(request, OPENAI)
        form = await request.post()
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, web.FileField):
            raise self._error(OPENAI, "400", message="file: a file upload is required", param="file")
        if purpose not in FILE_PURPOSES:
            raise self._error(OPENAI, "400", message=f"purpose must be one of {', '.join(FILE_PURPOSES)}",
                              param="purpose")
        return web.json_response(self._store_file(upload.filename, str(purpose), upload.file.read()).wire())

    async def _file_get(self, request: web.Request) -> web.Response:
        return web.json_response(self._file(request).wire())

    async def _file_content(self, request: web.Request) -> web.Response:
        return web.Response(body=self._file(request).data, content_type="application/octet-stream")

    async def _file_delete(self, request: web.Request) -> web.Response:
        file = self._files.pop(self._file(request).id)
        return web.json_response({"id": file.id, "object": "file", "deleted": True})

    # ----- request parsing ------------------------------------------------------------------------
    async def _json_body(self, request: web.Request, provider: str) -> dict[str, Any]:
        try:
            body = await request.json(loads=json.loads)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise self._error(provider, "400", message=f"We could not parse the JSON body of your request: {e}") from e
        if not isinstance(body, dict):
            raise self._error(provider, "400", message="The request body must be a JSON object.")
        return body

    def _check_auth(self, request: web.Request, provider: str) -> None:
        if provider == ANTHROPIC:
            key = request.headers.get("x-api-key") or _bearer(request.headers.get("Authorization", ""))
        else:
            key = _bearer(request.headers.get("Authorization", ""))
        allowed = self.config.api_keys
        if not key or (allowed is not None and key not in allowed):
            said = _ERRORS[provider]["auth"].message
            if provider == OPENAI and key:  # OpenAI's 401 shows part of the key it refused
                said = said.replace("provided.", f"provided: {_masked(key)}.")
            raise self._error(provider, "auth", message=said)
        if provider == ANTHROPIC and request.path.startswith("/v1/messages") and \
                "anthropic-version" not in request.headers:
            raise self._error(provider, "400", message="anthropic-version: header is required")

    def _count_input(self, body: dict[str, Any], provider: str = OPENAI) -> int:
        """The prompt tokens billed: system and messages, the tool definitions, structured-output schema and
        documents billed as input too (`_billed_schemas`), and Anthropic's hidden tool-use system prompt wherever a
        request sends tools (`pricing.tool_prompt_tokens`: by model and tool_choice)."""
        messages = body.get("messages") or []
        hidden = tool_prompt_tokens(str(body.get("model")), body.get("tool_choice")) \
            if provider == ANTHROPIC and body.get("tools") else 0
        return (prompt_tokens(prompt_text(messages, body.get("system"))) + prompt_tokens(_billed_schemas(body))
                + 3 * len(messages) + 3 + hidden)

    def _parse_call(self, provider: str, body: dict[str, Any]) -> _Call:
        model, messages = body.get("model"), body.get("messages")
        if not isinstance(model, str) or not model:
            raise self._error(provider, "400", message="model: Field required", param="model")
        if not isinstance(messages, list) or not messages:
            raise self._error(provider, "400", message="messages: at least one message is required", param="messages")
        if self.config.models is not None and model not in self.config.models:
            raise self._error(provider, "model_not_found", model=model)
        refused = _model_refuses(provider, model, body) if self.config.model_rules else None
        if refused is not None:
            param, message, code = refused
            raise self._error(provider, "400", message=message, param=param, code=code)
        if provider == ANTHROPIC:
            invalid = _anthropic_system_misplaced(model, messages)
            if invalid is not None:
                raise self._error(provider, "400", message=invalid)
            max_tokens, stops, n = body.get("max_tokens"), body.get("stop_sequences") or [], 1
            if not isinstance(max_tokens, int) or max_tokens < 0:  # 0 only fills the prompt cache
                raise self._error(provider, "400", message="max_tokens: Field required (an integer >= 0)",
                                  param="max_tokens")
        else:
            invalid = _openai_invalid(body)
            if invalid is not None:
                param, message, code = invalid
                raise self._error(provider, "400", message=message, param=param, code=code)
            max_tokens = _first_set(body, "max_completion_tokens", "max_tokens", default=self.config.default_max_tokens)
            stops = body.get("stop") or []
            stops = [stops] if isinstance(stops, str) else stops
            n = _first_set(body, "n", default=1)
        input_tokens = self._count_input(body, provider)
        context = self.config.context_tokens
        reserved = max_tokens if (provider == ANTHROPIC or "max_tokens" in body or "max_completion_tokens" in body) else 0
        if context is not None and input_tokens + reserved > context:
            message = (f"This model's maximum context length is {context} tokens. However, you requested "
                       f"{input_tokens + reserved} tokens ({input_tokens} in the messages, {reserved} in the "
                       "completion). Please reduce the length of the messages or completion.")
            raise self._error(provider, "400", message=message, param="messages", code="context_length_exceeded")
        return _Call(provider, body, model, max_tokens, prompt_text(messages, body.get("system")),
                     input_tokens, [s for s in stops if isinstance(s, str) and s], request_key(provider, body),
                     n=n, stream=bool(body.get("stream")),
                     include_usage=bool((body.get("stream_options") or {}).get("include_usage")))

    def _pick_fault(self, call: _Call, rng: random.Random) -> str | None:
        u, acc = rng.random(), 0.0
        chosen = None
        for f in self.config.faults:
            if not f.applies(call.provider, call.prompt):
                continue
            if call.attempt < f.first:
                return f.kind
            acc += f.rate
            if chosen is None and u < acc:
                chosen = f.kind
        return chosen

    # ----- completion text ------------------------------------------------------------------------
    def _completion_text(self, call: _Call, fault: str | None, index: int = 0) -> tuple[str, str]:
        """The text and the normalized finish: 'stop', 'length', 'stop_sequence:<s>', 'refusal' or 'reasoning'
        (the text is reasoning returned apart from the answer, cut at max_tokens)."""
        if fault == "refusal":
            return "I'm sorry, but I can't help with that request.", "refusal"
        if fault == "empty":
            return "", "stop"
        if fault == "reasoning":
            return _thoughts(call.max_tokens), "reasoning"
        if fault == "think_cut":  # cut below, at max_tokens
            return self._finished(call, f"<think>\n{_thoughts(call.max_tokens * 2)}")
        seed = (int(call.key[:15], 16) ^ self.config.seed) + index
        think = f"<think>\n{_thoughts(len(THINKING) // CHARS_PER_TOKEN)}\n</think>\n\n" if fault == "think" else ""
        budget = call.max_tokens * 2 if fault == "truncate" else max(1, call.max_tokens - estimate_tokens(think))
        if self.config.responder is not None:
            text = self.config.responder(call.body)
        else:
            text = default_responder(call.body, seed, budget)
        text = think + _strip_prefill(call, text)
        if fault == "truncate" and estimate_tokens(text) <= call.max_tokens:
            text = (text + " ") * (call.max_tokens * 4 // max(1, len(text)) + 1)
        return self._finished(call, text)

    @staticmethod
    def _finished(call: _Call, text: str) -> tuple[str, str]:
        """`text` as generated: up to the first stop sequence, else cut at max_tokens, else whole."""
        for stop in call.stops:
            cut = text.find(stop)
            if cut >= 0:
                return text[:cut], f"stop_sequence:{stop}"
        if estimate_tokens(text) > call.max_tokens:
            return text[: call.max_tokens * 4], "length"
        return text, "stop"

    def _openai_usage(self, call: _Call, output_tokens: int) -> dict[str, Any]:
        return {
            "prompt_tokens": call.input_tokens, "completion_tokens": output_tokens,
            "total_tokens": call.input_tokens + output_tokens,
            "prompt_tokens_details": {"cached_tokens": self._cached(call), "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
        }

    def _openai_payload(self, call: _Call, choices: list[tuple[str, str]], output_tokens: int) -> dict[str, Any]:
        out = [_openai_choice(call, i, text, finish) for i, (text, finish) in enumerate(choices)]
        usage = self._openai_usage(call, output_tokens)
        if _REASONING_MODELS.match(call.model):  # billed as output, never shown: max_tokens spent thinking
            thought = sum(estimate_tokens(text) for text, finish in choices if finish == "reasoning")
            usage["completion_tokens_details"]["reasoning_tokens"] = thought
        return {
            "id": "chatcmpl-" + secrets.token_hex(12), "object": "chat.completion", "created": int(time.time()),
            "model": call.model, "choices": out, "usage": usage,
            "service_tier": "default", "system_fingerprint": self._fingerprint,
        }

    def _anthropic_payload(self, call: _Call, choices: list[tuple[str, str]], output_tokens: int) -> dict[str, Any]:
        text, finish = choices[0]
        written, hour = self._written(call)
        stop_reason, stop_sequence = _anthropic_stop(finish)
        content = [{"type": "text", "text": text}] if text and finish not in ("refusal", "reasoning") else []
        if finish == "reasoning":  # extended thinking that used up max_tokens: a thinking block, no text
            content = [{"type": "thinking", "thinking": text, "signature": secrets.token_hex(32)}]
        tool = _anthropic_tool(call, text, finish)
        if tool is not None:  # structured output: the answer is the forced tool's input (cut: stop_reason max_tokens)
            content = [{"type": "tool_use", "id": _tool_use_id(), "name": tool[0], "input": tool[1]}]
            stop_reason = "tool_use" if finish == "stop" else stop_reason
        return {
            "id": "msg_01" + secrets.token_hex(11), "type": "message", "role": "assistant", "model": call.model,
            "content": content,
            "stop_reason": stop_reason, "stop_sequence": stop_sequence,
            "usage": {"input_tokens": call.input_tokens - self._cached(call) - written, "output_tokens": output_tokens,
                      "cache_creation_input_tokens": written, "cache_read_input_tokens": self._cached(call),
                      "cache_creation": {"ephemeral_5m_input_tokens": 0 if hour else written,
                                         "ephemeral_1h_input_tokens": written if hour else 0},
                      "service_tier": "standard"},
        }

    def _cached(self, call: _Call) -> int:
        return int(call.input_tokens * self.config.prompt_cache_hit)

    def _written(self, call: _Call) -> tuple[int, bool]:
        """The input tokens an Anthropic request writes to the prompt cache, and whether for an hour (a
        `cache_control` block of its asks `"ttl": "1h"`) rather than 5 minutes."""
        hour = '"ttl":"1h"' in json.dumps(call.body, separators=(",", ":"))
        return int(call.input_tokens * self.config.prompt_cache_write), hour

    # ----- headers and errors ---------------------------------------------------------------------
    def _limit_headers(self, provider: str) -> dict[str, str]:
        if not self.config.send_headers:
            return {}
        now = time.monotonic()
        headers: dict[str, str] = {}
        buckets = self._limiter.buckets
        for b in buckets.values():
            if b is not None:
                b.refill(now)
        if provider == OPENAI:
            tokens = buckets["tokens"] or buckets["input_tokens"] or buckets["output_tokens"]
            for suffix, b in (("requests", buckets["requests"]), ("tokens", tokens)):
                if b is not None:
                    headers[f"x-ratelimit-limit-{suffix}"] = str(b.limit)
                    headers[f"x-ratelimit-remaining-{suffix}"] = str(b.remaining())
                    headers[f"x-ratelimit-reset-{suffix}"] = go_duration(b.reset_s())
            return headers
        wall = time.time()
        token_buckets = [b for n, b in buckets.items() if n != "requests" and b is not None]
        tightest = min(token_buckets, key=lambda b: b.level, default=None)  # Anthropic's "-tokens-*" headers
        for name, b in [*((n, b) for n, b in buckets.items() if n != "tokens"), ("tokens", tightest)]:
            if b is not None:
                prefix = f"anthropic-ratelimit-{name.replace('_', '-')}"
                headers[f"{prefix}-limit"] = str(b.limit)
                headers[f"{prefix}-remaining"] = str(b.remaining())
                headers[f"{prefix}-reset"] = rfc3339(wall + b.reset_s())
        return headers

    def _id_headers(self, provider: str, latency_s: float) -> dict[str, str]:
        if provider == OPENAI:
            return {"x-request-id": "req_" + secrets.token_hex(16), "openai-version": "2020-10-01",
                    "openai-processing-ms": str(int(latency_s * 1000))}
        return {"request-id": "req_01" + secrets.token_hex(11)}

    def _rate_limited(self, call: _Call, bucket: str, requested: float, wait_s: float) -> Outcome:
        retry_after = max(1, math.ceil(wait_s))
        headers = self._limit_headers(call.provider) | {"retry-after": str(retry_after)}
        b = self._limiter.buckets[bucket]
        assert b is not None
        if call.provider == OPENAI:
            headers["retry-after-ms"] = str(max(1, math.ceil(wait_s * 1000)))
            unit = "requests per min (RPM)" if bucket == "requests" else "tokens per min (TPM)"
            message = (f"Rate limit reached for {call.model} in organization org-emulator on {unit}: "
                       f"Limit {b.limit}, Used {b.limit - b.remaining()}, Requested {math.ceil(requested)}. "
                       f"Please try again in {go_duration(wait_s)}. Visit https://platform.openai.com/account/"
                       "rate-limits to learn more.")
            return self._error(OPENAI, "rate_limit", message=message, headers=headers,
                               error_type="requests" if bucket == "requests" else "tokens")
        label = "requests" if bucket == "requests" else bucket.replace("_", " ")
        message = _ANTHROPIC_RATE_LIMIT.format(limit=f"{b.limit:,} {label}")
        return self._error(ANTHROPIC, "rate_limit", message=message, headers=headers)

    def _error(self, provider: str, kind: str, *, model: str = "", message: str | None = None,
               param: str | None = None, headers: dict[str, str] | None = None,
               error_type: str | None = None, label: str | None = None, code: str | None = None) -> Outcome:
        """The provider's error response for `kind`, in its own wording, wrapped to be raised."""
        spec = _ERRORS[provider][kind]
        message = message or spec.message.format(model=model)
        headers = dict(headers or {})
        if kind in ("429", "529", "503") and "retry-after" not in headers:
            headers["retry-after"] = "1"
        if kind == "502":
            html = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n" \
                   "<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n"
            return Outcome(web.Response(status=502, text=html, content_type="text/html", headers=headers), kind)
        if provider == OPENAI:
            body: dict[str, Any] = {"error": {"message": message, "type": error_type or spec.type,
                                              "param": param, "code": code or spec.code}}
            headers["x-request-id"] = "req_" + secrets.token_hex(16)
        else:
            request_id = "req_01" + secrets.token_hex(11)
            body = {"type": "error", "error": {"type": spec.type, "message": message}, "request_id": request_id}
            headers["request-id"] = request_id
        return Outcome(web.json_response(body, status=spec.status, headers=headers), label or kind)


class _ErrorSpec(NamedTuple):
    status: int
    type: str
    message: str
    code: str | None = None
    """OpenAI's `code` (Anthropic errors have none)."""


_OPENAI_RATE_LIMIT = (
    "Rate limit reached for {model} in organization org-emulator on requests per min (RPM): Limit 3, Used 3, "
    "Requested 1. Please try again in 1s. Visit https://platform.openai.com/account/rate-limits to learn more. "
    "You can increase your rate limit by adding a payment method to your account at "
    "https://platform.openai.com/account/billing.")
_ANTHROPIC_RATE_LIMIT = (
    "This request would exceed the rate limit for your organization of {limit} per minute. For details, refer "
    "to: https://docs.claude.com/en/api/rate-limits. You can see the response headers for current usage. Please "
    "reduce the prompt length or the maximum tokens requested, or try again later. You may also contact sales at "
    "https://www.anthropic.com/contact-sales to discuss your options for a rate limit increase.")
_ERRORS: dict[str, dict[str, _ErrorSpec]] = {
    OPENAI: {
        "auth": _ErrorSpec(401, "invalid_request_error", "Incorrect API key provided. You can find your API key "
                           "at https://platform.openai.com/account/api-keys.", "invalid_api_key"),
        "model_not_found": _ErrorSpec(404, "invalid_request_error", "The model `{model}` does not exist or you do "
                                      "not have access to it.", "model_not_found"),
        "400": _ErrorSpec(400, "invalid_request_error", "Invalid request."),
        "content_filter": _ErrorSpec(400, "invalid_request_error", "The prompt was flagged by the content "
                                     "management policy.", "content_filter"),
        "rate_limit": _ErrorSpec(429, "requests", "Rate limit reached.", "rate_limit_exceeded"),
        "429": _ErrorSpec(429, "requests", _OPENAI_RATE_LIMIT, "rate_limit_exceeded"),
        "quota": _ErrorSpec(429, "insufficient_quota", "You exceeded your current quota, please check your plan "
                            "and billing details. For more information on this error, read the docs: "
                            "https://platform.openai.com/docs/guides/error-codes/api-errors.", "insufficient_quota"),
        "500": _ErrorSpec(500, "server_error", "The server had an error while processing your request. Sorry "
                          "about that!"),
        "503": _ErrorSpec(503, "server_error", "The server is overloaded or not ready yet.", "service_unavailable"),
        "529": _ErrorSpec(503, "server_error", "The engine is currently overloaded, please try again later."),
        "timeout": _ErrorSpec(504, "server_error", "Request timed out.", "timeout"),
        "not_found": _ErrorSpec(404, "invalid_request_error", "Not found."),
        "502": _ErrorSpec(502, "server_error", "Bad gateway."),
    },
    ANTHROPIC: {
        "auth": _ErrorSpec(401, "authentication_error", "invalid x-api-key"),
        "model_not_found": _ErrorSpec(404, "not_found_error", "model: {model}"),
        "400": _ErrorSpec(400, "invalid_request_error", "Invalid request."),
        # Anthropic's own words are "Output blocked by content filtering policy", which textbookgen.providers
        # does not classify as a content filter yet; this wording it does
        "content_filter": _ErrorSpec(400, "invalid_request_error", "The prompt was flagged by the content "
                                     "management policy."),
        "rate_limit": _ErrorSpec(429, "rate_limit_error", "Rate limit reached."),
        "429": _ErrorSpec(429, "rate_limit_error", _ANTHROPIC_RATE_LIMIT.format(limit="20,000 input tokens")),
        "quota": _ErrorSpec(402, "billing_error", "Your credit balance is too low to access the Anthropic API. "
                            "Please go to Plans & Billing to upgrade or purchase credits."),
        "500": _ErrorSpec(500, "api_error", "Internal server error"),
        "503": _ErrorSpec(503, "api_error", "Service unavailable"),
        "529": _ErrorSpec(529, "overloaded_error", "Overloaded"),
        "timeout": _ErrorSpec(504, "timeout_error", "Request timed out"),
        "not_found": _ErrorSpec(404, "not_found_error", "Not found."),
        "502": _ErrorSpec(502, "api_error", "Bad gateway."),
    },
}
"""Each provider's error responses by kind, in its own wording."""


_OPENAI_FINISH = {"length": "length", "refusal": "content_filter", "stop_sequence": "stop", "stop": "stop",
                  "reasoning": "length"}
_BATCH_FAULTS = {"400": "400", "content_filter": "content_filter", "500": "500", "502": "500", "503": "500",
                 "529": "500", "truncate": "truncate", "refusal": "refusal", **{f: f for f in ANSWER_FAULTS}}
"""The faults that apply inside a batch, as what they become there (a server error is a 500 result). Rate
limits, quota, hangs, dropped connections and malformed bodies belong to a connection; a batched request has none."""
FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
STREAM_CHUNK_CHARS = 32


def _anthropic_stop(finish: str) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) for a normalized finish."""
    if finish.startswith("stop_sequence:"):
        return "stop_sequence", finish.partition(":")[2]
    return {"length": "max_tokens", "refusal": "refusal", "reasoning": "max_tokens"}.get(finish, "end_turn"), None


def _thoughts(n_tokens: int) -> str:
    """`n_tokens` of a reasoning model's thinking."""
    n_chars = n_tokens * CHARS_PER_TOKEN
    return (THINKING * (n_chars // len(THINKING) + 1))[:n_chars].strip()


def _pieces(text: str) -> list[str]:
    """A completion's text as the pieces its stream sends."""
    return [text[i:i + STREAM_CHUNK_CHARS] for i in range(0, len(text), STREAM_CHUNK_CHARS)]


def _forced_call(call: _Call, text: str, finish: str) -> tuple[str, Any] | None:
    """(tool name, input) when the request forces a tool and `text` is its JSON input; None for a text
    answer (no forced tool, a cut or refused answer, or a custom responder that ignored the schema)."""
    tool = forced_tool(call.body)
    if tool is None or finish != "stop":
        return None
    try:
        return tool["name"], json.loads(text)
    except json.JSONDecodeError:
        return None


def _anthropic_tool(call: _Call, text: str, finish: str) -> tuple[str, Any] | None:
    """(tool name, input) of Anthropic's answer to a forced tool: for one cut at max_tokens, the incomplete
    tool_use block Anthropic sends, its input the members the JSON text completed before the cut."""
    tool = forced_tool(call.body)
    if tool is not None and finish == "length":
        return tool["name"], _complete_members(text)
    return _forced_call(call, text, finish)


_SPACE = re.compile(r"\s*")


def _complete_members(text: str) -> dict[str, Any]:
    """The members of the JSON object `text` starts, up to the first one the text cuts off."""
    decoder, members, pos = json.JSONDecoder(), {}, _SPACE.match(text).end()
    if not text.startswith("{", pos):
        return members
    pos += 1
    while True:
        try:
            key, pos = decoder.raw_decode(text, _SPACE.match(text, pos).end())
            pos = _SPACE.match(text, pos).end()
            if not isinstance(key, str) or not text.startswith(":", pos):
                return members
            value, pos = decoder.raw_decode(text, _SPACE.match(text, pos + 1).end())
        except json.JSONDecodeError:
            return members
        pos = _SPACE.match(text, pos).end()
        if pos == len(text):  # the value may be cut itself (a number); an object's member ends with , or }
            return members
        members[key] = value
        if not text.startswith(",", pos):
            return members
        pos += 1


def _tool_use_id() -> str:
    return "toolu_01" + secrets.token_hex(11)


def _openai_finish(call: _Call, finish: str, tool_called: bool) -> str:
    """OpenAI's finish_reason: a call forced by name ends with "stop", one forced by "required" with
    "tool_calls" (as OpenAI, and vLLM copying it, answer)."""
    if tool_called:
        return "tool_calls" if call.body.get("tool_choice") == "required" else "stop"
    return _OPENAI_FINISH.get(finish.partition(":")[0], "stop")


def _openai_choice(call: _Call, index: int, text: str, finish: str) -> dict[str, Any]:
    """One choice of a chat.completion: text, a refusal, or the forced tool's call."""
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
    tool = _forced_call(call, text, finish)
    if tool is not None:
        message.update(content=None, tool_calls=[{"id": "call_" + secrets.token_hex(12), "type": "function",
                                                  "function": {"name": tool[0], "arguments": text}}])
    elif finish == "refusal":
        message.update(content=None, refusal=text)
    elif finish == "reasoning" and _REASONING_MODELS.match(call.model):  # OpenAI's own: the thinking is not shown
        message.update(content="")
    elif finish == "reasoning":  # vLLM's reasoning parser: the thinking apart, no answer yet
        message.update(content=None, reasoning_content=text)
    logprobs = _openai_logprobs(call, index, text, finish) if tool is None else None
    return {"index": index, "message": message, "logprobs": logprobs,
            "finish_reason": _openai_finish(call, finish, tool is not None)}


def _openai_deltas(call: _Call, index: int, text: str, finish: str) -> list[dict[str, Any]]:
    """One choice's stream: the role, the text (or the forced tool's call, its arguments in pieces), the finish.
    A refusal streams no text: only its finish_reason; nor does OpenAI's own reasoning model thinking (unseen)."""
    tool = _forced_call(call, text, finish)
    unseen = finish == "reasoning" and _REASONING_MODELS.match(call.model)
    pieces = [] if finish == "refusal" or unseen else _pieces(text)
    if tool is not None:
        first = {"role": "assistant", "content": None, "refusal": None, "tool_calls": [
            {"index": 0, "id": "call_" + secrets.token_hex(12), "type": "function",
             "function": {"name": tool[0], "arguments": ""}}]}
        deltas = [{"tool_calls": [{"index": 0, "function": {"arguments": p}}]} for p in pieces]
    else:
        first = {"role": "assistant", "content": "", "refusal": None}
        deltas = [{"reasoning_content" if finish == "reasoning" else "content": p} for p in pieces]
    logprobs = _openai_logprobs(call, index, text, finish) if tool is None else None
    chunks = [{"index": index, "delta": first, "logprobs": None, "finish_reason": None}]
    chunks += [{"index": index, "delta": delta, "logprobs": _piece_logprobs(logprobs, i), "finish_reason": None}
               for i, delta in enumerate(deltas)]
    finish_reason = _openai_finish(call, finish, tool is not None)
    return [*chunks, {"index": index, "delta": {}, "logprobs": None, "finish_reason": finish_reason}]


def _piece_logprobs(logprobs: dict[str, Any] | None, i: int) -> dict[str, Any] | None:
    """The logprobs of a text's i-th streamed piece (STREAM_CHUNK_CHARS is a whole number of tokens)."""
    if logprobs is None or logprobs["content"] is None:
        return None
    per_piece = STREAM_CHUNK_CHARS // CHARS_PER_TOKEN
    return {"content": logprobs["content"][i * per_piece:(i + 1) * per_piece], "refusal": None}


_ALTERNATIVE_TOKENS = (" the", " of", " and", " to", " in", " is", " a", " that", " for", " it", " as", " with",
                       " on", " by", " this", " be", " are", " from", " or", " an", " which")


def _openai_logprobs(call: _Call, index: int, text: str, finish: str) -> dict[str, Any] | None:
    """Synthetic logprobs when the request asks for them (None otherwise), in OpenAI's shape and seeded by
    the request: `text` as tokens of CHARS_PER_TOKEN characters (as many as billed), each the most likely
    at its position (p in [0.5, 1)), its `top_logprobs` alternatives sharing the rest. A refusal's tokens
    are under "refusal"."""
    if call.body.get("logprobs") is not True:
        return None
    rng = random.Random(f"{call.key}:{index}:logprobs")
    k = call.body.get("top_logprobs") or 0
    tokens = [text[i:i + CHARS_PER_TOKEN] for i in range(0, len(text), CHARS_PER_TOKEN)]
    pool = sorted(set(tokens) | set(_ALTERNATIVE_TOKENS))
    entries = []
    for token in tokens:
        p = rng.uniform(0.5, 0.999)
        others = rng.sample([t for t in pool if t != token], k - 1) if k else []
        top = [(token, p), *((t, (1 - p) * 0.5 ** (j + 1)) for j, t in enumerate(others))][:k]
        entries.append(_logprob(token, p) | {"top_logprobs": [_logprob(t, q) for t, q in top]})
    return {"content": None, "refusal": entries} if finish == "refusal" else {"content": entries, "refusal": None}


def _logprob(token: str, p: float) -> dict[str, Any]:
    return {"token": token, "bytes": list(token.encode()), "logprob": math.log(p)}


def _masked(key: str) -> str:
    """A refused key as OpenAI's 401 echoes it: its first 8 and last 4 characters around stars (a short one whole),
    so tests see what an error message, a log line or a journal row must not pass on."""
    return key if len(key) < 16 else key[:8] + "*" * (len(key) - 12) + key[-4:]


def _bearer(value: str) -> str:
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _first_set(body: dict[str, Any], *keys: str, default: int) -> int:
    """The first of `keys` the body sets to a non-null value (0 included), else `default`."""
    return next((body[k] for k in keys if body.get(k) is not None), default)


def _billed_schemas(body: dict[str, Any]) -> str:
    """The JSON of a body's parts beside its messages that are billed as input: OpenAI's and Anthropic's tools and
    tool_choice, OpenAI's functions and response_format, Anthropic's output_config.format (and beta output_format),
    and the `documents` a vLLM server's chat template renders into the prompt (its guided_json and other guided
    decoding constrain the output: not billed)."""
    parts = [body.get(k) for k in ("tools", "tool_choice", "functions", "function_call", "response_format",
                                   "output_format", "documents")]
    config = body.get("output_config")
    parts.append(config.get("format") if isinstance(config, dict) else None)
    return "\n".join(json.dumps(part, ensure_ascii=False) for part in parts if part)


_OPENAI_ROLES = ("system", "assistant", "user", "function", "tool", "developer")
_OPENAI_RANGES: tuple[tuple[str, float, float | None, bool], ...] = (
    # (param, minimum, maximum, integer): the ranges completion_create_params.py states (temperature, top_logprobs)
    # or implies (counts of at least one, top_p a probability mass); n <= 128 is the API reference's limit
    ("max_completion_tokens", 1, None, True), ("max_tokens", 1, None, True), ("n", 1, 128, True),
    ("temperature", 0, 2, False), ("top_p", 0, 1, False), ("top_logprobs", 0, 20, True),
)


def _openai_invalid(body: dict[str, Any]) -> tuple[str, str, str | None] | None:
    """(param, message, code) of the first thing OpenAI rejects with a 400 in a chat request, else None.

    The rules are those the SDK's completion_create_params.py states: message roles, the numeric ranges
    above, up to 4 stop sequences, top_logprobs only with logprobs=true, stream_options only when
    streaming. The messages are OpenAI's own wording."""
    for i, message in enumerate(body["messages"]):
        role = message.get("role") if isinstance(message, dict) else None
        if role is None:
            return f"messages[{i}].role", f"Missing required parameter: 'messages[{i}].role'.", \
                "missing_required_parameter"
        if role not in _OPENAI_ROLES:
            supported = ", ".join(f"'{r}'" for r in _OPENAI_ROLES[:-1]) + f", and '{_OPENAI_ROLES[-1]}'"
            return f"messages[{i}].role", f"Invalid value: '{role}'. Supported values are: {supported}.", \
                "invalid_value"
    for param, low, high, integer in _OPENAI_RANGES:
        invalid = _out_of_range(param, body.get(param), low, high, integer)
        if invalid is not None:
            return invalid
    stop = body.get("stop")
    if isinstance(stop, list) and len(stop) > 4:
        return "stop", ("Invalid 'stop': array too long. Expected an array with maximum length 4, but got an "
                        f"array with length {len(stop)} instead."), "array_above_max_length"
    if body.get("top_logprobs") is not None and body.get("logprobs") is not True:
        return "top_logprobs", "The 'top_logprobs' parameter is only allowed when 'logprobs' is enabled.", None
    if body.get("stream_options") is not None and not body.get("stream"):
        return "stream_options", "The 'stream_options' parameter is only allowed when 'stream' is enabled.", None
    return None


_MID_CONVERSATION_SYSTEM = ("claude-opus-4-8",)
"""Claude models that take role-"system" messages inside `messages` (mid-conversation system messages)."""


def _anthropic_system_misplaced(model: str, messages: list[Any]) -> str | None:
    """The message of Anthropic's 400 for a role-"system" message in `messages`, else None. Models before
    Opus 4.8 take no such message; Opus 4.8 takes one only after a user turn or an assistant turn ending in a
    server tool's block, last or before an assistant turn: never first, never two in a row. The first wording is
    the API's; the placement wordings follow the one seen live ("role 'system' must follow...")."""
    roles = [_role(m) for m in messages]
    for i, role in enumerate(roles):
        if role != "system":
            continue
        if not model.startswith(_MID_CONVERSATION_SYSTEM):
            return ('messages: Unexpected role "system". The Messages API accepts a top-level `system` parameter, '
                    'not "system" as an input message role.')
        if i == 0:
            return (f"messages.{i}: a system message cannot be the first entry in messages; use the top-level "
                    "`system` parameter")
        if roles[i - 1] not in ("user", _SERVER_TOOL_TURN):
            return (f"messages.{i}: role 'system' must follow a 'user' message or an 'assistant' message ending "
                    "in a server tool result")
        if i + 1 < len(roles) and roles[i + 1] not in ("assistant", _SERVER_TOOL_TURN):
            return f"messages.{i}: a system message must be the last entry in messages or precede an 'assistant' message"
    return None


_SERVER_TOOL_TURN = "assistant (server tool)"


def _role(message: Any) -> str | None:
    """A message's role for the placement rules: an assistant turn whose last block is a server tool's
    (server_tool_use, web_search_tool_result...) is told apart, a system message may follow it."""
    if not isinstance(message, dict):
        return None
    content = message.get("content")
    last = content[-1] if isinstance(content, list) and content else None
    kind = str(last.get("type") or "") if isinstance(last, dict) else ""
    server_tool = kind == "server_tool_use" or kind.endswith("_tool_result")
    return _SERVER_TOOL_TURN if message.get("role") == "assistant" and server_tool else message.get("role")


def _out_of_range(param: str, value: Any, low: float, high: float | None,
                  integer: bool) -> tuple[str, str, str] | None:
    """OpenAI's 400 for a numeric parameter of the wrong type or outside [low, high] (None: not set)."""
    if value is None:
        return None
    kind = "integer" if integer else "decimal"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        return param, f"Invalid type for '{param}': expected {'an integer' if integer else 'a number'}, but got " \
                      f"{type(value).__name__} instead.", "invalid_type"
    if value < low:
        return param, f"Invalid '{param}': {kind} below minimum value. Expected a value >= {low}, but got " \
                      f"{value} instead.", f"{kind}_below_min_value"
    if high is not None and value > high:
        return param, f"Invalid '{param}': {kind} above maximum value. Expected a value <= {high}, but got " \
                      f"{value} instead.", f"{kind}_above_max_value"
    return None


_REASONING_MODELS = re.compile(r"(gpt-5(?!-chat)|o[1-9])\b")
"""OpenAI models that sample at temperature 1 only and take max_completion_tokens (gpt-5-chat is not one)."""
_ONE_SAMPLING_KNOB = ("claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1")
"""Claude models that take temperature or top_p, not both (their snapshots and aliases start so too)."""


def _model_refuses(provider: str, model: str, body: dict[str, Any]) -> tuple[str | None, str, str | None] | None:
    """(param, message, code) of the 400 the model gives a parameter it refuses (EmulatorConfig.model_rules)."""
    if provider == ANTHROPIC:
        if model.startswith(_ONE_SAMPLING_KNOB) and body.get("temperature") is not None \
                and body.get("top_p") is not None:
            return None, "`temperature` and `top_p` cannot both be specified for this model. Please use only one.", None
        return None
    if not _REASONING_MODELS.match(model):
        return None
    temperature = body.get("temperature")
    if temperature is not None and temperature != 1:
        return "temperature", (f"Unsupported value: 'temperature' does not support {temperature} with this model. "
                               "Only the default (1) value is supported."), "unsupported_value"
    if body.get("max_tokens") is not None:
        return "max_tokens", ("Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                              "'max_completion_tokens' instead."), "unsupported_parameter"
    return None


def _strip_prefill(call: _Call, text: str) -> str:
    """Anthropic continues a trailing assistant message (prefill); don't repeat it."""
    last = call.body["messages"][-1]
    if call.provider == ANTHROPIC and isinstance(last, dict) and last.get("role") == "assistant":
        prefill = prompt_text([last]).strip()
        if prefill and text.startswith(prefill):
            return text[len(prefill):]
    return text


def main(argv: list[str] | None = None) -> None:
    """Serve the emulator until Ctrl-C/SIGTERM, for dry runs of a pipeline against a fake provider.
    --port 0 picks a free port; the first line printed names the URL; on exit the counters are
    printed as one JSON line (live: GET /_emulator/stats)."""
    p = argparse.ArgumentParser(prog="python -m textbookgen.testing.emulator", description=main.__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--rpm", type=int)
    p.add_argument("--input-tpm", type=int)
    p.add_argument("--output-tpm", type=int)
    p.add_argument("--tpm", type=int, help="OpenAI-style combined tokens per minute (input + output)")
    p.add_argument("--latency", type=float, default=0.5, help="median latency in seconds (lognormal)")
    p.add_argument("--latency-sigma", type=float, default=0.5)
    p.add_argument("--latency-per-token", type=float, default=0.0, help="seconds added per output token")
    p.add_argument("--window", type=float, default=60.0, help="rate-limit bucket capacity in seconds of refill")
    p.add_argument("--hang", type=float, default=600.0, help="seconds a `timeout` fault hangs")
    p.add_argument("--fault", action="append", default=[], metavar="KIND:RATE",
                   help=f"KIND:RATE or KIND:first=N; kinds: {', '.join(FAULT_KINDS)}")
    p.add_argument("--no-headers", action="store_true", help="send no rate-limit headers (like vLLM)")
    p.add_argument("--api-key", action="append", help="accept only these keys (default: any non-empty key)")
    p.add_argument("--model", action="append", help="serve only these models (default: any)")
    p.add_argument("--model-rules", action="store_true",
                   help="refuse what particular models refuse (gpt-5: temperature != 1; Claude 4.5: temperature with top_p)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-latency", type=float, default=1.0, help="seconds before a batch ends")
    p.add_argument("--batch-enqueued-tokens", type=int, help="OpenAI's enqueued-token limit per model: a batch "
                   "past it fails as a whole with token_limit_exceeded")
    p.add_argument("--batch-outcome", action="append", default=[], metavar="OUTCOME",
                   help="how the next batch ends, in creation order: complete or expire:FRACTION (answered)")
    args = p.parse_args(argv)
    try:
        cfg = EmulatorConfig(
            latency_median_s=args.latency, latency_sigma=args.latency_sigma, rpm=args.rpm,
            input_tpm=args.input_tpm, output_tpm=args.output_tpm, tpm=args.tpm, send_headers=not args.no_headers,
            faults=[Fault.parse(s) for s in args.fault], seed=args.seed, api_keys=args.api_key,
            models=args.model, window_s=args.window, latency_per_output_token_s=args.latency_per_token,
            hang_s=args.hang, batch_latency_s=args.batch_latency, batch_outcomes=args.batch_outcome,
            batch_enqueued_tokens=args.batch_enqueued_tokens, model_rules=args.model_rules)
    except ValueError as e:
        p.error(str(e))
    try:
        asyncio.run(_serve(Emulator(cfg, host=args.host, port=args.port)))
    except OSError as e:  # the port is taken or the host is not ours: the message says which
        sys.exit(f"error: {e.strerror or e}")


async def _serve(emu: Emulator) -> None:
    """Serve until SIGINT/SIGTERM, then print the final counters as one JSON line."""
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    async with emu:
        print(f"LLM provider emulator on {emu.base_url}\n"
              f"  OpenAI:    base_url={emu.openai_base_url}\n"
              f"  Anthropic: base_url={emu.anthropic_base_url}\n"
              f"  counters:  GET {emu.base_url}/_emulator/stats   (Ctrl-C to stop)", flush=True)
        await stop.wait()
    with contextlib.suppress(OSError):  # nobody reading our stdout any more
        print(json.dumps(emu.stats()), flush=True)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
