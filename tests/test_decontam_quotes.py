"""`min_quote_words`: a verbatim run of an item's words is contamination however little of the item it is
(GPT-3's 13-gram rule), where the default similarity (80 % of the item) keeps a quoted half question."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import pytest

from textbookgen.curation.config import BenchmarkSource, DecontaminationConfig
from textbookgen.curation.decontaminate import Decontaminate


@pytest.fixture(scope="module")
def gsm8k(shared_data: Path) -> tuple[BenchmarkSource, list[str]]:
    path = shared_data / "gsm8k" / "test.jsonl.gz"
    questions = [json.loads(x)["question"] for x in gzip.open(path, "rt")]
    return BenchmarkSource(name="gsm8k", path=str(path)), questions


@pytest.fixture(scope="module")
def textbook(shared_data: Path) -> list[str]:
    books = [json.loads(x)["text"] for x in gzip.open(
        shared_data / "sciphi_synthetic_textbooks" / "sciphi_textbooks.jsonl.gz", "rt")]
    return [p for b in books for p in b.split("\n\n") if len(p.split()) >= 60][:300]


def half(question: str) -> str:
    words = question.split()
    return " ".join(words[: len(words) // 2])


def test_a_quoted_half_question_is_caught_only_when_asked(gsm8k, textbook):
    source, questions = gsm8k
    rng = random.Random(0)
    picked = [q for q in rng.sample(questions, 40) if len(q.split()) >= 36][:20]  # halves of 18+ words
    docs = [f"{textbook[i]}\n\nFor example: {half(q).upper()}\n\n{textbook[i + 1]}" for i, q in enumerate(picked)]
    default = Decontaminate(DecontaminationConfig(benchmarks=[source]))
    strict = Decontaminate(DecontaminationConfig(benchmarks=[source], min_quote_words=13))
    assert sum(bool(default.matches(d)) for d in docs) == 0
    found = [strict.matches(d) for d in docs]
    assert all(found) and all(m[0]["quote_words"] >= 13 for m in found)
    assert [t[:60] for t in textbook if strict.matches(t)] == []  # clean textbook prose stays


def test_a_short_shared_phrase_is_no_quote(gsm8k):
    source, questions = gsm8k
    strict = Decontaminate(DecontaminationConfig(benchmarks=[source], min_quote_words=13))
    words = questions[5].split()
    assert strict.matches("A story: " + " ".join(words[:10]) + " and then nothing else happened.") == []
