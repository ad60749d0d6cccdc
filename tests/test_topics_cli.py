"""`textbookgen topics`: built-in topic lists by name, and `grow`'s budget and journal."""

from __future__ import annotations

import polars as pl
import pytest
from typer.testing import CliRunner

from textbookgen.cli import app
from textbookgen.taxonomy import Taxonomy
from textbookgen.testing.emulator import Emulator, EmulatorConfig


def _topics(*args: str):
    return CliRunner().invoke(app, ["topics", *args])


@pytest.fixture
def emu():
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as e:
        yield e


def test_topics_commands_take_builtin_names_as_recipes_do(tmp_path, emu):
    stats = _topics("stats", "builtin:commonsense")
    assert stats.exit_code == 0 and "125 leaves" in stats.output, stats.output
    converted = _topics("convert", "builtin:python", str(tmp_path / "python.csv"))
    assert converted.exit_code == 0, converted.output
    tax = Taxonomy.load(tmp_path / "python.csv")
    table = tmp_path / "t.parquet"
    pl.DataFrame({"topic_id": [t.id for t in tax.leaves()]}).write_parquet(table)
    coverage = _topics("coverage", "builtin:python", str(table))
    assert coverage.exit_code == 0 and "not in this taxonomy" not in coverage.output, coverage.output
    grown = _topics("grow", "builtin:stories", str(tmp_path / "g.yaml"), "--target", "60", "--base-url",
                    emu.openai_base_url)
    assert grown.exit_code == 0, grown.output
    assert len(Taxonomy.load(tmp_path / "g.yaml").leaves()) == 60
    unknown = _topics("stats", "builtin:nope")
    assert unknown.exit_code == 1 and len(unknown.output.splitlines()) == 1
    assert unknown.output.startswith("error: no built-in topic list 'builtin:nope' (built-ins: commonsense")


def test_grow_journal_defaults_beside_the_output_not_the_working_folder(tmp_path, emu, monkeypatch):
    here, out = tmp_path / "here", tmp_path / "out"
    here.mkdir()
    out.mkdir()
    monkeypatch.chdir(here)
    res = _topics("grow", "builtin:stories", str(out / "g.yaml"), "--target", "60", "--base-url",
                  emu.openai_base_url)
    assert res.exit_code == 0, res.output
    assert (out / "g.journal.sqlite").is_file() and not list(here.iterdir())
    billed = emu.billed
    monkeypatch.chdir(tmp_path)  # from another folder the rerun replays the journal: nothing is paid again
    again = _topics("grow", "builtin:stories", str(out / "g.yaml"), "--target", "60", "--base-url",
                    emu.openai_base_url)
    assert again.exit_code == 0 and emu.billed == billed, again.output
    assert "<dst>.journal.sqlite" in _topics("grow", "--help").output


def test_grow_budget_stops_growth_exits_4_without_writing_and_a_rerun_goes_on(tmp_path, emu):
    dst, journal = tmp_path / "g.yaml", tmp_path / "g.journal.sqlite"
    args = ["grow", "builtin:stories", str(dst), "--target", "200", "--base-url", emu.openai_base_url]
    nothing = _topics(*args, "--max-output-tokens", "10")  # not even one answer at max_tokens fits
    assert nothing.exit_code == 4 and emu.billed == 0, nothing.output
    assert "the budget --max-output-tokens 10 (0 output tokens paid) stopped growth" in nothing.output
    assert "g.yaml not written (short of --target 200)" in nothing.output
    assert not dst.exists()
    some = _topics(*args, "--max-output-tokens", "3000")
    assert some.exit_code == 4 and 0 < emu.billed and not dst.exists(), some.output
    paid = emu.billed
    done = _topics(*args)
    assert done.exit_code == 0 and emu.duplicates == 0 and emu.billed > paid, done.output
    assert len(Taxonomy.load(dst).leaves()) == 200 and journal.is_file()
    bad = _topics(*args, "--max-cost", "-1")
    assert bad.exit_code == 1 and bad.output == "error: --max-cost: must be >= 0, got -1.0\n"


def test_coverage_reads_the_topic_ids_generate_writes_in_metadata(tmp_path, emu, monkeypatch):
    """`generate --out x.parquet` keeps each prompt's metadata (topic_id included) as one JSON text column."""
    import json

    outline = tmp_path / "t.md"
    outline.write_text("# T\n\n## A\n\n- a1\n- a2\n\n## B\n\n- b1\n- b2\n")
    tax = Taxonomy.load(outline)
    leaves = tax.leaves()[:3]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Write about {t.name}", "metadata": {"topic_id": t.id}}) + "\n"
                               for t in leaves))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    out = tmp_path / "out.parquet"
    gen = CliRunner().invoke(app, ["generate", str(prompts), "--base-url", emu.openai_base_url, "--out", str(out)])
    assert gen.exit_code == 0, gen.output
    coverage = _topics("coverage", str(outline), str(out))
    assert coverage.exit_code == 0, coverage.output
    assert coverage.output.startswith("3 samples over 3/4 leaf topics"), coverage.output
    structs = tmp_path / "structs.parquet"
    pl.DataFrame({"metadata": [{"topic_id": t.id, "style": "x"} for t in leaves]}).write_parquet(structs)
    assert _topics("coverage", str(outline), str(structs)).output == coverage.output


def test_coverage_without_topic_ids_names_the_columns_it_looked_for(tmp_path):
    table = tmp_path / "t.parquet"
    pl.DataFrame({"text": ["a"], "metadata": ['{"style": "x"}']}).write_parquet(table)
    res = _topics("coverage", "builtin:python", str(table))
    assert res.exit_code == 1 and len(res.output.splitlines()) == 1
    assert res.output == (f"error: {table}: no topic ids: looked for a topic_id column and a metadata column "
                          "(struct or JSON) with topic_id; its columns: text, metadata\n")
