"""LLM judge through the engine against the loopback emulator: prompts, score parsing, failures, and
judge labels -> fastText classifier."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import polars as pl
import pytest

from textbookgen.curation.judge import EducationalJudge, label_corpus, parse_score


def test_parse_score():
    assert parse_score("Good extract.\nEducational score: 4") == 4
    assert parse_score("The extract... **Educational score: 3/5**") == 3
    assert parse_score("score 2 first, then Educational Score: 5") == 5
    assert parse_score("I cannot rate this.") is None and parse_score(None) is None
    assert parse_score("Educational score: 7") is None


def rubric_responder(body: dict) -> str:
    """A stand-in judge: textbook-like extracts get 4, web pages 1; one marker gets no score at all."""
    prompt = body["messages"][-1]["content"]
    extract = prompt.split("The extract:\n", 1)[1].split("\n\nAfter examining the extract:")[0]
    if "NO-SCORE" in extract:
        return "I am not able to judge this extract."
    textbook = bool(re.search(r"^#{1,4} |\bChapter\b|\bSection\b", extract, re.M))
    return f"The extract {'teaches' if textbook else 'sells'} things.\nEducational score: {4 if textbook else 1}"


@pytest.fixture(scope="module")
def docs(shared_data: Path) -> pl.DataFrame:
    books = [json.loads(x)["text"] for x in gzip.open(
        shared_data / "sciphi_synthetic_textbooks" / "sciphi_textbooks.jsonl.gz", "rt")]
    sections = [s for b in books for s in re.split(r"\n(?=### )", b) if len(s.split()) > 100][:40]
    web = [json.loads(x)["text"] for x in gzip.open(shared_data / "c4_en_sample_1k" / "c4_sample.jsonl.gz", "rt")]
    web = [w for w in web if "#" not in w and "Chapter" not in w and "Section" not in w][:40]
    texts = sections + web + ["NO-SCORE " + web[0]]
    return pl.DataFrame({"id": [f"d{i:03d}" for i in range(len(texts))], "text": texts})


def test_judge_through_engine_and_emulator(docs, tmp_path):
    from textbookgen.engine import Generator
    from textbookgen.testing.emulator import Emulator, EmulatorConfig, Fault

    # a limit far above this load, so the emulator sends rate headers, as the providers do: a header-less server's
    # 429s are all the engine learns its rate from, and the 8 injected ones held 81 requests to ~4 a second (~18 s)
    cfg = EmulatorConfig(latency_median_s=0.002, responder=rubric_responder, seed=1, rpm=100_000,
                         faults=[Fault("500", rate=0.1), Fault("429", rate=0.1)])
    with Emulator(cfg) as emu:
        gen = Generator(provider="openai", model="gpt-4o-mini", base_url=emu.openai_base_url, api_key="test-key",
                        journal=tmp_path / "judge.sqlite", progress=False, backoff_initial_s=0.01,
                        backoff_max_s=0.05)
        judge = EducationalJudge(gen, max_chars=1500)
        labelled, stats = label_corpus(docs, judge)
        unique_prompts = docs["text"].str.slice(0, 1500).n_unique()  # identical sections: one paid call
        assert emu.billed == unique_prompts and max(emu.billed_keys.values()) == 1
    assert stats["in"] == docs.height and stats["dropped"] == {"unparsed": 1}
    assert stats["score_counts"] == {4: 40, 1: 40}
    by_id = dict(zip(labelled["id"], labelled["label"], strict=True))
    assert all(by_id[f"d{i:03d}"] == 4 for i in range(40)) and all(by_id[f"d{i:03d}"] == 1 for i in range(40, 80))
    req = judge.requests(["An extract."], ["x"])[0]
    assert "Educational score: <total points>" in req.messages[0]["content"] and req.metadata["doc_id"] == "x"

    # resume: the journal answers everything, nothing is billed twice
    with Emulator(EmulatorConfig(latency_median_s=0.002, responder=rubric_responder)) as emu2:
        gen2 = Generator(provider="openai", model="gpt-4o-mini", base_url=emu2.openai_base_url, api_key="test-key",
                         journal=tmp_path / "judge.sqlite", progress=False)
        again, _ = label_corpus(docs, EducationalJudge(gen2, max_chars=1500))
        assert emu2.billed == 0 and again["label"].to_list() == labelled["label"].to_list()


def test_judge_labels_train_the_classifier(docs, tmp_path):
    from textbookgen.curation.classifier import TrainSettings, train_classifier
    from textbookgen.curation.commands import load_labelled

    labelled = docs.head(80).with_columns(pl.Series("label", [4] * 40 + [1] * 40))
    labelled.write_parquet(tmp_path / "labels.parquet")
    texts, labels, _ = load_labelled([], [], [str(tmp_path / "labels.parquet")], min_positive=3)
    assert sum(labels) == 40
    model, meta = train_classifier(texts, labels, tmp_path / "m", TrainSettings(lrs=(1.0,), epochs=(5,), dim=16,
                                                                                bucket=10_000))
    assert meta["n_positive"] == 40 and model.evaluate(texts, labels).roc_auc > 0.9


def test_label_command_against_emulator(docs, tmp_path):
    from typer.testing import CliRunner

    from textbookgen.cli import app
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    docs.head(30).write_parquet(tmp_path / "in.parquet")
    with Emulator(EmulatorConfig(latency_median_s=0.002, responder=rubric_responder)) as emu:
        result = CliRunner().invoke(app, ["classifier", "label", str(tmp_path / "in.parquet"), "-o",
                                          str(tmp_path / "labels.jsonl"), "--base-url", emu.openai_base_url,
                                          "--sample", "20"], env={"OPENAI_API_KEY": "test-key"})
    assert result.exit_code == 0, result.output
    rows = [json.loads(x) for x in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and {r["label"] for r in rows} <= {1, 4} and all(r["label"] == 4 for r in rows)
