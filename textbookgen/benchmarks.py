"""Benchmark loaders: the phi-1.5 paper's evaluation sets from local files (or the Hub) as one item type.

Every task is read into `BenchmarkItem`s whose `context` and `choices` are exactly what
lm-evaluation-harness scores (its `doc_to_text` / `doc_to_choice`), so the evaluator and the
decontamination step share one parser. Formats accepted per task (auto-detected per record):

- ARC / OpenBookQA: AI2 jsonl (`question.stem`, `choices[{text,label}]`, `answerKey`), Hugging Face
  (`question`, `choices{text,label}`), llm-foundry (`query`, `choices`, `gold`).
- BoolQ: SuperGLUE jsonl (`passage`, `question`, `label`), original (`answer` bool), llm-foundry.
- WinoGrande: official/HF (`sentence`, `option1/2`, `answer`), llm-foundry (`context_options`, `continuation`).
- PIQA: HF (`goal`, `sol1/2`, `label`), original jsonl + `*-labels.lst`, llm-foundry.
- SIQA: 3-way HF (`answerA..C`, `label` 1-3), common-bench (`options`, `answer`); `siqa_2way` = llm-foundry's
  reduced 2-choice set (a different task: its numbers are not comparable).
- HellaSwag: official/HF jsonl (`ctx_a`, `ctx_b`, `endings`), the 6-lines-per-item text (llama.cpp), llm-foundry.
- MMLU: CSV with a header and an answer index (HF style) or the original headerless A-D CSVs, a folder of
  them, or a `.tar.gz` of them; HF `cais/mmlu` rows.
- GSM8K, HumanEval (jsonl/.gz), MBPP (jsonl), llm-foundry COPA / CommonsenseQA / LAMBADA.

No torch here: the SDK imports this without the training extras.
"""

from __future__ import annotations

import csv
import io
import json
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textbookgen.jsonl import decode_utf8, iter_jsonl, open_compressed

__all__ = [
    "BENCHMARKS",
    "BenchmarkError",
    "BenchmarkItem",
    "BenchmarkSpec",
    "gsm8k_answer",
    "hellaswag_preprocess",
    "load_benchmark",
    "mmlu_description",
]


class BenchmarkError(ValueError):
    """A benchmark file that cannot be read; the message names the file (and line) and the field."""


@dataclass
class BenchmarkItem:
    """One benchmark question, in the form lm-evaluation-harness scores it.

    Multiple choice: the model scores `context + " " + choice` for each choice; `gold` indexes the right
    one. WinoGrande (``meta["scoring"] == "partial"``) is the exception: each choice is a context and
    `target` is the continuation they share. Generative tasks: `context` is the question or prompt,
    `target` the reference answer (GSM8K worked solution, HumanEval/MBPP reference code).
    """

    task: str
    id: str
    context: str
    choices: list[str] = field(default_factory=list)
    gold: int | None = None
    target: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def texts(self) -> list[str]:
        """All text of the item (question, choices, answer, tests), each once, for decontamination."""
        parts = [self.context, *self.choices, self.target or ""]
        parts += [self.meta[k] for k in ("question", "passage", "test", "prompt") if isinstance(self.meta.get(k), str)]
        parts += [t for t in self.meta.get("test_list", []) if isinstance(t, str)]
        seen: dict[str, None] = {}
        for p in parts:
            if p and p.strip():
                seen.setdefault(p, None)
        return list(seen)

    def exercise(self) -> str:
        """The question followed by all its options, as a textbook exercise copies them. Decontamination
        matches it as one more text: question and options are often each too short to tell a copy from
        ordinary prose. Empty without options (generative tasks, WinoGrande's partial contexts)."""
        options = self.meta.get("options") or self.choices  # MMLU's choices are the letters A-D
        if len(options) < 2 or self.meta.get("scoring") == "partial":
            return ""
        question = self.meta.get("question")
        return " ".join([question if isinstance(question, str) else self.context, *options])


