"""`topics convert` to markdown or plain text, which hold topic names only, says what it drops (weights,
quotas, descriptions, ids of one's own) instead of writing a taxonomy that samples differently without a
word: a weighted subject converted to .md came back with its siblings' share."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from textbookgen.cli import app
from textbookgen.taxonomy import Taxonomy

WEIGHTED = """\
topics:
  - name: Physics
    weight: 3
    children:
      - {name: Mechanics, quota: 2}
      - {name: Optics, weight: 2, description: light and lenses}
  - name: Chemistry
  - name: Biology
    id: bio-1
"""


def test_converting_to_names_only_says_what_it_drops(tmp_path: Path):
    src = tmp_path / "weighted.yaml"
    src.write_text(WEIGHTED)
    for dst in (tmp_path / "t.md", tmp_path / "t.txt"):
        res = CliRunner().invoke(app, ["topics", "convert", str(src), str(dst)])
        assert res.exit_code == 0, res.output
        assert (f"note: {dst} holds topic names only: it drops the weights of 2 topics (e.g. 'Physics': 3), "
                "1 quota, the descriptions or metadata of 1 topic, 1 id of your own; write .yaml or .csv to "
                "keep them") in " ".join(res.output.split())
        assert [t.weight for t in Taxonomy.load(dst).leaves()] == [1.0, 1.0, 1.0, 1.0]


def test_no_note_when_nothing_is_dropped(tmp_path: Path):
    src = tmp_path / "plain.txt"
    src.write_text("Physics\n  Mechanics\nChemistry\n")
    res = CliRunner().invoke(app, ["topics", "convert", str(src), str(tmp_path / "plain.md")])
    assert res.exit_code == 0 and "note:" not in res.output, res.output
    res = CliRunner().invoke(app, ["topics", "convert", str(tmp_path / "plain.md"), str(tmp_path / "w.yaml")])
    assert res.exit_code == 0 and "note:" not in res.output, res.output
