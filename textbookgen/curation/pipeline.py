"""`curate()`: the recipe's curation stages, in order, with every stage's counts for the manifest."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from textbookgen.curation.base import ROW, Step
from textbookgen.curation.config import CurationConfig

if TYPE_CHECKING:
    from textbookgen.curation.decontaminate import ItemTexts

log = logging.getLogger(__name__)


def build_steps(config: CurationConfig, benchmark_texts: list[ItemTexts] | None = None,
                seed_texts: Mapping[str, str] | str | None = None) -> list[Step]:
    """The enabled stages as a list of steps (datatrove-style composition). `benchmark_texts`: the
    decontamination benchmarks already loaded (see `Decontaminate`); None loads them here. `seed_texts`:
    the documents' web seed extracts, by id or as a column name (see `SeedCopy`); None: no seed-copy step."""
    from textbookgen.curation.classifier import QualityCut, QualityScore
    from textbookgen.curation.decontaminate import Decontaminate
    from textbookgen.curation.exact import ExactDedup
    from textbookgen.curation.filters import HeuristicFilter
    from textbookgen.curation.near_dedup import MinHashDedup
    from textbookgen.curation.seed_copy import SeedCopy
    from textbookgen.curation.truncated import DropTruncated

    t, i = config.text_column, config.id_column
    workers = config.minhash.workers  # one worker-count setting for every step that runs on a pool
    steps: list[Step] = []
    if config.drop_truncated:  # first: a cut-off copy must not be the one a duplicate cluster keeps
        steps.append(DropTruncated())
    if config.exact.enabled:
        steps.append(ExactDedup(t, i))
    if config.filters.enabled:
        steps.append(HeuristicFilter(config.filters, t, i, workers=workers))
    if config.decontamination.enabled and config.decontamination.benchmarks:
        steps.append(Decontaminate(config.decontamination, t, i, texts=benchmark_texts, workers=workers))
    if config.seed_copy.enabled and seed_texts is not None:
        steps.append(SeedCopy(config.seed_copy, t, i, seeds=seed_texts, workers=workers))
    if config.classifier.enabled:  # score before MinHash, so each cluster keeps its best member
        steps.append(QualityScore(config.classifier, t))
    if config.minhash.enabled:  # curate() always gets the whole corpus: nothing to dedup against besides it
        steps.append(MinHashDedup(config.minhash, t, i, incremental=False))
    if config.classifier.enabled:
        steps.append(QualityCut(config.classifier, i))
    return steps


def run_pipeline(df: pl.DataFrame, steps: list[Step], workdir: Path | None = None
                 ) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Run steps in order; each gets its own `workdir/<step name>` folder. Returns rows and stats. Every
    report names a document by its row in `df` (`input_rows`), whichever steps dropped rows before."""
    stats: dict[str, Any] = {}
    df = df.with_row_index(ROW)
    for step in steps:
        df, st = step(df, workdir / step.name if workdir is not None else None)
        if ROW not in df.columns:  # a step of one's own that selected its columns: later reports would be wrong
            raise ValueError(f"{step.name}: returned its rows without the column {ROW!r} that numbers the input's "
                             "rows for the reports; return rows of the frame it was given (df.filter(...)) and "
                             "keep every column")
        stats[step.name] = st.as_dict()
    return df.drop(ROW), stats


def curate(docs_df: pl.DataFrame, config: CurationConfig | None = None, workdir: Path | str | None = None,
           benchmark_texts: list[ItemTexts] | None = None, seed_texts: Mapping[str, str] | None = None
           ) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Run every enabled stage on `docs_df`; returns the kept rows (same columns, original order) and
    stats: {stage: {"in": n, "kept": n, "dropped": {reason: n}, ...}}. Stages that store state
    (MinHash signatures, decontamination reports, clusters) write under `workdir`. `benchmark_texts`:
    the decontamination benchmarks, where the caller loaded them already (None: loaded here).
    `seed_texts`: the web extracts the documents' `seed_extract_id` name, by id; None: a `seed_text`
    column if `docs_df` has one, else the seed-copy check is skipped (logged)."""
    from textbookgen.curation.seed_copy import SEED_TEXT_COLUMN

    config = config or CurationConfig()
    if seed_texts is None and SEED_TEXT_COLUMN in docs_df.columns:
        seed_texts = SEED_TEXT_COLUMN
    elif seed_texts is None and config.seed_copy.enabled:
        log.info("seed_copy: skipped: no seed extracts given and no %r column", SEED_TEXT_COLUMN)
    steps = build_steps(config, benchmark_texts, seed_texts)
    return run_pipeline(docs_df, steps, Path(workdir) if workdir is not None else None)
