"""`classifier score` streamed in two passes (scores, then the cut a chunk at a time): the kept rows, ids, stats and
reports of the corpus read whole, without reading it whole."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from textbookgen.cli import app
from textbookgen.curation import classifier, commands, corpus_io
from textbookgen.curation.commands import run_steps, score_steps
from textbookgen.curation.pipeline import run_pipeline

CHUNK = 7  # rows per chunk: the corpus below is 9 chunks and more


@pytest.fixture(scope="module")
def dclm(shared_data: Path) -> list[dict]:
    with gzip.open(shared_data / "dclm_human_quality_labels" / "majority_data.jsonl.gz", "rt") as f:
        return [json.loads(x) for x in f]


@pytest.fixture(scope="module")
def model(dclm: list[dict], tmp_path_factory) -> Path:
    """A small model trained on 200 of DCLM's human labels."""
    folder = tmp_path_factory.mktemp("model")
    (folder / "all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dclm[:200]))
    trained = CliRunner().invoke(app, ["classifier", "train", "-o", str(folder / "m"), "--labelled",
                                       str(folder / "all.jsonl"), "--lr", "0.5", "--epochs", "5", "--dim", "16",
                                       "--bucket", "10000", "--folds", "1"])
    assert trained.exit_code == 0, trained.output
    return folder / "m.bin"


@pytest.fixture
def corpus(dclm: list[dict], tmp_path: Path) -> Path:
    """Two files of other columns: a.jsonl (ids made up, a string `quality_score` of its own that the score
    replaces) and b.parquet (ids, a `url`); texts repeated, so scores tie at the cut."""
    texts = [r["text"] for r in dclm[200:260]]
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.jsonl").write_text("".join(json.dumps({"text": t, "quality_score": "old"}) + "\n"
                                            for t in texts[:30] + texts[:5]))
    pl.DataFrame({"id": [f"b{i}" for i in range(35)], "text": texts[30:] + texts[:5],
                  "url": [f"u{i}" for i in range(35)]}).write_parquet(folder / "b.parquet")
    return folder


def read_whole(src: Path, steps: list, out: Path) -> dict:
    """The steps on the corpus read whole (what `classifier score`, and `run_steps` with a seed-copy step, did
    before they streamed): stats, output and workdir as run_steps' give them."""
    work = Path(str(out) + ".work")
    work.mkdir()
    (work / corpus_io.WORKDIR_MARK).touch()
    kept, stats = run_pipeline(corpus_io.read_corpus(src), steps, work)
    corpus_io.write_corpus(kept, out)
    return stats


def _without_speed(stats: dict) -> dict:
    return {name: {k: v for k, v in st.items() if k != "docs_per_s"} for name, st in stats.items()}


@pytest.mark.parametrize("cut", [{"keep_top_percent": 45.0}, {"threshold": 0.5025}, {}])  # the scores: 0.500 to 0.505
@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_the_streamed_score_is_the_whole_read(model, corpus, tmp_path, monkeypatch, cut, suffix):
    """The same kept rows (columns, ids, order), stats and dropped.parquet as the steps on the corpus read whole,
    with a top share, a threshold, or no cut."""
    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", CHUNK)
    steps = score_steps(str(model), cut.get("threshold"), cut.get("keep_top_percent"), 16)
    expected = read_whole(corpus, steps, tmp_path / f"whole{suffix}")
    stats = run_steps(corpus, tmp_path / f"out{suffix}", steps, None)
    assert _without_speed(stats) == _without_speed(expected)
    assert stats["quality_score"]["docs_per_s"] > 0
    read = pl.read_parquet if suffix == ".parquet" else pl.read_ndjson
    out, whole = read(tmp_path / f"out{suffix}"), read(tmp_path / f"whole{suffix}")
    assert out.equals(whole) and out.columns == ["id", "text", "quality_score", "url"]
    made = {p.name for p in (tmp_path / f"out{suffix}.work").iterdir()} - {".finished_chunks.lock"}  # as filter's
    assert made == {p.name for p in (tmp_path / f"whole{suffix}.work").iterdir()}
    if cut:
        dropped = pl.read_parquet(tmp_path / f"out{suffix}.work/quality_filter/dropped.parquet")
        assert dropped.equals(pl.read_parquet(tmp_path / f"whole{suffix}.work/quality_filter/dropped.parquet"))
        assert dropped.height == 70 - out.height > 0


