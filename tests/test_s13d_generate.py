"""`python -m trainer generate` encoded the prompt with the tokenizer's special-token parsing: a typed
`<|endoftext|>` became the EOS id, while `prepare` spells that string out as text inside a document (EOS only
after each one), so the model was asked to go on from ids that training never showed it there."""

from __future__ import annotations

import torch
from trainer_testlib import write_hub_folder

from trainer import generate as generate_module
from trainer.cli import main
from trainer.data import TokenStream, prepare
from trainer.export import export_hf
from trainer.model import CONFIGS, Phi
from trainer.tokenizer import EOS_ID, load_tokenizer


def test_a_typed_eos_in_a_prompt_gets_the_ids_prepare_gives_that_text(shared_data, tmp_path, monkeypatch, capsys):
    spec = str(shared_data / "tokenizer_gpt2")
    text = "GPT-2 ends a file with <|endoftext|> and then\n    goes on."
    src = write_hub_folder(tmp_path / "src", [text], files=1)
    index = prepare(str(src), tmp_path / "tok", spec, num_workers=1, progress=False)
    trained = TokenStream(tmp_path / "tok").read(0, index["total_tokens"]).tolist()
    assert trained[-1] == EOS_ID and EOS_ID not in trained[:-1]  # the document's own ids, then the EOS appended
    tok = load_tokenizer(spec)
    torch.manual_seed(0)
    export_hf(Phi(CONFIGS["tiny"]), tmp_path / "hf", tokenizer=tok)
    prompts = []
    original = generate_module.generate

    def recording(model, input_ids, *args, **kwargs):
        prompts.append(input_ids[0].tolist())
        return original(model, input_ids, *args, **kwargs)

    monkeypatch.setattr(generate_module, "generate", recording)
    assert main(["generate", str(tmp_path / "hf"), "-p", text, "--max-new-tokens", "1", "--device", "cpu"]) == 0
    assert prompts == [trained[:-1]]
    assert text in capsys.readouterr().out
    assert tok.encode("<|endoftext|>").ids == [EOS_ID]  # the caller's tokenizer keeps its own setting
