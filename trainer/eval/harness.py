"""Zero/few-shot evaluation with lm-evaluation-harness's formulas, on local benchmark files.

Multiple choice: each choice is scored as the log-likelihood of `" " + choice` after the prompt;
`acc` takes the argmax of the summed log-probs, `acc_norm` of the sums divided by the choice's length
in characters (lm_eval's `completion_len`). WinoGrande uses partial scoring (each option completes the
sentence up to the blank, the rest of the sentence is the shared continuation). MMLU prepends lm_eval's
subject description and the first k dev questions of the subject (`mmlu@5`). Standard errors are
lm_eval's: sample std / sqrt(n) for means, the pooled formula for MMLU's subjects.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textbookgen.benchmarks import BENCHMARKS, BenchmarkItem, load_benchmark, mmlu_description, resolve_task

__all__ = ["PAPER_TASKS", "TaskResult", "evaluate", "find_task_data", "mc_requests", "parse_task", "mean_stderr"]

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
FEWSHOT_TASKS = ("mmlu", "gsm8k", "mbpp")  # the others are zero-shot, as in the paper
_SPLIT_SYNONYMS = {"validation": {"validation", "dev", "val"}, "test": {"test"}}


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

    def to_dict(self, with_samples: bool = False) -> dict[str, Any]:
        d = {"task": self.task, "n": self.n, "num_fewshot": self.num_fewshot, "seconds": round(self.seconds, 3),
             "metrics": self.metrics, "stderr": self.stderr}
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


def _mmlu_prefixes(items: list[BenchmarkItem], shots: list[BenchmarkItem], k: int) -> dict[str, str]:
    """Per subject: lm_eval's description + the first k dev questions with their answers."""
    by_subject: dict[str, list[BenchmarkItem]] = {}
    for s in shots:
        by_subject.setdefault(s.meta["subject"], []).append(s)
    out = {}
    for subject in {it.meta["subject"] for it in items}:
        examples = by_subject.get(subject, [])[:k]
        if len(examples) < k:
            raise ValueError(f"mmlu@{k}: only {len(examples)} dev questions for subject {subject!r}")
        out[subject] = mmlu_description(subject) + "".join(f"{s.context} {s.choices[s.gold]}\n\n" for s in examples)
    return out


def score_multiple_choice(lm: Any, task: str, items: list[BenchmarkItem],
                          prefixes: Mapping[str, str] | None = None) -> TaskResult:
    """acc (and acc_norm where lm_eval reports it) for multiple-choice items."""
    t0 = time.perf_counter()
    spec = BENCHMARKS[task]
    unlabelled = [it.id for it in items if it.gold is None]
    if unlabelled:
        raise ValueError(f"{task}: {len(unlabelled)} items without a gold answer (e.g. id {unlabelled[0]!r}): "
                         "a test split without labels? Use the validation split")
    requests, spans = [], []
    for it in items:
        prefix = prefixes.get(it.meta.get("subject", ""), "") if prefixes else ""
        reqs = mc_requests(it, prefix)
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


def load_task_items(task: str, source: str | Path | Iterable[BenchmarkItem] | None) -> list[BenchmarkItem]:
    """All items of a task from a path, a data root, a list of items, or (None) the Hugging Face Hub."""
    if source is None:  # the Hub: the eval split (and MMLU's dev split for its shots)
        try:
            return load_benchmark(task) + (load_benchmark(task, split="dev") if task == "mmlu" else [])
        except OSError as e:  # offline (requests' ConnectionError is an OSError)
            raise ValueError(f"{task}: no local data and the Hub is unreachable ({type(e).__name__}); "
                             f"give --data ROOT or --data-file {task}=PATH") from e
    if not isinstance(source, (str, Path)):
        return list(source)
    p = Path(source)
    if p.is_dir():  # a data root holding task folders, or the task's own folder
        p = find_task_data(task, p) or p
    return load_benchmark(task, p)


def evaluate(lm: Any, tasks: Iterable[str], data: str | Path | Mapping[str, Any] | None = None,
             limit: int | None = None, num_fewshot: int | None = None, sandbox: Any = None,
             gen_kwargs: Mapping[str, Any] | None = None, log: Any = None) -> dict[str, TaskResult]:
    """Evaluate `lm` (a `trainer.eval.models.CausalLM`) on `tasks` ("mmlu@5" picks the shots).

    `data`: a data root (folders as in ../shared/data), or {task: path | items}; tasks without local
    data load from the Hugging Face Hub. `limit`: first n evaluation items per task (MMLU: per subject).
    """
    from trainer.eval import generative

    results: dict[str, TaskResult] = {}
    for name in tasks:
        task, shots = parse_task(name)
        if shots is None and task in FEWSHOT_TASKS:
            shots = num_fewshot
        source = data.get(name, data.get(task)) if isinstance(data, Mapping) else data
        items = load_task_items(task, source)
        evals = eval_items(task, items)
        if limit is not None:
            evals = _limit(task, evals, limit)
        if not evals:
            where = source if isinstance(source, (str, Path)) else "the Hub data" if source is None else "the items"
            raise ValueError(f"{name}: no evaluation items in {where}")
        if log:
            log(f"{name}: {len(evals)} items")
        kind = BENCHMARKS[task].kind
        if kind == "multiple_choice":
            prefixes = None
            if task == "mmlu":
                k = shots or 0
                dev = [it for it in items if it.meta.get("split") == "dev"]
                prefixes = _mmlu_prefixes(evals, dev, k) if k else {
                    s: mmlu_description(s) for s in {it.meta["subject"] for it in evals}}
            elif shots:
                raise ValueError(f"{name}: few-shot is implemented for {', '.join(FEWSHOT_TASKS)} only (the paper's "
                                 "other tasks are zero-shot)")
            res = score_multiple_choice(lm, task, evals, prefixes)
            res.num_fewshot = shots or 0
        elif kind == "loglikelihood":
            res = score_lambada(lm, evals)
        else:
            res = generative.run_task(lm, task, evals, items, num_fewshot=shots, sandbox=sandbox,
                                      gen_kwargs=gen_kwargs or {})
        results[name] = res
        if log:
            log(f"{name}: " + ", ".join(f"{m}={v:.4f}" for m, v in res.metrics.items() if not m.startswith("acc_") or m == "acc_norm"))
    return results


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
