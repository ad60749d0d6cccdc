"""Heuristic quality filters (Gopher/FineWeb-style), each a small rule with a recorded drop reason.

Prose rules (word length, symbols, non-alphabetic words, stop words, bullets, repetition) judge only
prose: fenced code blocks and display math are cut out of a document before they look at it, and
documents that are code (their `format` is a code format, or the text is a Python program / reads line
by line as code) skip them entirely. C4's "drop anything with a `{`" rule is deliberately absent: it
drops every dict literal.

A document stored with its whitespace collapsed (scraped text, some Hub datasets) is one line of a
paragraph's length or more: no line of a page, nor of a program. The line rules (bullets, ellipses) pass
it, as its one "line" made them all-or-nothing; code is told from it by its opening (or a Python statement just
after opening `#` comment lines) and its share of code punctuation, not by its last character; and fences and
heading marks left mid-line are cut from its prose as they are from lines of their own.
"""

from __future__ import annotations

import ast
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from itertools import pairwise
from pathlib import Path
from typing import ClassVar

import numpy as np
import polars as pl

from textbookgen.curation.base import (
    CHUNK_ROWS,
    RowStep,
    StageStats,
    Verdict,
    input_rows,
    judged_chunks,
    require_columns,
)
from textbookgen.curation.config import FilterConfig

_FENCE = re.compile(r"^\s*(```|~~~)[^\n]*\n.*?^\s*\1\s*$", re.M | re.S)
# `$$…$$`, `\[…\]` and math environments, each within one paragraph (a blank line ends display math in
# LaTeX and in Markdown, so a stray `$$` in prose cannot swallow the paragraphs after it)
_MATH_ENVS = (r"(?:equation|align|alignat|flalign|gather|multline|eqnarray|displaymath|math"
              r"|[pbBvV]?matrix|cases)\*?")
_DISPLAY_MATH = re.compile(
    r"\$\$(?:(?!\$\$|\n[ \t]*\n).)+\$\$"
    r"|\\\[(?:(?!\\\]|\n[ \t]*\n).)+\\\]"
    rf"|\\begin\{{({_MATH_ENVS})\}}(?:(?!\n[ \t]*\n).)*?\\end\{{\1\}}",
    re.S,
)
_WORD = re.compile(r"\S+")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s", re.M)
# a Markdown heading's marker anywhere, as it is left mid-line when a corpus collapses its whitespace
_HEADING_MARK = re.compile(r"(?:^|(?<=\s))#{1,6}(?= )", re.M)
# a fenced block with its newlines collapsed: "``` python x = 1 ```", within one line
_FLAT_FENCE = re.compile(r"(?<!\S)(```|~~~)\S*\s.*?\s\1(?!\S)")
# $…$ and \(…\): braces and `=` of math, not of code (no `;` inside: jQuery's `$(…);…$(…)` stays code)
_INLINE_MATH = re.compile(r"\$[^$;]{1,300}\$|\\\([^;]{1,300}?\\\)")
STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})  # Gopher's list
# how a line of code starts
_CODE_START = (r"def |class |import |from \S+ import |return\b|elif |else:|try:|except|#include|public |private "
               r"|static |function |const |let |var |}|{")
# a line of code starts like one, opens a block or ends a statement, or is a decorator / annotation
_CODE_LINE = re.compile(rf"^\s*({_CODE_START}|(?:if|for|while|with) .*:$|.*[;{{}}]$|@\w+)")
_CODE_OPENING = re.compile(rf"\s*(?:{_CODE_START})")
_CODE_PUNCT = re.compile(r"[;{}=()\[\]<>]")
# a line of this many words is a paragraph, or a whole document with its whitespace collapsed (Gopher's
# minimum document length)
FLAT_LINE_WORDS = 50
# code punctuation per non-space character that makes such a line code however it opens: minified JavaScript
# has 0.13, collapsed MBPP programs 0.03-0.34, prose at most 0.08 (Wikipedia, C4, SciPhi sections with
# LaTeX, DCLM pages)
_FLAT_CODE_PUNCT = 0.1
# A Python statement that no sentence makes, as it stands once a program's newlines are gone: a def header, a class
# header with its body's first statement, imports with the statement after them, the main guard, a docstring.
# Prose has "class specializations: Druid" (WebText), "countries import goods from" and "import first class wool",
# hence the context, and a def or class after an import only as a header ("def f(", "class C:", "class C(B):").
_PY_NEXT = (r"(?:import [\w.]|from [\w.]+ import |def \w+\s*\(|class \w+(?:\([^()]*\))?:|@[\w.]+"
            r"|[A-Za-z_][\w.]* = |\"\"\"|# )")
