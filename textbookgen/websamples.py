"""Web samples: short, clean extracts of real web text that seed prompts for diversity.

phi-1.5 put web samples into its prompts, and Cosmopedia cut them to 1,000 characters and, in v2,
retrieved them per topic with full-text search. Here: load from parquet, jsonl, plain text or a
Hugging Face dataset id (streaming), clean (ftfy mojibake fix, boilerplate lines, length bounds),
cut at a sentence boundary, keep those in the build's language (a fastText language-ID model, or
the share of letters in the language's script), pick one per prompt from the prompt's name, none twice
while unused ones remain (`KeyedExtracts`), and optionally retrieve extracts that talk about a topic with BM25 (`bm25s`).

Scripts written without spaces (Chinese, Japanese; Thai, Lao, Khmer, Myanmar) are measured in words of
a few characters each, and `。！？` end sentences, so their pages survive cleaning and reach the language
filter. Retrieval indexes Han and Kana as overlapping character bigrams (as Lucene's CJK analyzer does);
Thai, Lao, Khmer and Myanmar runs stay one token each, so a topic in those scripts rarely matches.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import json
import os
import re
import shutil
import socket
import tempfile
import unicodedata
import urllib.request
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlparse

import numpy as np

from textbookgen.jsonl import decode_utf8, iter_jsonl_lines
from textbookgen.taxonomy import keyed_bits, keyed_uniform

if TYPE_CHECKING:
    from textbookgen.recipe import LanguageFilterConfig

EXTRACT_CHARS = 1000

# Lines that are page furniture rather than content (C4 / Cosmopedia-style rules), matched on short lines.
# Whole words and page-furniture phrases only: "a cookie sheet", "copyright law", "children who read
# more", "Nathan Law posted on social media" and "a catalog in the library" are content.
_BOILERPLATE = re.compile(
    r"\b(?:(?:uses?|accept|enable|allow)\s+(?:all\s+)?cookies|cookie (?:policy|settings|consent|preferences)|"
    r"privacy policy|terms (?:of (?:use|service)|and conditions)|all rights reserved|copyright\s+(?:©|\(c\)|\d{4})|"
    r"javascript|click here|sign up\b|log ?in (?:to|with)\b|subscribe (?:to|now|here)\b|newsletter|follow us|"
    r"share (?:this|on)\b|skip to (?:main )?content|back to top|leave a (?:reply|comment)|powered by|"
    r"add to (?:cart|basket)|related posts?\b|(?:previous|next|older|newer) posts?\b)|©|"
    r"^(?:read more|posted (?:on|by|in)\b|\d+ comments?\b|(?:log ?in|sign in|register|subscribe)\s*$)|"
    # Chinese and Japanese: all rights reserved, privacy policy, back to top, reproduction prohibited
    r"版权所有|版權所有|隐私政策|隱私政策|返回顶部|回到顶部|無断転載|^(?:上一篇|下一篇|上一页|下一页)",
    re.I,
)
_HAN_KANA = (
    r"[\u3005-\u3007\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f"
    r"\U00020000-\U0003ffff]"
)
_HAN_KANA_RUN = re.compile(_HAN_KANA + "+")
# A sentence ends at . ! ? … (and the danda, the Arabic question mark, the Urdu, Armenian, Ethiopic, Myanmar
# and Khmer full stops, the Ethiopic question mark) before a space, or at 。！？ anywhere, and at ! ? after a
# Han or Kana character: Chinese and Japanese put no space after them (and ftfy makes ！？ ASCII). Closing
# quotes and brackets go with it.
_SENTENCE_END = re.compile(
    r"[.!?\u2026\u0964\u0965\u061f\u06d4\u0589\u1362\u1367\u104b\u17d4\u17d5][\"'\u201d\u2019)\]]*(?=\s|$)"
    rf"|(?:[\u3002\uff01\uff1f\uff61]|(?<={_HAN_KANA})[!?])[\u3002\uff01\uff1f\uff61!?]*"
    r"[\"'\u201d\u2019)\]\u300d\u300f\u3011\u3015\u3009\u300b\uff09\uff3d]*"
)
# Words whose '.' is an abbreviation's (`_abbreviation_stop`): titles, and those a number or a name follows
_ABBREVIATIONS = frozenset(
    {"Mr", "Mrs", "Ms", "Dr", "Prof", "St", "Mt", "Ft", "No", "Nos", "vs", "Fig", "Figs", "Vol", "Ser", "Pat",
     "Gen", "Col", "Capt", "Lt", "Sgt", "Rev", "Hon", "Sen", "Rep", "Gov", "approx", "ca", "cf", "pp", "Nr"}
)
_INITIALS = re.compile(r"(?:[^\W\d_]\.)*[^\W\d_]")  # "J", "U.S", "e.g", "z. B"'s "B": one letter a part
_LAST_WORD = re.compile(r"[\w.]+$")
_NEXT_CHAR = re.compile(r"\s*(\S)")
#: Runs of scripts written without spaces between words, and about how many characters a word has in
#: them (Chinese words average 1.5-2 characters, Japanese about 2; Thai, Lao, Khmer, Myanmar about 4).
_UNSPACED_RUNS = (
    (_HAN_KANA_RUN, 2),
    (re.compile(r"[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff]+"), 4),  # Thai, Lao, Myanmar, Khmer
)
_SOURCE_DROP = re.compile(r"lorem ipsum", re.I)
_NAV = re.compile(
    r"^(?:[^|\u00bb\u203a/]{1,30}\s[|\u00bb\u203a/]\s){2,}[^|\u00bb\u203a/]{1,30}$"
)  # Home | About | ...


class WebSampleError(ValueError):
    """A web-sample source could not be read; the message names the source and what is wrong."""


@dataclass(frozen=True)
class Extract:
    """One cleaned web extract. `id` is a content hash, so it is stable whatever the source order."""

    id: str
    text: str


def clean_text(text: str, *, boilerplate_max_chars: int = 200) -> str:
    """Fix mojibake and control characters (ftfy), drop boilerplate lines (cookie banners, share
    buttons, copyright notices, navigation crumbs), collapse whitespace."""
    import ftfy

    if not text.isascii() or "&" in text:  # pure ASCII holds no mojibake or entities: skip the slow path
        text = ftfy.fix_text(text, normalization="NFC")
    kept = []
    for line in text.splitlines():
        line = re.sub(r"[ \t\u00a0]+", " ", line).strip()
        if not line:
            continue
        short = len(line) <= boilerplate_max_chars
        if short and (_BOILERPLATE.search(line) or _NAV.match(line)):
            continue
        if word_count(line) < 3 and not _SENTENCE_END.search(line):
            continue  # menu items, bare headings, crumbs
        kept.append(line)
    return "\n".join(kept)


def word_count(line: str) -> int:
    """Space-separated words, where a run of a script written without spaces counts one word per few
    characters (so a Chinese sentence is not one "word", and "首页" is still a bare menu item)."""
    if line.isascii():
        return len(line.split())
    n = 0
    for run, chars_per_word in _UNSPACED_RUNS:
        n += sum(-(-len(m) // chars_per_word) for m in run.findall(line))
        line = run.sub(" ", line)
    return n + len(line.split())


def cut_at_sentence(text: str, limit: int = EXTRACT_CHARS) -> str:
    """At most `limit` characters, ending at the last sentence end in the window (if that keeps at
    least half of it), else at the last word boundary (or the window's edge, in text without spaces).
    A '.' at the window's edge ends a sentence only if the text goes on with a space (not "3." of
    "3.14", nor "example." of "example.com"), and a '。' only if no closing quote follows it."""
    if len(text) <= limit:
        return text.strip()
    window = text[:limit]
    # matched on one character past the window, so the lookahead sees what follows the edge
    ends = [m.end() for m in _SENTENCE_END.finditer(text, 0, limit + 1)
            if m.end() <= limit and not _abbreviation_stop(text, m.start())]
    if ends and ends[-1] >= limit // 2:
        return window[: ends[-1]].strip()
    space = window.rfind(" ")
    return (window[:space] if space >= limit // 2 else window).strip()


def _abbreviation_stop(text: str, at: int) -> bool:
    """Whether the '.' at `at` ends an abbreviation rather than a sentence: an initial or letters with dots
    ("J.", "U.S.", "e.g."), a title or a "No.", or one followed by a lower-case word or a number ("etc. and",
    "approx. 20"). About 2% of C4 and Wikipedia extracts were cut on one ("Prior to joining CCA in 2013, Dr.")."""
    if text[at] != ".":
        return False
    nxt = _NEXT_CHAR.match(text, at + 1)
    if nxt and (nxt[1].islower() or nxt[1].isdigit()):
        return True
    word = _LAST_WORD.search(text, max(0, at - 16), at)
    return word is not None and (word[0] in _ABBREVIATIONS or _INITIALS.fullmatch(word[0]) is not None)


def make_extract(
    text: str, *, min_chars: int = 200, max_chars: int | None = None, extract_chars: int = EXTRACT_CHARS
) -> Extract | None:
    """Clean one document and cut it; None when it is out of the length bounds or junk."""
    if not isinstance(text, str) or _SOURCE_DROP.search(text):
        return None
    if max_chars is not None and len(text) > max_chars:
        return None
    cleaned = clean_text(text)
    if len(cleaned) < min_chars:
        return None
    cut = cut_at_sentence(cleaned, extract_chars)
    if len(cut) < min_chars:
        return None
    return Extract(id=hashlib.sha1(cut.encode("utf-8")).hexdigest()[:16], text=cut)


@dataclass
class WebSamples:
    """A deduplicated pool of extracts with deterministic picking and optional BM25 retrieval."""

    extracts: list[Extract]
    source: str = ""
    stats: dict[str, int] = field(default_factory=dict)
    language_filter: str = ""  # what the language filter was, for messages ("" when none)
    length_rule: str = ""  # the length bounds the documents were held to, for messages ("" when not known)
    _retriever: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.extracts:
            where = self.source or "web samples"
            n = self.stats.get("documents")
            if n == 0:
                raise WebSampleError(
                    f"{where}: no extract survived cleaning: it holds no documents (empty, or no text in its rows)"
                )
            read = f" of {n:,} documents read" if n else ""
            lang = self.stats.get("language_dropped")
            why = f"; {lang:,} not in the language ({self.language_filter})" if lang else ""
            bounds = f" ({self.length_rule}: lower min_chars for short texts)" if self.length_rule else ""
            raise WebSampleError(
                f"{where}: no extract survived cleaning{read} (too short or too long{bounds}, boilerplate or "
                f"duplicates{why})"
            )

    def __len__(self) -> int:
        return len(self.extracts)

    @classmethod
    def from_texts(
        cls,
        texts: Iterable[str],
        *,
        source: str = "",
        min_chars: int = 200,
        max_chars: int | None = None,
        extract_chars: int = EXTRACT_CHARS,
        limit: int | None = None,
        progress: bool = False,
        language_filter: LanguageFilter | None = None,
    ) -> WebSamples:
        """Clean, cut and deduplicate `texts`; with `language_filter`, keep only the extracts it passes
        (`stats["language_dropped"]` counts the others)."""
        from rich.console import Console
        from rich.progress import Progress

        _check_language_filter(language_filter)
        seen: set[str] = set()
        out: list[Extract] = []
        n_in = n_lang = 0
        with Progress(console=Console(stderr=True), transient=True, disable=not progress) as bar:
            task = bar.add_task(f"web samples from {source or 'texts'}", total=limit)
            for text in texts:
                n_in += 1
                ex = make_extract(text, min_chars=min_chars, max_chars=max_chars, extract_chars=extract_chars)
                if ex is None or ex.id in seen:
                    continue
                seen.add(ex.id)
                if language_filter is not None and not language_filter.keep(ex.text):
                    n_lang += 1
                    continue
                out.append(ex)
                bar.advance(task)
                if limit is not None and len(out) >= limit:
                    break
        stats = {"documents": n_in, "extracts": len(out), "dropped": n_in - len(out)}
        if language_filter is not None:
            stats["language_dropped"] = n_lang
        desc = language_filter.description if language_filter is not None else ""
        rule = f"min_chars {min_chars} after cleaning" + (f", max_chars {max_chars}" if max_chars is not None else "")
        return cls(extracts=out, source=source, stats=stats, language_filter=desc, length_rule=rule)

    @classmethod
    def load(
        cls,
        source: str | Path,
        *,
        text_field: str | None = None,
        split: str = "train",
        config: str | None = None,
        limit: int | None = None,
        **clean_kwargs: Any,
    ) -> WebSamples:
        """`source`: a parquet / jsonl(.gz) / json / txt(.gz) file or a folder of them, an http(s)
        URL of such a file, or a Hub dataset as `hf:org/name` (streamed; needs `datasets`)."""
        src = str(source)
        texts = _read_source(src, text_field=text_field, split=split, config=config)
        stream_limit = None if limit is None else limit * 4  # leave room for dropped documents
        return cls.from_texts(_take(texts, stream_limit), source=src, limit=limit, **clean_kwargs)

    def content_hash(self) -> str:
        h = hashlib.sha256()
        for ex in self.extracts:
            h.update(ex.id.encode())
        return h.hexdigest()[:16]

    # ---- picking ----------------------------------------------------------------------------
    def search(self, query: str, k: int = 20) -> list[tuple[int, float]]:
        """Top-`k` (extract position, BM25 score) for a query, best first; score > 0 only."""
        import bm25s

        stemmer = _english_stemmer()
        if self._retriever is None:
            tokens = bm25s.tokenize(
                [_han_kana_bigrams(e.text) for e in self.extracts],
                stopwords="en",
                stemmer=stemmer,
                return_ids=False,
                show_progress=False,
            )
            self._retriever = bm25s.BM25()
            self._retriever.index(tokens, show_progress=False)
        vocab = self._retriever.vocab_dict
        query_words = bm25s.tokenize(
            [_han_kana_bigrams(query)], stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False
        )[0]
        words = [w for w in query_words if w in vocab]
        if not words:
            return []
        # get_scores + argpartition: one numpy pass, no thread pool (20-50x faster than retrieve() per query)
        scores = self._retriever.get_scores(words)
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.lexsort((top, -scores[top]))]
        return [(int(i), float(scores[i])) for i in top if scores[i] > 0]


def _han_kana_bigrams(text: str) -> str:
    """Chinese and Japanese runs as space-separated overlapping character bigrams ("北京首都" ->
    "北京 京首 首都"): BM25's tokenizer would take a whole clause as one word. A lone character is
    dropped, as the tokenizer drops one-letter words."""
    if text.isascii():
        return text
    return _HAN_KANA_RUN.sub(lambda m: " " + " ".join(m[0][i : i + 2] for i in range(len(m[0]) - 1)) + " ", text)


@lru_cache(maxsize=1)
def _english_stemmer() -> Any:
    """Snowball English stems for BM25, so a topic's "footballs" finds extracts about "football"."""
    import Stemmer

    return Stemmer.Stemmer("english")


