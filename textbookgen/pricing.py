"""USD prices per million tokens, so a run can show and cap what it spends.

Prices are list prices for standard API calls (batch calls cost `BATCH_DISCOUNT` of them); override
them with `prices=` on the Generator (`--price MODEL=IN,OUT` on the CLI, `prices:` in a recipe) when your
contract differs, or to price a self-hosted model. A model found in neither costs 0 (`is_priced` tells).
A name prices as a table entry only when it is that entry or one of its dated snapshots (`-2024-07-18`,
`-20250929`) or `-latest` aliases: any other suffix (`-pro`, `-mini`, `-0613`) may be a different model at a
different price, so it is unknown.
Variants that are priced models of their own (`gpt-5-codex`, `gpt-3.5-turbo-0125`) are table entries.
Prompt-cache rates resolve the same way (`resolve`), so a name never gets one model's price and another's
cache rate.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping

# model name -> (input USD per 1M tokens, output USD per 1M tokens); its dated snapshots price the same
# unless listed themselves (gpt-4o-2024-05-13 is the first, dearer gpt-4o)
PRICES: dict[str, tuple[float, float]] = {
    "gpt-5": (1.25, 10.00),
    "gpt-5-chat-latest": (1.25, 10.00),
    "gpt-5-codex": (1.25, 10.00),
    "gpt-5-pro": (15.00, 120.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-2024-05-13": (5.00, 15.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o-search-preview": (2.50, 10.00),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-3.5-turbo": (0.50, 1.50),
    "gpt-3.5-turbo-0125": (0.50, 1.50),
    "o1": (15.00, 60.00),
    "o1-pro": (150.00, 600.00),
    "o1-mini": (1.10, 4.40),
    "o3": (2.00, 8.00),
    "o3-pro": (20.00, 80.00),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
    "claude-opus-4-1": (15.00, 75.00),
    "claude-opus-4": (15.00, 75.00),
    "claude-opus-4-0": (15.00, 75.00),
    "claude-sonnet-4-5": (3.00, 15.00),
    "claude-sonnet-4": (3.00, 15.00),
    "claude-sonnet-4-0": (3.00, 15.00),
    "claude-haiku-4-5": (1.00, 5.00),
    "claude-3-7-sonnet": (3.00, 15.00),
    "claude-3-5-sonnet": (3.00, 15.00),
    "claude-3-5-haiku": (0.80, 4.00),
    "claude-3-opus": (15.00, 75.00),
    "claude-3-haiku": (0.25, 1.25),
}


# OpenAI's Batch API and Anthropic's Message Batches bill half the standard price for input and output
BATCH_DISCOUNT = 0.5

_CLAUDE = [m for m in PRICES if m.startswith("claude")]
# Prompt caching, as a fraction of the input price, per PRICES entry. OpenAI caches long prompt prefixes by
# itself and bills the cached part at a per-model rate (none for the -pro models, gpt-4o-2024-05-13,
# gpt-4-turbo, gpt-3.5-turbo, search previews); Anthropic bills a cache read at 0.1x and a (5-minute) cache
# write at 1.25x (a 1-hour one at 2x). A model not listed, or unknown, is charged the full input price.
CACHE_READ: dict[str, float] = {
    **dict.fromkeys(("gpt-5", "gpt-5-chat-latest", "gpt-5-codex", "gpt-5-mini", "gpt-5-nano"), 0.1),
    **dict.fromkeys(("gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o3", "o4-mini"), 0.25),
    **dict.fromkeys(("gpt-4o", "gpt-4o-mini", "o1", "o1-mini", "o3-mini"), 0.5),
    **dict.fromkeys(_CLAUDE, 0.1),
}
CACHE_WRITE: dict[str, float] = dict.fromkeys(_CLAUDE, 1.25)
CACHE_WRITE_1H: dict[str, float] = dict.fromkeys(_CLAUDE, 2.0)  # Anthropic's 1-hour cache (`"ttl": "1h"`)

# Anthropic's tool-use system prompt: input tokens it adds to every request that sends tools (beside the tools'
# own definitions), by model and tool_choice: (auto or none, any or tool), from Anthropic's tool-use pricing table.
# A Claude model not listed (a newer one) is counted at the current models' `TOOL_PROMPT_DEFAULT`.
TOOL_PROMPT_TOKENS: dict[str, tuple[int, int]] = {
    **dict.fromkeys(("claude-opus-4-1", "claude-opus-4", "claude-opus-4-0", "claude-sonnet-4-5", "claude-sonnet-4",
                     "claude-sonnet-4-0", "claude-haiku-4-5", "claude-3-7-sonnet"), (346, 313)),
    **dict.fromkeys(("claude-3-5-haiku", "claude-3-haiku"), (264, 340)),
    "claude-3-opus": (530, 281),
    "claude-3-sonnet": (159, 235),
}
TOOL_PROMPT_DEFAULT = (346, 313)

# what may follow a table entry's name and still be that model: a dated snapshot or the `-latest` alias
_SNAPSHOT = re.compile(r"(?P<base>.+)-(?:\d{4}-\d{2}-\d{2}|\d{8}|latest)")


def resolve(model: str, names: Mapping[str, object] | None = None) -> str | None:
    """The table entry (PRICES, or `names`) a model is: its exact name (a router's `openai/` prefix dropped),
    else the entry it is a dated snapshot or `-latest` alias of (`gpt-4o-mini-2024-07-18` is `gpt-4o-mini`);
    None when it is none of them."""
    table = PRICES if names is None else names
    name = model.rsplit("/", 1)[-1]  # also "openai/gpt-4o" style names of routers
    snapshot = _SNAPSHOT.fullmatch(name)
    return next((key for key in (model, name, snapshot["base"] if snapshot else None) if key in table), None)


def closest_model(model: str, names: Iterable[str] = ()) -> str | None:
    """The known model (PRICES, or `names`: a recipe's own prices) that an unknown name most likely misspells
    (`gpt-4o-minii`: `gpt-4o-mini`), for a "did you mean" before the hint on pricing a model of one's own.
    Only a name with the same numbers: `o5-mini` or `claude-sonnet-5` is a newer model, not a typo of `o4-mini`."""
    name = model.rsplit("/", 1)[-1]
    snapshot = _SNAPSHOT.fullmatch(name)
    name = snapshot["base"] if snapshot else name
    known = [k for k in [*PRICES, *names] if _numbers(k) == _numbers(name)]
    near = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
    return near[0] if near else None


def _numbers(name: str) -> list[str]:
    """The digit groups of a model name: its version (`claude-opus-4-1`: 4, 1), which a typo rarely changes."""
    return re.findall(r"\d+", name.rsplit("/", 1)[-1])


def unknown_model_lead(models: Iterable[tuple[str, str]], names: Iterable[str] = ()) -> str:
    """`WHAT is not in the price table: did you mean NAME? Otherwise, ` for each (what, model) with a known model
    close to it (`closest_model`), else "": the likelier cause of a missing price is a typo."""
    names = list(names)
    guesses = [f"{what} is not in the price table: did you mean {near}?" for what, model in models
               if (near := closest_model(model, names)) is not None]
    return " ".join(guesses) + " Otherwise, " if guesses else ""


def price_of(model: str, prices: Mapping[str, tuple[float, float]] | None = None) -> tuple[float, float]:
    """(input, output) USD per 1M tokens of the entry the model resolves to, else (0, 0): unknown."""
    table = {**PRICES, **(prices or {})}
    entry = resolve(model, table)
    return table[entry] if entry is not None else (0.0, 0.0)


def is_priced(model: str, prices: Mapping[str, tuple[float, float]] | None = None) -> bool:
    """Whether the model has a price, in PRICES or `prices` ($0 given on purpose included): one without
    counts as $0, so a dollar budget can never stop its requests."""
    return resolve(model, {**PRICES, **(prices or {})}) is not None


def cache_rates(model: str) -> tuple[float, float]:
    """(read, write) price of a cached input token, as a fraction of the input price of the PRICES entry the
    model resolves to (as `price_of` resolves it); 1.0 for a model without caching or unknown."""
    entry = resolve(model)
    return CACHE_READ.get(entry, 1.0), CACHE_WRITE.get(entry, 1.0)


def cache_write_1h_rate(model: str) -> float:
    """The price of an input token written to Anthropic's 1-hour prompt cache, as a fraction of the input price (as
    `cache_rates`); 1.0 for a model without one or unknown."""
    return CACHE_WRITE_1H.get(resolve(model), 1.0)


def estimate_cost(model: str, input_tokens: int, output_tokens: int,
                  prices: Mapping[str, tuple[float, float]] | None = None) -> float:
    """USD cost of one call with this usage."""
    price_in, price_out = price_of(model, prices)
    return (input_tokens * price_in + output_tokens * price_out) / 1e6


def tool_prompt_tokens(model: str, tool_choice: object) -> int:
    """The input tokens Anthropic's hidden tool-use system prompt adds to a request to `model` that sends tools, at
    its `tool_choice` (None: auto). It is billed but in no part of the request body, so an estimate from the body
    misses it: 159 to 530 tokens by Anthropic's table (346 or 313 on current models), more than a short prompt."""
    kind = tool_choice.get("type") if isinstance(tool_choice, Mapping) else None
    auto, forced = TOOL_PROMPT_TOKENS.get(resolve(model, TOOL_PROMPT_TOKENS) or "", TOOL_PROMPT_DEFAULT)
    return forced if kind in ("any", "tool") else auto