def test_score_reads_the_corpus_a_chunk_at_a_time(model, corpus, tmp_path, monkeypatch):
    """`classifier score` read the corpus whole (`read_corpus`) because a top share needs every score: its memory
    grew with the texts. It scores a chunk at a time now, and writes the cut a chunk at a time."""
    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", CHUNK)
    expected = read_whole(corpus, score_steps(str(model), None, 45.0, 16), tmp_path / "whole.parquet")

    def whole_read(*args, **kwargs):
        raise AssertionError("the corpus was read whole")

    scored, scores = [], classifier.QualityModel.scores

    def noting(self, texts: list[str], batch_size: int = 4096):
        scored.append(len(texts))
        return scores(self, texts, batch_size)

    monkeypatch.setattr(commands, "read_corpus", whole_read)
    monkeypatch.setattr(classifier.QualityModel, "scores", noting)
    res = CliRunner().invoke(app, ["classifier", "score", str(model), str(corpus), "-o", str(tmp_path / "out.parquet"),
                                   "--keep-top-percent", "45"])
    assert res.exit_code == 0, res.output
    assert max(scored) <= CHUNK and sum(scored) == 70  # each text scored once, in pass 1
    assert pl.read_parquet(tmp_path / "out.parquet").equals(pl.read_parquet(tmp_path / "whole.parquet"))
    assert _without_speed(json.loads(res.stdout)) == _without_speed(expected)


def test_bad_input_leaves_no_output_nor_workdir(model, corpus, tmp_path, monkeypatch):
    """A null text in the last file is named (file and row) in pass 1, before any output or workdir is made."""
    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", CHUNK)
    pl.DataFrame({"id": ["c0", "c1"], "text": ["fine", None]}).write_parquet(corpus / "c.parquet")
    with pytest.raises(ValueError, match=r"c.parquet: 1 row\(s\) with a null 'text' \(the first: row 2\)"):
        run_steps(corpus, tmp_path / "out.parquet", score_steps(str(model), None, 45.0, 16), None)
    assert not (tmp_path / "out.parquet").exists() and not (tmp_path / "out.parquet.work").exists()


def _killed_score(model: Path, corpus: Path, out: Path, monkeypatch, at: int) -> None:
    """`classifier score --keep-top-percent 45` killed (Ctrl-C) as its `at`th chunk is scored."""
    calls, scores = [], classifier.QualityModel.scores

    def killing(self, texts: list[str], batch_size: int = 4096):
        calls.append(len(texts))
        if len(calls) == at:
            raise KeyboardInterrupt
        return scores(self, texts, batch_size)

    with monkeypatch.context() as m:
        m.setattr(classifier.QualityModel, "scores", killing)
        with pytest.raises(KeyboardInterrupt):
            run_steps(corpus, out, score_steps(str(model), None, 45.0, 16), None)


def _scoring(monkeypatch) -> list[int]:
    """The texts of each chunk scored from now on."""
    calls, scores = [], classifier.QualityModel.scores

    def noting(self, texts: list[str], batch_size: int = 4096):
        calls.append(len(texts))
        return scores(self, texts, batch_size)

    monkeypatch.setattr(classifier.QualityModel, "scores", noting)
    return calls


