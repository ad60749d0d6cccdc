"""Zero/few-shot evaluation with lm-evaluation-harness's formulas, on local benchmark files.

Multiple choice: each choice is scored as the log-likelihood of `" " + choice` after the prompt;
`acc` takes the argmax of the summed log-probs, `acc_norm` of the sums divided by the choice's length
in characters (lm_eval's `completion_len`). WinoGrande uses partial scoring (each option completes the
sentence up to the blank, the rest of the sentence is the shared continuation). MMLU prepends lm_eval's
subject description and the first k dev questions of the subject (`mmlu@5`); the other multiple-choice
tasks take k examples sampled as lm_eval does (`arc_challenge@25`, see fewshot.py). Standard errors are
lm_eval's: sample std / sqrt(n) for means, the pooled formula for MMLU's subjects.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textbookgen.benchmarks import BENCHMARKS, BenchmarkItem, load_benchmark, mmlu_description, resolve_task
from trainer.eval.fewshot import SHOT_SOURCES, mmlu_prefixes, sample_shots, shot_text

__all__ = ["FOUNDRY_PROMPT_CAUSES", "HELLASWAG_TEXT_CAUSE", "PAPER_TASKS", "TaskPlan", "TaskResult", "approximation",
           "evaluate", "fewshot_prefixes", "find_task_data", "load_task_items", "mc_requests", "mean_stderr",
           "parse_task", "plan_tasks", "run_plans"]

# the phi-1.5 paper's table (commonsense, language understanding, reasoning), in its order
PAPER_TASKS = ("winogrande", "arc_easy", "arc_challenge", "boolq", "siqa", "piqa", "hellaswag", "mmlu",
               "openbookqa", "gsm8k", "humaneval", "mbpp")
# where each task lives under a data root laid out like ../shared/data (first existing folder wins)
_DATA_FOLDERS = {
    "winogrande": ["winogrande", "llmfoundry_eval_gauntlet"],
    "arc_easy": ["arc", "opencompass_data_formulamonks", "llmfoundry_eval_gauntlet"],
    "arc_challenge": ["arc", "opencompass_data_formulamonks", "llmfoundry_eval_gauntlet"],
    "boolq": ["boolq", "opencompass_data_formulamonks", "llmfoundry_eval_gauntlet"],
    "siqa": ["siqa", "siqa_3choice"],
    "siqa_2way": ["llmfoundry_eval_gauntlet"],
    "piqa": ["piqa", "llmfoundry_eval_gauntlet"],
    "hellaswag": ["hellaswag", "llmfoundry_eval_gauntlet"],
    "openbookqa": ["openbookqa", "llmfoundry_eval_gauntlet"],
    "mmlu": ["mmlu"],
    "gsm8k": ["gsm8k"],
    "humaneval": ["humaneval"],
    "mbpp": ["mbpp", "opencompass_data_formulamonks"],
    "copa": ["copa", "llmfoundry_eval_gauntlet"],
    "commonsense_qa": ["commonsense_qa", "llmfoundry_eval_gauntlet"],
    "lambada_openai": ["lambada", "llmfoundry_eval_gauntlet"],
}
FEWSHOT_TASKS = ("mmlu", *SHOT_SOURCES, "gsm8k", "mbpp")  # humaneval and lambada_openai are zero-shot only
_SPLIT_SYNONYMS = {"validation": {"validation", "dev", "val"}, "test": {"test"}, "train": {"train"}}
# why results from extract_hellaswag.cpp's 6-lines text are not lm_eval's (see load_task_items)
HELLASWAG_TEXT_CAUSE = (
    "HellaSwag read from the 6-lines text (extract_hellaswag.cpp), whose cleanup drops the leading space "
    "lm_eval's preprocess leaves on endings that open with a WikiHow tag such as '[title]' (its continuation "
    "is '  Use ...', two spaces), so most WikiHow items are scored on other tokens; give the Rowan/hellaswag "
    "jsonl or parquet for lm_eval's exact requests")
# tasks read only in llm-foundry's layout, whose prompts are not lm_eval's (at every shot count)
FOUNDRY_PROMPT_CAUSES = {
    "copa": "COPA in llm-foundry's layout, whose prompt is not lm_eval's super_glue/copa: a comma before the "
            "connective ('The man turned on the faucet, therefore') and one space before the choice, where "
            "lm_eval has no comma and two spaces (its target delimiter plus the choice's own)",
    "commonsense_qa": "CommonsenseQA in llm-foundry's layout, whose prompt is not lm_eval's commonsense_qa: a "
                      "'Choices:' line and four options (A-D), where lm_eval lists all five (A-E) without that line",
}


@dataclass
class TaskResult:
    """One task's scores; `samples` keeps per-item predictions for inspection and the JSON report."""

    task: str
    n: int
    metrics: dict[str, float]
    stderr: dict[str, float | None]
    num_fewshot: int = 0
    seconds: float = 0.0
    samples: list[dict[str, Any]] = field(default_factory=list)
    approximate: str | None = None  # why the requests are not exactly lm_eval's, if they are not

    def to_dict(self, with_samples: bool = False) -> dict[str, Any]:
        d = {"task": self.task, "n": self.n, "num_fewshot": self.num_fewshot, "seconds": round(self.seconds, 3),
             "metrics": self.metrics, "stderr": self.stderr, "approximate": self.approximate}
        if with_samples:
            d["samples"] = self.samples
        return d


