"""Text normalisation for exact and near-duplicate detection, and word shingles as bytes."""

from __future__ import annotations

import re
import unicodedata

_WS = re.compile(r"\s+")
_PUNCT = re.compile(r"[^\w\s]|_")
_DIGITS = re.compile(r"\d+")


def normalize_exact(text: str) -> str:
    """NFKC, case-folded, whitespace-collapsed: what "the same text" means for exact dedup."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def simplify_text(text: str) -> str:
    """datatrove's `simplify_text` for MinHash: lowercase, digits -> 0, punctuation -> space,
    diacritics stripped (NFD), whitespace collapsed. Copies that differ only in these still match."""
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = _DIGITS.sub("0", text)
    text = _PUNCT.sub(" ", text)
    return _WS.sub(" ", text).strip()


def word_shingles(text: str, n: int) -> list[bytes]:
    """Distinct word n-grams of the simplified text, UTF-8 encoded (xxhash needs bytes, not str).

    A text of fewer than n words is one shingle (so short docs still get a signature)."""
    words = simplify_text(text).split(" ")
    if len(words) <= n:
        return [" ".join(words).encode("utf-8")]
    return list({" ".join(words[i : i + n]).encode("utf-8") for i in range(len(words) - n + 1)})