@dataclass(frozen=True)
class BenchmarkSpec:
    """A registered task: how to score it, how to convert one record, and where it lives on the Hub."""

    name: str
    kind: str  # "multiple_choice" | "loglikelihood" | "generate" | "code"
    convert: Callable[[dict, str], BenchmarkItem]
    metrics: tuple[str, ...]
    hf: tuple[str, str | None, str] | None  # (dataset path, config, eval split)
    description: str


# ---------------------------------------------------------------- record converters (one per task)


def _req(rec: dict, *keys: str) -> Any:
    """rec[k1][k2]...; a KeyError names the dotted field (caught and located by the loader)."""
    cur: Any = rec
    for i, k in enumerate(keys):
        if not isinstance(cur, dict) or k not in cur:
            raise KeyError(".".join(keys[: i + 1]))
        cur = cur[k]
    return cur


def _gold_from_label(labels: list[str], key: Any) -> int:
    key = str(key).strip()
    if key not in labels:
        raise ValueError(f"answer key {key!r} is not one of the choice labels {labels}")
    return labels.index(key)


def _is_foundry_mc(rec: dict) -> bool:
    return "query" in rec and "choices" in rec and "gold" in rec


def _foundry(task: str, rec: dict, rid: str, context: str, **meta: Any) -> BenchmarkItem:
    choices = [str(c) for c in rec["choices"]]
    gold = int(rec["gold"])
    if not 0 <= gold < len(choices):
        raise ValueError(f"gold {gold} out of range for {len(choices)} choices")
    return BenchmarkItem(task, rid, context, choices, gold, choices[gold], {"format": "llm-foundry", **meta})


def _strip_prefix(text: str, prefix: str) -> str:
    return text[len(prefix) :] if text.startswith(prefix) else text


def _arc(task: str) -> Callable[[dict, str], BenchmarkItem]:
    def convert(rec: dict, rid: str) -> BenchmarkItem:
        if _is_foundry_mc(rec):  # "Question: ..." without the answer cue lm_eval appends
            question = _strip_prefix(rec["query"].strip(), "Question: ")
            return _foundry(task, rec, rid, f"Question: {question}\nAnswer:", question=question)
        q = _req(rec, "question")
        if isinstance(q, dict):  # AI2 original: question.stem, question.choices[{text,label}]
            question, ch = _req(rec, "question", "stem"), _req(rec, "question", "choices")
            texts, labels = [c["text"] for c in ch], [str(c["label"]) for c in ch]
        else:  # Hugging Face allenai/ai2_arc
            question = q
            texts, labels = list(_req(rec, "choices", "text")), [str(x) for x in _req(rec, "choices", "label")]
        gold = _gold_from_label(labels, _req(rec, "answerKey"))
        return BenchmarkItem(task, str(rec.get("id", rid)), f"Question: {question}\nAnswer:", texts, gold,
                             texts[gold], {"question": question})

    return convert


def _obqa(rec: dict, rid: str) -> BenchmarkItem:
    if _is_foundry_mc(rec):
        return _foundry("openbookqa", rec, rid, rec["query"], question=rec["query"])
    if "question_stem" in rec:  # Hugging Face allenai/openbookqa
        stem = rec["question_stem"]
        texts, labels = list(_req(rec, "choices", "text")), [str(x) for x in _req(rec, "choices", "label")]
    else:  # AI2 original jsonl
        stem, ch = _req(rec, "question", "stem"), _req(rec, "question", "choices")
        texts, labels = [c["text"] for c in ch], [str(c["label"]) for c in ch]
    gold = _gold_from_label(labels, str(_req(rec, "answerKey")).lstrip())
    return BenchmarkItem("openbookqa", str(rec.get("id", rid)), stem, texts, gold, texts[gold], {"question": stem})


def _bool_label(v: Any) -> int:
    if isinstance(v, bool):
        return int(v)
    s = str(v).strip().lower()
    if s in ("true", "1", "yes"):
        return 1
    if s in ("false", "0", "no"):
        return 0
    raise ValueError(f"label {v!r} is not a boolean")


