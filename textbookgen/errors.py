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
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{8,}")
# a key as a server echoes it, part of it starred out: OpenAI's "sk-abcde*****wxyz", DeepSeek's "****wxyz"
_MASKED = re.compile(r"[^\s'\"*]*\*{4,}[^\s'\"*.,;:)\]}]*")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[^\s'\",;]+")
# a credential in a URL's query string (?api_key=..., &token=...): the SDKs log and report the URLs they call
_QUERY_SECRET = re.compile(r"(?i)([?&][\w.\-]*(?:key|token|secret|password|passwd|auth|sig|signature|code)"
                           r"[\w.\-]*=)[^&\s#'\"]+")


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Remove API keys from a message: the exact secrets given and any part of one a server echoes (its first 8
    characters onward, its last 4 after stars or dots), anything shaped like a key (`sk-...`, `hf_...`, a starred-out
    key, a Bearer token) and credentials in a URL's query string. A 401 from OpenAI shows the first 8 and last 4
    characters of the key it refused: those must not reach a journal row, a log line or an error either."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
            if len(secret) >= 12 and "://" not in secret:
                text = re.sub(re.escape(secret[:8]) + r"\S*?(?=[.,;:)\]}'\"]*(?:\s|$))", "***", text)
                text = re.sub(r"\S*(?:\*|\.\.\.|\u2026)" + re.escape(secret[-4:]), "***", text)
    text = _QUERY_SECRET.sub(r"\1***", text)
    text = _BEARER.sub(r"\1***", text)
    text = _MASKED.sub("***", text)
    text = _HF_TOKEN.sub("hf_***", text)
    return _KEYLIKE.sub("sk-***", text)
