"""The generate line's prepaid count (a resumed build's answers counted done and spent from the start) comes from the
journal summary the budget reads anyway (`BudgetedGenerator.read_journals`): a progress line reads the journal no
more than a build without one. A second, filtered summary of the journal at the stage's start was a pass over every
row (minutes, and gigabytes of temp disk, at 20M rows) on every build with progress on."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("TEXTBOOKGEN_LIMITS_DIR", tempfile.mkdtemp(prefix="h51-limits-"))

from test_build import QUICKSTART, prose_responder
from test_h29_generate_windows import N, _over, _windowed
from test_h46_stage_prepaid import _lines

from textbookgen.build import build, journal_spend
from textbookgen.journal import Journal
from textbookgen.recipe import load_recipe


def _summaries(monkeypatch) -> list[str]:
    """The journals each `Journal.summary` call reads, in order."""
    seen: list[str] = []
    summary = Journal.summary

    def spy(self, *args, **kwargs):
        seen.append(str(self.path))
        return summary(self, *args, **kwargs)

    monkeypatch.setattr(Journal, "summary", spy)
    return seen


def test_a_raised_builds_line_reads_the_journal_no_more_than_a_build_without_it(tmp_path, monkeypatch, capsys):
    """Two builds stopped on half of what the stage costs, each rerun with twice it, one with progress on: its line
    counts what the stopped build paid for from its first line (window 3's answer paid before included), yet both
    reruns read the same journal summaries."""
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    monkeypatch.setenv("COLUMNS", "400")
    _windowed(monkeypatch, 10)
    extra = {"curation.filters.enabled": False, "limits.concurrency": 1}
    seen, reads, err = _summaries(monkeypatch), {}, {}
    with Emulator(EmulatorConfig(latency_median_s=0.002, responder=prose_responder)) as emu:
        build(load_recipe(QUICKSTART, _over(tmp_path / "once", emu.openai_base_url, **extra)), progress=False)
        whole = journal_spend(tmp_path / "once" / "journal.sqlite").usd
        for progress in (True, False):
            out = tmp_path / f"progress{progress}"
            for budget in (whole / 2, whole * 2):
                seen.clear()
                capsys.readouterr()
                build(load_recipe(QUICKSTART, _over(out, emu.openai_base_url, **extra,
                                                    **{"budget.max_cost_usd": budget})), progress=progress)
            reads[progress] = [path.replace(str(out), "") for path in seen]
            err[progress] = capsys.readouterr().err
    lines = _lines(err[True])
    assert lines and int(lines[0][0]) > N - 10, lines  # the stopped build's answers counted from the start



def test_an_unbudgeted_rerun_with_a_line_reads_no_journal_summary_for_it(tmp_path, monkeypatch):
    """A build stopped on its budget, rerun without one: no budget reads the journals before its runs, so the line
    does not either (a pass over every row, minutes at 20M, for a display): it counts each window's replays."""
    from textbookgen.build import BudgetedGenerator
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    _windowed(monkeypatch, 10)
    extra = {"curation.filters.enabled": False, "limits.concurrency": 1}
    calls: list[bool] = []
    read = BudgetedGenerator.read_journals
    monkeypatch.setattr(BudgetedGenerator, "read_journals", lambda self: calls.append(self.budgeted) or read(self))
    with Emulator(EmulatorConfig(latency_median_s=0.002, responder=prose_responder)) as emu:
        build(load_recipe(QUICKSTART, _over(tmp_path / "once", emu.openai_base_url, **extra)), progress=False)
        whole = journal_spend(tmp_path / "once" / "journal.sqlite").usd
        out = tmp_path / "o"
        build(load_recipe(QUICKSTART, _over(out, emu.openai_base_url, **extra, **{"budget.max_cost_usd": whole / 2})),
              progress=True)
        assert calls == [True]  # the stopped build's line took its count from the budget's read
        calls.clear()
        build(load_recipe(QUICKSTART, _over(out, emu.openai_base_url, **extra, **{"budget.max_cost_usd": None})),
              progress=True)
    assert calls == [], calls