class KeyedExtracts:
    """Each prompt's web extract, drawn from the prompt's name and taken in the build's order. A prompt is
    named by its series (topic and mix cell, `MixSchedule`) and its number k in the series: it carries an
    extract iff frac(u + k x 0.618...) < `share`, u drawn from the series, so each prompt with probability
    `share`, raising `share` only adds prompts with an extract, and the prompts of a series take them in
    turn (a golden-ratio sequence: a series' topic-only prompts, the same prompt twice, are as few as
    `share` allows).

    Of those with one, `retrieval_share` get one of the top `top_k` BM25 hits for the topic: the hit the
    topic's prompts used fewest times, then the one the build used fewest times, from the one the series'
    turn points at on, so a topic's prompts use its hits in turn and topics with the same hits share them
    out (bench/diversity.py: one extract used 2 times, 15 with independent turns). The others (and those
    no hit matches) get one of the whole pool: the first of the prompt's keyed candidates (`PROBES` of
    them, then the next unused extract in pool order) that no prompt took yet, so no extract is taken twice
    while unused ones remain (drawn independently, n picks from a pool of N repeated about n^2 / 2N before
    the pool was used up). Once every extract is used, a prompt takes its first candidate: the independent
    draw again.

    `pick` proposes, `take` records the use (`render_prompts` takes only the prompts it keeps), `choose`
    does both. A prompt's first candidate is what the independent draw was, so an unused one stays. An edit
    that changes prompts' extracts moves a chain of later prompts whose extract they took or left free (a
    hash table's probing at the pool's load). On 100K prompts (60K from the pool), a mix edit re-renders 5%
    more prompts than it changes on a 1M pool, 28% more on 200K, and 1.7 times as many on 20K (an even
    spread after the first round, each extract used 3 times, made that 3.5 times: the end of every round
    forces its last free extracts). Raising `share` moves later extracts alike."""

    PROBES = 16  # keyed candidates before the next-in-pool-order fallback: O(1) per prompt at any load

    def __init__(
        self, samples: WebSamples, seed: int, *, share: float, retrieval_share: float = 0.0, top_k: int = 20
    ) -> None:
        self.samples, self.seed, self.share = samples, seed, share
        self.retrieval_share, self.top_k = retrieval_share, top_k
        self._hits: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # topic -> its hits, their uses by it
        self._picked: tuple[int, np.ndarray | None, int] | None = None  # the last pick: extract, hit uses, hit
        self.uses = np.zeros(len(samples), dtype=np.int64)  # how many prompts took each extract
        self.level = 0  # every extract was taken at least this many times
        self._at_level = len(samples)  # how many were taken exactly `level` times
        self._next: np.ndarray | None = None  # union-find "next extract at `level`", built when first needed

    def choose(self, series: tuple[str, ...], k: int, topic_query: str | None) -> Extract | None:
        """The extract of prompt k of `series` (None: topic-only), taken."""
        i = self.pick(series, k, topic_query)
        self.take()
        return None if i is None else self.samples.extracts[i]

    def pick(self, series: tuple[str, ...], k: int, topic_query: str | None) -> int | None:
        """The pool position of the extract of prompt k of `series` (None: topic-only), given the uses taken
        so far; `take()` records it if the build keeps the prompt."""
        self._picked = None
        if _golden(keyed_uniform(self.seed, "extract", *series), k) >= self.share:
            return None
        if topic_query and keyed_uniform(self.seed, "retrieve", *series, k) < self.retrieval_share:
            hits = self._hits.get(topic_query)
            if hits is None:
                found = [i for i, _ in self.samples.search(topic_query, self.top_k)]
                hits = self._hits[topic_query] = (np.array(found, dtype=np.int64), np.zeros(len(found), np.int64))
            if len(hits[0]):
                j = self._least_used_hit(series, k, hits[1], self.uses[hits[0]])
                self._picked = (int(hits[0][j]), hits[1], j)
                return self._picked[0]
        self._picked = (self._from_pool(series, k), None, 0)
        return self._picked[0]

    def take(self) -> None:
        """Record the use of the extract the last `pick` gave (nothing for a topic-only prompt)."""
        if self._picked is None:
            return
        i, hit_uses, j = self._picked
        self._picked = None
        if hit_uses is not None:
            hit_uses[j] += 1
        uses = self.uses
        if uses[i] == self.level:
            if self._next is not None:
                self._next[i] = i + 1
            self._at_level -= 1
        uses[i] += 1
        if self._at_level == 0:  # every extract was used level + 1 times: the next round
            self.level = int(uses.min())
            self._at_level = int(np.count_nonzero(uses == self.level))
            self._next = None

    def _least_used_hit(self, series: tuple[str, ...], k: int, hit_uses: np.ndarray, uses: np.ndarray) -> int:
        """The topic's hit its prompts used fewest times, then the build used fewest, from the series' turn
        on."""
        m = len(hit_uses)
        turn = int(_golden(keyed_uniform(self.seed, "hit", *series), k) * m)
        return int(np.lexsort(((np.arange(m) - turn) % m, uses, hit_uses))[0])

    def _from_pool(self, series: tuple[str, ...], k: int) -> int:
        """The first keyed candidate not used yet; once every extract is used, the first candidate (an even
        spread from then on would move long chains of later prompts at every edit)."""
        n, uses, level = len(self.samples), self.uses, self.level
        first = keyed_bits(self.seed, "pick", *series, k) % n
        if uses[first] == level or level > 0:
            return first
        for j in range(1, self.PROBES):
            i = keyed_bits(self.seed, "pick", *series, k, j) % n
            if uses[i] == level:
                return i
        return self._next_at_level(first)

    def _next_at_level(self, i: int) -> int:
        """The first extract from position i on (wrapping) used `level` times: a union-find whose links skip
        the extracts used more (path halving), so the fallback is O(1) amortised however full the round."""
        nxt = self._next
        if nxt is None:
            n = len(self.uses)
            pos = np.arange(n + 1)
            nxt = self._next = np.where(np.append(self.uses == self.level, True), pos, pos + 1)
        while True:
            while nxt[i] != i:
                nxt[i] = nxt[nxt[i]]
                i = int(nxt[i])
            if i < len(self.uses):
                return i
            i = 0  # past the end: wrap around


