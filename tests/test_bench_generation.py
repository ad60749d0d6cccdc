"""bench/generation.py's last line: machine-readable, the engine's figures and each baseline's in the same run."""

import importlib.util
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "generation.py"


def test_last_line_has_the_engine_and_both_baselines():
    spec = importlib.util.spec_from_file_location("bench_generation", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    row = {"utilization": 0.95, "rate_limited": 0.0, "cpu_ms_per_request": 2.0, "duplicates_billed": 0,
           "failed": 0, "wall_s": 13.0}
    rows = [row, {**row, "failed": 20, "rate_limited": 0.3}, {**row, "rate_limited": 0.37}]
    pairs = dict(kv.split("=") for kv in bench.summary_line(rows).split())
    assert len(pairs) == 18 and pairs["failed"] == "0" and pairs["naive_failed"] == "20"
    assert pairs["naive8_rate_limited"] == "0.3700" and pairs["rate_limited"] == "0.0000"
    assert list(bench.NAIVE.values()) == [2, 7]  # the SDK's default retries, and the engine's 8 attempts


def test_processes_count_the_engine_cpu_of_every_process():
    """With --processes the engines run in worker processes: their CPU per request is the figure, not the
    bench process's own waiting, which printed `cpu_ms_per_request=0.00` (0.05 here for 20 requests)."""
    done = subprocess.run([sys.executable, str(BENCH), "--processes", "2", "--prompts", "20", "--latency", "0.01"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    pairs = dict(kv.split("=") for kv in done.stdout.strip().splitlines()[-1].split())
    assert pairs["failed"] == "0"
    # an engine request (build, send over HTTP, parse, journal) costs about 2 ms of CPU; waiting on the
    # workers costs this process a few hundredths of that
    assert float(pairs["cpu_ms_per_request"]) > 0.3
