"""Prompt templates: the built-in set renders, the sandbox holds, hashes and mixes are right."""

from __future__ import annotations

import json

import pytest

from textbookgen.templates import (
    AUDIENCES,
    FORMATS,
    STYLES,
    TemplateError,
    builtin_templates,
    expand_mix,
    load_template,
    provenance,
    simple_words,
    variables,
)


def _vars(**over):
    base = dict(
        topic_path=("Everyday physics", "Light and color"),
        audience="high_school",
        style="narrative",
        format="markdown",
        web_extract=None,
        language="English",
        words=["jump", "ball", "red"],
        audiences=AUDIENCES,
        styles=STYLES,
        formats=FORMATS,
    )
    base.update(over)
    return variables(**base)


def test_builtin_set_covers_phi_data_kinds():
    names = set(builtin_templates())
    assert {"textbook_section", "exercises", "qa", "story", "code_textbook", "code_exercises"} <= names
    assert {
        "young_children",
        "middle_school",
        "high_school",
        "college",
        "professionals",
        "researchers",
    } <= set(AUDIENCES)


@pytest.mark.parametrize("name", sorted(builtin_templates()))
def test_every_builtin_renders_with_and_without_extract(name):
    tpl = builtin_templates()[name]
    plain = tpl.render(**_vars())
    seeded = tpl.render(**_vars(web_extract="Rainbows appear when sunlight is refracted in raindrops."))
    assert "Rainbows appear" not in plain and "Rainbows appear" in seeded
    assert "<extract>" in seeded and "<extract>" not in plain
    assert "{{" not in seeded and "{%" not in seeded
    assert "light and color" in plain.lower()
    if name == "story":
        assert '"jump"' in plain and '"ball"' in plain and '"red"' in plain
    else:
        assert AUDIENCES["high_school"] in plain and "(part of Everyday physics)" in plain


def test_every_template_reads_well_with_every_audience_style_and_format():
    """Style and format descriptions are written as label values ("Style: ..."), audiences as "for ...":
    a template that splices them into a sentence of its own ("The story should rigorous and precise",
    "as use Markdown") or ignores the audience reads wrong for some of them."""
    import re

    broken = re.compile(r"year-old|\.\.|\s{3,}")  # a hard-coded reader, doubled full stops, holes
    for name, tpl in builtin_templates().items():
        for a in AUDIENCES:
            for st in STYLES:
                for f in FORMATS:
                    text = tpl.render(**_vars(audience=a, style=st, format=f, web_extract="Sunlight bends."))
                    assert f"for {AUDIENCES[a]}" in text, (name, a)
                    assert f"\nStyle: {STYLES[st]}\n" in text, (name, st)
                    assert f"\nFormat: {FORMATS[f]}\n" in text, (name, f)
                    assert f"should {STYLES[st]}" not in text, (name, st)
                    assert f"as {FORMATS[f]}" not in text, (name, f)
                    assert not broken.search(text), (name, a, st, f, broken.search(text))


def test_mix_weights_that_are_not_shares_are_an_error():
    with pytest.raises(ValueError, match="mix audiences weights must be >= 0 with a positive sum"):
        expand_mix([{"template": "qa", "weight": 5, "audiences": {"general": 0}}])
    with pytest.raises(ValueError, match="mix styles weights"):
        expand_mix([{"template": "qa", "styles": {"academic": 2, "narrative": -1}}])


def test_top_level_topic_has_no_empty_context():
    text = builtin_templates()["textbook_section"].render(**_vars(topic_path=("Astronomy",)))
    assert '"Astronomy" for ' in text and "part of" not in text


def test_strict_undefined_and_sandbox(tmp_path):
    bad = tmp_path / "bad.j2"
    bad.write_text("Write about {{ topik }}.")
    tpl = load_template(str(bad))
    with pytest.raises(TemplateError, match="'topik' is undefined"):
        tpl.render(**_vars())
    evil = tmp_path / "evil.j2"
    evil.write_text("{{ topic.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(TemplateError, match="unsafe|undefined"):
        load_template(str(evil)).render(**_vars())
    syntax = tmp_path / "syntax.j2"
    syntax.write_text("line one\n{% if topic %}\nno endif\n")
    with pytest.raises(TemplateError, match=r"syntax\.j2:\d+: "):
        load_template(str(syntax))
    with pytest.raises(TemplateError, match="neither a built-in"):
        load_template("no_such_template")


def test_file_templates_resolve_relative_and_hash_by_content(tmp_path):
    (tmp_path / "mine.j2").write_text("Teach {{ topic }} to {{ audience_name }}.")
    a = load_template("mine.j2", base_dir=tmp_path)
    assert a.name == "mine" and a.render(**_vars()) == "Teach Light and color to high_school.\n"
    assert a.hash == load_template(str(tmp_path / "mine.j2")).hash
    (tmp_path / "mine.j2").write_text("Teach {{ topic }} to {{ audience_name }}!")
    assert load_template("mine.j2", base_dir=tmp_path).hash != a.hash
    prov = json.loads(provenance(a, _vars()))
    assert prov["template_hash"] == a.hash and prov["variables"]["topic"] == "Light and color"


def test_expand_mix_is_a_weighted_product():
    combos = expand_mix(
        [
            {
                "template": "textbook_section",
                "weight": 3,
                "audiences": {"college": 1, "high_school": 1},
                "styles": {"academic": 3, "narrative": 1},
            },
            {"template": "qa", "weight": 1},
        ]
    )
    assert len(combos) == 5
    assert sum(c.weight for c in combos) == pytest.approx(1.0)
    w = {(c.template, c.audience, c.style): c.weight for c in combos}
    assert w[("textbook_section", "college", "academic")] == pytest.approx(0.75 * 0.5 * 0.75)
    assert w[("qa", "general", "academic")] == pytest.approx(0.25)


def test_simple_words_are_deterministic():
    assert simple_words(1, 5) == simple_words(1, 5)
    assert len({tuple(simple_words(1, i)) for i in range(50)}) > 40
