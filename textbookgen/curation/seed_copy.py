"""Seed-copy check: documents that copy their own web seed extract instead of writing new text.

Web extracts seed prompts for diversity; a document that pastes its extract back re-introduces web
text, with its licence and quality. MinHash misses this: a copied paragraph inside a longer document
leaves the pair's Jaccard far below any dedup threshold. Two scores per document, on the words
MinHash and decontamination see (`normalize.simplify_bytes`: lowercase, punctuation dropped, digit
runs -> 0):

- containment: the share of the document's word n-grams found in its extract (a document that is
  mostly the extract, lightly edited);
- longest verbatim run: the most consecutive words the document shares with the extract (a copied
  passage inside an otherwise new document).

A document over either threshold is dropped (or only counted, `action: flag`). Documents without a
seed extract pass unchecked. Per-document scores go to `seed_copy.parquet` in the step's workdir.
The extracts come as a column, a dict, or a `SeedExtracts` file (a build's: held in memory they would grow with
the corpus).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import polars as pl

from textbookgen.curation.base import (
    CHUNK_ROWS,
    RowStep,
    StageStats,
    Verdict,
    input_rows,
    judged_chunks,
    require_columns,
)
from textbookgen.curation.config import SeedCopyConfig
from textbookgen.curation.normalize import words_bytes

SEED_ID_COLUMN = "seed_extract_id"  # what the build records for each document (build.DOC_SCHEMA)
SEED_TEXT_COLUMN = "seed_text"  # a corpus may carry each document's extract itself (no id needed)
REPORT_SCHEMA = {"id": pl.String, "row": pl.Int64, "seed_extract_id": pl.String, "containment": pl.Float64,
                 "run_words": pl.Int64, "reason": pl.String}


def ngrams(text: str, n: int) -> list[bytes]:
    """The simplified text's word n-grams, in order (none when it has fewer than n words)."""
    words = words_bytes(text)
    return [b" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]


def copy_scores(text: str, seed: str, n: int) -> tuple[float, int]:
    """(containment, longest verbatim run in words) of `text` in `seed`.

    Containment counts the text's n-gram positions whose n-gram occurs in the seed. The run is the
    longest chain of consecutive text n-grams found at consecutive seed positions: a common word
    substring of chain + n - 1 words (exact for runs of n words or more; shorter ones count 0)."""
    doc = ngrams(text, n)
    where: dict[bytes, list[int]] = defaultdict(list)
    for j, g in enumerate(ngrams(seed, n)):
        where[g].append(j)
    if not doc or not where:
        return 0.0, 0
    hits = best = 0
    chain: dict[int, int] = {}  # seed position -> length of the chain ending there at the last text position
    for g in doc:
        at = where.get(g)
        if at is None:
            chain = {}
            continue
        hits += 1
        chain = {j: chain.get(j - 1, 0) + 1 for j in at}
        best = max(best, *chain.values())
    return hits / len(doc), best + n - 1 if best else 0


class SeedCopy(RowStep):
    """Drop (or flag) documents whose text copies their own seed extract (containment or verbatim run).

    Each document is judged against its own extract alone, so the corpus can stream a chunk at a time
    (`stream.stream_out_of_core`): what is held whole is one report row per checked document (no text), from
    which `finish` takes the score distribution, and the extracts where they come as a dict (a `SeedExtracts`
    file is read a chunk's extracts at a time)."""

    name = "seed_copy"

    def __init__(self, config: SeedCopyConfig | None = None, text_column: str = "text", id_column: str = "id",
                 seeds: Mapping[str, str] | str = SEED_TEXT_COLUMN, workers: int = 0,
                 chunk_size: int = CHUNK_ROWS) -> None:
        """`seeds`: where each document's extract is. A mapping of extract id -> text, for documents that
        name theirs in `seed_extract_id` (the build passes the extracts its prompts used, as `SeedExtracts`), or
        the name of a column that holds each document's extract. Documents with none (null) pass unchecked.
        `workers`: processes that score documents (0 = one per core; the curation config's
        `minhash.workers`), `chunk_size` documents at a time."""
        self.config = config or SeedCopyConfig()
        self.text_column, self.id_column = text_column, id_column
        self.seeds, self.workers, self.chunk_size = seeds, workers, chunk_size

    def seed_texts(self, df: pl.DataFrame) -> pl.Series:
        """Each row's extract text; null where the document has no seed (or names one not passed)."""
        if isinstance(self.seeds, str):
            require_columns(df, [self.seeds], self.name)
            return df[self.seeds].cast(pl.String)
        if SEED_ID_COLUMN not in df.columns:
            return pl.Series(SEED_TEXT_COLUMN, [None] * df.height, dtype=pl.String)
        get = self.seeds.get  # each row's id looked up: the chunk's rows, not every extract, per chunk
        ids = df[SEED_ID_COLUMN].cast(pl.String).to_list()
        return pl.Series(SEED_TEXT_COLUMN, [None if i is None else get(i) for i in ids], dtype=pl.String)

    def judge(self, chunks: Iterable[pl.DataFrame], total: int | None = None) -> Iterator[Verdict]:
        judged = judged_chunks(_score_rows, self.config.ngram, chunks, self._columns, self.workers,
                               self.chunk_size, "seed-copy check", total)
        for chunk, scores in judged:
            yield self._verdict(chunk, scores)

    def _columns(self, chunk: pl.DataFrame) -> list[pl.Series]:
        require_columns(chunk, [self.text_column, self.id_column], self.name)
        seeds = self.seed_texts(chunk)  # a document without one is not scored: its text is not sent to the workers
        texts = chunk.select(pl.when(seeds.is_null()).then(None).otherwise(pl.col(self.text_column))).to_series()
        return [texts, seeds]

    def _verdict(self, chunk: pl.DataFrame, scores: list[tuple[float, int] | None]) -> Verdict:
        """A chunk's kept rows, drops by reason and report rows (every checked document's scores), from the
        scores of its rows (None: no extract to check against)."""
        cfg = self.config
        checked = [(i, s) for i, s in enumerate(scores) if s is not None]
        rows = np.array([i for i, _ in checked], dtype=np.int64)
        contain = np.array([c for _, (c, _) in checked], dtype=np.float64)
        run = np.array([r for _, (_, r) in checked], dtype=np.int64)
        reasons = np.where(contain > cfg.max_containment, "seed_containment",
                           np.where(run > cfg.max_run_words, "seed_verbatim_run", ""))
        copied = reasons != ""
        extra: dict[str, int] = {}
        if not isinstance(self.seeds, str) and SEED_ID_COLUMN in chunk.columns:
            missing = int(chunk[SEED_ID_COLUMN].is_not_null().sum()) - len(rows)
            if missing:  # documents name an extract the caller did not pass: they pass unchecked
                extra["seed_not_found"] = missing
        dropped = Counter(reasons[copied].tolist()) if cfg.action == "drop" else Counter()
        seed_ids = chunk[SEED_ID_COLUMN].cast(pl.String)[rows] if SEED_ID_COLUMN in chunk.columns else None
        report = pl.DataFrame({"id": chunk[self.id_column].cast(pl.String)[rows], "row": input_rows(chunk)[rows],
                               "seed_extract_id": seed_ids, "containment": contain, "run_words": run,
                               "reason": [r or None for r in reasons.tolist()]}, schema=REPORT_SCHEMA)
        if cfg.action == "flag" or not copied.any():
            return Verdict(chunk, report, dropped, extra)
        keep = np.ones(chunk.height, dtype=bool)
        keep[rows[copied]] = False
        return Verdict(chunk.filter(pl.Series(keep)), report, dropped, extra)

    def finish(self, reports: list[pl.DataFrame], workdir: Path | None, stats: StageStats) -> None:
        """The settings, how many documents were checked (and flagged) and the scores' distribution, from every
        chunk's report rows; writes them to `workdir/seed_copy.parquet`."""
        cfg = self.config
        report = pl.concat(reports) if reports else pl.DataFrame(schema=REPORT_SCHEMA)
        not_found = stats.extra.pop("seed_not_found", 0)  # summed over the chunks: placed after the settings
        stats.extra.update(ngram=cfg.ngram, max_containment=cfg.max_containment,
                           max_run_words=cfg.max_run_words, action=cfg.action)
        if not_found:
            stats.extra["seed_not_found"] = not_found
        stats.extra.update(checked=report.height,
                           **_distribution(report["containment"].to_numpy(), report["run_words"].to_numpy()))
        if cfg.action == "flag":
            stats.extra["flagged"] = int(report["reason"].is_not_null().sum())
        if workdir is not None:
            report.write_parquet(workdir / "seed_copy.parquet")

    def fingerprint(self) -> str:
        """The settings, the columns read, and the extracts (a column's name, or a digest of id -> text)."""
        if isinstance(self.seeds, str):
            seeds = f"column {self.seeds}"
        elif isinstance(self.seeds, SeedExtracts):
            seeds = self.seeds.digest  # taken when the file was written, the same as of a dict of its extracts
        else:
            digest = hashlib.sha256()  # an extract at a time: no copy of them all
            for key in sorted(self.seeds):
                digest.update(_digest_line(key, self.seeds[key]))
            seeds = digest.hexdigest()
        return f"{self.name} {self.config.model_dump_json()} {self.text_column} {self.id_column} {seeds}"


class SeedExtracts(Mapping[str, str]):
    """Seed extracts by id in a sqlite file (`write`), read an id at a time: a build's extracts (up to one of
    1-3k characters per document) held as a dict would grow with the corpus. `digest`, taken once when the file
    is written, is what `SeedCopy.fingerprint` takes of a dict of the same extracts. Read-only once written."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no seed-extract file (SeedExtracts.write makes one)")
        # read-only: one connection serves any thread
        self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
        try:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'digest'").fetchone()
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise ValueError(f"{self.path}: not a seed-extract file written by SeedExtracts.write ({e})") from None
        if row is None:
            self._db.close()
            raise ValueError(f"{self.path}: a seed-extract file without its digest (an unfinished write?)")
        self.digest: str = row[0]

    @classmethod
    def write(cls, path: str | Path, extracts: Iterable[tuple[str, str]], ids: Iterable[str] | None = None
              ) -> SeedExtracts:
        """(id, text) pairs written to `path` (the first text of an id kept), and opened. `ids`: where given, only
        their extracts are kept (a build's documents' ids: extracts of prompts that gave no document are left
        out). Streamed through the file, never held; written to a temporary file renamed over `path`, so a
        killed write leaves the file before it."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.unlink(missing_ok=True)
        db = sqlite3.connect(tmp)
        try:
            db.execute("PRAGMA journal_mode = OFF")  # a temporary file: a failed write is removed, not rolled back
            db.execute("PRAGMA synchronous = OFF")
            db.execute("PRAGMA temp_store = MEMORY")  # the `used` ids: not in a temp folder that may be small
            # a rowid table: a 1-3k character text fits its page (WITHOUT ROWID spills it, the file ~2x the text)
            db.execute("CREATE TABLE extracts (id TEXT PRIMARY KEY, text TEXT NOT NULL)")
            db.executemany("INSERT OR IGNORE INTO extracts VALUES (?, ?)", extracts)
            if ids is not None:
                db.execute("CREATE TEMP TABLE used (id TEXT PRIMARY KEY) WITHOUT ROWID")
                db.executemany("INSERT OR IGNORE INTO used VALUES (?)", ((i,) for i in ids))
                db.execute("DELETE FROM extracts WHERE id NOT IN (SELECT id FROM used)")
            digest = hashlib.sha256()  # in id order as `sorted` gives it: sqlite compares text by its UTF-8 bytes
            for key, text in db.execute("SELECT id, text FROM extracts ORDER BY id"):
                digest.update(_digest_line(key, text))
            db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            db.execute("INSERT INTO meta VALUES ('digest', ?)", (digest.hexdigest(),))
            db.commit()
        except BaseException as e:
            db.close()
            tmp.unlink(missing_ok=True)
            if isinstance(e, sqlite3.Error):
                raise OSError(f"{path}: writing the seed extracts failed ({e}); is {path.parent} full?") from e
            raise
        db.close()
        os.replace(tmp, path)
        return cls(path)

    def __getitem__(self, key: str) -> str:
        row = self._db.execute("SELECT text FROM extracts WHERE id = ?", (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        return row[0]

    def __iter__(self) -> Iterator[str]:
        return (key for (key,) in self._db.execute("SELECT id FROM extracts ORDER BY id"))

    def __len__(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM extracts").fetchone()[0])

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SeedExtracts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _digest_line(key: str, text: str) -> bytes:
    """One extract's share of the extracts' digest (a dict's, or a `SeedExtracts` file's: the same lines)."""
    return json.dumps([key, text]).encode() + b"\n"


def _distribution(contain: np.ndarray, run: np.ndarray) -> dict[str, float | int]:
    """Median, 99th percentile and maximum of both scores, as flat numbers (the card shows scalars)."""
    if not len(contain):
        return {}
    c50, c99, cmax = np.percentile(contain, [50, 99, 100])
    r50, r99, rmax = np.percentile(run, [50, 99, 100])
    return {"containment_p50": round(float(c50), 4), "containment_p99": round(float(c99), 4),
            "containment_max": round(float(cmax), 4), "run_words_p50": int(r50), "run_words_p99": int(r99),
            "run_words_max": int(rmax)}


def _score_rows(n: int, rows: list[tuple[str, str | None]]) -> list[tuple[float, int] | None]:
    """`copy_scores` of each (text, seed) row, None where it has no seed: the work a pool worker does for one
    chunk."""
    return [None if seed is None else copy_scores(text, seed, n) for text, seed in rows]