def _golden(u: float, k: int) -> float:
    """The k-th number of the golden-ratio sequence from u: uniform for every k, and any run of them spread
    evenly over [0, 1) (a low-discrepancy sequence)."""
    return (u + k * 0.6180339887498949) % 1.0


# ---- language filter ----------------------------------------------------------------------------
#: The script(s) each language (ISO 639-1) is written in, for the script check.
_LANGUAGE_SCRIPTS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        "af az ca cs cy da de en eo es et eu fi fr ga gl hr hu id is it lt lv ms mt nb nl nn no pl pt ro "
        "sk sl sq sv sw tl tr uz vi".split(),
        ("Latin",),
    ),
    **dict.fromkeys("be bg kk ky mk mn ru tg uk".split(), ("Cyrillic",)),
    **dict.fromkeys("ar fa ps ur".split(), ("Arabic",)),
    **dict.fromkeys("hi mr ne".split(), ("Devanagari",)),
    "el": ("Greek",), "he": ("Hebrew",), "yi": ("Hebrew",), "bn": ("Bengali",), "th": ("Thai",),
    "ka": ("Georgian",), "hy": ("Armenian",), "ta": ("Tamil",), "te": ("Telugu",), "kn": ("Kannada",),
    "ml": ("Malayalam",), "gu": ("Gujarati",), "pa": ("Gurmukhi",), "km": ("Khmer",), "lo": ("Lao",),
    "my": ("Myanmar",), "si": ("Sinhala",), "am": ("Ethiopic",),
    "zh": ("Han",), "ja": ("Han", "Kana"), "ko": ("Hangul", "Han"), "sr": ("Cyrillic", "Latin"),
}  # fmt: skip
SCRIPTS = frozenset(s for scripts in _LANGUAGE_SCRIPTS.values() for s in scripts)
#: ISO 639-3 codes of a language, for models labelled `eng_Latn` (GlotLID, OpenLID); macrolanguages
#: list the individual language the models use too (OpenLID labels Arabic `arb`, Persian `pes`).
_ISO3 = {
    "en": "eng", "fr": "fra", "de": "deu", "es": "spa", "it": "ita", "pt": "por", "nl": "nld", "ru": "rus",
    "zh": "zho cmn", "ja": "jpn", "ko": "kor", "ar": "ara arb", "hi": "hin", "bn": "ben", "tr": "tur",
    "pl": "pol", "sv": "swe", "uk": "ukr", "vi": "vie", "id": "ind", "el": "ell", "cs": "ces", "he": "heb",
    "fa": "fas pes", "fi": "fin", "da": "dan", "no": "nor nob nno", "ro": "ron", "hu": "hun", "th": "tha",
}  # fmt: skip
#: Scripts whose one character is a syllable or a word: each counts as this many letters.
_DENSE = {"Han": 2, "Kana": 2, "Hangul": 2}
LID_MIN_SCORE = 0.65  # datatrove's LanguageFilter default
MIN_SCRIPT_SHARE = 0.7  # English with Greek or Japanese quotes measures 0.73-0.8; mixed pages 0.4-0.65


