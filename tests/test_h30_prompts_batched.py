"""The prompts stage renders and writes prompts.parquet a batch at a time, and the plan reads it a window at a
time: the same rows and plan figures as the committed code's whole-frame render (golden values below were computed
with it: `git archive HEAD`, the same recipe), the bytes of the whole frame written at once, with no more than a batch
of rendered rows held."""

from __future__ import annotations

import hashlib
import json
import shutil
import weakref
from pathlib import Path

import polars as pl
import pytest

from textbookgen import build as build_module
from textbookgen import parquet_rows
from textbookgen import plan as plan_module
from textbookgen.build import build, path_hash, render_prompts
from textbookgen.parquet_rows import write_rows
from textbookgen.recipe import load_recipe
from textbookgen.taxonomy import Taxonomy

ROOT = Path(__file__).resolve().parents[1]
# The committed code's figures for `_recipe` (120 prompts over 3 topics x 2 cells, 5% with an extract: topic-only
# tries repeat, so 61 prompts skip to a try with an extract and 55 keep a repeat once MAX_SKIPS run out).
ROWS_DIGEST = "8087690304647152"
PLAN = {
    "n_prompts": 120, "input_tokens": 26232, "input_tokens_max": 34364, "output_tokens_expected": 84000,
    "output_tokens_max": 144000, "with_web_extract": 59, "per_template": {"qa": 120},
    "per_audience": {"general": 55, "high_school": 65}, "per_subject": {"Biology": 40, "Chemistry": 40, "Physics": 40},
    "top_topics": [["Biology", 40], ["Chemistry", 40], ["Physics", 40]], "topics_used": 3,
    "diversity": {"distinct_4grams": 0.1512651947407591, "duplicate_prompt_rate": 0.4583333333333333,
                  "duplicate_prompts": 55, "ngram_sample": 120, "per_topic_max": 40, "per_topic_min": 40,
                  "repeated_cell_rate": 0.95, "repeated_cells": 114},
}
OVER_BUDGET = ("budget.max_cost_usd $0.0004: 40 request(s) cost more than that at worst (prompt and max_tokens at "
               "gpt-4o-mini's price, up to $0.000429)")
COVERAGE = {"covered": 3, "max_per_topic": 40, "min_per_topic": 40, "n_leaves": 3, "n_samples": 120,
            "per_subject": {"Biology": 40, "Chemistry": 40, "Physics": 40}, "share": 1.0, "unknown": 0}


def _recipe(tmp_path: Path):
    """A recipe with web samples whose prompts repeat: few topics and cells, a small extract share."""
    (tmp_path / "topics.txt").write_text("Physics\nChemistry\nBiology\n")
    shutil.copy(ROOT / "recipes" / "data" / "seed_extracts.jsonl", tmp_path / "extracts.jsonl")
    (tmp_path / "r.yaml").write_text(
        "name: dups\nmodel: gpt-4o-mini\nsamples: 120\nseed: 7\ntaxonomy: {source: topics.txt}\n"
        "web_samples: {source: extracts.jsonl, min_chars: 150, share: 0.05}\n"
        "mix: [{template: qa, audiences: {general: 1, high_school: 1}, styles: {conversational: 1}}]\n"
        "budget: {max_cost_usd: 0.0004}\n"
    )
    return load_recipe(tmp_path / "r.yaml", {"output": str(tmp_path / "o")}, prices={"gpt-4o-mini": (1.0, 0.1)})


@pytest.fixture
def small_batches(monkeypatch):
    """Batches, plan windows and the seen set's newest part far smaller than the build."""
    monkeypatch.setattr(build_module, "PROMPT_BATCH", 7)
    monkeypatch.setattr(plan_module, "PLAN_WINDOW", 5)
    monkeypatch.setattr(build_module._SeenPrompts, "NEWEST", 4)