def mean_stderr(xs: list[float]) -> float | None:
    """lm_eval's `mean_stderr`: sample standard deviation (n-1) over sqrt(n)."""
    n = len(xs)
    if n < 2:
        return None
    mu = sum(xs) / n
    return math.sqrt(sum((x - mu) ** 2 for x in xs) / (n - 1)) / math.sqrt(n)


def pooled_stderr(stderrs: list[float], sizes: list[int]) -> float:
    """lm_eval's `pooled_sample_stderr` for a group of subtasks weighted by size (MMLU)."""
    var = sum((n - 1) * s**2 * n for n, s in zip(sizes, stderrs, strict=True)) / (sum(sizes) - len(sizes))
    return math.sqrt(var / sum(sizes))


def parse_task(name: str) -> tuple[str, int | None]:
    """"mmlu@5" -> ("mmlu", 5); "arc_easy" -> ("arc_easy", None)."""
    base, _, shots = name.partition("@")
    if shots and not shots.isdigit():
        raise ValueError(f"{name!r}: the shot count after '@' must be a whole number >= 0")
    return resolve_task(base).name, int(shots) if shots else None


def find_task_data(task: str, root: str | Path) -> Path | None:
    """The folder holding `task` under a data root (laid out like ../shared/data), or None."""
    root = Path(root)
    for folder in _DATA_FOLDERS.get(task, [task]):
        if (root / folder).is_dir():
            return root / folder
    return None


def eval_items(task: str, items: list[BenchmarkItem]) -> list[BenchmarkItem]:
    """The items of the task's evaluation split (lm_eval's), or all of them when splits are unknown."""
    spec = BENCHMARKS[task]
    want = spec.hf[2] if spec.hf else "test"
    chosen = [it for it in items if it.meta.get("split") in _SPLIT_SYNONYMS.get(want, {want})]
    return chosen or items


# ---------------------------------------------------------------------------- multiple choice


def mc_requests(item: BenchmarkItem, prefix: str = "") -> list[tuple[str, str]]:
    """lm_eval's (context, continuation) requests for one item, target delimiter " "."""
    if item.meta.get("scoring") == "partial":
        return [(prefix + c, " " + (item.target or "")) for c in item.choices]
    return [(prefix + item.context, " " + c) for c in item.choices]


