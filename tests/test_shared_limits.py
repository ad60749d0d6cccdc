"""Processes on one host on the same (server, key, model) keep one rate budget (textbookgen/sharedlimits.py): real
engine processes against the emulator, and the shared file's own guarantees (rebuilt when bad, never the key)."""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from textbookgen.engine import ChatRequest, Generator
from textbookgen.ratelimit import AdmissionController
from textbookgen.sharedlimits import _HEAD, MAGIC, STALE_S, SharedRecord, budget_id
from textbookgen.testing.emulator import Emulator, EmulatorConfig

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="no fcntl.flock on Windows: budgets stay per process")

KEY = "sk-test-9f8e7d6c5b4a"
MODEL = "gpt-4o-mini"
WORKER = """
import pathlib, sys, time
import openai  # noqa: F401  (the engine imports it only as a run starts: seconds apart under load, so before the barrier)
from textbookgen.engine import ChatRequest, Generator
from textbookgen.ratelimit import RateLimits
base, key, n, tag, ready, count, rpm = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], \
    int(sys.argv[6]), sys.argv[7]
(pathlib.Path(ready) / tag).touch()  # all at once, as several builds started together, however slow their imports
while len(list(pathlib.Path(ready).iterdir())) < count:
    time.sleep(0.005)
gen = Generator("openai", "gpt-4o-mini", base_url=base, api_key=key, concurrency=64, progress=False,
                limits=RateLimits(rpm=float(rpm)) if rpm else None)
out = gen.run([ChatRequest(messages=[{"role": "user", "content": f"{tag} {i}"}], max_tokens=8) for i in range(n)])
assert all(r.status in ("ok", "truncated") for r in out), [r.error for r in out]
"""


def run_workers(emu: Emulator, folder: Path, processes: int, each: int, *, share: bool = True, rpm: int | None = None
                ) -> int:
    """`processes` engine processes at once on one key, `each` requests each (under `rpm`, the key's limit, if
    given): the 429s the server sent them."""
    before = emu.stats()["rate_limited"]
    env = {**os.environ, "TEXTBOOKGEN_LIMITS_DIR": str(folder), "TEXTBOOKGEN_SHARE_LIMITS": "1" if share else "0"}
    ready = folder.with_name(f"{folder.name}-ready")  # beside the limits folder, not in it
    ready.mkdir(parents=True)
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, emu.openai_base_url, KEY, str(each), f"p{i}-{share}",
                               str(ready), str(processes), str(rpm or "")], env=env) for i in range(processes)]
    assert [p.wait(timeout=120) for p in procs] == [0] * processes
    return emu.stats()["rate_limited"] - before


def generator(emu: Emulator, **kwargs) -> Generator:
    return Generator("openai", MODEL, base_url=emu.openai_base_url, api_key=KEY, concurrency=16, progress=False,
                     **kwargs)


def ask(gen: Generator, n: int, tag: str) -> None:
    out = gen.run([ChatRequest(messages=[{"role": "user", "content": f"{tag} {i}"}], max_tokens=8) for i in range(n)])
    assert all(r.status in ("ok", "truncated") for r in out)


@pytest.fixture
def limits_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "limits"
    monkeypatch.setenv("TEXTBOOKGEN_LIMITS_DIR", str(folder))
    monkeypatch.delenv("TEXTBOOKGEN_SHARE_LIMITS", raising=False)
    return folder


def record_path(emu: Emulator, folder: Path) -> Path:
    return folder / f"{budget_id('openai', emu.openai_base_url, [KEY], MODEL)}.limits"


def test_processes_on_one_key_share_one_budget_instead_of_each_spending_the_limit(tmp_path):
    """3 processes told the key's limit (a proxy that sends no limit headers) each spend all of it, 3x the server's
    rate, into 429s; on one budget they get none."""
    config = EmulatorConfig(latency_median_s=0.02, rpm=1200, window_s=1.0, send_headers=False)
    with Emulator(config) as emu:
        separate = run_workers(emu, tmp_path / "separate", 3, 20, share=False, rpm=1200)
    with Emulator(config) as emu:  # a server of its own: nothing the first run left in its bucket (a 429's debt)
        shared = run_workers(emu, tmp_path / "shared", 3, 20, rpm=1200)
    assert separate >= 3  # at least one each, before each learns the rate it may have
    # fewer: none while the processes overlap (the shared bucket starts empty, the server's full). The 3 one
    # full-suite run saw come back (1-5 a run, 8 of 10 runs) where processes start over a second after the others
    # are done (openai was imported after the barrier: up to 3.5 s late under load): they burst a full bucket, which
    # reaches the server 20-130 ms after admission while the client counts that time's refill (1% headroom is 10 ms
    # at 1200 RPM); the server's bucket fed the admission times refuses none. Without it each gets several (4-6)
    assert shared <= 3 and shared < separate


