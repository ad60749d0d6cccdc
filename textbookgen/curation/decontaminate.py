"""Benchmark decontamination: word n-gram overlap finds candidates; the item's words found in order confirm.

Benchmarks come from `textbookgen.benchmarks.load_benchmark` (ARC, BoolQ, WinoGrande, PIQA, SIQA,
HellaSwag, OBQA, MMLU, GSM8K, HumanEval, MBPP, ...) or from any jsonl/parquet file or folder, whose
string fields (or the `fields` named; nested strings too) are the items' texts and whose files, named by
their path under the folder ("a/test"), are the benchmarks; a multiple-choice item (a generic row: all its
strings) also counts its question and options together as one text (a copied exercise). Texts are compared after MinHash's normalisation (lowercase,
punctuation dropped, digit runs -> 0), so reformatting does not hide a copy; option labels ("(a)",
"B.") are dropped and a run of numbers is one "0", and numbers do not count toward the similarity: a
table or a worked calculation does not "contain" a number-heavy item.

Candidates: an item text of L >= n words (13) is indexed by its k-grams, k = L // 4 kept between
MIN_GRAM (5) and n, so that any 3 edited words leave a copy one k-gram intact from 20 words on (2 from
15, 1 from 13), where one 13-gram let 2 well-placed edits hide a 26-word question; a shorter text (at
least `min_item_words`) must appear whole. Words common in a benchmark (in over 5% of its items, e.g.
HumanEval's `def check(candidate): assert candidate`) are boilerplate: an n-gram of only those, letters
and numbers is not indexed, and a match must find the item's rarer words too (3 of them, or all it
has), so a test harness of one's own does not match a HumanEval test.

The report (`contamination.parquet`) names, for each dropped document (its id and its row in the input,
as ids need not be unique), the benchmark items it matched, the n-gram hits, and the similarity: the
share of the item's words (numbers aside) found, in order (LCS), in the best-aligned doc window
(default >= 0.8: a lightly edited copy passes, a shared phrase does not), and `quote_words`, the most of
the item's words found in a row. With `min_quote_words` set, such a run alone is enough (GPT-3's 13-gram
rule): a quoted half question goes too, and so does a document quoting a source an item quotes.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import polars as pl
from rapidfuzz.distance import LCSseq
from xxhash import xxh3_64_intdigest as _xxh3

from textbookgen.curation.base import (
    CHUNK_ROWS,
    RowStep,
    StageStats,
    Verdict,
    input_rows,
    judged_chunks,
    require_columns,
)
from textbookgen.curation.config import MAX_NGRAM, MIN_ITEM_WORDS, BenchmarkSource, DecontaminationConfig
from textbookgen.curation.corpus_io import corpus_files, id_prefix, read_records
from textbookgen.curation.normalize import simplify_text

NUMBER = "0"  # every digit run, after normalisation
EDITS_SURVIVED = 3  # edited words a copy may have and still share an indexed n-gram (`gram_size`)
MIN_GRAM = 5  # the shortest n-gram indexed of a text of n words or more
COMMON_SHARE, COMMON_MIN_ITEMS = 0.05, 10  # a word in more of a benchmark's items is its boilerplate
MIN_RARE = 3  # rare words of an item a match must find (all, if it has fewer)
# an option label: "(a)", "(12)" anywhere, or "B." / "c)" / "3." opening a line
_LABEL = re.compile(r"\((?:[A-Za-z]|\d{1,2})\)|^[ \t]*(?:[A-Za-z]|\d{1,2})[.)][ \t]", re.MULTILINE)
_MIX = np.random.default_rng(0x5EED).integers(1, 2**63, size=MAX_NGRAM, dtype=np.uint64) | np.uint64(1)
REPORT_SCHEMA = {"id": pl.String, "row": pl.Int64, "benchmark": pl.String, "item_id": pl.String,
                 "similarity": pl.Float64, "quote_words": pl.Int64, "ngram_hits": pl.Int64, "item_text": pl.String}
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


def load_benchmark_texts(source: BenchmarkSource, min_words: int = MIN_ITEM_WORDS) -> list[ItemTexts]:
    """(benchmark, item id, texts) for every item of a named benchmark or a generic file/folder; `min_words`
    is `min_item_words`, the fewest words an item text needs to be matched at all."""
    if source.name is not None:
        from textbookgen.benchmarks import load_benchmark

        items = load_benchmark(source.name, source.path)
        out = [(source.name, it.id, [*it.texts(), it.exercise()]) for it in items]
    else:
        out = _file_texts(source, min_words)
    if not out:
        raise ValueError(f"benchmark {source.name or source.path}: no items to decontaminate against")
    return out


def _file_texts(source: BenchmarkSource, min_words: int) -> list[ItemTexts]:
    """(file path under the folder, item id, texts) for every row of a generic benchmark file/folder: the
    strings of its fields, also those nested in objects and lists (AI2's ARC keeps its question under
    `question.stem` and its options in `question.choices[].text`; the Hub's MMLU, a list of `choices`), and
    all of them as one (`_item_texts`). A file none of whose texts has `min_words` words could match no
    document: it raises, naming the file."""
    out = []
    for f in corpus_files(Path(source.path)):
        df = read_records(f)
        cols = source.fields or [c for c, t in df.schema.items() if _holds_text(t) and c != "id"]
        missing = [c for c in cols if c not in df.columns]
        if not df.width:
            raise ValueError(f"{f}: no benchmark items (the file is empty)")
        if missing or not cols:
            shown = f" {missing}" if missing else ""
            raise ValueError(f"{f}: no text field(s){shown} to decontaminate against (fields: {df.columns})")
        name = id_prefix(f, Path(source.path))  # "a/test": a folder's same-named files are distinct sets
        ids = df["id"].cast(pl.String).to_list() if "id" in df.columns else [str(i) for i in range(df.height)]
        items = [(name, item_id, _item_texts(row)) for item_id, row in zip(ids, df.select(cols).iter_rows(), strict=True)]
        _check_matchable(f, items, cols, min_words)
        out += items
    return out


def _item_texts(row: tuple) -> list[str]:
    """A generic item's texts: each string of its row, and all of them in order as one more (one-character
    option labels and answer keys aside), as a named set's `exercise()`: a short question copied with its
    options is a copy of the item, where the question alone is too short to match."""
    texts = [t for t in _strings(row) if t.strip()]
    together = " ".join(t for t in texts if len(t.strip()) > 1)
    return [*texts, together] if len(texts) > 1 and together not in texts else texts


def _check_matchable(file: Path, items: list[ItemTexts], fields: list[str], min_words: int) -> None:
    """Raise ValueError unless some item text of `file` has `min_words` words, so that a document can match."""
    longest = max((len(match_words(t)) for _, _, texts in items for t in texts), default=0)
    if items and longest < min_words:
        raise ValueError(f"{file}: none of its {len(items):,} items has a text of {min_words} words or more "
                         f"(the longest in fields {fields} has {longest}; decontamination.min_item_words), so "
                         "no document could match it: give a known set's name (-b NAME=PATH), or the benchmark's "
                         "`fields` holding its questions")


def _holds_text(dtype: pl.DataType) -> bool:
    """Whether a column of this type holds strings, at its top level or nested in structs and lists."""
    if isinstance(dtype, pl.List | pl.Array):
        return _holds_text(dtype.inner)  # type: ignore[arg-type]
    if isinstance(dtype, pl.Struct):
        return any(_holds_text(f.dtype) for f in dtype.fields)  # type: ignore[arg-type]
    return dtype == pl.String


def _strings(value: object) -> Iterator[str]:
    """Every string in a row's value, nested ones included, in field order."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


