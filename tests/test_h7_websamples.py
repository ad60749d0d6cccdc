"""`WebSamples` from Python: a language filter given as a plain name is refused up front, saying what to give."""

from __future__ import annotations

import pytest

from textbookgen.websamples import ScriptFilter, WebSamples, language_scripts

TEXTS = ["The moon pulls on the oceans, and the water rises and falls twice a day along most coasts. " * 4,
         "Луна притягивает воду океанов, и дважды в сутки вода поднимается и опускается у берегов. " * 4]


def test_a_language_name_as_filter_is_refused_naming_the_filter_to_give():
    with pytest.raises(TypeError, match=r"language_filter must be a LanguageFilter, such as "
                                        r"ScriptFilter\(language_scripts\('English'\)\), not str 'en'"):
        WebSamples.from_texts(TEXTS, language_filter="en")


def test_the_filter_the_message_names_keeps_the_language():
    pool = WebSamples.from_texts(TEXTS, language_filter=ScriptFilter(language_scripts("English")))
    assert len(pool) == 1 and pool.extracts[0].text.startswith("The moon") and pool.stats["language_dropped"] == 1
