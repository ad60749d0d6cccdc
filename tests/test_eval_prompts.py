"""Our prompts are lm-evaluation-harness's: its own task YAMLs (arc, boolq, winogrande, piqa, siqa, obqa,
hellaswag, mmlu 5-shot, gsm8k-cot, mbpp, and k-shot for every multiple-choice task) are built on rows from
the real local files, served in the Hub layout in place of `datasets.load_dataset`, and their requests are
compared with ours."""

from __future__ import annotations

import bz2
import gzip
import json
import re
import sys
import types
from pathlib import Path

import pytest

pytest.importorskip("torch")
lm_eval = pytest.importorskip("lm_eval")
datasets = pytest.importorskip("datasets")

from textbookgen.benchmarks import BENCHMARKS, load_benchmark  # noqa: E402
from trainer.eval.fewshot import SHOT_SOURCES  # noqa: E402
from trainer.eval.generative import gsm8k_prompt, mbpp_prompt  # noqa: E402
from trainer.eval.harness import evaluate, mc_requests  # noqa: E402

N = 4  # rows per task


def _jsonl(path: Path, n: int = N) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(n), f, strict=False)]


def _lm_eval_requests(monkeypatch: pytest.MonkeyPatch, yaml_rel: str, rows: list[dict], num_fewshot: int = 0,
                      fewshot_rows: list[dict] | None = None, train_rows: list[dict] | None = None) -> list[tuple]:
    """Build lm_eval's task from its YAML with `rows` as every split but `train` (`train_rows`) and `dev`
    (`fewshot_rows`), seeded as `simple_evaluate` seeds it; return its requests' args in order."""
    import lm_eval.api.task as task_mod
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    def fake_load_dataset(path=None, name=None, **kwargs):
        splits = {"train": train_rows or rows, "validation": rows, "test": rows, "dev": fewshot_rows or rows}
        return datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()})

    monkeypatch.setattr(task_mod.datasets, "load_dataset", fake_load_dataset)
    cfg = load_yaml(Path(lm_eval.__file__).parent / "tasks" / yaml_rel)
    cfg.pop("tag", None)
    task = ConfigurableTask(config=cfg)
    if num_fewshot:
        task.set_config(key="num_fewshot", value=num_fewshot)
    task.set_fewshot_seed(seed=1234)  # simple_evaluate's default fewshot_random_seed
    task.build_all_requests(limit=len(rows), rank=0, world_size=1)
    return [inst.args for inst in sorted(task.instances, key=lambda i: (i.doc_id, i.idx))]


def _ours(task: str, rows: list[dict]) -> list[tuple[str, str]]:
    convert = BENCHMARKS[task].convert
    return [r for i, row in enumerate(rows) for r in mc_requests(convert(row, str(i)))]


