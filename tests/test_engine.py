"""The engine end to end: real openai/anthropic clients against the loopback provider emulator."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter

import polars as pl
import pytest

from textbookgen.engine import ChatRequest, Generator, RateLimits, canonical_request, request_key
from textbookgen.errors import FatalProviderError
from textbookgen.journal import Journal
from textbookgen.pricing import cache_rates, estimate_cost, price_of
from textbookgen.ratelimit import PROBES
from textbookgen.testing.emulator import Emulator, EmulatorConfig, Fault

PROVIDERS = [("openai", "gpt-4o-mini"), ("anthropic", "claude-haiku-4-5")]
FAST = dict(backoff_initial_s=0.01, backoff_max_s=0.05, progress=False, timeout_s=20.0)


def reqs(n: int, prefix: str = "Explain topic", **kw) -> list[ChatRequest]:
    return [ChatRequest(messages=[{"role": "user", "content": f"{prefix} {i}"}], max_tokens=64,
                        metadata={"i": i}, **kw) for i in range(n)]


def url(emu: Emulator, provider: str) -> str:
    return emu.anthropic_base_url if provider == "anthropic" else emu.openai_base_url


def gen_for(emu, provider, model, tmp_path, **kw) -> Generator:
    return Generator(provider, model, base_url=url(emu, provider), api_key="sk-test-key",
                     journal=tmp_path / f"{provider}.sqlite", **{**FAST, **kw})


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_roundtrip_order_usage_cost_and_journal(provider, model, tmp_path):
    with Emulator(EmulatorConfig(latency_median_s=0.005)) as emu:
        requests = reqs(40, system="You write textbooks.")
        gen = gen_for(emu, provider, model, tmp_path, concurrency=8)
        out = gen.run(requests)
        assert emu.billed == 40 and emu.duplicates == 0
    assert [r.metadata["i"] for r in out] == list(range(40))
    assert all(r.status in ("ok", "truncated") and r.text for r in out)
    assert all(r.input_tokens > 0 and r.output_tokens > 0 and r.attempts == 1 for r in out)
    r = out[0]
    assert r.cost_usd == pytest.approx(estimate_cost(model, r.input_tokens, r.output_tokens))
    assert r.key == request_key(canonical_request(provider, model, requests[0]))
    with Journal(gen.journal_path) as j:
        s = j.summary()
    assert s["done"] == 40 and s["cost_usd"] == pytest.approx(sum(x.cost_usd for x in out), rel=1e-6)


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_prompt_cache_reads_count_as_input_at_their_own_price(provider, model, tmp_path):
    """OpenAI counts cached tokens inside prompt_tokens, Anthropic beside input_tokens; both bill them cheaper."""
    with Emulator(EmulatorConfig(latency_median_s=0.001, prompt_cache_hit=0.5)) as emu:
        [r] = gen_for(emu, provider, model, tmp_path).run(reqs(1, system="You write textbooks. " * 200))
    read = r.input_tokens // 2
    assert read > 500
    price_in, price_out = price_of(model)
    expected = ((r.input_tokens - read + read * cache_rates(model)[0]) * price_in + r.output_tokens * price_out) / 1e6
    assert r.cost_usd == pytest.approx(expected)
    assert r.cost_usd < estimate_cost(model, r.input_tokens, r.output_tokens)


def test_duplicate_requests_are_sent_once_and_metadata_is_not_in_the_key(tmp_path):
    a = ChatRequest(messages=[{"role": "user", "content": "same"}], metadata={"topic": "a"})
    b = ChatRequest(messages=[{"role": "user", "content": "same"}], metadata={"topic": "b"})
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        out = gen_for(emu, "openai", "gpt-4o-mini", tmp_path).run([a, b])
        assert emu.billed == 1
    assert out[0].key == out[1].key and out[0].text == out[1].text
    assert [o.metadata["topic"] for o in out] == ["a", "b"]


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_response_format_keys_the_request_and_reaches_both_providers(provider, model, tmp_path):
    """Structured output is part of the request (a new key); OpenAI-style servers get the schema as
    response_format, Anthropic as a forced tool; both answer JSON that follows it."""
    schema = {"type": "json_schema", "json_schema": {"name": "items", "schema": {
        "type": "object", "properties": {"items": {"type": "array", "items": {"type": "string"}}},
        "required": ["items"]}}}
    plain = ChatRequest(messages=[{"role": "user", "content": "List 3 fruits."}])
    structured = ChatRequest(messages=[{"role": "user", "content": "List 3 fruits."}], response_format=schema)
    with Emulator(EmulatorConfig(latency_median_s=0.001, record_requests=True)) as emu:
        out = gen_for(emu, provider, model, tmp_path).run([plain, structured])
        bodies = [r["body"] for r in emu.requests]
    assert out[0].key != out[1].key and emu.billed == 2
    sent = [b["response_format"] for b in bodies if "response_format" in b]
    tools = [(b["tools"], b["tool_choice"]) for b in bodies if "tools" in b]
    if provider == "anthropic":
        assert sent == [] and tools == [([{"name": "items", "description": "Give the answer.",
                                           "input_schema": schema["json_schema"]["schema"]}],
                                         {"type": "tool", "name": "items"})]
    else:
        assert sent == [schema] and tools == []
    items = json.loads(out[1].text)["items"]
    assert out[1].status == "ok" and items and all(isinstance(i, str) for i in items)


# ----- error classes ------------------------------------------------------------------------------

@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_bad_key_fails_fast_without_retries(provider, model, tmp_path):
    with Emulator(EmulatorConfig(latency_median_s=0.001, api_keys=["sk-the-right-one"])) as emu:
        gen = gen_for(emu, provider, model, tmp_path)
        with pytest.raises(FatalProviderError, match="authentication failed") as info:
            gen.run(reqs(50))
        assert emu.received <= PROBES  # a few probes until the server first answered; no retry
    assert "sk-test-key" not in str(info.value)


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_unknown_model_fails_fast(provider, model, tmp_path):
    with Emulator(EmulatorConfig(latency_median_s=0.001, models=["some-other-model"])) as emu:
        with pytest.raises(FatalProviderError, match="unknown model"):
            gen_for(emu, provider, model, tmp_path).run(reqs(20))
        assert emu.received <= PROBES


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_quota_exhausted_fails_fast(provider, model, tmp_path):
    with Emulator(EmulatorConfig(latency_median_s=0.001, faults=[Fault("quota", first=100)])) as emu:
        with pytest.raises(FatalProviderError, match="quota or billing"):
            gen_for(emu, provider, model, tmp_path).run(reqs(20))
        assert emu.received <= PROBES


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_fatal_error_keeps_the_answers_already_on_the_wire(provider, model, tmp_path):
    """The provider bills what is in flight when the money runs out: those answers land in the journal,
    and the rerun (after adding credit) pays for none of them again."""
    cfg = EmulatorConfig(latency_median_s=0.3, latency_sigma=0.0, faults=[Fault("quota", first=1, match="QUOTA")])
    with Emulator(cfg) as emu:
        gen_for(emu, provider, model, tmp_path, concurrency=32).run(reqs(1, "warm-up"))  # opens the slow start
        batch = reqs(16) + reqs(1, "QUOTA")
        with pytest.raises(FatalProviderError, match="quota or billing"):
            gen_for(emu, provider, model, tmp_path, concurrency=32).run(batch)
        assert emu.billed == 17
        with Journal(tmp_path / f"{provider}.sqlite") as journal:
            assert journal.summary()["done"] == 17
        emu.config.faults.clear()
        gen_for(emu, provider, model, tmp_path, concurrency=32).run(batch)
        assert emu.billed == 18 and emu.duplicates == 0


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_a_server_that_is_not_there_stops_the_run_and_says_so(provider, model, tmp_path):
    """Not 300 requests x 8 attempts marked 'failed': the first request that never got an answer stops the run."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    base = f"http://127.0.0.1:{port}" + ("/v1" if provider == "openai" else "")
    gen = Generator(provider, model, base_url=base, api_key="sk-test-key", journal=tmp_path / "j.sqlite",
                    max_attempts=3, concurrency=16, **FAST)
    with pytest.raises(FatalProviderError, match=f"cannot connect to {base}: 3 attempts .*Connect call failed") as info:
        gen.run(reqs(300))
    assert "timed out" not in str(info.value)  # the openai SDK's aiohttp transport calls a refused connection a timeout
    assert gen.stats["sent"] <= 3 + PROBES  # the probes on the wire when the third went unanswered
    with Journal(tmp_path / "j.sqlite") as journal:
        assert journal.summary()["by_status"] == {"pending": 300}  # the rerun sends them all


