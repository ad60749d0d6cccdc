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
