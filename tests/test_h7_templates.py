"""`Template.render` called by hand: a missing variable names what render was given and where the rest come from."""

from __future__ import annotations

import pytest

from textbookgen.templates import TemplateError, builtin_templates, variables

TABLE = {"pupils": "pupils of grade 4"}


def test_a_variable_render_was_not_given_names_the_given_ones_and_variables():
    with pytest.raises(TemplateError, match=r"builtin:textbook_section\.j2:\d+: 'topic_context' is undefined "
                                            r"\(render was given: topic; textbookgen\.templates\.variables\(\)"):
        builtin_templates()["textbook_section"].render(topic="tides")


def test_the_variables_the_message_names_render_the_template():
    v = variables(topic_path=("Earth", "Tides"), audience="pupils", style="pupils", format="pupils",
                  web_extract=None, language="English", words=[], audiences=TABLE, styles=TABLE, formats=TABLE)
    assert "Tides" in builtin_templates()["textbook_section"].render(**v)
