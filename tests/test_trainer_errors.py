"""Bad input to `python -m trainer ...` gives one `error: ...` line naming the file or option and exit 2,
never a traceback, and deletes nothing of the user's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from trainer_testlib import one_torch_thread

from trainer.cli import main

pytestmark = pytest.mark.usefixtures(one_torch_thread.__name__)


@pytest.fixture(scope="module")
def made(tmp_path_factory, shared_data) -> dict[str, Path]:
    """A 1-step tiny run (synthetic tokens) and its export."""
    root = tmp_path_factory.mktemp("errors")
    tok = shared_data / "tokenizer_gpt2"
    assert main(["train", "-c", "tiny", "--synthetic", "--max-steps", "1", "--run-dir", str(root / "run"),
                 "--device", "cpu", "--no-progress", "--set", f"data.tokenizer={tok}"]) == 0
    assert main(["export", str(root / "run"), str(root / "hf"), "--dtype", "float32"]) == 0
    return {"root": root, "run": root / "run", "hf": root / "hf", "tok": tok}


def fill(argv: list[str], subs: dict[str, str]) -> list[str]:
    """`argv` with each placeholder (a key of `subs`) replaced."""
    for key, value in subs.items():
        argv = [a.replace(key, value) for a in argv]
    return argv


def fails(argv: list[str], message: str, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err  # progress bars may come before the error line
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last and "Traceback" not in err and err.count("error:") == 1, err


def test_prepare_refuses_an_existing_folder_or_file_it_did_not_make(made, tmp_path, capsys):
    src = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": ["hello world"] * 4}), src)
    build = tmp_path / "build"
    build.mkdir()
    (build / "journal.sqlite").write_text("keep me")
    afile = tmp_path / "notes.txt"
    afile.write_text("keep me too")
    for out in (build, afile):
        fails(["prepare", str(src), "--out", str(out), "--tokenizer", str(made["tok"]), "--workers", "1"],
              f"{out}: exists but holds no index.json", capsys)
    assert (build / "journal.sqlite").read_text() == "keep me" and afile.read_text() == "keep me too"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build", "docs.parquet", "notes.txt"]
    for scratch in ("tokens.tmp", "tokens.old"):  # the swap's scratch names, when taken by the user's files
        (tmp_path / scratch).mkdir()
        (tmp_path / scratch / "mine.txt").write_text("keep")
        fails(["prepare", str(src), "--out", str(tmp_path / "tokens"), "--tokenizer", str(made["tok"]),
               "--workers", "1"], f"{tmp_path / scratch}: exists and is not a token folder", capsys)
        assert (tmp_path / scratch / "mine.txt").read_text() == "keep"
        shutil.rmtree(tmp_path / scratch)
    tokens = tmp_path / "tokens"  # a folder of an earlier prepare is still replaced
    for force in ([], ["--force"]):
        assert main(["prepare", str(src), "--out", str(tokens), "--tokenizer", str(made["tok"]), "--workers", "1",
                     *force]) == 0
    assert (tokens / "index.json").is_file()


def _broken_export(made: dict[str, Path], dst: Path, how: str) -> Path:
    shutil.copytree(made["hf"], dst)
    if how == "no config":
        (dst / "config.json").unlink()
    elif how == "bad config":
        (dst / "config.json").write_text("{not json")
    elif how == "non-utf8 config":
        (dst / "config.json").write_bytes(b"\xff\xfe")
    elif how == "corrupt weights":
        (dst / "model.safetensors").write_bytes(b"\x01\x02")
    elif how == "no tokenizer":
        for f in dst.glob("tokenizer*"):
            f.unlink()
    return dst


@pytest.mark.parametrize("command", ["generate", "eval"])
@pytest.mark.parametrize(("how", "message"), [
    ("no config", "config.json: missing"),
    ("bad config", "config.json: not valid UTF-8 JSON"),
    ("non-utf8 config", "config.json: not valid UTF-8 JSON"),
    ("corrupt weights", "model.safetensors: corrupt or unreadable weights"),
    ("no tokenizer", "tokenizer.json: missing"),
])
def test_broken_export_folder_names_the_file(made, tmp_path, capsys, command, how, message):
    hf = _broken_export(made, tmp_path / "hf", how)
    extra = ["-p", "hi", "--max-new-tokens", "1"] if command == "generate" else ["--tasks", "arc_easy"]
    fails([command, str(hf), "--device", "cpu", *extra], f"{hf}/{message}", capsys)


def test_an_hf_folder_given_as_a_training_checkpoint_is_named_as_such(made, tmp_path, capsys):
    """An exported folder has config.json: the error said it was missing, and not what the folder is."""
    said = f"{made['hf']}: an HF model folder (config.json + model.safetensors), not a training checkpoint"
    fails(["export", str(made["hf"]), str(tmp_path / "o")], said, capsys)
    fails(["train", "-c", "tiny", "--synthetic", "--max-steps", "1", "--run-dir", str(tmp_path / "r"), "--resume",
           str(made["hf"]), "--set", f"data.tokenizer={made['tok']}"], said, capsys)
    assert not (tmp_path / "o").exists() and not (tmp_path / "r").exists()


def _broken_checkpoint(made: dict[str, Path], dst: Path, how: str) -> Path:
    shutil.copytree(made["run"] / "checkpoints", dst)
    step = next(dst.glob("step-*"))
    meta = json.loads((step / "meta.json").read_text())
    if how == "meta keys":
        (step / "meta.json").write_text(json.dumps({k: v for k, v in meta.items()
                                                    if k not in ("format", "model_config")}))
    elif how == "meta bytes":
        (step / "meta.json").write_bytes(b"\xff{}")
    elif how == "corrupt weights":
        for f in [*step.rglob("*.pt"), *step.rglob("*.distcp")]:
            f.write_bytes(b"garbage")
    return step


@pytest.mark.parametrize(("how", "message"), [
    ("meta keys", "meta.json: missing format, model_config"),
    ("meta bytes", "meta.json: not valid UTF-8 JSON"),
])
def test_broken_checkpoint_names_the_file(made, tmp_path, capsys, how, message):
    step = _broken_checkpoint(made, tmp_path / "ckpt", how)
    for argv in (["generate", str(step), "-p", "hi", "--device", "cpu"], ["export", str(step), str(tmp_path / "o")]):
        fails(argv, f"{step}/{message}", capsys)
    assert not (tmp_path / "o").exists()


def test_corrupt_checkpoint_weights(made, tmp_path, capsys):
    step = _broken_checkpoint(made, tmp_path / "ckpt", "corrupt weights")
    if json.loads((step / "meta.json").read_text())["format"] == "dcp":
        pytest.skip("a sharded (dcp) checkpoint: model.pt is not used")
    fails(["generate", str(step), "-p", "hi", "--device", "cpu"], f"{step}/model.pt: corrupt", capsys)


@pytest.mark.parametrize(("where", "message"), [
    (["export", "RUN", "FILE"], "FILE: File exists (expected a folder there)"),
    (["train", "-c", "tiny", "--synthetic", "--max-steps", "1", "--run-dir", "FILE", "--set", "data.tokenizer=TOK"],
     "FILE: File exists"),
    (["eval", "RUN", "--tasks", "arc_easy", "--out", "FILE"], "--out FILE: is a file"),
    (["prepare", "-c", "tiny", "--set", "data.cache_dir=FILE", "--set", "data.datasets.0.source=SRC",
      "--set", "data.tokenizer=TOK"], "FILE/"),
])
def test_a_file_where_a_folder_is_expected(made, tmp_path, capsys, where, message):
    afile = tmp_path / "afile"
    afile.write_text("keep")
    src = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": ["hello world"] * 4}), src)
    argv = fill(where, {"RUN": str(made["run"]), "FILE": str(afile), "SRC": str(src), "TOK": str(made["tok"])})
    fails(argv, message.replace("FILE", str(afile)), capsys)
    assert afile.read_text() == "keep"


@pytest.mark.parametrize("device", ["bogus", "cuda:99"])
def test_bad_device(made, capsys, device):
    import torch

    message = "not a device name" if device == "bogus" else (
        "GPU(s) here" if torch.cuda.is_available() else "CUDA is not available")
    for argv in (["generate", str(made["run"]), "-p", "hi"],
                 ["eval", str(made["hf"]), "--tasks", "arc_easy"],
                 ["train", "-c", "tiny", "--synthetic", "--max-steps", "1", "--run-dir", str(made["root"] / "r2"),
                  "--set", f"data.tokenizer={made['tok']}"]):
        fails([*argv, "--device", device], f"device {device!r}: {message}", capsys)


@pytest.mark.parametrize(("argv", "message"), [
    (["generate", "RUN", "-p", "hi", "--max-new-tokens", "-5"], "--max-new-tokens must be >= 0, got -5"),
    (["generate", "RUN", "-p", "hi", "--top-p", "0"], "--top-p must be in (0, 1] (1: off), got 0.0"),
    (["generate", "RUN", "-p", "hi", "--temperature", "-1"], "--temperature must be >= 0 (0: greedy), got -1.0"),
    (["generate", "RUN", "-p", "hi", "--top-k", "-3"], "--top-k must be >= 0 (0: off), got -3"),
    (["eval", "RUN", "--tasks", "foobar"], "unknown benchmark 'foobar'; known: "),
    (["eval", "HF", "--tasks", "arc_easy", "--dtype", "fp7"], "dtype 'fp7': expected one of"),
    (["eval", "/nope/x", "--tasks", "arc_easy"], "/nope/x: no such folder"),
    (["eval", "RUN", "--tasks", ""], "--tasks is empty"),
    (["eval", "RUN", "--tasks", "mmlu@-1"], "must be a whole number >= 0"),
    (["eval", "RUN", "--limit", "0"], "--limit must be >= 1, got 0"),
    (["eval", "RUN", "--limit", "-1"], "--limit must be >= 1, got -1"),
    (["eval", "RUN", "--num-fewshot", "-1"], "--num-fewshot must be >= 0"),
    (["eval", "RUN", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["eval", "RUN", "--max-batch-tokens", "0"], "--max-batch-tokens must be >= 1"),
    (["eval", "RUN", "--sandbox-timeout", "-1"], "--sandbox-timeout must be > 0"),
    (["eval", "RUN", "--tasks", "gsm8k", "--data-file", "X"], "--data-file 'X': expected TASK=PATH"),
    (["eval", "RUN", "--tasks", "gsm8k", "--data-file", "foo=X"], "task 'foo' is not among --tasks (gsm8k)"),
    (["eval", "HF", "--tasks", "gsm8k", "--device", "cpu", "--data-file", "gsm8k=EMPTY"],
     "gsm8k: no evaluation items in"),
    (["train-tokenizer", "SRC", "--vocab-size", "300", "--out", "DIR"], "--out DIR: is a folder"),
    (["train-tokenizer", "INT", "--vocab-size", "300", "--out", "t.json"], "column 'text' holds int64"),
    (["train-tokenizer", "SRC", "--vocab-size", "99999999999", "--out", "t.json"], "outside 258..1048576"),
    (["train-tokenizer", "DIR", "--vocab-size", "300", "--out", "t.json"], "no .parquet files in DIR"),
    (["train-tokenizer", "EMPTY", "--vocab-size", "300", "--out", "t.json"], "no text to train on"),
])
def test_bad_options(made, tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    pq.write_table(pa.table({"text": ["hello world"] * 4}), tmp_path / "docs.parquet")
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "int.parquet")
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "folder").mkdir()
    argv = fill(argv, {"RUN": str(made["run"]), "HF": str(made["hf"]), "SRC": "docs.parquet", "INT": "int.parquet",
                       "DIR": "folder", "EMPTY": "empty.jsonl"})
    fails(argv, message.replace("DIR", "folder"), capsys)
    assert not (tmp_path / "t.json").exists()


def test_export_whose_training_tokenizer_is_out_of_reach_says_how_to_go_on(made, tmp_path, capsys, monkeypatch):
    """A synthetic run on an offline GPU node: the default gpt2-codegen spec needs the Hub."""
    import trainer.tokenizer as tokenizer_mod

    def offline(spec):
        raise ValueError(f"cannot fetch GPT-2 BPE files for {spec} (offline?)")

    monkeypatch.setattr(tokenizer_mod, "load_tokenizer", offline)
    fails(["export", str(made["run"]), str(tmp_path / "hf")], "pass --tokenizer PATH, or --no-tokenizer", capsys)
    assert main(["export", str(made["run"]), str(tmp_path / "hf"), "--no-tokenizer"]) == 0


@pytest.mark.parametrize(("text", "message"), [
    (b"model:\n  bad: [1\n", "CFG:3: not valid YAML: expected ',' or ']', but got '<stream end>' "
                             "(while parsing a flow sequence at line 2)"),
    (b"model:\n  name: tiny\n\xff\xfe: 1\n", "CFG:3: not valid UTF-8"),
    (b"model:\n  name: tiny\nmodel:\n  name: phi-1.5\n", "CFG:3: model: duplicate key"),
    (b"data:\n  datasets:\n    - source: a\n      source: b\n", "CFG:4: data.datasets.0.source: duplicate key"),
    (b"model:\n\tname: tiny\n", "CFG:2: not valid YAML: found character '\\t' that cannot start any token; "
                                "indent with spaces, not tabs"),
    (b"- model\n- train\n", "CFG:1: the top level must be a mapping of sections"),
    (b"", "CFG: empty config file"),
    (b"# nothing but a comment\n", "CFG: empty config file"),
    (None, "config file not found: CFG"),
])
def test_bad_config_file_is_one_line_naming_file_and_line(tmp_path, capsys, text, message):
    cfg = tmp_path / "c.yaml"
    if text is not None:
        cfg.write_bytes(text)
    assert main(["train", "-c", str(cfg), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {message.replace('CFG', str(cfg))}") and "\n" not in err, err


@pytest.mark.parametrize(("override", "message"), [
    ("model.x=[1", "--set 'model.x=[1': value is not valid YAML (column 3): expected ',' or ']'"),
    ("model.x=a: b: c", "--set 'model.x=a: b: c': value is not valid YAML (column 5): mapping values are not allowed"),
    ("model.x", "--set 'model.x': expected KEY=VALUE"),
])
def test_bad_set_is_one_line_naming_it(capsys, override, message):
    assert main(["train", "-c", "tiny", "--set", override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {message}") and "\n" not in err, err


VALID = "data:\n  synthetic: true\ntrain:\n  max_steps: 1\n"  # a config that trains: each case breaks it


@pytest.mark.parametrize(("text", "argv", "lines"), [
    (VALID + "optim:\n  lr: -1\n", [], ["CFG:6: optim.lr: Input should be greater than 0"]),
    ("data:\n  datasets:\n    - source: a\n      weight: 0\noptim:\n  lr: 1.0e-3\n  lrr: 2\ntrain:\n  max_steps: 1\n"
     "  global_batch: 10\n  micro_batch: 4\n",
     [], ["CFG:4: data.datasets.0.weight: Input should be greater than 0",
          "CFG:7: optim.lrr: unknown field (did you mean optim.lr?)",
          "CFG:8: train: global_batch (10) must be a multiple of micro_batch (4)"]),
    ("train:\n  max_steps: 1\n  max_tokens: 1.0e+6\ndata:\n  synthetic: true\n", [],
     ["CFG: train.max_steps (1) and train.max_tokens (1e+06) are both set; keep one: --set train.max_steps=null to "
      "train by tokens, or --set train.max_tokens=null to train by steps"]),
    (VALID, ["--set", "optim.lr=0"], ["--set optim.lr: Input should be greater than 0"]),
    (VALID, ["--set", "optim={lr: 0}"], ["--set optim: optim.lr: Input should be greater than 0"]),
    (VALID, ["--set", "train.micro_batch=3"],
     ["--set train.micro_batch: train: global_batch (2048) must be a multiple of micro_batch (3)"]),
    (VALID + "  global_batch: 10\n  micro_batch: 4\n", ["--device", "cpu"],  # the file's, not --device's
     ["CFG:3: train: global_batch (10) must be a multiple of micro_batch (4)"]),
    (VALID, ["--set", "data.datasets=[{source: a, weight: 0}]"],
     ["--set data.datasets: data.datasets.0.weight: Input should be greater than 0"]),
    (VALID, ["--set", "data.datasets=[{weight: 1}]"], ["--set data.datasets: data.datasets.0.source: required field "
                                                      "missing"]),
    (VALID, ["--set", "train.max_steps.x=1"], ["--set train.max_steps.x: train.max_steps is a value, not a section"]),
    ("data:\n  datasets: [{source: a}]\ntrain:\n  max_steps: 1\n", ["--set", "data.datasets.3.weight=1"],
     ["--set data.datasets.3.weight: data.datasets.3: no list item 3 (list has 1)"]),
    (VALID, ["--max-steps", "0"], ["--max-steps: train.max_steps: Input should be greater than or equal to 1"]),
], ids=["field", "several", "top level", "set", "set section", "set in checked section", "flag in checked section",
        "set list", "set missing", "set through a value", "set past a list", "flag"])
def test_invalid_config_is_one_line_per_problem_naming_file_line_or_set(tmp_path, capsys, text, argv, lines):
    """As the recipe loader's: each line names the file and line (or the --set) and the field, with no
    "Value error, " of pydantic's; it was one "invalid config X:" header over indented fields."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    assert main(["train", "-c", str(cfg), "--run-dir", str(tmp_path / "run"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [("error: " if i == 0 else "") + line.replace("CFG", str(cfg))
                                for i, line in enumerate(lines)], err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("override", "message"), [
    ("train.lr=1e-3", "--set train.lr: unknown field (did you mean optim.lr?)"),
    ("train.warmup_steps=10", "--set train.warmup_steps: unknown field (did you mean schedule.warmup_steps?)"),
    ("train.max_step=10", "--set train.max_step: unknown field (did you mean train.max_steps?)"),
    ("data.datasets.0.colum=body", "--set data.datasets.0.colum: unknown field (did you mean data.datasets.0.column?)"),
    ("log.interval=5", "--set log.interval: unknown field (check the spelling)"),
])
def test_an_unknown_field_names_the_one_meant(capsys, override, message):
    """nanoGPT/litgpt keep lr and warmup beside the batch; here they live in optim and schedule: say where."""
    assert main(["train", "-c", "tiny", "--set", override]) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"
