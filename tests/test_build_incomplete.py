"""A build that leaves requests unanswered exits as `generate` does (2 stopped, 3 failed, 4 budget, 130 Ctrl-C),
says what a rerun needs, writes a card that says the dataset is incomplete and pushes it only when asked;
truncated answers are dropped by curation (`curation.drop_truncated`), counted with their reason."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest
from test_build import CLI, NO_KEYS, QUICKSTART, ROOT, _done_rows, prose_responder
from typer.testing import CliRunner

from textbookgen.build import build
from textbookgen.cli import app
from textbookgen.recipe import load_recipe
from textbookgen.testing.emulator import Emulator, EmulatorConfig, Fault

EXERCISES = "Write a set of 5 exercises"  # 3 of quickstart's first 12 prompts (indices 2, 3, 7)


def _build(out: Path, base_url: str, *args: str, **sets: object):
    sets = {"output": out, "samples": 12, "provider.base_url": base_url, "curation.filters.enabled": False,
            "limits.concurrency": 1, **sets}  # fmt: skip
    argv = ["build", str(QUICKSTART), "--no-progress", *args, *(f"--set={k}={v}" for k, v in sets.items())]
    return CliRunner().invoke(app, argv)


def _emulator(*faults: Fault) -> Emulator:
    return Emulator(EmulatorConfig(latency_median_s=0.002, responder=prose_responder, faults=list(faults)))


def test_a_budget_stopped_build_exits_4_says_incomplete_and_pushes_only_when_asked(tmp_path, monkeypatch):
    from huggingface_hub import HfApi, hf_hub_download

    from textbookgen.testing.fakehub import FakeHub

    out = tmp_path / "qs"
    with FakeHub() as hub, _emulator() as emu:
        for k, v in (("HF_TOKEN", hub.token), ("HF_ENDPOINT", hub.endpoint), ("HF_HUB_DISABLE_XET", "1")):
            monkeypatch.setenv(k, v)
        api, repo = HfApi(endpoint=hub.endpoint, token=hub.token), f"{hub.user}/partial"

        def card() -> str:
            path = hf_hub_download(repo, "README.md", repo_type="dataset", endpoint=hub.endpoint, token=hub.token,
                                   cache_dir=tmp_path / "hf", force_download=True)  # fmt: skip
            return Path(path).read_text()

        small = {"budget.max_output_tokens": 2500, "hub.repo_id": repo}
        res = _build(out, emu.openai_base_url, "--push", **small)
        assert res.exit_code == 4, res.output
        m = json.loads((out / "manifest.json").read_text())
        assert 0 < m["counts"]["documents"] < 12 and m["counts"]["skipped_budget"] == 12 - m["counts"]["documents"]
        assert m["stages"]["push"] == "held" and not api.repo_exists(repo, repo_type="dataset")
        error = res.output[res.output.index("error: "):]
        assert "the dataset is incomplete" in error and "budget.max_output_tokens" in error
        assert "raise it and rerun" in error and f"not pushed to {repo}" in error and "--push-incomplete" in error
        local = (out / "dataset" / "README.md").read_text()
        missing = m["counts"]["skipped_budget"]
        assert f"**This dataset is incomplete**: {missing} of 12 requests gave no document, {missing} were not sent" in local

        res = _build(out, emu.openai_base_url, "--push-incomplete", **small)  # opted in: pushed, still exit 4
        assert res.exit_code == 4, res.output
        assert f"pushed to {repo} as asked" in res.output and "This dataset is incomplete" in card()

        billed = emu.billed
        res = _build(out, emu.openai_base_url, "--push", **{**small, "budget.max_output_tokens": "null"})
        assert res.exit_code == 0, res.output
        assert emu.billed - billed == missing  # only the requests the budget kept back
        assert "error: " not in res.output and "incomplete" not in card()
    assert "incomplete" not in json.loads((out / "manifest.json").read_text())


def test_a_build_with_failed_requests_exits_3_and_its_card_says_so(tmp_path):
    with _emulator(Fault("400", rate=1.0, match=EXERCISES)) as emu:
        res = _build(tmp_path / "qs", emu.openai_base_url)
    assert res.exit_code == 3, res.output
    assert "built 9 documents" in res.output
    error = res.output[res.output.index("error: "):]
    assert "the dataset is incomplete, 3 of 12 requests gave no document: 3 request(s) failed (3 bad_request" in error
    assert "--retry-failed" in error
    readme = (tmp_path / "qs" / "dataset" / "README.md").read_text()
    assert "**This dataset is incomplete**: 3 of 12 requests gave no document, 3 of them failed." in readme


def test_a_build_the_error_breaker_stops_exits_2_naming_its_journal(tmp_path):
    out = tmp_path / "qs"
    with _emulator(Fault("400", rate=1.0)) as emu:
        res = _build(out, emu.openai_base_url, samples=60, **{"limits.concurrency": 4})
    assert res.exit_code == 2, res.output
    assert "stopped early" in res.output and f"finished requests are kept in {out / 'journal.sqlite'}" in res.output
    assert "provider.max_error_rate: null" in res.output
    with _emulator(Fault("400", rate=1.0)) as emu:  # the recipe turns the breaker off: every request is tried
        res = _build(tmp_path / "qs2", emu.openai_base_url, samples=60,
                     **{"limits.concurrency": 4, "provider.max_error_rate": "null"})
    assert res.exit_code == 3, res.output
    assert emu.received >= 60  # stopped at the 50th with the breaker on


def test_ctrl_c_during_a_build_exits_130_with_a_resume_hint(tmp_path):
    out = tmp_path / "qs"
    with Emulator(EmulatorConfig(latency_median_s=0.2, latency_sigma=0.2, responder=prose_responder)) as emu:
        sets = {"output": out, "samples": 40, "provider.base_url": emu.openai_base_url, "limits.concurrency": 2}
        argv = ["build", str(QUICKSTART), "--no-progress", *(f"--set={k}={v}" for k, v in sets.items())]
        proc = subprocess.Popen([*CLI, *argv], cwd=ROOT, env=NO_KEYS, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)  # fmt: skip
        deadline = time.monotonic() + 120
        while _done_rows(out / "journal.sqlite") < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, "the build finished before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    last = stderr.strip().splitlines()[-1]
    assert last == (f"interrupted during generate: finished requests are in {out / 'journal.sqlite'}; rerun the same "
                    "command to resume."), stderr  # fmt: skip


def test_truncated_documents_are_dropped_and_counted_unless_the_recipe_keeps_them(tmp_path):
    out = tmp_path / "qs"
    with _emulator(Fault("truncate", rate=1.0, match=EXERCISES)) as emu:
        over = {"output": str(out), "samples": 12, "provider.base_url": emu.openai_base_url,
                "curation.filters.enabled": False}  # fmt: skip
        res = build(load_recipe(QUICKSTART, over), progress=False)
        assert res.unfinished is None  # a truncated answer is an answer: the build is complete
        readme = (out / "dataset" / "README.md").read_text()
        kept = build(load_recipe(QUICKSTART, {**over, "curation.drop_truncated": False}), progress=False)
        assert emu.billed == 12  # only curation ran again
    stats = res.manifest["curation"]
    assert list(stats)[0] == "truncated"
    assert stats["truncated"] == {"in": 12, "kept": 9, "dropped": {"cut_at_max_tokens": 3}}
    assert stats["exact_dedup"]["in"] == 9 and res.manifest["counts"]["truncated"] == 3
    rows = [line for line in readme.splitlines() if line.startswith("| ") and line.count("|") == 7]
    assert rows[1].startswith("| truncated | 12 | 9 | 3 | cut_at_max_tokens: 3 |")  # first stage, in run order
    assert rows[2].startswith("| exact_dedup | 9 | 9 | 0 |")
    assert "| documents cut at max_tokens (in this dataset; curation removed 3 more) | 0 |" in readme
    assert "truncated" not in kept.manifest["curation"] and kept.stages["curate"] == "ran"
    assert pl.read_parquet(out / "curated.parquet")["finish_reason"].to_list().count("length") == 3
    assert "| documents cut at max_tokens (in this dataset) | 3 |" in (out / "dataset" / "README.md").read_text()


def test_filter_command_drops_truncated_rows_of_a_completions_file(tmp_path):
    import random

    from textbookgen.testing.responder import prose

    rows = [{"id": str(i), "text": prose("Cells", 200, random.Random(i)), "finish_reason": r}
            for i, r in enumerate(["stop", "length", "stop", None])]  # fmt: skip
    pl.DataFrame(rows).write_parquet(tmp_path / "c.parquet")
    res = CliRunner().invoke(app, ["filter", str(tmp_path / "c.parquet"), "-o", str(tmp_path / "f.parquet")])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output[res.output.index("{"):])["truncated"]["dropped"] == {"cut_at_max_tokens": 1}
    assert pl.read_parquet(tmp_path / "f.parquet")["id"].to_list() == ["0", "2", "3"]


@pytest.mark.parametrize("flag", ["--max-cost", "--max-cost-usd"])
def test_classifier_label_takes_max_cost_and_its_old_name(tmp_path, flag):
    pl.DataFrame({"id": [str(i) for i in range(20)], "text": [f"Text {i} about cells." for i in range(20)]}
                 ).write_parquet(tmp_path / "in.parquet")  # fmt: skip
    with Emulator(EmulatorConfig(latency_median_s=0.002)) as emu:  # its default answers give a score
        res = CliRunner().invoke(app, ["classifier", "label", str(tmp_path / "in.parquet"), "-o",
                                       str(tmp_path / "labels.jsonl"), "--base-url", emu.openai_base_url,
                                       "--concurrency", "1", flag, "0.001"], env={"OPENAI_API_KEY": "test-key"})  # fmt: skip
    assert res.exit_code == 4, res.output  # the labels so far are written; the budget stop is not success
    stats = json.loads(res.output[res.output.index("{"):res.output.rindex("}") + 1])
    assert 0 < emu.billed == stats["kept"] < 20 and stats["dropped"]["skipped_budget"] == 20 - emu.billed
    assert pl.read_ndjson(tmp_path / "labels.jsonl").height == stats["kept"]


def test_classifier_label_help_shows_max_cost_only_and_the_two_names_must_agree(tmp_path):
    help_text = CliRunner().invoke(app, ["classifier", "label", "--help"], env={"COLUMNS": "200"}).output
    assert "--max-cost " in help_text and "--max-cost-usd" not in help_text
    res = CliRunner().invoke(app, ["classifier", "label", str(tmp_path / "in.parquet"), "-o", str(tmp_path / "o.jsonl"),
                                   "--max-cost", "1", "--max-cost-usd", "2"])  # fmt: skip
    assert res.exit_code == 1 and "error: --max-cost 1 and --max-cost-usd 2 (its old name) disagree" in res.output


def test_push_incomplete_with_no_push_is_one_line_error(tmp_path):
    res = CliRunner().invoke(app, ["build", str(QUICKSTART), "--no-push", "--push-incomplete",
                                   f"--set=output={tmp_path / 'o'}"])  # fmt: skip
    assert res.exit_code == 1 and res.output.strip() == "error: --push-incomplete pushes; it does not go with --no-push"
    assert not (tmp_path / "o").exists()


def test_classifier_label_needs_no_key_for_a_local_server(tmp_path):
    pl.DataFrame({"id": ["0", "1"], "text": ["Text about cells.", "Text about tides."]}).write_parquet(tmp_path / "in.parquet")
    with Emulator(EmulatorConfig(latency_median_s=0.002)) as emu:  # build and topics grow take it keyless too
        res = CliRunner().invoke(app, ["classifier", "label", str(tmp_path / "in.parquet"), "-o",
                                       str(tmp_path / "labels.jsonl"), "--base-url", emu.openai_base_url],
                                 env={"OPENAI_API_KEY": None})  # fmt: skip
    assert res.exit_code == 0, res.output
    assert emu.billed == 2
