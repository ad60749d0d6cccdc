"""`textbookgen decontaminate`: benchmarks from --config and -b together, and where the report goes."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from typer.testing import CliRunner

from textbookgen.cli import app

runner = CliRunner()
QUESTIONS = {
    "a": ("A farmer has 17 sheep and all but 9 run away through a hole in the fence; how many sheep does the "
          "farmer have left standing in the field?"),
    "b": ("Ann, Bill, Cate and Dale each buy a personal pan pizza cut into four pieces; if Bill and Dale eat "
          "half of theirs, how many pieces are left?"),
}


def _setup(tmp_path: Path) -> tuple[Path, Path]:
    """Benchmarks a.jsonl and b.jsonl (one question each) and a corpus copying both, plus a clean doc."""
    for name, q in QUESTIONS.items():
        (tmp_path / f"{name}.jsonl").write_text(json.dumps({"id": "q0", "question": q}) + "\n")
    corpus = tmp_path / "corpus.jsonl"
    texts = [f"Exercise: {QUESTIONS['a']}", f"Puzzle. {QUESTIONS['b']}", "A page about spring in the fields."]
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return corpus, tmp_path / "cur.yaml"


def test_benchmark_option_adds_to_the_config_list(tmp_path):
    """-b used to replace the --config list (the config's set silently unchecked); now it adds, and a
    benchmark given in both is loaded once."""
    corpus, cfg = _setup(tmp_path)
    cfg.write_text(f"curation:\n  decontamination:\n    benchmarks: [{tmp_path / 'a.jsonl'}]\n")
    base = ["decontaminate", str(corpus), "--config", str(cfg)]
    res = runner.invoke(app, [*base, "-o", str(tmp_path / "out.jsonl"), "-b", str(tmp_path / "b.jsonl")])
    assert res.exit_code == 0, res.output
    stats = json.loads(res.stdout)["decontamination"]
    assert stats["dropped"] == {"a": 1, "b": 1} and stats["benchmark_items"] == {"a": 1, "b": 1}
    report = pl.read_parquet(tmp_path / "out.jsonl.work" / "decontamination" / "contamination.parquet")
    assert sorted(report["benchmark"]) == ["a", "b"]
    res = runner.invoke(app, [*base, "-o", str(tmp_path / "again.jsonl"), "-b", str(tmp_path / "a.jsonl")])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["decontamination"]["benchmark_items"] == {"a": 1}


def test_config_alone_names_the_benchmarks(tmp_path):
    corpus, cfg = _setup(tmp_path)
    cfg.write_text(f"decontamination:\n  benchmarks: [{tmp_path / 'b.jsonl'}]\n")
    res = runner.invoke(app, ["decontaminate", str(corpus), "-o", str(tmp_path / "out.jsonl"), "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["decontamination"]["dropped"] == {"b": 1}


def test_no_benchmark_anywhere_is_one_clear_error(tmp_path):
    corpus, cfg = _setup(tmp_path)
    cfg.write_text("filters: {min_words: 20}\n")
    for extra in ([], ["--config", str(cfg)]):
        res = runner.invoke(app, ["decontaminate", str(corpus), "-o", str(tmp_path / "out.jsonl"), *extra])
        assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
        assert res.output.startswith("error: decontaminate: no benchmarks: give -b") and res.output.count("\n") == 1
    assert not (tmp_path / "out.jsonl").exists()


def test_workdir_help_says_where_the_reports_are(tmp_path):
    """The help said contamination.parquet / dropped.parquet go in --workdir; they go in a step's folder."""
    corpus, _ = _setup(tmp_path)
    for command, report in (("decontaminate", "decontamination/contamination.parquet"),
                            ("filter", "filters/dropped.parquet")):
        out = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"}).output
        assert report in " ".join(out.split()), out
        args = ["-b", str(tmp_path / "a.jsonl")] if command == "decontaminate" else ["--min-words", "20"]
        res = runner.invoke(app, [command, str(corpus), "-o", str(tmp_path / f"{command}.jsonl"), "--workdir",
                                  str(tmp_path / command), *args])
        assert res.exit_code == 0, res.output
        assert (tmp_path / command / report).is_file()


def test_an_empty_benchmark_file_is_named_as_empty(tmp_path):
    """It read "no text field(s)  to decontaminate against (fields: [])": a missing field, not an empty file."""
    corpus, _ = _setup(tmp_path)
    (tmp_path / "empty.jsonl").write_text("")
    res = runner.invoke(app, ["decontaminate", str(corpus), "-o", str(tmp_path / "out.jsonl"),
                              "-b", str(tmp_path / "empty.jsonl")])
    assert res.exit_code == 1 and res.output.count("\n") == 1, res.output
    assert res.output == f"error: {tmp_path / 'empty.jsonl'}: no benchmark items (the file is empty)\n"


def test_min_quote_words_from_the_command_line(tmp_path):
    """`--min-quote-words 13` drops a document quoting 13+ words of an item in a row, which 80 % similarity keeps."""
    corpus, _ = _setup(tmp_path)
    half = " ".join(QUESTIONS["a"].split()[:14])
    corpus.write_text(json.dumps({"text": f"As the old puzzle goes, {half}, and so on."}) + "\n"
                      + json.dumps({"text": "A page about spring in the fields."}) + "\n")
    base = ["decontaminate", str(corpus), "-b", str(tmp_path / "a.jsonl")]
    loose = runner.invoke(app, [*base, "-o", str(tmp_path / "loose.jsonl")])
    strict = runner.invoke(app, [*base, "-o", str(tmp_path / "strict.jsonl"), "--min-quote-words", "13"])
    assert loose.exit_code == 0 and strict.exit_code == 0, (loose.output, strict.output)
    assert json.loads(loose.stdout)["decontamination"]["dropped"] == {}
    assert json.loads(strict.stdout)["decontamination"]["dropped"] == {"a": 1}


def test_one_benchmark_name_given_twice_with_b_reads_both_files(tmp_path):
    """`-b gsm8k=train.jsonl -b gsm8k=test.jsonl` (or MMLU's dev and test) kept only the last: the first file's
    items were silently not checked (ARC-Easy test + dev: 570 items loaded, 10 pasted test items kept)."""
    corpus, _ = _setup(tmp_path)
    for name, q in QUESTIONS.items():
        (tmp_path / f"gsm_{name}.jsonl").write_text(json.dumps({"question": q, "answer": "It is 8.\n#### 8"}) + "\n")
    res = runner.invoke(app, ["decontaminate", str(corpus), "-o", str(tmp_path / "out.jsonl"),
                              "-b", f"gsm8k={tmp_path / 'gsm_a.jsonl'}", "-b", f"gsm8k={tmp_path / 'gsm_b.jsonl'}"])
    assert res.exit_code == 0, res.output
    stats = json.loads(res.stdout)["decontamination"]
    assert stats["dropped"] == {"gsm8k": 2} and stats["benchmark_items"] == {"gsm8k": 2}


def test_config_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    """A recipe's benchmark paths are read against the recipe's folder by `build`, but the same file given as
    `--config` read them against the working directory: "no such file", or another file of the same name."""
    corpus, _ = _setup(tmp_path)
    (tmp_path / "recipes" / "evals").mkdir(parents=True)
    (tmp_path / "a.jsonl").rename(tmp_path / "recipes" / "evals" / "a.jsonl")
    (tmp_path / "recipes" / "r.yaml").write_text("curation:\n  decontamination:\n    benchmarks: [evals/a.jsonl]\n")
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["decontaminate", str(corpus), "-o", "out.jsonl", "--config", "recipes/r.yaml",
                              "-b", "recipes/evals/a.jsonl"])
    assert res.exit_code == 0, res.output
    stats = json.loads(res.stdout)["decontamination"]
    assert stats["dropped"] == {"a": 1} and stats["benchmark_items"] == {"a": 1}  # one file, given two ways
