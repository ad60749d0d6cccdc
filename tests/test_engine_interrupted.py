"""Attempts cut off on the wire, by Ctrl-C (a cancelled run) or by a kill, are billed by the provider all the same:
they count at their worst case (max_tokens) in the journal, so a rerun's budget and a build's spend count them, once.
Real openai clients against the loopback emulator, which bills what a client walks away from."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import textbookgen
from textbookgen.engine import ChatRequest, Generator
from textbookgen.journal import Journal
from textbookgen.ratelimit import PROBES
from textbookgen.testing.emulator import Emulator, EmulatorConfig

MAX_TOKENS = 64
WORST = PROBES * MAX_TOKENS  # the first PROBES attempts are on the wire when the run is cut off

RUN = """
import sys
from textbookgen.engine import ChatRequest, Generator
url, journal = sys.argv[1:]
requests = [ChatRequest(messages=[{"role": "user", "content": f"Hi {i}"}], max_tokens=64) for i in range(20)]
Generator("openai", "gpt-4o-mini", base_url=url, api_key="sk-test", journal=journal, progress=False).run(requests)
"""


def full_length(body: dict) -> str:
    """Every answer runs to max_tokens, so a budget in output tokens admits an exact number of them."""
    return "word " * 10_000


def ask() -> list[ChatRequest]:
    return [ChatRequest(messages=[{"role": "user", "content": f"Hi {i}"}], max_tokens=MAX_TOKENS) for i in range(20)]


def gen_for(emu: Emulator, journal: Path, **kw) -> Generator:
    return Generator("openai", "gpt-4o-mini", base_url=emu.openai_base_url, api_key="sk-test", journal=journal,
                     progress=False, **kw)


def until(condition, what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.01)


def stuck_emulator() -> Emulator:
    """Answers nothing for a minute: the run is cut off with its first attempts on the wire."""
    return Emulator(EmulatorConfig(latency_median_s=60.0, latency_sigma=0.0, responder=full_length))


def rerun_counts_them_once(emu: Emulator, journal: Path) -> None:
    """The cut-off attempts were billed; a rerun whose output budget leaves room for two more answers besides their
    worst case sends exactly two (none if they counted twice, six if not at all), however often it is rerun."""
    until(lambda: emu.outcomes["billed_after_disconnect"] == PROBES, "the provider to bill the dropped requests")
    with Journal(journal, read_only=True) as j:
        assert j.summary()["abandoned_output_tokens"] == WORST
    emu.config = dataclasses.replace(emu.config, latency_median_s=0.001)
    billed = emu.billed
    budget = WORST + 2 * MAX_TOKENS
    for sends in (2, 0):
        gen = gen_for(emu, journal, max_output_tokens=budget)
        out = gen.run(ask())
        assert emu.billed - billed == sends and gen.stats["prior_abandoned_output_tokens"] == WORST
        assert sum(r.status == "skipped_budget" for r in out) == 20 - 2
        billed = emu.billed
    with Journal(journal) as j:
        s = j.summary()
    assert s["abandoned_output_tokens"] == WORST and s["output_tokens"] == 2 * MAX_TOKENS


def test_attempts_a_cancelled_run_leaves_on_the_wire_count_at_their_worst_case_once(tmp_path):
    journal = tmp_path / "j.sqlite"
    with stuck_emulator() as emu:
        gen = gen_for(emu, journal)

        async def cut_off() -> None:
            run = asyncio.ensure_future(gen.arun(ask()))
            while emu.in_flight < PROBES:
                await asyncio.sleep(0.01)
            run.cancel()  # what Ctrl-C does to a run
            with pytest.raises(asyncio.CancelledError):
                await run

        asyncio.run(cut_off())
        assert gen.stats["interrupted"] == PROBES and gen.stats["abandoned_output_tokens"] == WORST
        rerun_counts_them_once(emu, journal)


def test_attempts_a_killed_run_leaves_on_the_wire_count_at_their_worst_case_once(tmp_path):
    """A SIGKILL leaves no time to write anything: each attempt was journaled as on the wire before it went out."""
    journal = tmp_path / "j.sqlite"
    with stuck_emulator() as emu:
        root = Path(textbookgen.__file__).resolve().parents[1]
        run = subprocess.Popen([sys.executable, "-c", RUN, emu.openai_base_url, str(journal)], cwd=root,
                               env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin",
                                    "TEXTBOOKGEN_LIMITS_DIR": os.environ["TEXTBOOKGEN_LIMITS_DIR"]})
        try:
            until(lambda: emu.in_flight == PROBES, "the run's first attempts")
        finally:
            run.kill()
            run.wait()
        rerun_counts_them_once(emu, journal)
