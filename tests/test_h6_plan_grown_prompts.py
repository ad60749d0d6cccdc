"""A plan grows nothing, so its prompts name the root topics; the build's name the grown ones, longer and a level
deeper (the root becomes part of the path). The plan's input tokens used to be those of the roots' prompts: 3.2%
under the build's topic-only prompts, on quickstart grown to 700 topics against the emulator."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from textbookgen.build import build
from textbookgen.plan import input_token_estimates
from textbookgen.recipe import load_recipe
from textbookgen.testing.emulator import Emulator, EmulatorConfig

ROOT = Path(__file__).resolve().parents[1]


def test_the_plan_counts_the_input_tokens_of_prompts_on_the_grown_topics(tmp_path):
    out = tmp_path / "o"
    with Emulator(EmulatorConfig(latency_median_s=0.0005)) as emu:
        recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml", {
            "output": str(out), "provider.base_url": emu.openai_base_url, "samples": 300, "web_samples": None,
            "taxonomy.grow": {"target": 700}})
        plan = build(recipe, plan_only=True, progress=False).plan
        planned_prompts = pl.read_parquet(out / "prompts.parquet")
        build(recipe, progress=False)
    built = pl.read_parquet(out / "prompts.parquet")
    # the same estimator on both sides: what differs is only the prompts' text
    sent = int(input_token_estimates(built["prompt"])[0].sum())
    roots_only = int(input_token_estimates(planned_prompts["prompt"])[0].sum())
    assert built.height == plan.n_prompts == 300
    assert roots_only < 0.98 * sent  # the roots' prompts alone are short of the build's
    assert abs(plan.input_tokens - sent) <= 0.015 * sent
    assert plan.grow is not None and plan.grow["prompt_input_tokens"] > 0
