"""Provider batch APIs: the same requests at half the price, answered within hours instead of seconds.

OpenAI's Batch API and Anthropic's Message Batches take thousands of requests per submission and bill
half the standard price (`pricing.BATCH_DISCOUNT`). `Generator(batch=True)` sends the pending requests
that way: in chunks of `batch_size`, each request's `custom_id` its journal key, polled every
`batch_poll_s`; answers go through the same outcome rules and journal as live calls. Requests that come
back expired or with a transient error are resubmitted in a later batch, up to `batch_max_rounds` times;
those of a batch someone cancelled at the provider (to stop its spending) fail as transient instead, so a
rerun sends them but this run does not. A request's error is classed as a live call's would be
(`providers.classify`): one that would stop a live run (an unknown model, a parameter the model refuses, no
credit) stops this one, the requests pending, instead of failing them all or sending them round again a day
at a time. A results line that cannot be read loses only its own answer (its request goes round again), and
a poll that fails after its retries is tried again at the next poll, up to `max_attempts` in a row: the
batches run on meanwhile. Once the journal holds a batch's answers, its OpenAI input, output and error files
are deleted (they would stay in the organisation's file storage, prompts and answers with them).
`Generator.run_windows` (a batch build's sending) gives the runner its requests as an iterator, read only as a batch
can go: the run holds the requests queued for the next batch with their bodies and, of those submitted, only what
booking needs (key, worst case, rounds); a request going round again gets its body back from its journal row.

Providers cap what an organisation keeps queued: OpenAI the prompt tokens of its unfinished batches per
model (a batch over the limit fails as a whole with `token_limit_exceeded`), Anthropic the requests in its
processing queue (a create over it is a 429). Such a refusal is about room, not about the requests: they go
back to the queue, not counted as a round, and the run learns a cap from it, holding further submissions
while its batches run and submitting the rest as they end. `BatchLimits` sets a cap up front instead.
`cancel_batches` (`textbookgen journal PATH --cancel-batches`) cancels a journal's open batches.

The budgets hold as in a live run, at the batch price, even if every answer runs to max_tokens: a batch goes out
only when its worst case (the engine's, per request: the prompt as estimated, at the cache-write price where it asks
for prompt-cache writes, and max_tokens of output), with that of every batch still running, fits beside what is
spent. When the whole next batch does not fit, the requests that do (in order) go as a smaller one, or the run
waits for running batches to end: their real cost, mostly far below max_tokens, frees room. The budget is reached
when none is running and the next request's worst case does not fit, so a run ends within one request's worst case
of it.

Nothing is paid twice. A batch's row (tag, keys) is committed before it is submitted and its batch id right
after, so a rerun polls the batches the journal names instead of submitting their requests again. A crash
between the submission and that second commit is covered by finding the batch at the provider: OpenAI by
the tag stored in the batch's metadata; Anthropic, which keeps no metadata, by creation time and request
count among the batches the journal does not already name (only an unambiguous match is taken: chunks of one
run have the same size, so the batches it recorded must be left out or its own earlier chunk looks like a
second candidate and the lost batch is paid again). Ctrl-C leaves submitted batches running (they are paid for);
rerunning collects them.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from textbookgen.errors import BudgetExhausted, FatalProviderError, ItemError, RetryableError, redact
from textbookgen.journal import DONE_STATUSES, PERMANENT_ERRORS, request_of, server
from textbookgen.providers import (
    AnthropicProvider,
    Completion,
    OpenAIProvider,
    classify,
    make_provider,
)

if TYPE_CHECKING:
    from textbookgen.engine import Generator, Spend, _Item
    from textbookgen.journal import Journal

log = logging.getLogger("textbookgen.batch")

BATCH_PROVIDERS = ("openai", "anthropic")
# the providers' per-batch limits, with headroom: OpenAI 50,000 requests / 200 MB, Anthropic 100,000 / 256 MB
MAX_REQUESTS = {"openai": 50_000, "anthropic": 100_000}
MAX_BYTES = 150_000_000
FIND_SLACK_S = 120.0  # clock skew allowed when matching a batch's creation time to our record
CAPACITY = "capacity"  # a BatchResult's class when the provider refused its batch for room, not content
FATAL = "fatal"  # a BatchResult's class when its answer would stop a live run (unknown model, refused parameter)
CANCELLED = "cancelled"  # a BatchResult's class when its batch was cancelled at the provider before it ran
# batch-level (line-less) OpenAI errors that are about the organisation's limits, not the input file
_CAPACITY_CODES = ("token_limit_exceeded", "rate_limit_exceeded", "request_limit_exceeded", "batch_limit_exceeded")
_CAPACITY_WORDS = ("limit reached", "limit exceeded", "try again")
_UNREADABLE = (ValueError, KeyError, TypeError, AttributeError, IndexError)  # a cut or malformed results line
# the HTTP status of an Anthropic error type (a batch result gives the type only)
_ANTHROPIC_STATUS = {"invalid_request_error": 400, "authentication_error": 401, "billing_error": 402,
                     "permission_error": 403, "not_found_error": 404, "request_too_large": 413,
                     "rate_limit_error": 429, "api_error": 500, "timeout_error": 504, "overloaded_error": 529}


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """What one run keeps submitted at a time, per provider and model (None: no cap). Set them to your
    organisation's limits to stay under them from the start (OpenAI: enqueued prompt tokens per model, e.g.
    2,000,000 for gpt-4o-mini at tier 1; Anthropic: requests in the processing queue); without them the run
    learns a token cap from the first refusal. Tokens are estimated from the prompt length, as the engine does."""

    enqueued_tokens: int | None = None
    batches: int | None = None


@dataclass(frozen=True, slots=True)
class Poll:
    """What one look at a batch tells: whether it has ended and, while it runs, how many of its requests the
    provider has answered or failed so far (not collected: they reach the journal only when the batch ends)."""

    ended: bool
    answered: int = 0
    failed: int = 0


class QueueFull(Exception):
    """The provider refused to take a batch for lack of room (a 429 at create) while this run's batches run."""


