"""A plan for taxonomy growth that a journal answers in part (a rerun after a budget stop) counts only the calls
still to pay for: it used to plan every call again."""

from __future__ import annotations

import io
from pathlib import Path

import polars as pl
import pytest

from textbookgen.build import PROMPT_SCHEMA, estimate_grow
from textbookgen.engine import Generator
from textbookgen.plan import Plan, _budget_line, estimate_grow_left, make_plan, print_plan
from textbookgen.recipe import GrowConfig, load_recipe
from textbookgen.taxonomy import Taxonomy, grow
from textbookgen.testing.emulator import Emulator, EmulatorConfig

ROOT = Path(__file__).resolve().parents[1]
COMMONSENSE = ROOT / "textbookgen" / "topics" / "commonsense.yaml"


def test_a_rerun_after_a_budget_stop_plans_only_the_grow_calls_the_journal_does_not_answer(tmp_path):
    cfg = GrowConfig(target=700)
    journal = tmp_path / "grow.sqlite"
    with Emulator(EmulatorConfig(latency_median_s=0.0005)) as emu:
        def grow_on(budget: float | None) -> None:
            gen = Generator("openai", "gpt-4o-mini", base_url=emu.openai_base_url, api_key="k", journal=journal,
                            progress=False, max_cost_usd=budget)
            grow(Taxonomy.load(COMMONSENSE), gen, cfg.target, seed=3)

        grow_on(0.003)  # stopped by the budget part way
        paid = emu.billed
        roots = Taxonomy.load(COMMONSENSE)
        fresh = estimate_grow(len(roots.leaves()), cfg)
        left = estimate_grow_left(roots, cfg, journal, provider="openai", model="gpt-4o-mini", seed=3)
        assert 0 < paid < fresh["calls"] and left["answered"] == paid
        grow_on(None)
        rerun = emu.billed - paid
    assert rerun < fresh["calls"]  # what the plan said before
    assert abs(left["calls"] - rerun) <= 0.05 * rerun
    assert left["output_tokens_max"] == left["calls"] * cfg.max_tokens
    assert 0 < left["input_tokens"] < left["input_tokens_max"] and left["paid_usd"] > 0
    assert len(roots.leaves()) == left["leaves_before"] == 125  # the roots are not grown by the plan


@pytest.mark.parametrize("journal", ["none.sqlite", "empty.sqlite"])
def test_without_answers_the_replayed_growth_plans_what_estimate_grow_does(tmp_path, journal):
    (tmp_path / "empty.sqlite").touch()  # a run that never got to create its journal's tables: no answers yet
    roots = Taxonomy.load(COMMONSENSE)
    cfg = GrowConfig(target=2000)
    left = estimate_grow_left(roots, cfg, tmp_path / journal, provider="openai", model="m", seed=0)
    fresh = estimate_grow(125, cfg)
    assert left["answered"] == 0 and left["paid_usd"] == 0
    assert abs(left["calls"] - fresh["calls"]) <= 0.05 * fresh["calls"]
    assert left["input_tokens"] == pytest.approx(fresh["input_tokens"], rel=0.15)


def test_the_plan_prices_the_calls_left_and_says_how_many_the_journal_answers():
    r = load_recipe(ROOT / "recipes" / "phi15-textbooks.yaml", {"budget.max_cost_usd": 0.1})
    g = {"leaves_before": 125, "target": 20000, "calls": 10, "answered": 2190, "input_tokens": 2000,
         "input_tokens_max": 2400, "output_tokens": 1300, "output_tokens_max": 10240, "paid_usd": 0.5}
    plan = make_plan(pl.DataFrame([], schema=PROMPT_SCHEMA), r, n_leaves=125, expected_tokens={}, grow=g)
    own = plan.estimates[0]
    assert own.cost_usd == pytest.approx((2000 * 0.15 + 1300 * 0.6) / 1e6)
    assert own.cost_usd_max == pytest.approx((2400 * 0.15 + 10240 * 0.6) / 1e6)
    from rich.console import Console

    out = io.StringIO()
    print_plan(plan, Console(file=out, width=400), how_to_run="x")
    assert "about 10 LLM calls still to pay for; 2,190 answered by the grow journal (free, $0.5 paid there)" in (
        out.getvalue())
    # $0.5 paid for growth and ~$0.001 left: over the $0.1 budget, though what is left alone fits in it
    assert "The expected $0.5011 ($0.5 paid for growth, $0.00108 for the rest) is over it" in _budget_line(plan)


def test_the_budget_line_counts_growth_paid_once(tmp_path):
    plan = Plan(recipe="r", model="m", provider="openai-compatible", n_prompts=0, n_leaves=10, topics_used=0,
                per_template={}, per_audience={}, per_subject={}, top_topics=[], with_web_extract=0,
                input_tokens=0, output_tokens_expected=0, output_tokens_max=0, time_s=1.0, time_basis="",
                estimates=[], budget_usd=1.0, spent_usd=0.3, grow={"paid_usd": 0.3})
    from textbookgen.plan import ModelEstimate

    plan.estimates = [ModelEstimate("m", 0.6, 0.9, True)]
    assert "stop short" not in _budget_line(plan)
    plan.estimates = [ModelEstimate("m", 0.8, 0.9, True)]
    assert "The expected $1.10 ($0.3 paid for growth, $0.8 for the rest) is over it" in _budget_line(plan)


def test_a_build_plan_after_a_budget_stopped_growth_prices_only_the_calls_left(tmp_path):
    """`textbookgen build` without keys after growth the budget stopped: the plan's growth is what the rerun pays."""
    from textbookgen.build import BuildError, build

    with Emulator(EmulatorConfig(latency_median_s=0.0005)) as emu:
        over = {"output": str(tmp_path / "o"), "provider.base_url": emu.openai_base_url, "samples": 4,
                "web_samples": None, "taxonomy.grow": {"target": 700}}
        with pytest.raises(BuildError):
            build(load_recipe(ROOT / "recipes" / "quickstart.yaml", {**over, "budget.max_cost_usd": 0.003}),
                  progress=False)
        paid = emu.billed
        recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml", over)
        g = build(recipe, plan_only=True, progress=False).plan.grow
        build(recipe, progress=False)
    assert g["answered"] == paid and abs(g["calls"] + 4 - (emu.billed - paid)) <= 0.05 * g["calls"]
