"""Causal attention kernels at the phi-1.5 shape: our FlashAttention-4 op against PyTorch's SDPA kernels.

    python bench/attention.py                       # [8, 2048, 32, 64] bf16 on the GPU
    python bench/attention.py --batch 4 --seq 4096

First the error of each kernel against fp32 math on a small input (forward output and the three input
gradients), then forward and forward+backward time per kernel, with TFLOP/s (causal: half the square).
A kernel that cannot run here (FA4 needs `pip install flash-attn-4` and an sm90/sm100 GPU) is listed as
unavailable. Last line: `fa4_vs_cudnn=<fwd+bwd speed ratio> gpu=<name>`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

try:
    import torch
except ImportError:  # the SDK installs without torch
    sys.exit("error: attention.py needs torch: pip install -e \".[train]\"")
import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from trainer import flash4  # noqa: E402

SDPA = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash2": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
TIMED = ("cudnn", "flash2", "efficient")  # math is the fp32 reference, not a contender


def sdpa(backend: str):
    """Causal SDPA on `[B, T, H, D]` inputs under one backend."""
    def run(q, k, v):
        with sdpa_kernel(SDPA[backend]):
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                 is_causal=True)
        return out.transpose(1, 2)
    return run


def kernels() -> dict:
    found = {name: sdpa(name) for name in TIMED}
    if flash4.available():
        found["fa4"] = flash4.causal_attention
    return found


def errors(fn, shape: tuple[int, ...], dev: str) -> list[float]:
    """Max |error| of out, dq, dk, dv in bf16 against fp32 math, same inputs and output gradient."""
    g = torch.Generator(device=dev).manual_seed(0)
    q, k, v, go = (torch.randn(shape, device=dev, generator=g) for _ in range(4))
    results = []
    for dtype, f in ((torch.float32, sdpa("math")), (torch.bfloat16, fn)):
        ins = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
        out = f(*ins)
        out.backward(go.to(dtype))
        results.append([out.detach().float(), *(t.grad.float() for t in ins)])
    ref, got = results
    return [(a - b).abs().max().item() for a, b in zip(got, ref, strict=True)]


def time_ms(fn, q, k, v, go, backward: bool, iters: int = 10) -> float:
    for i in range(iters + 3):
        if i == 3:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        out = fn(q, k, v)
        if backward:
            out.backward(go)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--head-dim", type=int, default=64)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: needs a CUDA GPU (the kernels compared here are GPU kernels)")
        return 2
    dev, gpu = "cuda", torch.cuda.get_device_name().replace(" ", "_")
    found = kernels()
    print(f"torch {torch.__version__} | {gpu} | fa4 {'yes' if 'fa4' in found else 'unavailable'}")
    print("max |error| vs fp32 math on [2, 512, 4, 64] (out, dq, dk, dv):")
    for name, fn in found.items():
        try:
            print(f"  {name:10s} " + "  ".join(f"{e:.2e}" for e in errors(fn, (2, 512, 4, args.head_dim), dev)))
        except RuntimeError as e:
            print(f"  {name:10s} unavailable ({str(e).splitlines()[0][:80]})")
    shape = (args.batch, args.seq, args.heads, args.head_dim)
    q, k, v = (torch.randn(shape, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    go = torch.randn(shape, device=dev, dtype=torch.bfloat16)
    flops = 4 * args.batch * args.seq ** 2 * args.heads * args.head_dim / 2  # causal forward
    print(f"{'kernel':10s} {'fwd ms':>8s} {'TFLOP/s':>8s} {'fwd+bwd ms':>11s} {'TFLOP/s':>8s}   {list(shape)} bf16")
    both = {}
    for name, fn in found.items():
        try:
            fwd, fb = time_ms(fn, q, k, v, go, False), time_ms(fn, q, k, v, go, True)
        except RuntimeError as e:
            print(f"{name:10s} unavailable ({str(e).splitlines()[0][:80]})")
            continue
        both[name] = fb
        print(f"{name:10s} {fwd:8.2f} {flops / fwd / 1e9:8.0f} {fb:11.2f} {3.5 * flops / fb / 1e9:8.0f}")
    ratio = both["cudnn"] / both["fa4"] if {"cudnn", "fa4"} <= both.keys() else float("nan")
    print(f"fa4_vs_cudnn={ratio:.3f} gpu={gpu}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