def test_a_server_that_takes_connections_but_never_answers_is_told_from_one_that_is_not_there(tmp_path):
    cfg = EmulatorConfig(latency_median_s=0.001, hang_s=30.0, faults=[Fault("timeout", rate=1.0)])
    with Emulator(cfg) as emu:
        gen = gen_for(emu, "openai", "gpt-4o-mini", tmp_path, timeout_s=0.05, max_attempts=3, concurrency=4)
        with pytest.raises(FatalProviderError, match=r"no answer from .* within [0-9.]+ s \(it takes connections but "
                                                     r"answers nothing.*raise timeout_s \(--timeout\)"):
            gen.run(reqs(20))
    assert gen.stats["sent"] < 20


def test_slow_answers_grow_the_timeout_instead_of_being_paid_for_again(tmp_path):
    """Every attempt that times out is billed by the provider all the same (the emulator bills it too): the
    first one doubles the timeout, for the attempts already on the wire as well, so the rest are paid once."""
    cfg = EmulatorConfig(latency_median_s=0.5, latency_sigma=0.0)
    with Emulator(cfg) as emu:
        gen = gen_for(emu, "openai", "gpt-4o-mini", tmp_path, timeout_s=0.3, concurrency=8)
        out = gen.run(reqs(16))
        time.sleep(0.3)  # let the server finish (and bill) what the client abandoned
        assert all(r.status in ("ok", "truncated") for r in out)
        assert 1 <= gen.stats["timed_out"] <= 2 and emu.duplicates == gen.stats["timed_out"]
    assert gen.stats["abandoned_output_tokens"] == 64 * gen.stats["timed_out"]  # counted at worst case
    assert gen.stats["abandoned_usd"] == pytest.approx(gen.stats["timed_out"] * estimate_cost(
        "gpt-4o-mini", 0, 64), rel=0.5)


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_a_run_whose_requests_mostly_fail_stops_early_and_names_the_error(provider, model, tmp_path):
    """A parameter the model rejects fails every request the same way: the run stops after a window of
    them instead of sending all 300, keeps what finished, and says what went wrong."""
    with Emulator(EmulatorConfig(latency_median_s=0.001, faults=[Fault("400", rate=1.0)])) as emu:
        gen = gen_for(emu, provider, model, tmp_path, concurrency=4)
        with pytest.raises(FatalProviderError, match=r"stopped early: 50 of the 50 requests finished so far failed "
                                                     r"\(max_error_rate=0.5\), 50 of them bad_request, e.g. "
                                                     r"\w+ HTTP 400.*--retry-failed"):
            gen.run(reqs(300))
        assert emu.received < 60
    with Journal(tmp_path / f"{provider}.sqlite") as journal:
        by_status = journal.summary()["by_status"]
    assert by_status["failed"] == emu.received and by_status["pending"] == 300 - emu.received