def test_arc_boolq_prompts(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    oc = shared_data / "opencompass_data_formulamonks"
    arc = [{"id": r["id"], "question": r["question"]["stem"], "answerKey": r["answerKey"],
            "choices": {"text": [c["text"] for c in r["question"]["choices"]],
                        "label": [c["label"] for c in r["question"]["choices"]]}}
           for r in _jsonl(oc / "ARC__ARC-c__ARC-Challenge-Test.jsonl.gz")]
    assert _lm_eval_requests(monkeypatch, "arc/arc_easy.yaml", arc) == _ours("arc_challenge", arc)
    boolq = [{**r, "label": int(r["label"] == "true")} for r in _jsonl(oc / "SuperGLUE__BoolQ__val.jsonl.gz")]
    assert _lm_eval_requests(monkeypatch, "super_glue/boolq/default.yaml", boolq) == _ours("boolq", boolq)
    # and our loader's items from the real files give those very requests
    items = load_benchmark("boolq", oc / "SuperGLUE__BoolQ__val.jsonl.gz", limit=N)
    assert [r for it in items for r in mc_requests(it)] == _ours("boolq", boolq)


def test_piqa_siqa_obqa_prompts(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    g = shared_data / "llmfoundry_eval_gauntlet"
    piqa = [{"goal": r["query"].removeprefix("Question: ").rstrip("\n"), "sol1": r["choices"][0],
             "sol2": r["choices"][1], "label": r["gold"]} for r in _jsonl(g / "piqa.jsonl.gz")]
    assert _lm_eval_requests(monkeypatch, "piqa/piqa.yaml", piqa) == _ours("piqa", piqa)
    siqa = [{"context": r["context"], "question": r["question"], "answerA": r["options"][0],
             "answerB": r["options"][1], "answerC": r["options"][2], "label": str(r["options"].index(r["answer"]) + 1)}
            for r in _jsonl(shared_data / "siqa_3choice" / "socialiqa_dev.jsonl.gz")]
    assert _lm_eval_requests(monkeypatch, "siqa/siqa.yaml", siqa) == _ours("siqa", siqa)
    obqa = [{"id": str(i), "question_stem": r["query"], "answerKey": "ABCD"[r["gold"]],
             "choices": {"text": r["choices"], "label": list("ABCD")}} for i, r in enumerate(_jsonl(g / "openbook_qa.jsonl.gz"))]
    assert _lm_eval_requests(monkeypatch, "openbookqa/openbookqa.yaml", obqa) == _ours("openbookqa", obqa)


def test_winogrande_and_hellaswag_prompts(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the Hub layouts (the local copies are llm-foundry's / the 6-line text): rows rebuilt from them
    wg = []
    for r in _jsonl(shared_data / "llmfoundry_eval_gauntlet" / "winogrande.jsonl.gz"):
        a, b = r["context_options"]
        k = len(a.rsplit(" ", 1)[0]) + 1 if a.rsplit(" ", 1)[0] == b.rsplit(" ", 1)[0] else 0
        wg.append({"sentence": a[:k] + "_ " + r["continuation"], "option1": a[k:], "option2": b[k:],
                   "answer": str(r["gold"] + 1)})
    assert _lm_eval_requests(monkeypatch, "winogrande/default.yaml", wg) == _ours("winogrande", wg)
    hs = [*_WIKIHOW_TAGGED, {"ind": 0, "activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow "
           "covering the window of a car, and a woman wearing winter clothes smiles.", "ctx_b": "then",
           "endings": [", the man adds wax to the windshield and cuts it.", ", a person board a ski lift, while "
                       "two men supporting the head of the person wearing winter clothes snow as the we girls sled.",
                       ", the man puts on a christmas coat, knitted with netting.", ", the man continues removing "
                       "the snow on his car."], "label": "3", "split": "val", "split_type": "indomain", "source_id": "a"},
          {"ind": 1, "activity_label": "Home and Garden", "ctx_a": "[header] How to clean a grill [title] Heat the "
           "grill.", "ctx_b": "", "endings": ["[step] Scrub it.", "Wash [title] it.", "x", "y"], "label": "0",
           "split": "val", "split_type": "zeroshot", "source_id": "b"}]
    assert _lm_eval_requests(monkeypatch, "hellaswag/hellaswag.yaml", hs) == _ours("hellaswag", hs)


class Recorder:
    """An LM that records the log-likelihood requests it is asked for."""

    def __init__(self) -> None:
        self.requests: list = []

    def loglikelihood(self, reqs):
        self.requests += list(reqs)
        return [(0.0, False)] * len(reqs)


# WikiHow rows whose endings open with a tag: lm_eval keeps a leading space there ("  Use ...")
_WIKIHOW_TAGGED = [
    {"ind": 7, "activity_label": "Personal Care and Style", "ctx_a": "[header] How to make a prison tattoo ink [title] "
     "Gather the supplies. [step] Find a container.", "ctx_b": "",
     "endings": ["[title] Use isopropyl alcohol as a lubricant. [step] Mix warm water and dish soap.",
                 "If you cannot get a container, cut a soda can in half. [substeps] You may buy boot polish.",
                 "Glass is not advised since it is fragile. [title] Remove any foreign object.",
                 "[title] Pour the white polish into a plastic tube. [step] A light tube works best."],
     "label": "1", "split": "val", "split_type": "zeroshot", "source_id": "wikihow~1"},
]


def _hf_rows(task: str, shared_data: Path, n: int) -> list[dict]:
    """n rows of `task` from the shipped files, in the Hub layout lm_eval's YAML reads."""
    g, oc = shared_data / "llmfoundry_eval_gauntlet", shared_data / "opencompass_data_formulamonks"
    if task == "arc_easy":
        return [{"id": r["id"], "question": r["question"]["stem"], "answerKey": r["answerKey"],
                 "choices": {"text": [c["text"] for c in r["question"]["choices"]],
                             "label": [c["label"] for c in r["question"]["choices"]]}}
                for r in _jsonl(oc / "ARC__ARC-e__ARC-Easy-Test.jsonl.gz", n)]
    if task == "boolq":
        return [{**r, "label": int(r["label"] == "true")} for r in _jsonl(oc / "SuperGLUE__BoolQ__val.jsonl.gz", n)]
    if task == "piqa":
        return [{"goal": r["query"].removeprefix("Question: ").rstrip("\n"), "sol1": r["choices"][0],
                 "sol2": r["choices"][1], "label": r["gold"]} for r in _jsonl(g / "piqa.jsonl.gz", n)]
    if task == "siqa":
        return [{"context": r["context"], "question": r["question"], "answerA": r["options"][0],
                 "answerB": r["options"][1], "answerC": r["options"][2],
                 "label": str(r["options"].index(r["answer"]) + 1)}
                for r in _jsonl(shared_data / "siqa_3choice" / "socialiqa_dev.jsonl.gz", n)]
    if task == "openbookqa":
        return [{"id": str(i), "question_stem": r["query"], "answerKey": "ABCD"[r["gold"]],
                 "choices": {"text": r["choices"], "label": list("ABCD")}}
                for i, r in enumerate(_jsonl(g / "openbook_qa.jsonl.gz", n))]
    if task == "winogrande":
        rows = []
        for r in _jsonl(g / "winogrande.jsonl.gz", n):
            a, b = r["context_options"]
            k = len(a.rsplit(" ", 1)[0]) + 1 if a.rsplit(" ", 1)[0] == b.rsplit(" ", 1)[0] else 0
            rows.append({"sentence": a[:k] + "_ " + r["continuation"], "option1": a[k:], "option2": b[k:],
                         "answer": str(r["gold"] + 1)})
        return rows
    # hellaswag: the shipped text's rows as Rowan rows (ctx_a holds the whole context), and tagged WikiHow ones
    with bz2.open(shared_data / "hellaswag" / "hellaswag_val_full.txt.bz2", "rt", encoding="utf-8") as f:
        lines = [next(f).rstrip("\n") for _ in range(6 * n)]
    rows = [{"ind": 100 + i, "activity_label": lines[6 * i].partition(": ")[0], "ctx_a": lines[6 * i].partition(": ")[2],
             "ctx_b": "", "endings": lines[6 * i + 2: 6 * i + 6], "label": lines[6 * i + 1], "split": "val",
             "split_type": "indomain", "source_id": str(i)} for i in range(n)]
    return [{**_WIKIHOW_TAGGED[0], "ind": 1}, *rows[1:-1], {**_WIKIHOW_TAGGED[0], "ind": 2, "label": "3"}]


_YAMLS = {"arc_easy": "arc/arc_easy.yaml", "boolq": "super_glue/boolq/default.yaml", "piqa": "piqa/piqa.yaml",
          "siqa": "siqa/siqa.yaml", "openbookqa": "openbookqa/openbookqa.yaml", "winogrande": "winogrande/default.yaml",
          "hellaswag": "hellaswag/hellaswag.yaml"}


@pytest.mark.parametrize("task", list(_YAMLS))
def test_k_shot_contexts_equal_lm_eval(task: str, shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """k-shot requests byte for byte, lm_eval's sampler included: the same random draws (seed 1234, one
    stream per task, in doc order) from the train split, and, where lm_eval hands the evaluated doc to the
    sampler, its k + 1 draw with the doc dropped and the redraw when the pool holds it twice."""
    rows = _hf_rows(task, shared_data, 14)
    evals, train = rows[:8], rows[8:]
    if SHOT_SOURCES[task].excludes_eval_doc:  # copies of evaluated docs among the examples
        train = [evals[0], *train, evals[1], evals[1]]
    if task == "boolq":  # the same text in another row (idx): lm_eval's doc comparison keeps it
        train.append({**evals[2], "idx": 999})
    if task == "hellaswag":
        train = [{**r, "split": "train"} for r in train]
    convert = BENCHMARKS["arc_easy" if task == "arc_easy" else task].convert
    eval_split = "test" if task in ("arc_easy", "openbookqa") else "validation"
    items = []
    for split, part in ((eval_split, evals), ("train", train)):
        for i, row in enumerate(part):
            it = convert(row, str(i))
            it.meta["split"] = split
            items.append(it)
    for k in (1, 3, len(train) - 2):  # the last draws nearly the whole pool: both copies of a doc get drawn
        ref = _lm_eval_requests(monkeypatch, _YAMLS[task], evals, num_fewshot=k, train_rows=train)
        rec = Recorder()
        res = evaluate(rec, [f"{task}@{k}"], data={task: items})[f"{task}@{k}"]
        assert res.num_fewshot == k and res.n == len(evals)
        assert [tuple(a) for a in ref] == rec.requests, (task, k)
        assert rec.requests[0][0].count("\n\n") >= k


def test_mmlu_five_shot_prompts(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    items = load_benchmark("mmlu", shared_data / "mmlu")
    test = [it for it in items if it.meta["subject"] == "anatomy" and it.meta["split"] == "test"][:N]
    dev = [it for it in items if it.meta["subject"] == "anatomy" and it.meta["split"] == "dev"]
    def hf(it):
        return {"question": it.meta["question"], "subject": "anatomy", "choices": it.meta["options"],
                "answer": it.gold}
    ref = _lm_eval_requests(monkeypatch, "mmlu/default/mmlu_anatomy.yaml", [hf(t) for t in test], num_fewshot=5,
                            fewshot_rows=[hf(d) for d in dev])

    rec = Recorder()
    evaluate(rec, ["mmlu@5"], data={"mmlu": test + dev})
    assert ref == rec.requests


def test_gsm8k_cot_and_mbpp_prompts(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = _jsonl(shared_data / "gsm8k" / "test.jsonl.gz")
    ref = _lm_eval_requests(monkeypatch, "gsm8k/gsm8k-cot.yaml", rows, num_fewshot=8)
    assert [a[0] for a in ref] == [gsm8k_prompt(r["question"]) for r in rows]
    assert ref[0][1]["until"] == ["Q:", "</s>", "<|im_end|>"]
    # lm_eval's mbpp/utils.py loads `evaluate`'s code_eval from the Hub at import: a stub stands in
    stub = types.ModuleType("evaluate")
    stub.load = lambda *a, **k: types.SimpleNamespace(compute=lambda **kw: ({"pass@1": 0.0}, {}))
    monkeypatch.setitem(sys.modules, "evaluate", stub)
    mb = [it for it in load_benchmark("mbpp", shared_data / "opencompass_data_formulamonks") if it.meta["split"] == "test"][:N]
    mb_rows = [{"task_id": int(it.id), "text": it.context, "code": it.target, "test_list": it.meta["test_list"],
                "test_setup_code": "", "challenge_test_list": []} for it in mb]
    ref = _lm_eval_requests(monkeypatch, "mbpp/mbpp.yaml", mb_rows, num_fewshot=3)
    assert [a[0] for a in ref] == [mbpp_prompt(it) for it in mb]
    assert re.search(r"\[BEGIN\]\n$", ref[0][0]) is not None
