"""A windowed build's generate stage shows one progress line over all its prompts, not one per window: done of the
stage's prompts, its spend projected over all of them and its budget outlook, carried from window to window."""

from __future__ import annotations

import asyncio
import io
import re
from typing import TYPE_CHECKING

import pytest
from rich.console import Console
from rich.progress import Progress
from test_build import QUICKSTART, prose_responder
from test_h29_generate_windows import N, _over, _windowed, interrupting_window_2

from textbookgen.build import build
from textbookgen.engine import Generator
from textbookgen.recipe import load_recipe

if TYPE_CHECKING:
    from textbookgen.progress import StageProgress

LINE = re.compile(r"openai:gpt-4o-mini .*? (\d+)/(\d+) .*? failed 0  \$(\d+\.\d{4}) \(~\$(\d+\.\d{4}) projected, "
                  r"budget \$2\.0000 ok\)")


def _stopped(monkeypatch) -> list[tuple[float, float]]:
    """(total, done) of the engine's progress line each time it is stopped (left on screen or in the log)."""
    seen: list[tuple[float, float]] = []
    stop = Progress.stop

    def spy(self):
        task = self.tasks[0]
        if task.description == "openai:gpt-4o-mini":  # not the prompts' or curation's bars
            seen.append((task.total, task.completed))
        stop(self)

    monkeypatch.setattr(Progress, "stop", spy)
    return seen


def _build(tmp_path, monkeypatch) -> None:
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    _windowed(monkeypatch, 10)
    with Emulator(EmulatorConfig(latency_median_s=0.002, responder=prose_responder)) as emu:
        build(load_recipe(QUICKSTART, _over(tmp_path / "o", emu.openai_base_url)), progress=True)


def test_a_log_gets_a_line_per_window_counting_and_projecting_the_whole_stage(tmp_path, monkeypatch, capsys):
    """Without a terminal each window leaves a line, as before, but of the stage: 10/30, 20/30, 30/30 (it was 10/10
    three times), each projecting the stage's spend from its spend so far over its requests done so far."""
    monkeypatch.setenv("COLUMNS", "400")  # the whole line on one line
    stopped = _stopped(monkeypatch)
    _build(tmp_path, monkeypatch)
    lines = [m.groups() for m in LINE.finditer(capsys.readouterr().err)]
    assert [(int(done), int(total)) for done, total, _, _ in lines] == [(10, N), (20, N), (30, N)]
    assert stopped == [(N, 10), (N, 20), (N, 30)]
    for done, _, usd, projected in lines:  # no replays: the average of those done, times all the stage's
        assert float(projected) == pytest.approx(float(usd) * N / int(done), abs=2e-4)
    assert float(lines[0][2]) < float(lines[1][2]) < float(lines[2][2])  # spend carried over windows


def test_a_terminal_gets_one_line_for_the_whole_stage(tmp_path, monkeypatch):
    """On a terminal the line is up from the first window to the stage's end: it is left once, all prompts done."""
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("TERM", "xterm")
    stopped = _stopped(monkeypatch)
    _build(tmp_path, monkeypatch)
    assert stopped == [(N, N)]


def test_an_interrupted_stage_leaves_its_line_with_what_it_did(tmp_path, monkeypatch):
    """Ctrl-C in the second window: the line is taken down (the terminal's cursor back) with the first window's
    requests counted of the stage's."""
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("TERM", "xterm")
    stopped = _stopped(monkeypatch)
    monkeypatch.setattr(Generator, "run", interrupting_window_2())
    with pytest.raises(KeyboardInterrupt):
        _build(tmp_path, monkeypatch)
    assert stopped == [(N, 10)]


def _counters(**kw) -> dict:
    """A run's counters as `Generator._live_stats` gives them."""
    base = {"done": 0, "sent": 0, "failed": 0, "cost_usd": 0.0, "input_tokens": 0, "output_tokens": 0,
            "rate_limited": 0, "replayed": 0, "replayed_usd": 0.0, "replayed_output_tokens": 0, "abandoned_usd": 0.0,
            "abandoned_output_tokens": 0, "in_flight": 0, "concurrency": 4, "rpm_limit": None, "budget_held": 0,
            "max_cost_usd": None, "max_output_tokens": None, "max_cost_usd_given": 2.0, "max_output_tokens_given": None}
    return {**base, **kw}


