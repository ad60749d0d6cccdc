"""trainer/flash4.py: FA4 as torch custom ops. The kernels need a Hopper/Blackwell GPU (bench/RESULTS.md has the
H100 check); here reference kernels with FA4's call signature stand in, to check the op wiring (fake shapes,
autograd, torch.compile) and the kernel choice in the model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainer import flash4
from trainer import model as model_mod
from trainer.model import CONFIGS, PhiConfig, attention_kernel


def _scores(q, k):
    qt, kt = q.transpose(1, 2).float(), k.transpose(1, 2).float()
    s = qt @ kt.transpose(-1, -2) / q.shape[-1] ** 0.5
    return s.masked_fill(torch.ones_like(s, dtype=torch.bool).triu(1), float("-inf"))


def _ref_fwd(q, k, v, causal, return_lse):
    """FA4's `_flash_attn_fwd` contract on [B, T, H, D]: (out, lse [B, H, T] fp32, *extras)."""
    assert causal and return_lse
    s = _scores(q, k)
    out = torch.softmax(s, -1) @ v.transpose(1, 2).float()
    return out.transpose(1, 2).to(q.dtype).contiguous(), torch.logsumexp(s, -1), None


def _ref_bwd(q, k, v, out, dout, lse, causal):
    """FA4's `_flash_attn_bwd` contract, by the textbook formulas (no autograd runs inside a custom op)."""
    assert causal and lse.shape == (q.shape[0], q.shape[2], q.shape[1]) and lse.dtype == torch.float32
    p = torch.exp(_scores(q, k) - lse[..., None])  # [B, H, T, T]
    qt, kt, vt, ot, dot = (t.transpose(1, 2).float() for t in (q, k, v, out, dout))
    dv = p.transpose(-1, -2) @ dot
    ds = p * (dot @ vt.transpose(-1, -2) - (dot * ot).sum(-1, keepdim=True)) / q.shape[-1] ** 0.5
    dq, dk = ds @ kt, ds.transpose(-1, -2) @ qt
    return (*(g.transpose(1, 2).to(q.dtype).contiguous() for g in (dq, dk, dv)), None)


@pytest.fixture
def ref_kernels(monkeypatch):
    monkeypatch.setattr(flash4, "_flash_attn_fwd", _ref_fwd)
    monkeypatch.setattr(flash4, "_flash_attn_bwd", _ref_bwd)


def _qkv(seed=0, shape=(2, 16, 3, 8)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)]


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), is_causal=True).transpose(1, 2)


@pytest.mark.parametrize("strided_v", [False, True])
def test_op_registration_passes_opcheck(ref_kernels, strided_v):
    """Schema, fake kernel (shapes and strides) and autograd registration agree with the real kernel."""
    q, k, v = _qkv()
    if strided_v:  # the model's v: a view into a wider matmul output
        v = torch.cat([v, v], dim=-1)[..., :8].detach().requires_grad_()
    torch.library.opcheck(torch.ops.textbookgen.fa4_causal_fwd.default, (q, k, v))


@pytest.mark.parametrize("compiled", [False, True])
def test_forward_and_gradients_match_sdpa(ref_kernels, compiled):
    fn = torch.compile(flash4.causal_attention, backend="aot_eager", fullgraph=True) if compiled \
        else flash4.causal_attention
    q, k, v = _qkv()
    v_strided = torch.cat([v, v], dim=-1)[..., :8]  # a non-contiguous view, as the fused projection's v is
    go = torch.randn(2, 16, 3, 8, dtype=torch.float64)
    out = fn(q, k, v_strided)
    grads = torch.autograd.grad(out, (q, k, v), go)
    ref_out = _sdpa(q, k, v)
    ref_grads = torch.autograd.grad(ref_out, (q, k, v), go)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)  # the reference kernels compute in fp32
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_unavailable_without_the_package_or_a_gpu(monkeypatch):
    monkeypatch.setattr(flash4, "INSTALLED", False)
    assert not flash4.available()
    assert not flash4.available("cpu")


def test_config_rejects_fa4_when_it_cannot_be_imported_and_says_why(monkeypatch):
    monkeypatch.setattr(flash4, "INSTALLED", False)
    monkeypatch.setattr(flash4, "IMPORT_ERROR", "OSError: libcuda.so.1: cannot open shared object file")
    with pytest.raises(ValueError, match=r"flash-attn-4 cannot be imported \(OSError: libcuda.so.1"):
        PhiConfig(attn_impl="fa4")


def test_auto_prefers_fa4_then_flash_then_sdpa(monkeypatch):
    cfg, cuda, bf16 = CONFIGS["tiny"], torch.device("cuda", 0), torch.bfloat16
    monkeypatch.setattr(model_mod, "_fa4_runs_on", lambda device: True)
    assert attention_kernel(cfg, cuda, bf16) == "fa4"
    assert attention_kernel(cfg, cuda, torch.float32) == "sdpa"  # FA kernels take fp16/bf16 only
    assert attention_kernel(cfg, cuda, bf16, cache=object()) == "sdpa"  # decoding with a KV cache
    assert attention_kernel(cfg, torch.device("cpu"), bf16) == "sdpa"
    monkeypatch.setattr(model_mod, "_fa4_runs_on", lambda device: False)
    monkeypatch.setattr(model_mod, "flash_attn_func", object())
    assert attention_kernel(cfg, cuda, bf16) == "flash"
    monkeypatch.setattr(model_mod, "flash_attn_func", None)
    assert attention_kernel(cfg, cuda, bf16) == "sdpa"
    assert attention_kernel(PhiConfig(attn_impl="sdpa"), cuda, bf16) == "sdpa"
