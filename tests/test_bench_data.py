"""bench/ scripts that read ../shared/data skip in one line where it is absent, and find every file where it is."""

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import polars as pl
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
READERS = {  # script: its smallest arguments
    "curate.py": ["--docs", "10", "--repeats", "1"],
    "dedup.py": ["--docs", "50", "--speed-docs", "5"],
    "diversity.py": ["--prompts", "5"],
    "eval.py": ["--items", "1", "--repeats", "1"],
    "quality.py": ["--bucket", "1000"],
}


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    sys.path.insert(0, str(path.parent))  # as `python bench/x.py` does: the scripts import bench/shared_data.py
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
        sys.path.remove(str(path.parent))
    return module


@pytest.mark.parametrize("script", sorted(READERS))
def test_bench_skips_in_one_line_without_shared_data(script, tmp_path, monkeypatch, capsys):
    """A user's clone has no ../shared/data: the bench says so and exits 0 instead of a traceback."""
    copy = tmp_path / "repo" / "bench" / script  # ../shared/data of this copy does not exist
    copy.parent.mkdir(parents=True)
    shutil.copy(BENCH / script, copy)
    shutil.copy(BENCH / "shared_data.py", copy.parent)
    monkeypatch.setattr(sys, "argv", [str(copy), *READERS[script]])
    with pytest.raises(SystemExit) as stop:
        _load(copy).main()
    assert stop.value.code in (0, None)
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith(f"skipped: {script} reads the shared data: {tmp_path / 'shared' / 'data'}")
    assert "not found" in out[-1]


def test_bench_data_files_exist_in_shared_data(shared_data):
    """Where the shared data is, no bench skips: every file each one names is there."""
    files = [f for s in ("curate.py", "dedup.py", "quality.py") for f in _load(BENCH / s).DATA_FILES]
    evaluation = _load(BENCH / "eval.py")
    files += evaluation.data_files(shared_data, ["arc_easy", "hellaswag", "boolq", "winogrande", "mmlu@5"])
    diversity = _load(BENCH / "diversity.py")
    files += [shared_data / rel for rel in diversity.SEEDS]
    files.append(shared_data / "sciphi_topics" / "tayn_evol_evol_grade_school.yaml.gz")
    assert all(f.is_relative_to(shared_data) for f in files)
    assert [f for f in files if not f.exists()] == []


def test_dedup_bench_times_datasketch_on_its_bulk_path(monkeypatch):
    """The peer is datasketch as its docs recommend for many documents (`MinHash.generator`: one initialised
    MinHash copied per document), not a new MinHash per document, which re-derives the permutations each time
    and halved the peer's speed. Its signatures are still checked against ours."""
    dedup = _load(BENCH / "dedup.py")
    made = []
    real = dedup.MinHash._init_permutations
    monkeypatch.setattr(dedup.MinHash, "_init_permutations", lambda self, n: made.append(n) or real(self, n))
    docs = [" ".join(f"w{i}x{j}" for j in range(20)) for i in range(30)]
    result = dedup.speed(docs, 30, passes=1)
    assert result["identical_to_datasketch_xxh32"]
    assert len(made) <= 7  # one per timed batch (4) and the check (1), not one per document (30 a batch)


def test_diversity_peer_uses_each_web_sample_once(shared_data):
    """Cosmopedia maps over its web samples, one prompt each: without retrieval the peer reuses no extract
    while unused ones remain (it drew them with replacement, a reuse Cosmopedia does not have)."""
    diversity = _load(BENCH / "diversity.py")
    tax_path = shared_data / "sciphi_topics" / "tayn_evol_evol_grade_school.yaml.gz"
    recipe = diversity.load_recipe(diversity.ROOT / "recipes" / "phi15-textbooks.yaml", {
        "taxonomy.source": str(tax_path), "taxonomy.grow": None, "web_samples.retrieval": None,
        "output": "/tmp/textbookgen-bench-diversity"})
    web = diversity.WebSamples.from_texts(diversity.shared_texts(shared_data)[:400], source="shared")
    peer = diversity.cosmopedia_style(recipe, diversity.Taxonomy.load(tax_path), web, 300)
    used = peer["seed_extract_id"].drop_nulls()
    assert 0 < used.len() <= len(web) and used.n_unique() == used.len()


