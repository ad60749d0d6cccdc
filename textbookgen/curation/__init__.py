"""Curation: exact and MinHash dedup, benchmark decontamination, heuristic filters, fastText quality.

    from textbookgen.curation import CurationConfig, curate
    curated_df, stats = curate(docs_df, CurationConfig(), workdir=Path("build/curation"))
"""

from textbookgen.curation.config import CurationConfig
from textbookgen.curation.pipeline import curate

__all__ = ["CurationConfig", "curate"]
