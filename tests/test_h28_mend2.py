"""Review r28b of the mended mixed out-of-core runs (groups.run_groups), and their mend m28b."""
from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from test_h28_review import _steps, _texts

from textbookgen.curation import commands, groups, stream


def _corpus(tmp_path: Path, n: int = 120) -> Path:
    t = _texts(n)
    t[100] = t[3]
    src = tmp_path / "in"
    src.mkdir()
    pl.DataFrame({"id": [f"d{i}" for i in range(n)], "text": t}).write_parquet(src / "a.parquet")
    return src


def _killed_in_dedup(monkeypatch, src: Path, out: Path, work: Path, steps) -> None:
    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "dedup_out_of_core", killed)
    with pytest.raises(KeyboardInterrupt):
        commands.run_steps(src, out, steps, work)
    monkeypatch.undo()


def test_a_truncated_finished_group_is_not_trusted_for_ever(tmp_path, monkeypatch):
    """A record (00.json) whose parquet was cut short (a crash of the machine: neither file is fsynced): the rerun
    should run the group again, not fail on that file, rerun after rerun."""
    src, work, out = _corpus(tmp_path), tmp_path / "work", tmp_path / "out.parquet"
    _killed_in_dedup(monkeypatch, src, out, work, _steps())
    part = work / groups.GROUPS / "00.parquet"
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    for _ in range(2):
        try:
            commands.run_steps(src, out, _steps(), work)
        except Exception as err:  # noqa: BLE001
            failed = err
        else:
            failed = None
    assert failed is None, repr(failed)


def test_a_ctrl_c_in_a_fresh_mixed_run_leaves_no_workdir_of_an_empty_groups_folder(tmp_path, monkeypatch):
    """Ctrl-C before a group finished (nothing to resume): as a streamed run, no workdir of the lock's alone (here
    with an empty finished_groups/ that `run_in` takes for a finished group)."""
    src, work, out = _corpus(tmp_path), tmp_path / "work", tmp_path / "out.parquet"

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(stream, "_parts", killed)  # in the first chunk of the row steps, before it is stored
    with pytest.raises(KeyboardInterrupt):
        commands.run_steps(src, out, _steps(), work)
    left = sorted(str(p.relative_to(work)) for p in work.rglob("*")) if work.exists() else []
    assert not work.exists(), left


def test_resumed_reports_are_those_of_the_stats(tmp_path, monkeypatch):
    """Killed in dedup; a filter alone of other settings then runs on the same workdir (its report in filters/);
    the mixed rerun resumes from its finished filter group: stats say min_words=50's drops, the report is
    min_words=10's."""
    src, work, out = _corpus(tmp_path), tmp_path / "work", tmp_path / "out.parquet"
    _killed_in_dedup(monkeypatch, src, out, work, _steps(50))
    commands.run_steps(src, tmp_path / "other.parquet", _steps(10)[:1], work)
    stats = commands.run_steps(src, out, _steps(50), work)
    report = pl.read_parquet(work / "filters" / "dropped.parquet")
    assert report.height == sum(stats["filters"]["dropped"].values()), (report.height, stats["filters"])


def test_a_rerun_of_one_group_removes_what_a_killed_mixed_curate_kept(tmp_path, monkeypatch):
    """Killed in its exact dedup (finished_groups/ holds the row steps' output, a copy of the corpus), the build is
    rerun with dedup off: one group (the row steps) runs by its own path, which never looks at finished_groups/;
    the copy stays in <out>/.build/curation for good."""
    from test_build import QUICKSTART, prose_responder

    from textbookgen.build import build
    from textbookgen.recipe import load_recipe
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "out"
    work = out / ".build" / "curation"
    with Emulator(EmulatorConfig(latency_median_s=0.005, responder=prose_responder)) as emu:
        over = {"output": str(out), "samples": 20, "provider.base_url": emu.openai_base_url}
        monkeypatch.setattr(commands, "dedup_out_of_core", killed)
        with pytest.raises(KeyboardInterrupt):
            build(load_recipe(QUICKSTART, over), progress=False)
        assert list((work / groups.GROUPS).glob("*.parquet"))
        monkeypatch.undo()
        off = {f"curation.{stage}.enabled": False for stage in ("exact", "minhash")}
        build(load_recipe(QUICKSTART, {**over, **off}), progress=False)
    assert not (work / groups.GROUPS).exists(), sorted(p.name for p in (work / groups.GROUPS).iterdir())


