"""The plan reports how diverse the prompts are and says what its token counts are."""

from __future__ import annotations

import io
from pathlib import Path

import polars as pl
import pytest

from textbookgen.build import open_web_samples, render_prompts
from textbookgen.plan import make_plan, print_plan, prompt_diversity
from textbookgen.recipe import load_recipe
from textbookgen.taxonomy import Taxonomy

ROOT = Path(__file__).resolve().parents[1]


def _row(prompt: str, topic: str, audience: str = "general") -> dict[str, str]:
    return {"prompt": prompt, "topic_id": topic, "template": "qa", "audience": audience, "style": "academic",
            "format": "markdown"}


def test_prompt_diversity_counts_duplicates_repeated_cells_and_ngrams():
    df = pl.DataFrame([
        _row("write about light and colour now", "t1"),
        _row("write about light and colour now", "t1"),  # the same prompt twice
        _row("write about sound waves for kids", "t2"),
        _row("write about sound waves with an extract", "t2"),  # same cell, another web extract
        _row("write about sound waves for experts", "t2", audience="college"),
    ])
    d = prompt_diversity(df)
    assert (d["duplicate_prompts"], d["repeated_cells"]) == (1, 2)
    assert d["duplicate_prompt_rate"] == pytest.approx(0.2)
    # 3 + 3 + 3 + 4 + 3 word 4-grams, 10 distinct: the repeated prompt and the shared openings add none
    assert d["distinct_4grams"] == pytest.approx(10 / 16)
    assert (d["per_topic_min"], d["per_topic_max"]) == (2, 3)


def test_plan_reports_diversity_and_states_its_token_basis():
    r = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    tax = Taxonomy.load(ROOT / "textbookgen" / "topics" / "commonsense.yaml")
    prompts = render_prompts(r, tax, open_web_samples(r))
    plan = make_plan(prompts, r, n_leaves=len(tax.leaves()), expected_tokens={"qa": 700})
    assert plan.diversity == prompt_diversity(prompts) and plan.to_dict()["diversity"]["ngram_sample"] == 300
    from rich.console import Console

    out = io.StringIO()
    print_plan(plan, Console(file=out, width=400), how_to_run="textbookgen build x")
    text = out.getvalue()
    assert "Diversity: " in text and "exact duplicate prompts" in text
    assert "4 characters a token" in text and "upper bound" in text
