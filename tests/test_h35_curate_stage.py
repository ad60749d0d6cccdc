"""A recipe build's curate stage gives the seed-copy check its extracts as a file (`SeedExtracts`), never a dict of
every extract the documents were seeded with (GBs at phi-1.5 scale), with the dict's results."""

from __future__ import annotations

import json

import polars as pl
import pytest
from test_h28_build_curate import _build, _reports

from textbookgen.build import Build
from textbookgen.curation import groups, seed_copy
from textbookgen.curation.seed_copy import SeedCopy, SeedExtracts


class _HeldDict(dict):
    """The extracts as the curate stage held them before: a dict of every one (here, usable in a `with`)."""

    def __enter__(self) -> _HeldDict:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _every_extract(build: Build, *args: object) -> _HeldDict:
    """The documents' extracts read whole from prompts.parquet into a dict."""
    ids = set(pl.read_parquet(build.out / "documents.parquet")["seed_extract_id"].drop_nulls())
    prompts = pl.read_parquet(build.out / "prompts.parquet").filter(pl.col("seed_extract_id").is_in(ids))
    return _HeldDict((p["seed_extract_id"], json.loads(p["provenance"])["variables"]["web_extract"])
                     for p in prompts.iter_rows(named=True))


def test_the_curate_stage_reads_the_extracts_from_a_file_with_the_dicts_results(tmp_path, monkeypatch):
    """A recipe build's seed-copy check gets the extracts as a file (never a dict of them all) and curates as it did
    with the dict: curated.parquet byte for byte, the manifest's counts and every report (seed_copy.parquet too); the
    file is gone once the stage ends."""
    given: list[type] = []
    init = SeedCopy.__init__

    def spy(self, *args, **kwargs):
        given.append(type(kwargs.get("seeds")))
        init(self, *args, **kwargs)

    monkeypatch.setattr(seed_copy.SeedCopy, "__init__", spy)
    filed = _build(tmp_path / "file")
    assert given and all(t.__name__ == "SeedExtracts" for t in given), given  # not a dict
    assert not (tmp_path / "file" / ".build" / "seed_extracts.sqlite").exists()

    monkeypatch.setattr(Build, "open_seed_extracts", _every_extract)
    held = _build(tmp_path / "dict")
    assert given[-1] is _HeldDict
    assert held["curation"]["seed_copy"]["dropped"] and filed["curation"] == held["curation"]
    assert (tmp_path / "file" / "curated.parquet").read_bytes() == (tmp_path / "dict" / "curated.parquet").read_bytes()
    reports = _reports(tmp_path / "dict")
    assert "seed_copy/seed_copy.parquet" in reports and set(_reports(tmp_path / "file")) == set(reports)
    for name, report in _reports(tmp_path / "file").items():
        assert report.equals(reports[name]), name


def test_the_extracts_file_is_removed_when_the_curate_stage_is_cut_short(tmp_path, monkeypatch):
    """Ctrl-C (or any error) in the curation: the stage's copy of the extracts (GBs at phi-1.5 scale) is not left
    in .build, as it is after a finished stage."""
    given: list[object] = []

    def interrupted(*args, **kwargs):
        given.append(args[5])
        raise KeyboardInterrupt

    monkeypatch.setattr(groups, "curate_out_of_core", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _build(tmp_path / "out")
    assert given and isinstance(given[0], SeedExtracts)
    left = sorted(p.name for p in (tmp_path / "out" / ".build").glob("*seed_extracts*"))
    assert left == [], left
