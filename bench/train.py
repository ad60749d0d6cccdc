"""Training-throughput benchmark: our phi vs transformers' PhiForCausalLM, same run, same settings.

Both models get the same weights, the same synthetic token batches, bf16 autocast over fp32 master
weights, the same micro-batch / accumulation, fused AdamW (no decay on biases and norms), grad-clip
1.0, and `torch.compile`. Reported: tokens/s, MFU on 989 TFLOP/s (H100 bf16 dense) with FLOPs/token =
6 x non-embedding params + 12 x layers x hidden x seq, peak memory (torch.cuda.max_memory_allocated).

    python bench/train.py                               # phi-1.5, seq 2048, micro-batch 8, on the GPU
    python bench/train.py --config tiny --device cpu    # smoke test

Attention: HF runs its default `attn_implementation="sdpa"` under the SDPA backend that is fastest here (timed
at start, pinned for both); ours runs `--attn` (auto: FlashAttention-4 when installed on Hopper/Blackwell, as the
trainer does; `--attn sdpa` gives both models the same kernel). The header line names ours' kernel.
HF is compiled two ways and both are reported: as a whole (`torch.compile(model)`, what HF Trainer's
`torch_compile` does; the issue's baseline) and block by block (each PhiDecoderLayer; faster for HF).
Last line: `tokens_per_s=<n> mfu=<m> vs_hf=<ratio> vs_hf_block=<ratio> peak_mem_gb=<g> gpu=<name>` (ours;
vs_hf = ours / HF compiled whole, vs_hf_block = ours / HF compiled per block).
Our model's speed switches (--fuse, --fuse-out, --loss-chunk-size, --fullgraph) and the compile switches
(--compile-mode, --compile-scope, --inductor) are there so that one GPU run can sweep them with
`--models ours`; `--profile` prints where the GPU time goes (see bench/RESULTS.md).
Exit status is non-zero if either model fails (the last line is still printed, with nan for what is missing).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import os
import platform
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

try:
    import torch
except ImportError:  # the SDK installs without torch
    sys.exit("error: train.py needs torch and transformers: pip install -e \".[train]\"")

from trainer.model import CONFIGS, Phi, attention_kernel  # noqa: E402

PEAK_TFLOPS = 989.0  # H100 SXM bf16 dense
HF_RUNS = {"full": "hf", "block": "hf-block"}  # result name of HF per compile scope


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="phi-1.5", choices=sorted(CONFIGS))
    ap.add_argument("--device", default="auto", help="cuda | cpu | auto (the GPU; an error without one)")
    ap.add_argument("--seq-len", type=int, default=None, help="default: the config's context (2048)")
    ap.add_argument("--micro-batch", type=int, default=None, help="sequences per forward (default 8 GPU, 2 CPU)")
    ap.add_argument("--accum", type=int, default=None,
                    help="micro-batches per optimizer step (default 4 GPU, 1 CPU; real phi-1.5 training "
                         "accumulates 2048 sequences per step, so the optimizer is amortised)")
    ap.add_argument("--steps", type=int, default=None, help="timed optimizer steps (default 20 GPU, 2 CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first, incl. compile (default 3/1)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="torch.compile both models (default: on for CUDA, off for CPU)")
    ap.add_argument("--compile-mode", default=None, help="torch.compile mode for both, e.g. max-autotune-no-cudagraphs")
    ap.add_argument("--compile-scope", choices=["full", "block"], default="full",
                    help="ours: full = forward + loss as one graph; block = each decoder layer and the loss "
                         "compiled apart, embedding eager (what trainer/distributed.py does)")
    ap.add_argument("--hf-scopes", default="full,block",
                    help="HF runs once per scope listed: full = torch.compile over forward + loss, as "
                         "torch.compile(model) or HF Trainer's torch_compile does; block = each PhiDecoderLayer "
                         "compiled in place, loss eager (faster for HF on torch 2.11: see bench/RESULTS.md)")
    ap.add_argument("--inductor", action="append", default=[], metavar="KEY=VALUE",
                    help="set torch._inductor.config.KEY (both models), e.g. coordinate_descent_tuning=True; repeatable")
    ap.add_argument("--fullgraph", action="store_true",
                    help="ours: torch.compile(fullgraph=True), so a graph break is an error instead of a slowdown")
    ap.add_argument("--precision", choices=["bf16", "fp32"], default=None, help="bf16 autocast (GPU default) or fp32")
    ap.add_argument("--activation-checkpointing", action="store_true", help="for both models")
    ap.add_argument("--loss-chunk-size", type=int, default=None, help="ours: tokens per lm_head+CE chunk (0 = off)")
    ap.add_argument("--fuse", choices=["qkv_fc1", "qk_vfc1", "none"], default=None,
                    help="ours: input projections as one matmul (qkv_fc1), two ([q,k], [v,fc1]) or four like HF "
                         "(none); default: the config's (qk_vfc1)")
    ap.add_argument("--no-fuse", dest="fuse", action="store_const", const="none", help="same as --fuse none")
    ap.add_argument("--fuse-out", action=argparse.BooleanOptionalAction, default=None,
                    help="ours: dense and fc2 as one matmul over [attn, gelu(fc1)] (default: the config's, off)")
    ap.add_argument("--attn", choices=["auto", "sdpa", "flash", "fa4"], default="auto", help="ours: attention kernel")
    ap.add_argument("--sdpa-backend", choices=["auto", "default", "cudnn", "flash", "efficient"], default="auto",
                    help="SDPA kernel for both models: auto = time each once here and pin the fastest (GPU); "
                         "default = torch's own choice")
    ap.add_argument("--models", default="ours,hf", help="comma list of ours,hf (run in this order; hf once per "
                    "--hf-scopes entry)")
    ap.add_argument("--profile", type=int, nargs="?", const=12, default=0, metavar="TOP",
                    help="after timing, profile one more optimizer step per model and print GPU time by kernel "
                         "kind (matmul, attention, fused pointwise, optimizer, ...) and the TOP (12) costliest kernels")
    ap.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS)
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def log(msg: str) -> None:
    print(msg, flush=True)


def set_inductor_options(options: list[str]) -> None:
    """Apply `KEY=VALUE` strings to torch._inductor.config (values are Python literals, else strings)."""
    import ast

    import torch._inductor.config as inductor_config

    for opt in options:
        key, sep, raw = opt.partition("=")
        *path, leaf = key.split(".")  # dotted keys reach sub-configs, e.g. triton.cudagraphs
        obj = inductor_config
        for part in path:
            obj = getattr(obj, part, None)
        if not sep or obj is None or not hasattr(obj, leaf):
            raise ValueError(f"{opt!r} is not KEY=VALUE with KEY a torch._inductor.config option")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        setattr(obj, leaf, value)


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev).replace(" ", "_")
    return f"cpu-{platform.machine()}"


def build_hf(ours: Phi, state: dict, dev: torch.device):
    """transformers.PhiForCausalLM with our initial weights `state` (HF SDPA attention, no KV cache in training)."""
    import transformers

    from trainer.export import hf_config

    cfg = hf_config(ours.config)
    for k in ("architectures", "model_type", "dtype", "torch_dtype", "use_cache"):
        cfg.pop(k)
    with torch.device(dev):  # random init on the GPU is seconds, on CPU minutes; then our weights go in
        hf = transformers.PhiForCausalLM(transformers.PhiConfig(**cfg, attn_implementation="sdpa", use_cache=False))
    hf.load_state_dict(state, strict=True)
    if ours.config.activation_checkpointing:
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return hf


def make_step(name: str, model: torch.nn.Module, args, dev: torch.device):
    """One micro-step closure: forward + loss + backward, returning the loss tensor."""
    if name == "ours":
        def fwd(x, y):
            return model(x, labels=y)
    else:  # HF shifts labels itself; shift_labels=y gives it exactly our (aligned) targets
        def fwd(x, y):
            return model(input_ids=x, labels=y, shift_labels=y, use_cache=False).loss
    fullgraph = args.fullgraph and name == "ours"
    scope = "block" if name == "hf-block" or (name == "ours" and args.compile_scope == "block") else "full"
    if args.compile and scope == "block":
        for layer in model.model.layers:
            layer.compile(mode=args.compile_mode, fullgraph=fullgraph)
        if name == "ours":  # as trainer/distributed.py: the loss is compiled apart from the blocks
            model.loss = torch.compile(model.loss, mode=args.compile_mode, fullgraph=fullgraph)
    elif args.compile:
        fwd = torch.compile(fwd, mode=args.compile_mode, fullgraph=fullgraph)
    amp = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def micro(x, y):
        with amp:
            loss = fwd(x, y)
        (loss / args.accum).backward()
        return loss

    return micro


def sdpa_context(backend: str, strict: bool = False):
    """Prefer `backend` for SDPA; unless `strict`, fall back to the others where it cannot run an input."""
    from contextlib import nullcontext

    if backend == "default":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kinds = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    if strict:
        return sdpa_kernel(kinds[backend])
    order = [kinds[backend]] + [b for n, b in kinds.items() if n != backend]
    try:
        return sdpa_kernel(order, set_priority=True)
    except TypeError:  # torch without set_priority: all enabled, torch's own order
        return sdpa_kernel(order)


def pick_sdpa_backend(args, cfg, dev: torch.device) -> str:
    """Time causal SDPA forward+backward at the benchmark's shape under each kernel; the fastest wins."""
    if dev.type != "cuda":
        return "default"
    shape = (args.micro_batch, cfg.num_attention_heads, args.seq_len, cfg.head_dim)
    q, k, v = (torch.randn(shape, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    times = {}
    for name in ("cudnn", "flash", "efficient"):
        try:
            with sdpa_context(name, strict=True):
                for i in range(8):
                    if i == 3:
                        torch.cuda.synchronize()
                        t0 = time.perf_counter()
                    torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()
                torch.cuda.synchronize()
            times[name] = (time.perf_counter() - t0) / 5 * 1e3
        except RuntimeError as e:  # kernel not available for this GPU/shape/build
            log(f"  sdpa {name}: unavailable ({str(e).splitlines()[0][:80]})")
    del q, k, v
    if not times:
        return "default"
    log("  sdpa fwd+bwd ms: " + ", ".join(f"{n} {t:.2f}" for n, t in times.items()))
    return min(times, key=times.get)


def run_one(name: str, ours: Phi, init: dict, args, dev: torch.device, batches) -> dict:
    """Train `name` for warmup + steps optimizer steps from weights `init`; returns tokens/s, peak memory, losses."""
    if name == "ours":
        ours.load_state_dict(init)
        model = ours
    else:
        model = build_hf(ours, init, dev)
    model.to(dev).train()
    try:
        return _train(name, model, args, dev, batches)
    finally:  # also after a failure: free the GPU for the next model
        model.zero_grad(set_to_none=True)
        model.to("cpu")
        torch._dynamo.reset()


def _train(name: str, model: torch.nn.Module, args, dev: torch.device, batches) -> dict:
    groups = [{"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=2e-4, betas=(0.9, 0.98), eps=1e-7, fused=dev.type == "cuda")
    micro = make_step(name, model, args, dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    tokens_per_step = args.micro_batch * args.seq_len * args.accum
    losses, t0 = [], None
    if args.compile:
        log(f"  {name}: torch.compile runs in the first step (a minute or more for phi-1.5)")
    with sdpa_context(args.sdpa_backend):
        for step in range(args.warmup + args.steps):
            if step == args.warmup:
                sync()
                t0 = time.perf_counter()
            ts = time.perf_counter()
            for a in range(args.accum):
                x, y = batches[(step * args.accum + a) % len(batches)]
                loss = micro(x, y)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            lv = loss.item()  # syncs; one scalar per step is what a real training loop logs
            losses.append(lv)
            if not math.isfinite(lv):
                raise FloatingPointError(f"{name}: loss is {lv} at step {step}")
            dt = time.perf_counter() - ts
            tag = "warmup" if step < args.warmup else "timed"
            log(f"  {name} step {step + 1}/{args.warmup + args.steps} ({tag}) loss {lv:.4f} "
                f"{dt * 1e3:.0f} ms {tokens_per_step / dt:,.0f} tok/s")
    sync()
    elapsed = time.perf_counter() - t0
    if args.profile:
        with sdpa_context(args.sdpa_backend):
            profile_step(name, lambda: _one_step(model, opt, micro, args, batches), dev, args.profile)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) / 1e9
    else:  # CPU: the process's peak resident set (ru_maxrss is KiB on Linux)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return {"tokens_per_s": tokens_per_step * args.steps / elapsed, "peak_mem_gb": peak, "losses": losses}


def _one_step(model, opt, micro, args, batches) -> None:
    for a in range(args.accum):
        micro(*batches[a % len(batches)])
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


KERNEL_KINDS = (  # first match wins; names as CUDA reports them (cuBLAS nvjet/sm90 gemms, cuDNN/flash attention)
    ("attention", ("fmha", "flash", "attn", "cudnn", "sdpa")),
    ("matmul", ("gemm", "nvjet", "cutlass", "xmma", "matmul", "splitk")),
    ("optimizer", ("adam", "multi_tensor", "foreach", "norm_kernel")),
    ("fused (triton)", ("triton",)),  # inductor's pointwise/reduction kernels, casts fused in included
    ("copy/cast", ("copy", "memcpy", "cat", "fill", "memset")),
)


def kernel_kind(name: str) -> str:
    low = name.lower()
    return next((kind for kind, keys in KERNEL_KINDS if any(k in low for k in keys)), "other")


def profile_step(name: str, step, dev: torch.device, top: int = 12) -> None:
    """Run `step` once under torch.profiler; print GPU time per kernel kind and the `top` costliest kernels."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
    kinds: dict[str, float] = {}
    kernels: dict[str, list[float]] = {}
    for ev in prof.events():
        if ev.device_type != torch.autograd.DeviceType.CUDA and dev.type == "cuda":
            continue
        us = ev.time_range.elapsed_us() if dev.type == "cuda" else ev.self_cpu_time_total
        kinds[kernel_kind(ev.name)] = kinds.get(kernel_kind(ev.name), 0.0) + us
        kernels.setdefault(ev.name, []).append(us)
    total = sum(kinds.values()) or 1.0
    log(f"  {name} profile: one optimizer step, {total / 1e3:.1f} ms of {'GPU' if dev.type == 'cuda' else 'CPU'} time")
    for kind, us in sorted(kinds.items(), key=lambda kv: -kv[1]):
        log(f"    {kind:<16} {us / 1e3:9.1f} ms {100 * us / total:5.1f}%")
    for kname, times in sorted(kernels.items(), key=lambda kv: -sum(kv[1]))[:top]:
        log(f"    {sum(times) / 1e3:9.1f} ms x{len(times):<4} {kernel_kind(kname):<14} {kname[:110]}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "auto":
        if not torch.cuda.is_available():  # falling back to CPU would train phi-1.5 there: hours, ~25 GB
            log("error: no CUDA GPU here (torch.cuda.is_available() is False); for a CPU smoke test run "
                "python bench/train.py --config tiny --device cpu")
            return 2
        args.device = "cuda"
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        log("error: --device cuda but torch.cuda.is_available() is False (CPU-only torch or no GPU visible)")
        return 2
    gpu = dev.type == "cuda"
    cfg = dataclasses.replace(CONFIGS[args.config])  # a copy: the presets stay untouched
    args.seq_len = args.seq_len or cfg.max_position_embeddings
    args.micro_batch = args.micro_batch or (8 if gpu else 2)
    args.accum = args.accum or (4 if gpu else 1)
    args.steps = args.steps if args.steps is not None else (20 if gpu else 2)
    args.warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
    args.compile = gpu if args.compile is None else args.compile
    args.precision = args.precision or ("bf16" if gpu else "fp32")
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    if not names or set(names) - {"ours", "hf"}:
        log(f"error: --models must list ours and/or hf, got {args.models!r}")
        return 2
    hf_scopes = [x.strip() for x in args.hf_scopes.split(",") if x.strip()]
    if not hf_scopes or set(hf_scopes) - {"full", "block"}:
        log(f"error: --hf-scopes must list full and/or block, got {args.hf_scopes!r}")
        return 2
    names = [m for n in names for m in ([n] if n == "ours" else [HF_RUNS[sc] for sc in hf_scopes])]
    if args.seq_len > cfg.max_position_embeddings or args.steps < 1:
        log(f"error: need 1 <= steps and seq_len <= {cfg.max_position_embeddings}")
        return 2
    cfg.activation_checkpointing = args.activation_checkpointing
    if args.fuse is not None:
        cfg.fuse_projections = args.fuse
    if args.fuse_out is not None:
        cfg.fuse_out = args.fuse_out
    try:  # PhiConfig checks that the kernel asked for can be imported, and says why not
        cfg = dataclasses.replace(cfg, attn_impl=args.attn)
    except ValueError as e:
        log(f"error: --attn: {e}; use --attn sdpa (or auto)")
        return 2
    try:
        set_inductor_options(args.inductor)
    except ValueError as e:
        log(f"error: --inductor: {e}")
        return 2
    if args.loss_chunk_size is not None:
        cfg.loss_chunk_size = args.loss_chunk_size
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    kernel = attention_kernel(cfg, dev, torch.bfloat16 if args.precision == "bf16" else torch.float32)
    log(f"torch {torch.__version__} | device {device_name(dev)} | ours' attention {kernel} | "
        f"config {args.config} | seq {args.seq_len} | micro-batch {args.micro_batch} x accum {args.accum} | "
        f"precision {args.precision} | compile {args.compile} ({args.compile_mode or 'default'}, {args.compile_scope}"
        f"{', fullgraph' if args.fullgraph else ''}{''.join(', ' + o for o in args.inductor)}) | "
        f"act-ckpt {args.activation_checkpointing} | loss chunk {cfg.loss_chunk_size} | fuse {cfg.fuse_projections}"
        f"{' + out' if cfg.fuse_out else ''} | sdpa {args.sdpa_backend}")

    if args.sdpa_backend == "auto":
        args.sdpa_backend = pick_sdpa_backend(args, cfg, dev)
        log(f"sdpa backend for both models: {args.sdpa_backend}")
    torch.manual_seed(args.seed)
    with torch.device(dev):
        ours = Phi(cfg)
    init = {k: v.detach().to("cpu", copy=True) for k, v in ours.state_dict().items()}  # both start here
    ours.to("cpu")  # off the GPU until its turn
    flops_per_token = ours.flops_per_token(args.seq_len)
    log(f"params {ours.num_params(False):,} (non-embedding {ours.num_params():,}); "
        f"{flops_per_token / 1e9:.3f} GFLOP/token; MFU peak {args.peak_tflops:.0f} TFLOP/s")
    g = torch.Generator().manual_seed(args.seed)
    batches = []
    for _ in range(4):  # a few fixed batches of random tokens, already on the device
        t = torch.randint(0, 50257, (args.micro_batch, args.seq_len + 1), generator=g)
        batches.append((t[:, :-1].contiguous().to(dev), t[:, 1:].contiguous().to(dev)))

    results, failed = {}, []
    for name in names:
        log(f"== {name} ==")
        try:
            results[name] = run_one(name, ours, init, args, dev, batches)
        except torch.OutOfMemoryError as e:
            failed.append(name)
            log(f"error: {name} ran out of GPU memory ({str(e).splitlines()[0]}); "
                "try a smaller --micro-batch or --activation-checkpointing")
        except Exception as e:  # keep going so the other model still reports; exit non-zero below
            failed.append(name)
            log(f"error: {name} failed: {type(e).__name__}: {e}")
        gc.collect()
        if gpu:
            torch.cuda.empty_cache()

    rows = []
    for name, r in results.items():
        r["mfu"] = r["tokens_per_s"] * flops_per_token / (args.peak_tflops * 1e12)
        rows.append((name, f"{r['tokens_per_s']:,.0f}", f"{r['mfu']:.3f}", f"{r['peak_mem_gb']:.2f}",
                     f"{r['losses'][0]:.4f}"))
    print_table(rows)
    for hf in ("hf", "hf-block"):
        if "ours" in results and hf in results:
            d = abs(results["ours"]["losses"][0] - results[hf]["losses"][0])
            log(f"first-step loss difference ours vs {hf}: {d:.2e} (same weights and data; bf16 noise only)")
            if d > 0.05:
                log("warning: the two models disagree on the first loss; the comparison may not be like for like")
    for name, r in results.items():  # one greppable line per model (a sweep with --models hf still gets HF's)
        log(f"model={name} tokens_per_s={r['tokens_per_s']:.0f} mfu={r['mfu']:.4f} peak_mem_gb={r['peak_mem_gb']:.2f}")
    nan = float("nan")
    o = results.get("ours")
    vs = {hf: o["tokens_per_s"] / results[hf]["tokens_per_s"] if o and hf in results else nan
          for hf in ("hf", "hf-block")}
    log(f"tokens_per_s={o['tokens_per_s'] if o else nan:.0f} mfu={o['mfu'] if o else nan:.4f} "
        f"vs_hf={vs['hf']:.3f} vs_hf_block={vs['hf-block']:.3f} peak_mem_gb={o['peak_mem_gb'] if o else nan:.2f} "
        f"gpu={device_name(dev)}")
    return 1 if failed else 0


def print_table(rows) -> None:
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="train throughput (same weights, data, precision, micro-batch)")
        for col in ("model", "tokens/s", "MFU", "peak mem GB", "first loss"):
            table.add_column(col, justify="right")
        for r in rows:
            table.add_row(*r)
        Console(width=100).print(table)
    except ImportError:  # pragma: no cover
        for r in rows:
            log(" | ".join(r))


if __name__ == "__main__":
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    sys.exit(main())
