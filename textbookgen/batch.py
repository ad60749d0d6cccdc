"""Provider batch APIs: the same requests at half the price, answered within hours instead of seconds.

OpenAI's Batch API and Anthropic's Message Batches take thousands of requests per submission and bill
half the standard price (`pricing.BATCH_DISCOUNT`). `Generator(batch=True)` sends the pending requests
that way: in chunks of `batch_size`, each request's `custom_id` its journal key, polled every
`batch_poll_s`; answers go through the same outcome rules and journal as live calls. Requests that come
back expired, cancelled or with a transient error are resubmitted in a later batch, up to
`batch_max_rounds` times.

Nothing is paid twice. A batch's row (tag, keys) is committed before it is submitted and its batch id right
after, so a rerun polls the batches the journal names instead of submitting their requests again. A crash
between the submission and that second commit is covered by finding the batch at the provider: OpenAI by
the tag stored in the batch's metadata; Anthropic, which keeps no metadata, by creation time and request
count (only an unambiguous match is taken). Ctrl-C leaves submitted batches running (they are paid for);
rerunning collects them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt

from textbookgen.errors import BudgetExhausted, FatalProviderError, ItemError, RetryableError
from textbookgen.providers import AnthropicProvider, Completion, OpenAIProvider, classify, item_error_class

if TYPE_CHECKING:
    from textbookgen.engine import Generator, _Item
    from textbookgen.journal import Journal

log = logging.getLogger("textbookgen.batch")

BATCH_PROVIDERS = ("openai", "anthropic")
# the providers' per-batch limits, with headroom: OpenAI 50,000 requests / 200 MB, Anthropic 100,000 / 256 MB
MAX_REQUESTS = {"openai": 50_000, "anthropic": 100_000}
MAX_BYTES = 150_000_000
FIND_SLACK_S = 120.0  # clock skew allowed when matching a batch's creation time to our record


@dataclass(slots=True)
class BatchResult:
    """One request's outcome inside a finished batch: a completion, or an error and its class
    ("bad_request" / "content_filter": permanent; "transient": resubmit)."""

    key: str
    completion: Completion | None = None
    error: str | None = None
    error_class: str | None = None


def error_class_of(status: int, text: str) -> str:
    """The class of a request that failed inside a batch, by the HTTP status it would have had."""
    if status in (408, 409, 429) or status >= 500:
        return "transient"
    return item_error_class(text)


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

    async def find(self, tag: str, since: float, n: int) -> str | None:
        async for batch in self.client.batches.list(limit=100):  # newest first
            if batch.created_at < since - FIND_SLACK_S:
                return None
            if (batch.metadata or {}).get("textbookgen_tag") == tag:
                return batch.id
        return None

    async def ended(self, batch_id: str) -> bool:
        batch = await self.client.batches.retrieve(batch_id)
        return batch.status in ("completed", "failed", "expired", "cancelled")

    async def results(self, batch_id: str, keys: Sequence[str]) -> list[BatchResult]:
        batch = await self.client.batches.retrieve(batch_id)
        if batch.status == "failed":  # the input was rejected as a whole: sending it again fails again
            errors = "; ".join(f"line {e.line}: {e.message}" for e in (batch.errors.data or [])) if batch.errors \
                else "no reason given"
            return [BatchResult(k, error=f"openai batch {batch_id} failed validation: {errors}",
                                error_class="bad_request") for k in keys]
        results = []
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                content = await self.client.files.content(file_id)
                results += [self._result(json.loads(line)) for line in content.text.splitlines() if line.strip()]
        return results

    def _result(self, row: dict) -> BatchResult:
        key, response, error = row["custom_id"], row.get("response"), row.get("error")
        if response and response.get("status_code") == 200:
            return BatchResult(key, completion=self.provider.parse(response["body"]))
        if response:
            status = int(response.get("status_code") or 500)
            body = (response.get("body") or {}).get("error") or {}
            text = f"openai batch HTTP {status} ({body.get('code') or body.get('type') or 'error'}): " \
                   f"{body.get('message') or ''}"
            return BatchResult(key, error=text, error_class=error_class_of(status, text))
        text = f"openai batch: {(error or {}).get('code', 'no response')}: {(error or {}).get('message', '')}"
        return BatchResult(key, error=text, error_class="transient")  # expired or cancelled before it ran


class AnthropicBatches:
    """Anthropic's Message Batches: requests inline in the create call, results as JSONL."""

    def __init__(self, provider: AnthropicProvider) -> None:
        self.provider, self.client = provider, provider.client

    def line(self, key: str, req) -> bytes:
        return json.dumps({"custom_id": key, "params": self.provider.body(req)}, ensure_ascii=False).encode()

    async def submit(self, lines: Sequence[bytes], tag: str) -> str:
        batch = await self.client.messages.batches.create(requests=[json.loads(line) for line in lines])
        return batch.id

    async def find(self, tag: str, since: float, n: int) -> str | None:
        matches = []
        async for batch in self.client.messages.batches.list(limit=100):  # newest first
            if batch.created_at.timestamp() < since - FIND_SLACK_S:
                break
            counts = batch.request_counts
            if counts.processing + counts.succeeded + counts.errored + counts.canceled + counts.expired == n:
                matches.append(batch.id)
        return matches[0] if len(matches) == 1 else None

    async def ended(self, batch_id: str) -> bool:
        batch = await self.client.messages.batches.retrieve(batch_id)
        return batch.processing_status == "ended"

    async def results(self, batch_id: str, keys: Sequence[str]) -> list[BatchResult]:
        results = []
        async for row in await self.client.messages.batches.results(batch_id):
            result = row.result
            if result.type == "succeeded":
                results.append(BatchResult(row.custom_id, completion=self.provider.parse(result.message.model_dump())))
            elif result.type == "errored":
                err = result.error.error
                text = f"anthropic batch ({err.type}): {err.message}"
                cls = item_error_class(text) if err.type == "invalid_request_error" else "transient"
                results.append(BatchResult(row.custom_id, error=text, error_class=cls))
            else:  # expired or canceled before it ran
                results.append(BatchResult(row.custom_id, error=f"anthropic batch: request {result.type}",
                                           error_class="transient"))
        return results