def _boolq(rec: dict, rid: str) -> BenchmarkItem:
    if _is_foundry_mc(rec):  # "Passage: P\nQuestion: Q?" (llm-foundry drops the "Title -- " of SuperGLUE)
        m = re.fullmatch(r"Passage: (.*)\nQuestion: (.*?)\??", rec["query"].strip(), re.S)
        if not m:
            raise ValueError("query is not 'Passage: ...\\nQuestion: ...'")
        passage, question = m.group(1), m.group(2)
        return _foundry("boolq", rec, rid, f"{passage}\nQuestion: {question}?\nAnswer:", passage=passage,
                        question=question)
    passage, question = _req(rec, "passage"), _req(rec, "question")
    label = _bool_label(rec["label"] if "label" in rec else _req(rec, "answer"))
    rid = str(rec.get("idx", rid))
    return BenchmarkItem("boolq", rid, f"{passage}\nQuestion: {question}?\nAnswer:", ["no", "yes"], label,
                         ["no", "yes"][label], {"passage": passage, "question": question})


def _winogrande(rec: dict, rid: str) -> BenchmarkItem:
    if "context_options" in rec:  # llm-foundry: the partial contexts are given
        opts = [str(o) for o in rec["context_options"]]
        cont, gold = str(_req(rec, "continuation")).strip(), int(_req(rec, "gold"))
        return BenchmarkItem("winogrande", rid, "", opts, gold, cont, {"scoring": "partial", "format": "llm-foundry"})
    sentence = _req(rec, "sentence")
    if "_" not in sentence:
        raise ValueError("sentence has no '_' blank")
    idx = sentence.index("_")
    options = [_req(rec, "option1"), _req(rec, "option2")]
    answer = str(rec.get("answer", "")).strip()
    gold = {"1": 0, "2": 1}.get(answer)  # the test split has no answers
    return BenchmarkItem("winogrande", str(rec.get("qID", rid)), sentence, [sentence[:idx] + o for o in options],
                         gold, sentence[idx + 1 :].strip(), {"scoring": "partial", "options": options})


def _piqa(rec: dict, rid: str) -> BenchmarkItem:
    if _is_foundry_mc(rec):
        goal = _strip_prefix(rec["query"], "Question: ").rstrip("\n")
        return _foundry("piqa", rec, rid, f"Question: {goal}\nAnswer:", question=goal)
    goal, sols = _req(rec, "goal"), [_req(rec, "sol1"), _req(rec, "sol2")]
    gold = int(rec["label"]) if rec.get("label") is not None else None
    return BenchmarkItem("piqa", str(rec.get("id", rid)), f"Question: {goal}\nAnswer:", sols, gold,
                         sols[gold] if gold is not None else None, {"question": goal})


def _siqa(rec: dict, rid: str) -> BenchmarkItem:
    if _is_foundry_mc(rec):
        raise ValueError("this is llm-foundry's 2-choice SIQA (choices A/B); load it as task 'siqa_2way'")
    ctx, q = _req(rec, "context"), _req(rec, "question")
    if "options" in rec:  # common-bench: options + gold answer text
        choices = [str(o) for o in rec["options"]]
        ans = _req(rec, "answer")
        if ans not in choices:
            raise ValueError(f"answer {ans!r} is not one of the options")
        gold: int | None = choices.index(ans)
    else:  # Hugging Face lighteval/siqa (label "1".."3"), or AI2 original with a labels file
        choices = [_req(rec, "answerA"), _req(rec, "answerB"), _req(rec, "answerC")]
        gold = int(rec["label"]) - 1 if rec.get("label") not in (None, "") else None
    if len(choices) != 3:
        raise ValueError(f"SIQA has 3 options, found {len(choices)}")
    return BenchmarkItem("siqa", rid, f"Q: {ctx} {q}\nA:", choices, gold, choices[gold] if gold is not None else None,
                         {"question": f"{ctx} {q}"})


def _siqa_2way(rec: dict, rid: str) -> BenchmarkItem:
    if not _is_foundry_mc(rec):
        raise ValueError("not llm-foundry's 2-way SIQA layout (query/choices/gold); 3-way data is task 'siqa'")
    m = re.fullmatch(r"Context: (.*)\nQuestion: (.*)\nChoices:\nA\. (.*)\nB\. (.*)\nAnswer:", rec["query"].strip(), re.S)
    if not m:
        raise ValueError("query is not 'Context: ..\\nQuestion: ..\\nChoices:\\nA. ..\\nB. ..\\nAnswer:'")
    ctx, q, a, b = m.groups()
    gold = int(rec["gold"])
    return BenchmarkItem("siqa_2way", rid, f"Q: {ctx} {q}\nA:", [a, b], gold, [a, b][gold],
                         {"question": f"{ctx} {q}", "format": "llm-foundry"})