def on_one_budget() -> tuple[AdmissionController, AdmissionController]:
    """Two controllers on one budget file, each with its own descriptor, as two processes have."""
    return tuple(AdmissionController(None, 8, shared=SharedRecord.open("k", AdmissionController.SHARED_SIZE))
                 for _ in range(2))


def test_a_limit_the_server_states_to_one_process_is_the_others_at_once(limits_dir):
    first, second = on_one_budget()

    async def go() -> None:
        ticket = await first.acquire(10, 10)
        first.fail(ticket, rate_limited=True, headers={"x-ratelimit-limit-requests": "120",
                                                        "x-ratelimit-remaining-requests": "0"})
        assert second.limits["requests"] is None  # not loaded before it asks for admission
        other = await second.acquire(10, 10)
        assert second.limits["requests"] == 120
        second.cancel(other)

    asyncio.run(go())


def test_a_rate_one_process_learned_from_a_429_without_headers_paces_the_other(limits_dir):
    """A proxy that sends no limit headers speaks only through 429s: the rate one process learns from one (and the
    pause its Retry-After asks for) hold for the other, which has seen no 429 itself."""
    first, second = on_one_budget()

    async def go() -> None:
        first.complete(await first.acquire(1, 1), 1, 1)  # its first answer: the request rate slow-starts
        tickets = [await first.acquire(1, 1) for _ in range(3)]
        first.fail(tickets[-1], rate_limited=True, retry_after=0.2)
        for ticket in tickets[:-1]:
            first.complete(ticket, 1, 1)
        learned = first.limits["requests"]
        assert learned is not None and first.paused_until > time.monotonic()
        other = await second.acquire(1, 1)
        assert second.limits["requests"] == learned and second.rate_limited == 0
        assert other.t_send >= first.paused_until  # it waited out the other's pause
        second.cancel(other)

    asyncio.run(go())


@pytest.mark.parametrize("garbage", [b"", b"TBGL\x01", b"not ours at all" * 40, None])
def test_a_corrupt_truncated_or_foreign_file_is_rebuilt(limits_dir, garbage):
    with Emulator(EmulatorConfig(latency_median_s=0.001, rpm=6000)) as emu:
        path = record_path(emu, limits_dir)
        ask(generator(emu), 3, "a")
        good = path.read_bytes()
        if garbage is None:  # a valid record with one bit flipped
            garbage = good[:40] + bytes([good[40] ^ 1]) + good[41:]
        path.write_bytes(garbage)
        ask(generator(emu), 3, "b")
    rebuilt = path.read_bytes()
    assert len(rebuilt) == len(good) and rebuilt[:4] == b"TBGL"
    assert SharedRecord.open(path.stem, AdmissionController.shared_layout(), limits_dir)._decode(rebuilt) is not None


def forged(record: SharedRecord, values: list[float], written_mono: float) -> bytes:
    """A well-formed record that says it was written at `written_mono` (with the wall time of now)."""
    body = _HEAD.pack(MAGIC, record.stamp, record.size, written_mono, time.time()) + struct.pack(
        f"<{record.size}d", *values)
    return body + struct.pack("<I", zlib.crc32(body))


def test_a_stale_record_or_one_from_before_a_reboot_starts_afresh(limits_dir):
    record = SharedRecord.open("x", 3)
    assert record.update(lambda values: [1.0, None, 3.0])
    assert record._decode(record.path.read_bytes()) == [1.0, None, 3.0]
    assert record._decode(forged(record, [1.0, 2.0, 3.0], time.monotonic() - 1)) == [1.0, 2.0, 3.0]
    assert record._decode(forged(record, [1.0, 2.0, 3.0], time.monotonic() + 60)) is None  # another boot's clock
    assert record._decode(forged(record, [1.0, 2.0, 3.0], time.monotonic() - STALE_S - 10)) is None  # nobody since


def test_opting_out_keeps_a_budget_per_process_and_writes_nothing(limits_dir, monkeypatch):
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        ask(generator(emu, share_limits=False), 3, "param")
        monkeypatch.setenv("TEXTBOOKGEN_SHARE_LIMITS", "0")
        ask(generator(emu), 3, "env")
    assert not limits_dir.exists()


def test_the_key_is_in_no_file_and_no_name(limits_dir):
    with Emulator(EmulatorConfig(latency_median_s=0.001, rpm=6000)) as emu:
        ask(generator(emu), 3, "k")
    files = list(limits_dir.rglob("*"))
    assert len(files) == 1 and (limits_dir.stat().st_mode & 0o777) == 0o700
    for path in files:
        assert KEY not in str(path) and KEY.encode() not in path.read_bytes()
        assert "9f8e7d" not in path.name  # not even a piece of it


