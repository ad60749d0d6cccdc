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
    m = re.fullmatch(r"tokens_per_s=(\d+) mfu=([\d.]+) vs_hf=([\d.]+) vs_hf_block=([\d.]+) peak_mem_gb=([\d.]+) "
                     r"gpu=(\S+)", last)
    assert m, last
    assert float(m.group(1)) > 0 and float(m.group(3)) > 0 and float(m.group(4)) > 0 and m.group(6).startswith("cpu")
    for hf in ("hf", "hf-block"):  # HF runs once per compile scope, each on the same weights and targets
        assert re.search(rf"^model={hf} tokens_per_s=\d+", out, re.M)
        diff = float(re.search(rf"first-step loss difference ours vs {hf}: (\S+)", out).group(1))
        assert diff < 1e-4  # fp32 on CPU


def test_bench_bad_arguments_exit_nonzero(capsys):
    bench = _bench()
    assert bench.main(["--config", "tiny", "--device", "cpu", "--models", "ours,foo"]) == 2
    assert bench.main(["--config", "tiny", "--device", "cpu", "--seq-len", "4096"]) == 2
    assert bench.main(["--config", "tiny", "--device", "cpu", "--hf-scopes", "full,whole"]) == 2
    assert "error" in capsys.readouterr().out


def test_bench_failure_exits_nonzero_with_last_line(capsys, monkeypatch):
    bench = _bench()

    def broken(*a, **k):
        raise RuntimeError("simulated HF failure")

    monkeypatch.setattr(bench, "build_hf", broken)
    rc = bench.main(["--config", "tiny", "--device", "cpu", "--steps", "1", "--warmup", "0", "--seq-len", "32"])
    out = capsys.readouterr().out
    assert rc == 1 and "simulated HF failure" in out
    assert re.fullmatch(r"tokens_per_s=\d+ mfu=\S+ vs_hf=nan vs_hf_block=nan peak_mem_gb=\S+ gpu=\S+", out.strip().splitlines()[-1])


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
    assert re.fullmatch(r"tokens_per_s=\d+ mfu=\S+ vs_hf=nan vs_hf_block=nan peak_mem_gb=\S+ gpu=\S+", out.strip().splitlines()[-1])
    assert bench.main(["--config", "tiny", "--device", "cpu", "--inductor", "no_such_option=1"]) == 2
    assert "--inductor" in capsys.readouterr().out


def test_bench_profile_prints_time_by_kernel_kind(capsys):
    rc = _bench().main(["--config", "tiny", "--device", "cpu", "--models", "ours", "--profile", "--steps", "1",
                        "--warmup", "0", "--seq-len", "32"])
    out = capsys.readouterr().out
    assert rc == 0, out
    total = float(re.search(r"ours profile: one optimizer step, ([\d.]+) ms", out).group(1))
    kinds = [float(x) for x in re.findall(r"^    \S.{15} +([\d.]+) ms +[\d.]+%$", out, re.M)]
    assert total > 0 and kinds and abs(sum(kinds) - total) < 0.01 * total + 0.1  # the kinds add up to the step


@pytest.mark.parametrize("kernel, kind", [
    ("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_bias_TNT", "matmul"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26_64x64x64", "attention"),
    ("triton_poi_fused__to_copy_add_native_layer_norm_backward_view_14", "fused (triton)"),
    ("void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda>", "copy/cast"),
    ("triton_poi_fused_gelu_split_with_sizes_view_11", "fused (triton)"),
    ("void at::native::multi_tensor_apply_kernel<FusedAdamMathFunctor>", "optimizer"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>", "other"),
])
def test_kernel_kinds_of_real_h100_kernel_names(kernel, kind):
    assert _bench().kernel_kind(kernel) == kind


def test_attention_bench_error_helper_measures_bf16_rounding():
    """bench/attention.py's accuracy column: bf16 math against fp32 math gives small, non-zero errors."""
    spec = importlib.util.spec_from_file_location("bench_attention", BENCH.parent / "attention.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    errs = mod.errors(mod.sdpa("math"), (2, 64, 2, 16), "cpu")
    assert len(errs) == 4 and all(0 < e < 0.05 for e in errs)


def test_bench_without_cuda_says_so_in_one_line(capsys, monkeypatch):
    """`--device auto` (the default) on a machine without CUDA stops with one line naming the CPU smoke test,
    rather than training the default phi-1.5 on the CPU (hours, ~25 GB)."""
    bench = _bench()
    monkeypatch.setattr(bench.torch.cuda, "is_available", lambda: False)
    assert bench.main(["--config", "tiny", "--steps", "1", "--warmup", "0", "--seq-len", "32"]) == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("error: no CUDA GPU here") and "--config tiny --device cpu" in out[0]
