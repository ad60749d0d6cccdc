"""Evaluation harness: per-request log-likelihoods equal lm_eval's HFLM, metrics follow lm_eval's formulas,
GSM8K answer extraction is exact on real references, generated code is judged in the sandbox."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from textbookgen.benchmarks import BenchmarkItem, load_benchmark  # noqa: E402
from trainer.eval.generative import (  # noqa: E402
    GSM8K_COT_EXEMPLARS,
    flexible_extract,
    gsm8k_prompt,
    mbpp_prompt,
    normalize_answer,
    run_task,
    strict_match,
)
from trainer.eval.harness import (  # noqa: E402
    HELLASWAG_TEXT_CAUSE,
    evaluate,
    mc_requests,
    mean_stderr,
    pooled_stderr,
)
from trainer.eval.models import CausalLM, load_model  # noqa: E402
from trainer.eval.report import markdown_table, write_report  # noqa: E402
from trainer.eval.sandbox import SandboxConfig  # noqa: E402


@pytest.fixture(scope="module")
def gpt2_tokenizer(shared_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """GPT2TokenizerFast from the OpenAI files under their HF names (in a temp dir, not the repo)."""
    d = tmp_path_factory.mktemp("gpt2tok")
    shutil.copy(shared_data / "tokenizer_gpt2" / "encoder.json", d / "vocab.json")
    shutil.copy(shared_data / "tokenizer_gpt2" / "vocab.bpe", d / "merges.txt")
    return transformers.GPT2TokenizerFast.from_pretrained(str(d))


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    cfg = transformers.PhiConfig(vocab_size=50304, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, max_position_embeddings=256, initializer_range=0.2,
                                 bos_token_id=50256, eos_token_id=50256)
    return transformers.PhiForCausalLM(cfg).eval()


def _requests(shared_data: Path, lm: CausalLM) -> list[tuple[str, str]]:
    g = shared_data / "llmfoundry_eval_gauntlet"
    items = (load_benchmark("arc_challenge", g, limit=6) + load_benchmark("winogrande", g, limit=4)
             + load_benchmark("hellaswag", shared_data / "hellaswag", limit=3)
             + load_benchmark("boolq", shared_data / "opencompass_data_formulamonks", limit=3))
    reqs = [r for it in items for r in mc_requests(it)]
    greedy = lm.generate(["The answer is"], max_new_tokens=3)[0]
    # empty context (prefix token), trailing space moved to the continuation, a greedy continuation
    return reqs + [("", " hello world"), ("Question: why?\nAnswer: ", "because"), ("The answer is", greedy)]


def test_loglikelihoods_equal_lm_eval_hflm(shared_data: Path, gpt2_tokenizer, tiny_model) -> None:
    """Both scoring strategies against lm_eval 0.4's HFLM on the same requests and model (to 1e-4)."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    # max_length 128 forces lm_eval's left truncation on the BoolQ passages
    lms = {s: CausalLM(tiny_model, gpt2_tokenizer, device="cpu", batch_size=5, max_batch_tokens=600,
                       max_length=128, strategy=s) for s in ("prefix", "full")}
    reqs = _requests(shared_data, lms["prefix"])
    ref_lm = HFLM(pretrained=tiny_model, tokenizer=gpt2_tokenizer, batch_size=7, device="cpu", max_length=128)
    ref = ref_lm.loglikelihood([Instance("loglikelihood", {}, r, i) for i, r in enumerate(reqs)],
                               disable_tqdm=True)
    assert ref[-1][1], "the greedy continuation is recognised as greedy"
    enc = lms["prefix"].encode_pair
    assert any(len(enc(*r)[0]) + len(enc(*r)[1]) > 129 for r in reqs), "left truncation is exercised"
    for strategy, lm in lms.items():
        got = lm.loglikelihood(reqs)
        assert len(got) == len(ref) == len(reqs)
        for (ll, greedy), (ref_ll, ref_greedy), r in zip(got, ref, reqs, strict=True):
            assert abs(ll - ref_ll) < 1e-4, (strategy, r)
            assert greedy == ref_greedy, (strategy, r)


def test_our_checkpoint_export_scores_like_the_model_object(shared_data: Path, tmp_path: Path) -> None:
    """A trainer Phi, its export_hf directory and lm_eval on the same weights agree."""
    from trainer.export import export_hf
    from trainer.model import Phi, PhiConfig
    from trainer.tokenizer import load_tokenizer

    torch.manual_seed(1)
    phi = Phi(PhiConfig(vocab_size=50304, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=128))
    tok = load_tokenizer(shared_data / "tokenizer_gpt2")
    export_hf(phi, tmp_path / "hf", tokenizer=tok)
    reqs = [(it.context, " " + c) for it in load_benchmark("arc_easy", shared_data / "llmfoundry_eval_gauntlet",
                                                           limit=3) for c in it.choices]
    from_obj = load_model(phi, tokenizer=tok, device="cpu").loglikelihood(reqs)
    from_dir = load_model(tmp_path / "hf", device="cpu").loglikelihood(reqs)
    with torch.no_grad():  # our own model's forward, no transformers involved
        enc = load_model(phi, tokenizer=tok, device="cpu")
        c, x = enc.encode_pair(*reqs[0])
        logp = torch.log_softmax(phi(torch.tensor([c + x[:-1]])).float(), -1)[0]
        direct = float(sum(logp[len(c) - 1 + t, tok_id] for t, tok_id in enumerate(x)))
    assert abs(from_obj[0][0] - direct) < 1e-4
    # a training checkpoint (trainer/checkpoint.py layout), its tokenizer named in the saved config
    from trainer.checkpoint import save

    save(tmp_path / "run" / "checkpoints", 7, phi, torch.optim.AdamW(phi.parameters()),
         meta={"model_config": dataclasses.asdict(phi.config),
               "config": {"data": {"tokenizer": str(shared_data / "tokenizer_gpt2")}}})
    from_ckpt = load_model(tmp_path / "run", device="cpu").loglikelihood(reqs)
    for a, b, c in zip(from_obj, from_dir, from_ckpt, strict=True):
        assert abs(a[0] - b[0]) < 1e-4 and abs(a[0] - c[0]) < 1e-4


