"""Sampling: greedy equals argmax decoding without cache, top-k/top-p restrict the support, EOS stops."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from trainer.generate import generate, generate_text, load_model, sample_next  # noqa: E402
from trainer.model import CONFIGS, Phi, PhiConfig  # noqa: E402

SMALL = PhiConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=2, max_position_embeddings=24)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = Phi(SMALL).eval()
    with torch.no_grad():
        m.lm_head.weight.mul_(50)  # peaked distributions, so greedy paths are well separated
    return m


def test_greedy_cached_equals_uncached_and_manual(model):
    x = torch.tensor([[1, 2, 3], [4, 5, 6]])
    a = generate(model, x, 10, temperature=0)
    b = generate(model, x, 10, temperature=0, use_cache=False)
    assert torch.equal(a, b) and a.shape == (2, 13)
    seq = x
    for _ in range(10):  # reference: argmax of a full forward each step
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(a, seq)


def test_beyond_context_window_slides(model):
    y = generate(model, torch.tensor([[1, 2, 3]]), 40, temperature=0)
    assert y.shape == (1, 43)


def test_sampling_filters():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([[5.0, 4.0, 3.0, 0.0, -1.0]]).repeat(400, 1)
    assert set(sample_next(logits, 1.0, top_k=2, generator=g).tolist()) == {0, 1}
    probs = logits[0].softmax(-1)  # top-p 0.8: {0, 1} hold 0.66+0.24 >= 0.8, so 2.. are cut
    assert probs[:1].sum() < 0.8 <= probs[:2].sum()
    assert set(sample_next(logits, 1.0, top_p=0.8, generator=g).tolist()) == {0, 1}
    assert set(sample_next(logits, 1.0, top_p=0.5, generator=g).tolist()) == {0}
    assert len(set(sample_next(logits, 1.0, generator=g).tolist())) >= 4
    assert sample_next(logits[:1], 0).item() == 0
    with pytest.raises(ValueError, match="top_p"):
        sample_next(logits, 1.0, top_p=1.5)


def test_seeded_sampling_is_reproducible_and_eos_stops(model):
    x = torch.tensor([[7, 8]])
    a = generate(model, x, 12, temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(3))
    b = generate(model, x, 12, temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    first = generate(model, x, 1, temperature=0)[0, -1].item()
    stopped = generate(model, x, 12, temperature=0, eos_id=first)
    assert stopped.shape == (1, 3)
    assert generate(model, x, 5, temperature=0, vocab_limit=1)[0, 2:].tolist() == [0] * 5


def test_generate_text_from_export(tmp_path, shared_data):
    from trainer.export import export_hf
    from trainer.tokenizer import load_tokenizer

    tok = load_tokenizer(shared_data / "tokenizer_gpt2")
    torch.manual_seed(0)
    export_hf(Phi(CONFIGS["tiny"]), tmp_path / "hf", tokenizer=tok)
    m = load_model(tmp_path / "hf")
    outs = generate_text(m, tok, ["def add(a, b):\n    return", ""], max_new_tokens=4, seed=0)
    again = generate_text(m, tok, ["def add(a, b):\n    return", ""], max_new_tokens=4, seed=0)
    assert outs == again and len(outs) == 2 and all(isinstance(o, str) for o in outs)
    torch.save({"model": m.state_dict()}, tmp_path / "ckpt.pt")
    m2 = load_model(tmp_path / "ckpt.pt", config_name="tiny")
    assert torch.equal(m2.lm_head.weight, m.lm_head.weight)
    with pytest.raises(ValueError, match="config_name"):
        load_model(tmp_path / "ckpt.pt")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "nope")