def hellaswag_preprocess(text: str) -> str:
    """lm_eval's HellaSwag cleanup: WikiHow "[title]" artefacts become sentence breaks, brackets go."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _split_ctx(ctx: str) -> tuple[str, str]:
    """(ctx_a, ctx_b) from the joined ctx: ctx_b is the trailing unfinished, lower-case sentence, if any.

    The 6-line text layout lost the split; ActivityNet items end in a lower-case fragment (ctx_b) that
    lm_eval capitalizes. WikiHow items have an empty ctx_b.
    """
    m = re.search(r"^(.*[.!?])\s+([a-z][^.!?]*)$", ctx, re.S)
    return (m.group(1), m.group(2)) if m else (ctx, "")


def _hellaswag_item(rid: str, label: str, ctx_a: str, ctx_b: str, endings: list[str], gold: int | None,
                    **meta: Any) -> BenchmarkItem:
    ctx = ctx_a + " " + ctx_b.capitalize()
    choices = [hellaswag_preprocess(e) for e in endings]
    return BenchmarkItem("hellaswag", rid, hellaswag_preprocess(label + ": " + ctx), choices, gold,
                         choices[gold] if gold is not None else None, meta)


def _hellaswag(rec: dict, rid: str) -> BenchmarkItem:
    if _is_foundry_mc(rec):
        return _foundry("hellaswag", rec, rid, rec["query"])
    if "ctx_a" in rec:  # official jsonl / Hugging Face Rowan/hellaswag
        label = rec.get("label")
        gold = int(label) if label not in (None, "") else None
        return _hellaswag_item(str(rec.get("ind", rid)), _req(rec, "activity_label"), rec["ctx_a"],
                               _req(rec, "ctx_b"), list(_req(rec, "endings")), gold)
    if "_six_lines" in rec:  # the text layout: "label: ctx", gold, 4 endings
        head, gold_s, *endings = rec["_six_lines"]
        label, sep, ctx = head.partition(": ")
        if not sep:
            raise ValueError(f"first line {head[:60]!r} is not 'activity_label: context'")
        if not gold_s.strip().isdigit() or not 0 <= int(gold_s) < 4:
            raise ValueError(f"gold line {gold_s!r} is not 0-3")
        ctx_a, ctx_b = _split_ctx(ctx)
        return _hellaswag_item(rid, label, ctx_a, ctx_b, endings, int(gold_s), ctx_split="heuristic")
    raise KeyError("ctx_a")


_MMLU_LETTERS = ["A", "B", "C", "D"]


def mmlu_description(subject: str) -> str:
    """lm_eval's per-subject MMLU header, placed before the few-shot examples."""
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def _mmlu(rec: dict, rid: str) -> BenchmarkItem:
    question, subject = str(_req(rec, "question")), str(rec.get("subject", ""))
    if "choices" in rec:  # Hugging Face cais/mmlu
        choices = [str(c) for c in rec["choices"]]
    else:  # our CSV readers: choice0..3
        choices = [str(_req(rec, f"choice{i}")) for i in range(4)]
    ans = str(_req(rec, "answer")).strip()
    gold = _MMLU_LETTERS.index(ans) if ans in _MMLU_LETTERS else int(ans)
    if len(choices) != 4 or not 0 <= gold < 4:
        raise ValueError(f"needs 4 choices and an answer 0-3/A-D, got {len(choices)} choices, answer {ans!r}")
    prompt = question.strip() + "".join(f"\n{L}. {c}" for L, c in zip(_MMLU_LETTERS, choices, strict=True)) + "\nAnswer:"
    meta = {"subject": subject, "question": question, "options": choices}
    return BenchmarkItem("mmlu", rid, prompt, list(_MMLU_LETTERS), gold, _MMLU_LETTERS[gold], meta)


