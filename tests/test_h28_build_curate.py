"""A recipe build's curate stage streams documents.parquet through the curation steps (`curate_out_of_core`) instead
of curating the documents held whole: the same curated.parquet (byte for byte), manifest counts and reports."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import polars as pl
from test_build import QUICKSTART, prose_responder

from textbookgen import curation
from textbookgen.build import build
from textbookgen.curation import groups, pipeline
from textbookgen.recipe import load_recipe
from textbookgen.testing.responder import prose, seed_copying

FIXED = prose("the water cycle", 350, random.Random(28))  # the answer repeated to some prompts


def _repeating(body: dict) -> str:
    """`prose_responder`'s answer, but a fifth of the prompts get FIXED (exact copies) and a tenth FIXED with one
    word of its own changed (near copies); which ones depends on the request alone."""
    draw = int(hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:8], 16)
    if draw % 10 < 2:
        return FIXED
    if draw % 10 == 2:
        words = FIXED.split(" ")
        words[draw % len(words)] = f"w{draw}"
        return " ".join(words)
    return prose_responder(body)


def _build(out: Path) -> dict:
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    with Emulator(EmulatorConfig(latency_median_s=0.005, responder=seed_copying(_repeating, 0.3))) as emu:
        over = {"output": str(out), "samples": 40, "provider.base_url": emu.openai_base_url}
        return build(load_recipe(QUICKSTART, over), progress=False).manifest


def _reports(out: Path) -> dict[str, pl.DataFrame]:
    work = out / ".build" / "curation"
    return {str(p.relative_to(work)): pl.read_parquet(p) for p in sorted(work.glob("*/*.parquet"))}


def test_the_curate_stage_streams_to_what_curating_the_frame_gave(tmp_path, monkeypatch):
    """The stage never curates the frame (`curate` refused), and writes what it wrote when it did: curated.parquet
    byte for byte (its hash keys the dataset stage), the manifest's curation counts and every report."""
    monkeypatch.setattr(groups, "run_out_of_core", lambda *a, **k: None)  # today's path: `curate`
    whole = _build(tmp_path / "whole")

    def refused(*args, **kwargs):
        raise AssertionError("the documents were curated whole")

    monkeypatch.undo()
    monkeypatch.setattr(curation, "curate", refused)
    monkeypatch.setattr(pipeline, "curate", refused)
    streamed = _build(tmp_path / "streamed")

    assert pl.read_parquet(tmp_path / "streamed" / "documents.parquet").equals(
        pl.read_parquet(tmp_path / "whole" / "documents.parquet"))
    dropped = {name: sum(st["dropped"].values()) for name, st in whole["curation"].items()}
    assert all(dropped[name] for name in ("exact_dedup", "seed_copy", "minhash_dedup")), dropped
    assert streamed["curation"] == whole["curation"]
    assert (tmp_path / "streamed" / "curated.parquet").read_bytes() == (tmp_path / "whole" / "curated.parquet").read_bytes()
    assert set(_reports(tmp_path / "whole")) == set(_reports(tmp_path / "streamed"))
    for name, report in _reports(tmp_path / "streamed").items():
        assert report.equals(_reports(tmp_path / "whole")[name]), name
    assert not (tmp_path / "streamed" / ".build" / "curation" / groups.GROUPS).exists()
