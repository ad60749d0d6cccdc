"""An extract ends at a sentence end, not at the full stop of an abbreviation ("Dr.", "No.", "U.S.", an
initial): about 2% of the C4, Wikipedia and DCLM extracts of /work/shared/data ended on one mid-sentence
("Prior to joining CCA in 2013, Dr.")."""

from __future__ import annotations

import pytest

from textbookgen.websamples import cut_at_sentence

# the openings of two C4 documents (c4_en_sample_1k, rows 129 and 219)
DOCTOR = (
    "Dr. Ajayi is a board-certified family physician and maintains an active clinical practice. Prior to joining "
    "CCA in 2013, Dr. Ajayi was an attending physician at Boston Medical Center's Department of Family Medicine."
)
SEEDS = (
    "SEC Tournament play begins Tuesday in Hoover, Alabama. No. 6 seed Vanderbilt (41-15, 18-12) faces No. 11 "
    "seed Missouri (26-29, 9-21) in single-elimination games."
)
LETTERS = "The company filed its patent in 2014. It now holds U.S. patent No. 9 and sells in the U.S. and Canada."
INITIAL = "The first courthouse was built in 1875. Its architect was H. B. Kelly of Boston, a local builder."


@pytest.mark.parametrize(
    ("text", "abbreviation", "sentence"),
    [
        (DOCTOR, "2013, Dr.", "active clinical practice."),
        (SEEDS, "faces No.", "Hoover, Alabama."),
        (LETTERS, "holds U.S.", "in 2014."),
        (INITIAL, "was H.", "in 1875."),
    ],
)
def test_an_abbreviation_does_not_end_an_extract(text: str, abbreviation: str, sentence: str):
    limit = text.index(abbreviation) + len(abbreviation)
    assert cut_at_sentence(text, limit).endswith(sentence)


def test_a_sentence_that_ends_with_a_word_like_an_abbreviation_still_ends():
    text = "The clinic is on Main Street. It opened in 2013. Patients come from every part of the city."
    assert cut_at_sentence(text, len(text) - 5).endswith("in 2013.")
    assert cut_at_sentence("They met on a Sunday. " * 30, 300).endswith("Sunday.")
