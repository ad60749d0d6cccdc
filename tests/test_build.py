"""`textbookgen build`: plan mode without a key, byte-identical prompts, stage skipping, an end-to-end
build against the provider emulator, and a build killed mid-generation that resumes paying once."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from textbookgen.build import build, render_prompts
from textbookgen.recipe import load_recipe
from textbookgen.taxonomy import Taxonomy

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
CLI = [sys.executable, "-c", "from textbookgen.cli import app; app()"]
NO_KEYS = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")}


def prose_responder(body: dict) -> str:
    """Textbook-like prose for every prompt (the default responder answers 'N exercises' with a list)."""
    from textbookgen.testing.responder import prompt_text, prose, subject_of

    text = prompt_text(body.get("messages") or [], body.get("system"))
    seed = int(hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:8], 16)
    return prose(subject_of(text), 350, random.Random(seed))


def _cli(*args: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, env=env or NO_KEYS, cwd=ROOT, timeout=timeout
    )


def test_quickstart_without_a_key_plans_and_exits_0(tmp_path):
    out = tmp_path / "qs"
    res = _cli("build", str(QUICKSTART), "--set", f"output={out}")
    assert res.returncode == 0, res.stderr
    for needle in (
        "Plan for recipe 'quickstart'",
        "300 prompts",
        "Estimated cost",
        "gpt-4o-mini (recipe)",
        "claude-haiku-4-5",
        "Time: ~",
        "To run it for real",
        "export OPENAI_API_KEY",
    ):
        assert needle in res.stdout, needle
    prompts = pl.read_parquet(out / "prompts.parquet")
    assert prompts.height == 300 and prompts["index"].to_list() == list(range(300))
    plan = json.loads((out / "plan.json").read_text())
    assert plan["n_prompts"] == 300 and plan["input_tokens"] > 0 and plan["estimates"][0]["cost_usd"] > 0
    assert not (out / "journal.sqlite").exists()  # nothing was sent
    said = "".join(res.stdout.split())  # rich wraps long lines
    assert f"&&textbookgenbuildrecipes/quickstart.yaml--setoutput={out}" in said  # the command as given, to rerun


def test_plan_with_the_batch_api_costs_half(tmp_path):
    live = _cli("build", str(QUICKSTART), "--set", f"output={tmp_path / 'live'}")
    batch = _cli("build", str(QUICKSTART), "--set", f"output={tmp_path / 'batch'}", "--set", "provider.batch=true")
    assert live.returncode == batch.returncode == 0, batch.stderr
    assert "batch API for the documents" in batch.stdout and "24 h batch window" in batch.stdout
    costs = [json.loads((tmp_path / d / "plan.json").read_text())["estimates"][0]["cost_usd"] for d in ("live", "batch")]
    assert costs[1] == pytest.approx(costs[0] / 2)  # quickstart grows no taxonomy: every call is a document


def test_same_recipe_and_seed_give_byte_identical_prompts(tmp_path):
    paths = []
    for name, seed in (("a", 1234), ("b", 1234), ("c", 99)):
        r = load_recipe(QUICKSTART, {"output": str(tmp_path / name), "seed": seed})
        build(r, plan_only=True, progress=False)
        paths.append(tmp_path / name / "prompts.parquet")
    # and in a separate process with another hash seed (no dependence on set/dict iteration order)
    res = _cli(
        "plan", str(QUICKSTART), "--set", f"output={tmp_path / 'd'}", env={**NO_KEYS, "PYTHONHASHSEED": "7"}
    )
    assert res.returncode == 0, res.stderr
    a, b, c, d = (p.read_bytes() for p in [*paths, tmp_path / "d" / "prompts.parquet"])
    assert a == b == d
    pa, pc = pl.read_parquet(paths[0]), pl.read_parquet(paths[2])
    assert pa["prompt"].to_list() != pc["prompt"].to_list()
    # provenance: template hash and variables travel with every prompt
    prov = json.loads(pa["provenance"][0])
    assert (
        prov["template_hash"] == pa["template_hash"][0] and prov["variables"]["topic"] in pa["topic_path"][0]
    )


def test_prompts_follow_the_mix_and_cover_topics(tmp_path):
    r = load_recipe(QUICKSTART, {"output": str(tmp_path / "o")})
    tax = Taxonomy.load(r.taxonomy_path())
    from textbookgen.websamples import WebSamples

    web = WebSamples.load(r.resolve(r.web_samples.source), min_chars=r.web_samples.min_chars)
    df = render_prompts(r, tax, web)
    assert df["template"].value_counts().sort("template").to_dict(as_series=False) == {
        "template": ["exercises", "qa", "textbook_section"],
        "count": [64, 58, 178],  # drawn by weight per prompt: 60, 60, 180 expected
    }
    assert tax.coverage(df["topic_id"].to_list()).covered == 125  # every topic, at most 4 each
    assert df.group_by("topic_id").len()["len"].max() <= 4
    seeded = df["seed_extract_id"].is_not_null().sum()
    assert 180 < seeded < 240  # share 0.7 of 300
    assert df["request_seed"].n_unique() == 300


def test_web_source_unreachable_plans_topic_only(tmp_path):
    res = _cli(
        "build",
        str(QUICKSTART),
        "--set",
        f"output={tmp_path / 'o'}",
        "--set",
        "web_samples.source=http://127.0.0.1:9/web.jsonl",
    )
    assert res.returncode == 0, res.stderr
    assert "web samples unavailable" in res.stdout and "topic-only" in res.stdout
    prompts = pl.read_parquet(tmp_path / "o" / "prompts.parquet")
    assert prompts["seed_extract_id"].null_count() == 300


def test_benchmarks_that_cannot_be_loaded_stop_the_build_before_anything_is_paid(tmp_path, monkeypatch):
    from textbookgen.build import BuildError
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: the Hub is unreachable
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    hub = [{"name": "arc_easy", "path": "hf://allenai/ai2_arc"}]
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    local = [{"name": "arc_easy", "path": str(tmp_path / "broken.jsonl")}]
    with Emulator(EmulatorConfig(latency_median_s=0.005, responder=prose_responder)) as emu:
        over = {"output": str(tmp_path / "o"), "samples": 5, "provider.base_url": emu.openai_base_url}
        for bench, problem in ((hub, "the Hugging Face Hub is not reachable"), (local, "cannot be loaded")):
            r = load_recipe(QUICKSTART, {**over, "curation.decontamination.benchmarks": bench})
            with pytest.raises(BuildError, match=rf"curation\.decontamination\.benchmarks\[0\] .*{problem}"):
                build(r, progress=False)
        # growing the taxonomy is paid too: the benchmarks are read before its first request
        grow = {"output": str(tmp_path / "g"), "taxonomy.grow": {"target": 200}}
        r = load_recipe(QUICKSTART, {**over, **grow, "curation.decontamination.benchmarks": local})
        with pytest.raises(BuildError, match="cannot be loaded"):
            build(r, progress=False)
        assert emu.received == 0
    res = _cli("plan", str(QUICKSTART), "--set", f"output={tmp_path / 'p'}", "--set",
               "curation.decontamination.benchmarks=[{name: arc_easy, path: 'hf://allenai/ai2_arc'}]",
               env={**NO_KEYS, "HF_ENDPOINT": "http://127.0.0.1:9"})  # fmt: skip
    assert res.returncode == 0, res.stderr
    notes = json.loads((tmp_path / "p" / "plan.json").read_text())["notes"]
    expected = "benchmarks[0] (hf://allenai/ai2_arc): the Hugging Face Hub is not reachable"
    assert any(expected in n for n in notes)


def test_build_io_failures_are_one_line_errors(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from textbookgen.cli import app

    def offline(*args, **kwargs):
        raise ConnectionError("Max retries exceeded with url: /api/datasets")

    monkeypatch.setattr("textbookgen.build.Build.run", offline)
    res = CliRunner().invoke(app, ["build", str(QUICKSTART), "--set", f"output={tmp_path / 'o'}"])
    assert res.exit_code == 1
    assert "error: ConnectionError: Max retries exceeded" in res.output
    assert "rerun the same command" in res.output


@pytest.mark.parametrize(
    "name, data, problem",
    [
        ("empty.jsonl", b"", "no extract survived cleaning"),
        ("latin.jsonl", b'{"text": "caf\xe9"}\n', "not valid UTF-8"),
        ("broken.jsonl", b'{"text": "fine"}\n{broken\n', "broken.jsonl:2: invalid JSON"),
    ],
)
def test_local_web_samples_the_build_rejects_fail_validate_and_plan(tmp_path, name, data, problem):
    (tmp_path / name).write_bytes(data)
    sets = ["--set", f"web_samples.source={tmp_path / name}", "--set", f"output={tmp_path / 'o'}"]
    for command in ("validate", "plan"):
        res = _cli(command, str(QUICKSTART), *sets)
        # the recipe field that points at the file, as other recipe errors name theirs
        assert res.returncode == 1 and "error: --set web_samples.source: " in res.stderr, res.stderr
        assert problem in res.stderr
        assert "Traceback" not in res.stderr
    assert not (tmp_path / "o" / "prompts.parquet").exists()


def test_a_broken_taxonomy_file_names_the_recipe_line_and_field(tmp_path):
    """The taxonomy file's own line, and the recipe's line and field that point at it."""
    (tmp_path / "topics.yaml").write_text("Science:\n  - Physics\n  Chemistry: [\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nmodel: gpt-4o-mini\ntaxonomy:\n  source: topics.yaml\nmix: [{template: qa}]\nsamples: 5\n"
                      f"output: {tmp_path / 'o'}\n")
    for command in ("validate", "plan"):
        res = _cli(command, str(recipe))
        assert res.returncode == 1, res.stderr
        assert f"error: {recipe}:4: taxonomy.source: {tmp_path / 'topics.yaml'}:3: not valid YAML" in res.stderr


def test_an_output_folder_blocked_by_a_file_is_a_build_error(tmp_path):
    from textbookgen.build import BuildError

    r = load_recipe(QUICKSTART, {"output": str(tmp_path / "o")})
    (tmp_path / "o").write_text("a file appeared after the recipe was loaded")
    with pytest.raises(BuildError, match=rf"output: cannot create the output folder {tmp_path / 'o'}"):
        build(r, plan_only=True, progress=False)
    res = _cli("plan", str(QUICKSTART), "--set", f"output={tmp_path / 'o'}")
    assert res.returncode == 1 and res.stderr.startswith(f"error: --set output: {tmp_path / 'o'} cannot be")


def test_bad_recipe_exits_1_with_location(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text(QUICKSTART.read_text().replace("samples: 300", "samples: 300\nsampels: 2"))
    res = _cli("build", str(bad))
    assert res.returncode == 1 and f"{bad}:" in res.stderr and "sampels: unknown key" in res.stderr


def test_end_to_end_against_the_emulator_then_everything_is_skipped(tmp_path):
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    out = tmp_path / "qs"
    with Emulator(EmulatorConfig(latency_median_s=0.005, responder=prose_responder)) as emu:
        over = {
            "output": str(out),
            "samples": 30,
            "provider.base_url": emu.openai_base_url,
            "curation.filters.enabled": False,
        }
        res = build(load_recipe(QUICKSTART, over), progress=False)
        assert emu.billed == 30 and emu.duplicates == 0
        again = build(load_recipe(QUICKSTART, over), progress=False)
        assert emu.billed == 30  # nothing re-sent
    assert set(res.stages.values()) <= {"ran", "off"} and res.stages["generate"] == "ran"
    assert all(again.stages[s] == "skipped" for s in ("taxonomy", "prompts", "generate", "curate", "dataset"))
    docs = pl.read_parquet(out / "documents.parquet")
    assert docs.height == 30 and docs["id"].n_unique() == 30
    assert {
        "id",
        "text",
        "topic_path",
        "topic_id",
        "template",
        "template_hash",
        "audience",
        "style",
        "format",
        "seed_extract_id",
        "model",
        "finish_reason",
        "input_tokens",
        "output_tokens",
        "quality_score",
        "provenance",
    } == set(docs.columns)
    seeded = docs.filter(pl.col("seed_extract_id").is_not_null()).row(0, named=True)
    assert json.loads(seeded["provenance"])["variables"]["web_extract"] == seeded["seed_extract_id"]
    shards = list((out / "dataset" / "data").glob("train-*.parquet"))
    assert shards and (out / "dataset" / "README.md").is_file()
    m = json.loads((out / "manifest.json").read_text())
    assert m["recipe_hash"] and m["counts"]["ok"] == 30 and m["tokens"]["output"] > 0 and m["cost_usd"] > 0
    assert set(m["timings"]) >= {"taxonomy", "prompts", "generate", "curate", "dataset", "card"}
    assert m["templates"] and m["versions"]["textbookgen"] and m["curation"]
    assert "api_key" not in json.dumps(m).lower()
    # a changed curation setting reruns curation only
    with Emulator(EmulatorConfig(latency_median_s=0.005, responder=prose_responder)) as emu:
        over["provider.base_url"] = emu.openai_base_url
        over["curation.minhash.threshold"] = 0.9
        third = build(load_recipe(QUICKSTART, over), progress=False)
        assert emu.billed == 0
    assert third.stages["generate"] == "skipped" and third.stages["curate"] == "ran"


def test_curation_drops_documents_that_copy_their_web_seed(tmp_path, monkeypatch):
    """The model pastes its prompt's web extract into some answers: curation drops exactly those, checked
    against the extracts the prompts carried (no web source is read again). `action: flag` reruns
    curation alone and keeps them, counted."""
    from textbookgen import build as build_module
    from textbookgen.testing.emulator import Emulator, EmulatorConfig
    from textbookgen.testing.responder import seed_copying

    out = tmp_path / "qs"
    over = {"output": str(out), "samples": 30, "curation.filters.enabled": False}
    copying = seed_copying(prose_responder, 0.4)
    with Emulator(EmulatorConfig(latency_median_s=0.005, responder=copying)) as emu:
        over["provider.base_url"] = emu.openai_base_url
        res = build(load_recipe(QUICKSTART, over), progress=False)
    docs = pl.read_parquet(out / "documents.parquet")
    prompts = pl.read_parquet(out / "prompts.parquet").filter(pl.col("seed_extract_id").is_not_null())
    extract = {p["seed_extract_id"]: json.loads(p["provenance"])["variables"]["web_extract"]
               for p in prompts.iter_rows(named=True)}  # fmt: skip
    seeded = docs.filter(pl.col("seed_extract_id").is_not_null())
    copies = {d["id"] for d in seeded.iter_rows(named=True) if extract[d["seed_extract_id"]] in d["text"]}
    assert 0 < len(copies) < seeded.height
    stats = res.manifest["curation"]["seed_copy"]
    assert stats["checked"] == seeded.height and stats["dropped"] == {"seed_verbatim_run": len(copies)}
    assert set(docs["id"]) - set(pl.read_parquet(out / "dataset" / "data")["id"]) == copies
    row = f"| seed_copy | 30 | {30 - len(copies)} | {len(copies)} | seed_verbatim_run: {len(copies)} |"
    assert row in (out / "dataset" / "README.md").read_text()

    monkeypatch.setattr(build_module, "open_web_samples", lambda *a, **k: pytest.fail("web read again"))
    with Emulator(EmulatorConfig(latency_median_s=0.005, responder=prose_responder)) as emu:
        over.update({"provider.base_url": emu.openai_base_url, "curation.seed_copy.action": "flag"})
        flagged = build(load_recipe(QUICKSTART, over), progress=False)
        assert emu.billed == 0
    assert flagged.stages["generate"] == "skipped" and flagged.stages["curate"] == "ran"
    assert flagged.manifest["curation"]["seed_copy"]["flagged"] == len(copies)
    assert pl.read_parquet(out / "curated.parquet").height == docs.height


def test_raising_samples_pays_only_for_the_new_prompts(tmp_path):
    """Prompt i depends on (seed, i) only: samples 20 -> 30 re-renders the first 20 prompts byte for byte,
    the journal replays their answers, and the card's whole-build cost is the journal's total."""
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    out = tmp_path / "qs"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        QUICKSTART.read_text()
        .replace("card_template: ../datasets_cards", f"card_template: {ROOT / 'datasets_cards'}")
        .replace("source: data/", f"source: {QUICKSTART.parent / 'data'}/")
    )
    with Emulator(EmulatorConfig(latency_median_s=0.005, responder=prose_responder)) as emu:
        over = {"output": str(out), "provider.base_url": emu.openai_base_url}
        over["curation.filters.enabled"] = False
        build(load_recipe(recipe, {**over, "samples": 20}), progress=False)
        small = pl.read_parquet(out / "prompts.parquet")
        assert emu.billed == 20
        res = build(load_recipe(recipe, {**over, "samples": 30}), progress=False)
        assert emu.billed == 30 and emu.duplicates == 0  # 10 new requests, the first 20 replayed
    big = pl.read_parquet(out / "prompts.parquet")
    assert big.head(20).equals(small)
    summary = res.manifest["journal_summary"]
    assert summary["requests"] == 30 and summary["path"] == "journal.sqlite"  # no local path is published
    assert res.manifest["cost_usd"] == pytest.approx(summary["cost_usd"], abs=1e-6)
    row = f"| cost, generation journal (all runs of this build; journal_summary.json) | ${summary['cost_usd']:,.4f} |"
    assert row in (out / "dataset" / "README.md").read_text()


def _done_rows(journal: Path) -> int:
    try:
        with sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT COUNT(*) FROM requests WHERE status='ok'").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_build_killed_mid_generation_resumes_with_every_sample_once(tmp_path):
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    out, n = tmp_path / "qs", 60
    with Emulator(EmulatorConfig(latency_median_s=0.15, latency_sigma=0.3, responder=prose_responder)) as emu:
        args = [
            "build",
            str(QUICKSTART),
            "--no-progress",
            "--set",
            f"output={out}",
            "--set",
            f"samples={n}",
            "--set",
            f"provider.base_url={emu.openai_base_url}",
            "--set",
            "limits.concurrency=4",
            "--set",
            "curation.filters.enabled=false",
        ]
        proc = subprocess.Popen(
            [*CLI, *args], cwd=ROOT, env=NO_KEYS, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 120
        while _done_rows(out / "journal.sqlite") < 15 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, "the build finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        assert not (out / "documents.parquet").exists()
        first_billed = emu.billed
        assert 15 <= first_billed < n
        res = _cli(*args, timeout=300)
        assert res.returncode == 0, res.stderr
        assert f"built {n} documents, {n} kept by curation" in res.stdout
        assert "prompts: inputs unchanged, skipped" in res.stderr
        # Only requests on the wire at the kill can be paid twice (the provider bills abandoned calls).
        assert emu.duplicates <= 4
        assert len(emu.billed_keys) == n
    docs = pl.read_parquet(out / "documents.parquet")
    prompts = pl.read_parquet(out / "prompts.parquet")
    assert docs.height == n and docs["id"].n_unique() == n  # every sample exactly once
    assert sorted(json.loads(p)["prompt_index"] for p in docs["provenance"]) == prompts["index"].to_list()


def test_build_pushes_to_the_hub_in_one_commit(tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    from textbookgen.testing.emulator import Emulator, EmulatorConfig
    from textbookgen.testing.fakehub import FakeHub

    with FakeHub() as hub, Emulator(EmulatorConfig(latency_median_s=0.005, responder=prose_responder)) as emu:
        monkeypatch.setenv("HF_TOKEN", hub.token)
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        over = {
            "output": str(tmp_path / "qs"),
            "samples": 12,
            "provider.base_url": emu.openai_base_url,
            "curation.filters.enabled": False,
            "hub.repo_id": f"{hub.user}/textbooks-quickstart",
        }
        res = build(load_recipe(QUICKSTART, over), push=True, progress=False)
        again = build(load_recipe(QUICKSTART, over), push=True, progress=False)  # unchanged: same card
        api = HfApi(endpoint=hub.endpoint, token=hub.token)
        files = set(api.list_repo_files(f"{hub.user}/textbooks-quickstart", repo_type="dataset"))
        commits = api.list_repo_commits(f"{hub.user}/textbooks-quickstart", repo_type="dataset")
    assert res.stages["push"] == "ran" and res.manifest["hub"]["commit_url"]
    assert {"README.md", "manifest.json", "recipe.yaml"} <= files
    assert any(f.startswith("data/train-") and f.endswith(".parquet") for f in files)
    assert len(commits) == 2  # the repo's initial commit and ours; the unchanged rebuild added none
    assert (
        again.stages["generate"] == "skipped" and again.manifest["created_at"] == res.manifest["created_at"]
    )
    assert hub.token not in (tmp_path / "qs" / "manifest.json").read_text()


def test_build_decontaminates_against_a_benchmark_next_to_the_recipe(tmp_path, monkeypatch):
    """Benchmark paths in the recipe are relative to it; a document quoting an item is dropped. The
    benchmark is read once: the texts checked before generating are the ones curation uses."""
    from textbookgen.curation import decontaminate
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    loads = []
    load = decontaminate.load_benchmark_texts
    monkeypatch.setattr(decontaminate, "load_benchmark_texts", lambda src, *a: loads.append(src.path) or load(src, *a))

    item = (
        "A farmer has 17 sheep and all but 9 run away through a hole in the fence; how many sheep does the "
        "farmer have left standing in the field after the storm has passed?"
    )
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "riddles.jsonl").write_text(json.dumps({"question": item, "answer": "9"}) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        QUICKSTART.read_text()
        .replace(
            "source: data/seed_extracts.jsonl", f"source: {QUICKSTART.parent / 'data/seed_extracts.jsonl'}"
        )
        .replace("card_template: ../datasets_cards", f"card_template: {ROOT / 'datasets_cards'}")
        .replace("benchmarks: []", "benchmarks: [{path: bench/riddles.jsonl}]")
    )

    def leaky(body: dict) -> str:
        text = prose_responder(body)
        return text + "\n\nExercise: " + item if "Mathematics" in json.dumps(body) else text

    with Emulator(EmulatorConfig(latency_median_s=0.005, responder=leaky)) as emu:
        over = {"output": str(tmp_path / "o"), "samples": 40, "provider.base_url": emu.openai_base_url,
                "curation.filters.enabled": False}  # fmt: skip
        res = build(load_recipe(recipe, over), progress=False)
    docs = pl.read_parquet(tmp_path / "o" / "documents.parquet")
    curated = pl.read_parquet(tmp_path / "o" / "curated.parquet")
    leaked = docs.filter(pl.col("text").str.contains("17 sheep", literal=True)).height
    assert leaked > 0 and not curated["text"].str.contains("17 sheep", literal=True).any()
    assert curated.height == docs.height - leaked
    stage = next(v for k, v in res.manifest["curation"].items() if "decontam" in k)
    assert sum(stage["dropped"].values()) == leaked
    assert loads == [str(tmp_path / "bench" / "riddles.jsonl")]


ARC_QUESTION = "Which gas do green plants take in from the air to make their food during photosynthesis?"


@pytest.fixture()
def arc_on_the_hub(tmp_path, monkeypatch):
    """A fake Hub serving a one-item ARC-Easy as allenai/ai2_arc, which `datasets` reads (caching
    under tmp_path): `hf://allenai/ai2_arc` benchmarks load as from the real Hub."""
    datasets = pytest.importorskip("datasets")
    from huggingface_hub import CommitOperationAdd, HfApi, constants

    from textbookgen.testing.fakehub import FakeHub

    with FakeHub(orgs=("allenai",)) as hub:
        monkeypatch.setenv("HF_TOKEN", hub.token)
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
        resolve = hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", resolve)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
        monkeypatch.setattr(datasets.config, "HF_ENDPOINT", hub.endpoint)
        for name, sub in (("HF_DATASETS_CACHE", ""), ("DOWNLOADED_DATASETS_PATH", "downloads"),
                          ("EXTRACTED_DATASETS_PATH", "downloads/extracted")):  # fmt: skip
            monkeypatch.setattr(datasets.config, name, tmp_path / "hf" / "datasets" / sub)
        rows = pl.DataFrame({
            "id": ["arc-1"], "question": [ARC_QUESTION], "answerKey": ["B"],
            "choices": [{"text": ["oxygen", "carbon dioxide"], "label": ["A", "B"]}],
        })  # fmt: skip
        shard = tmp_path / "arc.parquet"
        rows.write_parquet(shard)
        readme = "---\nconfigs:\n- config_name: ARC-Easy\n  data_files: [{split: test, path: ARC-Easy/test-*}]\n---\n"
        api = HfApi(endpoint=hub.endpoint, token=hub.token)
        api.create_repo("allenai/ai2_arc", repo_type="dataset")
        api.create_commit("allenai/ai2_arc", [CommitOperationAdd("README.md", readme.encode()),
                          CommitOperationAdd("ARC-Easy/test-00000-of-00001.parquet", shard)],
                          commit_message="ARC-Easy", repo_type="dataset")  # fmt: skip
        yield hub


def test_a_rerun_needs_hub_benchmarks_only_where_curation_runs_again(tmp_path, monkeypatch, arc_on_the_hub):
    """Benchmarks are loaded when first needed (before the first paid request, or before curation): a
    rerun whose stages are all current builds offline; one that must curate again stops before
    anything else, the paid documents kept."""
    from textbookgen.build import BuildError
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    def leaky(body: dict) -> str:
        text = prose_responder(body)
        return text + "\n\nExercise: " + ARC_QUESTION if "Mathematics" in json.dumps(body) else text

    out = tmp_path / "o"
    over = {"output": str(out), "samples": 40, "curation.filters.enabled": False,
            "curation.decontamination.benchmarks": [{"name": "arc_easy", "path": "hf://allenai/ai2_arc"}]}  # fmt: skip
    with Emulator(EmulatorConfig(latency_median_s=0.005, responder=leaky)) as emu:
        first = build(load_recipe(QUICKSTART, {**over, "provider.base_url": emu.openai_base_url}), progress=False)
    stage = next(v for k, v in first.manifest["curation"].items() if "decontam" in k)
    assert stage["dropped"]["arc_easy"] > 0  # the Hub's item reached curation
    documents = (out / "documents.parquet").read_bytes()

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # offline from now on: nothing listens
    with Emulator(EmulatorConfig(latency_median_s=0.005, responder=leaky)) as emu:
        over["provider.base_url"] = emu.openai_base_url
        again = build(load_recipe(QUICKSTART, over), progress=False)
        assert all(again.stages[s] == "skipped" for s in ("taxonomy", "prompts", "generate", "curate", "dataset"))
        over["curation.minhash.threshold"] = 0.9  # curation runs again, so it needs the benchmark
        with pytest.raises(BuildError, match=r"benchmarks\[0\] \(hf://allenai/ai2_arc\): the Hugging Face Hub"):
            build(load_recipe(QUICKSTART, over), progress=False)
        assert emu.received == 0
    assert (out / "documents.parquet").read_bytes() == documents


def test_build_with_anthropic_and_a_system_prompt(tmp_path):
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    with Emulator(
        EmulatorConfig(latency_median_s=0.005, responder=prose_responder, record_requests=True)
    ) as emu:
        over = {"output": str(tmp_path / "a"), "samples": 6, "provider.name": "anthropic",
                "provider.base_url": emu.anthropic_base_url, "model": "claude-haiku-4-5",
                "system": "You write careful textbooks.", "curation.filters.enabled": False}  # fmt: skip
        res = build(load_recipe(QUICKSTART, over), progress=False)
        bodies = [r["body"] for r in emu.requests]
    assert res.manifest["counts"]["ok"] == 6 and res.manifest["model"] == "claude-haiku-4-5"
    assert all(b.get("system") == "You write careful textbooks." for b in bodies) and len(bodies) == 6
    assert all(b.get("top_p") is None for b in bodies)  # Claude 4.5 models refuse temperature with top_p
    docs = pl.read_parquet(tmp_path / "a" / "documents.parquet")
    assert docs["model"].unique().to_list() == ["claude-haiku-4-5"]


def test_build_through_the_batch_api_records_it_in_manifest_and_card(tmp_path):
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    with Emulator(EmulatorConfig(batch_latency_s=0.05, responder=prose_responder)) as emu:
        over = {"output": str(tmp_path / "b"), "samples": 8, "provider.name": "anthropic",
                "provider.base_url": emu.anthropic_base_url, "model": "claude-haiku-4-5", "provider.batch": True,
                "provider.batch_poll_s": 0.05, "curation.filters.enabled": False}  # fmt: skip
        res = build(load_recipe(QUICKSTART, over), progress=False)
        assert emu.stats()["batch_requests"] == 8 and emu.duplicates == 0
    assert res.manifest["counts"]["ok"] == 8 and res.manifest["api"] == "batch"
    card = (tmp_path / "b" / "dataset" / "README.md").read_text()
    assert "| API | the provider's batch API (half the list price) |" in card


def test_a_recipe_without_card_template_gets_the_base_card(tmp_path):
    """The dataset folder always has its card: without `card_template` the base one every card extends."""
    from huggingface_hub import DatasetCard

    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    with Emulator(EmulatorConfig(latency_median_s=0.005, responder=prose_responder)) as emu:
        over = {"output": str(tmp_path / "c"), "samples": 4, "provider.base_url": emu.openai_base_url,
                "card_template": None, "curation.filters.enabled": False}  # fmt: skip
        res = build(load_recipe(QUICKSTART, over), progress=False)
    assert res.stages["card"] == "ran" and not any("card" in note for note in res.manifest.get("notes", []))
    card = DatasetCard.load(tmp_path / "c" / "dataset" / "README.md", ignore_metadata_errors=False)
    assert card.data.configs and "## Limitations" in card.text


def test_one_build_per_output_folder(tmp_path):
    import fcntl

    from textbookgen.build import BuildError

    r = load_recipe(QUICKSTART, {"output": str(tmp_path / "o")})
    (tmp_path / "o" / ".build").mkdir(parents=True)
    with open(tmp_path / "o" / ".build" / "lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(BuildError, match="another build is running"):
            build(r, plan_only=True, progress=False)
    assert build(r, plan_only=True, progress=False).planned  # released: runs


def test_plan_time_is_never_below_one_request():
    from textbookgen.plan import estimate_time

    limits = {"rpm": None, "input_tpm": None, "output_tpm": None, "concurrency": 64}
    one_wave, _ = estimate_time(3, 300, 3 * 600, **limits)  # 1 s to the first token + 600 tokens at 60/s
    assert one_wave == pytest.approx(11.0)
    assert estimate_time(65, 300, 65 * 600, **limits)[0] == pytest.approx(22.0)  # two waves


def test_plan_prices_growth_on_the_grow_model_and_its_worst_case_at_max_tokens():
    from textbookgen.build import PROMPT_SCHEMA, estimate_grow
    from textbookgen.plan import make_plan
    from textbookgen.pricing import estimate_cost

    no_prompts = pl.DataFrame([], schema=PROMPT_SCHEMA)  # only the growth is priced
    r = load_recipe(ROOT / "recipes" / "phi15-textbooks.yaml", {"taxonomy.grow.model": "claude-sonnet-4-5"})
    g = estimate_grow(125, r.taxonomy.grow)
    assert g["output_tokens_max"] == g["calls"] * r.taxonomy.grow.max_tokens
    plan = make_plan(no_prompts, r, n_leaves=125, expected_tokens={}, grow=g)
    expected = estimate_cost("claude-sonnet-4-5", g["input_tokens"], g["output_tokens"])
    worst = estimate_cost("claude-sonnet-4-5", g["input_tokens"], g["output_tokens_max"])
    assert all(e.cost_usd == pytest.approx(expected) for e in plan.estimates)  # whoever writes the documents
    assert all(e.cost_usd_max == pytest.approx(worst) for e in plan.estimates)
    # without taxonomy.grow.model, growth runs on each row's own model
    r = load_recipe(ROOT / "recipes" / "phi15-textbooks.yaml")
    plan = make_plan(no_prompts, r, n_leaves=125, expected_tokens={}, grow=g)
    assert [e.cost_usd for e in plan.estimates] == pytest.approx(
        [estimate_cost(e.model, g["input_tokens"], g["output_tokens"]) for e in plan.estimates]
    )


@pytest.mark.parametrize("source, target", [("commonsense", 900), ("python", 2000), ("stories", 300)])
def test_grow_estimate_covers_the_input_tokens_grow_sends(source, target):
    """The plan's input tokens for growth come from the real grow prompt, so they are not short of
    what the provider bills (and not far over)."""
    from textbookgen.build import estimate_grow
    from textbookgen.engine import Generator
    from textbookgen.recipe import GrowConfig
    from textbookgen.taxonomy import grow
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    tax = Taxonomy.load(ROOT / "textbookgen" / "topics" / f"{source}.yaml")
    est = estimate_grow(len(tax.leaves()), GrowConfig(target=target))
    with Emulator(EmulatorConfig(latency_median_s=0.0005)) as emu:
        gen = Generator(provider="openai", model="m", base_url=emu.openai_base_url, api_key="k", progress=False)
        grow(tax, gen, target, seed=1)
    assert emu.input_tokens * 0.97 <= est["input_tokens"] <= emu.input_tokens * 1.35


def test_the_budget_covers_the_whole_build_across_stages_and_reruns(tmp_path):
    """The budget is one for taxonomy growth and the documents, over every run in the output folder: the
    journals say what was paid, and each stage gets only what is left."""
    from textbookgen.build import BuildError, journal_spend
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    # max_tokens small enough that one request fits the budgets below (else the recipe is refused as it loads)
    over = {"samples": 12, "taxonomy.grow": {"target": 200, "max_tokens": 256}, "sampling.max_tokens": 256,
            "taxonomy.max_per_topic": None, "limits.concurrency": 2, "curation.filters.enabled": False,
            "budget.max_cost_usd": None}  # fmt: skip

    def spent(out: Path) -> tuple[tuple[float, int], tuple[float, int]]:
        return journal_spend(out / ".build" / "grow.sqlite"), journal_spend(out / "journal.sqlite")

    def paid(out: Path) -> float:
        return sum(usd for usd, _ in spent(out))

    with Emulator(EmulatorConfig(latency_median_s=0.002)) as emu:
        over["provider.base_url"] = emu.openai_base_url
        free = build(load_recipe(QUICKSTART, {**over, "output": str(tmp_path / "free")}), progress=False)
        (grow_usd, grow_out), (docs_usd, _) = spent(tmp_path / "free")
        state = json.loads((tmp_path / "free" / ".build" / "state.json").read_text())
        assert state["taxonomy"]["stats"]["grow"]["cost_usd"] == pytest.approx(grow_usd)
        assert free.manifest["build_cost_usd"] == pytest.approx(
            {"taxonomy": grow_usd, "generate": docs_usd, "total": grow_usd + docs_usd}
        )
        # enough for the growth and half the documents: the documents get what the growth left
        budget = grow_usd + docs_usd / 2
        out = tmp_path / "half"
        recipe = load_recipe(QUICKSTART, {**over, "output": str(out), "budget.max_cost_usd": budget})
        res = build(recipe, progress=False)
        assert 0 < res.manifest["counts"]["skipped_budget"] < 12
        assert any("a budget of the whole build" in n for n in res.manifest["notes"])
        assert paid(out) <= grow_usd + 0.75 * docs_usd
        billed = emu.billed
        build(recipe, progress=False)  # a rerun: what the first run paid counts
        assert emu.billed - billed <= 1 and paid(out) <= grow_usd + 0.75 * docs_usd
        # less than the growth needs: the build stops there, before any document
        for budget, name in ({"budget.max_cost_usd": grow_usd / 2}, "max_cost_usd"), (
            {"budget.max_output_tokens": grow_out // 2}, "max_output_tokens"
        ):
            out = tmp_path / name
            recipe = load_recipe(QUICKSTART, {**over, "output": str(out), **budget})
            with pytest.raises(BuildError, match=f"budget.{name} .* whole build .* reached while growing"):
                build(recipe, progress=False)
            assert not (out / "journal.sqlite").exists()
            assert paid(out) < grow_usd and spent(out)[0][1] < grow_out


def test_refused_requests_are_replayed_until_the_build_runs_with_retry_failed(tmp_path):
    from typer.testing import CliRunner

    from textbookgen.build import BuildError
    from textbookgen.cli import app
    from textbookgen.testing.emulator import Emulator, EmulatorConfig, Fault

    sets = {"output": str(tmp_path / "o"), "samples": 6, "curation.filters.enabled": False}
    refusing = EmulatorConfig(latency_median_s=0.002, responder=prose_responder, faults=[Fault("400", rate=1.0)])
    with Emulator(refusing) as emu:
        with pytest.raises(BuildError, match=r"6 request\(s\) failed \(6 bad_request.*--retry-failed"):
            build(load_recipe(QUICKSTART, {**sets, "provider.base_url": emu.openai_base_url}), progress=False)
    with Emulator(EmulatorConfig(latency_median_s=0.002, responder=prose_responder)) as emu:
        sets["provider.base_url"] = emu.openai_base_url
        with pytest.raises(BuildError, match="no request gave a document"):
            build(load_recipe(QUICKSTART, sets), progress=False)
        assert emu.received == 0  # a plain rerun replays the refusals from the journal
        res = CliRunner().invoke(app, ["build", str(QUICKSTART), "--retry-failed", "--no-progress",
                                       *(f"--set={k}={v}" for k, v in sets.items())])  # fmt: skip
        assert res.exit_code == 0, res.output
        assert emu.billed == 6 and "built 6 documents" in res.output


def test_engine_knobs_of_the_recipe_reach_the_generator(tmp_path):
    from textbookgen.build import Build

    sets = {"output": str(tmp_path / "o"), "provider.timeout_s": 600, "provider.max_attempts": 3,
            "limits.tpm": 200_000}  # fmt: skip
    gen = Build(load_recipe(QUICKSTART, sets), retry_failed=True)._generator(tmp_path / "j.sqlite").gen
    assert (gen.timeout_s, gen.max_attempts, gen.limits.tpm, gen.retry_failed) == (600, 3, 200_000, True)


def test_plan_says_the_budget_is_for_the_whole_build_and_notes_refused_sampling(tmp_path):
    res = _cli("plan", str(QUICKSTART), "--set", f"output={tmp_path / 'o'}", "--set", "limits.tpm=5000",
               "--set", "provider.name=anthropic", "--set", "model=claude-sonnet-4-5", "--set", "sampling.top_p=0.9")  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = " ".join(res.stdout.split())  # rich wraps long lines
    assert "budget.max_cost_usd $2.00 covers the whole build" in out
    assert "bound by 5000 tokens/min" in out
    assert "Note: sampling: temperature and top_p are both set" in out
    plan = json.loads((tmp_path / "o" / "plan.json").read_text())
    assert plan["budget_usd"] == 2.0 and plan["spent_usd"] == 0


def test_plan_time_counts_a_combined_token_limit():
    from textbookgen.plan import estimate_time

    seconds, basis = estimate_time(10, 30_000, 30_000, rpm=None, input_tpm=None, output_tpm=None, concurrency=64,
                                   tpm=6_000)  # fmt: skip
    assert seconds == pytest.approx(600.0) and basis == "6000 tokens/min"


def test_without_a_card_template_anywhere_the_build_writes_no_card_but_finishes(tmp_path, monkeypatch):
    """A broken install without the card templates (datasets_cards/) builds as before, cardless."""
    import textbookgen.card as card
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    monkeypatch.setattr(card, "BASE_TEMPLATE", tmp_path / "nowhere" / "_base.md")
    with Emulator(EmulatorConfig(latency_median_s=0.005, responder=prose_responder)) as emu:
        over = {"output": str(tmp_path / "c"), "samples": 4, "provider.base_url": emu.openai_base_url,
                "card_template": None, "curation.filters.enabled": False}  # fmt: skip
        res = build(load_recipe(QUICKSTART, over), progress=False)
    assert res.stages["dataset"] == "ran" and not (tmp_path / "c" / "dataset" / "README.md").exists()


def test_a_dollar_budget_stops_a_self_hosted_model_at_the_price_the_recipe_or_command_line_gives(tmp_path):
    """A model with no list price used to count as $0, so `budget.max_cost_usd` never stopped it; nothing in a
    recipe could price it and `build --price` did not exist."""
    from typer.testing import CliRunner

    from textbookgen.cli import app
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    with Emulator(EmulatorConfig(latency_median_s=0.002, responder=prose_responder)) as emu:
        sets = {"model": "my/llm", "provider.name": "openai-compatible", "provider.base_url": emu.openai_base_url,
                "samples": 12, "web_samples": None, "limits.concurrency": 1, "sampling.max_tokens": 1000,
                "budget.max_cost_usd": 0.2}  # fmt: skip
        # $100 per 1M output tokens: a request is at most $0.10 and answers cost about half, so a few fit in $0.20
        recipe = load_recipe(QUICKSTART, {**sets, "output": str(tmp_path / "r")}, prices={"my/llm": (1.0, 100.0)})
        res = build(recipe, progress=False)
        assert res.unfinished == "budget" and 0 < res.manifest["counts"]["ok"] < 12
        assert res.manifest["cost_usd"] <= 0.2 and res.manifest["prices"] == {
            "my/llm": {"input_per_mtok": 1.0, "output_per_mtok": 100.0}}
        cli = ["build", str(QUICKSTART), "--no-progress", "--price", "my/llm=1,100",
               *(f"--set={k}={_yaml(v)}" for k, v in {**sets, "output": tmp_path / "c"}.items())]
        out = CliRunner().invoke(app, cli)
        assert out.exit_code == 4 and "budget.max_cost_usd $0.2 (" in out.output, out.output
        sent = emu.received
        free = CliRunner().invoke(app, [*cli[:2], *cli[5:], "--set", f"output={tmp_path / 'f'}"])  # unpriced: $0
        assert free.exit_code == 1 and "budget.max_cost_usd: my/llm (model) has no price" in free.output, free.output
        assert emu.received == sent  # refused before any request


def test_a_key_variable_the_recipe_names_but_is_not_set_stops_the_build_before_a_request(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from textbookgen.cli import app
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    monkeypatch.delenv("VLLM_KEY", raising=False)
    with Emulator(EmulatorConfig(latency_median_s=0.002, api_keys={"secret"})) as emu:
        sets = {"provider.name": "openai-compatible", "provider.base_url": emu.openai_base_url,
                "provider.api_key_env": "VLLM_KEY", "samples": 3, "web_samples": None, "output": tmp_path / "o"}
        cli = ["build", str(QUICKSTART), "--no-progress", *(f"--set={k}={_yaml(v)}" for k, v in sets.items())]
        res = CliRunner().invoke(app, cli)
        assert res.exit_code == 1 and res.output.rstrip().endswith("error: $VLLM_KEY (provider.api_key_env) is not set")
        assert emu.received == 0 and "authentication" not in res.output
        monkeypatch.setenv("VLLM_KEY", "secret")
        assert CliRunner().invoke(app, cli).exit_code == 0 and emu.billed == 3


def test_a_max_tokens_over_the_output_token_budget_is_refused_before_the_build_not_reported_as_reached(tmp_path):
    res = _cli("build", str(QUICKSTART), "--set", f"output={tmp_path / 'o'}", "--set", "budget.max_output_tokens=2000",
               "--set", "sampling.max_tokens=10000000", "--set", "provider.base_url=http://127.0.0.1:9/v1")
    assert res.returncode == 1, res.stderr
    assert res.stderr.startswith("error: --set sampling.max_tokens: max_tokens 10,000,000 is over "
                                 "budget.max_output_tokens 2,000: no single request can fit the budget")
    assert not (tmp_path / "o").exists()


def _yaml(value: object) -> str:
    """A `--set` value as the command line takes it (YAML): None is `null`."""
    return "null" if value is None else str(value)
