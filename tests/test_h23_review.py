"""The streamed curation runs after review: a chunk's digest holds its columns' names and types; `classifier
score`'s pass 2 refuses rows that are not those pass 1 scored; the speed of a resumed score counts only the
documents it scored; the refusal of a second run names an option of its command; the code digest covers rule
classes given from another module."""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import polars as pl
import pytest
from test_h23_resume_keys import module_from_source
from test_h23_score_stream import dclm, model  # noqa: F401  (fixtures)
from typer.testing import CliRunner

from textbookgen.cli import app
from textbookgen.curation import classifier, commands, corpus_io, filters, stream
from textbookgen.curation.commands import run_steps, score_steps
from textbookgen.curation.filters import HeuristicFilter

CODE = "\n".join(f"Zebra quantum lattice orbit{i} velvet" for i in range(40))  # kept as code, dropped as prose


def _killing(kill_at: int):
    """A `require_columns` for the filters that raises KeyboardInterrupt on the `kill_at`th chunk."""
    check, handed = filters.require_columns, []

    def noting(df, columns, where):
        handed.append(df.height)
        if len(handed) == kill_at:
            raise KeyboardInterrupt
        check(df, columns, where)
    return noting


def _killed_then_rerun(src: Path, tmp_path: Path, monkeypatch, edit) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A filter run killed after 2 of its chunks, `edit` of the input (to the same size), then the rerun on the
    killed run's workdir and a fresh run: their outputs."""
    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", 3)
    with monkeypatch.context() as m:
        m.setattr(filters, "require_columns", _killing(kill_at=3))
        with pytest.raises(KeyboardInterrupt):
            commands.run_steps(src, tmp_path / "out.parquet", [HeuristicFilter(workers=1)], tmp_path / "work")
    assert len(list((tmp_path / "work" / stream.STORE).glob("0*.json"))) == 2
    size = src.stat().st_size
    src.write_text(edit(src.read_text()))
    assert src.stat().st_size == size
    commands.run_steps(src, tmp_path / "fresh.parquet", [HeuristicFilter(workers=1)], tmp_path / "fresh.work")
    commands.run_steps(src, tmp_path / "out.parquet", [HeuristicFilter(workers=1)], tmp_path / "work")
    return pl.read_parquet(tmp_path / "out.parquet"), pl.read_parquet(tmp_path / "fresh.parquet")


def test_a_column_renamed_to_the_same_size_is_judged_again(tmp_path, monkeypatch):
    """`format` renamed: every text is prose now, and dropped; the stored verdicts (kept as code) were reused."""
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": CODE, "format": "code"}) + "\n" for i in range(12)))
    out, fresh = _killed_then_rerun(src, tmp_path, monkeypatch, lambda s: s.replace('"format"', '"formaT"'))
    assert fresh.height == 0
    assert out.equals(fresh)


def test_the_text_column_swapped_with_another_is_judged_again(tmp_path, monkeypatch):
    """`text` and `note` (names of one length) swapped: the values in column order are those hashed before."""
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": CODE, "note": "too short", "format": "code"}) + "\n"
                           for i in range(12)))
    out, fresh = _killed_then_rerun(src, tmp_path, monkeypatch, lambda s: s.replace('"text"', '"TEMP"').replace(
        '"note"', '"text"').replace('"TEMP"', '"note"'))
    assert fresh.height == 0
    assert out["text"].to_list() == fresh["text"].to_list()


def _edit_between(monkeypatch, edit) -> None:
    """`edit` the input between pass 1 (the scores) and pass 2 (the rows written)."""
    cut_stats = stream._cut_stats

    def editing(*args, **kwargs):
        edit()
        return cut_stats(*args, **kwargs)
    monkeypatch.setattr(stream, "_cut_stats", editing)


def _scored_input(labelled: list[dict], tmp_path: Path, monkeypatch) -> tuple[Path, list[str]]:
    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", 4)
    src = tmp_path / "in.jsonl"
    lines = [json.dumps({"id": i, "text": r["text"]}) + "\n" for i, r in enumerate(labelled[200:210])]
    src.write_text("".join(lines))
    return src, lines


@pytest.mark.parametrize(("scored", "edit", "rows"), [
    (10, lambda lines: lines + [json.dumps({"id": 10, "text": "one more"}) + "\n"], "rows 9-10 and .*rows 9-11"),
    (10, lambda lines: lines[::-1], "rows 1-4"),  # the same size: scores of other texts, silently
    (10, lambda lines: lines[:8], "rows 9-10"),  # a chunk fewer
    (8, lambda lines: lines, "rows 9-10"),  # a chunk more
])
def test_input_changed_between_the_passes_is_refused(model, dclm, tmp_path, monkeypatch, scored, edit,  # noqa: F811
                                                     rows):
    """A row added failed on polars' ShapeError naming nothing; lines reversed got each other's scores."""
    src, lines = _scored_input(dclm, tmp_path, monkeypatch)
    src.write_text("".join(lines[:scored]))
    _edit_between(monkeypatch, lambda: src.write_text("".join(edit(lines))))
    with pytest.raises(ValueError, match=f"in.jsonl {rows}: the input changed while it was scored.*rerun"):
        run_steps(src, tmp_path / "out.parquet", score_steps(str(model), None, 50.0, 3), None)
    assert not (tmp_path / "out.parquet").exists()
    run_steps(src, tmp_path / "out.parquet", score_steps(str(model), None, 50.0, 3), None)  # the rerun asked for
    fresh = run_steps(src, tmp_path / "fresh.parquet", score_steps(str(model), None, 50.0, 3), None)
    assert pl.read_parquet(tmp_path / "out.parquet").equals(pl.read_parquet(tmp_path / "fresh.parquet")), fresh


