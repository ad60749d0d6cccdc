"""Benchmark decontamination: 13-gram overlap finds candidates; the item's words found in order confirm.

Benchmarks come from `textbookgen.benchmarks.load_benchmark` (ARC, BoolQ, WinoGrande, PIQA, SIQA,
HellaSwag, OBQA, MMLU, GSM8K, HumanEval, MBPP, ...) or from any jsonl/parquet file or folder, whose
string fields (or the `fields` named) are the item's texts; a multiple-choice item also counts its
question and options together as one text (a copied exercise). Texts are compared after MinHash's
normalisation (lowercase, punctuation dropped, digit runs -> 0), so reformatting does not hide a copy;
option labels ("(a)", "B.") are dropped and a run of numbers is one "0", and numbers do not count
toward the similarity: a table or a worked calculation does not "contain" a number-heavy item. An
item text shorter than n words (but at least `min_item_words`) must appear whole.

The report (`contamination.parquet`) names, for each dropped document, the benchmark items it matched,
the n-gram hits, and the similarity: the share of the item's words (numbers aside) found, in order
(LCS), in the best-aligned doc window (default >= 0.8: a lightly edited copy passes, a shared phrase does not).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from rapidfuzz.distance import LCSseq
from xxhash import xxh3_64_intdigest as _xxh3

from textbookgen.curation.base import CHUNK_ROWS, StageStats, Step, map_rows, progress, require_columns
from textbookgen.curation.config import MAX_NGRAM, BenchmarkSource, DecontaminationConfig
from textbookgen.curation.corpus_io import corpus_files, read_records
from textbookgen.curation.normalize import simplify_text

NUMBER = "0"  # every digit run, after normalisation
# an option label: "(a)", "(12)" anywhere, or "B." / "c)" / "3." opening a line
_LABEL = re.compile(r"\((?:[A-Za-z]|\d{1,2})\)|^[ \t]*(?:[A-Za-z]|\d{1,2})[.)][ \t]", re.MULTILINE)
_MIX = np.random.default_rng(0x5EED).integers(1, 2**63, size=MAX_NGRAM, dtype=np.uint64) | np.uint64(1)
#: One benchmark item as loaded: (benchmark, item id, its texts).
ItemTexts = tuple[str, str, list[str]]


@dataclass(frozen=True)
class BenchText:
    """One text of one benchmark item, normalised to words."""

    benchmark: str
    item_id: str
    words: tuple[str, ...]


def match_words(text: str) -> list[str]:
    """The normalised words a copy is judged by: option labels dropped (a copied exercise has them
    between the options) and each run of numbers as one "0" (so no n-gram is only numbers)."""
    words = simplify_text(_LABEL.sub(" ", text)).split()
    return [w for i, w in enumerate(words) if w != NUMBER or i == 0 or words[i - 1] != NUMBER]


def word_ids(words: list[str] | tuple[str, ...]) -> np.ndarray:
    """Per-word 64-bit hashes (xxh3 of the UTF-8), the same in every process: a pool worker started by
    spawn has its own `hash()` seed and would find none of the index's n-grams."""
    return np.fromiter((_xxh3(w.encode("utf-8", "surrogatepass")) for w in words), dtype=np.uint64, count=len(words))


def gram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """Hash of every n-word window: sum of word hash x position multiplier (uint64 wrap-around)."""
    m = len(ids) - n + 1
    if m <= 0:
        return np.zeros(0, dtype=np.uint64)
    h = np.zeros(m, dtype=np.uint64)
    for k in range(n):
        h += ids[k : k + m] * _MIX[k]
    return h


def load_benchmark_texts(source: BenchmarkSource) -> list[ItemTexts]:
    """(benchmark, item id, texts) for every item of a named benchmark or a generic file/folder."""
    if source.name is not None:
        from textbookgen.benchmarks import load_benchmark

        items = load_benchmark(source.name, source.path)
        out = [(source.name, it.id, [*it.texts(), it.exercise()]) for it in items]
    else:
        out = _file_texts(source)
    if not out:
        raise ValueError(f"benchmark {source.name or source.path}: no items to decontaminate against")
    return out


