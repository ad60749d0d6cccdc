"""`generate_text` with an empty prompt starts from the EOS id; a tokenizer without `<|endoftext|>` (a
`--tokenizer` of another family) made that id None, and torch failed on it ("Could not infer dtype of NoneType")."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from trainer.generate import generate_text
from trainer.model import CONFIGS, Phi


def _no_eos_tokenizer() -> Tokenizer:
    """A word-level tokenizer of three tokens, none of them `<|endoftext|>`."""
    tok = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def test_an_empty_prompt_with_a_tokenizer_lacking_eos_is_refused_in_words():
    torch.manual_seed(0)
    model = Phi(CONFIGS["tiny"])
    tok = _no_eos_tokenizer()
    assert len(generate_text(model, tok, ["a b"], 2, seed=0)) == 1  # a prompt needs no EOS
    with pytest.raises(ValueError, match=r"empty prompt starts from the tokenizer's <\|endoftext\|>, and this "
                                         r"tokenizer has none: give a prompt"):
        generate_text(model, tok, [""], 2, seed=0)