_NUM = re.compile(r"-?[$0-9.,]{2,}|-?[0-9]+")


def _canon_number(s: str) -> str:
    """'$1,234.00' -> '1234': lm_eval's exact-match normalisation (',', '$', trailing '.') plus 18.0 == 18."""
    s = s.strip().replace(",", "").replace("$", "").rstrip(".")
    try:
        v = float(s)
    except ValueError:
        return s
    return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)


def gsm8k_answer(text: str) -> str | None:
    """The final numeric answer of a GSM8K solution or model output, normalised for exact match.

    Order as in lm_eval's filters: the reference marker "#### N", then "The answer is N" (the CoT
    prompt's strict match), else the last number in the text (flexible extract).
    """
    for pat in (r"####\s*(-?[$0-9.,]+)", r"[Tt]he answer is\s*\$?(-?[0-9.,]+)"):
        found = re.findall(pat, text)
        found = [f for f in found if re.search(r"\d", f)]
        if found:
            return _canon_number(found[-1] if pat.startswith("####") else found[0])
    nums = [n for n in _NUM.findall(text) if re.search(r"\d", n)]
    return _canon_number(nums[-1]) if nums else None


def _gsm8k(rec: dict, rid: str) -> BenchmarkItem:
    question, answer = str(_req(rec, "question")), str(_req(rec, "answer"))
    final = gsm8k_answer(answer)
    if final is None or "####" not in answer:
        raise ValueError("answer has no final '#### <number>' line")
    return BenchmarkItem("gsm8k", rid, question, [], None, answer, {"answer": final})


def _humaneval(rec: dict, rid: str) -> BenchmarkItem:
    meta = {k: _req(rec, k) for k in ("prompt", "test", "entry_point")}
    return BenchmarkItem("humaneval", str(_req(rec, "task_id")), meta["prompt"], [], None,
                         str(rec.get("canonical_solution", "")), meta)


def _mbpp_split(task_id: int) -> str:
    """The standard MBPP split by id (as the HF 'full' config): prompt 1-10, test 11-510, val 511-600."""
    if task_id <= 10:
        return "prompt"
    if task_id <= 510:
        return "test"
    return "validation" if task_id <= 600 else "train"


def _mbpp(rec: dict, rid: str) -> BenchmarkItem:
    text = rec["text"] if "text" in rec else _req(rec, "prompt")  # "full" vs "sanitized" config
    tid = int(_req(rec, "task_id"))
    tests = [str(t) for t in _req(rec, "test_list")]
    meta = {"test_list": tests, "test_setup_code": rec.get("test_setup_code", ""),
            "challenge_test_list": rec.get("challenge_test_list", []), "split": _mbpp_split(tid)}
    return BenchmarkItem("mbpp", str(tid), str(text), [], None, str(_req(rec, "code")), meta)


def _copa(rec: dict, rid: str) -> BenchmarkItem:
    if not _is_foundry_mc(rec):
        raise KeyError("query")
    return _foundry("copa", rec, rid, rec["query"])


def _csqa(rec: dict, rid: str) -> BenchmarkItem:
    if not _is_foundry_mc(rec):
        raise KeyError("query")
    return _foundry("commonsense_qa", rec, rid, rec["query"])


def _lambada(rec: dict, rid: str) -> BenchmarkItem:
    if "text" in rec:  # Hugging Face EleutherAI/lambada_openai: last word is the target
        ctx, _, last = str(rec["text"]).rpartition(" ")
    else:
        ctx, last = str(_req(rec, "context")), str(_req(rec, "continuation"))
    return BenchmarkItem("lambada_openai", rid, ctx, [], None, " " + last.strip(), {})


