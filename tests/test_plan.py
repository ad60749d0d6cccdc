"""The plan reports how diverse the prompts are and says what its token counts are."""

from __future__ import annotations

import io
from pathlib import Path

import polars as pl
import pytest

from textbookgen.build import open_web_samples, render_prompts
from textbookgen.plan import _request_tokens, make_plan, print_plan, prompt_diversity
from textbookgen.recipe import RecipeError, load_recipe
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
    assert "characters weighed by script" in text and "upper bound" in text


def _text(plan) -> str:
    from rich.console import Console

    out = io.StringIO()
    print_plan(plan, Console(file=out, width=400), how_to_run="textbookgen build x")
    return out.getvalue()


def test_the_plan_prices_a_self_hosted_model_at_the_recipes_price_and_refuses_a_budget_it_cannot_stop():
    quick = ROOT / "recipes" / "quickstart.yaml"
    own = {"model": "my/llm", "provider.name": "openai-compatible", "provider.base_url": "http://127.0.0.1:9/v1"}
    with pytest.raises(RecipeError, match=r"budget.max_cost_usd: my/llm \(model\) has no price"):
        load_recipe(quick, own)  # a dollar budget it could never stop is refused before any plan
    r = load_recipe(quick, {**own, "budget": None})
    tax = Taxonomy.load(r.taxonomy_path())
    prompts = render_prompts(r, tax, open_web_samples(r))
    unpriced = make_plan(prompts, r, n_leaves=len(tax.leaves()), expected_tokens={}, notes=r.notes())
    assert not unpriced.estimates[0].priced and unpriced.estimates[0].cost_usd == 0
    free = make_plan(prompts, load_recipe(quick, own, prices={"my/llm": (0.0, 0.0)}), n_leaves=len(tax.leaves()),
                     expected_tokens={})  # a free server of your own, said on purpose: the budget holds
    assert free.estimates[0].priced and "the build stops sending requests when it is reached" in _text(free)
    priced = load_recipe(quick, own, prices={"my/llm": (1.0, 2.0)})
    plan = make_plan(prompts, priced, n_leaves=len(tax.leaves()), expected_tokens={})
    expected = (plan.input_tokens * 1.0 + plan.output_tokens_expected * 2.0) / 1e6
    assert plan.estimates[0].priced and plan.estimates[0].cost_usd == pytest.approx(expected)
    assert "the build stops sending requests when it is reached" in _text(plan)


def test_a_plan_on_an_output_folder_says_what_its_journal_answers_and_what_the_rest_costs(tmp_path):
    """What the plan counts as answered is what the build then does not send (the engine's replay and reuse)."""
    from textbookgen.build import build
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    quick = ROOT / "recipes" / "quickstart.yaml"
    with Emulator(EmulatorConfig(latency_median_s=0.002)) as emu:
        over = {"output": str(tmp_path / "o"), "provider.base_url": emu.openai_base_url, "samples": 12,
                "web_samples": None}

        def plan_then_build(send: bool = True, **sets):
            recipe = load_recipe(quick, {**over, **sets})
            plan = build(recipe, plan_only=True, progress=False).plan
            billed = emu.billed
            if send:
                build(recipe, progress=False)
            return plan, emu.billed - billed

        first, sent = plan_then_build()
        assert first.journal is None and sent == 12  # no journal yet: nothing to say
        more, sent = plan_then_build(samples=20)  # the first 12 prompts are the same
        j = more.journal
        assert (j["answered"], j["new"], j["refused"], j["batch"], sent) == (12, 8, 0, 0, 8)
        assert 0 < j["new_cost_usd"] <= j["new_cost_usd_max"] < more.estimates[0].cost_usd
        assert "Journal: 12 of 20 prompts already answered in the journal (free), 8 new, $0.00" in _text(more)
        # a larger max_tokens: answers that stopped on their own within it are reused, free
        longer, sent = plan_then_build(samples=20, **{"sampling.max_tokens": 1600})
        assert (longer.journal["answered"], longer.journal["new"], sent) == (20, 0, 0)
        colder, _ = plan_then_build(False, samples=20, **{"sampling.temperature": 0.3})  # every request changes
        assert (colder.journal["answered"], colder.journal["new"]) == (0, 20)


