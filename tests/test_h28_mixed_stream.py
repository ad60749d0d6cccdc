"""A step list mixing row steps, exact and MinHash dedup, the quality score and its cut (what `curate` runs) goes out
of core a group of steps at a time: the kept rows, stats and every report of the corpus read whole, without reading
it whole, and a killed run resumes from the groups it finished."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest
from test_h23_score_stream import dclm, model, read_whole  # noqa: F401  (fixtures)

from textbookgen.curation import classifier, commands, corpus_io, groups, near_dedup, truncated
from textbookgen.curation.config import BenchmarkSource, CurationConfig
from textbookgen.curation.pipeline import build_steps

CHUNK = 23  # rows per streamed chunk: the corpus below is 20 chunks and more, cut mid-file
SEEDS = 12  # C4 documents given a web extract (`seed_extract_id`); the first copies its extract


def _read(path: Path, field: str) -> list[str]:
    return [json.loads(line)[field] for line in gzip.open(path, "rt", encoding="utf-8")]


@pytest.fixture(scope="module")
def bench(shared_data: Path) -> list:
    """GSM8K's test items, as `Decontaminate` takes them loaded."""
    from textbookgen.benchmarks import load_benchmark

    items = load_benchmark("gsm8k", shared_data / "gsm8k" / "test.jsonl.gz")
    return [("gsm8k", it.id, [*it.texts(), it.exercise()]) for it in items]


@pytest.fixture(scope="module")
def corpus(shared_data: Path, tmp_path_factory) -> Path:
    """Wikipedia (jsonl.gz, no ids: made up) then C4 (parquet, ids, `finish_reason`, `seed_extract_id`), with an
    exact copy (case and spacing changed) and near copies across the files, a truncated document that comes
    before its untruncated copy, a GSM8K question pasted into a document, and a document copying its extract."""
    folder = tmp_path_factory.mktemp("h28") / "corpus"
    folder.mkdir()
    wiki = _read(shared_data / "wikipedia_en_1k" / "wikipedia.jsonl.gz", "eng_Latn")[:260]
    c4 = _read(shared_data / "c4_en_sample_1k" / "c4_sample.jsonl.gz", "text")[:300]
    gsm = _read(shared_data / "gsm8k" / "test.jsonl.gz", "question")
    c4[40] = "  ".join(wiki[7].upper().split())  # exact copy of a Wikipedia article
    for k, i in enumerate((60, 61, 62)):  # near copies: one word in ~40 changed
        words = wiki[20 + k].split()
        c4[i] = " ".join("edited" if j % 40 == 5 else w for j, w in enumerate(words))
    c4[150] = c4[10]  # c4[10] is cut off (finish_reason "length"): the copy must be the one kept
    c4[200] = f"{c4[200]}\n{gsm[17]}"
    seeds = {f"e{i}": " ".join(reversed(c4[90 + i].split())) if i else c4[90] for i in range(SEEDS)}
    with gzip.open(folder / "a.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": t, "source": "wiki"}) + "\n" for t in wiki)
    pl.DataFrame({"id": [f"c{i}" for i in range(len(c4))], "text": c4,
                  "finish_reason": ["length" if i in (10, 33) else "stop" for i in range(len(c4))],
                  "seed_extract_id": [f"e{i - 90}" if 90 <= i < 90 + SEEDS else None for i in range(len(c4))]}
                 ).write_parquet(folder / "b.parquet")
    (folder / "seeds.json").write_text(json.dumps(seeds))
    return folder


def _steps(corpus: Path, bench: list, model_path: Path, cut: dict, **filters) -> list:
    """`curate`'s list (`build_steps`): DropTruncated, ExactDedup, HeuristicFilter, Decontaminate, SeedCopy,
    QualityScore, MinHashDedup, QualityCut; one worker each."""
    cfg = CurationConfig.model_validate({
        "minhash": {"workers": 1, "threshold": 0.7, "shard_size": 97},
        "filters": filters,
        "decontamination": {"benchmarks": [BenchmarkSource(name="gsm8k", path="unused")]},
        "classifier": {"enabled": True, "model_path": str(model_path), **cut}})
    seeds = json.loads((corpus / "seeds.json").read_text())
    return build_steps(cfg, bench, seeds)


def _inputs(corpus: Path) -> Path:
    """The corpus files alone (seeds.json beside them is no corpus file)."""
    folder = corpus.parent / "input"
    if not folder.exists():
        folder.mkdir()
        for name in ("a.jsonl.gz", "b.parquet"):
            (folder / name).symlink_to(corpus / name)
    return folder


def _without_speed(stats: dict) -> dict:
    return {name: {k: v for k, v in st.items() if k != "docs_per_s"} for name, st in stats.items()}


def _reports(work: Path) -> dict[str, pl.DataFrame]:
    """Every report a step wrote (`work/<step>/<name>.parquet`)."""
    return {str(p.relative_to(work)): pl.read_parquet(p) for p in sorted(work.glob("*/*.parquet"))}


def _no_whole_read(monkeypatch) -> None:
    def whole(*args, **kwargs):
        raise AssertionError("the corpus was read whole")

    monkeypatch.setattr(commands, "read_corpus", whole)
    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", CHUNK)


