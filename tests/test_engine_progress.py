"""The progress line's projection: what the whole run will cost, and whether a budget will stop it."""

from __future__ import annotations

import re

import pytest

from textbookgen.engine import ChatRequest, Generator
from textbookgen.progress import MIN_ANSWERS, PollLog, batch_note, budget_outlook, project, projection_note
from textbookgen.testing.emulator import Emulator, EmulatorConfig, Fault

FAST = dict(backoff_initial_s=0.01, backoff_max_s=0.05, timeout_s=20.0)


def stats(**kw) -> dict:
    base = {"done": 0, "replayed": 0, "cost_usd": 0.0, "replayed_usd": 0.0, "output_tokens": 0,
            "replayed_output_tokens": 0, "abandoned_usd": 0.0, "abandoned_output_tokens": 0,
            "max_cost_usd": None, "max_output_tokens": None}
    return {**base, **kw}


def test_the_projection_averages_only_what_this_run_paid_for():
    """100 requests: 10 replayed from the journal ($1, free now), 10 sent for $2: the other 80 cost $0.20 each."""
    s = stats(done=20, replayed=10, cost_usd=3.0, replayed_usd=1.0, output_tokens=3000, replayed_output_tokens=1000)
    p = project(s, 100)
    assert p.usd == pytest.approx(3.0 + 80 * 0.2) and p.output_tokens == pytest.approx(3000 + 80 * 200)
    abandoned = project({**s, "abandoned_usd": 0.5, "abandoned_output_tokens": 64}, 100)  # counted as the budgets do
    assert abandoned.usd == pytest.approx(p.usd + 0.5) and abandoned.output_tokens == pytest.approx(p.output_tokens + 64)
    assert project(stats(done=10 + MIN_ANSWERS - 1, replayed=10, cost_usd=1.0), 100) is None  # too few to tell


def test_the_budget_outlook_says_where_the_run_will_stop():
    assert budget_outlook(19.0, 3.0, 0.2, 20, 100, 20.0) == "ok"
    assert budget_outlook(19.0, 3.0, 0.2, 20, 100, 10.0) == "reached at ~55%"  # 20 + (10 - 3) / 0.2 requests
    assert budget_outlook(5.0, 5.0, 0.0, 20, 100, 1.0) == "reached at ~20%"  # already spent: stops now
    s = stats(done=20, replayed=10, cost_usd=3.0, replayed_usd=1.0, output_tokens=3000, replayed_output_tokens=1000)
    assert projection_note(s, 100) == (" (~$19.0000 projected)", "")
    cost, tokens = projection_note({**s, "max_cost_usd": 10.0, "max_output_tokens": 50_000}, 100)
    assert cost == " (~$19.0000 projected, budget $10.0000 reached at ~55%)"
    assert tokens == " (~19,000 projected, budget 50,000 ok)"
    resumed = {**s, "max_cost_usd": 8.0, "max_cost_usd_given": 10.0}  # earlier runs spent $2 of the $10 given
    assert projection_note(resumed, 100)[0] == (" (~$19.0000 projected, budget $10.0000 ($8.0000 left after "
                                                "earlier runs) reached at ~45%)")


def reqs(n: int) -> list[ChatRequest]:
    return [ChatRequest(messages=[{"role": "user", "content": f"Explain topic {i}"}], max_tokens=64) for i in range(n)]


