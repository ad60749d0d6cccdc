"""`two_ranks` (tests/test_h15_rank_errors.py) past its timeout killed only the script: the ranks it spawned were
orphaned and kept running (CPU, ports) for the rest of the test session. Now the whole process group goes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")

import test_h15_rank_errors as h15  # noqa: E402

# 2 gloo ranks spawned as two_ranks' scripts spawn them (h15.SPAWN_MAIN); each says its pid, then waits for the
# other in a receive neither sends: a deadlock, blocked in C++ where the SIGINT torch's spawn sends a rank when its
# parent dies is never handled
HANG = '''
import os, sys
from pathlib import Path
import torch.multiprocessing as mp


def worker(rank, port, name, folder):
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch
    import torch.distributed as dist
    dist.init_process_group("gloo")
    (Path(folder) / f"pid-{rank}").write_text(str(os.getpid()))
    dist.recv(torch.zeros(1), src=1 - rank)
''' + h15.SPAWN_MAIN

MARK = "S13O_HANGING_RANKS"


def _running(pid: int) -> bool:
    """Whether `pid` is a live process: not gone, nor a zombie (a killed orphan nobody has reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _marked(mark: str) -> set[int]:
    """The live processes whose environment carries `mark` (the script, its ranks, anything they started)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if mark.encode() in (entry / "environ").read_bytes() and _running(int(entry.name)):
                    pids.add(int(entry.name))
    return pids


def _written(path: Path) -> bool:
    """Whether `path` holds its pid (a write of a few bytes is one syscall: not empty means whole)."""
    return path.is_file() and path.stat().st_size > 0


class _TimesOutOnceRanksHang(subprocess.Popen):
    """`communicate(timeout=...)` that raises its TimeoutExpired as soon as both ranks have written their pid (so
    hang), not after the whole timeout: the ranks may take long to start on a loaded machine, but once both hang,
    waiting out the rest of the timeout checks nothing more. Retrying `communicate` after a timeout loses no output."""

    def communicate(self, input: str | None = None, timeout: float | None = None) -> tuple[str, str]:
        if timeout is None:
            return super().communicate(input)
        deadline = time.monotonic() + timeout
        while True:
            try:
                return super().communicate(input, timeout=min(0.2, max(deadline - time.monotonic(), 0)))
            except subprocess.TimeoutExpired:
                folder = Path(self.args[-1])  # two_ranks' folder, its script's last argument
                hung = all(_written(folder / f"pid-{r}") for r in (0, 1))
                if hung or time.monotonic() >= deadline:
                    raise


@pytest.mark.slow
def test_a_timeout_kills_the_ranks_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mark = f"{MARK}={tmp_path}"
    monkeypatch.setenv(MARK, str(tmp_path))
    monkeypatch.setattr(h15.subprocess, "Popen", _TimesOutOnceRanksHang)
    left: set[int] = set()
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            h15.two_ranks("hang", tmp_path, HANG, timeout=60)
        ranks = [tmp_path / f"pid-{r}" for r in (0, 1)]
        assert all(f.is_file() for f in ranks), "the ranks did not start within the timeout"
        watched = {int(f.read_text()) for f in ranks}
        deadline = time.monotonic() + 10  # SIGKILL is delivered at once; /proc may take a moment to show it
        while True:
            left = {p for p in watched if _running(p)} | _marked(mark)
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert not left, f"processes of the timed-out script still running: {sorted(left)}"
    finally:
        for pid in left:  # the ones this test started, by id, so a failure does not leave them running
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
