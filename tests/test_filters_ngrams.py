"""The n-gram repetition rule counts with numpy (`filters._Grams`): the same counts as counting tuples position by
position (the oracle below, the rule as it was: datatrove's GopherRepetitionFilter), on real text and on texts
built to repeat, with ties between grams of different lengths and overlapping repeats."""

from __future__ import annotations

import gzip
import json
import random
from collections import Counter

import pytest

from textbookgen.curation.filters import _WORD, _Grams


def oracle_most_common(words: list[str], n: int) -> tuple[int, int]:
    gram, count = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1)).most_common(1)[0]
    return count, sum(len(w) for w in gram)


def oracle_repeated_chars(words: list[str], n: int) -> int:
    seen: set[tuple[str, ...]] = set()
    chars = i = 0
    while i <= len(words) - n:
        gram = tuple(words[i:i + n])
        if gram in seen:
            chars += sum(len(w) for w in gram)
            i += n
        else:
            seen.add(gram)
            i += 1
    return chars


def check(words: list[str]) -> None:
    grams = _Grams(words)
    for n in range(1, 11):
        assert grams.repeated_chars(n) == oracle_repeated_chars(words, n), (n, words[:20])
        if len(words) >= n:
            assert grams.most_common(n) == oracle_most_common(words, n), (n, words[:20])


def test_real_text_counts_as_tuples_do(shared_data):
    path = shared_data / "c4_en_sample_1k" / "c4_sample.jsonl.gz"
    if not path.exists():
        pytest.skip(f"{path} absent (a user's clone has no ../shared/data)")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f][:300]
    for text in texts:
        check(_WORD.findall(text))


@pytest.mark.parametrize("seed", range(40))
def test_repetitive_text_counts_as_tuples_do(seed):
    """Few distinct words of unequal lengths: many ties for the most common gram (the first to occur wins),
    overlapping repeats, runs of one word."""
    rng = random.Random(seed)
    vocab = ["a", "bb", "ccc", "dddd", "the", "x" * rng.randint(1, 9)]
    words = [rng.choice(vocab[: rng.randint(1, len(vocab))]) for _ in range(rng.randint(1, 120))]
    if seed % 3 == 0:  # a block repeated, then noise
        block = words[:7]
        words = block * rng.randint(2, 5) + words
    check(words)


def test_more_distinct_words_than_an_exact_key_holds():
    """70,000 distinct words (ids past 2^16): the 2-4-gram counts fall back to tuples, the same answers."""
    words = [f"w{i}" for i in range(70_000)] + ["w1", "w2", "w3", "w4"] * 3
    check(words)
