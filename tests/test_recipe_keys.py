"""A misspelt recipe key is an error that names the key it was probably meant to be (or, with none close,
the keys that level takes), at every depth: the top level, a mix entry, curation, a model's prices."""

from __future__ import annotations

from pathlib import Path

import pytest

from textbookgen.recipe import RecipeError, load_recipe

RECIPE = """\
name: tiny
model: gpt-4o-mini
taxonomy:
  source: builtin:commonsense
mix:
  - template: textbook_section
    weight: 2
samples: 10
curation:
  minhash: {threshold: 0.8}
prices:
  my-model: {input_per_mtok: 0.1, output_per_mtok: 0.2}
"""


@pytest.mark.parametrize(
    ("typo", "error"),
    [
        (("samples: 10", "sampels: 10"), "r.yaml:8: sampels: unknown key (did you mean 'samples'?)"),
        (("    weight: 2", "    wieght: 2"), "r.yaml:7: mix.0.wieght: unknown key (did you mean 'weight'?)"),
        (("{threshold: 0.8}", "{treshold: 0.8}"),
         "r.yaml:10: curation.minhash.treshold: unknown key (did you mean 'threshold'?)"),
        (("{input_per_mtok", "{inptu_per_mtok"),
         "r.yaml:12: prices.my-model.inptu_per_mtok: unknown key (did you mean 'input_per_mtok'?)"),
        (("  source: builtin", "  file: builtin"),
         "r.yaml:4: taxonomy.file: unknown key (taxonomy takes source, format, select, name, grow, weighting, "
         "max_per_topic, min_per_topic)"),
    ],
)
def test_an_unknown_key_names_the_key_meant(tmp_path: Path, typo: tuple[str, str], error: str):
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.replace(*typo))
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert f"{tmp_path}/{error}" in str(err.value).splitlines()