class BatchGone(Exception):
    """The provider, which answers for this key, has no batch by a recorded id: deleted, or submitted with
    another key (OpenAI projects and Anthropic workspaces do not see each other's batches)."""

    def __init__(self, batch_id: str) -> None:
        super().__init__(batch_id)
        self.batch_id = batch_id


async def retrieve(get, listing, batch_id: str):
    """`get(batch_id)`; a 404 is BatchGone once `listing()` shows the server and key are right (a 404 there too is
    a wrong base_url, which the caller's classification says)."""
    try:
        return await get(batch_id)
    except Exception as exc:  # noqa: BLE001 - only a 404 is looked at; the rest is re-raised as is
        if getattr(exc, "status_code", None) != 404:
            raise
    await listing(limit=1)
    raise BatchGone(batch_id)


@dataclass(slots=True)
class BatchResult:
    """One request's outcome inside a finished batch: a completion, or an error and its class
    ("bad_request" / "content_filter": permanent; "transient": resubmit, a round; CAPACITY: resubmit once
    there is room, not a round; FATAL: stop the run, the request pending; CANCELLED: its batch was cancelled
    before it ran, by someone stopping the spending: not sent again by this run)."""

    key: str
    completion: Completion | None = None
    error: str | None = None
    error_class: str | None = None


def is_capacity_error(code: str | None, message: str | None) -> bool:
    """Whether a batch-level error says the organisation's queue is full (a limit), not that the input is bad."""
    text = f"{code or ''} {message or ''}".lower()
    return code in _CAPACITY_CODES or any(w in text for w in _CAPACITY_WORDS)


async def call_api(fn, *args, provider: str, model: str, secrets: tuple[str, ...], attempts: int, wait):
    """One batch-API call, retried with backoff on transient errors like a live request (a wait of hours
    should not die of one network blip); other errors are classified as for live calls."""
    async for attempt in AsyncRetrying(stop=stop_after_attempt(attempts), wait=wait,
                                       retry=retry_if_exception_type(RetryableError), reraise=True):
        with attempt:
            try:
                return await fn(*args)
            except (FatalProviderError, ItemError, RetryableError, QueueFull, BatchGone):
                raise
            except Exception as exc:  # noqa: BLE001 - SDK errors are classified; a bug surfaces as itself
                raise classify(exc, provider, model, secrets) from None


async def read_results(batch_id: str, lines: AsyncIterator[str], parse: Callable[[dict], BatchResult]) -> list[BatchResult]:
    """The results in a streamed results file (a batch's answers may be hundreds of MB). A line that cannot be read
    (cut, malformed) is the transient failure of the request it names, or left out where it names none: either way
    its request goes round again (a run) or stays pending (a cancel), where the error used to fail the whole batch,
    and its paid answers, on every rerun."""
    results, bad = [], 0
    async for line in lines:
        if not line.strip():
            continue
        row: Any = None
        try:
            results.append(parse(row := json.loads(line)))
        except _UNREADABLE as exc:
            bad += 1
            key = row.get("custom_id") if isinstance(row, dict) else None
            if isinstance(key, str):
                results.append(BatchResult(key, error=f"unreadable result line: {type(exc).__name__}: {exc}"[:300],
                                           error_class="transient"))
    if bad:
        log.warning("batch %s: %d result lines could not be read; their requests go round again", batch_id, bad)
    return results


@functools.cache
def _line_error_type() -> type[Exception]:
    import openai

    class BatchLineError(openai.APIStatusError):
        """A request's error inside a batch in the shape of the SDK error a live call gets (status, body)."""

        def __init__(self, status: int, body: dict) -> None:
            Exception.__init__(self, f"HTTP {status}")
            self.status_code, self.body = status, body

    return BatchLineError


def line_error(key: str, provider: OpenAIProvider | AnthropicProvider, status: int, body: dict) -> BatchResult:
    """A request that failed inside a batch, with the class a live call given this answer would have
    (`providers.classify`): FATAL where it stops a live run (an unknown model, a parameter the model refuses,
    a bad key, no credit: every request would fail alike, so the run stops and they stay pending), "transient"
    where a retry may pass, else the request's own ("bad_request", "content_filter")."""
    exc = classify(_line_error_type()(status, body), provider.name, provider.model, provider.secrets)
    if isinstance(exc, FatalProviderError):
        return BatchResult(key, error=str(exc), error_class=FATAL)
    return BatchResult(key, error=str(exc), error_class=exc.error_class if isinstance(exc, ItemError) else "transient")