def test_the_error_rate_check_spares_runs_that_mostly_succeed_and_can_be_turned_off(tmp_path):
    """A third of the requests fail, and their 400s come back long before the answers: no early stop."""
    requests = reqs(20) + reqs(10, "BAD")
    cfg = EmulatorConfig(latency_median_s=0.05, latency_sigma=0.0, faults=[Fault("400", rate=1.0, match="BAD")])
    with Emulator(cfg) as emu:
        out = gen_for(emu, "openai", "gpt-4o-mini", tmp_path, error_window=10).run(requests)
        assert [r.status for r in out].count("failed") == 10
        off = gen_for(emu, "openai", "gpt-4o-mini", tmp_path / "off", max_error_rate=None).run(reqs(60, "BAD"))
        assert [r.status for r in off] == ["failed"] * 60
    with pytest.raises(ValueError, match="max_error_rate"):
        Generator("openai", "gpt-4o-mini", max_error_rate=1.5)


@pytest.mark.parametrize("provider, env", [("openai", "OPENAI_API_KEY"), ("anthropic", "ANTHROPIC_API_KEY")])
def test_missing_key_fails_before_sending(provider, env, monkeypatch, tmp_path):
    monkeypatch.delenv(env, raising=False)
    with Emulator(EmulatorConfig()) as emu:
        gen = Generator(provider, "m", base_url=url(emu, provider), journal=tmp_path / "j.sqlite", **FAST)
        with pytest.raises(FatalProviderError, match=env):
            gen.run(reqs(3))
        assert emu.received == 0


