"""The emulator's answers to a string schema with a `pattern` (drawn by rstr's xeger, 2430873): the same in every
process, and a pattern rstr cannot spell is a fallback answer, not a crash (a 500 for every request)."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys

import pytest
from pydantic import BaseModel, Field

from textbookgen.testing import responder
from textbookgen.testing.responder import _matching, from_schema

_DRAW = "import random; from textbookgen.testing.responder import _matching; " \
        "print(repr([_matching(p, dict(), random.Random(7)) for p in PATTERNS]))"


@pytest.mark.parametrize("patterns", [[r"^[^,;]{12}$", r"^\W{12}$"]])
def test_a_draw_is_the_same_whatever_the_processs_hash_seed(patterns):
    """rstr spelled `[^,;]` and `\\W` from a set, whose order follows PYTHONHASHSEED: the same request to the
    emulator got another answer in another run (the module says: the same request always gets the same text)."""
    drawn = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", _DRAW.replace("PATTERNS", repr(patterns))], env=env, check=True,
                             capture_output=True, text=True).stdout
        drawn.add(out)
    assert len(drawn) == 1, drawn


@pytest.mark.parametrize("pattern", [
    r"^[A-Z]{150}$",  # a least count over rstr's 100: ValueError
    r"^a{1000}$",
    r"^(?>ab)+c$",  # atomic group: KeyError
    r"^a++b$",  # possessive repeat: KeyError
    r"^(a)?(?(1)b|c)$",  # a conditional group: KeyError
])
def test_patterns_rstr_did_not_spell_are_matched(pattern):
    text = _matching(pattern, {}, random.Random(0))
    assert text is not None and re.search(pattern, text), text


@pytest.mark.parametrize("pattern", [r"^(a{60000}){60000}$", r"^[^\x00-\x7f]$"])
def test_a_pattern_no_draw_can_meet_gives_way_to_the_fallback(pattern, monkeypatch):
    """3.6 billion characters, or a class of no printable character: None (the caller writes a plain string).
    The longest draw is cut to 1,000 characters here: each of the 60 draws spelled 100,000 first (7 s)."""
    monkeypatch.setattr(responder, "_PATTERN_CHARS", 1_000)
    assert _matching(pattern, {}, random.Random(0)) is None


def test_a_draw_stops_as_soon_as_it_is_too_long(monkeypatch):
    """The limit holds piece by piece, not once a repeat is spelled whole: under a 1,000-character limit,
    2,000 repeats of 900 characters stop after ~1,800 characters (a check after the loop built 1.8 MB first; the
    limit cut to 1,000 above must not hide that)."""
    import tracemalloc

    monkeypatch.setattr(responder, "_PATTERN_CHARS", 1_000)
    tracemalloc.start()
    try:
        assert _matching(r"^(a{900}){2000}$", {}, random.Random(0)) is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, peak


def test_a_backreference_to_a_skipped_group_is_drawn_again():
    text = _matching(r"^(?:(a)|b)\1$", {}, random.Random(0))
    assert text == "aa"


class Code(BaseModel):
    """Patterns whose open repeats must run long to meet min_length."""

    word: str = Field(pattern=r"^[a-z]+$", min_length=50)
    exact: str = Field(pattern=r"^[a-z]+$", min_length=40, max_length=40)
    bounded: str = Field(pattern=r"^[a-z]{1,200}$", min_length=150)
    pair: str = Field(pattern=r"^[a-z]+-[a-z]+$", min_length=30, max_length=31)


def test_patterned_strings_keep_their_min_length():
    """A count drawn anywhere in 1..51 met min_length=50 in 2 of 51 draws: most answers had a field too short and a
    strict client (the llm's schema check) refused them (before: all 100 of these instances invalid)."""
    schema = Code.model_json_schema()
    for seed in range(100):
        Code.model_validate(from_schema(schema, "Algebra", None, random.Random(seed)))