@pytest.mark.parametrize("budget", [None, 0.3])
def test_the_progress_line_shows_the_projection_and_the_budget(budget, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # the whole line on one line
    prices = {"pricey": (1000.0, 1000.0)}  # $0.001 a token: the budget stops the run partway
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        out = Generator("openai", "pricey", base_url=emu.openai_base_url, api_key="sk-test", prices=prices,
                        journal=tmp_path / "j.sqlite", concurrency=2, max_cost_usd=budget, **FAST).run(reqs(20))
    shown = capsys.readouterr().err
    if budget is None:
        assert re.search(r"\$\d+\.\d{4} \(~\$\d+\.\d{4} projected\)", shown)
    else:
        assert any(r.status == "skipped_budget" for r in out)
        assert re.search(r"\(~\$\d+\.\d{4} projected, budget \$0\.3000 reached at ~\d+%\)", shown)


def test_the_batch_note_shows_what_the_provider_answered_and_what_it_costs_so_far():
    """The line said only `in batches 9,000` and $0 until a whole batch ended, hours later."""
    s = stats(in_flight=9000, batch_answered=6512, batch_failed=12, batch_answered_worst_usd=1.5, batch_oldest_s=3840)
    assert batch_note(s, 9000) == ("in batches 9,000 (6,512 answered there, 12 failed, up to $1.5000 so far; "
                                   "oldest 1h 04m)")  # no answers collected yet: the worst case's share
    collected = {**s, "done": 20, "replayed": 10, "cost_usd": 3.0, "replayed_usd": 1.0, "batch_answered": 10,
                 "batch_failed": 0, "batch_oldest_s": 250}  # $0.20 a request so far
    assert batch_note(collected, 9000) == "in batches 9,000 (10 answered there, ~$2.0000 so far; oldest 4m 10s)"
    assert batch_note(stats(in_flight=9000, batch_oldest_s=42), 9000) == "in batches 9,000 (0 answered there; oldest 42s)"
    assert batch_note(stats(in_flight=0), 9000) == "in batches 0"


def test_the_poll_log_writes_at_most_a_line_a_minute(capsys):
    now = [0.0]
    s = stats(in_flight=5, failed=0, batch_answered=2, batch_oldest_s=5)
    poll_log = PollLog(5, lambda: s, description="openai:m", to_stderr=True, clock=lambda: now[0])
    for now[0] in (0.0, 30.0, 59.9, 60.0, 200.0):
        poll_log()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3 and all(line.endswith("openai:m: 0/5 done, failed 0, $0.0000 journaled; in batches 5 "
                                                 "(2 answered there, up to $0.0000 so far; oldest 5s)")
                                   for line in lines)


@pytest.mark.parametrize("provider, model", [("openai", "gpt-4o-mini"), ("anthropic", "claude-haiku-4-5")])
@pytest.mark.parametrize("progress", [False, True])
def test_a_batch_run_shows_the_answers_in_at_the_provider_before_its_batch_ends(provider, model, progress, tmp_path,
                                                                                 monkeypatch, caplog, capsys):
    """Each poll's counts reach the snapshot and a plain line (no terminal here: on stderr where progress was asked
    for, else in the log), and no count, cost or stat: those still come from the collected batch alone."""
    from batch_testlib import shifted_clock

    from textbookgen import batch as batch_mod
    from textbookgen.testing import emulator as emulator_module

    shift = shifted_clock(monkeypatch)  # the batch takes 1000 s: validated at 250 s, then a request every 62.5 s
    monkeypatch.setattr(batch_mod, "time", emulator_module.time)  # the run's clock moves with it
    seen, real = [], PollLog.__call__

    def poll_log(self):
        self.interval_s = 0.0  # a line per poll
        seen.append(self.stats())
        real(self)
        shift[0] += 300.0  # the batch runs on till the next poll

    monkeypatch.setattr(PollLog, "__call__", poll_log)
    bad = [ChatRequest(messages=[{"role": "user", "content": f"BAD request {i}"}], max_tokens=64) for i in range(2)]
    with Emulator(EmulatorConfig(batch_latency_s=1000.0, faults=[Fault("400", rate=1.0, match="BAD")])) as emu:
        base = emu.anthropic_base_url if provider == "anthropic" else emu.openai_base_url
        gen = Generator(provider, model, base_url=base, api_key="sk-test", batch=True, batch_poll_s=0.01,
                        journal=tmp_path / "j.sqlite", progress=progress, **FAST)
        with caplog.at_level("INFO", logger="textbookgen.progress"):
            out = gen.run(bad + reqs(10))  # the two bad ones run first and fail
    polled = [(s["done"], s["failed"], s["cost_usd"], s["batch_answered"], s["batch_failed"]) for s in seen]
    assert polled == [(0, 0, 0.0, 0, 0), (0, 0, 0.0, 0, 0), (0, 0, 0.0, 3, 2), (0, 0, 0.0, 8, 2),
                      (12, 2, gen.stats["cost_usd"], 0, 0)]
    shown = capsys.readouterr().err if progress else caplog.text
    assert re.search(r"0/12 done, failed 0, \$0\.0000 journaled; in batches 12 \(8 answered there, 2 failed, up to "
                     r"\$0\.\d{4} so far; oldest 15m 0\ds\)", shown)
    assert not any(k.startswith("batch_") for k in gen.stats)  # the provider's counts are in no stat
    assert gen.stats["done"] == 12 and gen.stats["failed"] == 2
    assert gen.stats["collected"] == gen.stats["ok"] + gen.stats["truncated"] == 10
    assert gen.stats["cost_usd"] == pytest.approx(sum(r.cost_usd for r in out)) and gen.stats["cost_usd"] > 0


def test_the_final_line_in_a_log_file_is_whole(tmp_path, capsys, monkeypatch):
    """Without a terminal rich cut the line at 80 columns: a log kept
    `openai:gp… failed 0  $0.0001 (~$0.0001 projected)  in 60 out 230 tok  12,542 rp…`."""
    monkeypatch.delenv("COLUMNS", raising=False)
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        Generator("openai", "gpt-4o-mini", base_url=emu.openai_base_url, api_key="sk-test", journal=tmp_path / "j.sqlite",
                  **FAST).run(reqs(6))
    shown = capsys.readouterr().err
    assert re.search(r"openai:gpt-4o-mini .* 6/6 .* failed 0  \$0\.\d{4} \(~\$0\.\d{4} projected\)  in \d+ out [\d,]+ "
                     r"tok  [\d,]+ rpm  429s 0  in-flight 0/\d+", shown), shown