def test_a_resumed_run_does_not_take_reports_another_whole_corpus_run_rewrote(tmp_path, monkeypatch):
    """Killed in dedup; a whole-corpus run (`run_pipeline`, which takes no workdir lock) of a filter of other settings
    then rewrites filters/ on the same workdir: the rerun runs the filter group again (its record's digest of the
    reports no longer holds), so its stats and report agree."""
    from textbookgen.curation.pipeline import run_pipeline

    src, work, out = _corpus(tmp_path), tmp_path / "work", tmp_path / "out.parquet"
    _killed_in_dedup(monkeypatch, src, out, work, _steps(50))
    run_pipeline(pl.read_parquet(src), _steps(10)[:1], work)
    stats = commands.run_steps(src, out, _steps(50), work)
    report = pl.read_parquet(work / "filters" / "dropped.parquet")
    assert report.height == sum(stats["filters"]["dropped"].values()), (report.height, stats["filters"])


def test_a_build_curating_nothing_leaves_a_workdir_in_use_alone(tmp_path):
    """Every curation stage off (the build curates in memory and removes what a killed curate kept): while another
    run holds the workdir, the build is refused, not left to remove that run's finished group under it."""
    import fcntl
    import os

    from test_build import QUICKSTART, prose_responder

    from textbookgen.build import build
    from textbookgen.recipe import load_recipe
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    out = tmp_path / "out"
    work = out / ".build" / "curation"
    (work / groups.GROUPS).mkdir(parents=True)
    (work / groups.GROUPS / "00.json").write_text("{}")
    fd = os.open(work / stream.LOCK, os.O_WRONLY | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        with Emulator(EmulatorConfig(latency_median_s=0.005, responder=prose_responder)) as emu:
            over = {"output": str(out), "samples": 20, "provider.base_url": emu.openai_base_url,
                    "curation.drop_truncated": False,
                    **{f"curation.{stage}.enabled": False for stage in ("exact", "filters", "minhash", "seed_copy")}}
            with pytest.raises(ValueError, match="another curation run is using it"):
                build(load_recipe(QUICKSTART, over), progress=False)
    finally:
        os.close(fd)
    assert (work / groups.GROUPS / "00.json").is_file()


def test_ctrl_c_in_a_fresh_minhash_run_keeps_the_signatures_it_stored(tmp_path):
    """A run of one dedup group now holds the workdir (`stream.run_in`): Ctrl-C there must not take the fresh
    workdir away with the MinHash shards already signed, which a rerun skips (found in the lead's read)."""
    from textbookgen.curation.config import MinHashConfig
    from textbookgen.curation.near_dedup import MinHashDedup

    src, out, work = _corpus(tmp_path), tmp_path / "out.parquet", tmp_path / "work"
    signed: list[str] = []

    def stop_after_two(key: str) -> None:
        signed.append(key)
        if len(signed) == 2:
            raise KeyboardInterrupt

    cfg = MinHashConfig(workers=1, shard_size=30)
    with pytest.raises(KeyboardInterrupt):
        commands.run_steps(src, out, [MinHashDedup(cfg, on_shard=stop_after_two)], work)
    done = {p.parent.name for p in work.glob("*/minhash-*/shards/*/DONE")}
    assert len(done) == 2, sorted(p.name for p in work.iterdir()) if work.exists() else "no workdir"
    resigned: list[str] = []
    commands.run_steps(src, out, [MinHashDedup(cfg, on_shard=resigned.append)], work)
    assert resigned and not set(resigned) & done


def test_an_incremental_minhash_group_is_never_reused(tmp_path):
    """What an incremental MinHash keeps depends on its index's contents, which no key covers: its group is never
    recorded (`fingerprint` None), while a fresh one's settings make its key."""
    from textbookgen.curation.config import MinHashConfig
    from textbookgen.curation.near_dedup import MinHashDedup

    assert groups._chain("input", [MinHashDedup(MinHashConfig(), index=tmp_path / "index")]) is None
    fresh = [MinHashDedup(MinHashConfig(threshold=0.8))]
    assert groups._chain("input", fresh) is not None
    assert groups._chain("input", fresh) != groups._chain("input", [MinHashDedup(MinHashConfig(threshold=0.7))])
