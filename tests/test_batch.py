"""Batch mode end to end: the real openai/anthropic clients against the emulator's batch APIs."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import Counter
from dataclasses import replace

import pytest
from batch_testlib import QueueLimitedEmulator, TokenLimitedEmulator, shifted_clock

from textbookgen.batch import BatchLimits, cancel_batches
from textbookgen.engine import ChatRequest, Generator
from textbookgen.errors import FatalProviderError
from textbookgen.journal import Journal
from textbookgen.pricing import estimate_cost
from textbookgen.testing.emulator import Emulator, EmulatorConfig, Fault

PROVIDERS = [("openai", "gpt-4o-mini"), ("anthropic", "claude-haiku-4-5")]


def reqs(n: int, prefix: str = "Explain topic") -> list[ChatRequest]:
    return [ChatRequest(messages=[{"role": "user", "content": f"{prefix} {i}"}], max_tokens=64, metadata={"i": i})
            for i in range(n)]


def batch_gen(emu: Emulator, provider: str, model: str, tmp_path, **kw) -> Generator:
    base = emu.anthropic_base_url if provider == "anthropic" else emu.openai_base_url
    opts = dict(batch=True, batch_size=12, batch_poll_s=0.05, progress=False, timeout_s=20.0,
                journal=tmp_path / f"{provider}.sqlite")
    return Generator(provider, model, base_url=base, api_key="sk-test-key", **{**opts, **kw})


def batch_rows(path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT tag, batch_id, status, keys FROM batches ORDER BY created_at").fetchall()


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_batches_answer_everything_at_half_price(provider, model, tmp_path):
    requests = reqs(30)
    with Emulator(EmulatorConfig(batch_latency_s=0.1)) as emu:
        gen = batch_gen(emu, provider, model, tmp_path)
        out = gen.run(requests)
        stats = emu.stats()
        assert stats["batches_created"] == 3 and stats["batch_requests"] == 30  # 12 + 12 + 6
        assert emu.billed == 30 and emu.duplicates == 0
        rerun = batch_gen(emu, provider, model, tmp_path).run(requests)  # all replayed: nothing is sent
        assert emu.billed == 30 and emu.stats()["batches_created"] == 3
    assert [x.text for x in rerun] == [x.text for x in out]
    assert [r.metadata["i"] for r in out] == list(range(30))
    assert all(r.status in ("ok", "truncated") and r.text and r.attempts == 1 for r in out)
    r = out[0]
    assert r.cost_usd == pytest.approx(0.5 * estimate_cost(model, r.input_tokens, r.output_tokens))
    rows = batch_rows(gen.journal_path)
    assert len(rows) == 3 and {status for _, _, status, _ in rows} == {"done"}
    assert sorted(k for *_, keys in rows for k in json.loads(keys)) == sorted(r.key for r in out)
    with Journal(gen.journal_path) as j:
        summary = j.summary()
    assert summary["done"] == 30 and summary["batches"] == {"done": 3}
    assert summary["cost_usd"] == pytest.approx(sum(x.cost_usd for x in out))


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_failed_items_and_transient_errors_inside_batches(provider, model, tmp_path):
    requests = reqs(6) + reqs(2, "BAD request") + reqs(2, "FLAKY request")
    faults = [Fault("400", rate=1.0, match="BAD"), Fault("500", first=1, match="FLAKY")]
    with Emulator(EmulatorConfig(batch_latency_s=0.05, faults=faults)) as emu:
        out = batch_gen(emu, provider, model, tmp_path).run(requests)
        assert emu.stats()["batches_created"] == 2  # the flaky ones went round again
    assert all(r.status in ("ok", "truncated") and r.attempts == 1 for r in out[:6])
    assert all(r.status == "failed" and ("HTTP 400" in r.error or "invalid_request_error" in r.error) for r in out[6:8])
    assert all(r.status in ("ok", "truncated") and r.attempts == 2 for r in out[8:])
    with Journal(tmp_path / f"{provider}.sqlite") as j:
        rows = j.rows([r.key for r in out[6:8]])
    assert {row["error_class"] for row in rows.values()} == {"bad_request"}


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_expired_requests_go_round_again_up_to_the_limit(provider, model, tmp_path):
    with Emulator(EmulatorConfig(batch_latency_s=0.05, batch_outcomes=["expire:0.5"])) as emu:
        out = batch_gen(emu, provider, model, tmp_path, batch_size=100).run(reqs(10))
        assert emu.billed == 10 and emu.duplicates == 0 and emu.stats()["batches_created"] == 2
    assert sorted(r.attempts for r in out) == [1] * 5 + [2] * 5 and all(r.text for r in out)
    with Emulator(EmulatorConfig(batch_latency_s=0.05, batch_outcomes=["expire:0.5"])) as emu:
        out = batch_gen(emu, provider, model, tmp_path / "capped", batch_size=100, batch_max_rounds=1).run(reqs(10))
    failed = [r for r in out if r.status == "failed"]
    assert len(failed) == 5 and all("gave up after 1 batch rounds" in r.error for r in failed)


async def _interrupt_after_submission(gen: Generator, emu: Emulator, requests) -> None:
    """Cancel the run (Ctrl-C) once the journal records two batches as running at the provider."""
    task = asyncio.ensure_future(gen.arun(requests))
    await asyncio.sleep(0)  # the run opens its journal first
    while [status for _, _, status, _ in batch_rows(gen.journal_path)] != ["running"] * 2:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_an_interrupted_run_collects_its_batches_instead_of_paying_again(provider, model, tmp_path):
    requests = reqs(24)
    with Emulator(EmulatorConfig(batch_latency_s=0.5)) as emu:
        asyncio.run(_interrupt_after_submission(batch_gen(emu, provider, model, tmp_path), emu, requests))
        assert [status for _, _, status, _ in batch_rows(tmp_path / f"{provider}.sqlite")] == ["running"] * 2
        out = batch_gen(emu, provider, model, tmp_path).run(requests)
        assert emu.stats()["batches_created"] == 2 and emu.billed == 24 and emu.duplicates == 0
    assert all(r.text for r in out)


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_a_crash_before_the_batch_id_is_recorded_finds_the_batch_again(provider, model, tmp_path, monkeypatch):
    requests = reqs(10)
    real = Journal.update_batch

    def die_before_recording(self, tag, status, batch_id=None):
        if status == "running":
            raise KeyboardInterrupt  # the process is gone right after the provider took the batch
        real(self, tag, status, batch_id)

    with Emulator(EmulatorConfig(batch_latency_s=0.05)) as emu:
        monkeypatch.setattr(Journal, "update_batch", die_before_recording)
        with pytest.raises(KeyboardInterrupt):
            batch_gen(emu, provider, model, tmp_path).run(requests)
        monkeypatch.setattr(Journal, "update_batch", real)
        [(_, batch_id, status, _)] = batch_rows(tmp_path / f"{provider}.sqlite")
        assert (batch_id, status) == (None, "submitting")
        out = batch_gen(emu, provider, model, tmp_path).run(requests)
        assert emu.stats()["batches_created"] == 1 and emu.billed == 10 and emu.duplicates == 0
    assert all(r.text for r in out)
    assert [status for _, _, status, _ in batch_rows(tmp_path / f"{provider}.sqlite")] == ["done"]


class LosesTheFirstCreateAnswer(Emulator):
    """Creates the batch, then drops the connection before answering the `lose_at`-th create: the client
    sees a reset."""

    lost = creates = 0
    lose_at = 1

    async def _lose_once(self, request, create):
        response = await create(request)
        self.creates += 1
        if self.creates == self.lose_at:
            self.lost += 1
            request.transport.abort()
        return response

    async def _openai_batch_create(self, request):
        return await self._lose_once(request, super()._openai_batch_create)

    async def _anthropic_batch_create(self, request):
        return await self._lose_once(request, super()._anthropic_batch_create)


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_a_batch_whose_create_answer_was_lost_is_adopted_not_sent_twice(provider, model, tmp_path):
    with LosesTheFirstCreateAnswer(EmulatorConfig(batch_latency_s=0.05)) as emu:
        out = batch_gen(emu, provider, model, tmp_path, backoff_initial_s=0.01, backoff_max_s=0.02).run(reqs(5))
        assert emu.lost == 1 and emu.stats()["batches_created"] == 1
        assert emu.billed == 5 and emu.duplicates == 0
    assert all(r.text for r in out)


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_a_lost_create_answer_is_adopted_beside_an_earlier_batch_of_the_same_size(provider, model, tmp_path):
    # Anthropic finds the batch by size and time: the run's first chunk has both, and must not count as a match
    with LosesTheFirstCreateAnswer(EmulatorConfig(batch_latency_s=0.3)) as emu:
        emu.lose_at = 2
        out = batch_gen(emu, provider, model, tmp_path, batch_size=10, backoff_initial_s=0.01,
                        backoff_max_s=0.02).run(reqs(20))
        assert emu.lost == 1 and emu.stats()["batches_created"] == 2
        assert emu.billed == 20 and emu.duplicates == 0
    assert all(r.text and r.attempts == 1 for r in out)


def _crash_before_recording_the_second_id(emu: Emulator, provider: str, model: str, tmp_path, monkeypatch) -> None:
    """A run of two equal chunks that dies right after the provider took the second one."""
    real, recorded = Journal.update_batch, []

    def die_before_recording(self, tag, status, batch_id=None):
        if status == "running" and recorded:
            raise KeyboardInterrupt
        recorded.append(batch_id)
        real(self, tag, status, batch_id)

    monkeypatch.setattr(Journal, "update_batch", die_before_recording)
    with pytest.raises(KeyboardInterrupt):
        batch_gen(emu, provider, model, tmp_path, batch_size=10).run(reqs(20))
    monkeypatch.setattr(Journal, "update_batch", real)
    assert [status for _, _, status, _ in batch_rows(tmp_path / f"{provider}.sqlite")] == ["running", "submitting"]


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_a_rerun_finds_a_batch_whose_id_was_not_recorded_beside_one_of_the_same_size(provider, model, tmp_path,
                                                                                       monkeypatch):
    with Emulator(EmulatorConfig(batch_latency_s=0.3)) as emu:
        _crash_before_recording_the_second_id(emu, provider, model, tmp_path, monkeypatch)
        out = batch_gen(emu, provider, model, tmp_path, batch_size=10).run(reqs(20))
        assert emu.stats()["batches_created"] == 2 and emu.billed == 20 and emu.duplicates == 0
    assert all(r.text and r.attempts == 1 for r in out)


def test_cancel_finds_a_batch_whose_id_was_not_recorded_beside_one_of_the_same_size(tmp_path, monkeypatch):
    with Emulator(EmulatorConfig(batch_latency_s=30.0)) as emu:
        _crash_before_recording_the_second_id(emu, "anthropic", "claude-haiku-4-5", tmp_path, monkeypatch)
        counts = cancel_batches(tmp_path / "anthropic.sqlite", base_url=emu.anthropic_base_url,
                                api_key="sk-test-key", poll_s=0.01)
        assert counts["cancelled"] == 2 and counts["lost"] == 0 and emu.stats()["batches_created"] == 2


def test_answers_to_requests_a_rerun_dropped_are_kept_in_the_journal(tmp_path):
    requests = reqs(12)
    with Emulator(EmulatorConfig(batch_latency_s=0.5)) as emu:
        asyncio.run(_interrupt_after_submission(batch_gen(emu, "openai", "gpt-4o-mini", tmp_path, batch_size=6),
                                                emu, requests))
        batch_gen(emu, "openai", "gpt-4o-mini", tmp_path).run(requests[:3])  # the recipe shrank
        assert emu.billed == 12
        out = batch_gen(emu, "openai", "gpt-4o-mini", tmp_path).run(requests)  # and grew back: all replayed
        assert emu.billed == 12 and emu.stats()["batches_created"] == 2
    assert all(r.text for r in out)


def test_budget_limits_what_is_submitted(tmp_path):
    """5 requests fit at max_tokens; answers that stop sooner leave room for more (tests/test_batch_budget.py)."""
    with Emulator(EmulatorConfig(batch_latency_s=0.05)) as emu:
        gen = batch_gen(emu, "openai", "gpt-4o-mini", tmp_path, max_output_tokens=64 * 5)
        out = gen.run(reqs(12))
        assert emu.billed >= 5 and 64 * 4 <= emu.output_tokens <= 64 * 5
    assert [r.status for r in out].count("skipped_budget") == 12 - emu.billed > 0


def test_batch_needs_a_provider_with_a_batch_api_and_a_valid_key(tmp_path):
    with pytest.raises(ValueError, match="batch mode needs provider"):
        Generator("openai-compatible", "m", base_url="http://127.0.0.1:9/v1", batch=True)
    with pytest.raises(ValueError, match="batch=True needs a journal"):  # in memory, an interrupted run's batches
        Generator("openai", "gpt-4o-mini", batch=True)                     # were lost, and paid again by a rerun
    with Emulator(EmulatorConfig(api_keys=["sk-right"])) as emu:
        for provider, model in PROVIDERS:
            with pytest.raises(FatalProviderError, match="authentication"):
                batch_gen(emu, provider, model, tmp_path).run(reqs(2))
        assert emu.billed == 0


def test_transient_batch_api_errors_are_retried_and_a_refused_batch_fails_its_requests(tmp_path, monkeypatch):
    from textbookgen import batch as batch_mod
    from textbookgen.errors import ItemError, RetryableError

    real_poll, real_submit, calls = batch_mod.OpenAIBatches.poll, batch_mod.OpenAIBatches.submit, Counter()

    async def flaky_poll(self, batch_id):
        calls["poll"] += 1
        if calls["poll"] <= 2:
            raise RetryableError("openai: connection error: reset by peer")
        return await real_poll(self, batch_id)

    async def refuse_first(self, lines, tag):
        calls["submit"] += 1
        if calls["submit"] == 1:
            raise ItemError("openai HTTP 400 (invalid_request_error): file too large", error_class="bad_request")
        return await real_submit(self, lines, tag)

    monkeypatch.setattr(batch_mod.OpenAIBatches, "poll", flaky_poll)
    monkeypatch.setattr(batch_mod.OpenAIBatches, "submit", refuse_first)
    with Emulator(EmulatorConfig(batch_latency_s=0.05)) as emu:
        gen = batch_gen(emu, "openai", "gpt-4o-mini", tmp_path, batch_size=5, backoff_initial_s=0.01,
                        backoff_max_s=0.02)
        out = gen.run(reqs(10))
        assert emu.billed == 5 and emu.stats()["batches_created"] == 1
    assert [r.status for r in out[:5]] == ["failed"] * 5 and "batch rejected" in out[0].error
    assert all(r.text for r in out[5:]) and gen.stats["retries"] >= 2
    assert [status for _, _, status, _ in batch_rows(gen.journal_path)] == ["rejected", "done"]


def test_a_batch_refused_for_the_enqueued_token_limit_waits_for_room_instead_of_failing(tmp_path):
    # 10 requests are about 100 prompt tokens: the first batch fits the limit, the next two submitted with it
    # do not; they go back to the queue and follow as batches end
    with TokenLimitedEmulator(EmulatorConfig(batch_latency_s=0.1), token_limit=150) as emu:
        gen = batch_gen(emu, "openai", "gpt-4o-mini", tmp_path, batch_size=10)
        out = gen.run(reqs(30))
        assert emu.refused == 2 and emu.billed == 30 and emu.duplicates == 0  # learned: no refusal after the first
    assert all(r.status == "ok" and r.attempts == 1 for r in out)
    with Journal(gen.journal_path) as j:
        summary = j.summary()
    assert summary["done"] == 30 and summary["failures"] == {}


def test_with_no_room_even_alone_the_requests_stay_pending_for_a_rerun(tmp_path):
    with TokenLimitedEmulator(EmulatorConfig(batch_latency_s=0.02), token_limit=5) as emu:  # not one request fits
        gen = batch_gen(emu, "openai", "gpt-4o-mini", tmp_path, max_attempts=3, batch_poll_s=0.01)
        with pytest.raises(FatalProviderError, match="kept refusing batches for lack of room"):
            gen.run(reqs(6))
        assert emu.refused == 3 and emu.billed == 0
        with Journal(gen.journal_path) as j:
            assert j.summary()["by_status"] == {"pending": 6}
        emu.token_limit = 1000  # others' batches have ended
        out = batch_gen(emu, "openai", "gpt-4o-mini", tmp_path).run(reqs(6))
        assert emu.billed == 6
    assert all(r.status == "ok" and r.attempts == 1 for r in out)


@pytest.mark.parametrize("limits", [BatchLimits(enqueued_tokens=150), BatchLimits(batches=1)])
def test_configured_limits_keep_submissions_under_them(limits, tmp_path):
    with TokenLimitedEmulator(EmulatorConfig(batch_latency_s=0.05), token_limit=150) as emu:
        out = batch_gen(emu, "openai", "gpt-4o-mini", tmp_path, batch_size=10, batch_limits=limits).run(reqs(30))
        assert emu.refused == 0 and emu.billed == 30
    assert emu.most_enqueued <= 150 and emu.most_running == (2 if limits.batches is None else 1)
    assert all(r.status == "ok" for r in out)


def test_anthropic_queue_limit_holds_the_batch_until_running_ones_end(tmp_path):
    with QueueLimitedEmulator(EmulatorConfig(batch_latency_s=0.3), queue_limit=12) as emu:
        gen = batch_gen(emu, "anthropic", "claude-haiku-4-5", tmp_path, max_attempts=3, backoff_initial_s=0.01,
                        backoff_max_s=0.02)
        out = gen.run(reqs(24))
        assert emu.refused == 1 and emu.billed == 24 and emu.duplicates == 0
    assert all(r.status == "ok" and r.attempts == 1 for r in out)
    statuses = [status for _, _, status, _ in batch_rows(gen.journal_path)]
    assert statuses[:2] == ["done", "deferred"] and set(statuses[2:]) == {"done"}


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_cancelling_keeps_what_ran_and_a_rerun_sends_the_rest(provider, model, tmp_path, monkeypatch):
    requests = reqs(24)
    shift = shifted_clock(monkeypatch)
    with Emulator(EmulatorConfig(batch_latency_s=100.0)) as emu:
        gen = batch_gen(emu, provider, model, tmp_path)
        asyncio.run(_interrupt_after_submission(gen, emu, requests))
        shift[0] = 60.0  # validated at 25 s, one request done every 6.25 s: 5 of each batch of 12 have run
        counts = cancel_batches(gen.journal_path, base_url=gen.base_url, api_key="sk-test-key", poll_s=0.01)
        assert counts == {"cancelled": 2, "lost": 0, "gone": 0, "answered": 10, "failed": 0, "pending": 14}
        assert emu.billed == 10
        with Journal(gen.journal_path) as j:
            summary = j.summary()
        assert summary["batches"] == {"cancelled": 2} and summary["by_status"] == {"ok": 10, "pending": 14}
        emu.config.batch_latency_s = 0.05
        out = batch_gen(emu, provider, model, tmp_path).run(requests)
        assert emu.billed == 24 and emu.duplicates == 0
    assert all(r.status == "ok" and r.attempts == 1 for r in out)  # the answers kept by the cancel at the batch price
    assert all(r.cost_usd == pytest.approx(0.5 * estimate_cost(model, r.input_tokens, r.output_tokens)) for r in out)


def test_cli_cancel_batches(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from textbookgen.cli import app

    monkeypatch.setenv("TBG_TEST_KEY", "sk-test-key")
    with Emulator(EmulatorConfig(batch_latency_s=30.0)) as emu:
        gen = batch_gen(emu, "openai", "gpt-4o-mini", tmp_path)
        asyncio.run(_interrupt_after_submission(gen, emu, reqs(24)))
        path = str(gen.journal_path)
        wrong = CliRunner().invoke(app, ["journal", path, "--base-url", emu.openai_base_url])
        done = CliRunner().invoke(app, ["journal", path, "--cancel-batches", "--base-url", emu.openai_base_url,
                                        "--api-key-env", "TBG_TEST_KEY"])
        again = CliRunner().invoke(app, ["journal", path, "--cancel-batches", "--base-url", emu.openai_base_url,
                                         "--api-key-env", "TBG_TEST_KEY"])
        assert emu.billed == 0
    assert wrong.exit_code == 1 and "--base-url and --api-key-env go with --cancel-batches" in wrong.output
    assert done.exit_code == 0, done.output
    assert ("batches: 2 cancelled, 0 never created; requests: 0 answered, 0 failed, 24 pending (rerun the generate "
            "or build command") in done.output
    assert '"cancelled": 2' in done.output
    assert again.exit_code == 0 and "batches: 0 cancelled" in again.output


def test_an_interrupted_batch_run_names_the_cancel_command_with_its_server(tmp_path, caplog):
    with Emulator(EmulatorConfig(batch_latency_s=30.0)) as emu, caplog.at_level("WARNING", logger="textbookgen"):
        gen = batch_gen(emu, "openai", "gpt-4o-mini", tmp_path)
        asyncio.run(_interrupt_after_submission(gen, emu, reqs(24)))
    assert (f"rerun the same command to collect them, or cancel them, keeping what they finished, with "
            f"`textbookgen journal {gen.journal_path} --cancel-batches --base-url {emu.openai_base_url}`") in caplog.text


def test_cli_cancel_batches_at_the_wrong_server_says_to_pass_base_url(tmp_path, monkeypatch):
    import socket

    from tenacity import wait_none
    from typer.testing import CliRunner

    from textbookgen.cli import app

    with Emulator(EmulatorConfig(batch_latency_s=30.0)) as emu:
        gen = batch_gen(emu, "openai", "gpt-4o-mini", tmp_path)
        asyncio.run(_interrupt_after_submission(gen, emu, reqs(24)))
    with socket.socket() as s:  # a port nothing listens on stands in for the provider's API
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    monkeypatch.setenv("OPENAI_BASE_URL", closed)  # what the client tries without --base-url
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
    monkeypatch.setattr("textbookgen.batch.wait_exponential_jitter", lambda **_: wait_none())
    res = CliRunner().invoke(app, ["journal", str(gen.journal_path), "--cancel-batches"])
    assert res.exit_code == 1 and len(res.output.splitlines()) == 1, res.output
    assert "Cannot connect to host" in res.output and res.output.rstrip().endswith(
        "no server answered at the one the journal recorded (or the provider's API): if the batches went to another "
        "server (a recipe's provider.base_url), pass --base-url with its URL")
    wrong = CliRunner().invoke(app, ["journal", str(gen.journal_path), "--cancel-batches", "--base-url", closed])
    assert wrong.exit_code == 1 and "Cannot connect to host" in wrong.output and "--base-url" not in wrong.output
    assert batch_rows(gen.journal_path)[0][2] == "running"  # still open: a cancel at the right server finds it


def _closed_url() -> str:
    """A URL nothing listens at."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_cli_cancel_batches_without_base_url_reaches_the_server_the_journal_recorded(provider, model, tmp_path,
                                                                                     monkeypatch):
    """The batches went to the emulator; the provider's API (its environment variable here) is elsewhere. Without
    --base-url the cancel goes where the journal says they were submitted; an explicit --base-url wins."""
    from tenacity import wait_none
    from typer.testing import CliRunner

    from textbookgen.cli import app

    monkeypatch.setenv(f"{provider.upper()}_BASE_URL", _closed_url())  # what the client tries on its own
    monkeypatch.setenv("TBG_TEST_KEY", "sk-test-key")
    monkeypatch.setattr("textbookgen.batch.wait_exponential_jitter", lambda **_: wait_none())
    with Emulator(EmulatorConfig(batch_latency_s=30.0)) as emu:
        gen = batch_gen(emu, provider, model, tmp_path)
        asyncio.run(_interrupt_after_submission(gen, emu, reqs(24)))
        path = str(gen.journal_path)
        elsewhere = CliRunner().invoke(app, ["journal", path, "--cancel-batches", "--base-url", _closed_url(),
                                             "--api-key-env", "TBG_TEST_KEY"])
        assert elsewhere.exit_code == 1 and "Cannot connect to host" in elsewhere.output
        assert [status for _, _, status, _ in batch_rows(path)] == ["running"] * 2
        done = CliRunner().invoke(app, ["journal", path, "--cancel-batches", "--api-key-env", "TBG_TEST_KEY"])
        assert emu.stats()["batches_created"] == 2 and emu.billed == 0
    assert done.exit_code == 0, done.output
    assert "batches: 2 cancelled, 0 never created; requests: 0 answered, 0 failed, 24 pending" in done.output
    with sqlite3.connect(path) as db:
        recorded = {url for (url,) in db.execute("SELECT base_url FROM batches")}
    assert {url.rstrip("/") for url in recorded} == {gen.base_url.rstrip("/")}
    assert not any(b"sk-test-key" in f.read_bytes() for f in tmp_path.glob(f"{provider}.sqlite*"))


