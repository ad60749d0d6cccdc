"""What a build or a paid command needs and can check without paying is checked before the first request, and
fails in one `error:` line naming the recipe field or the variable to set: the web-sample source's loader, the
Hub repo id, the API key; a full disk mid-run is one line too, saying the finished work is kept."""

from __future__ import annotations

import errno
import sqlite3
import sys
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from textbookgen.cli import app
from textbookgen.testing.emulator import Emulator, EmulatorConfig

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
STORIES = ROOT / "textbookgen" / "topics" / "stories.yaml"
ENV = {"OPENAI_API_KEY": "sk-test"}
HUB_SOURCE = "web_samples.source=hf:HuggingFaceFW/fineweb-edu"
GROWS = "taxonomy.grow.target=140"


@pytest.fixture()
def emu():
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as e:
        yield e


def _one_error(res, *messages: str, code: int = 1) -> None:
    assert res.exit_code == code and isinstance(res.exception, SystemExit), res.output
    assert res.output.startswith("error: ") or "\nerror: " in res.output, res.output
    assert "Traceback" not in res.output
    for message in messages:
        assert message in res.output, res.output


def _sets(*sets: str) -> list[str]:
    return [x for s in sets for x in ("--set", s)]


def _build(emu, tmp_path: Path, *sets: str):
    over = [f"output={tmp_path / 'o'}", "samples=3", f"provider.base_url={emu.openai_base_url}", *sets]
    return CliRunner().invoke(app, ["build", str(QUICKSTART), "--no-progress", *_sets(*over)], env=ENV)


# ---- the web-sample source -------------------------------------------------------------------------------------
def test_a_hub_web_source_without_datasets_fails_validate_naming_the_field(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` fails, as in a base install
    res = CliRunner().invoke(app, ["validate", str(QUICKSTART), *_sets(HUB_SOURCE)])
    _one_error(res, "web_samples.source: hf:HuggingFaceFW/fineweb-edu: reading Hub datasets needs `pip install "
               "datasets`")


