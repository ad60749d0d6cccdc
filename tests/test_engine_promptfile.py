"""Prompt files and the `textbookgen generate` command: formats, defaults, clear errors on bad input."""

from __future__ import annotations

import json

import polars as pl
import pytest
from typer.testing import CliRunner

from textbookgen.cli import app
from textbookgen.engine import ChatResponse
from textbookgen.journal import Journal
from textbookgen.promptfile import PromptFileError, load_prompts, write_completions
from textbookgen.testing.emulator import Emulator, EmulatorConfig


def test_jsonl_prompts_messages_defaults_and_metadata(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(
        json.dumps({"prompt": "hello", "topic": "t1", "max_tokens": 50}) + "\n\n"
        + json.dumps({"messages": [{"role": "user", "content": "hi"}], "system": "own", "metadata": {"k": 1}})
        + "\n")
    a, b = load_prompts(path, {"max_tokens": 99, "temperature": 0.5, "system": "default"})
    assert a.messages == [{"role": "user", "content": "hello"}] and a.max_tokens == 50
    assert a.metadata == {"topic": "t1"} and a.temperature == 0.5 and a.system == "default"
    assert b.system == "own" and b.max_tokens == 99 and b.metadata == {"k": 1}


def test_parquet_prompts(tmp_path):
    path = tmp_path / "p.parquet"
    pl.DataFrame({"prompt": ["a", "b"], "topic_id": ["x", "y"]}).write_parquet(path)
    reqs = load_prompts(path)
    assert [r.metadata["topic_id"] for r in reqs] == ["x", "y"] and reqs[0].max_tokens == 1024


@pytest.mark.parametrize("content, message", [
    (b'{"prompt": "ok"}\n{not json}\n', "p.jsonl:2: invalid JSON"),
    (b'{"prompt": "ok"}\n{"text": "no prompt"}\n', "p.jsonl:2: needs a 'prompt'"),
    (b'{"prompt": "ok", "max_tokens": "many"}\n', "p.jsonl:1: 'max_tokens' has the wrong type"),
    (b'{"prompt": "caf\xe9"}\n', "p.jsonl:1: not valid UTF-8"),
    (b'["a list"]\n', "p.jsonl:1: each line must be a JSON object"),
    (b"\n\n", "p.jsonl: no prompts"),
    (b'{"prompt": "ok", "metadata": "topic-a"}\n', "p.jsonl:1: 'metadata' is a string that is not a JSON object"),
])
def test_bad_prompt_files_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "p.jsonl"
    path.write_bytes(content)
    with pytest.raises(PromptFileError, match=message.replace("(", r"\(")):
        load_prompts(path)


SCHEMA = {"type": "json_schema", "json_schema": {"name": "T", "schema": {"type": "object"}}}


def test_response_format_and_params_are_request_fields_not_metadata(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "List terms", "response_format": SCHEMA, "topic": "tides",
                                "params": {"stop": ["\n\n"], "min_p": 0.05, "top_k": None}}) + "\n"
                    + json.dumps({"prompt": "plain"}) + "\n")
    a, b = load_prompts(path, {"params": {"min_p": 0.1, "repetition_penalty": 1.1}})
    assert a.response_format == SCHEMA and a.metadata == {"topic": "tides"}
    assert a.params == {"stop": ["\n\n"], "min_p": 0.05, "repetition_penalty": 1.1}  # the row's win; null: unset
    assert b.response_format is None and b.params == {"min_p": 0.1, "repetition_penalty": 1.1} and b.metadata == {}


def test_parquet_params_and_response_format_as_json_text_or_struct(tmp_path):
    path = tmp_path / "p.parquet"
    pl.DataFrame({"prompt": ["a", "b"], "params": [{"top_k": 20, "min_p": None}, {"top_k": None, "min_p": 0.1}],
                  "response_format": [json.dumps(SCHEMA), None]}).write_parquet(path)
    a, b = load_prompts(path)
    assert a.params == {"top_k": 20} and b.params == {"min_p": 0.1}
    assert a.response_format == SCHEMA and b.response_format is None and a.metadata == b.metadata == {}


