"""Plans against what is billed (the emulator): growth on Anthropic pays a hidden tool-use system prompt (313
tokens a call) that the grow plans left out, so their "at most" was under the bill; a rerun's paid growth at no
price was counted at $0 though --price priced it; and the shipped phi-1 recipe asked for prompts that repeat word
for word."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from textbookgen.build import build, render_prompts
from textbookgen.cli import app
from textbookgen.journal import Journal
from textbookgen.plan import replay_growth
from textbookgen.recipe import builtin_topics, forced_repeats, load_recipe
from textbookgen.taxonomy import Taxonomy
from textbookgen.testing.emulator import Emulator, EmulatorConfig

ROOT = Path(__file__).resolve().parents[1]
PLAN = re.compile(r"plan: .*~([\d,]+) input \+ ~[\d,]+ output tokens, ~\$([\d.]+) on .*at most \$([\d.]+)")
HAIKU = ["--provider", "anthropic", "--model", "claude-haiku-4-5"]


def _grow(*args: str):
    return CliRunner().invoke(app, ["topics", "grow", *args])


def _planned(output: str) -> tuple[int, float]:
    """The input tokens and the 'at most' dollars of a grow plan's line."""
    found = PLAN.search(output)
    assert found, output
    return int(found.group(1).replace(",", "")), float(found.group(3))


def _billed(journal: Path) -> tuple[int, float]:
    """Input tokens and dollars a grow journal records as billed."""
    with Journal(journal, read_only=True) as j:
        s = j.summary()
    return s["input_tokens"], s["cost_usd"]


@pytest.fixture
def roots(tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    path = tmp_path / "t.yaml"
    path.write_text("- Algebra\n- Geometry\n- Biology\n")
    return path


@pytest.fixture
def emu_local():
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as e:
        yield e


def test_a_grow_plan_on_anthropic_holds_the_tool_prompt_it_is_billed_for(tmp_path, roots):
    args = [str(roots), str(tmp_path / "g.yaml"), "--target", "30", *HAIKU]
    planned_in, at_most = _planned(_grow(*args, "--plan").output)
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        grown = _grow(*args, "--base-url", emu.anthropic_base_url)
    assert grown.exit_code == 0, grown.output
    billed_in, billed_usd = _billed(tmp_path / "g.journal.sqlite")
    assert planned_in >= billed_in  # 711 planned where 1,479 were billed (3 calls x 313 hidden)
    assert at_most >= billed_usd


def test_a_rerun_s_grow_plan_on_anthropic_holds_the_tool_prompt_too(tmp_path, roots):
    """With a journal, the plan replays the growth (`plan._GrowReplay`): the calls it does not answer pay the
    hidden prompt as well."""
    journal = tmp_path / "g.journal.sqlite"
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        first = _grow(str(roots), str(tmp_path / "g.yaml"), "--target", "30", *HAIKU, "--base-url",
                      emu.anthropic_base_url)
        assert first.exit_code == 0, first.output
        before = _billed(journal)
        args = [str(roots), str(tmp_path / "g2.yaml"), "--target", "150", *HAIKU, "--journal", str(journal)]
        planned_in, at_most = _planned(_grow(*args, "--plan").output)
        more = _grow(*args, "--base-url", emu.anthropic_base_url)
    assert more.exit_code == 0, more.output
    after = _billed(journal)
    assert planned_in >= after[0] - before[0]
    assert at_most >= after[1] - before[1]


def test_a_grow_plan_counts_growth_paid_at_no_price_at_the_price_given_now(tmp_path, emu_local):
    """A model with no price journals its tokens apart (schema 9); a rerun's plan with --price and --max-cost
    counted what the journal paid as $0, and said nothing of a budget the paid growth had used up."""
    roots = tmp_path / "t.yaml"
    roots.write_text("- Algebra\n- Geometry\n- Biology\n")
    local = ["--provider", "openai-compatible", "--model", "my-local-model"]
    first = _grow(str(roots), str(tmp_path / "g.yaml"), "--target", "30", *local, "--base-url",
                  emu_local.openai_base_url)
    assert first.exit_code == 0, first.output
    rerun = [str(roots), str(tmp_path / "g2.yaml"), "--target", "40", *local, "--journal",
             str(tmp_path / "g.journal.sqlite"), "--price", "my-local-model=100,100", "--plan"]
    found = PLAN.search(_grow(*rerun).output)
    assert found, rerun
    left = float(found.group(2))
    with Journal(tmp_path / "g.journal.sqlite", read_only=True) as j:
        paid = j.summary({"my-local-model": (100.0, 100.0)})["cost_usd"]
    assert paid > left > 0
    tight = _grow(*rerun, "--max-cost", f"{left + paid / 2:.4f}")  # the rest fits, not with what was paid
    assert "the estimate exceeds --max-cost" in tight.output, tight.output


def test_build_plan_on_anthropic_holds_growth_s_tool_prompt(tmp_path):
    """`build --plan`'s growth estimate (`build.estimate_grow`) against the taxonomy journal of the build."""
    out = tmp_path / "o"
    with Emulator(EmulatorConfig(latency_median_s=0.0005)) as emu:
        recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml", {
            "output": str(out), "provider.name": "anthropic", "provider.base_url": emu.anthropic_base_url,
            "provider.batch": False, "model": "claude-haiku-4-5", "samples": 20, "taxonomy.source": str(
                _write(tmp_path / "t.yaml", "- Algebra\n- Geometry\n- Biology\n")),
            "taxonomy.grow": {"target": 30}, "taxonomy.max_per_topic": None, "taxonomy.min_per_topic": 0,
            "curation.decontamination.benchmarks": [], "web_samples": None, "budget": None})
        plan = build(recipe, plan_only=True, progress=False).plan
        build(recipe, progress=False, push=False)
    billed_in, _ = _billed(next(out.rglob("grow.sqlite")))
    assert plan.grow["input_tokens"] >= billed_in


