"""Prompt files in, completion files out: what `textbookgen generate` reads and writes.

A prompts file is JSON Lines or parquet, one request a row: `prompt` (a string) or `messages` (chat
messages), optional `system`, `max_tokens`, `temperature`, `top_p`, `seed`, `response_format` (OpenAI's
shape), `params` (more request-body keys, sent as is: `stop`, `top_k`, vLLM's `min_p`...) and `metadata`
(an object); any other field is kept as metadata, except a known API parameter, which is refused (it
would not reach the API there). The completions file has one row per prompt (per answer with
`generate --n`, whose metadata.sample numbers the answers), in order:
id (the request key), status, text, finish_reason, error, tokens, cost, latency, attempts, metadata.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from textbookgen.engine import ChatRequest, ChatResponse, credential_param
from textbookgen.jsonl import iter_jsonl

_REQUEST_FIELDS = ("prompt", "messages", "system", "max_tokens", "temperature", "top_p", "seed", "response_format",
                   "params", "metadata")
# API parameters a row might set beside the fields above, where they would silently become metadata: these
# belong under `params`, and these others are not per-request settings (or would break reading the answer)
_PARAM_FIELDS = frozenset({"stop", "stop_sequences", "top_k", "min_p", "repetition_penalty", "presence_penalty",
                           "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "reasoning_effort",
                           "verbosity", "thinking", "service_tier", "min_tokens", "extra_body"})
_OTHER_API_FIELDS = {
    "max_completion_tokens": "use 'max_tokens' (sent to OpenAI as max_completion_tokens)",
    "model": "the model is generate's --model", "n": "use generate --n", "stream": "answers are not streamed",
    "tools": "use 'response_format' for structured output", "tool_choice": "use 'response_format' for structured output",
}
# keys `params` may not set: a row's own fields set them, or they are refused as above
_NOT_PARAMS = {**{k: f"use the '{k}' field" for k in _REQUEST_FIELDS if k != "params"}, **_OTHER_API_FIELDS}


_RANGES = {"max_tokens": (lambda v: v >= 1, ">= 1"), "temperature": (lambda v: 0 <= v <= 2, "in [0, 2]"),
           "top_p": (lambda v: 0 < v <= 1, "in (0, 1]")}


class PromptFileError(ValueError):
    """A prompts file that cannot be read as requests (the message names the file, line and field)."""


def _request(row: Mapping, where: str, defaults: Mapping) -> ChatRequest:
    if "messages" in row and row["messages"] is not None:
        messages = row["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, Mapping) and "role" in m for m in messages):
            raise PromptFileError(f"{where}: 'messages' must be a list of {{role, content}} objects")
        messages = [dict(m) for m in messages]
    elif isinstance(row.get("prompt"), str):
        messages = [{"role": "user", "content": row["prompt"]}]
    else:
        raise PromptFileError(f"{where}: needs a 'prompt' (string) or 'messages' (list) field")
    api = next((k for k, v in row.items() if v is not None and (k in _PARAM_FIELDS or k in _OTHER_API_FIELDS)), None)
    if api is not None:
        reason = _OTHER_API_FIELDS.get(api, "put it under 'params' (sent in the request body as is)")
        raise PromptFileError(f"{where}: '{api}' is an API parameter, not read at the top level: {reason} "
                              "(or move it under 'metadata' to keep it as data)")
    extra = {k: v for k, v in row.items() if k not in _REQUEST_FIELDS}
    if credential := credential_param(extra):
        raise PromptFileError(f"{where}: '{credential}' is named like a credential, and a row's other fields are kept "
                              "as metadata in the journal and the output; the key comes from the environment (if it "
                              "is data, put it under 'metadata')")
    metadata = {**extra, **_object(row, "metadata", where)}
    params = {k: v for k, v in {**_object(defaults, "params", where), **_object(row, "params", where)}.items()
              if v is not None}  # null: not set (a parquet struct column fills absent keys so)
    refused = sorted(params.keys() & _NOT_PARAMS.keys())
    if refused:
        raise PromptFileError(f"{where}: 'params' must not set '{refused[0]}': {_NOT_PARAMS[refused[0]]}")
    response_format = _object(row, "response_format", where) or _object(defaults, "response_format", where) or None
    if response_format is not None and not isinstance(response_format.get("type"), str):
        raise PromptFileError(f"{where}: 'response_format' needs a 'type' (e.g. \"json_schema\")")

    def pick(name: str, kind: type):
        value = row.get(name)
        value = defaults.get(name) if value is None else value
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise PromptFileError(f"{where}: '{name}' has the wrong type ({type(value).__name__}: {value!r})")
        if value is not None and name in _RANGES and not _RANGES[name][0](value):
            raise PromptFileError(f"{where}: '{name}' must be {_RANGES[name][1]}, got {value!r}")
        return value

    try:
        return ChatRequest(messages=messages, max_tokens=pick("max_tokens", int) or 1024,
                           temperature=pick("temperature", (int, float)), top_p=pick("top_p", (int, float)),
                           seed=pick("seed", int), system=pick("system", str), response_format=response_format,
                           metadata=metadata, params=params)
    except ValueError as err:  # a credential in params (ChatRequest's own check)
        raise PromptFileError(f"{where}: {err}") from None


def _object(row: Mapping, name: str, where: str) -> dict:
    """The JSON object field `name` of a row ({} when absent); parquet written by us stores one as JSON text."""
    value = row.get(name) or {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise PromptFileError(f"{where}: '{name}' is a string that is not a JSON object") from None
    if not isinstance(value, Mapping):
        raise PromptFileError(f"{where}: '{name}' must be an object")
    return dict(value)


def load_prompts(path: str | Path, defaults: Mapping | None = None) -> list[ChatRequest]:
    """Read a .jsonl / .json (lines) or .parquet prompts file; `defaults` fill fields a row lacks."""
    path = Path(path)
    defaults = defaults or {}
    if path.is_dir():
        raise PromptFileError(f"{path}: is a folder, not a prompts file")
    if not path.is_file():
        raise PromptFileError(f"{path}: no such prompts file")
    if path.suffix == ".parquet":
        import polars as pl

        try:
            rows = pl.read_parquet(path).to_dicts()
        except Exception as exc:  # noqa: BLE001 - any parquet failure is a bad input file
            raise PromptFileError(f"{path}: not a readable parquet file ({exc})") from None
        requests = [_request(row, f"{path}: row {i}", defaults) for i, row in enumerate(rows)]
    else:
        requests = [_request(row, f"{path}:{number}", defaults)
                    for number, row in iter_jsonl(path, error=PromptFileError)]
    if not requests:
        raise PromptFileError(f"{path}: no prompts")
    return requests


def completion_rows(responses: Sequence[ChatResponse]) -> list[dict]:
    """One row per response: `text` is the answer, a leading reasoning block set apart in `reasoning`."""
    return [{"id": r.key, "status": r.status, "text": r.answer if r.text is not None else None,
             "reasoning": r.reasoning, "finish_reason": r.finish_reason,
             "error": r.error, "input_tokens": r.input_tokens, "output_tokens": r.output_tokens,
             "cost_usd": r.cost_usd, "latency_s": r.latency_s, "attempts": r.attempts,
             "metadata": r.metadata} for r in responses]


def write_completions(path: str | Path, responses: Sequence[ChatResponse]) -> Path:
    """Write completions as .parquet (metadata as JSON text) or JSON Lines (anything else)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = completion_rows(responses)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".parquet":
        import polars as pl

        for row in rows:
            row["metadata"] = json.dumps(row["metadata"], ensure_ascii=False, default=str)
        pl.DataFrame(rows, schema={
            "id": pl.String, "status": pl.String, "text": pl.String, "reasoning": pl.String, "finish_reason": pl.String,
            "error": pl.String, "input_tokens": pl.Int64, "output_tokens": pl.Int64, "cost_usd": pl.Float64,
            "latency_s": pl.Float64, "attempts": pl.Int64, "metadata": pl.String}).write_parquet(tmp)
    else:
        with tmp.open("w", encoding="utf-8") as out:
            for row in rows:
                out.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    tmp.replace(path)  # a reader never sees half a file
    return path
