"""A run folder belongs to one run, one model and one tokenizer: a second `train` into it is refused at once,
each checkpoint keeps the tokenizer its weights learned (export, generate and eval read it), a resume that
would change the tokenizer or the model's shape, or that has nothing left to train, says so in one line
before anything is written, and a torn last line of metrics.jsonl does not block a resume."""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
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
    from trainer.tokenizer import train_tokenizer

    corpus = wiki_corpus(tmp_path_factory.mktemp("guards"), shared_data)
    other = train_tokenizer(sorted((corpus["wiki"] / "data").glob("*.parquet")), vocab_size=300)
    other.save(str(corpus["root"] / "other.json"))
    return {**corpus, "other": corpus["root"] / "other.json"}


def overrides(corpus, run_dir, **extra) -> dict:
    return tiny_overrides(run_dir, corpus["root"] / "cache", corpus["tok"], [(corpus["wiki"], 1.0)], **extra)


def write_config(cfg: dict, path: Path) -> Path:
    tree: dict = {}
    for k, v in cfg.items():
        _set_dotted(tree, k, v, "test")
    path.write_text(yaml.safe_dump(tree))
    return path


def files_of(run: Path) -> dict[str, bytes]:
    """Every file of a run folder and its bytes (the lock file aside: each start records its pid there)."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file() and p.name != ".lock"}


def as_old_checkpoint(ckpt: Path) -> None:
    """Make `ckpt` look like one from before checkpoints kept their tokenizer."""
    (ckpt / "tokenizer.json").unlink(missing_ok=True)
    meta = json.loads((ckpt / "meta.json").read_text())
    meta.pop("tokenizer_sha256", None)
    (ckpt / "meta.json").write_text(json.dumps(meta))


def one_line_error(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ----------------------------------------------------------------------------- one run per folder


def test_a_second_train_into_a_run_dir_is_refused_until_the_first_dies(corpus, tmp_path, capsys):
    """Two runs into one folder interleaved metrics.jsonl and overwrote each other's checkpoints; the second
    is refused at once, naming the folder and the holder's pid, and the lock goes with the holder (kill -9)."""
    run = tmp_path / "run"
    cfg = write_config(overrides(corpus, run, **{"train.max_steps": 100_000, "checkpoint.every": 2}),
                       tmp_path / "c.yaml")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    holder = subprocess.Popen([sys.executable, "-m", "trainer", "train", "-c", str(cfg), "--no-progress"], cwd=REPO,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while checkpoint.find_latest(run / "checkpoints") is None and holder.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert holder.poll() is None, holder.communicate()[1][-2000:]
        config = (run / "config.yaml").read_text()
        err = one_line_error(["train", "-c", str(cfg), "--max-steps", "3", "--no-progress"], capsys)
        assert f"{run}: in use by another train run (pid {holder.pid} on {platform.node()})" in err
        assert "--run-dir" in err
        assert (run / "config.yaml").read_text() == config
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate()
    step = checkpoint.read_meta(run)["step"]
    assert train(load_config(cfg, {"train.max_steps": step + 1})).final_step == step + 1


def test_the_lock_is_released_when_a_run_ends_or_fails(corpus, tmp_path):
    import fcntl

    from trainer.train import RunDirBusy

    run = tmp_path / "run"
    train(load_config(None, overrides(corpus, run, **{"train.max_steps": 1})))
    with pytest.raises(checkpoint.CheckpointError):  # refused after taking the lock
        train(load_config(None, overrides(corpus, run, **{"train.max_steps": 2, "data.cache_dir": str(tmp_path / "c"),
                                                          "data.tokenizer": str(corpus["other"])})))
    assert train(load_config(None, overrides(corpus, run, **{"train.max_steps": 2}))).final_step == 2

    with open(run / ".lock", "a+") as f:  # held by this test: train refuses, as it would another process
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RunDirBusy, match="in use by another train run"):
            train(load_config(None, overrides(corpus, run, **{"train.max_steps": 3})))


# ----------------------------------------------------------------------------- metrics.jsonl