@pytest.mark.parametrize("row, message", [
    ({"stop": ["\n\n"]}, "p.jsonl:1: 'stop' is an API parameter, not read at the top level: put it under 'params'"),
    ({"max_completion_tokens": 4000}, "p.jsonl:1: 'max_completion_tokens' is an API parameter, not read at the top "
                                      "level: use 'max_tokens'"),
    ({"reasoning_effort": "low"}, "p.jsonl:1: 'reasoning_effort' is an API parameter"),
    ({"n": 3}, "p.jsonl:1: 'n' is an API parameter, not read at the top level: use generate --n"),
    ({"params": {"max_tokens": 10}}, "p.jsonl:1: 'params' must not set 'max_tokens': use the 'max_tokens' field"),
    ({"params": {"stream": True}}, "p.jsonl:1: 'params' must not set 'stream'"),
    ({"params": ["top_k", 20]}, "p.jsonl:1: 'params' must be an object"),
    ({"response_format": {"json_schema": {}}}, "p.jsonl:1: 'response_format' needs a 'type'"),
    ({"response_format": "json"}, "p.jsonl:1: 'response_format' is a string that is not a JSON object"),
])
def test_api_parameters_in_the_wrong_place_are_refused_naming_line_and_field(tmp_path, row, message):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "x", **row}) + "\n")
    with pytest.raises(PromptFileError, match=message.replace("(", r"\(")) as info:
        load_prompts(path)
    assert "\n" not in str(info.value)


def test_generate_sends_a_prompts_files_params_and_response_format(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "List 5 terms about tides", "response_format": SCHEMA,
                                   "params": {"stop": ["\n\n"], "presence_penalty": 0.5}}) + "\n")
    with Emulator(EmulatorConfig(latency_median_s=0.001, record_requests=True)) as emu:
        result = CliRunner().invoke(app, ["generate", str(prompts), "--base-url", emu.openai_base_url,
                                          "--no-progress"], env={"OPENAI_API_KEY": "sk-test"})
        assert result.exit_code == 0, result.output
        [body] = [r["body"] for r in emu.requests]
    assert body["stop"] == ["\n\n"] and body["presence_penalty"] == 0.5 and body["response_format"] == SCHEMA


def test_empty_parquet_has_no_prompts(tmp_path):
    path = tmp_path / "p.parquet"
    pl.DataFrame({"prompt": []}, schema={"prompt": pl.String}).write_parquet(path)
    with pytest.raises(PromptFileError, match="p.parquet: no prompts"):
        load_prompts(path)


def test_missing_file(tmp_path):
    with pytest.raises(PromptFileError, match="no such prompts file"):
        load_prompts(tmp_path / "absent.jsonl")


def test_write_completions_jsonl_and_parquet(tmp_path):
    responses = [ChatResponse(key="k1", text="t", finish_reason="stop", status="ok", metadata={"a": 1}),
                 ChatResponse(key="k2", text=None, finish_reason=None, status="failed", error="boom")]
    lines = write_completions(tmp_path / "c.jsonl", responses).read_text().splitlines()
    assert json.loads(lines[0])["metadata"] == {"a": 1} and json.loads(lines[1])["error"] == "boom"
    frame = pl.read_parquet(write_completions(tmp_path / "c.parquet", responses))
    assert frame["id"].to_list() == ["k1", "k2"] and json.loads(frame["metadata"][0]) == {"a": 1}


def test_completions_set_a_leading_reasoning_block_apart_from_the_text(tmp_path):
    responses = [ChatResponse(key="k", text="<think>\nplan\n</think>\n\nThe answer.", finish_reason="stop",
                              status="ok")]
    row = json.loads(write_completions(tmp_path / "c.jsonl", responses).read_text())
    assert row["text"] == "The answer." and row["reasoning"] == "\nplan\n"
    frame = pl.read_parquet(write_completions(tmp_path / "c.parquet", responses))
    assert frame["text"].to_list() == ["The answer."] and frame["reasoning"].to_list() == ["\nplan\n"]


