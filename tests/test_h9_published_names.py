"""Review of 04d2b81 (files of one name published apart). A file outside the recipe's folder took the name of one
inside it written with dot segments (`./lesson.j2`, `sub/../lesson.j2`): the published recipe.yaml named one file
twice, and rebuilt from it both mix entries used the same template. And a built-in template's provenance origin
lost its `builtin:` prefix (`builtin:qa.j2` became `qa`), which changed every such dataset's rows."""

from __future__ import annotations

import json

import polars as pl
from test_build import prose_responder

from textbookgen.build import build
from textbookgen.card import portable_paths
from textbookgen.recipe import load_recipe


def test_an_outside_file_keeps_apart_from_an_inside_one_written_with_dot_segments(tmp_path):
    base = tmp_path / "project"
    outside = str(tmp_path / "shared" / "lesson.j2")
    for inside in ("./lesson.j2", "sub/../lesson.j2"):
        names = portable_paths([inside, outside], base)
        assert names == {inside: inside, outside: "shared/lesson.j2"}, inside


def test_a_builtin_template_keeps_its_builtin_origin_in_the_provenance(tmp_path):
    from textbookgen.testing.emulator import Emulator, EmulatorConfig

    (tmp_path / "topics.txt").write_text("Physics\nChemistry\nBiology\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: shipped\nmodel: gpt-4o-mini\nsamples: 4\ntaxonomy: {source: topics.txt}\n"
                      "mix: [{template: qa}]\ncuration: {filters: {enabled: false}}\n")
    with Emulator(EmulatorConfig(latency_median_s=0.002, responder=prose_responder)) as emu:
        over = {"output": str(tmp_path / "out"), "provider.base_url": emu.openai_base_url}
        build(load_recipe(recipe, over), progress=False)
    rows = pl.read_parquet(tmp_path / "out" / "dataset" / "data" / "train-00000-of-00001.parquet")
    assert rows.height
    assert {json.loads(p)["origin"] for p in rows["provenance"]} == {"builtin:qa.j2"}
