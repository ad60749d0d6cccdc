"""Recipes: the shipped ones validate; bad ones fail naming the file, the line and the field."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from textbookgen.cli import app
from textbookgen.recipe import RecipeError, load_recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))

GOOD = """\
name: tiny
model: gpt-4o-mini
taxonomy:
  source: topics.yaml
mix:
  - template: textbook_section
    audiences: {college: 1}
samples: 10
"""


@pytest.fixture
def recipe_dir(tmp_path: Path) -> Path:
    (tmp_path / "topics.yaml").write_text("topics: [Physics, Chemistry]\n")
    return tmp_path


def _write(d: Path, text: str) -> Path:
    p = d / "r.yaml"
    p.write_text(text)
    return p


def test_shipped_recipes_validate():
    assert {p.stem for p in RECIPES} >= {
        "quickstart",
        "phi15-textbooks",
        "phi1-code-textbooks",
        "tiny-stories",
    }
    for p in RECIPES:
        r = load_recipe(p)
        assert r.card_template == f"../datasets_cards/{p.stem}.md"
        assert r.resolve(r.card_template).is_file()
        assert r.taxonomy_path().is_file()
        assert len(r.hash) == 16


def test_paths_resolve_relative_to_the_recipe(recipe_dir, monkeypatch, tmp_path_factory):
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    r = load_recipe(_write(recipe_dir, GOOD))
    assert r.taxonomy_path() == recipe_dir / "topics.yaml"
    assert r.output_dir() == recipe_dir / "build" / "tiny"
    assert r.sampling.temperature == 0.8 and r.curation.minhash.enabled


@pytest.mark.parametrize(
    "edit, line, field, message",
    [
        (lambda t: t.replace("samples: 10", "samples: 10\nsampels: 3"), 9, "sampels", "unknown key"),
        (lambda t: t.replace("samples: 10", "samples: many"), 8, "samples", "valid integer"),
        (
            lambda t: t.replace(
                "    audiences: {college: 1}", "    audiences: {college: 1}\n    weight: heavy"
            ),
            8,
            "mix.0.weight",
            "valid number",
        ),
        (
            lambda t: t.replace("source: topics.yaml", "source: nowhere.yaml"),
            4,
            "taxonomy.source",
            "not found",
        ),
        (lambda t: t.replace("model: gpt-4o-mini\n", ""), 1, "model", "required field missing"),
        (
            lambda t: t.replace("{college: 1}", "{toddlers: 1}"),
            7,
            "mix.0.audiences",
            "unknown audiences ['toddlers']",
        ),
        (lambda t: t.replace("textbook_section", "no_such.j2"), 6, "mix.0.template", "neither a built-in"),
        (lambda t: t + "card_template: cards/missing.md\n", 9, "card_template", "card template not found"),
        (lambda t: t + "taxonomy:\n  source: topics.yaml\n", 9, "taxonomy", "duplicate key"),
        (lambda t: t.replace("samples: 10", "samples: 0"), 8, "samples", "greater than or equal to 1"),
        (lambda t: t.replace("samples: 10", "samples: yes"), 8, "samples", "valid integer"),
        (lambda t: t + "output: topics.yaml\n", 9, "output", "topics.yaml is a file"),
        (lambda t: t + "output: topics.yaml/sub\n", 9, "output", "topics.yaml is a file"),
        (lambda t: t.replace("{college: 1}", "{college: -1}"), 7, "mix.0.audiences", "weights must be >= 0"),
        (lambda t: t.replace("{college: 1}", "{college: 0}"), 7, "mix.0.audiences", "one positive weight"),
        (lambda t: t.replace("{college: 1}", "{college: .nan}"), 7, "mix.0.audiences", "finite numbers"),
        (lambda t: t.replace("{college: 1}", "{college: .inf}"), 7, "mix.0.audiences", "finite numbers"),
        (lambda t: t.replace("    audiences: {college: 1}", "    weight: .inf"), 7, "mix.0.weight", "finite number"),
        (
            lambda t: t.replace("    audiences: {college: 1}", "    weight: 5\n    styles: {academic: 0}"),
            8,
            "mix.0.styles",
            "at least one positive weight",
        ),
        (
            lambda t: t.replace("    audiences: {college: 1}", "    formats: {markdown: 1, plain: -2}"),
            7,
            "mix.0.formats",
            "weights must be >= 0",
        ),
        (
            lambda t: t + "provider: {name: openai-compatible, base_url: 'http://h:8000/v1', batch: true}\n",
            9,
            "provider",
            "batch: true needs name openai or anthropic",
        ),
        (lambda t: t + "provider:\n  timeout_s: 0\n", 10, "provider.timeout_s", "greater than 0"),
        (lambda t: t + "provider:\n  timeout_s: .inf\n", 10, "provider.timeout_s", "finite number"),
        (lambda t: t + "provider:\n  max_attempts: 0\n", 10, "provider.max_attempts", "greater than or equal to 1"),
        (lambda t: t + "provider:\n  max_attempts: 2.5\n", 10, "provider.max_attempts", "valid integer"),
        (lambda t: t + "limits:\n  tpm: 0\n", 10, "limits.tpm", "greater than or equal to 1"),
    ],
)
def test_bad_recipes_name_file_line_and_field(recipe_dir, edit, line, field, message):
    p = _write(recipe_dir, edit(GOOD))
    with pytest.raises(RecipeError) as err:
        load_recipe(p)
    text = str(err.value)
    assert text.startswith(f"{p}:{line}: {field}: "), text
    assert message in text


def test_curation_files_resolve_and_are_checked(recipe_dir):
    (recipe_dir / "bench").mkdir()
    (recipe_dir / "bench" / "arc.jsonl").write_text("{}\n")
    text = GOOD + (
        "curation:\n  decontamination:\n    benchmarks:\n"
        "      - {name: arc_easy, path: bench/arc.jsonl}\n      - {name: mmlu, path: 'hf://cais/mmlu'}\n"
    )
    cfg = load_recipe(_write(recipe_dir, text)).resolved_curation()
    assert [b.path for b in cfg.decontamination.benchmarks] == [
        str(recipe_dir / "bench" / "arc.jsonl"),
        "hf://cais/mmlu",
    ]
    p = _write(recipe_dir, text.replace("bench/arc.jsonl", "bench/gone.jsonl"))
    with pytest.raises(RecipeError) as err:
        load_recipe(p)
    assert str(err.value).startswith(
        f"{p}:12: curation.decontamination.benchmarks.0.path: benchmark file not found"
    )


def test_bad_yaml_and_bad_bytes(recipe_dir):
    p = _write(recipe_dir, GOOD.replace("mix:\n", "mix:\n  - template: [unclosed\n"))
    with pytest.raises(RecipeError, match=rf"{p}:\d+: not valid YAML"):
        load_recipe(p)
    p.write_bytes(GOOD.encode() + b"description: caf\xe9\n")
    with pytest.raises(RecipeError, match=rf"{p}:9: not valid UTF-8"):
        load_recipe(p)
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(recipe_dir / "missing.yaml")
    p.write_text("- just\n- a list\n")
    with pytest.raises(RecipeError, match=rf"{p}:1: a recipe is a YAML mapping"):
        load_recipe(p)


def test_overrides_and_recipe_hash(recipe_dir):
    p = _write(recipe_dir, GOOD)
    base = load_recipe(p)
    r = load_recipe(p, {"samples": 3, "provider.base_url": "http://127.0.0.1:9/v1"})
    assert r.samples == 3 and r.provider.base_url == "http://127.0.0.1:9/v1"
    assert r.hash != base.hash and load_recipe(p).hash == base.hash
    with pytest.raises(RecipeError, match="samples: Input should be a valid integer"):
        load_recipe(p, {"samples": "lots"})


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("mix.0.weight", 2, None),
        ("mix.0.audiences.general", 1, None),
        ("samples.x", 1, "--set samples.x: samples is 10, not a mapping"),
        ("mix.3.weight", 1, "--set mix.3.weight: mix is a list of 1 item(s): use an index 0..0"),
        ("mix.first", 1, "--set mix.first: mix is a list of 1 item(s)"),
        ("hub.repo_id", "someone/else", None),
        ("hub.private", True, None),
        ("hub.repo_id.x", 1, "--set hub.repo_id.x: hub.repo_id: Input should be a valid string"),
        ("sampels", 10, "--set sampels: unknown key"),
        ("samples", True, "--set samples: Input should be a valid integer"),
        ("mix.0.audiences", {"toddlers": 1}, "--set mix.0.audiences: unknown audiences ['toddlers']"),
    ],
)
def test_overrides_reach_into_lists_and_their_errors_name_the_set(recipe_dir, key, value, message):
    p = _write(recipe_dir, GOOD)
    if message is None:
        data = load_recipe(p, {key: value}).model_dump()
        for k in key.split("."):
            data = data[int(k) if k.isdigit() else k]
        assert data == value
        return
    with pytest.raises(RecipeError) as err:
        load_recipe(p, {key: value})
    assert str(err.value).startswith(message) and str(p) not in str(err.value), str(err.value)


def test_credentials_come_from_env_or_a_local_server(recipe_dir, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    p = _write(recipe_dir, GOOD)
    assert not load_recipe(p).provider.has_credentials()
    assert load_recipe(p, {"provider.base_url": "http://localhost:8000/v1"}).provider.api_key() == "EMPTY"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert load_recipe(p).provider.has_credentials()
    assert "sk-test" not in str(load_recipe(p).public_dict())


def test_validate_command(recipe_dir):
    runner = CliRunner()
    ok = runner.invoke(app, ["validate", str(_write(recipe_dir, GOOD))])
    assert ok.exit_code == 0 and "ok: tiny" in ok.output and "2 topics" in ok.output
    bad = runner.invoke(app, ["validate", str(_write(recipe_dir, GOOD + "extra: 1\n"))])
    assert bad.exit_code == 1 and ":9: extra: unknown key" in bad.output
    (recipe_dir / "topics.yaml").write_text("topics:\n  - [unclosed\n")
    broken = runner.invoke(app, ["validate", str(_write(recipe_dir, GOOD))])
    assert broken.exit_code == 1 and "topics.yaml:3: not valid YAML" in broken.output


def test_engine_knobs(recipe_dir):
    r = load_recipe(_write(recipe_dir, GOOD + "provider: {timeout_s: 600, max_attempts: 3}\nlimits: {tpm: 90000}\n"))
    assert (r.provider.timeout_s, r.provider.max_attempts, r.limits.tpm) == (600, 3, 90000)
    defaults = load_recipe(_write(recipe_dir, GOOD))
    assert (defaults.provider.timeout_s, defaults.provider.max_attempts, defaults.limits.tpm) == (120, 8, None)


def test_shipped_recipes_set_one_sampling_knob():
    """Claude Sonnet/Haiku 4.5 and Opus 4.1 refuse temperature together with top_p: the shipped recipes
    must run on them as they are."""
    for p in RECIPES:
        r = load_recipe(p, {"provider.name": "anthropic", "model": "claude-haiku-4-5"})
        assert r.sampling.temperature is not None and r.sampling.top_p is None, p.name
        assert r.sampling_notes() == [], p.name


def test_sampling_a_model_refuses_is_a_note_not_an_error(recipe_dir):
    p = _write(recipe_dir, GOOD + "sampling: {temperature: 0.8, top_p: 0.95}\n")
    assert load_recipe(p).sampling_notes() == []  # gpt-4o-mini takes both
    claude = {"provider.name": "anthropic", "model": "claude-sonnet-4-5"}
    [note] = load_recipe(p, claude).sampling_notes()
    assert note.startswith("sampling: temperature and top_p are both set")
    res = CliRunner().invoke(app, ["validate", str(p), *(f"--set={k}={v}" for k, v in claude.items())])
    assert res.exit_code == 0 and f"note: {note}" in res.output and "ok: tiny" in res.output
    notes = load_recipe(p, {"model": "gpt-5-mini"}).sampling_notes()
    assert [n.split(":")[0] for n in notes] == ["sampling.temperature", "sampling.top_p"]
    assert "set sampling.temperature: null" in notes[0]
    off = {"sampling.temperature": None, "sampling.top_p": None}
    assert load_recipe(p, {"model": "gpt-5-mini", **off}).sampling_notes() == []
    assert load_recipe(p, {"model": "o4-mini", "sampling.temperature": 1, "sampling.top_p": None}).sampling_notes() == []
    assert load_recipe(p, {"model": "gpt-5-chat-latest"}).sampling_notes() == []
    # taxonomy growth samples too, on its own model
    grow = {"taxonomy.grow": {"target": 50, "model": "o3"}, "sampling.top_p": None}
    [note] = load_recipe(p, grow).sampling_notes()
    assert note.startswith("taxonomy.grow.temperature: 0.7: o3")


# ---- what a build would reject late, caught as the recipe loads or validates ---------------------------------
def test_a_template_reading_a_variable_rendering_does_not_give_fails_naming_its_file_and_line(recipe_dir):
    from textbookgen.templates import builtin_templates, undeclared_variables

    (recipe_dir / "lecture.j2").write_text("Notes for {{ audience }}.\nWrite on {{ topik }}.\n")
    p = _write(recipe_dir, GOOD.replace("template: textbook_section", "template: lecture.j2"))
    with pytest.raises(RecipeError) as err:
        load_recipe(p)
    assert str(err.value) == (
        f"{p}:6: mix.0.template: {recipe_dir / 'lecture.j2'}:2: 'topik' is undefined (did you mean 'topic'?)"
    )
    res = CliRunner().invoke(app, ["validate", str(p)])
    assert res.exit_code == 1 and "'topik' is undefined" in res.output and "ok:" not in res.output
    # a name only tested with `is defined`, names a template sets itself and Jinja's own globals are fine
    (recipe_dir / "lecture.j2").write_text(
        "{% set n = 3 %}{% if note is defined %}{{ note }}{% endif %}{% for i in range(n) %}{{ topic }}{% endfor %}"
    )
    load_recipe(p)
    assert all(undeclared_variables(t) == [] for t in builtin_templates().values())


def test_validate_runs_the_checks_a_build_makes_only_at_its_prompts(recipe_dir):
    capped = GOOD.replace("  source: topics.yaml\n", "  source: topics.yaml\n  max_per_topic: 3\n")
    p = _write(recipe_dir, capped)
    runner = CliRunner()
    res = runner.invoke(app, ["validate", str(p)])  # 2 topics x 3 < 10 samples: the prompts stage would fail
    assert res.exit_code == 1, res.output
    assert res.output.startswith(f"error: {p}:5: taxonomy.max_per_topic: max_per_topic=3 x 2 topics < 10 samples")
    assert runner.invoke(app, ["validate", str(p), "--set", "samples=6"]).exit_code == 0
    grown = runner.invoke(app, ["validate", str(p), "--set", "taxonomy.grow.target=3"])  # grown, 3 x 3 < 10 still
    assert grown.exit_code == 1 and "x 3 topics (taxonomy.grow.target) < 10 samples" in grown.output
    # a template that parses and names only known variables but fails on a real topic
    (recipe_dir / "deep.j2").write_text("{{ topic_path[3] | upper }}")
    deep = runner.invoke(app, ["validate", str(p), "--set", "samples=6", "--set", "mix.0.template=deep.j2"])
    assert deep.exit_code == 1 and f"--set mix.0.template: {recipe_dir / 'deep.j2'}:1: " in deep.output, deep.output
    push = runner.invoke(app, ["validate", str(p), "--set", "samples=6", "--set", "hub.push=true"])
    assert push.exit_code == 1 and "push: the recipe has no hub.repo_id" in push.output


@pytest.mark.parametrize("sets, message", [
    ({"sampling.max_tokens": 5000}, "--set sampling.max_tokens: max_tokens 5,000 is over budget.max_output_tokens 2,000: "
     "no single request can fit the budget"),
    ({"mix.0.max_tokens": 3000}, "--set mix.0.max_tokens: max_tokens 3,000 is over budget.max_output_tokens 2,000"),
    ({"budget.max_output_tokens": 1000}, ":6: mix.0.template: its default max_tokens 1,500 is over "
     "budget.max_output_tokens 1,000"),
    ({"taxonomy.grow": {"target": 50, "max_tokens": 4000}}, "--set taxonomy.grow: taxonomy.grow.max_tokens: max_tokens 4,000"),
    ({"budget.max_cost_usd": 0.0005}, ":6: mix.0.template: its default max_tokens 1,500 is $0.0009 of output at "
     "gpt-4o-mini's price, over budget.max_cost_usd $0.0005"),
])
def test_a_max_tokens_no_budget_can_hold_is_refused_naming_both_fields(recipe_dir, sets, message):
    """The engine sends a request only when its max_tokens (at the model's price) fits in the budget: one that
    never can stops the build before anything is sent, which used to read as the budget being reached."""
    p = _write(recipe_dir, GOOD + "budget: {max_output_tokens: 2000}\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(p, sets)
    assert message in str(err.value) and len(str(err.value).splitlines()) == 1, str(err.value)
    load_recipe(p, {"sampling.max_tokens": 2000})  # fits, just


def test_budget_null_is_no_budget(recipe_dir):
    from textbookgen.recipe import BudgetConfig

    p = _write(recipe_dir, GOOD + "budget: {max_cost_usd: 5}\n")
    assert load_recipe(p, {"budget": None}).budget == BudgetConfig()
    assert load_recipe(_write(recipe_dir, GOOD + "budget:\n")).budget == BudgetConfig()


def test_prices_come_from_the_recipe_and_the_command_line(recipe_dir):
    own = GOOD.replace("model: gpt-4o-mini", "model: my/llm") + "prices:\n  my/llm: {input_per_mtok: 0.2, output_per_mtok: 0.8}\n"
    p = _write(recipe_dir, own)
    r = load_recipe(p)
    assert r.price_table() == {"my/llm": (0.2, 0.8)} and r.model_prices() == {
        "my/llm": {"input_per_mtok": 0.2, "output_per_mtok": 0.8}}
    more = load_recipe(p, prices={"gpt-4.1": (1.0, 2.0), "my/llm": (0.3, 0.9)})
    assert more.price_table() == {"my/llm": (0.3, 0.9), "gpt-4.1": (1.0, 2.0)} and more.hash != r.hash
    assert "gpt-4.1" not in more.model_prices()  # the manifest gives the prices of the models the build uses
    with pytest.raises(RecipeError, match=r"^--price my/llm: prices.my/llm.input_per_mtok: Input should be greater"):
        load_recipe(p, prices={"my/llm": (-1.0, 1.0)})
    with pytest.raises(RecipeError, match=r":10: prices.my/llm.output: unknown key"):
        load_recipe(_write(recipe_dir, own.replace("output_per_mtok", "output")))
    res = CliRunner().invoke(app, ["validate", str(p), "--price", "my/llm=oops"])
    assert res.exit_code == 1 and "--price expects MODEL=IN,OUT" in res.output


def test_a_dollar_budget_on_a_model_without_a_price_is_a_recipe_problem(recipe_dir):
    """It used to be a note, and the build spent with no bound (`generate --max-cost` refuses it)."""
    p = _write(recipe_dir, GOOD.replace("model: gpt-4o-mini", "model: my/llm") + "budget: {max_cost_usd: 5}\n")
    with pytest.raises(RecipeError, match=r":9: budget.max_cost_usd: my/llm \(model\) has no price, so its requests "
                       r"would count as \$0 and this budget could never stop them") as e:
        load_recipe(p)
    assert "--price my/llm=IN,OUT" in str(e.value) and "\n" not in str(e.value)
    assert load_recipe(p, prices={"my/llm": (0.0, 0.0)}).notes() == []  # free, said on purpose
    assert load_recipe(p, {"budget": None}).notes() == []
    growth = ["--set", "model=gpt-4o-mini", "--set", "taxonomy.grow={target: 50, model: my/llm}"]
    res = CliRunner().invoke(app, ["validate", str(p), *growth])  # growth's own model, where the 2 roots grow
    assert res.exit_code == 1 and "my/llm (taxonomy.grow.model) has no price" in res.output, res.output
    res = CliRunner().invoke(app, ["validate", str(p)])
    assert res.exit_code == 1 and "budget.max_cost_usd: my/llm (model) has no price" in res.output


def test_a_key_variable_the_recipe_names_must_be_set(recipe_dir, monkeypatch):
    """An unset api_key_env used to be sent as the placeholder "EMPTY", and the server's 401 blamed the key."""
    monkeypatch.delenv("VLLM_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    own = {"provider.name": "openai-compatible", "provider.base_url": "http://127.0.0.1:9/v1"}
    r = load_recipe(_write(recipe_dir, GOOD), {**own, "provider.api_key_env": "VLLM_KEY"})
    assert r.provider.has_credentials()
    with pytest.raises(RecipeError, match=r"^\$VLLM_KEY \(provider.api_key_env\) is not set$"):
        r.provider.api_key()
    assert "$VLLM_KEY (provider.api_key_env) is not set: export it before building" in r.notes()[-1]
    assert load_recipe(_write(recipe_dir, GOOD), own).provider.api_key() == "EMPTY"  # the default variable
    monkeypatch.setenv("VLLM_KEY", "k-123")
    assert r.provider.api_key() == "k-123" and r.notes() == []
