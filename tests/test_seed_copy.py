"""Seed-copy check: documents that copy their own web seed extract are dropped (or flagged); documents
that only use it for inspiration, and documents without a seed, pass. Calibrated on public data."""

from __future__ import annotations

import gzip
import json
import random
import re
from pathlib import Path

import polars as pl
import pytest
from pydantic import ValidationError

from textbookgen.curation import CurationConfig, curate
from textbookgen.curation.config import SeedCopyConfig
from textbookgen.curation.seed_copy import SeedCopy, copy_scores
from textbookgen.testing.responder import prose

ROOT = Path(__file__).resolve().parents[1]
EXTRACTS = [json.loads(line)["text"] for line in (ROOT / "recipes" / "data" / "seed_extracts.jsonl").open()]


def genuine(subject: str, seed: int) -> str:
    """A textbook-like document of ~250 words that shares no passage with any extract."""
    return prose(subject, 350, random.Random(seed))


def embed(doc: str, passage: str) -> str:
    """`passage` pasted in after the document's first paragraph."""
    head, _, tail = doc.partition("\n\n")
    return f"{head}\n\n{passage}\n\n{tail}"


def test_scores_are_containment_and_the_longest_verbatim_run():
    ext = EXTRACTS[0]
    n_ext = len(re.findall(r"\w+", ext))
    doc = embed(genuine("bread", 1), ext)
    share, run = copy_scores(doc, ext, 5)
    assert run == n_ext and 0.2 < share < 0.6
    assert copy_scores(ext, ext, 5) == (1.0, n_ext)
    # case, punctuation and digits do not hide a copy (MinHash's normalisation)
    assert copy_scores(ext.upper().replace(",", " ;"), ext, 5) == (1.0, n_ext)
    # two passages from different places of the extract, side by side, are two runs, not one
    words = ext.split()
    spliced = " ".join(words[30:40] + words[0:8])
    assert copy_scores(spliced, ext, 5)[1] == 10
    assert copy_scores(genuine("bread", 2), ext, 5) == (0.0, 0)
    assert copy_scores("too short", ext, 5) == (0.0, 0)


