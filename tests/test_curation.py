"""curate(): stage composition, counts that add up, config validation."""

from __future__ import annotations

import polars as pl
import pytest
from pydantic import ValidationError

from textbookgen.curation import CurationConfig, curate
from textbookgen.curation.config import MinHashConfig, candidate_probability, choose_bands


def test_bands_chosen_for_threshold():
    assert choose_bands(0.8, 128) == (16, 8)
    b, r = choose_bands(0.7, 128)
    assert b * r <= 128 and candidate_probability(0.7, b, r) >= 0.94
    assert MinHashConfig(bands=20, rows=6).band_rows == (20, 6)
    with pytest.raises(ValidationError):
        MinHashConfig(bands=20)
    with pytest.raises(ValidationError):
        MinHashConfig(bands=20, rows=8)


def test_exact_dedup_keeps_best_member():
    df = pl.DataFrame({"id": ["b", "a", "c", "d"],
                       "text": ["Hello  World", "hello world", "HELLO\tworld\n", "other"],
                       "quality_score": [None, 0.1, 0.9, None]})
    cfg = CurationConfig.model_validate({"minhash": {"enabled": False}, "filters": {"enabled": False}})
    out, stats = curate(df, cfg)
    assert out["id"].to_list() == ["c", "d"]
    assert stats["exact_dedup"] == {"in": 4, "kept": 2, "dropped": {"exact_duplicate": 2}}


def test_unknown_keys_are_rejected():
    with pytest.raises(ValidationError):
        CurationConfig.model_validate({"minhash": {"treshold": 0.8}})


def test_steps_compose_in_a_list(tmp_path):
    from textbookgen.curation import ExactDedup, HeuristicFilter, run_pipeline

    words = "the study of plants and animals shows how living things grow and change with the seasons "
    df = pl.DataFrame({"id": ["a", "b", "c"], "text": [words * 8, words * 8, "short text"]})
    out, stats = run_pipeline(df, [ExactDedup(), HeuristicFilter()], tmp_path)
    assert out.height == 0 and stats["exact_dedup"]["dropped"] == {"exact_duplicate": 1}
    assert stats["filters"] == {"in": 2, "kept": 0, "dropped": {"repeated_ngrams": 1, "too_short": 1},
                                "code_docs": 0}
    assert (tmp_path / "filters" / "dropped.parquet").exists()
