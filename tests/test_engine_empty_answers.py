"""Answers with no text (empty, null, only reasoning) and answers that open with a reasoning block, through the real
openai/anthropic clients against the emulator: an empty answer is a billed failure that the next run sends again,
and the journal keeps every answer as the provider sent it."""

from __future__ import annotations

import sqlite3

import pytest

from textbookgen.engine import ChatRequest, Generator, empty_answer, split_reasoning
from textbookgen.errors import FatalProviderError
from textbookgen.journal import Journal
from textbookgen.testing.emulator import Emulator, EmulatorConfig, Fault

PROVIDERS = [("openai", "gpt-4o-mini"), ("anthropic", "claude-haiku-4-5")]
FAST = dict(backoff_initial_s=0.01, backoff_max_s=0.05, progress=False, timeout_s=20.0)


def reqs(n: int, prefix: str = "Explain topic", max_tokens: int = 64) -> list[ChatRequest]:
    return [ChatRequest(messages=[{"role": "user", "content": f"{prefix} {i}"}], max_tokens=max_tokens)
            for i in range(n)]


def gen_for(emu: Emulator, provider: str, model: str, tmp_path, **kw) -> Generator:
    base = emu.anthropic_base_url if provider == "anthropic" else emu.openai_base_url
    return Generator(provider, model, base_url=base, api_key="sk-test-key", journal=tmp_path / "j.sqlite",
                     **{**FAST, **kw})


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_an_empty_answer_is_a_billed_failure_that_a_plain_rerun_sends_again(provider, model, tmp_path):
    requests = reqs(6) + reqs(3, "EMPTY topic")
    with Emulator(EmulatorConfig(latency_median_s=0.001, faults=[Fault("empty", rate=1.0, match="EMPTY")])) as emu:
        gen = gen_for(emu, provider, model, tmp_path)
        out = gen.run(requests)
        assert emu.billed == 9  # not retried within the run: the same request would come back the same
        emu.config.faults.clear()  # the server is fixed
        again = gen_for(emu, provider, model, tmp_path).run(requests)
        assert emu.billed == 12 and emu.duplicates == 3  # the empty ones, once more
    assert all(r.status == "ok" for r in out[:6])
    assert all(r.status == "failed" and r.error_class == "empty_answer" and r.attempts == 1 for r in out[6:])
    assert all(r.error.startswith("empty answer: no text") for r in out[6:])
    assert all(r.cost_usd > 0 and r.input_tokens > 0 for r in out[6:])  # billed, so booked
    assert gen.stats["failed"] == gen.stats["empty"] == 3
    assert gen.stats["cost_usd"] == pytest.approx(sum(r.cost_usd for r in out))
    assert all(r.status == "ok" and r.text for r in again)
    with Journal(tmp_path / "j.sqlite") as j:
        summary = j.summary()
    assert summary["by_status"] == {"ok": 9}  # what both empty rounds cost stays in the journal's total
    assert summary["cost_usd"] == pytest.approx(sum(r.cost_usd for r in out) + sum(r.cost_usd for r in again[6:]))


@pytest.mark.parametrize("provider, model", PROVIDERS)
@pytest.mark.parametrize("fault", ["reasoning", "think_cut"])
def test_an_answer_that_is_only_reasoning_cut_at_max_tokens_says_what_to_change(provider, model, fault, tmp_path):
    """vLLM's reasoning parser (content null, reasoning_content), Anthropic's thinking blocks, or an unterminated
    <think> block from a server without a parser: max_tokens spent thinking, nothing to make a document of."""
    with Emulator(EmulatorConfig(latency_median_s=0.001, faults=[Fault(fault, rate=1.0)])) as emu:
        [r] = gen_for(emu, provider, model, tmp_path).run(reqs(1))
        assert emu.billed == 1
    assert r.status == "failed" and r.error_class == "empty_answer_reasoning" and r.finish_reason == "length"
    assert "raise max_tokens or turn thinking off" in r.error and "spent on reasoning" in r.error
    assert r.output_tokens == 64 and r.cost_usd > 0
    if fault == "think_cut":  # the journal keeps what was paid for, as sent
        assert r.text.startswith("<think>\nOkay, the user wants")


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_empty_answers_inside_batches_fail_the_same_way(provider, model, tmp_path):
    faults = [Fault("empty", rate=1.0, match="EMPTY"), Fault("reasoning", rate=1.0, match="THINK")]
    with Emulator(EmulatorConfig(batch_latency_s=0.05, faults=faults)) as emu:
        gen = gen_for(emu, provider, model, tmp_path, batch=True, batch_poll_s=0.05)
        out = gen.run(reqs(2) + reqs(2, "EMPTY topic") + reqs(2, "THINK topic"))
        assert emu.stats()["batch_requests"] == 6
    assert [r.error_class for r in out] == [None, None, "empty_answer", "empty_answer", "empty_answer_reasoning",
                                            "empty_answer_reasoning"]
    assert all(r.cost_usd > 0 for r in out) and gen.stats["failed"] == 4


def test_a_leading_think_block_stays_in_the_journal_and_split_reasoning_sets_it_apart(tmp_path):
    with Emulator(EmulatorConfig(latency_median_s=0.001, faults=[Fault("think", rate=1.0)])) as emu:
        [r] = gen_for(emu, "openai-compatible", "Qwen/Qwen3-8B", tmp_path).run(reqs(1, max_tokens=400))
    assert r.status == "ok" and r.finish_reason == "stop" and r.text.startswith("<think>\nOkay, the user wants")
    reasoning, answer = split_reasoning(r.text)
    assert reasoning.strip().startswith("Okay, the user wants") and answer
    assert "<think>" not in answer and "</think>" not in answer and r.text.endswith(answer)


