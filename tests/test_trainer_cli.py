"""`python -m trainer prepare|train|export|generate`, clear CLI errors, and 2-process DDP/FSDP2 on gloo."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from trainer_testlib import one_torch_thread, tiny_overrides, wiki_corpus

from trainer import checkpoint
from trainer.cli import main
from trainer.config import _set_dotted, load_config
from trainer.train import train

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures(one_torch_thread.__name__)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, shared_data):
    return wiki_corpus(tmp_path_factory.mktemp("cli"), shared_data)


def write_config(corpus, path: Path, run_dir: Path, **extra) -> Path:
    tree: dict = {}
    for k, v in tiny_overrides(run_dir, corpus["root"] / "cache", corpus["tok"], [(corpus["wiki"], 1.0)],
                               **extra).items():
        _set_dotted(tree, k, v, "test")
    path.write_text(yaml.safe_dump(tree))
    return path


def test_prepare_train_export_generate(corpus, tmp_path, capsys):
    out = tmp_path / "tokens"
    assert main(["prepare", str(corpus["wiki"]), "--out", str(out), "--tokenizer", str(corpus["tok"]),
                 "--workers", "1"]) == 0
    assert "150 documents" in capsys.readouterr().out
    assert json.loads((out / "index.json").read_text())["documents"] == 150

    cfg = write_config(corpus, tmp_path / "c.yaml", tmp_path / "run")
    assert main(["prepare", "-c", str(cfg), "--set", "data.datasets.0.holdout_fraction=0.05"]) == 0
    assert re.search(r"[1-9]\d* documents \([\d,]+ tokens\) held out for validation", capsys.readouterr().out)
    assert main(["train", "-c", str(cfg), "--max-steps", "3", "--set", "optim.lr=1e-3", "--no-progress",
                 "--set", "data.datasets.0.holdout_fraction=0.05", "--set", "train.eval_interval=2"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"final step=3 loss=\d\.\d{4} val_loss=\d\.\d{4} tokens_per_s=", text)
    assert checkpoint.read_meta(tmp_path / "run")["config"]["optim"]["lr"] == 1e-3

    hf = tmp_path / "hf"
    assert main(["export", str(tmp_path / "run"), str(hf), "--dtype", "float32"]) == 0
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {p.name for p in hf.iterdir()}
    from trainer.export import load_hf

    ours, exported = checkpoint.load_model(tmp_path / "run"), load_hf(hf)
    x = torch.randint(0, 400, (1, 16))
    assert torch.equal(ours(x), exported(x))

    capsys.readouterr()
    for source in (hf, tmp_path / "run"):
        assert main(["generate", str(source), "-p", "The history of", "--max-new-tokens", "8", "--seed", "0",
                     "--device", "cpu"]) == 0
        assert capsys.readouterr().out.startswith("The history of")


def test_train_tokenizer(corpus, tmp_path, capsys):
    out = tmp_path / "tok" / "tokenizer.json"
    assert main(["train-tokenizer", str(corpus["wiki"]), "--vocab-size", "300", "--out", str(out)]) == 0
    assert "338 tokens from 2 file(s)" in capsys.readouterr().out
    from trainer.tokenizer import load_tokenizer

    assert load_tokenizer(out).token_to_id("<|endoftext|>") == 0


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "-c", "tiny", "--set", "train.lr=1"], "train.lr: unknown field"),
    (["train", "-c", "missing.yaml"], "config file not found: missing.yaml"),
    (["train", "-c", "tiny", "--set", "data.datasets.0.source=/no/such/folder", "--set", "data.tokenizer=x"],
     "dataset not found: '/no/such/folder'"),
    (["export", "/no/such/run", "out"], "no checkpoint at /no/such/run"),
    (["prepare"], "give a dataset SOURCE with --out, or --config"),
    (["train", "-c", "phi-1.5", "--set", "train.max_steps=5"],
     "train.max_steps (5) and train.max_tokens (1.5e+11) are both set; keep one: --set train.max_steps=null"),
])
def test_user_errors_are_one_clear_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_max_steps_flag_replaces_a_token_budget(monkeypatch):
    """`--max-steps N` on a config that stops by tokens (phi-1.5) trains N steps instead of being refused
    for setting both train.max_steps and train.max_tokens."""
    from trainer import train as train_module
    from trainer.train import TrainResult

    seen = []
    monkeypatch.setattr(train_module, "train", lambda cfg, progress=None, started=None: seen.append(cfg) or TrainResult(
        Path(cfg.run_dir), 0, 0, "done"))
    assert main(["train", "-c", "phi-1.5", "--max-steps", "5", "--run-dir", "unused"]) == 0
    assert seen[0].max_steps == 5 and seen[0].train.max_tokens is None


def test_a_long_lived_process_calling_main_counts_its_time_budget_from_the_call(monkeypatch):
    """The budget counts from the process's start for a shell command; a notebook's kernel that calls main()
    hours after it started would otherwise be out of budget before the first step."""
    from trainer import cli
    from trainer import train as train_module
    from trainer.train import TrainResult

    seen = []
    monkeypatch.setattr(train_module, "train", lambda cfg, progress=None, started=None: seen.append(started) or
                        TrainResult(Path(cfg.run_dir), 0, 0, "done"))
    args = ["train", "-c", "phi-1.5", "--max-steps", "5", "--run-dir", "unused", "--time-budget", "60"]
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.setattr(cli, "_STARTED", time.perf_counter() - 3600.0)  # a kernel started an hour ago
    before = time.perf_counter()
    assert main(args) == 0 and seen[-1] >= before
    monkeypatch.setattr(cli, "_STARTED", time.perf_counter() - 5.0)  # a shell command, 5 s into its imports
    assert main(args) == 0 and seen[-1] == cli._STARTED

def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), NCCL_NVLS_ENABLE="0")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "trainer", "train", "--no-progress", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_ddp_two_processes_match_one(corpus, tmp_path):
    """2 ranks x micro 2 on gloo see the same samples as 1 rank x 2 micro-steps: same losses."""
    cfg = write_config(corpus, tmp_path / "c.yaml", tmp_path / "ddp", **{"train.max_steps": 4,
                                                                          "train.micro_batch": 2})
    assert main(["prepare", "-c", str(cfg)]) == 0
    proc = torchrun(["-c", str(cfg)], tmp_path)
    assert "ddp x2" in proc.stdout and proc.stdout.count("final step=4") == 1
    ddp = [json.loads(x)["loss"] for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    single = train(load_config(cfg, {"run_dir": str(tmp_path / "single")}))
    assert ddp == pytest.approx([r["loss"] for r in single.history], abs=1e-5)


@pytest.mark.slow
def test_fsdp2_two_processes_and_resharded_resume(corpus, tmp_path):
    """FSDP2 on 2 ranks writes a sharded DCP checkpoint; one process resumes it with the same data order."""
    cfg = write_config(corpus, tmp_path / "c.yaml", tmp_path / "fsdp", **{"train.max_steps": 6,
                                                                           "distributed.strategy": "fsdp"})
    assert main(["prepare", "-c", str(cfg)]) == 0
    torchrun(["-c", str(cfg), "--max-steps", "3"], tmp_path)
    ckpt = checkpoint.resolve(tmp_path / "fsdp")
    assert sorted(p.name for p in (ckpt / "dcp").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert checkpoint.read_meta(ckpt)["world_size"] == 2
    # train.init_from the sharded checkpoint, on 2 FSDP2 ranks and in one process: the same first loss
    torchrun(["-c", str(cfg), "--max-steps", "1", "--run-dir", str(tmp_path / "init"), "--set",
              f"train.init_from={ckpt}"], tmp_path)
    init_loss = json.loads((tmp_path / "init" / "metrics.jsonl").read_text())["loss"]
    one = train(load_config(cfg, {"run_dir": str(tmp_path / "init1"), "train.max_steps": 1,
                                  "train.init_from": str(ckpt), "distributed.strategy": "auto"}))
    assert init_loss == pytest.approx(one.history[0]["loss"], abs=1e-5)
    cold = json.loads((tmp_path / "fsdp" / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    assert init_loss < cold - 0.3  # the trained weights, not a fresh init, on the same first samples
    resumed = train(load_config(cfg, {"distributed.strategy": "auto"}))
    assert resumed.start_step == 3
    full = train(load_config(cfg, {"run_dir": str(tmp_path / "full")}))
    fsdp_losses = [json.loads(x)["loss"] for x in (tmp_path / "fsdp" / "metrics.jsonl").read_text().splitlines()]
    assert fsdp_losses == pytest.approx([r["loss"] for r in full.history], abs=1e-5)
    shutil.rmtree(tmp_path / "full")


@pytest.mark.slow
def test_an_error_every_rank_meets_is_printed_once_under_torchrun(corpus, tmp_path):
    """2 ranks on gloo, data never prepared: the error line came once per rank; now once, naming the rank that
    printed it, and each rank still exits 2 (bad input)."""
    cfg = write_config(corpus, tmp_path / "c.yaml", tmp_path / "run", **{"train.max_steps": 1,
                                                                         "data.cache_dir": str(tmp_path / "cache")})
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), NCCL_NVLS_ENABLE="0")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "trainer", "train", "--no-progress", "-c", str(cfg)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert re.match(r"error: rank [01] of 2: tokenized data missing or out of date for ", errors[0]), errors
    assert proc.returncode == 1 and "exitcode  : 2" in proc.stderr and "exitcode  : 1" not in proc.stderr


def test_a_torchrun_error_is_printed_by_the_first_rank_that_meets_it(tmp_path, monkeypatch, capsys):
    """The decision, with ranks played in turn against a store like torchrun's agent's: an error line or a
    crash's traceback the ranks meet alike is printed once, by the first, named; another one is printed too;
    every rank keeps its exit code. Without the agent's store (another launcher) every rank prints."""
    from datetime import timedelta

    import torch.distributed as dist

    from trainer.cli import report_user_errors

    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=30))
    for key, value in {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(store.port),
                       "TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_RESTART_COUNT": "0"}.items():
        monkeypatch.setenv(key, value)

    def fail(error: Exception):
        def run(_args) -> int:
            raise error
        return run

    def as_rank(rank: int, error: Exception) -> tuple[int, str]:
        monkeypatch.setenv("RANK", str(rank))
        code = report_user_errors(fail(error), None)  # type: ignore[arg-type]
        return code, capsys.readouterr().err

    missing = "dataset not found: '/no/such/folder'"
    assert as_rank(1, ValueError(missing)) == (2, f"error: rank 1 of 2: {missing}\n")
    assert as_rank(0, ValueError(missing)) == (2, "")
    assert as_rank(0, FileNotFoundError(2, "No such file or directory", "/x/index.json")) == (
        2, "error: rank 0 of 2: /x/index.json: No such file or directory\n")
    code, err = as_rank(0, TypeError("a bug"))
    assert code == 1 and err.startswith("rank 0 of 2:\nTraceback (most recent call last):") and "TypeError: a bug" in err
    assert as_rank(1, TypeError("a bug"))[1] == ""  # the same traceback: not printed again
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")
    assert as_rank(1, ValueError(missing)) == (2, f"error: rank 1 of 2: {missing}\n")
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: a crash is still raised as it is
    with pytest.raises(TypeError):
        as_rank(0, TypeError("a bug"))