def _same(out: Path, work: Path, stats: dict, expected: Path, expected_stats: dict) -> None:
    """The output, stats and reports of `run_steps` are those of the corpus read whole."""
    def read(path: Path) -> pl.DataFrame:
        return pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_ndjson(path, infer_schema_length=None)

    assert read(out).equals(read(expected))
    assert _without_speed(stats) == _without_speed(expected_stats)
    whole = _reports(Path(str(expected) + ".work"))
    assert set(whole) == set(_reports(work)) and len(whole) >= 6
    for name, report in _reports(work).items():
        assert report.equals(whole[name]), name
    assert not (work / groups.GROUPS).exists()  # a finished run leaves its output and reports only


@pytest.mark.parametrize(("cut", "suffix"), [({"keep_top_percent": 70.0}, ".parquet"), ({"threshold": 0.503}, ".jsonl")])
def test_a_mixed_list_streams_to_the_whole_corpus_result(corpus, bench, model, tmp_path, monkeypatch,  # noqa: F811
                                                         cut, suffix):
    """`curate`'s whole list, with a top share or a threshold: the kept rows (columns, made-up ids, order), stats
    and reports (rows named in the original input) of the steps on the corpus read whole, never reading it whole."""
    src = _inputs(corpus)
    expected = tmp_path / f"whole{suffix}"
    expected_stats = read_whole(src, _steps(corpus, bench, model, cut), expected)
    dropped = {name: sum(st["dropped"].values()) for name, st in expected_stats.items()}
    assert all(dropped[name] for name in ("truncated", "exact_dedup", "filters", "decontamination", "seed_copy",
                                          "minhash_dedup", "quality_filter")), dropped
    _no_whole_read(monkeypatch)
    out, work = tmp_path / f"out{suffix}", tmp_path / "work"
    stats = commands.run_steps(src, out, _steps(corpus, bench, model, cut), work)
    _same(out, work, stats, expected, expected_stats)
    assert json.loads(Path(str(out) + corpus_io.STATS_SUFFIX).read_text()) == stats


def test_a_killed_mixed_run_resumes_from_the_groups_it_finished(corpus, bench, model, tmp_path,  # noqa: F811
                                                                monkeypatch):
    """Killed in MinHash (after the row steps, exact dedup and the score), the rerun takes the groups the first run
    finished (neither drops truncated documents nor scores again) and writes what a run never killed writes."""
    src, cut = _inputs(corpus), {"keep_top_percent": 70.0}
    expected = tmp_path / "whole.parquet"
    expected_stats = read_whole(src, _steps(corpus, bench, model, cut), expected)
    _no_whole_read(monkeypatch)
    calls = {"truncated": 0, "scores": 0, "minhash": 0}
    judge, scores, dedup = truncated.DropTruncated.judge, classifier.QualityModel.scores, near_dedup.MinHashDedup.dedup

    def judging(self, *args, **kwargs):
        calls["truncated"] += 1
        return judge(self, *args, **kwargs)

    def scoring(self, *args, **kwargs):
        calls["scores"] += 1
        return scores(self, *args, **kwargs)

    def killed(self, *args, **kwargs):
        calls["minhash"] += 1
        if calls["minhash"] == 1:
            raise KeyboardInterrupt
        return dedup(self, *args, **kwargs)

    monkeypatch.setattr(truncated.DropTruncated, "judge", judging)
    monkeypatch.setattr(classifier.QualityModel, "scores", scoring)
    monkeypatch.setattr(near_dedup.MinHashDedup, "dedup", killed)
    out, work = tmp_path / "out.parquet", tmp_path / "work"
    with pytest.raises(KeyboardInterrupt):
        commands.run_steps(src, out, _steps(corpus, bench, model, cut), work)
    assert not out.exists() and calls["truncated"] == 1 and calls["scores"] > 0
    # rows, exact, rows, score finished: the score's output alone is kept (each group's goes once the next is recorded)
    assert sorted(f.name for f in (work / groups.GROUPS).iterdir()) == ["03.json", "03.parquet"]

    calls.update(truncated=0, scores=0)
    stats = commands.run_steps(src, out, _steps(corpus, bench, model, cut), work)
    assert calls == {"truncated": 0, "scores": 0, "minhash": 2}
    _same(out, work, stats, expected, expected_stats)


def test_groups_finished_with_other_settings_are_not_used(corpus, bench, model, tmp_path, monkeypatch):  # noqa: F811
    """Killed, then rerun with another filter setting: the groups from the filters on are run again, so the output
    is that of the new setting, not the killed run's."""
    src, cut = _inputs(corpus), {"threshold": 0.503}
    strict = {"min_words": 120}
    expected = tmp_path / "whole.parquet"
    expected_stats = read_whole(src, _steps(corpus, bench, model, cut, **strict), expected)
    _no_whole_read(monkeypatch)
    dedup, calls = near_dedup.MinHashDedup.dedup, []

    def killed(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return dedup(self, *args, **kwargs)

    monkeypatch.setattr(near_dedup.MinHashDedup, "dedup", killed)
    out, work = tmp_path / "out.parquet", tmp_path / "work"
    with pytest.raises(KeyboardInterrupt):
        commands.run_steps(src, out, _steps(corpus, bench, model, cut), work)
    stats = commands.run_steps(src, out, _steps(corpus, bench, model, cut, **strict), work)
    assert stats["filters"]["dropped"] != {} and stats["filters"] == expected_stats["filters"]
    _same(out, work, stats, expected, expected_stats)
