"""Heuristic filters on documents whose newlines were collapsed (`" ".join(text.split())`, as scraped text and
some Hub datasets arrive): a whole document on one line is no line of a page, nor of a program."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

from textbookgen.curation.config import FilterConfig
from textbookgen.curation.filters import (
    FLAT_LINE_WORDS,
    BulletLines,
    Doc,
    EllipsisLines,
    HeuristicFilter,
    looks_like_code,
)


def flat(text: str) -> str:
    return " ".join(text.split())


def read(path: Path, field: str) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line)[field] for line in f]


@pytest.fixture(scope="module")
def corpora(shared_data: Path) -> dict[str, list[str]]:
    """Wikipedia, C4 and SciPhi textbook sections (split at headings, >= 50 words), as bench/curate.py reads them."""
    books = read(shared_data / "sciphi_synthetic_textbooks" / "sciphi_textbooks.jsonl.gz", "text")
    return {
        "wikipedia": read(shared_data / "wikipedia_en_1k" / "wikipedia.jsonl.gz", "eng_Latn"),
        "c4": read(shared_data / "c4_en_sample_1k" / "c4_sample.jsonl.gz", "text"),
        "sciphi": [s for b in books for s in re.split(r"\n(?=#{1,3} )", b) if len(s.split()) >= 50],
    }


def dropped_once_flat(docs: list[str]) -> list[tuple[str, str]]:
    """(rule, opening) for each document kept as it is and dropped with its whitespace collapsed."""
    f = HeuristicFilter()
    return [(reason, flat(d)[:60]) for d in docs if f.reason(d) is None and (reason := f.reason(flat(d)))]


def test_a_final_ellipsis_or_leading_bullet_does_not_drop_a_collapsed_document(corpora):
    """One line ending in "..." was 100 % ellipsis lines (2 SciPhi sections ending "To be continued..."), and
    one starting with "**" 100 % bullet lines (a C4 page)."""
    docs = [d for c in corpora.values() for d in c
            if re.search(r"(\.\.\.|\u2026)\s*$", d) or d.lstrip().startswith(("*", "-", "\u2022", "\u2013"))]
    assert len(docs) >= 3
    assert dropped_once_flat(docs) == []


def test_collapsed_web_pages_are_kept_as_they_are_with_their_lines(shared_data):
    """DCLM's Common Crawl pages: 25 of the 736 kept as they are went once collapsed, 15 opening with a menu's
    "-" as `bullet_lines`, 8 ending in "..." as `ellipsis_lines`, and 2 copies of a news story ending in a
    phone number's ";" as `code_too_short`."""
    folder = shared_data / "dclm_human_quality_labels"
    pages = read(folder / "majority_data.jsonl.gz", "text") + read(folder / "agreement_data.jsonl.gz", "text")
    assert dropped_once_flat(pages) == []


def test_fenced_code_is_cut_from_a_collapsed_document(corpora):
    """Collapsed, a fence stands mid-line: the code stayed in the prose, and its repeats dropped 3 SciPhi
    sections as `repeated_ngrams`."""
    fenced = [s for s in corpora["sciphi"] if "```" in s]
    assert len(fenced) > 30
    assert dropped_once_flat(fenced) == []
    closed = [s for s in fenced if "```" not in Doc(s, False).prose]  # a section may hold half a block
    assert len(closed) >= 20
    assert [s[:60] for s in closed if "```" in Doc(flat(s), False).prose] == []


def test_real_text_ending_in_a_semicolon_or_brace_is_not_code_when_collapsed(corpora):
    """A page cut after a `;` (Wikipedia articles cut at their last "; ") or a section ending in a LaTeX
    environment's `}` read as one line of code, and went as `code_too_short`."""
    cut = [d[: d.rindex("; ") + 1] for d in corpora["wikipedia"] if "; " in d]
    cut += [s[: s.rindex("\\end{") + s[s.rindex("\\end{"):].index("}") + 1] for s in corpora["sciphi"] if "\\end{" in s]
    cut = [d for d in cut if len(d.split()) >= FLAT_LINE_WORDS]  # a shorter line is still read by its ends
    assert len(cut) > 100
    assert [flat(d)[-60:] for d in cut if looks_like_code(flat(d)) and not looks_like_code(d)] == []
    assert dropped_once_flat(cut) == []