def test_a_torn_last_metrics_line_is_dropped_with_a_warning(corpus, tmp_path, capsys):
    """A crash mid-write leaves half a record; resuming failed with `Expecting ',' delimiter`, naming no file."""
    run = tmp_path / "run"
    train(load_config(None, overrides(corpus, run, **{"train.max_steps": 2})))
    metrics = run / "metrics.jsonl"
    with metrics.open("a") as f:
        f.write('{"step": 3, "loss": 5.9')
    before = metrics.read_text()
    os.link(metrics, tmp_path / "old-inode")
    capsys.readouterr()
    assert main(["train", "-c", str(write_config(overrides(corpus, run), tmp_path / "c.yaml")), "--max-steps", "3",
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"warning: {metrics}:3: dropped an unreadable last line" in err and err.count("warning") == 1
    assert [json.loads(x)["step"] for x in metrics.read_text().splitlines()] == [1, 2, 3]
    # rewritten through a new file, never in place: a kill mid-rewrite cannot lose the history
    assert (tmp_path / "old-inode").read_text() == before


def test_an_unreadable_metrics_line_in_the_middle_is_an_error_naming_it(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    train(load_config(None, overrides(corpus, run, **{"train.max_steps": 3})))
    metrics = run / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], lines[1][:20], lines[2]]) + "\n")
    before = files_of(run)
    err = one_line_error(["train", "-c", str(write_config(overrides(corpus, run), tmp_path / "c.yaml")),
                          "--max-steps", "4", "--no-progress"], capsys)
    assert f"{metrics}:2: not a JSON record" in err
    assert files_of(run) == before


# ----------------------------------------------------------------------------- resume checks


@pytest.mark.parametrize(("change", "said"), [
    ({"model.overrides": {"vocab_size": 512, "hidden_size": 128}}, "hidden_size 64 -> 128"),
    ({"model.overrides": {"vocab_size": 1024, "num_hidden_layers": 3}}, "vocab_size 512 -> 1024, num_hidden_layers 2 -> 3"),
])
@pytest.mark.parametrize("resume", ["auto", "path"])
def test_a_resume_into_another_model_shape_is_one_line_before_anything_is_written(corpus, tmp_path, capsys, change,
                                                                                   said, resume):
    run = tmp_path / "run"
    train(load_config(None, overrides(corpus, run, **{"train.max_steps": 1})))
    before = files_of(run)
    cfg = write_config({**overrides(corpus, run), **change}, tmp_path / "c.yaml")
    extra = ["--resume", str(checkpoint.resolve(run))] if resume == "path" else []
    err = one_line_error(["train", "-c", str(cfg), "--max-steps", "2", "--no-progress", *extra], capsys)
    assert said in err and "step-00000001" in err and len(err) < 400
    assert files_of(run) == before