def gram_size(length: int, n: int) -> int:
    """Words per indexed n-gram of a text of `length` words: the whole text below n; else a quarter of
    it, kept between MIN_GRAM and n (see the module doc)."""
    return length if length < n else min(n, max(MIN_GRAM, length // (EDITS_SURVIVED + 1)))


def rare_vocabulary(texts: list[BenchText]) -> dict[str, set[str]]:
    """Per benchmark, its words that show what was copied: not its boilerplate (in more than COMMON_SHARE
    of its items, and COMMON_MIN_ITEMS: question cues, `assert candidate`), not one letter (a variable,
    an option) and no number ("0", "0x")."""
    items: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for t in texts:
        items[t.benchmark][t.item_id].update(t.words)
    vocab = {}
    for bench, per_item in items.items():
        counts: Counter = Counter()
        for words in per_item.values():
            counts.update(words)
        limit = max(COMMON_SHARE * len(per_item), COMMON_MIN_ITEMS)
        vocab[bench] = {w for w, c in counts.items() if c <= limit and len(w) > 1 and NUMBER not in w}
    return vocab


class NgramIndex:
    """Sorted hashes of the n-grams of all benchmark texts -> (text index, offset), n per text by
    `gram_size` (a short text is one n-gram, matched whole); n-grams of boilerplate only are left out.
    A bitmap of the hashes' top bits answers most doc n-grams' "not here" before the binary search."""

    def __init__(self, texts: list[BenchText], n: int, min_words: int) -> None:
        self.texts, self.n = texts, n
        vocab = rare_vocabulary(texts)
        #: per text, its rare words in order: a match must find some (`Decontaminate._similarity`)
        self.rare = [tuple(filter(vocab[t.benchmark].__contains__, t.words)) for t in texts]
        sizes = np.fromiter((gram_size(len(t.words), n) if len(t.words) >= min_words else 0
                             for t in texts), dtype=np.int64, count=len(texts))
        self.gram = sizes.tolist()  #: per text, the words of each of its indexed n-grams (0: not indexed)
        self.sizes = np.unique(sizes[sizes > 0]).tolist()
        empty = (np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int32))
        parts = [self._grams(np.flatnonzero(sizes == k), k, vocab) for k in self.sizes]
        h, owner, offset = (np.concatenate(column) for column in zip(empty, *parts, strict=True))
        order = np.argsort(h, kind="stable")
        self.hashes, self.owner, self.offset = h[order], owner[order], offset[order]
        bits = max(16, (16 * len(h)).bit_length())  # at most 1 bit in 16 set
        self.shift = np.uint64(64 - bits)
        self.bitmap = np.zeros(1 << (bits - 3), dtype=np.uint8)
        np.bitwise_or.at(self.bitmap, *self._bit(self.hashes))

    def _grams(self, sel: np.ndarray, k: int, vocab: dict[str, set[str]]
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(hash, text index, offset) of the k-grams of texts `sel` that hold a rare word. All texts'
        words in one array: window hashes are computed once, then windows that cross a text boundary
        are dropped (one numpy pass instead of one per text)."""
        group = [self.texts[i] for i in sel.tolist()]
        lens = np.fromiter((len(t.words) for t in group), dtype=np.int64, count=len(group))
        starts = np.concatenate(([0], np.cumsum(lens)[:-1])).astype(np.int64)
        g = gram_hashes(word_ids(list(chain.from_iterable(t.words for t in group))), k)
        owner = np.repeat(np.arange(len(group), dtype=np.int64), lens)[: len(g)]
        offset = np.arange(len(g), dtype=np.int64) - starts[owner]
        is_rare = np.fromiter(chain.from_iterable(map(vocab[t.benchmark].__contains__, t.words) for t in group),
                              dtype=np.int64, count=int(lens.sum()))
        rare_run = np.concatenate(([0], np.cumsum(is_rare)))
        valid = (offset + k <= lens[owner]) & (rare_run[k:] - rare_run[:-k] > 0)
        return g[valid], sel[owner[valid]].astype(np.int32), offset[valid].astype(np.int32)

    def _bit(self, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(byte, bit mask) of each hash's place in the bitmap."""
        top = h >> self.shift
        return top >> np.uint64(3), np.left_shift(1, top & np.uint64(7)).astype(np.uint8)

    def hits(self, words: list[str]) -> list[tuple[int, int, int]]:
        """(text index, doc word position, text word offset) for each doc window found in the index."""
        ids = word_ids(words)
        grams = [gram_hashes(ids, k) for k in self.sizes]
        g = np.concatenate([np.zeros(0, dtype=np.uint64), *grams])
        pos = np.concatenate([np.zeros(0, dtype=np.int64), *(np.arange(len(x)) for x in grams)])
        byte, bit = self._bit(g)
        maybe = np.flatnonzero(self.bitmap[byte] & bit)
        lo = np.searchsorted(self.hashes, g[maybe], side="left")
        hi = np.searchsorted(self.hashes, g[maybe], side="right")
        return [(int(self.owner[j]), int(pos[maybe[i]]), int(self.offset[j]))
                for i in np.flatnonzero(hi > lo).tolist() for j in range(lo[i], hi[i])]


class Decontaminate(RowStep):
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
            texts = [t for src in self.config.benchmarks
                     for t in load_benchmark_texts(src, self.config.min_item_words)]
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
            sim = self._similarity(words, bt.words, self.index.rare[t_idx], hits)
            quote = self._longest_quote(words, self.index.gram[t_idx], self.index.rare[t_idx], hits)
            key = (bt.benchmark, bt.item_id)
            min_quote = self.config.min_quote_words
            copied = sim >= self.config.similarity or (min_quote is not None and quote >= min_quote)
            if copied and (key not in best or sim > best[key]["similarity"]):
                best[key] = {"benchmark": bt.benchmark, "item_id": bt.item_id, "similarity": round(sim, 4),
                             "quote_words": quote, "ngram_hits": len(hits), "item_text": " ".join(bt.words)[:300]}
        return sorted(best.values(), key=lambda m: -m["similarity"])

    @staticmethod
    def _similarity(doc: list[str], item: tuple[str, ...], rare: tuple[str, ...], hits: list[tuple[int, int]]
                    ) -> float:
        """Share of the item's words found in order (LCS) in the doc window a hit aligns it to, numbers
        left out on both sides (any numbers in the doc would match them); 0 where the window lacks the
        item's rare words (MIN_RARE of them in order, or all): its boilerplate alone is no copy.

        One changed word in a 25-word question gives 0.96; a 13-word phrase of it gives 0.52."""
        words = [w for w in item if w != NUMBER]
        if not words:
            return 0.0
        size, slack = len(item), max(3, len(item) // 5)
        need = min(MIN_RARE, len(rare))
        best = 0.0
        # the 8 alignments most hits agree on: a copy's hits share one, stray phrases scatter
        for start, _ in Counter(pos - off for pos, off in hits).most_common(8):
            window = [w for w in doc[max(0, start - slack) : start + size + slack] if w != NUMBER]
            if LCSseq.similarity(rare, window) >= need:
                best = max(best, LCSseq.similarity(words, window) / len(words))
            if best >= 0.999:
                break
        return best

    @staticmethod
    def _longest_quote(doc: list[str], k: int, rare: tuple[str, ...], hits: list[tuple[int, int]]) -> int:
        """The most doc words in a row that are the item's in a row: consecutive n-gram hits on one alignment
        (n = k words each), among runs that hold the item's rare words (MIN_RARE of them, or all)."""
        rare_set = set(rare)
        need = min(MIN_RARE, len(rare_set))
        by_alignment: dict[int, set[int]] = defaultdict(set)
        for pos, off in hits:
            by_alignment[pos - off].add(pos)
        best = 0
        for positions in by_alignment.values():
            ordered = sorted(positions)
            start = ordered[0]
            for prev, nxt in zip(ordered, [*ordered[1:], -1], strict=True):
                if nxt == prev + 1:
                    continue
                length = prev - start + k
                if length > best and len(rare_set.intersection(doc[start : start + length])) >= need:
                    best = length
                start = nxt
        return best

    def judge(self, chunks: Iterable[pl.DataFrame], total: int | None = None) -> Iterator[Verdict]:
        judged = judged_chunks(_match_rows, self, chunks, self._columns, self.workers, self.chunk_size,
                               "decontaminating", total)
        for chunk, found_per_doc in judged:
            keep, report, dropped = np.ones(chunk.height, dtype=bool), [], Counter()
            ids, rows = chunk[self.id_column].cast(pl.String).to_list(), input_rows(chunk).to_list()
            # by row, not id: ids need not be unique (shards numbered from 0 each), and a clean row must not go
            # with a contaminated one that shares its id
            for i, (doc_id, row, found) in enumerate(zip(ids, rows, found_per_doc, strict=True)):
                if found:
                    keep[i] = False
                    dropped[found[0]["benchmark"]] += 1  # reason = benchmark name (the card lists them)
                    report += [{"id": doc_id, "row": row, **m} for m in found]
            yield Verdict(chunk.filter(pl.Series(keep)), pl.DataFrame(report, schema=REPORT_SCHEMA), dropped)

    def finish(self, reports: list[pl.DataFrame], workdir: Path | None, stats: StageStats) -> None:
        """Writes `workdir/contamination.parquet`: each match, with the document's id and input row, the item
        and the scores."""
        report = pl.concat(reports) if reports else pl.DataFrame(schema=REPORT_SCHEMA)
        stats.extra["benchmark_items"] = dict(self.items_per_benchmark)
        stats.extra["ngram"] = self.config.ngram
        stats.extra["similarity"] = self.config.similarity  # share of an item's words a copy must hold
        if self.config.min_quote_words is not None:
            stats.extra["min_quote_words"] = self.config.min_quote_words
        stats.extra["matched_items"] = report.select("benchmark", "item_id").n_unique() if report.height else 0
        if workdir is not None:
            report.write_parquet(workdir / "contamination.parquet")

    def fingerprint(self) -> str:
        """The settings and a digest of every benchmark text (a benchmark file changed in place changes it)."""
        texts = hashlib.sha256(repr(self.bench_texts).encode()).hexdigest()
        return f"{self.name} {self.config.model_dump_json()} {texts}"

    def _columns(self, chunk: pl.DataFrame) -> list[pl.Series]:
        require_columns(chunk, [self.text_column, self.id_column], self.name)
        return [chunk[self.text_column]]


def _match_rows(step: Decontaminate, rows: list[tuple[str]]) -> list[list[dict]]:
    """`step.matches` of each (text,) row: the work a pool worker does for one chunk."""
    return [step.matches(text) for text, in rows]
