"""The plan of a recipe that grows its taxonomy, against what the build sends (the emulator): the plan draws its
prompts from the roots, many to a topic, and called their repeats the build's, telling phi15 (125 topics grown to
20,000) that 94% of its prompts were duplicates and to add topics (taxonomy.grow)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from textbookgen.build import build
from textbookgen.recipe import load_recipe
from textbookgen.testing.emulator import Emulator, EmulatorConfig

ROOT = Path(__file__).resolve().parents[1]


def test_a_growing_plan_does_not_call_the_roots_repeats_the_build_s(tmp_path, capsys):
    out = tmp_path / "o"
    with Emulator(EmulatorConfig(latency_median_s=0.0005, batch_latency_s=0.05)) as emu:
        recipe = load_recipe(ROOT / "recipes" / "phi1-code-textbooks.yaml", {
            "output": str(out), "provider.base_url": emu.openai_base_url, "provider.batch_poll_s": 0.05,
            "samples": 600, "taxonomy.grow.target": 100, "curation.decontamination.benchmarks": [],
            # the 12 mix cells the recipe had before, fewer than a topic's prompts: repeats the plan must count
            "mix.0.styles": {"step_by_step": 1, "problem_driven": 1, "conversational": 1},
            "mix.1.styles": {"step_by_step": 1}})
        plan = build(recipe, plan_only=True, progress=False).plan
        printed = " ".join(capsys.readouterr().out.split())
        build(recipe, progress=False, push=False)
    built = pl.read_parquet(out / "prompts.parquet")["prompt"]
    assert plan.diversity["duplicate_prompts"] > 0  # 600 prompts over the 78 root topics repeat
    assert "Diversity of these prompts, drawn from the 78 root topics (not the build's, drawn from 100 grown" in printed
    assert "add topics (taxonomy.grow)" not in printed
    # the build's own repeats: at least those its grown topics get beyond their 12 mix cells
    repeated = plan.grow["repeated_prompts"]
    assert 0 < repeated <= len(built) - built.n_unique()
    assert f"At least {repeated:,} of the build's prompts repeat an earlier one word for word" in printed


def test_the_plan_s_own_server_command_keeps_the_options_it_was_given(tmp_path, monkeypatch):
    """`--set samples=20` planned; the 'use a server of your own' command left it out, so a copy of it built the
    recipe's 50,000 samples into its own output folder."""
    from textbookgen.build import Build, _rel

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    sets = {"samples": 20, "output": str(tmp_path / "o")}
    recipe = load_recipe(ROOT / "recipes" / "tiny-stories.yaml", sets)
    options = f"--set samples=20 --set output={tmp_path / 'o'}"
    key, server = Build(recipe, options=options).how_to_run(can_call=False).splitlines()
    command = f"textbookgen build {_rel(recipe.path)} {options}"
    assert key.endswith(f"&& {command}")
    assert f"(or use a server of your own: {command} --set provider.name=openai-compatible" in server
