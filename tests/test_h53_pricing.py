"""The pricing "did you mean": a typo, never a newer model (another version number) of a known one."""

from __future__ import annotations

import pytest

from textbookgen.pricing import closest_model


@pytest.mark.parametrize("model", ["o5-mini", "gpt-4.5", "claude-opus-4-2", "claude-sonnet-5"])
def test_a_newer_model_is_not_taken_for_a_typo_of_a_known_one(model):
    """These were answered "did you mean o4-mini / gpt-4.1 / claude-opus-4-1 / claude-sonnet-4-5?"."""
    assert closest_model(model) is None


@pytest.mark.parametrize(("model", "near"), [("gpt-4o-minii", "gpt-4o-mini"), ("gpt4o-mini", "gpt-4o-mini"),
                                             ("claude-sonet-4-5", "claude-sonnet-4-5")])
def test_a_typo_with_the_same_numbers_still_gets_its_suggestion(model, near):
    assert closest_model(model) == near