_PY_NAMES = r"(?:\([^()]*\)|[\w*]+(?: as \w+)?(?:\s*,\s*\w+(?: as \w+)?)*)"
_PY_STATEMENT = re.compile(
    r"(?<!\S)(?:def [A-Za-z_]\w*\s*\("
    r"|class [A-Za-z_]\w*(?:\([^()]*\))?:\s+(?:def |pass\b|\"\"\"|[A-Za-z_]\w* = )"
    rf"|(?:from [\w.]+ import {_PY_NAMES}|import [\w.]+(?: as \w+)?(?:\s*,\s*[\w.]+(?: as \w+)?)*)\s+{_PY_NEXT}"
    r"|if __name__ ==|\"\"\")"
)
# a program's opening comment is lines that each start with `#`: collapsed, its first statement stands within this
# many characters of the last `#` (a comment line's length, with room), where a heading's prose runs on
_COMMENT_LINE_CHARS = 160


@dataclass
class Doc:
    """A document as the rules see it: full text, and the prose left when code is cut out."""

    text: str
    is_code: bool

    @cached_property
    def lines(self) -> list[str]:
        return [ln for ln in self.text.split("\n") if ln.strip()]

    @cached_property
    def flat(self) -> bool:
        """One line of a paragraph's length or more: a document whose newlines were collapsed."""
        return is_flat(self.lines)

    @cached_property
    def words(self) -> list[str]:
        return _WORD.findall(self.text)

    @cached_property
    def prose(self) -> str:
        text = _FENCE.sub("\n", self.text)
        if self.flat:
            text = _HEADING_MARK.sub("", _FLAT_FENCE.sub(" ", text))
        return _HEADING.sub("", _DISPLAY_MATH.sub(" ", text))

    @cached_property
    def prose_lines(self) -> list[str]:
        return [ln.strip() for ln in self.prose.split("\n") if ln.strip()]

    @cached_property
    def prose_words(self) -> list[str]:
        return _WORD.findall(self.prose)


def is_flat(lines: list[str]) -> bool:
    """True for a document on one line of `FLAT_LINE_WORDS` words or more (its whitespace collapsed)."""
    return len(lines) == 1 and len(_WORD.findall(lines[0])) >= FLAT_LINE_WORDS


def looks_like_code(text: str) -> bool:
    """True for source files: a Python program (3+ lines), or most non-empty lines read as code. A collapsed
    document is code when it opens as code or is dense in code punctuation: its last character (a `;` of
    a cut-off list, a LaTeX `}`) says nothing of the hundreds of words before it."""
    lines = [ln for ln in text.split("\n") if ln.strip()]
    if is_flat(lines):
        prose = _INLINE_MATH.sub(" ", _DISPLAY_MATH.sub(" ", lines[0]))
        return (bool(_CODE_OPENING.match(lines[0])) or _opens_with_comment_then_code(lines[0])
                or _code_punct_share(prose) >= _FLAT_CODE_PUNCT)
    if len(lines) >= 3 and "```" not in text:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # invalid escapes in user code
                if _does_something(ast.parse(text)):
                    return True
        except (SyntaxError, ValueError):
            pass
    return bool(lines) and sum(bool(_CODE_LINE.match(ln)) for ln in lines) / len(lines) >= 0.6


def _opens_with_comment_then_code(line: str) -> bool:
    """True for a collapsed program that opens with `#` comment lines (a shebang, a licence, a note): its first
    Python statement follows within a comment line's length of the last `#`. A Markdown heading opens the same
    way, so the statement must be one no prose makes, outside fences and inline code, and near the `#`."""
    if not line.lstrip().startswith("#"):
        return False
    text = _FLAT_FENCE.sub(" ", line.lstrip())
    statement = _PY_STATEMENT.search(text)
    if statement is None:
        return False
    marks = [0, *(i for i, c in enumerate(text[: statement.start()]) if c == "#"), statement.start()]
    return all(b - a <= _COMMENT_LINE_CHARS for a, b in pairwise(marks))


def _code_punct_share(line: str) -> float:
    chars = "".join(line.split())
    return len(_CODE_PUNCT.findall(chars)) / max(len(chars), 1)