def fewshot_pool(label: str, task: str, items: Sequence[BenchmarkItem], k: int,
                 where: str = "the data") -> list[BenchmarkItem]:
    """The items lm_eval draws `task`'s k few-shot examples from (its YAML's split), in file order; checked
    to be labelled and enough (k + 1 where lm_eval may draw the evaluated doc and drop it)."""
    split = SHOT_SOURCES[task].split
    pool = [it for it in items if it.meta.get("split") in _SPLIT_SYNONYMS.get(split, {split})]
    if not pool:
        raise ValueError(f"{label}: lm_eval draws {task}'s few-shot examples from its {split!r} split, and "
                         f"{where} has no {split} items; add the {split} file (in the task's folder, or as "
                         f"another --data-file {task}=PATH)")
    unlabelled = [it.id for it in pool if it.gold is None]
    if unlabelled:
        raise ValueError(f"{label}: {len(unlabelled)} {split} items in {where} have no gold answer "
                         f"(e.g. id {unlabelled[0]!r}); few-shot examples need their answers")
    need = k + SHOT_SOURCES[task].excludes_eval_doc
    if len(pool) < need:
        raise ValueError(f"{label}: needs at least {need} {split} examples, found {len(pool)} in {where}")
    return pool


def fewshot_prefixes(label: str, task: str, evals: Sequence[BenchmarkItem], items: Sequence[BenchmarkItem], k: int,
                     where: str = "the data") -> list[str] | None:
    """Per evaluated item, what lm_eval puts before its context: MMLU's subject description and first k dev
    questions; for the other multiple-choice tasks, k sampled examples (None: nothing, zero-shot)."""
    return _prefixes_and_pool(label, task, evals, items, k, where)[0]


def _prefixes_and_pool(label: str, task: str, evals: Sequence[BenchmarkItem], items: Sequence[BenchmarkItem], k: int,
                       where: str) -> tuple[list[str] | None, list[BenchmarkItem]]:
    """`fewshot_prefixes`, and the pool the examples were drawn from (empty for MMLU and zero-shot)."""
    if task == "mmlu":
        dev = [it for it in items if it.meta.get("split") == "dev"]
        by_subject = mmlu_prefixes(evals, dev, k) if k else {
            s: mmlu_description(s) for s in {it.meta["subject"] for it in evals}}
        return [by_subject[it.meta["subject"]] for it in evals], []
    if not k:
        return None, []
    if task not in SHOT_SOURCES:
        raise ValueError(f"{label}: few-shot is not available for {task}; few-shot tasks: " + ", ".join(FEWSHOT_TASKS))
    pool = fewshot_pool(label, task, items, k, where)
    return ["".join(shot_text(s) for s in shots) for shots in sample_shots(task, evals, pool, k)], pool