def test_a_killed_score_resumes_from_the_chunks_it_scored(model, corpus, tmp_path, monkeypatch):
    """Killed in pass 1, the rerun scores only the chunks not yet scored, with the output, stats and report of a
    run never killed; a finished run leaves no stored chunks."""
    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", CHUNK)
    expected = read_whole(corpus, score_steps(str(model), None, 45.0, 16), tmp_path / "whole.parquet")
    out = tmp_path / "out.parquet"
    _killed_score(model, corpus, out, monkeypatch, at=5)
    assert not out.exists() and len(list((tmp_path / "out.parquet.work/finished_chunks").glob("0*.json"))) == 4
    scored = _scoring(monkeypatch)
    stats = run_steps(corpus, out, score_steps(str(model), None, 45.0, 16), None)
    assert sum(scored) == 70 - 4 * CHUNK
    assert _without_speed(stats) == _without_speed(expected)
    assert pl.read_parquet(out).equals(pl.read_parquet(tmp_path / "whole.parquet"))
    assert pl.read_parquet(tmp_path / "out.parquet.work/quality_filter/dropped.parquet").equals(
        pl.read_parquet(tmp_path / "whole.parquet.work/quality_filter/dropped.parquet"))
    assert not (tmp_path / "out.parquet.work/finished_chunks").exists()


def test_scores_stored_for_another_model_or_rows_are_not_used(model, corpus, tmp_path, monkeypatch):
    """A model file replaced at the same path has every chunk scored again; a chunk whose texts changed (the same
    file size) is scored again, the other stored chunks are not."""
    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", CHUNK)
    out = tmp_path / "out.parquet"
    copy = tmp_path / "m.bin"
    copy.write_bytes(model.read_bytes())
    _killed_score(copy, corpus, out, monkeypatch, at=5)
    with copy.open("ab") as f:  # another model file (fastText reads what it needs, not to the end)
        f.write(b"\0")
    scored = _scoring(monkeypatch)
    run_steps(corpus, out, score_steps(str(copy), None, 45.0, 16), None)
    assert sum(scored) == 70

    _killed_score(model, corpus, out, monkeypatch, at=5)
    lines = (corpus / "a.jsonl").read_text().splitlines(keepends=True)
    row = json.loads(lines[10])  # chunk 1 (rows 7-13)
    lines[10] = json.dumps({**row, "text": row["text"].replace("e", "E", 1)}) + "\n"
    (corpus / "a.jsonl").write_text("".join(lines))
    scored.clear()
    run_steps(corpus, out, score_steps(str(model), None, 45.0, 16), None)
    assert sum(scored) == 70 - 3 * CHUNK  # chunks 0, 2 and 3 from the store
    expected = read_whole(corpus, score_steps(str(model), None, 45.0, 16), tmp_path / "whole.parquet")
    assert pl.read_parquet(out).equals(pl.read_parquet(tmp_path / "whole.parquet"))
    assert expected["quality_score"]["mean_score"] == json.loads(Path(f"{out}.stats.json").read_text())[
        "quality_score"]["mean_score"]


def test_ctrl_c_in_score_says_where_the_scored_chunks_are(model, corpus, tmp_path, monkeypatch):
    """Ctrl-C in `classifier score` exited 130 saying nothing: not that the output was not written, nor that a
    rerun goes on from the chunks scored."""
    monkeypatch.setattr(corpus_io, "CHUNK_ROWS", CHUNK)
    out, scores = tmp_path / "out.parquet", classifier.QualityModel.scores
    for at, kept in [(1, False), (3, True)]:  # the first chunk, before any is stored; the third
        calls: list[int] = []

        def killing(self, texts: list[str], batch_size: int = 4096, calls=calls, at=at):
            calls.append(len(texts))
            if len(calls) == at:
                raise KeyboardInterrupt
            return scores(self, texts, batch_size)

        monkeypatch.setattr(classifier.QualityModel, "scores", killing)
        res = CliRunner().invoke(app, ["classifier", "score", str(model), str(corpus), "-o", str(out),
                                       "--keep-top-percent", "45"])
        assert res.exit_code == 130 and not out.exists()
        assert f"interrupted: {out} was not written (the input is untouched)" in res.output
        assert (f"the chunks scored so far are kept in {out}.work; rerun the same command" in res.output) is kept