class LanguageFilter(Protocol):
    """Decides whether an extract is in the build's language."""

    @property
    def description(self) -> str: ...

    def keep(self, text: str) -> bool: ...


def _check_language_filter(language_filter: object) -> None:
    """Refuse, before a text is read, a filter without what `from_texts` uses: `keep` for each extract and
    `description` for the pool's messages, read after the whole stream was cut."""
    if language_filter is None:
        return
    name = type(language_filter).__name__
    if not callable(getattr(language_filter, "keep", None)):
        raise TypeError(f"language_filter must be a LanguageFilter, such as "
                        f"ScriptFilter(language_scripts('English')), not {name} {language_filter!r}")
    if not isinstance(getattr(language_filter, "description", None), str):
        raise TypeError(f"language_filter must be a LanguageFilter (keep(text) and a description): {name} has no "
                        "'description' (a str, for the pool's messages)")


@lru_cache(maxsize=4096)
def _script_of(ch: str) -> str | None:
    """A letter's script from its Unicode name ("CYRILLIC SMALL LETTER A" -> Cyrillic); None for letters
    of no script (modifier letters)."""
    word = unicodedata.name(ch, "").split(" ", 1)[0]
    if word in ("", "MODIFIER"):
        return None
    if word == "CJK":
        return "Han"
    if word in ("HIRAGANA", "KATAKANA", "KATAKANA-HIRAGANA"):
        return "Kana"
    return word.title()


