"""phi-1.5 model: HF parity, presets, chunked loss, KV cache, activation checkpointing."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from trainer_testlib import perturbed_phi, random_ids  # noqa: E402

from trainer.model import (  # noqa: E402
    CONFIGS,
    IGNORE_INDEX,
    KVCache,
    Phi,
    PhiConfig,
    chunked_linear_cross_entropy,
    rope_table,
)

SMALL = PhiConfig(vocab_size=256, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=128, loss_chunk_size=37)


def test_phi15_preset_matches_released_model():
    with torch.device("meta"):
        m = Phi(CONFIGS["phi-1.5"])
    assert m.num_params(non_embedding=False) == 1_418_270_720
    assert m.num_params() == 1_313_413_120  # minus the input embedding only
    assert m.flops_per_token(2048) == pytest.approx(9.09e9, rel=1e-3)
    keys = set(m.state_dict())
    assert len(keys) == 341 and "lm_head.bias" in keys and "model.final_layernorm.weight" in keys
    assert "model.layers.23.self_attn.dense.weight" in keys and "model.layers.0.mlp.fc2.bias" in keys
    c = CONFIGS["phi-1.5"]
    assert (c.head_dim, c.rotary_dim, c.vocab_size, c.max_position_embeddings) == (64, 32, 51200, 2048)


@pytest.mark.parametrize("fuse", [True, False])
def test_logits_match_transformers_phi(fuse):
    transformers = pytest.importorskip("transformers")
    m = perturbed_phi(SMALL).eval()
    m.config.fuse_projections = fuse
    hf = transformers.PhiForCausalLM(transformers.PhiConfig(
        vocab_size=256, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=128, partial_rotary_factor=0.5, rope_theta=10000.0)).eval()
    hf.load_state_dict(m.state_dict(), strict=True)
    ids = random_ids(SMALL, 3, 128)
    with torch.no_grad():
        assert (hf(ids).logits - m(ids)).abs().max().item() < 1e-5
        # HF shifts labels inside; ours takes them aligned (labels[t] = target of position t)
        hf_loss = hf(ids, labels=ids).loss
        aligned = torch.cat([ids[:, 1:], torch.full_like(ids[:, :1], IGNORE_INDEX)], 1)
        assert m(ids, labels=aligned).item() == pytest.approx(hf_loss.item(), abs=1e-5)


@pytest.mark.parametrize("chunk", [3, 37, 4096])
def test_chunked_loss_and_grads_equal_plain(chunk):
    m = perturbed_phi(SMALL)
    ids, y = random_ids(SMALL, 2, 50), random_ids(SMALL, 2, 50, seed=3)
    y[0, :7] = IGNORE_INDEX
    y[1, -3:] = IGNORE_INDEX

    def run(chunk_size: int):
        m.zero_grad()
        m.config.loss_chunk_size = chunk_size
        loss = m(ids, labels=y)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}

    plain, g_plain = run(0)
    chunked, g_chunk = run(chunk)
    assert torch.allclose(plain, chunked, atol=1e-6, rtol=0)
    for n, g in g_plain.items():
        assert torch.allclose(g, g_chunk[n], atol=1e-6, rtol=1e-5), n


def test_chunked_loss_gradcheck_fp64_and_scaling():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 5, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(11, 5, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(11, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.randint(0, 11, (9,), generator=g)
    y[2] = IGNORE_INDEX
    assert torch.autograd.gradcheck(lambda x, w, b: chunked_linear_cross_entropy(x, w, b, y, 4), (x, w, b))
    (3.0 * chunked_linear_cross_entropy(x, w, None, y, 4)).backward()  # upstream grad is applied
    gx = x.grad.clone()
    x.grad = None
    (3.0 * torch.nn.functional.cross_entropy(x @ w.t(), y, ignore_index=IGNORE_INDEX)).backward()
    assert torch.allclose(gx, x.grad)
    with pytest.raises(ValueError, match="labels"):
        chunked_linear_cross_entropy(x, w, b, y[:3])


def test_chunked_loss_no_grad_evaluation():
    m = perturbed_phi(SMALL)
    ids, y = random_ids(SMALL, 2, 30), random_ids(SMALL, 2, 30, seed=7)
    with torch.no_grad():
        a = m(ids, labels=y)
        m.config.loss_chunk_size = 0
        b = m(ids, labels=y)
    assert not a.requires_grad and torch.allclose(a, b, atol=1e-6)


def test_chunked_loss_under_bf16_autocast_is_close():
    m = perturbed_phi(SMALL)
    ids, y = random_ids(SMALL, 2, 64), random_ids(SMALL, 2, 64, seed=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m.config.loss_chunk_size = 16
        a = m(ids, labels=y)
        m.config.loss_chunk_size = 0
        b = m(ids, labels=y)
    assert a.dtype == torch.float32 and abs(a.item() - b.item()) < 2e-2


def test_kv_cache_decoding_equals_full_forward():
    m = perturbed_phi(SMALL).eval()
    ids = random_ids(SMALL, 2, 20)
    with torch.no_grad():
        full = m(ids)
        cache = KVCache(SMALL, batch=2, max_len=32, device="cpu")
        parts = [m(ids[:, :8], cache=cache), m(ids[:, 8:13], cache=cache, start_pos=8)]
        parts += [m(ids[:, t:t + 1], cache=cache, start_pos=t) for t in range(13, 20)]
    assert (torch.cat(parts, 1) - full).abs().max().item() < 1e-5


@pytest.mark.parametrize("switch, value, seed", [("fuse_projections", False, 6),
                                                  ("activation_checkpointing", True, 5)])
def test_memory_and_speed_switches_keep_the_grads(switch, value, seed):
    """Unfused projections and activation checkpointing change how, not what, is computed."""
    m = perturbed_phi(SMALL)
    ids, y = random_ids(SMALL, 2, 40), random_ids(SMALL, 2, 40, seed=seed)
    m(ids, labels=y).backward()
    ref = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    setattr(m.config, switch, value)
    m(ids, labels=y).backward()
    for n, p in m.named_parameters():
        assert torch.allclose(p.grad, ref[n], atol=1e-6), n


def test_rope_table_survives_every_way_a_model_gets_its_weights():
    """The rotary table is derived (not in state_dict): meta + to_empty, meta + load(assign), and dtype casts
    must each leave the exact fp32 table, or logits drift silently."""
    want = rope_table(SMALL)
    assert want.shape == (128, 2, SMALL.rotary_dim // 2) and want.dtype == torch.float32
    ref = perturbed_phi(SMALL)
    assert "rope" not in ref.state_dict() and torch.equal(ref.rope, want)
    ids = random_ids(SMALL, 2, 16)
    with torch.no_grad():
        expect = ref(ids)
    with torch.device("meta"):
        a, b = Phi(SMALL), Phi(SMALL)
    a.to_empty(device="cpu")
    a.load_state_dict(ref.state_dict())
    b.load_state_dict(ref.state_dict(), assign=True)
    for m in (a, b):
        assert torch.equal(m.rope, want)
        with torch.no_grad():
            assert torch.equal(m(ids), expect)
    c = perturbed_phi(SMALL).to(torch.bfloat16)
    assert c.rope.dtype == torch.float32 and torch.equal(c.rope, want)


def test_param_groups_and_init():
    m = Phi(SMALL)
    decay, no_decay = m.param_groups(0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(m.parameters()))
    assert torch.all(m.lm_head.bias == 0) and torch.all(m.model.final_layernorm.weight == 1)
    assert abs(m.model.layers[0].mlp.fc1.weight.std().item() - 0.02) < 2e-3


def test_bad_config_and_inputs():
    with pytest.raises(ValueError, match="divisible"):
        PhiConfig(hidden_size=100, num_attention_heads=3)
    with pytest.raises(ValueError, match="attn_impl"):
        PhiConfig(attn_impl="xformers")
    m = Phi(SMALL)
    with pytest.raises(ValueError, match="context"):
        m(random_ids(SMALL, 1, 129))