_MC = ("acc", "acc_norm")
BENCHMARKS: dict[str, BenchmarkSpec] = {
    s.name: s
    for s in [
        BenchmarkSpec("winogrande", "multiple_choice", _winogrande, ("acc",),
                      ("allenai/winogrande", "winogrande_xl", "validation"), "WinoGrande (xl dev), partial scoring"),
        BenchmarkSpec("arc_easy", "multiple_choice", _arc("arc_easy"), _MC, ("allenai/ai2_arc", "ARC-Easy", "test"),
                      "AI2 Reasoning Challenge, easy set"),
        BenchmarkSpec("arc_challenge", "multiple_choice", _arc("arc_challenge"), _MC,
                      ("allenai/ai2_arc", "ARC-Challenge", "test"), "AI2 Reasoning Challenge, challenge set"),
        BenchmarkSpec("boolq", "multiple_choice", _boolq, ("acc",), ("aps/super_glue", "boolq", "validation"),
                      "BoolQ (SuperGLUE), answered no/yes"),
        BenchmarkSpec("siqa", "multiple_choice", _siqa, ("acc",), ("lighteval/siqa", None, "validation"),
                      "Social IQa, 3 options"),
        BenchmarkSpec("siqa_2way", "multiple_choice", _siqa_2way, ("acc",), None,
                      "llm-foundry's Social IQa reduced to 2 options (not comparable with 3-way SIQA)"),
        BenchmarkSpec("piqa", "multiple_choice", _piqa, _MC, ("baber/piqa", None, "validation"), "Physical IQa"),
        BenchmarkSpec("hellaswag", "multiple_choice", _hellaswag, _MC, ("Rowan/hellaswag", None, "validation"),
                      "HellaSwag"),
        BenchmarkSpec("openbookqa", "multiple_choice", _obqa, _MC, ("allenai/openbookqa", "main", "test"),
                      "OpenBookQA (no fact given)"),
        BenchmarkSpec("mmlu", "multiple_choice", _mmlu, ("acc",), ("cais/mmlu", "all", "test"),
                      "MMLU, 57 subjects, lettered answers"),
        BenchmarkSpec("copa", "multiple_choice", _copa, ("acc",), None, "COPA (llm-foundry layout)"),
        BenchmarkSpec("commonsense_qa", "multiple_choice", _csqa, ("acc",), None,
                      "CommonsenseQA (llm-foundry lettered layout)"),
        BenchmarkSpec("lambada_openai", "loglikelihood", _lambada, ("acc", "perplexity"),
                      ("EleutherAI/lambada_openai", "default", "test"), "LAMBADA (OpenAI), last word"),
        BenchmarkSpec("gsm8k", "generate", _gsm8k, ("exact_match",), ("openai/gsm8k", "main", "test"),
                      "GSM8K grade-school math, chain of thought"),
        BenchmarkSpec("humaneval", "code", _humaneval, ("pass@1",), ("openai/openai_humaneval", None, "test"),
                      "HumanEval Python functions"),
        BenchmarkSpec("mbpp", "code", _mbpp, ("pass@1",), ("google-research-datasets/mbpp", "full", "test"),
                      "MBPP Python problems"),
    ]
}
ALIASES = {"arc_e": "arc_easy", "arc_c": "arc_challenge", "obqa": "openbookqa", "openbook_qa": "openbookqa",
           "social_iqa": "siqa", "lambada": "lambada_openai", "human_eval": "humaneval"}


# ---------------------------------------------------------------- file readers: (location, record)

Record = tuple[str, dict]


def _open_text(path: Path) -> io.TextIOBase:
    return io.TextIOWrapper(open_compressed(path), encoding="utf-8", newline="")


def _base_suffix(path: Path) -> str:
    name = path.name.lower()
    for z in (".gz", ".bz2"):
        if name.endswith(z):
            name = name[: -len(z)]
    return Path(name).suffix


def _is_json_array(path: Path) -> bool:
    """A `.json` file whose first line opens an array is one JSON document, not JSON Lines."""
    if not path.name.endswith((".json", ".json.gz")):
        return False
    with _open_text(path) as f:
        try:
            return f.readline().lstrip().startswith("[")
        except UnicodeDecodeError:
            return False  # the line reader below names the line


def _read_jsonl(path: Path) -> Iterator[Record]:
    if _is_json_array(path):
        with _open_text(path) as f:
            try:
                text = f.read()
            except UnicodeDecodeError as e:
                raise BenchmarkError(f"{path}: not UTF-8 text ({e})") from e
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise BenchmarkError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from e
        for i, row in enumerate(rows):
            yield f"{path}[{i}]", row
        return
    for n, rec in iter_jsonl(path, error=BenchmarkError):
        yield f"{path}:{n}", rec