def script_counts(text: str) -> Counter[str]:
    """Letters per script, after NFKC (so full-width, math-italic and ligature letters count as the
    plain ones); a Han, Kana or Hangul character counts as two letters, as it carries about as much
    text as two Latin ones, so Japanese with English terms in it is still mostly Japanese."""
    out: Counter[str] = Counter()
    for ch, n in Counter(unicodedata.normalize("NFKC", text)).items():
        if ch.isalpha():
            script = "Latin" if ch.isascii() else _script_of(ch)
            if script is not None:
                out[script] += n * _DENSE.get(script, 1)
    return out


def script_share(text: str, scripts: Iterable[str]) -> float:
    """The share of `text`'s letters that are in `scripts` (0.0 for a text without letters)."""
    counts = script_counts(text)
    total = sum(counts.values())
    return sum(counts[s] for s in set(scripts)) / total if total else 0.0


@dataclass(frozen=True)
class ScriptFilter:
    """Keep a text when at least `min_share` of its letters are in the language's script(s).

    Catches the unambiguous failures with no model: Russian, Korean or Japanese pages (or mostly
    Cyrillic link lists) in an English pool, English pages in a Russian one. It cannot tell apart
    languages that share a script: French, German or Spanish pass as English, Ukrainian as Russian,
    Chinese as Japanese. Give a fastText language-ID model for that.
    """

    scripts: tuple[str, ...]
    min_share: float = MIN_SCRIPT_SHARE
    language: str = ""

    @property
    def description(self) -> str:
        of = f"{self.language}: " if self.language else ""
        return f"{of}{'/'.join(self.scripts)} letters >= {self.min_share:g}"

    def keep(self, text: str) -> bool:
        return script_share(text, self.scripts) >= self.min_share


