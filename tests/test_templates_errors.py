"""A template file's problems name the file and the line, and say what to do: a file saved in another
encoding, and an error that only shows when a prompt is rendered (an attribute of a None extract)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from textbookgen.cli import app
from textbookgen.templates import AUDIENCES, FORMATS, STYLES, TemplateError, load_template, variables


def test_a_template_not_in_utf8_names_its_line_and_says_to_save_it_as_utf8(tmp_path: Path):
    path = tmp_path / "latin.j2"
    path.write_bytes("Write about {{ topic }}\nfor the \xe9l\xe8ves of {{ audience }}.\n".encode("latin-1"))
    with pytest.raises(TemplateError) as err:
        load_template(str(path))
    assert str(err.value).startswith(f"{path}:2: not valid UTF-8")
    assert "save it as UTF-8" in str(err.value)


def test_a_render_error_names_the_template_line(tmp_path: Path):
    path = tmp_path / "title.j2"
    path.write_text("Write about {{ topic }}.\n\n{% if audience %}\nSource: {{ web_extract.title }}\n{% endif %}\n")
    template = load_template(str(path))
    v = variables(topic_path=("Physics", "Optics"), audience="general", style="academic", format="markdown",
                  web_extract=None, language="English", words=[], audiences=AUDIENCES, styles=STYLES,
                  formats=FORMATS)
    with pytest.raises(TemplateError) as err:
        template.render(**v)
    assert str(err.value) == f"{path}:4: 'None' has no attribute 'title'"


def test_validate_names_the_recipe_field_and_the_template_line(tmp_path: Path):
    (tmp_path / "title.j2").write_text("Write about {{ topic }}.\n{{ web_extract.title }}\n")
    (tmp_path / "r.yaml").write_text(
        "name: r\nmodel: gpt-4o-mini\ntaxonomy: {source: builtin:commonsense}\n"
        "mix:\n  - template: title.j2\nsamples: 10\n"
    )
    res = CliRunner().invoke(app, ["validate", str(tmp_path / "r.yaml")])
    assert res.exit_code == 1
    assert f"r.yaml:5: mix.0.template: {tmp_path / 'title.j2'}:2: 'None' has no attribute 'title'" in res.output