def _does_something(tree: ast.Module) -> bool:
    """True when some statement is code: a call, assignment, def, import, loop... Lines of bare words
    ("Introduction", "TODO") or "Title: Foo" notes also parse, as names and annotations."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            return True
        if isinstance(node, ast.stmt) and not isinstance(node, ast.Expr | ast.Pass | ast.AnnAssign):
            return True
        if isinstance(node, ast.AnnAssign) and node.value is not None:
            return True
    return False


class Rule:
    """One heuristic: `keep(doc)` is False to drop, with `reason` recorded. `scope` says which docs."""

    reason: ClassVar[str]
    scope: ClassVar[str] = "all"  # "all", "prose" (skipped for code docs) or "code"

    def __init__(self, cfg: FilterConfig) -> None:
        self.cfg = cfg

    def applies(self, doc: Doc) -> bool:
        return self.scope == "all" or (self.scope == "code") == doc.is_code

    def keep(self, doc: Doc) -> bool:
        raise NotImplementedError


class Boilerplate(Rule):
    reason = "boilerplate_phrase"

    def keep(self, doc: Doc) -> bool:
        low = doc.text.lower().replace("\u2019", "'")
        return not any(p in low for p in self.cfg.boilerplate_phrases)


class TooLong(Rule):
    reason = "too_long"

    def keep(self, doc: Doc) -> bool:
        return len(doc.words) <= self.cfg.max_words


class TooShort(Rule):
    reason = "too_short"
    scope = "prose"

    def keep(self, doc: Doc) -> bool:
        return len(doc.words) >= self.cfg.min_words


class CodeTooShort(Rule):
    reason = "code_too_short"
    scope = "code"

    def keep(self, doc: Doc) -> bool:
        return len(doc.lines) >= self.cfg.code_min_lines


class CodeRepetition(Rule):
    """Generation loops in code: the same non-trivial line over and over."""

    reason = "code_degenerate_repetition"
    scope = "code"

    def keep(self, doc: Doc) -> bool:
        long_lines = [ln.strip() for ln in doc.lines if len(ln.strip()) >= 20]
        if len(long_lines) < 4:
            return True
        dup = len(long_lines) - len(set(long_lines))
        return dup / len(long_lines) <= self.cfg.code_max_duplicate_line_frac


class MeanWordLength(Rule):
    reason = "mean_word_length"
    scope = "prose"

    def keep(self, doc: Doc) -> bool:
        words = doc.prose_words
        if not words:
            return True
        mean = sum(len(w) for w in words) / len(words)
        return self.cfg.prose_min_mean_word_len <= mean <= self.cfg.prose_max_mean_word_len


class SymbolRatio(Rule):
    """Gopher's hashes and ellipses per word. A heading's `###` is no hashtag, wherever it stands."""

    reason = "symbol_word_ratio"
    scope = "prose"

    def keep(self, doc: Doc) -> bool:
        words = doc.prose_words
        hashes = doc.prose.count("#") - sum(map(len, _HEADING_MARK.findall(doc.prose)))
        symbols = hashes + doc.prose.count("...") + doc.prose.count("\u2026")
        return not words or symbols / len(words) <= self.cfg.prose_max_symbol_word_ratio


class NonAlphaWords(Rule):
    reason = "non_alpha_words"
    scope = "prose"

    def keep(self, doc: Doc) -> bool:
        words = doc.prose_words
        if not words:
            return True
        non_alpha = sum(not any(c.isalpha() for c in w) for w in words)
        return non_alpha / len(words) <= self.cfg.prose_max_non_alpha_word_frac


class StopWords(Rule):
    reason = "too_few_stop_words"
    scope = "prose"

    def keep(self, doc: Doc) -> bool:
        """Gopher's rule as datatrove applies it: that many *different* stop words ("the the" is one)."""
        seen: set[str] = set()
        for w in doc.prose_words:
            w = w.lower().strip(".,;:!?\"'()")
            if w in STOP_WORDS:
                seen.add(w)
                if len(seen) >= self.cfg.prose_min_stop_words:
                    return True
        return False


class BulletLines(Rule):
    """Gopher's share of lines opening with a bullet. A collapsed document has no lines to count."""

    reason = "bullet_lines"
    scope = "prose"

    def keep(self, doc: Doc) -> bool:
        if doc.flat:
            return True
        lines = doc.prose_lines
        bullets = sum(ln.startswith(("•", "●", "○", "▪", "-", "*", "\u2013")) for ln in lines)
        return not lines or bullets / len(lines) <= self.cfg.prose_max_bullet_line_frac


class EllipsisLines(Rule):
    """Gopher's share of lines cut off with an ellipsis. A collapsed document has no lines to count."""

    reason = "ellipsis_lines"
    scope = "prose"

    def keep(self, doc: Doc) -> bool:
        if doc.flat:
            return True
        lines = doc.prose_lines
        ell = sum(ln.endswith(("...", "\u2026")) for ln in lines)
        return not lines or ell / len(lines) <= self.cfg.prose_max_ellipsis_line_frac