def test_a_hub_web_source_without_datasets_stops_the_build_before_growth_is_paid(emu, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    res = _build(emu, tmp_path, HUB_SOURCE, GROWS)
    _one_error(res, "web_samples.source:", "pip install datasets")
    assert emu.received == 0
    assert "grew" not in res.output


def test_an_unreachable_hub_web_source_stops_the_build_before_growth_is_paid(emu, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr("textbookgen.build.hub_reachable", lambda *a, **k: False)
    res = _build(emu, tmp_path, HUB_SOURCE, GROWS, "curation.decontamination.benchmarks=[]")
    _one_error(res, "web_samples.source:", "Hugging Face Hub is not reachable", "no request sent")
    assert emu.received == 0


def test_an_offline_hub_web_source_stops_the_build_before_growth_is_paid(emu, tmp_path, monkeypatch):
    """Web samples are streamed from the Hub, never read from the local cache: offline, the prompts stage would
    fail after growth was paid."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = _build(emu, tmp_path, HUB_SOURCE, GROWS, "curation.decontamination.benchmarks=[]")
    _one_error(res, "web_samples.source:", "offline mode is set", "no request sent")
    assert emu.received == 0


def test_a_plan_still_goes_on_without_a_hub_web_source(tmp_path, monkeypatch):
    """Only the real build needs the source: a plan notes the missing extracts and prices the rest."""
    monkeypatch.setitem(sys.modules, "datasets", None)
    res = CliRunner().invoke(app, ["build", str(QUICKSTART), "--plan", *_sets(HUB_SOURCE, f"output={tmp_path}/o")],
                             env={"OPENAI_API_KEY": ""})
    assert res.exit_code == 0, res.output
    assert "web samples unavailable" in res.output


# ---- the Hub repo id ------------------------------------------------------------------------------------------
def test_a_bad_hub_repo_id_fails_validate_naming_the_field():
    res = CliRunner().invoke(app, ["validate", str(QUICKSTART), *_sets("hub.repo_id=badid")])
    _one_error(res, "hub.repo_id: repo id must look like 'user/name' or 'org/name', got 'badid'")


def test_a_bad_hub_repo_id_stops_a_pushing_build_before_any_request(emu, tmp_path):
    res = _build(emu, tmp_path, "hub.push=true", "hub.repo_id=badid")
    _one_error(res, "hub.repo_id:", "got 'badid'")
    assert emu.received == 0


# ---- a full disk ----------------------------------------------------------------------------------------------
def _disk_full(*args, **kwargs):
    raise sqlite3.OperationalError("database or disk is full")


def test_a_full_disk_while_journaling_a_build_is_one_line_naming_the_journal(emu, tmp_path, monkeypatch):
    monkeypatch.setattr("textbookgen.journal.Journal.add_pending", _disk_full)
    res = _build(emu, tmp_path)
    journal = tmp_path / "o" / "journal.sqlite"
    _one_error(res, f"{journal}: No space left on device; finished requests are kept in {journal}: free space and "
               "rerun the same command to resume.")
    assert len(res.output.strip().splitlines()[-1]) < 300 and "OperationalError" not in res.output


def test_a_full_disk_while_writing_a_build_stage_names_the_file_and_the_kept_journal(emu, tmp_path, monkeypatch):
    def no_space(frames, path, schema):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("textbookgen.build.write_rows", no_space)
    res = _build(emu, tmp_path)
    _one_error(res, f"{tmp_path / 'o' / 'prompts.parquet'}: No space left on device; finished requests are kept in "
               f"{tmp_path / 'o' / 'journal.sqlite'}: free space and rerun")


def test_a_full_disk_outside_the_journaling_stages_names_the_output_folder_not_the_journal(emu, tmp_path,
                                                                                           monkeypatch):
    """SQLite's error names no file: in the curate stage the seed extracts' file (or SQLite's temp files) filled
    the disk, not the journal, which only keeps the requests that finished."""
    monkeypatch.setattr("textbookgen.curation.seed_copy.SeedExtracts.write", _disk_full)
    res = _build(emu, tmp_path)
    out = tmp_path / "o"
    _one_error(res, f"error: {out}: No space left on device; finished requests are kept in {out / 'journal.sqlite'}")
    assert ">> curate" in res.output


def test_a_full_disk_while_journaling_generate_is_one_line_naming_the_journal(emu, tmp_path, monkeypatch):
    monkeypatch.setattr("textbookgen.journal.Journal.add_pending", _disk_full)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "x"}\n')
    res = CliRunner().invoke(app, ["generate", str(prompts), "--base-url", emu.openai_base_url, "--no-progress"],
                             env=ENV)
    journal = tmp_path / "p.journal.sqlite"
    _one_error(res, f"{journal}: No space left on device; finished requests are kept in {journal}: free space")


# ---- a missing API key ----------------------------------------------------------------------------------------
def test_generate_without_a_key_names_the_variable_and_creates_no_journal(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "x"}\n')
    res = CliRunner().invoke(app, ["generate", str(prompts), "--no-progress"])
    _one_error(res, "no API key for openai: set OPENAI_API_KEY (or name the variable that holds it with "
               "--api-key-env NAME)")
    assert "api_key=" not in res.output and "rerun" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl"]


def test_topics_grow_without_a_key_names_the_variable_before_the_journal(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    res = CliRunner().invoke(app, ["topics", "grow", str(STORIES), str(tmp_path / "g.yaml"), "--target", "100"])
    _one_error(res, "no API key for openai: set OPENAI_API_KEY (or name the variable that holds it with --api-key-env")
    assert list(tmp_path.iterdir()) == []


def test_topics_grow_and_classifier_label_send_the_key_api_key_env_names(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("TBG_UNSET_KEY", raising=False)
    monkeypatch.setenv("TBG_MY_KEY", "sk-mine")
    grown = CliRunner().invoke(app, ["topics", "grow", str(STORIES), str(tmp_path / "g.yaml"), "--target", "40",
                                     "--api-key-env", "TBG_UNSET_KEY"])
    _one_error(grown, "environment variable TBG_UNSET_KEY is not set")
    pl.DataFrame({"id": ["a", "b"], "text": ["Water boils at 100 C at sea level.", "Plants need light."]}
                 ).write_parquet(tmp_path / "in.parquet")
    with Emulator(EmulatorConfig(latency_median_s=0.001, api_keys=["sk-mine"])) as emu:
        res = CliRunner().invoke(app, ["classifier", "label", str(tmp_path / "in.parquet"), "-o",
                                       str(tmp_path / "l.jsonl"), "--base-url", emu.openai_base_url, "--api-key-env", "TBG_MY_KEY"])
        assert res.exit_code == 0, res.output
        assert emu.billed == 2


def test_classifier_label_without_a_key_names_the_variable_and_creates_no_journal(tmp_path, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    pl.DataFrame({"id": ["a"], "text": ["Water boils at 100 C at sea level."]}).write_parquet(tmp_path / "in.parquet")
    res = CliRunner().invoke(app, ["classifier", "label", str(tmp_path / "in.parquet"), "-o", str(tmp_path / "l.jsonl"),
                                   "--provider", "anthropic", "--model", "claude-haiku-4-5"])
    _one_error(res, "no API key for anthropic: set ANTHROPIC_API_KEY (or name the variable")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet"]


@pytest.mark.parametrize("command", [
    ["classifier", "label", "{tmp}/in.parquet", "-o", "{tmp}/l.jsonl", "--base-url", "ftp://x"],
    ["classifier", "label", "{tmp}/in.parquet", "-o", "{tmp}/l.jsonl", "--provider", "anthropic", "--base-url",
     "http://a:1,http://b:2"],
    ["generate", "{tmp}/p.jsonl", "--provider", "anthropic", "--base-url", "http://a:1,http://b:2"],
    ["topics", "grow", str(STORIES), "{tmp}/g.yaml", "--target", "100", "--base-url", "ftp://x"]])
@pytest.mark.parametrize("key", ["", "sk-test"])
def test_a_base_url_the_provider_refuses_is_one_line_before_the_key_check(tmp_path, command, key):
    """The key check builds the provider's config: a --base-url it refuses must stay the one line it was."""
    pl.DataFrame({"id": ["a"], "text": ["Plants need light."]}).write_parquet(tmp_path / "in.parquet")
    (tmp_path / "p.jsonl").write_text('{"prompt": "x"}\n')
    res = CliRunner().invoke(app, [a.format(tmp=tmp_path) for a in command],
                             env={"OPENAI_API_KEY": key, "ANTHROPIC_API_KEY": key})
    _one_error(res, "error: --base-url: ")
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.parquet", "p.jsonl"]


@pytest.mark.parametrize("key", ["", "sk-test"])
def test_generate_openai_compatible_without_a_base_url_says_so_before_the_key_and_the_journal(tmp_path, key):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "x"}\n')
    res = CliRunner().invoke(app, ["generate", str(prompts), "--provider", "openai-compatible", "--no-progress"],
                             env={"OPENAI_API_KEY": key})
    _one_error(res, "error: --provider openai-compatible needs --base-url")
    assert "API key" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl"]


# ---- help texts and the plan's output -------------------------------------------------------------------------
def _options(*path: str) -> dict[str, str]:
    """A command's options and their help text (empty where it has none)."""
    import typer

    cmd = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    return {p.opts[0]: p.help or "" for p in cmd.params if p.param_type_name == "option"}


def test_every_option_of_generate_says_what_it_does():
    assert [o for o, text in _options("generate").items() if not text] == []
    assert "default" in _options("generate")["--temperature"]


def test_commands_without_a_recipe_do_not_speak_of_the_recipes_prices():
    for command in (("topics", "grow"), ("classifier", "label")):
        assert "recipe" not in _options(*command)["--price"], command
    assert "recipe's `prices:`" in _options("build")["--price"]


def test_topics_grow_help_gives_the_exit_code_it_exits_with_on_a_provider_error():
    import typer

    doc = typer.main.get_command(app).commands["topics"].commands["grow"].help
    assert "1 bad input (a missing API key too); 2 stopped by a provider error" in doc


def test_a_plan_names_the_prompts_file_once(tmp_path):
    res = CliRunner().invoke(app, ["build", str(QUICKSTART), "--plan", *_sets("samples=20", f"output={tmp_path}/o")],
                             env={"OPENAI_API_KEY": ""})
    assert res.exit_code == 0, res.output
    assert res.output.count("prompts.parquet") == 1, res.output


@pytest.mark.parametrize(("value", "offline"), [("1", True), ("true", True), ("ON", True), ("0", False),
                                                 ("false", False), ("", False)])
def test_offline_mode_is_read_as_huggingface_hub_reads_it(monkeypatch, value, offline):
    """`HF_HUB_OFFLINE=0` is online, as for huggingface_hub itself: a build with a Hub web source stopped before
    growth on it, saying offline mode was set."""
    from textbookgen.websamples import hub_offline

    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert hub_offline() is offline
