"""A base_url holding user:password@ cannot work (the SDKs authenticate with the API key alone): it is refused
before anything is sent, in one line naming the option, and no message shows the password."""

from __future__ import annotations

import pytest

from textbookgen.engine import ChatRequest, Generator
from textbookgen.errors import FatalProviderError
from textbookgen.providers import make_provider, replica_urls
from textbookgen.testing.emulator import Emulator, EmulatorConfig

SECRET = "hunter2pw"


@pytest.mark.parametrize("base_url", [
    f"http://alice:{SECRET}@gpu1:8000/v1",
    f"https://:{SECRET}@proxy.example/v1",  # a token as the password, no user
    f"http://{SECRET}@gpu1:8000/v1",  # a token as the user
    ["http://gpu1:8000/v1", f"http://alice:{SECRET}@gpu2:8000/v1"],  # one replica of several
    f"http://alice:{SECRET}@gpu1:8000/v1,http://gpu2:8000/v1",  # two written as one
    "http://alice:hun@ter2pw@gpu1:8000/v1",  # an unescaped @ in the password
    f"http://alice:hun/{SECRET}@gpu1:8000/v1",  # an unescaped / in it: urllib sees host "alice", port "hun"
    f"http://alice:hun#{SECRET}@gpu1:8000/v1",
    "http://alice:hun",  # what --base-url's comma split leaves of "http://alice:hun,ter2pw@gpu1:8000/v1"
])
def test_a_url_with_a_password_is_refused_without_showing_it(base_url):
    with pytest.raises(ValueError) as info:
        replica_urls("openai-compatible", base_url)
    said = str(info.value)
    assert said.startswith("base_url ") and "\n" not in said
    assert "hun" not in said and "ter2pw" not in said
    with pytest.raises(FatalProviderError):
        make_provider("openai-compatible", "m", base_url=base_url)


def test_the_refusal_says_what_to_do():
    with pytest.raises(ValueError, match=r"base_url 'http://gpu1:8000/v1' holds a user name or password .*API key"):
        replica_urls("openai", f"http://alice:{SECRET}@gpu1:8000/v1")


def test_a_generator_refuses_it_before_sending_anything():
    with Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        url = emu.openai_base_url.replace("http://", f"http://alice:{SECRET}@")
        with pytest.raises(ValueError, match="holds a user name or password") as info:
            Generator("openai-compatible", "m", base_url=url, api_key="sk-test", progress=False).run(
                [ChatRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=8)])
        assert emu.received == 0
    assert SECRET not in str(info.value)


def test_generate_cli_names_the_option(tmp_path):
    from typer.testing import CliRunner

    from textbookgen.cli import app

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    result = CliRunner().invoke(app, ["generate", str(prompts), "--provider", "openai-compatible", "--model", "m",
                                      "--base-url", f"http://alice:{SECRET}@127.0.0.1:9/v1"])
    assert result.exit_code == 1
    assert "error: --base-url: base_url 'http://127.0.0.1:9/v1' holds a user name or password" in result.output
    assert SECRET not in result.output


def test_a_recipe_names_the_field_and_line(tmp_path):
    from textbookgen.recipe import RecipeError, load_recipe

    (tmp_path / "topics.yaml").write_text("topics: [Physics]\n")
    (tmp_path / "r.yaml").write_text(
        "name: tiny\nmodel: m\ntaxonomy:\n  source: topics.yaml\nmix:\n  - template: textbook_section\n"
        f"samples: 10\nprovider: {{name: openai-compatible, base_url: [http://gpu1:8000/v1, "
        f"'http://alice:{SECRET}@gpu2:8000/v1']}}\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(tmp_path / "r.yaml")
    said = str(info.value)
    assert said.startswith(f"{tmp_path / 'r.yaml'}:8: provider.base_url: base_url 'http://gpu2:8000/v1' holds")
    assert SECRET not in said
