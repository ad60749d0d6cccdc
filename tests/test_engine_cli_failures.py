"""`textbookgen generate` when requests fail: a non-zero exit that says how many, why, and how to send them again."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from textbookgen.cli import app
from textbookgen.testing.emulator import Emulator, EmulatorConfig, Fault


def prompts_file(tmp_path, texts: list[str]):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    return path


def test_requests_that_failed_for_good_make_the_command_fail_and_say_how_to_retry(tmp_path):
    prompts = prompts_file(tmp_path, [f"Explain topic {i}" for i in range(4)] + ["BAD one", "BAD two"])
    runner, env = CliRunner(), {"OPENAI_API_KEY": "sk-test"}
    with Emulator(EmulatorConfig(latency_median_s=0.001, faults=[Fault("400", rate=1.0, match="BAD")])) as emu:
        args = ["generate", str(prompts), "--base-url", emu.openai_base_url, "--no-progress"]
        result = runner.invoke(app, args, env=env)
        assert result.exit_code == 3, result.output
        assert "6 completions" in result.output  # the answers are written all the same
        assert "error: 2 of 6 requests failed (bad_request 2), e.g. openai HTTP 400" in result.output
        assert "rerun with --retry-failed to send the 2 refused for good again" in result.output
        emu.config.faults.clear()  # the cause is fixed
        assert runner.invoke(app, args, env=env).exit_code == 3  # a plain rerun replays the refusals
        fixed = runner.invoke(app, [*args, "--retry-failed"], env=env)
        assert fixed.exit_code == 0, fixed.output
        assert emu.billed == 6 and emu.duplicates == 0


def test_a_run_where_every_request_fails_stops_early_with_an_error(tmp_path):
    prompts = prompts_file(tmp_path, [f"Explain topic {i}" for i in range(300)])
    with Emulator(EmulatorConfig(latency_median_s=0.001, faults=[Fault("400", rate=1.0)])) as emu:
        result = CliRunner().invoke(app, ["generate", str(prompts), "--base-url", emu.openai_base_url,
                                          "--concurrency", "4", "--no-progress"], env={"OPENAI_API_KEY": "sk-test"})
        assert result.exit_code == 2, result.output
        assert "stopped early: 50 of the 50 requests finished so far failed" in result.output
        assert emu.received < 60
        off = CliRunner().invoke(app, ["generate", str(prompts), "--base-url", emu.openai_base_url, "--no-progress",
                                       "--max-error-rate", "1"], env={"OPENAI_API_KEY": "sk-test"})
        assert off.exit_code == 3 and "300 of 300 requests failed" in off.output and emu.received == 300


def test_requests_that_gave_up_on_transient_errors_exit_3_and_a_plain_rerun_sends_them(tmp_path):
    prompts = prompts_file(tmp_path, ["Explain topic 0", "FLAKY one"])
    with Emulator(EmulatorConfig(latency_median_s=0.001, faults=[Fault("500", rate=1.0, match="FLAKY")])) as emu:
        args = ["generate", str(prompts), "--base-url", emu.openai_base_url, "--no-progress", "--max-attempts", "1"]
        result = CliRunner().invoke(app, args, env={"OPENAI_API_KEY": "sk-test"})
        assert result.exit_code == 3, result.output
        assert "1 of 2 requests failed (transient 1)" in result.output
        assert "a plain rerun sends the 1 that gave up on transient errors again" in result.output
        assert "--retry-failed" not in result.output
        emu.config.faults.clear()
        assert CliRunner().invoke(app, args, env={"OPENAI_API_KEY": "sk-test"}).exit_code == 0
        assert emu.duplicates == 0


def test_a_run_the_budget_stopped_exits_4_and_a_larger_budget_finishes_it(tmp_path):
    prompts = prompts_file(tmp_path, [f"Explain topic {i}" for i in range(20)])
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        args = ["generate", str(prompts), "--base-url", emu.openai_base_url, "--no-progress", "--concurrency", "1"]
        result = CliRunner().invoke(app, [*args, "--max-cost", "0.002"], env={"OPENAI_API_KEY": "sk-test"})
        assert result.exit_code == 4, result.output
        sent = emu.billed
        assert 0 < sent < 20
        assert f"{20 - sent} of 20 requests were never sent, max_cost_usd=$0.0020 reached" in result.output
        assert "rerun with a larger --max-cost / --max-output-tokens" in result.output
        done = CliRunner().invoke(app, [*args, "--max-cost", "1"], env={"OPENAI_API_KEY": "sk-test"})
        assert done.exit_code == 0, done.output
        assert emu.billed == 20 and emu.duplicates == 0