def test_the_rerun_after_input_changed_between_the_passes_scores_only_what_changed(  # noqa: F811
        model, dclm, tmp_path, monkeypatch):  # noqa: F811
    """The refusal removed every stored score (as other bad input does), so the rerun it asks for scored all 40
    documents again, where only the last chunk (rows 37-40, reversed: the same size) is not the one scored."""
    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", 4)
    src, out = tmp_path / "in.jsonl", tmp_path / "out.parquet"
    lines = [json.dumps({"id": i, "text": r["text"]}) + "\n" for i, r in enumerate(dclm[200:240])]
    src.write_text("".join(lines))
    with monkeypatch.context() as m:
        _edit_between(m, lambda: src.write_text("".join(lines[:36] + lines[36:][::-1])))
        with pytest.raises(ValueError, match="in.jsonl rows 37-40: the input changed while it was scored"):
            run_steps(src, out, score_steps(str(model), None, 50.0, 3), None)
    calls, scores = [], classifier.QualityScore.scores

    def counting(self, texts):
        calls.append(len(texts))
        return scores(self, texts)
    with monkeypatch.context() as m:
        m.setattr(classifier.QualityScore, "scores", counting)
        run_steps(src, out, score_steps(str(model), None, 50.0, 3), None)
    assert calls == [4]
    run_steps(src, tmp_path / "fresh.parquet", score_steps(str(model), None, 50.0, 3), None)
    assert pl.read_parquet(out).equals(pl.read_parquet(tmp_path / "fresh.parquet"))


def test_a_resumed_score_counts_the_speed_of_what_it_scored(model, dclm, tmp_path, monkeypatch):  # noqa: F811
    """Every document divided by this run's seconds: a run that scored one chunk of three (or none) claimed the
    speed of three (3e10 documents a second for none)."""
    src, _ = _scored_input(dclm, tmp_path, monkeypatch)
    monkeypatch.setattr(stream, "time", SimpleNamespace(perf_counter=itertools.count().__next__))  # 1 s a chunk
    out, calls, scores = tmp_path / "out.parquet", [], classifier.QualityScore.scores

    def killing(self, texts):
        calls.append(len(texts))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return scores(self, texts)

    with monkeypatch.context() as m:
        m.setattr(classifier.QualityScore, "scores", killing)
        with pytest.raises(KeyboardInterrupt):
            run_steps(src, out, score_steps(str(model), None, 50.0, 3), None)
    stats = run_steps(src, out, score_steps(str(model), None, 50.0, 3), None)
    assert stats["quality_score"]["docs_per_s"] == 2.0  # rows 9-10, the chunk the killed run had not scored, in 1 s

    def killing_in_pass_2(*args, **kwargs):
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(stream, "_write_scored", killing_in_pass_2)
        with pytest.raises(KeyboardInterrupt):
            run_steps(src, out, score_steps(str(model), None, 50.0, 3), None)
    stats = run_steps(src, out, score_steps(str(model), None, 50.0, 3), None)
    assert stats["quality_score"]["docs_per_s"] is None


def test_a_second_score_on_the_same_output_is_told_an_option_it_has(model, dclm, tmp_path, monkeypatch):  # noqa: F811
    """`classifier score` has no --workdir, which the refusal told it to give."""
    src, _ = _scored_input(dclm, tmp_path, monkeypatch)
    out = tmp_path / "out.parquet"
    work = Path(f"{out}.work")
    work.mkdir()
    fd = os.open(work / stream.LOCK, os.O_WRONLY | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        res = CliRunner().invoke(app, ["classifier", "score", str(model), str(src), "-o", str(out)])
    finally:
        os.close(fd)
    assert res.exit_code == 1
    assert "--workdir" not in res.output
    assert (f"workdir {work}: another curation run is using it; wait for it to end, or give this one another -o "
            "(its workdir is <output>.work)") in " ".join(res.output.split())


RULE = '''
from textbookgen.curation.filters import Rule


class MinChars(Rule):
    reason = "short"

    def keep(self, doc):
        return len(doc.text) >= {limit}
'''


def _rule_module(folder: Path, limit: int) -> ModuleType:
    """A module of a rule class given to HeuristicFilter(rules=...), the step's own module being textbookgen's."""
    return module_from_source(folder, "h23_review_rule", RULE.format(limit=limit))


def test_a_rule_given_from_another_module_is_in_the_code_digest(tmp_path, monkeypatch):
    """The digest followed the step's class's module alone: a killed run's verdicts outlived an edit of a rule
    class given to `HeuristicFilter(rules=...)` from the user's own module."""
    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", 3)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.delitem(sys.modules, "h23_review_rule", raising=False)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": n, "text": ("word " * n).strip()}) + "\n" for n in range(1, 19)))
    old = _rule_module(tmp_path, 10)
    with monkeypatch.context() as m:
        m.setattr(filters, "require_columns", _killing(kill_at=4))
        with pytest.raises(KeyboardInterrupt):
            commands.run_steps(src, tmp_path / "out.parquet", [HeuristicFilter(rules=(old.MinChars,), workers=1)],
                               tmp_path / "work")
    assert len(list((tmp_path / "work" / stream.STORE).glob("0*.json"))) == 3
    new = _rule_module(tmp_path, 40)  # the rule edited, its name and the step's settings the same
    stats = commands.run_steps(src, tmp_path / "out.parquet", [HeuristicFilter(rules=(new.MinChars,), workers=1)],
                               tmp_path / "work")
    assert min(map(len, pl.read_parquet(tmp_path / "out.parquet")["text"].to_list())) >= 40
    assert stats["filters"]["dropped"] == {"short": 8}  # 4, 9, ..., 39 characters