class OpenAIBatches:
    """OpenAI's Batch API: upload a JSONL file, create a batch on it, read the output and error files."""

    def __init__(self, provider: OpenAIProvider) -> None:
        self.provider, self.client = provider, provider.client

    def line(self, key: str, req) -> bytes:
        return json.dumps({"custom_id": key, "method": "POST", "url": "/v1/chat/completions",
                           "body": self.provider.body(req)}, ensure_ascii=False).encode()

    async def submit(self, lines: Sequence[bytes], tag: str) -> str:
        file = await self.client.files.create(file=(f"{tag}.jsonl", b"\n".join(lines) + b"\n"), purpose="batch")
        batch = await self.client.batches.create(input_file_id=file.id, endpoint="/v1/chat/completions",
                                                 completion_window="24h", metadata={"textbookgen_tag": tag})
        return batch.id

    async def find(self, tag: str, since: float, n: int, known: Collection[str] = ()) -> str | None:
        """The batch submitted under `tag`, by the tag in its metadata (exact: `known` is not needed)."""
        async for batch in self.client.batches.list(limit=100):  # newest first
            if batch.created_at < since - FIND_SLACK_S:
                return None
            if (batch.metadata or {}).get("textbookgen_tag") == tag:
                return batch.id
        return None

    async def poll(self, batch_id: str) -> Poll:
        batch = await retrieve(self.client.batches.retrieve, self.client.batches.list, batch_id)
        counts = batch.request_counts  # None while it validates
        return Poll(batch.status in ("completed", "failed", "expired", "cancelled"),
                    counts.completed if counts else 0, counts.failed if counts else 0)

    async def ended(self, batch_id: str) -> bool:
        return (await self.poll(batch_id)).ended

    async def cancel(self, batch_id: str) -> None:
        await self.client.batches.cancel(batch_id)

    async def clean_up(self, batch_id: str) -> None:
        """Delete an ended batch's input, output and error files, which would stay in the organisation's storage."""
        batch = await self.client.batches.retrieve(batch_id)
        for file_id in filter(None, (batch.input_file_id, batch.output_file_id, batch.error_file_id)):
            await self.client.files.delete(file_id)

    async def results(self, batch_id: str, keys: Sequence[str]) -> list[BatchResult]:
        batch = await self.client.batches.retrieve(batch_id)
        if batch.status == "failed":  # refused as a whole: for the input (fails again) or for room (retry later)
            found = (batch.errors.data or []) if batch.errors else []
            if found and all(e.line is None and is_capacity_error(e.code, e.message) for e in found):
                text = "; ".join(f"{e.code}: {e.message}" for e in found)
                return [BatchResult(k, error=f"openai batch {batch_id} refused for room: {text}",
                                    error_class=CAPACITY) for k in keys]
            for e in found[:1]:  # one that would stop a live run (a model it lacks) stops this one too
                fatal = line_error("", self.provider, 400, {"error": {"code": e.code, "message": e.message}})
                if fatal.error_class == FATAL:
                    return [BatchResult(k, error=fatal.error, error_class=FATAL) for k in keys]
            errors = "; ".join(f"line {e.line}: {e.message}" for e in found) or "no reason given"
            return [BatchResult(k, error=f"openai batch {batch_id} failed validation: {errors}",
                                error_class="bad_request") for k in keys]
        results = []
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                async with self.client.files.with_streaming_response.content(file_id) as content:
                    results += await read_results(batch_id, content.iter_lines(), self._result)
        if batch.status == "cancelled":  # the requests that never ran, should its files leave them out
            seen = {r.key for r in results}
            results += [BatchResult(k, error="openai batch: batch_cancelled", error_class=CANCELLED)
                        for k in keys if k not in seen]
        return results

    def _result(self, row: dict) -> BatchResult:
        key, response, error = row["custom_id"], row.get("response"), row.get("error")
        if response and response.get("status_code") == 200:
            return BatchResult(key, completion=self.provider.parse(response["body"]))
        if response:
            return line_error(key, self.provider, int(response.get("status_code") or 500), response.get("body") or {})
        code = (error or {}).get("code", "no response")
        text = f"openai batch: {code}: {(error or {}).get('message', '')}"  # expired or cancelled before it ran
        return BatchResult(key, error=text, error_class=CANCELLED if code == "batch_cancelled" else "transient")


class AnthropicBatches:
    """Anthropic's Message Batches: requests inline in the create call, results as JSONL."""

    def __init__(self, provider: AnthropicProvider) -> None:
        self.provider, self.client = provider, provider.client

    def line(self, key: str, req) -> bytes:
        return json.dumps({"custom_id": key, "params": self.provider.body(req)}, ensure_ascii=False).encode()

    async def submit(self, lines: Sequence[bytes], tag: str) -> str:
        batch = await self.client.messages.batches.create(requests=[json.loads(line) for line in lines])
        return batch.id

    async def find(self, tag: str, since: float, n: int, known: Collection[str] = ()) -> str | None:
        """The one batch of `n` requests created since `since` (less the clock slack) that is not in `known`
        (the ids the journal and the run already hold), or None when there are none or several: adopting
        someone else's batch would lose ours and cancel theirs, so an ambiguous match sends the batch again."""
        matches = []
        async for batch in self.client.messages.batches.list(limit=100):  # newest first
            if batch.created_at.timestamp() < since - FIND_SLACK_S:
                break
            if batch.id in known:
                continue
            counts = batch.request_counts
            if counts.processing + counts.succeeded + counts.errored + counts.canceled + counts.expired == n:
                matches.append(batch.id)
        return matches[0] if len(matches) == 1 else None

    async def poll(self, batch_id: str) -> Poll:
        batch = await retrieve(self.client.messages.batches.retrieve, self.client.messages.batches.list, batch_id)
        counts = batch.request_counts
        return Poll(batch.processing_status == "ended", counts.succeeded, counts.errored)

    async def ended(self, batch_id: str) -> bool:
        return (await self.poll(batch_id)).ended

    async def cancel(self, batch_id: str) -> None:
        await self.client.messages.batches.cancel(batch_id)

    async def clean_up(self, batch_id: str) -> None:
        """Nothing: a message batch keeps no files (its results go after 29 days)."""

    async def results(self, batch_id: str, keys: Sequence[str]) -> list[BatchResult]:
        """Read line by line (not through the SDK's decoder, which one bad line stops with the rest unread)."""
        stream = await self.client.messages.batches.results(batch_id)
        try:
            return await read_results(batch_id, stream.http_response.aiter_lines(), self._result)
        finally:
            await stream.close()

    def _result(self, row: dict) -> BatchResult:
        key, result = row["custom_id"], row["result"]
        if result["type"] == "succeeded":
            return BatchResult(key, completion=self.provider.parse(result["message"]))
        if result["type"] == "errored":
            error = result["error"]
            return line_error(key, self.provider, _ANTHROPIC_STATUS.get(error["error"]["type"], 500), error)
        # expired or canceled before it ran
        return BatchResult(key, error=f"anthropic batch: request {result['type']}",
                           error_class=CANCELLED if result["type"] == "canceled" else "transient")


def request_from(row: dict) -> Any:
    """The ChatRequest of a journal row's canonical request (its key's fields; the metadata, which is not sent, left
    out): the body of a request going round again, dropped from memory while its batch ran."""
    from textbookgen.engine import ChatRequest  # the engine imports this module

    return ChatRequest(**{k: v for k, v in request_of(row).items() if k not in ("provider", "model")})


async def clean_up(api: OpenAIBatches | AnthropicBatches, call, batch_id: str) -> None:
    """Delete what an ended batch leaves at the provider, once the journal holds its answers; a failure only warns."""
    try:
        await call(api.clean_up, batch_id)
    except (FatalProviderError, ItemError, RetryableError) as exc:
        log.warning("could not delete the files of batch %s (%s); they stay in the provider's file storage",
                    batch_id, exc)


