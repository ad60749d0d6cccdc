"""The seed-copy check streamed (`run_steps` with `SeedCopy`, a RowStep): the kept rows, ids, stats and
seed_copy.parquet of the corpus read whole, without reading it whole, and a killed run resumes from the chunks it
finished."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import polars as pl
import pytest
from test_h23_score_stream import read_whole

from textbookgen.curation import commands, corpus_io, seed_copy
from textbookgen.curation.config import SeedCopyConfig
from textbookgen.curation.seed_copy import SeedCopy
from textbookgen.testing.responder import prose

ROOT = Path(__file__).resolve().parents[1]
EXTRACTS = [json.loads(line)["text"] for line in (ROOT / "recipes" / "data" / "seed_extracts.jsonl").open()]
SEEDS = {f"e{i}": t for i, t in enumerate(EXTRACTS)}
CHUNK = 7  # rows per streamed chunk: the corpus below is 10 chunks, cut mid-file
REPORT = "seed_copy/seed_copy.parquet"


def _doc(kind: str, i: int, rng: random.Random) -> tuple[str, str | None]:
    """(text, seed id) of a document of `kind`: genuine, a third of its extract pasted in, its extract lightly
    edited, unseeded but quoting an extract, or naming an extract nobody passed."""
    ext = EXTRACTS[i % len(EXTRACTS)]
    own = prose(f"subject {i}", 300, rng)
    head, _, tail = own.partition("\n\n")
    if kind == "part":
        sents = re.split(r"(?<=[.!?])\s+", ext)
        return f"{head}\n\n{' '.join(sents[: max(2, len(sents) // 3)])}\n\n{tail}", f"e{i % len(EXTRACTS)}"
    if kind == "edit":
        return " ".join("also" if k % 12 == 11 else w for k, w in enumerate(ext.split())), f"e{i % len(EXTRACTS)}"
    if kind == "unseeded":
        return f"{head}\n\n{ext}\n\n{tail}", None
    return own, "unknown" if kind == "lost" else f"e{i % len(EXTRACTS)}"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A folder of 70 documents in two files: a.parquet (ids) and b.jsonl (ids made up), each with its documents'
    `seed_extract_id` and `seed_text`; copies of every kind in both files and in the last chunk."""
    rng = random.Random(7)
    kinds = ["genuine", "part", "genuine", "edit", "unseeded", "genuine", "lost"]
    docs = [_doc(kinds[i % len(kinds)], i, rng) for i in range(70)]
    rows = [{"text": t, "seed_extract_id": s, "seed_text": SEEDS.get(s or "")} for t, s in docs]
    folder = tmp_path_factory.mktemp("r2c") / "corpus"
    folder.mkdir()
    pl.DataFrame([{"id": f"a{i}", **r} for i, r in enumerate(rows[:33])]).write_parquet(folder / "a.parquet")
    (folder / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[33:]))
    return folder


@pytest.mark.parametrize("seeds", [SEEDS, "seed_text"])
@pytest.mark.parametrize("action", ["drop", "flag"])
def test_the_streamed_seed_copy_is_the_whole_read(corpus, tmp_path, monkeypatch, seeds, action):
    """The same kept rows (columns, ids, order), stats and seed_copy.parquet as the step on the corpus read
    whole, with extracts by id or in a column, dropping or flagging."""
    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", CHUNK)
    step = SeedCopy(SeedCopyConfig(action=action), seeds=seeds, workers=1, chunk_size=3)
    expected = read_whole(corpus, [step], tmp_path / "whole.parquet")
    stats = commands.run_steps(corpus, tmp_path / "out.parquet", [step], None)
    assert stats == expected
    assert pl.read_parquet(tmp_path / "out.parquet").equals(pl.read_parquet(tmp_path / "whole.parquet"))
    report = pl.read_parquet(tmp_path / f"out.parquet.work/{REPORT}")
    assert report.equals(pl.read_parquet(tmp_path / f"whole.parquet.work/{REPORT}"))
    # not a comparison of runs that did nothing: copies of both kinds, in both files, up to the last chunk
    st = expected["seed_copy"]
    caught = report.filter(pl.col("reason").is_not_null())
    assert st["checked"] == report.height == 50 and caught.height == 20 and caught["row"].max() >= 63
    assert {i[:1] for i in caught["id"]} == {"a", "b"}  # b.jsonl's made-up ids: b.jsonl:<row>
    assert set(caught["reason"]) == {"seed_containment", "seed_verbatim_run"}
    assert st.get("flagged", sum(st["dropped"].values())) == 20
    assert st.get("seed_not_found", 10) == 10 and st["containment_max"] > 0.5


