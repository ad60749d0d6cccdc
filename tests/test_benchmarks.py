"""Benchmark loaders on the real public files, and the formats the Hub serves (as hand-made rows)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from textbookgen.benchmarks import (
    BENCHMARKS,
    BenchmarkError,
    BenchmarkItem,
    gsm8k_answer,
    hellaswag_preprocess,
    load_benchmark,
)

# (task, folder under shared data, expected count, split filter)
REAL = [
    ("arc_easy", "llmfoundry_eval_gauntlet", 2376, None),
    ("arc_challenge", "llmfoundry_eval_gauntlet", 1172, None),
    ("arc_easy", "opencompass_data_formulamonks", 2376, "test"),
    ("arc_challenge", "opencompass_data_formulamonks", 1172, "test"),
    ("arc_challenge", "opencompass_data_formulamonks", 299, "dev"),
    ("boolq", "opencompass_data_formulamonks", 3270, None),
    ("boolq", "llmfoundry_eval_gauntlet", 3270, None),
    ("winogrande", "llmfoundry_eval_gauntlet", 1267, None),
    ("piqa", "llmfoundry_eval_gauntlet", 1838, None),
    ("siqa", "siqa_3choice", 1954, None),
    ("siqa_2way", "llmfoundry_eval_gauntlet", 1954, None),
    ("hellaswag", "hellaswag", 10042, None),
    ("openbookqa", "llmfoundry_eval_gauntlet", 500, None),
    ("mmlu", "mmlu", 14042, "test"),
    ("mmlu", "mmlu", 285, "dev"),
    ("gsm8k", "gsm8k", 1319, "test"),
    ("gsm8k", "gsm8k", 7473, "train"),
    ("humaneval", "humaneval", 164, None),
    ("mbpp", "opencompass_data_formulamonks", 500, "test"),
    ("copa", "llmfoundry_eval_gauntlet", 100, None),
    ("commonsense_qa", "llmfoundry_eval_gauntlet", 1221, None),
    ("lambada_openai", "llmfoundry_eval_gauntlet", 5153, None),
]


@pytest.mark.parametrize(("task", "folder", "count", "split"), REAL)
def test_real_files_parse(shared_data: Path, task: str, folder: str, count: int, split: str | None) -> None:
    items = load_benchmark(task, shared_data / folder, split=split)
    assert len(items) == count
    spec = BENCHMARKS[task]
    for it in items:
        assert isinstance(it, BenchmarkItem) and it.task == task and it.texts()
        if spec.kind == "multiple_choice":
            assert it.gold is not None and 0 <= it.gold < len(it.choices) and len(it.choices) >= 2
            assert all(isinstance(c, str) and c for c in it.choices)
    assert len({it.id for it in items}) == count, "ids are unique"


def test_arc_formats_agree(shared_data: Path) -> None:
    """AI2 original and llm-foundry ARC test files give the same prompts (same order); llm-foundry's copy
    differs in the choices/gold of 26 of 1,172 items (its own edits), the rest agree exactly."""
    ai2 = load_benchmark("arc_challenge", shared_data / "opencompass_data_formulamonks", split="test")
    fdy = load_benchmark("arc_challenge", shared_data / "llmfoundry_eval_gauntlet")
    assert [a.context for a in ai2] == [b.context for b in fdy]
    same = sum((a.choices, a.gold) == (b.choices, b.gold) for a, b in zip(ai2, fdy, strict=True))
    assert same == len(ai2) - 26
    assert ai2[0].context == (
        "Question: An astronomer observes that a planet rotates faster after a meteorite impact. "
        "Which is the most likely effect of this increase in rotation?\nAnswer:"
    )
    assert ai2[0].id == "Mercury_7175875" and ai2[0].choices[ai2[0].gold] == "Planetary days will become shorter."


def test_boolq_superglue_prompt(shared_data: Path) -> None:
    items = load_benchmark("boolq", shared_data / "opencompass_data_formulamonks")
    it = items[0]
    assert it.context.startswith("Ethanol fuel -- All biomass")
    assert it.context.endswith("\nQuestion: does ethanol take more energy make that produces?\nAnswer:")
    assert it.choices == ["no", "yes"] and it.gold == 0
    assert sum(i.gold for i in items) == 2033  # SuperGLUE BoolQ val: 2,033 true of 3,270


def test_hellaswag_text_layout(shared_data: Path) -> None:
    items = load_benchmark("hellaswag", shared_data / "hellaswag", limit=3)
    assert items[0].context == "Roof shingle removal: A man is sitting on a roof. He"
    assert items[0].choices[3] == "starts pulling up roofing on a roof." and items[0].gold == 3
    assert items[1].context == ("Clean and jerk: A lady walks to a barbell. She bends down and grabs the pole. "
                                "The lady")


def test_hellaswag_hf_row_matches_lm_eval() -> None:
    row = {"ind": 4, "activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow "
           "covering the window of a car, and a woman wearing winter clothes smiles.", "ctx_b": "then",
           "endings": [", the man adds wax to the windshield [title] and cuts it.", "b", "c", "d"], "label": "3"}
    spec = BENCHMARKS["hellaswag"]
    it = spec.convert(row, "0")
    assert it.context == ("Removing ice from car: Then, the man writes over the snow covering the window of a car, "
                          "and a woman wearing winter clothes smiles. Then")
    assert it.choices[0] == hellaswag_preprocess(row["endings"][0]) == ", the man adds wax to the windshield. and cuts it."
    assert it.gold == 3


def test_winogrande_partial_scoring_rows(shared_data: Path) -> None:
    row = {"sentence": "Sarah was a much better surgeon than Maria so _ always got the harder cases.",
           "option1": "Sarah", "option2": "Maria", "answer": "1"}
    it = BENCHMARKS["winogrande"].convert(row, "x")
    fdy = load_benchmark("winogrande", shared_data / "llmfoundry_eval_gauntlet", limit=2)[1]
    assert (it.choices, it.target, it.gold) == (fdy.choices, fdy.target, fdy.gold)
    assert it.meta["scoring"] == fdy.meta["scoring"] == "partial"


def test_siqa_variants(shared_data: Path) -> None:
    three = load_benchmark("siqa", shared_data / "siqa_3choice", limit=1)[0]
    two = load_benchmark("siqa_2way", shared_data / "llmfoundry_eval_gauntlet", limit=1)[0]
    assert three.context == two.context == ("Q: Tracy didn't go home that evening and resisted Riley's attacks. "
                                             "What does Tracy need to do before this?\nA:")
    assert len(three.choices) == 3 and three.choices[three.gold] == "Find somewhere to go"
    assert two.choices[two.gold] == "Find somewhere to go"
    hf = BENCHMARKS["siqa"].convert({"context": "c", "question": "q?", "answerA": "a", "answerB": "b",
                                     "answerC": "cc", "label": "2"}, "0")
    assert (hf.context, hf.gold) == ("Q: c q?\nA:", 1)
    with pytest.raises(BenchmarkError, match="siqa_2way"):
        load_benchmark("siqa", shared_data / "llmfoundry_eval_gauntlet")


def test_mmlu_prompt_and_subjects(shared_data: Path) -> None:
    items = load_benchmark("mmlu", shared_data / "mmlu" / "mmlu_dev_test_csv.tar.gz", split="test")
    assert len({it.meta["subject"] for it in items}) == 57
    first = items[0]
    assert first.meta["subject"] == "abstract_algebra"
    assert first.context == "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n" \
        "A. 0\nB. 4\nC. 2\nD. 6\nAnswer:"
    assert first.choices == ["A", "B", "C", "D"] and first.gold == 1


def test_mmlu_original_headerless_csv(tmp_path: Path) -> None:
    (tmp_path / "anatomy_test.csv").write_text('"What is 2+2?",3,4,5,6,B\n', encoding="utf-8")
    it = load_benchmark("mmlu", tmp_path)[0]
    assert (it.gold, it.meta["subject"], it.meta["split"]) == (1, "anatomy", "test")


def test_hf_style_rows() -> None:
    arc = BENCHMARKS["arc_easy"].convert({"id": "q1", "question": "Why?", "answerKey": "2",
                                          "choices": {"text": ["a", "b", "c"], "label": ["1", "2", "3"]}}, "0")
    assert (arc.id, arc.context, arc.gold) == ("q1", "Question: Why?\nAnswer:", 1)
    obqa = BENCHMARKS["openbookqa"].convert({"id": "7", "question_stem": "Sun is", "answerKey": "A",
                                             "choices": {"text": ["hot", "cold"], "label": ["A", "B"]}}, "0")
    assert (obqa.context, obqa.gold) == ("Sun is", 0)
    piqa = BENCHMARKS["piqa"].convert({"goal": "g", "sol1": "x", "sol2": "y", "label": 1}, "0")
    assert (piqa.context, piqa.gold) == ("Question: g\nAnswer:", 1)
    mmlu = BENCHMARKS["mmlu"].convert({"question": " Q ", "subject": "virology", "choices": ["a", "b", "c", "d"],
                                       "answer": 3}, "0")
    assert mmlu.context == "Q\nA. a\nB. b\nC. c\nD. d\nAnswer:" and mmlu.gold == 3
    boolq = BENCHMARKS["boolq"].convert({"question": "is it", "passage": "P", "label": 1, "idx": 5}, "0")
    assert (boolq.context, boolq.gold, boolq.id) == ("P\nQuestion: is it?\nAnswer:", 1, "5")


def test_gsm8k_reference_answers(shared_data: Path) -> None:
    items = load_benchmark("gsm8k", shared_data / "gsm8k", split="test", limit=5)
    assert items[0].meta["answer"] == "18"
    assert gsm8k_answer("so she has $1,234.00 left.") == "1234"
    assert gsm8k_answer("The answer is 7. Then 9 more") == "7"
    assert gsm8k_answer("no number") is None


def test_humaneval_and_mbpp_fields(shared_data: Path) -> None:
    he = load_benchmark("humaneval", shared_data / "humaneval")[0]
    assert he.id == "HumanEval/0" and he.meta["entry_point"] == "has_close_elements"
    assert "def check(candidate)" in he.meta["test"] and he.target.startswith("    for idx")
    mb = load_benchmark("mbpp", shared_data / "opencompass_data_formulamonks", split="test")[0]
    assert mb.id == "11" and len(mb.meta["test_list"]) == 3 and mb.meta["test_list"][0] in mb.texts()


def test_texts_are_unique_and_complete() -> None:
    it = BenchmarkItem("arc_easy", "1", "Question: q\nAnswer:", ["a", "b", "a"], 0, "a", {"question": "q"})
    assert it.texts() == ["Question: q\nAnswer:", "a", "b", "q"]


def test_malformed_input_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "arc.jsonl"
    bad.write_text('{"query": "Question: q", "choices": ["a"], "gold": 0}\n{not json\n', encoding="utf-8")
    with pytest.raises(BenchmarkError, match=r"arc\.jsonl:2: invalid JSON"):
        load_benchmark("arc_easy", bad)
    missing = tmp_path / "boolq.jsonl.gz"
    with gzip.open(missing, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"question": "q", "passage": "p", "label": True}) + "\n")
        f.write(json.dumps({"question": "q", "label": True}) + "\n")
    with pytest.raises(BenchmarkError, match=r"boolq\.jsonl\.gz:2: missing field 'passage'"):
        load_benchmark("boolq", missing)
    wrong_key = tmp_path / "ARC-Easy-Test.jsonl"
    wrong_key.write_text(json.dumps({"question": {"stem": "s", "choices": [{"text": "a", "label": "A"}]},
                                     "answerKey": "E"}) + "\n", encoding="utf-8")
    with pytest.raises(BenchmarkError, match=r"ARC-Easy-Test\.jsonl:1: bad arc_easy record: answer key 'E'"):
        load_benchmark("arc_easy", wrong_key)
    latin = tmp_path / "x.jsonl"
    latin.write_bytes('{"question": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(BenchmarkError, match=r"x\.jsonl:1: not valid UTF-8"):
        load_benchmark("gsm8k", latin)
    six = tmp_path / "hs.txt"
    six.write_text("a: b\n1\nx\ny\n", encoding="utf-8")
    with pytest.raises(BenchmarkError, match="not a multiple of 6"):
        load_benchmark("hellaswag", six)
    with pytest.raises(BenchmarkError, match="no such file"):
        load_benchmark("piqa", tmp_path / "absent.jsonl")
    with pytest.raises(BenchmarkError, match="unknown benchmark"):
        load_benchmark("squad", tmp_path)


def test_piqa_original_with_labels_file(tmp_path: Path) -> None:
    (tmp_path / "valid.jsonl").write_text(json.dumps({"goal": "g", "sol1": "a", "sol2": "b"}) + "\n", encoding="utf-8")
    (tmp_path / "valid-labels.lst").write_text("1\n", encoding="utf-8")
    it = load_benchmark("piqa", tmp_path / "valid.jsonl")[0]
    assert it.gold == 1 and it.meta["split"] == "validation"


def test_hub_loading_uses_the_task_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return datasets.Dataset.from_list([{"sentence": "He gave _ a book.", "option1": "Ann", "option2": "Bob",
                                            "answer": "2"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    items = load_benchmark("winogrande")
    assert calls == [("allenai/winogrande", "winogrande_xl", "validation")]
    assert (items[0].choices, items[0].target, items[0].gold) == (["He gave Ann", "He gave Bob"], "a book.", 1)
    assert items[0].meta["split"] == "validation"
    with pytest.raises(BenchmarkError, match="no Hugging Face dataset"):
        load_benchmark("siqa_2way")


def test_mmlu_csv_saved_by_a_spreadsheet(tmp_path: Path) -> None:
    """Excel's "CSV UTF-8" starts with a BOM, which hid the header ("bad mmlu record: invalid literal for int()
    ... 'answer'"); its plain "CSV" is cp1252, which raised a bare UnicodeDecodeError naming no file."""
    import tarfile

    row = '"Which drink is a caf\xe9 au lait made from, in France, on most days?",milk,tea,water,juice,0\n'
    (tmp_path / "bom_test.csv").write_bytes(("\ufeffquestion,A,B,C,D,answer\n" + row).encode("utf-8"))
    assert [it.context.split("\n")[0] for it in load_benchmark("mmlu", tmp_path / "bom_test.csv")] == [
        "Which drink is a caf\xe9 au lait made from, in France, on most days?"]
    (tmp_path / "cp_test.csv").write_bytes(("question,A,B,C,D,answer\n" + row).encode("cp1252"))
    with pytest.raises(BenchmarkError, match=r"cp_test\.csv:2: not valid UTF-8"):
        load_benchmark("mmlu", tmp_path / "cp_test.csv")
    with tarfile.open(tmp_path / "mmlu.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "cp_test.csv", arcname="data/test/cp_test.csv")
    with pytest.raises(BenchmarkError, match=r"mmlu\.tar\.gz!data/test/cp_test\.csv:2: not valid UTF-8"):
        load_benchmark("mmlu", tmp_path / "mmlu.tar.gz")
