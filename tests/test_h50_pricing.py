"""A mistyped model name under a dollar budget says "did you mean" before the hint on pricing one's own model."""

from __future__ import annotations

from pathlib import Path

import pytest

from textbookgen.engine import unpriced_budget
from textbookgen.recipe import RecipeError, load_recipe

REPO = Path(__file__).resolve().parents[1]


def test_a_recipe_model_typo_is_named_with_the_model_it_likely_means():
    with pytest.raises(RecipeError) as e:
        load_recipe(REPO / "recipes" / "quickstart.yaml", overrides={"model": "gpt-4o-minii"})
    assert str(e.value).startswith(f"{REPO / 'recipes' / 'quickstart.yaml'}:"), str(e.value)
    assert (": budget.max_cost_usd: gpt-4o-minii (model) is not in the price table: did you mean gpt-4o-mini? "
            "Otherwise, gpt-4o-minii (model) has no price") in str(e.value)


def test_the_did_you_mean_covers_routers_snapshots_and_the_recipe_s_own_prices():
    from textbookgen.pricing import closest_model

    assert closest_model("openai/gpt-4o-minii") == "gpt-4o-mini"
    assert closest_model("gpt-4o-minii-2024-07-18") == "gpt-4o-mini"
    assert closest_model("Qwen/Qwen2.5-7B-Instruc", ["Qwen/Qwen2.5-7B-Instruct"]) == "Qwen/Qwen2.5-7B-Instruct"
    assert closest_model("my-local-llm") is None


def test_generate_max_cost_on_a_typo_says_did_you_mean_and_a_self_hosted_model_does_not():
    assert unpriced_budget("claude-sonet-4-5").startswith(
        "model 'claude-sonet-4-5' is not in the price table: did you mean claude-sonnet-4-5? Otherwise, max_cost_usd")
    assert unpriced_budget("my-local-llm").startswith("max_cost_usd (--max-cost) is set but model 'my-local-llm'")