def score_multiple_choice(lm: Any, task: str, items: list[BenchmarkItem],
                          prefixes: Sequence[str] | None = None) -> TaskResult:
    """acc (and acc_norm where lm_eval reports it) for multiple-choice items; `prefixes[i]` (few-shot
    examples, MMLU's description) goes before item i's context."""
    t0 = time.perf_counter()
    spec = BENCHMARKS[task]
    unlabelled = [it.id for it in items if it.gold is None]
    if unlabelled:
        raise ValueError(f"{task}: {len(unlabelled)} items without a gold answer (e.g. id {unlabelled[0]!r}): "
                         "a test split without labels? Use the validation split")
    requests, spans = [], []
    for i, it in enumerate(items):
        reqs = mc_requests(it, prefixes[i] if prefixes else "")
        spans.append((len(requests), len(requests) + len(reqs)))
        requests += reqs
    scores = lm.loglikelihood(requests)
    accs: dict[str, list[float]] = {m: [] for m in spec.metrics}
    samples = []
    for it, (a, b) in zip(items, spans, strict=True):
        lls = [s[0] for s in scores[a:b]]
        pred = max(range(len(lls)), key=lambda j: (lls[j], -j))  # np.argmax: first of ties
        accs["acc"].append(float(pred == it.gold))
        sample = {"id": it.id, "gold": it.gold, "pred": pred, "lls": lls}
        if "acc_norm" in accs:
            normed = [ll / len(c) for ll, c in zip(lls, it.choices, strict=True)]
            pred_norm = max(range(len(normed)), key=lambda j: (normed[j], -j))
            accs["acc_norm"].append(float(pred_norm == it.gold))
            sample["pred_norm"] = pred_norm
        samples.append(sample)
    metrics = {m: sum(v) / len(v) for m, v in accs.items()}
    stderr = {m: mean_stderr(v) for m, v in accs.items()}
    if task == "mmlu":  # the group score: micro average, pooled stderr over subjects
        by_subj: dict[str, list[float]] = {}
        for it, x in zip(items, accs["acc"], strict=True):
            by_subj.setdefault(it.meta["subject"], []).append(x)
        groups = [v for v in by_subj.values() if len(v) > 1]
        if groups and len(groups) == len(by_subj):
            stderr["acc"] = pooled_stderr([mean_stderr(v) or 0.0 for v in groups], [len(v) for v in groups])
        metrics.update({f"acc_{s}": sum(v) / len(v) for s, v in sorted(by_subj.items())})
    return TaskResult(task, len(items), metrics, stderr, seconds=time.perf_counter() - t0, samples=samples)


def score_lambada(lm: Any, items: list[BenchmarkItem]) -> TaskResult:
    """LAMBADA as lm_eval: acc = the last word is the greedy continuation; perplexity = exp(-mean ll)."""
    t0 = time.perf_counter()
    scores = lm.loglikelihood([(it.context, it.target or "") for it in items])
    acc = [float(g) for _, g in scores]
    lls = [ll for ll, _ in scores]
    return TaskResult("lambada_openai", len(items), {"acc": sum(acc) / len(acc), "perplexity": math.exp(-sum(lls) / len(lls))},
                      {"acc": mean_stderr(acc), "perplexity": None}, seconds=time.perf_counter() - t0,
                      samples=[{"id": it.id, "ll": ll, "greedy": g} for it, (ll, g) in zip(items, scores, strict=True)])


# ---------------------------------------------------------------------------- entry point


Source = str | Path | Sequence[str | Path] | Iterable[BenchmarkItem] | None


def _paths(source: Source) -> list[Path] | None:
    """The paths a source names (one, or a list of them), or None for the Hub or a list of items."""
    if source is None:
        return None
    if isinstance(source, (str, Path)):
        return [Path(source)]
    if isinstance(source, Sequence) and source and all(isinstance(s, (str, Path)) for s in source):
        return [Path(s) for s in source]
    return None


def _describe_source(source: Source) -> str:
    """The data's location for messages."""
    paths = _paths(source)
    if paths:
        return ", ".join(str(p) for p in paths)
    return "the Hub data" if source is None else "the items"


def _is_data_root(folder: Path) -> bool:
    """Whether a folder holds task folders (a root like ../shared/data) rather than one task's files."""
    return any((folder / name).is_dir() for names in _DATA_FOLDERS.values() for name in names)


_HELLASWAG_FILE = re.compile(r"\.(jsonl|json|parquet|txt)(\.gz|\.bz2)?$")


def _hellaswag_files(folder: Path) -> list[Path]:
    """HellaSwag files in a folder, both layouts: named for it, or Hub shards named by split."""
    return [f for f in sorted(folder.rglob("*")) if f.is_file() and _HELLASWAG_FILE.search(f.name.lower())
            and ("hellaswag" in f.name.lower() or re.match(r"(train|validation|test)[-_.]", f.name.lower()))]


