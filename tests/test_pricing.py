"""pricing.price_of: a name is priced as a table entry only when it is that model (its dated snapshots and
`-latest` aliases); anything else is unknown, so a budget warns instead of counting at a cheaper model's price.
cache_rates resolves a name the same way."""

from __future__ import annotations

import pytest

from textbookgen.engine import Generator
from textbookgen.pricing import CACHE_READ, CACHE_WRITE, PRICES, cache_rates, price_of


@pytest.mark.parametrize("model, price", [
    ("o1-pro", (150.0, 600.0)), ("o3-pro", (20.0, 80.0)), ("gpt-5-pro", (15.0, 120.0)),
    ("gpt-4o-2024-05-13", (5.0, 15.0)),  # the first gpt-4o snapshot, dearer than gpt-4o
    ("o1-pro-2025-03-19", (150.0, 600.0)),
])
def test_pro_models_and_the_first_gpt_4o_have_their_own_list_prices(model, price):
    assert price_of(model) == price


@pytest.mark.parametrize("model, base", [
    ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"), ("gpt-4o-2024-08-06", "gpt-4o"),
    ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"), ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
    ("openai/gpt-4o-mini", "gpt-4o-mini"), ("anthropic/claude-haiku-4-5-20251001", "claude-haiku-4-5"),
])
def test_dated_snapshots_latest_aliases_and_router_names_price_as_their_model(model, base):
    assert price_of(model) == price_of(base) != (0.0, 0.0)


@pytest.mark.parametrize("model, price", [
    ("gpt-5-chat-latest", (1.25, 10.0)), ("gpt-5-codex", (1.25, 10.0)), ("gpt-3.5-turbo-0125", (0.5, 1.5)),
    ("gpt-4o-search-preview", (2.5, 10.0)), ("gpt-4o-search-preview-2025-03-11", (2.5, 10.0)),
])
def test_variants_that_are_priced_models_of_their_own_have_their_list_prices(model, price):
    assert price_of(model) == price


@pytest.mark.parametrize("model", ["gpt-4o-audio-preview", "gpt-3.5-turbo-1106", "o3-deep-research",
                                   "gpt-4o-mini-tts"])
def test_any_other_suffix_is_another_model_of_unknown_price(model):
    assert price_of(model) == (0.0, 0.0)


def test_user_prices_extend_to_their_snapshots():
    assert price_of("my-model-20250101", {"my-model": (1.0, 2.0)}) == (1.0, 2.0)


def test_a_budget_on_an_unknown_suffix_is_refused_instead_of_using_the_base_price():
    with pytest.raises(ValueError, match="model 'gpt-4o-mini-tts' has no known price"):
        Generator("openai", "gpt-4o-mini-tts", api_key="sk-x", max_cost_usd=10.0, progress=False)
    gen = Generator("openai", "gpt-4o-mini-tts", api_key="sk-x", progress=False)
    assert gen.price_in == gen.price_out == 0


@pytest.mark.parametrize("model, rates", [
    ("gpt-4o-mini-2024-07-18", (0.5, 1.0)), ("openai/gpt-5-codex", (0.1, 1.0)),
    ("claude-sonnet-4-5-20250929", (0.1, 1.25)),
    ("gpt-4o-2024-05-13", (1.0, 1.0)), ("gpt-5-pro", (1.0, 1.0)), ("o3-pro-2025-06-10", (1.0, 1.0)),  # no caching
    ("gpt-4o-mini-tts", (1.0, 1.0)), ("claude-next", (1.0, 1.0)),  # unknown: no price, no cache rate
])
def test_cache_rates_resolve_a_name_as_its_price_does(model, rates):
    assert cache_rates(model) == rates


def test_every_cache_rate_belongs_to_a_priced_model():
    assert set(CACHE_READ) | set(CACHE_WRITE) <= set(PRICES)


def test_a_model_is_priced_by_the_table_or_by_a_price_given_for_it_even_zero():
    """A self-hosted model has no list price: a dollar budget can count its requests only at a price given."""
    from textbookgen.pricing import is_priced

    assert is_priced("gpt-4o-mini-2024-07-18") and is_priced("openai/gpt-4o")
    assert not is_priced("Qwen/Qwen2.5-7B-Instruct") and not is_priced("gpt-4o-mini-pro")
    assert is_priced("Qwen/Qwen2.5-7B-Instruct", {"Qwen/Qwen2.5-7B-Instruct": (0.0, 0.0)})  # free, said on purpose
