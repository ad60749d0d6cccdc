"""Answers the caller cannot use (a judge answer with no score, JSON that ignores the schema) count in the engine's
error-rate stop: a run of useless answers stops after about `error_window` of them instead of paying for the whole
sample, a few bad ones do not stop it, and every paid answer stays journaled so a rerun reuses it free."""

from __future__ import annotations

import json

import polars as pl
import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from textbookgen.engine import ChatRequest, ChatResponse, Generator
from textbookgen.errors import FatalProviderError
from textbookgen.journal import Journal
from textbookgen.llm import LLM
from textbookgen.testing.emulator import Emulator, EmulatorConfig

FAST = dict(backoff_initial_s=0.01, backoff_max_s=0.05, progress=False, timeout_s=20.0, concurrency=4)


def reqs(n: int) -> list[ChatRequest]:
    return [ChatRequest(messages=[{"role": "user", "content": f"Rate document {i}"}], max_tokens=64)
            for i in range(n)]


def scored(resp: ChatResponse) -> str | None:
    return None if "SCORE" in resp.answer else "no_score"


def junk_for(bad: set[int]):
    """A responder that ignores the asked format on the requests numbered in `bad`."""
    def respond(body: dict) -> str:
        number = int(body["messages"][-1]["content"].rsplit(" ", 1)[-1])
        return "Sure! I liked it." if number in bad else f"Fine. SCORE {number % 6}"
    return respond


def gen_for(emu: Emulator, tmp_path, **kw) -> Generator:
    return Generator("openai", "gpt-4o-mini", base_url=emu.openai_base_url, api_key="sk-test-key",
                     journal=tmp_path / "j.sqlite", **{**FAST, **kw})


def test_a_run_of_unusable_answers_stops_early_and_a_rerun_reuses_them(tmp_path):
    with Emulator(EmulatorConfig(latency_median_s=0.001, responder=junk_for(set(range(200))))) as emu:
        with pytest.raises(FatalProviderError) as err:
            gen_for(emu, tmp_path, error_window=20, answer_check=scored).run(reqs(200))
        paid = emu.billed
        assert 20 <= paid <= 20 + 2 * FAST["concurrency"]  # not the 200 of the whole sample
        assert "no_score" in str(err.value) and "Sure! I liked it." in str(err.value)
        with Journal(tmp_path / "j.sqlite") as j:
            assert j.summary()["by_status"]["ok"] == paid  # journaled as paid, statuses unchanged
        out = gen_for(emu, tmp_path).run(reqs(200))  # the parser is fixed: no check rejects them now
        assert emu.billed == 200 and emu.duplicates == 0  # the paid answers replayed, the rest sent once
    assert all(r.status == "ok" for r in out)


def test_a_few_unusable_answers_do_not_stop_the_run(tmp_path):
    bad = set(range(0, 100, 10))
    with Emulator(EmulatorConfig(latency_median_s=0.001, responder=junk_for(bad))) as emu:
        gen = gen_for(emu, tmp_path, error_window=20, answer_check=scored)
        out = gen.run(reqs(100))
        assert emu.billed == 100
    assert gen.stats["rejected"] == len(bad) and gen.stats["failed"] == 0
    assert [i for i, r in enumerate(out) if "SCORE" not in r.text] == sorted(bad)  # returned as they came
    assert all(r.status == "ok" for r in out)


class Term(BaseModel):
    term: str


class Terms(LLM):
    response_format = Term

    def prompt(self, row):
        return f"Give the key term of document {row}"


def test_an_llm_whose_answers_ignore_its_schema_stops_early(tmp_path):
    with Emulator(EmulatorConfig(latency_median_s=0.001, responder=lambda body: "The key term is photosynthesis.")) as emu:
        task = Terms("gpt-4o-mini", base_url=emu.openai_base_url, api_key="sk-test-key",
                     journal=tmp_path / "llm.sqlite", error_window=20, **FAST)
        with pytest.raises(FatalProviderError, match="unfit_format"):
            task(range(200))
        assert emu.billed <= 20 + 2 * FAST["concurrency"]


def test_an_llm_with_a_few_unfit_answers_runs_to_the_end_re_asks_included(tmp_path):
    """The re-ask round holds only misses, here all missing again: that is no model ignoring its schema."""
    def respond(body: dict) -> str:
        number = int(body["messages"][-1]["content"].rsplit(" ", 1)[-1])
        return "no idea" if number % 5 == 0 else json.dumps({"term": f"t{number}"})

    with Emulator(EmulatorConfig(latency_median_s=0.001, responder=respond)) as emu:
        task = Terms("gpt-4o-mini", base_url=emu.openai_base_url, api_key="sk-test-key", schema_retries=1,
                     journal=tmp_path / "llm.sqlite", error_window=10, **FAST)
        table = task(range(100))
        assert emu.billed == 120  # 100, then the 20 misses asked again
    assert table.height == 80 and len(task.failures) == 20
    assert task.generator.answer_check is not None  # back for the next call


def test_classifier_label_stops_when_the_judge_gives_no_scores(tmp_path):
    from textbookgen.cli import app

    texts = [f"Lesson {i}: plants turn light into sugar, step {i}." for i in range(150)]
    pl.DataFrame({"id": [f"d{i}" for i in range(150)], "text": texts}).write_parquet(tmp_path / "in.parquet")
    with Emulator(EmulatorConfig(latency_median_s=0.001, responder=lambda body: "This page is nice.")) as emu:
        result = CliRunner().invoke(app, ["classifier", "label", str(tmp_path / "in.parquet"), "-o",
                                          str(tmp_path / "labels.jsonl"), "--base-url", emu.openai_base_url,
                                          "--concurrency", "4"], env={"OPENAI_API_KEY": "test-key"})
        assert result.exit_code != 0
        assert "score_unparsed" in result.output and "This page is nice." in result.output
        assert emu.billed <= 50 + 8  # the default error_window, not the 150 documents


def test_classifier_label_with_max_error_rate_1_judges_every_document(tmp_path):
    """The stop's message says `--max-error-rate 1` turns it off: classifier label takes it too."""
    from textbookgen.cli import app

    pl.DataFrame({"id": [f"d{i}" for i in range(80)], "text": [f"Lesson {i} on tides." for i in range(80)]}
                 ).write_parquet(tmp_path / "in.parquet")  # fmt: skip
    with Emulator(EmulatorConfig(latency_median_s=0.001, responder=lambda body: "This page is nice.")) as emu:
        result = CliRunner().invoke(app, ["classifier", "label", str(tmp_path / "in.parquet"), "-o",
                                          str(tmp_path / "labels.jsonl"), "--base-url", emu.openai_base_url,
                                          "--max-error-rate", "1"], env={"OPENAI_API_KEY": "test-key"})
        assert result.exit_code == 0, result.output
        assert emu.billed == 80
    stats = json.loads(result.output[result.output.index("{"):result.output.rindex("}") + 1])
    assert stats["kept"] == 0 and stats["dropped"]["unparsed"] == 80
