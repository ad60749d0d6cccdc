"""Crash safety: `textbookgen generate` killed with SIGKILL (and stopped with Ctrl-C) mid-run, resumed."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import polars as pl

from textbookgen.testing.emulator import Emulator, EmulatorConfig

CONCURRENCY = 16


def _prompts(tmp_path, n: int):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Explain idea number {i}", "i": i}) + "\n" for i in range(n)))
    return path


def _start(emu: Emulator, tmp_path, prompts) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "textbookgen", "generate", str(prompts), "--base-url", emu.openai_base_url,
           "--journal", str(tmp_path / "journal.sqlite"), "--out", str(tmp_path / "out.parquet"),
           "--concurrency", str(CONCURRENCY), "--max-tokens", "32", "--no-progress"]
    env = {**os.environ, "OPENAI_API_KEY": "sk-crash-test"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_billed(emu: Emulator, proc: subprocess.Popen, target: int) -> None:
    deadline = time.monotonic() + 60
    while emu.billed < target:
        assert proc.poll() is None, f"finished before the kill point: {proc.communicate()}"
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.005)


def _settle(emu: Emulator) -> None:
    """Let the server finish (or drop) what was on the wire when the client died."""
    deadline = time.monotonic() + 10
    while emu.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)


def _done(tmp_path) -> int:
    db = sqlite3.connect(tmp_path / "journal.sqlite")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return db.execute("SELECT COUNT(*) FROM requests WHERE status IN ('ok','truncated')").fetchone()[0]
    finally:
        db.close()


def test_sigkill_at_random_points_then_resume_pays_each_prompt_once(tmp_path):
    n, rng = 240, random.Random(7)
    prompts = _prompts(tmp_path, n)
    lost = []  # per kill: billed by the server during that run but not in the journal (in flight)
    billed_before = done_before = 0
    with Emulator(EmulatorConfig(latency_median_s=0.03, latency_sigma=0.5, seed=1)) as emu:
        for _ in range(4):
            proc = _start(emu, tmp_path, prompts)
            _wait_billed(emu, proc, emu.billed + rng.randint(15, 45))
            time.sleep(rng.random() * 0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            _settle(emu)
            done = _done(tmp_path)
            lost.append((emu.billed - billed_before) - (done - done_before))
            assert 0 <= lost[-1] <= CONCURRENCY, lost
            billed_before, done_before = emu.billed, done
        proc = _start(emu, tmp_path, prompts)
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        assert f"{n} completions" in stdout
        billed, duplicates, distinct = emu.billed, emu.duplicates, len(emu.billed_keys)
    assert distinct == n
    assert billed <= n + sum(lost) and duplicates == billed - n
    db = sqlite3.connect(tmp_path / "journal.sqlite")
    rows = db.execute("SELECT status, COUNT(*), COUNT(DISTINCT key) FROM requests GROUP BY status").fetchall()
    db.close()
    assert rows == [("ok", n, n)] or sum(r[1] for r in rows) == n and {r[0] for r in rows} <= {"ok", "truncated"}
    out = pl.read_parquet(tmp_path / "out.parquet")
    assert out.height == n and out["status"].is_in(["ok", "truncated"]).all()
    assert [json.loads(m)["i"] for m in out["metadata"]] == list(range(n))


def test_ctrl_c_stops_cleanly_and_resume_finishes(tmp_path):
    n = 120
    prompts = _prompts(tmp_path, n)
    with Emulator(EmulatorConfig(latency_median_s=0.05, seed=2)) as emu:
        proc = _start(emu, tmp_path, prompts)
        _wait_billed(emu, proc, 20)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130 and "rerun the same command to resume" in stderr
        _settle(emu)
        done_after_interrupt = _done(tmp_path)
        # kept: all that was billed but what was on the wire (a response billed at the emulator may still be
        # in transit when Ctrl-C lands, so "done >= 20" would race)
        assert done_after_interrupt > 0 and emu.billed - done_after_interrupt <= CONCURRENCY
        proc = _start(emu, tmp_path, prompts)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
        assert len(emu.billed_keys) == n and emu.billed - n <= CONCURRENCY
    assert _done(tmp_path) == n


def test_sigterm_takes_the_ctrl_c_path_and_counts_the_attempts_on_the_wire(tmp_path):
    """A scheduler's stop or `kill` (and a job started with `&` ignores SIGINT): SIGTERM's default action ended the
    process mid-request, with no hint, and the answers billed after it were neither kept nor counted."""
    n = 120
    prompts = _prompts(tmp_path, n)
    with Emulator(EmulatorConfig(latency_median_s=0.05, seed=3)) as emu:
        proc = _start(emu, tmp_path, prompts)
        _wait_billed(emu, proc, 20)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 143 and "rerun the same command to resume" in stderr, stderr[-2000:]
        db = sqlite3.connect(tmp_path / "journal.sqlite")
        try:  # those on the wire at the stop are counted at their worst case, as after Ctrl-C
            abandoned = db.execute("SELECT COUNT(*) FROM requests WHERE abandoned_usd > 0").fetchone()[0]
        finally:
            db.close()
        assert abandoned > 0
        proc = _start(emu, tmp_path, prompts)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
    assert _done(tmp_path) == n
