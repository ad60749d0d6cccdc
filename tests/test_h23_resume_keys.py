"""What a killed streamed `filter` run's stored verdicts are keyed on: the input's bytes (not its modification
time) and the code of the steps (not only their settings)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType

import polars as pl
import pytest
import test_s13r4_stream as s13r4

from textbookgen.curation import commands, corpus_io, filters, stream
from textbookgen.curation.filters import HeuristicFilter

SHORT, texts = s13r4.SHORT, s13r4.texts  # texts: the fixture of 40 Wikipedia articles, every fourth too short


def _write(path: Path, texts: list[str]) -> None:
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))


def _counting(handed: list[int], kill_at: int | None = None):
    """A `require_columns` for the filters noting each chunk handed to them; KeyboardInterrupt on the
    `kill_at`th."""
    check = filters.require_columns

    def noting(df: pl.DataFrame, columns: list[str], where: str) -> None:
        handed.append(df.height)
        if len(handed) == kill_at:
            raise KeyboardInterrupt
        check(df, columns, where)
    return noting


def _fresh(src: Path, tmp_path: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A filter run never killed: its output and dropped.parquet."""
    commands.run_steps(src, tmp_path / "fresh.parquet", [HeuristicFilter(workers=1)], tmp_path / "fresh.work")
    return pl.read_parquet(tmp_path / "fresh.parquet"), pl.read_parquet(tmp_path / "fresh.work/filters/dropped.parquet")


def _kill_then_rerun(src: Path, tmp_path: Path, monkeypatch, between) -> list[int]:
    """A filter run killed as its 5th chunk reaches the filter, `between()`, then the rerun: the rows of each
    chunk the rerun judged."""
    with monkeypatch.context() as m:
        m.setattr(filters, "require_columns", _counting([], kill_at=5))
        with pytest.raises(KeyboardInterrupt):
            commands.run_steps(src, tmp_path / "out.parquet", [HeuristicFilter(workers=1)], tmp_path / "work")
    assert len(list((tmp_path / "work" / stream.STORE).glob("0*.json"))) == 4
    between()
    handed: list[int] = []
    with monkeypatch.context() as m:
        m.setattr(filters, "require_columns", _counting(handed))
        commands.run_steps(src, tmp_path / "out.parquet", [HeuristicFilter(workers=1)], tmp_path / "work")
    return handed


def test_a_touched_input_keeps_the_chunks_a_killed_run_finished(texts, tmp_path, monkeypatch):
    """`touch` (the same bytes, a new modification time) changed the key of sizes and times: the rerun removed
    the 4 stored chunks and judged all 10 again."""
    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", 4)
    src = tmp_path / "in.jsonl"
    _write(src, texts)
    expected, report = _fresh(src, tmp_path)

    def touch() -> None:
        before = src.stat().st_mtime_ns
        os.utime(src, ns=(before + 10**9, before + 10**9))

    handed = _kill_then_rerun(src, tmp_path, monkeypatch, touch)
    assert sum(handed) == len(texts) - 16  # the 4 chunks of 4 rows the killed run finished are not judged again
    assert pl.read_parquet(tmp_path / "out.parquet").equals(expected)
    assert pl.read_parquet(tmp_path / "work/filters/dropped.parquet").equals(report)


def test_a_changed_byte_is_still_judged_again(texts, tmp_path, monkeypatch):
    """A byte of row 2 changed (the same size): the chunks from the first changed one on are judged again; here
    that byte turns a kept text into a dropped one, which stored verdicts would have kept."""
    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", 4)
    src = tmp_path / "in.jsonl"
    _write(src, texts)

    def edit() -> None:
        lines = src.read_text().splitlines(keepends=True)
        row = json.loads(lines[2])
        row["text"] = "x" * (len(json.dumps(row["text"])) - 2)  # one word, far too few; as many bytes
        lines[2] = json.dumps(row) + "\n"
        size = src.stat().st_size
        src.write_text("".join(lines))
        assert src.stat().st_size == size

    handed = _kill_then_rerun(src, tmp_path, monkeypatch, edit)
    assert sum(handed) == len(texts)
    expected, report = _fresh(src, tmp_path)
    assert 2 in report["row"].to_list()
    assert pl.read_parquet(tmp_path / "out.parquet").equals(expected)
    assert pl.read_parquet(tmp_path / "work/filters/dropped.parquet").equals(report)


RULE = '''
from collections import Counter

from textbookgen.curation.base import RowStep, Verdict

KILL_AT = None  # the chunk (counted from 0) at which judging raises KeyboardInterrupt


class MinChars(RowStep):
    """Drops texts of fewer than LIMIT characters."""

    name = "min_chars"

    def judge(self, chunks, total=None):
        for k, chunk in enumerate(chunks):
            if k == KILL_AT:
                raise KeyboardInterrupt
            short = chunk["text"].str.len_chars() < LIMIT
            yield Verdict(chunk.filter(~short), dropped=Counter({"short": int(short.sum())}))

    def fingerprint(self):
        return self.name
'''


def module_from_source(folder: Path, name: str, source: str) -> ModuleType:
    """Module `name` of `source`, written to folder/name.py and imported (as a user's own rule module)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _rule_module(folder: Path, limit: int) -> ModuleType:
    """The module of a RowStep whose rule (drop texts of under `limit` characters) is in its code, not its
    settings: as a rule edited between a killed run and its rerun."""
    return module_from_source(folder, "h23_rule", f"LIMIT = {limit}\n{RULE}")


def test_a_rule_changed_in_code_between_kill_and_rerun_is_seen(tmp_path, monkeypatch):
    """The key held each step's fingerprint (its settings) but not its code: the rerun after an edit of the rule
    took the old rule's verdicts for the chunks the killed run finished, keeping texts the new rule drops."""
    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", 3)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.delitem(sys.modules, "h23_rule", raising=False)
    src = tmp_path / "in.jsonl"
    _write(src, [("word " * n).strip() for n in range(1, 19)])  # 4, 9, ..., 89 characters
    (tmp_path / "code").mkdir()
    old = _rule_module(tmp_path / "code", 10)
    old.KILL_AT = 4
    with pytest.raises(KeyboardInterrupt):
        commands.run_steps(src, tmp_path / "out.parquet", [old.MinChars()], tmp_path / "work")
    assert len(list((tmp_path / "work" / stream.STORE).glob("0*.json"))) == 4

    new = _rule_module(tmp_path / "code", 40)  # the rule edited, its name and settings the same
    stats = commands.run_steps(src, tmp_path / "out.parquet", [new.MinChars()], tmp_path / "work")
    kept = pl.read_parquet(tmp_path / "out.parquet")["text"].to_list()
    assert min(map(len, kept)) >= 40
    assert stats["min_chars"]["dropped"] == {"short": 8}  # 4, 9, ..., 39 characters


def test_the_code_digest_is_that_of_the_modules_the_step_draws_on(tmp_path, monkeypatch):
    """A filter's digest changes with the source of a module it imports (config.py's defaults), not only its own."""
    from textbookgen.curation import config

    before = stream.code_digest(HeuristicFilter)
    changed = tmp_path / "config.py"
    changed.write_bytes(Path(config.__file__).read_bytes() + b"\n# edited\n")
    monkeypatch.setattr(config, "__file__", str(changed))
    assert stream.code_digest(HeuristicFilter) != before
