"""Curation settings: one pydantic model per stage, gathered in `CurationConfig` (the recipe's `curation:`).

Defaults follow the field notes (datatrove/text-dedup/DCLM practice): exact dedup on, MinHash with 128
permutations of word 5-gram shingles (bit-compatible with datasketch 2.x `affine32`), LSH bands chosen so
that a pair at the threshold is a candidate with probability >= `min_candidate_prob`, an exact-Jaccard
check of candidates, 13-gram decontamination, Gopher-style heuristic filters on prose only, a check
that documents do not copy their own web seed extract, and an optional fastText quality classifier.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ExactDedupConfig(_Strict):
    """Drop documents whose normalised text (NFKC, case-folded, whitespace-collapsed) was seen before."""

    enabled: bool = True


def candidate_probability(jaccard: float, bands: int, rows: int) -> float:
    """P(a pair of Jaccard `jaccard` shares at least one LSH band) = 1 - (1 - j^r)^b."""
    return 1.0 - (1.0 - jaccard**rows) ** bands


def choose_bands(threshold: float, num_perm: int, min_candidate_prob: float = 0.94) -> tuple[int, int]:
    """The most selective (bands, rows) over `num_perm` that still catch a pair AT the threshold.

    Larger rows mean fewer spurious candidates below the threshold; we take the largest r whose curve
    still gives P(candidate | J=threshold) >= min_candidate_prob (0.8 -> 16x8, 0.7 -> 25x5).
    """
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if candidate_probability(threshold, bands, rows) >= min_candidate_prob:
            best = (bands, rows)
    return best


class MinHashConfig(_Strict):
    """MinHash + LSH near-duplicate removal; `threshold` is an exact word-shingle Jaccard (verified)."""

    enabled: bool = True
    threshold: float = Field(0.8, gt=0.0, le=1.0)
    num_perm: int = Field(128, ge=8)
    ngram: int = Field(5, ge=1)
    seed: int = 1
    hash_name: Literal["xxh32", "sha1"] = "xxh32"  # shingle hash; "sha1" is datasketch's default hashfunc
    bands: int | None = Field(None, ge=1)
    rows: int | None = Field(None, ge=1)
    min_candidate_prob: float = Field(0.94, gt=0.0, lt=1.0)
    verify: bool = True  # exact Jaccard of each candidate edge, so the threshold means what it says
    shard_size: int = Field(20_000, ge=1)
    workers: int = Field(0, ge=0)  # 0 = one process per CPU core

    @model_validator(mode="after")
    def _bands_fit(self) -> MinHashConfig:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("minhash: give both `bands` and `rows`, or neither (chosen from `threshold`)")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"minhash: bands*rows = {self.bands * self.rows} > num_perm = {self.num_perm}")
        return self

    @property
    def band_rows(self) -> tuple[int, int]:
        """(bands, rows) in use: the explicit ones, or those chosen for `threshold`."""
        if self.bands is not None and self.rows is not None:
            return self.bands, self.rows
        return choose_bands(self.threshold, self.num_perm, self.min_candidate_prob)

    @property
    def lsh_threshold(self) -> float:
        """The S-curve midpoint (1/b)^(1/r) of the banding in use (for reports)."""
        b, r = self.band_rows
        return math.pow(1.0 / b, 1.0 / r)


class BenchmarkSource(_Strict):
    """One benchmark to decontaminate against: a named set (textbookgen.benchmarks) or any jsonl/parquet.

    `name` is a loader in `textbookgen.benchmarks.BENCHMARKS` (e.g. "arc_easy") or None for a generic
    file/folder whose string fields (or `fields`) are the texts.
    """

    path: str
    name: str | None = None
    fields: list[str] | None = None


MAX_NGRAM = 64  # decontamination n-gram hashes have one position multiplier per word of the window
MIN_ITEM_WORDS = 8  # the fewest words of a benchmark item text that decontamination matches (whole)


class DecontaminationConfig(_Strict):
    """Drop documents that contain benchmark items: n-gram overlap finds candidates, fuzzy match confirms."""

    enabled: bool = True
    benchmarks: list[BenchmarkSource] = Field(default_factory=list)
    ngram: int = Field(13, ge=3, le=MAX_NGRAM)
    min_item_words: int = Field(MIN_ITEM_WORDS, ge=1)  # item texts shorter than `ngram` but at least this long match whole
    similarity: float = Field(0.8, gt=0.0, le=1.0)  # share of the item's words found in order in the doc
    # also drop a document holding this many of an item's (normalised) words in a row, however little of the
    # item that is (GPT-3's 13-gram rule: a quoted half question goes). Off by default, as a quoted source
    # that an item quotes too (MMLU's history passages, a famous line) would go as well.
    min_quote_words: int | None = Field(None, ge=5)

    @model_validator(mode="before")
    @classmethod
    def _paths_as_sources(cls, data: object) -> object:
        if isinstance(data, dict) and isinstance(data.get("benchmarks"), list):
            data = dict(data)
            data["benchmarks"] = [{"path": b} if isinstance(b, (str, Path)) else b for b in data["benchmarks"]]
        return data


class FilterConfig(_Strict):
    """Gopher/FineWeb-style heuristics; `prose_*` rules see only prose (code blocks and code docs exempt)."""

    enabled: bool = True
    min_words: int = Field(50, ge=0)
    max_words: int = Field(100_000, ge=1)
    max_duplicate_line_frac: float = 0.3
    max_duplicate_line_char_frac: float = 0.2
    max_duplicate_para_frac: float = 0.3
    max_top_ngram_char_frac: dict[int, float] = Field(default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16})
    max_dup_ngram_char_frac: dict[int, float] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    )
    prose_min_mean_word_len: float = 3.0
    prose_max_mean_word_len: float = 10.0
    prose_max_symbol_word_ratio: float = 0.1
    # share of prose words with no letter. Gopher keeps a document only if 80% of its words have one (0.2 here;
    # datatrove's `max_non_alpha_words_ratio=0.8` is that 80%, misnamed). 0.2 drops 0.4% of LLM-written textbook
    # sections (exercise lists of inline math); 0.4 drops none of 1,956 SciPhi sections, and 4 of 1,000
    # Wikipedia articles (species lists), 1 of 1,000 C4 pages. 0.8, the old default, never fired.
    prose_max_non_alpha_word_frac: float = Field(0.4, ge=0.0, le=1.0)
    prose_max_bullet_line_frac: float = 0.9
    prose_max_ellipsis_line_frac: float = 0.3
    prose_min_stop_words: int = 2
    boilerplate_phrases: list[str] = Field(
        default_factory=lambda: [
            "as an ai language model",
            "as an ai model",
            "i'm sorry, but i can't",
            "i am sorry, but i cannot",
            "i cannot fulfill",
            "i can't assist with",
            "i'm unable to provide",
            "as a large language model",
            "my knowledge cutoff",
            "lorem ipsum",
        ]
    )
    code_formats: list[str] = Field(default_factory=lambda: ["code"])  # `format` values that are code
    code_min_lines: int = 2
    code_max_duplicate_line_frac: float = 0.5

    @field_validator("max_words")
    @classmethod
    def _word_range(cls, v: int, info: ValidationInfo) -> int:
        low = info.data.get("min_words")
        if low is not None and v < low:
            raise ValueError(f"must be >= min_words ({low}), got {v}")
        return v


class ClassifierConfig(_Strict):
    """fastText quality classifier: score every doc (P(positive label) -> `quality_score`, which also picks
    each near-dup cluster's survivor), then keep scores >= `threshold`, or the top `keep_top_percent` %;
    with neither set the cut is 0.5."""

    enabled: bool = False
    model_path: str | None = None
    positive_label: str | None = None  # default: the one in the model's .json sidecar, else "hq"
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    keep_top_percent: float | None = Field(None, gt=0.0, le=100.0)  # keep the top X % by score
    batch_size: int = Field(4096, ge=1)

    @model_validator(mode="after")
    def _one_cut(self) -> ClassifierConfig:
        if self.threshold is not None and self.keep_top_percent is not None:
            raise ValueError("classifier: give `threshold` or `keep_top_percent`, not both")
        if self.enabled and not self.model_path:
            raise ValueError("classifier: `model_path` is required when the classifier is enabled")
        return self


class SeedCopyConfig(_Strict):
    """Documents that copy their own web seed extract: the share of the document's word n-grams found in
    the extract (`max_containment`) and the longest verbatim run of words (`max_run_words`); over either,
    the document is dropped, or with `action: flag` only counted (and listed in the step's report)."""

    enabled: bool = True
    ngram: int = Field(5, ge=1, le=MAX_NGRAM)  # MinHash's shingle size (measured: bench/RESULTS.md)
    max_containment: float = Field(0.5, ge=0.0, le=1.0)
    max_run_words: int = Field(15, ge=1)
    action: Literal["drop", "flag"] = "drop"

    @model_validator(mode="after")
    def _run_spans_an_ngram(self) -> SeedCopyConfig:
        if self.max_run_words < self.ngram:
            raise ValueError(f"seed_copy: max_run_words ({self.max_run_words}) must be >= ngram "
                             f"({self.ngram}): runs shorter than one n-gram are not measured")
        return self


class CurationConfig(_Strict):
    """All curation stages, run in this order by `curate()`: truncated, exact, filters, decontamination, seed
    copy, classifier (scores first, so near-dup clusters keep their best member), minhash, classifier cut.

    `drop_truncated`: drop documents the model stopped at max_tokens (`finish_reason` "length") before any
    other stage (`curate()`, `textbookgen build`, `textbookgen filter`): they end mid-sentence or mid-solution,
    and a model trained on them learns to stop that way. On by default, as Curator treats a `length` finish as
    a failed answer; `false` keeps them (the card counts those it keeps)."""

    drop_truncated: bool = True
    exact: ExactDedupConfig = Field(default_factory=ExactDedupConfig)
    minhash: MinHashConfig = Field(default_factory=MinHashConfig)
    decontamination: DecontaminationConfig = Field(default_factory=DecontaminationConfig)
    filters: FilterConfig = Field(default_factory=FilterConfig)
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    seed_copy: SeedCopyConfig = Field(default_factory=SeedCopyConfig)
    text_column: str = "text"
    id_column: str = "id"

    def with_paths_from(self, folder: Path) -> CurationConfig:
        """A copy whose relative local paths (benchmark files, the classifier model) are read against `folder`,
        that of the file naming them (a recipe, a --config file), as a build reads a recipe's."""
        def resolve(p: str) -> str:
            local = Path(p).expanduser()
            return str((local if local.is_absolute() else folder / local).resolve())

        cfg = self.model_copy(deep=True)
        for src in cfg.decontamination.benchmarks:
            if not src.path.startswith("hf://"):
                src.path = resolve(src.path)
        if cfg.classifier.model_path:
            cfg.classifier.model_path = resolve(cfg.classifier.model_path)
        return cfg
