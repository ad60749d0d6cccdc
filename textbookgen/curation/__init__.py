"""Curation: exact and MinHash dedup, benchmark decontamination, heuristic filters, fastText quality.

    from textbookgen.curation import CurationConfig, curate
    curated_df, stats = curate(docs_df, CurationConfig(), workdir=Path("build/curation"))

Or compose the steps yourself (each: DataFrame in, kept DataFrame + counts out):

    from textbookgen.curation import ExactDedup, HeuristicFilter, MinHashDedup, run_pipeline
    df, stats = run_pipeline(df, [ExactDedup(), HeuristicFilter(), MinHashDedup()], Path("work"))
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from textbookgen.curation.config import CurationConfig
from textbookgen.curation.pipeline import curate, run_pipeline

_STEPS = {  # imported on first use: keeps `import textbookgen.curation` light
    "ExactDedup": "exact", "HeuristicFilter": "filters", "Decontaminate": "decontaminate",
    "MinHashDedup": "near_dedup", "QualityScore": "classifier", "QualityCut": "classifier",
    "EducationalJudge": "judge", "SeedCopy": "seed_copy",
}

__all__ = ["CurationConfig", "curate", "run_pipeline", *_STEPS]


def __getattr__(name: str) -> Any:
    if name in _STEPS:
        return getattr(import_module(f"textbookgen.curation.{_STEPS[name]}"), name)
    raise AttributeError(f"module 'textbookgen.curation' has no attribute {name!r}")
