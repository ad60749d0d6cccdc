"""phi-1.5 in plain PyTorch, one file (nanoGPT style).

Parameter names equal those of `transformers.PhiForCausalLM`, so `model.state_dict()` *is* an HF
checkpoint (see trainer/export.py). The block is phi's parallel one:
`x = x + attn(ln(x)) + mlp(ln(x))`, partial rotary on the first `rotary_dim` dims of each head
(NeoX / `rotate_half` pairing, not interleaved), tanh-GELU MLP, biases everywhere, untied lm_head.
Speed: q, k, v and fc1 all read the same LayerNorm output, so they run as fused matmuls over the
concatenated HF-named weights (`fuse_projections`); optionally dense and fc2 run as one matmul over
`[attn, gelu(fc1)]` (`fuse_out`); no dropout modules; chunked lm_head + loss. The weights stay separate
HF-named parameters (FSDP2, DCP, export and `load_state_dict(assign=True)` see plain HF tensors); the
concatenation happens in the forward, where under bf16 autocast + torch.compile it is the same kernel as
the fp32->bf16 weight cast that autocast does anyway, so it adds no memory traffic.

Forward contract (`Phi.forward(input_ids, labels=None, cache=None, start_pos=0)`):
- `model(input_ids)` -> logits `[B, T, vocab_size]` (autocast dtype under autocast, else fp32).
- `model(input_ids, labels=labels)` -> scalar mean cross-entropy loss over the positions where
  `labels != -100`. `labels` are ALREADY aligned with the inputs (nanoGPT `x, y` style: `labels[:, t]`
  is the target of position t, i.e. `y = tokens[1:T+1]` for `x = tokens[0:T]`); no shift is done here
  (HF shifts internally; ours does not). With `config.loss_chunk_size > 0` the lm_head + cross-entropy
  runs in chunks of that many tokens and never materialises the full `[B*T, V]` logits; gradients are
  computed chunk by chunk inside the forward (no recompute of the lm_head matmul). With 0 it is the
  plain full-logits loss.
- `cache`/`start_pos`: optional `KVCache` for incremental decoding (trainer/generate.py); positions
  are `start_pos .. start_pos+T-1`.
Attention on fp16/bf16 CUDA inputs uses, by `attn_impl="auto"`: FlashAttention-4 (`flash-attn-4`, see
trainer/flash4.py) on Hopper/Blackwell when installed, else `flash_attn.flash_attn_func` (FlashAttention-2)
when installed, else `F.scaled_dot_product_attention(is_causal=True)` (cuDNN/flash kernels on H100).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from trainer import flash4

try:  # optional accelerator; SDPA is the first-class path
    from flash_attn import flash_attn_func
except ImportError:  # pragma: no cover - depends on the machine
    flash_attn_func = None

IGNORE_INDEX = -100


@dataclass
class PhiConfig:
    """Model shape (HF `PhiConfig` field names) plus training-time switches that do not change weights."""

    vocab_size: int = 51200
    hidden_size: int = 2048
    intermediate_size: int = 8192
    num_hidden_layers: int = 24
    num_attention_heads: int = 32
    max_position_embeddings: int = 2048
    partial_rotary_factor: float = 0.5
    rope_theta: float = 10000.0
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    # training-time switches (not part of the checkpoint)
    loss_chunk_size: int = 4096  # tokens per lm_head+CE chunk; 0 = plain full-logits loss
    activation_checkpointing: bool = False
    attn_impl: str = "auto"  # "auto" (FA4, else flash_attn, else SDPA: the first installed) | "sdpa" | "flash" | "fa4"
    # q, k, v, fc1 (same math): "qk_vfc1" = two matmuls, [q, k] and [v, fc1], so the buffer that backward
    # keeps (v and the pre-GELU fc1 output) does not also pin the pre-rotary q, k (3.2 GB at phi-1.5, mb 8);
    # "qkv_fc1" (True) = one matmul; "none" (False) = four, like HF
    fuse_projections: str | bool = "qk_vfc1"
    fuse_out: bool = False  # dense and fc2 as one matmul: [attn, gelu(u)] @ [W_dense, W_fc2].T, K = hidden + inter

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} not divisible by heads {self.num_attention_heads}")
        if self.rotary_dim % 2:
            raise ValueError(f"rotary dim {self.rotary_dim} (head_dim x partial_rotary_factor) must be even")
        if self.attn_impl not in ("auto", "sdpa", "flash", "fa4"):
            raise ValueError(f"attn_impl must be auto|sdpa|flash|fa4, got {self.attn_impl!r}")
        if self.attn_impl == "flash" and flash_attn_func is None:
            raise ValueError("attn_impl='flash' but flash_attn is not installed (pip install flash-attn)")
        if self.attn_impl == "fa4" and not flash4.INSTALLED:
            raise ValueError(f"attn_impl='fa4' but flash-attn-4 cannot be imported ({flash4.IMPORT_ERROR}); "
                             "pip install flash-attn-4")
        self.fuse_projections = fuse_mode(self)

    @property
    def fuse_groups(self) -> tuple[tuple[str, ...], ...]:
        """The input projections that run as one matmul each (HF names, in output order q, k, v, fc1)."""
        return _FUSE_GROUPS[fuse_mode(self)]

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)


_FUSE_GROUPS = {"qkv_fc1": (("q_proj", "k_proj", "v_proj", "fc1"),),
                "qk_vfc1": (("q_proj", "k_proj"), ("v_proj", "fc1")),
                "none": (("q_proj",), ("k_proj",), ("v_proj",), ("fc1",))}


def fuse_mode(cfg: PhiConfig) -> str:
    """`cfg.fuse_projections` as a mode name (True/False are the old spellings of qkv_fc1/none)."""
    mode = {True: "qkv_fc1", False: "none"}.get(cfg.fuse_projections, cfg.fuse_projections)
    if mode not in _FUSE_GROUPS:
        raise ValueError(f"fuse_projections must be one of {sorted(_FUSE_GROUPS)}, got {cfg.fuse_projections!r}")
    return mode


CONFIGS: dict[str, PhiConfig] = {
    # microsoft/phi-1_5: 1,418,270,720 parameters
    "phi-1.5": PhiConfig(),
    # ~99M parameters in the blocks (+2 x 39M untied 51200-row embedding/lm_head = 178M): a one-GPU demo
    "demo-100m": PhiConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=14, num_attention_heads=12),
    # CPU tests: real vocab so the real tokenizer fits, everything else tiny
    "tiny": PhiConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                      max_position_embeddings=256, loss_chunk_size=128),
}


def rope_table(cfg: PhiConfig, device: torch.device | str | None = None) -> torch.Tensor:
    """cos and sin of every position's rotary angles, `[max_position_embeddings, 2, rotary_dim/2]` in fp32.
    A table, not math in the forward: torch.compile inlines such math into every kernel that reads q or k,
    so each element recomputed pow/sin/cos (14% of a phi-1.5 training step on an H200)."""
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.rotary_dim, 2, device=device).float() / cfg.rotary_dim))
    freqs = torch.outer(torch.arange(cfg.max_position_embeddings, device=device).float(), inv_freq)
    return torch.stack((freqs.cos(), freqs.sin()), dim=1)


@torch.compiler.assume_constant_result  # a fact of the machine: torch.compile bakes it in, no guard, no trace
def _fa4_runs_on(device: torch.device) -> bool:
    return flash4.available(device)


def attention_kernel(cfg: PhiConfig, device: torch.device, dtype: torch.dtype, cache: KVCache | None = None) -> str:
    """"fa4", "flash" or "sdpa": the kernel that runs causal attention on `dtype` tensors on `device` (see the
    module docstring). FA kernels need fp16/bf16 CUDA tensors and no KV cache; everything else goes to SDPA."""
    if cache is not None or torch.device(device).type != "cuda" or dtype not in (torch.float16, torch.bfloat16):
        return "sdpa"
    if cfg.attn_impl == "auto":
        if _fa4_runs_on(torch.device(device)):
            return "fa4"
        return "flash" if flash_attn_func is not None else "sdpa"
    return cfg.attn_impl


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first rotary dims of `x [B, T, H, D]`, pairing dim i with i + rotary_dim/2 (HF rotate_half)."""
    half = cos.shape[-1]
    cos, sin = cos[:, None, :], sin[:, None, :]  # [T, 1, half] broadcasts over heads
    x1, x2, rest = x[..., :half].float(), x[..., half:2 * half].float(), x[..., 2 * half:]
    rot = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)
    return torch.cat((rot, rest), dim=-1)


