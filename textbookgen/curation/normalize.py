"""Text normalisation for exact and near-duplicate detection, and word shingles as bytes."""

from __future__ import annotations

import re
import string
import unicodedata

import numpy as np

# diacritics stripped after NFD (accents over Latin, Greek, Cyrillic letters) and variation selectors (they
# pick a glyph, not a letter). Other combining marks are kept: Indic and Thai vowel signs, viramas, Arabic
# harakat and kana voicing marks are part of the word, and dropping them would merge की/के/को/का.
_COMBINING = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f"
                        "\ufe00-\ufe0f\U000e0100-\U000e01ef]")
# scripts written without spaces between words: Hiragana, Katakana, CJK ideographs (and their extensions);
# a character is a word with the voicing marks NFD splits off it (か + ゙ is が)
_CJK = re.compile("[\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f"
                  "\U00020000-\U0003134f][\u3099\u309a]*")


def _ascii_table() -> bytes:
    """bytes.translate table: ASCII punctuation, control characters and whitespace -> space, digits -> '0'."""
    table = bytearray(range(256))
    for c in (string.punctuation + "".join(map(chr, range(32))) + "\x7f").encode():
        table[c] = ord(" ")
    for c in string.digits.encode():
        table[c] = ord("0")
    return bytes(table)


_TABLE = _ascii_table()


def normalize_exact(text: str) -> str:
    """NFKC, case-folded, whitespace-collapsed: what "the same text" means for exact dedup. str.split() splits
    at the characters re's \\s matches (both str.isspace) and is 3x faster than re.sub: this ran serially over
    the whole corpus and was a quarter of a 200k-document dedup."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def simplify_bytes(text: str) -> bytes:
    """datatrove's `simplify_text`, as UTF-8 bytes: lowercase, digit runs -> "0", punctuation (anything
    not a word character, combining mark or space, and "_") -> space, diacritics stripped (NFD), single
    spaces. Unlike datatrove, each Chinese/Japanese character is a word of its own: those scripts put no
    spaces between words, so a whole clause would be one "word" and a one-character edit would change
    every shingle. And marks that are not accents stay in their word (see `_COMBINING`).

    Work is done on bytes with one translate table; only the few distinct non-ASCII characters of a
    text are looked at one by one (a regex over every character was the slowest step of MinHash)."""
    text = text.lower()
    if not text.isascii():
        chars = _non_ascii(text)
        if _COMBINING.search("".join(chars)) or not all(unicodedata.is_normalized("NFD", c) for c in chars):
            text = unicodedata.normalize("NFD", text)  # only when it changes something
            for c in _non_ascii(text):
                if _COMBINING.match(c):
                    text = text.replace(c, "")
            chars = _non_ascii(text)
        for c in chars:
            if c.isdecimal():
                text = text.replace(c, "0")
            elif not c.isalnum() and unicodedata.category(c)[0] != "M":  # punctuation, symbols, spaces
                text = text.replace(c, " ")
        if _CJK.search("".join(chars)):
            text = _CJK.sub(r" \g<0> ", text)
    return _squeeze(text.encode("utf-8").translate(_TABLE))


def _non_ascii(text: str) -> list[str]:
    """The distinct non-ASCII characters of `text`, from its UTF-32 code units (6x faster than set())."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    return [chr(c) for c in np.unique(codes[codes > 127]).tolist()]


def _squeeze(data: bytes) -> bytes:
    """Each run of spaces or of "0" -> one, leading and trailing spaces dropped, with one byte mask in
    numpy: memory stays at a few copies of the text (re.sub or split() make an object per match or word:
    30x the text's size), and the repeated bytes.replace passes it replaces took most of the time."""
    a = np.frombuffer(data, dtype=np.uint8)
    keep = np.ones(a.size, dtype=bool)
    np.not_equal(a[1:], a[:-1], out=keep[1:])
    keep[1:] |= (a[1:] != 32) & (a[1:] != 48)
    return a[keep].tobytes().strip(b" ")


def simplify_text(text: str) -> str:
    """`simplify_bytes` as str (for display and tests)."""
    return simplify_bytes(text).decode("utf-8")


def words_bytes(text: str) -> list[bytes]:
    """The simplified text's words, UTF-8 encoded (xxhash 4 hashes bytes, not str)."""
    return simplify_bytes(text).split()


def shingle_spans(data: bytes, n: int) -> tuple[list[int], list[int]]:
    """Start/end offsets of each word n-gram in single-spaced `data` (a slice is the joined n-gram)."""
    spaces = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 32)
    starts = np.concatenate(([0], spaces + 1))
    ends = np.concatenate((spaces, [len(data)]))
    if len(starts) <= n:
        return [0], [len(data)]
    return starts[: len(starts) - n + 1].tolist(), ends[n - 1 :].tolist()


def batch_shingle_spans(datas: list[bytes], n: int) -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray]:
    """`shingle_spans` of many texts at once: (their join by single spaces, start and end offsets of every
    shingle in it, each text's first shingle index with the total last). A text's words are those of
    `data.split(b" ")` (an empty text is one empty word), so its shingles are `shingle_spans`'s."""
    buf = b" ".join(datas)
    doc_start = np.cumsum([0] + [len(d) + 1 for d in datas[:-1]], dtype=np.int64)
    spaces = np.flatnonzero(np.frombuffer(buf, dtype=np.uint8) == 32)
    word_start = np.concatenate(([0], spaces + 1))
    word_end = np.concatenate((spaces, [len(buf)]))
    doc = np.searchsorted(doc_start, word_start, side="right") - 1  # the text each word is in
    first = np.searchsorted(doc, np.arange(len(datas)))  # each text's first word, then the total
    first = np.append(first, doc.size)
    words = np.diff(first)
    per_doc = np.maximum(words - n + 1, 1)  # a text of at most n words is one shingle
    offsets = np.concatenate(([0], np.cumsum(per_doc)))
    doc_of = np.repeat(np.arange(len(datas)), per_doc)
    start_word = first[:-1][doc_of] + np.arange(offsets[-1]) - offsets[:-1][doc_of]
    end_word = np.minimum(start_word + n - 1, first[1:][doc_of] - 1)
    return buf, word_start[start_word], word_end[end_word], offsets


def word_shingles(text: str, n: int) -> list[bytes]:
    """Word n-grams of the simplified text as bytes (with repeats; MinHash ignores them).

    A text of at most n words is one shingle, so short documents still get a signature."""
    data = simplify_bytes(text)
    starts, ends = shingle_spans(data, n)
    return [data[s:e] for s, e in zip(starts, ends, strict=True)]
