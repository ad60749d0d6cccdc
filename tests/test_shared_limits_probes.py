"""Processes on one shared budget probe a server that has yet to answer together: PROBES requests on the wire for
the host, not PROBES each (textbookgen.ratelimit.HostProbes), and a probe whose process died holds nothing."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from textbookgen.ratelimit import PROBE_HOLD_S, PROBES, AdmissionController, Ticket
from textbookgen.sharedlimits import SharedRecord
from textbookgen.testing.emulator import Emulator, EmulatorConfig

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="no fcntl.flock on Windows: budgets stay per process")

WORKER = """
import sys, time
from pathlib import Path
from textbookgen.engine import ChatRequest, Generator
base, ready, n, tag, together = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
ready.joinpath(tag).touch()
while len(list(ready.iterdir())) < together:  # all at once, as several builds started together
    time.sleep(0.01)
gen = Generator("openai", "gpt-4o-mini", base_url=base, api_key="sk-test-probes", concurrency=64, progress=False)
out = gen.run([ChatRequest(messages=[{"role": "user", "content": f"{tag} {i}"}], max_tokens=8) for i in range(n)])
assert all(r.status in ("ok", "truncated") for r in out), [r.error for r in out]
"""

HOLDER = """
import asyncio
from textbookgen.ratelimit import PROBES, AdmissionController
from textbookgen.sharedlimits import SharedRecord

async def main():
    adm = AdmissionController(None, 8, shared=SharedRecord.open("k", AdmissionController.SHARED_SIZE))
    [await adm.acquire(1, 1) for _ in range(PROBES)]
    print("holding", flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


NO_REQUEST_LIMIT = {"x-ratelimit-limit-tokens": "1000000", "x-ratelimit-remaining-tokens": "1000000"}  # no pacing


class FirstAnswerCounter(Emulator):
    """Notes how many requests it had received when its first answer went out."""

    before_first_answer: int | None = None

    async def _generate(self, request, call, fault, rng):
        response = await super()._generate(request, call, fault, rng)
        if self.before_first_answer is None:
            self.before_first_answer = self.received
        return response


def test_processes_starting_together_put_the_probes_of_one_on_the_wire(tmp_path):
    """4 processes on one key, started together against a server that has not answered yet (a header-less proxy:
    nothing to pace by), send PROBES between them before its first answer, not 4 x PROBES."""
    ready = tmp_path / "ready"
    ready.mkdir()
    with FirstAnswerCounter(EmulatorConfig(latency_median_s=1.0, latency_sigma=0.0, send_headers=False)) as emu:
        procs = [subprocess.Popen([sys.executable, "-c", WORKER, emu.openai_base_url, str(ready), "6", f"p{i}", "4"])
                 for i in range(4)]
        assert [p.wait(timeout=120) for p in procs] == [0] * 4
        assert emu.stats()["billed"] == 24
    assert emu.before_first_answer <= PROBES


def on_one_budget(clock=None) -> tuple[AdmissionController, AdmissionController]:
    """Two controllers on one budget file, each with its own descriptor, as two processes have."""
    kwargs = {} if clock is None else {"clock": clock}
    return tuple(AdmissionController(None, 8, shared=SharedRecord.open("k", AdmissionController.SHARED_SIZE),
                                     **kwargs) for _ in range(2))


def probes(adm: AdmissionController) -> list[Ticket]:
    """The requests `adm` may send now, up to twice PROBES (a controller no longer probing sends on)."""
    tickets = []
    while len(tickets) < 2 * PROBES and isinstance(ticket := adm._admit(1, 1), Ticket):
        tickets.append(ticket)
    return tickets


@pytest.mark.parametrize("answer", ["success", "429"])
def test_an_answer_that_shows_the_key_works_ends_the_hosts_probing(answer):
    first, second = on_one_budget()
    sent = probes(first)
    assert len(sent) == PROBES and probes(second) == []
    if answer == "success":
        first.complete(sent[0], 1, 1, headers=NO_REQUEST_LIMIT)
    else:
        first.fail(sent[0], rate_limited=True, headers=NO_REQUEST_LIMIT)
    assert len(probes(second)) == 2 * PROBES  # as a lone process sends, within its own concurrency


def test_a_probe_refused_or_failed_frees_its_place_but_probing_goes_on():
    first, second = on_one_budget()
    sent = probes(first)
    first.fail(sent[0], headers=NO_REQUEST_LIMIT)  # a 5xx: the key may still be bad
    assert len(probes(second)) == 1
    first.abandon(sent[1])  # no answer in time
    first.cancel(sent[2])
    assert len(probes(second)) == 2


def test_the_probes_of_a_process_killed_on_the_wire_hold_nothing():
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        alone = AdmissionController(None, 8, shared=SharedRecord.open("k", AdmissionController.SHARED_SIZE))
        assert probes(alone) == []  # its probes are on the wire
    finally:
        holder.kill()
        holder.wait()
    assert len(probes(alone)) == PROBES  # a rerun right after a SIGKILL starts as a lone process does


def test_a_probe_silent_for_too_long_frees_its_place():
    now = [0.0]
    first, second = on_one_budget(clock=lambda: now[0])
    probes(first)
    now[0] += PROBE_HOLD_S / 2
    assert probes(second) == []
    now[0] += PROBE_HOLD_S
    assert len(probes(second)) == PROBES


def test_a_lone_process_probes_as_before():
    """One process on a shared budget sends PROBES before the first answer, then opens up, as it did alone."""
    alone = AdmissionController(None, 8, shared=SharedRecord.open("k", AdmissionController.SHARED_SIZE))

    async def go() -> None:
        tickets = [await alone.acquire(1, 1) for _ in range(PROBES)]
        assert alone.concurrency.limit == PROBES
        for ticket in tickets:
            alone.complete(ticket, 1, 1)
        assert alone.concurrency.limit == 8

    asyncio.run(go())
    assert Path(os.environ["TEXTBOOKGEN_LIMITS_DIR"]).joinpath("k.limits").exists()
