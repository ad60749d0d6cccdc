"""A plan whose build grows the taxonomy used to replay the growth twice (for the calls left, then for the grown
topics' prompt tokens) and to render the roots' first GROWTH_SAMPLE prompts again, which the prompts stage had
just rendered: 1.6 s of phi1-code's plan, 3.4 s of phi15's. Each is now computed once, to the same figures."""

from __future__ import annotations

from pathlib import Path

import pytest

import textbookgen.build as build_module
import textbookgen.taxonomy as taxonomy_module
from textbookgen.build import build, open_web_samples, render_prompts
from textbookgen.plan import GROWTH_SAMPLE, _request_tokens, estimate_grow_left, replay_growth
from textbookgen.recipe import load_recipe
from textbookgen.taxonomy import Taxonomy
from textbookgen.testing.emulator import Emulator, EmulatorConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def regrown(tmp_path):
    """quickstart (with its web samples) built grown to 400 topics against the emulator, then asked for 900: the
    plan's growth is answered in part by the grow journal. Returns the recipe asking for 900."""
    over = {"output": str(tmp_path / "o"), "samples": 300, "taxonomy.grow": {"target": 400}}
    with Emulator(EmulatorConfig(latency_median_s=0.0005)) as emu:
        over["provider.base_url"] = emu.openai_base_url
        build(load_recipe(ROOT / "recipes" / "quickstart.yaml", over), progress=False)
    return load_recipe(ROOT / "recipes" / "quickstart.yaml", {**over, "taxonomy.grow": {"target": 900}})


def _counting(monkeypatch, module, name: str) -> list[dict]:
    """Wrap `module.name`, recording each call's keyword arguments."""
    calls: list[dict] = []
    real = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_a_growing_plan_replays_the_growth_once_and_renders_the_roots_prompts_once(regrown, monkeypatch):
    grows = _counting(monkeypatch, taxonomy_module, "grow")
    renders = _counting(monkeypatch, build_module, "prompt_batches")  # under write_prompts and render_prompts
    plan = build(regrown, plan_only=True, progress=False).plan
    assert plan.grow is not None and plan.grow["answered"] > 0  # the grow journal answered part of it
    assert len(grows) == 1
    # the prompts stage (every prompt, on the roots) and the first GROWTH_SAMPLE on the stand-in grown tree
    assert [c.get("limit") for c in renders] == [None, GROWTH_SAMPLE]


def test_the_growing_plan_s_figures_are_those_of_a_separate_replay_and_render(regrown):
    """The figures as they were computed before: the growth replayed again for the calls left, and the roots'
    first prompts rendered again with the caps lifted."""
    plan = build(regrown, plan_only=True, progress=False).plan
    g, tc = regrown.taxonomy.grow, regrown.taxonomy
    roots = Taxonomy.load(regrown.taxonomy_path())
    journal = regrown.output_dir() / ".build" / "grow.sqlite"
    left = estimate_grow_left(roots, g, journal, provider="openai", model=regrown.model, seed=regrown.seed)
    grown, _ = replay_growth(roots, g, journal, provider="openai", model=regrown.model, seed=regrown.seed,
                             retry_failed=False)
    web = open_web_samples(regrown)
    uncapped = regrown.model_copy(update={"taxonomy": tc.model_copy(update={"max_per_topic": None})})
    before = _request_tokens(render_prompts(uncapped, roots, web, limit=GROWTH_SAMPLE))
    after = _request_tokens(render_prompts(regrown, grown, web, limit=GROWTH_SAMPLE))
    assert plan.with_web_extract > 0  # the plan's prompts carry extracts, as the separate render's do
    assert plan.grow == {**left, "prompt_input_tokens": float(after[0].mean() - before[0].mean()),
                         "prompt_input_tokens_max": float(after[1].mean() - before[1].mean())}