@dataclass(frozen=True)
class FastTextLanguageFilter:
    """Keep a text when a fastText language-ID model (lid.176, GlotLID, OpenLID) gives one of `labels`
    as the most likely language with probability >= `min_score` (as datatrove's LanguageFilter)."""

    model: Any
    labels: frozenset[str]
    min_score: float = LID_MIN_SCORE
    name: str = ""

    @property
    def description(self) -> str:
        labels = ", ".join(sorted(x.removeprefix("__label__") for x in self.labels))
        return f"fastText {self.name}: {labels} >= {self.min_score:g}"

    def predict(self, text: str) -> tuple[str, float]:
        """The most likely label (without `__label__`) and its probability."""
        from textbookgen.curation.classifier import fasttext_line

        labels, probs = self.model.predict(fasttext_line(text), k=1)
        return (labels[0].removeprefix("__label__"), float(probs[0])) if labels else ("", 0.0)

    def keep(self, text: str) -> bool:
        label, prob = self.predict(text)
        return f"__label__{label}" in self.labels and prob >= self.min_score


def make_language_filter(
    config: LanguageFilterConfig | None, language: str, base_dir: Path
) -> LanguageFilter | None:
    """The filter a recipe's `web_samples.language_filter` asks for (None when it is off), for the recipe's
    `language`; a relative model path is read from `base_dir`. Raises WebSampleError naming the field."""
    if config is None:
        return None
    field_name = "web_samples.language_filter"
    if config.model:
        model = _load_lid_model(config.model, base_dir)
        labels = _model_labels(model, config.label, language, config.model)
        return FastTextLanguageFilter(model, labels, config.min_score, name=config.model)
    scripts = tuple(config.scripts or ())
    if not scripts:
        code = _iso639_1(language)
        if code not in _LANGUAGE_SCRIPTS:
            raise WebSampleError(
                f"{field_name}: no script known for language {language!r}; set {field_name}.scripts "
                f"(one or more of {', '.join(sorted(SCRIPTS))}), give a language-ID model, or set "
                f"{field_name}: false"
            )
        scripts = _LANGUAGE_SCRIPTS[code]
    return ScriptFilter(scripts, config.min_script_share, language)


def language_scripts(language: str) -> tuple[str, ...]:
    """The script(s) `language` ("English", "zh", "ja-JP") is written in; () for one not in the table."""
    return _LANGUAGE_SCRIPTS.get(_iso639_1(language), ())


def _iso639_1(language: str) -> str:
    """ISO 639-1 code of "English", "en", "en-GB" or "eng" ("en"); "" for a language of no known code."""
    from textbookgen.card import language_code

    try:
        code = language_code(language).lower().replace("_", "-").split("-")[0]
    except ValueError:
        return ""
    return next((k for k, v in _ISO3.items() if code in v.split()), code)