class KVCache:
    """Preallocated keys/values `[B, H, max_len, D]` per layer for incremental decoding."""

    def __init__(self, cfg: PhiConfig, batch: int, max_len: int, device, dtype=torch.float32):
        shape = (batch, cfg.num_attention_heads, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_hidden_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.num_hidden_layers)]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, start: int) -> tuple[torch.Tensor, ...]:
        end = start + k.shape[2]
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class PhiAttention(nn.Module):
    """q/k/v/dense weights and the rotary + causal attention core; the projections run in PhiDecoderLayer."""

    def __init__(self, cfg: PhiConfig, layer_idx: int):
        super().__init__()
        self.cfg, self.layer_idx = cfg, layer_idx
        d = cfg.hidden_size
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.dense = nn.Linear(d, d)  # applied by PhiDecoderLayer (alone or fused with fc2)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               cache: KVCache | None = None, start_pos: int = 0) -> torch.Tensor:
        """Rotary + causal attention on projected `q, k, v [B, T, hidden]` (views of a fused matmul's output
        are fine); returns `[B, T, hidden]`, the input of `dense`."""
        B, T, _ = q.shape
        H, D = self.cfg.num_attention_heads, self.cfg.head_dim
        q, k, v = (t.view(B, T, H, D) for t in (q, k, v))
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        kernel = attention_kernel(self.cfg, q.device, q.dtype, cache)
        if kernel == "fa4":
            y = flash4.causal_attention(q, k, v)  # [B, T, H, D]
        elif kernel == "flash":
            y = flash_attn_func(q, k, v, causal=True)
        else:
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, D]
            mask, causal = None, True
            if cache is not None:
                k, v = cache.update(self.layer_idx, k, v, start_pos)
                if start_pos > 0:  # queries at start_pos.. see every cached key up to themselves
                    causal = False
                    if T > 1:
                        kpos = torch.arange(k.shape[2], device=q.device)
                        mask = kpos[None, :] <= (start_pos + torch.arange(T, device=q.device))[:, None]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal).transpose(1, 2)
        return y.reshape(B, T, H * D)


