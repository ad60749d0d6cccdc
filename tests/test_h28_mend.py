"""m28's mend of h28's mixed step lists (`groups`): what r28's tests (tests/test_h28_review.py) leave: the refusal a
build gets for a workdir in use, a cut on a corpus with no scores at all, the group keys following the code that
runs the groups, and what a killed streamed curate kept, left by a rerun that curates nothing."""

from __future__ import annotations

import fcntl
import gzip
import json
import os
from pathlib import Path

import polars as pl
import pytest
from conftest import SHARED_DATA
from test_build import QUICKSTART, prose_responder

from textbookgen.build import build
from textbookgen.curation import commands, corpus_io, groups, stream
from textbookgen.curation.classifier import QualityCut
from textbookgen.curation.config import ClassifierConfig, CurationConfig, FilterConfig
from textbookgen.curation.corpus_io import Corpus
from textbookgen.curation.exact import ExactDedup
from textbookgen.curation.filters import HeuristicFilter
from textbookgen.recipe import load_recipe

DATA = SHARED_DATA  # ../shared/data beside the project (a user's clone has none: these tests skip)


def _corpus(tmp_path: Path, n: int = 60) -> Path:
    path = DATA / "c4_en_sample_1k" / "c4_sample.jsonl.gz"
    if not path.exists():
        pytest.skip(f"{path} absent (only developer and CI machines have ../shared/data)")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        texts = [json.loads(x)["text"] for x in f][:n]
    src = tmp_path / "in"
    src.mkdir()
    pl.DataFrame({"id": [f"d{i}" for i in range(n)], "text": texts}).write_parquet(src / "a.parquet")
    return src


@pytest.mark.parametrize("stages", [{}, {"exact": {"enabled": False}, "minhash": {"enabled": False}}],
                         ids=["mixed", "filters alone"])
def test_a_build_refused_a_workdir_in_use_is_told_what_a_build_can_do(tmp_path, stages):
    """A build's curate stage (`curate_out_of_core`) on a workdir another run holds: refused, told to build into
    another output folder, not to give the --workdir or -o a build has no say in."""
    src, work = _corpus(tmp_path), tmp_path / "work"
    work.mkdir()
    fd = os.open(work / stream.LOCK, os.O_WRONLY | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        with pytest.raises(ValueError) as err:
            groups.curate_out_of_core(src, tmp_path / "out.parquet", CurationConfig.model_validate(stages), work)
    finally:
        os.close(fd)
    assert str(err.value) == (f"workdir {work}: another curation run is using it; wait for it to end, or "
                              f"{groups.BUILD_ELSEWHERE}")
    assert not (tmp_path / "out.parquet").exists()


def test_a_cut_alone_on_a_corpus_without_scores_names_it(tmp_path):
    """No file has `quality_score`: refused naming the input, before any output is written."""
    src = _corpus(tmp_path)
    with pytest.raises(ValueError, match=f"quality_filter: no file of {src} has a 'quality_score' column"):
        commands.run_steps(src, tmp_path / "out.parquet", [QualityCut(ClassifierConfig(threshold=0.5), "id")],
                           tmp_path / "work")
    assert not (tmp_path / "out.parquet").exists()


def test_group_keys_follow_the_modules_that_run_the_groups(tmp_path, monkeypatch):
    """An edit to commands.py (how a dedup group writes its intermediate file) between a killed run and its rerun:
    no finished group is taken."""
    corpus = Corpus(_corpus(tmp_path))
    parts = groups.groups([HeuristicFilter(FilterConfig(), "text", "id", workers=1), ExactDedup("text", "id")],
                          "text", "id")
    before = groups._keys(parts, corpus)
    edited = tmp_path / "commands.py"
    edited.write_bytes(Path(commands.__file__).read_bytes() + b"# edited")
    monkeypatch.setattr(commands, "__file__", str(edited))
    after = groups._keys(parts, corpus)
    assert all(before) and all(a != b for a, b in zip(before, after, strict=True))


@pytest.mark.parametrize("killed_in", ["exact dedup", "a chunk of the row steps"])
def test_a_rerun_curating_nothing_removes_what_a_killed_curate_kept(tmp_path, monkeypatch, killed_in):
    """Killed in its exact dedup (the row steps' group before it finished: finished_groups/) or in a chunk of its
    first row steps (its chunks stored: finished_chunks/), the build is rerun with every curation stage off:
    nothing will resume from those, so their copies of the corpus go."""
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "out"
    work = out / ".build" / "curation"
    with Emulator(EmulatorConfig(latency_median_s=0.005, responder=prose_responder)) as emu:
        over = {"output": str(out), "samples": 20, "provider.base_url": emu.openai_base_url}
        if killed_in == "exact dedup":
            monkeypatch.setattr(commands, "dedup_out_of_core", killed)
        else:
            monkeypatch.setattr(corpus_io, "CHUNK_ROWS", 4)
            save = stream.ChunkStore.save
            monkeypatch.setattr(stream.ChunkStore, "save", lambda self, k, *a: save(self, k, *a) if k < 2 else killed())
        with pytest.raises(KeyboardInterrupt):
            build(load_recipe(QUICKSTART, over), progress=False)
        left = work / (groups.GROUPS if killed_in == "exact dedup" else stream.STORE)
        assert len(list(left.iterdir())) > 1, left
        monkeypatch.undo()
        off = {f"curation.{stage}.enabled": False for stage in ("exact", "filters", "minhash", "seed_copy")}
        manifest = build(load_recipe(QUICKSTART, {**over, **off, "curation.drop_truncated": False}),
                         progress=False).manifest
    assert manifest["counts"]["curated"] == pl.read_parquet(out / "documents.parquet").height
    assert not (work / groups.GROUPS).exists() and not (work / stream.STORE).exists()