class DuplicateLines(Rule):
    reason = "duplicate_lines"
    scope = "prose"

    def keep(self, doc: Doc) -> bool:
        lines = doc.prose_lines
        if not lines:
            return True
        seen: set[str] = set()
        dup_n = dup_chars = 0
        for ln in lines:
            if ln in seen:
                dup_n, dup_chars = dup_n + 1, dup_chars + len(ln)
            seen.add(ln)
        total_chars = sum(len(ln) for ln in lines)
        return (dup_n / len(lines) <= self.cfg.max_duplicate_line_frac
                and dup_chars / max(total_chars, 1) <= self.cfg.max_duplicate_line_char_frac)


class DuplicateParagraphs(Rule):
    reason = "duplicate_paragraphs"
    scope = "prose"

    def keep(self, doc: Doc) -> bool:
        paras = [p.strip() for p in re.split(r"\n\s*\n", doc.prose) if p.strip()]
        if not paras:
            return True
        return (len(paras) - len(set(paras))) / len(paras) <= self.cfg.max_duplicate_para_frac


class RepeatedNgrams(Rule):
    """Gopher's n-gram repetition, counted as datatrove's GopherRepetitionFilter counts it: all occurrences of
    the most frequent 2-4-gram (words joined by spaces), and for 5-10-grams only the repeats (a first
    occurrence is not repetition; after a repeat the scan skips its n words), each over the prose's length.
    An n-gram seen once is never "repeated", however long its words."""

    reason = "repeated_ngrams"
    scope = "prose"

    def keep(self, doc: Doc) -> bool:
        words, length = doc.prose_words, len(doc.prose)
        if not words:
            return True
        grams = _Grams(words)
        for n, limit in self.cfg.max_top_ngram_char_frac.items():
            if len(words) < n:
                continue
            count, chars = grams.most_common(n)
            if count > 1 and count * (chars + n - 1) / length > limit:
                return False
        return all(grams.repeated_chars(n) / length <= limit
                   for n, limit in sorted(self.cfg.max_dup_ngram_char_frac.items()))


class _Grams:
    """A document's words as integer ids, so that its n-grams are counted with numpy rather than as tuples one
    position at a time (this rule took ~70% of the filters' time): the same counts, exactly."""

    _EXACT_BITS = 16  # ids below 2^16: up to 4 of them packed into a uint64 are the n-gram itself

    def __init__(self, words: list[str]) -> None:
        index: dict[str, int] = {}
        self.words = words
        self.ids = np.fromiter((index.setdefault(w, len(index)) for w in words), np.uint64, len(words))
        self.chars = np.concatenate([[0], np.cumsum(np.fromiter(map(len, words), np.int64, len(words)))])
        self.distinct = len(index)

    def _keys(self, n: int, exact: bool) -> np.ndarray:
        """One uint64 per n-gram start: the n ids packed (exact: only for n <= 4 with < 2^16 distinct words), else
        a polynomial hash of them (equal n-grams, equal keys; a rare collision joins two)."""
        starts = len(self.ids) - n + 1
        keys = np.zeros(starts, np.uint64)
        shift, factor = np.uint64(self._EXACT_BITS), np.uint64(0x9E3779B97F4A7C15)
        with np.errstate(over="ignore"):  # the hash wraps modulo 2^64 on purpose
            for k in range(n):
                keys = (keys << shift if exact else keys * factor) + self.ids[k:k + starts]
        return keys

    def most_common(self, n: int) -> tuple[int, int]:
        """(count, characters without spaces) of the most frequent n-gram, the first to occur among equals
        (`Counter.most_common`'s choice)."""
        if n > 4 or self.distinct >= 1 << self._EXACT_BITS:  # no exact key: count the tuples
            counts = Counter(tuple(self.words[i:i + n]) for i in range(len(self.words) - n + 1))
            gram, count = counts.most_common(1)[0]
            return count, sum(len(w) for w in gram)
        _, first, counts = np.unique(self._keys(n, exact=True), return_index=True, return_counts=True)
        start = int(first[counts == counts.max()].min())
        return int(counts.max()), int(self.chars[start + n] - self.chars[start])

    def repeated_chars(self, n: int) -> int:
        """Characters (spaces excluded) in repeats of an earlier n-gram, scanning left to right and jumping over
        each repeat, so overlapping repeats are counted once (datatrove's `find_all_duplicate`). Only the starts
        of n-grams that occur twice or more (by key) can be repeats: the scan visits those alone, comparing the
        words themselves; a start a jump passes over is skipped, as the full scan skips it."""
        if len(self.words) < n:
            return 0
        _, inverse, counts = np.unique(self._keys(n, exact=False), return_inverse=True, return_counts=True)
        seen: set[tuple[str, ...]] = set()
        chars = after = 0
        for start in np.flatnonzero(counts[inverse] > 1).tolist():
            if start < after:
                continue
            gram = tuple(self.words[start:start + n])
            if gram in seen:
                chars += int(self.chars[start + n] - self.chars[start])
                after = start + n
            else:
                seen.add(gram)
                after = start + 1
        return chars


