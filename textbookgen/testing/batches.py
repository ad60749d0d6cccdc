"""Batch jobs for the provider emulator: OpenAI's Batch API (with the files it reads and writes) and
Anthropic's Message Batches API.

Bookkeeping and wire objects only; `textbookgen.testing.emulator` serves the routes and answers each request
on its online generation path. A job's lifecycle is a function of time, worked out whenever it is looked at:
an OpenAI batch validates for the first quarter of its latency (an invalid input file, or OpenAI's
enqueued-token limit, fails it then), both kinds run until the latency is up, then end. Its requests run one
after another over the running time and are answered, and billed, as they finish, so a cancel keeps the
answers of those that ran (the partial output both providers give) and cancels the rest.
"""

from __future__ import annotations

import json
import re
import secrets
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

OPENAI_ENDPOINT = "/v1/chat/completions"
"""The one endpoint the emulator batches."""
CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
"""Anthropic's rule for a request's custom_id."""
WINDOW_S = 24 * 3600
"""Both providers' completion window: a job's `expires_at` is this long after its creation."""
EXPIRED = {"code": "batch_expired",
           "message": "This request could not be executed before the completion window expired."}
CANCELLED = {"code": "batch_cancelled", "message": "This request was not executed because the batch was cancelled."}
TOKEN_LIMIT = "token_limit_exceeded"
"""OpenAI's batch-level error code when a model's enqueued-token limit is reached (openai-python #2084)."""

Answer = Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]
"""answer(request body) -> (HTTP status, response body): what the online route would have answered."""


def parse_outcome(spec: str) -> float | None:
    """'complete' -> None; 'expire:<fraction>' -> the fraction of requests answered before the batch expires."""
    kind, _, arg = spec.partition(":")
    if kind == "complete" and not arg:
        return None
    try:
        fraction = float(arg) if kind == "expire" else -1.0
    except ValueError:
        fraction = -1.0
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"bad batch outcome {spec!r}; use 'complete' or 'expire:<fraction in [0, 1]>'")
    return fraction


def timestamp(epoch: float) -> str:
    """Message Batches times: RFC 3339 with microseconds, as Anthropic sends them."""
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass
class StoredFile:
    """A file of the OpenAI Files API: an uploaded batch input, or a batch's output or error file."""

    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def wire(self) -> dict[str, Any]:
        return {"id": self.id, "object": "file", "bytes": len(self.data), "created_at": self.created_at,
                "filename": self.filename, "purpose": self.purpose, "status": "processed",
                "expires_at": None, "status_details": None}


@dataclass
class Result:
    """What became of one request: 'succeeded' or 'errored' (with the HTTP status and body the online route
    would have answered), or 'expired' or 'canceled' (never run)."""

    custom_id: str
    kind: str
    status: int = 0
    body: dict[str, Any] | None = None


@dataclass
class Job:
    """One batch, of either provider."""

    id: str
    requests: list[tuple[str, dict[str, Any]]]
    """(custom_id, request body), in submission order."""
    created: float
    latency_s: float
    answered: int
    """How many requests (the first ones) are answered if the job runs to its end; the rest expire."""
    expires: bool
    errors: list[dict[str, Any]] = field(default_factory=list)
    """OpenAI input-file problems: the batch fails once validated and runs nothing."""
    fields: dict[str, Any] = field(default_factory=dict)
    """Provider fields echoed back as given (OpenAI: endpoint, input_file_id, completion_window, metadata, model)."""
    cancelled: float | None = None
    ended: float | None = None
    results: list[Result] = field(default_factory=list)
    output_file_id: str | None = None
    error_file_id: str | None = None

    @property
    def validated(self) -> float:
        return self.created + self.latency_s / 4

    @property
    def due(self) -> float:
        """When the job ends on its own."""
        return self.validated if self.errors else self.created + self.latency_s

    def finishes(self, i: int) -> float:
        """When request `i` (one of the `answered`) finishes: the requests run one after another from
        validation to the end of the latency."""
        return self.validated + (i + 1) / len(self.requests) * (self.due - self.validated)

    def settle(self, now: float, answer: Answer) -> bool:
        """Answer the requests that have finished by `now`, in order, and end the job if its time has come
        (the requests never answered expire then); True if it ended just now."""
        if self.ended is not None or self.errors and now < self.due:
            return False
        while len(self.results) < self.answered and self.finishes(len(self.results)) <= now:
            custom_id, body = self.requests[len(self.results)]
            self.results.append(_answered(custom_id, answer(body)))
        if now < self.due:
            return False
        self.results += [Result(custom_id, "expired") for custom_id, _ in self.requests[len(self.results):]]
        self.ended = self.due
        return True

    def cancel(self, now: float) -> None:
        """End the job at once (settled to `now` first): the requests that ran keep their answers, the rest
        are canceled."""
        self.cancelled = self.ended = now
        self.results += [Result(custom_id, "canceled") for custom_id, _ in self.requests[len(self.results):]]

    def enqueued(self, now: float) -> bool:
        """Whether the job still counts against OpenAI's enqueued-token limit: accepted and not yet ended."""
        return not self.errors and self.ended is None and now < self.due

    def tally(self, ran: bool = False) -> Counter[str]:
        """Results by kind; `ran`: only of the requests that ran (what a job still going or canceling shows)."""
        return Counter(r.kind for r in self.results if not ran or r.kind in ("succeeded", "errored"))


