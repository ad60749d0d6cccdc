"""Custom generation tasks in curator's shape: subclass `LLM`, write `prompt(row)` and `parse(row, response)`,
call it on rows.

    class Glossary(LLM):
        response_format = Terms          # optional pydantic model: structured output, validated for you

        def prompt(self, row):
            return f"List the key terms of a lesson on {row['topic']}."

        def parse(self, row, response):  # response: a Terms instance (or the text without response_format)
            return [{"topic": row["topic"], "term": t} for t in response.terms]

    table = Glossary("gpt-4o-mini", journal="run/glossary.sqlite")(rows)   # a polars DataFrame

`rows`: dicts or strings, a polars (lazy) or pandas DataFrame, a pyarrow Table, a `datasets.Dataset`, a generator.
They go through `window` rows at a time (`LLM.window`), each window asked and parsed before the next is pulled,
so memory holds one window's requests and answers plus the table (and ~9 bytes per request key, to count a row
repeated windows apart once); one budget and one `generator.stats` over all, each request counted once per call
as in one window (one skipped on the budget too). Once the budget has stopped the call, a row whose prompt() raises
is listed in `.failures` as skipped_budget, the error in its message, instead of failing the call.

Everything the engine does comes with it: rate limits, retries, budgets, the crash-safe journal, provider
batch APIs (`batch=True`). Answers are journaled per request, not per task, so editing `parse` and calling
again re-parses the stored answers for free, and a changed prompt pays only for the requests it changes.
Where the answers live decides who gets them for free: with `journal="path.sqlite"` any LLM (any process)
using that file; with the default `journal=None` only this object, whose answers sit in a temporary
journal deleted with it (so a new object, e.g. after redefining the class, pays again).
Rows whose request failed, or whose answer does not fit `response_format`, are left out of the table and
listed in `.failures`. An answer cut at max_tokens goes to `parse` as it is (text, or the JSON object when it
is complete: a server can pad a finished object with whitespace up to max_tokens) and is listed in `.truncated`
with a warning, so a cut answer never passes unnoticed. Answers that do not fit count as failures in the
engine's error-rate stop (`max_error_rate` / `error_window`; first round only): a model that ignores the schema
stops the run early (FatalProviderError naming `unfit_format` and an answer) instead of being paid for every row;
they stay journaled. An answer that does not fit is asked again, up to `schema_retries` times (2 by default),
each time with a new seed (seed + k * REASK_SEED_STRIDE, so never another sample's), which makes each re-ask a
request of its own in the journal: a later call replays the whole chain for free, and raising `schema_retries`
pays only for the new tries. All rounds of one call share the Generator's `max_cost_usd` / `max_output_tokens`
(a re-ask round gets what the earlier ones left) and `generator.stats` adds them up. An answer cut at max_tokens is not asked again (it would be cut again: raise
max_tokens). `retry_failed=True` is about requests the provider refused (a 400, a refusal): it re-sends those,
and an answer that does not fit is no such failure. The table's columns take the common type of all their values (ints and floats give
floats); values with none (a list and a number) raise a TypeError naming the column, answers kept.

Several answers per row: `n=4` makes four requests per row: sample 0 is the request n=1 makes (seeded `seed`
if given), sample k is seeded `seed + k` (k without a seed), each its own journal entry, and the table gets a `sample` column, the answer's index: with `n > 1` the name is
reserved, so rows or parse() output with a `sample` field raise a ValueError instead of hiding it.
Raising `n` later, from 1 too, pays only for the new samples. The seed is sent only where the API takes one (not Anthropic's):
at temperature 0 the samples are one answer paid n times, which a warning says.
"""

from __future__ import annotations

import inspect
import json
import logging
import sys
import tempfile
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from difflib import get_close_matches
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pydantic import BaseModel, ValidationError

from textbookgen.engine import (
    ChatRequest,
    ChatResponse,
    Generator,
    Spend,
    run_sync,
    sampled,
    spent,
    warn_same_samples,
)

__all__ = ["LLM"]

log = logging.getLogger("textbookgen.llm")

REASK_SEED_STRIDE = 1_000_000  # re-ask k of a request seeded s is seeded s + k * stride: no sample's seed


