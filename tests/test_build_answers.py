"""What a build makes of the answers it gets: an answer with no text is a failed request (exit 3, re-sent by a plain
rerun), and a document leaves out the reasoning block a model served without a reasoning parser opens with, while
the journal keeps the answer as sent."""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from textbookgen.build import BuildError, build
from textbookgen.cli import app
from textbookgen.recipe import load_recipe
from textbookgen.testing.emulator import Emulator, EmulatorConfig, Fault

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"


def prose_responder(body: dict) -> str:
    """Textbook-like prose for every prompt, distinct per request."""
    from textbookgen.testing.responder import prompt_text, prose, subject_of

    text = prompt_text(body.get("messages") or [], body.get("system"))
    seed = int(hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:8], 16)
    return prose(subject_of(text), 350, random.Random(seed))


def _sets(out: Path, base_url: str, **more) -> dict:
    return {"output": str(out), "samples": 12, "provider.base_url": base_url, "curation.filters.enabled": False,
            **more}


def test_empty_answers_fail_the_build_with_exit_3_and_a_plain_rerun_sends_only_them(tmp_path, monkeypatch):
    """They used to be journaled as ok and dropped without a word ('N documents ({'ok': 12})', exit 0), and never
    sent again."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # a server of your own needs none
    emptying = EmulatorConfig(latency_median_s=0.002, responder=prose_responder, faults=[Fault("empty", rate=0.5)])
    with Emulator(emptying) as emu:
        sets = _sets(tmp_path / "o", emu.openai_base_url)
        res = CliRunner().invoke(app, ["build", str(QUICKSTART), "--no-progress", "--no-push",
                                       *(f"--set={k}={v}" for k, v in sets.items())])
        empty = emu.outcomes["empty"]
        assert 0 < empty < 12 and emu.billed == 12
        emu.config.faults.clear()  # the server is fixed
        again = build(load_recipe(QUICKSTART, sets), push=False, progress=False)
        assert emu.billed == 12 + empty and emu.duplicates == empty
    assert res.exit_code == 3, res.output
    assert f"{empty} of 12 requests gave no document: {empty} request(s) failed ({empty} empty_answer; e.g. empty " \
           "answer: no text" in " ".join(res.output.split())
    assert again.unfinished is None and again.manifest["counts"]["documents"] == 12
    with sqlite3.connect(tmp_path / "o" / "journal.sqlite") as db:
        assert db.execute("SELECT status, COUNT(*) FROM requests GROUP BY status").fetchall() == [("ok", 12)]


def test_anthropic_answers_that_are_only_thinking_fail_the_build_saying_what_to_change(tmp_path):
    with Emulator(EmulatorConfig(latency_median_s=0.002, faults=[Fault("reasoning", rate=1.0)])) as emu:
        sets = _sets(tmp_path / "a", emu.anthropic_base_url, **{"provider.name": "anthropic", "model": "claude-haiku-4-5"})
        with pytest.raises(BuildError, match=r"no request gave a document: 12 request\(s\) failed \(12 "
                                             r"empty_answer_reasoning; e\.g\. empty answer: cut at max_tokens.*raise "
                                             r"max_tokens or turn thinking off") as info:
            build(load_recipe(QUICKSTART, sets), push=False, progress=False)
    assert info.value.unfinished == "failed"  # exit 3


def test_documents_leave_out_a_leading_think_block_the_journal_keeps_it(tmp_path):
    """A reasoning model served without a reasoning parser: 12/12 documents used to start with '<think>'."""
    with Emulator(EmulatorConfig(latency_median_s=0.002, responder=prose_responder,
                                 faults=[Fault("think", rate=1.0)])) as emu:
        sets = _sets(tmp_path / "t", emu.openai_base_url, **{"provider.name": "openai-compatible",
                                                            "model": "Qwen/Qwen3-8B"})
        free = {"Qwen/Qwen3-8B": (0.0, 0.0)}  # a server of your own: quickstart's dollar budget needs its price
        res = build(load_recipe(QUICKSTART, sets, prices=free), push=False, progress=False)
    docs = pl.read_parquet(tmp_path / "t" / "documents.parquet")
    assert docs.height == 12 and res.unfinished is None
    assert not docs["text"].str.contains("<think>|</think>").any() and docs["text"].str.len_chars().min() > 100
    assert res.manifest["reasoning_stripped"] == 12
    with sqlite3.connect(tmp_path / "t" / "journal.sqlite") as db:
        raw = [text for (text,) in db.execute("SELECT text FROM requests")]
    assert len(raw) == 12 and all(t.startswith("<think>\nOkay, the user wants") for t in raw)
    assert sorted(docs["text"]) == sorted(t.split("</think>", 1)[1].lstrip() for t in raw)
