"""Fused projection layouts (q/k/v/fc1 groups, dense+fc2) give the unfused math and keep HF's parameter names."""

from __future__ import annotations

import dataclasses

import pytest

torch = pytest.importorskip("torch")

from trainer_testlib import perturbed_phi, random_ids  # noqa: E402

from trainer.model import IGNORE_INDEX, Phi, PhiConfig  # noqa: E402

SMALL = PhiConfig(vocab_size=256, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=128, loss_chunk_size=37,
                  fuse_projections="none", fuse_out=False)
LAYOUTS = [("qkv_fc1", False), ("qk_vfc1", False), ("none", True), ("qk_vfc1", True), ("qkv_fc1", True)]


def _model(seed: int = 0) -> Phi:
    return perturbed_phi(SMALL, seed)


def _ids(b: int, t: int, seed: int) -> torch.Tensor:
    return random_ids(SMALL, b, t, seed)


def _run(m: Phi, ids: torch.Tensor, y: torch.Tensor):
    m.zero_grad(set_to_none=True)
    loss = m(ids, labels=y)
    loss.backward()
    with torch.no_grad():
        logits = m(ids)
    return logits, loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}


@pytest.mark.parametrize(("fuse", "out"), LAYOUTS)
def test_fused_layouts_equal_unfused_logits_loss_grads(fuse, out):
    m = _model()
    ids, y = _ids(2, 48, 1), _ids(2, 48, 2)
    y[0, :5] = IGNORE_INDEX
    ref_logits, ref_loss, ref_grads = _run(m, ids, y)
    m.config.fuse_projections, m.config.fuse_out = fuse, out
    logits, loss, grads = _run(m, ids, y)
    assert (logits - ref_logits).abs().max().item() < 1e-5
    assert abs(loss.item() - ref_loss.item()) < 1e-6
    assert grads.keys() == ref_grads.keys()
    for n, g in grads.items():
        assert torch.allclose(g, ref_grads[n], atol=1e-6, rtol=1e-4), n


@pytest.mark.parametrize(("fuse", "out"), [("qkv_fc1", True), ("qk_vfc1", False)])
def test_fused_layouts_keep_exactly_hf_names_and_logits(fuse, out):
    transformers = pytest.importorskip("transformers")
    m = _model(1).eval()
    m.config = dataclasses.replace(m.config, fuse_projections=fuse, fuse_out=out)
    for layer in m.model.layers:
        layer.cfg = layer.self_attn.cfg = m.config
    hf = transformers.PhiForCausalLM(transformers.PhiConfig(
        vocab_size=256, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=128, partial_rotary_factor=0.5, rope_theta=10000.0)).eval()
    # no fused parameter exists: state_dict, named_parameters and HF's keys are the same names
    keys = list(m.state_dict())
    assert len(keys) == len(set(keys)) and set(keys) == set(hf.state_dict())
    assert [n for n, _ in m.named_parameters()] == list(m.state_dict())
    hf.load_state_dict(m.state_dict(), strict=True)
    ids = _ids(2, 64, 3)
    with torch.no_grad():
        assert (hf(ids).logits - m(ids)).abs().max().item() < 1e-5
    back = Phi(m.config)
    back.load_state_dict(hf.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(back(ids), m(ids))


def test_fuse_mode_spellings():
    assert PhiConfig().fuse_projections == "qk_vfc1"
    assert PhiConfig(fuse_projections=True).fuse_projections == "qkv_fc1"
    assert PhiConfig(fuse_projections=False).fuse_projections == "none"
    assert PhiConfig(fuse_projections=True).fuse_groups == (("q_proj", "k_proj", "v_proj", "fc1"),)
    with pytest.raises(ValueError, match="fuse_projections"):
        PhiConfig(fuse_projections="qkvo")


def test_compiled_forward_and_loss_are_one_graph():
    """torch.compile sees forward + chunked loss (3 chunks) as one graph: no break splits the step."""
    cfg = dataclasses.replace(SMALL, fuse_projections="qk_vfc1", fuse_out=True, loss_chunk_size=32)
    m = Phi(cfg)
    ids, y = _ids(2, 48, 4), _ids(2, 48, 5)

    def step(x, t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return m(x, labels=t)

    torch._dynamo.reset()
    explained = torch._dynamo.explain(step)(ids, y)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