@pytest.mark.parametrize("max_steps", [2, 3])
def test_a_resume_with_nothing_left_to_train_says_so_and_writes_nothing(corpus, tmp_path, capsys, max_steps):
    run = tmp_path / "run"
    train(load_config(None, overrides(corpus, run, **{"train.max_steps": 3})))
    before = files_of(run)
    capsys.readouterr()
    cfg = write_config(overrides(corpus, run), tmp_path / "c.yaml")
    assert main(["train", "-c", str(cfg), "--max-steps", str(max_steps), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and f"already at step 3 >= max_steps {max_steps}" in out
    assert files_of(run) == before


# ----------------------------------------------------------------------------- the tokenizer travels with the run


@pytest.fixture(scope="module")
def pinned(corpus, tmp_path_factory):
    """A run trained from a relative data.tokenizer (`tok/small.json` under its working directory)."""
    work = tmp_path_factory.mktemp("pinned")
    (work / "tok").mkdir()
    shutil.copy(corpus["tok"], work / "tok" / "small.json")
    cwd = os.getcwd()
    os.chdir(work)
    try:
        train(load_config(None, overrides(corpus, work / "run", **{"train.max_steps": 2,
                                                                   "data.tokenizer": "tok/small.json"})))
    finally:
        os.chdir(cwd)
    return work


def test_a_checkpoint_keeps_its_tokenizer_and_its_hash(corpus, pinned):
    import hashlib

    ckpt = checkpoint.resolve(pinned / "run")
    saved = (ckpt / "tokenizer.json").read_bytes()
    assert checkpoint.read_meta(ckpt)["tokenizer_sha256"] == hashlib.sha256(saved).hexdigest()
    from trainer.tokenizer import load_tokenizer

    assert checkpoint.tokenizer_sha256(load_tokenizer(corpus["tok"])) == hashlib.sha256(saved).hexdigest()


def test_export_generate_and_eval_use_the_saved_tokenizer_from_anywhere(corpus, pinned, tmp_path, monkeypatch,
                                                                        capsys):
    """Run from another folder, and with tok/small.json retrained since: the weights' tokenizer, not that file."""
    from trainer.eval.models import load_model
    from trainer.tokenizer import load_tokenizer

    saved = checkpoint.resolve(pinned / "run") / "tokenizer.json"
    weights = checkpoint.tokenizer_sha256(load_tokenizer(saved))
    shutil.copy(corpus["other"], pinned / "tok" / "small.json")  # tok/small.json retrained since
    for cwd, out in ((pinned, tmp_path / "hf0"), (tmp_path, tmp_path / "hf")):
        monkeypatch.chdir(cwd)
        assert main(["export", str(pinned / "run"), str(out), "--dtype", "float32"]) == 0
        assert checkpoint.tokenizer_sha256(load_tokenizer(out / "tokenizer.json")) == weights
    assert main(["generate", str(pinned / "run"), "-p", "The", "--max-new-tokens", "2", "--seed", "0",
                 "--device", "cpu"]) == 0
    lm = load_model(pinned / "run", device="cpu")
    assert lm.tokenizer.backend_tokenizer.get_vocab_size() == load_tokenizer(saved).get_vocab_size()
    same = tmp_path / "same.json"
    shutil.copy(saved, same)  # the same tokenizer under another name: accepted
    assert main(["export", str(pinned / "run"), str(tmp_path / "hf2"), "--tokenizer", str(same)]) == 0
    capsys.readouterr()
    for argv in (["export", str(pinned / "run"), str(tmp_path / "hf3"), "--tokenizer", str(corpus["other"])],
                 ["generate", str(pinned / "run"), "-p", "x", "--tokenizer", str(corpus["other"]), "--device", "cpu"]):
        err = one_line_error(argv, capsys)
        assert f"--tokenizer {corpus['other']}: not the tokenizer" in err and str(saved) in err
    assert not (tmp_path / "hf3").exists()
    with pytest.raises(ValueError, match="not the tokenizer"):
        load_model(pinned / "run", tokenizer=str(corpus["other"]), device="cpu")


def test_a_resume_under_another_tokenizer_is_refused_before_anything_is_written(corpus, pinned, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(pinned / "run", run)
    before = files_of(run)
    cfg = write_config(overrides(corpus, run, **{"data.tokenizer": str(corpus["other"]),
                                                 "data.cache_dir": str(tmp_path / "cache")}), tmp_path / "c.yaml")
    err = one_line_error(["train", "-c", str(cfg), "--max-steps", "3", "--no-progress"], capsys)
    assert f"data.tokenizer '{corpus['other']}' is not the tokenizer" in err and "step-00000002" in err
    assert files_of(run) == before


def test_old_checkpoints_without_a_saved_tokenizer_go_by_the_config(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    train(load_config(None, overrides(corpus, run, **{"train.max_steps": 1})))
    as_old_checkpoint(checkpoint.resolve(run))
    assert main(["export", str(run), str(tmp_path / "hf")]) == 0
    from trainer.tokenizer import load_tokenizer

    assert load_tokenizer(tmp_path / "hf" / "tokenizer.json").to_str() == load_tokenizer(corpus["tok"]).to_str()
    other = train(load_config(None, overrides(corpus, run, **{"train.max_steps": 2, "data.tokenizer": str(corpus["other"]),
                                                              "data.cache_dir": str(tmp_path / "cache")})))
    assert other.final_step == 2  # as before: the data differs (a warning), the run goes on


def test_a_tokenizer_bigger_than_the_model_is_one_line(corpus, tmp_path, shared_data, capsys):
    """GPT-2's 50,295 tokens on a 512-row model: export wrote a broken folder, generate raised an IndexError."""
    from trainer.eval.models import load_model

    run = tmp_path / "run"
    train(load_config(None, overrides(corpus, run, **{"train.max_steps": 1})))
    as_old_checkpoint(checkpoint.resolve(run))
    gpt2 = str(shared_data / "tokenizer_gpt2")
    assert main(["export", str(run), str(tmp_path / "hf"), "--no-tokenizer"]) == 0
    capsys.readouterr()
    for argv in (["export", str(run), str(tmp_path / "big"), "--tokenizer", gpt2],
                 ["generate", str(run), "-p", "x", "--tokenizer", gpt2, "--device", "cpu"],
                 ["generate", str(tmp_path / "hf"), "-p", "x", "--tokenizer", gpt2, "--device", "cpu"]):
        err = one_line_error(argv, capsys)
        assert "has 50,295 tokens but the model only 512" in err
    assert not (tmp_path / "big").exists()
    with pytest.raises(ValueError, match="has 50,295 tokens but the model only 512"):
        load_model(run, tokenizer=gpt2, device="cpu")


def test_a_signal_passed_on_by_the_launcher_is_not_an_abort(monkeypatch):
    """torchrun re-sends the SIGTERM it gets to workers a scheduler signalled already: the second copy, within
    seconds, must not abort the checkpoint the first one asked for (the ranks hung mid-save until SIGKILL)."""
    import os
    import signal

    from trainer import train as train_mod

    clock = [100.0]
    monkeypatch.setattr(train_mod.time, "monotonic", lambda: clock[0])
    with train_mod._StopFlag() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # torchrun's copy
        assert stop.wanted() and stop.reason == "SIGTERM"
        clock[0] += train_mod._StopFlag.REPEAT_S
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # asked again, later: abort


# ----------------------------------------------------------------------------- torchrun: one line, not one per rank


def test_a_refusal_every_rank_raises_is_printed_by_rank_0_only(corpus, pinned, tmp_path, capsys, monkeypatch):
    """Under torchrun every rank raised the run lock's (broadcast) refusal and the resume refusals, and each
    printed it: `error: ...: in use by another train run` once per rank. Other ranks now exit alike, silently."""
    import fcntl

    from trainer.cli import report_user_errors
    from trainer.distributed import DistInfo
    from trainer.train import run_lock

    run = tmp_path / "run"
    shutil.copytree(pinned / "run", run)
    tokenizer = write_config(overrides(corpus, run, **{"data.tokenizer": str(corpus["other"]),
                                                       "data.cache_dir": str(tmp_path / "cache")}), tmp_path / "t.yaml")
    shape = write_config({**overrides(corpus, run), "model.overrides": {"vocab_size": 512, "hidden_size": 128}},
                         tmp_path / "s.yaml")

    def locked(_args) -> int:
        with run_lock(run, DistInfo()):
            return 0

    monkeypatch.setenv("RANK", "1")
    for argv in (["train", "-c", str(tokenizer), "--max-steps", "3", "--no-progress"],
                 ["train", "-c", str(shape), "--max-steps", "3", "--no-progress"],
                 ["train", "-c", str(tokenizer), "--max-steps", "3", "--no-progress", "--resume", "never"]):
        assert main(argv) == 2
        assert capsys.readouterr().err == "", argv
    with open(run / ".lock", "a+") as f:  # held as by another run
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert report_user_errors(locked, None) == 2  # type: ignore[arg-type]
        assert capsys.readouterr().err == ""
        monkeypatch.setenv("RANK", "0")
        assert report_user_errors(locked, None) == 2  # type: ignore[arg-type]
        assert "in use by another train run" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "1")  # an error not marked as every rank's may differ by rank: still printed
    one_line_error(["train", "-c", str(shape), "--set", "train.max_steps=many"], capsys)
