"""Filters and decontamination on a process pool: the same rows, counts and reports as one process."""

from __future__ import annotations

import gzip
import json
import os
import random
from pathlib import Path

import polars as pl
import pytest

from textbookgen.curation import CurationConfig
from textbookgen.curation.base import map_rows
from textbookgen.curation.config import DecontaminationConfig
from textbookgen.curation.decontaminate import Decontaminate, _match_rows
from textbookgen.curation.filters import HeuristicFilter
from textbookgen.curation.pipeline import build_steps, run_pipeline


def _read(path: Path, field: str) -> list[str]:
    return [json.loads(line)[field] for line in gzip.open(path, "rt", encoding="utf-8")]


@pytest.fixture(scope="module")
def leaks(shared_data: Path) -> tuple[list[tuple[str, str, list[str]]], list[str]]:
    """(benchmark items to decontaminate against, texts copied from some of them)."""
    from textbookgen.benchmarks import load_benchmark

    sets = {"gsm8k": shared_data / "gsm8k" / "test.jsonl.gz",
            "arc_easy": shared_data / "llmfoundry_eval_gauntlet" / "arc_easy.jsonl.gz",
            "humaneval": shared_data / "humaneval" / "HumanEval.jsonl.gz"}
    items = {name: load_benchmark(name, path) for name, path in sets.items()}
    texts = [(name, it.id, [*it.texts(), it.exercise()]) for name, its in items.items() for it in its]
    copied = [items["gsm8k"][5].context, items["gsm8k"][300].target, items["arc_easy"][7].exercise(),
              items["humaneval"][3].context + items["humaneval"][3].target]
    return texts, copied


@pytest.fixture(scope="module")
def corpus(shared_data: Path, leaks) -> pl.DataFrame:
    """wikipedia_en_1k + c4_en_sample_1k, leaks planted in documents spread over the chunks, and a few
    code documents (their rules differ)."""
    docs = _read(shared_data / "wikipedia_en_1k" / "wikipedia.jsonl.gz", "eng_Latn")
    docs += _read(shared_data / "c4_en_sample_1k" / "c4_sample.jsonl.gz", "text")
    rng = random.Random(5)
    for k, leak in enumerate(leaks[1] * 3):
        i = 150 * k + 17
        paras = docs[i].split("\n")
        paras.insert(rng.randrange(len(paras) + 1), leak)
        docs[i] = "\n".join(paras)
    code = _read(shared_data / "humaneval" / "HumanEval.jsonl.gz", "canonical_solution")[:40]
    fmt = ["textbook"] * len(docs) + ["code"] * len(code)
    return pl.DataFrame({"id": [f"d{i:04d}" for i in range(len(fmt))], "text": docs + code, "format": fmt})


def test_pool_gives_the_serial_rows_counts_and_reports(corpus, leaks, tmp_path):
    cfg = CurationConfig()
    decon = DecontaminationConfig()

    def steps(workers: int):
        return [HeuristicFilter(cfg.filters, workers=workers, chunk_size=300),
                Decontaminate(decon, texts=leaks[0], workers=workers, chunk_size=300)]

    serial, serial_stats = run_pipeline(corpus, steps(1), tmp_path / "serial")
    pooled, pooled_stats = run_pipeline(corpus, steps(2), tmp_path / "pooled")
    assert pooled.equals(serial)
    assert pooled_stats == serial_stats
    for report in ("filters/dropped.parquet", "decontamination/contamination.parquet"):
        assert pl.read_parquet(tmp_path / "pooled" / report).equals(pl.read_parquet(tmp_path / "serial" / report))
    # the comparison is not between two empty results
    assert serial_stats["filters"]["code_docs"] >= 40 and sum(serial_stats["filters"]["dropped"].values()) > 100
    assert sum(serial_stats["decontamination"]["dropped"].values()) >= len(leaks[1]) * 3 - 3


def _pid_rows(offset: int, rows: list[tuple[int]]) -> list[tuple[int, int]]:
    return [(r + offset, os.getpid()) for r, in rows]


def test_chunks_run_in_worker_processes_in_row_order():
    out = list(map_rows(_pid_rows, 1000, [pl.Series(range(1000))], workers=2, chunk_size=64))
    assert [r for r, _ in out] == list(range(1000, 2000))
    pids = {p for _, p in out}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    serial = list(map_rows(_pid_rows, 0, [pl.Series(range(100))], workers=1, chunk_size=10))
    assert {p for _, p in serial} == {os.getpid()}


def test_spawned_workers_match_like_this_process(corpus, leaks):
    """A spawned worker gets the index pickled, with its own `hash()` seed: the word hashes must not
    depend on the process, or it finds nothing."""
    step = Decontaminate(DecontaminationConfig(), texts=leaks[0])
    texts = corpus["text"].slice(0, 320)  # two planted leaks
    spawned = list(map_rows(_match_rows, step, [texts], workers=2, chunk_size=80, start_method="spawn"))
    here = [step.matches(t) for t in texts]
    assert spawned == here and sum(map(bool, here)) >= 2


def test_every_pool_step_takes_the_minhash_worker_setting():
    cfg = CurationConfig.model_validate({"minhash": {"workers": 3}, "decontamination": {"benchmarks": ["b.jsonl"]}})
    steps = {s.name: s for s in build_steps(cfg, benchmark_texts=[("b", "1", ["a question with enough words in it"])])}
    assert steps["filters"].workers == steps["decontamination"].workers == 3


def test_the_filter_and_decontaminate_commands_take_the_minhash_worker_setting(tmp_path):
    from textbookgen.curation.commands import decontaminate_steps, filter_steps

    bench = tmp_path / "b.jsonl"
    bench.write_text('{"question": "a question with enough words in it to be matched"}\n')
    cfg = CurationConfig.model_validate({"minhash": {"workers": 3}, "decontamination": {"benchmarks": [str(bench)]}})
    assert filter_steps(cfg)[-1].workers == decontaminate_steps(cfg)[0].workers == 3