def _file_texts(source: BenchmarkSource) -> list[ItemTexts]:
    """(file name, item id, texts) for every row of a generic benchmark file/folder."""
    out = []
    for f in corpus_files(Path(source.path)):
        df = read_records(f)
        cols = source.fields or [c for c, t in df.schema.items() if t == pl.String and c != "id"]
        missing = [c for c in cols if c not in df.columns]
        if missing or not cols:
            raise ValueError(f"{f}: no text field(s) {missing or ''} to decontaminate against (fields: {df.columns})")
        name = f.name.split(".")[0]
        ids = df["id"].cast(pl.String).to_list() if "id" in df.columns else [str(i) for i in range(df.height)]
        for item_id, row in zip(ids, df.select(cols).iter_rows(), strict=True):
            out.append((name, item_id, [t for t in row if isinstance(t, str) and t.strip()]))
    return out


class NgramIndex:
    """Sorted n-gram hashes of all benchmark texts -> (text index, offset); short texts matched whole."""

    def __init__(self, texts: list[BenchText], n: int, min_words: int) -> None:
        self.texts, self.n = texts, n
        # all texts' words in one array: window hashes are computed once, then windows that cross a
        # text boundary are dropped (one numpy pass instead of one per text)
        lens = np.fromiter((len(t.words) for t in texts), dtype=np.int64, count=len(texts))
        starts = np.concatenate(([0], np.cumsum(lens)[:-1])).astype(np.int64)
        ids = word_ids([w for t in texts for w in t.words])
        owner_of_pos = np.repeat(np.arange(len(texts), dtype=np.int64), lens)
        g = gram_hashes(ids, n)
        owner = owner_of_pos[: len(g)]
        offset = np.arange(len(g), dtype=np.int64) - starts[owner]
        valid = offset + n <= lens[owner]
        h, owner, offset = g[valid], owner[valid], offset[valid]
        order = np.argsort(h, kind="stable")
        self.hashes, self.owner, self.offset = h[order], owner[order], offset[order]
        self.short: dict[int, dict[int, list[int]]] = {}  # length k < n -> {hash of whole text: texts}
        for k in range(min_words, n):
            sel = np.flatnonzero(lens == k)
            if len(sel):
                table: dict[int, list[int]] = defaultdict(list)
                for t_idx, hk in zip(sel.tolist(), gram_hashes(ids, k)[starts[sel]].tolist(), strict=True):
                    table[hk].append(t_idx)
                self.short[k] = table

    def hits(self, words: list[str]) -> list[tuple[int, int, int]]:
        """(text index, doc word position, text word offset) for each doc window found in the index."""
        ids = word_ids(words)
        out: list[tuple[int, int, int]] = []
        g = gram_hashes(ids, self.n)
        if len(g) and len(self.hashes):
            lo = np.searchsorted(self.hashes, g, side="left")
            hi = np.searchsorted(self.hashes, g, side="right")
            for pos in np.flatnonzero(hi > lo):
                for j in range(lo[pos], hi[pos]):
                    out.append((int(self.owner[j]), int(pos), int(self.offset[j])))
        for k, table in self.short.items():
            for pos, h in enumerate(gram_hashes(ids, k).tolist()):
                for t_idx in table.get(h, ()):
                    out.append((t_idx, pos, 0))
        return out