def test_cli_eval_writes_the_report(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from trainer.cli import main
    from trainer.export import export_hf
    from trainer.model import CONFIGS, Phi
    from trainer.tokenizer import load_tokenizer

    torch.manual_seed(0)
    export_hf(Phi(CONFIGS["tiny"]), tmp_path / "hf", tokenizer=load_tokenizer(shared_data / "tokenizer_gpt2"))
    rc = main(["eval", str(tmp_path / "hf"), "--tasks", "arc_easy,winogrande,hellaswag,mmlu@5,humaneval", "--limit", "2",
               "--data", str(shared_data), "--out", str(tmp_path / "out"), "--device", "cpu", "--max-new-tokens", "8"])
    assert rc == 0
    out, err = capsys.readouterr()
    assert "'[title]'" in err  # the log is plain text: rich markup would eat the bracketed tag
    assert out.startswith("| model |") and "scoring" not in out  # progress bars on stderr: `> table.md` is the table
    assert "| **hf** |" in out and "phi-1.5 (paper)" in out and "mmlu@5 5-shot" in out
    payload = json.loads((tmp_path / "out" / "results.json").read_text())
    assert payload["results"]["mmlu@5"]["n"] == 2 * 57 and payload["results"]["humaneval"]["n"] == 2
    assert set(payload["results"]["arc_easy"]["stderr"]) == {"acc", "acc_norm"}
    assert (tmp_path / "out" / "chart.png").stat().st_size > 1000
    # HellaSwag from the shipped 6-lines text is not lm_eval's exact requests: marked, with the cause
    assert payload["results"]["hellaswag"]["approximate"] == HELLASWAG_TEXT_CAUSE
    assert payload["results"]["arc_easy"]["approximate"] is None
    for table in (out, (tmp_path / "out" / "table.md").read_text()):
        row = next(line for line in table.splitlines() if line.startswith("| **hf** |"))
        assert row.count("†") == 1 and f"† hellaswag: approximate, not lm_eval's exact requests: {HELLASWAG_TEXT_CAUSE}" in table
    assert main(["eval", str(tmp_path / "hf"), "--tasks", "arc_easy", "--data", str(tmp_path / "nowhere"),
                 "--device", "cpu", "--out", str(tmp_path / "o2")]) == 2
    assert "no such file" in capsys.readouterr().err


class FakeLM:
    """Log-likelihoods from a table; generations from a function."""

    def __init__(self, scores=None, gen=None):
        self.scores, self.gen, self.requests = scores or {}, gen, []

    def loglikelihood(self, requests):
        self.requests += list(requests)
        return [(self.scores.get(r, -10.0), False) for r in requests]

    def generate(self, prompts, max_new_tokens=256, until=()):
        return [self.gen(p) for p in prompts]


def test_acc_and_acc_norm_follow_lm_eval() -> None:
    item = BenchmarkItem("arc_easy", "1", "Question: q\nAnswer:", ["a", "longer answer"], 1, "longer answer")
    # summed: "a" wins; per character: "longer answer" wins (-13/13 > -2/1)
    lm = FakeLM({("Question: q\nAnswer:", " a"): -2.0, ("Question: q\nAnswer:", " longer answer"): -13.0})
    res = evaluate(lm, ["arc_easy"], data={"arc_easy": [item]})["arc_easy"]
    assert res.metrics == {"acc": 0.0, "acc_norm": 1.0}
    tie = BenchmarkItem("boolq", "2", "P\nQuestion: q?\nAnswer:", ["no", "yes"], 1, "yes")
    res = evaluate(FakeLM(), ["boolq"], data={"boolq": [tie]})["boolq"]
    assert res.metrics == {"acc": 0.0} and res.samples[0]["pred"] == 0  # ties go to the first choice


def test_winogrande_partial_scoring_requests(shared_data: Path) -> None:
    item = load_benchmark("winogrande", shared_data / "llmfoundry_eval_gauntlet", limit=1)[0]
    assert mc_requests(item) == [("Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."),
                                 ("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases.")]


def test_mmlu_five_shot_prompt(shared_data: Path) -> None:
    lm = FakeLM()
    res = evaluate(lm, ["mmlu@5"], data=shared_data, limit=1)["mmlu@5"]
    assert res.n == 57 and res.num_fewshot == 5
    first = lm.requests[0][0]
    dev = load_benchmark("mmlu", shared_data / "mmlu", split="dev")[:5]
    expected = ("The following are multiple choice questions (with answers) about abstract algebra.\n\n"
                + "".join(f"{d.context} {'ABCD'[d.gold]}\n\n" for d in dev)
                + "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n"
                  "A. 0\nB. 4\nC. 2\nD. 6\nAnswer:")
    assert first == expected and lm.requests[0][1] == " A" and len(lm.requests) == 57 * 4
    zero = FakeLM()
    evaluate(zero, ["mmlu"], data=shared_data, limit=1)
    assert zero.requests[0][0].startswith("The following are multiple choice questions (with answers) about "
                                          "abstract algebra.\n\nFind the degree")


def test_stderr_formulas_match_lm_eval() -> None:
    from lm_eval.api.metrics import mean_stderr as lm_mean_stderr
    from lm_eval.api.metrics import pooled_sample_stderr

    rng = random.Random(0)
    xs = [float(rng.random() < 0.3) for _ in range(200)]
    assert mean_stderr(xs) == pytest.approx(lm_mean_stderr(xs), rel=1e-12)
    groups = [[float(rng.random() < p) for _ in range(n)] for p, n in ((0.2, 30), (0.6, 50), (0.4, 11))]
    se = [mean_stderr(g) for g in groups]
    assert pooled_stderr(se, [len(g) for g in groups]) == pytest.approx(
        float(pooled_sample_stderr(se, [len(g) for g in groups])), rel=1e-12)


def test_gsm8k_extraction_on_real_references(shared_data: Path) -> None:
    """100% on all 8,792 reference solutions: lm_eval's flexible extract on the raw solution, and its strict
    match on the solution rewritten in the CoT prompt's form ("... The answer is N.")."""
    items = load_benchmark("gsm8k", shared_data / "gsm8k")
    assert len(items) == 1319 + 7473
    flex = strict = 0
    for it in items:
        gold = normalize_answer(it.target)
        body, _, final = it.target.rpartition("####")
        flex += normalize_answer(flexible_extract(it.target)) == gold
        cot = " ".join(body.split()) + f" The answer is {final.strip()}."
        strict += normalize_answer(strict_match(cot)) == gold
    assert flex == strict == len(items)


def test_gsm8k_extraction_equals_lm_eval_filters() -> None:
    from lm_eval.filters.extraction import RegexFilter

    texts = ["So 3 + 4 = 7. The answer is 7.", "We get $1,200 in total. The answer is 1,200.", "no numbers",
             "It costs $5.50, so 2 of them 11.", "The answer is -3. Then 9.", "18\n\nQ: next"]
    strict_f = RegexFilter(regex_pattern=r"The answer is (\-?[0-9\.\,]+).", group_select=0)
    flex_f = RegexFilter(regex_pattern=r"(-?[$0-9.,]{2,})|(-?[0-9]+)", group_select=-1)
    ref_strict = [r[0] for r in strict_f.apply([[t] for t in texts], [{}] * len(texts))]
    ref_flex = [r[0] for r in flex_f.apply([[t] for t in texts], [{}] * len(texts))]
    assert [strict_match(t) for t in texts] == ref_strict
    assert [flexible_extract(t) for t in texts] == ref_flex


def test_gsm8k_task_scores_generations(shared_data: Path) -> None:
    items = load_benchmark("gsm8k", shared_data / "gsm8k", split="test", limit=4)
    golds = {it.context: normalize_answer(it.target) for it in items}

    def answer(prompt: str) -> str:
        q = prompt.rsplit("Q: ", 1)[1].removesuffix("\nA:")
        assert prompt.startswith(f"Q: {GSM8K_COT_EXEMPLARS[0][0]}\nA: {GSM8K_COT_EXEMPLARS[0][1]}\n\n")
        return f" Some steps. The answer is {golds[q]}." if q != items[0].context else " The answer is 0."

    res = run_task(FakeLM(gen=answer), "gsm8k", items, items)
    assert res.metrics["exact_match"] == 0.75 and res.num_fewshot == 8
    assert gsm8k_prompt("x", 0) == "Q: x\nA:"


def test_humaneval_and_mbpp_pass_at_1(shared_data: Path) -> None:
    he = load_benchmark("humaneval", shared_data / "humaneval")[:4]
    canon = {it.context: it.target for it in he}
    res = run_task(FakeLM(gen=lambda p: canon[p] if p != he[1].context else "    return None\n"), "humaneval",
                   he, he, sandbox=SandboxConfig(timeout_s=10))
    assert res.metrics["pass@1"] == 0.75 and [s["status"] for s in res.samples][1] == "failed"
    mbpp_test = load_benchmark("mbpp", shared_data / "opencompass_data_formulamonks", split="test")
    mb = mbpp_test[:3] + [it for it in mbpp_test if it.id == "367"]  # 367 needs its test_setup_code
    code = {mbpp_prompt(it): it.target for it in mb}
    assert mbpp_prompt(mb[0]).count("[BEGIN]") == 4 and mbpp_prompt(mb[0]).endswith("[BEGIN]\n")
    res = run_task(FakeLM(gen=lambda p: code[p]), "mbpp", mb, mb, sandbox=SandboxConfig(timeout_s=10))
    assert res.metrics["pass@1"] == 1.0


def test_report_files(tmp_path: Path) -> None:
    items = [BenchmarkItem("piqa", str(i), "Question: g\nAnswer:", ["x", "yy"], i % 2, None) for i in range(6)]
    results = evaluate(FakeLM({("Question: g\nAnswer:", " x"): -1.0}), ["piqa", "boolq"],
                       data={"piqa": items, "boolq": [BenchmarkItem("boolq", "0", "c", ["no", "yes"], 0, "no")]})
    paths = write_report(results, tmp_path, "mymodel", config={"checkpoint": "x"})
    payload = json.loads(paths["json"].read_text())
    assert payload["results"]["piqa"]["metrics"]["acc"] == 0.5
    assert payload["results"]["piqa"]["stderr"]["acc"] == pytest.approx(math.sqrt(0.3) / math.sqrt(6))
    assert paths["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = markdown_table(results, "mymodel")
    assert "| **mymodel** | 1.000 | 0.500 ± 0.224 |" in table
    assert "phi-1.5 (paper) | 0.758 | 0.766 |" in table
    assert "Items scored: piqa 6, boolq 1 (" in table  # a --limit subset is not the paper's full benchmark
    assert len(paths["samples"].read_text().splitlines()) == 7


def test_num_fewshot_applies_to_every_fewshot_task() -> None:
    """As lm_eval's --num_fewshot: every multiple-choice task takes k examples (ARC from its train split)."""
    from textbookgen.benchmarks import BENCHMARKS

    def mmlu(i: int, split: str) -> BenchmarkItem:
        it = BENCHMARKS["mmlu"].convert({"question": f"q{i}", "subject": "virology", "choices": list("wxyz"),
                                         "answer": i % 4}, str(i))
        it.meta["split"] = split
        return it

    def arc(i: int, split: str) -> BenchmarkItem:
        return BenchmarkItem("arc_easy", str(i), f"Question: q{i}\nAnswer:", ["a", "b"], i % 2, None, {"split": split})

    lm = FakeLM()
    arc_items = [arc(0, "test")] + [arc(i, "train") for i in range(1, 6)]
    res = evaluate(lm, ["arc_easy", "mmlu"], data={"arc_easy": arc_items, "mmlu": [mmlu(i, "dev") for i in range(5)]
                                                   + [mmlu(9, "test")]}, num_fewshot=2)
    assert (res["arc_easy"].num_fewshot, res["arc_easy"].n, res["mmlu"].num_fewshot, res["mmlu"].n) == (2, 1, 2, 1)
    shots = lm.requests[0][0].removesuffix("Question: q0\nAnswer:").split("\n\n")
    assert len(shots) == 3 and shots[-1] == "" and all(re.fullmatch(r"Question: q[1-5]\nAnswer: [ab]", s) for s in shots[:2])
    assert lm.requests[-1][0].count("Answer:") == 3


def test_fewshot_errors_name_the_missing_split_and_task(shared_data: Path) -> None:
    # the shipped ARC has test and dev, not the train split lm_eval draws ARC's examples from
    with pytest.raises(ValueError, match=r"^arc_challenge@25: lm_eval draws arc_challenge's few-shot examples from "
                                         r"its 'train' split, and .*opencompass_data_formulamonks has no train items"):
        evaluate(FakeLM(), ["arc_challenge@25"], data=shared_data / "opencompass_data_formulamonks", limit=1)
    with pytest.raises(ValueError, match=r"^hellaswag@10: .*'train' split, and .*hellaswag_val_full.txt.bz2 has no train"):
        evaluate(FakeLM(), ["hellaswag@10"], data={"hellaswag": [str(shared_data / "hellaswag"
                                                                     / "hellaswag_val_full.txt.bz2")]}, limit=1)
    few = [BenchmarkItem("piqa", str(i), f"Question: g{i}\nAnswer:", ["x", "y"], 0, "x", {"split": s})
           for i, s in enumerate(["validation", "train", "train"])]
    with pytest.raises(ValueError, match=r"^piqa@2: needs at least 3 train examples, found 2 in the items"):
        evaluate(FakeLM(), ["piqa@2"], data={"piqa": few})
    with pytest.raises(ValueError, match=r"^humaneval@3: humaneval is zero-shot only here; few-shot tasks: mmlu, "):
        evaluate(FakeLM(), ["humaneval@3"], data=shared_data)


# one WikiHow row (Rowan/hellaswag layout) whose endings open with a tag, and the same row as
# extract_hellaswag.cpp wrote it into the 6-lines text (tags deleted, then stripped)
_ROWAN = {"ind": 7, "activity_label": "Personal Care and Style", "ctx_a": "[header] How to make a prison tattoo ink "
          "[title] Gather the supplies. [step] Find a container.", "ctx_b": "",
          "endings": ["[title] Use isopropyl alcohol as a lubricant. [step] Mix warm water and dish soap.",
                      "If you cannot get a container, cut a soda can in half. [substeps] You may buy boot polish.",
                      "Glass is not advised since it is fragile. [title] Remove any foreign object.",
                      "[title] Pour the white polish into a plastic tube. [step] A light tube works best."],
          "label": "1", "split": "val", "split_type": "zeroshot", "source_id": "wikihow~1"}
_SIX_LINES = ("Personal Care and Style: How to make a prison tattoo ink. Gather the supplies. Find a container.\n1\n"
              "Use isopropyl alcohol as a lubricant. Mix warm water and dish soap.\n"
              "If you cannot get a container, cut a soda can in half. You may buy boot polish.\n"
              "Glass is not advised since it is fragile.. Remove any foreign object.\n"
              "Pour the white polish into a plastic tube. A light tube works best.\n")
_LM_EVAL_CONT = "  Use isopropyl alcohol as a lubricant. Mix warm water and dish soap."  # lm_eval's, two spaces


@pytest.mark.parametrize("exact_name", ["validation-00000-of-00001.parquet", "hellaswag_val.jsonl"])
def test_hellaswag_prefers_the_rowan_layout_over_the_text(tmp_path: Path, exact_name: str) -> None:
    """Both layouts in the task's folder: the Rowan rows are read (lm_eval's leading space kept), the text
    copy of the same split is not, and the result is not marked approximate."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "hellaswag"
    folder.mkdir()
    (folder / "hellaswag_val_full.txt").write_text(_SIX_LINES)
    text_only = FakeLM()
    res = evaluate(text_only, ["hellaswag"], data=tmp_path)["hellaswag"]
    assert res.approximate == HELLASWAG_TEXT_CAUSE and text_only.requests[0][1] == " " + _LM_EVAL_CONT.lstrip()
    if exact_name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist([_ROWAN]), folder / exact_name)
    else:
        (folder / exact_name).write_text(json.dumps(_ROWAN) + "\n")
    lm = FakeLM()
    res = evaluate(lm, ["hellaswag"], data=tmp_path)["hellaswag"]
    assert res.n == 1 and res.approximate is None
    assert lm.requests[0] == ("Personal Care and Style: How to make a prison tattoo ink. Gather the supplies. Find a "
                              "container.", _LM_EVAL_CONT)


def test_hellaswag_few_shot_from_a_train_file_given_twice(tmp_path: Path) -> None:
    """--data-file TASK=PATH given twice (validation, train): examples from the train rows; shots drawn from
    the 6-lines text mark the result approximate too."""
    from trainer.eval.cli import data_files

    val, train = tmp_path / "hellaswag_val.jsonl", tmp_path / "hellaswag_train.jsonl"
    val.write_text(json.dumps(_ROWAN) + "\n")
    rows = [{**_ROWAN, "ind": i, "split": "train", "label": str(i % 4)} for i in range(4)]
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = data_files([f"hellaswag={val}", f"hellaswag={train}"], ["hellaswag@2"])
    assert data == {"hellaswag": [str(val), str(train)]}
    lm = FakeLM()
    res = evaluate(lm, ["hellaswag@2"], data=data)["hellaswag@2"]
    assert (res.n, res.num_fewshot, res.approximate) == (1, 2, None)
    assert lm.requests[0][0].count(": How to make a prison tattoo ink.") == 3 and lm.requests[0][1] == _LM_EVAL_CONT
    (tmp_path / "hellaswag_train.txt").write_text(_SIX_LINES * 3)
    res = evaluate(FakeLM(), ["hellaswag@2"], data={"hellaswag": [val, tmp_path / "hellaswag_train.txt"]})
    assert res["hellaswag@2"].approximate == HELLASWAG_TEXT_CAUSE


@pytest.mark.parametrize("task", ["copa", "commonsense_qa"])
def test_llm_foundry_prompts_are_marked_approximate(shared_data: Path, tmp_path: Path, task: str) -> None:
    """COPA and CommonsenseQA are read in llm-foundry's layout only, whose prompts are not lm_eval's (COPA's
    comma and single space, CSQA's 'Choices:' line and four letters): their results must say so."""
    from trainer.eval.harness import FOUNDRY_PROMPT_CAUSES

    res = evaluate(FakeLM(), [task], data=shared_data / "llmfoundry_eval_gauntlet", limit=2)[task]
    assert res.approximate == FOUNDRY_PROMPT_CAUSES[task]
    write_report({task: res}, tmp_path, "tiny", samples=False)
    assert json.loads((tmp_path / "results.json").read_text())["results"][task]["approximate"] == res.approximate
    assert f"- {task} (n=2) †" in (tmp_path / "table.md").read_text()


def test_cli_checks_every_task_before_the_model_and_keeps_finished_tasks(shared_data: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        capsys: pytest.CaptureFixture) -> None:
    """Missing data for the last task stops the run before any task is scored (it stopped after the earlier
    tasks ran); a task that crashes leaves the report of the tasks before it in --out."""
    import trainer.eval.models as models
    from trainer.cli import main

    lms: list[FakeLM] = []

    def fake_load(spec, **kwargs):
        lms.append(FakeLM(gen=lambda p: (_ for _ in ()).throw(RuntimeError("CUDA out of memory"))))
        return lms[-1]

    monkeypatch.setattr(models, "load_model", fake_load)
    monkeypatch.setenv("COLUMNS", "500")  # rich's log lines unwrapped
    args = ["eval", "ckpt", "--data", str(shared_data), "--limit", "2", "--out", str(tmp_path / "out")]
    assert main([*args, "--tasks", "arc_easy,gsm8k", "--data-file", f"gsm8k={tmp_path / 'missing.jsonl'}"]) == 2
    assert "missing.jsonl" in capsys.readouterr().err and lms[-1].requests == [] and not (tmp_path / "out").exists()
    assert main([*args, "--tasks", "arc_easy,gsm8k@9"]) == 2 and lms[-1].requests == []
    assert "gsm8k@9: 9-shot asked, but lm_eval's gsm8k has 8 fixed examples" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="out of memory"):
        main([*args, "--tasks", "arc_easy,boolq,gsm8k"])
    assert f"finished before the stop are reported in {tmp_path / 'out'}" in capsys.readouterr().err
    payload = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(payload["results"]) == ["arc_easy", "boolq"] and len(lms) == 3
    assert "| **ckpt** |" in (tmp_path / "out" / "table.md").read_text()


def test_hub_id_out_of_reach_fails_at_once_in_one_line(shared_data: Path, tmp_path: Path) -> None:
    """A Hub id with the Hub out of reach and an empty HF cache: one error line naming both, without
    transformers' five logged retries (~25 s) first."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf_home")}
    env.pop("HF_HUB_OFFLINE", None)
    r = subprocess.run([sys.executable, "-m", "trainer", "eval", "someone/phi-model", "--tasks", "boolq", "--limit", "1",
                        "--data", str(shared_data), "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 2, r.stderr
    assert "Retry" not in r.stderr and "thrown while requesting" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "someone/phi-model: cannot load it as a Hub model (the Hub is out of reach" in errors[0]


def test_cli_compares_several_checkpoints(shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture) -> None:
    """Several checkpoints in one call: a report folder each, and compare.md / compare.png across them in
    the order given (the data is read once, before the first model)."""
    import trainer.eval.models as models
    from trainer.cli import main

    def fake_load(spec, **kwargs):
        lm = FakeLM()
        if "step-20" in str(spec):  # prefers the shortest choice
            lm.loglikelihood = lambda reqs: [(-len(c), False) for _, c in reqs]
        return lm

    monkeypatch.setattr(models, "load_model", fake_load)
    ckpts = [str(tmp_path / r / "checkpoints" / s) for r, s in (("a", "step-10"), ("a", "step-20"), ("b", "step-10"))]
    out = tmp_path / "out"
    assert main(["eval", *ckpts, "--tasks", "boolq,piqa", "--data", str(shared_data), "--limit", "4",
                 "--out", str(out)]) == 0
    names = ["a-checkpoints-step-10", "a-checkpoints-step-20", "b-checkpoints-step-10"]
    for name in names:
        payload = json.loads((out / name / "results.json").read_text())
        assert payload["model"] == name and set(payload["results"]) == {"boolq", "piqa"}
    compare = (out / "compare.md").read_text()
    rows = [line for line in compare.splitlines() if line.startswith("| ")]
    assert rows[0] == "| model | BoolQ | PIQA |" and [r.split(" | ")[0] for r in rows[1:4]] == [f"| {n}" for n in names]
    assert rows[4].startswith("| phi-1.5 (paper) | 0.758 | 0.766 |")
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert compare in capsys.readouterr().out
    assert main(["eval", *ckpts[:2], "--name", "x", "--tasks", "boolq", "--data", str(shared_data)]) == 2
    assert "--name names one checkpoint" in capsys.readouterr().err


def test_cli_baseline_is_a_checkpoint_given_or_an_earlier_report(shared_data: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """`--baseline`: a checkpoint among those given (evaluated first, so each compare.md on the way pairs with
    it; rows in the order given), or a report folder of an earlier eval (read, not evaluated again; its row
    first); anything else is refused before a model is loaded."""
    import trainer.eval.models as models
    from trainer.cli import main

    loaded: list[str] = []

    def fake_load(spec, **kwargs):
        loaded.append(Path(spec).name)
        lm = FakeLM()
        if "step-20" in str(spec):  # prefers the shortest choice
            lm.loglikelihood = lambda reqs: [(-len(c), False) for _, c in reqs]
        return lm

    monkeypatch.setattr(models, "load_model", fake_load)
    ckpts = [str(tmp_path / "run" / "checkpoints" / f"step-{s}") for s in (10, 20, 30)]
    common = ["--tasks", "boolq,piqa", "--data", str(shared_data), "--limit", "6"]
    assert main(["eval", *ckpts, *common, "--out", str(tmp_path / "out"), "--baseline", ckpts[1]]) == 0
    assert loaded == ["step-20", "step-10", "step-30"]
    payload = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert payload["models"] == ["step-10", "step-20", "step-30"] and payload["baseline"] == "step-20"
    assert {(r["b"], r["a"]) for r in payload["paired"]} == {("step-10", "step-20"), ("step-30", "step-20")}
    assert "| step-20 (baseline) |" in capsys.readouterr().out
    loaded.clear()  # a later checkpoint against the report of step-20 written above, by folder
    assert main(["eval", ckpts[2], *common, "--out", str(tmp_path / "later"), "--baseline",
                 str(tmp_path / "out" / "step-20")]) == 0
    assert loaded == ["step-30"]
    payload = json.loads((tmp_path / "later" / "compare.json").read_text())
    assert payload["models"] == ["step-20", "step-30"] and (tmp_path / "later" / "step-30" / "results.json").is_file()
    assert [(r["b"], r["a"], "reason" in r) for r in payload["paired"]] == [("step-30", "step-20", False)] * 2
    capsys.readouterr()
    loaded.clear()
    for spec, said in ((str(tmp_path / "run" / "checkpoints" / "step-40"), "not among the checkpoints given "
                                                                            "(step-10, step-20, by path or name)"),
                       (ckpts[0], "the only checkpoint; give others to pair with it")):
        assert main(["eval", *(ckpts[:2] if "40" in spec else ckpts[:1]), *common, "--out", str(tmp_path / "x"),
                     "--baseline", spec]) == 2
        assert said in capsys.readouterr().err
    assert loaded == [] and not (tmp_path / "x").exists()


def test_shots_past_lm_evals_fixed_examples() -> None:
    """GSM8K CoT has 8 fixed exemplars and MBPP 3: 'gsm8k@9' is refused (it ran 8 and reported 9-shot);
    --num-fewshot beyond them takes them all and reports that count."""
    from trainer.eval.harness import plan_tasks

    items = [BenchmarkItem("gsm8k", "0", "q", [], None, "#### 1", {"split": "test"})]
    with pytest.raises(ValueError, match=r"^gsm8k@9: 9-shot asked, but lm_eval's gsm8k has 8 fixed examples"):
        plan_tasks(["gsm8k@9"], data={"gsm8k": items})
    assert [p.shots for p in plan_tasks(["gsm8k", "gsm8k@2"], data={"gsm8k": items}, num_fewshot=25)] == [8, 2]


def test_data_root_without_the_tasks_folder_names_it(shared_data: Path, tmp_path: Path) -> None:
    """A data root holding other tasks' folders: one line naming the task and the folders looked for (its
    files were read as the task's own, e.g. MMLU CSVs as BoolQ: "missing field 'passage'")."""
    (tmp_path / "mmlu").symlink_to(shared_data / "mmlu")
    with pytest.raises(ValueError, match=r"^boolq: no boolq/ or opencompass_data_formulamonks/ or "
                                         r"llmfoundry_eval_gauntlet/ folder in the data root .*--data-file boolq=PATH$"):
        evaluate(FakeLM(), ["mmlu", "boolq"], data=tmp_path, limit=1)
    assert evaluate(FakeLM(), ["boolq"], data=shared_data / "opencompass_data_formulamonks", limit=1)["boolq"].n == 1


def test_compare_report_folders_written_earlier(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`python -m trainer.eval.report` tables and plots report folders from separate evals (or the --out of a
    several-checkpoint eval) side by side; a file that is not a report is one error line."""
    from trainer.eval.report import main

    items = [BenchmarkItem("piqa", str(i), "Question: g\nAnswer:", ["x", "yy"], i // 3, None) for i in range(4)]
    for step, score in ((100, -1.0), (200, -30.0)):
        res = evaluate(FakeLM({("Question: g\nAnswer:", " x"): score}), ["piqa"], data={"piqa": items})
        write_report(res, tmp_path / "evals" / f"step-{step}", f"step-{step}", samples=False)
    assert main([str(tmp_path / "evals"), "--out", str(tmp_path / "cmp")]) == 0
    rows = [line for line in (tmp_path / "cmp" / "compare.md").read_text().splitlines() if line.startswith("| ")]
    assert rows[1:3] == ["| step-100 | 0.750 ± 0.250 |", "| step-200 | 0.250 ± 0.250 |"]
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:4] == b"\x89PNG"
    (tmp_path / "x.json").write_text("{}")
    assert main([str(tmp_path / "x.json")]) == 2
    assert capsys.readouterr().err.strip().endswith("x.json: not a results.json written by trainer eval (KeyError: 'results')")


def _piqa_report(folder: Path, name: str, right: set[int], n: int = 50, shots: int = 0, samples: bool = True,
                 ids: list[str] | None = None, training: dict | None = None) -> Path:
    """A hand-made PIQA report of `n` items (gold 0) that the model gets right exactly on the items in `right`."""
    ids = ids or [str(i) for i in range(n)]
    items = [BenchmarkItem("piqa", ids[i], f"Question: g{ids[i]}\nAnswer:", ["x", "yy"], 0, None) for i in range(n)]
    lm = FakeLM({(it.context, " x" if i in right else " yy"): -1.0 for i, it in enumerate(items)})
    res = evaluate(lm, ["piqa"], data={"piqa": items})
    res["piqa"].num_fewshot = shots
    write_report(res, folder / name, name, samples=samples, training=training)
    return folder / name


def _paired(out: Path) -> dict[str, dict]:
    """compare.json's paired rows by "B vs A"."""
    return {f"{r['b']} vs {r['a']}": r for r in json.loads((out / "compare.json").read_text())["paired"]}


def test_paired_difference_on_the_same_items(tmp_path: Path) -> None:
    """Identical models: diff 0, p 1, no mark. B right on A's 20 items and 6 more of 50: +0.120 ± 0.046,
    p 0.031, though the rows' own stderrs (± 0.07) overlap; alone it is marked, but among the 3 tests of a
    3-model table Holm's correction takes the mark away; compare.md says so, and the pairing is by item id."""
    from trainer.eval.report import main

    evals = tmp_path / "evals"
    _piqa_report(evals, "step-10", set(range(20)))
    _piqa_report(evals, "step-20", set(range(20)))
    _piqa_report(evals, "step-30", set(range(26)))
    assert main([str(evals / s) for s in ("step-10", "step-20", "step-30")] + ["--out", str(tmp_path / "cmp")]) == 0
    paired = _paired(tmp_path / "cmp")
    same = paired["step-20 vs step-10"]
    assert (same["diff"], same["stderr"], same["p"], same["significant"], same["better"], same["worse"]) == (
        0.0, 0.0, 1.0, False, 0, 0)
    real = paired["step-30 vs step-10"]
    assert real["n"] == 50 and real["diff"] == pytest.approx(0.12)
    assert real["stderr"] == pytest.approx(mean_stderr([1.0] * 6 + [0.0] * 44))
    assert real["p"] == 2 / 2**6 and real["significant_uncorrected"] is True  # 6 coin flips all one way
    assert real["p_holm"] == pytest.approx(3 * real["p"]) and real["significant"] is False
    assert paired["step-30 vs step-20"]["significant"] is False
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| step-10 | 0.400 ± 0.070 |" in md and "| step-30 | 0.520 ± 0.071 |" in md
    assert "| step-20 vs step-10 | +0.000 ± 0.000 (0↑ 0↓, p=1.000) |" in md
    assert "| step-30 vs step-10 | +0.120 ± 0.046 (6↑ 0↓, p=0.031) |" in md
    assert "exact McNemar test" in md and "Uncorrected, 2 of the 3 have p < 0.05" in md
    assert "Holm-Bonferroni correction over the family of all 3 paired tests" in md
    assert main([str(evals / "step-10"), str(evals / "step-30"), "--out", str(tmp_path / "one")]) == 0
    assert "| step-30 vs step-10 | +0.120 ± 0.046 * (6↑ 0↓, p=0.031) |" in (tmp_path / "one" / "compare.md").read_text()
    # a noisy change (9 items won, 6 lost) is not marked
    _piqa_report(evals, "noisy", set(range(20)) - set(range(6)) | set(range(20, 29)))
    assert main([str(evals / "step-10"), str(evals / "noisy"), "--out", str(tmp_path / "cmp2")]) == 0
    noisy = _paired(tmp_path / "cmp2")["noisy vs step-10"]
    assert noisy["diff"] == pytest.approx(0.06) and (noisy["better"], noisy["worse"], noisy["significant"]) == (9, 6, False)
    assert noisy["p"] == pytest.approx(0.6072, abs=1e-4)


def test_paired_p_is_the_exact_mcnemar_test() -> None:
    """p equals scipy's exact binomial test on the items only one model gets right; a z-test on diff / stderr
    said 0.020 for 5 items won and none lost of 50, the exact test 0.0625 (not significant)."""
    stats = pytest.importorskip("scipy.stats")
    from trainer.eval.report import PairedDiff

    for better, worse in ((5, 0), (0, 5), (9, 6), (30, 12), (1, 0), (0, 0), (100, 70)):
        got = PairedDiff("acc", 500, (better - worse) / 500, 0.01, better, worse).p
        want = stats.binomtest(better, better + worse).pvalue if better + worse else 1.0
        assert got == pytest.approx(want, rel=1e-9), (better, worse)
    assert PairedDiff("acc", 50, 0.1, mean_stderr([1.0] * 5 + [0.0] * 45), 5, 0).p == 0.0625


def test_holm_adjusted_p_values() -> None:
    """Holm's step-down: the k-th smallest p times (m - k + 1), kept non-decreasing, capped at 1, in input order."""
    from trainer.eval.report import holm

    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.3]) == pytest.approx([0.6, 0.6]) and holm([0.9, 0.0]) == [0.9, 0.0] and holm([]) == []


def test_many_comparisons_are_corrected_against_one_baseline(tmp_path: Path) -> None:
    """Each of 3 checkpoints gets 6 more of 50 PIQA items right than the baseline (p 0.031 each, all marked
    uncorrected) and a 4th gets 20 more (p < 0.001): after Holm-Bonferroni over the 4 tests only the 4th is
    marked (3 x 0.031 > 0.05); the raw p stays in every cell, compare.json holds both verdicts."""
    from trainer.eval.report import main

    evals = tmp_path / "evals"
    _piqa_report(evals, "base", set(range(20)))
    for name in ("a", "b", "c"):
        _piqa_report(evals, name, set(range(26)))
    _piqa_report(evals, "big", set(range(40)))
    argv = [str(evals / n) for n in ("a", "base", "b", "c", "big")] + ["--out", str(tmp_path / "cmp")]
    assert main([*argv, "--baseline", "base"]) == 0
    paired = _paired(tmp_path / "cmp")
    assert set(paired) == {"a vs base", "b vs base", "c vs base", "big vs base"}
    for name in ("a", "b", "c"):
        row = paired[f"{name} vs base"]
        assert row["significant_uncorrected"] is True and row["significant"] is False
        assert row["p_holm"] == pytest.approx(3 * row["p"]) and row["p_holm"] > 0.05
    assert paired["big vs base"]["significant"] is True and paired["big vs base"]["p_holm"] < 0.001
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| a vs base | +0.120 ± 0.046 (6↑ 0↓, p=0.031) |" in md
    assert "| big vs base | +0.400 ± 0.070 * (20↑ 0↓, p<0.001) |" in md
    assert "| base (baseline) | 0.400 ± 0.070 |" in md and "Each model is paired with the baseline, base." in md
    payload = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert payload["baseline"] == "base" and payload["correction"]["tests"] == 4
    assert payload["models"] == ["a", "base", "b", "c", "big"]  # the rows stay in the order given


def test_baseline_names_one_of_the_reports_or_an_earlier_one(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--baseline by model name or folder; a report folder not among the others is read and comes first;
    anything else is one error line naming the reports given."""
    from trainer.eval.report import main

    evals = tmp_path / "evals"
    for name, right in (("step-10", 20), ("step-20", 22), ("step-30", 25)):
        _piqa_report(evals, name, set(range(right)))
    for spec in ("step-20", str(evals / "step-20"), str(evals / "step-20" / "results.json")):
        assert main([str(evals), "--out", str(tmp_path / "cmp"), "--baseline", spec]) == 0
        assert set(_paired(tmp_path / "cmp")) == {"step-10 vs step-20", "step-30 vs step-20"}
    old = _piqa_report(tmp_path / "old", "base", set(range(10)))
    assert main([str(evals / "step-30"), "--out", str(tmp_path / "cmp"), "--baseline", str(old)]) == 0
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["models"] == ["base", "step-30"]
    assert set(_paired(tmp_path / "cmp")) == {"step-30 vs base"}
    capsys.readouterr()
    for spec, said in (("step-40", "--baseline step-40: not among the reports given (step-10, step-20, step-30, by "
                                   "path or name), nor a report folder"),
                       (str(tmp_path), "and not a report folder (no results.json); to pair with it, add it to the reports"),
                       (str(evals), f"--baseline {evals}: holds 3 report folders (step-10, step-20, step-30); name one")):
        assert main([str(evals), "--out", str(tmp_path / "x"), "--baseline", spec]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and said in err and err.count("\n") == 1, err
    assert main([str(evals / "step-10"), "--out", str(tmp_path / "x"), "--baseline", "step-10"]) == 2
    assert "the only report" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_paired_difference_is_deterministic_and_pairs_by_id(tmp_path: Path) -> None:
    """The same reports give the same figures every time, whatever order the second one lists its items in."""
    from trainer.eval.report import paired_diff, read_report

    a = read_report(_piqa_report(tmp_path, "a", set(range(0, 50, 2))))[1]["piqa"]
    b = read_report(_piqa_report(tmp_path, "b", set(range(0, 50, 3))))[1]["piqa"]
    first = paired_diff(a, b, "acc")
    assert first == paired_diff(a, b, "acc") and not isinstance(first, str)
    shuffled = dataclasses.replace(b, samples=list(reversed(b.samples)))
    assert paired_diff(a, shuffled, "acc") == first
    assert (first.better, first.worse) == (8, 16) and first.diff == pytest.approx(-8 / 50)


def test_paired_difference_refuses_other_items_with_the_reason(tmp_path: Path) -> None:
    """Reports of other item counts, ids, shots, gold answers, or without per-item results get no paired
    figure; compare.md names why."""
    from trainer.eval.report import main, paired_diff, read_report

    base = _piqa_report(tmp_path, "base", set(range(20)))
    cases = {"fewer": (_piqa_report(tmp_path, "fewer", set(range(20)), n=40), "other items: base has 50, fewer 40"),
             "ids": (_piqa_report(tmp_path, "ids", set(range(20)), ids=[f"x{i}" for i in range(50)]),
                     "other item ids (e.g. '0' only in base)"),
             "shots": (_piqa_report(tmp_path, "shots", set(range(20)), shots=5), "base is 0-shot, shots 5-shot"),
             "nosamples": (_piqa_report(tmp_path, "nosamples", set(range(20)), samples=False),
                           "nosamples: no per-item results (samples.jsonl missing or written with samples=False)")}
    a = read_report(base)[1]["piqa"]
    for name, (folder, reason) in cases.items():
        assert paired_diff(a, read_report(folder)[1]["piqa"], "acc", ("base", name)) == reason
    regold = dataclasses.replace(a, samples=[{**s, "gold": 1} if s["id"] == "3" else s for s in a.samples])
    assert paired_diff(a, regold, "acc") == "item '3' has gold 0 in A, 1 in B (another version of the data)"
    approx = dataclasses.replace(a, approximate="6-lines text")
    assert paired_diff(a, approx, "acc") == "other requests: B is approximate, A exact"
    # a samples.jsonl torn by a crash mid-write: that task is not paired, and says why
    torn = tmp_path / "torn"
    shutil.copytree(base, torn)
    lines = (torn / "samples.jsonl").read_text().splitlines()
    (torn / "samples.jsonl").write_text("\n".join(lines[:30]) + "\n" + lines[30][:9])
    assert paired_diff(a, read_report(torn)[1]["piqa"], "acc") == "B: samples hold 30 of its 50 items"
    assert main([str(base), str(cases["fewer"][0]), "--out", str(tmp_path / "cmp")]) == 0
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| fewer vs base | n/a |" in md and "- fewer vs base, PIQA: other items: base has 50, fewer 40" in md


def test_results_json_records_what_a_checkpoint_was_trained_on(shared_data: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A training checkpoint's datasets (source, split, revision) and step go to results.json and compare.md;
    the Hub commit comes from the prepared data's index while it still is the data trained on."""
    import hashlib

    import trainer.eval.models as models
    from trainer.cli import main
    from trainer.data import INDEX_VERSION

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(models, "load_model", lambda spec, **kwargs: FakeLM())
    index = {"version": INDEX_VERSION, "key": {"sources": ["abc"]}, "commit": "c0ffee1234"}
    (tmp_path / "data" / "tokens" / "corpus-train").mkdir(parents=True)
    (tmp_path / "data" / "tokens" / "corpus-train" / "index.json").write_text(json.dumps(index))
    data = {"datasets": [{"source": "me/corpus", "weight": 1.0, "split": "train", "revision": "main"}],
            "cache_dir": "data/tokens", "seq_len": 64, "mix_block": 1000}
    key = [[index["key"], 1.0], 64, 1000]
    fingerprint = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    for step, fp in ((10, fingerprint), (20, "0123456789abcdef")):
        ckpt = tmp_path / "run" / "checkpoints" / f"step-{step:08d}"
        ckpt.mkdir(parents=True)
        (ckpt / "meta.json").write_text(json.dumps({"format": "torch", "model_config": {}, "step": step, "samples": 8 * step,
                                                    "data_fingerprint": fp, "config": {"data": data}}))
    ckpts = [str(tmp_path / "run" / "checkpoints" / f"step-{s:08d}") for s in (10, 20)]
    assert main(["eval", *ckpts, "--tasks", "boolq", "--data", str(shared_data), "--limit", "3", "--out", "out"]) == 0
    first = json.loads((tmp_path / "out" / "step-00000010" / "results.json").read_text())["training"]
    assert first["step"] == 10 and first["tokens"] == 80 * 64 and first["commit_note"] is None
    assert first["datasets"] == [{"source": "me/corpus", "subset": None, "split": "train", "revision": "main",
                                  "column": None, "weight": 1.0, "commit": "c0ffee1234"}]
    second = json.loads((tmp_path / "out" / "step-00000020" / "results.json").read_text())["training"]
    assert second["datasets"][0]["commit"] is None and "prepared again since" in second["commit_note"]
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "- step-00000010: step 10, 80 samples (5,120 tokens) on me/corpus split train revision main commit c0ffee1234\n" in md
    from trainer.eval.cli import trained_on

    monkeypatch.chdir(tmp_path / "run")  # data.cache_dir is relative to the folder training ran in
    moved = trained_on(ckpts[0])
    assert moved["datasets"][0]["commit"] is None and "the prepared data is not in data/tokens" in moved["commit_note"]
    meta = json.loads((Path(ckpts[0]) / "meta.json").read_text())  # a local dataset moved since: no Hub commit to miss
    meta["config"]["data"]["datasets"][0]["source"] = str(tmp_path / "gone" / "corpus")
    (Path(ckpts[0]) / "meta.json").write_text(json.dumps(meta))
    assert "commit_note" not in trained_on(ckpts[0]) and "commit" not in trained_on(ckpts[0])["datasets"][0]


def test_item_scores_average_to_the_reported_metrics(shared_data: Path) -> None:
    """The per-item values paired differences are made of agree with each task kind's reported metric."""
    from trainer.eval.report import item_scores

    item = BenchmarkItem("arc_easy", "1", "Question: q\nAnswer:", ["a", "longer answer"], 1, "longer answer")
    lm = FakeLM({("Question: q\nAnswer:", " a"): -2.0, ("Question: q\nAnswer:", " longer answer"): -13.0})
    results = list(evaluate(lm, ["arc_easy"], data={"arc_easy": [item]}).values())
    gsm = load_benchmark("gsm8k", shared_data / "gsm8k", split="test", limit=4)
    golds = {it.context: normalize_answer(it.target) for it in gsm}
    outs = {it.context: f" So {golds[it.context]}." if i % 2 else f" The answer is {golds[it.context]}."
            for i, it in enumerate(gsm)}
    results.append(run_task(FakeLM(gen=lambda p: outs[p.rsplit("Q: ", 1)[1].removesuffix("\nA:")]), "gsm8k", gsm, gsm))
    he = load_benchmark("humaneval", shared_data / "humaneval")[:2]
    results.append(run_task(FakeLM(gen=lambda p: he[0].target if p == he[0].context else "    return None\n"),
                            "humaneval", he, he, sandbox=SandboxConfig(timeout_s=10)))
    checked = 0
    for res in results:
        for metric, value in res.metrics.items():
            scores = item_scores(res, metric)
            assert not isinstance(scores, str), (res.task, metric)
            assert sum(s[2] for s in scores) / len(scores) == value, (res.task, metric)
            checked += 1
    assert checked == 5 and results[1].metrics == {"exact_match": 0.5, "exact_match_flexible": 1.0}
