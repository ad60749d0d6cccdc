"""A windowed build's generate line takes the journal's answers as its own (done and spent from the start,
`Prepaid`) only where a random sample of its own request keys, looked up in the journal, agrees: a rebuild in the
same folder with a new seed (other requests, the same model and sampling) read 30/30 from its first window (review
r41's regression, in the case a filter on the model and sampling cannot tell)."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("TEXTBOOKGEN_LIMITS_DIR", tempfile.mkdtemp(prefix="h48-limits-"))

from test_build import QUICKSTART, prose_responder
from test_h29_generate_windows import N, _over, _windowed
from test_h46_stage_prepaid import _lines

from textbookgen.build import build
from textbookgen.recipe import load_recipe

EXTRA = {"curation.filters.enabled": False, "limits.concurrency": 1}


def test_a_rebuild_with_a_new_seed_in_the_same_folder_counts_its_own_windows(tmp_path, monkeypatch, capsys):
    """The first build's N answers (same model and sampling) do not outnumber its N prompts, but none is a request
    of the rebuild's: its line reads 10, 20, 30, not 30/30 from the start."""
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    monkeypatch.setenv("COLUMNS", "400")
    _windowed(monkeypatch, 10)
    out, extra = tmp_path / "o", {**EXTRA, "budget.max_cost_usd": 1.0}
    with Emulator(EmulatorConfig(latency_median_s=0.002, responder=prose_responder)) as emu:
        build(load_recipe(QUICKSTART, _over(out, emu.openai_base_url, seed=1, **extra)), progress=True)
        capsys.readouterr()
        res = build(load_recipe(QUICKSTART, _over(out, emu.openai_base_url, seed=2, **extra)), progress=True)
        lines = _lines(capsys.readouterr().err)
    assert emu.billed == 2 * N and res.manifest["counts"]["ok"] == N
    assert [int(done) for done, *_ in lines] == [10, 20, 30], lines


def test_a_rebuild_with_a_new_seed_after_a_stopped_build_counts_its_own_windows(tmp_path, monkeypatch, capsys):
    """A build stopped on its budget part way left fewer answers than prompts, of another seed: the rebuild's
    line does not start with them done (h46's tree read 22 of 30 after its first window)."""
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    monkeypatch.setenv("COLUMNS", "400")
    _windowed(monkeypatch, 10)
    with Emulator(EmulatorConfig(latency_median_s=0.002, responder=prose_responder)) as emu:
        build(load_recipe(QUICKSTART, _over(tmp_path / "once", emu.openai_base_url, **EXTRA)), progress=True)
        whole = float(_lines(capsys.readouterr().err)[-1][2])
        out = tmp_path / "o"
        stopped = build(load_recipe(QUICKSTART, _over(out, emu.openai_base_url, seed=1, **EXTRA,
                                                      **{"budget.max_cost_usd": whole / 2})), progress=True)
        capsys.readouterr()
        build(load_recipe(QUICKSTART, _over(out, emu.openai_base_url, seed=2, **EXTRA,
                                            **{"budget.max_cost_usd": whole * 4})), progress=True)
        lines = _lines(capsys.readouterr().err)
    assert 0 < stopped.manifest["counts"]["ok"] < N
    assert [int(done) for done, *_ in lines] == [10, 20, 30], lines


def test_the_sample_of_prompts_is_the_same_each_time_and_spread_over_all_of_them():
    from textbookgen.progress import sample_at

    big = 20_000_000
    drawn = sample_at(big)
    assert drawn == sample_at(big) and len(set(drawn)) == 256 == len(drawn) and drawn == sorted(drawn)
    assert drawn[0] < big // 20 and drawn[-1] > big - big // 20 and all(0 <= i < big for i in drawn)
    assert sample_at(30) == list(range(30))


def test_a_journal_count_is_taken_where_the_samples_answers_agree_with_it():
    """A sample of every prompt is an exact count; of 256 of 20M, hits 3.5 standard deviations below what the
    count predicts are not the stage's (p ~ 3e-4), 2.2 below may be (p ~ 1.4%)."""
    from textbookgen.progress import Prepaid, lower_tail

    assert Prepaid(done=15).agrees(15, 30, 30) and not Prepaid(done=15).agrees(14, 30, 30)
    assert not Prepaid(done=30).agrees(0, 30, 30) and not Prepaid(done=31).agrees(30, 30, 30)
    assert Prepaid().agrees(0, 0, 30)
    half = Prepaid(done=10_000_000)
    assert half.agrees(128, 256, 20_000_000) and half.agrees(110, 256, 20_000_000)
    assert not half.agrees(100, 256, 20_000_000)
    assert not Prepaid(done=600_000).agrees(0, 256, 20_000_000)  # 3% of the prompts another seed's: told apart
    assert abs(lower_tail(0, 256, 600_000, 20_000_000) - 0.97**256) < 1e-5
