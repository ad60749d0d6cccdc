"""`classifier label` used for real: answers the parser must not misread, what a label run reports and costs,
a sample that keeps its paid labels as it grows, and judge files read as 0-5 scores by `classifier train`."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from textbookgen.curation.judge import EducationalJudge, label_corpus, parse_score
from textbookgen.engine import Generator
from textbookgen.testing.emulator import Emulator, EmulatorConfig, Fault

#: what the stand-in judge answers to an extract that starts with each marker
ANSWERS = {
    "SLASH5": "Clear and focused.\nEducational score: 3/5",
    "BOLD": "Well organised.\n**Educational score:** 4",
    "WORDS": "Solid.\nEducational score: three",
    "JSON": '{"reason": "a tutorial", "score": 3}',
    "SEVEN": "Excellent.\nEducational score: 7",
    "TENTHS": "Good.\nEducational score: 3/10",
    "OUTOF10": "Good.\nEducational score: 2 out of 10",
    "HALF": "Between a textbook and a blog.\nEducational score: 4.5",
    "NEGATIVE": "Spam.\nEducational score: -1",
    "THINKCUT": "<think>\nA first guess: Educational score: 5.\n</think>\nThe extract " + "covers many things, " * 200,
    "THINK": "<think>\nMaybe Educational score: 5?\n</think>\nA sales page.\nEducational score: 1",
    "REFUSAL": "I'm sorry, but I can't help with that.",
    "EMPTY": "",
}


def marker_responder(body: dict) -> str:
    extract = body["messages"][-1]["content"].split("The extract:\n", 1)[1]
    return ANSWERS[extract.split()[0]]


def judge_on(emu: Emulator, journal: Path | None = None) -> EducationalJudge:
    gen = Generator(provider="openai", model="gpt-4o-mini", base_url=emu.openai_base_url, api_key="test-key",
                    journal=journal, progress=False, max_error_rate=None)
    return EducationalJudge(gen)


def test_a_score_on_another_scale_or_not_an_integer_is_not_read_as_one():
    assert parse_score("Educational score: 3/5") == 3 and parse_score("Educational score: 3 out of 5") == 3
    assert parse_score("Educational score: 4.0") == 4
    for answer in ("Educational score: 3/10", "Educational score: 2 out of 10", "Educational score: 4.5",
                   "Educational score: -1", "Educational score: 45"):
        assert parse_score(answer) is None, answer


def test_answers_without_a_usable_score_are_counted_by_why_and_never_labelled():
    df = pl.DataFrame({"id": [f"d{i}" for i in range(len(ANSWERS))],
                       "text": [f"{marker} an extract about plant cells and how they divide" for marker in ANSWERS]})
    with Emulator(EmulatorConfig(latency_median_s=0.001, responder=marker_responder)) as emu:
        labelled, stats = label_corpus(df, judge_on(emu))
    labels = dict(zip(labelled["text"].str.split(" ").list.first(), labelled["label"], strict=True))
    assert labels == {"SLASH5": 3, "BOLD": 4, "THINK": 1}  # the reasoning block's 5 is not the answer
    assert stats["dropped"] == {"unparsed": 3, "out_of_range": 5, "truncated": 1, "failed: empty_answer": 1}
    assert stats["in"] == len(ANSWERS) and stats["kept"] == 3
    unscored = {e["id"]: e for e in stats["unscored_examples"]}
    assert unscored["d2"] == {"id": "d2", "row": 2, "status": "unparsed", "answer": ANSWERS["WORDS"]}
    assert "<think>" not in labelled.filter(pl.col("id") == "d10")["judge_rationale"][0]
    with Emulator(EmulatorConfig(latency_median_s=0.001, faults=[Fault("refusal", rate=1.0)])) as emu:
        _, refused = label_corpus(df.head(2), judge_on(emu))
    assert refused["dropped"] == {"failed: content_filter": 2}
    assert "content_filter" in refused["unscored_examples"][0]["answer"]


def test_cost_is_counted_once_per_paid_prompt_and_a_rerun_says_it_paid_nothing(tmp_path):
    texts = ["BOLD a short extract on fractions"] * 3 + ["SLASH5 another extract, on decimals"]
    df = pl.DataFrame({"id": ["a", "b", "c", "d"], "text": texts})
    with Emulator(EmulatorConfig(latency_median_s=0.001, responder=marker_responder)) as emu:
        judge = judge_on(emu, tmp_path / "j.sqlite")
        _, first = label_corpus(df, judge)
        assert emu.billed == 2
        paid = judge.generator.stats["cost_usd"]
        _, again = label_corpus(df, judge_on(emu, tmp_path / "j.sqlite"))
        assert emu.billed == 2
    assert first["cost_usd"] == first["paid_this_run_usd"] == pytest.approx(paid, abs=1e-6)
    assert again["cost_usd"] == pytest.approx(paid, abs=1e-6) and again["paid_this_run_usd"] == 0


def test_a_larger_sample_keeps_every_row_of_a_smaller_one_and_ignores_row_order():
    from textbookgen.curation.judge import sample_rows

    df = pl.DataFrame({"id": [str(i) for i in range(100_000)], "text": [f"document {i}" for i in range(100_000)]})
    small, large = sample_rows(df["text"], 100, seed=0), sample_rows(df["text"], 200, seed=0)
    assert set(small) <= set(large) and len(small) == 100 and len(large) == 200
    shuffled = df.sample(fraction=1.0, shuffle=True, seed=5)
    assert set(shuffled[sample_rows(shuffled["text"], 100, seed=0)]["id"]) == set(df[small]["id"])
    grown = pl.concat([df, df.head(1000).with_columns(pl.col("text") + " (new)")])
    assert len(set(sample_rows(grown["text"], 100, seed=0)) & set(small)) >= 95  # 1 % more rows displace ~1 %
    assert set(sample_rows(df["text"], 100, seed=1)) != set(small)

def test_growing_the_sample_pays_only_for_the_new_rows(shared_data, tmp_path):
    web = [json.loads(x)["text"] for x in gzip.open(shared_data / "c4_en_sample_1k" / "c4_sample.jsonl.gz", "rt")]
    df = pl.DataFrame({"id": [f"c{i}" for i in range(len(web))], "text": web})
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        label_corpus(df, judge_on(emu, tmp_path / "j.sqlite"), sample=20)
        first = emu.billed
        labelled, _ = label_corpus(df, judge_on(emu, tmp_path / "j.sqlite"), sample=40)
        assert emu.billed - first == labelled["text"].n_unique() - first


def test_judge_labels_that_top_out_at_1_are_still_0_5_scores(tmp_path):
    from textbookgen.curation.classifier import default_min_positive

    rows = pl.DataFrame({"id": ["a", "b", "c"], "text": ["x y", "y z", "z w"], "label": [0, 1, 1],
                         "judge_status": ["ok"] * 3, "judge_rationale": ["r"] * 3})
    rows.write_parquet(tmp_path / "labels.parquet")
    assert default_min_positive([str(tmp_path / "labels.parquet")]) == 3.0
    rows.drop("judge_status", "judge_rationale").write_parquet(tmp_path / "human.parquet")
    assert default_min_positive([str(tmp_path / "human.parquet")]) == 1.0


@pytest.fixture()
def web_pages(shared_data: Path, tmp_path: Path) -> Path:
    web = [json.loads(x)["text"] for x in gzip.open(shared_data / "c4_en_sample_1k" / "c4_sample.jsonl.gz", "rt")]
    path = tmp_path / "web.parquet"
    pl.DataFrame({"id": [f"c{i}" for i in range(30)], "text": web[:30]}).write_parquet(path)
    return path


def label_cli(args: list[str]):
    from typer.testing import CliRunner

    from textbookgen.cli import app

    return CliRunner().invoke(app, ["classifier", "label", *args], env={"OPENAI_API_KEY": "test-key"})


def test_a_budget_stop_exits_4_keeping_the_labels_and_a_rerun_pays_only_for_the_rest(web_pages, tmp_path):
    out = tmp_path / "labels.jsonl"
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        cut = label_cli([str(web_pages), "-o", str(out), "--base-url", emu.openai_base_url, "--max-cost", "0.002"])
        assert cut.exit_code == 4, cut.output
        assert "--max-cost 0.002" in cut.output and "rerun with a larger --max-cost" in cut.output
        kept = len(out.read_text().splitlines())
        assert 0 < kept < 30 and emu.billed == kept
        done = label_cli([str(web_pages), "-o", str(out), "--base-url", emu.openai_base_url, "--max-cost", "1"])
        assert done.exit_code == 0, done.output
        assert emu.billed == 30 and len(out.read_text().splitlines()) == 30


def test_a_judge_model_with_no_known_price_takes_one_from_price(web_pages, tmp_path):
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        result = label_cli([str(web_pages), "-o", str(tmp_path / "labels.jsonl"), "--base-url", emu.openai_base_url,
                            "--model", "meta-llama/Meta-Llama-3-70B-Instruct", "--sample", "5",
                            "--price", "meta-llama/Meta-Llama-3-70B-Instruct=0.6,0.6", "--max-cost", "1"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout[result.stdout.index("{"):])
    assert stats["cost_usd"] > 0  # priced by --price: a --max-cost on it is not refused


def test_a_judge_model_with_no_known_price_is_not_reported_free(web_pages, tmp_path):
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        result = label_cli([str(web_pages), "-o", str(tmp_path / "labels.jsonl"), "--base-url", emu.openai_base_url,
                            "--model", "my-org/judge-70b", "--sample", "3"])
    assert result.exit_code == 0, result.output
    assert "my-org/judge-70b has no known price" in result.stderr and "--price" in result.stderr


def test_a_reasoning_model_judges_at_its_own_temperature_with_room_to_think(web_pages, tmp_path):
    with Emulator(EmulatorConfig(latency_median_s=0.001, model_rules=True, record_requests=True)) as emu:
        result = label_cli([str(web_pages), "-o", str(tmp_path / "labels.jsonl"), "--base-url", emu.openai_base_url,
                            "--model", "gpt-5-mini", "--sample", "3"])
        bodies = [r["body"] for r in emu.requests]
    assert result.exit_code == 0, result.output
    assert all("temperature" not in b and b["max_completion_tokens"] >= 2048 for b in bodies)
    with Emulator(EmulatorConfig(latency_median_s=0.001, record_requests=True)) as emu:
        result = label_cli([str(web_pages), "-o", str(tmp_path / "more.jsonl"), "--base-url", emu.openai_base_url,
                            "--sample", "3", "--max-tokens", "400"])
        assert result.exit_code == 0, result.output
        assert {(r["body"]["temperature"], r["body"]["max_completion_tokens"]) for r in emu.requests} == {(0.0, 400)}


def test_more_max_tokens_resends_only_the_answers_cut_before_their_score(tmp_path):
    long_answer = "The extract " + "covers many things, " * 100 + "\nEducational score: 2"
    df = pl.DataFrame({"id": ["a", "b"], "text": ["BOLD an extract on fractions", "LONG an extract on decimals"]})
    responder = lambda body: long_answer if "LONG" in body["messages"][-1]["content"] else marker_responder(body)  # noqa: E731
    with Emulator(EmulatorConfig(latency_median_s=0.001, responder=responder)) as emu:
        _, cut = label_corpus(df, judge_on(emu, tmp_path / "j.sqlite"))
        judge = judge_on(emu, tmp_path / "j.sqlite")
        judge.max_tokens = 1024
        labelled, more = label_corpus(df, judge)
        assert emu.billed == 3
    assert cut["dropped"] == {"truncated": 1} and more["dropped"] == {} and labelled["label"].to_list() == [4, 2]
