"""Custom generation tasks in curator's shape: subclass `LLM`, write `prompt(row)` and `parse(row, response)`,
call it on rows.

    class Glossary(LLM):
        response_format = Terms          # optional pydantic model: structured output, validated for you

        def prompt(self, row):
            return f"List the key terms of a lesson on {row['topic']}."

        def parse(self, row, response):  # response: a Terms instance (or the text without response_format)
            return [{"topic": row["topic"], "term": t} for t in response.terms]

    table = Glossary("gpt-4o-mini", journal="run/glossary.sqlite")(rows)   # a polars DataFrame

Everything the engine does comes with it: rate limits, retries, budgets, the crash-safe journal, provider
batch APIs (`batch=True`). Answers are journaled per request, not per task, so editing `parse` and calling
again re-parses the stored answers for free, and a changed prompt pays only for the requests it changes.
Rows whose request failed, or whose answer does not fit `response_format`, are left out of the table and
listed in `.failures`.

Several answers per row: `n=4` makes four requests per row, seeded `seed, seed+1, ...` (0 by default), each its
own journal entry, and the table gets a `sample` column. Raising `n` later pays only for the new samples.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import polars as pl
from pydantic import BaseModel, ValidationError

from textbookgen.engine import ChatRequest, ChatResponse, Generator, sampled

__all__ = ["LLM"]

log = logging.getLogger("textbookgen.llm")


class LLM:
    """Subclass and write `prompt` (and usually `parse`). Keyword arguments beyond the sampling ones go to
    the `Generator` (journal, limits, concurrency, max_cost_usd, batch, base_url, api_key, ...)."""

    response_format: type[BaseModel] | None = None

    def __init__(self, model: str, provider: str = "openai", *, max_tokens: int = 1024,
                 temperature: float | None = None, top_p: float | None = None, system: str | None = None,
                 n: int = 1, seed: int | None = None, **engine: Any) -> None:
        if n < 1:
            raise ValueError(f"n (answers per row) must be at least 1, got {n}")  # before the Generator opens a journal
        self.generator = Generator(provider, model, **engine)
        self.max_tokens, self.temperature, self.top_p, self.system = max_tokens, temperature, top_p, system
        self.n, self.seed = n, seed
        self.failures: list[dict] = []

    def prompt(self, row: Any) -> str | list[dict] | ChatRequest:
        """The request for one row: a user message, a list of chat messages, or a full ChatRequest."""
        raise NotImplementedError(f"{type(self).__name__} must define prompt(self, row)")

    def parse(self, row: Any, response: Any) -> dict | BaseModel | list | None:
        """Output rows for one answer (a dict, a pydantic model, a list of them, or None to drop the row).
        `response` is the `response_format` instance, or the text. Default: the row's fields + `response`."""
        base = dict(row) if isinstance(row, Mapping) else {"row": row}
        return {**base, "response": response.model_dump() if isinstance(response, BaseModel) else response}

    def __call__(self, rows: Iterable[Any] | pl.DataFrame) -> pl.DataFrame:
        """Generate for every row and return the parsed table (also from a Jupyter cell: see Generator.run)."""
        rows = _as_rows(rows)
        return self._table(rows, self.generator.run(self._requests(rows)))

    async def acall(self, rows: Iterable[Any] | pl.DataFrame) -> pl.DataFrame:
        """`__call__` inside a running event loop."""
        rows = _as_rows(rows)
        return self._table(rows, await self.generator.arun(self._requests(rows)))

    # ----- requests and answers -------------------------------------------------------------------
    def _requests(self, rows: list[Any]) -> list[ChatRequest]:
        """`n` requests per row, row by row. With one sample and no seed the request is as `prompt` made it;
        otherwise sample j gets seed `base + j` (base: the request's own seed, else `self.seed`, else 0),
        which makes the samples distinct requests and keeps each one's journal key stable as `n` grows."""
        out = []
        for index, row in enumerate(rows):
            req = self._request(index, row)
            out += [req] if self.n == 1 and self.seed is None else sampled(req, self.n, self.seed or 0)
        return out

    def _request(self, index: int, row: Any) -> ChatRequest:
        made = self.prompt(row)
        if isinstance(made, ChatRequest):
            return made
        if isinstance(made, str):
            messages = [{"role": "user", "content": made}]
        elif isinstance(made, list) and made and all(isinstance(m, Mapping) and "role" in m for m in made):
            messages = [dict(m) for m in made]
        else:
            raise TypeError(f"{type(self).__name__}.prompt() on row {index} returned {type(made).__name__}; expected "
                            "a string, a non-empty list of {'role': ..., 'content': ...} messages or a ChatRequest")
        fmt = None
        if self.response_format is not None:
            fmt = {"type": "json_schema", "json_schema": {"name": self.response_format.__name__,
                                                          "schema": self.response_format.model_json_schema()}}
        return ChatRequest(messages=messages, max_tokens=self.max_tokens, temperature=self.temperature,
                           top_p=self.top_p, system=self.system, response_format=fmt)

    def _table(self, rows: list[Any], responses: list[ChatResponse]) -> pl.DataFrame:
        self.failures = []
        records: list[dict] = []
        for k, resp in enumerate(responses):  # row-major: row i's samples are responses i*n .. i*n+n-1
            index, sample = divmod(k, self.n)
            row = rows[index]
            if resp.status not in ("ok", "truncated"):
                self._fail(index, sample, resp, resp.error or resp.status)
                continue
            try:
                answer = self._answer(resp.text or "")
            except ValueError as exc:
                self._fail(index, sample, resp, f"answer does not fit {self.response_format.__name__}: {exc}")
                continue
            try:
                out = self.parse(row, answer)
            except Exception as exc:
                _add_note(exc, f"in {type(self).__name__}.parse() on row {index}; the answers are in the journal: "
                               "fix parse and call again, nothing is paid twice")
                raise
            new = [_record(o) for o in (out if isinstance(out, list) else [out]) if o is not None]
            records += [{**r, "sample": r.get("sample", sample)} for r in new] if self.n > 1 else new
        if self.failures:
            log.warning("%s: %d of %d rows failed (see .failures)", type(self).__name__, len(self.failures), len(rows))
        return pl.DataFrame(records) if records else pl.DataFrame()

    def _answer(self, text: str) -> Any:
        """The text, or for a `response_format` the validated model (the JSON may sit inside prose/fences)."""
        if self.response_format is None:
            return text
        try:
            return self.response_format.model_validate_json(text)
        except ValidationError:
            start = text.find("{")
            if start < 0:
                raise ValueError("no JSON object in the answer") from None
            try:
                data, _ = json.JSONDecoder().raw_decode(text[start:])
                return self.response_format.model_validate(data)
            except (json.JSONDecodeError, ValidationError) as exc:
                raise ValueError(str(exc).splitlines()[0]) from None

    def _fail(self, index: int, sample: int, resp: ChatResponse, error: str) -> None:
        self.failures.append({"row": index, "sample": sample, "key": resp.key, "status": resp.status, "error": error})


def _as_rows(rows: Iterable[Any] | pl.DataFrame) -> list[Any]:
    if isinstance(rows, pl.DataFrame):
        return list(rows.iter_rows(named=True))
    if isinstance(rows, (str, bytes, Mapping)):
        raise TypeError("call an LLM on an iterable of rows (dicts, strings, ...) or a polars DataFrame, "
                        f"not a single {type(rows).__name__}")
    return list(rows)


def _record(out: Any) -> dict:
    if isinstance(out, BaseModel):
        return out.model_dump()
    if isinstance(out, Mapping):
        return dict(out)
    raise TypeError(f"parse() must return dicts or pydantic models (or a list of them, or None), got {type(out).__name__}")


def _add_note(exc: BaseException, note: str) -> None:
    if hasattr(exc, "add_note"):  # Python >= 3.11
        exc.add_note(note)
