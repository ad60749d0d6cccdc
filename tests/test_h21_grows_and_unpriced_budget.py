"""Whether a build grows its taxonomy is one rule (`TaxonomyConfig.grows`); a recipe's dollar budget on a model
with no price is a recipe problem, as `generate --max-cost` refuses it: validate, plan and build stop on it before
any request is sent (it used to be a note, and the build spent with no bound)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from textbookgen.cli import app
from textbookgen.recipe import RecipeError, TaxonomyConfig, load_recipe
from textbookgen.testing.emulator import Emulator, EmulatorConfig

RECIPE = """\
name: h21
model: {model}
provider:
  name: {provider}
  base_url: {base_url}
taxonomy:
  source: topics.yaml
mix:
  - template: textbook_section
    audiences: {{college: 1}}
samples: {samples}
budget:
  max_cost_usd: 5
"""


def _recipe(d: Path, *, model: str = "my/llm", provider: str = "openai-compatible",
            base_url: str = "http://127.0.0.1:9/v1", samples: int = 3, more: str = "") -> Path:
    (d / "topics.yaml").write_text("topics: [Physics, Chemistry, Biology]\n")
    p = d / "r.yaml"
    p.write_text(RECIPE.format(model=model, provider=provider, base_url=base_url, samples=samples) + more)
    return p


def _rows(journal: Path) -> int:
    with sqlite3.connect(journal) as db:
        return db.execute("SELECT count(*) FROM requests").fetchone()[0]


@pytest.mark.parametrize(("grow", "leaves", "grows"), [
    (None, 1, False),  # no `grow`: nothing to grow, however few the roots
    ({"target": 3}, 3, False),  # roots that meet the target grow nothing
    ({"target": 3}, 5, False),
    ({"target": 3}, 2, True),  # short of it: the build grows them
])
def test_grows_only_roots_short_of_the_target(tmp_path, grow, leaves, grows):
    (tmp_path / "t.yaml").write_text("topics: [A]\n")
    tc = TaxonomyConfig.model_validate({"source": "t.yaml", "grow": grow}, context={"base_dir": tmp_path})
    assert tc.grows(leaves) is grows


def test_validate_refuses_a_dollar_budget_on_a_model_with_no_price(tmp_path):
    p = _recipe(tmp_path)
    res = CliRunner().invoke(app, ["validate", str(p)])
    assert res.exit_code == 1, res.output
    assert f"{p}:13: budget.max_cost_usd: my/llm (model) has no price" in res.output
    assert "prices: {my/llm: {input_per_mtok: IN, output_per_mtok: OUT}}" in res.output
    assert "--price my/llm=IN,OUT" in res.output and "drop budget.max_cost_usd" in res.output
    free = CliRunner().invoke(app, ["validate", str(p), "--price", "my/llm=0,0"])  # a free server, said on purpose
    assert free.exit_code == 0 and "my/llm" not in free.output.split("ok:")[0], free.output
    assert CliRunner().invoke(app, ["validate", str(p), "--set", "budget=null"]).exit_code == 0


def test_growth_on_a_model_of_its_own_with_no_price_is_named_where_the_roots_grow(tmp_path):
    """Whether growth sends requests is known once the roots are read (`TaxonomyConfig.grows`): `validate` and the
    build refuse growth's unpriced model there; `load_recipe` refuses the documents' model, known before."""
    p = _recipe(tmp_path, model="gpt-4o-mini", more="prices:\n  my/llm: {input_per_mtok: 1, output_per_mtok: 2}\n")
    grow = ["--set", "taxonomy.grow={target: 9, model: my/grower}"]  # 3 roots short of 9: they grow
    res = CliRunner().invoke(app, ["validate", str(p), *grow])
    assert res.exit_code == 1, res.output
    assert f"{p}:13: budget.max_cost_usd: my/grower (taxonomy.grow.model) has no price" in res.output
    both = CliRunner().invoke(app, ["validate", str(p), *grow, "--set", "model=my/other"])
    assert both.exit_code == 1 and "my/other (model) has no price" in both.output, both.output
    assert CliRunner().invoke(app, ["validate", str(p), *grow, "--price", "my/grower=0,0"]).exit_code == 0
    made = load_recipe(p, {"model": "my/other", "taxonomy.grow": {"target": 9, "model": "my/grower"}},
                       prices={"my/other": (1.0, 1.0), "my/grower": (1.0, 1.0)}).model_copy(update={"prices": {}})
    [(loc, msg)] = made.unpriced_budget_problems(grows=True)
    assert loc == ("budget", "max_cost_usd") and msg.startswith(
        "my/other (model) and my/grower (taxonomy.grow.model) have no price")
    [(_, own)] = made.unpriced_budget_problems(grows=False)  # roots that need no growth: the documents' model only
    assert own.startswith("my/other (model) has no price, so its requests") and "my/grower" not in own


@pytest.mark.parametrize("target", [2, 3])
def test_validate_asks_no_price_of_a_growth_model_the_roots_leave_idle(tmp_path, target):
    """3 roots meet the target, so nothing grows and growth's model is sent no request (it used to be refused)."""
    p = _recipe(tmp_path)
    res = CliRunner().invoke(app, ["validate", str(p), "--set", "budget.max_cost_usd=3", "--set",
                                   f"taxonomy.grow.target={target}", "--set", "taxonomy.grow.model=other/x",
                                   "--price", "my/llm=1,1"])
    assert res.exit_code == 0, res.output
    assert "other/x" not in res.output and "3 topics, 1 mix" in res.output