def corpus() -> tuple[pl.DataFrame, dict[str, str]]:
    """Seeded documents: genuine ones, planted copies (a third to all of the extract, verbatim or
    lightly edited), and unseeded ones that quote an extract (nothing to check them against)."""
    seeds = {f"e{i}": t for i, t in enumerate(EXTRACTS)}
    rows = []
    for i, ext in enumerate(EXTRACTS[:10]):
        rows.append((f"genuine{i}", genuine(f"subject {i}", i), f"e{i}"))
        sents = re.split(r"(?<=[.!?])\s+", ext)
        third = " ".join(sents[: max(2, len(sents) // 3)])
        rows.append((f"part{i}", embed(genuine(f"subject {i}", 100 + i), third), f"e{i}"))
        rows.append((f"unseeded{i}", embed(genuine(f"subject {i}", 200 + i), ext), None))
    # the extract with every 12th word changed: short runs, but most of its 5-grams
    edited = " ".join("also" if k % 12 == 11 else w for k, w in enumerate(EXTRACTS[11].split()))
    rows.append(("light_edit", edited, "e11"))
    df = pl.DataFrame(rows, schema=["id", "text", "seed_extract_id"], orient="row")
    return df, seeds


def test_planted_copies_are_dropped_genuine_and_unseeded_documents_kept(tmp_path):
    df, seeds = corpus()
    out, stats = SeedCopy(seeds=seeds)(df, tmp_path)
    kept = set(out["id"].to_list())
    assert kept == {f"genuine{i}" for i in range(10)} | {f"unseeded{i}" for i in range(10)}
    assert stats.as_dict()["dropped"] == {"seed_verbatim_run": 10, "seed_containment": 1}
    assert stats.extra["checked"] == 21 and 0.5 < stats.extra["containment_max"] < 1.0  # the light edit
    report = pl.read_parquet(tmp_path / "seed_copy.parquet")
    light = report.filter(pl.col("id") == "light_edit").row(0, named=True)
    assert light["run_words"] <= 15 and light["reason"] == "seed_containment"
    assert report.height == 21 and report.filter(pl.col("reason").is_null())["run_words"].max() < 5
    assert report.filter(pl.col("id") == "part0")["seed_extract_id"].to_list() == ["e0"]


def test_flag_keeps_every_document_and_counts_the_copies():
    df, seeds = corpus()
    out, stats = SeedCopy(SeedCopyConfig(action="flag"), seeds=seeds)(df)
    assert out.equals(df) and stats.extra["flagged"] == 11 and not stats.dropped


def test_documents_whose_extract_is_unknown_pass_and_are_counted():
    df, seeds = corpus()
    out, stats = SeedCopy(seeds={"e0": seeds["e0"]})(df)
    assert out.height == df.height - 1 and stats.extra["checked"] == 2 and stats.extra["seed_not_found"] == 19


def test_curate_reads_a_seed_text_column_and_skips_without_seeds():
    df, seeds = corpus()
    with_text = df.with_columns(seed_text=pl.col("seed_extract_id").replace_strict(seeds, default=None))
    cfg = CurationConfig.model_validate({"minhash": {"enabled": False}, "filters": {"enabled": False}})
    out, stats = curate(with_text, cfg)
    assert stats["seed_copy"]["dropped"] == {"seed_containment": 1, "seed_verbatim_run": 10}
    assert out.height == df.height - 11
    _, by_id = curate(df, cfg, seed_texts=seeds)
    assert by_id["seed_copy"] == stats["seed_copy"]
    out, stats = curate(df, cfg)  # nothing to compare with: no step, nothing dropped
    assert "seed_copy" not in stats and out.height == df.height
    off = CurationConfig.model_validate({**cfg.model_dump(), "seed_copy": {"enabled": False}})
    assert "seed_copy" not in curate(with_text, off)[1]


def test_workers_give_the_serial_result():
    df, seeds = corpus()
    serial = SeedCopy(seeds=seeds, workers=1)(df)
    pooled = SeedCopy(seeds=seeds, workers=2, chunk_size=4)(df)
    assert pooled[0].equals(serial[0]) and pooled[1].as_dict() == serial[1].as_dict()


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        ({"action": "delete"}, "seed_copy.action"),
        ({"max_containment": 1.5}, "seed_copy.max_containment"),
        ({"ngram": 0}, "seed_copy.ngram"),
        ({"ngram": 8, "max_run_words": 5}, "max_run_words (5) must be >= ngram (8)"),
    ],
)
def test_bad_settings_are_one_line_errors_naming_the_field(tmp_path, setting, field):
    from textbookgen.recipe import RecipeError, load_recipe

    with pytest.raises(ValidationError):
        CurationConfig.model_validate({"seed_copy": setting})
    over = {"output": str(tmp_path / "o"), **{f"curation.seed_copy.{k}": v for k, v in setting.items()}}
    with pytest.raises(RecipeError) as err:
        load_recipe(ROOT / "recipes" / "quickstart.yaml", over)
    lines = str(err.value).splitlines()
    assert len(lines) == 1 and field in lines[0], lines


def _jsonl(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_calibration_on_public_data(shared_data):
    """The defaults against labelled text reuse (Clough & Stevenson's short answers vs their Wikipedia
    source) and against textbook sections paired with web extracts, unrelated or BM25-retrieved for
    them (no copy), and with 30-60 % of the extract pasted in (a copy). bench/RESULTS.md has the table."""
    from textbookgen.websamples import WebSamples

    step_cfg = SeedCopyConfig()

    def copied(text: str, seed: str) -> bool:
        share, run = copy_scores(text, seed, step_cfg.ngram)
        return share > step_cfg.max_containment or run > step_cfg.max_run_words

    clough = _jsonl(shared_data / "plagiarism_short_answers_clough2011" / "corpus.jsonl.gz")
    source = {r["file"]: r["text"] for r in clough if r["category"] == "orig"}
    caught = {c: sum(copied(r["text"], source[r["source_file"]]) for r in clough if r["category"] == c)
              for c in ("cut", "light", "heavy", "non")}
    # 2 of the 19 "cut" answers were pasted from another Wikipedia article: they share nothing with theirs
    assert caught == {"cut": 17, "light": 11, "heavy": 7, "non": 0}

    sections = [s for r in _jsonl(shared_data / "sciphi_synthetic_textbooks" / "sciphi_textbooks.jsonl.gz")
                for s in re.split(r"\n(?=#{1,4} )", r["text"]) if 150 <= len(s.split()) <= 1500]
    rng = random.Random(0)
    sections = rng.sample(sections, 300)
    web = [r["text"] for r in _jsonl(shared_data / "c4_en_sample_1k" / "c4_sample.jsonl.gz")]
    web += [r["eng_Latn"] for r in _jsonl(shared_data / "wikipedia_en_1k" / "wikipedia.jsonl.gz")]
    pool = WebSamples.from_texts(web, min_chars=200)
    extracts = [e.text for e in pool.extracts]
    retrieved = [extracts[hits[0][0]] if (hits := pool.search(" ".join(s.split()[:60]), 1)) else extracts[0]
                 for s in sections]
    assert sum(copied(s, rng.choice(extracts)) for s in sections) == 0
    assert sum(copied(s, e) for s, e in zip(sections, retrieved, strict=True)) == 0
    planted = 0
    for s in sections:
        ext = rng.choice(extracts)
        planted += copied(embed(s, passage(ext, rng.uniform(0.3, 0.6), rng)), ext)
    assert planted >= 0.97 * len(sections)


def passage(text: str, share: float, rng: random.Random) -> str:
    """Whole consecutive sentences of `text` holding at least `share` of its words."""
    sents = re.split(r"(?<=[.!?])\s+", text)
    want = share * len(text.split())
    for start in range(rng.randrange(len(sents)), -1, -1):  # earlier starts when the end comes too soon
        for stop in range(start + 1, len(sents) + 1):
            if len(" ".join(sents[start:stop]).split()) >= want:
                return " ".join(sents[start:stop])
    return text