def test_collapsed_source_code_is_still_code(shared_data):
    """Collapsed programs are still code; 5 MBPP programs opening with a constant (`MAX = 3000 def ...`) were
    prose before and are code now by their punctuation. The 3 left open with a constant too."""
    he = read(shared_data / "humaneval" / "HumanEval.jsonl.gz", "prompt")
    mbpp = read(shared_data / "opencompass_data_formulamonks" / "mbpp__mbpp.jsonl.gz", "code")
    missed = [flat(c) for c in he + mbpp if not looks_like_code(flat(c))]
    assert len(missed) <= 3 and all(re.match(r"[A-Z_]+ = ", c) for c in missed), missed


MINIFIED = (
    '/*! tiny-tabs v1.2.0 | MIT License | (c) 2024 Example Authors, see the LICENSE file for details */'
    '!function(t,e){"object"==typeof exports&&"undefined"!=typeof module?module.exports=e():"function"=='
    'typeof define&&define.amd?define(e):(t=t||self).TinyTabs=e()}(this,function(){"use strict";var t={active:'
    '"is-active",label:"Select a tab to show its panel",empty:"There are no tabs in this list yet"};function e(e,n)'
    '{var i=e.querySelectorAll("[role=tab]"),o=e.querySelectorAll("[role=tabpanel]");if(!i.length)throw new '
    'Error("tiny-tabs: the element has no tabs, add some with the role attribute set to tab");return i.forEach('
    'function(e,r){e.addEventListener("click",function(){i.forEach(function(e){e.classList.remove(t.active)}),'
    'o.forEach(function(e){e.hidden=!0}),e.classList.add(t.active),o[r].hidden=!1,n&&n(r)})}),{destroy:function()'
    '{throw new Error("tiny-tabs: destroy is not supported in this version of the library, please reload the page '
    'instead of calling it")}}}return e});'
)


def test_minified_javascript_is_still_code():
    assert len(MINIFIED.split()) >= 50 and "\n" not in MINIFIED
    assert looks_like_code(MINIFIED)
    assert HeuristicFilter().reason(MINIFIED) == "code_too_short"
    short = 'var a=document.getElementById("menu");a.onclick=function(){a.classList.toggle("open")};'
    assert looks_like_code(short)


PARAGRAPH = ("The committee met in the spring to review the budget and to hear from the residents who had written "
             "to it about the new road, the school and the library. Most of the letters asked for more evening "
             "hours at the library, and some asked the committee to delay the road until the school was finished. ")
MORE = ("In the autumn a second meeting heard the engineers, who said that the bridge over the river needed new "
        "supports before any heavy traffic could cross it, and that this work would take two years. ")


def test_one_line_prose_is_judged_by_its_words_not_its_ends():
    rule_cfg = FilterConfig()
    text = PARAGRAPH + MORE
    for ending in [";", " {", " \\end{equation}", ":"]:
        assert not looks_like_code(text + "the vote was" + ending), ending
    assert not looks_like_code("@parks_dept " + text)
    assert not looks_like_code("for the record, " + text + "see below:")
    assert EllipsisLines(rule_cfg).keep(Doc(text + "To be continued...", False))
    assert BulletLines(rule_cfg).keep(Doc("* " + text, False))
    assert HeuristicFilter().reason(text + "To be continued\u2026") is None


def test_line_rules_still_judge_documents_with_lines():
    rule_cfg = FilterConfig()
    teasers = "\n".join(f"Item {i}: the story of the road and the school went on..." for i in range(20))
    assert not EllipsisLines(rule_cfg).keep(Doc(teasers, False))
    bullets = "\n".join(f"* the road and the school, item {i}" for i in range(20))
    assert not BulletLines(rule_cfg).keep(Doc(bullets, False))
    short_line = "the story went on and on..."  # a line, not a collapsed document: judged as one
    assert not EllipsisLines(rule_cfg).keep(Doc(short_line, False))
    assert looks_like_code("x = compute(a, b);")  # a short line is still read by its ends
    assert looks_like_code(PARAGRAPH.replace(". ", ";\n"))  # several lines ending in `;`


