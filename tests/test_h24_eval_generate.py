"""Greedy generation (lm_eval's generate_until) with a tokenizer that has neither a pad nor an EOS token (ours without
`<|endoftext|>`): the left padding of a batch was filled with None, a TypeError in torch.full naming neither the
tokenizer nor the cause. Padding is masked out, so any id does: a batch now gives what each prompt gives alone."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_s13o_eval_prefix import _model, _tokenizer  # noqa: E402

from trainer.eval.models import load_model  # noqa: E402

PROMPTS = ["hello world hello world", "world"]  # of 4 and 1 tokens: the second is left-padded in a batch


def test_a_tokenizer_without_pad_or_eos_generates_in_batches(tmp_path: Path) -> None:
    path = tmp_path / "tok.json"
    _tokenizer().save(str(path))
    lm = load_model(_model(), tokenizer=path, device="cpu")
    assert lm.tokenizer.pad_token_id is None and lm.eos_token_id is None
    alone = [lm.generate([p], max_new_tokens=4)[0] for p in PROMPTS]
    assert lm.generate(PROMPTS, max_new_tokens=4) == alone
    assert all(len(text.split()) == 4 for text in alone)  # no EOS: every row runs to max_new_tokens
    stopped = lm.generate(PROMPTS, max_new_tokens=4, until=["hello"])
    assert stopped == [text.split("hello")[0] for text in alone] and stopped != alone