def test_prompts_and_plan_rendered_in_small_batches_are_the_committed_ones(tmp_path, small_batches):
    r = _recipe(tmp_path)
    res = build(r, plan_only=True, progress=False)
    path = tmp_path / "o" / "prompts.parquet"
    df = pl.read_parquet(path)
    assert hashlib.sha256(json.dumps(df.drop("provenance").rows()).encode()).hexdigest()[:16] == ROWS_DIGEST
    whole = tmp_path / "whole.parquet"  # the whole frame, written at once
    frame = render_prompts(r, Taxonomy.load(r.taxonomy_path()), build_module.open_web_samples(r))
    write_rows([frame], whole, build_module.PROMPT_SCHEMA)
    assert path.read_bytes() == whole.read_bytes()
    assert json.loads((tmp_path / "o" / ".build" / "state.json").read_text())["prompts"]["outputs"] == {
        "prompts.parquet": path_hash(whole)
    }
    plan = json.loads((tmp_path / "o" / "plan.json").read_text())
    assert {k: plan[k] for k in PLAN} == PLAN
    assert plan["notes"][-1].startswith(OVER_BUDGET)
    prompts = res.manifest["prompts"]
    assert (prompts["count"], prompts["with_web_extract"]) == (120, 59)
    assert prompts["prompt_coverage"] == COVERAGE and prompts["diversity"] == PLAN["diversity"]


def test_a_rerun_of_an_unchanged_plan_skips_the_prompts_stage(tmp_path, small_batches, monkeypatch):
    r = _recipe(tmp_path)
    build(r, plan_only=True, progress=False)
    path = tmp_path / "o" / "prompts.parquet"
    before, plan = path.read_bytes(), (tmp_path / "o" / "plan.json").read_text()
    monkeypatch.setattr(build_module, "PROMPT_BATCH", 11)  # another batch size: the same file, so still current
    again = build(r, plan_only=True, progress=False)
    assert again.stages["prompts"] == "skipped"
    assert path.read_bytes() == before and (tmp_path / "o" / "plan.json").read_text() == plan


def test_the_file_s_row_groups_do_not_follow_the_batches(tmp_path, monkeypatch):
    """Row groups of ROW_GROUP_ROWS rows whatever the batch: a file of several groups has the same bytes."""
    r = _recipe(tmp_path)
    tax, web = Taxonomy.load(r.taxonomy_path()), build_module.open_web_samples(r)
    monkeypatch.setattr(parquet_rows, "ROW_GROUP_ROWS", 25)
    files = []
    for batch in (7, 50, 1000):
        monkeypatch.setattr(build_module, "PROMPT_BATCH", batch)
        files.append(tmp_path / f"b{batch}.parquet")
        assert build_module.write_prompts(r, tax, web, files[-1]) == 120
    assert files[0].read_bytes() == files[1].read_bytes() == files[2].read_bytes()
    assert pl.read_parquet(files[0]).equals(render_prompts(r, tax, web))


def test_the_prompts_stage_holds_no_more_than_a_batch_of_rendered_rows(tmp_path, monkeypatch):
    """Each rendered row is watched (a weak reference): never more than PROMPT_BATCH of them alive at once. The
    committed stage kept all 120 in a list, then in one frame."""

    class Row(dict):
        """A prompt's row that a weak reference can watch."""

    monkeypatch.setattr(build_module, "PROMPT_BATCH", 7, raising=False)
    alive, most = [0], [0]
    real = build_module._prompt_row

    def gone() -> None:
        alive[0] -= 1

    def watched(*args, **kwargs):
        row = Row(real(*args, **kwargs))
        weakref.finalize(row, gone)
        alive[0] += 1
        most[0] = max(most[0], alive[0])
        return row

    monkeypatch.setattr(build_module, "_prompt_row", watched)
    build(_recipe(tmp_path), plan_only=True, progress=False)
    assert pl.read_parquet(tmp_path / "o" / "prompts.parquet").height == 120
    assert most[0] <= 7, most[0]


