"""k-shot contexts for multiple-choice tasks, as lm-evaluation-harness 0.4.13 builds them.

Each task's YAML says where the examples come from: fewshot_split, else training_split, else
validation_split. MMLU (`sampler: first_n`) takes its subject's first k dev questions after the subject
description. Every other task uses the default `ContextSampler`: one `random.Random(1234)` per task
(`simple_evaluate`'s fewshot_random_seed), drawing for each evaluated doc in order. When the YAML's
fewshot_split equals its test_split (both unset counts, as for BoolQ or HellaSwag), lm_eval hands the
evaluated doc to the sampler, which draws k + 1 and drops the copies of it (and draws k again from the pool
without it if that leaves fewer than k), so those tasks consume the random stream differently. An example
is doc_to_text + target_delimiter " " + the gold choice + fewshot_delimiter "\n\n"; for WinoGrande the
gold option's partial sentence + " " + the shared continuation.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from textbookgen.benchmarks import BenchmarkItem, mmlu_description

__all__ = ["FEWSHOT_SEED", "SHOT_SOURCES", "ShotSource", "mmlu_prefixes", "sample_shots", "shot_text"]

FEWSHOT_SEED = 1234
TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"


@dataclass(frozen=True)
class ShotSource:
    """Where lm_eval draws a task's examples from, and how it recognises the evaluated doc among them."""

    split: str
    excludes_eval_doc: bool  # the YAML's fewshot_split == test_split
    row_ids: tuple[str, ...] = ()  # fields of lm_eval's doc that its equality test sees besides the text


# from the task YAMLs (training_split / validation_split / test_split; none sets fewshot_split)
SHOT_SOURCES = {
    "arc_easy": ShotSource("train", False), "arc_challenge": ShotSource("train", False),
    "openbookqa": ShotSource("train", False),
    "boolq": ShotSource("train", True, ("id",)),  # rows carry idx
    "copa": ShotSource("train", True, ("id",)),
    "commonsense_qa": ShotSource("train", True, ("id",)),
    "hellaswag": ShotSource("train", True, ("split", "id")),  # rows carry split and ind
    "piqa": ShotSource("train", True), "siqa": ShotSource("train", True), "winogrande": ShotSource("train", True),
}


def shot_text(item: BenchmarkItem) -> str:
    """One worked example: the question, the target delimiter, its gold answer, the few-shot delimiter."""
    if item.gold is None:
        raise ValueError(f"{item.task} few-shot example {item.id!r} has no gold answer")
    if item.meta.get("scoring") == "partial":  # WinoGrande: the gold option's sentence start, the rest
        question, answer = item.choices[item.gold], item.target or ""
    else:
        question, answer = item.context, item.choices[item.gold]
    return question + (TARGET_DELIMITER + answer + FEWSHOT_DELIMITER if answer else "")


def _doc_key(source: ShotSource, item: BenchmarkItem) -> tuple:
    ids = tuple(item.id if f == "id" else item.meta.get("split") for f in source.row_ids)
    return (item.context, tuple(item.choices), item.gold, item.target, *ids)


def sample_shots(task: str, evals: Sequence[BenchmarkItem], pool: Sequence[BenchmarkItem], k: int,
                 seed: int = FEWSHOT_SEED) -> list[list[BenchmarkItem]]:
    """The k examples lm_eval's default sampler draws for each evaluated item, in order; `pool` is the
    few-shot split in the dataset's order (only its size and order matter to the random draws), of at
    least k examples (k + 1 where the evaluated doc may be among them): the harness's `fewshot_pool`."""
    source = SHOT_SOURCES[task]
    rnd = random.Random(seed)
    if not source.excludes_eval_doc:
        return [[pool[j] for j in rnd.sample(range(len(pool)), k)] for _ in evals]
    keys = [_doc_key(source, x) for x in pool]
    out = []
    for it in evals:
        key = _doc_key(source, it)
        shots = [pool[j] for j in rnd.sample(range(len(pool)), k + 1) if keys[j] != key][:k]
        if len(shots) < k:  # the pool holds the evaluated doc more than once
            rest = [x for x, kx in zip(pool, keys, strict=True) if kx != key]
            if len(rest) < k:
                raise ValueError(f"{task}: {k}-shot for item {it.id!r} leaves only {len(rest)} other examples")
            shots = rnd.sample(rest, k)
        out.append(shots)
    return out


def mmlu_prefixes(evals: Sequence[BenchmarkItem], dev: Sequence[BenchmarkItem], k: int) -> dict[str, str]:
    """Per subject: lm_eval's description + the first k dev questions with their answers."""
    by_subject: dict[str, list[BenchmarkItem]] = {}
    for s in dev:
        by_subject.setdefault(s.meta["subject"], []).append(s)
    out = {}
    for subject in {it.meta["subject"] for it in evals}:
        examples = by_subject.get(subject, [])[:k]
        if len(examples) < k:
            raise ValueError(f"mmlu@{k}: only {len(examples)} dev questions for subject {subject!r}")
        out[subject] = mmlu_description(subject) + "".join(shot_text(s) for s in examples)
    return out