@pytest.mark.parametrize(("reason", "code"), [("done", 0), ("SIGINT", 130), ("SIGTERM", 143), ("time budget", 3),
                                              ("stop requested on another rank", 3)])
def test_train_exit_code_tells_stopped_from_done(reason, code, tmp_path, monkeypatch, capsys):
    """`train && export` must not export a half-trained model, and a requeue loop must tell "stopped" from "done"."""
    from trainer import train as train_module
    from trainer.train import TrainResult

    (tmp_path / "run" / "checkpoints" / "step-00000005").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "step-00000005" / "meta.json").write_text("{}")
    monkeypatch.setattr(train_module, "train", lambda cfg, progress=None, started=None: TrainResult(Path(cfg.run_dir), 0, 5, reason))
    assert main(["train", "-c", "tiny", "--run-dir", str(tmp_path / "run")]) == code
    err = capsys.readouterr().err
    if code:
        assert err == (f"exit code {code} ({reason}): resumable; run the same command again to go on from "
                       f"{tmp_path / 'run' / 'checkpoints' / 'step-00000005'}\n")
    assert main(["train", "-c", "tiny", "--run-dir", str(tmp_path / "run"), "--resume", "never"]) == code
    assert ("run the same command again with --resume auto to go on" in capsys.readouterr().err) == bool(code)