def _answered(custom_id: str, answer: tuple[int, dict[str, Any]]) -> Result:
    status, body = answer
    return Result(custom_id, "succeeded" if status == 200 else "errored", status, body)


def token_limit_errors(jobs: Iterable[Job], requests: Sequence[tuple[str, dict[str, Any]]],
                       count: Callable[[dict[str, Any]], int], limit: int | None, now: float) -> list[dict[str, Any]]:
    """OpenAI's enqueued-token limit (per model and organisation): the batch-level error a new batch of
    `requests` fails validation with when the prompt tokens (`count` of each request body) of the unfinished
    batches of its model plus its own pass `limit`; none under the limit or without one (None)."""
    if limit is None or not requests:
        return []
    model = requests[0][1].get("model")
    queued = sum(count(body) for job in jobs if job.enqueued(now) and job.fields.get("model") == model
                 for _, body in job.requests)
    if queued + sum(count(body) for _, body in requests) <= limit:
        return []
    return [{"code": TOKEN_LIMIT, "line": None, "param": None,
             "message": f"Enqueued token limit reached for {model} in organization org-emulator. Limit: {limit:,} "
                        "enqueued tokens. Please try again once some in_progress batches have been completed."}]


def page(ids: Sequence[str], limit: int, after: str | None = None,
         before: str | None = None) -> tuple[list[str], bool]:
    """Up to `limit` of `ids` (newest first) after or before a cursor id, and whether more lie beyond them.
    An unknown cursor gives an empty page."""
    if before is not None:
        end = ids.index(before) if before in ids else 0
        return list(ids[max(0, end - limit):end]), end > limit
    start = 0
    if after is not None:
        start = ids.index(after) + 1 if after in ids else len(ids)
    return list(ids[start:start + limit]), start + limit < len(ids)


# ----- OpenAI ---------------------------------------------------------------------------------------

