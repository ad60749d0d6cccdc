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


def test_curate_documents_table_end_to_end(shared_data, tmp_path):
    """A generation-shaped table through every default stage: each planted problem is dropped by the
    stage meant for it, and the stats are plain JSON for the build manifest."""
    import gzip
    import json

    wiki = [json.loads(x)["eng_Latn"] for x in gzip.open(shared_data / "wikipedia_en_1k" / "wikipedia.jsonl.gz", "rt")]
    wiki = [w for w in wiki if 200 <= len(w.split()) <= 1500][:30]
    gsm = [json.loads(x)["question"] for x in gzip.open(shared_data / "gsm8k" / "test.jsonl.gz", "rt")][:50]
    code = "def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n"
    texts = wiki + [
        wiki[0].replace("\n", "\n\n"),                     # exact duplicate after normalisation
        wiki[1] + " See also the references.",             # near duplicate
        "As an AI language model, I can't write that. " + wiki[2][:800],
        wiki[3] + "\n\n" + gsm[7],                          # contaminated
        code,                                              # code: kept despite prose rules
    ]
    n = len(texts)
    df = pl.DataFrame({
        "id": [f"k{i:03d}" for i in range(n)], "text": texts,
        "topic_path": ["Science > Biology"] * n, "format": ["textbook"] * (n - 1) + ["code"],
        "quality_score": [None] * n, "provenance": ["{}"] * n,
    }, schema_overrides={"quality_score": pl.Float64})
    cfg = CurationConfig.model_validate({"decontamination": {"benchmarks": [
        {"name": "gsm8k", "path": str(shared_data / "gsm8k" / "test.jsonl.gz")}]}})
    out, stats = curate(df, cfg, tmp_path)
    assert list(stats) == ["truncated", "exact_dedup", "filters", "decontamination", "minhash_dedup"]
    assert stats["exact_dedup"]["dropped"] == {"exact_duplicate": 1}
    assert stats["filters"]["dropped"] == {"boilerplate_phrase": 1} and stats["filters"]["code_docs"] == 1
    assert stats["decontamination"]["dropped"] == {"gsm8k": 1}
    assert stats["minhash_dedup"]["dropped"] == {"near_duplicate": 1}
    assert out.height == n - 4 and out.columns == df.columns and "k034" in out["id"].to_list()
    json.dumps(stats)  # the manifest is JSON
    assert all(s["in"] - s["kept"] == sum(s["dropped"].values()) for s in stats.values())


def test_decontamination_ngram_is_capped():
    from textbookgen.curation.config import DecontaminationConfig
    from textbookgen.curation.decontaminate import Decontaminate

    with pytest.raises(ValidationError, match="less than or equal to 64"):
        DecontaminationConfig(ngram=65)
    item = " ".join(f"word{chr(97 + i % 26)}{chr(97 + i // 26)}" for i in range(80))
    step = Decontaminate(DecontaminationConfig(ngram=64), texts=[("bench", "q0", [item])])
    assert step.matches("Intro. " + item + " Outro.")[0]["item_id"] == "q0"


def test_rerun_in_same_workdir_matches_fresh_one(shared_data, tmp_path):
    """A doc that an earlier stage now removes was kept by MinHash in the previous run: it must not
    take its near-duplicate down with it (build.py reuses .build/curation after a config change)."""
    import gzip
    import json

    wiki = [json.loads(x)["eng_Latn"] for x in gzip.open(shared_data / "wikipedia_en_1k" / "wikipedia.jsonl.gz", "rt")]
    x, *others = [w for w in wiki if len(w.split()) > 300][:3]
    y = " ".join(x.split()[:-10])  # x minus its last 10 words: a near-duplicate, shorter
    df = pl.DataFrame({"id": ["a_x", "b_y", "c", "d"], "text": [x, y, *others]})
    work = tmp_path / "reused"
    first, _ = curate(df, CurationConfig.model_validate({"filters": {"enabled": False}}), work)
    assert sorted(first["id"]) == ["a_x", "c", "d"]
    tightened = CurationConfig.model_validate({"filters": {"enabled": True, "min_words": 1,
                                                           "max_words": len(y.split())}})
    reused, stats = curate(df, tightened, work)
    fresh, _ = curate(df, tightened, tmp_path / "fresh")
    assert "b_y" in reused["id"] and reused["id"].to_list() == fresh["id"].to_list()
    assert stats["minhash_dedup"]["dropped"] == {"near_duplicate": 0}


def test_curate_drops_answers_cut_at_max_tokens_first():
    def text(topic: str) -> str:
        return f"A complete section about {topic} and the tides of the sea. " * 3

    df = pl.DataFrame({
        "id": ["a", "b", "c"],
        "text": [text("tides"), text("tides"), text("rivers")],
        "finish_reason": ["length", "stop", "stop"],
    })
    cfg = CurationConfig(minhash={"enabled": False}, classifier={"enabled": False}, filters={"enabled": False})
    kept, stats = curate(df, cfg)
    assert kept["id"].to_list() == ["b", "c"]  # the cut-off copy is dropped before exact dedup picks one
    assert list(stats)[0] == "truncated" and stats["truncated"]["dropped"] == {"cut_at_max_tokens": 1}
    kept, stats = curate(df, cfg.model_copy(update={"drop_truncated": False}))
    assert "truncated" not in stats and kept.height == 2
