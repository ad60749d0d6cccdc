"""A batch build's memory follows the requests in flight, not the corpus (brief h43).

`Generator.run_windows` pulls windows of requests only as batches can go, drops a request's body once its batch is
submitted (the journal keeps it, for another round) and keeps no outcome in memory; the build sends through it, then
writes the documents a window at a time from the journal. The batch API's invariants (nothing paid twice, rounds,
recovery of an interrupted run's batches, budgets) hold over windows as over one request set.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from textbookgen.batch import BatchLimits, BatchRunner
from textbookgen.engine import ChatRequest, Generator
from textbookgen.journal import Journal
from textbookgen.testing.emulator import Emulator, EmulatorConfig, Fault


def reqs(first: int, last: int, prefix: str = "Explain topic") -> list[ChatRequest]:
    return [ChatRequest(messages=[{"role": "user", "content": f"{prefix} {i}"}], max_tokens=64, metadata={"i": i})
            for i in range(first, last)]


def gen_for(emu: Emulator, tmp_path, **kw) -> Generator:
    opts = dict(batch=True, batch_size=4, batch_poll_s=0.02, progress=False, timeout_s=20.0,
                journal=tmp_path / "j.sqlite")
    return Generator("openai", "gpt-4o-mini", base_url=emu.openai_base_url, api_key="sk-test", **{**opts, **kw})


def windows(n: int, size: int, pulled: list[int], prefix: str = "Explain topic") -> Iterator[list[ChatRequest]]:
    """`n` requests `size` at a time, noting in `pulled` each window as it is taken."""
    for first in range(0, n, size):
        pulled.append(first)
        yield reqs(first, min(n, first + size), prefix)


def test_the_runner_holds_no_body_of_a_submitted_batch_and_reads_windows_as_batches_go(tmp_path, monkeypatch):
    """One batch at a time (BatchLimits.batches=1): when a batch goes out the runner holds that batch's requests
    without their bodies, at most one batch's worth queued with theirs, and has read at most the windows that
    queue needs; no outcome is kept in memory (the journal has them all)."""
    submit, seen = BatchRunner._submit_once, []

    async def spy(self, lines, tag):
        bodies = sum(item.req is not None for item in self.items.values())
        seen.append((len(self.running), len(self.items), bodies, len(pulled), len(self.gen._results)))
        return await submit(self, lines, tag)

    monkeypatch.setattr(BatchRunner, "_submit_once", spy)
    pulled: list[int] = []
    with Emulator(EmulatorConfig(batch_latency_s=0.05)) as emu:
        gen = gen_for(emu, tmp_path, batch_limits=BatchLimits(batches=1))
        gen.run_windows(windows(40, 4, pulled), total=40)
        assert emu.billed == 40 and emu.duplicates == 0 and emu.stats()["batches_created"] == 10
        out = gen_for(emu, tmp_path).run(reqs(0, 40))  # the journal answers them all: nothing is sent
        assert emu.billed == 40
    assert gen.stats["ok"] == 40 and gen.stats["sent"] == 40 and gen.stats["total"] == 40
    assert [r.metadata["i"] for r in out] == list(range(40)) and all(r.status == "ok" for r in out)
    assert len(seen) == 10 and all(running == 0 for running, *_ in seen)
    # the batch going out and the next one queued, no more; bodies only for the queued ones, outcomes none
    assert all(held <= 8 and bodies <= 8 and results == 0 for _, held, bodies, _, results in seen), seen
    assert all(windows_read <= i + 2 for i, (*_, windows_read, _) in enumerate(seen)), seen


def test_requests_going_round_again_get_their_bodies_back_from_the_journal(tmp_path):
    """A transient error inside a batch: the request, whose body was dropped when its batch went out, is sent in a
    later round with the body the journal kept (the emulator answers it: the same request), and answered."""
    faults = [Fault("500", first=1, match="FLAKY")]
    with Emulator(EmulatorConfig(batch_latency_s=0.05, faults=faults)) as emu:
        gen = gen_for(emu, tmp_path)
        gen.run_windows(iter([reqs(0, 6), reqs(0, 2, "FLAKY request"), reqs(6, 9)]), total=11)
        assert emu.billed == 11 and emu.duplicates == 0
        out = gen_for(emu, tmp_path).run(reqs(0, 9) + reqs(0, 2, "FLAKY request"))
    assert gen.stats["ok"] == 11 and gen.stats["retries"] == 2
    assert all(r.status == "ok" for r in out) and [r.attempts for r in out[-2:]] == [2, 2]


def test_an_interrupted_window_runs_batches_are_collected_not_sent_again(tmp_path, monkeypatch):
    """Killed after submitting: the next run over the windows adopts the open batches (their requests made from the
    journal's rows, not yet read from any window), collects them and sends only the rest: nothing is paid twice."""
    collect = BatchRunner._collect

    async def killed(self, items, *, once=False):
        raise RuntimeError("killed after submitting")

    with Emulator(EmulatorConfig(batch_latency_s=0.05)) as emu:
        monkeypatch.setattr(BatchRunner, "_collect", killed)
        with pytest.raises(RuntimeError, match="killed"):
            gen_for(emu, tmp_path).run_windows(iter([reqs(0, 4)]), total=4)
        monkeypatch.setattr(BatchRunner, "_collect", collect)
        gen = gen_for(emu, tmp_path)
        gen.run_windows(windows(12, 4, []), total=12)
        assert emu.billed == 12 and emu.duplicates == 0
    assert gen.stats["ok"] == 12 and gen.stats["sent"] == 8
    with Journal(tmp_path / "j.sqlite") as j:
        assert j.summary()["done"] == 12 and j.summary()["batches"] == {"done": 3}


def test_a_budget_over_windows_stops_within_it_and_leaves_the_rest_pending(tmp_path):
    """The budget holds at the worst case of the running batches over windows too; what does not fit is skipped
    (pending in the journal), every window's requests counted."""
    with Emulator(EmulatorConfig(batch_latency_s=0.05)) as emu:
        gen = gen_for(emu, tmp_path, max_output_tokens=64 * 10)
        gen.run_windows(windows(40, 4, []), total=40)
    assert gen.stats["output_tokens"] <= 640 and gen.stats["skipped_budget"] > 0
    assert gen.stats["ok"] + gen.stats["skipped_budget"] == 40
    with Journal(tmp_path / "j.sqlite") as j:
        summary = j.summary()
    assert summary["by_status"]["pending"] == gen.stats["skipped_budget"] and summary["output_tokens"] <= 640