def test_key_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-from-env")
    with Emulator(EmulatorConfig(latency_median_s=0.001, api_keys=["sk-ant-from-env"])) as emu:
        gen = Generator("anthropic", "claude-haiku-4-5", base_url=emu.anthropic_base_url,
                        journal=tmp_path / "j.sqlite", **FAST)
        assert all(r.status == "ok" or r.status == "truncated" for r in gen.run(reqs(3)))


@pytest.mark.parametrize("provider, model", PROVIDERS)
@pytest.mark.parametrize("kind", ["500", "502", "503", "529", "429", "timeout", "reset", "bad_json"])
def test_transient_errors_are_retried(provider, model, kind, tmp_path):
    cfg = EmulatorConfig(latency_median_s=0.002, hang_s=5.0, faults=[Fault(kind, first=1)])
    with Emulator(cfg) as emu:
        timeout = 1.0 if kind == "timeout" else 20.0  # the hang outlasts the client's patience
        out = gen_for(emu, provider, model, tmp_path, timeout_s=timeout, concurrency=4).run(reqs(4))
    assert all(r.status in ("ok", "truncated") for r in out)
    assert [r.attempts for r in out] == [2] * 4


def test_retries_are_capped_and_resume_retries_transient_failures(tmp_path):
    with Emulator(EmulatorConfig(latency_median_s=0.001, faults=[Fault("500", first=3)])) as emu:
        gen = gen_for(emu, "openai", "gpt-4o-mini", tmp_path, max_attempts=2)
        first = gen.run(reqs(3))
        assert [r.status for r in first] == ["failed"] * 3
        assert all("gave up after 2 attempts" in r.error and "HTTP 500" in r.error for r in first)
        assert emu.received == 6
        again = gen_for(emu, "openai", "gpt-4o-mini", tmp_path, max_attempts=2).run(reqs(3))
        assert all(r.status in ("ok", "truncated") for r in again)  # 3rd attempt fails, 4th succeeds


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_bad_request_content_filter_and_refusal_fail_one_item(provider, model, tmp_path):
    faults = [Fault("400", rate=1.0, match="BAD"), Fault("content_filter", rate=1.0, match="FLAGGED"),
              Fault("refusal", rate=1.0, match="REFUSE")]
    requests = reqs(3) + [ChatRequest(messages=[{"role": "user", "content": w}]) for w in ("BAD", "FLAGGED", "REFUSE")]
    with Emulator(EmulatorConfig(latency_median_s=0.001, faults=faults)) as emu:
        out = gen_for(emu, provider, model, tmp_path).run(requests)
        assert all(r.status in ("ok", "truncated") for r in out[:3])
        bad, flagged, refused = out[3:]
        assert bad.status == "failed" and "HTTP 400" in bad.error and bad.attempts == 1
        assert flagged.status == "failed" and "flagged" in flagged.error and flagged.attempts == 1
        assert refused.status == "failed" and refused.attempts == 1 and refused.output_tokens > 0  # billed
        assert refused.error.startswith(("refusal", "content_filter"))
        # each failure's class, live as on replay (the build's note and generate's summary count them by it)
        assert [r.error_class for r in out[3:]] == ["bad_request", "content_filter",
                                                    "refusal" if provider == "anthropic" else "content_filter"]
        received = emu.received
        again = gen_for(emu, provider, model, tmp_path).run(requests)  # permanent failures are not re-sent
        assert emu.received == received
        assert [(r.status, r.error, r.error_class) for r in again] == [(r.status, r.error, r.error_class) for r in out]
    with Journal(tmp_path / f"{provider}.sqlite") as j:
        failures = j.summary()["failures"]
    assert failures["bad_request"] == 1 and failures["content_filter"] + failures.get("refusal", 0) == 2


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_length_finish_is_kept_as_truncated_not_retried(provider, model, tmp_path):
    with Emulator(EmulatorConfig(latency_median_s=0.001, faults=[Fault("truncate", rate=1.0, match="LONG")])) as emu:
        out = gen_for(emu, provider, model, tmp_path).run(
            [ChatRequest(messages=[{"role": "user", "content": "LONG essay"}], max_tokens=16)])
        assert emu.received == 1
    assert out[0].status == "truncated" and out[0].finish_reason == "length" and out[0].text


