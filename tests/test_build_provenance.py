"""A document's row depends on its request and answer only: the same recipe built in two folders gives the same
shards byte for byte, and a build grown by a few samples keeps every earlier row as it was (so a re-push
uploads only what is new: the Hub's Xet storage dedups the unchanged chunks)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from test_build import QUICKSTART, prose_responder

from textbookgen.build import build
from textbookgen.recipe import load_recipe


def _build(out: Path, base_url: str, samples: int) -> Path:
    over = {"output": str(out), "samples": samples, "provider.base_url": base_url, "curation.filters.enabled": False}
    build(load_recipe(QUICKSTART, over), progress=False)
    return out / "dataset" / "data" / "train-00000-of-00001.parquet"


def test_the_same_recipe_built_in_two_folders_gives_the_same_shards(tmp_path):
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    with Emulator(EmulatorConfig(latency_median_s=0.002, responder=prose_responder)) as emu:
        a = _build(tmp_path / "a", emu.openai_base_url, 20)
        b = _build(tmp_path / "b", emu.openai_base_url, 20)
    assert a.read_bytes() == b.read_bytes()


def test_a_grown_build_keeps_its_earlier_rows_unchanged(tmp_path):
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    with Emulator(EmulatorConfig(latency_median_s=0.002, responder=prose_responder)) as emu:
        before = pl.read_parquet(_build(tmp_path / "qs", emu.openai_base_url, 20))
        after = pl.read_parquet(_build(tmp_path / "qs", emu.openai_base_url, 24))
        assert emu.billed == 24  # the 20 answers were replayed from the journal
    kept = after.filter(pl.col("id").is_in(before["id"].implode()))
    assert kept.height == before.height
    assert kept.sort("id").equals(before.sort("id"))
