"""Heuristic filters: each rule's reason is recorded; prose rules never judge code."""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from textbookgen.curation.config import FilterConfig
from textbookgen.curation.filters import (
    Doc,
    HeuristicFilter,
    NonAlphaWords,
    RepeatedNgrams,
    StopWords,
    SymbolRatio,
    looks_like_code,
)


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


@pytest.fixture(scope="module")
def sciphi_sections(shared_data: Path) -> list[str]:
    """LLM-written textbook sections (split at headings), a third of them with LaTeX math."""
    books = [json.loads(x)["text"] for x in gzip.open(
        shared_data / "sciphi_synthetic_textbooks" / "sciphi_textbooks.jsonl.gz", "rt")]
    return [s for b in books for s in re.split(r"\n(?=#{1,3} )", b) if len(s.split()) >= 50][:800]


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


def gopher_repetition_keep(text: str, words: list[str], cfg: FilterConfig) -> bool:
    """Gopher's n-gram rules with datatrove's counting, written out plainly as the reference."""
    for n, limit in cfg.max_top_ngram_char_frac.items():
        grams = Counter(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))
        if grams:
            top, count = grams.most_common(1)[0]
            if count > 1 and len(top) * count / len(text) > limit:
                return False
    for n, limit in cfg.max_dup_ngram_char_frac.items():
        seen, repeated, i = set(), 0, 0
        while i + n <= len(words):
            gram = "".join(words[i : i + n])
            if gram in seen:
                repeated, i = repeated + len(gram), i + n  # only the repeat counts; jump over it
            else:
                seen.add(gram)
                i += 1
        if repeated / len(text) > limit:
            return False
    return True


def test_repetition_counts_only_the_repeats_over_the_whole_text():
    """A sentence said twice is one repeat: counting its first occurrence too (and over word characters
    only) put it at 24% of the text and dropped it; datatrove/Gopher counting puts it at 5-10%."""
    filler = [f"topic{i:02d}" for i in range(50)]
    said = "the boiling point of water falls as the air pressure around it drops".split()
    once_more = " ".join(filler[:25] + said + filler[25:] + said)
    assert RepeatedNgrams(FilterConfig()).keep(Doc(once_more, False))
    looping = " ".join(filler[:25] + said * 4 + filler[25:])
    assert not RepeatedNgrams(FilterConfig()).keep(Doc(looping, False))


def test_repetition_matches_datatrove_on_textbook_sections(sciphi_sections):
    cfg, rule = FilterConfig(), RepeatedNgrams(FilterConfig())
    docs = [Doc(s, False) for s in sciphi_sections]
    kept = [rule.keep(d) for d in docs]
    assert kept == [gopher_repetition_keep(d.prose, d.prose_words, cfg) for d in docs]
    assert kept.count(False) < 0.05 * len(docs)  # was 19% of SciPhi sections, 46% of those with math


def test_display_math_is_not_prose(wiki):
    """`$$` and `\\begin{align*}` lines are not repeated prose lines, and LaTeX is not repeated n-grams."""
    blocks = ["$$\n\\frac{d}{dx} x^n = n x^{n-1}\n$$", "$$\n\\frac{d}{dx} e^x = e^x\n$$",
              "\\[\n\\frac{d}{dx} \\sin x = \\cos x\n\\]",
              "$$\n\\begin{align*}\nf(x) &= x^2 \\\\\nf'(x) &= 2x\n\\end{align*}\n$$",
              "\\begin{align*}\ng(x) &= \\ln x \\\\\ng'(x) &= \\frac{1}{x}\n\\end{align*}", "$$\ny = mx + b\n$$"]
    paras = [" ".join(w[i : i + 40]) for w in [wiki[2].split()] for i in range(0, 40 * len(blocks), 40)]
    text = "### Derivatives\n\n" + "\n\n".join(f"{p}\n\n{b}" for p, b in zip(paras, blocks, strict=True))
    assert HeuristicFilter().reason(text) is None  # was duplicate_lines: the lone `$$` lines repeat
    doc = Doc(text, False)
    assert not re.findall(r"\$|\\\[|\\begin|frac", doc.prose)
    assert all(p in doc.prose for p in paras)
    stray = Doc("We write math between $ and $$ delimiters.\n\nThis paragraph is prose.\n\n$$\nx^2\n$$\n", False)
    assert "This paragraph is prose." in stray.prose and "x^2" not in stray.prose


def test_bare_words_are_not_code():
    """Lines of bare words parse as Python (names), so tiny notes skipped every prose rule, 50 words included."""
    for text in ["Introduction\nPhotosynthesis\nSummary", "Title\n\nTODO\n\nTBD", "Title: Cells\nAuthor: Ann\nDate: May"]:
        assert not looks_like_code(text), text
        assert HeuristicFilter().reason(text) == "too_short", text
    for code in ["x = 1\ny = 2\nx + y", "import os\n\nos\npath", "values\nprint(values)\nvalues"]:
        assert looks_like_code(code), code


def test_stop_words_are_counted_distinct_as_gopher_does():
    rule = StopWords(FilterConfig())
    assert rule.keep(Doc("the cat and the dog sat on a mat near the door today", False))  # "the", "and"
    assert not rule.keep(Doc("Skier born in Oslo. The race results: the podium, the medals", False))  # "the" x3


def test_non_alpha_words_keep_textbook_math_and_drop_lists(sciphi_sections, wiki):
    rule = NonAlphaWords(FilterConfig())
    assert all(rule.keep(Doc(s, False)) for s in sciphi_sections)  # exercise lists of inline math stay
    catalogue = "Species list:\n" + "\n".join(f"{i}. {1900 + i} – {i * 7}.{i} – {i * 3} mm" for i in range(60))
    assert not rule.keep(Doc(catalogue, False))  # the old default (80% without a letter allowed) kept this


def test_markdown_headings_are_no_symbols_when_newlines_are_gone(sciphi_sections, wiki):
    """A corpus stored with its whitespace collapsed (as fastText input is) puts `### Section` mid-line: each
    `#` of it counted as a hashtag, and 1.8 % of SciPhi's textbook sections went as `symbol_word_ratio`."""
    rule = SymbolRatio(FilterConfig())
    flat = {s: " ".join(s.split()) for s in sciphi_sections}
    assert sum(" ### " in f or " #### " in f for f in flat.values()) > 100
    assert [f[:80] for s, f in flat.items() if rule.keep(Doc(s, False)) and not rule.keep(Doc(f, False))] == []
    tagged = wiki[0][:2000] + " " + " ".join(f"#tag{i} #{i}" for i in range(60))
    assert not rule.keep(Doc(tagged, False))  # hashtags still count
