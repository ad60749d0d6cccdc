"""Bad input to the CLI: one `error: ...` line naming the file or option, checked before anything is paid for."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from textbookgen.cli import app
from textbookgen.engine import Generator, RateLimits
from textbookgen.testing.emulator import Emulator, EmulatorConfig

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
STORIES = ROOT / "textbookgen" / "topics" / "stories.yaml"
ENV = {"OPENAI_API_KEY": "sk-test"}


def _one_error(res, message: str, code: int = 1) -> None:
    assert res.exit_code == code and isinstance(res.exception, SystemExit), res.output
    assert "error: " in res.output and message in res.output, res.output
    assert "Traceback" not in res.output


@pytest.fixture()
def emu():
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as e:
        yield e


@pytest.fixture()
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "x"}\n{"prompt": "y"}\n')
    return path


@pytest.mark.parametrize("option, value, message", [
    ("--timeout", "-1", "--timeout: must be > 0"), ("--max-attempts", "0", "--max-attempts: must be >= 1"),
    ("--rpm", "0", "--rpm: must be > 0"), ("--tpm", "-5", "--tpm: must be > 0"),
    ("--concurrency", "0", "--concurrency: must be >= 1"), ("--max-cost", "-1", "--max-cost: must be >= 0"),
    ("--max-tokens", "0", "--max-tokens: must be >= 1"), ("--temperature", "3", "--temperature: must be in [0, 2]"),
    ("--top-p", "0", "--top-p: must be in (0, 1]"),
])
def test_generate_rejects_out_of_range_options_before_sending(emu, prompts, option, value, message):
    res = CliRunner().invoke(app, ["generate", str(prompts), "--base-url", emu.openai_base_url, "--no-progress",
                                   option, value], env=ENV)
    _one_error(res, message)
    assert emu.received == 0


def test_generator_and_rate_limits_reject_bad_settings():
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        Generator("openai", timeout_s=-1)
    with pytest.raises(ValueError, match="max_attempts"):
        Generator("openai", max_attempts=0)
    with pytest.raises(ValueError, match="max_cost_usd"):
        Generator("openai", max_cost_usd=-1)
    with pytest.raises(ValueError, match="rpm must be > 0"):
        RateLimits(rpm=0)


def test_generate_out_is_checked_before_sending_and_a_failed_write_points_to_the_journal(
        emu, prompts, tmp_path, monkeypatch):
    base = ["generate", str(prompts), "--base-url", emu.openai_base_url, "--no-progress"]
    _one_error(CliRunner().invoke(app, [*base, "--out", str(tmp_path)], env=ENV), "is a folder")
    (tmp_path / "afile").write_text("")
    _one_error(CliRunner().invoke(app, [*base, "--out", str(tmp_path / "afile" / "c.jsonl")], env=ENV),
               "cannot write there")
    assert emu.received == 0

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "c.jsonl"))

    monkeypatch.setattr("textbookgen.promptfile.write_completions", full_disk)
    res = CliRunner().invoke(app, base, env=ENV)
    _one_error(res, "c.jsonl: No space left on device")
    assert f"finished requests are kept in {tmp_path / 'p.journal.sqlite'}" in res.output and emu.billed == 2


def test_generate_prompts_folder_says_folder(tmp_path):
    _one_error(CliRunner().invoke(app, ["generate", str(tmp_path)], env=ENV), "is a folder, not a prompts file")


def test_journal_export_problems_are_one_line(emu, prompts, tmp_path):
    assert CliRunner().invoke(app, ["generate", str(prompts), "--base-url", emu.openai_base_url, "--no-progress"],
                              env=ENV).exit_code == 0
    journal = str(tmp_path / "p.journal.sqlite")
    _one_error(CliRunner().invoke(app, ["journal", journal, "--export", str(tmp_path / "x.jsonl")]),
               "writes parquet")
    (tmp_path / "dir.parquet").mkdir()
    _one_error(CliRunner().invoke(app, ["journal", journal, "--export", str(tmp_path / "dir.parquet")]),
               "is a folder")


@pytest.mark.parametrize("per_call", ["-1", "0", "1"])
def test_grow_per_call_below_two_is_refused_before_paying(emu, tmp_path, per_call):
    res = CliRunner().invoke(app, ["topics", "grow", str(STORIES), str(tmp_path / "g.yaml"), "--target", "100",
                                   "--base-url", emu.openai_base_url, "--per-call", per_call,
                                   "--journal", str(tmp_path / "g.sqlite")])
    _one_error(res, "--per-call: must be >= 2")
    assert emu.received == 0


def test_grow_bad_provider_target_and_journal(emu, tmp_path):
    base = ["topics", "grow", str(STORIES), str(tmp_path / "g.yaml"), "--base-url", emu.openai_base_url]
    _one_error(CliRunner().invoke(app, [*base, "--target", "100", "--provider", "bogus"]), "--provider 'bogus'")
    _one_error(CliRunner().invoke(app, [*base, "--target", "3"]), "nothing to grow")
    _one_error(CliRunner().invoke(app, [*base, "--target", "100", "--journal", str(tmp_path)]), "journal")
    assert emu.received == 0


@pytest.mark.parametrize("command", [["dedup"], ["filter"], ["decontaminate", "-b", "BENCH"]])
def test_curation_output_equal_to_input_is_refused(tmp_path, command):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": f"document number {i} " * 20}) + "\n" for i in range(5)))
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "a benchmark question about something no model should see in training"}) + "\n")
    before = src.read_bytes()
    args = [str(tmp_path / "b.jsonl") if a == "BENCH" else a for a in command]
    _one_error(CliRunner().invoke(app, [*args, str(src), "-o", str(src)]), "is the input")
    _one_error(CliRunner().invoke(app, [*args, str(tmp_path), "-o", str(tmp_path / "out.jsonl")]), "is the input")
    (tmp_path / "o.parquet").mkdir()
    _one_error(CliRunner().invoke(app, [*args, str(src), "-o", str(tmp_path / "o.parquet")]), "is a folder")
    assert src.read_bytes() == before


def test_classifier_label_checks_output_and_journal_before_paying(emu, tmp_path):
    pl.DataFrame({"text": ["some text here"] * 3}).write_parquet(tmp_path / "in.parquet")
    base = ["classifier", "label", str(tmp_path / "in.parquet"), "--base-url", emu.openai_base_url]
    _one_error(CliRunner().invoke(app, [*base, "-o", str(tmp_path / "x.txt")], env=ENV), "write .parquet or .jsonl")
    _one_error(CliRunner().invoke(app, [*base, "-o", str(tmp_path / "l.jsonl"), "--journal", str(tmp_path)],
                                  env=ENV), "journal")
    _one_error(CliRunner().invoke(app, [*base, "-o", str(tmp_path / "l.jsonl"), "--sample", "-1"], env=ENV),
               "--sample: must be >= 1")
    assert emu.received == 0


def _build(emu, tmp_path: Path, *sets: str):
    over = [f"output={tmp_path / 'o'}", "samples=3", f"provider.base_url={emu.openai_base_url}", *sets]
    return CliRunner().invoke(app, ["build", str(QUICKSTART), "--no-progress", *(x for s in over for x in ("--set", s))],
                              env=ENV)


def test_build_push_without_repo_and_a_bad_card_template_fail_before_paying(emu, tmp_path):
    _one_error(_build(emu, tmp_path, "hub.push=true", "hub.repo_id=null"), "no hub.repo_id")
    card = tmp_path / "card.md"
    card.write_text("# {{ recipe.name }\n")
    _one_error(_build(emu, tmp_path, f"card_template={card}"), f"card template {card}:1:")
    _one_error(CliRunner().invoke(app, ["validate", str(QUICKSTART), "--set", f"card_template={card}"]),
               f"card template {card}:1:")
    card.write_bytes(b"caf\xe9\n")
    _one_error(CliRunner().invoke(app, ["validate", str(QUICKSTART), "--set", f"card_template={card}"]),
               "not valid UTF-8")
    assert emu.received == 0


def test_build_with_a_folder_for_its_journal_is_one_line(emu, tmp_path):
    (tmp_path / "o" / "journal.sqlite").mkdir(parents=True)
    _one_error(_build(emu, tmp_path), "journal")
    assert emu.received == 0


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": f"word {i} " * 40}) + "\n" for i in range(5)))
    (tmp_path / "bad.parquet").write_text("garbage")
    (tmp_path / "fake.jsonl.gz").write_text("not gzip")
    (tmp_path / "bad.yaml").write_text("a: [\n")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "afile").write_text("x")
    (tmp_path / "arr.json").write_text('[{"text": "a"},\n')
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "folder").mkdir()
    return path


@pytest.mark.parametrize("args, message", [
    (["dedup", "bad.parquet"], "bad.parquet: not a readable .parquet file"),
    (["dedup", "fake.jsonl.gz"], "fake.jsonl.gz: not a readable .jsonl.gz file"),
    (["dedup", "d.jsonl", "--config", "folder"], "--config folder: is a folder"),
    (["dedup", "d.jsonl", "--config", "nope.yaml"], "--config nope.yaml: no such file"),
    (["dedup", "d.jsonl", "--config", "bad.yaml"], "--config bad.yaml:2: not valid YAML"),
    (["dedup", "d.jsonl", "--config", "list.yaml"], "must hold a mapping of curation settings, not a list"),
    (["dedup", "d.jsonl", "--workdir", "afile"], "--workdir afile: is a file"),
    (["filter", "d.jsonl", "--text-column", "id"], "the text column and the id column are both 'id'"),
    (["filter", "arr.json"], "arr.json: invalid JSON array"),
    (["dedup", "d.jsonl", "--threshold", "5"], "--threshold: Input should be less than or equal to 1"),
    (["filter", "d.jsonl", "--max-words", "0"], "--max-words: Input should be greater than or equal to 1"),
    (["filter", "d.jsonl", "--min-words", "60", "--max-words", "50"], "--max-words: must be >= min_words (60)"),
    (["decontaminate", "-b", "foobar=d.jsonl", "d.jsonl"], "unknown benchmark 'foobar'"),
    (["decontaminate", "-b", "fake.jsonl.gz", "d.jsonl"], "fake.jsonl.gz: not a readable .jsonl.gz file"),
])
def test_curation_bad_input_is_one_line(corpus, monkeypatch, args, message):
    monkeypatch.chdir(corpus.parent)
    res = CliRunner().invoke(app, [*args, "-o", "out.parquet"])
    _one_error(res, message)
    assert len(res.output.splitlines()) == 1 and not (corpus.parent / "out.parquet").exists()


def test_an_empty_benchmark_is_an_error(corpus, tmp_path):
    pl.DataFrame({"text": []}, schema={"text": pl.String}).write_parquet(tmp_path / "b.parquet")
    res = CliRunner().invoke(app, ["decontaminate", "-b", str(tmp_path / "b.parquet"), str(corpus), "-o",
                                   str(tmp_path / "o.parquet")])
    _one_error(res, "no items to decontaminate against")
    res = CliRunner().invoke(app, ["validate", str(QUICKSTART), "--set", "curation.decontamination.benchmarks="
                                   f"[{{name: arc_easy, path: '{tmp_path / 'empty.jsonl'}'}}]"])
    _one_error(res, "benchmarks[0]")


@pytest.mark.parametrize("args, message", [
    (["train", "-o", "m", "--bucket", "-1"], "--bucket: must be >= 1"),
    (["train", "-o", "m", "--dim", "0"], "--dim: must be >= 1"),
    (["train", "-o", "m", "--epochs", "0"], "--epochs: must be >= 1"),
    (["train", "-o", "m", "--lr", "-1"], "--lr: must be > 0"),
    (["train", "-o", "m", "--lr", "x"], "--lr: expects comma-separated float values"),
    (["eval", "m.bin", "--threshold", "5"], "--threshold: must be in [0, 1]"),
    (["eval", "m.bin"], "no evaluation data"),
])
def test_classifier_option_ranges(corpus, monkeypatch, args, message):
    monkeypatch.chdir(corpus.parent)
    extra = ["--positive", "d.jsonl", "--negative", "d.jsonl"] if args[0] == "train" else []
    _one_error(CliRunner().invoke(app, ["classifier", *args, *extra]), message)


@pytest.mark.parametrize("endpoint, message", [("foo", "not an http(s) URL"), ("http://127.0.0.1:9", "cannot connect")])
def test_push_and_pull_name_a_bad_endpoint(tmp_path, endpoint, message):
    _one_error(CliRunner().invoke(app, ["push", str(tmp_path), "u/x", "--endpoint", endpoint]), f"--endpoint {endpoint}")
    _one_error(CliRunner().invoke(app, ["pull", "u/x", "-o", str(tmp_path / "p"), "--endpoint", endpoint]), message)


def test_emulator_on_a_busy_port_prints_one_line():
    import socket
    import subprocess
    import sys

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        res = subprocess.run([sys.executable, "-m", "textbookgen.testing.emulator", "--port",
                              str(busy.getsockname()[1])], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and res.stderr.startswith("error: emulator cannot listen on 127.0.0.1:")
    assert "Traceback" not in res.stderr


def test_journal_reads_without_writing_and_checks_status(tmp_path):
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    _one_error(CliRunner().invoke(app, ["journal", str(empty)]), "not a textbookgen journal")
    assert empty.read_bytes() == b""
    from textbookgen.journal import Journal

    Journal(tmp_path / "j.sqlite").close()
    _one_error(CliRunner().invoke(app, ["journal", str(tmp_path / "j.sqlite"), "--status", "bogus"]),
               "--status 'bogus'")


def test_prompt_rows_out_of_range(tmp_path):
    from textbookgen.promptfile import PromptFileError, load_prompts

    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "x", "temperature": 5}\n')
    with pytest.raises(PromptFileError, match=r"p.jsonl:1: 'temperature' must be in \[0, 2\]"):
        load_prompts(path)


def test_a_model_level_validation_error_is_one_line_not_a_crash(tmp_path):
    """A validator of the whole model (two options that exclude each other) has an empty `loc`."""
    res = CliRunner().invoke(app, ["classifier", "score", str(tmp_path / "m.bin"), str(tmp_path / "in.parquet"),
                                   "-o", str(tmp_path / "out.parquet"), "--threshold", "0.5",
                                   "--keep-top-percent", "50"])
    _one_error(res, "give `threshold` or `keep_top_percent`, not both")
    assert len(res.output.splitlines()) == 1
    res = CliRunner().invoke(app, ["classifier", "score", str(tmp_path / "m.bin"), str(tmp_path / "in.parquet"),
                                   "-o", str(tmp_path / "out.parquet"), "--keep-top-percent", "0"])
    _one_error(res, "--keep-top-percent: Input should be greater than 0")  # a field's error still names its option


@pytest.mark.parametrize("args, message", [
    (["topics", "convert", str(STORIES), "folder"], "DST folder: is a folder"),
    (["topics", "grow", str(STORIES), "folder", "--target", "100", "--plan"], "DST folder: is a folder"),
    (["topics", "coverage", str(STORIES), "nothere.parquet"], "nothere.parquet: cannot read topic ids from it: no such"),
    (["journal", "folder"], "folder: is a folder; give the journal file"),
    (["journal", "j.sqlite", "--status", "ok"], "--status picks the rows --export writes"),
    (["pull", "u/x", "-o", "afile", "--endpoint", "foo"], "--out afile: is a file; give a folder"),
    (["pull", "u/afile", "--endpoint", "foo"], "afile: is a file, and pull writes into ./afile by default"),
    (["push", "folder", "u/x", "--timeout", "0", "--endpoint", "foo"], "--timeout: must be > 0"),
    (["generate", "d.jsonl", "--provider", "bogus"], "--provider 'bogus': choose one of openai"),
    (["classifier", "label", "d.jsonl", "-o", "l.jsonl", "--provider", "bogus"], "--provider 'bogus'"),
    (["classifier", "train", "-o", "m", "--positive", "d.jsonl"], "no negative examples among the 5 to train on"),
    (["classifier", "train", "-o", "m", "--labelled", "d.jsonl", "--label-column", "text"],
     "--label-column text: is the text column too"),
    (["classifier", "eval", "m.bin", "--labelled", "d.jsonl", "--label-column", "text"], "--label-column text"),
    (["classifier", "train", "-o", "m", "--positive", "d.jsonl", "--negative", "d.jsonl", "--label-column", "y"],
     "--label-column y: it names the label field of --labelled files; none is given"),
    (["classifier", "eval", "m.bin", "--positive", "d.jsonl", "--min-positive", "3"],
     "--min-positive 3: it reads the labels of --labelled files; none is given"),
])
def test_bad_input_names_the_option_or_file(corpus, monkeypatch, args, message):
    from textbookgen.journal import Journal

    monkeypatch.chdir(corpus.parent)
    Journal("j.sqlite").close()
    res = CliRunner().invoke(app, args)
    _one_error(res, message)
    assert len(res.output.splitlines()) == 1


def test_classifier_eval_and_score_take_the_model_as_train_named_it(tmp_path):
    labelled = tmp_path / "l.parquet"
    pl.DataFrame({"text": [f"the cell divides by mitosis, step {i}" for i in range(8)]
                          + [f"buy cheap pills now, offer {i}" for i in range(8)],
                  "label": [1] * 8 + [0] * 8}).write_parquet(labelled)
    model = str(tmp_path / "m")
    train = ["classifier", "train", "-o", model, "--labelled", str(labelled), "--lr", "0.5", "--epochs", "1",
             "--dim", "8", "--bucket", "1000"]
    assert CliRunner().invoke(app, train).exit_code == 0
    res = CliRunner().invoke(app, ["classifier", "eval", model, "--labelled", str(labelled)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["classifier", "score", model, str(labelled), "-o", str(tmp_path / "s.parquet")])
    assert res.exit_code == 0 and pl.read_parquet(tmp_path / "s.parquet").height == 16, res.output


def test_classifier_label_stopped_by_the_provider_names_the_journal_that_keeps_the_answers(tmp_path, monkeypatch):
    from textbookgen.errors import FatalProviderError

    def quota(*args, **kwargs):
        raise FatalProviderError("quota or billing exhausted for openai")

    monkeypatch.setattr("textbookgen.curation.judge.label_corpus", quota)
    pl.DataFrame({"text": ["some text here"]}).write_parquet(tmp_path / "in.parquet")
    res = CliRunner().invoke(app, ["classifier", "label", str(tmp_path / "in.parquet"), "-o", str(tmp_path / "l.jsonl"),
                                   "--base-url", "http://127.0.0.1:9/v1"], env=ENV)
    _one_error(res, "quota or billing exhausted", code=2)  # a stopped run exits 2, as generate and build do
    assert f"finished requests are kept in {tmp_path / 'l.jsonl.journal'}" in res.output


def test_a_check_of_two_options_together_names_no_option_that_does_not_exist(tmp_path):
    """bands x rows over num_perm is the minhash section's check: there is no `--minhash` option to name."""
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"text": "one document of a few words"}) + "\n")
    res = CliRunner().invoke(app, ["dedup", str(src), "-o", str(tmp_path / "out.jsonl"), "--bands", "20",
                                   "--rows", "8"])
    _one_error(res, "error: minhash: bands*rows = 160 > num_perm = 128")
    assert "--minhash" not in res.output
    _one_error(CliRunner().invoke(app, ["dedup", str(src), "-o", str(tmp_path / "out.jsonl"), "--threshold", "2"]),
               "error: --threshold: ")


def test_a_missing_field_of_an_option_keeps_its_name():
    """Only a check of a whole section goes unnamed; a field left out is named, though its input is the section."""
    from pydantic import BaseModel, ValidationError

    from textbookgen.cli import _error_line

    class Section(BaseModel):
        name: str

    with pytest.raises(ValidationError) as err:
        Section.model_validate({})
    assert _error_line(err.value) == "--name: Field required"


def test_topics_grow_stopped_by_the_provider_exits_2_as_generate_does(tmp_path, monkeypatch):
    from textbookgen.errors import FatalProviderError

    def quota(*args, **kwargs):
        raise FatalProviderError("quota or billing exhausted for openai")

    monkeypatch.setattr("textbookgen.taxonomy.grow", quota)
    res = CliRunner().invoke(app, ["topics", "grow", "builtin:stories", str(tmp_path / "g.yaml"), "--target", "60",
                                   "--base-url", "http://127.0.0.1:9/v1"], env=ENV)
    _one_error(res, "quota or billing exhausted", code=2)
    assert "finished requests are kept in" in res.output and not (tmp_path / "g.yaml").exists()
