"""normalize_exact collapses whitespace with str.split (faster than a regex): the exact-dedup key must be what
the regex definition gave, for every character Python counts as whitespace, or stored keys would change."""

from __future__ import annotations

import re
import sys
import unicodedata

from textbookgen.curation.exact import exact_key
from textbookgen.curation.normalize import normalize_exact

SPACES = [chr(c) for c in range(sys.maxunicode + 1) if re.fullmatch(r"\s", chr(c))]


def _reference(text: str) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text).casefold()).strip()


def test_every_whitespace_character_collapses_as_the_regex_did() -> None:
    assert len(SPACES) > 20  # ASCII, NBSP, the U+2000 block, ideographic space, the 0x1c-0x1f separators
    for ch in SPACES:
        text = f"{ch}Straße{ch}{ch}ﬁne\t{ch}Ⅻ {ch}"
        assert normalize_exact(text) == _reference(text) == "strasse fine xii", hex(ord(ch))


def test_zero_width_and_joiners_are_not_whitespace() -> None:
    text = "a\u200bb\u2060c\ufeffd \u00a0e"  # zero-width space, word joiner, BOM: kept, as the regex kept them
    assert normalize_exact(text) == _reference(text)
    assert exact_key("A  b\u3000c") == exact_key("a b c") != exact_key("a\u200bb c")
