"""The progress line's projection: what the whole run will cost, and whether a budget will stop it."""

from __future__ import annotations

import re

import pytest

from textbookgen.engine import ChatRequest, Generator
from textbookgen.progress import MIN_ANSWERS, budget_outlook, project, projection_note
from textbookgen.testing.emulator import Emulator, EmulatorConfig

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