class Decontaminate(Step):
    """Drop documents that contain a benchmark item (n-gram candidate + in-order word match)."""

    name = "decontamination"

    def __init__(self, config: DecontaminationConfig | None = None, text_column: str = "text",
                 id_column: str = "id", texts: list[ItemTexts] | None = None, workers: int = 0,
                 chunk_size: int = CHUNK_ROWS) -> None:
        """`texts`: the items of `config.benchmarks` already loaded (`load_benchmark_texts` of each, in
        order), so a caller that checked them first does not load them twice; None loads them here.
        `workers`: processes that match documents (0 = one per core; the curation config's
        `minhash.workers`), `chunk_size` documents at a time; each gets the index once, not per chunk."""
        self.config = config or DecontaminationConfig()
        self.text_column, self.id_column = text_column, id_column
        self.workers, self.chunk_size = workers, chunk_size
        if texts is None:
            texts = [t for src in self.config.benchmarks for t in load_benchmark_texts(src)]
        # each distinct text of an item once (an exercise can equal the question)
        self.bench_texts = list(dict.fromkeys(
            BenchText(b, i, tuple(match_words(x))) for b, i, xs in texts for x in xs if x))
        self.items_per_benchmark = Counter(b for b, _, _ in texts)
        self.index = NgramIndex(self.bench_texts, self.config.ngram, self.config.min_item_words)

    def matches(self, text: str) -> list[dict]:
        """The benchmark items `text` contains: one record per item, best similarity first."""
        words = match_words(text)
        by_text: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for t_idx, pos, off in self.index.hits(words):
            by_text[t_idx].append((pos, off))
        best: dict[tuple[str, str], dict] = {}
        for t_idx, hits in by_text.items():
            bt = self.bench_texts[t_idx]
            sim = self._similarity(words, bt.words, hits)
            key = (bt.benchmark, bt.item_id)
            if sim >= self.config.similarity and (key not in best or sim > best[key]["similarity"]):
                best[key] = {"benchmark": bt.benchmark, "item_id": bt.item_id, "similarity": round(sim, 4),
                             "ngram_hits": len(hits), "item_text": " ".join(bt.words)[:300]}
        return sorted(best.values(), key=lambda m: -m["similarity"])

    @staticmethod
    def _similarity(doc: list[str], item: tuple[str, ...], hits: list[tuple[int, int]]) -> float:
        """Share of the item's words found in order (LCS) in the doc window a hit aligns it to, numbers
        left out on both sides (any numbers in the doc would match them).

        One changed word in a 25-word question gives 0.96; a 13-word phrase of it gives 0.52."""
        words = [w for w in item if w != NUMBER]
        if not words:
            return 0.0
        size, slack = len(item), max(3, len(item) // 5)
        best, tried = 0.0, set()
        for pos, off in hits:
            start = max(0, pos - off - slack)
            if start in tried:
                continue
            tried.add(start)
            window = [w for w in doc[start : pos - off + size + slack] if w != NUMBER]
            best = max(best, LCSseq.similarity(words, window) / len(words))
            if best >= 0.999 or len(tried) >= 8:
                break
        return best

    def run(self, df: pl.DataFrame, workdir: Path | None, stats: StageStats) -> pl.DataFrame:
        require_columns(df, [self.text_column, self.id_column], self.name)
        report, dropped_ids = [], set()
        found_per_doc = map_rows(_match_rows, self, [df[self.text_column]], self.workers, self.chunk_size)
        ids = df[self.id_column].cast(pl.String).to_list()
        for doc_id, found in zip(ids, progress(found_per_doc, df.height, "decontaminating"), strict=True):
            if found:
                dropped_ids.add(doc_id)
                stats.dropped[found[0]["benchmark"]] += 1  # reason = benchmark name (the card lists them)
                report += [{"id": doc_id, **m} for m in found]
        stats.extra["benchmark_items"] = dict(self.items_per_benchmark)
        stats.extra["ngram"] = self.config.ngram
        stats.extra["matched_items"] = len({(r["benchmark"], r["item_id"]) for r in report})
        if workdir is not None:
            pl.DataFrame(report, schema={"id": pl.String, "benchmark": pl.String, "item_id": pl.String,
                                         "similarity": pl.Float64, "ngram_hits": pl.Int64,
                                         "item_text": pl.String}).write_parquet(workdir / "contamination.parquet")
        return df.filter(~pl.col(self.id_column).cast(pl.String).is_in(list(dropped_ids)))


def _match_rows(step: Decontaminate, rows: list[tuple[str]]) -> list[list[dict]]:
    """`step.matches` of each (text,) row: the work a pool worker does for one chunk."""
    return [step.matches(text) for text, in rows]
