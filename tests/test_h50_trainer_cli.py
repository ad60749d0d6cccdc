"""The trainer CLI's one-line errors: a full disk while writing a checkpoint, an install without the [train] extra."""

from __future__ import annotations

import errno
import io
import subprocess
import sys
from pathlib import Path

import pytest
from trainer_testlib import one_torch_thread

from trainer import checkpoint
from trainer.cli import main

pytestmark = pytest.mark.usefixtures(one_torch_thread.__name__)
REPO = Path(__file__).resolve().parents[1]
TINY = ["--synthetic", "--device", "cpu", "--no-progress", "--set", "data.seq_len=32", "--set", "train.global_batch=4",
        "--set", "train.micro_batch=4", "--set", "train.precision=fp32", "--set", "log.plot=false",
        "--set", "train.eval_interval=0", "--set", "checkpoint.every=0"]


class _FullDisk(io.BufferedWriter):
    """A file on a disk that fills up after `room` bytes: its writes then fail with ENOSPC, as a real one's do."""

    room = 2000

    def write(self, data) -> int:
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


def _full_disk_open(path, mode="r", *args, **kwargs):
    if "w" in mode and Path(path).name == "model.pt":
        return _FullDisk(io.FileIO(path, "w"))
    return open(path, mode, *args, **kwargs)


def test_a_full_disk_while_checkpointing_is_one_line_exit_2_and_no_partial_folder(tmp_path, monkeypatch, capsys):
    """torch.save into a full disk raised `RuntimeError: ... unexpected pos` (a traceback and exit code 1, which
    means "diverged") and left `step-N.tmp/` behind; now one line names the checkpoint, says what a rerun does, and
    the exit code is 2."""
    run = tmp_path / "run"
    assert main(["train", "-c", "tiny", "--run-dir", str(run), "--max-steps", "1", *TINY]) == 0
    capsys.readouterr()
    monkeypatch.setattr(checkpoint, "open", _full_disk_open, raising=False)
    assert main(["train", "-c", "tiny", "--run-dir", str(run), "--max-steps", "2", *TINY]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        f"error: {run / 'checkpoints' / 'step-00000002'}: No space left on device; checkpoint not written (its "
        "partial step-00000002.tmp/ removed): free space, then run the same command again to resume from "
        "step-00000001"), err
    assert "Traceback" not in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-00000001"]


def test_a_failed_save_with_no_earlier_checkpoint_says_a_rerun_starts_over(tmp_path, monkeypatch):
    """Any OSError of a save (here from a patched torch.save, ENOSPC) is named once, with the folder removed."""
    import torch

    from trainer.model import CONFIGS, Phi

    def full(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    model = Phi(CONFIGS["tiny"])
    monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(OSError, match="run the same command again to resume \\(no earlier checkpoint: it starts over") as e:
        checkpoint.save(tmp_path, 3, model, torch.optim.AdamW(model.parameters()), {})
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "step-00000003")
    assert list(tmp_path.iterdir()) == []


# `python -m trainer` in a base install: the [train] extra's modules cannot be imported (as if not installed)
BASE_INSTALL = """
import runpy, sys
for name in ("torch", "safetensors", "tokenizers", "transformers"):
    sys.modules[name] = None
sys.argv = ["trainer", *sys.argv[1:]]
runpy.run_module("trainer", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize(("argv", "missing"), [(["train", "-c", "tiny"], "torch"),
                                               (["prepare", "docs.parquet", "--out", "y"], "tokenizers"),
                                               (["eval", "x"], "torch")])
def test_a_base_install_says_to_install_the_train_extra(argv, missing, tmp_path):
    """`pip install textbookgen` has no torch: the trainer printed a 15-line ModuleNotFoundError traceback."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a document"]}), tmp_path / "docs.parquet")
    proc = subprocess.run([sys.executable, "-c", BASE_INSTALL, *argv], cwd=tmp_path, capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (f"error: the trainer needs the [train] extra (no module named {missing!r}): "
                           'pip install "textbookgen[train]"\n')


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal's width


def test_every_option_says_what_it_does(capsys):
    """export --dtype, eval --batch-size / --max-batch-tokens and train --compile had no help text."""
    assert "--dtype {float32,bfloat16,float16} dtype of the exported weights (default bfloat16)" in _help(capsys, "export")
    evaluate = _help(capsys, "eval")
    assert "--batch-size BATCH_SIZE most sequences scored at once (default 32)" in evaluate
    assert "--max-batch-tokens MAX_BATCH_TOKENS most padded tokens in one batch" in evaluate
    assert "--compile, --no-compile torch.compile each block and the loss" in _help(capsys, "train")
    assert "2 bad input or a failed write (a full disk)" in _help(capsys, "train")


def test_train_without_a_config_points_to_the_bundled_ones(tmp_path, capsys):
    assert main(["train", "--run-dir", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == (
        "error: data.datasets is empty: name at least one dataset (or set data.synthetic: true) (no -c/--config "
        "given: start from a bundled config, -c tiny | demo-100m | phi-1.5, or a YAML file of your own)\n")
    assert main(["train", "--run-dir", str(tmp_path / "run"), "--set", "train.max_steps=1"]) == 2
    assert "no -c/--config given" not in capsys.readouterr().err  # a config built from --set alone: its own error


def test_a_tokenizer_that_cannot_be_loaded_is_said_once(tmp_path, monkeypatch, capsys):
    """Offline, the run warned "cannot load data.tokenizer 'gpt2-codegen' (...)", then tokenizing the data failed
    with the same long text as its error."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from trainer import tokenizer

    monkeypatch.setattr(tokenizer, "_hub_unreachable", lambda *args, **kwargs: "HF_HUB_OFFLINE is set")
    monkeypatch.setattr(tokenizer, "_cached", lambda *args, **kwargs: None)  # an empty HF cache
    pq.write_table(pa.table({"text": [f"document {i}" for i in range(20)]}), tmp_path / "docs.parquet")
    assert main(["train", "-c", "tiny", "--run-dir", str(tmp_path / "run"), "--max-steps", "1", "--device", "cpu",
                 "--no-progress", "--set", f"data.datasets.0.source={tmp_path / 'docs.parquet'}",
                 "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", "data.tokenizer=gpt2-codegen"]) == 2
    captured = capsys.readouterr()
    said = captured.out + captured.err
    assert said.count("cannot fetch GPT-2's BPE files") == 1, said
    assert said.startswith("error: cannot fetch GPT-2's BPE files"), said
