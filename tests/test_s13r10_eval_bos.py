"""Review of 0894f97's refusal of an empty context without a prefix token: an HF tokenizer whose BOS token is set
('<s>') but not in its vocabulary has no BOS id (None), and with no EOS either it was refused as having "no BOS or
EOS token", which its own `bos_token` contradicts. The refusal now says the token it names is not in its
vocabulary; with an EOS, the EOS is the prefix (lm_eval's HFLM), as before."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_s13o_eval_prefix import _model  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402

from trainer.eval.models import load_model  # noqa: E402

VOCAB = {"hello": 0, "world": 1, "<eos>": 2}


def _tokenizer(**special: str) -> transformers.PreTrainedTokenizerFast:
    """An HF tokenizer whose BOS '<s>' is set after it is built, so that it is not added to the vocabulary."""
    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, name_or_path="my-tokenizer", **special)
    hf.bos_token = "<s>"
    assert hf.bos_token_id is None
    return hf




def test_a_bos_token_not_in_the_vocabulary_is_named_in_the_refusal() -> None:
    lm = load_model(_model(len(VOCAB)), tokenizer=_tokenizer(), device="cpu")
    with pytest.raises(ValueError, match=r"the tokenizer \(my-tokenizer\) has no BOS or EOS token id to "
                                         r"condition an empty context on \(its BOS token '<s>' not in its vocabulary\)"):
        lm.loglikelihood([("", "hello world")])


def test_a_bos_token_not_in_the_vocabulary_falls_back_to_eos() -> None:
    lm = load_model(_model(len(VOCAB)), tokenizer=_tokenizer(eos_token="<eos>"), device="cpu")
    (ll, _), = lm.loglikelihood([("", "hello world")])
    (direct, _), = lm.loglikelihood_tokens([([VOCAB["<eos>"]], [VOCAB["hello"], VOCAB["world"]])])
    assert ll == pytest.approx(direct)