# ----- limits and 429s ----------------------------------------------------------------------------

@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_limits_are_learned_from_headers_and_respected(provider, model, tmp_path):
    cfg = EmulatorConfig(latency_median_s=0.01, rpm=1800, input_tpm=500_000, output_tpm=90_000, window_s=1.0)
    with Emulator(cfg) as emu:
        gen = gen_for(emu, provider, model, tmp_path, concurrency=64)
        out = gen.run(reqs(60))
        assert emu.rate_limited == 0  # paced under a 30-per-second bucket with no 429 at all
    assert all(r.status in ("ok", "truncated") for r in out)
    limits = gen.stats["limits"]
    assert gen.stats["headers_seen"] and limits["requests"] == 1800
    if provider == "anthropic":  # separate input/output budgets, not swapped
        assert limits["input_tokens"] == 500_000 and limits["output_tokens"] == 90_000
    else:  # OpenAI's combined token budget
        assert limits["tokens"] == 500_000


def test_user_limits_apply_to_a_server_without_headers(tmp_path):
    cfg = EmulatorConfig(latency_median_s=0.01, send_headers=False)
    with Emulator(cfg) as emu:
        gen = gen_for(emu, "openai", "gpt-4o-mini", tmp_path, concurrency=64, limits=RateLimits(rpm=1200))
        gen.run(reqs(30))
    assert not gen.stats["headers_seen"] and gen.stats["limits"]["requests"] == 1200


def test_server_without_headers_runs_at_user_concurrency(tmp_path):
    cfg = EmulatorConfig(latency_median_s=0.05, latency_sigma=0.0, send_headers=False)
    with Emulator(cfg) as emu:
        gen = gen_for(emu, "openai-compatible", "Qwen/Qwen2.5-7B-Instruct", tmp_path, concurrency=6)
        gen.run(reqs(40))
        assert emu.max_in_flight == 6
    assert not gen.stats["headers_seen"] and gen.stats["limits"]["requests"] is None


@pytest.mark.parametrize("concurrency", [1, 2])
def test_concurrency_below_the_probes_holds_from_the_first_request(concurrency, tmp_path):
    """A single-slot server (llama.cpp) must never see more than its slots, not even before the first answer."""
    with Emulator(EmulatorConfig(latency_median_s=0.05, latency_sigma=0.0)) as emu:
        gen_for(emu, "openai-compatible", "local-model", tmp_path, concurrency=concurrency).run(reqs(8))
        assert emu.max_in_flight == concurrency