def _stage(total: int, *runs: dict) -> tuple[StageProgress, str]:
    """A stage on a terminal through `runs` (final counters each), as the engine drives it; the line drawn as the
    last run starts (at the window boundary)."""
    from textbookgen.progress import StageProgress

    stage = StageProgress(total, description="openai:gpt-4o-mini",
                          console=Console(file=io.StringIO(), force_terminal=True, width=400))

    async def windows() -> str:
        for counters in runs:
            display = stage.run(lambda counters=counters: counters)
            display.start()
            display._draw()
            seen = _info(stage)
            await display.stop()
            stage.add(counters)  # as the engine's `_report` does
        return seen

    return stage, asyncio.run(windows())


def _info(stage: StageProgress) -> str:
    return stage._progress.tasks[0].fields["info"]


def test_the_projection_at_a_window_boundary_is_the_stages():
    """A stage of 300 requests under a $2 budget, $0.50 of it spent before the stage. Window 1 (100 requests) ends:
    20 replayed from the journal ($0.20), 80 sent for $0.80. Window 2 starts with $0.50 of room ($2 - $0.50 - $1):
    each request left costs $0.01 (what was sent, over the requests sent), the 200 left $2, the stage $3; the budget
    stops it at 100 + $0.50 / $0.01 = 150 of the 300. The stage's end (on a terminal) says the same."""
    first = _counters(done=100, sent=80, replayed=20, cost_usd=1.0, replayed_usd=0.2, output_tokens=10_000,
                      replayed_output_tokens=2_000, input_tokens=5_000, max_cost_usd=1.5)
    stage, boundary = _stage(300, first, _counters(max_cost_usd=0.5))
    expected = ("failed 0  $1.0000 (~$3.0000 projected, budget $2.0000 ($1.5000 left after earlier runs) reached at "
                "~50%)  in 5,000 out 10,000 tok  ")
    assert boundary.startswith(expected)
    assert stage._progress.live.is_started  # up between windows
    stage.close()
    assert _info(stage).startswith(expected) and not stage._progress.live.is_started
    assert (stage._progress.tasks[0].completed, stage._progress.tasks[0].total) == (100, 300)


def test_a_budget_the_stage_alone_spent_is_not_said_to_be_left_after_earlier_runs():
    """The stage's budget is the window's room plus what the windows before spent: ($0.30 - $0.04876) + $0.04876 is
    0.30000000000000004, which said "budget $0.3000 ($0.3000 left after earlier runs)"."""
    first = _counters(done=10, sent=10, cost_usd=0.04876, max_cost_usd=0.3, max_cost_usd_given=0.3)
    _, boundary = _stage(30, first, _counters(max_cost_usd=0.3 - 0.04876, max_cost_usd_given=0.3))
    assert boundary.startswith("failed 0  $0.0488 (~$0.1463 projected, budget $0.3000 ok)  ")


def test_a_run_after_the_stage_closed_leaves_no_live_display_up(tmp_path):
    from textbookgen.engine import ChatRequest, Generator
    from textbookgen.progress import StageProgress
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    def ask(first: int, last: int) -> list[ChatRequest]:
        return [ChatRequest(messages=[{"role": "user", "content": f"Explain topic {i}"}], max_tokens=50)
                for i in range(first, last)]

    stage = StageProgress(10, description="openai:gpt-4o-mini",
                          console=Console(file=io.StringIO(), force_terminal=True, width=200))
    with Emulator(EmulatorConfig(latency_median_s=0.002)) as emu:
        gen = Generator("openai", "gpt-4o-mini", base_url=emu.openai_base_url, api_key="sk-test",
                        journal=tmp_path / "j.sqlite", progress=False)
        gen.stage_progress = stage
        gen.run(ask(0, 10))
        stage.close()  # the stage's end, as `Build.stage_generate`'s finally
        assert not stage._progress.live.is_started
        gen.run(ask(10, 15))  # the same Generator reused after its stage
    assert not stage._progress.live.is_started  # left up: nothing closes it again


def test_the_generate_stage_leaves_no_stage_progress_on_its_generator(tmp_path, monkeypatch):
    """As an LLM call restores the Generator attributes it sets for its windows (`llm.py`: spent_aside, counted_aside,
    budget_stopped), the generate stage takes its closed line off the Generator it set it on."""
    from test_build import QUICKSTART, prose_responder
    from test_h29_generate_windows import _over, _windowed

    from textbookgen.build import build
    from textbookgen.engine import Generator
    from textbookgen.recipe import load_recipe
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    made: list[Generator] = []
    init = Generator.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(Generator, "__init__", spy)
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("TERM", "xterm")
    _windowed(monkeypatch, 10)
    with Emulator(EmulatorConfig(latency_median_s=0.002, responder=prose_responder)) as emu:
        build(load_recipe(QUICKSTART, _over(tmp_path / "o", emu.openai_base_url)), progress=True)
    assert made and [g.stage_progress for g in made] == [None] * len(made)