def test_a_run_whose_answers_all_come_back_empty_stops_early_naming_them(tmp_path):
    """Empty answers count toward max_error_rate like any failure: a server that answers nothing stops the run."""
    with Emulator(EmulatorConfig(latency_median_s=0.001, faults=[Fault("empty", rate=1.0)])) as emu:
        gen = gen_for(emu, "openai", "gpt-4o-mini", tmp_path, error_window=10, concurrency=2)
        with pytest.raises(FatalProviderError, match=r"stopped early: .* of them empty_answer, e\.g\. empty answer: no "
                                                     r"text.*a plain rerun re-sends them"):
            gen.run(reqs(40))
        assert emu.billed < 40


def _as_an_older_textbookgen_left_them(path, keys: list[str]) -> None:
    """Answers with no text recorded as done, as textbookgen did before they were failures."""
    with sqlite3.connect(path) as db:
        db.executemany("UPDATE requests SET text = ?, status = 'ok', finish_reason = 'stop' WHERE key = ?",
                       [("" if i % 2 else None, key) for i, key in enumerate(keys)])


def test_empty_answers_an_older_journal_holds_as_done_are_sent_again_their_cost_kept(tmp_path):
    requests = reqs(4)
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        first = gen_for(emu, "openai", "gpt-4o-mini", tmp_path).run(requests)
        _as_an_older_textbookgen_left_them(tmp_path / "j.sqlite", [r.key for r in first[:2]])
        again = gen_for(emu, "openai", "gpt-4o-mini", tmp_path).run(requests)
        assert emu.billed == 6  # the two without text, once more
        assert gen_for(emu, "openai", "gpt-4o-mini", tmp_path).run(requests) and emu.billed == 6
    assert all(r.status == "ok" and r.text for r in again)
    with Journal(tmp_path / "j.sqlite") as j:
        summary = j.summary()
    assert summary["by_status"] == {"ok": 4}
    assert summary["cost_usd"] == pytest.approx(sum(r.cost_usd for r in first) + sum(r.cost_usd for r in again[:2]))


def test_an_empty_answer_under_another_max_tokens_is_not_reused(tmp_path):
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        first = gen_for(emu, "openai", "gpt-4o-mini", tmp_path).run(reqs(3, max_tokens=300))
        _as_an_older_textbookgen_left_them(tmp_path / "j.sqlite", [first[0].key])
        out = gen_for(emu, "openai", "gpt-4o-mini", tmp_path).run(reqs(3, max_tokens=400))
        assert emu.billed == 4  # two answers reused free under the larger max_tokens; the empty one sent
    assert [r.reused_from is not None for r in out] == [False, True, True] and all(r.text for r in out)


@pytest.mark.parametrize("text, reasoning, answer", [
    ("<think>\nplan it\n</think>\n\nThe answer.", "\nplan it\n", "The answer."),
    ("  <thinking>plan</thinking>The answer.", "plan", "The answer."),
    ("<THINK>plan</THINK>\nThe answer.", "plan", "The answer."),
    ("plan it, as R1 does after its template opened the block\n</think>\n\nThe answer.",
     "plan it, as R1 does after its template opened the block\n", "The answer."),
    ("<think>\nplanning, cut at max_tokens", "\nplanning, cut at max_tokens", ""),
    ("The answer, with <think>tags</think> in it.", None, "The answer, with <think>tags</think> in it."),
    ("The answer.", None, "The answer."),
    (None, None, ""),
])
def test_split_reasoning(text, reasoning, answer):
    assert split_reasoning(text) == (reasoning, answer)


@pytest.mark.parametrize("text, finish, reasoning, cls", [
    ("The answer.", "stop", None, None),
    ("The answer, cut", "length", None, None),
    ("", "stop", None, "empty_answer"),
    (" \n\t", "stop", None, "empty_answer"),
    (None, "stop", None, "empty_answer"),
    (None, "length", "thinking...", "empty_answer_reasoning"),
    ("", "length", None, "empty_answer_reasoning"),  # OpenAI's reasoning models keep their reasoning hidden
    (None, "stop", "thinking...", "empty_answer_reasoning"),
    ("<think>only thinking</think>\n", "stop", None, "empty_answer_reasoning"),
])
def test_empty_answer_classes(text, finish, reasoning, cls):
    found = empty_answer(text, finish, reasoning)
    assert (found and found[0]) == cls


def test_an_openai_reasoning_model_that_spent_max_tokens_thinking_unseen_says_to_lower_its_effort(tmp_path):
    """gpt-5 and o-series models think unseen: cut at max_completion_tokens, the answer is "" and the tokens are all
    `reasoning_tokens`, billed. What to change there is the reasoning effort (or max_tokens), not a chat template."""
    config = EmulatorConfig(latency_median_s=0.001, model_rules=True, faults=[Fault("reasoning", rate=1.0)])
    with Emulator(config) as emu:
        [r] = gen_for(emu, "openai", "gpt-5-mini", tmp_path).run(reqs(1))
        assert emu.billed == 1 and emu.output_tokens == 64
    assert r.status == "failed" and r.error_class == "empty_answer_reasoning" and r.text == ""
    assert r.output_tokens == 64 and r.cost_usd > 0
    assert "spent on hidden reasoning" in r.error and "params {\"reasoning_effort\": \"low\"}" in r.error