def test_journal_states_tell_refusals_the_journal_replays_from_new_requests(tmp_path):
    from textbookgen.build import document_requests
    from textbookgen.engine import Generator
    from textbookgen.plan import journal_states
    from textbookgen.testing.emulator import Emulator, EmulatorConfig, Fault

    r = load_recipe(ROOT / "recipes" / "quickstart.yaml", {"samples": 6, "web_samples": None})
    prompts = render_prompts(r, Taxonomy.load(r.taxonomy_path()), None)
    requests = document_requests(prompts, r)
    journal = tmp_path / "journal.sqlite"
    with Emulator(EmulatorConfig(latency_median_s=0.002, faults=[Fault("refusal", first=1)])) as emu:
        gen = Generator("openai", r.model, base_url=emu.openai_base_url, api_key="sk-test", journal=journal,
                        progress=False)
        assert {x.status for x in gen.run(requests[:4])} == {"failed"}  # refused for good
    assert journal_states(prompts, r, journal) == ["refused"] * 4 + ["new"] * 2
    assert journal_states(prompts, r, journal, retry_failed=True) == ["new"] * 6  # --retry-failed sends them again


def test_the_plan_notes_requests_whose_prompt_tips_their_worst_case_over_the_dollar_budget():
    """The recipe refuses a max_tokens whose output alone is over budget.max_cost_usd; the plan, which has the
    prompts, also counts their input (the engine holds prompt and max_tokens against the budget)."""
    r = load_recipe(ROOT / "recipes" / "quickstart.yaml", {"samples": 20, "web_samples": None,
                                                            "budget.max_cost_usd": 0.1},
                    prices={"gpt-4o-mini": (1000.0, 0.0)})  # $0.001 an input token: a prompt costs ~$0.1-0.3
    prompts = render_prompts(r, Taxonomy.load(r.taxonomy_path()), None)
    over = int((_request_tokens(prompts)[0] > 100).sum())
    [note] = make_plan(prompts, r, n_leaves=125, expected_tokens={}).notes
    assert note.startswith(f"budget.max_cost_usd $0.1: {over:,} request(s) cost more than that at worst")
    assert "the build would stop at the first of them and never finish" in note
    assert make_plan(prompts, load_recipe(r.path, {"samples": 20, "web_samples": None}), n_leaves=125,
                     expected_tokens={}).notes == []


def test_the_budget_line_weighs_what_is_paid_and_the_rest_not_the_whole_build_again():
    """After a budget stop, $0.19 paid and $0.72 to go fit a $1 budget; the whole build from scratch ($1.04) did
    not, and the plan said the build would stop short."""
    from textbookgen.plan import ModelEstimate, Plan, _budget_line

    plan = Plan(recipe="r", model="m", provider="openai-compatible", n_prompts=120, n_leaves=10, topics_used=10,
                per_template={}, per_audience={}, per_subject={}, top_topics=[], with_web_extract=0,
                input_tokens=1, output_tokens_expected=1, output_tokens_max=1,
                estimates=[ModelEstimate("m", 1.04, 1.74, True)], time_s=1.0, time_basis="", budget_usd=1.0,
                spent_usd=0.19, journal={"new_cost_usd": 0.72, "priced": True})
    assert "stop short" not in _budget_line(plan)
    plan.journal["new_cost_usd"] = 0.9
    assert "The expected $1.09 ($0.19 paid, $0.90 for the rest) is over it" in _budget_line(plan)
    plan.journal = None
    assert "The expected $1.04 is over it" in _budget_line(plan)


def test_the_cost_table_marks_reasoning_models_whose_hidden_reasoning_is_billed_beyond_the_expected_answer():
    r = load_recipe(ROOT / "recipes" / "quickstart.yaml", {"samples": 5, "web_samples": None})
    prompts = render_prompts(r, Taxonomy.load(r.taxonomy_path()), None)
    text = _text(make_plan(prompts, r, n_leaves=125, expected_tokens={}))
    assert "gpt-5-mini *" in text and "gpt-4o-mini *" not in text and "gpt-4.1 *" not in text
    assert "* a reasoning model: its hidden reasoning is billed as output besides the answer" in text