def test_generate_command_writes_journal_and_completions(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-cli-test")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"topic {i}", "i": i}) + "\n" for i in range(12)))
    runner = CliRunner()
    with Emulator(EmulatorConfig(latency_median_s=0.001, api_keys=["sk-cli-test"])) as emu:
        args = ["generate", str(prompts), "--provider", "anthropic", "--model", "claude-haiku-4-5",
                "--base-url", emu.anthropic_base_url, "--api-key-env", "MY_KEY", "--max-tokens", "40",
                "--no-progress", "--price", "claude-haiku-4-5=2,4"]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert emu.billed == 12
        again = runner.invoke(app, args)  # resume: nothing left to send
        assert again.exit_code == 0 and emu.billed == 12
    assert "12 completions" in result.output
    rows = [json.loads(line) for line in (tmp_path / "prompts.completions.jsonl").read_text().splitlines()]
    assert [r["metadata"]["i"] for r in rows] == list(range(12))
    assert rows[0]["cost_usd"] == pytest.approx((rows[0]["input_tokens"] * 2 + rows[0]["output_tokens"] * 4) / 1e6)
    with Journal(tmp_path / "prompts.journal.sqlite") as j:
        assert j.summary()["done"] == 12
    shown = runner.invoke(app, ["journal", str(tmp_path / "prompts.journal.sqlite"), "--export",
                                str(tmp_path / "j.parquet"), "--status", "ok"])
    assert shown.exit_code == 0 and '"done": 12' in shown.output
    assert pl.read_parquet(tmp_path / "j.parquet").height == 12
    assert runner.invoke(app, ["journal", str(tmp_path / "absent.sqlite")]).exit_code == 1


def test_generate_command_missing_key_and_missing_prompts_file_exit_1(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "x"}\n')
    result = CliRunner().invoke(app, ["generate", str(prompts), "--no-progress"])
    assert result.exit_code == 1 and "OPENAI_API_KEY" in result.output
    bad = CliRunner().invoke(app, ["generate", str(tmp_path / "nope.jsonl")])
    assert bad.exit_code == 1 and "no such prompts file" in bad.output


@pytest.mark.parametrize("journal, message", [("not-sqlite.txt", "file is not a database"),
                                              (".", "cannot open journal")])
def test_generate_command_bad_journal_is_an_error_not_a_traceback(tmp_path, journal, message):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "x"}\n')
    (tmp_path / "not-sqlite.txt").write_text("hello, I am not SQLite\n")
    result = CliRunner().invoke(app, ["generate", str(prompts), "--journal", str(tmp_path / journal),
                                      "--no-progress"], env={"OPENAI_API_KEY": "sk-test"})
    assert result.exit_code == 1 and message in result.output and result.exception.__class__ is SystemExit


def test_generate_n_answers_per_prompt_are_seeded_and_growing_n_pays_only_the_new_ones(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "a"}) + "\n" + json.dumps({"prompt": "b", "seed": 40}) + "\n")
    runner = CliRunner()
    with Emulator(EmulatorConfig(latency_median_s=0.001, record_requests=True)) as emu:
        base = ["generate", str(prompts), "--base-url", emu.openai_base_url, "--no-progress"]
        env = {"OPENAI_API_KEY": "sk-test"}
        assert runner.invoke(app, base, env=env).exit_code == 0 and emu.billed == 2
        assert runner.invoke(app, [*base, "--n", "2"], env=env).exit_code == 0
        assert emu.billed == 4  # sample 0 is the request --n 1 sent: from the journal
        seeds = sorted(r["body"].get("seed", -1) for r in emu.requests)
        result = runner.invoke(app, [*base, "--n", "3"], env=env)
        assert result.exit_code == 0 and emu.billed == 6  # samples 0 and 1 come from the journal
        assert runner.invoke(app, [*base, "--n", "0"], env=env).exit_code == 1
    assert seeds == [-1, 1, 40, 41]  # sample 0 of "a" unseeded, as --n 1 sends it; "b" from its own seed
    rows = [json.loads(line) for line in (tmp_path / "p.completions.jsonl").read_text().splitlines()]
    assert [r["metadata"]["sample"] for r in rows] == [0, 1, 2, 0, 1, 2] and len({r["id"] for r in rows}) == 6


def test_generate_n_answers_at_temperature_0_on_anthropic_warn_that_they_pay_for_one(tmp_path, caplog):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "a"}) + "\n")
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu, caplog.at_level("WARNING", logger="textbookgen"):
        result = CliRunner().invoke(app, ["generate", str(prompts), "--provider", "anthropic", "--model",
                                          "claude-haiku-4-5", "--base-url", emu.anthropic_base_url, "--n", "2",
                                          "--temperature", "0", "--no-progress"], env={"ANTHROPIC_API_KEY": "sk-test"})
    assert result.exit_code == 0, result.output
    assert ("n=2 samples per prompt at temperature 0 are (nearly) the same answer, paid 2 times: Anthropic's API "
            "takes no seed, so the copies are the same request") in caplog.text
