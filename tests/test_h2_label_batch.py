"""`classifier label --batch`: the judge's requests through the providers' batch APIs (the emulator's), at half
price, with everything a live label run keeps: labels, the unscored-answer counts, the budget stop (exit 4), the
stopped run (exit 2), and an interrupted run whose submitted batches a rerun collects instead of paying again."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import typer
from batch_testlib import shifted_clock
from typer.testing import CliRunner

from textbookgen.cli import app
from textbookgen.testing.emulator import Emulator, EmulatorConfig

PROVIDERS = [("openai", "gpt-4o-mini"), ("anthropic", "claude-haiku-4-5")]
KEYS = {"OPENAI_API_KEY": "sk-test-key", "ANTHROPIC_API_KEY": "sk-ant-test-key"}
DOCS = 24


def judge_responder(body: dict) -> str:
    """A stand-in judge: a chapter gets 4, a shop page 1, an extract marked NO-SCORE an answer with no score."""
    messages = body["messages"]
    extract = messages[-1]["content"] if isinstance(messages[-1]["content"], str) else messages[-1]["content"][0]["text"]
    extract = extract.split("The extract:\n", 1)[1]
    if "NO-SCORE" in extract:
        return "I am not able to judge this extract."
    return f"A {'lesson' if 'Chapter' in extract else 'sales page'}.\nEducational score: {4 if 'Chapter' in extract else 1}"


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    texts = [f"Chapter {i}: how fractions of {i} work, with worked examples and exercises." if i % 2 else
             f"Buy {i} shoes today at half price, free delivery over ten pounds." for i in range(DOCS - 2)]
    texts += ["NO-SCORE a page of links", "NO-SCORE another page of links"]
    path = tmp_path / "corpus.parquet"
    pl.DataFrame({"id": [f"d{i:02d}" for i in range(DOCS)], "text": texts}).write_parquet(path)
    return path


def base_url(emu: Emulator, provider: str) -> str:
    return emu.anthropic_base_url if provider == "anthropic" else emu.openai_base_url


def label(args: list[str]):
    return CliRunner().invoke(app, ["classifier", "label", *args], env=KEYS)


def label_args(corpus: Path, out: Path, emu: Emulator, provider: str, model: str, *more: str) -> list[str]:
    return [str(corpus), "-o", str(out), "--provider", provider, "--model", model, "--base-url",
            base_url(emu, provider), *more]


def printed_stats(output: str) -> dict:
    return json.loads(output[output.index("{"):output.rindex("}") + 1])


def batch_statuses(journal: Path) -> list[str]:
    try:
        with sqlite3.connect(journal) as db:
            return [row[0] for row in db.execute("SELECT status FROM batches ORDER BY created_at")]
    except sqlite3.OperationalError:  # the run has not made its tables yet
        return []


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_batch_labels_are_the_live_labels_at_half_the_price(corpus, tmp_path, provider, model):
    price = [f"--price={model}=2,8"]  # a price of your own holds in batch mode too, halved
    with Emulator(EmulatorConfig(latency_median_s=0.001, responder=judge_responder)) as emu:
        live = label(label_args(corpus, tmp_path / "live.jsonl", emu, provider, model, *price))
    with Emulator(EmulatorConfig(batch_latency_s=0.1, responder=judge_responder)) as emu:
        batch = label(label_args(corpus, tmp_path / "batch.jsonl", emu, provider, model, *price, "--batch",
                                 "--batch-size", "10", "--batch-poll", "0.05"))
        sent = emu.stats()
    assert live.exit_code == 0, live.output
    assert batch.exit_code == 0, batch.output
    assert sent["received"] == 0 and sent["batches_created"] == 3 and sent["batch_requests"] == DOCS  # 10 + 10 + 4
    assert sent["billed"] == DOCS and sent["duplicates"] == 0
    read = lambda name: pl.read_ndjson(tmp_path / name).select("id", "label", "judge_status")  # noqa: E731
    assert read("batch.jsonl").equals(read("live.jsonl")) and read("batch.jsonl").height == DOCS - 2
    live_stats, batch_stats = printed_stats(live.stdout), printed_stats(batch.stdout)
    assert batch_stats["dropped"] == live_stats["dropped"] == {"unparsed": 2}
    assert [x["id"] for x in batch_stats["unscored_examples"]] == ["d22", "d23"]
    assert batch_stats["score_counts"] == {"1": 11, "4": 11}
    with sqlite3.connect(tmp_path / "batch.jsonl.journal") as db:
        tokens_in, tokens_out = db.execute("SELECT SUM(input_tokens), SUM(output_tokens) FROM requests").fetchone()
    assert batch_stats["cost_usd"] == pytest.approx(0.5 * (2 * tokens_in + 8 * tokens_out) / 1e6, abs=2e-6)
    assert batch_stats["cost_usd"] == pytest.approx(0.5 * live_stats["cost_usd"], abs=2e-6)
    assert batch_stats["paid_this_run_usd"] == batch_stats["cost_usd"] > 0


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_a_batch_budget_stop_exits_4_keeping_the_labels_and_a_rerun_pays_only_for_the_rest(corpus, tmp_path,
                                                                                           provider, model):
    out = tmp_path / "labels.jsonl"
    with Emulator(EmulatorConfig(batch_latency_s=0.05, responder=judge_responder)) as emu:
        args = label_args(corpus, out, emu, provider, model, "--price", f"{model}=100,100", "--batch",
                          "--batch-poll", "0.02")
        cut = label([*args, "--max-cost", "0.3"])  # the worst case of a request (256 answer tokens) is over $0.015
        assert cut.exit_code == 4, cut.output
        assert "--max-cost 0.3 was reached" in cut.output
        kept = len(out.read_text().splitlines())
        stats = printed_stats(cut.stdout)
        assert stats["cost_usd"] <= 0.3 and stats["dropped"]["skipped_budget"] == DOCS - kept - stats["dropped"].get(
            "unparsed", 0)
        assert 0 < kept < DOCS - 2 and emu.billed == DOCS - stats["dropped"]["skipped_budget"]
        done = label([*args, "--max-cost", "10"])
        assert done.exit_code == 0, done.output
        assert emu.billed == DOCS and emu.duplicates == 0 and emu.received == 0
    assert len(out.read_text().splitlines()) == DOCS - 2


def _start(args: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "textbookgen", "classifier", "label", *args]
    return subprocess.Popen(cmd, env={**os.environ, **KEYS}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_running(proc: subprocess.Popen, journal: Path, batches: int) -> None:
    deadline = time.monotonic() + 120
    while batch_statuses(journal) != ["running"] * batches:
        assert proc.poll() is None, f"ended before its batches ran: {proc.communicate()}"
        assert time.monotonic() < deadline, f"batches never ran: {batch_statuses(journal)}"
        time.sleep(0.02)


@pytest.mark.parametrize(("provider", "model", "sig", "code"), [(*PROVIDERS[0], signal.SIGINT, 130),
                                                                (*PROVIDERS[1], signal.SIGTERM, 143)])
def test_an_interrupted_batch_run_is_collected_by_the_rerun_not_paid_again(corpus, tmp_path, monkeypatch, provider,
                                                                           model, sig, code):
    out, journal = tmp_path / "labels.parquet", tmp_path / "labels.parquet.journal"
    shift = shifted_clock(monkeypatch)
    with Emulator(EmulatorConfig(batch_latency_s=600.0, responder=judge_responder)) as emu:
        args = label_args(corpus, out, emu, provider, model)
        proc = _start([*args, "--batch", "--batch-size", "8", "--batch-poll", "0.05"])
        _wait_running(proc, journal, 3)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == code, stderr
        assert f"interrupted: finished requests are in {journal}; rerun the same command" in stderr
        assert f"textbookgen journal {journal} --cancel-batches" in stderr and not out.exists()
        live = label(args)  # a live rerun does not send what the running batches hold: it stops, naming --batch
        assert live.exit_code == 2 and "rerun with --batch" in live.output, live.output
        assert emu.received == 0
        shift[0] = 700.0  # the batches have ended at the provider
        again = label([*args, "--batch", "--batch-poll", "0.05"])
        assert again.exit_code == 0, again.output
        assert emu.stats()["batches_created"] == 3 and emu.billed == DOCS and emu.duplicates == 0
        assert emu.received == 0
    assert batch_statuses(journal) == ["done"] * 3
    labelled = pl.read_parquet(out)
    assert labelled.height == DOCS - 2 and set(labelled["label"]) == {1, 4}


def test_batch_options_are_checked_before_anything_is_read_or_sent(corpus, tmp_path):
    common = [str(corpus), "-o", str(tmp_path / "labels.jsonl"), "--base-url", "http://127.0.0.1:9/v1"]
    cases = {
        ("--batch-size", "500"): "--batch-size and --batch-poll go with --batch",  # else live, at twice the price
        ("--batch-poll", "5"): "--batch-size and --batch-poll go with --batch",
        ("--batch", "--batch-size", "0"): "--batch-size: must be >= 1, got 0",
        ("--batch", "--batch-poll", "-1"): "--batch-poll: must be >= 0, got -1.0",
        ("--batch", "--provider", "openai-compatible"): "--batch: --provider openai-compatible has no batch API",
        ("--batch", "--max-error-rate", "0.2"): "--max-error-rate: live runs only",
    }
    for extra, message in cases.items():
        result = label([*common, *extra])
        assert result.exit_code == 1 and message in result.output, (extra, result.output)
    assert not (tmp_path / "labels.jsonl.journal").exists()


def test_a_live_trial_sample_is_replayed_by_the_batch_run_and_the_help_says_the_stop_is_live_only(corpus, tmp_path):
    """What --help advises, as the error-rate stop cannot guard a batch: judge a small live sample first."""
    with Emulator(EmulatorConfig(latency_median_s=0.001, batch_latency_s=0.05, responder=judge_responder)) as emu:
        args = label_args(corpus, tmp_path / "labels.jsonl", emu, "openai", "gpt-4o-mini")
        trial = label([*args, "--sample", "5"])
        assert trial.exit_code == 0 and emu.received == 5, trial.output
        result = label([*args, "--batch", "--batch-poll", "0.02", "--max-error-rate", "1"])  # 1 (never stop): allowed
        assert result.exit_code == 0, result.output
        assert emu.received == 5 and emu.stats()["batch_requests"] == DOCS - 5 and emu.duplicates == 0
    command = typer.main.get_command(app).commands["classifier"].commands["label"]
    rate = next(p.help for p in command.params if p.name == "max_error_rate")
    assert "Live runs only: --batch pays for a batch as it submits it, so nothing stops it early" in rate
