"""A resumed (or raised) windowed build's generate line counts the answers an earlier run paid for once, done and
spent from the stage's start (not spent outside the stage and projected again till their window replays them:
"reached at ~66%" on a stage that completed, review r39), and only the stage's own: the journal's count (the
summary the budget reads) is taken only where a sample of the stage's own requests agrees with it, so another
request set's answers left in the same journal are not (review r41: a rebuild with another model or sampling read
30/30 from its first window)."""

from __future__ import annotations

import os
import re
import tempfile

os.environ.setdefault("TEXTBOOKGEN_LIMITS_DIR", tempfile.mkdtemp(prefix="h46-limits-"))

import pytest
from rich.progress import Progress
from test_build import QUICKSTART, prose_responder
from test_h29_generate_windows import N, _over, _windowed

from textbookgen.build import build, journal_spend
from textbookgen.recipe import load_recipe

# a window's line in a log: done/total, the stage's spend, its projection and the budget's words
LINE = re.compile(r"openai:gpt-4[.\w-]+ .*? (\d+)/(\d+) .*? failed 0  \$(\d+\.\d{4}) \(~\$(\d+\.\d{4}) projected, "
                  r"budget \$(\d+\.\d{4})( \(\$\d+\.\d{4} left after earlier runs\))? ([^)]*)\)")


def _lines(err: str) -> list[tuple[str, ...]]:
    return [m.groups() for m in LINE.finditer(err)]


def test_a_build_stopped_on_its_budget_and_raised_counts_the_later_windows_paid_answers_once(
        tmp_path, monkeypatch, capsys):
    """A build stopped on half of what the stage costs, rerun with twice it: the stopped build paid for requests of
    every window. Each line of the rerun counts them done and paid from the start: the outlook says ok (the stage
    completes), the budget's words are the same on every line, and the stage's spend and projection are what the
    whole stage cost a build that ran it at once."""
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    monkeypatch.setenv("COLUMNS", "400")
    _windowed(monkeypatch, 10)
    extra = {"curation.filters.enabled": False, "limits.concurrency": 1}
    with Emulator(EmulatorConfig(latency_median_s=0.002, responder=prose_responder)) as emu:
        build(load_recipe(QUICKSTART, _over(tmp_path / "once", emu.openai_base_url, **extra)), progress=True)
        whole = float(_lines(capsys.readouterr().err)[-1][2])  # the stage's spend, all N sent
        extra["budget.max_cost_usd"] = whole / 2
        stopped = build(load_recipe(QUICKSTART, _over(tmp_path / "b", emu.openai_base_url, **extra)), progress=True)
        capsys.readouterr()
        extra["budget.max_cost_usd"] = whole * 2
        raised = build(load_recipe(QUICKSTART, _over(tmp_path / "b", emu.openai_base_url, **extra)), progress=True)
        lines = _lines(capsys.readouterr().err)
    assert stopped.manifest["counts"]["skipped_budget"] > 0 and raised.manifest["counts"]["skipped_budget"] == 0
    assert lines and int(lines[-1][0]) == N
    assert {outlook for *_, outlook in lines} == {"ok"}, lines
    assert {left for *_, left, _ in lines} == {None}, lines  # nothing of the stage's spent "before" it
    assert len({given for *_, given, _, _ in lines}) == 1, lines
    assert int(lines[0][0]) > N - 10, lines  # the first line (window 2's) counts window 3's answer paid before
    assert all(abs(float(projected) - whole) < 2e-4 for _, _, _, projected, *_ in lines), lines
    assert abs(float(lines[-1][2]) - whole) < 2e-4


@pytest.mark.parametrize("changed", [{"model": "gpt-4.1-nano"}, {"sampling.temperature": 0.7}],
                         ids=["model", "temperature"])