def test_seed_copy_reads_the_corpus_a_chunk_at_a_time(corpus, tmp_path, monkeypatch):
    """Bounded memory: the corpus is never read whole, and the step gets at most a chunk's rows at once."""
    def whole_read(*args, **kwargs):
        raise AssertionError("the corpus was read whole (read_corpus)")

    handed: list[int] = []

    def noting(df: pl.DataFrame, columns: list[str], where: str, check=seed_copy.require_columns) -> None:
        handed.append(df.height)
        check(df, columns, where)

    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", CHUNK)
    monkeypatch.setattr(commands, "read_corpus", whole_read)
    monkeypatch.setattr(seed_copy, "require_columns", noting)
    stats = commands.run_steps(corpus, tmp_path / "out.jsonl", [SeedCopy(seeds=SEEDS, workers=1)], tmp_path / "w")
    assert max(handed) == CHUNK and sum(handed) == stats["seed_copy"]["in"] == 70 and len(handed) >= 10


def _killed(corpus: Path, out: Path, work: Path, step: SeedCopy, monkeypatch, at: int) -> None:
    """A run of `step` killed (Ctrl-C) as the step takes its `at`-th chunk."""
    handed: list[int] = []

    def killing(df: pl.DataFrame, columns: list[str], where: str, check=seed_copy.require_columns) -> None:
        handed.append(df.height)
        if len(handed) == at:
            raise KeyboardInterrupt
        check(df, columns, where)

    with monkeypatch.context() as m:
        m.setattr(seed_copy, "require_columns", killing)
        with pytest.raises(KeyboardInterrupt):
            commands.run_steps(corpus, out, [step], work)
    assert not out.exists()


def _judging(monkeypatch) -> list[int]:
    """The heights of the chunks the step is handed from now on."""
    handed: list[int] = []

    def noting(df: pl.DataFrame, columns: list[str], where: str, check=seed_copy.require_columns) -> None:
        handed.append(df.height)
        check(df, columns, where)

    monkeypatch.setattr(seed_copy, "require_columns", noting)
    return handed


def test_a_killed_seed_copy_resumes_from_the_chunks_it_finished(corpus, tmp_path, monkeypatch):
    """Killed at the sixth chunk, the rerun judges only the chunks not finished and writes what a run never
    killed writes: output, stats and report."""
    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", CHUNK)
    step = SeedCopy(seeds=SEEDS, workers=1)
    fresh = commands.run_steps(corpus, tmp_path / "fresh.parquet", [step], tmp_path / "fresh")
    out, work = tmp_path / "out.parquet", tmp_path / "work"
    _killed(corpus, out, work, step, monkeypatch, at=6)
    stored = sorted((work / "finished_chunks").glob("0*.json"))
    skipped = sum(json.loads(p.read_text())["parts"][0]["in"] for p in stored)  # rows the step had judged
    assert len(stored) == 5 and skipped == 33  # a.parquet's 33 rows: chunks of 7, 7, 7, 7, 5
    handed = _judging(monkeypatch)
    assert commands.run_steps(corpus, out, [step], work) == fresh
    assert sum(handed) == 70 - skipped
    assert pl.read_parquet(out).equals(pl.read_parquet(tmp_path / "fresh.parquet"))
    assert pl.read_parquet(work / REPORT).equals(pl.read_parquet(tmp_path / "fresh" / REPORT))
    assert not (work / "finished_chunks").exists()


def test_chunks_stored_for_other_extracts_are_judged_again(corpus, tmp_path, monkeypatch):
    """An extract's text changed between the killed run and its rerun: no stored verdict is used (they were
    made against the old text), and the result is a fresh run's with the new extracts."""
    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", CHUNK)
    out, work = tmp_path / "out.parquet", tmp_path / "work"
    _killed(corpus, out, work, SeedCopy(seeds=SEEDS, workers=1), monkeypatch, at=6)
    changed = SeedCopy(seeds={**SEEDS, "e1": "nothing any document copied"}, workers=1)
    fresh = commands.run_steps(corpus, tmp_path / "fresh.parquet", [changed], tmp_path / "fresh")
    handed = _judging(monkeypatch)
    stats = commands.run_steps(corpus, out, [changed], work)
    assert sum(handed) == 70 and stats == fresh
    assert stats["seed_copy"]["dropped"] != commands.run_steps(
        corpus, tmp_path / "old.parquet", [SeedCopy(seeds=SEEDS, workers=1)], tmp_path / "old")["seed_copy"]["dropped"]


class CountingSeeds(Mapping[str, str]):
    """Extracts by id that count how many of their texts are looked at (dict(), items(), [key], get)."""

    def __init__(self, data: dict[str, str]) -> None:
        self.data, self.looked = data, 0

    def __getitem__(self, key: str) -> str:
        self.looked += 1
        return self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


def test_the_extracts_are_not_all_looked_at_for_each_chunk(corpus, tmp_path, monkeypatch):
    """Each chunk turned the whole id -> text mapping into a polars column (1 s and ~800 MB a chunk at 200k
    extracts); now a chunk looks up its rows' ids, and the fingerprint reads each extract once."""
    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", CHUNK)
    seeds = CountingSeeds({**SEEDS, **{f"unused{i}": f"text {i}" for i in range(3000)}})
    commands.run_steps(corpus, tmp_path / "out.parquet", [SeedCopy(seeds=seeds, workers=1)], None)
    assert seeds.looked <= len(seeds) + 70, seeds.looked
