"""Export to the Hugging Face Phi format: loads into transformers.PhiForCausalLM with no missing or
unexpected keys, same logits in fp32; round trip back into our model."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from trainer.export import export_hf, load_hf  # noqa: E402
from trainer.model import CONFIGS, Phi  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    m = Phi(CONFIGS["tiny"]).eval()
    with torch.no_grad():  # non-trivial LayerNorms and biases so a swapped name would show
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def test_export_loads_into_transformers_with_same_logits(tiny, tmp_path):
    out = export_hf(torch.compile(tiny), tmp_path / "hf")  # a compiled wrapper is unwrapped, never run
    hf, info = transformers.PhiForCausalLM.from_pretrained(out, output_loading_info=True, dtype=torch.float32)
    assert not info["missing_keys"], info
    assert not info["unexpected_keys"] and not info["mismatched_keys"], info
    hf.eval()
    ids = torch.randint(0, 50295, (2, 96), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (hf(ids).logits - tiny(ids)).abs().max().item()
    assert diff < 1e-4, diff
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "phi" and cfg["partial_rotary_factor"] == 0.5 and cfg["eos_token_id"] == 50256


def test_exported_files_get_the_mode_of_a_new_file(tiny, tmp_path):
    import os
    import stat

    umask = os.umask(0o022)
    try:
        out = export_hf(tiny, tmp_path / "hf")
    finally:
        os.umask(umask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes["model.safetensors"] == 0o644 and modes["config.json"] == 0o644, modes


def test_round_trip_and_bf16(tiny, tmp_path):
    export_hf(tiny, tmp_path / "fp32")
    back = load_hf(tmp_path / "fp32", loss_chunk_size=0)
    assert back.config.loss_chunk_size == 0 and back.config.hidden_size == tiny.config.hidden_size
    for (k, a), (k2, b) in zip(tiny.state_dict().items(), back.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k
    export_hf(tiny, tmp_path / "bf16", dtype="bfloat16")
    hf = transformers.PhiForCausalLM.from_pretrained(tmp_path / "bf16")
    assert hf.dtype == torch.bfloat16
    assert load_hf(tmp_path / "bf16").model.embed_tokens.weight.dtype == torch.float32


def test_tokenizer_files_load_in_transformers(tiny, tmp_path, shared_data):
    from trainer.tokenizer import load_tokenizer

    tok = load_tokenizer(shared_data / "tokenizer_gpt2")
    out = export_hf(tiny, tmp_path / "hf", tokenizer=tok)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    code = "def f(x):\n        return x  # two  spaces\n"
    assert hf_tok(code)["input_ids"] == tok.encode(code).ids
    assert hf_tok.eos_token_id == 50256


def test_bad_inputs(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf(tmp_path)
    with pytest.raises(ValueError, match="dtype"):
        export_hf(tiny, tmp_path / "x", dtype="int8")
    with pytest.raises(TypeError, match="Phi"):
        export_hf(torch.nn.Linear(2, 2), tmp_path / "y")
    out = export_hf(tiny, tmp_path / "hf")
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, "qk_layernorm": True}))
    with pytest.raises(ValueError, match="qk_layernorm"):
        load_hf(out)
    (out / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 3}))
    with pytest.raises(ValueError, match="missing"):
        load_hf(out)