def test_an_unusable_folder_falls_back_to_a_budget_per_process(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a file"
    blocker.write_text("")
    monkeypatch.setenv("TEXTBOOKGEN_LIMITS_DIR", str(blocker / "limits"))
    with caplog.at_level(logging.INFO, "textbookgen.ratelimit"), \
            Emulator(EmulatorConfig(latency_median_s=0.001, rpm=6000)) as emu:
        ask(generator(emu), 3, "x")
    assert any("keeps its own" in r.getMessage() for r in caplog.records)


def test_budgets_nobody_used_for_a_day_are_deleted(limits_dir):
    limits_dir.mkdir(mode=0o700)
    old, recent, other = limits_dir / "0123456789abcdef.limits", limits_dir / "fedcba9876543210.limits", limits_dir / "x"
    for path in (old, recent, other):
        path.write_bytes(b"")
    two_days_ago = time.time() - 2 * 86400
    os.utime(old, (two_days_ago, two_days_ago))
    os.utime(other, (two_days_ago, two_days_ago))
    assert SharedRecord.open("k", 3) is not None
    assert not old.exists() and recent.exists() and other.exists()


def test_processes_told_different_rate_limits_keep_budgets_of_their_own(tmp_path, monkeypatch):
    """The shared buckets are refilled and capped at the limit of whichever process looks, so processes told
    different limits cannot keep one budget: beside a build at 6,000 RPM, a job run with --rpm 600 sent 1,304
    requests a minute, and the build as few (593 and 5,936 on budgets of their own: `_admit` polled by four
    workers each on a simulated clock). Processes told the same limit still share it, as the key's."""
    from textbookgen.ratelimit import RateLimits

    monkeypatch.setenv("TEXTBOOKGEN_LIMITS_DIR", str(tmp_path))
    monkeypatch.delenv("TEXTBOOKGEN_SHARE_LIMITS", raising=False)
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        for rpm in (6000, 600):
            gen = Generator("openai", MODEL, base_url=emu.openai_base_url, api_key=KEY,
                            progress=False, limits=RateLimits(rpm=rpm))
            gen.run([ChatRequest(messages=[{"role": "user", "content": f"hi {rpm}"}], max_tokens=8)])
    assert len(list(tmp_path.glob("*.limits"))) == 2


def test_a_server_named_by_the_sdks_environment_variable_keys_its_own_budget(tmp_path, monkeypatch):
    """Without base_url the SDK reads OPENAI_BASE_URL: two servers reached that way with one key and model were
    one budget, and a run naming the default server explicitly was another."""
    monkeypatch.setenv("TEXTBOOKGEN_LIMITS_DIR", str(tmp_path))
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        monkeypatch.setenv("OPENAI_BASE_URL", emu.openai_base_url)
        Generator("openai", MODEL, api_key=KEY, progress=False).run(
            [ChatRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=8)])
    [record] = tmp_path.glob("*.limits")
    assert record.stem == budget_id("openai", emu.openai_base_url, [KEY], MODEL) != budget_id("openai", None, [KEY],
                                                                                                 MODEL)


@pytest.mark.parametrize(("one", "other"), [
    ("http://localhost:8000/v1", "http://127.0.0.1:8000/v1"),
    ("http://[::1]:8000/v1/", "http://LOCALHOST:8000/v1"),
    ("http://0.0.0.0:8000/v1", "http://127.0.0.1:8000/v1/"),
    ("http://[::]:8000/v1", "http://localhost:8000/v1"),  # vLLM --host :: (IPv6's 0.0.0.0)
    ("https://API.openai.com/v1", "https://api.openai.com:443/v1/"),
])
def test_one_server_written_two_ways_is_one_budget(one, other):
    """A vLLM server reached as localhost by one build and as 127.0.0.1 by another has one rate limit."""
    assert budget_id("openai-compatible", one, [KEY], MODEL) == budget_id("openai-compatible", other, [KEY], MODEL)
    assert budget_id("openai-compatible", [one, "http://gpu2:8000/v1"], [KEY], MODEL) == budget_id(
        "openai-compatible", ["http://gpu2:8000/v1/", other], [KEY], MODEL)


@pytest.mark.parametrize(("one", "other"), [
    ("http://localhost:8000/v1", "http://localhost:8001/v1"),  # two servers on one machine
    ("http://localhost:8000/v1", "http://gpu2:8000/v1"),
    ("http://localhost:8000/v1", "https://localhost:8000/v1"),
    ("http://localhost:8000/v1", "http://localhost:8000/v2"),
    ("http://localhost:8000/v1?deployment=a", "http://localhost:8000/v1?deployment=b"),
])
def test_different_servers_keep_different_budgets(one, other):
    assert budget_id("openai-compatible", one, [KEY], MODEL) != budget_id("openai-compatible", other, [KEY], MODEL)
