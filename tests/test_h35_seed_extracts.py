"""The seed-copy check reads a build's seed extracts from a file (`SeedExtracts`), a chunk's ids at a time, instead of
a dict of every extract the documents were seeded with: the same kept rows, stats, report and fingerprint as the dict."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from test_r2c_seed_copy_stream import CHUNK, SEEDS, corpus  # noqa: F401  (the fixture: 70 documents, two files)

from textbookgen.curation import commands, corpus_io
from textbookgen.curation.seed_copy import SeedCopy, SeedExtracts


def _store(tmp_path: Path, seeds: dict[str, str], name: str = "seeds.sqlite") -> SeedExtracts:
    return SeedExtracts.write(tmp_path / name, seeds.items())


def test_the_file_reads_as_the_dict_it_was_written_from(tmp_path):
    """Lookups, iteration (in id order), length, an absent id; an id given twice keeps its first text; `ids` keeps
    only the extracts they name (the documents' own), whichever order they come in and however often."""
    pairs = [("e2", "two"), ("e1", "one"), ("e2", "two again"), ("é", "accented"), ("e3", "three")]
    with SeedExtracts.write(tmp_path / "s.sqlite", pairs, ids=["e2", "é", "e2", "nowhere", "e1"]) as store:
        assert dict(store) == {"e1": "one", "e2": "two", "é": "accented"}
        assert list(store) == sorted(["e1", "e2", "é"]) and len(store) == 3
        assert store.get("e3") is None and "e3" not in store and store["e2"] == "two"
        with pytest.raises(KeyError):
            store["e3"]


def test_its_fingerprint_is_the_dicts_and_follows_every_text(tmp_path):
    """`SeedCopy.fingerprint` of the file equals that of the dict of the same extracts (a killed run keyed by one
    resumes by the other), taken when the file was written, and changes when any one extract's text does."""
    dict_print = SeedCopy(seeds=SEEDS).fingerprint()
    with _store(tmp_path, SEEDS) as store:
        assert SeedCopy(seeds=store).fingerprint() == dict_print
    edited = {**SEEDS, "e3": SEEDS["e3"] + " and one more sentence."}
    with _store(tmp_path, edited, "edited.sqlite") as other:
        assert SeedCopy(seeds=other).fingerprint() == SeedCopy(seeds=edited).fingerprint() != dict_print


def test_the_fingerprint_is_not_taken_again_from_the_extracts(tmp_path, monkeypatch):
    """The fingerprint reads the digest the write stored: no pass over (or sort of) every extract per call."""
    with _store(tmp_path, SEEDS) as store:
        monkeypatch.setattr(SeedExtracts, "__iter__", lambda self: pytest.fail("every extract read again"))
        monkeypatch.setattr(SeedExtracts, "__getitem__", lambda self, key: pytest.fail("an extract read"))
        assert SeedCopy(seeds=store).fingerprint() == SeedCopy(seeds=SEEDS).fingerprint()


def test_a_file_not_written_whole_is_refused_by_name(tmp_path):
    path = tmp_path / "half.sqlite"
    sqlite3.connect(path).execute("CREATE TABLE extracts (id TEXT PRIMARY KEY, text TEXT)").connection.close()
    with pytest.raises(ValueError, match="half.sqlite: not a seed-extract file"):
        SeedExtracts(path)
    with pytest.raises(FileNotFoundError, match="absent.sqlite"):
        SeedExtracts(tmp_path / "absent.sqlite")


def test_a_failed_write_leaves_the_file_before_it(tmp_path):
    """A write whose extracts fail part way (an unreadable prompts file) leaves the file that was there, and no
    temporary file."""
    def failing():
        yield "e0", "a new text"
        raise OSError("prompts.parquet: unreadable row group")

    _store(tmp_path, SEEDS, "s.sqlite").close()
    with pytest.raises(OSError, match="unreadable"):
        SeedExtracts.write(tmp_path / "s.sqlite", failing())
    with SeedExtracts(tmp_path / "s.sqlite") as store:
        assert dict(store) == SEEDS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.sqlite"]


@pytest.mark.parametrize("workers", [1, 2])
def test_streamed_through_the_file_as_through_the_dict(corpus, tmp_path, monkeypatch, workers):  # noqa: F811
    """The streamed check (`run_steps`, 10 chunks), serial and on a pool of 2 (the parent looks each chunk's extracts
    up and sends them with its rows): the same kept rows, stats and seed_copy.parquet through the file as the dict."""
    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", CHUNK)
    out = {}
    with _store(tmp_path, SEEDS) as store:
        for name, seeds in (("dict", SEEDS), ("file", store)):
            step = SeedCopy(seeds=seeds, workers=workers, chunk_size=4)
            stats = commands.run_steps(corpus, tmp_path / f"{name}.parquet", [step], tmp_path / name)
            out[name] = (stats, pl.read_parquet(tmp_path / f"{name}.parquet"),
                         pl.read_parquet(tmp_path / name / "seed_copy" / "seed_copy.parquet"))
    (dict_stats, dict_rows, dict_report), (file_stats, file_rows, file_report) = out["dict"], out["file"]
    assert dict_stats["seed_copy"]["dropped"] and dict_stats["seed_copy"]["seed_not_found"] == 10
    assert file_stats == dict_stats and file_rows.equals(dict_rows) and file_report.equals(dict_report)


def test_a_full_disk_is_named_with_the_file(tmp_path):
    """The write (0.4-0.6 GB in .build at phi-1.5 scale) failing for want of space says which file it was writing,
    not a bare sqlite 'disk I/O error' / 'database or disk is full'."""
    script = (
        "import resource, signal, sys\n"
        "from textbookgen.curation.seed_copy import SeedExtracts\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))\n"
        "SeedExtracts.write(sys.argv[1], ((f'e{i}', 'x' * 2000) for i in range(1000)))\n"
    )
    path = tmp_path / "seed_extracts.sqlite"
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert str(path) in done.stderr.strip().splitlines()[-1], done.stderr[-500:]
    assert list(tmp_path.iterdir()) == []


def test_the_digest_orders_ids_as_sorted_does_beyond_ascii(tmp_path):
    """sqlite's BINARY order on UTF-8 is code-point order: astral, private-use and U+FFFF ids, a NUL inside an id,
    and texts that JSON escapes give the dict's fingerprint."""
    seeds = {"\U00010000": "astral", "\uffff": "last of the BMP", "\ue000": "private use", "a\x00b": "nul",
             "a": "ascii", "é": "accent \u2028 line sep", "z": "quote \" and \\ and \x00 nul"}
    with SeedExtracts.write(tmp_path / "s.sqlite", seeds.items()) as store:
        assert list(store) == sorted(seeds) and dict(store) == seeds
        assert SeedCopy(seeds=store).fingerprint() == SeedCopy(seeds=seeds).fingerprint()