def test_a_time_budget_stop_exits_3_and_the_same_command_finishes(corpus, tmp_path, capsys):
    cfg = write_config(corpus, tmp_path / "c.yaml", tmp_path / "run", **{"train.max_steps": 4})
    assert main(["train", "-c", str(cfg), "--no-progress", "--time-budget", "1e-9"]) == 3
    assert "exit code 3 (time budget): resumable; run the same command again" in capsys.readouterr().err
    assert checkpoint.read_meta(tmp_path / "run")["step"] == 1
    assert main(["train", "-c", str(cfg), "--no-progress"]) == 0
    assert "final step=4" in capsys.readouterr().out
    assert "exit codes: 0 done; 3 stopped by --time-budget" in " ".join(_train_help(capsys).split())


def _train_help(capsys) -> str:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    return capsys.readouterr().out


def _exit_code(argv: list[str]) -> int | str:
    """main(argv), with a KeyboardInterrupt that escapes it a failed assertion rather than the end of pytest."""
    try:
        return main(argv)
    except KeyboardInterrupt:
        return "KeyboardInterrupt escaped"


def test_ctrl_c_while_preparing_is_one_line_and_exit_130(corpus, tmp_path, monkeypatch, capsys):
    """In `prepare` and in `train` preparing its data: no KeyboardInterrupt traceback; the rerun goes on."""
    from trainer import data

    encode = data._encode

    def ctrl_c_in_the_second_file(job):
        if job[0] == 1 and job[1]:
            raise KeyboardInterrupt
        return encode(job)

    monkeypatch.setattr(data, "_encode", ctrl_c_in_the_second_file)
    out = tmp_path / "tokens"
    argv = ["prepare", str(corpus["wiki"]), "--out", str(out), "--tokenizer", str(corpus["tok"]), "--workers", "1"]
    assert _exit_code(argv) == 130
    err = capsys.readouterr().err.strip()
    assert err == (f"interrupted: prepare of {corpus['wiki']} stopped after 1 of 2 source files (kept in "
                   f"{out}.tmp); run it again to go on from there")
    cfg = write_config(corpus, tmp_path / "c.yaml", tmp_path / "run", **{"data.cache_dir": str(tmp_path / "cache")})
    assert _exit_code(["train", "-c", str(cfg), "--no-progress"]) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("interrupted: prepare of") and "\n" not in err
    monkeypatch.undo()
    assert main(argv) == 0
    assert "going on from an interrupted prepare (1 of 2 source files done)" in capsys.readouterr().err