def test_429_storm_recovers_with_aimd(tmp_path):
    """A server that rate-limits but sends no limit headers: its request rate is learned from the 429s
    (concurrency alone cannot cap it: one request in flight at 20 ms is 50 a second), so after the first
    blast few more are refused (before: ~250 429s for 80 requests, concurrency down to 1); every request
    still completes, nothing is billed twice."""
    cfg = EmulatorConfig(latency_median_s=0.02, rpm=1200, window_s=1.0, send_headers=False)
    with Emulator(cfg) as emu:
        gen = gen_for(emu, "openai-compatible", "local-model", tmp_path, concurrency=64,
                      backoff_initial_s=0.05, backoff_max_s=2.0, timeout_s=30.0)
        out = gen.run(reqs(80))
        assert 0 < emu.rate_limited < 80
        assert emu.billed == 80 and emu.duplicates == 0
    assert all(r.status in ("ok", "truncated") for r in out)
    assert gen.stats["rate_limited"] > 0 and gen.stats["concurrency"] < 64
    assert gen.stats["limits"]["requests"] is not None  # learned, though no header ever said it
    assert max(r.attempts for r in out) >= 2


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_retry_after_is_honoured(provider, model, tmp_path):
    """The emulator's 429 says retry-after 1 s: a retry never comes sooner, whatever the backoff says.
    Its text is OpenAI's real rate-limit wording, which links the billing page: still a rate limit."""
    with Emulator(EmulatorConfig(latency_median_s=0.001, faults=[Fault("429", first=1)])) as emu:
        gen = gen_for(emu, provider, model, tmp_path)
        out = gen.run(reqs(1))
    assert out[0].attempts == 2 and gen.stats["elapsed_s"] >= 1.0


# ----- journal, resume, budgets, secrets ----------------------------------------------------------

def test_resume_sends_only_missing_and_changed_requests(tmp_path):
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        gen_for(emu, "openai", "gpt-4o-mini", tmp_path).run(reqs(10))
        assert emu.billed == 10
        gen_for(emu, "openai", "gpt-4o-mini", tmp_path).run(reqs(15))
        assert emu.billed == 15  # only the 5 new ones
        changed = reqs(15)
        changed[3].temperature = 0.2
        out = gen_for(emu, "openai", "gpt-4o-mini", tmp_path).run(changed)
        assert emu.billed == 16 and emu.duplicates == 0  # one setting changed: one request regenerated
    assert Counter(r.attempts for r in out) == Counter({1: 15})


def test_budget_stops_launching_and_rerun_continues(tmp_path, caplog):
    prices = {"budget-model": (1000.0, 1000.0)}  # $0.001 per token: a budget is reached quickly
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        gen = gen_for(emu, "openai", "budget-model", tmp_path, prices=prices, max_cost_usd=0.5, concurrency=2)
        with caplog.at_level(logging.WARNING, logger="textbookgen.engine"):
            out = gen.run(reqs(30))
        statuses = Counter(r.status for r in out)
        assert statuses["skipped_budget"] > 0 and statuses["ok"] + statuses["truncated"] > 0
        spent = sum(r.cost_usd for r in out)
        assert spent <= 0.5 + max(r.cost_usd for r in out)  # at most the requests already in flight
        assert emu.billed == 30 - statuses["skipped_budget"]
        assert "max_cost_usd" in caplog.text and "skipped_budget" in caplog.text
        more = gen_for(emu, "openai", "budget-model", tmp_path, prices=prices).run(reqs(30))
        assert all(r.status in ("ok", "truncated") for r in more) and emu.duplicates == 0


def test_cost_budget_without_a_price_is_refused():
    with pytest.raises(ValueError, match="model 'my-local-model' has no known price"):
        Generator("openai-compatible", "my-local-model", base_url="http://127.0.0.1:9/v1", max_cost_usd=5)


def test_output_token_budget(tmp_path):
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        gen = gen_for(emu, "anthropic", "claude-haiku-4-5", tmp_path, max_output_tokens=300, concurrency=1)
        out = gen.run(reqs(20))
    used = sum(r.output_tokens for r in out)
    assert Counter(r.status for r in out)["skipped_budget"] > 0 and used <= 300


