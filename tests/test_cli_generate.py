"""`textbookgen generate`'s exits that the engine's CLI tests leave out: a key variable that is not set (as for
`journal --cancel-batches`), and a run where requests both failed and were kept back by the budget."""

from __future__ import annotations

from test_engine_cli_failures import prompts_file
from typer.testing import CliRunner

from textbookgen.cli import app
from textbookgen.testing.emulator import Emulator, EmulatorConfig, Fault


def test_an_api_key_variable_that_is_not_set_exits_1_before_anything_is_sent(tmp_path, monkeypatch):
    monkeypatch.delenv("TBG_UNSET_KEY", raising=False)
    prompts = prompts_file(tmp_path, ["Explain topic 0"])
    result = CliRunner().invoke(app, ["generate", str(prompts), "--base-url", "http://127.0.0.1:9/v1",
                                      "--api-key-env", "TBG_UNSET_KEY"])
    assert result.exit_code == 1 and result.output == "error: environment variable TBG_UNSET_KEY is not set\n"
    assert not (tmp_path / "p.journal.sqlite").exists()
    journal = tmp_path / "j.sqlite"
    journal.write_bytes(b"")
    cancel = CliRunner().invoke(app, ["journal", str(journal), "--cancel-batches", "--api-key-env", "TBG_UNSET_KEY"])
    assert cancel.exit_code == 1 and cancel.output == "error: environment variable TBG_UNSET_KEY is not set\n"


def test_failed_and_budget_kept_requests_exit_3_naming_both_ways_to_send_them(tmp_path):
    prompts = prompts_file(tmp_path, ["BAD one"] + [f"Explain topic {i}" for i in range(19)])
    with Emulator(EmulatorConfig(latency_median_s=0.001, faults=[Fault("400", rate=1.0, match="BAD")])) as emu:
        result = CliRunner().invoke(app, ["generate", str(prompts), "--base-url", emu.openai_base_url, "--no-progress",
                                          "--concurrency", "1", "--max-cost", "0.002"],
                                    env={"OPENAI_API_KEY": "sk-test"})
        sent = emu.billed
    assert result.exit_code == 3 and 0 < sent < 19, result.output
    assert "error: 1 of 20 requests failed (bad_request 1), e.g. openai HTTP 400" in result.output
    assert (f"rerun with --retry-failed to send the 1 refused for good again once the cause is fixed; {19 - sent} of "
            "20 requests were never sent, max_cost_usd=$0.0020 reached") in result.output
    assert result.output.endswith("; rerun with a larger --max-cost / --max-output-tokens to send them\n")
