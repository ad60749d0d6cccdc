"""How the answers of an ended batch are recorded (`BatchRunner._collect`): the branches the end-to-end batch
tests do not reach on their own."""

from __future__ import annotations

import pytest
from test_batch import PROVIDERS, batch_gen, batch_rows, reqs
from test_engine_open_batches import gen_for, interrupt_after_submission

from textbookgen.errors import FatalProviderError, RetryableError
from textbookgen.journal import Journal
from textbookgen.testing import emulator as emulator_module
from textbookgen.testing.emulator import Emulator, EmulatorConfig


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_a_repeated_results_line_is_recorded_once(provider, model, tmp_path, monkeypatch):
    """A results file that names a request twice (a provider's retry, a concatenated download) books its answer
    once: one journal row, one cost."""
    def twice(data: bytes) -> bytes:
        first = data.split(b"\n", 1)[0]
        return first + b"\n" + data

    openai_output, anthropic_results = emulator_module.openai_output, emulator_module.anthropic_results
    monkeypatch.setattr(emulator_module, "openai_output", lambda job: (twice(openai_output(job)[0]),
                                                                        openai_output(job)[1]))
    monkeypatch.setattr(emulator_module, "anthropic_results", lambda job: twice(anthropic_results(job)))
    with Emulator(EmulatorConfig(batch_latency_s=0.05)) as emu:
        gen = batch_gen(emu, provider, model, tmp_path)
        out = gen.run(reqs(6))
    assert all(r.status in ("ok", "truncated") and r.attempts == 1 for r in out)
    assert gen.stats["ok"] + gen.stats["truncated"] == 6
    with Journal(gen.journal_path) as j:
        summary = j.summary()
    assert summary["done"] == 6 and summary["cost_usd"] == pytest.approx(sum(r.cost_usd for r in out))
    assert {status for _, _, status, _ in batch_rows(gen.journal_path)} == {"done"}


def test_a_live_run_that_cannot_check_earlier_batches_stops_before_sending(tmp_path, monkeypatch):
    """A live run's one look at an earlier --batch run's batches (`once`): a poll that fails after its retries
    stops the run at once, nothing sent, instead of waiting polls out as a batch run does."""
    from textbookgen import batch as batch_mod

    async def down(self, batch_id):
        raise RetryableError("openai HTTP 503 (service_unavailable): down for maintenance")

    requests = reqs(6)
    with Emulator(EmulatorConfig(latency_median_s=0.001, batch_latency_s=2.0)) as emu:
        interrupt_after_submission(gen_for(emu, "openai", "gpt-4o-mini", tmp_path, batch=True), requests, 1)
        monkeypatch.setattr(batch_mod.OpenAIBatches, "poll", down)
        gen = gen_for(emu, "openai", "gpt-4o-mini", tmp_path, max_attempts=5, backoff_initial_s=0.01,
                      backoff_max_s=0.02)
        with pytest.raises(FatalProviderError, match="cannot check the openai batches an earlier --batch run "
                                                     "submitted .*nothing was sent"):
            gen.run(requests)
        assert emu.received == 0