def test_collapsed_headings_and_fences_leave_the_prose():
    code = "``` python def area(r): return 3.14159 * r * r print(area(2)) print(area(3)) ```"
    text = f"### Circles {PARAGRAPH} {code} #### Squares {MORE}"
    doc = Doc(text, False)
    assert "area" not in doc.prose and "#" not in doc.prose
    assert doc.prose_words == Doc(f"### Circles\n{PARAGRAPH}\n#### Squares\n{MORE}", False).prose_words

NEWTON = (
    "Newton's method improves a guess $x_n$ for a root of $f$ by following the tangent line: "
    "$x_{n+1} = x_n - \\frac{f(x_n)}{f'(x_n)}$. For $f(x) = x^2 - 2$ this is $x_{n+1} = \\frac{1}{2}(x_n + "
    "\\frac{2}{x_n})$, and starting from $x_0 = 1$ we get $x_1 = 1.5$, $x_2 = 1.4167$ and $x_3 = 1.41422$, already "
    "close to $\\sqrt{2}$. The error $e_n = x_n - \\sqrt{2}$ satisfies $e_{n+1} \\approx \\frac{f''(r)}{2f'(r)} "
    "e_n^2$, so the number of correct digits roughly doubles with each step when the guess is close enough to the root."
)

def test_a_one_paragraph_math_text_is_kept_as_prose_not_dropped_as_code():
    """Inline LaTeX's braces, brackets and `=` are code punctuation to the collapsed-text rule: a one-paragraph
    math text (not even collapsed) was judged code and dropped as `code_too_short`; split in two it is kept."""
    from textbookgen.curation.filters import HeuristicFilter

    f = HeuristicFilter()
    assert f.reason(NEWTON.replace(". ", ".\n\n", 1)) is None
    assert f.reason(NEWTON) is None


def commented_programs(shared_data: Path) -> list[str]:
    """Real programs under the comments programs open with: MBPP's code under its task as a comment, HumanEval's
    under its id, and MBPP's under a shebang and coding line."""
    def rows(path: Path) -> list[dict]:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    mbpp = rows(shared_data / "opencompass_data_formulamonks" / "mbpp__mbpp.jsonl.gz")
    he = rows(shared_data / "humaneval" / "HumanEval.jsonl.gz")
    return ([f"# {r['text']}\n{r['code']}" for r in mbpp]
            + [f"# {r['task_id']}: {r['entry_point']}\n{r['prompt']}{r['canonical_solution']}" for r in he]
            + [f"#!/usr/bin/env python3\n# -*- coding: utf-8 -*-\n{r['code']}" for r in mbpp])


def test_a_collapsed_program_opening_with_a_comment_is_code(shared_data):
    """Its opening is a comment, not code, and a program of long docstrings has little code punctuation: 196 of
    the 482 collapsed ones of a paragraph's length passed as prose (103 of 139 HumanEval prompts)."""
    programs = [flat(p) for p in commented_programs(shared_data)]
    programs = [p for p in programs if len(p.split()) >= FLAT_LINE_WORDS]
    assert len(programs) > 400
    assert [p[:120] for p in programs if not looks_like_code(p)] == []
    assert HeuristicFilter().reason(programs[0]) == "code_too_short"


def test_a_heading_before_code_in_prose_or_import_talk_stays_prose(corpora):
    """A Markdown heading opens like a comment: the statement after it must be one no sentence makes, near it, and
    outside fences and inline code. No collapsed document of the corpora reads as code (1,953 SciPhi sections
    open with a heading)."""
    headed = [
        f"### Plotting ``` python import matplotlib.pyplot as plt xs = [1, 2] plt.plot(xs) ``` {PARAGRAPH}",
        f"## Imports In Python, `from math import sqrt` brings one name in. {PARAGRAPH}",
        f"# Trade Countries import goods from abroad when it is cheaper. {PARAGRAPH}",
        f"#WoW Players can win this item with the following class specializations: Druid: Rogue: Monk. {PARAGRAPH}",
        f"# Notes {PARAGRAPH} def area(r): return 3.14159 * r * r",  # code far from the heading: a paragraph away
    ]
    assert [d[:40] for d in headed if looks_like_code(d)] == []
    docs = [flat(d) for c in corpora.values() for d in c]
    assert sum(d.startswith("#") for d in docs) > 1900
    assert [d[:60] for d in docs if len(d.split()) >= FLAT_LINE_WORDS and looks_like_code(d)] == []