def test_train_tokenizer_learns_from_the_train_split_and_warns_when_the_vocab_is_short(corpus, tmp_path, capsys):
    """A dataset folder means its train split, as for prepare (not its validation files too); a vocabulary the
    text cannot fill is said in one line."""
    folder = tmp_path / "ds"
    shutil.copytree(corpus["wiki"], folder)
    shutil.copy(folder / "data" / "train-00000-of-00002.parquet", folder / "data" / "validation-00000-of-00001.parquet")
    assert main(["train-tokenizer", str(folder), "--vocab-size", "300", "--out", str(tmp_path / "t.json")]) == 0
    said = capsys.readouterr()
    assert "338 tokens from 2 file(s)" in said.out and said.err == ""
    assert main(["train-tokenizer", str(folder), "--vocab-size", "60000", "--out", str(tmp_path / "t.json")]) == 0
    err = capsys.readouterr().err
    assert re.fullmatch(r"warning: --vocab-size 60,000 asked for, but the text only gave [\d,]+ BPE tokens \(no pair "
                        r"left that occurs twice\); more text gives more\n", err), err


def test_tokenizer_hints_name_the_options_of_the_command(corpus, tmp_path, monkeypatch, capsys):
    """`train` takes a tokenizer only as data.tokenizer; generate has no --no-tokenizer (export's)."""
    import trainer.tokenizer as tokenizer_mod

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tokenizer_mod, "_hub_unreachable", lambda *a, **k: "no network: test")
    monkeypatch.setattr(tokenizer_mod, "_cached", lambda *a, **k: None)
    cfg = write_config(corpus, tmp_path / "c.yaml", tmp_path / "run", **{"data.tokenizer": "gpt2-codegen",
                                                                         "data.cache_dir": str(tmp_path / "cache")})
    assert main(["train", "-c", str(cfg), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "(no network: test) and they are not in the HF cache: set data.tokenizer (in the config, or --set " \
           "data.tokenizer=PATH) to a folder holding GPT-2's BPE files" in err and "--tokenizer " not in err, err

    train(load_config(write_config(corpus, tmp_path / "c2.yaml", tmp_path / "run2", **{"train.max_steps": 1})))
    assert main(["generate", str(tmp_path / "run2"), "-p", "x", "--tokenizer", "gpt2-codegen"]) == 2
    err = capsys.readouterr().err
    assert "not in the HF cache: give --tokenizer a folder holding" in err and "data.tokenizer" not in err, err
    # a run from before checkpoints kept their tokenizer, whose config's one cannot be loaded here
    from trainer.cli import _EXPORT_WEIGHTS_ALONE, _command_hints

    line = f"offline (the training config's data.tokenizer; pass --tokenizer PATH{_EXPORT_WEIGHTS_ALONE})"
    assert _command_hints(line, "export") == line
    assert _command_hints(line, "generate") == "offline (the training config's data.tokenizer; pass --tokenizer PATH)"


def test_tensorboard_has_an_extra_outside_the_torch_free_sdk():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert any(r.startswith("tensorboard") for r in project["optional-dependencies"]["tensorboard"])
    assert not any(r.startswith(("tensorboard", "torch")) for r in project["dependencies"])


def test_the_final_line_reports_tokens_over_time_not_a_mean_of_step_rates(tmp_path, monkeypatch, capsys):
    """A 1 s and a 0.25 s step of 100 tokens each are 200 tokens in 1.25 s: 160 tokens/s, not the 250 of a plain
    mean of their rates; MFU likewise (the first step, with its compile, is left out of both)."""
    from trainer import train as train_module
    from trainer.train import TrainResult

    history = [{"step": 1, "loss": 3.0, "step_s": 9.0, "tokens_per_s": 11.1, "mfu": 0.01},
               {"step": 2, "loss": 2.5, "step_s": 1.0, "tokens_per_s": 100.0, "mfu": 0.1},
               {"step": 3, "loss": 2.0, "step_s": 0.25, "tokens_per_s": 400.0, "mfu": 0.4}]
    monkeypatch.setattr(train_module, "train", lambda cfg, progress=None, started=None: TrainResult(
        Path(cfg.run_dir), 0, 3, "done", history))
    assert main(["train", "-c", "tiny", "--run-dir", str(tmp_path / "run")]) == 0
    assert "final step=3 loss=2.0000 tokens_per_s=160 mfu=0.1600 stop=done" in capsys.readouterr().out


def test_train_tokenizer_reads_the_column_given(corpus, tmp_path, capsys):
    """A published dataset keeps its columns as given (`textbookgen publish --text-column eng_Latn`): the
    tokenizer trains on the column named, as `prepare --column` reads it."""
    import pyarrow.parquet as pq

    folder = tmp_path / "ds" / "data"
    folder.mkdir(parents=True)
    for f in (corpus["wiki"] / "data").glob("*.parquet"):
        pq.write_table(pq.read_table(f).rename_columns(["eng_Latn", "id"]), folder / f.name)
    out = str(tmp_path / "t.json")
    assert main(["train-tokenizer", str(folder.parent), "--vocab-size", "300", "--out", out]) == 2
    assert "no 'text' column (columns: ['eng_Latn', 'id']); name the text column with --column" in capsys.readouterr().err
    assert main(["train-tokenizer", str(folder.parent), "--vocab-size", "300", "--out", out, "--column", "eng_Latn"]) == 0
    assert "338 tokens from 2 file(s)" in capsys.readouterr().out

def test_a_torchrun_worker_started_long_after_its_launcher_counts_from_the_launcher(monkeypatch):
    """torchrun starts its workers after the rendezvous (minutes on a multi-node job whose nodes come up apart)
    and again after a failure (--max-restarts): the 60 s "a notebook called main()" rule then counted the budget
    from the worker's own start, past the scheduler's limit, which counts from the launch."""
    from trainer import cli
    from trainer import train as train_module
    from trainer.train import TrainResult

    seen = []
    monkeypatch.setattr(train_module, "train", lambda cfg, progress=None, started=None: seen.append(started) or
                        TrainResult(Path(cfg.run_dir), 0, 0, "done"))
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "run")
    monkeypatch.setattr(cli, "_STARTED", time.perf_counter() - 300.0)  # the launcher, 5 minutes into its rendezvous
    args = ["train", "-c", "phi-1.5", "--max-steps", "5", "--run-dir", "unused", "--time-budget", "3600"]
    assert cli.main(args) == 0 and seen[-1] == cli._STARTED


def test_train_tokenizer_on_a_configs_datasets_reads_each_ones_column(corpus, tmp_path, capsys):
    """The tokenizer for a mix is trained on that mix: `train-tokenizer -c CONFIG` reads each dataset's training
    split with its own text column (one --column could not name two)."""
    import pyarrow.parquet as pq

    renamed = tmp_path / "ds" / "data"
    renamed.mkdir(parents=True)
    for f in (corpus["wiki"] / "data").glob("*.parquet"):
        pq.write_table(pq.read_table(f).rename_columns(["eng_Latn", "id"]), renamed / f.name)
    cfg = write_config(corpus, tmp_path / "c.yaml", tmp_path / "run")
    tree = yaml.safe_load(cfg.read_text())
    tree["data"]["datasets"].append({"source": str(renamed.parent), "column": "eng_Latn", "weight": 1.0})
    cfg.write_text(yaml.safe_dump(tree))
    out = str(tmp_path / "t.json")
    assert main(["train-tokenizer", "-c", str(cfg), "--vocab-size", "300", "--out", out]) == 0, capsys.readouterr()
    assert "tokens from 4 file(s)" in capsys.readouterr().out
    assert main(["train-tokenizer", "-c", str(cfg), "--set", "data.datasets.1.column=body", "--vocab-size", "300",
                 "--out", out]) == 2
    assert "no 'body' column (columns: ['eng_Latn', 'id'])" in capsys.readouterr().err
    assert main(["train-tokenizer", "--vocab-size", "300", "--out", out]) == 2
    assert "give FILES to train on, or --config" in capsys.readouterr().err
    assert main(["train-tokenizer", str(renamed.parent), "--set", "data.datasets.0.column=x", "--vocab-size", "300",
                 "--out", out]) == 2
    assert "--set changes a config: give it with --config" in capsys.readouterr().err