def test_the_seen_prompts_answer_as_a_set_of_the_texts_does(monkeypatch):
    """Digests in a few sorted runs: every text added is found, none other is, across the runs' merges."""
    monkeypatch.setattr(build_module._SeenPrompts, "NEWEST", 8)
    seen = build_module._SeenPrompts()
    texts = [f"Write about topic {i} for a general audience." for i in range(300)]
    for i, text in enumerate(texts):
        assert text not in seen
        seen.add(text)
        assert all(t in seen for t in texts[: i + 1 : 7])
    assert all(t in seen for t in texts) and not any(f"{t} " in seen for t in texts)
    assert len(seen._runs) <= 6  # 300 / 8 runs merged as a binary counter: at most log2(37) + 1


def test_a_plan_on_an_output_folder_reads_its_prompts_a_window_at_a_time(tmp_path, monkeypatch):
    """The plan's token counts and journal look-ups take PLAN_WINDOW prompts at a time (the committed plan took all
    20 at once), and say what they said: 12 answered by the journal, 8 new."""
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    over = {"output": str(tmp_path / "o"), "samples": 12, "web_samples": None}
    with Emulator(EmulatorConfig(latency_median_s=0.002)) as emu:
        build(load_recipe(ROOT / "recipes" / "quickstart.yaml", {**over, "provider.base_url": emu.openai_base_url}),
              progress=False, push=False)
    monkeypatch.setattr(plan_module, "PLAN_WINDOW", 5, raising=False)
    heights: list[int] = []
    for module, name in ((plan_module, "_request_tokens"), (build_module, "document_requests")):
        real = getattr(module, name)

        def seen(prompts, *args, _real=real, **kwargs):
            heights.append(prompts.height)
            return _real(prompts, *args, **kwargs)

        monkeypatch.setattr(module, name, seen)
    plan = build(load_recipe(ROOT / "recipes" / "quickstart.yaml", {**over, "samples": 20}), plan_only=True,
                 progress=False).plan
    assert plan.journal is not None and (plan.journal["answered"], plan.journal["new"]) == (12, 8)
    assert plan.n_prompts == 20 and heights and max(heights) <= 5, heights


CTRL_C = """
import os, signal, sys
from pathlib import Path
from textbookgen import build as B
from textbookgen.recipe import load_recipe
from textbookgen.taxonomy import Taxonomy

r = load_recipe(Path(sys.argv[2]), {"samples": 20000, "taxonomy.max_per_topic": None, "output": sys.argv[1]})
tax, web = Taxonomy.load(r.taxonomy_path()), B.open_web_samples(r)
rows, real = [0], B._prompt_row

def row(*a, **k):  # Ctrl-C as the 100th prompt is rendered
    rows[0] += 1
    if rows[0] == 100:
        os.kill(os.getpid(), signal.SIGINT)
    return real(*a, **k)

B._prompt_row = row
try:
    B.write_prompts(r, tax, web, Path(sys.argv[1]) / "prompts.parquet")
except KeyboardInterrupt:
    print("rendered after Ctrl-C:", rows[0] - 100)
    print("left:", sorted(p.name for p in Path(sys.argv[1]).iterdir()))
"""


def test_ctrl_c_while_the_prompts_are_written_stops_at_once_leaving_nothing(tmp_path):
    """Rendering runs on the main thread (a polars IO source ran it on a thread of its own: Ctrl-C waited for the
    batch, seconds, then a stray 'Exception ignored in: <generator ...>' traceback): no prompt rendered after it,
    no partial file left."""
    import signal
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-c", CTRL_C, str(tmp_path), str(ROOT / "recipes" / "quickstart.yaml")],
                       capture_output=True, text=True, timeout=300,
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert "left: []" in p.stdout, p.stdout + p.stderr
    assert "Exception ignored" not in p.stderr, p.stderr
    assert int(p.stdout.split("rendered after Ctrl-C:")[1].split()[0]) <= 1, p.stdout