def openai_requests(data: bytes) -> tuple[list[tuple[str, dict[str, Any]]], list[dict[str, Any]]]:
    """The (custom_id, body) requests of an input file, and its problems ({code, message, param, line}),
    any of which fails the whole batch as OpenAI does."""
    requests: list[tuple[str, dict[str, Any]]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    for line_no, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        model = requests[0][1].get("model") if requests else None
        problem = _line_problem(row, seen, model, first=not requests)
        if problem is not None:
            code, message, param = problem
            errors.append({"code": code, "message": message, "param": param, "line": line_no})
            continue
        seen.add(row["custom_id"])
        requests.append((row["custom_id"], row["body"]))
    if not requests and not errors:
        errors.append({"code": "empty_file", "message": "The batch input file is empty.", "param": None,
                       "line": None})
    return requests, errors


def _line_problem(row: Any, seen: set[str], model: Any, first: bool) -> tuple[str, str, str | None] | None:
    """(code, message, param) for an input line the Batch API would refuse, else None."""
    if not isinstance(row, dict):
        return "invalid_json_line", "This line is not parseable as valid JSON.", None
    for name in ("custom_id", "method", "url", "body"):
        if name not in row:
            return "missing_required_parameter", f"Missing required parameter: '{name}'.", name
    if not isinstance(row["custom_id"], str) or not row["custom_id"]:
        return "invalid_value", "custom_id must be a non-empty string.", "custom_id"
    if row["method"] != "POST":
        return "invalid_value", f"Invalid method {row['method']!r}; only 'POST' is supported.", "method"
    if row["url"] != OPENAI_ENDPOINT:
        return "url_mismatch", f"The url {row['url']!r} does not match the endpoint {OPENAI_ENDPOINT!r}.", "url"
    if not isinstance(row["body"], dict):
        return "invalid_value", "body must be a JSON object.", "body"
    if row["custom_id"] in seen:
        return ("duplicate_custom_id", "The custom_id for this request is a duplicate of another request. "
                "The custom_id parameter must be unique for each request in a batch.", "custom_id")
    if not first and row["body"].get("model") != model:
        return "model_mismatch", f"All requests in a batch must use the same model ({model!r}).", "body.model"
    return None


def openai_batch(job: Job, now: float, *, cancelling: bool = False) -> dict[str, Any]:
    """The Batch object at `now`; `cancelling` renders the answer to the cancel call itself."""
    status = "cancelling" if cancelling else _openai_status(job, now)
    done = job.ended is not None and not cancelling
    end = int(job.ended) if done and job.ended is not None else None
    reached = job.ended if job.ended is not None else now
    tally = job.tally(ran=not done)
    return {
        "id": job.id, "object": "batch", **job.fields,
        "errors": {"object": "list", "data": job.errors} if job.errors else None,
        "status": status,
        "output_file_id": job.output_file_id if done else None,
        "error_file_id": job.error_file_id if done else None,
        "created_at": int(job.created),
        "in_progress_at": int(job.validated) if not job.errors and reached >= job.validated else None,
        "expires_at": int(job.created + WINDOW_S),
        "finalizing_at": end if status in ("completed", "expired") else None,
        "completed_at": end if status == "completed" else None,
        "failed_at": end if status == "failed" else None,
        "expired_at": end if status == "expired" else None,
        "cancelling_at": int(job.cancelled) if job.cancelled is not None else None,
        "cancelled_at": end if status == "cancelled" else None,
        # the requests that ran so far; once ended, failed counts every request not answered with a 200, so
        # completed + failed == total
        "request_counts": {"total": len(job.requests), "completed": tally["succeeded"],
                           "failed": sum(tally.values()) - tally["succeeded"]},
    }


def _openai_status(job: Job, now: float) -> str:
    if job.ended is None:
        return "validating" if now < job.validated else "in_progress"
    if job.cancelled is not None:
        return "cancelled"
    if job.errors:
        return "failed"
    return "expired" if job.expires else "completed"


def openai_output(job: Job) -> tuple[bytes, bytes]:
    """An ended batch's output file (the 200s) and error file (errors, and requests never run), as JSONL."""
    output: list[str] = []
    errors: list[str] = []
    for r in job.results:
        line: dict[str, Any] = {"id": "batch_req_" + secrets.token_hex(16), "custom_id": r.custom_id,
                                "response": None, "error": None}
        if r.kind in ("succeeded", "errored"):
            line["response"] = {"status_code": r.status, "request_id": "req_" + secrets.token_hex(16), "body": r.body}
        else:
            line["error"] = EXPIRED if r.kind == "expired" else CANCELLED
        (output if r.kind == "succeeded" else errors).append(json.dumps(line, ensure_ascii=False))
    return _jsonl(output), _jsonl(errors)


# ----- Anthropic ------------------------------------------------------------------------------------

def anthropic_requests(body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The (custom_id, params) requests of a create call; ValueError (a 400) for a bad or repeated custom_id."""
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests:
        raise ValueError("requests: at least one request is required")
    out: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    for i, request in enumerate(requests):
        entry = request if isinstance(request, dict) else {}
        custom_id, params = entry.get("custom_id"), entry.get("params")
        if not isinstance(custom_id, str) or not CUSTOM_ID.fullmatch(custom_id):
            raise ValueError(f"requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
        if custom_id in seen:
            raise ValueError(f"requests.{i}.custom_id: Duplicate custom_id {custom_id!r}; each request in a "
                             "batch must have a unique custom_id.")
        if not isinstance(params, dict):
            raise ValueError(f"requests.{i}.params: Field required")
        seen.add(custom_id)
        out.append((custom_id, params))
    return out


def anthropic_batch(job: Job, results_url: str, *, canceling: bool = False) -> dict[str, Any]:
    """The MessageBatch object; `canceling` renders the answer to the cancel call itself."""
    ended = job.ended is not None and not canceling
    tally = job.tally(ran=not ended)
    return {
        "id": job.id, "type": "message_batch",
        "processing_status": "ended" if ended else "canceling" if canceling else "in_progress",
        "request_counts": {"processing": len(job.requests) - sum(tally.values()), "succeeded": tally["succeeded"],
                           "errored": tally["errored"], "canceled": tally["canceled"], "expired": tally["expired"]},
        "ended_at": timestamp(job.ended) if ended and job.ended is not None else None,
        "created_at": timestamp(job.created), "expires_at": timestamp(job.created + WINDOW_S),
        "archived_at": None,
        "cancel_initiated_at": timestamp(job.cancelled) if job.cancelled is not None else None,
        "results_url": results_url if ended else None,
    }


def anthropic_results(job: Job) -> bytes:
    """An ended batch's results as JSONL, one MessageBatchIndividualResponse per request."""
    lines = []
    for r in job.results:
        result: dict[str, Any] = {"type": r.kind}
        if r.kind == "succeeded":
            result["message"] = r.body
        elif r.kind == "errored":
            result["error"] = r.body
        lines.append(json.dumps({"custom_id": r.custom_id, "result": result}, ensure_ascii=False))
    return _jsonl(lines)


def _jsonl(lines: list[str]) -> bytes:
    return "".join(line + "\n" for line in lines).encode()