def _model_labels(model: Any, label: str | None, language: str, source: str) -> frozenset[str]:
    """The model's labels for the language: `label` as given (`en`, `eng_Latn`), else the recipe
    language's ISO 639-1 code (lid.176's `__label__en`) or ISO 639-3 code in any script (GlotLID's and
    OpenLID's `__label__eng_Latn`)."""
    field_name = "web_samples.language_filter"
    names = {x.removeprefix("__label__") for x in model.get_labels()}
    example = ", ".join(sorted(names)[:5])
    if label:
        label = label.removeprefix("__label__")
        if label not in names:
            raise WebSampleError(
                f"{field_name}.label: {source} has no label {label!r} (its labels look like {example})"
            )
        return frozenset({f"__label__{label}"})
    code = _iso639_1(language)
    codes = {code, *_ISO3.get(code, "").split()}
    found = {n for n in names if n in codes or n.split("_")[0] in codes}
    if not found:
        raise WebSampleError(
            f"{field_name}: {source} has no label for language {language!r} (its labels look like "
            f"{example}); set {field_name}.label"
        )
    return frozenset(f"__label__{n}" for n in found)


def _load_lid_model(source: str, base_dir: Path) -> Any:
    """A fastText model from a path, an http(s) URL (downloaded once into the user's cache) or a Hub
    model repo `hf:org/name` (its `model.bin`) or `hf:org/name/file.bin`."""
    path = _fetch_lid_model(source, base_dir)
    try:
        return _load_fasttext(str(path), path.stat().st_mtime_ns)
    except ValueError as e:
        raise WebSampleError(
            f"web_samples.language_filter.model: {source}: not a fastText model ({e})"
        ) from None


@lru_cache(maxsize=2)
def _load_fasttext(path: str, mtime_ns: int) -> Any:
    """Loaded once per file version: lid.176.bin is 126 MB, and a build opens its web samples twice."""
    import fasttext

    return fasttext.load_model(path)


def _fetch_lid_model(source: str, base_dir: Path) -> Path:
    field_name = "web_samples.language_filter.model"
    if source.startswith(("hf:", "hf://")):
        from huggingface_hub import hf_hub_download

        parts = source.removeprefix("hf://").removeprefix("hf:").split("/")
        if len(parts) < 2 or not all(parts):
            raise WebSampleError(f"{field_name}: {source}: expected hf:org/name or hf:org/name/file.bin")
        repo, filename = "/".join(parts[:2]), "/".join(parts[2:]) or "model.bin"
        try:
            return Path(hf_hub_download(repo, filename, endpoint=os.environ.get("HF_ENDPOINT")))
        except Exception as e:  # noqa: BLE001 - any Hub failure is reported with the model id
            raise WebSampleError(
                f"{field_name}: {source}: could not download ({type(e).__name__}: {e})"
            ) from None
    if source.startswith(("http://", "https://")):
        name = source.rsplit("/", 1)[-1].split("?")[0] or "model.bin"
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "textbookgen" / "lid"
        path = cache / f"{hashlib.sha256(source.encode()).hexdigest()[:16]}-{name}"
        if not path.is_file():  # a partial download never takes the final name
            cache.mkdir(parents=True, exist_ok=True)
            tmp = tempfile.NamedTemporaryFile(dir=cache, prefix=".part-", delete=False)
            try:
                with tmp, urllib.request.urlopen(source, timeout=60) as r:  # noqa: S310 (user-given URL)
                    shutil.copyfileobj(r, tmp)
            except OSError as e:
                Path(tmp.name).unlink(missing_ok=True)
                raise WebSampleError(f"{field_name}: {source}: could not download ({e})") from None
            os.replace(tmp.name, path)
        return path
    path = Path(source).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if not path.is_file():
        raise WebSampleError(f"{field_name}: language-ID model not found: {path}")
    return path


# ---- readers ------------------------------------------------------------------------------------
def _take(it: Iterable[str], n: int | None) -> Iterator[str]:
    for i, x in enumerate(it):
        if n is not None and i >= n:
            return
        yield x


def _read_source(src: str, *, text_field: str | None, split: str, config: str | None) -> Iterator[str]:
    if src.startswith(("hf:", "hf://datasets/")):
        return _read_hub(src.removeprefix("hf://datasets/").removeprefix("hf:"), text_field, split, config)
    if src.startswith(("http://", "https://")):
        name = src.rsplit("/", 1)[-1].split("?")[0]
        try:
            with urllib.request.urlopen(src, timeout=60) as r:  # noqa: S310 (user-given URL)
                data = r.read()
        except OSError as e:
            raise WebSampleError(f"{src}: could not download ({e})") from None
        return _read_bytes(data, name, src, text_field)
    path = Path(src)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _kind(p.name) != "unknown")
        if not files:
            raise WebSampleError(f"{path}: folder holds no parquet, jsonl, json or txt file")
        return (t for f in files for t in _read_bytes(f.read_bytes(), f.name, str(f), text_field))
    if not path.exists():
        raise WebSampleError(f"{path}: web-sample file not found")
    return _read_bytes(path.read_bytes(), path.name, str(path), text_field)


