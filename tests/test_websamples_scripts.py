"""Extracts of alphabets and abugidas with their own full stop (Armenian, Ethiopic, Khmer, Myanmar) end at
a sentence, as Latin, Devanagari and Urdu text does; they used to be cut mid-sentence at a word boundary."""

from __future__ import annotations

import pytest

from textbookgen.websamples import cut_at_sentence

SENTENCES = {
    "Armenian": "Հայաստանը լեռնային երկիր է Հարավային Կովկասում։ ",
    "Amharic": "ኢትዮጵያ በአፍሪካ ቀንድ የምትገኝ ሀገር ናት። ",
    "Amharic question": "ኢትዮጵያ በአፍሪካ ቀንድ የምትገኝ ሀገር ናት፧ ",
    "Khmer": "កម្ពុជា ជា ប្រទេស មួយ នៅ អាស៊ី អាគ្នេយ៍។ ",
    "Myanmar": "မြန်မာနိုင်ငံသည် အရှေ့တောင်အာရှတွင် တည်ရှိ သည်။ ",
}


@pytest.mark.parametrize("language", list(SENTENCES))
def test_an_extract_ends_at_the_scripts_full_stop(language: str):
    sentence = SENTENCES[language]
    cut = cut_at_sentence(sentence * 60, 1000)
    assert cut.endswith(sentence.strip()), cut[-40:]
    assert len(cut) > 1000 - len(sentence)


def test_a_full_stop_inside_a_word_run_does_not_end_a_sentence():
    """As with '.', a mark followed by more text (no space) is no sentence end."""
    text = "Հայաստանը։երկիր " * 100
    assert not cut_at_sentence(text, 200).endswith("։")