class LLM:
    """Subclass and write `prompt` (and usually `parse`). Keyword arguments beyond the sampling ones go to
    the `Generator` (journal, limits, concurrency, max_cost_usd, batch, base_url, api_key, ...).
    `response_format` is a class attribute, or a keyword as in curator (`Glossary(model, response_format=Terms)`).
    Without a `journal` the answers go to a temporary one that lives as long as this object, so calling it
    again (after `task.parse = fixed`, say) re-parses without paying."""

    response_format: type[BaseModel] | None = None
    window: int = 10_000  # rows in memory at once: pulled, sent, answered and parsed before the next ones

    def __init__(self, model: str, provider: str = "openai", *, max_tokens: int = 1024,
                 temperature: float | None = None, top_p: float | None = None, system: str | None = None,
                 n: int = 1, seed: int | None = None, schema_retries: int = 2,
                 response_format: type[BaseModel] | None = None, window: int | None = None, **engine: Any) -> None:
        _check_options(type(self).__name__, engine)
        if response_format is not None:
            self.response_format = response_format
        if window is not None:
            self.window = window
        _check_window(self.window, n, None)
        _check_format(type(self).__name__, self.response_format)
        if n < 1:
            raise ValueError(f"n (answers per row) must be at least 1, got {n}")  # before the Generator opens a journal
        if schema_retries < 0:
            raise ValueError(f"schema_retries must be >= 0, got {schema_retries}")
        if engine.get("batch") and engine.get("journal") is None:
            raise ValueError("batch=True needs journal='path.sqlite': batches run for hours, and the temporary "
                             "journal goes with this object, so a killed script could neither collect nor cancel "
                             "the batches it paid for")
        self._scratch: tempfile.TemporaryDirectory | None = None
        if engine.get("journal") is None:  # the engine's in-memory journal forgets each run's answers
            self._scratch = tempfile.TemporaryDirectory(prefix="textbookgen-llm-")
            engine["journal"] = Path(self._scratch.name) / "journal.sqlite"
        if self.response_format is not None:
            engine.setdefault("answer_check", self._unfit)
        self.generator = Generator(provider, model, **engine)
        _check_window(self.window, n, self.generator)
        self.max_tokens, self.temperature, self.top_p, self.system = max_tokens, temperature, top_p, system
        self.n, self.seed, self.schema_retries = n, seed, schema_retries
        self.failures: list[dict] = []
        self.truncated: list[dict] = []
        self._running = False

    def prompt(self, row: Any) -> str | list[dict] | ChatRequest:
        """The request for one row: a user message, a list of chat messages, or a full ChatRequest."""
        raise NotImplementedError(f"{type(self).__name__} must define prompt(self, row)")

    def parse(self, row: Any, response: Any) -> dict | BaseModel | list | None:
        """Output rows for one answer (a dict, a pydantic model, a list of them, or None to drop the row).
        `response` is the `response_format` instance, or the text. Default: the row's fields + `response` (rows
        that have a `response` field are refused before the call pays, also where a parse() of a subclass calls
        this one: the row's field would be overwritten)."""
        if isinstance(row, Mapping) and "response" in row:
            raise ValueError("the row has a 'response' field, which LLM.parse() would overwrite with this call's "
                             "answer; rename that field (table.rename({'response': 'draft'})) or build the record "
                             "without super().parse()")
        base = dict(row) if isinstance(row, Mapping) else {"row": row}
        return {**base, "response": response.model_dump() if isinstance(response, BaseModel) else response}

    def __call__(self, rows: Iterable[Any] | pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
        """Generate for every row and return the parsed table (also from a Jupyter cell: see engine.run_sync)."""
        return run_sync(self.acall(rows))

    async def acall(self, rows: Iterable[Any] | pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
        """`__call__` inside a running event loop. The rows go through `window` at a time (all at once with
        batch=True: the provider takes them in one go), so a call holds one window's rows, requests and answers
        and the parsed table, not every row's request and answer. One call at a time: its windows and rounds share
        the Generator's budget and stats, so a second call while one runs (`asyncio.gather` of two `acall`s) is
        refused, by this name."""
        if self._running:
            name = type(self).__name__
            raise RuntimeError(f"this {name} is already running a call: await it before calling again, or make "
                               f"one {name} object per concurrent call (a journal file takes one run at a time)")
        self._running = True
        try:
            return await self._stream(rows)
        finally:
            self._running = False

    async def _stream(self, rows: Iterable[Any] | pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
        """The call, window by window: each window's rows checked, asked (with their re-ask rounds) and parsed
        before the next window is pulled from `rows`; rows and failures are numbered over the whole input."""
        _check_window(self.window, self.n, self.generator)  # `task.window` may have been set since __init__
        self.failures, self.truncated = [], []
        if isinstance(rows, Sequence) and not isinstance(rows, (str, bytes)):
            self._checked(list(_checked_rows(rows, type(rows).__name__)))  # in memory: refused before any window
        size = sys.maxsize if self.generator.batch else self.window
        schema = self._format()  # one dict for every request: building it per row took ~1 ms and ~4 KB each
        parts: list[tuple[pl.DataFrame, array]] = []
        start = sent = 0
        warned = False
        with _Rounds(self.generator) as rounds:
            for window in _windows(rows, size):
                self._checked(window, start)
                requests, unasked = self._requests(window, start, schema, rounds.halted())
                if not warned and self.n > 1 and any(r.temperature == 0 for r in requests):
                    warn_same_samples(self.generator.provider, self.n, requests)
                    warned = True
                responses = _placed(await self._answers(requests, rounds), unasked, self.n)
                del requests
                parts.append(self._parsed(window, start, responses))
                start, sent = start + len(window), sent + len(responses)
            if not parts:  # no rows: the stats are an empty run's, not those of the call before
                await self._answers([], rounds)
        self._warn(start, sent)
        return self._joined(parts)

    async def _answers(self, requests: list[ChatRequest], rounds: _Rounds) -> list[ChatResponse]:
        """The responses to one window's `requests`: the first round, then up to `schema_retries` re-asks of those
        that do not fit `response_format`, all under the call's one budget (`rounds`)."""
        rounds.next(first=True)
        responses = rounds.ran(await self.generator.arun(requests))
        for k in range(1, self.schema_retries + 1):
            misses = self._misses(responses)
            if not misses:
                break
            rounds.next(first=False)
            _put(responses, misses, rounds.ran(await self.generator.arun(self._reasked(requests, misses, k))))
        return responses

    def _checked(self, rows: list[Any], start: int = 0) -> list[Any]:
        """Refuse, before anything is paid for them, rows with a field the table would overwrite: `sample`, the
        answer index when n > 1, and `response` where parse() is or calls the default one, which puts the answer
        there (the table of an earlier task passed to the next one would lose its answers). `start`: the index
        of `rows[0]` in the input."""
        if self.n > 1 and (index := _first_with(rows, "sample")) is not None:
            raise ValueError(f"row {start + index} has a 'sample' field, but with n={self.n} the table's 'sample' "
                             "column is the answer index; rename that field")
        if self._overwrites_response() and (index := _first_with(rows, "response")) is not None:
            raise ValueError(f"row {start + index} has a 'response' field, which the default parse() would "
                             f"overwrite with this call's answer; rename that field (table.rename({{'response': "
                             f"'draft'}})) or give {type(self).__name__} a parse() that does not call super().parse()")
        return rows

    def _overwrites_response(self) -> bool:
        """Whether parse() is the default one or reaches it: a parse() of a class in the MRO whose code calls
        super().parse() (its names hold both) hands on to the next one. A parse set on the object is its own."""
        if (own := vars(self).get("parse")) is not None:
            return getattr(own, "__func__", own) is LLM.parse
        for cls in type(self).__mro__:
            func = vars(cls).get("parse")
            if func is None:
                continue
            if func is LLM.parse:
                return True
            names = getattr(getattr(func, "__code__", None), "co_names", ())
            if not ("super" in names and "parse" in names):
                return False
        return False

    # ----- requests and answers -------------------------------------------------------------------
    def _requests(self, rows: list[Any], start: int, schema: dict | None,
                  halted: bool) -> tuple[list[ChatRequest], dict[int, str]]:
        """`n` requests per row, row by row (`engine.sampled`): sample 0 is the request `prompt` made (seeded
        `self.seed` where it has no seed of its own), sample j >= 1 gets seed `base + j` (base: that seed, else
        0), which makes the samples distinct requests and keeps each one's journal key stable as `n` grows.
        `start`: the index of `rows[0]` in the input, for errors. Once the call has `halted` on the budget, the
        prompts are still made (a row's key is its request's: the journal may answer it, a repeat or an earlier
        call's, or it may fit what is left), but a row whose prompt() raises is not asked rather than failing the
        call: with the reason, by the row's offset, in the second dict (`_placed`)."""
        out: list[ChatRequest] = []
        unasked: dict[int, str] = {}
        for index, row in enumerate(rows, start):
            try:
                out += sampled(self._request(index, row, schema, start), self.n, self.seed)
            except Exception as exc:
                if not halted:
                    raise
                unasked[index - start] = (f"not asked: the budget had stopped the call, and {type(self).__name__}"
                                          f".prompt() raised {type(exc).__name__}: {exc}")
        return out, unasked

    def _request(self, index: int, row: Any, schema: dict | None, start: int) -> ChatRequest:
        """Row `index`'s request from `prompt`, asking for `schema` (the class's `response_format`); `start`: the
        first row of its window, the first that no error there has let be sent."""
        try:
            made = self.prompt(row)
        except Exception as exc:
            sent = (f"rows 0 to {start - 1} (earlier windows) were answered and journaled, so calling again pays "
                    f"nothing for them; nothing from row {start} on was sent") if start else "nothing was sent"
            _add_note(exc, f"in {type(self).__name__}.prompt() on row {index}; {sent}")
            raise
        if isinstance(made, ChatRequest):  # the class's schema unless the request brings its own
            return made if made.response_format is not None else replace(made, response_format=schema)
        if isinstance(made, str):
            messages = [{"role": "user", "content": made}]
        elif isinstance(made, list) and made and all(isinstance(m, Mapping) and "role" in m for m in made):
            messages = [dict(m) for m in made]
        else:
            raise TypeError(f"{type(self).__name__}.prompt() on row {index} returned {type(made).__name__}; expected "
                            "a string, a non-empty list of {'role': ..., 'content': ...} messages or a ChatRequest")
        return ChatRequest(messages=messages, max_tokens=self.max_tokens, temperature=self.temperature,
                           top_p=self.top_p, system=self.system, response_format=schema)

    def _misses(self, responses: list[ChatResponse]) -> list[int]:
        """The complete answers (not cut at max_tokens) that do not fit `response_format`: worth asking again."""
        if self.response_format is None:
            return []
        return [i for i, resp in enumerate(responses) if resp.status == "ok" and not self._fits(resp.answer)]

    def _unfit(self, resp: ChatResponse) -> str | None:
        """The engine's answer_check: an answer that does not fit `response_format` counts against the error rate
        (before any re-ask), so a model that ignores the schema stops the run instead of being paid for every row."""
        if self._fits(resp.answer):
            return None
        return "unfit_format" if resp.status == "ok" else "cut_at_max_tokens"

    def _fits(self, text: str) -> bool:
        try:
            self._answer(text)
        except ValueError:
            return False
        return True

    @staticmethod
    def _reasked(requests: list[ChatRequest], misses: list[int], k: int) -> list[ChatRequest]:
        """Re-ask `k` of the missed requests: a new seed, so a request (and journal entry) of its own."""
        return [replace(requests[i], seed=(requests[i].seed or 0) + k * REASK_SEED_STRIDE,
                        metadata={**requests[i].metadata, "reask": k}) for i in misses]

    def _format(self) -> dict | None:
        """`response_format` as the engine sends it (OpenAI's json_schema shape)."""
        if self.response_format is None:
            return None
        return {"type": "json_schema", "json_schema": {"name": self.response_format.__name__,
                                                       "schema": self.response_format.model_json_schema()}}

    def _parsed(self, rows: list[Any], start: int, responses: list[ChatResponse]) -> tuple[pl.DataFrame, array]:
        """One window's table and the row of each of its records (8 bytes each); failures and cut answers go to
        `.failures` and `.truncated`, rows numbered from `start`, the index of `rows[0]` in the input."""
        records: list[dict] = []
        origins: list[int] = []  # the row of each record, to name it in errors
        for k, resp in enumerate(responses):  # row-major: row i's samples are responses i*n .. i*n+n-1
            offset, sample = divmod(k, self.n)
            index, row = start + offset, rows[offset]
            if resp.status not in ("ok", "truncated"):
                self._fail(index, sample, resp, resp.error or resp.status)
                continue
            try:
                answer = self._answer(resp.answer)
            except ValueError as exc:
                tries = self.schema_retries + 1
                how = ("cut at max_tokens: raise it" if resp.status == "truncated"
                       else _counted(tries, "try", "tries"))
                self._fail(index, sample, resp, f"answer does not fit {self.response_format.__name__} ({how}): {exc}")
                continue
            if resp.status == "truncated":
                self.truncated.append({"row": index, "sample": sample, "key": resp.key})
            try:
                out = self.parse(row, answer)
            except Exception as exc:
                _add_note(exc, f"in {type(self).__name__}.parse() on row {index}; {self._kept()}")
                raise
            new = [_record(o) for o in (out if isinstance(out, list) else [out]) if o is not None]
            records += [self._sampled(r, index, sample) for r in new] if self.n > 1 else new
            origins += [index] * len(new)
        return self._frame(records, origins), array("q", origins)

    def _warn(self, rows: int, requests: int) -> None:
        """Say, once per call, how many requests failed and how many answers were cut (listed on the object)."""
        if self.failures:
            failed_rows = len({f["row"] for f in self.failures})
            log.warning("%s: %d of %s failed (n=%d per row), on %d of %s (see .failures)", type(self).__name__,
                        len(self.failures), _counted(requests, "request"), self.n, failed_rows,
                        _counted(rows, "row"))
        if self.truncated:
            cut = len(self.truncated)
            log.warning("%s: %s %s cut at max_tokens and parsed as received (see .truncated; raise max_tokens to "
                        "get whole answers)", type(self).__name__, _counted(cut, "answer"), "was" if cut == 1 else "were")

    def _joined(self, parts: list[tuple[pl.DataFrame, array]]) -> pl.DataFrame:
        """The windows' tables as one, each column of the type one table of all records would give it: where the
        windows agree, or differ only by all-null columns or ints beside floats (floats, as inference gives),
        concatenated as they are (not copied into one chunk: the table may be most of the memory); otherwise (a clash,
        or nested types that differ) built again from the records."""
        parts = [(frame, origins) for frame, origins in parts if frame.width]
        if len(parts) <= 1:
            return parts[0][0] if parts else pl.DataFrame()
        frames = [frame for frame, _ in parts]
        if all(_concatenable({f.schema[c] for f in frames if c in f.schema}) for c in _columns(frames)):
            return pl.concat(frames, how="diagonal_relaxed", rechunk=False)
        return self._frame([r for f in frames for r in f.iter_rows(named=True)],
                           [row for _, origins in parts for row in origins])

    def _kept(self) -> str:
        """Where the paid answers are, for error notes: who can re-parse them without paying."""
        if self._scratch is not None:
            return ("this object keeps the answers (journal=None: a temporary journal deleted with it): fix parse "
                    "and call it again, e.g. after `task.parse = fixed`, and nothing is paid twice; a new object "
                    "pays again, pass journal='path.sqlite' to keep answers across objects")
        return (f"the answers are in the journal {self.generator.journal_path}: fix parse and call again with "
                "that journal, nothing is paid twice")

    def _sampled(self, record: dict, index: int, sample: int) -> dict:
        """The record with its answer index as `sample`, a name parse() output may not use when n > 1."""
        if "sample" in record:
            raise ValueError(f"{type(self).__name__}.parse() on row {index} returned a 'sample' field, but with "
                             f"n={self.n} the table's 'sample' column is the answer index; rename it "
                             f"({self._kept()})")
        return {**record, "sample": sample}

    def _frame(self, records: list[dict], origins: list[int]) -> pl.DataFrame:
        """The table, its types inferred from every record; a clash names the column and keeps the answers."""
        if not records:
            return pl.DataFrame()
        try:
            return pl.DataFrame(records, infer_schema_length=None)
        except (pl.exceptions.PolarsError, TypeError) as exc:
            raise TypeError(f"{type(self).__name__}.parse() output does not fit one table: "
                            f"{_clash(records, origins) or exc}; {self._kept()}") from exc

    def _answer(self, text: str) -> Any:
        """The text, or for a `response_format` the validated model (the JSON may sit inside prose/fences)."""
        if self.response_format is None:
            return text
        try:
            return self.response_format.model_validate_json(text)
        except ValidationError:
            return self._embedded(text)

    def _embedded(self, text: str, tries: int = 20) -> BaseModel:
        """The first JSON object in prose or a fence that fits `response_format`: a brace before it ("the terms
        of {topic}:") is skipped, not a reason to pay for a re-ask; an object that misses is skipped whole (one
        nested in it is part of that answer, not an answer). Validated as JSON, as a bare answer is (a strict
        model takes "2026-01-05" as a date there only). The error: the first object's misfit, else the first
        brace's JSON error."""
        decoder, misfit, broken = json.JSONDecoder(), None, None
        start = text.find("{")
        for _ in range(tries):
            if start < 0:
                break
            end = start + 1
            try:
                _, end = decoder.raw_decode(text, start)
                return self.response_format.model_validate_json(text[start:end])
            except json.JSONDecodeError as exc:
                broken = broken or str(exc)
            except ValidationError as exc:
                misfit = misfit or _invalid(exc)
            start = text.find("{", end)
        raise ValueError(misfit or broken or "no JSON object in the answer")

    def _fail(self, index: int, sample: int, resp: ChatResponse, error: str) -> None:
        self.failures.append({"row": index, "sample": sample, "key": resp.key or None, "status": resp.status,
                              "error": error})


class _Rounds:
    """The runs of one call (each window's first round and its schema re-asks) under one budget: each Generator run
    counts only its own request set (what the journal recorded for it included), so before each run after the
    first the Generator's `spent_aside` is what the earlier runs spent, replayed answers included (restored after
    the call): over the windows, the rounds and reruns the call keeps to the one budget, and a budget stop names
    it. And `generator.stats` adds the runs up (counts and money summed; levels such as `concurrency` from the last
    run). Re-ask rounds run without the answer check: they hold only the answers that missed, so many missing
    again is expected there, not a sign of a model that ignores the schema. Once a run has stopped on the budget,
    the later ones run `budget_stopped`: one whose first request does not fit either only replays what the journal
    holds (the rest skipped as before, but not journaled as pending nor warned about again, window after window).
    A request an earlier run ran (a row repeated a window apart) is the Generator's `counted_aside`: replayed, not
    counted again, so the stats and budget count it once, as one run counts its repeats. One an earlier run skipped
    on the budget is run again (still pending) and counted by that run: the earlier skip is taken off the call's
    `skipped_budget` and `total` (`recounted`), so a skipped row is counted once too."""

    _LEVELS = frozenset({"concurrency"})
    _TALLIES = frozenset({"answers_by_replica"})  # counts per name: summed name by name

    def __init__(self, gen: Generator) -> None:
        self.gen, self.aside, self.check, self.stopped = gen, gen.spent_aside, gen.answer_check, gen.budget_stopped
        self.counted = gen.counted_aside
        self.keys, self.skipped = _Keys(), _Keys()  # the keys counted as run, and those counted as skipped on the budget
        self.recounted = 0  # keys counted skipped by one run and counted again by a later one
        self.stats: dict = {}
        self.merged: dict | None = gen.stats  # the stats of a run before this call are not this call's
        self.started = False

    def __enter__(self) -> _Rounds:
        self.gen.counted_aside = self.keys
        return self

    def ran(self, responses: list[ChatResponse]) -> list[ChatResponse]:
        """A run's `responses`, their keys noted as counted for the runs after it; not those skipped on the budget,
        still pending: a later window runs them as any other (else it took a failure an earlier call left in the
        journal for this call's answer, never sending the request). Those this run counted that an earlier one
        counted skipped are `recounted`."""
        skipped = {resp.key: resp.status == "skipped_budget" for resp in responses}
        keys = list(skipped)
        fresh = [key for key, seen in zip(keys, self.keys.among(keys), strict=True) if not seen]  # this run counted
        self.recounted += int(self.skipped.among(fresh).sum())
        self.keys.add(key for key in fresh if not skipped[key])
        self.skipped.add(key for key in fresh if skipped[key])
        return responses

    def halted(self) -> bool:
        """Whether a run of this call has stopped on the budget (skipped a request on it)."""
        self._merge()
        return self.stats.get("skipped_budget", 0) > 0

    def next(self, first: bool) -> None:
        """Before a run (`first`: a window's first round, with the answer check; else a re-ask round): count the
        runs before it, and what the call has spent, against it."""
        if self.started:
            self._merge()
            usd, used = spent(self.stats)
            aside = self.aside or Spend(0.0, 0)
            self.gen.spent_aside = Spend(aside.usd + usd, aside.output_tokens + used)
            self.gen.budget_stopped = self.halted()
        self.started = True
        self.gen.answer_check = self.check if first else None

    def __exit__(self, *exc: object) -> None:
        try:
            self._merge()  # a round that raised has its stats too
        finally:
            self.gen.spent_aside, self.gen.answer_check, self.gen.budget_stopped = self.aside, self.check, self.stopped
            self.gen.counted_aside = self.counted
        if self.stats:
            once = {"skipped_budget": self.stats["skipped_budget"] - self.recounted,
                    "total": self.stats["total"] - self.recounted} if self.recounted else {}
            self.gen.stats = {**self.stats, **once}

    def _merge(self) -> None:
        stats = self.gen.stats
        if stats is self.merged:
            return
        self.merged = stats
        # a key this run lacks keeps the earlier runs' value (a quiet run has no provider: no answers_by_replica)
        self.stats = {**self.stats, **{k: self._added(k, v) for k, v in stats.items()}}

    def _added(self, key: str, value: Any) -> Any:
        """A run's stat `key` added to the earlier runs' (a count, or counts per name); a level as it is now."""
        if key in self._TALLIES and key in self.stats:
            return {name: self.stats[key].get(name, 0) + value.get(name, 0) for name in {**self.stats[key], **value}}
        return self.stats[key] + value if self._adds(key, value) else value

    def _adds(self, key: str, value: Any) -> bool:
        return key in self.stats and key not in self._LEVELS and isinstance(value, (int, float)) \
            and not isinstance(value, bool)


class _Keys:
    """The request keys a call has run, for `Generator.counted_aside`, in ~9 bytes a key (a set of 16-byte prefixes
    took ~90: ~1 GB at 10M requests): the first 8 bytes of each sha256 as a uint64, in sorted runs of sizes that at
    least double from the newest back (a run merged into the one before it once it is as large, as in a binary
    counter: each key copied ~log2(keys / window) times, and at most as many runs to search). The engine asks about a
    run's journal rows all at once (`among`: ~5-10 ms for a window of 10k replayed rows against 20M keys). A key new to
    the call matches one of N kept with a chance of N / 2^64 (1e-12 at 20M keys; ~1e-4 over all the lookups of a
    20M-row call): then its journal record goes uncounted in the stats and budget (one request), or its failure is
    replayed instead of sent again."""

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []

    def add(self, keys: Iterable[str]) -> None:
        values = np.unique(_prefixes(keys))
        values = values[~self._among(values)]  # repeats are kept once
        if not values.size:
            return
        self._runs.append(values)
        while len(self._runs) > 1 and self._runs[-1].size >= self._runs[-2].size:
            newest = self._runs.pop()
            self._runs[-1] = _merged(self._runs[-1], newest)

    def among(self, keys: Iterable[str]) -> np.ndarray:
        """Whether each of `keys` is kept, at once (a bool array)."""
        return self._among(_prefixes(keys))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and bool(self.among([key])[0])

    def _among(self, values: np.ndarray) -> np.ndarray:
        """Whether each of the uint64 `values` is kept; searched in sorted order (4x fewer cache misses)."""
        order = values.argsort()
        ordered, found = values[order], np.zeros(values.size, dtype=bool)
        for run in self._runs:
            found[order] |= _among(run, ordered)
        return found


def _prefixes(keys: Iterable[str]) -> np.ndarray:
    """The first 8 bytes of each hex key, as uint64."""
    return np.frombuffer(bytes.fromhex("".join(key[:16] for key in keys)), dtype=">u8").astype(np.uint64)


def _among(kept: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Whether each of `values` is in the sorted array `kept`."""
    at = kept.searchsorted(values)
    found = np.zeros(values.size, dtype=bool)
    inside = at < kept.size
    found[inside] = kept[at[inside]] == values[inside]
    return found


def _merged(kept: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Two sorted arrays with no value in common as one, in one pass over `kept` (not sorted again)."""
    return np.insert(kept, kept.searchsorted(values), values)


def _counted(count: int, noun: str, plural: str = "") -> str:
    """A count and its noun in agreement ("1 row", "2 rows", "1 try", "3 tries"), for messages."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


def _invalid(exc: ValidationError, shown: int = 3) -> str:
    """What an answer got wrong, field by field (pydantic's first line says only how many errors there are)."""
    errors = exc.errors(include_url=False)
    fields = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(the object)'}: {e['msg']}" for e in errors[:shown])
    more = f"; and {len(errors) - shown} more" if len(errors) > shown else ""
    return f"{str(exc).splitlines()[0]}: {fields}{more}"


def _check_options(name: str, engine: Mapping[str, Any]) -> None:
    """Refuse, naming the task and the likely option, a keyword neither the task nor the Generator takes (else
    the Generator's own TypeError names a class the user never called)."""
    known = set(inspect.signature(Generator.__init__).parameters) - {"self", "provider", "model"}
    unknown = [key for key in engine if key not in known]
    if unknown:
        options = known | (set(inspect.signature(LLM.__init__).parameters) - {"self", "engine"})
        close = get_close_matches(unknown[0], options, n=1)
        hint = f"did you mean {close[0]!r}?" if close else "help(textbookgen.engine.Generator) lists the others"
        raise TypeError(f"{name}() got an unexpected keyword argument {unknown[0]!r} ({hint})")


def _check_format(name: str, response_format: Any) -> None:
    """Refuse, before any request, a `response_format` that is not a pydantic model class (a JSON schema dict, an
    instance), which would fail on the first answer with an AttributeError."""
    if response_format is not None and not (isinstance(response_format, type)
                                            and issubclass(response_format, BaseModel)):
        raise TypeError(f"{name}.response_format must be a pydantic model class (class Terms(BaseModel): ...), not "
                        f"{type(response_format).__name__}; a JSON schema of your own goes in a ChatRequest's "
                        "response_format, returned by prompt()")


def _first_with(rows: list[Any], name: str) -> int | None:
    """The index of the first row that is a mapping with a field `name`."""
    return next((i for i, row in enumerate(rows) if isinstance(row, Mapping) and name in row), None)


def _placed(responses: list[ChatResponse], unasked: Mapping[int, str], n: int) -> list[ChatResponse]:
    """A window's `responses` with, in the place of each row not asked (`unasked`: its offset, and why), `n` responses
    skipped on the budget that say why, so that the responses stay n per row, in row order."""
    if not unasked:
        return responses
    answers = iter(responses)
    rows = len(responses) // n + len(unasked)
    return [resp for offset in range(rows) for resp in (
        [ChatResponse(key="", text=None, finish_reason=None, status="skipped_budget", error=unasked[offset])] * n
        if offset in unasked else islice(answers, n))]


def _put(responses: list[ChatResponse], indices: list[int], answers: list[ChatResponse]) -> None:
    for i, answer in zip(indices, answers, strict=True):
        responses[i] = answer


def _check_window(window: Any, n: int, gen: Generator | None) -> None:
    """Refuse a `window` (rows at once) that is no int >= 1 (one of 0 pulled no rows: an empty table, nothing asked),
    or, given the Generator, one whose runs are too small for its error-rate stop."""
    if not (isinstance(window, int) and not isinstance(window, bool) and window >= 1):
        raise ValueError(f"window (rows in memory at once) must be an int >= 1, got {window!r}")
    if gen is not None and gen.max_error_rate is not None and not gen.batch and window * n < gen.error_window:
        raise ValueError(f"window={window} rows x n={n} is fewer requests than error_window={gen.error_window}: "
                         "each window is a run of its own, so none would reach the error-rate stop; raise window, "
                         "lower error_window, or pass max_error_rate=None")


def _windows(rows: Iterable[Any] | pl.DataFrame | pl.LazyFrame, size: int) -> Iterator[list[Any]]:
    """The rows as lists of at most `size`, pulled from `rows` one list at a time."""
    source = _rows(rows, size)
    while window := list(islice(source, size)):
        yield window


def _rows(rows: Iterable[Any] | pl.DataFrame | pl.LazyFrame, size: int) -> Iterator[Any]:
    """The rows one by one; a data frame's are dicts, made `size` at a time. Iterating a pandas DataFrame or an arrow
    Table yields its columns, and an arrow RecordBatchReader its batches, which would be paid for as rows; a
    LazyFrame cannot be iterated at all: all are read as frames. Any other iterable of frames, batches or columns
    is refused."""
    if isinstance(rows, pl.LazyFrame):
        rows = rows.collect()
    if isinstance(rows, pl.DataFrame):
        yield from rows.iter_rows(named=True)
        return
    if (arrow := sys.modules.get("pyarrow")) is not None and isinstance(rows, arrow.RecordBatchReader):
        for batch in rows:
            yield from batch.to_pylist()
        return
    if (records := _foreign_frame_rows(rows, size)) is not None:
        yield from records
        return
    if isinstance(rows, (str, bytes, Mapping)):
        split = " (pick a split: ds['train'])" if type(rows).__name__ == "DatasetDict" else ""
        raise TypeError("call an LLM on an iterable of rows (dicts, strings, ...), a polars or pandas DataFrame, an "
                        f"arrow Table or a datasets.Dataset, not a single {type(rows).__name__}{split}")
    yield from _checked_rows(rows, type(rows).__name__)


def _checked_rows(rows: Iterable[Any], source: str) -> Iterator[Any]:
    """`rows`, refusing one that is a whole frame, batch or column (`_bulk_types`) by its index in `source`."""
    batches, columns = _bulk_types()
    for index, row in enumerate(rows):
        if isinstance(row, batches + columns):
            kind = "batch" if isinstance(row, batches) else "column"
            raise TypeError(f"row {index} of the {source} is a whole {kind} ({type(row).__name__}), not a "
                            "row: pass one frame of them all (pl.concat, pa.Table.from_batches, pd.concat), whose rows "
                            "are read")
        yield row


def _bulk_types() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """The types that hold many rows (frames, arrow batches) and one column's values (a polars Series, arrow arrays):
    an iterable of them is a reader's or a frame's pieces, each of which would be paid for as one row. Neither pandas
    nor arrow is imported for it."""
    arrow, pandas = sys.modules.get("pyarrow"), sys.modules.get("pandas")
    batches = (pl.DataFrame, *((arrow.RecordBatch, arrow.Table) if arrow else ()), *((pandas.DataFrame,) if pandas else ()))
    return batches, (pl.Series, *((arrow.Array, arrow.ChunkedArray) if arrow else ()))


def _foreign_frame_rows(rows: Any, size: int) -> Iterator[dict] | None:
    """The records of a pandas DataFrame or a pyarrow Table / RecordBatch (iterating one of them yields its columns),
    made `size` at a time, else None; neither library is imported for it (such a frame means it is loaded already).
    A pandas gap (NaN, NaT, NA) is None, as in a polars frame's rows: a prompt would read "nan" and the table fail
    on a NaT."""
    pandas, arrow = sys.modules.get("pandas"), sys.modules.get("pyarrow")
    if pandas is not None and isinstance(rows, pandas.DataFrame):
        return (record for begin in range(0, len(rows), size) for record in _pandas_records(rows.iloc[begin:begin + size]))
    if arrow is not None and isinstance(rows, (arrow.Table, arrow.RecordBatch)):
        return (record for begin in range(0, rows.num_rows, size) for record in rows.slice(begin, size).to_pylist())
    return None


def _pandas_records(frame: Any) -> list[dict]:
    """A pandas frame's records, its gaps None."""
    return frame.astype(object).where(frame.notna(), None).to_dict("records")


def _columns(frames: list[pl.DataFrame]) -> list[str]:
    """Every column of the frames, in the order they first appear."""
    return list(dict.fromkeys(c for frame in frames for c in frame.columns))


def _concatenable(dtypes: set[pl.DataType]) -> bool:
    """Whether one column's types in several windows' tables join as inference over all their records would type
    them: one type beside all-null columns, or integers beside floats (floats)."""
    dtypes = {d for d in dtypes if d != pl.Null}
    return len(dtypes) <= 1 or (all(d.is_numeric() for d in dtypes) and pl.Float64 in dtypes
                                and all(d == pl.Float64 or d.is_integer() for d in dtypes))


def _clash(records: list[dict], origins: list[int]) -> str | None:
    """The first column polars cannot build alone, with the rows of its two clashing value types."""
    for column in dict.fromkeys(key for record in records for key in record):
        try:
            pl.DataFrame([{column: r.get(column)} for r in records], infer_schema_length=None)
        except (pl.exceptions.PolarsError, TypeError):
            kinds: dict[str, int] = {}
            for record, row in zip(records, origins, strict=True):
                if record.get(column) is not None:
                    kinds.setdefault(type(record[column]).__name__, row)
            return f"column {column!r} mixes " + " and ".join(f"{kind} (first on row {row})"
                                                              for kind, row in kinds.items())
    return None


def _record(out: Any) -> dict:
    if isinstance(out, BaseModel):
        return out.model_dump()
    if isinstance(out, Mapping):
        return dict(out)
    raise TypeError(f"parse() must return dicts or pydantic models (or a list of them, or None), got {type(out).__name__}")


def _add_note(exc: BaseException, note: str) -> None:
    if hasattr(exc, "add_note"):  # Python >= 3.11
        exc.add_note(note)