def test_secret_key_never_reaches_journal_parquet_or_logs(tmp_path, caplog, capsys):
    secret = "sk-proj-SECRET-abcdef0123456789"
    cfg = EmulatorConfig(latency_median_s=0.001, api_keys=[secret],
                         faults=[Fault("500", first=1), Fault("400", rate=1.0, match="BAD")])
    with caplog.at_level(logging.DEBUG):
        with Emulator(cfg) as emu:
            gen = Generator("openai", "gpt-4o-mini", base_url=emu.openai_base_url, api_key=secret,
                            journal=tmp_path / "j.sqlite", **{**FAST, "progress": True})
            gen.run(reqs(5) + [ChatRequest(messages=[{"role": "user", "content": "BAD"}])])
            with pytest.raises(FatalProviderError) as info:  # a wrong key: its error must not echo it
                Generator("openai", "gpt-4o-mini", base_url=emu.openai_base_url, api_key=secret + "x",
                          journal=tmp_path / "j2.sqlite", **FAST).run(reqs(1))
    with Journal(tmp_path / "j.sqlite") as j:
        parquet = j.export_parquet(tmp_path / "out.parquet")
    captured = capsys.readouterr()
    texts = [caplog.text, captured.out, captured.err, str(info.value)]
    texts += [p.read_bytes().decode("latin-1") for p in tmp_path.iterdir() if p.is_file()]
    assert pl.read_parquet(parquet).height == 6
    assert not [t for t in texts if secret in t or secret[:16] in t]


def test_no_slot_is_held_while_backing_off(tmp_path):
    """concurrency=1: while the first request sleeps on its backoff, the others go through."""
    requests = [ChatRequest(messages=[{"role": "user", "content": "SLOW one"}])] + reqs(3)
    with Emulator(EmulatorConfig(latency_median_s=0.001, faults=[Fault("500", first=1, match="SLOW")])) as emu:
        gen = gen_for(emu, "openai", "gpt-4o-mini", tmp_path, concurrency=1, backoff_initial_s=0.5)
        out = gen.run(requests)
    assert out[0].attempts == 2 and all(r.attempts == 1 for r in out[1:])
    with Journal(gen.journal_path) as j:
        finished = dict(j.db.execute("SELECT key, updated_at FROM requests").fetchall())
    assert finished[out[0].key] > max(finished[r.key] for r in out[1:])


def test_proxy_in_environment_keeps_the_sdk_http_client(monkeypatch):
    import openai

    from textbookgen.providers import _http_client

    assert _http_client("aiohttp", openai) is not None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert _http_client("aiohttp", openai) is None  # httpx reads proxy settings; the aiohttp transport does not


def test_run_inside_a_running_loop_works_and_ctrl_c_cancels_it(tmp_path):
    """A Jupyter cell has a running loop: run() takes a worker thread, and Ctrl-C (KeyboardInterrupt in the
    main thread, as ipykernel raises it) cancels the run there, so nothing keeps being sent and paid for."""
    import asyncio
    import signal
    import threading
    import time

    requests = reqs(60)
    with Emulator(EmulatorConfig(latency_median_s=0.05)) as emu:
        gen = gen_for(emu, "openai", "gpt-4o-mini", tmp_path, concurrency=4)

        async def cell(batch):
            return gen.run(batch)

        first = asyncio.run(cell(requests[:4]))
        assert len(first) == 4 and all(r.text for r in first) and emu.billed == 4

        def interrupt() -> None:
            while emu.billed < 12:
                time.sleep(0.005)
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

        async def interrupted_cell():
            previous = signal.signal(signal.SIGINT, signal.default_int_handler)
            try:
                threading.Thread(target=interrupt, daemon=True).start()
                with pytest.raises(KeyboardInterrupt):
                    gen.run(requests)
            finally:
                signal.signal(signal.SIGINT, previous)

        asyncio.run(interrupted_cell())
        stopped_at = emu.billed
        time.sleep(0.3)
        assert emu.billed <= stopped_at + 4 < 60  # only what was on the wire can still finish
        out = gen.run(requests)  # outside a loop: resumes from the journal
        assert all(r.text for r in out) and emu.billed - 60 <= 4