def test_growth_needs_its_price_only_while_it_grows(tmp_path):
    """Unpriced growth is refused before its first request; once the grown taxonomy is built (priced then), a rerun
    sends growth nothing and goes on without its price; roots that meet the target never needed one."""
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        p = _recipe(tmp_path, base_url=emu.openai_base_url)
        cli = ["build", str(p), "--no-progress", "--price", "my/llm=1,2", "--set", "taxonomy.grow={target: 5, "
               "model: other/x}"]
        refused = CliRunner().invoke(app, cli)
        assert refused.exit_code == 1, refused.output
        assert "budget.max_cost_usd: other/x (taxonomy.grow.model) has no price" in refused.output
        assert emu.stats()["received"] == 0
        grown = CliRunner().invoke(app, [*cli, "--price", "other/x=1,2"])
        assert grown.exit_code == 0, grown.output
        grow_journal, journal = tmp_path / "build" / "h21" / ".build" / "grow.sqlite", tmp_path / "build" / "h21" / \
            "journal.sqlite"
        grew, sent = _rows(grow_journal), emu.stats()["received"]
        assert grew > 0 and sent == grew + 3
        rerun = CliRunner().invoke(app, [*cli, "--set", "samples=5"])  # the grown taxonomy is the build's: cached
        assert rerun.exit_code == 0, rerun.output
        assert _rows(grow_journal) == grew and _rows(journal) == 5 and emu.stats()["received"] == sent + 2
        met = CliRunner().invoke(app, [*cli, "--set", "taxonomy.grow={target: 3, model: other/x}",
                                       "--set", f"output={tmp_path / 'm'}"])
        assert met.exit_code == 0, met.output
        assert emu.stats()["received"] == sent + 5 and _rows(tmp_path / "m" / "journal.sqlite") == 3
        assert not (tmp_path / "m" / ".build" / "grow.sqlite").exists()  # no growth request, not one


def test_plan_without_a_key_shows_the_problem_and_exits_as_validate_does(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    p = _recipe(tmp_path, provider="openai", base_url="null")
    res = CliRunner().invoke(app, ["plan", str(p)])
    assert res.exit_code == 1, res.output
    assert "budget.max_cost_usd: my/llm (model) has no price" in res.output
    assert not (tmp_path / "build").exists()  # refused before anything was written


def test_a_resumed_build_refuses_before_sending_and_its_journaled_answers_wait_for_the_price(tmp_path):
    """The journal of a build priced by --price; a rerun asking for more without the price is refused before it
    sends anything (on the old behaviour it sent the new requests, counted as $0 under the budget)."""
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        p = _recipe(tmp_path, base_url=emu.openai_base_url)
        priced = ["build", str(p), "--no-progress", "--price", "my/llm=1,2"]
        first = CliRunner().invoke(app, priced)
        assert first.exit_code == 0, first.output
        journal = tmp_path / "build" / "h21" / "journal.sqlite"
        sent, rows = emu.stats()["received"], _rows(journal)
        assert sent == rows == 3
        rerun = CliRunner().invoke(app, ["build", str(p), "--no-progress", "--set", "samples=5"])
        assert rerun.exit_code == 1, rerun.output
        assert "budget.max_cost_usd: my/llm (model) has no price" in rerun.output
        assert emu.stats()["received"] == sent and _rows(journal) == rows
        again = CliRunner().invoke(app, [*priced, "--set", "samples=5"])
        assert again.exit_code == 0, again.output
        assert emu.stats()["received"] == sent + 2  # the 3 journaled answers replayed, free


def test_a_build_given_a_recipe_made_otherwise_refuses_before_growth_pays(tmp_path):
    """`load_recipe` refuses it; a Recipe copied with other prices reaches `Build` all the same."""
    from textbookgen.build import build

    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        p = _recipe(tmp_path, model="gpt-4o-mini", base_url=emu.openai_base_url)
        grow = {"taxonomy.grow": {"target": 9, "model": "my/llm"}}
        recipe = load_recipe(p, grow, prices={"my/llm": (1.0, 2.0)}).model_copy(update={"prices": {}})
        with pytest.raises(RecipeError, match=r"budget\.max_cost_usd: my/llm \(taxonomy\.grow\.model\) has no price"):
            build(recipe, progress=False)
        assert emu.stats()["received"] == 0