def test_diversity_last_line_names_each_figure_once():
    """The machine-readable last line parses into a dict without one run's figures overwriting another's."""
    diversity = _load(BENCH / "diversity.py")
    figures = {"topics_covered": 1.0, "distinct_4gram": 0.4, "seed_reuse": 2, "seeded": 10}
    res = {name: dict(figures) for name in ("web-seeded (ours)", "topic-only (ours)", "cosmopedia-style peer")}
    res["topic-only (ours)"]["topics_covered"] = 0.5
    pairs = [kv.split("=") for kv in diversity.summary_line(res).split()]
    assert all(len(p) == 2 for p in pairs) and len(dict(pairs)) == len(pairs) == 9
    assert dict(pairs)["topics_covered"] == "1.000" and dict(pairs)["topic_only_topics_covered"] == "0.500"


def test_curate_bench_small_runs_mix_every_source(shared_data):
    """`bench/curate.py --docs 300` measures the filters on Wikipedia, C4 and SciPhi alike, not on the first
    file alone."""
    df, sources = _load(BENCH / "curate.py").corpus(300)
    assert df.height == 300 and {s: sources.count(s) > 30 for s in set(sources)} == {
        "wikipedia": True, "c4": True, "sciphi": True}


def test_quality_bench_times_scoring_warm_and_interleaved():
    """Ours and the peer are scored alike: a warm-up each, then interleaved passes (not once each, cold, ours
    first, which put the page faults of loading on whichever ran first)."""
    quality = _load(BENCH / "quality.py")
    calls = []

    class Fake:
        def __init__(self, name):
            self.name = name

        def scores(self, texts, batch_size):
            calls.append((self.name, len(texts)))

    rates = quality.scoring_rates({"ours": Fake("ours"), "peer": Fake("peer")}, ["text"] * 1000, passes=2)
    assert set(rates) == {"ours", "peer"} and all(r > 0 for r in rates.values())
    assert calls == [("ours", 256), ("peer", 256)] + [("ours", 1000), ("peer", 1000)] * 2


def test_curate_bench_compares_with_the_filters_own_report(tmp_path, capsys):
    """The peer comparison reads our dropped.parquet as the filter writes it: the report gained a `row`
    column, and `dict(report.iter_rows())` then stopped the bench with a ValueError before its table."""
    curate = _load(BENCH / "curate.py")
    good = ("Photosynthesis is the process by which green plants use sunlight to make food from carbon dioxide "
            "and water. It takes place mostly in the leaves, where a pigment called chlorophyll captures the "
            "energy of light. The plant releases oxygen as a by-product, which is why forests are important for "
            "the air that we breathe. Students can observe this with a water plant placed in a bright window.")
    df = pl.DataFrame({"id": ["d0", "d1"], "text": ["too short", good]})
    report = curate.step_outputs(curate.HeuristicFilter(), df, "dropped.parquet")[2]
    assert "row" in report.columns
    peer = [None, None]  # the peer keeps both; ours drops d0
    assert curate.agreement(report, peer, df, ["c4", "c4"]) == 0.5
    assert "| too_short | kept | 1 | d0 (c4, 2 words)" in capsys.readouterr().out


def test_curate_bench_memory_of_a_quick_step_is_not_zero():
    """A step quicker than the sampler's 0.25 s period (decontamination of `--docs 300`) had no sample taken:
    its table row said 0 MiB peak PSS."""
    curate = _load(BENCH / "curate.py")
    run = curate.timed(lambda: None)
    assert run.peak_mb >= curate.pss_mb(os.getpid()) / 2 > 0
