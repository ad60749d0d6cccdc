"""FlashAttention-4 (the CuTe-DSL `flash-attn-4` package; Hopper and Blackwell) as one opaque torch op.

FA4 ships a Python `autograd.Function` whose kernels are compiled at first call; torch.compile cannot
trace through that, so here its forward and backward are `torch.library` custom ops with fake (shape)
implementations: inductor keeps the kernel whole and fuses the rotary/transposes around it.
Only the causal, dense (not varlen), no-dropout case phi needs. `available()` says whether it can run.
"""

from __future__ import annotations

import warnings

import torch

try:  # optional: pip install flash-attn-4 (pulls nvidia-cutlass-dsl); the module is flash_attn.cute
    from flash_attn.cute.interface import _flash_attn_bwd, _flash_attn_fwd

    IMPORT_ERROR = None
except Exception as exc:  # pragma: no cover - not installed (ImportError), or a broken install (CUDA libraries)
    _flash_attn_fwd = _flash_attn_bwd = None
    IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

INSTALLED = _flash_attn_fwd is not None
# cutlass-DSL says this once per kernel compile for an argument FA4 passes on purpose; it is noise to a user
warnings.filterwarnings("ignore", message=r"Argument aux_data .* cannot be converted to a JitArgument")
SUPPORTED_MAJORS = (9, 10)  # sm90 (H100/H200) and sm100 (B200): the kernels FA4 has for training


def available(device: torch.device | str | None = None) -> bool:
    """FA4 is installed and `device` (default: the current CUDA device) is a Hopper or Blackwell GPU."""
    if not INSTALLED or not torch.cuda.is_available():
        return False
    dev = torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device())
    return dev.type == "cuda" and torch.cuda.get_device_capability(dev)[0] in SUPPORTED_MAJORS


# Registered for every device: FA4 itself rejects non-CUDA tensors, and the tests check this wiring on the CPU
# with reference kernels in place of FA4's.
@torch.library.custom_op("textbookgen::fa4_causal_fwd", mutates_args=())
def _fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    res = _flash_attn_fwd(q, k, v, causal=True, return_lse=True)
    return res[0].contiguous(), res[1]  # out [B, T, H, D], lse [B, H, T] fp32 (newer releases return more)


@_fwd.register_fake
def _(q, k, v):
    B, T, H, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((B, H, T), dtype=torch.float32)


@torch.library.custom_op("textbookgen::fa4_causal_bwd", mutates_args=())
def _bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
         lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dq, dk, dv = _flash_attn_bwd(q, k, v, out, dout, lse, causal=True)[:3]
    return dq.contiguous(), dk.contiguous(), dv.contiguous()


@_bwd.register_fake
def _(dout, q, k, v, out, lse):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs, *output)


def _backward(ctx, dout, _dlse):
    q, k, v, out, lse = ctx.saved_tensors
    return _bwd(dout.contiguous(), q, k, v, out, lse)


_fwd.register_autograd(_backward, setup_context=_setup_context)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal softmax attention of `q, k, v [B, T, H, D]` (bf16/fp16, CUDA) -> `[B, T, H, D]`, scale 1/sqrt(D).
    Inputs may be strided views with a contiguous last dim (FA4 takes aligned strides): the model's v is a
    view of the fused [v, fc1] matmul output, and a copy would cost a pass over it and keep 64 MB per layer
    alive for the backward at phi-1.5 size. Outputs are contiguous."""
    return _fwd(q, k, v)[0]