def server_of(provider: OpenAIProvider | AnthropicProvider) -> str:
    """The URL the provider's client sends to (the emulator, a proxy, the provider's API), recorded with each batch so
    that cancelling it later finds it there, as the journal keeps it (no user:password, query or fragment)."""
    return server(str(provider.client.base_url))


def batch_api(provider: OpenAIProvider | AnthropicProvider) -> OpenAIBatches | AnthropicBatches:
    """The batch API of a provider (the Generator admits only BATCH_PROVIDERS in batch mode)."""
    return AnthropicBatches(provider) if isinstance(provider, AnthropicProvider) else OpenAIBatches(provider)


@dataclass(slots=True)
class _Booked:
    """What recording an ended batch leaves to do: requests for another round and requests refused for room (each
    with its error), and the errors that stop the run (FATAL)."""

    again: list[tuple[_Item, str | None]] = field(default_factory=list)
    refused: list[tuple[_Item, str | None]] = field(default_factory=list)
    fatal: list[str | None] = field(default_factory=list)


class BatchRunner:
    """Submits the Generator's pending items as provider batches and records what comes back.

    Shares the Generator's journal writer, counters, budget check and outcome rules (`_finish`,
    `_finish_failed`, `_skip`), so a batch run and a live run leave the same journal behind. `on_poll` is called
    after each round of polls (the engine's log line of a run without a live display)."""

    def __init__(self, gen: Generator, journal: Journal, limits: BatchLimits | None = None,
                 on_poll: Callable[[], None] | None = None) -> None:
        self.gen, self.journal, self.on_poll = gen, journal, on_poll
        self.api = batch_api(gen._provider)
        self.server = server_of(gen._provider)
        self.max_requests = min(gen.batch_size, MAX_REQUESTS[gen.provider])
        self.limits = limits or BatchLimits()
        self.learned_tokens: float | None = None  # the enqueued-token cap the provider's refusals taught
        self.refusals = 0  # refusals in a row with none of this run's batches running (others fill the queue)
        self.not_before = 0.0  # monotonic time before which nothing is submitted (after such a refusal)
        self.failed_polls = 0  # polls in a row that failed after their retries (an outage of the batch API)
        # tag -> {"batch_id", "keys", "since", "worst", "tokens", "answered", "failed"}; the last two as last polled
        self.running: dict[str, dict] = {}
        self.pulled = False  # is the run's request set an iterator, pulled as batches can go (`run`)?
        self.source: Iterator[_Item] = iter(())  # what is left of it to pull
        self.items: dict[str, _Item] = {}  # the run's requests by key (pulled: those queued or in batches)
        self.unclaimed: set[str] = set()  # adopted from an earlier run's batch, not (yet) asked for by a window
        self.released: set[str] = set()  # let go since the window being read read the journal (`_new`)

    def _new(self, todo: Iterator[_Item], items: dict[str, _Item]) -> Iterator[_Item]:
        """The requests of `todo` not queued or in a batch already (a key a window repeats, one an open batch
        holds: claimed, `_unclaimed`), each added to `items` as it is pulled."""
        for item in todo:
            if item.key in items:
                self.unclaimed.discard(item.key)
            elif item.key not in self.released:  # booked since its window's replay: in the journal
                items[item.key] = item
                yield item

    def _unclaimed(self, booked: list[tuple[_Item, str | None]]) -> list[tuple[_Item, str | None]]:
        """`booked` less the requests adopted from an earlier run's batch that no window asked for (another
        config's, in the same journal): this run collects their answers but sends none of them again (`_let_go`
        leaves their rows pending, for a run that asks for them)."""
        return [(item, error) for item, error in booked if item.key not in self.unclaimed]

    def _let_go(self, keys: Iterable[str]) -> None:
        """Forget booked requests in a pulled run (their outcomes are in the journal); a list's run keeps its set."""
        if self.pulled:
            for key in keys:
                self.items.pop(key, None)
                self.unclaimed.discard(key)
                self.released.add(key)

    def _fill(self, queue: list[_Item]) -> list[_Item]:
        """The queue topped up from the source to one batch's worth of requests."""
        if len(queue) < self.max_requests:
            queue += itertools.islice(self.source, self.max_requests - len(queue))
        return queue

    async def run(self, todo: list[_Item] | Iterator[_Item]) -> None:
        """Submit `todo` and record what comes back. A list is the run's request set; an iterator (`Generator.
        run_windows`) is pulled only as batches can go, so the run holds the requests queued for the next batch and,
        of those submitted, what booking needs: a request's body is dropped once its batch is submitted (the journal
        keeps it, for another round), and a request is let go once booked. Every batch earlier runs left open is then
        this run's, its requests made from their journal rows; those no window asks for are collected, not sent round
        again (`_unclaimed`)."""
        self.pulled = not isinstance(todo, list)
        self.items = items = {} if self.pulled else {item.key: item for item in todo}
        try:
            await self._recover(items)
            if self.pulled:
                queue, self.source = [], self._new(todo, items)
            else:
                in_batches = {k for b in self.running.values() for k in b["keys"]}
                queue = [item for item in todo if item.key not in in_batches]
            while True:
                queue = await self._submit(queue)
                if not (queue or self.running):
                    break
                if self.running:
                    await asyncio.sleep(self.gen.batch_poll_s)
                    queue += await self._collect(items)
                    if self.on_poll is not None:
                        self.on_poll()
                else:  # refused for room with none of ours running: wait before trying again
                    await asyncio.sleep(max(self.gen.batch_poll_s, self.not_before - time.monotonic()))
        except FatalProviderError as exc:
            self.gen._fatal = exc
        except RetryableError as exc:
            self.gen._fatal = FatalProviderError(
                f"the {self.gen.provider} batch API kept failing ({exc}); submitted batches are recorded in the "
                "journal: rerun to collect them")
        finally:
            if self.running:
                gen = self.gen
                server = f" --base-url {gen.base_url}" if gen.base_url else ""
                log.warning("%d batches (%d requests) are still running at %s and are paid for; rerun the same "
                            "command to collect them, or cancel them, keeping what they finished, with "
                            "`textbookgen journal %s --cancel-batches%s`", len(self.running),
                            sum(len(b["keys"]) for b in self.running.values()), gen.provider,
                            gen.journal_path or "JOURNAL", server)

    async def _call(self, fn, *args):
        gen = self.gen
        return await call_api(fn, *args, provider=gen.provider, model=gen.model, secrets=gen._secrets,
                              attempts=gen.max_attempts, wait=gen._wait)

    async def collect_open(self, items: dict[str, _Item]) -> list[dict[str, Any]]:
        """For a live run: adopt the batches earlier runs submitted and record those that have ended; returns
        the ones still running (the requests that expired or were cancelled in them go back to `items`' run)."""
        await self._recover(items)
        await self._collect(items, once=True)
        return list(self.running.values())

    async def _recover(self, items: dict[str, _Item]) -> None:
        """Adopt the batches an earlier run submitted; find those whose id it did not live to record."""
        for row in self.journal.open_batches(self.gen.provider, self.gen.model):
            batch_id = row["batch_id"]
            if batch_id is None:
                batch_id = await self._call(self.api.find, row["tag"], row["created_at"], len(row["keys"]),
                                            self._known())
                if batch_id is None:
                    log.warning("batch %s was being submitted when the last run stopped and is not at %s; its "
                                "%d requests are submitted again", row["tag"], self.gen.provider, len(row["keys"]))
                    self.journal.update_batch(row["tag"], "lost")
                    continue
                self.journal.update_batch(row["tag"], "running", batch_id)
            log.info("collecting batch %s (%d requests) submitted by an earlier run", batch_id, len(row["keys"]))
            if self.pulled:
                self._adopt(row["keys"], items)
            for key in row["keys"]:  # a round they had, as if this run had submitted it
                if key in items:
                    items[key].attempts += 1
            self._track(row["tag"], batch_id, row["keys"], row["created_at"], items)

    def _adopt(self, keys: list[str], items: dict[str, _Item]) -> None:
        """The requests of a batch an earlier run submitted, made from their journal rows for this run to book
        (those the journal answers already are left out); their bodies stay in the journal."""
        from textbookgen.engine import replays  # the engine imports this module

        gen = self.gen
        for key, row in self.journal.rows([k for k in keys if k not in items]).items():
            if not replays(row, gen.retry_failed):
                req = request_from(row)
                items[key] = item = gen._item(key, req)
                item.req = None
                self.unclaimed.add(key)

    def _restore(self, again: list[_Item]) -> list[_Item]:
        """Requests going round again, with the bodies dropped at their submission read back from the journal."""
        dropped = [item for item in again if item.req is None]
        rows = self.journal.rows([item.key for item in dropped])
        for item in dropped:
            item.req = request_from(rows[item.key])
        return again

    def _known(self) -> set[str]:
        """The batch ids this run already accounts for, which a lost submission's batch cannot be."""
        return self.journal.batch_ids() | {b["batch_id"] for b in self.running.values()}

    def _track(self, tag: str, batch_id: str, keys: list[str], since: float, items: dict[str, _Item]) -> None:
        """Follow a submitted batch; its requests' worst case is held against the budgets until it has ended."""
        mine = [items[key] for key in keys if key in items]
        worst = self._worst_of(mine)
        self.running[tag] = {"batch_id": batch_id, "keys": keys, "since": since, "worst": worst,
                             "tokens": sum(self._tokens(item) for item in mine), "answered": 0, "failed": 0}
        self.gen._inflight_cost += worst.usd
        self.gen._inflight_out += worst.output_tokens
        self.gen._in_batches += len(keys)

    def waiting(self) -> dict[str, float]:
        """What the last polls said of the running batches, for the progress display: requests the provider has
        answered (`batch_answered`) and failed (`batch_failed`) in them, not collected yet, so in no count, cost or
        budget; the answered share of the batches' worst case, about the most those answers may cost
        (`batch_answered_worst_usd`); and how long the oldest has run (`batch_oldest_s`, 0 with none running)."""
        batches = self.running.values()
        return {"batch_answered": sum(b["answered"] for b in batches),
                "batch_failed": sum(b["failed"] for b in batches),
                "batch_answered_worst_usd": sum(b["worst"].usd * b["answered"] / len(b["keys"]) for b in batches),
                "batch_oldest_s": time.time() - min(b["since"] for b in batches) if batches else 0.0}

    def _worst_of(self, items: Sequence[_Item]) -> Spend:
        """The most `items` may cost together: the engine's worst case of each (here at the batch price)."""
        from textbookgen.engine import Spend  # the engine imports this module

        worst = [self.gen._worst_case(item) for item in items]
        return Spend(sum(w.usd for w in worst), sum(w.output_tokens for w in worst))

    def _tokens(self, item: _Item) -> float:
        """The prompt tokens a request puts in the provider's queue: the engine's estimate, corrected by the
        ratio of real usage to estimates seen so far."""
        return item.est_in * self.gen._in_ratio

    def _room(self) -> float:
        """The prompt tokens that may still be enqueued under the configured and the learned caps."""
        caps = [c for c in (self.limits.enqueued_tokens, self.learned_tokens) if c is not None]
        return min(caps) - sum(b["tokens"] for b in self.running.values()) if caps else math.inf

    async def _submit(self, queue: list[_Item]) -> list[_Item]:
        """Submit the queue in batches while the budgets and the provider's room allow; returns what is held
        back until running batches end (all is submitted, or skipped for the budget, otherwise). A batch takes
        the requests, in order, whose worst case fits in the budgets beside what is spent and the worst case of
        the batches running (see the module's docstring)."""
        gen = self.gen
        while (queue := self._fill(queue)) and gen._fatal is None:
            if time.monotonic() < self.not_before or (
                    self.running and self.limits.batches is not None and len(self.running) >= self.limits.batches):
                return queue
            lines, chunk, tokens, over = self._next_chunk(queue)
            if not chunk:
                if over is None or self.running:
                    return queue  # no room (at the provider, or in the budgets) until a running batch ends
                try:
                    gen._stop_launching(over)
                except BudgetExhausted:  # the rest stay pending for a rerun with a larger budget
                    for item in itertools.chain(queue, self.source):
                        gen._skip(item)
                        self._let_go([item.key])
                return []
            tag = f"tbg-{secrets.token_hex(8)}"
            keys = [item.key for item in chunk]
            self.journal.add_batch(tag, gen.provider, gen.model, keys, self.server)
            queue = queue[len(chunk):]
            try:
                batch_id = await self._submit_once(lines, tag)
            except ItemError as exc:  # the provider refused the batch as a whole: it would refuse it again
                self.journal.update_batch(tag, "rejected")
                for item in chunk:
                    gen._finish_failed(item, f"batch rejected: {exc}", exc.error_class)
                self._let_go(keys)
                continue
            except QueueFull as exc:  # no room while ours run: it goes again once one of them has ended
                self.journal.update_batch(tag, "deferred")
                self._refused(tokens, str(exc))
                return chunk + queue
            self.journal.update_batch(tag, "running", batch_id)
            for item in chunk:
                item.attempts += 1
            gen._c["sent"] += len(chunk)
            log.info("submitted batch %s: %d requests", batch_id, len(chunk))
            self._track(tag, batch_id, keys, time.time(), {item.key: item for item in chunk})
            if self.pulled:  # submitted: its bodies wait in the journal for another round, not in memory
                for item in chunk:
                    item.req = None
        return queue

    def _next_chunk(self, queue: list[_Item]) -> tuple[list[bytes], list[_Item], float, str | None]:
        """The next batch (its lines, requests and prompt tokens): the queue's first requests, in order, that fit the
        provider's request and size limits, the room under the enqueued-token caps and the budgets; with why the
        budgets took no more (None where something else ended it, or the queue did)."""
        from textbookgen.engine import Spend  # the engine imports this module

        gen, room = self.gen, self._room()
        lines, chunk, size, tokens, worst, over = [], [], 0, 0.0, Spend(0.0, 0), None
        for item in queue[:self.max_requests]:
            line = self.api.line(item.key, item.req)
            if chunk and size + len(line) > MAX_BYTES:
                break
            if (chunk or self.running) and tokens + self._tokens(item) > room:
                break  # one request at least when none is running, or nothing would ever go
            more = gen._worst_case(item)
            more = Spend(worst.usd + more.usd, worst.output_tokens + more.output_tokens)
            if (over := gen._over_budget(more)) is not None:
                break
            lines.append(line)
            chunk.append(item)
            size, tokens, worst = size + len(line) + 1, tokens + self._tokens(item), more
        return lines, chunk, tokens, over

    async def _submit_once(self, lines: list[bytes], tag: str) -> str:
        """Submit a batch, retried like any call; but before a retry, look for it at the provider: it may
        have been created before the answer was lost (a reset, a timeout), and a second copy is paid twice.
        A rate-limit refusal while this run's batches are running is QueueFull (Anthropic's queue limit): no
        retry, the batch waits for room instead."""
        gen, since, sent = self.gen, time.time(), False

        async def submit_or_adopt() -> str:
            nonlocal sent
            if sent and (found := await self.api.find(tag, since, len(lines), self._known())) is not None:
                log.info("batch %s was created before its answer was lost: adopting %s", tag, found)
                return found
            sent = True
            try:
                return await self.api.submit(lines, tag)
            except Exception as exc:  # noqa: BLE001 - classified here only to tell a full queue; re-raised
                err = classify(exc, gen.provider, gen.model, gen._secrets)
                if isinstance(err, RetryableError) and err.rate_limited and self.running:
                    raise QueueFull(str(err)) from None
                raise

        return await self._call(submit_or_adopt)

    def _refused(self, tokens: float, reason: str) -> None:
        """The provider had no room for a batch of `tokens` prompt tokens. With batches of ours running, what
        they hold is the cap: submit more only as they end. With none, others' batches (or this one alone) fill
        the queue: wait, longer each time, and try half the size; give up after `max_attempts` such refusals
        in a row (the requests stay pending)."""
        gen = self.gen
        queued = sum(b["tokens"] for b in self.running.values())
        if queued:
            cap = queued
        else:
            self.refusals += 1
            if self.refusals >= gen.max_attempts:
                raise FatalProviderError(f"{gen.provider} kept refusing batches for lack of room ({reason}) with "
                                         "none of this run's batches running; its queue is full of other work: "
                                         "rerun later (nothing was paid for the refused batches)")
            cap = tokens / 2
            self.not_before = time.monotonic() + gen.batch_poll_s * 2 ** (self.refusals - 1)
        if self.learned_tokens is None:
            log.warning("%s has no room for more batches of %s (%s): holding further submissions until running "
                        "batches end (BatchLimits sets a cap up front)", gen.provider, gen.model, reason)
        self.learned_tokens = cap if self.learned_tokens is None else min(self.learned_tokens, cap)

    async def _collect(self, items: dict[str, _Item], *, once: bool = False) -> list[_Item]:
        """Record the answers of every batch that has ended; returns the requests to submit again. Raises
        FatalProviderError, once all ended batches are recorded, where answers would stop a live run (FATAL).
        A batch that cannot be checked is checked again at the next poll (`_poll_failed`), and the requests of one
        cancelled at the provider fail as transient (a rerun sends them). `once`: a live run's one look at earlier
        runs' batches: a failed check raises, and cancelled requests are left to the run, like expired ones."""
        again, held, fatal = [], [], []
        for tag, batch in list(self.running.items()):
            results = await self._results_if_ended(batch, once)
            if results is None:
                continue
            booked = self._book(batch, results, items, once)
            booked.again, booked.refused = self._unclaimed(booked.again), self._unclaimed(booked.refused)
            again += booked.again
            fatal += booked.fatal
            await self._close(tag, batch)
            held += self._hold_refused(batch, booked.refused)
            going = {item.key for item, _ in booked.again + booked.refused}
            self._let_go(key for key in batch["keys"] if key not in going)
        if fatal:
            raise FatalProviderError(f"{fatal[0]} ({len(fatal)} requests in batches got this answer; they stay "
                                     "pending)")
        resubmit = self._round_again(again)
        going = {item.key for item in resubmit}
        self._let_go(item.key for item, _ in again if item.key not in going)  # gave up after batch_max_rounds
        return self._restore(held + resubmit)

    async def _results_if_ended(self, batch: dict, once: bool) -> list[BatchResult] | None:
        """A batch's results once it has ended; None while it runs (its counts noted for the display) or when it
        cannot be checked now (`once`: raises instead)."""
        try:
            poll = await self._call(self.api.poll, batch["batch_id"])
            if not poll.ended:
                batch["answered"], batch["failed"] = poll.answered, poll.failed
                self.failed_polls = 0
                return None
            results = await self._call(self.api.results, batch["batch_id"], batch["keys"])
        except RetryableError as exc:
            if once:
                raise
            self._poll_failed(batch["batch_id"], exc)
            return None
        except BatchGone:
            raise FatalProviderError(
                f"batch {batch['batch_id']} ({len(batch['keys'])} requests), recorded in the journal as running, is "
                f"not at {self.server} for this key: if it was submitted with another API key (another project or "
                "workspace), rerun with that one to collect it; if it is gone (deleted), `textbookgen journal "
                f"{self.gen.journal_path or 'JOURNAL'} --cancel-batches` records it as lost, leaving its requests "
                "pending for a rerun to send again") from None
        self.failed_polls = 0
        return results

    def _book(self, batch: dict, results: list[BatchResult], items: dict[str, _Item], once: bool) -> _Booked:
        """Record an ended batch's answers and final failures through the engine's outcome rules; returns the
        requests it leaves to a later round, those refused for room, and the errors that stop the run."""
        gen, booked = self.gen, _Booked()
        latency = time.time() - batch["since"]
        seen, orphans, cancelled = set(), [], 0
        for result in results:
            item = items.get(result.key)
            if item is None:
                orphans.append(result)
                continue
            if result.key in seen or result.key in gen._results:
                continue  # a repeated line
            seen.add(result.key)
            if result.completion is not None:
                gen._learn_prompt_size(item, result.completion.input_tokens)
                gen._finish(item, result.completion, latency)
            elif result.error_class == CAPACITY:
                booked.refused.append((item, result.error))
            elif result.error_class == FATAL:  # stays pending: sent again once the cause is fixed
                booked.fatal.append(result.error)
            elif result.error_class == CANCELLED and not once:
                cancelled += 1
                gen._finish_failed(item, f"{result.error}: batch {batch['batch_id']} was cancelled at the "
                                   "provider before this request ran; a rerun sends it again", "transient")
            elif result.error_class not in ("transient", CANCELLED):
                gen._finish_failed(item, result.error, result.error_class)
            else:
                booked.again.append((item, result.error))
        booked.again += [(items[k], "missing from the batch's results") for k in batch["keys"]
                         if k in items and k not in seen]
        self._record_orphans(orphans, latency)
        if cancelled:
            log.warning("batch %s was cancelled at %s: its %d requests that had not run are not sent again by this "
                        "run (a rerun sends them)", batch["batch_id"], gen.provider, cancelled)
        return booked

    async def _close(self, tag: str, batch: dict) -> None:
        """Mark an ended batch done once its answers are in the journal, delete its files at the provider, and
        free the room its worst case held in the budgets."""
        gen = self.gen
        gen._writer.flush()  # answers are in the journal before the batch is marked done
        self.journal.update_batch(tag, "done")
        await clean_up(self.api, self._call, batch["batch_id"])
        del self.running[tag]  # its answers are booked: its worst case makes room
        gen._inflight_cost -= batch["worst"].usd
        gen._inflight_out -= batch["worst"].output_tokens
        gen._in_batches -= len(batch["keys"])
        if not self.running:  # none in flight: no rounding left over
            gen._inflight_cost = gen._inflight_out = 0.0

    def _hold_refused(self, batch: dict, refused: list[tuple[_Item, str | None]]) -> list[_Item]:
        """The requests of a batch refused for room, held until running batches end (it never ran: not a round);
        a batch that ran ends a streak of such refusals."""
        if not refused:
            self.refusals = 0
            return []
        for item, _ in refused:
            item.attempts -= 1
        log.info("batch %s was refused for room; its %d requests wait for running batches to end",
                 batch["batch_id"], len(refused))
        self._refused(batch["tokens"], refused[0][1])
        return [item for item, _ in refused]

    def _round_again(self, again: list[tuple[_Item, str | None]]) -> list[_Item]:
        """The requests that may go in another batch round; those that had `batch_max_rounds` fail as transient."""
        gen, resubmit = self.gen, []
        for item, error in again:
            if item.attempts >= gen.batch_max_rounds:
                gen._finish_failed(item, f"gave up after {item.attempts} batch rounds: {error}", "transient")
            else:
                gen._c["retries"] += 1
                resubmit.append(item)
        if again:
            log.info("%d requests come back for another batch round", len(resubmit))
        return resubmit

    def _poll_failed(self, batch_id: str, exc: RetryableError) -> None:
        """A poll failed after its retries: the batch runs on at the provider, so wait for the next poll rather
        than end a run that may wait hours for it; raise after `max_attempts` failed polls in a row."""
        self.failed_polls += 1
        if self.failed_polls >= self.gen.max_attempts:
            raise exc
        log.warning("cannot check batch %s (%s); it runs on at %s: trying again at the next poll (%d failed in a row, "
                    "giving up at %d)", batch_id, exc, self.gen.provider, self.failed_polls, self.gen.max_attempts)

    def _record_orphans(self, results: list[BatchResult], latency: float) -> None:
        """Paid answers to requests an earlier run submitted but this one does not ask for (the recipe
        changed, say): kept in the journal where their row is still open, so a run that asks again replays them."""
        answered = [r for r in results if r.completion is not None]
        if not answered:
            return
        rows = self.journal.rows([r.key for r in answered])
        kept = 0
        for r in answered:
            if r.key in rows and rows[r.key]["status"] not in ("ok", "truncated"):
                self.gen._writer.put(self.gen._result_row(r.key, r.completion, latency, rows[r.key]["attempts"] + 1))
                kept += 1
        self.gen._c["orphans"] += kept  # paid, in no count of this run's: a budget over several runs reads the journals
        if kept:
            log.info("kept %d answers to requests of an earlier run that this run does not ask for", kept)


