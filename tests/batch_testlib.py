"""Shared helpers of the batch tests: emulators with the providers' queue limits, and a clock to move.

`token_limit_errors` (textbookgen.testing.batches) is OpenAI's enqueued-token limit; `TokenLimitedEmulator`
wires it into batch creation, as an `EmulatorConfig` option would.
"""

from __future__ import annotations

import time
import types

from textbookgen.testing import emulator as emulator_module
from textbookgen.testing.batches import token_limit_errors
from textbookgen.testing.emulator import ANTHROPIC, OPENAI, Emulator


class TokenLimitedEmulator(Emulator):
    """OpenAI's per-model enqueued-token limit: a batch that would take the prompt tokens of the model's
    unfinished batches past `token_limit` fails validation as a whole with `token_limit_exceeded`."""

    def __init__(self, config, token_limit: int) -> None:
        super().__init__(config)
        self.token_limit, self.refused, self.most_enqueued, self.most_running = token_limit, 0, 0, 0

    def _new_job(self, provider, prefix, requests, **kw):
        if provider == OPENAI and requests:
            now, jobs = emulator_module.time.time(), self._jobs[OPENAI].values()
            running = [job for job in jobs if job.enqueued(now)]
            errors = token_limit_errors(jobs, requests, self._count_input, self.token_limit, now)
            if errors:
                self.refused += 1
                requests, kw = [], {**kw, "errors": errors}
            else:
                enqueued = sum(self._count_input(body) for job in running for _, body in job.requests)
                enqueued += sum(self._count_input(body) for _, body in requests)
                self.most_enqueued = max(self.most_enqueued, enqueued)
                self.most_running = max(self.most_running, len(running) + 1)
        return super()._new_job(provider, prefix, requests, **kw)


class QueueLimitedEmulator(Emulator):
    """Anthropic's limit on requests in the processing queue: a create that would pass `queue_limit`
    unfinished requests is a 429 rate_limit_error (the batch is not created)."""

    def __init__(self, config, queue_limit: int) -> None:
        super().__init__(config)
        self.queue_limit, self.refused = queue_limit, 0

    async def _anthropic_batch_create(self, request):
        body = await request.json()
        now = emulator_module.time.time()
        queued = sum(len(job.requests) for job in self._jobs[ANTHROPIC].values() if job.ended is None and now < job.due)
        if queued + len(body.get("requests") or []) > self.queue_limit:
            self.refused += 1
            raise self._error(ANTHROPIC, "429", headers={"retry-after": "0"},
                              message=f"Number of batch requests in the processing queue would exceed your "
                                      f"limit of {self.queue_limit:,}.")
        return await super()._anthropic_batch_create(request)


def shifted_clock(monkeypatch) -> list[float]:
    """Make the emulator's wall clock run `shift[0]` seconds ahead (batch lifecycles read it): returns
    `shift`, to set. Its monotonic clock (rate limits) stays real."""
    shift = [0.0]
    clock = types.SimpleNamespace(time=lambda: time.time() + shift[0], monotonic=time.monotonic, sleep=time.sleep)
    monkeypatch.setattr(emulator_module, "time", clock)
    return shift