def _attach_labels(path: Path, records: list[Record]) -> list[Record]:
    """PIQA/SIQA originals keep labels in a sibling `<stem>-labels.lst` (one per line)."""
    stem = path.name.split(".")[0]
    lst = path.with_name(f"{stem}-labels.lst")
    if not lst.exists() or not records or "label" in records[0][1]:
        return records
    labels = lst.read_text(encoding="utf-8").split()
    if len(labels) != len(records):
        raise BenchmarkError(f"{lst}: {len(labels)} labels for {len(records)} records in {path}")
    return [(loc, {**rec, "label": lab}) for (loc, rec), lab in zip(records, labels, strict=True)]


def _read_six_lines(path: Path) -> Iterator[Record]:
    with _open_text(path) as f:
        try:
            lines = f.read().split("\n")
        except UnicodeDecodeError as e:
            raise BenchmarkError(f"{path}: not UTF-8 text ({e})") from e
    while lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise BenchmarkError(f"{path}: {len(lines)} lines is not a multiple of 6 (HellaSwag text layout: "
                             "'label: context', gold, 4 endings)")
    for i in range(0, len(lines), 6):
        yield f"{path}:{i + 1}", {"_six_lines": lines[i : i + 6], "_id": str(i // 6)}


def _mmlu_rows(name: str, text: str) -> Iterator[Record]:
    """One MMLU CSV: HF style (header, index answer) or hendrycks original (no header, letter answer)."""
    base = Path(name).name.removesuffix(".csv")
    subject, _, split = base.rpartition("_")
    if split not in ("dev", "val", "test", "train", "auxiliary"):
        subject, split = base, ""
    rows = list(csv.reader(io.StringIO(text)))
    start = 1 if rows and [c.strip().lower() for c in rows[0][:1]] == ["question"] else 0
    for n, row in enumerate(rows[start:], start + 1):
        if not row:
            continue
        if len(row) != 6:
            raise BenchmarkError(f"{name}:{n}: expected 6 columns (question, 4 choices, answer), got {len(row)}")
        rec = {"question": row[0], **{f"choice{i}": row[1 + i] for i in range(4)}, "answer": row[5],
               "subject": subject, "_split": split, "_id": f"{subject}/{split}/{n - start - 1}"}
        yield f"{name}:{n}", rec


def _read_mmlu_tar(path: Path) -> Iterator[Record]:
    with tarfile.open(path, "r:*") as tar:
        for m in sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".csv")),
                        key=lambda m: m.name):
            data = tar.extractfile(m)
            assert data is not None
            name = f"{path}!{m.name}"
            yield from _mmlu_rows(name, decode_utf8(data.read(), name, error=BenchmarkError))


def _read_parquet(path: Path) -> Iterator[Record]:
    import pyarrow.parquet as pq

    for i, row in enumerate(pq.read_table(path).to_pylist()):
        yield f"{path}[{i}]", row


def _read_file(task: str, path: Path) -> Iterator[Record]:
    suffix = _base_suffix(path)
    if path.name.endswith((".tar.gz", ".tgz", ".tar")):
        return _read_mmlu_tar(path)
    if suffix == ".csv":  # decoded whole: a spreadsheet's BOM goes, and a non-UTF-8 byte is named by its line
        with open_compressed(path) as f:
            return _mmlu_rows(str(path), decode_utf8(f.read(), path, error=BenchmarkError))
    if suffix == ".txt" and task == "hellaswag":
        return _read_six_lines(path)
    if suffix == ".parquet":
        return _read_parquet(path)
    if suffix in (".jsonl", ".json"):
        records = list(_read_jsonl(path))
        return iter(_attach_labels(path, records) if task in ("piqa", "siqa") else records)
    raise BenchmarkError(f"{path}: unsupported file type {suffix or path.name!r} for task {task!r}")


_DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt", ".tar", ".tgz")


_FILE_NAMES = {"arc_easy": "arc[-_]?e(asy)?[-_.]", "arc_challenge": "arc[-_]?c(hallenge)?[-_.]",
               "siqa": "siqa|socialiqa|social_iqa", "siqa_2way": "siqa", "openbookqa": "openbook",
               "lambada_openai": "lambada", "commonsense_qa": "commonsense|csqa"}