class PhiMLP(nn.Module):
    """fc1 -> tanh-GELU -> fc2; the matmuls run in PhiDecoderLayer (fused with the attention projections)."""

    def __init__(self, cfg: PhiConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)


class PhiDecoderLayer(nn.Module):
    def __init__(self, cfg: PhiConfig, layer_idx: int):
        super().__init__()
        self.cfg = cfg
        self.input_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = PhiAttention(cfg, layer_idx)
        self.mlp = PhiMLP(cfg)

    def project(self, h: torch.Tensor) -> list[torch.Tensor]:
        """q, k, v, fc1 outputs of `h`. Attention and MLP read the same h, so these run as fused matmuls
        (the parallel block's PaLM-style fusion) grouped by `cfg.fuse_groups`; each group's HF-named weights
        are concatenated along the output dim (one kernel with autocast's bf16 cast under compile)."""
        lin = {"q_proj": self.self_attn.q_proj, "k_proj": self.self_attn.k_proj, "v_proj": self.self_attn.v_proj,
               "fc1": self.mlp.fc1}
        outs = []
        for group in self.cfg.fuse_groups:
            mods = [lin[n] for n in group]
            if len(mods) == 1:
                outs.append(mods[0](h))
                continue
            w = torch.cat([m.weight for m in mods])
            b = torch.cat([m.bias for m in mods])
            outs.extend(F.linear(h, w, b).split([m.out_features for m in mods], dim=-1))
        return outs

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None = None, start_pos: int = 0) -> torch.Tensor:
        attn, mlp = self.self_attn, self.mlp
        q, k, v, u = self.project(self.input_layernorm(x))
        y = attn.attend(q, k, v, cos, sin, cache, start_pos)
        g = F.gelu(u, approximate="tanh")  # gelu_new
        if not self.cfg.fuse_out:
            return x + attn.dense(y) + mlp.fc2(g)
        # one matmul for both output projections: K = hidden + intermediate, one bias (b_dense + b_fc2)
        w = torch.cat((attn.dense.weight, mlp.fc2.weight), dim=1)
        return x + F.linear(torch.cat((y, g), dim=-1), w, attn.dense.bias + mlp.fc2.bias)


