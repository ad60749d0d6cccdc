"""A process that joins a shared rate budget starts its requests bucket as a lone process does (empty), not with
the full bucket an idle record refills to: that burst, on fresh connections, reaches a server at its exact rate as
one late clump, into 429s (h40: 8 of 10 runs with a 2 s start skew drew 1-5)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from textbookgen.ratelimit import AdmissionController, RateLimits, Ticket
from textbookgen.sharedlimits import SharedRecord

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="no fcntl.flock on Windows: budgets stay per process")


@pytest.fixture(autouse=True)
def limits_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "limits"
    monkeypatch.setenv("TEXTBOOKGEN_LIMITS_DIR", str(folder))
    monkeypatch.delenv("TEXTBOOKGEN_SHARE_LIMITS", raising=False)
    return folder


def controller(now: list[float], limits: RateLimits, shared: bool = True) -> AdmissionController:
    """A process's controller on a fake clock, past its probes (a server that answered), on the budget `k`."""
    record = SharedRecord.open("k", AdmissionController.SHARED_SIZE) if shared else None
    return AdmissionController(limits, 64, slow_start=False, clock=lambda: now[0], shared=record)


def at_once(adm: AdmissionController, tokens_out: float = 1.0) -> int:
    """How many requests `adm` admits now without waiting (at most 100)."""
    count = 0
    while count < 100 and isinstance(adm._admit(1, tokens_out), Ticket):
        count += 1
    return count


@pytest.mark.parametrize("idle_s", [1.0, 5.0, 300.0])
def test_a_process_joining_an_idle_shared_budget_is_not_admitted_a_burst(idle_s):
    now = [100.0]
    limits = RateLimits(rpm=1200)
    first = controller(now, limits)
    assert at_once(first) == 0  # a fresh budget: the first process starts empty, as alone
    now[0] += idle_s  # nobody asks: the record's requests bucket refills full (19.8 at 1200 RPM)
    joiner = controller(now, limits)
    assert at_once(joiner) == at_once(controller(now, limits, shared=False)) == 0
    now[0] += 0.2  # then paced at the rate: 3.96 of 19.8 a second
    assert at_once(joiner) == 3


def test_processes_joining_together_share_one_empty_start():
    now = [100.0]
    limits = RateLimits(rpm=1200)
    at_once(controller(now, limits))
    now[0] += 3.0
    joiners = [controller(now, limits) for _ in range(3)]
    assert [at_once(j) for j in joiners] == [0, 0, 0]
    now[0] += 0.5
    assert sum(at_once(j) for j in joiners) == 9  # 0.5 s of 19.8 a second between them, not 3 x 9


def test_a_joiner_keeps_the_token_budgets_full_start():
    """Token buckets start full alone too (a minute's room for max_tokens reserved and mostly refunded): joining
    changes nothing there."""
    now = [100.0]
    limits = RateLimits(tpm=60000)
    assert at_once(controller(now, limits), tokens_out=29000) == 2  # 59,400 of room at 99%
    now[0] += 60.0
    joiner = controller(now, limits)
    assert at_once(joiner, tokens_out=29000) == at_once(controller(now, limits, shared=False), tokens_out=29000) == 2
