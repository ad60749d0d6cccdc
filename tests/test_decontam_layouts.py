"""Generic benchmark files (a path with no loader name) in the layouts benchmarks ship in: texts nested in
objects and lists are items' texts too, and a file whose items give nothing to match is refused."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from textbookgen.curation.config import DecontaminationConfig
from textbookgen.curation.decontaminate import Decontaminate

ARC_AI2 = Path("opencompass_data_formulamonks") / "ARC__ARC-e__ARC-Easy-Test.jsonl.gz"


def test_a_nested_benchmark_file_given_as_a_path_is_matched(shared_data, tmp_path):
    """AI2's ARC jsonl keeps the question under `question.stem` and the options in `question.choices[].text`:
    read as a generic file, only the top-level `answerKey` ("A") was a text, and 10 pasted questions out of
    10 were kept (2,376 items loaded, 0 matched, no warning)."""
    records = [json.loads(line) for line in gzip.open(shared_data / ARC_AI2, "rt")]
    wiki = [json.loads(x)["eng_Latn"] for x in gzip.open(shared_data / "wikipedia_en_1k" / "wikipedia.jsonl.gz", "rt")]
    hosts = [d for d in wiki if len(d.split()) >= 200][:20]
    picked = records[100:1100:100]
    docs = [f"{host}\n\nExercise. {rec['question']['stem']}\n"
            + "\n".join(f"{c['label']}. {c['text']}" for c in rec["question"]["choices"])
            for host, rec in zip(hosts, picked, strict=False)]
    df = pl.DataFrame({"id": [f"p{k}" for k in range(10)] + [f"w{k}" for k in range(10)], "text": docs + hosts[10:]})
    step = Decontaminate(DecontaminationConfig(benchmarks=[str(shared_data / ARC_AI2)]))
    out, stats = step(df, tmp_path)
    assert out["id"].to_list() == [f"w{k}" for k in range(10)]
    report = pl.read_parquet(tmp_path / "contamination.parquet")
    assert set(zip(report["id"], report["item_id"], strict=True)) >= {
        (f"p{k}", rec["id"]) for k, rec in enumerate(picked)}


def test_list_of_options_in_a_parquet_benchmark_are_texts(tmp_path):
    """An MMLU-style parquet (Hub layout): `choices` is a list of strings; a long option is an item text."""
    option = ("the treaty ended the war by ceding the northern provinces to the crown while the merchant "
              "guilds kept their charters and the river tolls for another fifty years")
    pl.DataFrame({"question": ["Which of these is true?"], "choices": [["yes", option]], "answer": [1]}
                 ).write_parquet(tmp_path / "mmlu_like.parquet")
    step = Decontaminate(DecontaminationConfig(benchmarks=[str(tmp_path / "mmlu_like.parquet")]))
    assert [m["item_id"] for m in step.matches(f"A history lesson. {option.capitalize()}. Then lunch.")] == ["0"]


def test_a_benchmark_with_nothing_to_match_is_refused(tmp_path):
    """Items whose texts are all shorter than `min_item_words` can match no document: an error naming the file
    and the setting, not a decontamination that silently checks nothing."""
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{k}", "answer": "B", "score": k}) + "\n" for k in range(30)))
    with pytest.raises(ValueError, match=r"answers\.jsonl.*30 items.*min_item_words"):
        Decontaminate(DecontaminationConfig(benchmarks=[str(path)]))


def test_a_short_question_copied_with_its_options_from_a_nested_file_is_matched(shared_data, tmp_path):
    """A stem under `min_item_words` ("The teeth of a carnivore are MOSTLY -") with one-word options matched
    nothing as separate texts; the item's strings together, labels aside, are one more text, as a named
    set's question-then-options `exercise()` is."""
    from textbookgen.curation.decontaminate import match_words

    records = [json.loads(line) for line in gzip.open(shared_data / ARC_AI2, "rt")]
    short = [r for r in records if len(match_words(r["question"]["stem"])) < 8][:10]
    wiki = [json.loads(x)["eng_Latn"] for x in gzip.open(shared_data / "wikipedia_en_1k" / "wikipedia.jsonl.gz", "rt")]
    hosts = [d for d in wiki if len(d.split()) >= 200][:20]
    docs = [f"{host}\n\nExercise. {rec['question']['stem']}\n"
            + "\n".join(f"{c['label']}. {c['text']}" for c in rec["question"]["choices"])
            for host, rec in zip(hosts[:10], short, strict=True)]
    step = Decontaminate(DecontaminationConfig(benchmarks=[str(shared_data / ARC_AI2)]))
    assert len(short) == 10
    assert [[m["item_id"] for m in step.matches(d)][:1] for d in docs] == [[r["id"]] for r in short]
    assert not any(step.matches(d) for d in hosts[10:])
