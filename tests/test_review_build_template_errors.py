"""A Python error in a template's expression (a division, a `%` format given the wrong values) is a template
error naming the file and line, as a Jinja error is: it escaped as a bare traceback from `validate`, `plan`
and the build's prompts stage."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from textbookgen.cli import app
from textbookgen.templates import TemplateError, load_template


@pytest.mark.parametrize(("expression", "error"), [
    ("{{ 100 / (words | length - 3) }}", "ZeroDivisionError"),
    ('{{ "%s and %s" % topic }}', "TypeError"),
])
def test_an_expression_that_raises_names_the_template_line(tmp_path: Path, expression: str, error: str):
    path = tmp_path / "ask.j2"
    path.write_text(f"Write about {{{{ topic }}}}.\n\n{expression}\n")
    with pytest.raises(TemplateError) as err:
        load_template(str(path)).render(topic="Optics", words=["run", "cat", "red"])
    assert str(err.value).startswith(f"{path}:3: {error}: ")


def test_validate_reports_it_as_a_problem_of_the_recipe(tmp_path: Path):
    (tmp_path / "ask.j2").write_text("Write about {{ topic }}.\n{{ 1 / 0 }}\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: t\nmodel: gpt-4o-mini\nsamples: 4\ntaxonomy: {source: builtin:python}\n"
                      "mix: [{template: ask.j2}]\n")
    res = CliRunner().invoke(app, ["validate", str(recipe)])
    assert res.exit_code == 1 and not isinstance(res.exception, ZeroDivisionError), res.exception
    assert f"{tmp_path / 'ask.j2'}:2: ZeroDivisionError: division by zero" in " ".join(res.output.split())
