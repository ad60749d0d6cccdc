"""The generation engine: a list of chat requests in, a list of paid completions out, nothing lost.

    gen = Generator(provider="openai", model="gpt-4o-mini", journal="run/journal.sqlite",
                    max_cost_usd=20.0)
    responses = gen.run([ChatRequest(messages=[{"role": "user", "content": "..."}], max_tokens=800)])

Each request is keyed by the hash of its canonical form (provider, model, messages, system, sampling
params, seed; metadata excluded). The journal is read first: done keys are replayed, the rest are
sent, except those the journal answers under another max_tokens: an answer that stopped on its own
(finish "stop", not cut at its limit) within this request's max_tokens is the answer this request would
have got, so it is replayed free and recorded under the new key too (`reused_from` names its row). Raising
max_tokens re-sends only the truncated answers; lowering it, only those that no longer fit. Every attempt
passes the admission controller (rate buckets fed by response headers, then an AIMD concurrency slot);
transient failures are retried by tenacity with backoff, outside any slot. Results are committed by a
single journal writer as they arrive, so a killed run loses at most the requests on the wire. With
`batch=True` the same requests go through the provider's batch API instead (textbookgen/batch.py): half the
price, same journal. See README "Generation engine".

Money the provider takes whether or not we listen is never paid twice:
- Batches an earlier `--batch` run submitted keep running at the provider. A batch run collects them (also when
  nothing is left to submit); a live run collects those that have ended and stops before sending anything if
  some of its requests still wait in running ones (rerun with batch=True to collect, or cancel them first).
- A request that outlives the timeout is abandoned but still billed, so the timeout grows instead of the bill:
  each attempt that times out doubles the Generator's timeout (up to TIMEOUT_CAP x timeout_s), attempts already
  on the wire wait for the new one, and its later runs (a build's windows) start from it. Their cost is unknown;
  the budgets count each at its worst case (max_tokens), the journal records it with its request (so reruns count
  it too), and its tokens stay taken in the rate buckets (the provider may still be generating it).
- Attempts cut off by Ctrl-C or a cancelled task are billed too: they count the same way, journaled on the way out.
  Against a kill, each attempt is committed to the journal as on the wire before it goes out; the next run counts
  a killed run's leftovers at their worst case, once (journal.py).
- The budgets hold even if every request on the wire answers at max_tokens: an attempt goes out only when its
  worst case (its prompt at the dearest rate it may be billed, a prompt-cache write's premium included, and
  max_tokens of output) fits beside what is spent and the worst case of those on the wire; otherwise it waits, in
  line, for them to settle (they mostly cost far less). The budget is reached when nothing is on the wire and the
  next request's worst case does not fit, so a run ends within one request's worst case of it.
- An answer with no text (empty, whitespace, or only a reasoning block: see `empty_answer`) is billed and gives
  nothing: a failed request (error class `empty_answer`, or `empty_answer_reasoning` where reasoning ate it), its
  cost booked, re-sent by the next run rather than within this one (the same request, seed included, tends to come
  back the same). The journal keeps every answer as the provider sent it, reasoning included.
- A run whose requests mostly fail (a parameter the model rejects, say) stops early: once at least
  `error_window` requests have finished and failures are more than `max_error_rate` of them and those still
  on the wire (failures come back faster than answers), the run raises FatalProviderError naming the
  commonest error, with every finished answer in the journal. An answer the caller's `answer_check` rejects (no
  score in a judge's answer, JSON that does not fit the schema) counts as such a failure, so a model that ignores
  the asked format stops the run instead of being paid for the whole sample; the answer stays journaled as it came
  (status ok), so a rerun with a fixed parser replays it free.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Container, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import astuple, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from textbookgen.batch import BATCH_PROVIDERS, BatchLimits, BatchRunner
from textbookgen.errors import (
    BudgetExhausted,
    FatalProviderError,
    GarbledAnswer,
    ItemError,
    RetryableError,
    redact,
)
from textbookgen.journal import (
    DONE_STATUSES,
    PERMANENT_ERRORS,
    Journal,
    JournalWriter,
    request_key,
    request_of,
    unpriced_usd,
)
from textbookgen.pricing import (
    BATCH_DISCOUNT,
    cache_rates,
    cache_write_1h_rate,
    is_priced,
    price_of,
    tool_prompt_tokens,
    unknown_model_lead,
)
from textbookgen.providers import (
    PROVIDERS,
    CannotConnect,
    anthropic_tools,
    make_provider,
    replica_urls,
    structured_output_tool,
)
from textbookgen.ratelimit import AdmissionController, RateLimits
from textbookgen.sharedlimits import SharedRecord, budget_id

if TYPE_CHECKING:
    from textbookgen.progress import StageProgress  # it imports this module

__all__ = ["ChatRequest", "ChatResponse", "Generator", "RateLimits", "FatalProviderError", "Spend", "empty_answer",
           "request_key", "sampled", "spent", "split_reasoning"]

log = logging.getLogger("textbookgen.engine")

T = TypeVar("T")
STATUSES = ("ok", "truncated", "failed", "skipped_budget")
TIMEOUT_CAP = 8  # timed-out attempts double the Generator's timeout, up to this many times timeout_s


EMPTY_ERRORS = ("empty_answer", "empty_answer_reasoning")  # failure classes of answers with no text
_THINK_OPEN = re.compile(r"\A\s*<(think|thinking)>", re.IGNORECASE)
_THINK_CLOSE = {tag: re.compile(f"</{tag}>", re.IGNORECASE) for tag in ("think", "thinking")}
_THINK_OPENED = re.compile(r"<think", re.IGNORECASE)


def split_reasoning(text: str | None) -> tuple[str | None, str]:
    """(reasoning, answer) of an answer that may start with a reasoning block, `<think>...</think>` or
    `<thinking>...</thinking>` (Qwen3, DeepSeek-R1 distills served without a reasoning parser), or text ending in a
    lone `</think>` (R1's chat template opens the block in the prompt). A block never closed (cut at max_tokens) is
    all reasoning, no answer. (None, text) without one; tags further into an answer are its own."""
    if not text:
        return None, text or ""
    opened = _THINK_OPEN.match(text)
    start = opened.end() if opened else 0
    close = _THINK_CLOSE[opened.group(1).lower() if opened else "think"].search(text, start)
    if close is None or (not opened and _THINK_OPENED.search(text, 0, close.start())):  # the answer's own tag
        return (text[start:], "") if opened else (None, text)
    return text[start:close.start()], text[close.end():].lstrip()


def empty_answer(text: str | None, finish_reason: str | None, reasoning: str | None = None) -> tuple[str, str] | None:
    """(error class, message) of an answer with no text once a leading reasoning block is set aside, else None.
    `reasoning`: what the server returned apart (vLLM's `reasoning_content`, Anthropic's thinking blocks). Cut at
    max_tokens with no text, a model spent its budget thinking (OpenAI's reasoning models keep theirs hidden)."""
    thought, answer = split_reasoning(text)
    if answer.strip():
        return None
    reasoning = reasoning or thought
    thinking_off = ("turn thinking off (Qwen3 on vLLM/SGLang: chat_template_kwargs {\"enable_thinking\": false} in "
                    "the request params)")
    if finish_reason == "length":
        spent_on = "reasoning" if reasoning else "hidden reasoning or nothing visible"
        unseen = "" if reasoning else ("; OpenAI's gpt-5 and o-series think unseen: lower their effort, params "
                                       "{\"reasoning_effort\": \"low\"} (or \"minimal\")")
        return "empty_answer_reasoning", (
            f"empty answer: cut at max_tokens (finish_reason length) before any text, the tokens spent on {spent_on}; "
            f"raise max_tokens or {thinking_off}{unseen}")
    if reasoning:
        return "empty_answer_reasoning", (
            f"empty answer: only reasoning came back, no text after it (finish_reason {finish_reason}); "
            f"{thinking_off}, or check the prompt")
    return "empty_answer", (
        f"empty answer: no text (finish_reason {finish_reason}); if answers keep coming back empty, check the "
        "server (chat template, stop sequences)")


class NoAnswerInTime(RetryableError):
    """An attempt got no answer within the Generator's timeout and was abandoned (the provider may still bill it)."""

    def __init__(self, provider: str, limit_s: float) -> None:
        super().__init__(f"{provider}: no answer within {round(limit_s, 1):g} s", reached=False)
        self.limit_s = limit_s


@dataclass(slots=True)
class ChatRequest:
    """One chat completion to make. `seed` is sent where the provider supports it and always keys the
    request, so several samples of one prompt are distinct requests. `metadata` (provenance such as
    topic or template ids) travels to the response and the journal but is not part of the key.
    `response_format` (OpenAI's shape, e.g. a `json_schema`) asks for structured output: sent as is to OpenAI
    and OpenAI-compatible servers (vLLM, SGLang); to Anthropic as a tool the model must call, whose input
    comes back as the JSON text. `params` must not set what the engine sets itself (`own_param`: messages, system,
    temperature, top_p, seed, model, max_tokens, n, stream)."""

    messages: list[dict]
    max_tokens: int = 1024
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    system: str | None = None
    response_format: dict | None = None
    metadata: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)  # more request-body keys, sent as is (stop, top_k, min_p, ...)

    def __post_init__(self) -> None:
        if self.params and (name := credential_param(self.params)):
            raise ValueError(f"'params' must not set '{name}': a credential does not go in the request body, which "
                             "the journal keeps and exports; the key comes from the environment (api_key_env)")
        if self.params and (name := own_param(self.params)):
            raise ValueError(f"'params' must not set '{name}' ({self.params[name]!r}): {_OWN_PARAMS[name]}")


def own_param(params: Mapping) -> str | None:
    """The first key of `params` that overrides a request-body key the engine sets itself and prices, budgets, keys
    or reads answers by (params are sent as is, over the body): n=4 was billed four answers, one kept, one counted;
    messages in params were sent in place of the journaled ones, and a params temperature over the keyed one."""
    return next((k for k in params if k in _OWN_PARAMS and not (k in _HARMLESS and params[k] == _HARMLESS[k])), None)


# why each such key is refused; _HARMLESS: the value one may keep, as it is what the engine means
_OWN_PARAMS = {
    "messages": "use the request's messages, which the journal keeps and keys, and the budgets count as input",
    "system": "use the request's system, which the journal keeps and keys, and the budgets count as input",
    "temperature": "use the request's temperature, which the journal keeps and keys (a params value is sent over it)",
    "top_p": "use the request's top_p, which the journal keeps and keys (a params value is sent over it)",
    "seed": "use the request's seed, which the journal keeps and keys and engine.sampled sets per sample (a params "
            "value is sent over it: every sample the same seed)",
    "model": "the model is the Generator's, whose price the cost and the budgets count",
    "max_tokens": "use the request's max_tokens, at which the budgets hold its worst case",
    "max_completion_tokens": "use the request's max_tokens (sent to OpenAI as max_completion_tokens), at which the "
                             "budgets hold its worst case",
    "n": "the provider bills n answers and one is kept (the budgets count one); for several answers to a prompt use "
         "engine.sampled(req, n) (generate --n, LLM(n=...)): each its own request, seeded and journaled",
    "stream": "answers are read whole",
}
_HARMLESS = {"n": 1, "stream": False}


# a credential's name: any *_api_key, *_secret, *_password or authorization; a token by the names tokens go by
# (token, hf_token, access_token...), not eos_token or max_tokens
_CREDENTIAL = re.compile(r"(?:^|[-_])(?:api[-_]?key|authorization|secret|password)$"
                         r"|^(?:(?:access|auth|bearer|refresh|hf|id|session|api)[-_]?)?token$", re.I)
_SCHEMA_FIELDS = frozenset({"properties", "patternProperties", "$defs", "definitions"})  # a JSON schema's field names


def credential_param(params: Mapping, path: str = "") -> str | None:
    """The first key of `params` (nested ones too, as in `extra_body`) named like a credential and holding text, as
    a dotted path. The fields a structured-output schema describes (a `password` property of a login form) are
    data, not keys, and so is a number or an empty column named `token`."""
    for key, value in params.items():
        name = f"{path}{key}"
        if _CREDENTIAL.search(str(key)) and isinstance(value, str) and value:
            return name
        if isinstance(value, Mapping) and key not in _SCHEMA_FIELDS and (inner := credential_param(value, f"{name}.")):
            return inner
    return None


def unpriced_budget(model: str) -> str:
    """Why a dollar budget on `model` is refused, and how to give its price. It names only what every caller with a
    dollar budget takes (`classifier label` has no --max-output-tokens: naming it sent users to a missing option)."""
    return (f"{unknown_model_lead([(f'model {model!r}', model)])}"
            f"max_cost_usd (--max-cost) is set but model {model!r} has no known price, so its calls would count as "
            f"$0 and the budget could never stop them; give its price in USD per 1M tokens: --price {model}=IN,OUT "
            f"(prices={{{model!r}: (IN, OUT)}} in Python; {model}=0,0 for a free server of your own), or budget "
            "output tokens instead where the run takes such a budget (max_output_tokens)")


def sampled(req: ChatRequest, n: int, seed: int | None = None) -> list[ChatRequest]:
    """`n` answers to one prompt, each tagged `metadata["sample"]`: sample 0 is the request n=1 makes (seeded
    `req.seed`, else `seed`, else not at all), sample j >= 1 is seeded base + j (base: the same seed, else 0).
    The seed keys each copy, so they are distinct journal entries, and any larger `n` later (from 1 too) reuses
    the ones paid for (the provider gets the seed where its API takes one)."""
    if n < 1:
        raise ValueError(f"n (answers per prompt) must be at least 1, got {n}")
    first = req.seed if req.seed is not None else seed
    return [replace(req, seed=first if j == 0 else (first or 0) + j, metadata={**req.metadata, "sample": j})
            for j in range(n)]


def warn_same_samples(provider: str, n: int, requests: Sequence[ChatRequest]) -> None:
    """Warn once when `n` samples per prompt would be one answer paid n times: at temperature 0 a seed does not
    change a greedy answer, and Anthropic's API takes none, so its copies are the same request body."""
    if n > 1 and any(r.temperature == 0 for r in requests):
        why = ("Anthropic's API takes no seed, so the copies are the same request" if provider == "anthropic"
               else "a seed does not change a greedy answer")
        log.warning("n=%d samples per prompt at temperature 0 are (nearly) the same answer, paid %d times: %s; set "
                    "a temperature above 0 for distinct samples", n, n, why)


@dataclass(slots=True)
class ChatResponse:
    """The outcome of one request. status: "ok", "truncated" (finish_reason length; text kept),
    "failed" (error says why; an empty answer keeps its text and what it cost), or "skipped_budget" (not sent: a
    budget was reached). `text` is the answer as the provider sent it, a leading reasoning block included
    (`split_reasoning` sets it apart). A reused answer (`reused_from`) has its tokens and costs nothing."""

    key: str
    text: str | None
    finish_reason: str | None
    status: str
    error: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    latency_s: float = 0.0
    attempts: int = 0
    cost_usd: float = 0.0
    metadata: dict = field(default_factory=dict)
    reused_from: str | None = None  # the key of the request (another max_tokens) whose answer this is, free
    error_class: str | None = None  # of a failure: "transient", or one of journal.PERMANENT_ERRORS

    @property
    def answer(self) -> str:
        """The text without a leading reasoning block: what a dataset, a parser or a judge should read."""
        return split_reasoning(self.text)[1]

    @property
    def reasoning(self) -> str | None:
        """The leading reasoning block's text, if the answer has one (`split_reasoning`)."""
        return split_reasoning(self.text)[0]


class Spend(NamedTuple):
    """Money and output tokens as the budgets count them."""

    usd: float
    output_tokens: int


class Billed(NamedTuple):
    """What the provider billed, or may bill, beside the journal's answers: the budgets' `Spend` and the input
    tokens, which the totals count too. Billed failures (`Generator._replay`), and an attempt's worst case while it is
    on the wire or once abandoned (its prompt as estimated when sent)."""

    usd: float
    output_tokens: int
    input_tokens: int


def spent(counts: Mapping[str, Any]) -> Spend:
    """What a run's stats, or a journal summary, count against the budgets: what was paid plus the worst case of
    the attempts abandoned on a timeout (the provider may bill those; what they cost is never known)."""
    return Spend(counts["cost_usd"] + counts["abandoned_usd"],
                 counts["output_tokens"] + counts["abandoned_output_tokens"])


def canonical_request(provider: str, model: str, req: ChatRequest) -> dict:
    """The fields that decide the completion; None values are dropped so a new optional parameter
    does not change the keys of existing journals."""
    fields = {"provider": provider, "model": model, "messages": req.messages, "system": req.system,
              "max_tokens": req.max_tokens, "temperature": req.temperature, "top_p": req.top_p,
              "seed": req.seed, "response_format": req.response_format, "params": req.params or None}
    return {k: v for k, v in fields.items() if v is not None}


def replays(row: Mapping[str, Any], retry_failed: bool = False) -> bool:
    """Whether a journal row is answered from the journal instead of sent: a finished answer, or a refusal
    (permanent failure) unless `retry_failed`."""
    return row["status"] in DONE_STATUSES or (
        row["status"] == "failed" and row["error_class"] in PERMANENT_ERRORS and not retry_failed)


def fits(row: Mapping[str, Any], max_tokens: int) -> bool:
    """Whether an answer that stopped on its own (a `Journal.natural_stops` row) answers the same request with
    this max_tokens: it used no more output tokens. One whose server reported no usage (no tokens for some
    text) fits only a max_tokens at least the one it was given."""
    if row["output_tokens"] or not row["text"]:
        return row["output_tokens"] <= max_tokens
    return request_of(row).get("max_tokens", max_tokens + 1) <= max_tokens


def cache_write_ttls(part: Any) -> set[str]:
    """The times to live of the prompt-cache writes a request part asks for: Anthropic's `cache_control` blocks,
    anywhere in messages, tools or the body ("5m" where one gives none). A JSON schema's fields are data, not blocks."""
    if isinstance(part, Mapping):
        control = part.get("cache_control")
        found = {str(control.get("ttl") or "5m")} if isinstance(control, Mapping) else set()
        return found.union(*(cache_write_ttls(v) for k, v in part.items() if k not in _SCHEMA_FIELDS))
    if isinstance(part, list):
        return set().union(*(cache_write_ttls(v) for v in part))
    return set()


def estimate_input_tokens(req: ChatRequest, provider: str | None = None, model: str = "") -> int:
    """A cheap prompt-size estimate, plus per-message overhead; the engine corrects it by the ratio of real
    usage to estimates as answers come back. English runs about 4 characters a token, but a Chinese, Japanese
    or Korean character is a token or more: at 4 characters a token the first such requests held a quarter of
    their input or less against the budget and the token limits. Tool definitions and a structured output's
    schema are billed as input too (`_prompt_params`): left out, a tools-heavy run's first requests were held at
    a fraction of their input. With `provider` and `model`, also the input the provider adds that the request
    does not hold (`hidden_prompt_tokens`)."""
    tokens = _text_tokens(req.system or "")
    for message in req.messages:
        content = message.get("content")
        tokens += _text_tokens(content if isinstance(content, str) else json.dumps(content, ensure_ascii=False))
    for text in _prompt_params(req):
        tokens += _text_tokens(text)
    return math.ceil(tokens) + 4 * len(req.messages) + 3 + hidden_prompt_tokens(provider, model, req)


def hidden_prompt_tokens(provider: str | None, model: str, req: ChatRequest) -> int:
    """Input tokens `provider` bills for `req` beyond its body: Anthropic's tool-use system prompt wherever the
    request sends tools (its structured output is a forced tool): 313 tokens on current models. Left out, the first
    requests of a structured run on a short prompt were held at a fraction of their input."""
    if provider != "anthropic":
        return 0
    tools, choice = anthropic_tools(req)
    return tool_prompt_tokens(model, choice) if tools else 0


# request-body keys beside system and messages that the providers bill as input: tool definitions and the choice of
# one (OpenAI, Anthropic; OpenAI's older functions), a structured output's schema (OpenAI's response_format,
# Anthropic's output_config.format and its beta output_format), and the `documents` of OpenAI-compatible servers
# (vLLM renders them into the prompt through a chat template that takes them, RAG ones; others ignore them: counted
# at the most); not sampling knobs (stop, top_k, ...), nor vLLM's guided decoding (guided_json, guided_regex,
# guided_choice, guided_grammar, structured_outputs), which constrains the output and adds no prompt token
_PROMPT_PARAMS = frozenset({"tools", "tool_choice", "functions", "function_call", "response_format",
                            "output_config", "output_format", "documents"})


def _prompt_params(req: ChatRequest) -> list[str]:
    """The JSON of `req`'s body parts billed as input beside system and messages: the `_PROMPT_PARAMS` its params
    set, and its response_format unless params set one (they go over the body) in the longer of the forms it is
    sent in: as is (OpenAI), or Anthropic's forced tool of its schema and the choice of that tool."""
    texts = [json.dumps(v, ensure_ascii=False) for k, v in req.params.items() if k in _PROMPT_PARAMS and v is not None]
    if req.response_format is not None and "response_format" not in req.params:
        forms = [req.response_format]
        if (tool := structured_output_tool(req.response_format)) is not None:
            forms.append([tool, {"type": "tool", "name": tool["name"]}])
        texts.append(max((json.dumps(form, ensure_ascii=False) for form in forms), key=_text_tokens))
    return texts


def _text_tokens(text: str) -> float:
    """ASCII at 4 characters a token, any other character at about one (the bytes UTF-8 adds beyond one per
    character, halved, count the wide characters without a per-character loop: 2 for CJK, 1 for é)."""
    wide = (len(text.encode("utf-8", "surrogatepass")) - len(text)) / 2
    return (len(text) - wide) / 4 + wide


class BudgetGate:
    """The line where attempts wait for room in the budgets: in arrival order, only the first one looking for room.

    Each release of a hold wakes the first in line alone; once its worst case fits, it takes that room and hands its
    turn to the next (who may fit in what is left), so a release wakes those it makes room for and one more. Waking
    every waiter at each release instead (a herd, each re-checking the budgets) cost CPU in proportion to the
    waiters at high concurrency, and letting through whoever fits would starve a big request behind small ones. A
    waiter cancelled in line, or first in line, hands its turn on (asyncio.Lock does), so Ctrl-C cannot stall it."""

    def __init__(self) -> None:
        self._line = asyncio.Lock()  # FIFO: its holder is the first in line
        self._opened = asyncio.Event()
        self.waiting = 0  # attempts in line, the first included

    async def __aenter__(self) -> None:
        """Wait for this attempt's turn (at once when nobody is in line); it is held until the block ends."""
        self.waiting += 1
        try:
            await self._line.acquire()
        except BaseException:
            self.waiting -= 1
            raise

    async def __aexit__(self, *exc: object) -> None:
        self.waiting -= 1
        self._line.release()

    async def room(self) -> None:
        """For the first in line, whose worst case does not fit: wait until room may have opened."""
        self._opened.clear()
        await self._opened.wait()

    def open(self) -> None:
        """Room may have opened (a hold was released), or the run stops: the first in line looks again."""
        self._opened.set()


class _Item:
    """A unique pending request and its running state. `in_rate`: the dearest price an input token of it may be
    billed, as a fraction of the input price (a prompt-cache write's premium; `Generator._input_rate`); `out`: its
    max_tokens, for its worst case once its body is dropped (`req` None: a request waiting in a submitted batch,
    whose body the journal keeps for another round; `batch.BatchRunner`)."""

    __slots__ = ("key", "req", "est_in", "in_rate", "out", "attempts", "reserved")

    def __init__(self, key: str, req: ChatRequest, est_in: int, in_rate: float = 1.0) -> None:
        self.key, self.req, self.est_in, self.in_rate, self.attempts = key, req, est_in, in_rate, 0
        self.out = req.max_tokens
        # the worst case of its attempt in flight, held against the budgets, and its prompt's input tokens
        self.reserved: Billed | None = None


def _metadata(item: _Item) -> dict:
    """An outcome's metadata: its request's, or none where the body was dropped (the run's answer takes the caller's
    request's, `Generator._respond`)."""
    return item.req.metadata if item.req is not None else {}


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to its end from synchronous code; Ctrl-C cancels it, as asyncio.run does. Inside a running
    event loop (a Jupyter cell) it gets a loop of its own on a worker thread, and Ctrl-C still cancels it."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no loop: the usual case (returning from here keeps this out of tracebacks)
        pass
    else:
        return _run_on_worker(coro)
    return asyncio.run(coro)


def _run_on_worker(coro: Coroutine[Any, Any, T]) -> T:
    loop = asyncio.new_event_loop()
    task = loop.create_task(coro)
    finished = threading.Event()  # waited on instead of Thread.join, which Ctrl-C can leave wrongly "stopped"

    def work() -> None:
        try:
            loop.run_until_complete(asyncio.wait([task]))
        finally:
            loop.close()
            finished.set()

    threading.Thread(target=work, name="textbookgen-run", daemon=True).start()
    try:
        while not finished.wait(0.1):
            pass
    except KeyboardInterrupt:  # the main thread gets Ctrl-C: cancel the run there, as asyncio.run would
        if not finished.is_set():
            with contextlib.suppress(RuntimeError):  # the loop closed in the meantime: nothing to cancel
                loop.call_soon_threadsafe(task.cancel)
        finished.wait()
        raise
    return task.result()


class Generator:
    """Configure once, call on many requests: `run()` (sync) or `await arun()`.

    provider: "openai", "anthropic" or "openai-compatible" (vLLM, SGLang, llama.cpp: needs base_url).
    base_url: the server's URL, or a list of the URLs of several replicas of the model (one server per GPU node):
    each request goes to the one with the fewest in flight, one that is down is set aside (`ReplicaProvider`);
    `stats["answers_by_replica"]` says what each answered. `concurrency` is over all of them.
    api_key: explicit, else OPENAI_API_KEY / ANTHROPIC_API_KEY. Never written anywhere.
    journal: SQLite path (resume is automatic); None keeps the journal in memory.
    limits: per-minute budgets to stay under; the server's headers tighten them.
    share_limits: processes on this host on the same server, key and model keep one rate budget (a small file of
    numbers, `textbookgen.sharedlimits`); False (or TEXTBOOKGEN_SHARE_LIMITS=0) keeps one per process.
    concurrency: the most requests on the wire (AIMD lowers it on 429s and raises it back).
    max_cost_usd / max_output_tokens: stop launching requests once reached (counted over this request
    set, replayed journal rows and earlier runs' abandoned attempts included, so a resumed run keeps to the same
    budget). spent_before: for a budget over more than this request set (a whole build), all it has spent
    before this run, this journal's record of these requests included: counted instead of that record.
    spent_aside (an attribute): spent against the same budgets outside this request set and outside spent_before,
    counted besides them (an LLM call's earlier schema re-ask rounds, each a request set of its own).
    budget_stopped (an attribute): a run of the same budget stopped on it before this one (an LLM call's earlier
    window or round): where this run's first request to send does not fit either, its requests come back
    skipped_budget at once, the journal's answers replayed, none registered as pending, no warning logged.
    counted_aside (an attribute): keys an earlier run of the same budget and stats ran already (an LLM call's earlier
    windows: a row repeated a window apart), whose spend is in spent_aside: what the journal holds for them (an
    answer, or a failure of any kind) is returned as that run left it, neither sent again nor counted again in the
    stats or budgets, as a key repeated within one run is counted once; one still pending (skipped on the budget)
    runs as any other. A container, asked all at once where it has `among(keys)` (a bool per key).
    replay_only (an attribute): None, or the note a run gives the requests the journal holds pending (or not at all):
    set, a run only reads the journal, after a run that left every request as it should stay (a batch build's
    `run_windows`, whose requests then come back a window at a time): answers and failures of any kind come back as
    it holds them, the rest skipped_budget with this note; nothing is sent or collected, no budget read.
    stage_progress (an attribute): a progress line over several runs (`progress.StageProgress`: a build's generate
    stage, a window of prompts a run), which each run draws, and counts in when it ends, instead of a line of its own
    (drawn even with progress=False: the caller decides). The caller closes it and takes it off; runs of one
    Generator go one at a time (concurrent runs are refused), so they never share it at once.
    prices: {model: (input, output) USD per 1M tokens} overriding textbookgen.pricing.PRICES. The journal's calls made
    at no price (an earlier run's) count at them, in the budgets, stats and replayed costs (`_repriced`).
    refuse_unpriced: refuse (ValueError) a max_cost_usd on a model with no price: its calls would count as $0, so
    the dollar budget could never stop them (an unbounded spend under a budget); give its price in `prices` ($0 for a
    free server of your own). False leaves it to the caller. A build refuses it first, as a recipe problem naming
    the field (`Recipe.unpriced_budget_problems`); this check stays on there, a backstop.
    max_attempts: per request, over retryable errors. retry_failed: re-send requests the journal
    holds as failed for a permanent reason (400, refusal, content filter); those failed for a passing one
    (retries exhausted, an empty answer) are re-sent by every run.
    timeout_s: per attempt at first; each attempt that times out doubles it, up to TIMEOUT_CAP x timeout_s (an
    abandoned generation is billed all the same: waiting longer is cheaper), for the rest of the run and for this
    Generator's later runs (same provider and model: a build's windows, an LLM call's), which would otherwise each
    abandon, and pay for, attempts to learn it again.
    max_error_rate / error_window: stop the run (FatalProviderError) once `error_window` or more requests have
    finished and more than this share of them failed; None never stops. Live runs only: a batch is submitted
    (and paid) as a whole.
    answer_check: called on each answer this run pays for (not on replayed ones); returns None for a usable answer,
    else a short class name of why not ("no_score"), and the error-rate stop counts it as a failure (the run then
    stops naming that class and the answer's start). The answer is journaled and returned as it came all the same,
    and `stats["rejected"]` counts them. Live runs only, as the stop.
    batch: send through the provider's batch API (openai, anthropic) at half the price, answers within
    24 h (textbookgen/batch.py; needs a journal file): `batch_size` requests per batch, polled every
    `batch_poll_s`, requests that expire or fail transiently resubmitted up to `batch_max_rounds` times in all;
    `batch_limits` (`batch.BatchLimits`) caps what is queued at the provider from the start. While batches run,
    the progress line shows what the provider's polls say of them (answered and failed there, not collected yet);
    without a live line (no terminal, or progress=False) a plain line says it at most once a minute, on stderr
    (progress=True) or at INFO on the textbookgen.progress logger.
    """

    def __init__(self, provider: str = "openai", model: str = "gpt-4o-mini", *,
                 base_url: str | Sequence[str] | None = None,
                 api_key: str | None = None, journal: str | Path | None = None,
                 limits: RateLimits | None = None, concurrency: int = 64, max_cost_usd: float | None = None,
                 max_output_tokens: int | None = None, prices: Mapping[str, tuple[float, float]] | None = None,
                 progress: bool = True, timeout_s: float = 120.0, max_attempts: int = 8,
                 backoff_initial_s: float = 1.0, backoff_max_s: float = 60.0,
                 retry_failed: bool = False, batch: bool = False, batch_size: int = 10_000,
                 batch_poll_s: float = 30.0, batch_max_rounds: int = 3, batch_limits: BatchLimits | None = None,
                 max_error_rate: float | None = 0.5, error_window: int = 50, spent_before: Spend | None = None,
                 refuse_unpriced: bool = True, share_limits: bool = True,
                 answer_check: Callable[[ChatResponse], str | None] | None = None) -> None:
        if provider not in PROVIDERS:
            raise ValueError(f"unknown provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
        if batch and provider not in BATCH_PROVIDERS:
            raise ValueError(f"batch mode needs provider {' or '.join(BATCH_PROVIDERS)}, not {provider!r} "
                             "(OpenAI-compatible servers have no batch API: run them live)")
        replica_urls(provider, base_url, batch=batch)  # one line for a bad URL, several for anthropic or a batch
        if batch and journal is None:
            raise ValueError("batch=True needs a journal file (journal=PATH): batches run for hours at the provider, "
                             "and in memory an interrupted run's batches can be neither collected nor cancelled, and "
                             "a rerun pays for them again")
        if batch_size < 1 or batch_max_rounds < 1 or batch_poll_s < 0:
            raise ValueError("batch_size and batch_max_rounds must be >= 1 and batch_poll_s >= 0")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if not timeout_s > 0 or max_attempts < 1:
            raise ValueError(f"timeout_s must be > 0 and max_attempts >= 1, got {timeout_s} and {max_attempts}")
        if (max_error_rate is not None and not 0 <= max_error_rate <= 1) or error_window < 1:
            raise ValueError(f"max_error_rate must be in [0, 1] (or None) and error_window >= 1, got "
                             f"{max_error_rate} and {error_window}")
        if (max_cost_usd is not None and not max_cost_usd >= 0) or (max_output_tokens or 0) < 0:
            raise ValueError(f"max_cost_usd and max_output_tokens must be >= 0, got {max_cost_usd} and "
                             f"{max_output_tokens}")
        if refuse_unpriced and max_cost_usd is not None and not is_priced(model, prices):
            raise ValueError(unpriced_budget(model))
        if isinstance(base_url, (list, tuple)) and len(base_url) == 1:
            base_url = base_url[0]  # one replica is one server: messages and hints name it as such
        self.provider, self.model, self.base_url = provider, model, base_url
        self._api_key = api_key
        self.journal_path = Path(journal) if journal is not None else None
        self.limits = limits or RateLimits()
        self.share_limits = share_limits
        self.concurrency = concurrency
        self.max_cost_usd, self.max_output_tokens = max_cost_usd, max_output_tokens
        self.spent_before = spent_before
        self.spent_aside: Spend | None = None  # see the class docstring
        self.budget_stopped = False  # see the class docstring
        self.counted_aside: Container[str] = ()  # see the class docstring
        self.replay_only: str | None = None  # see the class docstring
        self.stage_progress: StageProgress | None = None  # see the class docstring
        self.batch, self.batch_size, self.batch_poll_s = batch, batch_size, batch_poll_s
        self.batch_max_rounds, self.batch_limits = batch_max_rounds, batch_limits
        self.prices = dict(prices or {})
        self._priced = is_priced(model, prices)  # else its calls cost $0 here and their tokens are journaled apart
        self._rate = BATCH_DISCOUNT if batch else 1.0  # of the list price, what a token is billed
        self.price_in, self.price_out = (p * self._rate / 1e6 for p in price_of(model, prices))
        self.cache_read_rate, self.cache_write_rate = cache_rates(model)
        self.cache_write_1h_rate = cache_write_1h_rate(model)
        self.progress = progress
        self.timeout_s, self.max_attempts = timeout_s, max_attempts
        self._timeout = timeout_s  # grows as attempts time out, and stays grown for the next run
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, backoff_max_s
        self.retry_failed = retry_failed
        self.max_error_rate, self.error_window = max_error_rate, error_window
        self.answer_check = answer_check
        self._jitter = wait_exponential_jitter(multiplier=backoff_initial_s, max=backoff_max_s,
                                               jitter=backoff_initial_s)
        self.stats: dict = {}
        self._running = False
        self._keep_results = True  # False while `run_windows` runs: outcomes go to the journal only

    # ----- public API ---------------------------------------------------------------------------
    def run(self, requests: Sequence[ChatRequest]) -> list[ChatResponse]:
        """Synchronous form of `arun`, also from a Jupyter cell (see `run_sync`). Ctrl-C stops cleanly: in-flight
        requests are cancelled, all finished ones are in the journal, and rerunning resumes."""
        return run_sync(self.arun(requests))

    async def arun(self, requests: Sequence[ChatRequest]) -> list[ChatResponse]:
        """Generate a completion for every request; returns responses in request order."""
        if self._running:
            raise RuntimeError("this Generator is already running; use one Generator per concurrent run")
        self._running = True
        try:
            return await self._arun(requests)
        finally:
            self._running = False

    def run_windows(self, windows: Iterable[Sequence[ChatRequest]], total: int) -> str | None:
        """Send every window's requests through the batch API in one run (batch=True), holding only the requests
        queued for the next batch and what booking the submitted ones needs: a window is taken from `windows` (read
        lazily: a generator over a prompts file) only when a batch can go, and a submitted request's body is dropped
        (the journal keeps it for another round). Outcomes go to the journal only: `run` on the same requests
        afterwards replays them. The batches earlier runs left open are all collected as this run's (their requests
        no window asks for are not sent round again: left pending), and the budgets count the journal's whole record
        (`spent_before` where given). `total`: the requests the windows hold, for the progress display. Returns the note of the budget that stopped it (None: none did), which the
        requests it left pending come back with (`replay_only`)."""
        if not self.batch:
            raise ValueError("run_windows sends through the batch API: make the Generator with batch=True (live runs "
                             "take windows one `run` at a time)")
        if self._running:
            raise RuntimeError("this Generator is already running; use one Generator per concurrent run")
        self._running, self._keep_results = True, False
        try:
            run_sync(self._arun_windows(windows, total))
            return self._budget_note
        finally:
            self._running, self._keep_results = False, True

    async def _arun_windows(self, windows: Iterable[Sequence[ChatRequest]], total: int) -> None:
        journal = Journal(self.journal_path)
        try:
            journal.lock_for_run()
            budgeted = self.max_cost_usd is not None or self.max_output_tokens is not None
            before = self.spent_before or (spent(journal.summary(self.prices)) if budgeted else None)
            await self._generate(journal, self._pending_items(journal, windows), {}, Billed(0.0, 0, 0),
                                 Billed(0.0, 0, 0), total=total, before=before)
        finally:
            journal.close()

    def _pending_items(self, journal: Journal, windows: Iterable[Sequence[ChatRequest]]) -> Iterator[_Item]:
        """The requests of each window that the journal does not answer, registered as pending as the window is
        read (their bodies are what a later batch round sends)."""
        for requests in windows:
            self._writer.flush()  # the outcomes booked so far are what the journal answers this window with
            self._batches.released.clear()  # the journal has them: this window's replay reads them
            unique = self._unique((self._key(req), req) for req in requests)
            results, _, _ = self._replay(journal, unique)
            if self.budget_stopped:  # not registered by `_replay`
                self._add_pending(journal, {k: r for k, r in unique.items() if k not in results})
            for key, req in unique.items():
                if key not in results:
                    yield self._item(key, req)

    async def _arun(self, requests: Sequence[ChatRequest]) -> list[ChatResponse]:
        keyed = [(self._key(r), r) for r in requests]
        unique = self._unique(keyed)
        journal = Journal(self.journal_path if self.journal_path is not None else ":memory:")
        try:
            journal.lock_for_run()
            results, abandoned, resent = self._replay(journal, unique)
            if self.replay_only is not None:
                self._skip_all([_Item(k, r, 0) for k, r in unique.items() if k not in results], results,
                               self._start_budgets(results, abandoned, resent), self.replay_only)
                return [self._respond(results[key], req) for key, req in keyed]
            todo = [self._item(k, r) for k, r in unique.items() if k not in results]
            if self.budget_stopped and todo and self._skipped_whole(journal, todo, results, abandoned, resent):
                # all skipped at once, the run reported; it awaited nothing that suspends, so a cancel (Ctrl-C) is
                # taken here, not once the call's windows have walked every row left
                await asyncio.sleep(0)
            elif todo or (self.batch and journal.open_batches(self.provider, self.model)):  # collect them too
                if self.budget_stopped:  # not registered by `_replay`: these are sent
                    self._add_pending(journal, {item.key: item.req for item in todo})
                await self._generate(journal, todo, results, abandoned, resent)
            else:  # all answered by the journal: the stats still describe this run, not the last one
                counted = self._counted(results)
                self._c, self._budget_note = self._counts(counted, abandoned, resent), None
                self._admission = AdmissionController(self.limits, self.concurrency)
                self._report(time.monotonic(), len(counted))
        finally:
            journal.close()
        return [self._respond(results[key], req) for key, req in keyed]

    # ----- journal replay -----------------------------------------------------------------------
    def _replay(self, journal: Journal,
                unique: dict[str, ChatRequest]) -> tuple[dict[str, ChatResponse], Billed, Billed]:
        """Responses the journal already holds, under this key or (see `_reuse`) another max_tokens, the worst
        case of the attempts earlier runs abandoned on these requests, and what billed failures cost that those
        responses do not show: the ones this run sends again (an empty answer, a refusal with retry_failed), and the
        tokens of those answered since (a row's tokens are its answer's). Paid, so counted against the budgets and in
        the totals as replayed answers are. Registers the other requests as pending. The rows of `counted_aside` keys
        count in neither, and one that failed is replayed as it failed; under `replay_only`, every failed row is, and
        nothing is registered or reused."""
        rows = journal.rows(list(unique))
        self._fail_empty_rows(journal, rows)
        rows = {key: self._repriced(row) for key, row in rows.items()}
        counted = self._counted(rows)
        abandoned = Billed(sum(row["abandoned_usd"] for row in counted.values()),
                           sum(row["abandoned_output_tokens"] for row in counted.values()),
                           sum(row["abandoned_input_tokens"] for row in counted.values()))
        done = {key: row for key, row in rows.items() if replays(row, self.retry_failed)
                or (row["status"] == "failed" and (self.replay_only is not None or key in self.counted_aside))}
        sources = journal.rows(list({row["reused_from"] for row in done.values() if row["reused_from"]}))
        results = {key: self._replayed(key, row, sources.get(row["reused_from"], row), unique[key])
                   for key, row in done.items()}
        if not (self.budget_stopped or self.replay_only is not None):  # else registered once sent or reused
            self._add_pending(journal, {key: req for key, req in unique.items() if key not in rows})
        again = [row for key, row in counted.items() if key not in done]  # sent again, or answered by `_reuse`
        failed_out = sum(row["failed_output_tokens"] for row in counted.values())  # of failures answered since
        failed_in = sum(row["failed_input_tokens"] for row in counted.values())
        resent = Billed(sum(row["cost_usd"] for row in again), sum(row["output_tokens"] for row in again) + failed_out,
                        sum(row["input_tokens"] for row in again) + failed_in)
        if self.replay_only is None:
            self._reuse(journal, {key: req for key, req in unique.items() if key not in results}, results)
        return results, abandoned, resent

    def _counted(self, by_key: Mapping[str, T]) -> dict[str, T]:
        """`by_key` less the keys an earlier run counted (`counted_aside`): what this run's stats and budgets count.
        Asked for all the keys at once where `counted_aside` can answer so (`among`: an LLM call's compact keys,
        for which one lookup costs microseconds)."""
        among = getattr(self.counted_aside, "among", None)
        aside = among(by_key) if among is not None else [key in self.counted_aside for key in by_key]
        return {key: value for (key, value), out in zip(by_key.items(), aside, strict=True) if not out}

    def _add_pending(self, journal: Journal, requests: Mapping[str, ChatRequest]) -> None:
        """Register `requests` (key: request) in the journal as pending; those it holds already are left as they are."""
        journal.add_pending(
            (key, self.provider, self.model,
             json.dumps(canonical_request(self.provider, self.model, req), ensure_ascii=False),
             json.dumps(req.metadata, ensure_ascii=False, default=str))
            for key, req in requests.items())

    def _skipped_whole(self, journal: Journal, todo: list[_Item], results: dict[str, ChatResponse],
                       abandoned: Billed, resent: Billed) -> bool:
        """After a budget stop of the same budget (`budget_stopped`): whether this run would stop at its first
        request, as `_reserve` decides with nothing in flight; if so `todo` comes back skipped_budget with the note
        that run would give, without a provider, pending rows or a warning (the run that stopped gave it), and the
        stats of such a run. False (run it) where that request fits, or batches of this model are open."""
        if self.batch or journal.open_batches(self.provider, self.model):
            return False
        counted = self._start_budgets(results, abandoned, resent)
        note = self._over_budget(self._worst_case(todo[0]))
        if note is None:
            return False
        self._skip_all(todo, results, counted, note)
        return True

    def _skip_all(self, todo: list[_Item], results: dict[str, ChatResponse], counted: int, note: str) -> None:
        """A run that sends nothing: `results` replayed (`counted` of them counted, `_start_budgets`), `todo` skipped_budget
        with `note`, its stats reported, without the "budget stop" warning (the run that stopped gave it)."""
        self._results, self._budget_note = results, note
        for item in todo:
            self._skip(item)
        self._budget_note = None
        self._admission = AdmissionController(self.limits, self.concurrency)
        self._report(time.monotonic(), len(todo) + counted)

    def _start_budgets(self, results: dict[str, ChatResponse], abandoned: Billed, resent: Billed,
                       before: Spend | None = None) -> int:
        """The budget state a run starts from, which `_over_budget` and `_reserve` read: what is spent (`_counts`),
        the budgets left beside it, nothing in flight, and the input estimate's ratio at 1 (no answer has measured
        it yet). One place for `_generate` and `_skipped_whole`, so a run skipped whole decides as a run would.
        Returns how many of `results` this run counts (not `counted_aside`'s), for its total."""
        counted = self._counted(results)
        self._c = self._counts(counted, abandoned, resent)
        self._max_cost_usd, self._max_output_tokens = self._budgets(spent(self._c), before)
        self._inflight_cost = 0.0  # the worst case of the attempts in flight (live) or of the batches running
        self._inflight_out = 0.0
        self._reservations = 0  # live attempts holding a worst case in _inflight_*
        self._in_ratio = 1.0
        return len(counted)

    def _repriced(self, row: dict) -> dict:
        """`row` with the tokens it was billed at no price (a run on a model that had none) counted at this run's
        price, in its cost and its abandoned attempts' worst case: a cost computed at an unknown price is no cost, so
        a budget given with --price after such a run counts what those calls cost, not $0. Only those: a cost computed
        at a known price stands as journaled when the price changes (the table updated, another --price), as that is
        what the price in force billed (providers price later calls, not past ones) and a resumed run's budget must
        not move under it. Priced on every reading, never written back: a summary (`Journal.summary`, `spent_before`
        of a build) with the same prices counts the same."""
        if not self._priced:  # still no price: they stay uncounted ($0), as this run's own calls
            return row
        model = row["model"]
        return {**row, "cost_usd": row["cost_usd"] + unpriced_usd(
                    model, row["unpriced_input_tokens"], row["unpriced_output_tokens"], self.prices),
                "abandoned_usd": row["abandoned_usd"] + unpriced_usd(
                    model, row["abandoned_unpriced_input_tokens"], row["abandoned_unpriced_output_tokens"], self.prices)}

    @staticmethod
    def _fail_empty_rows(journal: Journal, rows: dict[str, dict]) -> None:
        """Answers an older textbookgen recorded as done though they have no text (`empty_answer`): recorded now as
        the failures they are, what they cost kept, so this run sends them again instead of replaying nothing."""
        now, fixed = time.time(), []
        for key, row in rows.items():
            empty = empty_answer(row["text"], row["finish_reason"]) if row["status"] in DONE_STATUSES else None
            if empty is not None:
                rows[key] = {**row, "status": "failed", "error_class": empty[0], "error": empty[1]}
                fixed.append(("failed", row["text"], row["finish_reason"], row["input_tokens"], row["output_tokens"],
                              row["cost_usd"], row["latency_s"], row["attempts"], empty[1], empty[0],
                              row["response_id"], now, 0.0, 0.0, key))  # nothing billed anew
        if fixed:
            journal.write_results(fixed)
            log.warning("%d answers in the journal have no text (empty, or only reasoning): recorded as failed "
                        "(empty_answer), and sent again", len(fixed))

    @staticmethod
    def _replayed(key: str, row: Mapping[str, Any], answer: Mapping[str, Any], req: ChatRequest) -> ChatResponse:
        """The response a journal row gives; tokens from the row whose `answer` it is (itself, unless reused)."""
        return ChatResponse(
            key=key, text=row["text"], finish_reason=row["finish_reason"], status=row["status"], error=row["error"],
            input_tokens=answer["input_tokens"], output_tokens=answer["output_tokens"],
            latency_s=row["latency_s"] or 0.0, attempts=row["attempts"], cost_usd=row["cost_usd"],
            metadata=req.metadata, reused_from=row["reused_from"], error_class=row["error_class"])

    def _reuse(self, journal: Journal, missing: dict[str, ChatRequest], results: dict[str, ChatResponse]) -> None:
        """Answer, free, the requests whose answer the journal holds under another max_tokens: one that stopped
        on its own within this one (`fits`); recorded under the new key too, so later runs replay it directly.
        Requests waiting in submitted batches are left to them (paid already; the batch answer is collected)."""
        found = journal.natural_stops(list(missing))
        if found:  # seldom: only then are the open batches' keys (every request in flight) read
            waiting = {key for batch in journal.open_batches(self.provider, self.model) for key in batch["keys"]}
            found = {key: rows for key, rows in found.items() if key not in waiting}
        pairs = []
        for key, candidates in found.items():
            source = next((row for row in candidates if fits(row, missing[key].max_tokens)
                           and empty_answer(row["text"], row["finish_reason"]) is None), None)
            if source is not None:
                pairs.append((key, source["key"]))
                results[key] = self._replayed(key, {**source, "cost_usd": 0.0, "latency_s": None, "attempts": 0,
                                                    "reused_from": source["key"]}, source, missing[key])
        if pairs:
            self._add_pending(journal, {key: missing[key] for key, _ in pairs})  # `budget_stopped` left them out
            journal.record_reused(pairs)
            log.info("%d answers reused from the journal, given to the same requests under another max_tokens "
                     "(they stopped on their own within this one): not sent", len(pairs))

    @staticmethod
    def _respond(resp: ChatResponse, req: ChatRequest) -> ChatResponse:
        return resp if resp.metadata is req.metadata else replace(resp, metadata=req.metadata)

    # ----- the run ------------------------------------------------------------------------------
    async def _generate(self, journal: Journal, todo: list[_Item] | Iterator[_Item], results: dict[str, ChatResponse],
                        abandoned: Billed, resent: Billed, total: int | None = None, before: Spend | None = None) -> None:
        """The run proper: `todo` a list, or an iterator a batch run pulls as batches can go (`run_windows`, with the
        `total` it holds and what was spent `before` it)."""
        provider = make_provider(self.provider, self.model, api_key=self._api_key, base_url=self.base_url,
                                 timeout=self.timeout_s * TIMEOUT_CAP,  # the engine times attempts itself
                                 attempt_timeout_s=self.timeout_s)
        self._secrets = provider.secrets
        self._provider = provider
        server = self.base_url or str(provider.client.base_url)  # the SDK's own default, or OPENAI_BASE_URL's
        shared = SharedRecord.open(budget_id(self.provider, server, provider.secrets, self.model,
                                             astuple(self.limits)),
                                   AdmissionController.SHARED_SIZE) if self.share_limits and not self.batch else None
        self._admission = AdmissionController(self.limits, self.concurrency, shared=shared)
        self._writer = JournalWriter(journal)
        self._results = results
        self._fatal: FatalProviderError | None = None
        self._crash: BaseException | None = None
        self._budget_note: str | None = None
        self._tasks: set[asyncio.Task] = set()
        self._on_wire: set[asyncio.Task] = set()
        self._reached = False  # has the server answered anything yet (an error counts)?
        self._unanswered = 0  # attempts that got no answer at all before it did
        self._finished = 0  # requests this run sent and finished, for the error rate
        self._failures: Counter[str] = Counter()
        self._examples: dict[str, str] = {}  # the first error message of each failure class
        self._rejections: set[str] = set()  # the failure classes `answer_check` gave
        self._gate = BudgetGate()  # attempts waiting for room in the budgets, in line
        self._in_batches = 0
        self._collecting = self.batch  # answers come from batches (`collected`): a batch run's all come so
        counted = self._start_budgets(results, abandoned, resent, before)
        total = counted + (len(todo) if total is None else total)
        display = poll_log = None
        if self._stage() is not None:  # one line over the stage's runs, not one per run
            display = self._stage().run(self._live_stats)
        elif self.progress:
            from textbookgen.progress import RunProgress

            display = RunProgress(total, self._live_stats, description=f"{self.provider}:{self.model}")
        if self.batch and not (display and display.visible):  # hours between answers, no live line: log lines
            from textbookgen.progress import PollLog

            poll_log = PollLog(total, self._live_stats, description=f"{self.provider}:{self.model}",
                               to_stderr=self.progress)
        self._batches: BatchRunner | None = None
        t0 = time.monotonic()
        self._writer.start()
        if display:
            display.start()
        try:
            if self.batch:
                self._batches = BatchRunner(self, journal, self.batch_limits, on_poll=poll_log)
                await self._batches.run(todo)
            else:
                await self._dispatch(await self._collect_batches(journal, todo))
        finally:
            try:
                await self._shutdown()
            finally:  # even when the journal could not be written: close the client, report
                if display:
                    await display.stop()
                await provider.aclose()
                self._report(t0, total)
                if hasattr(provider, "answers"):  # several replicas: what each answered, to spot a sick node
                    self.stats["answers_by_replica"] = provider.answers
        if self._fatal is not None:
            raise self._fatal

    @staticmethod
    def _counts(results: dict[str, ChatResponse], abandoned: Billed, resent: Billed) -> dict[str, Any]:
        """A run's counters at its start: what the journal answered (`replayed`) and what billed failures cost that
        its answers do not show (`resent`, see `_replay`; in `replayed_usd`, earlier runs' spend), nothing sent yet."""
        replayed = list(results.values())
        billed = [r for r in replayed if r.reused_from is None]  # a reused answer was paid for once, elsewhere
        cost = sum(r.cost_usd for r in replayed) + resent.usd  # a reused row's: what a failure before it cost
        tokens_out = sum(r.output_tokens for r in billed) + resent.output_tokens
        # abandoned_*: earlier runs' (journaled with these requests, `prior_abandoned_*`) and this run's
        return {"done": len(replayed), "sent": 0, "collected": 0, "orphans": 0, "ok": 0, "truncated": 0, "failed": 0,
                "empty": 0, "skipped_budget": 0, "retries": 0, "timed_out": 0, "interrupted": 0, "garbled": 0, "rejected": 0,
                "abandoned_usd": abandoned.usd, "abandoned_output_tokens": abandoned.output_tokens,
                "abandoned_input_tokens": abandoned.input_tokens, "cost_usd": cost,
                "input_tokens": sum(r.input_tokens for r in billed) + resent.input_tokens, "output_tokens": tokens_out,
                "replayed": len(replayed), "reused": len(replayed) - len(billed), "replayed_usd": cost,
                "replayed_output_tokens": tokens_out, "prior_abandoned_usd": abandoned.usd,
                "prior_abandoned_output_tokens": abandoned.output_tokens,
                "prior_abandoned_input_tokens": abandoned.input_tokens}

    def _report(self, t0: float, total: int) -> None:
        """`stats` of the run that ends now (also one the journal answered whole), and its summary in the log."""
        adm = self._admission
        self.stats = {**self._c, "elapsed_s": time.monotonic() - t0, "total": total,
                      "rate_limited": adm.rate_limited, "concurrency": int(adm.concurrency.limit),
                      "limits": adm.limits, "headers_seen": adm.headers_seen}
        if self._stage() is not None:
            self._stage().add(self.stats)
        self._log_summary()

    def _stage(self) -> StageProgress | None:
        """`stage_progress` while its stage is open: a run after `close` draws its own line, not the closed one's."""
        return self.stage_progress if self.stage_progress is not None and not self.stage_progress.closed else None

    async def _collect_batches(self, journal: Journal, todo: list[_Item]) -> list[_Item]:
        """A live run's requests that an earlier batch run submitted: the provider runs and bills those batches
        whoever collects them, so they are not sent again. Ended batches are collected now (at the batch price);
        returns the requests left to send, or stops the run if some still wait in running batches."""
        keys = {item.key for item in todo}
        if not any(keys.intersection(row["keys"]) for row in journal.open_batches(self.provider, self.model)):
            return todo
        items = {item.key: item for item in todo}
        try:
            with self._batch_prices():
                running = await BatchRunner(self, journal).collect_open(items)
        except RetryableError as exc:
            raise FatalProviderError(f"cannot check the {self.provider} batches an earlier --batch run submitted "
                                     f"({exc}); nothing was sent: rerun to try again") from exc
        waiting = [b for b in running if keys.intersection(b["keys"])]
        if waiting:
            n = sum(len(keys.intersection(b["keys"])) for b in waiting)
            ids = ", ".join(b["batch_id"] for b in waiting)
            answered, size = sum(b["answered"] for b in waiting), sum(len(b["keys"]) for b in waiting)
            raise FatalProviderError(
                f"{n} of these requests are in {len(waiting)} {self.provider} batches still running ({ids}; "
                f"{answered:,} of their {size:,} requests answered there so far), "
                "submitted and paid for by an earlier --batch run; nothing was sent: rerun with --batch (batch=True) "
                "to wait for them and collect their answers, or cancel them (textbookgen journal "
                f"{self.journal_path or 'JOURNAL'} --cancel-batches) and rerun: what they leave unanswered goes live")
        left = [item for item in todo if item.key not in self._results]
        for item in left:  # a batch round does not count as a live attempt
            item.attempts = 0
        return left

    @contextlib.contextmanager
    def _batch_prices(self) -> Iterator[None]:
        """Answers collected from batches by a live run cost what the provider billed: the batch price."""
        full, rate = (self.price_in, self.price_out), self._rate
        self.price_in, self.price_out = (p * BATCH_DISCOUNT for p in full)
        self._rate, self._collecting = BATCH_DISCOUNT, True
        try:
            yield
        finally:
            self.price_in, self.price_out = full
            self._rate, self._collecting = rate, self.batch

    async def _dispatch(self, todo: list[_Item]) -> None:
        """Start one task per request, at most 2x concurrency alive (the rest wait here, costing no
        memory per request); each task retries itself and never holds a slot while backing off."""
        room = asyncio.Semaphore(2 * self.concurrency + 8)
        tasks = self._tasks
        loop = asyncio.get_running_loop()
        for index, item in enumerate(todo):
            if self._fatal is not None or self._crash is not None:
                break
            if self._budget_note is not None:
                for rest in todo[index:]:
                    self._skip(rest)
                break
            await room.acquire()
            task = loop.create_task(self._process(item))
            tasks.add(task)
            task.add_done_callback(lambda t: (tasks.discard(t), room.release(), self._check_crash(t)))
        while tasks:
            await asyncio.wait(list(tasks))
        if self._crash is not None:
            raise self._crash

    def _check_crash(self, task: asyncio.Task) -> None:
        """A bug (not a provider error) in a request task stops the run instead of vanishing."""
        if not task.cancelled() and task.exception() is not None and self._crash is None:
            self._crash = task.exception()
            for other in list(self._tasks):
                other.cancel()

    async def _shutdown(self) -> None:
        """Cancel what is still running (Ctrl-C, fatal error) and commit everything that finished."""
        pending = [t for t in self._tasks if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        await self._writer.close()

    async def _process(self, item: _Item) -> None:
        try:
            async for attempt in AsyncRetrying(stop=stop_after_attempt(self.max_attempts), wait=self._wait,
                                               retry=retry_if_exception_type(RetryableError), reraise=True):
                with attempt:
                    completion, latency = await self._attempt(item)
        except RetryableError as exc:
            failure = self._finish_failed(item, f"gave up after {item.attempts} attempts: {exc}", "transient")
        except ItemError as exc:
            failure = self._finish_failed(item, str(exc), exc.error_class)
        except BudgetExhausted:
            self._skip(item)
            return
        except FatalProviderError as exc:
            self._fail_run(exc)
            return
        else:
            try:  # its cost is booked before its reservation makes room for others
                failure = self._finish(item, completion, latency)
            finally:
                self._release(item)
            if failure is None:
                failure = self._rejected(self._results[item.key])
        self._watch_errors(failure, self._results[item.key].error)

    def _rejected(self, resp: ChatResponse) -> str | None:
        """Why `answer_check` finds a paid answer unusable, or None; its start is the example the stop names."""
        reason = self.answer_check(resp) if self.answer_check is not None else None
        if reason is not None:
            self._c["rejected"] += 1
            self._rejections.add(reason)
            self._examples.setdefault(reason, f"answer {resp.answer[:200]!r}")
        return reason

    def _watch_errors(self, failure: str | None, error: str | None) -> None:
        """The circuit breaker: a run whose requests mostly fail (a parameter the model rejects, a prompt
        format it refuses) stops instead of walking every request through the same error."""
        if self.max_error_rate is None or self._fatal is not None:
            return
        self._finished += 1
        if failure is not None:
            self._failures[failure] += 1
            self._examples.setdefault(failure, error or "no message")
        failed = sum(self._failures.values())
        # failures come back sooner than answers: the requests still on the wire count as the answers they may be
        if self._finished < self.error_window or failed <= self.max_error_rate * (self._finished + len(self._on_wire)):
            return
        common, count = self._failures.most_common(1)[0]
        if common in self._rejections:
            again = "rerun: the answers are journaled, so a fixed parser reads them free and the rest are sent"
        elif common in PERMANENT_ERRORS:
            again = "rerun with retry_failed=True (--retry-failed) to re-send the failed ones"
        else:
            again = "a plain rerun re-sends them"
        self._fail_run(FatalProviderError(
            f"stopped early: {failed} of the {self._finished} requests finished so far failed "
            f"(max_error_rate={self.max_error_rate:g}), {count} of them {common}, e.g. {self._examples[common][:300]}; "
            f"fix the cause, then {again} (max_error_rate=None, `--max-error-rate 1` or a recipe's provider.max_error_rate: null turns this check off)"))

    def _wait(self, state) -> float:
        """Exponential backoff with jitter, but never sooner than the server's Retry-After."""
        base = self._jitter(state)
        exc = state.outcome.exception() if state.outcome else None
        hint = getattr(exc, "retry_after", None)
        self._c["retries"] += 1
        return max(base, min(hint, 300.0)) if hint is not None else base

    async def _attempt(self, item: _Item):
        """One admitted HTTP exchange. Raises RetryableError / ItemError / FatalProviderError / BudgetExhausted.
        An answer comes back with its budget reservation still held: `_process` releases it once it is booked."""
        req = item.req
        await self._reserve(item)
        admission = self._admission
        try:
            ticket = await admission.acquire(item.est_in * self._in_ratio, req.max_tokens)
        except BaseException:
            self._release(item)
            raise
        if self._fatal is not None:
            admission.cancel(ticket)
            self._release(item)
            raise asyncio.CancelledError
        try:  # committed before it goes out: a run killed while it is on the wire leaves it counted
            self._writer.on_wire(item.key, self._journaled_usd(item.reserved), *item.reserved[1:])
        except BaseException:
            admission.cancel(ticket)
            self._release(item)
            raise
        item.attempts += 1
        self._c["sent"] += 1
        t_send = time.monotonic()
        task = asyncio.current_task()
        self._on_wire.add(task)
        try:
            completion = await self._timed(req, t_send)
        except RetryableError as exc:
            if isinstance(exc, NoAnswerInTime):  # the provider may still be generating it: its tokens stay taken
                admission.abandon(ticket)
                self._abandoned(item, "timed_out")
            elif isinstance(exc, GarbledAnswer):  # billed, but its usage is unreadable: counted at worst case
                admission.abandon(ticket)
                self._abandoned(item, "garbled")
            else:
                admission.fail(ticket, rate_limited=exc.rate_limited, headers=exc.headers,
                               retry_after=exc.retry_after, answered=exc.reached)
                self._settled_unbilled(item)
            if self._fatal is not None:  # the run is stopping: no retry; the request stays pending
                raise asyncio.CancelledError from exc
            self._check_reachable(exc)
            raise
        except ItemError:  # its failed row clears the on-wire record
            self._reached = True
            admission.fail(ticket)
            self._release(item)
            raise
        except asyncio.CancelledError:  # Ctrl-C, a cancelled run: the provider goes on generating it, and bills it
            admission.abandon(ticket)
            self._abandoned(item, "interrupted")
            raise
        except BaseException:
            admission.cancel(ticket)
            self._settled_unbilled(item)
            raise
        finally:
            self._on_wire.discard(task)
        self._reached = True
        admission.complete(ticket, completion.input_tokens, completion.output_tokens, completion.headers)
        self._learn_prompt_size(item, completion.input_tokens)
        return completion, time.monotonic() - t_send

    def _learn_prompt_size(self, item: _Item, input_tokens: int) -> None:
        """Move the prompt-size correction toward the input tokens the provider reported for `item` (live answers and
        batch results alike), so budgets and rate limits rest on real usage, not on 4 characters a token."""
        if item.est_in and input_tokens:
            self._in_ratio += 0.05 * (input_tokens / item.est_in - self._in_ratio)

    async def _timed(self, req: ChatRequest, t_send: float):
        """`provider.complete` within the Generator's timeout, read afresh while waiting: when another attempt times
        out and the timeout grows, this one waits longer too instead of being abandoned (and paid twice)."""
        call = asyncio.ensure_future(self._provider.complete(req))
        try:
            while (left := t_send + self._timeout - time.monotonic()) > 0:
                done, _ = await asyncio.wait((call,), timeout=left)
                if done:
                    return call.result()
            limit = self._timeout
            self._grow_timeout(limit)  # before any await, so attempts timing out with this one see it
        finally:
            if not call.done():  # timed out, or this run is being cancelled: drop the connection
                call.cancel()
                await asyncio.wait((call,))
        raise NoAnswerInTime(self.provider, limit)

    def _grow_timeout(self, limit_s: float) -> None:
        """Double the Generator's timeout (up to TIMEOUT_CAP x timeout_s) after an attempt got nothing within it;
        later runs start from it, so each window of a build does not abandon (and pay for) attempts to grow it again."""
        grown = min(2 * limit_s, self.timeout_s * TIMEOUT_CAP)
        if grown > self._timeout:
            log.warning("no answer within %g s: waiting up to %g s from now on, also for the requests on the "
                        "wire (an abandoned generation is billed all the same)", round(limit_s, 1), round(grown, 1))
            self._timeout = grown

    def _abandoned(self, item: _Item, why: str) -> None:
        """An attempt given up on ("timed_out"), cut off ("interrupted") or answered unreadably ("garbled"): the
        provider may finish and bill it,
        for its prompt and at most max_tokens of output; the budgets count the worst case it reserved and the totals
        its input tokens as estimated (its real tokens are never known), and the journal keeps both for reruns."""
        c, worst = self._c, item.reserved
        c[why] += 1
        c["abandoned_usd"] += worst.usd
        c["abandoned_output_tokens"] += worst.output_tokens
        c["abandoned_input_tokens"] += worst.input_tokens
        self._writer.put_abandoned(item.key, self._journaled_usd(worst), *worst[1:])
        self._release(item)

    def _journaled_usd(self, worst: Billed) -> float | None:
        """An attempt's worst case in USD as the journal keeps it: None at no price (a $0 that is no cost; a later
        run that has the price counts its tokens, `_replay`)."""
        return worst.usd if self._priced else None

    def _settled_unbilled(self, item: _Item) -> None:
        """An attempt that ended without an answer the provider bills (a 429, a 5xx, a refused key)."""
        self._writer.put_off_wire(item.key)
        self._release(item)

    def _check_reachable(self, exc: RetryableError) -> None:
        """A wrong base_url or a server that is down: once as many attempts as one request may make have
        all gone unanswered, stop (the requests stay pending) instead of walking every request through them.
        A server that takes connections but answers nothing in time is told apart from one that refuses them."""
        self._reached = self._reached or exc.reached
        if not self._reached:
            self._unanswered += 1
            if self._unanswered >= self.max_attempts:
                where = redact(", ".join(self.base_url) if isinstance(self.base_url, (list, tuple))
                               else self.base_url or f"the {self.provider} API", self._secrets)
                if isinstance(exc, NoAnswerInTime):
                    raise FatalProviderError(
                        f"no answer from {where} to {self._unanswered} attempts, the last within {round(exc.limit_s, 1):g} s "
                        "(it takes connections but answers nothing: overloaded, hung, or slower than the timeout); "
                        "check the server, or raise timeout_s (--timeout), then rerun") from exc
                if isinstance(exc, CannotConnect):
                    raise FatalProviderError(f"cannot connect to {where}: {self._unanswered} attempts ({exc.reason}); "
                                             "check base_url and that the server is up, then rerun") from exc
                raise FatalProviderError(f"cannot reach {where}: no answer to {self._unanswered} attempts ({exc}); "
                                         "check base_url and that the server is up, then rerun") from exc

    # ----- budgets ------------------------------------------------------------------------------
    def _budgets(self, recorded: Spend, before: Spend | None = None) -> tuple[float | None, int | None]:
        """This run's budgets over its request set, whose spend so far the journal `recorded`: those given, less
        what is counted beyond that record (`_beyond`: `before`, else `spent_before`, less the record, and
        `spent_aside`)."""
        before, aside = before or self.spent_before or recorded, self.spent_aside or Spend(0.0, 0)
        self._beyond = Spend(before.usd - recorded.usd + aside.usd,
                             before.output_tokens - recorded.output_tokens + aside.output_tokens)
        cost, out = self.max_cost_usd, self.max_output_tokens
        return (None if cost is None else max(0.0, cost - self._beyond.usd),
                None if out is None else max(0, out - self._beyond.output_tokens))

    def _key(self, req: ChatRequest) -> str:
        """`req`'s journal key: its canonical request to this provider and model."""
        return request_key(canonical_request(self.provider, self.model, req))

    @staticmethod
    def _unique(keyed: Iterable[tuple[str, ChatRequest]]) -> dict[str, ChatRequest]:
        """Each key's first request, in the order first seen (a key repeated in one run is sent once)."""
        unique: dict[str, ChatRequest] = {}
        for key, req in keyed:
            unique.setdefault(key, req)
        return unique

    def _item(self, key: str, req: ChatRequest) -> _Item:
        """A request to send, with what its worst case needs: its prompt's estimate and dearest input rate."""
        return _Item(key, req, estimate_input_tokens(req, self.provider, self.model), self._input_rate(req))

    def _input_rate(self, req: ChatRequest) -> float:
        """The dearest an input token of `req` may be billed, as a fraction of the input price: a request that asks
        for prompt-cache writes may be billed the write premium on its whole prompt (Anthropic: 1.25x for 5 minutes,
        2x for an hour), as `_cost` prices the writes it reports; 1 without."""
        ttls = cache_write_ttls([req.messages, req.params])
        return max([1.0, *(self.cache_write_1h_rate if ttl == "1h" else self.cache_write_rate for ttl in ttls)])

    def _worst_case(self, item: _Item) -> Spend:
        """The most one attempt may cost: its prompt (as estimated, at its dearest rate: `_Item.in_rate`) and
        max_tokens of output."""
        out = item.out
        return Spend(item.est_in * self._in_ratio * item.in_rate * self.price_in + out * self.price_out, out)

    def _over_budget(self, more: Spend) -> str | None:
        """Why `more` does not fit in the budgets beside what is spent and what is in flight; None when it fits.
        It names the budget given and all spent against it: earlier runs' share (the journal's record of these
        requests, and what is counted beyond it) apart, never the remainder this run was left."""
        c = self._c
        usd, used = spent(c)
        abandoned = ", timed-out, interrupted or garbled attempts counted at max_tokens" if c["abandoned_output_tokens"] else ""
        beyond = self._beyond
        if self._max_cost_usd is not None and usd + self._inflight_cost + more.usd > self._max_cost_usd:
            flight = f", ${self._inflight_cost:,.4f} held at worst case for requests in flight" if self._inflight_cost else ""
            earlier = beyond.usd + c["replayed_usd"] + c["prior_abandoned_usd"]
            by = f", ${earlier:,.4f} of it by earlier runs" if earlier > 0 else ""
            return (f"max_cost_usd=${self.max_cost_usd:,.4f} reached (spent ${beyond.usd + usd:,.4f}{by}{abandoned}"
                    f"{flight}; ${more.usd:,.4f} more would not fit)")
        if self._max_output_tokens is not None and used + self._inflight_out + more.output_tokens > self._max_output_tokens:
            flight = f", ~{self._inflight_out:,.0f} held at worst case for requests in flight" if self._inflight_out else ""
            earlier = beyond.output_tokens + c["replayed_output_tokens"] + c["prior_abandoned_output_tokens"]
            by = f", {earlier:,} of them by earlier runs" if earlier > 0 else ""
            return (f"max_output_tokens={self.max_output_tokens:,} reached (used {beyond.output_tokens + used:,}{by}"
                    f"{abandoned}{flight}; {more.output_tokens:,.0f} more would not fit)")
        return None

    async def _reserve(self, item: _Item) -> None:
        """Hold this attempt's worst case against the budgets, waiting while it does not fit for attempts in flight
        to settle (most answer far below max_tokens, making room), in line behind those waiting already
        (`BudgetGate`). The budget is reached only when nothing is in flight and it still does not fit (or all of it
        is spent)."""
        async with self._gate:
            while True:
                if self._budget_note is not None:
                    raise BudgetExhausted
                worst = self._worst_case(item)
                note = self._over_budget(worst)
                if note is None:
                    break
                usd, used = spent(self._c)
                if not self._reservations or (self._max_cost_usd is not None and usd >= self._max_cost_usd) or (
                        self._max_output_tokens is not None and used >= self._max_output_tokens):
                    self._stop_launching(note)
                await self._gate.room()
            # taken before the next in line looks at what is left; with its prompt as estimated now, which the
            # totals count if the attempt is abandoned
            item.reserved = Billed(*worst, round(item.est_in * self._in_ratio))
            self._reservations += 1
            self._inflight_cost += worst.usd
            self._inflight_out += worst.output_tokens

    def _release(self, item: _Item) -> None:
        """Give back an attempt's reservation (its cost, if any, is booked by now) and wake the first waiting for room."""
        if item.reserved is None:
            return
        worst, item.reserved = item.reserved, None
        self._reservations -= 1
        self._inflight_cost -= worst.usd
        self._inflight_out -= worst.output_tokens
        if not self._reservations and not self._in_batches:  # none in flight: no rounding left over
            self._inflight_cost = self._inflight_out = 0.0
        self._gate.open()

    def _stop_launching(self, note: str) -> None:
        self._budget_note = note
        log.warning("budget: %s; launching no more requests (they come back status skipped_budget; "
                    "raise the budget and rerun to continue: finished work is kept)", note)
        self._gate.open()  # those waiting for room stop too, each in turn
        raise BudgetExhausted

    # ----- outcomes -----------------------------------------------------------------------------
    def _result_row(self, key: str, completion, latency: float, attempts: int) -> tuple:
        """The journal row of an answer (see journal._UPDATE): refusals, filtered output and answers with no text
        (`empty_answer`) are failures, billed all the same; a length stop is kept as truncated. The text is kept
        as sent, reasoning included."""
        cost = self._cost(completion)
        finish = completion.finish_reason
        error = error_class = None
        if completion.refusal or finish in ("content_filter", "refusal"):
            status, error_class = "failed", "refusal" if finish != "content_filter" else "content_filter"
            error = redact(f"{finish}: {completion.refusal or 'output blocked by the provider'}", self._secrets)
        elif (empty := empty_answer(completion.text, finish, completion.reasoning)) is not None:
            status, (error_class, error) = "failed", empty
        elif finish == "length":
            status = "truncated"
        else:
            status = "ok"
        unpriced = (0.0, 0.0) if self._priced else (self._input_units(completion) * self._rate,
                                                     completion.output_tokens * self._rate)
        return (status, completion.text, finish, completion.input_tokens, completion.output_tokens, cost, latency,
                attempts, error, error_class, completion.response_id, time.time(), *unpriced, key)

    def _cost(self, completion) -> float:
        """USD of one answer: cached input at its own rate (cheaper to read, dearer to write, dearer still to keep
        for an hour)."""
        return self._input_units(completion) * self.price_in + completion.output_tokens * self.price_out

    def _input_units(self, completion) -> float:
        """An answer's input tokens weighted by the rate each is billed, as a fraction of the input price."""
        read, write = completion.cache_read_tokens, completion.cache_write_tokens
        hour = completion.cache_write_1h_tokens  # of `write`
        fresh = completion.input_tokens - read - write
        return fresh + read * self.cache_read_rate + (write - hour) * self.cache_write_rate + hour * self.cache_write_1h_rate

    def _finish(self, item: _Item, completion, latency: float) -> str | None:
        """Record an answer; returns its failure class (a refusal, filtered output, no text), None when it is one.
        An empty answer is not retried within the run: the identical request (its seed included; often at
        temperature 0) tends to come back the same and be billed again, and the usual causes (thinking that eats
        max_tokens, a chat template or stop sequence) need a change first. The next run re-sends it."""
        row = self._result_row(item.key, completion, latency, item.attempts)
        status, cost, error = row[0], row[5], row[8]
        resp = ChatResponse(key=item.key, text=completion.text, finish_reason=completion.finish_reason,
                            status=status, error=error, input_tokens=completion.input_tokens,
                            output_tokens=completion.output_tokens, latency_s=latency, attempts=item.attempts,
                            cost_usd=cost, metadata=_metadata(item), error_class=row[9])
        self._keep(resp)
        c = self._c
        c[status] += 1
        c["collected"] += self._collecting
        c["empty"] += row[9] in EMPTY_ERRORS
        c["done"] += 1
        c["cost_usd"] += cost
        c["input_tokens"] += completion.input_tokens
        c["output_tokens"] += completion.output_tokens
        self._writer.put(row)
        return row[9]

    def _keep(self, resp: ChatResponse) -> None:
        """Hold a request's outcome for the run's answer; a run over windows (`run_windows`) holds none: its
        outcomes are in the journal, where a later run's replay reads them."""
        if self._keep_results:
            self._results[resp.key] = resp

    def _finish_failed(self, item: _Item, error: str, error_class: str) -> str:
        error = redact(error, self._secrets)
        self._keep(ChatResponse(key=item.key, text=None, finish_reason=None, status="failed", error=error,
                                attempts=item.attempts, metadata=_metadata(item), error_class=error_class))
        self._c["failed"] += 1
        self._c["done"] += 1
        self._writer.put(self._failed_row(item.key, error, error_class, item.attempts))
        return error_class

    @staticmethod
    def _failed_row(key: str, error: str, error_class: str, attempts: int) -> tuple:
        """The journal row of a request that failed (see journal._UPDATE); `error` already redacted."""
        return ("failed", None, None, 0, 0, 0.0, None, attempts, error, error_class, None, time.time(), 0.0, 0.0, key)

    def _skip(self, item: _Item) -> None:
        """Not sent because of a budget; the journal row stays pending so a rerun picks it up."""
        self._keep(ChatResponse(key=item.key, text=None, finish_reason=None, status="skipped_budget",
                                error=self._budget_note, attempts=item.attempts, metadata=_metadata(item)))
        self._c["skipped_budget"] += 1

    def _fail_run(self, exc: FatalProviderError) -> None:
        """Stop sending. Requests already on the wire are billed whatever we do, so they finish (within
        the run's timeout) and are journaled; the rest are cancelled and stay pending for the rerun. Ctrl-C
        still cancels everything at once."""
        if self._fatal is None:
            self._fatal = exc
            log.info("stopping the run: %s (waiting for %d requests on the wire)", exc, len(self._on_wire))
            current = asyncio.current_task()
            for task in list(self._tasks):
                if task is not current and task not in self._on_wire:
                    task.cancel()

    # ----- reporting ----------------------------------------------------------------------------
    def _live_stats(self) -> dict:
        adm = self._admission
        budgets = {"max_cost_usd": self._max_cost_usd, "max_output_tokens": self._max_output_tokens,
                   "max_cost_usd_given": self.max_cost_usd, "max_output_tokens_given": self.max_output_tokens}
        if self.batch:  # requests waiting inside submitted batches, and what the provider has done with them so far
            waiting = self._batches.waiting() if self._batches else {}
            return {**self._c, **budgets, **waiting, "batch": True, "rate_limited": 0, "in_flight": self._in_batches,
                    "concurrency": self._in_batches, "rpm_limit": None}
        return {**self._c, **budgets, "rate_limited": adm.rate_limited, "in_flight": adm.concurrency.in_use,
                "concurrency": int(adm.concurrency.limit), "rpm_limit": adm.limits["requests"],
                "budget_held": self._gate.waiting}

    def _log_summary(self) -> None:
        s = self.stats
        log.info("%s:%s — %d ok, %d truncated, %d failed, %d skipped (budget), %d replayed from journal (%d of "
                 "them reused from another max_tokens, free); %d sent, %d answers collected from batches, %d retries, "
                 "%d rate-limited; $%.4f, %d in / %d out tokens, %.1f s", self.provider, self.model, s["ok"],
                 s["truncated"], s["failed"], s["skipped_budget"], s["replayed"], s["reused"], s["sent"],
                 s["collected"], s["retries"], s["rate_limited"],
                 s["cost_usd"], s["input_tokens"], s["output_tokens"], s["elapsed_s"])
        if s["timed_out"] or s["interrupted"] or s["garbled"]:
            log.warning("%d attempts timed out, %d were interrupted on the wire and %d answered with an unreadable "
                        "body; the provider may bill them too (at most $%.4f, ~%d input and %d output tokens, counted "
                        "against the budgets and journaled apart from the answers' cost)", s["timed_out"],
                        s["interrupted"], s["garbled"],
                        s["abandoned_usd"] - s["prior_abandoned_usd"],
                        s["abandoned_input_tokens"] - s["prior_abandoned_input_tokens"],
                        s["abandoned_output_tokens"] - s["prior_abandoned_output_tokens"])
        if s["empty"]:
            log.warning("%d answers had no text (empty, or only reasoning): billed, and failed (empty_answer, or "
                        "empty_answer_reasoning after reasoning); the next run sends them again", s["empty"])
        if self._budget_note:
            log.warning("budget stop: %s; %d requests skipped", self._budget_note, s["skipped_budget"])
