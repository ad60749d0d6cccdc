"""bench/generation.py's last line: machine-readable, the engine's figures and each baseline's in the same run."""

import importlib.util
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
