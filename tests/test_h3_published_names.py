"""Two template files of one name from different folders outside the recipe's were published under that one name
(recipe.yaml named both `lesson.j2`, the manifest's `templates` kept one of them, every document's provenance
gave the same origin): each file now keeps as many of its last folders as tell it apart, the same in recipe.yaml,
the manifest and the provenance, whatever the order of the mix."""

from __future__ import annotations

import json
import shutil

import polars as pl
import yaml
from test_build import prose_responder

from textbookgen.build import build
from textbookgen.recipe import load_recipe
from textbookgen.templates import BUILTIN_DIR


def test_files_of_one_name_keep_the_folders_that_tell_them_apart(tmp_path):
    from textbookgen.card import portable_paths

    base = tmp_path / "project"
    a, b = str(tmp_path / "x" / "a" / "lesson.j2"), str(tmp_path / "y" / "b" / "lesson.j2")
    lone = str(tmp_path / "x" / "a" / "story.j2")
    names = portable_paths([a, b, lone, "qa", None], base)
    assert names == {a: "a/lesson.j2", b: "b/lesson.j2", lone: "story.j2", "qa": "qa"}
    assert portable_paths([b, lone, a], base) == {k: v for k, v in names.items() if k != "qa"}  # order: same names


def test_a_file_outside_keeps_apart_from_one_of_its_name_inside(tmp_path):
    from textbookgen.card import portable_paths

    base = tmp_path / "project"
    inside, outside = "lesson.j2", str(tmp_path / "shared" / "templates" / "lesson.j2")
    assert portable_paths([inside, outside], base) == {inside: inside, outside: "templates/lesson.j2"}
    # one file named twice (as given and through a `..`) is one file, one name
    again = str(tmp_path / "shared" / "x" / ".." / "templates" / "lesson.j2")
    assert portable_paths([outside, again], base) == {outside: "lesson.j2", again: "lesson.j2"}


def test_a_build_publishes_each_template_file_under_its_own_name(tmp_path):
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    first, second = tmp_path / "team" / "lesson.j2", tmp_path / "mine" / "lesson.j2"
    for path, builtin in ((first, "qa.j2"), (second, "textbook_section.j2")):
        path.parent.mkdir(parents=True)
        shutil.copy(BUILTIN_DIR / builtin, path)
    project = tmp_path / "project"
    project.mkdir()
    (project / "topics.txt").write_text("Physics\nChemistry\nBiology\n")
    recipe = project / "r.yaml"
    recipe.write_text(
        "name: twins\nmodel: gpt-4o-mini\nsamples: 8\ntaxonomy: {source: topics.txt}\n"
        f"mix: [{{template: {first}}}, {{template: {second}}}]\n"
        "curation: {filters: {enabled: false}}\n"
    )
    with Emulator(EmulatorConfig(latency_median_s=0.002, responder=prose_responder)) as emu:
        over = {"output": str(project / "out"), "provider.base_url": emu.openai_base_url}
        build(load_recipe(recipe, over), progress=False)
    dataset = project / "out" / "dataset"
    published = yaml.safe_load((dataset / "recipe.yaml").read_text())
    assert [e["template"] for e in published["mix"]] == ["team/lesson.j2", "mine/lesson.j2"]
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert sorted(manifest["templates"]) == ["mine/lesson.j2", "team/lesson.j2"]
    rows = pl.read_parquet(dataset / "data" / "train-00000-of-00001.parquet")
    origins = {json.loads(p)["origin"]: h for p, h in zip(rows["provenance"], rows["template_hash"], strict=True)}
    assert origins == {name: manifest["templates"][name] for name in ("team/lesson.j2", "mine/lesson.j2")}
