"""Heuristic filters: each rule's reason is recorded; prose rules never judge code."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from textbookgen.curation.config import FilterConfig
from textbookgen.curation.filters import Doc, HeuristicFilter, SymbolRatio, looks_like_code


@pytest.fixture(scope="module")
def code_samples(shared_data: Path) -> list[str]:
    he = [json.loads(x) for x in gzip.open(shared_data / "humaneval" / "HumanEval.jsonl.gz", "rt")]
    mbpp = [json.loads(x) for x in gzip.open(
        shared_data / "opencompass_data_formulamonks" / "mbpp__mbpp.jsonl.gz", "rt")]
    return [h["prompt"] + h["canonical_solution"] for h in he] + [m["code"] for m in mbpp[:300]]


@pytest.fixture(scope="module")
def wiki(shared_data: Path) -> list[str]:
    docs = [json.loads(x)["eng_Latn"] for x in gzip.open(shared_data / "wikipedia_en_1k" / "wikipedia.jsonl.gz", "rt")]
    return [d for d in docs if 300 <= len(d.split()) <= 2000][:40]


def test_valid_code_is_left_alone(code_samples):
    f = HeuristicFilter()
    assert all(looks_like_code(c) for c in code_samples)
    assert [f.reason(c) for c in code_samples] == [None] * len(code_samples)
    assert [f.reason(c, "code") for c in code_samples] == [None] * len(code_samples)
    # the same sources would fail prose rules if they were judged as prose
    as_prose = [any(not r.keep(Doc(c, False)) for r in f.rules if r.scope == "prose") for c in code_samples]
    assert sum(as_prose) > len(code_samples) // 3


def test_code_blocks_in_a_textbook_are_not_judged_as_prose(code_samples, wiki):
    banners = "".join(f"# ####### step {i} #######\nd{i} = {{'k': {i}}}  # ...\n" for i in range(40))
    code = "\n\n".join(code_samples[:3]) + "\n" + banners
    doc = f"# Lists\n\n{wiki[0][:1500]}\n\n```python\n{code}\n```\n\nIn summary, {wiki[1][:600]}\n"
    assert not SymbolRatio(FilterConfig()).keep(Doc(code, False))  # prose rules would drop the code
    assert HeuristicFilter().reason(doc) is None


def test_each_rule_records_its_reason(wiki):
    good = wiki[0]
    cases = {
        "boilerplate_phrase": good + "\nAs an AI language model, I cannot browse the internet.",
        "too_short": "A tiny note with few words.",
        "duplicate_lines": "\n".join(["This line is the same line every time you read it."] * 30 + [good[:500]]),
        "repeated_ngrams": " ".join(["the cat sat on the mat and then"] * 60),
        "too_few_stop_words": " ".join(f"word{i} lorem{i} ipsumx{i}" for i in range(60)),
        "symbol_word_ratio": good[:2000] + " " + " ".join(f"note#{i}" for i in range(300)),
        "non_alpha_words": " ".join(str(10**6 + i) for i in range(400)) + " the and of",
        "ellipsis_lines": "\n".join(f"the story of item {i} went on and on and then..." for i in range(40)),
        "too_long": good,
    }
    for reason, text in cases.items():
        cfg = FilterConfig(max_words=100) if reason == "too_long" else FilterConfig()
        assert HeuristicFilter(cfg).reason(text) == reason, reason


def test_filter_step_counts_and_report(wiki, code_samples, tmp_path):
    df = pl.DataFrame({
        "id": [f"w{i}" for i in range(10)] + ["c0", "c1", "bad0", "bad1"],
        "text": wiki[:10] + code_samples[:2] + ["too short", "As an AI language model " + wiki[3]],
        "format": ["textbook"] * 10 + ["code", "code", "textbook", "textbook"],
    })
    out, stats = HeuristicFilter()(df, tmp_path)
    assert {"c0", "c1"} <= set(out["id"]) and not {"bad0", "bad1"} & set(out["id"])
    assert stats.dropped["too_short"] >= 1 and stats.dropped["boilerplate_phrase"] == 1
    assert stats.n_in - stats.kept == sum(stats.dropped.values())
    report = pl.read_parquet(tmp_path / "dropped.parquet")
    assert dict(zip(report["id"], report["reason"], strict=True))["bad1"] == "boilerplate_phrase"