def _files_in(path: Path, task: str) -> list[Path]:
    """Data files under a folder; in a folder holding several tasks, only those named for `task`."""
    files = [p for p in sorted(path.rglob("*"))
             if p.is_file() and (_base_suffix(p) in _DATA_SUFFIXES or p.name.endswith((".tar.gz", ".tgz")))
             and not p.name.startswith(("LICENSE", "README", "SOURCE", "EVAL_GAUNTLET"))]
    files = [p for p in files if "socratic" not in p.name.lower()]  # GSM8K's sub-question variant
    pattern = re.compile(_FILE_NAMES.get(task, task))
    named = [p for p in files if pattern.search(p.name.lower())]
    return named or files


def _split_of(loc: str, rec: dict) -> str:
    if rec.get("_split"):
        return rec["_split"]
    name = loc.lower().rsplit("/", 1)[-1]
    for key, split in (("test", "test"), ("dev", "dev"), ("val", "validation"), ("train", "train")):
        if re.search(rf"(^|[^a-z]){key}", name):
            return split
    return ""


# ---------------------------------------------------------------- public entry point


def resolve_task(name: str) -> BenchmarkSpec:
    """The registered spec for a task name or alias; the error lists the known tasks."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in BENCHMARKS:
        raise BenchmarkError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[key]


def _convert_all(spec: BenchmarkSpec, records: Iterable[Record]) -> list[BenchmarkItem]:
    items = []
    for i, (loc, rec) in enumerate(records):
        rid = str(rec.get("_id", i))
        try:
            item = spec.convert(rec, rid)
        except KeyError as e:
            raise BenchmarkError(f"{loc}: missing field {e.args[0]!r} for task {spec.name!r}") from e
        except (ValueError, TypeError, IndexError, AttributeError) as e:
            raise BenchmarkError(f"{loc}: bad {spec.name} record: {e}") from e
        if "split" not in item.meta:  # undetectable (e.g. llm-foundry files): the task's eval split
            item.meta["split"] = _split_of(loc, rec) or (spec.hf[2] if spec.hf else "test")
        items.append(item)
    return items


def _load_hf(spec: BenchmarkSpec, split: str | None) -> list[BenchmarkItem]:
    if spec.hf is None:
        raise BenchmarkError(f"task {spec.name!r} has no Hugging Face dataset; pass a local path")
    try:
        import datasets
    except ImportError as e:
        raise BenchmarkError("loading from the Hub needs `pip install datasets`, or pass a local path") from e
    hf_path, config, default_split = spec.hf
    split = split or default_split
    ds = datasets.load_dataset(hf_path, config, split=split)
    records = ((f"hf://{hf_path}/{config or ''}/{split}[{i}]", {**row, "_split": split}) for i, row in enumerate(ds))
    return _convert_all(spec, records)


def load_benchmark(name: str, path: str | Path | None = None, split: str | None = None,
                   limit: int | None = None) -> list[BenchmarkItem]:
    """Read task `name` from a file or folder (all its data files) or, with no path, the Hugging Face Hub.

    `split` keeps only items of that split ("test", "validation", "dev", "train"), judged from the file
    name (MMLU: the CSV's `_dev`/`_val`/`_test` suffix; MBPP: its id ranges); `limit` keeps the first n.
    """
    spec = resolve_task(name)
    if path is None or str(path).startswith("hf://"):
        items = _load_hf(spec, split)
    else:
        p = Path(path).expanduser()
        if not p.exists():
            raise BenchmarkError(f"{p}: no such file or directory (benchmark {spec.name!r})")
        files = _files_in(p, spec.name) if p.is_dir() else [p]
        if not files:
            raise BenchmarkError(f"{p}: no data files (.jsonl/.json/.csv/.parquet/.txt, optionally .gz/.bz2)")
        items = []
        for f in files:
            items += _convert_all(spec, _read_file(spec.name, f))
        if split is not None:
            items = [it for it in items if it.meta.get("split") == split]
    return items[:limit] if limit is not None else items
