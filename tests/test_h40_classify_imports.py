"""An SDK error is classified without importing the other SDK: `classify` imported both, and anthropic's import
(~1 s) held a process's first 429 that long before its pause reached the processes sharing its rate budget."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
import httpx2 as httpx  # the HTTP client openai 3 is built on
import openai
from textbookgen.providers import classify
from textbookgen.errors import RetryableError
request = httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
response = httpx.Response(429, request=request, json={"error": {"message": "slow down", "code": "rate_limit_exceeded"}})
error = openai.RateLimitError("slow down", response=response, body=None)
mapped = classify(error, "openai", "gpt-4o-mini")
assert isinstance(mapped, RetryableError) and mapped.rate_limited, mapped
print("anthropic" in sys.modules)
"""


def test_an_openai_429_is_classified_without_importing_anthropic():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