def cancel_batches(path: str | Path, *, base_url: str | None = None, api_key: str | None = None,
                   poll_s: float = 5.0, timeout_s: float = 120.0) -> dict[str, int]:
    """Cancel a journal's open batches at their providers and keep what they had finished.

    Each batch is cancelled through the provider's client at `base_url`, else at the server the journal recorded it
    was submitted to (keys: `api_key`, else the provider's environment variable), waited for until it has ended (OpenAI: up to 10 minutes cancelling), and its answers go into
    the journal as a run records them (priced at the batch rate of `textbookgen.pricing`); requests refused
    for good are recorded as failed. The requests that never ran stay pending, so rerunning the same command
    sends them again: a cancel stops the spending (a wrong setting, a full queue, a switch to live calls) and
    says nothing against the requests, which a rerun that still asks for them should get. Holds the journal's
    run lock: a run using it must be stopped first. Returns counts: cancelled batches, lost ones (never created)
    and gone ones (the provider has none by the recorded id for this key: recorded as lost), answered, failed and
    pending requests."""
    if not Path(path).is_file():
        raise ValueError(f"no journal at {path}")
    try:
        return asyncio.run(_cancel_all(Path(path), base_url, api_key, poll_s, timeout_s))
    except RetryableError as exc:
        raise FatalProviderError(f"the batch API kept failing ({exc}); the batches not cancelled yet stay open in "
                                 f"{path}: run --cancel-batches again") from None


