"""Providers: one request in, one `Completion` out, through the official async clients.

The SDK clients run with `max_retries=0`: the engine owns retries (tenacity), so a 429 is seen once
by the admission controller instead of being retried N x M times behind its back. Every SDK error
is mapped here to one of three classes (errors.py): fatal for the run, retryable, or failed item.
Responses are taken raw (`client.post(..., cast_to=Response)`, the SDKs' documented raw-request path)
so the rate-limit headers of every real answer reach the admission controller. Several base URLs (replicas of
one model) make a `ReplicaProvider`, which spreads the requests over one OpenAIProvider per URL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from textbookgen.errors import FatalProviderError, GarbledAnswer, ItemError, RetryableError, redact
from textbookgen.ratelimit import parse_retry_after

try:  # the HTTP library of the installed SDKs (httpx2 for openai>=3, httpx before)
    from httpx2 import ConnectError as _ConnectError
    from httpx2 import Response as _Response
except ImportError:  # pragma: no cover
    from httpx import ConnectError as _ConnectError
    from httpx import Response as _Response

if TYPE_CHECKING:
    from textbookgen.engine import ChatRequest

log = logging.getLogger(__name__)

PROVIDERS = ("openai", "anthropic", "openai-compatible")
ENV_KEYS = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY", "openai-compatible": "OPENAI_API_KEY"}

# normalised finish reasons: "stop", "length", "content_filter", "refusal", "tool_calls", or the raw value
_ANTHROPIC_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                     "refusal": "refusal", "tool_use": "tool_calls", "pause_turn": "stop"}
# a 429 is a rate limit unless it says the money ran out (OpenAI: code insufficient_quota). OpenAI's
# ordinary rate-limit text links the billing page ("...adding a payment method...account/billing"), so a
# rate-limit code wins over the words, and "billing" alone is not a quota word.
_QUOTA_WORDS = ("insufficient_quota", "exceeded your current quota", "check your plan and billing",
                "credit balance", "spend limit", "payment required")
_RATE_LIMIT_CODES = ("rate_limit_exceeded", "rate_limit_error")
_FILTER_WORDS = ("content_filter", "content_policy", "content management", "flagged", "safety system",
                 "content filtering")  # Anthropic: "Output blocked by content filtering policy"
_MODEL_WORDS = ("model_not_found", "does not exist", "unknown model", "invalid model", "no such model",
                "not_found_error")
# OpenAI's codes for a request parameter the model does not take (a value, or the parameter at all)
_UNSUPPORTED_CODES = ("unsupported_value", "unsupported_parameter")
# Anthropic's words for two parameters a model takes only one of ("`temperature` and `top_p` cannot both...")
_EXCLUSIVE_WORDS = "cannot both be specified"
# where each client expects its base_url to end, for a 404 that names no model (a path the server lacks)
_BASE_URL_HINT = {"anthropic": "the Anthropic client adds /v1 itself, so base_url ends before it"}
_OPENAI_BASE_URL_HINT = "OpenAI-compatible servers usually serve under /v1"


@dataclass(slots=True)
class Completion:
    """What one successful HTTP exchange returned."""

    text: str | None
    finish_reason: str | None
    input_tokens: int
    output_tokens: int
    headers: object
    response_id: str | None = None
    refusal: str | None = None
    cache_read_tokens: int = 0  # of input_tokens, read from the provider's prompt cache (billed at a discount)
    cache_write_tokens: int = 0  # of input_tokens, written to it (Anthropic bills these at a premium)
    cache_write_1h_tokens: int = 0  # of cache_write_tokens, written for an hour (a dearer premium)
    # the reasoning the server returned apart from the answer (vLLM's reasoning parser: `reasoning_content`;
    # Anthropic: thinking blocks); not journaled, it tells why an answer is empty
    reasoning: str | None = None


class CannotConnect(RetryableError):
    """The server refused the connection or its host is unknown: nothing was sent, nothing billed."""

    def __init__(self, provider: str, where: str, reason: str) -> None:
        super().__init__(f"{provider}: cannot connect to {where} ({reason})", reached=False)
        self.reason = reason


class Unavailable(RetryableError):
    """A 502, 503 or 504: the server, or the one behind the proxy that answered, is down or overloaded."""


def _error_info(exc) -> tuple[str, str, str]:
    """(code-ish type, message, param) from an SDK APIStatusError body, for either provider's error shape
    (param: the request parameter OpenAI blames, else "")."""
    body = getattr(exc, "body", None)
    code = str(getattr(exc, "code", None) or getattr(exc, "type", None) or "")
    message = getattr(exc, "message", None) or str(exc)
    param = str(getattr(exc, "param", None) or "")
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            code = str(inner.get("code") or inner.get("type") or code)
            message = str(inner.get("message") or message)
            param = str(inner.get("param") or param)
    return code, message, param


def _refused_params(code: str, message: str, param: str) -> str | None:
    """What to change when a 400 says the model does not take a request parameter, else None: OpenAI names
    it in `param` with an unsupported code (gpt-5 and o-series: a temperature other than 1); Anthropic says
    two cannot both be set (Claude Sonnet/Haiku 4.5, Opus 4.1: temperature and top_p). The same request
    would fail for every item, so it is a configuration error."""
    where = "(recipe sampling, generate options, prompts file or params)"
    if param and code in _UNSUPPORTED_CODES:
        return f"refuses the request parameter '{param}' as sent: remove it or set a value it takes {where}"
    if _EXCLUSIVE_WORDS in message:
        both = " and ".join(re.findall(r"`(\w+)`", message)) or "two of the sampling parameters"
        return f"does not take {both} together: set only one {where}"
    return None


def _secrets(api_key: str) -> tuple[str, ...]:
    """What error texts must never show: the key, unless it is the "EMPTY" placeholder of keyless servers."""
    return () if api_key == "EMPTY" else (api_key,)


def _request_url(exc) -> str:
    """The URL the failed request went to (base_url plus the endpoint's path), for the error message."""
    request = getattr(exc, "request", None)
    return str(getattr(request, "url", "") or "") or "the base_url"


def _connect_failure(exc: BaseException) -> str | None:
    """Why the connection could not be made (refused, unknown host) when that is what an SDK error comes of, else
    None. The openai SDK's aiohttp transport reports a refused connection as a timeout; the aiohttp connector error
    under it says otherwise (a connect timeout is no connector error, and stays a timeout). aiohttp's own words
    name the host; under httpx's ("All connection attempts failed") the socket error says why."""
    from aiohttp import ClientConnectorError

    chain: list[BaseException] = []
    cause = exc.__cause__ or exc.__context__
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    said = next((c for c in chain if isinstance(c, ClientConnectorError)), None)
    if said is None and not any(isinstance(c, _ConnectError) for c in chain):
        return None
    said = said or chain[-1]
    return str(said) or type(said).__name__


def _origin(url: str) -> str:
    """scheme://host[:port] of a URL: the server, where the base_url is not known."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}" if rest else url


def classify(exc: BaseException, provider: str, model: str, secrets: tuple[str, ...] = (),
             base_url: str | None = None) -> Exception:
    """Map an SDK exception to FatalProviderError, RetryableError or ItemError (messages redacted); `base_url`
    names the server in a connection failure (else the request's URL)."""
    status = getattr(exc, "status_code", None)
    if isinstance(exc, _sdk_types("APIStatusError")) and status is not None:
        code, message, param = _error_info(exc)
        headers = getattr(getattr(exc, "response", None), "headers", None)
        text = redact(f"{provider} HTTP {status} ({code or 'error'}): {message}", secrets)
        lowered = f"{code} {message}".lower()
        if status in (401, 403):
            return FatalProviderError(f"authentication failed for {provider} — check the API key. {text}")
        quota = code not in _RATE_LIMIT_CODES and any(w in lowered for w in _QUOTA_WORDS)
        if status == 402 or (status in (400, 429) and quota):
            return FatalProviderError(f"quota or billing exhausted for {provider}; add credit or raise the "
                                      f"limit, then rerun (finished work is kept in the journal). {text}")
        refused = _refused_params(code, message, param) if status == 400 else None
        if refused:
            return FatalProviderError(f"model {model!r} at {provider} {refused}, then rerun. {text}")
        if status == 404 and "model" not in lowered:  # a path the server does not serve: base_url is wrong
            return FatalProviderError(redact(f"no such endpoint at {_request_url(exc)}: check base_url "
                                             f"({_BASE_URL_HINT.get(provider, _OPENAI_BASE_URL_HINT)}). {text}", secrets))
        if status == 404 or (status == 400 and any(w in lowered for w in _MODEL_WORDS)):
            return FatalProviderError(f"unknown model {model!r} (or no access to it) at {provider}. {text}")
        if status == 429:
            return RetryableError(text, rate_limited=True, retry_after=parse_retry_after(headers),
                                  headers=headers)
        if status in (502, 503, 504):
            return Unavailable(text, retry_after=parse_retry_after(headers), headers=headers)
        if status in (408, 409) or status >= 500:
            return RetryableError(text, retry_after=parse_retry_after(headers), headers=headers)
        return ItemError(text, error_class=item_error_class(lowered))
    if isinstance(exc, _sdk_types("APIConnectionError")) and (
            refused := _connect_failure(exc)) is not None:  # APITimeoutError is an APIConnectionError
        where = base_url.rstrip("/") if base_url else _origin(_request_url(exc))
        return CannotConnect(provider, redact(where, secrets), redact(refused, secrets))
    if isinstance(exc, _sdk_types("APITimeoutError")):
        cause = f" ({exc.__cause__})" if exc.__cause__ and str(exc.__cause__) else ""
        return RetryableError(redact(f"{provider}: request timed out{cause}", secrets), reached=False)
    if isinstance(exc, _sdk_types("APIConnectionError")):
        return RetryableError(redact(f"{provider}: connection error: {exc.__cause__ or exc}", secrets), reached=False)
    if isinstance(exc, (*_sdk_types("APIResponseValidationError"), ValueError, KeyError, IndexError,
                        TypeError)):  # a garbled or cut body
        return GarbledAnswer(redact(f"{provider}: malformed response: {type(exc).__name__}: {exc}", secrets)[:500])
    return exc  # a bug or something unexpected: let it surface


def _sdk_types(name: str) -> tuple[type, ...]:
    """The class `name` of each SDK already imported: an exception of one comes from an imported SDK, and importing
    the other here (anthropic: ~1 s) made a process's first 429 wait that long before its pause was shared."""
    return tuple(getattr(sys.modules[sdk], name) for sdk in ("openai", "anthropic") if sdk in sys.modules)


def item_error_class(text: str) -> str:
    """The class of a request the provider refused for good (a live 4xx, or a failed line of a batch)."""
    return "content_filter" if any(w in text.lower() for w in _FILTER_WORDS) else "bad_request"


def resolve_key(provider: str, api_key: str | None, base_url: str | None) -> str:
    """The explicit key, else the provider's environment variable; a server of your own needs none."""
    if api_key:
        return api_key
    env = ENV_KEYS[provider]
    key = os.environ.get(env)
    if key:
        return key
    if provider == "openai-compatible":
        return "EMPTY"  # vLLM / SGLang / llama.cpp accept any key unless started with one
    raise FatalProviderError(f"no API key for {provider}: set {env} (or pass the key as api_key=)")


def _http_client(kind: str, sdk):
    """The SDK's aiohttp transport (about half the CPU of its default httpx pool per request), else
    the SDK default; also the default when a proxy is configured in the environment, which the SDKs'
    aiohttp transport does not read."""
    import urllib.request

    if kind == "aiohttp" and not urllib.request.getproxies():
        try:
            return sdk.DefaultAioHttpClient()
        except (AttributeError, RuntimeError):  # an SDK without it, or without the aiohttp extra
            return None
    return None


class _RawPostProvider:
    """What both providers share: one raw POST of `body(req)` to `path`, read by `parse`; SDK errors classified."""

    path: str

    async def complete(self, req: ChatRequest) -> Completion:
        try:
            raw = await self.client.post(self.path, cast_to=_Response, body=self.body(req))
            return self.parse(json.loads(raw.content), raw.headers)
        except Exception as exc:  # noqa: BLE001 - classified and re-raised
            raise classify(exc, self.name, self.model, self.secrets, str(self.client.base_url)) from None

    async def aclose(self) -> None:
        await self.client.close()


class OpenAIProvider(_RawPostProvider):
    """OpenAI chat completions (also any OpenAI-compatible server through base_url).

    Requests go through the official client's own request path (`client.post`, the SDK's documented
    way to call an endpoint with a raw response): its auth, base URL, timeouts and typed errors, but
    not its per-call typed-dict transform and pydantic model construction, which cost more CPU than
    everything else the engine does per request. The response JSON is read here, headers included.
    """

    path = "/chat/completions"

    def __init__(self, provider: str, model: str, api_key: str, base_url: str | None, timeout: float,
                 http: str = "aiohttp") -> None:
        import openai

        self.name, self.model, self.secrets = provider, model, _secrets(api_key)
        self.client = openai.AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout,
                                         http_client=_http_client(http, openai))
        # OpenAI's own API wants max_completion_tokens (reasoning models reject max_tokens); servers
        # speaking the older dialect (vLLM, llama.cpp) all accept max_tokens.
        self._max_key = "max_completion_tokens" if provider == "openai" else "max_tokens"

    def body(self, req: ChatRequest) -> dict:
        messages = req.messages if req.system is None else [{"role": "system", "content": req.system},
                                                           *req.messages]
        body = {"model": self.model, "messages": messages, self._max_key: req.max_tokens}
        if req.temperature is not None:
            body["temperature"] = req.temperature
        if req.top_p is not None:
            body["top_p"] = req.top_p
        if req.seed is not None:
            body["seed"] = req.seed
        if req.response_format is not None:
            body["response_format"] = req.response_format
        return {**body, **req.params}  # as the SDK's extra_body: vLLM and SGLang read their own sampling keys here

    @staticmethod
    def parse(data: dict, headers: object = None) -> Completion:
        """A chat.completion body (from a live call or a batch output line) as a Completion."""
        choice = data["choices"][0]
        message = choice["message"]
        usage = data.get("usage") or {}
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0  # part of prompt_tokens
        return Completion(text=message.get("content"), finish_reason=choice.get("finish_reason"),
                          input_tokens=usage.get("prompt_tokens") or 0,
                          output_tokens=usage.get("completion_tokens") or 0,
                          headers=headers, response_id=data.get("id"), refusal=message.get("refusal"),
                          cache_read_tokens=cached,  # vLLM's reasoning parsers: reasoning_content, newer `reasoning`
                          reasoning=message.get("reasoning_content") or message.get("reasoning"))


class AnthropicProvider(_RawPostProvider):
    """Anthropic messages API (same request path as OpenAIProvider, for the same reason)."""

    path = "/v1/messages"

    def __init__(self, model: str, api_key: str, base_url: str | None, timeout: float,
                 http: str = "aiohttp") -> None:
        import anthropic

        self.name, self.model, self.secrets = "anthropic", model, _secrets(api_key)
        self.client = anthropic.AsyncAnthropic(api_key=api_key, base_url=base_url, max_retries=0,
                                               timeout=timeout, http_client=_http_client(http, anthropic))

    def body(self, req: ChatRequest) -> dict:
        system, messages = anthropic_system(req.system, req.messages)
        body: dict = {"model": self.model, "messages": messages, "max_tokens": req.max_tokens}
        if system is not None:
            body["system"] = system
        if req.temperature is not None:
            body["temperature"] = req.temperature
        if req.top_p is not None:
            body["top_p"] = req.top_p
        tool = structured_output_tool(req.response_format)
        if tool is not None:  # Anthropic's idiom for a JSON schema: one tool the model must call
            body["tools"] = [tool]
            body["tool_choice"] = {"type": "tool", "name": tool["name"]}
        return {**body, **req.params}

    @staticmethod
    def parse(data: dict, headers: object = None) -> Completion:
        """A message body (from a live call or a batch result) as a Completion; the answer to a structured
        request (a forced tool call) is the tool's input as JSON text, as OpenAI returns it."""
        tool_inputs = [b["input"] for b in data["content"] if b.get("type") == "tool_use"]
        if tool_inputs:  # cut at max_tokens, the tool's input is incomplete: a truncated answer
            text = json.dumps(tool_inputs[0], ensure_ascii=False)
            finish = "length" if data.get("stop_reason") == "max_tokens" else "stop"
        else:
            text = "".join(b.get("text", "") for b in data["content"] if b.get("type") == "text")
            finish = _ANTHROPIC_FINISH.get(data.get("stop_reason"), data.get("stop_reason"))
        usage = data["usage"]
        read = usage.get("cache_read_input_tokens") or 0  # Anthropic counts these apart from input_tokens
        write = usage.get("cache_creation_input_tokens") or 0
        hour = (usage.get("cache_creation") or {}).get("ephemeral_1h_input_tokens") or 0  # the rest: 5 minutes
        return Completion(text=text, finish_reason=finish, input_tokens=(usage.get("input_tokens") or 0) + read + write,
                          output_tokens=usage.get("output_tokens") or 0, headers=headers,
                          response_id=data.get("id"), refusal=text if finish == "refusal" else None,
                          cache_read_tokens=read, cache_write_tokens=write, cache_write_1h_tokens=hour,
                          reasoning=_thinking(data["content"]))


def anthropic_system(system: str | None, messages: list[dict]) -> tuple[str | list[dict] | None, list[dict]]:
    """The `system` field and `messages` of an Anthropic request for OpenAI-style messages: the leading
    role-"system" messages (which the Messages API refuses at the start of `messages`) join the system
    field, after it, as curator and litellm do: one string joined by blank lines, or text blocks where a
    message has content blocks. A system message after a user or assistant turn stays where it is: that is a
    mid-conversation system message (Claude Opus 4.8), which the API takes or refuses by model and placement;
    moving it to the top would change what it applies to. Requests without leading system messages are
    returned as they are, so their bodies do not change."""
    lead = next((i for i, m in enumerate(messages) if not (isinstance(m, dict) and m.get("role") == "system")),
                len(messages))
    if lead == 0:
        return system, messages
    parts = ([] if system is None else [system]) + [m.get("content") for m in messages[:lead]]
    if all(isinstance(part, str) for part in parts):
        return "\n\n".join(parts), messages[lead:]
    blocks = [block for part in parts
              for block in ([{"type": "text", "text": part}] if isinstance(part, str) else part or [])]
    return blocks, messages[lead:]


def _thinking(content: list[dict]) -> str | None:
    """The text of an Anthropic answer's thinking blocks (a redacted block's is encrypted: named only), else None."""
    parts = [(b.get("thinking") or "") if b.get("type") == "thinking" else "(redacted thinking)"
             for b in content if b.get("type") in ("thinking", "redacted_thinking")]
    return "".join(parts) or None


def anthropic_tools(req: ChatRequest) -> tuple[object, object]:
    """The `tools` and `tool_choice` an Anthropic request sends (None where it sends none), as `AnthropicProvider.body`
    builds them: its params' own, over the forced tool of its structured output. They decide the hidden tool-use
    system prompt Anthropic bills (`pricing.tool_prompt_tokens`)."""
    tool = structured_output_tool(req.response_format)
    tools = req.params.get("tools", [tool] if tool is not None else None)
    choice = req.params.get("tool_choice", {"type": "tool", "name": tool["name"]} if tool is not None else None)
    return tools, choice


def structured_output_tool(response_format: dict | None) -> dict | None:
    """An OpenAI-style `json_schema` response_format as an Anthropic tool definition (None otherwise)."""
    if not response_format or response_format.get("type") != "json_schema":
        return None
    spec = response_format.get("json_schema") or {}
    return {"name": spec.get("name") or "answer", "description": spec.get("description") or "Give the answer.",
            "input_schema": spec.get("schema") or {"type": "object"}}


def check_key_variable(name: str) -> str:
    """`name` if it can name an environment variable; a ValueError that does not show it where it cannot (the key
    itself, pasted where its variable's name goes: `--api-key-env`, a recipe's `provider.api_key_env`)."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError("takes the name of an environment variable holding the key (e.g. OPENAI_API_KEY), not the "
                         "key itself")
    return name


def replica_urls(provider: str, base_url: str | Sequence[str] | None, *, batch: bool = False) -> list[str]:
    """The server URLs a `base_url` names: none, one, or several replicas of one model (one vLLM, SGLang or
    llama.cpp server per GPU node) that requests are spread over. ValueError, one line, for a URL that is no
    http(s) URL, one holding a user:password (see `_USERINFO`), one holding a comma (two URLs written as one), a
    URL given twice, or several where they cannot be used: Anthropic (no OpenAI-compatible replicas) and batch
    mode (a batch is submitted to and collected from one server). No message shows a password."""
    if base_url is None or isinstance(base_url, str):
        urls = [base_url] if base_url else []
    else:
        urls = list(base_url)
        if not urls:
            raise ValueError("base_url is an empty list: give one server URL, or several replicas")
    for url in urls:
        if not isinstance(url, str):
            raise ValueError(f"base_url {url!r} is not a URL string")
        parsed = urlparse(url)
        authority = url.split("//", 1)[-1].split("/", 1)[0]  # a password may hold '#' or '?', which urlparse splits at
        if "@" in parsed.netloc or "@" in authority:
            raise ValueError(f"base_url {_shown(url)!r} {_USERINFO}")
        if parsed.query or parsed.fragment or url.rstrip().endswith(("?", "#")):
            raise ValueError(f"base_url {_shown(url.split('?')[0].split('#')[0])!r} has a query string (?...) or fragment, "
                             "which the OpenAI and Anthropic clients cannot send (the endpoint's path is appended "
                             "after it); remove it, and give a key as the API key (api_key=, --api-key-env, a "
                             "recipe's provider.api_key_env)")
        if "," in url:
            raise ValueError(f"base_url {_shown(url)!r} holds a comma: give several replicas as a list of URLs (a "
                             "YAML list in a recipe)")
        if parsed.scheme not in ("http", "https") or not parsed.hostname or not _port_ok(parsed):
            raise ValueError(f"base_url {_shown(url)!r} is not an http(s) URL (e.g. http://127.0.0.1:8000/v1)")
    twice = next((url for i, url in enumerate(urls) if url in urls[:i]), None)
    if twice:
        raise ValueError(f"base_url lists {twice} twice: give each replica once")
    if len(urls) > 1 and provider == "anthropic":
        raise ValueError(f"provider 'anthropic' takes one base_url, not {len(urls)}: several replicas are for "
                         "openai-compatible servers (vLLM, SGLang, llama.cpp) or OpenAI proxies")
    if len(urls) > 1 and batch:
        raise ValueError(f"batch mode takes one base_url, not {len(urls)}: a batch is submitted to and collected "
                         "from one server (run several replicas live)")
    return urls


# The SDKs send the API key in the Authorization header, so a user:password in the URL never reaches the server
# (the aiohttp transport refuses to send both, httpx sends Basic auth in place of the key): refused up front.
_USERINFO = ("holds a user name or password (user:password@), which the OpenAI and Anthropic clients cannot send: "
             "they authenticate with the API key alone; remove it from the URL and give the key as the API key "
             "(api_key=, or its environment variable: --api-key-env, a recipe's provider.api_key_env)")


def _shown(url: str) -> str:
    """A URL as a message may show it: anything between // and the last @ left out, where a user:password would
    be, and a port that is no number masked ("user:pass" with the @ lost: an unescaped /, # or comma in it)."""
    url = re.sub(r"(?<=//).*@", "", url)
    return url if _port_ok(urlparse(url)) else re.sub(r"(?<=//)([^/:]*):[^/]*", r"\1:***", url, count=1)


def _port_ok(parsed) -> bool:
    """Whether a parsed URL's port is a port number (urllib raises, showing the text, where it is none)."""
    try:
        parsed.port  # noqa: B018 - read for its check
    except ValueError:
        return False
    return True


@dataclass(slots=True, eq=False)
class _Replica:
    """One server of a ReplicaProvider, with what the picking and the stats need."""

    url: str  # as logs and stats show it (replica_urls refused any user:password in it)
    provider: OpenAIProvider
    index: int
    in_flight: int = 0
    answers: int = 0
    set_aside: int = 0  # times it was set aside this run
    failures: int = 0  # set-asides since it last answered: its cooldown doubles with each
    back_at: float = 0.0  # when its cooldown ends (clock time)


class ReplicaProvider:
    """Several OpenAI-compatible servers of one model as one provider, like llm-swarm's nginx in front of N
    vLLM servers, but without the proxy: each request goes to the replica with the fewest requests in flight
    (ties in turn), so a slow replica gets fewer.

    A replica that refuses the connection, gets no answer (timed out, or dropped), or answers 502/503/504 is set
    aside for `cooldown_s`, doubling (up to `max_cooldown_s`) while it stays down; then one request at a time
    tries it until it answers, and it rejoins. A refused connection sent nothing, so its request goes to the next
    replica at once; the other failures go back to the engine as the RetryableError they are, and its retry goes
    to another replica. Only when every replica refuses does the request fail, with CannotConnect, the engine's
    "cannot connect" stop. The journal key holds no URL, so any set of replicas replays the same journal.
    """

    def __init__(self, provider: str, model: str, api_key: str, urls: Sequence[str], timeout: float,
                 http: str = "aiohttp", *, cooldown_s: float = 30.0, max_cooldown_s: float = 300.0,
                 unanswered_s: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.name, self.model, self.secrets = provider, model, _secrets(api_key)
        self.unanswered_s = unanswered_s  # the engine's attempt timeout: a request cancelled sooner was not timed out
        self.cooldown_s, self.max_cooldown_s, self._clock = cooldown_s, max_cooldown_s, clock
        self._replicas = [_Replica(url, OpenAIProvider(provider, model, api_key, url, timeout, http), i)
                          for i, url in enumerate(urls)]
        self._turn = 0  # the replica first in line on a tie

    @property
    def answers(self) -> dict[str, int]:
        """Answers (completions) each replica gave this run, by URL: a sick or slow node gives few."""
        return {r.url: r.answers for r in self._replicas}

    async def complete(self, req: ChatRequest) -> Completion:
        tried: list[_Replica] = []
        refused: CannotConnect | None = None
        while (replica := self._pick(tried)) is not None:
            tried.append(replica)
            replica.in_flight += 1
            sent = self._clock()
            try:
                completion = await replica.provider.complete(req)
            except CannotConnect as exc:  # nothing was sent: the next replica takes it now
                self._set_aside(replica, exc.reason)
                refused = exc
                continue
            except RetryableError as exc:
                if isinstance(exc, Unavailable) or not exc.reached:
                    self._set_aside(replica, str(exc))
                raise
            except asyncio.CancelledError:  # the engine gave up waiting (its timeout), or the run stops (Ctrl-C)
                if self._clock() - sent >= self.unanswered_s:
                    self._set_aside(replica, "a request to it went unanswered")
                raise
            finally:
                replica.in_flight -= 1
            replica.answers += 1
            if replica.failures and replica.back_at <= self._clock():  # not one sent before it was set aside
                replica.failures = 0
                log.warning("replica %s answers again: back in use", replica.url)
            return completion
        assert refused is not None
        raise CannotConnect(self.name, f"any of its {len(tried)} replicas ({', '.join(r.url for r in tried)})",
                            f"none accepts connections; the last: {refused.reason}")

    def _pick(self, tried: list[_Replica]) -> _Replica | None:
        """The replica in use with the fewest requests in flight (ties: the next in turn); a replica back from
        its cooldown takes one request at a time until it answers. With every replica left set aside, the one
        back soonest (it may be up again); None once all were tried."""
        now = self._clock()
        left = [r for r in self._replicas if r not in tried]
        ready = [r for r in left if r.back_at <= now and not (r.failures and r.in_flight)]
        if not ready:
            return min(left, key=lambda r: r.back_at, default=None)
        n = len(self._replicas)
        best = min(ready, key=lambda r: (r.in_flight, (r.index - self._turn) % n))
        self._turn = best.index + 1
        return best

    def _set_aside(self, replica: _Replica, why: str) -> None:
        """Take `replica` out of use for its cooldown (once per failure: others of the same outage are ignored)."""
        now = self._clock()
        if replica.back_at > now:
            return
        replica.failures += 1
        replica.set_aside += 1
        cooldown = min(self.cooldown_s * 2 ** (replica.failures - 1), self.max_cooldown_s)
        replica.back_at = now + cooldown
        up = sum(r.back_at <= now for r in self._replicas)
        log.warning("replica %s set aside for %g s (%s); %d of %d replicas in use", replica.url, cooldown,
                    redact(why, self.secrets)[:300], up, len(self._replicas))

    async def aclose(self) -> None:
        """Close every replica's client, and log what each answered (a warning when one was set aside or
        answered under half its share, so a sick node shows)."""
        try:
            total, n = sum(r.answers for r in self._replicas), len(self._replicas)
            sick = any(r.set_aside or (total >= 20 * n and r.answers < total / n / 2) for r in self._replicas)
            log.log(logging.WARNING if sick else logging.INFO, "answers by replica: %s", ", ".join(
                f"{r.url} {r.answers}" + (f" (set aside {r.set_aside}x)" if r.set_aside else "")
                for r in self._replicas))
        finally:
            await asyncio.gather(*(r.provider.aclose() for r in self._replicas))


def make_provider(provider: str, model: str, *, api_key: str | None = None,
                  base_url: str | Sequence[str] | None = None, timeout: float = 120.0,
                  http: str = "aiohttp", attempt_timeout_s: float = 0.0
                  ) -> OpenAIProvider | AnthropicProvider | ReplicaProvider:
    """Build the provider client (a ReplicaProvider for several base URLs); raises FatalProviderError for an
    unknown provider, a bad base_url or a missing key. `attempt_timeout_s`: the engine's own timeout of an
    attempt, so that replicas tell a request it timed out from one a stopping run cancelled."""
    if provider not in PROVIDERS:
        raise FatalProviderError(f"unknown provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
    try:
        urls = replica_urls(provider, base_url)
    except ValueError as exc:
        raise FatalProviderError(str(exc)) from None
    if provider == "openai-compatible" and not urls:
        raise FatalProviderError("provider 'openai-compatible' needs base_url (e.g. http://localhost:8000/v1)")
    url = urls[0] if urls else None
    key = resolve_key(provider, api_key, url)
    if provider == "anthropic":
        return AnthropicProvider(model, key, url, timeout, http)
    if len(urls) > 1:
        return ReplicaProvider(provider, model, key, urls, timeout, http, unanswered_s=attempt_timeout_s)
    return OpenAIProvider(provider, model, key, url, timeout, http)