class PhiModel(nn.Module):
    def __init__(self, cfg: PhiConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(PhiDecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.final_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)


class Phi(nn.Module):
    """phi-1.5 causal LM; `state_dict()` keys equal `transformers.PhiForCausalLM`'s (see module docstring)."""

    def __init__(self, config: PhiConfig):
        super().__init__()
        self.config = config
        self.model = PhiModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size)
        self.register_buffer("rope", None, persistent=False)  # derived, not in checkpoints: set by init_weights
        self.register_load_state_dict_post_hook(lambda module, _keys: module.reset_rope())
        self.init_weights()

    def reset_rope(self) -> None:
        """Rebuild the rotary table in fp32 next to the weights: after `to_empty` (garbage), a load into a
        meta-device model (still meta) or a dtype cast (bf16 angles would drift from HF's fp32 ones)."""
        self.rope = rope_table(self.config, self.lm_head.weight.device)

    def _apply(self, fn, recurse=True):
        """`.to()`, `.half()`, `to_empty()`, ...: weights follow `fn`, then the rotary table is rebuilt."""
        super()._apply(fn, recurse)
        self.reset_rope()
        return self

    @torch.no_grad()
    def init_weights(self) -> None:
        """HF Phi init: Linear/Embedding ~ N(0, 0.02), biases 0, LayerNorm (1, 0); no residual scaling.
        Also usable after `to_empty()` from a meta-device model (FSDP2)."""
        self.reset_rope()
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=self.config.initializer_range)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; non-embedding excludes only the input embedding (lm_head is a matmul)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.model.embed_tokens.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token, PaLM/nanoGPT convention: 6 N + 12 L d T (9.09e9 for phi-1.5 at 2048)."""
        c = self.config
        return 6 * self.num_params(non_embedding=True) + 12 * c.num_hidden_layers * c.hidden_size * seq_len

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: decay on >=2-D weights (matmuls, embedding), none on biases and LayerNorms."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]

    def hidden_states(self, input_ids: torch.Tensor, cache: KVCache | None = None,
                      start_pos: int = 0) -> torch.Tensor:
        """Final-LayerNorm output `[B, T, hidden]` (the lm_head input)."""
        T = input_ids.shape[1]
        if start_pos + T > self.config.max_position_embeddings:
            raise ValueError(f"sequence end {start_pos + T} exceeds context {self.config.max_position_embeddings}")
        cos, sin = self.rope[start_pos:start_pos + T].unbind(1)
        x = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            if self.config.activation_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, cos, sin, use_reentrant=False)
            else:
                x = layer(x, cos, sin, cache, start_pos)
        return self.model.final_layernorm(x)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                cache: KVCache | None = None, start_pos: int = 0) -> torch.Tensor:
        h = self.hidden_states(input_ids, cache, start_pos)
        if labels is None:
            return self.lm_head(h)
        return self.loss(h, labels)

    def loss(self, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of `lm_head(h)` against aligned `labels`. A method of its own so that a trainer
        that compiles block by block can compile the loss too (torchtitan does the same); left eager, its
        softmax passes over `[chunk, vocab]` fp32 cost 8% of a phi-1.5 step."""
        h, labels = h.reshape(-1, h.shape[-1]), labels.reshape(-1)
        if self.config.loss_chunk_size > 0:
            return chunked_linear_cross_entropy(h, self.lm_head.weight, self.lm_head.bias, labels,
                                                self.config.loss_chunk_size)
        return F.cross_entropy(self.lm_head(h).float(), labels, ignore_index=IGNORE_INDEX)