def _prefer_exact_hellaswag(items: list[BenchmarkItem]) -> list[BenchmarkItem]:
    """Drop 6-lines-text items of every split that the Rowan jsonl/parquet layout also gives."""
    exact = {it.meta.get("split") for it in items if it.meta.get("ctx_split") != "heuristic"}
    return [it for it in items if it.meta.get("ctx_split") != "heuristic" or it.meta.get("split") not in exact]


def _load_path(task: str, p: Path) -> list[BenchmarkItem]:
    if p.is_dir():  # a data root holding task folders, or the task's own folder
        found = find_task_data(task, p)
        if found is None and _is_data_root(p):
            folders = _DATA_FOLDERS.get(task, [task])
            raise ValueError(f"{task}: no {' or '.join(f + '/' for f in folders)} folder in the data root {p}; "
                             f"add one, or give --data-file {task}=PATH")
        p = found or p
    if task == "hellaswag" and p.is_dir() and (files := _hellaswag_files(p)):
        return [it for f in files for it in load_benchmark(task, f)]
    return load_benchmark(task, p)


def load_task_items(task: str, source: Source, fewshot_split: str | None = None) -> list[BenchmarkItem]:
    """All items of a task from a path, several paths, a data root, a list of items, or (None) the Hugging
    Face Hub (its eval split, plus `fewshot_split` when given). HellaSwag given in both layouts keeps the
    Rowan jsonl/parquet items (lm_eval's exact text) over the 6-lines text's of the same split."""
    if source is None:
        extra = fewshot_split or ("dev" if task == "mmlu" else None)
        try:
            return load_benchmark(task) + (load_benchmark(task, split=extra) if extra else [])
        except OSError as e:  # offline (requests' ConnectionError is an OSError)
            raise ValueError(f"{task}: no local data and the Hub is unreachable ({type(e).__name__}); "
                             f"give --data ROOT or --data-file {task}=PATH") from e
    paths = _paths(source)
    if paths is None:
        return list(source)  # type: ignore[arg-type]
    items = [it for p in paths for it in _load_path(task, p)]
    return _prefer_exact_hellaswag(items) if task == "hellaswag" else items


def approximation(task: str, items: Iterable[BenchmarkItem]) -> str | None:
    """Why requests built from these items are not exactly lm_eval's (None when they are)."""
    if task == "hellaswag" and any(it.meta.get("ctx_split") == "heuristic" for it in items):
        return HELLASWAG_TEXT_CAUSE
    return FOUNDRY_PROMPT_CAUSES.get(task)


@dataclass
class TaskPlan:
    """One task's work, ready to score: its items and k-shot prefixes. Plans are built for every task before
    the model runs, so missing data or few-shot splits stop a run at once, not after hours of earlier tasks."""

    name: str
    task: str
    shots: int | None
    items: list[BenchmarkItem]
    evals: list[BenchmarkItem]
    prefixes: list[str] | None = None
    pool: list[BenchmarkItem] = field(default_factory=list)


def plan_tasks(tasks: Iterable[str], data: str | Path | Mapping[str, Any] | None = None, limit: int | None = None,
               num_fewshot: int | None = None, log: Any = None) -> list[TaskPlan]:
    """Each task's items, evaluation split, limit and few-shot prefixes (`evaluate`'s arguments), checked."""
    from trainer.eval.generative import FIXED_SHOTS

    plans = []
    for name in tasks:
        task, shots = parse_task(name)
        if shots is None and task in FEWSHOT_TASKS and num_fewshot is not None:
            shots = min(num_fewshot, FIXED_SHOTS.get(task, num_fewshot))  # all the fixed examples there are
        if shots and task not in FEWSHOT_TASKS:
            raise ValueError(f"{name}: {task} is zero-shot only here; few-shot tasks: {', '.join(FEWSHOT_TASKS)}")
        if shots is not None and task in FIXED_SHOTS and shots > FIXED_SHOTS[task]:
            raise ValueError(f"{name}: {shots}-shot asked, but lm_eval's {task} has {FIXED_SHOTS[task]} fixed "
                             f"examples; give at most {FIXED_SHOTS[task]} ({task}@{FIXED_SHOTS[task]})")
        source = data.get(name, data.get(task)) if isinstance(data, Mapping) else data
        where = _describe_source(source)
        items = load_task_items(task, source, SHOT_SOURCES[task].split if shots and task in SHOT_SOURCES else None)
        evals = eval_items(task, items)
        if limit is not None:
            evals = _limit(task, evals, limit)
        if not evals:
            raise ValueError(f"{name}: no evaluation items in {where}")
        plan = TaskPlan(name, task, shots, items, evals)
        if BENCHMARKS[task].kind == "multiple_choice":
            plan.prefixes, plan.pool = _prefixes_and_pool(name, task, evals, items, shots or 0, where)
        if log:
            log(f"{name}: {len(evals)} items")
        plans.append(plan)
    return plans


