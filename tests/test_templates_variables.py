"""`{{ topic_path }}`, a variable the README lists for templates, printed a Python list into the prompt sent
to the model (`(['Social science', 'Psychology', 'Mathematical psychology'])`); it prints as the path now,
and is still a list to index, join or loop over."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from textbookgen.templates import AUDIENCES, FORMATS, STYLES, load_template, provenance, variables

VARS = variables(topic_path=("Social science", "Psychology", "Mathematical psychology"), audience="college",
                 style="academic", format="markdown", web_extract=None, language="English", words=[],
                 audiences=AUDIENCES, styles=STYLES, formats=FORMATS)


@pytest.mark.parametrize(
    ("source", "rendered"),
    [
        ("On {{ topic }} ({{ topic_path }}).", "On Mathematical psychology (Social science > Psychology > "
                                               "Mathematical psychology)."),
        ("{{ topic_path[0] }} / {{ topic_path[-1] }}", "Social science / Mathematical psychology"),
        ("{{ topic_path | join(' / ') }}", "Social science / Psychology / Mathematical psychology"),
        ("{% for p in topic_path %}[{{ p }}]{% endfor %} {{ topic_path | length }}",
         "[Social science][Psychology][Mathematical psychology] 3"),
    ],
)
def test_topic_path_prints_as_a_path_and_is_a_list(tmp_path: Path, source: str, rendered: str):
    path = tmp_path / "t.j2"
    path.write_text(source)
    assert load_template(str(path)).render(**VARS) == rendered + "\n"


def test_the_provenance_keeps_topic_path_a_list():
    template = load_template("textbook_section")
    assert json.loads(provenance(template, VARS))["variables"]["topic_path"] == list(VARS["topic_path"])