def batch_api(provider: OpenAIProvider | AnthropicProvider) -> OpenAIBatches | AnthropicBatches:
    """The batch API of a provider (the Generator admits only BATCH_PROVIDERS in batch mode)."""
    return AnthropicBatches(provider) if isinstance(provider, AnthropicProvider) else OpenAIBatches(provider)


class BatchRunner:
    """Submits the Generator's pending items as provider batches and records what comes back.

    Shares the Generator's journal writer, counters, budget check and outcome rules (`_finish`,
    `_finish_failed`, `_skip`), so a batch run and a live run leave the same journal behind."""

    def __init__(self, gen: Generator, journal: Journal) -> None:
        self.gen, self.journal = gen, journal
        self.api = batch_api(gen._provider)
        self.max_requests = min(gen.batch_size, MAX_REQUESTS[gen.provider])
        self.running: dict[str, dict] = {}  # tag -> {"batch_id", "keys", "since", "cost", "out"}

    async def run(self, todo: list[_Item]) -> None:
        items = {item.key: item for item in todo}
        try:
            await self._recover(items)
            in_batches = {k for b in self.running.values() for k in b["keys"]}
            queue = [item for item in todo if item.key not in in_batches]
            while queue or self.running:
                queue = await self._submit(queue)
                if self.running:
                    await asyncio.sleep(self.gen.batch_poll_s)
                    queue += await self._collect(items)
        except FatalProviderError as exc:
            self.gen._fatal = exc
        except RetryableError as exc:
            self.gen._fatal = FatalProviderError(
                f"the {self.gen.provider} batch API kept failing ({exc}); submitted batches are recorded in the "
                "journal: rerun to collect them")
        finally:
            if self.running:
                log.warning("%d batches (%d requests) are still running at %s and are paid for; rerun the same "
                            "command to collect them", len(self.running),
                            sum(len(b["keys"]) for b in self.running.values()), self.gen.provider)

    async def _call(self, fn, *args):
        """One batch-API call, retried with backoff on transient errors like a live request (a wait of
        hours should not die of one network blip); other errors are classified as for live calls."""
        gen = self.gen
        async for attempt in AsyncRetrying(stop=stop_after_attempt(gen.max_attempts), wait=gen._wait,
                                           retry=retry_if_exception_type(RetryableError), reraise=True):
            with attempt:
                try:
                    return await fn(*args)
                except (FatalProviderError, ItemError, RetryableError):
                    raise
                except Exception as exc:  # noqa: BLE001 - SDK errors are classified; a bug surfaces as itself
                    raise classify(exc, gen.provider, gen.model, gen._secrets) from None

    async def _recover(self, items: dict[str, _Item]) -> None:
        """Adopt the batches an earlier run submitted; find those whose id it did not live to record."""
        for row in self.journal.open_batches(self.gen.provider, self.gen.model):
            batch_id = row["batch_id"]
            if batch_id is None:
                batch_id = await self._call(self.api.find, row["tag"], row["created_at"], len(row["keys"]))
                if batch_id is None:
                    log.warning("batch %s was being submitted when the last run stopped and is not at %s; its "
                                "%d requests are submitted again", row["tag"], self.gen.provider, len(row["keys"]))
                    self.journal.update_batch(row["tag"], "lost")
                    continue
                self.journal.update_batch(row["tag"], "running", batch_id)
            log.info("collecting batch %s (%d requests) submitted by an earlier run", batch_id, len(row["keys"]))
            self._track(row["tag"], batch_id, row["keys"], row["created_at"], items)

    def _track(self, tag: str, batch_id: str, keys: list[str], since: float, items: dict[str, _Item]) -> None:
        cost = out = 0.0
        for key in keys:
            if key in items:
                item_cost, item_out = self._expected(items[key])
                cost, out = cost + item_cost, out + item_out
        self.running[tag] = {"batch_id": batch_id, "keys": keys, "since": since, "cost": cost, "out": out}
        self.gen._inflight_cost += cost
        self.gen._inflight_out += out
        self.gen._in_batches += len(keys)

    def _expected(self, item: _Item) -> tuple[float, float]:
        gen = self.gen
        out = gen._avg_out if gen._avg_out is not None else item.req.max_tokens
        return item.est_in * gen._in_ratio * gen.price_in + out * gen.price_out, out

    async def _submit(self, queue: list[_Item]) -> list[_Item]:
        """Submit the queue in batches while the budget allows; returns what is left (nothing, normally)."""
        gen = self.gen
        while queue and gen._fatal is None:
            lines, chunk, size, cost, out = [], [], 0, 0.0, 0.0
            for item in queue[:self.max_requests]:
                line = self.api.line(item.key, item.req)
                if chunk and size + len(line) > MAX_BYTES:
                    break
                item_cost, item_out = self._expected(item)
                try:
                    gen._check_budget(cost + item_cost, out + item_out)
                except BudgetExhausted:
                    break
                lines.append(line)
                chunk.append(item)
                size, cost, out = size + len(line) + 1, cost + item_cost, out + item_out
            if not chunk:  # the budget is spent: the rest stay pending for a rerun with a larger one
                for item in queue:
                    gen._skip(item)
                return []
            tag = f"tbg-{secrets.token_hex(8)}"
            keys = [item.key for item in chunk]
            self.journal.add_batch(tag, gen.provider, gen.model, keys)
            queue = queue[len(chunk):]
            try:
                batch_id = await self._submit_once(lines, tag)
            except ItemError as exc:  # the provider refused the batch as a whole: it would refuse it again
                self.journal.update_batch(tag, "rejected")
                for item in chunk:
                    gen._finish_failed(item, f"batch rejected: {exc}", exc.error_class)
                continue
            self.journal.update_batch(tag, "running", batch_id)
            for item in chunk:
                item.attempts += 1
            gen._c["sent"] += len(chunk)
            log.info("submitted batch %s: %d requests", batch_id, len(chunk))
            self._track(tag, batch_id, keys, time.time(), {item.key: item for item in chunk})
        return queue

    async def _submit_once(self, lines: list[bytes], tag: str) -> str:
        """Submit a batch, retried like any call; but before a retry, look for it at the provider: it may
        have been created before the answer was lost (a reset, a timeout), and a second copy is paid twice."""
        since, sent = time.time(), False

        async def submit_or_adopt() -> str:
            nonlocal sent
            if sent and (found := await self.api.find(tag, since, len(lines))) is not None:
                log.info("batch %s was created before its answer was lost: adopting %s", tag, found)
                return found
            sent = True
            return await self.api.submit(lines, tag)

        return await self._call(submit_or_adopt)

    async def _collect(self, items: dict[str, _Item]) -> list[_Item]:
        """Record the answers of every batch that has ended; returns the requests to submit again."""
        gen, again = self.gen, []
        for tag, batch in list(self.running.items()):
            if not await self._call(self.api.ended, batch["batch_id"]):
                continue
            latency = time.time() - batch["since"]
            seen, orphans = set(), []
            for result in await self._call(self.api.results, batch["batch_id"], batch["keys"]):
                item = items.get(result.key)
                if item is None:
                    orphans.append(result)
                    continue
                if result.key in seen or result.key in gen._results:
                    continue  # a repeated line
                seen.add(result.key)
                if result.completion is not None:
                    gen._finish(item, result.completion, latency)
                elif result.error_class != "transient":
                    gen._finish_failed(item, result.error, result.error_class)
                else:
                    again.append((item, result.error))
            again += [(items[k], "missing from the batch's results") for k in batch["keys"]
                      if k in items and k not in seen]
            self._record_orphans(orphans, latency)
            gen._writer.flush()  # answers are in the journal before the batch is marked done
            self.journal.update_batch(tag, "done")
            del self.running[tag]
            gen._inflight_cost -= batch["cost"]
            gen._inflight_out -= batch["out"]
            gen._in_batches -= len(batch["keys"])
        resubmit = []
        for item, error in again:
            if item.attempts >= gen.batch_max_rounds:
                gen._finish_failed(item, f"gave up after {item.attempts} batch rounds: {error}", "transient")
            else:
                gen._c["retries"] += 1
                resubmit.append(item)
        if again:
            log.info("%d requests come back for another batch round", len(resubmit))
        return resubmit

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
        if kept:
            log.info("kept %d answers to requests of an earlier run that this run does not ask for", kept)
