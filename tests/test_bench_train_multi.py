"""bench/train_multi.sh: --help prints the usage and starts no training run; other arguments are refused."""

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "train_multi.sh"


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """The script with `python` and `torchrun` replaced by stand-ins that leave a mark if called."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("python", "torchrun"):
        stub = bin_dir / name
        stub.write_text(f"#!/bin/sh\ntouch {tmp_path}/{name}-ran\nexit 1\n")
        stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "OUT": str(tmp_path / "out")}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_prints_usage_and_runs_nothing(tmp_path, flag):
    done = _run(tmp_path, flag)
    assert done.returncode == 0, done.stderr
    assert "scaling=<rate_N / (N x rate_1)>" in done.stdout
    assert "NGPU (2)" in done.stdout
    assert not list(tmp_path.glob("*-ran"))


def test_unknown_argument_is_refused_in_one_line(tmp_path):
    done = _run(tmp_path, "--steps", "3")
    assert done.returncode == 2
    assert done.stderr.strip() == "error: unknown argument '--steps' (settings are environment variables)"
    assert not list(tmp_path.glob("*-ran"))


def test_without_the_gpus_it_stops_in_one_line_before_training(tmp_path):
    """It used to start training phi-1.5 on the CPU (or die in a traceback without torch)."""
    pytest.importorskip("torch")
    import sys

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')  # this venv's, with torch
    (bin_dir / "python").chmod(0o755)
    (bin_dir / "torchrun").write_text(f"#!/bin/sh\ntouch {tmp_path}/torchrun-ran\nexit 1\n")
    (bin_dir / "torchrun").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "OUT": str(tmp_path / "out"),
           "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: bench/train_multi.sh needs 2 CUDA GPUs (NGPU), 0 visible"
    assert not (tmp_path / "torchrun-ran").exists() and not (tmp_path / "out").exists()
