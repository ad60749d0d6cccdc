"""Decontamination: benchmark items planted verbatim and lightly edited into real text are caught and
reported; text that only shares a phrase with a benchmark is kept."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import polars as pl
import pytest

from textbookgen.curation import CurationConfig, curate
from textbookgen.curation.config import BenchmarkSource, DecontaminationConfig
from textbookgen.curation.decontaminate import Decontaminate


@pytest.fixture(scope="module")
def wiki(shared_data: Path) -> list[str]:
    docs = [json.loads(x)["eng_Latn"] for x in gzip.open(shared_data / "wikipedia_en_1k" / "wikipedia.jsonl.gz", "rt")]
    return [d for d in docs if 200 <= len(d.split()) <= 1500][:80]


@pytest.fixture(scope="module")
def sources(shared_data: Path) -> list[BenchmarkSource]:
    return [BenchmarkSource(name="gsm8k", path=str(shared_data / "gsm8k" / "test.jsonl.gz")),
            BenchmarkSource(name="arc_easy", path=str(shared_data / "llmfoundry_eval_gauntlet" / "arc_easy.jsonl.gz")),
            BenchmarkSource(name="humaneval", path=str(shared_data / "humaneval" / "HumanEval.jsonl.gz"))]


@pytest.fixture(scope="module")
def step(sources) -> Decontaminate:
    return Decontaminate(DecontaminationConfig(benchmarks=sources))


def light_edit(text: str, rng: random.Random) -> str:
    """Reformat (case, punctuation, spacing, numbers) and swap one word near the middle."""
    words = text.replace(",", " ,").replace("\n", " ").split()
    mid = len(words) // 2
    words[mid] = "certainly"
    out = " ".join(words).upper() if rng.random() < 0.5 else " ".join(words)
    return "".join(str((int(c) + 1) % 10) if c.isdigit() else c for c in out)


def embed(doc: str, planted: str, rng: random.Random) -> str:
    paras = doc.split("\n")
    paras.insert(rng.randrange(len(paras) + 1), planted)
    return "\n".join(paras)


def test_planted_items_are_caught_and_reported(wiki, step, shared_data, tmp_path):
    from textbookgen.benchmarks import load_benchmark

    rng = random.Random(11)
    gsm = load_benchmark("gsm8k", shared_data / "gsm8k" / "test.jsonl.gz")
    arc = load_benchmark("arc_easy", shared_data / "llmfoundry_eval_gauntlet" / "arc_easy.jsonl.gz")
    he = load_benchmark("humaneval", shared_data / "humaneval" / "HumanEval.jsonl.gz")
    plants = {  # doc index -> (benchmark, item id, text planted)
        0: ("gsm8k", gsm[5].id, gsm[5].context),
        1: ("gsm8k", gsm[40].id, light_edit(gsm[40].context, rng)),
        2: ("arc_easy", arc[7].id, arc[7].context + " " + arc[7].choices[arc[7].gold]),
        3: ("arc_easy", arc[99].id, light_edit(arc[99].context, rng)),
        4: ("humaneval", he[3].id, "Here is a classic exercise.\n" + he[3].context),
        5: ("humaneval", he[10].id, light_edit(he[10].context + he[10].target, rng)),
        6: ("gsm8k", gsm[200].id, gsm[200].target),  # the worked solution only
    }
    texts = list(wiki[:40])
    for i, (_, _, planted) in plants.items():
        texts[i] = embed(texts[i], planted, rng)
    # near misses: a short phrase shared with a benchmark question is not contamination
    texts[20] = texts[20] + " " + " ".join(gsm[5].context.split()[:10])
    texts[21] = texts[21] + "\n" + " ".join(arc[7].context.split()[:14]) + " is a question people often ask."
    df = pl.DataFrame({"id": [f"d{i:02d}" for i in range(len(texts))], "text": texts})
    out, stats = step(df, tmp_path)
    assert sorted(set(df["id"]) - set(out["id"])) == [f"d{i:02d}" for i in sorted(plants)]
    report = pl.read_parquet(tmp_path / "contamination.parquet")
    for i, (bench, item_id, _) in plants.items():
        rows = report.filter(pl.col("id") == f"d{i:02d}")
        assert (bench, item_id) in set(zip(rows["benchmark"], rows["item_id"], strict=True)), (i, rows)
    assert stats.dropped == {"gsm8k": 3, "arc_easy": 2, "humaneval": 2}
    assert stats.extra["benchmark_items"]["gsm8k"] == len(gsm)


def test_generic_jsonl_and_folder_sources(wiki, tmp_path):
    bench = tmp_path / "bench"
    bench.mkdir()
    questions = [" ".join(wiki[50 + k].split()[40:80]) for k in range(5)]
    with open(bench / "myeval.jsonl", "w") as f:
        for k, q in enumerate(questions):
            f.write(json.dumps({"id": f"q{k}", "question": q, "answer": "yes"}) + "\n")
    pl.DataFrame({"prompt": [" ".join(wiki[60].split()[10:40])]}).write_parquet(bench / "other.parquet")
    df = pl.DataFrame({"id": ["a", "b", "c"], "text": [wiki[50], wiki[60], wiki[70]]})
    cfg = CurationConfig.model_validate({
        "exact": {"enabled": False}, "minhash": {"enabled": False}, "filters": {"enabled": False},
        "decontamination": {"benchmarks": [str(bench)]}})
    out, stats = curate(df, cfg, tmp_path / "work")
    assert out["id"].to_list() == ["c"]
    assert stats["decontamination"]["dropped"] == {"myeval": 1, "other": 1}
    report = pl.read_parquet(tmp_path / "work" / "decontamination" / "contamination.parquet")
    assert set(report["item_id"]) == {"q0", "0"}


def test_missing_field_is_a_clear_error(tmp_path):
    (tmp_path / "b.jsonl").write_text(json.dumps({"question": "x"}) + "\n")
    with pytest.raises(ValueError, match="b.jsonl.*answer"):
        Decontaminate(DecontaminationConfig(benchmarks=[{"path": str(tmp_path / "b.jsonl"), "fields": ["answer"]}]))


def test_every_shipped_benchmark_format_is_caught(wiki, shared_data, tmp_path):
    """One item of each common set, in the layout it ships in, planted into real text."""
    from textbookgen.benchmarks import load_benchmark

    d = shared_data
    gauntlet = d / "llmfoundry_eval_gauntlet"
    sets = {"arc_challenge": gauntlet / "arc_challenge.jsonl.gz", "boolq": gauntlet / "boolq.jsonl.gz",
            "winogrande": gauntlet / "winogrande.jsonl.gz", "piqa": gauntlet / "piqa.jsonl.gz",
            "siqa": d / "siqa_3choice", "openbookqa": gauntlet / "openbook_qa.jsonl.gz",
            "mmlu": d / "mmlu" / "mmlu_dev_test_csv.tar.gz", "hellaswag": d / "hellaswag",
            "gsm8k": d / "gsm8k" / "test.jsonl.gz", "humaneval": d / "humaneval" / "HumanEval.jsonl.gz",
            "mbpp": d / "opencompass_data_formulamonks" / "mbpp__mbpp.jsonl.gz"}
    docs, planted = [], {}
    for k, (name, path) in enumerate(sets.items()):
        items = load_benchmark(name, path, limit=50)
        item = max(items, key=lambda it: max(len(t.split()) for t in it.texts()))
        longest = max(item.texts(), key=lambda t: len(t.split()))
        docs.append(embed(wiki[k], longest, random.Random(k)))
        planted[f"p{k:02d}"] = name
    docs += wiki[20:30]
    df = pl.DataFrame({"id": list(planted) + [f"w{i}" for i in range(10)], "text": docs})
    texts = [(name, it.id, it.texts()) for name, path in sets.items() for it in load_benchmark(name, path, limit=400)]
    step = Decontaminate(DecontaminationConfig(), texts=texts)  # the loaders' output, 400 items per set
    out, stats = step(df, tmp_path)
    assert sorted(out["id"]) == sorted(f"w{i}" for i in range(10))
    assert stats.dropped == dict.fromkeys(sets, 1)
    report = pl.read_parquet(tmp_path / "contamination.parquet")
    assert all(planted[r["id"]] in set(report.filter(pl.col("id") == r["id"])["benchmark"])
               for r in report.iter_rows(named=True))


def test_runs_of_numbers_are_not_contamination(step, shared_data):
    """Digit runs all normalise to "0": GSM8K worked answers (<<calc>> annotations) and HumanEval
    asserts become long runs of "0" that any table of numbers would otherwise 'contain'."""
    sciphi = [json.loads(x)["text"] for x in gzip.open(
        shared_data / "sciphi_synthetic_textbooks" / "sciphi_textbooks.jsonl.gz", "rt")]
    c4 = [json.loads(x)["text"] for x in gzip.open(shared_data / "c4_en_sample_1k" / "c4_sample.jsonl.gz", "rt")]
    table = "Measured values: " + " ".join(f"{i * 37 % 101}.{i % 7}" for i in range(60)) + " in this run."
    flagged = [(i, m[0]["benchmark"], m[0]["item_id"]) for i, d in enumerate(sciphi + c4 + [table])
               if (m := step.matches(d))]
    assert flagged == []


def test_short_items_copied_with_their_options_are_caught(wiki, shared_data):
    """OpenBookQA/PIQA questions and options are each often shorter than `min_item_words`; an
    exercise that copies the question with all its labelled options is still a copy of the item."""
    from textbookgen.benchmarks import load_benchmark
    from textbookgen.curation.decontaminate import match_words

    gauntlet = shared_data / "llmfoundry_eval_gauntlet"
    sets = {"openbookqa": gauntlet / "openbook_qa.jsonl.gz", "piqa": gauntlet / "piqa.jsonl.gz"}
    step = Decontaminate(DecontaminationConfig(
        benchmarks=[BenchmarkSource(name=n, path=str(p)) for n, p in sets.items()]))
    rng = random.Random(3)
    docs = []
    for name, path in sets.items():
        short = [it for it in load_benchmark(name, path)  # each part too short, but not all together
                 if max(len(match_words(t)) for t in it.texts()) < 8 <= len(match_words(it.exercise()))]
        for k, it in enumerate(short[:20]):
            labels = "abcd" if k % 2 else "ABCD"
            options = "\n".join(f"({L}) {c}" if k % 2 else f"{L}. {c}" for L, c in zip(labels, it.choices, strict=False))
            docs.append((name, it.id, embed(rng.choice(wiki), f"Exercise. {it.meta['question']}\n{options}", rng)))
    assert len(docs) == 40
    caught = [(name, item_id) in {(m["benchmark"], m["item_id"]) for m in step.matches(doc)}
              for name, item_id, doc in docs]
    assert all(caught)
    assert not any(step.matches(doc) for doc in wiki[:40])


def test_exercise_text_is_question_then_options():
    from textbookgen.benchmarks import BenchmarkItem

    mmlu = BenchmarkItem("mmlu", "1", "Q?\nA. x\nB. y\nAnswer:", ["A", "B"], 0, "A",
                         {"question": "Q?", "options": ["x", "y"]})
    assert mmlu.exercise() == "Q? x y"
    assert BenchmarkItem("hellaswag", "2", "ctx", ["e1", "e2"]).exercise() == "ctx e1 e2"
    assert BenchmarkItem("gsm8k", "3", "q", target="a").exercise() == ""


def test_curate_uses_benchmark_texts_loaded_by_the_caller(tmp_path):
    """A build loads the benchmarks before paying; curation reuses those texts instead of reading the
    source again (here a path that no longer exists would fail a second load)."""
    item = ("A farmer has 17 sheep and all but 9 run away through a hole in the fence; how many sheep "
            "does the farmer have left standing in the field?")
    df = pl.DataFrame({"id": ["a", "b"], "text": [f"Exercise: {item}", "A page about fences and fields."]})
    cfg = CurationConfig.model_validate({
        "exact": {"enabled": False}, "minhash": {"enabled": False}, "filters": {"enabled": False},
        "decontamination": {"benchmarks": [str(tmp_path / "gone.jsonl")]}})
    out, stats = curate(df, cfg, benchmark_texts=[("riddles", "r1", [item])])
    assert out["id"].to_list() == ["b"] and stats["decontamination"]["dropped"] == {"riddles": 1}


def test_a_test_harness_of_numbers_is_not_a_humaneval_test(step):
    """HumanEval's tests are `def check(candidate): assert candidate(<numbers>) == <numbers>`; with the
    numbers normalised away, any such harness of one's own was 'found' in a dozen of them. A copied test
    is still caught by its own words (here HumanEval/48's strings)."""
    cases = [([1, 2, 3], [2, 4, 6]), ([], []), ([0], [0]), ([-1, 5], [-2, 10]), ([10, 20, 30, 40], [20, 40, 60, 80]),
             ([7], [14]), ([1, 1], [2, 2])]
    own = ("# Testing your solution\n\nWe write a small test harness for our own function that doubles every "
           "number in a list.\n\n```python\ndef double_all(xs):\n    return [2 * x for x in xs]\n\n\n"
           "def check(candidate):\n" + "".join(f"    assert candidate({a}) == {b}\n" for a, b in cases)
           + "\ncheck(double_all)\n```\n\nIf all pass, nothing is printed.\n")
    asserts = [("''", True), ("'aba'", True), ("'aaaaa'", True), ("'zbcd'", False), ("'xywyx'", True),
               ("'xywyz'", False), ("'xywzx'", False)]
    copied = ("Here is how to check a palindrome function with a few tests.\n\ndef is_pal(s):\n    return s == "
              "s[::-1]\n\ndef check(candidate):\n" + "".join(f"    assert candidate({a}) == {b}\n" for a, b in asserts)
              + "\ncheck(is_pal)\n")
    assert step.matches(own) == []
    assert [(m["benchmark"], m["item_id"]) for m in step.matches(copied)] == [("humaneval", "HumanEval/48")]


def test_spread_out_edits_do_not_hide_a_short_item(wiki, step, shared_data):
    """3 edited words, a quarter of the way apart, leave no 13 words of a 20-50-word question in a row:
    one exact 13-gram as the only candidate missed such copies, whose in-order similarity is >= 0.85."""
    from textbookgen.benchmarks import load_benchmark
    from textbookgen.curation.decontaminate import match_words

    rng = random.Random(5)
    gsm = [it for it in load_benchmark("gsm8k", shared_data / "gsm8k" / "test.jsonl.gz")
           if 20 <= len(match_words(it.context)) <= 50][:40]
    missed = []
    for it in gsm:
        words = it.context.split()
        for j in (len(words) // 4, len(words) // 2, 3 * len(words) // 4):
            words[j] = "really"
        found = {m["item_id"] for m in step.matches(embed(rng.choice(wiki), " ".join(words), rng))}
        if it.id not in found:
            missed.append(it.id)
    assert len(gsm) == 40 and missed == []


RIDDLE = ("A farmer has 17 sheep and all but 9 run away through a hole in the fence; how many sheep does the "
          "farmer have left standing in the field?")


def test_rows_are_dropped_by_position_not_by_id(tmp_path):
    """Shards numbered from 0 each give two rows one id: only the contaminated row goes (not its clean
    namesake too, which then failed the stage's count check), and the report names it by row."""
    df = pl.DataFrame({"id": ["0", "1", "0", "1"],
                       "text": ["A page about fences.", "Fields in spring.", f"Exercise: {RIDDLE}", "Sheep."]})
    out, stats = Decontaminate(texts=[("riddles", "r1", [RIDDLE])])(df, tmp_path)
    assert out["text"].to_list() == ["A page about fences.", "Fields in spring.", "Sheep."]
    assert stats.dropped == {"riddles": 1}
    report = pl.read_parquet(tmp_path / "contamination.parquet")
    assert report.select("id", "row", "benchmark", "item_id").rows() == [("0", 2, "riddles", "r1")]


def test_same_named_files_of_a_folder_are_distinct_benchmarks(tmp_path):
    """my_evals/a/test.jsonl and my_evals/b/test.jsonl were both "test", their items' ids colliding."""
    questions = {"a": RIDDLE, "b": ("Ann, Bill, Cate and Dale each buy a personal pan pizza cut into four "
                                    "pieces; if Bill and Dale eat half of theirs, how many pieces are left?")}
    for sub, q in questions.items():
        (tmp_path / "my_evals" / sub).mkdir(parents=True)
        (tmp_path / "my_evals" / sub / "test.jsonl").write_text(json.dumps({"id": "q0", "question": q}) + "\n")
    df = pl.DataFrame({"id": ["x", "y", "z"], "text": [f"Try this: {RIDDLE}", questions["b"], "Nothing here."]})
    step = Decontaminate(DecontaminationConfig(benchmarks=[str(tmp_path / "my_evals")]))
    out, stats = step(df, tmp_path / "work")
    assert out["id"].to_list() == ["z"] and stats.dropped == {"a/test": 1, "b/test": 1}
    report = pl.read_parquet(tmp_path / "work" / "contamination.parquet")
    assert sorted(report.select("id", "benchmark", "item_id").rows()) == [("x", "a/test", "q0"), ("y", "b/test", "q0")]


def test_the_stats_say_what_counted_as_a_copy(tmp_path):
    """The card's decontamination row showed the n-gram size, not the similarity a copy needs: a reader
    could not tell that a quote of half an item is kept."""
    df = pl.DataFrame({"id": ["0"], "text": [f"Exercise: {RIDDLE}"]})
    cfg = DecontaminationConfig(similarity=0.9)
    _, stats = Decontaminate(cfg, texts=[("riddles", "r1", [RIDDLE])])(df, tmp_path)
    assert (stats.extra["ngram"], stats.extra["similarity"]) == (13, 0.9)
