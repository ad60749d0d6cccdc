"""What a build publishes (recipe.yaml, manifest.json, the card, every row's provenance) holds no absolute path of
the machine that built it (a home folder, a user name): a local file is named relative to the recipe's folder,
or by its file name where it was outside it, and the published recipe validates again once its files are
placed beside it."""

from __future__ import annotations

import shutil
import subprocess
import sys

import polars as pl
import yaml
from test_build import QUICKSTART, prose_responder

from textbookgen.build import build
from textbookgen.recipe import load_recipe
from textbookgen.templates import BUILTIN_DIR

CLI = [sys.executable, "-c", "from textbookgen.cli import app; app()"]


def test_a_build_publishes_no_absolute_local_path(tmp_path):
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    home = tmp_path / "home" / "alice"  # stands for the user's folders, outside the recipe's
    (home / "data").mkdir(parents=True)
    shutil.copy(QUICKSTART.parent / "data" / "seed_extracts.jsonl", home / "data" / "extracts.jsonl")
    (home / "data" / "topics.txt").write_text("Physics\nChemistry\nBiology\n")
    project = tmp_path / "project"
    (project / "templates").mkdir(parents=True)
    shutil.copy(BUILTIN_DIR / "qa.j2", project / "templates" / "ask.j2")
    recipe = project / "r.yaml"
    recipe.write_text(
        "name: portable\nmodel: gpt-4o-mini\nsamples: 6\n"
        f"taxonomy: {{source: {home / 'data' / 'topics.txt'}}}\n"
        f"web_samples: {{source: {home / 'data' / 'extracts.jsonl'}, min_chars: 150, share: 0.5}}\n"
        f"mix: [{{template: {project / 'templates' / 'ask.j2'}}}]\n"
        "curation: {filters: {enabled: false}}\n"
    )
    with Emulator(EmulatorConfig(latency_median_s=0.002, responder=prose_responder)) as emu:
        over = {"output": str(home / "runs" / "portable"), "provider.base_url": emu.openai_base_url}
        build(load_recipe(recipe, over), progress=False)
    dataset = home / "runs" / "portable" / "dataset"
    published = {p.name: p.read_text() for p in dataset.glob("*") if p.suffix in (".md", ".json", ".yaml")}
    rows = pl.read_parquet(dataset / "data" / "train-00000-of-00001.parquet")
    published["provenance"] = "\n".join(rows["provenance"])
    for name, text in published.items():
        assert str(tmp_path) not in text, name
    again = yaml.safe_load(published["recipe.yaml"])
    assert again["taxonomy"]["source"] == "topics.txt" and again["web_samples"]["source"] == "extracts.jsonl"
    assert again["mix"][0]["template"] == "templates/ask.j2" and again["output"] == "portable"
    assert '"origin": "templates/ask.j2"' in published["provenance"]
    # the published recipe reruns elsewhere, its files placed beside it
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(project / "templates", elsewhere / "templates")
    for name in ("topics.txt", "extracts.jsonl"):
        shutil.copy(home / "data" / name, elsewhere / name)
    (elsewhere / "recipe.yaml").write_text(published["recipe.yaml"].replace(emu.openai_base_url, "null"))
    res = subprocess.run([*CLI, "validate", str(elsewhere / "recipe.yaml")], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and f"output {elsewhere / 'portable'}" in res.stdout, res.stderr
