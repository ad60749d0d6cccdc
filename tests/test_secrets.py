"""Keys never leave the process: not in an error, a log record, a journal row or an export, also where a server
echoes part of the key it refused (OpenAI's 401 shows its first 8 and last 4 characters)."""

from __future__ import annotations

import logging
import sqlite3

import pytest

from textbookgen.engine import ChatRequest, Generator
from textbookgen.errors import FatalProviderError, redact
from textbookgen.journal import Journal
from textbookgen.testing.emulator import Emulator, EmulatorConfig

FAST = dict(backoff_initial_s=0.01, backoff_max_s=0.05, progress=False, timeout_s=20.0, max_attempts=2)
GATEWAY_KEY = "gwCANARY7Q2xZ9mK4vB8nL3pR6tY1wE5u"  # a proxy's key: not shaped like sk-...


def fragments(key: str) -> list[str]:
    """What must not show of a key: itself, its first 8 and its last 4 characters after a mask."""
    return [key, key[:8], key[-6:]]


def leaked(texts: list[str], key: str) -> list[str]:
    return [f for f in fragments(key) for t in texts if f in t]


@pytest.mark.parametrize("echo", [
    f"Incorrect API key provided: {GATEWAY_KEY[:8]}{'*' * 20}{GATEWAY_KEY[-4:]}. You can find your API key at x",
    f"Authentication Fails, Your api key: ****{GATEWAY_KEY[-4:]} is invalid",  # DeepSeek's
    f"Invalid proxy server token passed. Received API Key = {GATEWAY_KEY[:6]}...{GATEWAY_KEY[-4:]}",  # LiteLLM's
    f"key {GATEWAY_KEY[:12]} is not valid",  # a truncated echo
])
def test_a_partly_echoed_key_is_redacted(echo):
    said = redact(echo, (GATEWAY_KEY,))
    assert GATEWAY_KEY[:6] not in said and GATEWAY_KEY[-4:] not in said, said


@pytest.mark.parametrize("text, secret", [
    ("POST http://gpu1:8000/v1/?api_key=qsCANARY9Lk8Jh7Gf6Ds5chat/completions: 404", "qsCANARY9Lk8Jh7Gf6Ds5"),
    ("GET https://proxy.example/v1/models?x=1&access_token=tokCANARY1234 failed", "tokCANARY1234"),
    ("Authorization: Bearer tokCANARY5678abcd", "tokCANARY5678abcd"),
    ("the Hub refused hf_CANARYhub4Tg7Yh2Uj9Ik3Ol6Pz1Xc8", "CANARYhub4Tg7Yh2Uj9"),
    ("Incorrect API key provided: https://********************lETQ.", "lETQ"),  # a URL given as the key
])
def test_key_shaped_text_is_redacted_without_the_key_being_known(text, secret):
    assert secret not in redact(text)


def test_ordinary_messages_are_left_alone():
    for text in ("openai HTTP 400 (invalid_request_error): max_tokens=5 is too large for gpt-4o-mini",
                 "cannot connect to http://127.0.0.1:8000/v1 (connection refused)",
                 "refusal: I can't help with **that** request", "gave up after 8 attempts: Overloaded"):
        assert redact(text, ("sk-the-key-0123456789",)) == text


@pytest.mark.parametrize("provider, batch", [("openai-compatible", False), ("openai", True)])
def test_a_refused_key_echoed_by_the_server_reaches_no_error_log_or_journal(provider, batch, tmp_path, caplog):
    """The key of an OpenAI-compatible gateway, not shaped like sk-..., refused with OpenAI's 401 wording."""
    with caplog.at_level(logging.DEBUG), Emulator(EmulatorConfig(latency_median_s=0.001, api_keys=["right"])) as emu:
        with pytest.raises(FatalProviderError, match="authentication failed") as info:
            Generator(provider, "m", base_url=emu.openai_base_url, api_key=GATEWAY_KEY, batch=batch,
                      journal=tmp_path / "j.sqlite", **FAST).run(
                [ChatRequest(messages=[{"role": "user", "content": f"hi {i}"}], max_tokens=8) for i in range(3)])
    assert "Incorrect API key provided: ***" in str(info.value)
    with Journal(tmp_path / "j.sqlite") as j:
        j.export_parquet(tmp_path / "x.parquet")
    dump = "\n".join(sqlite3.connect(tmp_path / "j.sqlite").iterdump())
    texts = [str(info.value), repr(info.value), caplog.text, dump, (tmp_path / "x.parquet").read_bytes().decode("latin-1")]
    assert not leaked(texts, GATEWAY_KEY)


@pytest.mark.parametrize("server", ["emulator", "none"])  # a 404 naming the URL; no server there at all
def test_a_token_in_the_base_urls_query_reaches_no_error_or_log(server, tmp_path, caplog):
    token = "qsCANARY9Lk8Jh7Gf6Ds5"
    with caplog.at_level(logging.INFO, logger="textbookgen"), Emulator(EmulatorConfig(latency_median_s=0.001)) as emu:
        where = emu.openai_base_url if server == "emulator" else "http://127.0.0.1:9/v1"
        with pytest.raises(ValueError, match="has a query string") as info:  # refused before anything is sent
            Generator("openai-compatible", "m", base_url=f"{where}?api_key={token}", api_key="k",
                      journal=tmp_path / "j.sqlite", **FAST).run(
                [ChatRequest(messages=[{"role": "user", "content": "hi"}], max_tokens=8)])
    textbookgen_logs = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("textbookgen"))
    assert token[:8] not in str(info.value) and token[:8] not in textbookgen_logs


def test_a_batch_row_keeps_no_credential_of_its_servers_url(tmp_path):
    with Journal(tmp_path / "j.sqlite") as j:
        j.add_batch("t1", "openai", "m", ["k"], "http://127.0.0.1:8000/v1/?api_key=qsCANARY9Lk8Jh7Gf6Ds5#frag")
        j.add_batch("t2", "openai", "m", ["k"], "http://user:pwCANARY1234@127.0.0.1:8000/v1/")
        j.add_batch("t3", "openai", "m", ["k"], None)
        urls = [row["base_url"] for row in j.open_batches("openai", "m")]
    assert urls == ["http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000/v1/", None]