def run_plans(lm: Any, plans: Iterable[TaskPlan], sandbox: Any = None, gen_kwargs: Mapping[str, Any] | None = None,
              log: Any = None, on_result: Any = None) -> dict[str, TaskResult]:
    """Score planned tasks with `lm`; `on_result(results so far)` runs after each task (the CLI writes its
    report there, so a crash or Ctrl-C in a later task keeps the finished ones)."""
    from trainer.eval import generative

    results: dict[str, TaskResult] = {}
    for plan in plans:
        kind = BENCHMARKS[plan.task].kind
        if log:
            log(f"{plan.name}: scoring {len(plan.evals)} items")
        if kind == "multiple_choice":
            res = score_multiple_choice(lm, plan.task, plan.evals, plan.prefixes)
            res.num_fewshot = plan.shots or 0
            res.approximate = approximation(plan.task, plan.evals + plan.pool)
        elif kind == "loglikelihood":
            res = score_lambada(lm, plan.evals)
        else:
            res = generative.run_task(lm, plan.task, plan.evals, plan.items, num_fewshot=plan.shots, sandbox=sandbox,
                                      gen_kwargs=gen_kwargs or {})
        results[plan.name] = res
        if log and res.approximate:
            log(f"{plan.name}: approximate, not lm_eval's exact requests: {res.approximate}")
        if log:
            log(f"{plan.name}: " + ", ".join(f"{m}={v:.4f}" for m, v in res.metrics.items()
                                             if not m.startswith("acc_") or m == "acc_norm"))
        if on_result:
            on_result(results)
    return results


def evaluate(lm: Any, tasks: Iterable[str], data: str | Path | Mapping[str, Any] | None = None,
             limit: int | None = None, num_fewshot: int | None = None, sandbox: Any = None,
             gen_kwargs: Mapping[str, Any] | None = None, log: Any = None) -> dict[str, TaskResult]:
    """Evaluate `lm` (a `trainer.eval.models.CausalLM`) on `tasks` ("mmlu@5", "arc_challenge@25" pick the shots).

    `data`: a data root (folders as in ../shared/data), or {task: path | [paths] | items}; tasks without
    local data load from the Hugging Face Hub. `limit`: first n evaluation items per task (MMLU: per
    subject). `num_fewshot`: shots for the tasks without '@k' that have few-shot examples (FEWSHOT_TASKS).
    Every task's data is read and checked before the first one is scored (`plan_tasks`, then `run_plans`).
    """
    return run_plans(lm, plan_tasks(tasks, data, limit, num_fewshot, log), sandbox, gen_kwargs, log)


def _limit(task: str, items: list[BenchmarkItem], n: int) -> list[BenchmarkItem]:
    if task != "mmlu":
        return items[:n]
    seen: dict[str, int] = {}
    out = []
    for it in items:
        s = it.meta["subject"]
        if seen.get(s, 0) < n:
            seen[s] = seen.get(s, 0) + 1
            out.append(it)
    return out
