"""An empty context is scored after a prefix token, BOS else EOS (lm_eval's HFLM); a tokenizer with neither (ours
without `<|endoftext|>`) is refused naming that tokenizer, where scoring used to fail on a None token id."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402

from trainer.eval.models import load_model  # noqa: E402

VOCAB = {"hello": 0, "world": 1, "[UNK]": 2, "<eos>": 3}


def _tokenizer() -> Tokenizer:
    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def _model(vocab_size: int = len(VOCAB)) -> torch.nn.Module:
    """A one-layer PhiForCausalLM, seeded, to score with."""
    torch.manual_seed(0)
    cfg = transformers.PhiConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=32)
    return transformers.PhiForCausalLM(cfg).eval()


def test_an_empty_context_without_bos_or_eos_names_the_tokenizer(tmp_path: Path) -> None:
    path = tmp_path / "tok.json"
    _tokenizer().save(str(path))  # no <|endoftext|>: neither BOS nor EOS
    lm = load_model(_model(), tokenizer=path, device="cpu")
    assert len(lm.loglikelihood([("hello", " world")])) == 1  # a context of its own needs no prefix token
    with pytest.raises(ValueError, match=rf"the tokenizer \({path}\) has no BOS or EOS token"):
        lm.loglikelihood([("", "hello world")])


def test_an_empty_context_falls_back_to_eos(tmp_path: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=_tokenizer(), eos_token="<eos>")
    assert tok.bos_token_id is None
    lm = load_model(_model(), tokenizer=tok, device="cpu")
    (ll, _), = lm.loglikelihood([("", "hello world")])
    (direct, _), = lm.loglikelihood_tokens([([VOCAB["<eos>"]], [VOCAB["hello"], VOCAB["world"]])])
    assert ll == pytest.approx(direct)
