"""bench/train.py smoke test on CPU with the tiny config: both models train, same first loss, last line format."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

BENCH = Path(__file__).resolve().parents[1] / "bench" / "train.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_train", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_cpu_smoke(capsys):
    rc = _bench().main(["--config", "tiny", "--device", "cpu", "--steps", "1", "--warmup", "1", "--seq-len", "64"])
    out = capsys.readouterr().out
    assert rc == 0, out
    last = out.strip().splitlines()[-1]
    m = re.fullmatch(r"tokens_per_s=(\d+) mfu=([\d.]+) vs_hf=([\d.]+) peak_mem_gb=([\d.]+) gpu=(\S+)", last)
    assert m, last
    assert float(m.group(1)) > 0 and float(m.group(3)) > 0 and m.group(5).startswith("cpu")
    diff = float(re.search(r"first-step loss difference ours vs hf: (\S+)", out).group(1))
    assert diff < 1e-4  # same weights, same targets (fp32 on CPU)


def test_bench_bad_arguments_exit_nonzero(capsys):
    bench = _bench()
    assert bench.main(["--config", "tiny", "--device", "cpu", "--models", "ours,foo"]) == 2
    assert bench.main(["--config", "tiny", "--device", "cpu", "--seq-len", "4096"]) == 2
    assert "error" in capsys.readouterr().out


def test_bench_failure_exits_nonzero_with_last_line(capsys, monkeypatch):
    bench = _bench()

    def broken(*a, **k):
        raise RuntimeError("simulated HF failure")

    monkeypatch.setattr(bench, "build_hf", broken)
    rc = bench.main(["--config", "tiny", "--device", "cpu", "--steps", "1", "--warmup", "0", "--seq-len", "32"])
    out = capsys.readouterr().out
    assert rc == 1 and "simulated HF failure" in out
    assert re.fullmatch(r"tokens_per_s=\d+ mfu=\S+ vs_hf=nan peak_mem_gb=\S+ gpu=\S+", out.strip().splitlines()[-1])


def test_bench_variant_switches_reach_the_model(capsys, monkeypatch):
    bench = _bench()
    seen = {}
    real = bench.run_one

    def spy(name, ours, init, args, dev, batches):
        seen[name] = (ours.config.fuse_projections, ours.config.fuse_out, ours.config.loss_chunk_size)
        return real(name, ours, init, args, dev, batches)

    monkeypatch.setattr(bench, "run_one", spy)
    rc = bench.main(["--config", "tiny", "--device", "cpu", "--models", "ours", "--fuse", "qkv_fc1", "--fuse-out",
                     "--loss-chunk-size", "16", "--steps", "1", "--warmup", "0", "--seq-len", "32"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert seen == {"ours": ("qkv_fc1", True, 16)} and "fuse qkv_fc1 + out" in out
    assert re.fullmatch(r"tokens_per_s=\d+ mfu=\S+ vs_hf=nan peak_mem_gb=\S+ gpu=\S+", out.strip().splitlines()[-1])
    assert bench.main(["--config", "tiny", "--device", "cpu", "--inductor", "no_such_option=1"]) == 2
    assert "--inductor" in capsys.readouterr().out
