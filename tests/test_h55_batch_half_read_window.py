"""A batch run over windows (`Generator.run_windows`) reads a window's journal rows once, when the window starts, and
hands its requests out as batches can go. A key booked while its window was half-read (its batch ended while the
queue waited on a cap or the budget) must not be taken for a new request when the rest of the window is read: it was
sent again and paid twice (r48: 12 billed for 9, in both cases below)."""

from __future__ import annotations

import pytest
from test_h43_batch_windows import gen_for, reqs

from textbookgen.batch import BatchLimits, BatchRunner
from textbookgen.testing.emulator import Emulator, EmulatorConfig


def test_a_key_repeated_in_a_later_window_is_not_paid_twice(tmp_path):
    """A later window repeats three keys whose batch ran while it was read (one batch at a time)."""
    with Emulator(EmulatorConfig(batch_latency_s=0.2)) as emu:
        gen = gen_for(emu, tmp_path, batch_size=3, batch_limits=BatchLimits(batches=1))
        gen.run_windows(iter([reqs(0, 3), reqs(3, 9) + reqs(0, 3)]), total=12)
    assert (emu.billed, emu.duplicates) == (9, 0)


def test_a_request_adopted_from_a_killed_run_and_booked_mid_window_is_not_sent_again(tmp_path, monkeypatch):
    """A run killed after submitting three requests; the rerun's window holds them after six fresh ones, and its
    budget holds the next batch back while the adopted one runs (64 output tokens a request: 3 fit, not 6)."""
    collect = BatchRunner._collect

    async def killed(self, items, *, once=False):
        raise RuntimeError("killed after submitting")

    with Emulator(EmulatorConfig(batch_latency_s=0.2, responder=lambda body: "A short answer.")) as emu:
        monkeypatch.setattr(BatchRunner, "_collect", killed)
        with pytest.raises(RuntimeError):
            gen_for(emu, tmp_path, batch_size=3).run_windows(iter([reqs(6, 9)]), total=3)
        monkeypatch.setattr(BatchRunner, "_collect", collect)
        gen = gen_for(emu, tmp_path, batch_size=3, max_output_tokens=250)
        gen.run_windows(iter([reqs(0, 9)]), total=9)
    assert (emu.billed, emu.duplicates) == (9, 0)