class _ChunkedLinearCE(torch.autograd.Function):
    """mean CE(x @ W.T + b, y) in token chunks; grads are made chunk by chunk in forward (Liger-style),
    so neither the full logits nor a recompute of the lm_head matmul is ever needed."""

    @staticmethod
    def forward(ctx, x, weight, bias, labels, chunk_size: int, need_grad: bool):
        dev = x.device.type
        dt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
        acc = torch.promote_types(dt, torch.float32)  # fp32 softmax/loss (fp64 stays fp64)
        with torch.autocast(dev, enabled=False):
            w = weight.to(dt)
            b = bias.to(dt) if bias is not None else None
            n_valid = (labels != IGNORE_INDEX).sum().clamp(min=1).to(acc)
            loss = torch.zeros((), device=x.device, dtype=acc)
            cols = torch.arange(weight.shape[0], device=x.device)
            grad_x, grad_w, grad_b = [], None, None
            for s in range(0, x.shape[0], chunk_size):
                xc, yc = x[s:s + chunk_size].to(dt), labels[s:s + chunk_size]
                logits = F.linear(xc, w, b).to(acc)
                valid = yc != IGNORE_INDEX
                yc = torch.where(valid, yc, 0)
                lse = torch.logsumexp(logits, dim=-1)
                loss = loss + ((lse - logits.gather(1, yc[:, None]).squeeze(1)) * valid).sum()
                if need_grad:  # d loss / d logits = (softmax - onehot) * valid / n_valid, one pointwise kernel
                    p = torch.exp(logits - lse[:, None])
                    g = torch.where(cols[None, :] == yc[:, None], p - 1, p)
                    g = (g * (valid.to(acc) / n_valid)[:, None]).to(dt)
                    grad_x.append((g @ w).to(x.dtype))  # concatenated once below (no buffer rewritten per chunk)
                    gw, gb = (g.t() @ xc).to(acc), g.to(acc).sum(0)
                    grad_w, grad_b = (gw, gb) if grad_w is None else (grad_w + gw, grad_b + gb)
        if need_grad:
            ctx.save_for_backward(torch.cat(grad_x), grad_w.to(weight.dtype), grad_b)
        ctx.has_bias = bias is not None
        return loss / n_valid

    @staticmethod
    def backward(ctx, grad_out):
        grad_x, grad_w, grad_b = ctx.saved_tensors
        gb = (grad_b * grad_out).to(grad_w.dtype) if ctx.has_bias else None
        return grad_x * grad_out.to(grad_x.dtype), grad_w * grad_out.to(grad_w.dtype), gb, None, None, None


def chunked_linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                                 labels: torch.Tensor, chunk_size: int = 4096) -> torch.Tensor:
    """Mean cross-entropy of `x [N, d] @ weight.T + bias` against `labels [N]` (IGNORE_INDEX skipped)
    without materialising `[N, V]` logits; memory is one `[chunk_size, V]` fp32 block."""
    if x.shape[0] != labels.shape[0] or x.shape[0] == 0:
        raise ValueError(f"{x.shape[0]} hidden rows but {labels.shape[0]} labels (need the same, at least one)")
    # under no_grad (evaluation) the forward skips the gradient work; ctx.needs_input_grad cannot tell
    need_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    return _ChunkedLinearCE.apply(x, weight, bias, labels, max(1, chunk_size), need_grad)


def _self_check() -> None:  # pragma: no cover - `python -m trainer.model` prints the preset sizes
    for name, cfg in CONFIGS.items():
        with torch.device("meta"):
            m = Phi(cfg)
        print(f"{name}: {m.num_params(False):,} params, {m.num_params():,} non-embedding, "
              f"{m.flops_per_token(cfg.max_position_embeddings) / 1e9:.2f} GFLOP/token, "
              f"head_dim {cfg.head_dim}, rotary {cfg.rotary_dim}, ~{math.ceil(m.num_params(False) / 1e6)}M")


if __name__ == "__main__":
    _self_check()