RULES: tuple[type[Rule], ...] = (
    Boilerplate, TooLong, TooShort, CodeTooShort, CodeRepetition, MeanWordLength, SymbolRatio,
    NonAlphaWords, StopWords, BulletLines, EllipsisLines, DuplicateLines, DuplicateParagraphs, RepeatedNgrams,
)


class HeuristicFilter(RowStep):
    """Drop documents failing any rule; the first failing rule is the recorded reason."""

    name = "filters"

    def __init__(self, config: FilterConfig | None = None, text_column: str = "text", id_column: str = "id",
                 rules: tuple[type[Rule], ...] = RULES, workers: int = 0, chunk_size: int = CHUNK_ROWS) -> None:
        """`workers`: processes for the rules (0 = one per core; the curation config's `minhash.workers`),
        given `chunk_size` rows at a time; the result is the same for any number."""
        self.config = config or FilterConfig()
        self.text_column, self.id_column = text_column, id_column
        self.rules = [r(self.config) for r in rules]
        self.workers, self.chunk_size = workers, chunk_size

    def is_code(self, text: str, fmt: str | None) -> bool:
        if fmt is not None and fmt.lower() in {f.lower() for f in self.config.code_formats}:
            return True
        return looks_like_code(text)

    def reason(self, text: str, fmt: str | None = None) -> str | None:
        """The first rule `text` fails, or None to keep it."""
        return self.check(Doc(text, self.is_code(text, fmt)))

    def check(self, doc: Doc) -> str | None:
        for rule in self.rules:
            if rule.applies(doc) and not rule.keep(doc):
                return rule.reason
        return None

    def judge(self, chunks: Iterable[pl.DataFrame], total: int | None = None) -> Iterator[Verdict]:
        judged = judged_chunks(_judge_rows, self, chunks, self._columns, self.workers, self.chunk_size, "filtering",
                               total)
        for chunk, results in judged:
            flagged = chunk.with_columns(pl.Series("_reason", [r for r, _ in results], dtype=pl.String),
                                         input_rows(chunk).alias("_row"))
            out = flagged.filter(pl.col("_reason").is_not_null())
            report = out.select(self.id_column, pl.col("_row").alias("row"), pl.col("_reason").alias("reason")) if (
                self.id_column in chunk.columns) else None
            yield Verdict(flagged.filter(pl.col("_reason").is_null()).drop("_reason", "_row"), report,
                          Counter(out["_reason"].to_list()), {"code_docs": sum(is_code for _, is_code in results)})

    def finish(self, reports: list[pl.DataFrame], workdir: Path | None, stats: StageStats) -> None:
        """Writes `workdir/dropped.parquet`: id, input row and reason of each document dropped."""
        if workdir is not None and reports:
            pl.concat(reports).write_parquet(workdir / "dropped.parquet")

    def fingerprint(self) -> str:
        return f"{self.name} {[type(r).__name__ for r in self.rules]} {self.config.model_dump_json()}"

    def _columns(self, chunk: pl.DataFrame) -> list[pl.Series]:
        """What the rules read of a chunk: its texts and formats (null where it has no `format` column)."""
        require_columns(chunk, [self.text_column], self.name)
        formats = chunk["format"] if "format" in chunk.columns else pl.repeat(None, chunk.height, dtype=pl.String,
                                                                              eager=True)
        return [chunk[self.text_column], formats]


def _judge_rows(step: HeuristicFilter, rows: list[tuple[str, str | None]]) -> list[tuple[str | None, bool]]:
    """(first failing rule or None, is code) per (text, format) row; a Doc at a time (it caches word lists)."""
    out = []
    for text, fmt in rows:
        doc = Doc(text, step.is_code(text, fmt))
        out.append((step.check(doc), doc.is_code))
    return out