async def _cancel_all(path: Path, base_url: str | None, api_key: str | None, poll_s: float,
                      timeout_s: float) -> dict[str, int]:
    from textbookgen.engine import Generator  # the engine imports this module
    from textbookgen.journal import Journal

    counts = dict.fromkeys(("cancelled", "lost", "gone", "answered", "failed", "pending"), 0)
    with Journal(path) as journal:
        journal.lock_for_run()
        for provider_name, model, recorded in journal.open_batch_groups():
            url = base_url or recorded  # None for a batch an older textbookgen submitted: the client's default
            gen = Generator(provider_name, model, base_url=url, api_key=api_key, journal=path, batch=True,
                            progress=False, timeout_s=timeout_s)  # its price and outcome rules, for the journal rows
            provider = make_provider(provider_name, model, api_key=api_key, base_url=url, timeout=timeout_s)
            gen._secrets = provider.secrets
            api = batch_api(provider)

            async def call(fn, *args, gen=gen):
                return await call_api(fn, *args, provider=gen.provider, model=gen.model, secrets=gen._secrets,
                                      attempts=gen.max_attempts, wait=wait_exponential_jitter(initial=1, max=30))

            try:
                for row in journal.open_batches(provider_name, model):
                    if row["base_url"] == recorded:
                            await _cancel_one(api, call, journal, gen, row, poll_s, counts)
            finally:
                await provider.aclose()
    return counts