@pytest.mark.parametrize("text, expected", [
    ("anthropic HTTP 400 (invalid_request_error): Output blocked by content filtering policy", "content_filter"),
    ("openai HTTP 400 (content_filter): The prompt was flagged by the content management policy.", "content_filter"),
    ("openai HTTP 400 (invalid_request_error): Invalid request.", "bad_request"),
])
def test_refusals_are_told_from_bad_requests_in_each_providers_words(text, expected):
    from textbookgen.providers import item_error_class

    assert item_error_class(text) == expected


def test_the_progress_line_counts_failed_requests(tmp_path, capsys):
    requests = reqs(3) + reqs(2, "BAD")
    with Emulator(EmulatorConfig(latency_median_s=0.001, faults=[Fault("400", rate=1.0, match="BAD")])) as emu:
        gen_for(emu, "openai", "gpt-4o-mini", tmp_path, progress=True).run(requests)
    shown = capsys.readouterr().err
    assert "failed 2 " in shown


def test_params_are_part_of_the_request_key(tmp_path):
    """Empty params keep the keys of older journals; a changed param is a new request, paid once."""
    plain = ChatRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=8)
    old_key = request_key({"provider": "openai", "model": "m", "messages": plain.messages, "max_tokens": 8})
    assert request_key(canonical_request("openai", "m", plain)) == old_key
    a, b = (ChatRequest(messages=plain.messages, max_tokens=8, params={"top_k": k}) for k in (20, 40))
    assert len({request_key(canonical_request("openai", "m", r)) for r in (plain, a, b)}) == 3
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        first = reqs(4, params={"top_k": 20})
        gen_for(emu, "openai", "gpt-4o-mini", tmp_path).run(first)
        changed = [*first[:3], ChatRequest(messages=first[3].messages, max_tokens=64, params={"top_k": 40})]
        gen_for(emu, "openai", "gpt-4o-mini", tmp_path).run(changed)
        assert emu.billed == 5


def test_retry_failed_keeps_what_the_refusals_cost_in_the_journal(tmp_path):
    """A refusal is billed; re-sending it must not erase that from the journal's total (the build's budget)."""
    with Emulator(EmulatorConfig(latency_median_s=0.001, faults=[Fault("refusal", first=1)])) as emu:
        first = gen_for(emu, "openai", "gpt-4o-mini", tmp_path).run(reqs(6))
        again = gen_for(emu, "openai", "gpt-4o-mini", tmp_path, retry_failed=True).run(reqs(6))
        assert emu.billed == 12
    assert {r.status for r in first} == {"failed"} and {r.status for r in again} == {"ok"}
    paid = sum(r.cost_usd for r in first) + sum(r.cost_usd for r in again)
    with Journal(tmp_path / "openai.sqlite") as j:
        assert j.summary()["cost_usd"] == pytest.approx(paid, rel=1e-6) and paid > sum(r.cost_usd for r in again)


def test_input_estimate_counts_cjk_characters_near_a_token_each():
    """At 4 characters a token a Chinese prompt was held at a quarter or less of its input (GPT-2 BPE: 2.1 tokens a
    character; the providers' larger vocabularies about 1): the budget and TPM reservations were that far under."""
    from textbookgen.engine import estimate_input_tokens

    def est(text: str) -> int:
        return estimate_input_tokens(ChatRequest(messages=[{"role": "user", "content": text}]))

    english = "Photosynthesis turns light, water and carbon dioxide into sugar. " * 20
    chinese = "光合作用是植物利用光能把二氧化碳和水转化为有机物并释放氧气的过程。" * 20
    assert abs(est(english) - len(english) / 4) <= 8  # English as before: 4 characters a token
    assert 0.9 * len(chinese) <= est(chinese) <= 1.2 * len(chinese)
    assert len(english) / 4 < est("é" * len(english)) < len(english)  # accented Latin: in between