def _kind(name: str) -> str:
    n = name.lower().removesuffix(".gz")
    for ext, kind in (
        (".parquet", "parquet"),
        (".jsonl", "jsonl"),
        (".ndjson", "jsonl"),
        (".json", "json"),
        (".txt", "text"),
        (".text", "text"),
    ):
        if n.endswith(ext):
            return kind
    return "unknown"


def _read_bytes(data: bytes, name: str, where: str, text_field: str | None) -> Iterator[str]:
    kind = _kind(name)
    if name.lower().endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise WebSampleError(f"{where}: not a readable gzip file ({e})") from None
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(io.BytesIO(data))
        except (pa.ArrowException, OSError) as e:
            raise WebSampleError(f"{where}: not a readable parquet file ({e})") from None
        col = _text_column(
            table.schema.names,
            {n: str(t) for n, t in zip(table.schema.names, table.schema.types, strict=True)},
            text_field,
            where,
        )
        return (t for t in table.column(col).to_pylist() if isinstance(t, str))
    if kind in ("jsonl", "json"):
        return _read_json(data, kind, where, text_field)
    if kind == "text":
        text = decode_utf8(data, where, error=WebSampleError)
        return (d for d in re.split(r"\n\s*\n", text) if d.strip())
    raise WebSampleError(f"{where}: unknown web-sample format (parquet, jsonl, json or txt, optionally .gz)")


def _read_json(data: bytes, kind: str, where: str, text_field: str | None) -> Iterator[str]:
    """Documents of a JSON Lines file or a JSON array (or an object holding one): each row is a
    document string or an object whose `text_field` (found once, from the first object) holds one."""
    numbered: Iterable[tuple[int, Any]]
    if kind == "json":
        try:
            rows = json.loads(decode_utf8(data, where, error=WebSampleError))
        except json.JSONDecodeError as e:
            raise WebSampleError(f"{where}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
        if isinstance(rows, dict):
            rows = next((v for v in rows.values() if isinstance(v, list)), None)
        if not isinstance(rows, list):
            raise WebSampleError(f"{where}: expected a JSON array of documents (or an object holding one)")
        numbered = enumerate(rows, start=1)
    else:
        numbered = iter_jsonl_lines(io.BytesIO(data), where, error=WebSampleError, objects_only=False)
    field_name = text_field
    for lineno, row in numbered:
        if isinstance(row, str):
            yield row
            continue
        if not isinstance(row, dict):
            raise WebSampleError(f"{where}:{lineno}: expected a JSON object or string, got {type(row).__name__}")
        if field_name is None:
            field_name = _text_column(list(row), {k: type(v).__name__ for k, v in row.items()}, None, where)
        value = row.get(field_name)
        if value is None and field_name not in row:
            raise WebSampleError(f"{where}:{lineno}: no field {field_name!r} (fields: {list(row)}); set text_field "
                                 "to the text's")
        if isinstance(value, str):
            yield value


def _text_column(names: list[str], types: dict[str, str], text_field: str | None, where: str) -> str:
    if text_field:
        if text_field not in names:
            raise WebSampleError(f"{where}: no column {text_field!r} (columns: {names})")
        return text_field
    if "text" in names:
        return "text"
    strings = [n for n in names if types.get(n) in ("str", "string", "large_string")]
    if len(strings) == 1:
        return strings[0]
    raise WebSampleError(f"{where}: cannot tell which column holds the text ({names}); set text_field")


def hub_offline() -> bool:
    """Hugging Face offline mode: only what is in the local cache can be read. Set as huggingface_hub reads it
    (1, ON, YES or TRUE, any case): `HF_HUB_OFFLINE=0` is online."""
    return any(os.environ.get(name, "").upper() in {"1", "ON", "YES", "TRUE"}
               for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_reachable(timeout: float = 3.0) -> bool:
    """Fail fast offline instead of letting `datasets` retry for half a minute."""
    if hub_offline():
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection(
            (url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout
        ).close()
    except OSError:
        return False
    return True


def _read_hub(repo: str, text_field: str | None, split: str, config: str | None) -> Iterator[str]:
    try:
        import datasets
    except ImportError:
        raise WebSampleError(f"hf:{repo}: reading Hub datasets needs `pip install datasets`") from None
    if not hub_reachable():
        raise WebSampleError(f"hf:{repo}: the Hugging Face Hub is not reachable (offline?)")
    try:
        ds = datasets.load_dataset(repo, config, split=split, streaming=True)
    except Exception as e:  # noqa: BLE001 - any Hub failure is reported with the dataset id
        raise WebSampleError(f"hf:{repo}: could not open ({type(e).__name__}: {e})") from None
    rows = iter(ds)
    first = next(rows, None)
    if first is None:
        return
    # the text column is found on the first row, as in a local file: a name that is not there would skip
    # every row of a stream that may hold billions
    fld = _text_column(list(first), {k: type(v).__name__ for k, v in first.items()}, text_field, f"hf:{repo}")
    for row in itertools.chain([first], rows):
        value = row.get(fld)
        if isinstance(value, str):
            yield value
