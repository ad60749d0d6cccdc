"""PyYAML's parser errors say what the parser expected ("mapping values are not allowed here", "expected
<block end>"), not what the user got wrong; each now adds the usual cause, as a tab's error already did."""

from __future__ import annotations

from pathlib import Path

import pytest

from textbookgen.recipe import RecipeError, load_recipe

RECIPE = """\
name: tiny
description: textbooks
model: gpt-4o-mini
sampling:
  temperature: 0.8
  max_tokens: 800
taxonomy: {source: builtin:commonsense}
mix:
  - template: textbook_section
    weight: 2
    audiences: {college: 1}
samples: 10
"""


@pytest.mark.parametrize(
    ("typo", "error"),
    [
        (("  max_tokens", "   max_tokens"), ":6: not valid YAML: mapping values are not allowed here; a key indented "
                                           "deeper than the key above it, or a value holding ': ' that needs quotes"),
        (("description: textbooks", "description: Textbooks: the phi way"),
         ":2: not valid YAML: mapping values are not allowed here; a key indented"),
        (("    weight: 2", "   weight: 2"), ":10: not valid YAML: expected <block end>, but found '<block mapping start>' "
                                          "(while parsing a block collection at line 9); this line is indented to "
                                          "no key above it, or a quote or bracket above is never closed"),
        (("{college: 1}", "{college: 1"), ":12: not valid YAML: expected ',' or '}', but got ':' (while "
                                          "parsing a flow mapping at line 11); a { } is not closed, or a value in it "
                                          "holding ':' or ',' needs quotes"),
    ],
)
def test_a_yaml_error_says_its_usual_cause(tmp_path: Path, typo: tuple[str, str], error: str):
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.replace(*typo))
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(err.value).startswith(f"{path}{error}"), str(err.value)
