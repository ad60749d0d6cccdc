"""JSON Lines (and whole-text) reading shared by every loader: bad input named by file and line.

Callers pass their own error class, so a prompts file still raises `PromptFileError`, a benchmark
`BenchmarkError`, and so on; the message always starts with `<where>:<line>:`. Lines are split on
`\\n` only (a U+2028 inside a JSON string is data, not a line break) and blank lines are skipped. A
leading UTF-8 byte order mark (Windows tools write one) is no part of the text.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["decode_utf8", "iter_jsonl", "iter_jsonl_lines", "open_compressed"]


def decode_utf8(raw: bytes, where: str | Path, *, error: type[Exception] = ValueError) -> str:
    """A whole file's bytes as text; raises `error("<where>:<line>: not valid UTF-8 (...)")` naming the line."""
    raw = raw.removeprefix(codecs.BOM_UTF8)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise error(f"{where}:{line}: not valid UTF-8 ({e.reason})") from None


def open_compressed(path: str | Path) -> IO[bytes]:
    """`path` opened for binary reading, decompressed when it ends in `.gz` or `.bz2`."""
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    if path.suffix == ".bz2":
        return bz2.open(path, "rb")
    return path.open("rb")


def iter_jsonl_lines(lines: Iterable[bytes], where: str, *, error: type[Exception] = ValueError,
                     objects_only: bool = True) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each non-blank line of `lines` (raw bytes, as a binary file yields them).

    Raises `error("<where>:<n>: ...")` for a line that is not UTF-8 (with the byte offset in the line),
    not JSON (with the column) or, when `objects_only`, not a JSON object."""
    for n, raw in enumerate(lines, start=1):
        try:
            line = (raw.removeprefix(codecs.BOM_UTF8) if n == 1 else raw).decode("utf-8")
        except UnicodeDecodeError as e:
            raise error(f"{where}:{n}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
        if not line.strip():
            continue
        try:
            value = json.loads(line.rstrip("\r\n"))  # a line cut short: its end's column, not 1 on a next line
        except json.JSONDecodeError as e:
            raise error(f"{where}:{n}: invalid JSON ({e.msg} at column {e.colno})") from None
        if objects_only and not isinstance(value, dict):
            raise error(f"{where}:{n}: each line must be a JSON object, got {type(value).__name__}")
        yield n, value


def iter_jsonl(path: str | Path, *, error: type[Exception] = ValueError,
               objects_only: bool = True) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each record of a JSON Lines file, plain, `.gz` or `.bz2`; see `iter_jsonl_lines`."""
    with open_compressed(path) as f:
        yield from iter_jsonl_lines(f, str(path), error=error, objects_only=objects_only)