def test_build_plan_counts_growth_paid_at_no_price_at_the_recipe_s_prices(tmp_path, emu_local):
    """A build's plan after growth on an unpriced model, its price given now: what the grow journal paid counts."""
    out = tmp_path / "o"
    settings = {"output": str(out), "provider.name": "openai-compatible", "provider.base_url": emu_local.openai_base_url,
                "model": "my-local-model", "samples": 10, "budget": None, "web_samples": None,
                "taxonomy.source": str(_write(tmp_path / "t.yaml", "- Algebra\n- Geometry\n- Biology\n")),
                "taxonomy.grow": {"target": 30}, "taxonomy.max_per_topic": None,
                "curation.decontamination.benchmarks": []}
    build(load_recipe(ROOT / "recipes" / "quickstart.yaml", settings), progress=False, push=False)
    prices = {"my-local-model": (100.0, 100.0)}
    again = load_recipe(ROOT / "recipes" / "quickstart.yaml", {**settings, "taxonomy.grow": {"target": 40}}, prices)
    plan = build(again, plan_only=True, progress=False).plan
    with Journal(out / ".build" / "grow.sqlite", read_only=True) as j:
        paid = j.summary(prices)["cost_usd"]
    assert paid > 0 and plan.grow["answered"] > 0
    assert plan.grow["paid_usd"] == pytest.approx(paid)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_the_phi1_recipe_asks_for_no_prompt_twice(tmp_path):
    """30,000 prompts over 2,000 grown topics, up to max_per_topic (20) a topic: over 12 mix cells at least 6,237
    of them repeated an earlier one word for word (the plan said so); the build's stand-in grown tree says none
    must now."""
    recipe = load_recipe(ROOT / "recipes" / "phi1-code-textbooks.yaml", {"output": str(tmp_path / "o")})
    g = recipe.taxonomy.grow
    assert g is not None and g.target == 2000 and recipe.samples == 30000  # its size, as before
    roots = Taxonomy.load(builtin_topics(recipe.taxonomy.source))
    grown, _ = replay_growth(roots, g, tmp_path / "none.sqlite", provider="openai", model=recipe.model,
                             seed=recipe.seed, retry_failed=False)
    forced = forced_repeats(recipe, grown)
    assert forced is not None and forced[0] == 0, forced
    prompts = render_prompts(recipe, grown, None)["prompt"]  # nor do any the build renders from that tree
    assert prompts.len() == 30000 and prompts.n_unique() == prompts.len()