async def _cancel_one(api, call, journal: Journal, gen: Generator, row: dict, poll_s: float,
                      counts: dict[str, int]) -> None:
    """Cancel one batch (found by its tag first if its id was never recorded), wait for its end and record
    its answers; the batch's row is closed ("cancelled") only once they are in the journal."""
    tag, keys, batch_id = row["tag"], row["keys"], row["batch_id"]
    if batch_id is None:
        batch_id = await call(api.find, tag, row["created_at"], len(keys), journal.batch_ids())
        if batch_id is None:  # never created: its requests are pending, as after a lost submission in a run
            journal.update_batch(tag, "lost")
            counts["lost"] += 1
            counts["pending"] += len(keys)
            return
        journal.update_batch(tag, "running", batch_id)
    try:
        running = not await call(api.ended, batch_id)
    except BatchGone:  # the user asked to let it go: its requests are pending, as for a batch never created
        log.warning("batch %s is not at %s for this key: recorded as lost, its %d requests pending. If it was "
                    "submitted with another key (project, workspace), it runs on there, and is paid for: cancel "
                    "it there before a rerun sends them again", batch_id, gen.provider, len(keys))
        journal.update_batch(tag, "lost")
        counts["gone"] += 1
        counts["pending"] += sum(1 for r in journal.rows(keys).values() if r["status"] not in DONE_STATUSES)
        return
    if running:
        try:
            await call(api.cancel, batch_id)
        except (ItemError, RetryableError) as exc:  # refused because it ended meanwhile, or really refused
            if not await call(api.ended, batch_id):
                raise FatalProviderError(f"cannot cancel batch {batch_id} at {gen.provider}: {exc}; it stays "
                                         "recorded as running (a rerun collects it)") from None
        log.info("cancelling batch %s (%d requests)", batch_id, len(keys))
    while not await call(api.ended, batch_id):
        await asyncio.sleep(poll_s)
    latency, recorded = time.time() - row["created_at"], []
    current = journal.rows(keys)
    for result in await call(api.results, batch_id, keys):
        was = current.pop(result.key, None)
        if was is None or was["status"] in DONE_STATUSES:
            continue  # not ours, a repeated line, or answered already
        if result.completion is not None:
            recorded.append(gen._result_row(result.key, result.completion, latency, was["attempts"] + 1))
            counts["answered"] += 1
        elif result.error_class in PERMANENT_ERRORS:
            recorded.append(gen._failed_row(result.key, redact(result.error or "", gen._secrets), result.error_class,
                                            was["attempts"] + 1))
            counts["failed"] += 1
        else:  # canceled, expired, transient or refused for room: pending
            current[result.key] = was
    journal.write_results(recorded)
    journal.update_batch(tag, "cancelled")
    await clean_up(api, call, batch_id)
    counts["cancelled"] += 1
    counts["pending"] += sum(1 for r in current.values() if r["status"] not in DONE_STATUSES)