def test_the_recorded_server_leaves_out_credentials_in_its_url(monkeypatch):
    """A base_url with user:password is refused (providers.replica_urls), but the SDK's own variable still takes one."""
    from textbookgen.batch import server_of
    from textbookgen.providers import make_provider

    monkeypatch.setenv("OPENAI_BASE_URL", "http://me:secret@proxy.local/v1")
    provider = make_provider("openai", "gpt-4o-mini", api_key="sk-x", base_url=None, timeout=5.0)
    assert server_of(provider) == "http://proxy.local/v1/"


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_an_unreadable_results_line_loses_only_its_own_answer(provider, model, tmp_path, monkeypatch):
    """A cut or garbled line in a results file failed the whole batch on every rerun (its paid answers lost for good);
    now the other answers are recorded and the request whose line is unreadable goes round again."""
    from textbookgen.testing import emulator as emulator_module

    def spoil(data: bytes) -> bytes:  # a cut line, a garbled one, and one whose answer has no body
        first, second, rest = data.split(b"\n", 2)
        hollow = json.loads(second)
        hollow.update(response={"status_code": 200, "body": {}}, result={"type": "succeeded", "message": {}})
        return first[:len(first) // 2] + b"\n{not json\n\n" + json.dumps(hollow).encode() + b"\n" + rest

    openai_output, anthropic_results = emulator_module.openai_output, emulator_module.anthropic_results
    spoiled: list[str] = []

    def spoiled_openai(job):
        output, errors = openai_output(job)
        return (spoil(output), errors) if not spoiled and not spoiled.append(job.id) else (output, errors)

    def spoiled_anthropic(job):
        data = anthropic_results(job)
        return spoil(data) if not spoiled and not spoiled.append(job.id) else data

    monkeypatch.setattr(emulator_module, "openai_output", spoiled_openai)
    monkeypatch.setattr(emulator_module, "anthropic_results", spoiled_anthropic)
    with Emulator(EmulatorConfig(batch_latency_s=0.05)) as emu:
        out = batch_gen(emu, provider, model, tmp_path).run(reqs(6))
        assert emu.stats()["batches_created"] == 2 and emu.billed == 8  # the unreadable answers, paid again
    assert all(r.status in ("ok", "truncated") and r.text for r in out)
    assert sorted(r.attempts for r in out) == [1] * 4 + [2] * 2
    assert {status for _, _, status, _ in batch_rows(tmp_path / f"{provider}.sqlite")} == {"done"}


@pytest.mark.parametrize("provider, model, config", [
    ("openai", "gpt-4o-mimi", EmulatorConfig(batch_latency_s=0.05, models=["gpt-4o-mini"])),
    ("anthropic", "claude-haiku-4-6", EmulatorConfig(batch_latency_s=0.05, models=["claude-haiku-4-5"])),
    ("openai", "gpt-5-mini", EmulatorConfig(batch_latency_s=0.05, model_rules=True)),  # temperature 0.7 refused
])
def test_answers_that_stop_a_live_run_stop_a_batch_run_and_leave_the_requests_pending(provider, model, config,
                                                                                       tmp_path):
    """An unknown model or a parameter the model refuses came back inside a batch as a failure of every request:
    for good (bad_request, a rerun does not send them) or, at Anthropic, as transient, round after round (a day of
    waiting each); like a live call's, such an answer now stops the run and the requests stay pending."""
    requests = [replace(r, temperature=0.7) for r in reqs(6)]
    with Emulator(config) as emu:
        gen = batch_gen(emu, provider, model, tmp_path, batch_size=3)
        with pytest.raises(FatalProviderError, match="unknown model|refuses the request parameter"):
            gen.run(requests)
        assert emu.stats()["batches_created"] == 2 and emu.billed == 0  # no round after it
    with Journal(gen.journal_path) as j:
        assert j.summary()["by_status"] == {"pending": 6}


def test_polls_that_keep_failing_for_a_while_do_not_end_a_run_waiting_for_its_batches(tmp_path, monkeypatch):
    """A batch API outage longer than one call's retries ended a run that may wait a day for its batches; polls now
    go on through it, and the run gives up only after max_attempts failed polls in a row (a rerun collects)."""
    from textbookgen import batch as batch_mod
    from textbookgen.errors import RetryableError

    real_poll, down = batch_mod.OpenAIBatches.poll, [10**9]

    async def down_for_a_while(self, batch_id):
        down[0] -= 1
        if down[0] >= 0:
            raise RetryableError("openai HTTP 503 (service_unavailable): down for maintenance")
        return await real_poll(self, batch_id)

    monkeypatch.setattr(batch_mod.OpenAIBatches, "poll", down_for_a_while)
    with Emulator(EmulatorConfig(batch_latency_s=0.05)) as emu:
        gen = batch_gen(emu, "openai", "gpt-4o-mini", tmp_path, max_attempts=2, backoff_initial_s=0.01,
                        backoff_max_s=0.02)
        with pytest.raises(FatalProviderError, match="kept failing"):
            gen.run(reqs(6))
        assert [status for _, _, status, _ in batch_rows(gen.journal_path)] == ["running"]
        down[0] = 9  # two polls and more, each call tried 4 times
        out = batch_gen(emu, "openai", "gpt-4o-mini", tmp_path, max_attempts=4, backoff_initial_s=0.01,
                        backoff_max_s=0.02).run(reqs(6))
        assert emu.billed == 6 and emu.stats()["batches_created"] == 1
    assert all(r.status in ("ok", "truncated") for r in out)


def test_failed_polls_between_answered_ones_do_not_add_up_to_an_outage(tmp_path, monkeypatch):
    """failed_polls was reset only when a batch ended, so max_attempts failed polls spread over a day-long batch,
    each followed by polls that answered, ended the run; only failures in a row count."""
    from textbookgen import batch as batch_mod
    from textbookgen.errors import RetryableError

    real_poll = batch_mod.OpenAIBatches.poll
    script = ["fail", "fail", "running"] * 3  # max_attempts=2: each fail pair is one failed poll, then one that answers

    async def flaky(self, batch_id):
        step = script.pop(0) if script else "real"
        if step == "fail":
            raise RetryableError("openai HTTP 503 (service_unavailable): down for a moment")
        if step == "running":
            return batch_mod.Poll(ended=False)
        return await real_poll(self, batch_id)

    monkeypatch.setattr(batch_mod.OpenAIBatches, "poll", flaky)
    with Emulator(EmulatorConfig(batch_latency_s=0.05)) as emu:
        out = batch_gen(emu, "openai", "gpt-4o-mini", tmp_path, max_attempts=2, backoff_initial_s=0.01,
                        backoff_max_s=0.02).run(reqs(6))
        assert emu.billed == 6 and not script
    assert all(r.status in ("ok", "truncated") for r in out)


def test_cli_batch_options_are_checked_before_anything_is_sent(tmp_path):
    """`--batch-size 0` failed naming the API's batch_size; `--batch-size` without `--batch` was ignored and the run
    went live, at twice the batch price."""
    from typer.testing import CliRunner

    from textbookgen.cli import app

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    common = ["generate", str(prompts), "--base-url", "http://127.0.0.1:9/v1", "--api-key-env", "PATH"]
    zero = CliRunner().invoke(app, [*common, "--batch", "--batch-size", "0"])
    live = CliRunner().invoke(app, [*common, "--batch-size", "500"])
    default = CliRunner().invoke(app, [*common, "--batch-size", "10000"])  # the default value, given: still refused
    assert zero.exit_code == 1 and "--batch-size: must be >= 1, got 0" in zero.output
    assert live.exit_code == 1 and "--batch-size and --batch-poll go with --batch" in live.output
    assert default.exit_code == 1 and "--batch-size and --batch-poll go with --batch" in default.output
    assert not (tmp_path / "p.journal.sqlite").exists()


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_batches_split_at_the_providers_request_and_size_limits(provider, model, tmp_path, monkeypatch):
    """A batch_size or prompts past a provider's per-batch limits (requests, bytes) go as more batches."""
    from textbookgen import batch as batch_mod

    monkeypatch.setitem(batch_mod.MAX_REQUESTS, provider, 5)
    with Emulator(EmulatorConfig(batch_latency_s=0.05)) as emu:
        out = batch_gen(emu, provider, model, tmp_path, batch_size=100).run(reqs(12))
        assert emu.stats()["batches_created"] == 3 and emu.billed == 12  # 5 + 5 + 2
        long = [replace(r, messages=[{"role": "user", "content": f"{i} " + "word " * 400}]) for i, r in enumerate(reqs(6))]
        monkeypatch.setattr(batch_mod, "MAX_BYTES", 5_000)  # two of these prompts a batch
        out += batch_gen(emu, provider, model, tmp_path, batch_size=100).run(long)
        assert emu.stats()["batches_created"] == 6 and emu.billed == 18 and emu.duplicates == 0
    assert all(r.status in ("ok", "truncated") for r in out)


def test_an_openai_batch_failed_for_a_model_it_does_not_batch_stops_the_run(tmp_path, monkeypatch):
    """OpenAI fails a batch as a whole at validation for a model its Batch API does not serve: that failed every
    request for good; it now stops the run as a live call's unknown model does, the requests pending."""
    from textbookgen.testing import emulator as emulator_module

    def no_such_model(data):
        return [], [{"code": "model_not_found", "line": 1, "param": "body.model",
                     "message": "The provided model 'gpt-4o-mini' is not supported by the Batch API."}]

    monkeypatch.setattr(emulator_module, "openai_requests", no_such_model)
    with Emulator(EmulatorConfig(batch_latency_s=0.05)) as emu:
        gen = batch_gen(emu, "openai", "gpt-4o-mini", tmp_path)
        with pytest.raises(FatalProviderError, match="unknown model 'gpt-4o-mini'"):
            gen.run(reqs(4))
    with Journal(gen.journal_path) as j:
        assert j.summary()["by_status"] == {"pending": 4}


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_a_batch_cancelled_at_the_provider_is_not_sent_again_by_the_run(provider, model, tmp_path):
    """A batch cancelled in the provider's console (to stop its spending) while the run waited for it: the run sent
    its requests that had not run again in a new batch, round after round; they now fail as transient (a rerun
    sends them) and the run goes on with its other batches."""
    import anthropic
    import openai

    async def cancel_the_first_batch(gen: Generator) -> list:
        task = asyncio.ensure_future(gen.arun(reqs(24)))
        await asyncio.sleep(0)
        while [status for _, _, status, _ in batch_rows(gen.journal_path)] != ["running"] * 2:
            await asyncio.sleep(0.01)
        batch_id = batch_rows(gen.journal_path)[0][1]
        if provider == "openai":
            await openai.AsyncOpenAI(base_url=gen.base_url, api_key="sk-test-key").batches.cancel(batch_id)
        else:
            await anthropic.AsyncAnthropic(base_url=gen.base_url, api_key="sk-test-key").messages.batches.cancel(batch_id)
        return await task

    with Emulator(EmulatorConfig(batch_latency_s=1.0)) as emu:
        out = asyncio.run(cancel_the_first_batch(batch_gen(emu, provider, model, tmp_path)))
        assert emu.stats()["batches_created"] == 2
    assert [r.status for r in out] == ["failed"] * 12 + ["ok"] * 12
    assert {r.error_class for r in out[:12]} == {"transient"} and "cancelled at the provider" in out[0].error


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_a_recorded_batch_the_provider_no_longer_has_can_be_let_go(provider, model, tmp_path):
    """A batch the provider does not have for this key (deleted, or submitted with another project's key) stuck the
    journal: every rerun and --cancel-batches failed with "no such endpoint: check base_url". The run now says what
    it is and stops (paying again is the user's call); --cancel-batches records it as lost, its requests pending."""
    with Emulator(EmulatorConfig(batch_latency_s=0.5)) as emu:
        gen = batch_gen(emu, provider, model, tmp_path)
        asyncio.run(_interrupt_after_submission(gen, emu, reqs(24)))
        emu.reset()  # the provider forgets the batches
        with pytest.raises(FatalProviderError, match="is not at .* for this key"):
            batch_gen(emu, provider, model, tmp_path).run(reqs(24))
        counts = cancel_batches(gen.journal_path, base_url=gen.base_url, api_key="sk-test-key", poll_s=0.01)
        assert counts == {"cancelled": 0, "lost": 0, "gone": 2, "answered": 0, "failed": 0, "pending": 24}
        emu.config.batch_latency_s = 0.05
        out = batch_gen(emu, provider, model, tmp_path).run(reqs(24))
        assert emu.billed == 24
    assert all(r.status in ("ok", "truncated") for r in out)


def test_an_openai_batchs_files_are_deleted_once_its_answers_are_in_the_journal(tmp_path):
    """The input, output and error files of every batch stayed in the organisation's file storage (prompts and
    answers kept at the provider, up to 200 MB a batch); they go once the journal holds the answers."""
    import openai

    async def files_left(base_url: str, batch_ids: list[str]) -> list[str]:
        client, left = openai.AsyncOpenAI(base_url=base_url, api_key="sk-test-key"), []
        for batch_id in batch_ids:
            batch = await client.batches.retrieve(batch_id)
            for file_id in filter(None, (batch.input_file_id, batch.output_file_id, batch.error_file_id)):
                try:
                    left.append((await client.files.retrieve(file_id)).id)
                except openai.NotFoundError:
                    pass
        return left

    faults = [Fault("400", rate=1.0, match="BAD")]  # an error file too
    with Emulator(EmulatorConfig(batch_latency_s=0.05, faults=faults)) as emu:
        gen = batch_gen(emu, "openai", "gpt-4o-mini", tmp_path)
        out = gen.run(reqs(20) + reqs(2, "BAD request"))
        batch_ids = [batch_id for _, batch_id, _, _ in batch_rows(gen.journal_path)]
        assert len(batch_ids) == 2 and asyncio.run(files_left(emu.openai_base_url, batch_ids)) == []
    assert [r.status for r in out].count("failed") == 2


def running(path) -> bool:
    """Whether the journal records its one batch as running at the provider (False while it is being made)."""
    if not path.exists():  # connecting would create it
        return False
    try:
        return [status for _, _, status, _ in batch_rows(path)] == ["running"]
    except sqlite3.OperationalError:  # no journal tables yet
        return False


def test_a_live_rerun_stopped_by_running_batches_says_how_far_they_have_got(tmp_path, monkeypatch):
    """The stop named the batches only: whether to wait for them or cancel them was a guess."""
    shift = shifted_clock(monkeypatch)  # the batch takes 1000 s: validated at 250 s, then a request every 62.5 s
    with Emulator(EmulatorConfig(batch_latency_s=1000.0)) as emu:
        gen = batch_gen(emu, "openai", "gpt-4o-mini", tmp_path)

        async def interrupted() -> None:  # Ctrl-C once the batch runs at the provider
            task = asyncio.ensure_future(gen.arun(reqs(12)))
            while not running(gen.journal_path):
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(interrupted())
        shift[0] = 600.0
        with pytest.raises(FatalProviderError, match=r"12 of these requests are in 1 openai batches still running "
                                                     r"\(batch_\w+; 5 of their 12 requests answered there so far\)"):
            batch_gen(emu, "openai", "gpt-4o-mini", tmp_path, batch=False).run(reqs(12))
        assert emu.received == 0
