"""Three small gaps between what a caller asks for and what is done: `params` that replaced the messages or the
system prompt the engine journals, keys and budgets (the journal's request was not the one sent); `generate
--batch` taking a `--max-error-rate` it never applies (the stop is live-only, as `classifier label --batch` says);
and `render_card(built="train")` reading the name as a collection of letters (`rain` counted as built)."""

from __future__ import annotations

import json

import pytest
from test_card import MANIFEST, RECIPE
from test_dataset import sample_documents
from typer.testing import CliRunner

from textbookgen.card import CARDS_DIR, render_card
from textbookgen.cli import app
from textbookgen.dataset import write_dataset
from textbookgen.engine import ChatRequest
from textbookgen.promptfile import PromptFileError, load_prompts
from textbookgen.providers import AnthropicProvider, OpenAIProvider
from textbookgen.testing.emulator import Emulator, EmulatorConfig

MESSAGES = [{"role": "user", "content": "Explain tides."}]


@pytest.mark.parametrize("key, value", [("messages", [{"role": "user", "content": "something else"}]),
                                        ("system", "You are a pirate.")])
def test_params_may_not_replace_the_messages_or_system_the_journal_keeps(key, value):
    """Both providers' bodies put params over what the engine built: the journal keyed and kept one prompt and
    the provider was sent another."""
    for cls in (OpenAIProvider, AnthropicProvider):
        provider = object.__new__(cls)  # no client: only the body is built
        provider.model, provider._max_key = "m", "max_tokens"
        with pytest.raises(ValueError, match=f"'params' must not set '{key}'"):
            body = provider.body(ChatRequest(messages=MESSAGES, params={key: value}))
            assert body[key] == value  # what went out without the check: not the request journaled


@pytest.mark.parametrize("key", ["messages", "system"])
def test_the_prompt_file_refuses_them_too_naming_the_line(tmp_path, key):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "Explain tides.", "params": {key: "x", "top_k": 5}}) + "\n")
    with pytest.raises(PromptFileError, match=f"p\\.jsonl:1: 'params' must not set '{key}': use the '{key}' field"):
        load_prompts(path)


def test_other_params_still_go_through():
    req = ChatRequest(messages=MESSAGES, system="Be brief.", params={"top_k": 5, "stop": ["\n\n"], "n": 1})
    assert req.params == {"top_k": 5, "stop": ["\n\n"], "n": 1}


def _generate(*args: str):
    return CliRunner().invoke(app, ["generate", *args, "--no-progress"], env={"OPENAI_API_KEY": "sk-test"})


def test_generate_batch_refuses_a_max_error_rate_it_would_not_apply(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Explain topic {i}"}) + "\n" for i in range(3)))
    refused = _generate(str(prompts), "--batch", "--max-error-rate", "0.2", "--base-url", "http://127.0.0.1:9/v1")
    assert refused.exit_code == 1, refused.output
    assert "--max-error-rate: live runs only; --batch pays for a batch as it submits it" in refused.output
    assert not (tmp_path / "p.journal.sqlite").exists()  # refused before anything was opened or sent
    with Emulator(EmulatorConfig(latency_median_s=0.001, batch_latency_s=0.05)) as emu:
        for extra in ((), ("--max-error-rate", "1")):  # the default and 1 (never stop) run as before
            result = _generate(str(prompts), "--batch", "--batch-poll", "0.02", "--base-url", emu.openai_base_url,
                               "-o", str(tmp_path / f"out{len(extra)}.jsonl"), *extra)
            assert result.exit_code == 0, result.output
        assert emu.stats()["batch_requests"] == 3 and emu.duplicates == 0


def test_a_live_generate_keeps_its_error_rate_stop(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "Explain tides."}) + "\n")
    refused = _generate(str(prompts), "--max-error-rate", "1.5")
    assert refused.exit_code == 1 and "--max-error-rate: must be in [0, 1], got 1.5" in refused.output


def test_a_built_split_given_as_a_name_is_that_split_not_its_letters(tmp_path):
    """`built="train"` took `rain` (a substring) for a built split and counted its documents in the card."""
    folder = tmp_path / "ds"
    write_dataset(sample_documents(40), folder)
    write_dataset(sample_documents(15, seed=100), folder, split="rain")  # added by hand
    text = render_card(folder, CARDS_DIR / "quickstart.md", RECIPE, MANIFEST, built="train").read_text("utf-8")
    assert "**40 documents" in text
    assert "| `rain` (added, not built by the recipe) | 15 |" in text and "| `train` | 40 |" in text
    assert text == render_card(folder, CARDS_DIR / "quickstart.md", RECIPE, MANIFEST, built=["train"]).read_text()


def test_a_missing_built_split_is_named_whole(tmp_path):
    write_dataset(sample_documents(10), tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no shards of the built split\(s\) \['test'\] under"):
        render_card(tmp_path, CARDS_DIR / "quickstart.md", RECIPE, MANIFEST, built="test")