def test_a_rebuild_with_another_model_or_sampling_counts_only_its_own_requests(tmp_path, monkeypatch, capsys,
                                                                                changed):
    """r41's case: the first build's answers stay in the journal, none of them a request of the rebuild's. Its line
    counts its own windows (10, 20, 30 of 30, not 30/30 from the first), its spend is its own, and the first
    build's is spent before the stage (out of the budget's room, said as such)."""
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    monkeypatch.setenv("COLUMNS", "400")
    _windowed(monkeypatch, 10)
    out, extra = tmp_path / "o", {"curation.filters.enabled": False, "limits.concurrency": 1,
                                  "budget.max_cost_usd": 1.0}
    with Emulator(EmulatorConfig(latency_median_s=0.002, responder=prose_responder)) as emu:
        build(load_recipe(QUICKSTART, _over(out, emu.openai_base_url, **extra)), progress=True)
        before = journal_spend(out / "journal.sqlite").usd
        capsys.readouterr()
        res = build(load_recipe(QUICKSTART, _over(out, emu.openai_base_url, **extra, **changed)), progress=True)
        lines = _lines(capsys.readouterr().err)
    assert emu.billed == 2 * N and res.manifest["counts"]["ok"] == N
    assert [int(done) for done, *_ in lines] == [10, 20, 30], lines
    stage = journal_spend(out / "journal.sqlite").usd - before
    assert abs(float(lines[-1][2]) - stage) < 2e-4, (lines[-1], stage)
    assert {left for *_, left, _ in lines} == {f" (${1.0 - before:.4f} left after earlier runs)"}, lines


def test_same_model_and_sampling_answers_that_outnumber_the_prompts_leave_each_window_its_own_count(
        tmp_path, monkeypatch, capsys):
    """Two earlier builds with other seeds (other requests, the same model and sampling) left 2N answers in the
    journal: more than its N prompts, so not all its own, and its line counts each window's own replays (10, 20,
    30), not N done from the start."""
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    monkeypatch.setenv("COLUMNS", "400")
    _windowed(monkeypatch, 10)
    out, extra = tmp_path / "o", {"curation.filters.enabled": False, "limits.concurrency": 1,
                                  "budget.max_cost_usd": 1.0}
    with Emulator(EmulatorConfig(latency_median_s=0.002, responder=prose_responder)) as emu:
        for seed in (1, 2, 3):
            build(load_recipe(QUICKSTART, _over(out, emu.openai_base_url, seed=seed, **extra)), progress=True)
            lines = _lines(capsys.readouterr().err)
    assert emu.billed == 3 * N
    assert [int(done) for done, *_ in lines] == [10, 20, 30], lines


def _left(monkeypatch) -> list[tuple[float, float, str]]:
    """(total, done, the words beside them) of the engine's line each time it is left (on screen or in the log)."""
    seen: list[tuple[float, float, str]] = []
    stop = Progress.stop

    def spy(self):
        task = self.tasks[0]
        if task.description == "openai:gpt-4o-mini":  # not the prompts' or curation's bars
            seen.append((task.total, task.completed, task.fields["info"]))
        stop(self)

    monkeypatch.setattr(Progress, "stop", spy)
    return seen


def test_a_live_build_collecting_an_interrupted_batch_builds_answers_counts_the_other_windows_once(
        tmp_path, monkeypatch, capsys):
    """A --batch build killed once its batches were submitted, resumed live in windows: the first window collects
    every batch, its own answers and the other windows' (kept in the journal, in none of its counts). Those are
    counted done and spent then, once (the line showed a budget above the one given: "$2.0025 left"). On a
    terminal, where the line is drawn at the stage's end."""
    from textbookgen.batch import BatchRunner
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    monkeypatch.setenv("COLUMNS", "400")
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("TERM", "xterm")
    left = _left(monkeypatch)
    _windowed(monkeypatch, 10)
    extra = {"curation.filters.enabled": False, "provider.batch": True, "provider.batch_size": 5,
             "provider.batch_poll_s": 0.05}
    with Emulator(EmulatorConfig(batch_latency_s=0.05, responder=prose_responder)) as emu:
        collect = BatchRunner._collect

        async def killed(self, items, *, once=False):
            raise RuntimeError("killed after submitting")  # the batches stay open in the journal

        monkeypatch.setattr(BatchRunner, "_collect", killed)
        with pytest.raises(Exception, match="killed"):
            build(load_recipe(QUICKSTART, _over(tmp_path / "o", emu.openai_base_url, **extra)), progress=True)
        monkeypatch.setattr(BatchRunner, "_collect", collect)
        capsys.readouterr()
        left.clear()
        extra["provider.batch"] = False
        res = build(load_recipe(QUICKSTART, _over(tmp_path / "o", emu.openai_base_url, **extra)), progress=True)
    assert res.manifest["counts"]["ok"] == N and emu.stats()["batch_requests"] == N
    assert [(total, done) for total, done, _ in left] == [(N, N)]
    paid = journal_spend(tmp_path / "o" / "journal.sqlite").usd
    words = re.match(r"failed 0  \$(\d+\.\d{4}) \(~\$(\d+\.\d{4}) projected, budget \$2\.0000 ok\)", left[0][2])
    assert words and float(words[1]) == float(words[2]) == round(paid, 4), left[0][2]

