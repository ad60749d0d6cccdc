"""The one YAML reader behind recipes, trainer configs and curation configs."""

import pytest
import yaml

from textbookgen.curation.commands import load_config
from textbookgen.yamlfile import read_yaml

DOC = """\
# a comment
base: &b {lr: 2.0e-4, steps: 10}
train:
  <<: *b
  steps: 20
mix:
  - template: lesson
    weight: 1
  - {template: story, weight: 0.5}
empty:
"""


def test_values_are_pyyamls_and_every_field_has_its_line():
    doc = read_yaml(DOC, "c.yaml", ValueError)
    assert doc.data == yaml.safe_load(DOC)  # anchors and merge keys included
    assert doc.lines[()] == 2 and doc.lines[("train",)] == 3 and doc.lines[("train", "steps")] == 5
    assert doc.lines[("mix", 1)] == 9 and doc.lines[("mix", 1, "weight")] == 9 and doc.lines[("empty",)] == 10


def test_empty_text_is_no_document():
    assert read_yaml("# nothing\n", "c.yaml", ValueError).data is None


def test_every_repeated_key_is_named_with_its_line():
    with pytest.raises(KeyError) as e:
        read_yaml("a: 1\nb:\n  c: 1\n  c: 2\na: 3\n", "c.yaml", KeyError)
    assert e.value.args[0] == "c.yaml:4: b.c: duplicate key\nc.yaml:5: a: duplicate key"


def test_bad_yaml_is_one_line_with_the_line_and_the_tab_hint():
    with pytest.raises(ValueError, match=r"^c\.yaml:2: not valid YAML: found character '\\t' .*; indent with spaces"):
        read_yaml("a:\n\tb: 1\n", "c.yaml", ValueError)


def test_curation_config_refuses_a_repeated_key(tmp_path):
    """PyYAML kept the last `threshold` silently: the dedup would run at a setting the user did not mean."""
    cfg = tmp_path / "cur.yaml"
    cfg.write_text("curation:\n  dedup:\n    threshold: 0.7\n    threshold: 0.9\n")
    with pytest.raises(ValueError, match=r"--config .*cur\.yaml:4: curation\.dedup\.threshold: duplicate key"):
        load_config(cfg)
