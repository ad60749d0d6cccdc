"""Error classes of the generation engine: what stops a run, what is retried, what fails one item.

The split matters for money: retrying an invalid key or an unknown model (Curator #202/#213) burns
time and hides the real problem, while giving up on a 429 wastes work that would succeed.
"""

from __future__ import annotations

import re


class FatalProviderError(RuntimeError):
    """The whole run cannot succeed (bad key, unknown model, missing key, quota or billing exhausted)."""


class RetryableError(Exception):
    """A transient failure (429, 5xx, timeout, dropped connection, garbled body): try again later.

    `retry_after` is the server's own hint in seconds (Retry-After / retry-after-ms), if it sent one.
    `reached`: False when no answer came at all (connection refused or reset, timeout), so a wrong
    `base_url` can be told from a busy server.
    """

    def __init__(self, message: str, *, rate_limited: bool = False, retry_after: float | None = None,
                 headers=None, reached: bool = True) -> None:
        super().__init__(message)
        self.rate_limited = rate_limited
        self.retry_after = retry_after
        self.headers = headers
        self.reached = reached


class GarbledAnswer(RetryableError):
    """A 2xx answer whose body could not be read (cut or malformed): the provider generated and billed it."""


class ItemError(Exception):
    """This one request cannot succeed as sent (400, content filter, refusal): record it and go on."""

    def __init__(self, message: str, *, error_class: str) -> None:
        super().__init__(message)
        self.error_class = error_class


class BudgetExhausted(Exception):
    """Launching this request would exceed max_cost_usd or max_output_tokens."""


_KEYLIKE = re.compile(r"\b(sk-[A-Za-z0-9_\-*.]{3,}|sk-ant-[A-Za-z0-9_\-*.]{3,})")


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Remove API keys (the exact secrets given, and anything shaped like `sk-...`) from a message."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return _KEYLIKE.sub("sk-***", text)
