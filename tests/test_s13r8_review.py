"""Review of the curation pool's end-with-the-run guard and of the plan's printed run command: a pool started by a
thread that ends before it, or from a forkserver, lost its workers mid-run; the command shown was not the one
planned where a value held an emoji code (`:cd:`)."""

from __future__ import annotations

import multiprocessing
import shlex
import threading
import time
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from textbookgen.cli import app
from textbookgen.curation.base import map_rows

ROOT = Path(__file__).resolve().parents[1]


def _slow_double(factor: int, rows: list[tuple]) -> list[int]:
    """A chunk's rows doubled, slowly enough that the pool is still at work when the thread that started it ends."""
    time.sleep(0.05)
    return [row[0] * factor for row in rows]


def test_a_pool_started_by_a_thread_that_ends_keeps_its_workers():
    """Linux's PDEATHSIG fires when the *thread* that forked a worker ends, not the process: a `map_rows` first
    advanced in a thread that ended (then read on in another) had its workers killed: BrokenProcessPool."""
    numbers = pl.Series(range(400))
    results = map_rows(_slow_double, 2, [numbers], workers=2, chunk_size=10)
    first: list[int] = []
    starter = threading.Thread(target=lambda: first.append(next(results)))
    starter.start()
    starter.join()
    assert first + list(results) == [2 * n for n in range(400)]


@pytest.mark.skipif("forkserver" not in multiprocessing.get_all_start_methods(), reason="no forkserver here")
def test_a_forkserver_pool_runs():
    """A forkserver's worker is the forkserver's child, not the run's: taken for one whose run had ended, each
    worker exited as it started."""
    numbers = pl.Series(range(40))
    assert list(map_rows(_slow_double, 3, [numbers], workers=2, chunk_size=10, start_method="forkserver")) == [
        3 * n for n in range(40)]


def test_the_run_command_is_printed_as_it_is(tmp_path, monkeypatch):
    """Rich turned an emoji code in the command (a model tag `m:cd:v2`, a path, any --set value) into the emoji."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    result = CliRunner().invoke(app, ["plan", str(ROOT / "recipes" / "tiny-stories.yaml"), "--set", "samples=20",
                                      "--set", f"output={tmp_path / 'o'}", "--set", "description=m:cd:v2"])
    assert result.exit_code == 0, result.output
    line = next(ln for ln in result.output.splitlines() if "use a server of your own:" in ln)
    argv = shlex.split(line.split("use a server of your own:", 1)[1])
    assert "description=m:cd:v2" in argv


_KILLED_RUN = """
import os, sys, threading, time
import polars as pl
from textbookgen.curation.base import map_rows

def note(_, rows):
    if os.path.exists(sys.argv[1] + ".go"):  # the workers are noted at work once the starter thread ended
        with open(sys.argv[1], "a") as f:
            f.write(f"{os.getpid()}\\n")
    time.sleep(0.3)
    return [row[0] for row in rows]

if __name__ == "__main__":
    results = map_rows(note, None, [pl.Series(range(10_000))], workers=2, chunk_size=1, start_method=sys.argv[2])
    if sys.argv[3] == "thread":  # the pool is forked by a thread that ends, and read on by the main thread
        starter = threading.Thread(target=lambda: next(results))
        starter.start()
        starter.join()
    open(sys.argv[1] + ".go", "w").close()
    for _ in results:
        pass
"""


def _running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie, dead and not yet reaped, is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
@pytest.mark.parametrize(("method", "starter"), [("forkserver", "main"), ("fork", "thread"), ("spawn", "main")])
def test_pool_workers_end_with_a_run_killed_hard(tmp_path, method, starter):
    """Workers of every start method, whichever thread started the pool, end with a run killed hard (SIGKILL, the
    out-of-memory killer): they waited for chunks forever, each holding the step."""
    import os
    import signal
    import subprocess
    import sys

    import textbookgen

    script, pids = tmp_path / "run.py", tmp_path / "pids.txt"
    script.write_text(_KILLED_RUN)
    env = {**os.environ, "PYTHONPATH": str(Path(textbookgen.__file__).parents[1])}
    run = subprocess.Popen([sys.executable, str(script), str(pids), method, starter], env=env)
    workers: set[int] = set()
    try:
        for _ in range(600):  # the two workers at work (each notes its pid), or the run ended (it must not)
            workers = {int(p) for p in pids.read_text().split()} if pids.exists() else set()
            if len(workers) == 2 or run.poll() is not None:
                break
            time.sleep(0.1)
        assert len(workers) == 2 and run.poll() is None
        run.send_signal(signal.SIGKILL)
        run.wait()
        for _ in range(100):
            if not any(_running(pid) for pid in workers):
                break
            time.sleep(0.1)
        assert not [pid for pid in workers if _running(pid)]
    finally:
        run.kill()
        for pid in workers:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
