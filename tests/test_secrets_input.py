"""A key pasted where a variable name goes is refused in one line that does not show it."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from textbookgen.cli import app

KEY = "sk-CANARYoai7Q2xZ9mK4vB8nL3pR6tY1wE5uI0oPaSdFgHjK"


def test_generate_refuses_a_key_given_as_api_key_env(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    res = CliRunner().invoke(app, ["generate", str(prompts), "--api-key-env", KEY])
    assert res.exit_code == 1 and "--api-key-env takes the name of an environment variable" in res.output
    assert "CANARY" not in res.output


def test_a_recipe_refuses_a_key_given_as_api_key_env(tmp_path):
    from textbookgen.recipe import RecipeError, load_recipe

    (tmp_path / "topics.yaml").write_text("topics: [Physics]\n")
    (tmp_path / "r.yaml").write_text("name: t\nmodel: m\ntaxonomy:\n  source: topics.yaml\nmix:\n  - template: "
                                     f"textbook_section\nsamples: 3\nprovider: {{api_key_env: {KEY}}}\n")
    with pytest.raises(RecipeError, match="provider.api_key_env: takes the name of an environment variable") as info:
        load_recipe(tmp_path / "r.yaml")
    assert "CANARY" not in str(info.value)


@pytest.mark.parametrize("url", ["http://gpu1:8000/v1?api_key=qsCANARY9Lk8", "http://gpu1:8000/v1#qsCANARY9Lk8",
                                 "http://gpu1:8000/v1?"])
def test_a_base_url_with_a_query_string_is_refused_without_showing_it(url):
    """The SDKs append the endpoint's path after the query (`?api_key=TOKENchat/completions`): it never worked,
    and the token reached httpx's log and the batch resume hint."""
    from textbookgen.providers import replica_urls

    with pytest.raises(ValueError, match="has a query string") as info:
        replica_urls("openai-compatible", url)
    assert "CANARY" not in str(info.value)


def test_an_unset_key_like_variable_name_is_not_echoed(tmp_path, monkeypatch):
    """A key made only of letters and digits is a valid variable name: "is not set" echoed it whole."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    key = "vllmCANARY7Q2xZ9mK4vB8nL3pR6tY1wE5"
    monkeypatch.delenv(key, raising=False)
    res = CliRunner().invoke(app, ["generate", str(prompts), "--api-key-env", key])
    assert res.exit_code == 1 and "is not set" in res.output and "CANARY" not in res.output, res.output
    res = CliRunner().invoke(app, ["generate", str(prompts), "--api-key-env", "MY_VLLM_KEY_2"])
    assert res.exit_code == 1 and "environment variable MY_VLLM_KEY_2 is not set" in res.output, res.output


@pytest.mark.parametrize("params", [{"api_key": KEY}, {"Authorization": f"Bearer {KEY}"},
                                    {"extra_body": {"x-api-key": KEY}}, {"access_token": KEY}])
def test_a_credential_in_request_params_is_refused_before_the_journal_keeps_it(params):
    """Request params are request data: the journal stores them and `journal --export` writes them out."""
    from textbookgen.engine import ChatRequest

    with pytest.raises(ValueError, match="a credential does not go in the request body") as info:
        ChatRequest(messages=[{"role": "user", "content": "hi"}], params=params)
    assert "CANARY" not in str(info.value)
    ChatRequest(messages=[{"role": "user", "content": "hi"}],  # what servers take stays allowed
                params={"top_k": 5, "max_tokens_per_doc": 1, "chat_template_kwargs": {"enable_thinking": False},
                        "eos_token": "</s>", "token": None})


def test_a_prompts_file_row_with_a_credential_in_params_is_named_by_line(tmp_path):
    prompts = tmp_path / "p.jsonl"
    rows = [{"prompt": "hi"}, {"prompt": "ho", "params": {"api_key": KEY}}]
    prompts.write_text("".join(json.dumps(row) + "\n" for row in rows))
    res = CliRunner().invoke(app, ["generate", str(prompts)])  # refused while reading, before any key is needed
    assert res.exit_code == 1 and "p.jsonl:2" in res.output and "must not set 'api_key'" in res.output
    assert "CANARY" not in res.output

SCHEMA = {"type": "object", "properties": {"username": {"type": "string"}, "password": {"type": "string"}}}

@pytest.mark.parametrize("name", ["hf_token", "bearer_token", "refresh_token", "token"])
def test_request_params_named_like_any_token_are_refused(name):
    """The README promises `*_token` params are refused (the journal stores request params): only access_token and
    auth_token were, so an `hf_token` reached the journal and its export."""
    from textbookgen.engine import credential_param

    assert credential_param({name: "hf_CANARYabcdefabcdefabcdefabcdefab"}) == name
    assert credential_param({"extra_body": {name: "x"}}) == f"extra_body.{name}"


def test_a_json_schema_with_a_password_field_is_not_taken_for_a_credential():
    """The scan descends into every mapping, a structured-output schema's `properties` too: asking a server for
    JSON with a `password` field (a login form's test data) was refused as a credential in the request."""
    from textbookgen.engine import ChatRequest

    ChatRequest(messages=[{"role": "user", "content": "a login form's test data"}], params={"guided_json": SCHEMA})
    ChatRequest(messages=[{"role": "user", "content": "hi"}],
                params={"output_config": {"format": {"type": "json_schema", "schema": SCHEMA}}})


def test_a_prompts_row_with_a_top_level_api_key_is_refused_not_kept_as_metadata(tmp_path):
    """A row's unknown fields become metadata, which the journal and the completions file keep: a key put beside
    the prompt (as if it set the key) was written there, where `params: {api_key}` is refused."""
    from textbookgen.promptfile import PromptFileError, load_prompts

    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "hi", "api_key": "sk-CANARYoai7Q2xZ9mK4vB8nL3pR6tY1wE5"}) + "\n")
    with pytest.raises(PromptFileError, match="api_key"):
        load_prompts(prompts)
